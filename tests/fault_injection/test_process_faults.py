"""Faults of the process backend's own machinery, not of the items' code.

* The worker's receiving thread fails (a batch too large for the worker's
  memory, a bug): the worker must die, saying why, not hang the run.
* The parent's reader thread fails while handling one worker: that worker
  dies (and the run goes on); failing outside any worker, it kills them all
  and the pool breaks, rather than leaving anyone waiting.
* What an item starts (a grandchild process) must not outlive its worker:
  killed past its timeout, crashed, shut down, or orphaned by a parent killed
  with SIGKILL.
* ``SystemExit`` raised while a result, an exception or the function crosses
  the boundary is an item's error, not the worker's end.

Every wait is bounded; the conftests check that nothing is left.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import parcelout
from parcelout import Failure, TaskTimeout, WorkerCrashed
from parcelout._core._messages import Batch, BatchDone, Call, Event, WorkerExited
from parcelout.backends import _child
from parcelout.backends import _wire as wire
from parcelout.backends._process import ProcessBackend, default_context
from tests import faults
from tests.fault_injection import _work as work
from tests.fault_injection._accounting import account
from tests.fault_injection._support import PROMPTLY, all_gone, expect, halve, still_works
from tests.waits import wait_until

N = 12
CULPRIT = 5
CHUNK = 4
ROOT = Path(__file__).resolve().parents[2]
START_METHODS = ["fork", "forkserver", "spawn"]


@contextlib.contextmanager
def closing(pool: parcelout.Pool) -> Iterator[parcelout.Pool]:
    """The pool, shut down and waited for at the end; but after a failure not
    waited for (work that never ends must fail the test, not hang it)."""
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def pids_written(directory: Path, x: int = 0) -> tuple[int, int]:
    """The worker's and the grandchild's pids that item ``x`` wrote (see
    ``faults.start_sleeper``), once it has."""
    path = directory / f"pids-{x}"
    wait_until(path.exists, PROMPTLY, f"item {x} to write its pids")
    worker, grandchild = map(int, path.read_text().split())
    return worker, grandchild


def group_members(group: int) -> list[int]:
    """The live processes of a process group (a zombie has exited)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def gone_with_its_group(worker: int, *others: int) -> None:
    """The worker, the other processes and every process of the worker's
    group (its group reaper, what its items started) end, promptly."""
    wait_until(lambda: all_gone([worker, *others]), PROMPTLY, "the worker and what its item started to be gone")
    wait_until(lambda: not group_members(worker), PROMPTLY, "the worker's process group to be empty")


# ---------------------------------------------------------------- the worker's receiving thread


def test_a_batch_too_large_for_the_worker_kills_it_with_a_reason_and_fails_as_a_crash() -> None:
    """The worker cannot allocate the item it is sent (``RLIMIT_AS``): its
    receiving thread gets a ``MemoryError``. The worker must die at once,
    saying why; the item fails as a crash after ``max_crashes`` deaths, the
    others get their results. (Before: the thread died alone and the run
    hung, even with a timeout.)"""
    items = [b"x" * i for i in range(N)]
    items[CULPRIT] = bytes(256 * 2**20)
    with closing(
        parcelout.Pool(2, "process", initializer=faults.limit_address_space, initargs=(64 * 2**20,), task_timeout=30)
    ) as pool:
        by_index = account(pool.imap(len, items, chunksize=1, on_error="return"), N, lambda i: i)
        failure = expect(by_index, lambda i: i, {CULPRIT: ("crash", WorkerCrashed)})[CULPRIT]
        assert isinstance(failure.error, WorkerCrashed)
        assert failure.error.exitcode == _child.BROKEN_EXIT, str(failure.error)
        assert "parcelout worker: could not receive a batch: MemoryError" in str(failure.error)
        still_works(pool)


def run_backend(initializer: Callable[[], object]) -> tuple[ProcessBackend, queue.SimpleQueue[Event]]:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    backend = ProcessBackend(events.put, context=default_context(), initializer=initializer)
    backend.start_worker(0)
    return backend, events


def next_event(events: queue.SimpleQueue[Event], kind: type[Any] | tuple[type[Any], ...]) -> Any:
    """The next event of that kind (the others, such as ``ItemStarted``, skipped)."""
    while True:
        event = events.get(timeout=PROMPTLY)
        if isinstance(event, kind):
            return event


