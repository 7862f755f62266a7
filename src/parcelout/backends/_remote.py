"""What runs a batch on a cluster engine's worker (Dask, Ray): the task.

A task gets the function and the items as bytes encoded by ``_wire``, and
returns its outcomes encoded the same way, so an item or a result that
cannot cross fails alone, as with local process workers. The function and
the initializer are unpickled once per worker process and kept.

A batch with a task timeout comes with a ``Line``: the engine's way to talk
to the parent while the task runs. The batch then runs in a thread of its
own, which reports each item's start through the line, and the task's
thread waits for that batch or for the parent to stop it. The parent's
scheduler decides timeouts, as for local workers; on one it stops the task,
which ends at once and frees its place on the cluster. The item that was
running cannot be stopped (a cluster engine cannot stop a running task
either): its thread is abandoned and runs on, and takes no item after it.
Nothing here decides a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import threading
from collections.abc import Callable
from typing import Any, Protocol

from parcelout.backends import _wire as wire
from parcelout.backends._base import run_batch

_FUNCTIONS: dict[bytes, Callable[..., Any]] = {}
_INITIALIZED: set[bytes] = set()
_LOCK = threading.Lock()
_MAX_FUNCTIONS = 64

Ran = tuple[list[Any], dict[int, BaseException], float]


class Line(Protocol):
    """How a task tells the parent each item's start, and hears it stopped:
    an engine's own channel (``_dask``, ``_ray``), pickled into the task."""

    def open(self, stop: Callable[[], None]) -> None:
        """Until ``close``, call ``stop()`` (from any thread) when the parent stops this task."""

    def started(self, position: int) -> None:
        """Tell the parent the batch's item at ``position`` began (-1: its items are done)."""

    def close(self) -> None: ...


def run_task(
    fn_bytes: bytes, star: bool, payload: bytes, init_bytes: bytes | None, line: Line | None = None
) -> tuple[Any, ...]:
    """Run one batch: ``("done", seconds, results, positions, exceptions)``,
    ``("init_failed", exception)`` when the initializer raised here, or
    ``("stopped",)`` when the parent stopped the task through ``line``."""
    from parcelout.backends._tracebacks import transportable

    if init_bytes is not None:
        failure = _initialize(init_bytes)
        if failure is not None:
            encoded, _ = wire.encode([transportable(failure)], lambda _: "")
            return ("init_failed", encoded)
    fn = _function(fn_bytes)
    items, errors = wire.decode(payload, lambda _: "parcelout: the item could not be unpickled on the cluster worker")
    runnable = [pos for pos in range(len(items)) if pos not in errors]
    todo = [items[pos] for pos in runnable]
    if line is None:
        outcome: Ran | None = run_batch(fn, star, todo)
    else:
        outcome = _run_watched(fn, star, todo, runnable, line)
    del todo
    if outcome is None:
        return ("stopped",)
    ran, ran_errors, elapsed = outcome
    values: list[Any] = [None] * len(items)
    for at, pos in enumerate(runnable):
        values[pos] = ran[at]
    errors.update((runnable[at], exc) for at, exc in ran_errors.items())
    blob, unpicklable = wire.encode(
        values, lambda _: "parcelout: the item's result could not be pickled to send it back from the cluster worker"
    )
    errors.update(unpicklable)
    positions = sorted(errors)
    failures, _ = wire.encode([transportable(errors[pos]) for pos in positions], lambda _: "")
    return ("done", elapsed, blob, positions, failures)


class _Watch:
    """A batch running in a thread of its own, as ``run_batch``'s slot (each
    item's start goes out on the line) and flag (stopped: no next item)."""

    def __init__(self, line: Line, positions: list[int]) -> None:
        self._line = line
        self._positions = positions  # the batch's position of each item run
        self._changed = threading.Condition()
        self._outcome: Ran | BaseException | None = None
        self.cancelled = False

    def __setitem__(self, key: int, at: int) -> None:
        if not self.cancelled:
            with contextlib.suppress(Exception):  # a report lost costs its deadline, never the batch
                self._line.started(self._positions[at] if at >= 0 else -1)

    def stop(self) -> None:
        with self._changed:
            self.cancelled = True
            self._changed.notify_all()

    def run(self, fn: Callable[..., Any], star: bool, items: list[Any]) -> None:
        outcome: Ran | BaseException
        try:
            outcome = run_batch(fn, star, items, self, flag=self)
        except BaseException as exc:  # a bug: the task fails with it rather than wait forever
            outcome = exc
        with self._changed:
            self._outcome = outcome
            self._changed.notify_all()

    def wait(self) -> Ran | None:
        """The batch's outcome, or None once stopped (the item running is abandoned)."""
        with self._changed:
            self._changed.wait_for(lambda: self._outcome is not None or self.cancelled)
            outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _run_watched(fn: Callable[..., Any], star: bool, items: list[Any], positions: list[int], line: Line) -> Ran | None:
    watch = _Watch(line, positions)
    line.open(watch.stop)
    try:
        threading.Thread(target=watch.run, args=(fn, star, items), name="parcelout-batch", daemon=True).start()
        return watch.wait()
    finally:
        line.close()


def _function(fn_bytes: bytes) -> Callable[..., Any]:
    token = hashlib.blake2b(fn_bytes, digest_size=16).digest()
    with _LOCK:
        fn = _FUNCTIONS.get(token)
        if fn is None:
            if len(_FUNCTIONS) >= _MAX_FUNCTIONS:
                _FUNCTIONS.clear()
            fn = _FUNCTIONS[token] = pickle.loads(fn_bytes)
    return fn


def _initialize(init_bytes: bytes) -> BaseException | None:
    """Run the initializer once in this worker process; its exception, if it raised."""
    token = hashlib.blake2b(init_bytes, digest_size=16).digest()
    with _LOCK:
        if token in _INITIALIZED:
            return None
        try:
            initializer, initargs = pickle.loads(init_bytes)
            initializer(*initargs)
        except Exception as exc:
            return exc
        _INITIALIZED.add(token)
    return None
