"""``parcelout.multiprocessing.Pool``: the ``multiprocessing.Pool`` API, where
a killed worker fails its task instead of hanging the pool.

The functions the workers run are module-level, so they travel by reference.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout.multiprocessing import ApplyResult, Pool
from tests.waits import wait_until

_setting: int | None = None


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three: {x}")
    return x


def killed_on_two(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def remember(value: int) -> None:
    global _setting
    _setting = value


def recall(_: object = None) -> int | None:
    return _setting


def block_in(directory: str, x: int) -> int:
    """Say the task has started (a file named after ``x``), then hold the worker
    (30 s at most): the test stops it first."""
    Path(directory, str(x)).touch()
    threading.Event().wait(30)
    return x


def raise_after(n: int, items: int) -> Iterator[int]:
    for i in range(items):
        if i == n:
            raise KeyError("input ran out")
        yield i


@pytest.fixture
def pool() -> Iterator[Pool]:
    with Pool(2) as running:
        yield running
    running.join()


def test_apply_and_apply_async(pool: Pool) -> None:
    assert pool.apply(square, (5,)) == 25
    assert pool.apply(square, (), {"x": 3}) == 9
    result = pool.apply_async(square, (7,))
    assert result.get(timeout=30) == 49
    assert result.ready() and result.successful()


def test_map_starmap_and_their_async_forms(pool: Pool) -> None:
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert pool.map(square, range(100), chunksize=7) == [x * x for x in range(100)]
    assert pool.map(square, []) == []
    assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
    assert pool.map_async(square, range(5)).get(30) == [0, 1, 4, 9, 16]
    assert pool.starmap_async(pow, [(2, 5)] * 3, 2).get(30) == [32, 32, 32]


def test_imap_is_in_order_and_imap_unordered_has_every_result(pool: Pool) -> None:
    assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]
    assert list(pool.imap(square, range(20), chunksize=6)) == [x * x for x in range(20)]
    assert sorted(pool.imap_unordered(square, range(20), 3)) == [x * x for x in range(20)]
    with pytest.raises(ValueError, match="Chunksize must be 1"):
        pool.imap(square, range(3), chunksize=0)


def test_imap_chunks_fail_whole_and_iteration_goes_on(pool: Pool) -> None:
    """A task of ``chunksize`` items fails as one, as in the standard pool, and
    the results after it still come."""
    results = pool.imap(fail_on_three, range(9), chunksize=3)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)
    assert list(results) == [6, 7, 8]


def test_an_input_that_raises_loses_the_chunk_it_was_filling(pool: Pool) -> None:
    results = pool.imap(square, raise_after(5, 10), chunksize=2)
    assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
    with pytest.raises(KeyError):
        next(results)
    with pytest.raises(KeyError):
        pool.map(square, raise_after(1, 3))


def test_errors_are_the_workers_own_with_its_traceback(pool: Pool) -> None:
    with pytest.raises(ValueError, match="three") as caught:
        pool.apply(fail_on_three, (3,))
    cause = caught.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)  # type: ignore[attr-defined]
    assert 'raise ValueError(f"three: {x}")' in cause.tb
    with pytest.raises(ValueError, match="three"):
        pool.map(fail_on_three, range(5))
    failed = pool.map_async(fail_on_three, range(5), chunksize=1)
    failed.wait(30)
    assert failed.ready() and not failed.successful()


def test_callbacks_run_on_a_thread_in_completion_order() -> None:
    seen: list[object] = []
    threads: set[threading.Thread] = set()

    def note(value: object) -> None:
        threads.add(threading.current_thread())
        seen.append(value)

    with Pool(1) as pool:  # one worker: the tasks complete in the order given
        results: list[ApplyResult[Any]] = [
            pool.apply_async(square, (x,), callback=note, error_callback=note) for x in range(4)
        ]
        results.append(pool.apply_async(fail_on_three, (3,), callback=note, error_callback=note))
        results.append(pool.map_async(square, range(3), callback=note, error_callback=note))
        for result in results:
            result.wait(30)
    pool.join()
    assert seen[:4] == [0, 1, 4, 9]
    assert isinstance(seen[4], ValueError)
    assert seen[5] == [0, 1, 4]
    assert threading.current_thread() not in threads


def test_a_callback_that_raises_does_not_stall_the_pool(pool: Pool) -> None:
    def bad(_: object) -> None:
        raise RuntimeError("callback failed")

    result = pool.apply_async(square, (3,), callback=bad)
    assert result.get(30) == 9  # ready, though its callback raised
    failed = pool.apply_async(fail_on_three, (3,), error_callback=bad)
    with pytest.raises(ValueError):
        failed.get(30)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]


def test_a_killed_worker_fails_only_its_task_and_the_pool_goes_on(pool: Pool) -> None:
    results = [pool.apply_async(killed_on_two, (x,)) for x in range(5)]
    with pytest.raises(parcelout.WorkerCrashed, match="SIGKILL"):
        results[2].get(30)
    assert [results[x].get(30) for x in (0, 1, 3, 4)] == [0, 1, 3, 4]
    streamed = pool.imap(killed_on_two, range(5))
    assert [next(streamed), next(streamed)] == [0, 1]
    with pytest.raises(parcelout.WorkerCrashed):
        next(streamed)
    assert list(streamed) == [3, 4]
    with pytest.raises(parcelout.WorkerCrashed):
        pool.map(killed_on_two, range(5))
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_get_times_out_and_a_result_not_ready_says_so(tmp_path: Path) -> None:
    pool = Pool(1)
    result = pool.apply_async(block_in, (str(tmp_path), 0))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    result.wait(0.01)
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    pool.terminate()
    pool.join()


def test_terminate_stops_at_once(tmp_path: Path) -> None:
    pool = Pool(2)
    running: list[ApplyResult[Any]] = [pool.apply_async(block_in, (str(tmp_path), x)) for x in range(2)]
    waiting = pool.starmap_async(block_in, [(str(tmp_path), x) for x in range(2, 50)])
    wait_until(lambda: len(list(tmp_path.iterdir())) == 2, 30, "both workers to start a task")
    start = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - start < 10  # the tasks would hold their workers 30 s
    for result in [*running, waiting]:
        with pytest.raises(CancelledError):
            result.get(10)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(square, (1,))


def test_close_then_join_finishes_the_work_given() -> None:
    pool = Pool(2)
    results = [pool.apply_async(square, (x,)) for x in range(6)]
    lazy = pool.imap(square, range(5))
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    assert list(lazy) == [0, 1, 4, 9, 16]  # an imap made before close still runs
    pool.join()
    assert [result.get(0) for result in results] == [x * x for x in range(6)]


def test_the_with_block_terminates_and_a_stopped_pool_takes_no_work() -> None:
    with Pool(1) as pool:
        assert pool.map(square, [2]) == [4]
        assert "state=RUN" in repr(pool)
    pool.join()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map_async(square, [1])
    with pytest.raises(ValueError, match="Pool not running"), pool:
        pass


def test_bad_arguments_fail_as_in_the_standard_pool() -> None:
    for processes in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            Pool(processes)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        Pool(1, initializer=1)  # type: ignore[arg-type]
    for value in (0, -1, 0.5, "12"):
        with pytest.raises(ValueError, match="maxtasksperchild"):
            Pool(1, maxtasksperchild=value)  # type: ignore[arg-type]
    with Pool(1) as pool, pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_maxtasksperchild_replaces_workers() -> None:
    with Pool(1, maxtasksperchild=2) as pool:
        pids = [pool.apply_async(pid).get(30) for _ in range(6)]
    pool.join()
    assert len(set(pids)) == 3
    assert os.getpid() not in pids


def test_initializer_runs_in_each_worker_with_its_arguments() -> None:
    with Pool(2, remember, (41,)) as pool:
        assert pool.map(recall, [None] * 4, chunksize=1) == [41] * 4
    pool.join()
    assert recall() is None


def test_context_chooses_the_start_method() -> None:
    with Pool(1, context=multiprocessing.get_context("spawn")) as pool:
        assert pool.apply(pid) != os.getpid()
    pool.join()
