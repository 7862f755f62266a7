"""The worker process's loop. It imports little, so a worker starts fast.

The parent sends each batch as two messages over a duplex pipe: a pickled
header ``(batch_id, token, fn_bytes, star, n, report_starts)`` and the pickled list of the
``n`` items, so that items that fail to unpickle fail alone, not the worker.
The function comes once per worker (cached by token, in a bounded cache
that the parent mirrors to know what to send again). A receiver thread
moves messages off the pipe at once, so the parent's send never waits for
the current item to finish, and it ends the process when the parent is gone
(end of file on the pipe). The worker marks
``slot = [batch_id, position]`` in shared memory before each item: if it dies,
the parent knows which item killed it. For a batch with a timeout it also
sends ``("started", batch_id, position)`` before each item, so the parent
can time the item itself.

The worker's standard error goes to a pipe the parent reads (and copies to
its own standard error), so a crash report can quote its last lines;
``faulthandler`` prints the Python stack there on a fatal signal. A thread
samples the process's peak memory into the slot every ``MEMORY_PERIOD``
seconds, for the report of a death by out-of-memory kill.

The worker leads its own process group, so that what its items start (a
``subprocess``) dies with it: the parent kills the whole group, the kernel
kills the worker when its parent dies (``PR_SET_PDEATHSIG``, which needs no
GIL), and a tiny "group reaper" process kills the group once the worker is
gone, however it went (a SIGKILL leaves it no chance to). A failure of the
receiver thread ends the process, with a line on standard error, so the
parent sees a death rather than a worker that never answers; an exception
from running or encoding a batch (``SystemExit`` included) becomes its
items' error.

Replies: ``("ready",)`` once started (after the initializer), then one
``("done", ...)`` per batch (see ``_reply``); or ``("init_failed", failure)``.
Items, results and exceptions are encoded by ``_wire``, so a value that
cannot cross fails only its own item.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import pickle
import queue
import resource
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import cloudpickle

from parcelout.backends import _wire as wire
from parcelout.backends._base import Slot, run_batch
from parcelout.backends._namespaces import settle
from parcelout.backends._tracebacks import locate, transportable

STOP = b"stop"
# The functions a worker keeps; the parent, knowing which it sent, forgets them alike.
FN_CACHE_SIZE = 64
MEMORY_PERIOD = 0.1
# The slot: [batch_id, position, peak resident KiB, peak virtual KiB, RLIMIT_AS KiB or -1]
SLOT_SIZE = 5
# The exit status of a worker that ended itself because it could not go on.
BROKEN_EXIT = 70
_PR_SET_PDEATHSIG = 1
# The group reaper, as a shell's background job: its pipe comes as fd 0, the
# group as $1.
_SHELL = "/bin/sh"
_REAPER = 'exec 3<&0 </dev/null >/dev/null 2>&1; (read _ <&3; kill -s KILL -- -"$1") &'


# The initializer as it travels: the function pickled, and its arguments
# pickled, or as they are (multiprocessing's own pickling carries them as the
# worker starts: a multiprocessing Queue or Lock can travel only that way).
Initializer = tuple[bytes, "bytes | tuple[Any, ...]"]


def main(conn: Connection, slot: Slot, init: Initializer | None, stderr: Connection | None = None) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's pool handles Ctrl-C
    _let_go_of_the_fork_server()  # before the group reaper starts: it would inherit the pipe
    _lead_a_process_group()  # before any thread: the reaper may be forked
    if stderr is not None:
        os.dup2(stderr.fileno(), 2)
        stderr.close()
    faulthandler.enable(all_threads=False)  # the crashing thread's stack, not the helpers'
    threading.Thread(target=_watch_memory, args=(slot,), daemon=True).start()
    inbox: queue.SimpleQueue[tuple[tuple[Any, ...], bytes, list[bytearray]] | None] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, inbox), daemon=True).start()
    if init is not None:
        try:
            initializer = settle(cloudpickle.loads(init[0]))  # its script's globals, shared with the functions
            initargs = cloudpickle.loads(init[1]) if isinstance(init[1], bytes) else init[1]
            initializer(*initargs)
        except BaseException as exc:
            import logging

            # Where ProcessPoolExecutor's workers log it (an initializer may have set up a handler).
            logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
            _flush_log_queues(logging)
            failure, _ = wire.encode([transportable(exc)], lambda _: "")
            _send(conn, ("init_failed", failure))
            return
    _send(conn, ("ready",))
    fns: dict[int, Callable[..., Any] | BaseException] = {}
    while (message := inbox.get()) is not None:
        _send(conn, *_run_or_fail(message, fns, slot, conn))


def _flush_log_queues(logging: Any) -> None:
    """Let what was logged through a ``multiprocessing`` queue (a
    ``QueueHandler``, as the standard pool's users set up in an initializer)
    reach the parent before this worker reports that its initializer failed:
    the pool breaks at that report, and its owner reads the log then. (The
    standard pool breaks only once the worker has exited, which flushes.)"""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            queue_: Any = getattr(handler, "queue", None)
            if callable(getattr(queue_, "join_thread", None)):
                with contextlib.suppress(Exception):
                    queue_.close()
                    queue_.join_thread()


def _lead_a_process_group() -> None:
    """Make this worker, and what its items start, one process group that
    dies with the worker, and the worker die with its parent."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no C library to call, or no prctl in it
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if os.getpgrp() != os.getpid():
        return  # not our own group: killing it would kill others
    # A group of its own is a background group of the terminal, which stops a
    # process that reads from it, or writes to it under `stty tostop`: ignoring
    # these signals lets the write go on, as before, and the read fail.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    _start_group_reaper(os.getpid())


def _let_go_of_the_fork_server() -> None:
    """Close this worker's copy of the pipe that keeps the fork server alive.

    multiprocessing gives it to every process the fork server starts (and a
    forked worker inherits it), so the fork server would outlive a parent
    killed by SIGKILL for as long as its workers live, and the workers, that
    die with their parent process (the fork server), would never die. A
    fork server this worker needs for pools of its own starts afresh.
    """
    try:
        from multiprocessing import forkserver
    except ImportError:  # no fork server here
        return
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if server is None or fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = server._forkserver_pid = server._forkserver_address = None


def _start_group_reaper(group: int) -> None:
    """Start a process that kills ``group`` once this worker is gone.

    It holds only the read end of a pipe whose write end only this worker
    holds (it closes on ``exec``), so its end of file comes when the worker
    ends, however it ends; then it kills the group, itself included. It is a
    shell's background job: nobody's child here (an item that waits for any
    child, or counts them, does not find it), sharing no memory with the
    worker (which would make the worker's pages copy-on-write). The shell is
    started with ``posix_spawn``, which copies no memory either: about 0.3 ms
    of the worker's start, where forking costs a few. Without a shell (a
    distroless image) the reaper is forked, twice.
    """
    read, held = os.pipe()  # the write end: kept open, unused, for the worker's life
    try:
        shell = os.posix_spawn(
            _SHELL, ["sh", "-c", _REAPER, "sh", str(group)], {}, file_actions=[(os.POSIX_SPAWN_DUP2, read, 0)]
        )
    except (OSError, AttributeError):  # no shell, or no posix_spawn
        _fork_group_reaper(read, held, group)
        return
    os.close(read)
    threading.Thread(target=_wait_for, args=(shell,), daemon=True).start()  # it exits at once


def _wait_for(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # an item's os.wait() took it
        os.waitpid(pid, 0)


def _fork_group_reaper(read: int, held: int, group: int) -> None:
    """The group reaper, forked twice (so that it is nobody's child here)."""
    try:
        pid = os.fork()
    except OSError:  # no room for it: the worker runs without
        os.close(read)
        os.close(held)
        return
    if pid == 0:  # the go-between
        try:
            if os.fork() == 0:
                _reap_group(read, group)
        finally:
            os._exit(0)
    os.close(read)
    os.waitpid(pid, 0)


def _reap_group(read: int, group: int) -> NoReturn:
    """The forked group reaper: os-level calls only, no other file."""
    try:
        os.closerange(0, read)  # no copy of the worker's pipes may outlive it
        os.closerange(read + 1, os.sysconf("SC_OPEN_MAX"))
        while os.read(read, 1):
            pass
        os.killpg(group, signal.SIGKILL)
    finally:
        os._exit(0)


class _StartReporter:
    """The slot, and a ``("started", ...)`` message to the parent at each item."""

    def __init__(self, slot: Slot, conn: Connection, batch_id: int) -> None:
        self._slot = slot
        self._conn = conn
        self._batch_id = batch_id

    def __setitem__(self, key: int, position: int) -> None:
        self._slot[key] = position
        _send(self._conn, ("started", self._batch_id, position))


def _watch_memory(slot: Slot) -> None:
    """Keep the peak memory and the address-space limit in the slot."""
    tick = threading.Event()
    while True:
        resident, virtual = _peaks()
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        slot[2], slot[3], slot[4] = resident, virtual, -1 if limit == resource.RLIM_INFINITY else limit // 1024
        tick.wait(MEMORY_PERIOD)  # a sampling period, not a wait for an event


def _peaks() -> tuple[int, int]:
    """Peak resident and peak virtual memory of this process, in KiB."""
    try:
        with open("/proc/self/status", "rb") as status:
            fields = dict(line.split(b":", 1) for line in status if b":" in line)
        return int(fields[b"VmHWM"].split()[0]), int(fields[b"VmPeak"].split()[0])
    except (OSError, KeyError, ValueError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, -1


def _receive(conn: Connection, inbox: queue.SimpleQueue[tuple[tuple[Any, ...], bytes, list[bytearray]] | None]) -> None:
    try:
        while (header := conn.recv_bytes()) != STOP:
            fields = pickle.loads(header)
            payload = conn.recv_bytes()
            inbox.put((fields, payload, receive_buffers(conn, fields[-1])))
        inbox.put(None)
    except (EOFError, OSError):
        os._exit(0)  # the parent is gone: nobody is left to take results
    except BaseException as exc:  # a MemoryError, a bug: without this thread the worker would never answer
        _die("could not receive a batch", exc)


def _die(what: str, exc: BaseException) -> NoReturn:
    """End the worker at once, saying why on its standard error (which the
    parent quotes in the crash report)."""
    try:
        line = f"parcelout worker: {what}: {type(exc).__name__}: {exc}\n".encode(errors="replace")
    except BaseException:  # out of memory even for the message
        line = b"parcelout worker: " + what.encode() + b"\n"
    with contextlib.suppress(OSError):
        os.write(2, line)
    os._exit(BROKEN_EXIT)


def receive_buffers(conn: Connection, sizes: list[int]) -> list[bytearray]:
    """The out-of-band buffers sent after a message, each read straight into
    its own ``bytearray`` (writable, as the sender's memory was)."""
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return buffers


def receive_message(conn: Connection) -> tuple[tuple[Any, ...], list[bytearray]]:
    """A message from a worker (what ``_send`` sent): its tuple, and the
    buffers a ``"done"`` reply lists last."""
    reply: tuple[Any, ...] = pickle.loads(conn.recv_bytes())
    return reply, receive_buffers(conn, reply[-1]) if reply[0] == "done" else []


def _run_or_fail(
    message: tuple[tuple[Any, ...], bytes, list[bytearray]],
    fns: dict[int, Callable[..., Any] | BaseException],
    slot: Slot,
    conn: Connection,
) -> tuple[tuple[Any, ...], list[memoryview]]:
    """``_run``, or, if running or encoding the batch raises anything, the
    batch's items failed with that: the worker goes on."""
    batch_id, n = message[0][0], message[0][4]
    try:
        return _run(message, fns, slot, conn)
    except BaseException as exc:
        slot[1] = -1
        return _reply(batch_id, [None] * n, dict.fromkeys(range(n), exc), 0.0)


def _run(
    message: tuple[tuple[Any, ...], bytes, list[bytearray]],
    fns: dict[int, Callable[..., Any] | BaseException],
    slot: Slot,
    conn: Connection,
) -> tuple[tuple[Any, ...], list[memoryview]]:
    fields, payload, buffers = message
    del message
    batch_id, token, fn_bytes, star, n, report_starts, _sizes = fields
    slot[0] = batch_id
    if report_starts:
        slot = _StartReporter(slot, conn, batch_id)
    if fn_bytes is not None:
        if len(fns) >= FN_CACHE_SIZE:
            fns.clear()
        fns[token] = _load_function(fn_bytes)
    fn = fns[token]
    if isinstance(fn, BaseException):
        return _reply(batch_id, [None] * n, dict.fromkeys(range(n), fn), 0.0)
    payloads, errors = wire.decode(
        payload, lambda _: "parcelout: the item could not be unpickled in the worker process", buffers
    )
    del buffers  # the items own them now
    runnable = [pos for pos in range(n) if pos not in errors]
    if len(runnable) == n:
        values, errors, elapsed = run_batch(fn, star, payloads, slot)
    else:  # run the items that arrived; the others keep their unpickling error
        ran, ran_errors, elapsed = run_batch(fn, star, [payloads[pos] for pos in runnable], slot)
        values = [None] * n
        for pos, value in zip(runnable, ran, strict=True):
            values[pos] = value
        errors.update((runnable[pos], exc) for pos, exc in ran_errors.items())
    return _reply(batch_id, values, errors, elapsed)


def _reply(
    batch_id: int, values: list[Any], errors: dict[int, BaseException], elapsed: float
) -> tuple[tuple[Any, ...], list[memoryview]]:
    """``("done", batch_id, seconds, values, positions, exceptions, sizes)``
    and the values' large buffers (of those sizes): values and exceptions
    encoded by ``_wire`` one by one, so one that cannot travel fails only its
    own item."""
    buffers: list[memoryview] = []
    blob, unpicklable = wire.encode(
        values, lambda _: "parcelout: the item's result could not be pickled to send it back from the worker", buffers
    )
    for pos, exc in unpicklable.items():
        values[pos] = None
        errors[pos] = exc
    positions = sorted(errors)
    failures, _ = wire.encode([transportable(errors[pos]) for pos in positions], lambda _: "")
    return ("done", batch_id, elapsed, blob, positions, failures, [b.nbytes for b in buffers]), buffers


def _load_function(fn_bytes: bytes) -> Callable[..., Any] | BaseException:
    try:
        fn: Callable[..., Any] = settle(pickle.loads(fn_bytes))  # sees what the initializer set
    except BaseException as exc:  # kept for the token's later batches, even a SystemExit
        exc.add_note("parcelout: the function could not be unpickled in the worker process")
        return exc
    with contextlib.suppress(Exception):  # only tracebacks are at stake
        locate(fn)
    return fn


def _send(conn: Connection, reply: tuple[Any, ...], buffers: list[memoryview] | None = None) -> None:
    conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    for buffer in buffers or ():
        conn.send_bytes(buffer)