def test_any_failure_of_the_receiving_thread_ends_the_worker_with_a_reason() -> None:
    """Injected: once the worker's initializer has run, its receiving thread
    fails on the next message (``RuntimeError``). The backend must report
    the worker's death, with its exit code and its line on standard error."""
    backend, events = run_backend(faults.break_worker_receiving)
    try:
        backend.send(0, Batch(1, Call(faults.double), [(0, 21)], lambda _: None))
        event = next_event(events, (BatchDone, WorkerExited))  # received before the initializer ran, or not
        if isinstance(event, BatchDone):  # the initializer has run: the next message breaks the thread
            assert (event.batch_id, list(event.values), event.errors) == (1, [42], {})
            backend.send(0, Batch(2, Call(faults.double), [(1, 1)], lambda _: None))
            event = next_event(events, WorkerExited)
    finally:
        backend.close()
    assert event.exitcode == _child.BROKEN_EXIT  # (started or not: it may die before its "ready" is sent)
    assert "parcelout worker: could not receive a batch: RuntimeError: injected: receiving is broken" in event.detail


# ---------------------------------------------------------------- the parent's reader thread


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[int]]:
    """``injected(name)``: the reader's step ``ProcessBackend.<name>`` raises
    once (on a ``"done"`` reply for ``_handle``); returns the list that
    receives the pid of the worker it was handling."""

    def inject(name: str) -> list[int]:
        original = getattr(ProcessBackend, name)
        failed: list[int] = []

        def step(self: ProcessBackend, proc: Any, *args: Any) -> None:
            if not failed and (name != "_handle" or args[0][0][0] == "done"):
                failed.append(proc.process.pid)
                raise RuntimeError(f"injected: {name} failed")
            original(self, proc, *args)

        monkeypatch.setattr(ProcessBackend, name, step)
        return failed

    return inject


