"""Run CPython's own ``concurrent.futures`` tests against parcelout's executors.

Python 3.13 ships them as ``test.test_concurrent_futures``. This runner puts
``parcelout.ThreadPoolExecutor`` and ``parcelout.ProcessPoolExecutor`` in
place of the standard ones (in ``concurrent.futures``, before the tests are
imported, and in the scripts the tests run in a child interpreter), then runs
the tests of one kind of executor::

    python -m tests.suites.cpython_futures thread|fork|forkserver|spawn [TEST_NAME_PART ...]

It prints unittest's report and a last line ``N passed, N failed, N skipped``.
The tests it sets aside (``SET_ASIDE``) inspect the standard pools' private
internals, each with its reason.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import sys
import unittest

import parcelout
from tests.suites.common import put_in_child_interpreters, summary

KINDS = {
    "thread": "ThreadPoolMixin",
    "fork": "ProcessPoolForkMixin",
    "forkserver": "ProcessPoolForkserverMixin",
    "spawn": "ProcessPoolSpawnMixin",
}
MODULES = [
    "test_as_completed",
    "test_deadlock",
    "test_init",
    "test_process_pool",
    "test_shutdown",
    "test_thread_pool",
    "test_wait",
]
_PRIVATE = "reads the standard pool's private attributes ({})"
# Test name -> why it is set aside. Every one inspects how the standard pools
# are built inside; none tests what a user of the executor sees.
SET_ASIDE = {
    "test_saturation": _PRIVATE.format("_threads / _processes, _max_workers"),
    "test_idle_thread_reuse": _PRIVATE.format("_threads"),
    "test_idle_process_reuse_one": _PRIVATE.format("_processes"),
    "test_idle_process_reuse_multiple": _PRIVATE.format("_processes"),
    "test_max_tasks_per_child": _PRIVATE.format("_processes"),
    "test_killed_child": _PRIVATE.format("_processes, to kill one and expect the whole pool broken"),
    "test_threads_terminate": _PRIVATE.format("_threads"),
    "test_processes_terminate": _PRIVATE.format("_processes"),
    "test_context_manager_shutdown": _PRIVATE.format("_threads / _processes"),
    "test_del_shutdown": _PRIVATE.format("_threads / _processes, _executor_manager_thread"),
    "test_shutdown_no_wait": _PRIVATE.format("_threads / _processes, _executor_manager_thread"),
    "test_thread_names_assigned": _PRIVATE.format("_threads"),
    "test_thread_names_default": _PRIVATE.format("_threads"),
    "test_shutdown_deadlock_pickle": _PRIVATE.format("_executor_manager_thread"),
    "test_gh105829_should_not_deadlock_if_wakeup_pipe_full": _PRIVATE.format(
        "_ThreadWakeup and _executor_manager_thread_wakeup"
    ),
    "test_python_finalization_error": _PRIVATE.format("patches the standard pool's _check_system_limits"),
    "test_max_workers_too_large": "a Windows-only limit of the standard pool (61 workers)",
    "test_hang_global_shutdown_lock": _PRIVATE.format("the module lock _global_shutdown_lock"),
    "test_max_tasks_per_child_defaults_to_spawn_context": _PRIVATE.format(
        "_mp_context; parcelout's default start method is forkserver, as safe as spawn for replacing workers"
    ),
    "test_traceback": _PRIVATE.format(
        "the exact class _RemoteTraceback; parcelout chains its own RemoteTraceback with the same .tb text"
    ),
}

# Put in front of every script a test runs in a child interpreter, so that its
# ``from concurrent.futures import ThreadPoolExecutor`` gets parcelout's.
PROLOGUE = (
    "import concurrent.futures as _cf, parcelout as _p; "
    "_cf.ThreadPoolExecutor = _p.ThreadPoolExecutor; _cf.ProcessPoolExecutor = _p.ProcessPoolExecutor\n"
)


def substitute() -> None:
    concurrent.futures.ThreadPoolExecutor = parcelout.ThreadPoolExecutor  # type: ignore[misc]
    concurrent.futures.ProcessPoolExecutor = parcelout.ProcessPoolExecutor  # type: ignore[assignment,misc]
    put_in_child_interpreters(PROLOGUE)


def suite(kind: str, only: list[str]) -> unittest.TestSuite:
    mixin = KINDS[kind]
    loader = unittest.TestLoader()
    selected = unittest.TestSuite()
    for name in MODULES:
        module = importlib.import_module(f"test.test_concurrent_futures.{name}")
        for case in _cases(loader.loadTestsFromModule(module)):
            if mixin not in {base.__name__ for base in type(case).__mro__}:
                continue
            method = case._testMethodName
            if only and not any(part in case.id() for part in only):
                continue
            if method in SET_ASIDE:
                setattr(case, method, unittest.skip(f"set aside: {SET_ASIDE[method]}")(getattr(case, method)))
            selected.addTest(case)
    return selected


def _cases(tests: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for test in tests:
        if isinstance(test, unittest.TestSuite):
            out.extend(_cases(test))
        else:
            out.append(test)
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in KINDS:
        kinds = "|".join(KINDS)
        print(f"usage: python -m tests.suites.cpython_futures {{{kinds}}} [TEST_NAME_PART ...]", file=sys.stderr)
        return 2
    substitute()
    from test.test_concurrent_futures import util

    util.setup_module()
    result = unittest.TextTestRunner(verbosity=2).run(suite(argv[0], argv[1:]))
    unittest.case.doModuleCleanups()
    print(summary(result))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
