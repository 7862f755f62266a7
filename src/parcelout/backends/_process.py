"""Process workers the pool owns: one process and one duplex pipe per worker.

Owning the processes (rather than wrapping ``ProcessPoolExecutor``) is what
lets the pool know which item each worker runs: the worker marks
``[batch_id, position]`` in a small shared-memory slot, so when it dies the
scheduler can blame exactly that item and give the others back.

Two threads of the parent touch the pipes: the engine's dispatcher sends, and
this backend's reader thread receives (``multiprocessing.connection.wait`` on
every pipe, every process sentinel and a wake-up pipe). Sending and receiving
in different threads means a worker blocked writing a large result can never
deadlock against a parent blocked writing the next batch.

The reader also copies each worker's standard error to the parent's, keeping
its last lines, and, when a worker dies, says what it knows (those lines, the
worker's peak memory, whether it was likely out of memory) in the
``WorkerExited`` it reports. A worker stopped with a grace period gets
SIGTERM, then SIGKILL from the reader once the grace is over.

Each worker leads its own process group (see ``_child``): every kill, and
every reaping, kills the whole group, so what an item started does not
outlive its worker. The reader thread must not die: an exception while
handling one worker kills that worker (its sentinel then reports it, as any
death); one outside any worker's handling kills every worker, reports them
gone, and fails every later start, so that nothing waits on a reader that is
gone.

Functions and items travel with cloudpickle where plain pickle cannot carry
them. An item, function or result that cannot be pickled fails its own item,
with a note that names it; the worker and the other items go on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, ItemStarted, WorkerExited
from parcelout._options import default_start_method
from parcelout.backends import _child
from parcelout.backends import _wire as wire

Context = multiprocessing.context.BaseContext
_PRELOAD = ["parcelout.backends._child"]  # added to the fork server's list, never in its place
STDERR_LINES = 20
_GIVE_UP_JOIN = 10.0  # seconds to wait for a killed worker when the reader gives up
_log = logging.getLogger("parcelout")


def default_context(start_method: str | None = None) -> Context:
    """The start method asked for, else parcelout's default (``default_start_method``)."""
    if start_method is None:
        start_method = default_start_method()
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        _add_forkserver_preload(context)
    return context


