"""A process worker dies: mid-item, with a value in transit, between items.

Each test injects one death and checks three things: every input item comes
out exactly once (a result, or a ``Failure`` of the right kind, in input
order); the same pool still works afterwards; no process is left (the
autouse checks of both conftests).

Only the item a worker was running when it died may fail, as a ``crash``
naming the exit code or signal; the other items of its batch run again
elsewhere. A death outside any item (while the batch's items are unpickled,
or its results pickled and sent) blames no item as such: the batch's items
run again, and end as their results, or, if every run of one kills its
worker, that one as a crash.

The functions the workers run are in ``_work``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout import Failure, WorkerCrashed
from tests import faults
from tests.fault_injection import _work as work
from tests.fault_injection._accounting import account
from tests.fault_injection._support import PROMPTLY, a_fresh_run_works, all_gone, expect, halve, still_works
from tests.waits import wait_until

N = 12
CULPRIT = 5  # in the middle of the second batch of 4
CHUNK = 4


@dataclass(frozen=True)
class Death:
    """How the culprit dies (a MemoryError or ``sys.exit`` leaves its worker
    alive: an error, not a crash), and what its outcome must say."""

    how: str
    kind: str
    error: type[BaseException]
    exitcode: int | None
    text: str


DEATHS = [
    pytest.param(Death("os._exit(7)", "crash", WorkerCrashed, 7, "exit code 7"), id="os._exit"),
    pytest.param(Death("SIGKILL itself", "crash", WorkerCrashed, -signal.SIGKILL, "SIGKILL"), id="sigkill-itself"),
    pytest.param(Death("segfault", "crash", WorkerCrashed, -signal.SIGSEGV, "SIGSEGV"), id="segfault"),
    pytest.param(Death("abort", "crash", WorkerCrashed, -signal.SIGABRT, "SIGABRT"), id="abort"),
    pytest.param(Death("MemoryError", "error", MemoryError, None, ""), id="memoryerror-under-rlimit-as"),
    pytest.param(Death("sys.exit(7)", "error", SystemExit, None, ""), id="sys.exit"),
]


@contextlib.contextmanager
def killing_when_announced(directory: Path) -> Iterator[list[int]]:
    """While the block runs, a thread waits for an item to write its pid in
    ``directory`` and SIGKILLs that process. Yields the list that receives
    the killed pid."""
    killed: list[int] = []

    def kill() -> None:
        try:
            wait_until((directory / "pid").exists, PROMPTLY, "the item to write its pid")
        except AssertionError:
            return  # nothing announced: the test's own assertions say what went wrong
        pid = int((directory / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=kill, name="test-killer")
    thread.start()
    try:
        yield killed
    finally:
        thread.join()


def check_crash(failure: Failure[Any], exitcode: int, text: str) -> None:
    """A crash failure names the item, the exit code or signal, and carries the code."""
    assert isinstance(failure.error, WorkerCrashed)
    assert failure.error.exitcode == exitcode, str(failure.error)
    assert text in str(failure.error), str(failure.error)
    assert f"item {failure.index}" in str(failure.error), str(failure.error)


def result_or_crash(outcome: object, value: object, *, exitcode: int) -> None:
    """What an item whose worker died after it returned may end as: its value
    (it ran again), or a crash failure naming the signal."""
    if isinstance(outcome, Failure):
        assert outcome.kind == "crash", f"{outcome.error!r}"
        assert isinstance(outcome.error, WorkerCrashed)
        assert outcome.error.exitcode == exitcode, str(outcome.error)
    else:
        assert outcome == value, f"{outcome!r} is not {value!r}"


# ---------------------------------------------------------------- dying mid-item


@pytest.mark.parametrize("death", DEATHS)
def test_a_worker_dying_mid_item_costs_only_that_item(death: Death) -> None:
    fn = functools.partial(work.die_on, CULPRIT, death.how)
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: (death.kind, death.error)})[CULPRIT]
        assert failure.item == CULPRIT
        if death.exitcode is not None:
            check_crash(failure, death.exitcode, death.text)
        elif isinstance(failure.error, SystemExit):
            assert failure.error.code == 7
        else:
            assert "_exhaust_memory" in failure.traceback  # raised in the item, not by the pool
        still_works(pool)


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_a_one_shot_run_with_a_dying_worker_loses_nothing_and_the_next_run_works(ordered: bool) -> None:
    """The one-shot functions own their pool: the crash costs one item, the
    run's teardown leaves nothing, and a fresh run works."""
    mapper = parcelout.imap if ordered else parcelout.imap_unordered
    fn = functools.partial(work.die_on, CULPRIT, "os._exit(7)")
    outcomes = mapper(fn, range(N), backend="process", workers=2, chunksize=CHUNK, on_error="return")
    by_index = account(outcomes, N, halve, ordered=ordered)
    failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("crash", WorkerCrashed)})[CULPRIT]
    check_crash(failure, 7, "exit code 7")
    a_fresh_run_works("process")


