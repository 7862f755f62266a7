"""A value fails to cross between the parent and a worker, or is huge.

Each test injects one fault at one point of an item's trip and checks three
things: every input item comes out exactly once, in input order (the item
that met the fault as a ``Failure`` of kind ``"error"`` whose error and note
say what failed where); the same pool still works afterwards; no process is
left (the autouse checks).

The trip of an item to a process worker and back has five points where a
value can fail: pickling the item in the parent, unpickling it in the worker,
calling the function, pickling the result in the worker, unpickling the
result in the parent. A thread worker shares memory with the caller, so only
the call can fail there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import parcelout
from parcelout import RemoteError, RemoteTraceback, TransferError
from tests import faults
from tests.fault_injection import _work as work
from tests.fault_injection._accounting import account
from tests.fault_injection._support import CONCURRENT, expect, halve, notes_of, still_works
from tests.faults import LockedError, PickleRefused, TwoArgError, Unpicklable, UnpickleRefused, UnpicklesBadly

N = 12
BAD = 3  # in the first batch of 4, with items before and after it
CHUNK = 4
MiB = 2**20


# ---------------------------------------------------------------- an exception that cannot travel back


@dataclass(frozen=True)
class BadException:
    fn: Callable[[int], int]
    kind: type[Exception]
    message: str
    reason: str  # why it cannot travel: in ``RemoteError.reason``


BAD_EXCEPTIONS = [
    pytest.param(
        BadException(faults.raise_locked_error_on_3, LockedError, "locked failure on 3", "lock"),
        id="pickling-fails",
    ),
    pytest.param(
        BadException(faults.raise_two_arg_error_on_3, TwoArgError, "code 42: two-arg failure on 3", "detail"),
        id="unpickling-fails",
    ),
]


@pytest.mark.parametrize("case", BAD_EXCEPTIONS)
@pytest.mark.parametrize("backend", CONCURRENT)
def test_an_exception_that_cannot_travel_back_fails_only_its_item(backend: str, case: BadException) -> None:
    """A thread gets the exception itself; a process worker a ``RemoteError``
    naming its type and message, why it could not travel, and where it was raised."""
    expected_type: type[Exception] = case.kind if backend == "thread" else RemoteError
    with parcelout.Pool(2, backend) as pool:
        by_index = account(pool.imap(case.fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {BAD: ("error", expected_type)})[BAD]
        error = failure.error
        if isinstance(error, RemoteError):
            assert error.type_name == f"{case.kind.__module__}.{case.kind.__qualname__}"
            assert error.message == case.message
            assert case.reason in error.reason
            assert isinstance(error.__cause__, RemoteTraceback)
            assert case.fn.__name__ in error.__cause__.tb
        else:
            assert str(error) == case.message
        still_works(pool)


# ---------------------------------------------------------------- the five points of the trip


@dataclass(frozen=True)
class TransferFault:
    """Where the trip fails: the function, the item at ``BAD``, what is raised,
    and the note that says where (empty: the function's own exception)."""

    fn: Callable[[Any], object]
    bad_item: object
    error: type[BaseException]
    note: str


TRANSFER_FAULTS = {
    "pickling-the-item": TransferFault(
        faults.double, Unpicklable("item 3"), PickleRefused, "could not be pickled to send it to a worker"
    ),
    "unpickling-the-item": TransferFault(
        faults.double, UnpicklesBadly("item 3"), TransferError, "could not be unpickled in the worker process"
    ),
    "calling": TransferFault(faults.FailOn(BAD), BAD, ValueError, ""),
    "pickling-the-result": TransferFault(
        faults.lock_result_on_3, BAD, TypeError, "result could not be pickled to send it back from the worker"
    ),
    "unpickling-the-result": TransferFault(
        work.unpickles_badly_on_3, BAD, TransferError, "result could not be unpickled in the parent process"
    ),
}


@pytest.mark.parametrize(
    ("backend", "point"),
    [pytest.param("process", point, id=f"process-{point}") for point in TRANSFER_FAULTS]
    + [pytest.param("thread", "calling", id="thread-calling")],
)
def test_a_failure_at_one_point_of_the_trip_fails_only_its_item(backend: str, point: str) -> None:
    fault = TRANSFER_FAULTS[point]
    items: list[Any] = list(range(N))
    items[BAD] = fault.bad_item
    with parcelout.Pool(2, backend) as pool:
        by_index = account(pool.imap(fault.fn, items, chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {BAD: ("error", fault.error)})[BAD]
        assert failure.item is fault.bad_item
        if fault.error is TransferError:  # a BrokenProcessPool, as the standard pool raises; the cause in it
            assert fault.note in str(failure.error)
            assert isinstance(failure.error.__cause__, UnpickleRefused)
        elif fault.note:
            assert fault.note in notes_of(failure.error), notes_of(failure.error)
        else:
            assert str(failure.error) == f"FailOn rejects {BAD}"
        still_works(pool)


# ---------------------------------------------------------------- values too large for one write


@pytest.mark.parametrize(
    ("n", "size", "chunksize"),
    [pytest.param(1, 64 * MiB, 1, id="one-64MiB-result"), pytest.param(8, 12 * MiB, 4, id="batches-of-4x12MiB")],
)
def test_results_too_large_for_one_write_arrive_intact(n: int, size: int, chunksize: int) -> None:
    fn = functools.partial(work.big_result, size)
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(fn, range(n), chunksize=chunksize, on_error="return"), n, lambda r: r[0])
        for index, outcome in by_index.items():
            assert isinstance(outcome, tuple), f"item {index}: {outcome!r:.200}"
            assert len(outcome[1]) == size
            assert outcome[1] == work.blob(index, size), f"item {index}: the result arrived changed"
        still_works(pool)


def test_items_too_large_for_one_write_arrive_intact() -> None:
    n, size = 4, 24 * MiB
    items = [(i, work.blob(i, size)) for i in range(n)]
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(work.digest_of, items, chunksize=2, on_error="return"), n, lambda r: r[0])
        expect(by_index, lambda i: work.digest_of(items[i]), {})
        still_works(pool)
