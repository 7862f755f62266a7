"""Faults an independent audit found in the pool's own threads, each as a
user meets it: nothing hangs, a fault fails only its own task, and a dead
internal thread is never silent.

Every wait is bounded (``BOUND``): a hang fails the test. Thread and process
workers both, where the fault can strike both.
"""

from __future__ import annotations

import errno
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from concurrent.futures import BrokenExecutor, CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from parcelout import BrokenPool, InitializerFailed, Pool, TransferError, WorkerCrashed
from parcelout._core._messages import Batch, BatchResult, Call, Deliver, Send, Submitted, WorkerExited
from parcelout._core._scheduler import Scheduler
from tests import audit_work as work
from tests.scripts import run_script
from tests.waits import wait_until

BOUND = 20.0


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Gate:
    """A FIFO a task blocks on (``work.read_fifo``) until the test opens it."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "gate")
        os.mkfifo(self.path)
        self._opened = False

    def open(self) -> None:
        """Let the blocked task go (failing the test if none is there within ``BOUND``)."""
        wait_until(self.release, BOUND, "a task to wait at the gate")

    def release(self) -> bool:
        """Let a blocked task go, if one is there; True once one was."""
        if self._opened:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:  # ENXIO: nobody is reading the FIFO yet
            if error.errno != errno.ENXIO:
                raise
            return False
        with os.fdopen(fd, "w") as fifo:
            fifo.write("go")
        self._opened = True
        return True


# ---------------------------------------------------------------- done-callbacks


def test_a_slow_done_callback_holds_up_no_other_result(kind: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow(_: Future[Any]) -> None:
        entered.set()
        release.wait(BOUND)

    with Pool(2, kind) as pool:
        first = pool.submit(work.read_fifo, gate.path)
        first.add_done_callback(slow)  # before the gate opens: the future is not done yet
        gate.open()
        try:
            assert entered.wait(BOUND), "the callback never ran"
            assert pool.submit(work.square, 3).result(timeout=BOUND) == 9
            assert list(pool.imap(work.square, range(5))) == [0, 1, 4, 9, 16]
        finally:
            release.set()


def test_a_callback_may_wait_on_another_future_of_the_same_pool(kind: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    seen: list[int] = []
    done = threading.Event()
    later: list[Future[int]] = []

    def wait_on_the_other(_: Future[Any]) -> None:
        seen.append(later[0].result(timeout=BOUND))
        done.set()

    with Pool(1, kind) as pool:  # one worker: the second task runs after the first is done
        first = pool.submit(work.read_fifo, gate.path)
        first.add_done_callback(wait_on_the_other)
        later.append(pool.submit(work.square, 4))
        gate.open()
        assert done.wait(BOUND), "the callback waiting on another future deadlocked"
    assert seen == [16]


def test_a_callback_that_exits_is_logged_and_the_pool_goes_on(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    with Pool(2, kind) as pool:
        futures = [pool.submit(work.square, x) for x in range(20)]
        for future in futures:
            future.add_done_callback(lambda _: sys.exit(1))
        assert [f.result(timeout=BOUND) for f in futures] == [x * x for x in range(20)]
        assert pool.submit(work.square, 5).result(timeout=BOUND) == 25
    assert caplog.text.count("exception calling callback") == 20
    assert "SystemExit" in caplog.text


# ---------------------------------------------------------------- values that exit


def test_an_item_whose_pickling_exits_fails_alone() -> None:
    with Pool(2, "process") as pool:
        bad = pool.submit(work.length, work.ExitsInTheParent())
        with pytest.raises(SystemExit):
            bad.result(timeout=BOUND)
        assert pool.submit(work.square, 5).result(timeout=BOUND) == 25


def test_a_result_whose_rebuilding_exits_fails_alone_as_a_broken_process_pool_error() -> None:
    with Pool(2, "process") as pool:
        bad = pool.submit(work.result_that_exits_when_rebuilt, 1)
        with pytest.raises(TransferError) as caught:
            bad.result(timeout=BOUND)
        assert isinstance(caught.value, BrokenProcessPool)  # what a ProcessPoolExecutor user catches
        assert isinstance(caught.value.__cause__, SystemExit)
        assert "could not be unpickled in the parent" in str(caught.value)
        outcomes = list(pool.imap(work.result_that_exits_when_rebuilt, range(3), on_error="return"))
        assert [type(o.error) for o in outcomes] == [TransferError] * 3
        assert pool.submit(work.square, 5).result(timeout=BOUND) == 25


# ---------------------------------------------------------------- worker start-up


def test_a_submitted_task_survives_its_worker_dying_at_start_up(tmp_path: Path) -> None:
    marker = str(tmp_path / "died")
    with Pool(1, "process", initializer=work.die_the_first_time, initargs=(marker,)) as pool:
        assert pool.submit(work.square, 3).result(timeout=BOUND) == 9
        assert pool.submit(work.square, 4).result(timeout=BOUND) == 16
    assert Path(marker).exists()  # a worker did die first


def test_workers_killed_from_outside_during_start_up_do_not_break_the_pool(tmp_path: Path) -> None:
    with Pool(1, "process", initializer=work.wait_to_be_killed, initargs=(str(tmp_path), 3)) as pool:
        future = pool.submit(work.square, 6)
        for n in range(3):
            path = tmp_path / f"starting-{n}"
            wait_until(path.exists, BOUND, f"worker {n} to start")
            os.kill(int(path.read_text()), signal.SIGKILL)
        assert future.result(timeout=BOUND) == 36
        assert pool.submit(work.square, 7).result(timeout=BOUND) == 49


# ---------------------------------------------------------------- a dead dispatcher


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_dispatcher_breaks_the_pool_and_every_waiting_future(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    pool = Pool(1, kind)
    try:
        running = pool.submit(work.read_fifo, gate.path)
        wait_until(running.running, BOUND, "the first task to start")
        scheduler = pool._engine._scheduler  # type: ignore[union-attr]
        original = scheduler.handle

        def handle(event: Any) -> Any:
            if isinstance(event, Submitted):
                raise RuntimeError("injected: a bug in the dispatcher")
            return original(event)

        monkeypatch.setattr(scheduler, "handle", handle)
        waiting = pool.submit(work.square, 2)
        with pytest.raises(BrokenPool, match="dispatcher thread failed"):
            waiting.result(timeout=BOUND)
        with pytest.raises(BrokenPool):
            running.result(timeout=BOUND)
        with pytest.raises(BrokenExecutor):
            pool.submit(work.square, 3)
    finally:
        gate.release()  # its worker may be gone with the dispatcher
        pool.shutdown(wait=True)


# ---------------------------------------------------------------- shutdown and references


def test_shutdown_cancel_futures_cancels_the_tasks_not_begun(kind: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    pool = Pool(1, kind)
    first = pool.submit(work.read_fifo, gate.path)
    rest = [pool.submit(work.square, x) for x in range(20)]
    pool.shutdown(wait=False, cancel_futures=True)
    try:
        assert all(f.cancelled() for f in rest), [f for f in rest if not f.cancelled()]
        assert not first.cancelled()
    finally:
        gate.open()
        pool.shutdown(wait=True)
    assert first.result(timeout=BOUND) == "go"
    with pytest.raises(CancelledError):
        rest[0].result(timeout=0)


def test_the_pool_keeps_no_reference_to_a_finished_tasks_arguments(kind: str) -> None:
    with Pool(2, kind) as pool:
        payload = work.Payload()
        gone = weakref.ref(payload)
        future = pool.submit(work.length, payload)
        assert future.result(timeout=BOUND) == 1000
        del payload
        gc.collect()
        wait_until(lambda: gone() is None, BOUND, "the argument to be freed")


def test_pool_map_keeps_no_reference_to_results_already_yielded(kind: str) -> None:
    with Pool(2, kind) as pool:
        for result in pool.map(work.make_payload, range(1, 11)):
            gone = weakref.ref(result)
            del result
            gc.collect()
            assert gone() is None


# ---------------------------------------------------------------- interpreter exit

SUBMIT_AT_EXIT = """
import atexit
import parcelout