def _add_forkserver_preload(context: Context) -> None:
    """Add parcelout's worker module to the fork server's preload list,
    keeping what is there: the list is the process's, and a user's earlier
    ``set_forkserver_preload`` must survive (``__main__``, the default,
    stays only if the list still has it). Once the fork server runs, its
    list no longer matters, and it is left alone."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        return
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [name for name in _PRELOAD if name not in current]
    if missing:
        context.set_forkserver_preload(current + missing)


@dataclass(eq=False)
class _Worker:
    id: int
    process: Any
    conn: Connection
    slot: Any
    stderr: Connection
    known: set[int] = field(default_factory=set)
    send_errors: dict[int, dict[int, BaseException]] = field(default_factory=dict)
    eof: bool = False
    ready: bool = False
    stderr_tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    fatal: list[bytes] | None = None  # from faulthandler's "Fatal Python error" line on
    stderr_partial: bytes = b""
    kill_at: float | None = None
    failure: str | None = None  # why the reader killed it: an exception handling it
    reaped: bool = False  # joined: its pid may be another process's now


def _kill(proc: _Worker) -> None:
    """SIGKILL a worker and its process group (what its items started),
    unless it is reaped already."""
    with _exit_status_lock:
        if not proc.reaped:
            _kill_group(proc.process)


def _kill_group(process: Any) -> None:
    """SIGKILL a process and the group it leads. (Before it has made its
    group there is none, and no grandchild either.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()


class ProcessBackend:
    def __init__(
        self,
        report: Callable[[Event], None],
        *,
        context: Context | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._report = report
        self._context = context or default_context()
        self._init = None if initializer is None else _pickle_initializer(initializer, initargs)
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._broken: BaseException | None = None  # the reader thread's failure
        self._wake_r, self._wake_w = os.pipe()
        self._reader = threading.Thread(target=self._read_loop, name="parcelout-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ transport
    def start_worker(self, worker: int) -> None:
        if self._broken is not None:
            error = RuntimeError(f"the process pool's reader thread failed ({self._broken!r}): no worker can start")
            self._report(InitFailed(worker, error))
            self._report(WorkerExited(worker, None, started=False))
            return
        conn, child_conn = self._context.Pipe(duplex=True)
        stderr, child_stderr = self._context.Pipe(duplex=False)
        slot = self._context.RawArray("q", [-1, -1, 0, 0, -1])
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_child.main,
            args=(child_conn, slot, self._init, child_stderr),
            name=f"parcelout-worker-{worker}",
        )
        try:
            with _main_without_a_missing_file(), _exit_status_lock:
                process.start()
        except Exception as exc:
            conn.close()
            stderr.close()
            self._report(InitFailed(worker, exc))
            self._report(WorkerExited(worker, None, started=False))
            return
        finally:
            child_conn.close()
            child_stderr.close()
        os.set_blocking(stderr.fileno(), False)
        with self._lock:
            if self._broken is None:
                self._workers[worker] = _Worker(worker, process, conn, slot, stderr)
                self._wake()
                return
        with _exit_status_lock:  # the reader failed while it started: nobody would watch it
            _kill_group(process)
            process.join()
        conn.close()
        stderr.close()
        self._report(WorkerExited(worker, process.exitcode, started=False))

    def send(self, worker: int, batch: Batch) -> None:
        proc = self._workers.get(worker)
        if proc is None:
            return  # it died; its WorkerExited is on the way and the scheduler requeues
        call, n = batch.call, len(batch.items)
        fn_bytes = wire.function_bytes(call)
        if isinstance(fn_bytes, BaseException):
            self._report(BatchDone(worker, batch.id, [None] * n, dict.fromkeys(range(n), fn_bytes), 0.0))
            return
        starts = batch.policy.timeout is not None
        buffers: list[memoryview] = []
        payload, errors = wire.encode_items(batch, buffers)
        sizes = [buffer.nbytes for buffer in buffers]
        if call.token not in proc.known and len(proc.known) >= _child.FN_CACHE_SIZE:
            proc.known.clear()  # as the worker clears its cache when this function comes
        header = (batch.id, call.token, None if call.token in proc.known else fn_bytes, call.star, n, starts, sizes)
        if errors:
            proc.send_errors[batch.id] = errors
        try:
            proc.conn.send_bytes(pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL))
            proc.conn.send_bytes(payload)
            for buffer in buffers:
                proc.conn.send_bytes(buffer)
        except (OSError, ValueError, TypeError):
            # It died meanwhile and the reader, reaping it, closed the pipe
            # (TypeError: closed halfway through a send). The reader reports it.
            return
        proc.known.add(call.token)

    def stop_worker(self, worker: int) -> None:
        proc = self._workers.get(worker)
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):  # it died: the reader reports it
                proc.conn.send_bytes(_child.STOP)

    def kill_worker(self, worker: int, grace: float = 0.0) -> None:
        proc = self._workers.get(worker)
        if proc is None:
            return
        if grace <= 0:
            _kill(proc)
            return
        proc.process.terminate()
        proc.kill_at = time.monotonic() + grace
        self._wake()  # the reader waits until then at most

    def close(self) -> None:
        with self._lock:
            self._closing = True
            left = list(self._workers.values())
        for proc in left:
            _kill(proc)
        self._wake()
        self._reader.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------ reader thread
    def _wake(self) -> None:
        os.write(self._wake_w, b"x")

    def _read_loop(self) -> None:
        try:
            self._read_until_closed()
        except BaseException as exc:  # a bug outside any one worker
            self._give_up(exc)

    def _read_until_closed(self) -> None:
        while True:
            with self._lock:
                if self._closing and not self._workers:
                    return
                procs = list(self._workers.values())
            waitables: dict[Any, _Worker] = {p.process.sentinel: p for p in procs}
            waitables.update({p.conn: p for p in procs if not p.eof and p.failure is None})
            streams = {p.stderr: p for p in procs if not p.stderr.closed and p.failure is None}
            for ready in wait([self._wake_r, *waitables, *streams], timeout=self._kill_grace_left(procs)):
                if ready == self._wake_r:
                    os.read(self._wake_r, 4096)
                elif ready in streams:
                    self._guarded(self._relay, streams[ready])
                elif ready is waitables[ready].conn:
                    self._guarded(self._receive, waitables[ready])
                else:
                    self._guarded(self._reap, waitables[ready])

    def _guarded(self, step: Callable[[_Worker], None], proc: _Worker) -> None:
        """Run ``step`` for ``proc``; if it raises, kill that worker: its
        sentinel reports it. Failing again as it is reaped is no longer that
        worker's trouble: the exception ends the reader (``_give_up``)."""
        if proc.failure is not None and step != self._reap:
            return  # killed already: only its reaping is left, the next one of its events
        try:
            step(proc)
        except BaseException as exc:
            if proc.failure is not None:
                raise
            proc.failure = f"the parent failed to handle what it sent ({type(exc).__name__}: {exc}) and killed it"
            _log.error("parcelout: worker process %s: %s", proc.process.pid, proc.failure, exc_info=exc)
            _kill(proc)

    def _give_up(self, exc: BaseException) -> None:
        """The reader cannot go on: kill every worker, report each gone, and
        make every later start fail, so that nobody waits on a dead reader."""
        _log.critical("parcelout: the process pool's reader thread failed; killing every worker", exc_info=exc)
        with self._lock:
            self._broken = exc
            left = list(self._workers.values())
            self._workers.clear()
        for proc in left:
            _kill(proc)
        for proc in left:
            try:
                with _exit_status_lock:
                    proc.process.join(_GIVE_UP_JOIN)
                    proc.reaped = proc.process.exitcode is not None
                proc.conn.close()
                proc.stderr.close()
                detail = f"the parent's reader thread failed ({type(exc).__name__}: {exc}) and killed it"
                self._report(
                    WorkerExited(proc.id, proc.process.exitcode, proc.slot[0], proc.slot[1], proc.ready, detail)
                )
            except Exception as why:  # each worker gets its report, whatever the others' did
                _log.critical("parcelout: could not report worker process %s gone", proc.process.pid, exc_info=why)

    @staticmethod
    def _kill_grace_left(procs: list[_Worker]) -> float | None:
        """Kill the workers whose grace period is over; the time to the next one's end."""
        now = time.monotonic()
        left = None
        for proc in procs:
            if proc.kill_at is None:
                continue
            if proc.kill_at <= now:
                _kill(proc)
                proc.kill_at = None
            else:
                left = min(left if left is not None else proc.kill_at - now, proc.kill_at - now)
        return left

    def _relay(self, proc: _Worker) -> None:
        """Copy what the worker wrote to its standard error to ours; keep its last lines."""
        while True:
            try:
                data = os.read(proc.stderr.fileno(), 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                proc.stderr.close()
                return
            with contextlib.suppress(OSError):
                _write_all(2, data)
            lines = (proc.stderr_partial + data).split(b"\n")
            proc.stderr_partial = lines.pop()[-4096:]
            for line in lines:
                if line.startswith(b"Fatal Python error"):
                    proc.fatal = []
                if proc.fatal is not None and len(proc.fatal) < 2 * STDERR_LINES:
                    proc.fatal.append(line[-500:])  # the innermost frames come first: keep them
                proc.stderr_tail.append(line[-500:])

    def _receive(self, proc: _Worker) -> None:
        try:
            reply = _child.receive_message(proc.conn)
        except (EOFError, OSError):
            proc.eof = True  # its sentinel fires next
            return
        self._handle(proc, reply)

    def _reap(self, proc: _Worker) -> None:
        """The process is gone: take what it sent before it died, then report.

        Its group goes too: what its items started. (Killed before it is
        joined: until then its pid cannot be another process's.)
        """
        while not proc.eof and proc.failure is None:
            try:
                if not proc.conn.poll():
                    break
                reply = _child.receive_message(proc.conn)
            except (EOFError, OSError):
                break  # what it sent last was cut short: that batch runs again
            self._handle(proc, reply)
        with _exit_status_lock:
            if not proc.reaped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.join()
            proc.reaped = True
            exitcode = proc.process.exitcode
        if not proc.stderr.closed and proc.failure is None:
            self._relay(proc)
        proc.conn.close()
        proc.stderr.close()
        if proc.failure is not None:
            detail = proc.failure
        else:
            detail = "" if exitcode == 0 or proc.kill_at is not None else _crash_detail(proc)
        self._report(WorkerExited(proc.id, exitcode, proc.slot[0], proc.slot[1], proc.ready, detail))
        with self._lock:
            del self._workers[proc.id]

    def _handle(self, proc: _Worker, message: tuple[tuple[Any, ...], list[bytearray]]) -> None:
        reply, buffers = message  # plain types only: the values inside are encoded apart
        if reply[0] == "started":
            self._report(ItemStarted(proc.id, reply[1], reply[2]))
            return
        if reply[0] == "ready":
            proc.ready = True
            return
        if reply[0] == "init_failed":
            self._report(InitFailed(proc.id, wire.decode_failures(reply[1], [0])[0]))
            return
        _, batch_id, elapsed, blob, positions, failures, _sizes = reply
        values, errors = wire.decode(
            blob, lambda _: "parcelout: the item's result could not be unpickled in the parent process", buffers
        )
        errors.update(wire.decode_failures(failures, positions))
        errors.update(proc.send_errors.pop(batch_id, {}))
        self._report(BatchDone(proc.id, batch_id, values, errors, elapsed))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _crash_detail(proc: _Worker) -> str:
    """What the parent knows of a worker's death: out of memory?, its peak
    memory, its last lines of standard error."""
    resident, virtual, limit = proc.slot[2], proc.slot[3], proc.slot[4]
    parts = []
    if likely_out_of_memory(proc.process.exitcode, resident, virtual, limit, memory_limit()):
        parts.append("likely out of memory")
    if resident > 0:
        within = f" (address-space limit {_size(limit)})" if limit > 0 else ""
        parts.append(f"peak memory {_size(resident)}{within}")
    text = "; ".join(parts)
    tail = [line.decode(errors="replace") for line in proc.fatal or proc.stderr_tail]
    if proc.stderr_partial and not proc.fatal:
        tail.append(proc.stderr_partial.decode(errors="replace"))
    if tail:
        text += ("; " if text else "") + "its last lines of standard error:\n" + "\n".join(tail)
    return text


def likely_out_of_memory(exitcode: int | None, resident: int, virtual: int, as_limit: int, memory: int | None) -> bool:
    """Whether a death looks like an out-of-memory kill (all sizes in KiB).

    The kernel's OOM killer sends SIGKILL, to a process using much of the
    memory it may use; an exhausted address-space limit (``RLIMIT_AS``)
    makes allocations fail, which C code may answer with an abort or a
    segfault.
    """
    if exitcode is None or exitcode >= 0:
        return False
    if exitcode == -signal.SIGKILL and memory and resident >= 0.5 * memory:
        return True
    return as_limit > 0 and virtual >= 0.9 * as_limit


def memory_limit() -> int | None:
    """The memory this process tree may use, in KiB: its cgroup's limit, else the RAM."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            limits.append(int(f.read().strip()) // 1024)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024)
    return min(limits, default=None)


def _size(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB" if kib < 1024 * 1024 else f"{kib / 1024 / 1024:.1f} GiB"


@contextlib.contextmanager
def _main_without_a_missing_file() -> Iterator[None]:
    """Start workers of a main module that has no file to import again.

    The spawn and forkserver start methods run the parent's main file again
    in each worker. A script read from standard input has ``__file__ ==
    "<stdin>"``, so every worker would die at start-up. Its functions travel
    by value (cloudpickle), so the workers do not need it: hide the name while
    the worker starts.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(main, "__spec__", None) is not None or path is None or os.path.exists(path):
        yield
        return
    with _main_lock:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


_main_lock = threading.Lock()
# Process.start() first polls every child multiprocessing knows of; under
# forkserver, two threads reading one dead child's status race, and the loser
# records exit code 255. Starting and reaping under one lock keeps the real code.
_exit_status_lock = threading.Lock()


def _pickle_initializer(initializer: Callable[..., object], initargs: tuple[Any, ...]) -> _child.Initializer:
    """The initializer for ``_child.main``: pickled here (so that one that
    cannot travel fails now), and its arguments too, unless they travel only
    as a worker starts (a multiprocessing Queue): then as they are."""
    try:
        function = bytes(cloudpickle.dumps(initializer))
    except Exception as exc:
        exc.add_note("parcelout: the initializer could not be pickled for a process worker")
        raise
    try:
        return function, bytes(cloudpickle.dumps(initargs))
    except Exception:
        return function, initargs