@pytest.mark.parametrize(
    ("step", "fn"),
    [("_handle", faults.double), ("_receive", faults.double), ("_relay", faults.say_on_stderr)],
    ids=["decoding-a-reply", "receiving", "copying-its-stderr"],
)
def test_a_reader_failure_handling_one_worker_kills_that_worker_and_the_run_goes_on(
    step: str, fn: Callable[[int], int], injected: Callable[[str], list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    failed = injected(step)
    with closing(parcelout.Pool(2, "process", retries=1)) as pool:
        by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        expect(by_index, lambda i: 2 * i, {})  # what the killed worker held ran again
        assert len(failed) == 1, "the injected failure never happened"
        gone_with_its_group(failed[0])
        still_works(pool)
    assert f"injected: {step} failed" in caplog.text


def test_a_reader_failure_reaping_a_worker_still_reports_its_death(
    injected: Callable[[str], list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    failed = injected("_reap")
    fn = functools.partial(work.die_on, CULPRIT, "os._exit(7)")
    with closing(parcelout.Pool(2, "process")) as pool:
        by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("crash", WorkerCrashed)})[CULPRIT]
        assert isinstance(failure.error, WorkerCrashed)
        assert failure.error.exitcode == 7, str(failure.error)
        assert "the parent failed to handle what it sent (RuntimeError: injected: _reap failed)" in str(failure.error)
        assert len(failed) == 1
        still_works(pool)
    assert "injected: _reap failed" in caplog.text


def test_a_reader_failure_outside_any_worker_breaks_the_pool_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader loop itself fails (injected in its timing of kills): every
    worker is killed and reported gone, and the pool fails what it holds and
    what comes later, promptly; nothing waits on the dead reader."""
    broken: list[bool] = []
    original = ProcessBackend._kill_grace_left

    def kill_grace_left(procs: list[Any]) -> float | None:
        if broken:
            raise RuntimeError("injected: the reader loop failed")
        return original(procs)

    monkeypatch.setattr(ProcessBackend, "_kill_grace_left", staticmethod(kill_grace_left))
    with closing(parcelout.Pool(2, "process")) as pool:
        assert pool.submit(faults.double, 0).result(timeout=PROMPTLY) == 0
        broken.append(True)
        first = pool.submit(faults.double, 1)  # its reply wakes the reader, which then fails
        try:
            assert first.result(timeout=PROMPTLY) == 2
        except Exception as exc:
            assert "reader thread failed" in str(exc)
        with pytest.raises(Exception, match="reader thread failed"):
            pool.submit(faults.double, 2).result(timeout=PROMPTLY)
    assert "the process pool's reader thread failed" in caplog.text


# ---------------------------------------------------------------- what an item starts


def test_each_worker_leads_its_own_process_group_and_ignores_the_terminals_signals(start_method: str) -> None:
    """Ctrl-C is the parent's to handle, as before; and a background group
    must not be stopped for using the terminal. (``start_method``: the
    conftest's, not fork, which warns in a process with threads.)"""
    with closing(parcelout.Pool(1, "process", start_method=start_method)) as pool:
        leader, ignored = pool.submit(faults.group_and_signals, 0).result(timeout=PROMPTLY)
        assert leader
        assert ignored == ["SIGINT", "SIGTTOU", "SIGTTIN"]


@pytest.mark.parametrize("how", ["timed-out", "crashed", "returned", "ctrl-c-in-the-with-block"])
def test_what_an_item_started_dies_with_its_worker(how: str, tmp_path: Path) -> None:
    """A grandchild the item started (``sleep 60``) dies when its worker is
    killed past the item's timeout, when the worker crashes, or when the pool
    shuts down, after the item returned or while it runs."""
    mode = {"timed-out": "block", "crashed": "exit", "returned": "return", "ctrl-c-in-the-with-block": "block"}[how]
    fn = functools.partial(faults.sleeper_then, str(tmp_path), mode)
    interrupted = pytest.raises(KeyboardInterrupt) if how == "ctrl-c-in-the-with-block" else contextlib.nullcontext()
    with interrupted, parcelout.Pool(1, "process", task_timeout=0.5 if how == "timed-out" else None) as pool:
        future = pool.submit(fn, 0)
        worker, grandchild = pids_written(tmp_path)
        if how == "ctrl-c-in-the-with-block":
            raise KeyboardInterrupt
        if how == "returned":
            assert future.result(timeout=PROMPTLY) == 0
        else:
            with pytest.raises(TaskTimeout if how == "timed-out" else WorkerCrashed):
                future.result(timeout=PROMPTLY)
            gone_with_its_group(worker, grandchild)  # now, not at the pool's end
            still_works(pool)
    gone_with_its_group(worker, grandchild)


SCRIPT = """
import functools, sys

import parcelout
from parcelout.backends import _child
from tests import faults

if __name__ == "__main__":
    directory, start_method, shell = sys.argv[1:]
    _child._SHELL = shell  # a forked worker inherits it
    with parcelout.Pool(1, "process", start_method=start_method) as pool:
        pool.submit(functools.partial(faults.sleeper_then, directory, "hold-the-gil"), 0).result(timeout=60)
"""


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Callable[[str, str], subprocess.Popen[bytes]]]:
    """Start the script above (a pool whose item starts a grandchild, then
    holds its worker's GIL) with a start method; kill it at the end."""
    started: list[subprocess.Popen[bytes]] = []
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def start(start_method: str, shell: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(tmp_path / "script.py"), str(tmp_path), start_method, shell]
        started.append(subprocess.Popen(command, cwd=ROOT, env=env))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait(PROMPTLY)


@pytest.mark.parametrize(
    ("start_method", "shell"),
    [*((method, "/bin/sh") for method in START_METHODS), ("fork", "/no/shell")],
    ids=[*START_METHODS, "fork-without-a-shell"],
)
def test_a_parent_killed_by_sigkill_takes_its_workers_and_their_grandchildren_along(
    start_method: str, shell: str, tmp_path: Path, script: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    """The worker holds its GIL (so it cannot notice its pipe close): the
    kernel kills it (``PR_SET_PDEATHSIG``), and its group reaper kills what
    its item started. (Without a shell, the reaper is forked.)"""
    parent = script(start_method, shell)
    worker, grandchild = pids_written(tmp_path)
    below = psutil.Process(parent.pid).children(recursive=True)
    pids = [p.pid for p in below]
    assert worker in pids
    assert grandchild in pids
    parent.send_signal(signal.SIGKILL)
    parent.wait(PROMPTLY)
    try:
        gone_with_its_group(worker, grandchild, *pids)
    finally:  # if not, they are orphans: no other test's check would see them
        for process in below:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


# ---------------------------------------------------------------- SystemExit on the way


def test_a_result_whose_pickling_exits_fails_as_that_items_system_exit() -> None:
    fn = functools.partial(faults.result_exits_when_pickled_on, CULPRIT)
    with closing(parcelout.Pool(2, "process")) as pool:
        by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("error", SystemExit)})[CULPRIT]
        assert isinstance(failure.error, SystemExit)
        assert failure.error.code == 1
        still_works(pool)


def test_an_exception_whose_pickling_exits_comes_back_as_a_remote_error() -> None:
    fn = functools.partial(faults.raise_exiting_error_on, CULPRIT)
    with closing(parcelout.Pool(2, "process")) as pool:
        by_index = account(pool.imap(fn, range(N), chunksize=CHUNK, on_error="return"), N, halve)
        failure = expect(by_index, lambda i: 2 * i, {CULPRIT: ("error", parcelout.RemoteError)})[CULPRIT]
        assert isinstance(failure.error, parcelout.RemoteError)
        assert failure.error.type_name.endswith("ExitingError")
        assert f"exiting error on {CULPRIT}" in failure.error.message
        still_works(pool)


def test_a_function_whose_unpickling_exits_fails_its_items_and_the_worker_goes_on() -> None:
    with closing(parcelout.Pool(1, "process")) as pool:
        worker = pool.submit(faults.pid_of, 0).result(timeout=PROMPTLY)
        by_index = account(
            pool.imap(faults.ExitsWhenUnpickled(), range(8), chunksize=CHUNK, on_error="return"), 8, halve
        )
        for index, outcome in by_index.items():
            assert isinstance(outcome, Failure), f"item {index} gave {outcome!r}"
            assert isinstance(outcome.error, SystemExit)
            assert outcome.error.code == 3
        assert pool.submit(faults.pid_of, 0).result(timeout=PROMPTLY) == worker


def test_any_exception_running_a_batch_becomes_its_items_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever escapes from running or encoding a batch, ``SystemExit``
    included, fails the batch's items; the worker's loop goes on."""

    def run_batch(*args: object, **kwargs: object) -> Any:
        raise SystemExit(5)

    monkeypatch.setattr(_child, "run_batch", run_batch)
    payload, _ = wire.encode([1, 2, 3], lambda _: "")
    header: tuple[Any, ...] = (7, 1, pickle.dumps(faults.double), False, 3, False, [])
    slot = [-1, -1, 0, 0, -1]
    reply, buffers = _child._run_or_fail((header, payload, []), {}, slot, None)  # type: ignore[arg-type]
    kind, batch_id, _elapsed, _blob, positions, failures, _sizes = reply
    assert (kind, batch_id, positions, buffers, slot[:2]) == ("done", 7, [0, 1, 2], [], [7, -1])
    errors = wire.decode_failures(failures, positions)
    # (args, not code: importing dask, as the test session does, makes tblib pickle
    # exceptions without their code.)
    assert all(isinstance(error, SystemExit) and error.args == (5,) for error in errors.values()), errors


@pytest.fixture(autouse=True)
def _parcelout_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="parcelout")


def test_a_function_sent_long_ago_still_runs_after_many_others() -> None:
    """A worker keeps the functions it was sent in a bounded cache; the parent
    must send again one the worker dropped (a map's function after more than
    ``FN_CACHE_SIZE`` submitted calls), rather than fail its items."""
    with closing(parcelout.Pool(1, "process")) as pool:
        outcomes = pool.imap(faults.double, range(N), chunksize=1, window=1, on_error="return")
        first = next(outcomes)
        worker = pool.submit(faults.pid_of, 0).result(timeout=PROMPTLY)
        for x in range(2 * _child.FN_CACHE_SIZE):
            assert pool.submit(faults.double, x).result(timeout=PROMPTLY) == 2 * x
        expect(account(itertools.chain([first], outcomes), N, halve), lambda i: 2 * i, {})
        assert pool.submit(faults.pid_of, 0).result(timeout=PROMPTLY) == worker, "the worker died"