@atexit.register
def submit_late():
    try:
        pool.submit(abs, -1)
    except RuntimeError as error:
        print("refused:", error, flush=True)

if __name__ == "__main__":
    pool = parcelout.Pool(2, {backend!r})
    print("first:", pool.submit(abs, -1).result(), flush=True)
"""


def test_submit_from_an_atexit_hook_is_refused(kind: str, tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(SUBMIT_AT_EXIT.format(backend=kind))
    run = run_script(script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "first: 1",
        "refused: cannot schedule new futures after interpreter shutdown",
    ], run.stderr


# ---------------------------------------------------------------- the scheduler's share


def test_an_item_whose_receipt_kills_workers_fails_after_max_crashes() -> None:
    # A worker that dies after it was ready but before it marked the batch it
    # was sent (receiving it kills it) counts a crash against each of that
    # batch's items: the item is not sent again forever.
    ids = itertools.count(1)
    delivered: list[BatchResult] = []
    scheduler = Scheduler(1, ids.__next__, depth=1)
    batch = Batch(0, Call(work.square), [(0, 10), (1, 11)], delivered.append)
    out = scheduler.handle(Submitted(batch))
    for _ in range(20):
        sends = [i for i in out if isinstance(i, Send)]
        if not sends:
            break
        worker = sends[0].worker
        out = scheduler.handle(WorkerExited(worker, -9, batch_id=-1, position=-1, started=True))
        for instruction in out:
            if isinstance(instruction, Deliver):
                instruction.result.batch.sink(instruction.result)
    failed = [r for r in delivered if r.errors]
    assert sorted(r.batch.items[0][0] for r in failed) == [0, 1]
    assert all(isinstance(r.errors[0], WorkerCrashed) for r in failed)
    assert all(r.batch.crashes == 3 for r in failed)


# ---------------------------------------------------------------- initializers


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_initargs_that_travel_only_as_a_worker_starts_reach_it(method: str) -> None:
    context = multiprocessing.get_context(method)
    ready = context.Queue()
    try:
        with Pool(2, "process", mp_context=context, initializer=work.say_ready, initargs=(ready,)) as pool:
            assert pool.submit(work.square, 3).result(timeout=BOUND) == 9
            assert isinstance(ready.get(timeout=BOUND), int)
    finally:
        ready.close()
        ready.join_thread()


def test_a_failing_initializer_is_logged_where_process_pool_executor_logs_it() -> None:
    context = multiprocessing.get_context("forkserver")
    log = context.Queue()
    try:
        pool = Pool(1, "process", mp_context=context, initializer=work.fail_and_log_to, initargs=(log,))
        with pool, pytest.raises(InitializerFailed):
            pool.submit(work.square, 3).result(timeout=BOUND)
        # Already there when the pool is broken, as with the standard pool (whose
        # owner reads the log at that moment, as CPython's own test does).
        assert not log.empty()
        record = log.get(timeout=BOUND)
        assert "Exception in initializer:" in record.getMessage()
        assert "ValueError: error in initializer" in record.getMessage()
    finally:
        log.close()
        log.join_thread()