class WrongExitCode(AssertionError):
    """A crash reported with another exit code than the worker's."""


def test_every_crash_is_reported_with_its_own_exit_code_while_workers_die_and_start_at_once() -> None:
    n = 200  # crashes: most runs hit the race at least once
    with parcelout.Pool(4, "process") as pool:
        by_index = account(pool.imap(work.exit_7, range(n), chunksize=1, on_error="return"), n, halve)
        failures = expect(by_index, lambda i: 2 * i, dict.fromkeys(range(n), ("crash", WorkerCrashed)))
        still_works(pool)
    wrong = {f.index: str(f.error) for f in failures.values() if getattr(f.error, "exitcode", None) != 7}
    if wrong:
        raise WrongExitCode(f"{len(wrong)} of {n} crashes reported another exit code than 7: {wrong}")


def test_a_worker_killed_from_outside_mid_item_costs_only_that_item(tmp_path: Path) -> None:
    fn = functools.partial(work.announce_then_block, str(tmp_path), CULPRIT)
    with parcelout.Pool(2, "process") as pool:
        with killing_when_announced(tmp_path) as killed:
            by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        assert len(killed) == 1, "the item never said where it ran"
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("crash", WorkerCrashed)})[CULPRIT]
        check_crash(failure, -signal.SIGKILL, "SIGKILL")
        wait_until(lambda: all_gone(killed), PROMPTLY, "the killed worker to be gone")
        still_works(pool)


# ---------------------------------------------------------------- dying with a value in transit


def in_transit(where: str, directory: Path, times: int) -> tuple[Callable[[Any], object], list[object]]:
    """The function and items of a run whose item ``CULPRIT`` kills the
    worker that unpickles it, or the worker that pickles its result, at most
    ``times`` times. Every item's value is ``2 * index``."""
    items: list[object] = list(range(N))
    if where == "unpickling-the-item":
        items[CULPRIT] = work.DiesWhenUnpickled(str(directory), CULPRIT, times)
        return faults.double, items
    return functools.partial(work.result_dies_while_pickled, str(directory), CULPRIT, times), items


TRANSIT = ["unpickling-the-item", "pickling-the-result"]


@pytest.mark.parametrize("where", TRANSIT)
def test_a_worker_killed_once_by_a_value_in_transit_loses_nothing(where: str, tmp_path: Path) -> None:
    """The first worker to unpickle item 5 (or pickle its result) dies, before
    or after the batch ran; its items run again, and this time they travel."""
    fn, items = in_transit(where, tmp_path, times=1)
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(fn, items, chunksize=CHUNK, on_error="return"), N, halve)
        assert work.deaths(str(tmp_path)) == 1, "the value never killed its worker"
        result_or_crash(by_index.pop(CULPRIT), 2 * CULPRIT, exitcode=-signal.SIGKILL)
        expect(by_index, lambda i: 2 * i, {})
        still_works(pool)


def test_a_worker_killed_from_outside_while_sending_loses_nothing(tmp_path: Path) -> None:
    fn = functools.partial(work.result_blocks_while_pickled, str(tmp_path), CULPRIT)
    with parcelout.Pool(2, "process") as pool:
        with killing_when_announced(tmp_path) as killed:
            by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        assert len(killed) == 1, "the result was never pickled"
        result_or_crash(by_index.pop(CULPRIT), 2 * CULPRIT, exitcode=-signal.SIGKILL)
        expect(by_index, lambda i: 2 * i, {})
        still_works(pool)


