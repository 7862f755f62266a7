"""``backend="auto"``: the classifier on synthetic functions of each kind, and
the promise that the items it measures are not wasted."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parcelout
import parcelout._auto
from parcelout._api import _batches
from parcelout._auto import BUSY_SWITCH_INTERVAL, TINY_SECONDS
from parcelout._options import usable_cpus

BUFFER = b"\x5a" * (1 << 20)
two_cpus = pytest.mark.skipif(usable_cpus() < 2, reason="telling threads from processes needs two CPUs")


def tiny(x: int) -> int:
    return x + 1


def waits(x: int) -> int:
    threading.Event().wait(0.005)  # the work itself: waiting, not computing
    return x


def releases_the_gil(x: int) -> int:
    digest = hashlib.sha256()
    for _ in range(4):
        digest.update(BUFFER)  # hashlib releases the GIL over large buffers
    return digest.digest()[x % 32]


def holds_the_gil(x: int) -> int:
    total = 0
    for i in range(40_000):  # about 2 ms of pure Python
        total += (i * x) % 7
    return total


def takes_a_lock(lock: object) -> int:
    return holds_the_gil(3)


def holds_the_gil_briefly(x: int) -> int:
    total = 0
    for i in range(1500):  # about 50 us of pure Python
        total += i * x
    return total


def test_tiny_work_runs_serially() -> None:
    plan = parcelout.explain(tiny, range(100_000))
    assert plan.backend == "serial"
    assert plan.workers == 1
    assert plan.measurements.seconds_per_item < TINY_SECONDS


def test_waiting_work_runs_on_more_threads_than_cpus() -> None:
    plan = parcelout.explain(waits, range(1000))
    assert plan.backend == "thread"
    assert plan.workers > usable_cpus()
    assert plan.workers <= 32
    assert plan.measurements.cpu_fraction < 0.5


@two_cpus
def test_gil_releasing_work_runs_on_threads() -> None:
    plan = parcelout.explain(releases_the_gil, range(1000))
    assert plan.backend == "thread", str(plan)
    assert plan.workers == usable_cpus()
    assert plan.measurements.parallel_speedup is not None


@two_cpus
def test_gil_holding_work_runs_on_processes() -> None:
    plan = parcelout.explain(holds_the_gil, range(1000))
    assert plan.backend == "process", str(plan)
    assert plan.workers == usable_cpus()
    assert plan.chunksize is not None
    assert plan.chunksize >= 1


@two_cpus
def test_the_same_function_is_judged_the_same_way_every_time() -> None:
    # What a process worker adds per item is pickling an int and its result
    # (about a microsecond), not the function, which crosses once per worker.
    plans = [parcelout.explain(holds_the_gil_briefly, range(100_000)) for _ in range(6)]
    for plan in plans:
        assert plan.measurements.pickle_seconds_per_item is not None, str(plan)
        assert plan.measurements.pickle_seconds_per_item < 0.2 * plan.measurements.seconds_per_item, str(plan)
    assert {plan.backend for plan in plans} == {"process"}, [str(plan) for plan in plans]


def test_a_pause_while_measuring_does_not_make_tiny_work_look_costly() -> None:
    # The machine lent to another process for 20 ms in the middle of a batch:
    # an earlier batch of enough items still says what an item costs.
    measurer = parcelout._auto.Measurer(tiny, 100_000, None)
    batches = [(1, 30e-6), (1, 5e-6), (2, 6e-6), (4, 8e-6), (8, 10e-6), (16, 15e-6), (32, 25e-6), (64, 0.020)]
    for count, wall in batches:
        assert measurer.plan is None
        measurer.finished(count, wall, wall, (1, 2))
    assert measurer.plan is not None
    assert measurer.plan.backend == "serial", str(measurer.plan)
    assert "items take" in measurer.plan.reason


_failed_once: set[int] = set()


def holds_the_gil_and_fails_once(x: int) -> int:
    if x % 4 == 0 and x not in _failed_once:  # a transient failure: the retry succeeds
        _failed_once.add(x)
        raise ConnectionError(f"item {x}: try again")
    return holds_the_gil(x)


@two_cpus
def test_a_retry_back_off_while_measuring_is_not_read_as_waiting() -> None:
    # The back-off is the scheduler's timer, never part of a measured batch.
    _failed_once.clear()
    plan = parcelout.explain(holds_the_gil_and_fails_once, range(1000), retries=1, backoff=0.05)
    assert plan.backend == "process", str(plan)
    assert _failed_once  # it did fail and retry while being measured


def test_auto_retries_measured_items_after_their_back_off() -> None:
    _failed_once.clear()
    outcomes = parcelout.map(holds_the_gil_and_fails_once, range(40), retries=1, backoff=0.01)
    assert outcomes == [holds_the_gil(x) for x in range(40)]


@two_cpus
def test_a_short_gil_holding_run_stays_serial() -> None:
    plan = parcelout.explain(holds_the_gil, range(12))
    assert plan.backend == "serial", str(plan)


@two_cpus
def test_gil_holding_work_on_unpicklable_items_runs_on_threads() -> None:
    plan = parcelout.explain(takes_a_lock, [threading.Lock() for _ in range(500)])
    assert plan.backend == "thread", str(plan)
    assert "pickled" in plan.reason


def test_a_timeout_chooses_process_workers_without_measuring() -> None:
    calls = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    plan = parcelout.explain(record, range(100), task_timeout=5)
    assert plan.backend == "process"
    assert calls == []


def test_explain_takes_only_the_items_it_measures() -> None:
    taken = 0

    def endless() -> Iterator[int]:
        nonlocal taken
        while True:
            taken += 1
            yield taken

    plan = parcelout.explain(tiny, endless())
    assert plan.backend == "serial"
    assert 0 < taken <= plan.measurements.items + 1


def test_a_plan_prints_as_a_readable_report() -> None:
    text = str(parcelout.explain(waits, range(100)))
    assert text.startswith("backend=thread workers=")
    assert "because items wait" in text
    assert "per item" in text


def test_explain_honours_workers() -> None:
    assert parcelout.explain(waits, range(100), workers=3).workers == 3


def count_run(directory: str, x: int) -> int:
    """Each run leaves a file: a count of runs that works across processes."""
    fd = os.open(os.path.join(directory, f"{x}-{os.getpid()}-{threading.get_ident()}"), os.O_CREAT | os.O_EXCL)
    os.close(fd)
    return holds_the_gil(x) if x % 2 else x


def test_the_measured_items_are_not_run_again(tmp_path: Path) -> None:
    values = parcelout.map(functools.partial(count_run, str(tmp_path)), range(300))
    assert values == [holds_the_gil(x) if x % 2 else x for x in range(300)]
    runs = sorted(int(name.split("-")[0]) for name in os.listdir(tmp_path))
    assert runs == list(range(300))  # each item ran exactly once, measured or not


@pytest.mark.parametrize("ordered", [True, False])
def test_auto_keeps_every_outcome_with_failures_among_the_measured(ordered: bool) -> None:
    def fails_on_sevens(x: int) -> int:
        if x % 7 == 0:
            raise ValueError(x)
        return holds_the_gil(1) + x

    run = parcelout.imap if ordered else parcelout.imap_unordered
    outcomes = list(run(fails_on_sevens, range(200), on_error="return"))
    assert len(outcomes) == 200
    failed = sorted(o.index for o in outcomes if isinstance(o, parcelout.Failure))
    assert failed == list(range(0, 200, 7))
    if ordered:
        assert [o for o in outcomes if not isinstance(o, parcelout.Failure)] == [
            holds_the_gil(1) + x for x in range(200) if x % 7
        ]


def test_auto_runs_the_initializer_in_the_calling_thread_for_what_it_measures() -> None:
    seen: list[int] = []

    def remember() -> None:
        seen.append(threading.get_ident())

    values = parcelout.map(tiny, range(5000), initializer=remember)
    assert values == [x + 1 for x in range(5000)]
    assert seen == [threading.get_ident()]  # serial: once, here


def worker_pid(_: int) -> int:
    return os.getpid()


def test_a_pool_cannot_measure_so_its_auto_means_processes() -> None:
    with parcelout.Pool(2) as pool:
        assert pool.backend == "process"
        pids = set(pool.map(worker_pid, range(8)))
    assert os.getpid() not in pids


# The first item runs long: it ends only when the test has every other result.
FIRST_MAY_END = threading.Event()
first_saw_interval: list[float] = []  # the switch interval as the first item ended


def first_ends() -> int:
    first_saw_interval.append(sys.getswitchinterval())
    return -1


def first_waits_for_the_rest(x: int) -> int:
    if x == 0:
        if not FIRST_MAY_END.wait(60):  # the work itself: a long wait
            raise TimeoutError("the other items never came back")
        return first_ends()
    return x


def first_computes_until_the_rest(x: int) -> int:
    if x == 0:
        spins = 0
        while not FIRST_MAY_END.is_set():  # pure Python, holding the GIL between checks
            spins += 1
            if spins > 500_000_000:
                raise TimeoutError("the other items never came back")
        return first_ends()
    return holds_the_gil(x)


@pytest.mark.parametrize(
    ("fn", "backend"),
    [(first_waits_for_the_rest, "thread"), pytest.param(first_computes_until_the_rest, "process", marks=two_cpus)],
)
def test_a_long_first_item_does_not_hold_up_the_choice_or_the_rest(fn: Any, backend: str) -> None:
    FIRST_MAY_END.clear()
    first_saw_interval.clear()
    interval = sys.getswitchinterval()
    plans: list[parcelout.Plan] = []
    outcomes = _batches(
        fn, range(60), ordered=False, on_error="raise", where="imap_unordered", options={}, on_plan=plans.append
    )
    seen: list[int] = []
    try:
        for batch in outcomes:
            seen.extend(batch)
            if len(seen) == 59:  # every item but the first: only now may it end
                FIRST_MAY_END.set()
    finally:
        FIRST_MAY_END.set()
    assert sorted(seen) == sorted([-1] + [fn(x) for x in range(1, 60)])
    assert seen[-1] == -1  # the first item ended last
    assert [plan.backend for plan in plans] == [backend], plans
    # Lowered while a GIL-holding first item ran on beside the process workers, then restored.
    expected = BUSY_SWITCH_INTERVAL if backend == "process" else interval
    assert first_saw_interval == [expected]
    assert sys.getswitchinterval() == interval


def slow_to_finish(done: list[int], x: int) -> int:
    threading.Event().wait(0.05)  # the work itself: a wait, long past the moment of the choice
    done.append(x)
    return x


def test_explain_returns_once_the_items_it_started_have_finished() -> None:
    done: list[int] = []
    plan = parcelout.explain(functools.partial(slow_to_finish, done), range(100))
    assert plan.backend == "thread"
    assert done == [0]  # chosen within milliseconds, yet the item it started ended first


@two_cpus
@pytest.mark.parametrize(("fn", "backend"), [(tiny, "serial"), (waits, "thread"), (holds_the_gil, "process")])
def test_where_threads_cannot_be_timed_while_they_run_each_batch_is_judged_when_it_ends(
    monkeypatch: pytest.MonkeyPatch, fn: Any, backend: str
) -> None:
    # (Judged from finished batches only, a GIL-free function may pass for a
    # GIL-holding one, which costs speed, never parallelism: not asserted.)
    monkeypatch.setattr(parcelout._auto, "LIVE", False)
    assert parcelout.explain(fn, range(1000)).backend == backend


def interrupts(x: int) -> int:
    if x == 3:
        raise KeyboardInterrupt
    return x


def test_a_keyboard_interrupt_raised_by_a_measured_item_reaches_the_caller() -> None:
    with pytest.raises(KeyboardInterrupt):
        parcelout.map(interrupts, range(100))
