"""What the fault tests share: checking outcomes, checking that a pool still
works, and watching processes by pid.

Functions that run in workers live in ``_work`` and ``tests/faults.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

import parcelout
from parcelout import Failure
from tests import faults
from tests.fault_injection._accounting import account

PROMPTLY = 10.0  # seconds: the bound on every wait for a fact that should come at once
CONCURRENT = ["thread", "process"]


def halve(result: int) -> int:
    """The index of a result of ``faults.double``."""
    return result // 2


def expect(
    by_index: Mapping[int, object],
    value_of: Callable[[int], object],
    failed: Mapping[int, tuple[str, type[BaseException]]],
) -> dict[int, Failure[Any]]:
    """Check every outcome: a ``Failure`` of the given kind and error type at
    each index of ``failed``, ``value_of(index)`` everywhere else. Return the
    failures by index, for the test's own checks of their errors."""
    failures: dict[int, Failure[Any]] = {}
    for index, outcome in sorted(by_index.items()):
        if index in failed:
            kind, error_type = failed[index]
            assert isinstance(outcome, Failure), f"item {index} should have failed ({kind}), but gave {outcome!r}"
            assert outcome.kind == kind, f"item {index}: kind {outcome.kind!r}, not {kind!r}: {outcome.error!r}"
            assert isinstance(outcome.error, error_type), f"item {index}: {outcome.error!r} is not a {error_type}"
            failures[index] = outcome
        else:
            assert not isinstance(outcome, Failure), f"item {index} failed: {outcome.error!r}\n{outcome.traceback}"
            assert outcome == value_of(index), f"item {index} gave {outcome!r}, not {value_of(index)!r}"
    return failures


def notes_of(error: BaseException) -> str:
    notes: list[str] = getattr(error, "__notes__", [])
    return "\n".join(notes)


def still_works(pool: parcelout.Pool) -> None:
    """The pool takes a task and a map after the fault, and gets them right."""
    assert pool.submit(faults.double, 21).result(timeout=PROMPTLY) == 42
    outcomes = pool.imap(faults.double, range(30), chunksize=4, on_error="return")
    expect(account(outcomes, 30, halve), lambda i: 2 * i, {})


def a_fresh_run_works(backend: str) -> None:
    """After a fault in a one-shot run, the next one-shot run is right."""
    outcomes = parcelout.map(faults.double, range(30), backend=backend, workers=2, chunksize=4, on_error="return")
    expect(account(outcomes, 30, halve), lambda i: 2 * i, {})


def all_gone(pids: Iterable[int]) -> bool:
    """Whether none of these processes runs any more (a zombie has exited)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True