def test_a_worker_killed_mid_send_of_a_huge_result_loses_nothing(tmp_path: Path) -> None:
    """One worker, one batch: the culprit's 64 MiB result is on its way when
    the worker dies; the batch runs again on a new worker."""
    fn = functools.partial(work.huge_result_killed_mid_send, str(tmp_path), CULPRIT)
    with parcelout.Pool(1, "process") as pool:
        outcomes = pool.imap(fn, range(N), chunksize=N, on_error="return")
        by_index = account(outcomes, N, lambda r: r[0])
        assert (tmp_path / "armed").exists()
        culprit = by_index.pop(CULPRIT)
        if isinstance(culprit, Failure):
            result_or_crash(culprit, None, exitcode=-signal.SIGKILL)
        else:
            assert isinstance(culprit, tuple)
            assert culprit[0] == CULPRIT
            assert culprit[-1] == bytes(64 * 2**20)
        expect(by_index, lambda i: (i, b""), {})
        still_works(pool)


@pytest.mark.parametrize("where", TRANSIT)
def test_a_value_that_kills_every_worker_it_reaches_ends_as_a_crash(where: str, tmp_path: Path) -> None:
    """A poison value: every worker that unpickles item 5 (or pickles its
    result) dies. The pool must give up on the item after a few deaths, as a
    crash, not run it for ever. (The value stops killing after ``cap``
    deaths, so a pool that never gives up fails this test, not hangs it.)"""
    cap = 8
    fn, items = in_transit(where, tmp_path, times=cap)
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(fn, items, chunksize=CHUNK, on_error="return"), N, halve)
        deaths = work.deaths(str(tmp_path))
        assert 1 <= deaths < cap, f"{deaths} workers died under item {CULPRIT}: the pool never gave up on it"
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("crash", WorkerCrashed)})[CULPRIT]
        check_crash(failure, -signal.SIGKILL, "SIGKILL")
        still_works(pool)


# ---------------------------------------------------------------- dying between items


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("noticed", [True, False], ids=["after-it-is-gone", "at-once"])
def test_an_idle_worker_killed_between_two_maps_costs_nothing(sig: signal.Signals, noticed: bool) -> None:
    """Killed while idle, it held no item: the next map on the pool gives
    every result, on its other worker and a replacement. ``at-once``: the
    next map starts before the pool can have noticed the death."""
    with parcelout.Pool(2, "process") as pool:
        first = account(pool.imap(work.index_and_pid, range(20), chunksize=2, on_error="return"), 20, lambda r: r[0])
        pids = {outcome[1] for outcome in first.values() if isinstance(outcome, tuple)}
        victim = max(pids)
        os.kill(victim, sig)
        if noticed:
            wait_until(lambda: all_gone([victim]), PROMPTLY, "the killed worker to be gone")
        second = account(pool.imap(work.index_and_pid, range(40), chunksize=2, on_error="return"), 40, lambda r: r[0])
        for index, outcome in second.items():
            assert not isinstance(outcome, Failure), f"item {index} failed: {outcome.error!r}"
            assert isinstance(outcome, tuple)
            assert outcome[1] != victim
        still_works(pool)
    assert all_gone([victim])


def test_a_worker_killed_just_after_its_item_returned_loses_nothing(tmp_path: Path) -> None:
    """A thread left by item 3 kills its worker a moment after the item
    returned: while the worker sends, idles or runs a later item. That later
    item may fail as a crash; every other item is its result."""
    n = 40
    fn = functools.partial(work.kill_after_returning, str(tmp_path), 3)
    with parcelout.Pool(2, "process") as pool:
        by_index = account(pool.imap(fn, range(n), chunksize=2, on_error="return"), n, lambda r: r[0])
        wait_until((tmp_path / "pid").exists, PROMPTLY, "the killer thread to run")
        killed = int((tmp_path / "pid").read_text())
        wait_until(lambda: all_gone([killed]), PROMPTLY, "the killed worker to be gone")
        crashed = [o for o in by_index.values() if isinstance(o, Failure)]
        assert len(crashed) <= 1, f"one death failed {len(crashed)} items: {crashed}"
        for index, outcome in by_index.items():
            if isinstance(outcome, Failure):
                assert outcome.kind == "crash", f"item {index}: {outcome.error!r}"
                check_crash(outcome, -signal.SIGKILL, "SIGKILL")
            else:
                assert isinstance(outcome, tuple)
                assert outcome[0] == index
        still_works(pool)
