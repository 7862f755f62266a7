"""The worker process's loop. It imports little, so a worker starts fast.

The parent sends each batch as two messages over a duplex pipe: a pickled
header ``(batch_id, token, fn_bytes, star, n, report_starts)`` and the pickled list of the
``n`` items, so that items that fail to unpickle fail alone, not the worker.
The function comes once per worker (cached by token). A receiver thread
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

Replies: ``("ready",)`` once started (after the initializer), then one
``("done", ...)`` per batch (see ``_reply``); or ``("init_failed", failure)``.
Items, results and exceptions are encoded by ``_wire``, so a value that
cannot cross fails only its own item.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import queue
import resource
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from parcelout.backends import _wire as wire
from parcelout.backends._base import Slot, run_batch

STOP = b"stop"
_FN_CACHE_SIZE = 64
MEMORY_PERIOD = 0.1
# The slot: [batch_id, position, peak resident KiB, peak virtual KiB, RLIMIT_AS KiB or -1]
SLOT_SIZE = 5


def main(conn: Connection, slot: Slot, init: bytes | None, stderr: Connection | None = None) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's pool handles Ctrl-C
    if stderr is not None:
        os.dup2(stderr.fileno(), 2)
        stderr.close()
    faulthandler.enable(all_threads=False)  # the crashing thread's stack, not the helpers'
    threading.Thread(target=_watch_memory, args=(slot,), daemon=True).start()
    inbox: queue.SimpleQueue[tuple[tuple[Any, ...], bytes, list[bytearray]] | None] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, inbox), daemon=True).start()
    if init is not None:
        try:
            initializer, initargs = cloudpickle.loads(init)
            initializer(*initargs)
        except BaseException as exc:
            failure, _ = wire.encode([transportable(exc)], lambda _: "")
            _send(conn, ("init_failed", failure))
            return
    _send(conn, ("ready",))
    fns: dict[int, Callable[..., Any] | BaseException] = {}
    while (message := inbox.get()) is not None:
        _send(conn, *_run(message, fns, slot, conn))


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
        if len(fns) >= _FN_CACHE_SIZE:
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
        fn: Callable[..., Any] = pickle.loads(fn_bytes)
    except Exception as exc:
        exc.add_note("parcelout: the function could not be unpickled in the worker process")
        return exc
    return fn


def transportable(exc: BaseException) -> tuple[BaseException, str]:
    """The exception, or a ``RemoteError`` standing in for it, and its traceback text.

    The exception is sent back only if it survives a pickle round trip (one
    whose ``__init__`` takes other arguments than it passes to ``super()``
    pickles but fails to unpickle, which breaks the standard library's pool).
    """
    tb = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except Exception as why:
        from parcelout.errors import RemoteError

        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteError(name, str(exc), f"{type(why).__name__}: {why}"), tb
    return exc, tb


def _send(conn: Connection, reply: tuple[Any, ...], buffers: list[memoryview] | None = None) -> None:
    conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    for buffer in buffers or ():
        conn.send_bytes(buffer)
