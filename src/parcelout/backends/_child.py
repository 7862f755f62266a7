"""The worker process's loop. It imports little, so a worker starts fast.

The parent sends each batch as two messages over a duplex pipe: a pickled
header ``(batch_id, token, fn_bytes, star, n)`` and the pickled list of the
``n`` items, so that items that fail to unpickle fail alone, not the worker.
The function comes once per worker (cached by token). A receiver thread
moves messages off the pipe at once, so the parent's send never waits for
the current item to finish, and it ends the process when the parent is gone
(end of file on the pipe). The worker marks
``slot = [batch_id, position]`` in shared memory before each item: if it dies,
the parent knows which item killed it.

Replies: ``("ready",)`` once started (after the initializer), then
``("done", batch_id, values, {pos: (exception, traceback)}, seconds)`` per
batch; or ``("init_failed", exception, traceback)``.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from parcelout.backends._base import Slot, run_batch

STOP = b"stop"
_FN_CACHE_SIZE = 64


def main(conn: Connection, slot: Slot, init: bytes | None) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's pool handles Ctrl-C
    inbox: queue.SimpleQueue[tuple[bytes, bytes] | None] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, inbox), daemon=True).start()
    if init is not None:
        try:
            initializer, initargs = cloudpickle.loads(init)
            initializer(*initargs)
        except BaseException as exc:
            _send(conn, ("init_failed", *transportable(exc)))
            return
    _send(conn, ("ready",))
    fns: dict[int, Callable[..., Any] | BaseException] = {}
    while (message := inbox.get()) is not None:
        _send(conn, _run(*message, fns, slot))


def _receive(conn: Connection, inbox: queue.SimpleQueue[tuple[bytes, bytes] | None]) -> None:
    try:
        while (header := conn.recv_bytes()) != STOP:
            inbox.put((header, conn.recv_bytes()))
        inbox.put(None)
    except (EOFError, OSError):
        os._exit(0)  # the parent is gone: nobody is left to take results


def _run(
    header: bytes, payload: bytes, fns: dict[int, Callable[..., Any] | BaseException], slot: Slot
) -> tuple[Any, ...]:
    batch_id, token, fn_bytes, star, n = pickle.loads(header)
    slot[0] = batch_id
    if fn_bytes is not None:
        if len(fns) >= _FN_CACHE_SIZE:
            fns.clear()
        fns[token] = _load_function(fn_bytes)
    fn = fns[token]
    try:
        payloads = pickle.loads(payload)
    except Exception as exc:
        exc.add_note("parcelout: the batch's items could not be unpickled in the worker process")
        fn = exc
    if isinstance(fn, BaseException):
        return ("done", batch_id, [None] * n, dict.fromkeys(range(n), transportable(fn)), 0.0)
    values, errors, elapsed = run_batch(fn, star, payloads, slot)
    return ("done", batch_id, values, {pos: transportable(e) for pos, e in errors.items()}, elapsed)


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


def _send(conn: Connection, reply: tuple[Any, ...]) -> None:
    try:
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = _dumps_sparing_results(reply)
    conn.send_bytes(data)


def _dumps_sparing_results(reply: tuple[Any, ...]) -> bytes:
    """Pickle a reply whose values did not all pickle: fail only the bad ones."""
    try:
        return bytes(cloudpickle.dumps(reply))
    except Exception:
        pass
    kind, batch_id, values, errors, elapsed = reply
    values = list(values)
    for pos, value in enumerate(values):
        if pos in errors:
            continue
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            exc.add_note("parcelout: the item's result could not be pickled to send it back from the worker")
            errors[pos] = transportable(exc)
            values[pos] = None
    return bytes(cloudpickle.dumps((kind, batch_id, values, errors, elapsed)))
