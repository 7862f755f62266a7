"""Pools in awkward surroundings: nested in another pool's worker, started
while the parent's threads hold locks and spin, and recycling their workers
as fast as they can.

Each test checks three things: every input item comes out exactly once (in
input order for ``imap``); the pool still works afterwards; no process is
left (the autouse checks).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import Counter

import pytest

import parcelout
from parcelout import Failure
from tests import faults
from tests.fault_injection import _work as work
from tests.fault_injection._accounting import account
from tests.fault_injection._support import PROMPTLY, expect, still_works
from tests.waits import wait_until

# ---------------------------------------------------------------- nested use


@pytest.mark.parametrize(
    ("outer", "inner"),
    [("process", "thread"), ("thread", "process"), ("process", "process")],
    ids=["thread-map-in-a-process-worker", "process-map-in-a-thread-worker", "process-map-in-a-process-worker"],
)
def test_a_map_inside_a_worker_works_and_leaves_nothing(outer: str, inner: str) -> None:
    n = 6
    fn = functools.partial(work.nested_map, inner)
    with parcelout.Pool(2, outer) as pool:
        by_index = account(pool.imap(fn, range(n), chunksize=2, on_error="return"), n, lambda r: r[0][0] // 2)
        for index, outcome in by_index.items():
            assert not isinstance(outcome, Failure), f"item {index} failed: {outcome.error!r}\n{outcome.traceback}"
            assert isinstance(outcome, tuple)
            values, threads_left, processes_left = outcome
            assert values == [2 * x for x in range(index, index + work.INNER)]
            if outer == "process":  # in a thread worker, the other threads' nested maps run beside it
                assert threads_left == [], f"the nested map left threads in the worker: {threads_left}"
                assert processes_left == [], f"the nested map left processes below the worker: {processes_left}"
        still_works(pool)


# ---------------------------------------------------------------- threads of the parent that fork would trip on


class BusyParent:
    """Threads of the parent doing what makes ``fork`` unsafe: one holds a
    lock for the whole run, one spins (so the GIL changes hands all the
    time), one allocates and frees without pause."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.spins = 0
        self.churns = 0
        targets = [self._hold, self._spin, self._churn]
        self.threads = [threading.Thread(target=t, name=f"test-busy-{t.__name__}") for t in targets]

    def _hold(self) -> None:
        with self.lock:
            self.stop.wait(4 * PROMPTLY)

    def _spin(self) -> None:
        while not self.stop.is_set():
            self.spins += 1

    def _churn(self) -> None:
        while not self.stop.is_set():
            garbage = [{"n": i, "s": str(i)} for i in range(100)]
            del garbage
            self.churns += 1

    def __enter__(self) -> BusyParent:
        for thread in self.threads:
            thread.start()
        try:
            wait_until(lambda: self.lock.locked() and self.spins and self.churns, PROMPTLY, "the busy threads to start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


@pytest.mark.timeout(20)  # a deadlock fails here, not at the global limit
@pytest.mark.parametrize("start_method", [None, "spawn"], ids=["default", "spawn"])
def test_a_process_pool_starts_and_runs_while_parent_threads_hold_locks_and_spin(start_method: str | None) -> None:
    n = 200
    with BusyParent() as busy, parcelout.Pool(2, "process", start_method=start_method) as pool:
        assert busy.lock.locked()
        spins_before = busy.spins
        by_index = account(pool.imap(faults.double, range(n), chunksize=7, on_error="return"), n, lambda r: r // 2)
        expect(by_index, lambda i: 2 * i, {})
        assert busy.lock.locked(), "the thread holding the lock let go before the run ended"
        assert busy.spins > spins_before, "the spinning thread did not run while the pool did"
        assert busy.churns > 0
        still_works(pool)


# ---------------------------------------------------------------- recycling


@pytest.mark.parametrize("chunksize", range(2, 8))
def test_workers_recycled_every_3_items_lose_nothing(chunksize: int) -> None:
    n, quota, workers = 100, 3, 2
    with parcelout.Pool(workers, "process", max_tasks_per_worker=quota) as pool:
        outcomes = pool.imap(work.index_and_pid, range(n), chunksize=chunksize, on_error="return")
        by_index = account(outcomes, n, lambda r: r[0])
        for index, outcome in by_index.items():
            assert not isinstance(outcome, Failure), f"item {index} failed: {outcome.error!r}"
        ran = Counter(outcome[1] for outcome in by_index.values() if isinstance(outcome, tuple))
        assert len(ran) > workers, "no worker was replaced"
        assert max(ran.values()) <= quota, f"a worker ran more than {quota} items: {ran.most_common(3)}"
        assert len(ran) >= math.ceil(n / quota)
        assert os.getpid() not in ran
        still_works(pool)
