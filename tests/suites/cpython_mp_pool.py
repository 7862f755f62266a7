"""Run CPython's own ``multiprocessing.Pool`` tests against ``parcelout.multiprocessing.Pool``.

Python 3.13 ships them in ``test._test_multiprocessing``. This runner puts
``parcelout.multiprocessing.Pool`` in place of ``multiprocessing.Pool`` (before
that module is imported, since its ``ProcessesMixin`` takes ``Pool`` as it is
defined; in the child processes that import this runner as their main module;
and in the scripts the tests run in a child interpreter), then runs the pool
tests of the processes flavour under one start method::

    python -m tests.suites.cpython_mp_pool fork|forkserver|spawn [TEST_NAME_PART ...]

It prints unittest's report and a last line ``N passed, N failed, N skipped``.
The tests it sets aside (``SET_ASIDE``) inspect the standard pool's private
internals; the ones in ``KNOWN_FAILURES`` fail for a reason written there and
run as expected failures (counted among the skipped).
"""

from __future__ import annotations

import importlib
import multiprocessing
import sys
import unittest
from collections.abc import Callable
from typing import Any

import parcelout.multiprocessing
from tests.suites.common import put_in_child_interpreters, summary

METHODS = ("fork", "forkserver", "spawn")
# The pool test classes (each made for the processes flavour, as CPython's
# test_multiprocessing_<method>/test_processes.py makes them) and the pool
# tests among the module-level classes.
POOL_CLASSES = ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime")
MODULE_TESTS = {
    "TestInitializers": ("test_pool_initializer",),
    "TestStdinBadfiledescriptor": ("test_pool_in_process",),
    "TestPoolNotLeakOnFailure": ("test_release_unused_processes",),
    "MiscTestCase": ("test_large_pool",),
}
_PRIVATE = "reads the standard pool's private internals ({})"
# Test name -> why it is set aside. Every one inspects how the standard pool
# is built inside; none tests what a user of the pool sees.
SET_ASIDE = {
    "test_make_pool": _PRIVATE.format(
        "len(p._pool), its list of worker processes; the ValueError for processes < 1 it also checks "
        "is tested in tests/test_multiprocessing_pool.py"
    ),
    "test_resource_warning": _PRIVATE.format("forces _state back to multiprocessing.pool.RUN"),
    "test_pool_worker_lifetime": _PRIVATE.format("the pids of _pool's processes, and calls _repopulate_pool()"),
    "test_release_unused_processes": _PRIVATE.format(
        "builds the standard class multiprocessing.pool.Pool itself, with a mocked context whose Process "
        "fails the standard pool's eager start of every worker"
    ),
}

# Test name -> why it fails against parcelout: a difference on purpose, or a
# fix due in parcelout's core (not in this door). Each runs as an expected
# failure: if it starts to pass, it counts as failed, so that it leaves this
# list. The summary counts the expected failures among the skipped.
KNOWN_FAILURES = {
    "test_pool_initializer": (
        "on purpose: parcelout starts workers when work arrives, so a pool closed before its first task never "
        "starts one and never runs the initializer (the standard pool starts every worker at once)"
    ),
    "test_unpickleable_result": (
        "on purpose: results travel with cloudpickle, so the lambda the task returns comes back rather than "
        "failing with MaybeEncodingError"
    ),
}

# Put in front of every script a test runs in a child interpreter, so that its
# ``from multiprocessing import Pool`` gets parcelout's.
PROLOGUE = "import multiprocessing as _m, parcelout.multiprocessing as _pm; _m.Pool = _pm.Pool\n"


def substitute() -> None:
    """``parcelout.multiprocessing.Pool`` for ``multiprocessing.Pool``, here
    and in the child interpreters the tests start."""
    multiprocessing.Pool = parcelout.multiprocessing.Pool  # type: ignore[assignment]
    put_in_child_interpreters(PROLOGUE)


def suite(method: str, only: list[str]) -> tuple[unittest.TestSuite, Any]:
    """The pool tests for ``method``, and CPython's module of the processes
    flavour for it, whose ``setUpModule`` sets that start method (its classes
    live there, so a child process can import them by name)."""
    tests = importlib.import_module("test._test_multiprocessing")
    flavour = importlib.import_module(f"test.test_multiprocessing_{method}.test_processes")
    loader = unittest.TestLoader()
    cases: list[unittest.TestCase] = []
    for name in POOL_CLASSES:
        loaded = loader.loadTestsFromTestCase(getattr(flavour, "WithProcesses" + name[1:]))
        cases.extend(case for case in loaded if isinstance(case, unittest.TestCase))
    for name, methods in MODULE_TESTS.items():
        cases.extend(getattr(tests, name)(method_name) for method_name in methods)
    selected = unittest.TestSuite()
    for case in cases:
        method_name = case._testMethodName
        if only and not any(part in case.id() for part in only):
            continue
        if method_name in SET_ASIDE:
            reason = f"set aside: {SET_ASIDE[method_name]}"
            setattr(case, method_name, unittest.skip(reason)(getattr(case, method_name)))
        elif method_name in KNOWN_FAILURES:
            setattr(case, method_name, unittest.expectedFailure(_plain(getattr(case, method_name))))
        selected.addTest(case)
    return selected, flavour


def _plain(method: Callable[[], object]) -> Callable[[], object]:
    """A bound test method as a function, which can carry unittest's marks."""

    def run() -> object:
        return method()

    return run


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in METHODS:
        print(
            f"usage: python -m tests.suites.cpython_mp_pool {{{'|'.join(METHODS)}}} [TEST_NAME_PART ...]",
            file=sys.stderr,
        )
        return 2
    selected, flavour = suite(argv[0], argv[1:])
    flavour.setUpModule()
    try:
        result = unittest.TextTestRunner(verbosity=2).run(selected)
    finally:
        flavour.tearDownModule()
    for case, _ in result.expectedFailures:
        print(f"known failure: {case.id()}: {KNOWN_FAILURES[case._testMethodName]}")
    print(summary(result, known=len(result.expectedFailures)))
    return 0 if result.wasSuccessful() else 1


# Here and in every child that imports this runner as its main module (spawn
# and forkserver children, the tests' own processes among them).
if __name__ in ("__main__", "__mp_main__"):
    substitute()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
