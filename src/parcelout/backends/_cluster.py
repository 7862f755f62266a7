"""A cluster engine (Dask, Ray) as a backend: each batch is one task.

The pool's scheduler sees "workers" that are slots: two per CPU or thread of
the cluster, so that each has a batch running and one waiting. A slot holds
one batch at a time, submitted as a task and reported when the task is done.
The scheduler keeps every rule it has for local workers: the window,
retries, cancelling, and a lost worker.

A cluster worker that dies (killed, out of memory, its machine gone) makes
its tasks fail as lost; the slot then reports its batch's worker as gone, and
the scheduler runs that batch's items again one by one, elsewhere, as it
does for a local process that died between items.

A batch with a task timeout is timed by the pool's scheduler, as on local
workers: its task reports each item's start back through the engine's own
channel (``Cluster.listen``), and the slot reports it as ``ItemStarted``.
When the scheduler kills the slot, its task is cancelled and told to stop
waiting for its item (``Cluster.stop``): the task ends and frees its place
on the cluster (the item's thread there is abandoned), and the slot reports
its worker gone, at the item it was running.

What differs between engines is small and lives in a ``Cluster``: how to
submit a task, hear that it is done, read its outcome, hear its items start,
stop and cancel it, and close.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cloudpickle

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, ItemStarted, WorkerExited
from parcelout.backends._remote import Line
from parcelout.backends._wire import decode, decode_failures, encode_items, function_bytes

SLOTS_PER_CPU = 2
_RESULT_NOTE = "parcelout: the item's result could not be unpickled in the parent process"

Outcome = tuple[Literal["done"], Any] | tuple[Literal["lost"], str] | tuple[Literal["error"], BaseException]
"""A finished task: its reply; or lost with its worker (why); or failed (the exception)."""


class Cluster(Protocol):
    """What a backend needs of a cluster engine."""

    name: str

    def slots(self) -> int:
        """How many batches to keep on the cluster at once."""

    def submit(self, args: tuple[Any, ...], name: str) -> Any:
        """Start ``_remote.run_task(*args)`` as a task named ``name``; return its handle."""

    def listen(self, name: str, on_started: Callable[[int], None]) -> Line:
        """Hear the task named ``name`` start each item: ``on_started(position)``
        (from any thread) until it is forgotten or stopped. Returns the line
        the task reports through, passed to it in its arguments."""

    def forget(self, name: str) -> None:
        """Hear no more of the task named ``name`` (it is done)."""

    def stop(self, names: list[str]) -> None:
        """Tell the tasks named ``names`` (listened to) to stop waiting for
        their item and end now; forget them."""

    def when_done(self, task: Any, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) once ``task`` has finished."""

    def outcome(self, task: Any) -> Outcome: ...

    def cancel(self, tasks: list[Any]) -> None: ...

    def close(self) -> None:
        """Let go of the cluster (stopping it, if it was started for the pool)."""


@dataclass
class _Task:
    """A slot's batch on the cluster: its task, and the item it runs
    (as far as its reports say; only a batch with a timeout reports)."""

    batch_id: int
    name: str
    listened: bool
    task: Any = None
    position: int = -1


class ClusterBackend:
    def __init__(
        self,
        report: Callable[[Event], None],
        *,
        cluster: Cluster,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._report = report
        self._cluster = cluster
        self._init = None if initializer is None else bytes(cloudpickle.dumps((initializer, initargs)))
        self._run = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._running: dict[int, _Task] = {}  # slot -> its batch's task
        self._stopping: set[int] = set()
        self._sent = itertools.count()

    def start_worker(self, worker: int) -> None:
        pass  # a slot needs nothing started: the cluster's workers are there

    def send(self, worker: int, batch: Batch) -> None:
        n = len(batch.items)
        fn_bytes = function_bytes(batch.call)
        if isinstance(fn_bytes, BaseException):
            self._report(BatchDone(worker, batch.id, [None] * n, dict.fromkeys(range(n), fn_bytes), 0.0))
            return
        payload, unsent = encode_items(batch, None)
        # A name of its own for each task: a batch sent again (split, its slot killed) keeps its id.
        name = f"parcelout-{self._run}-{batch.id}-{next(self._sent)}"
        entry = _Task(batch.id, name, batch.policy.timeout is not None)
        with self._lock:
            self._running[worker] = entry  # before its first report can come
        line = None
        if entry.listened:
            line = self._cluster.listen(entry.name, functools.partial(self._started, worker, batch.id))
        entry.task = self._cluster.submit((fn_bytes, batch.call.star, payload, self._init, line), entry.name)
        self._cluster.when_done(entry.task, functools.partial(self._finished, worker, entry, n, unsent))

    def stop_worker(self, worker: int) -> None:
        with self._lock:
            if worker in self._running:
                self._stopping.add(worker)
                return
        self._report(WorkerExited(worker, 0))

    def kill_worker(self, worker: int, grace: float = 0.0) -> None:
        """Cancel the slot's task and stop it waiting for its item (which runs
        on, abandoned, on the cluster's worker): the slot is gone, at that item."""
        with self._lock:
            entry = self._running.pop(worker, None)
            self._stopping.discard(worker)
        if entry is None:
            self._report(WorkerExited(worker, 0))
            return
        self._let_go([entry])
        self._report(WorkerExited(worker, None, entry.batch_id, entry.position))

    def close(self) -> None:
        with self._lock:
            entries = list(self._running.values())
            self._running.clear()
        self._let_go(entries)
        self._cluster.close()

    def _let_go(self, entries: list[_Task]) -> None:
        if not entries:
            return
        with contextlib.suppress(Exception):  # the cluster is going away
            self._cluster.cancel([entry.task for entry in entries])
        listened = [entry.name for entry in entries if entry.listened]
        if listened:
            with contextlib.suppress(Exception):
                self._cluster.stop(listened)

    def _started(self, worker: int, batch_id: int, position: int) -> None:
        """The slot's task began an item (on the engine's thread): report it."""
        with self._lock:
            entry = self._running.get(worker)
            if entry is None or entry.batch_id != batch_id:
                return  # done or killed meanwhile
            entry.position = position
        self._report(ItemStarted(worker, batch_id, position))

    def _finished(self, worker: int, entry: _Task, n: int, unsent: dict[int, BaseException]) -> None:
        """A task is done (on the engine's callback thread): report it."""
        with self._lock:
            if self._running.get(worker) is not entry:
                return  # killed meanwhile: already reported
            del self._running[worker]
            stopping = worker in self._stopping
            self._stopping.discard(worker)
        if entry.listened:
            self._cluster.forget(entry.name)
        self._report(self._event(worker, entry.batch_id, n, unsent, entry.task))
        if stopping:
            self._report(WorkerExited(worker, 0))

    def _event(self, worker: int, batch_id: int, n: int, unsent: dict[int, BaseException], task: Any) -> Event:
        outcome = self._cluster.outcome(task)
        if outcome[0] == "lost":
            return WorkerExited(worker, None, batch_id, -1, True, outcome[1])
        if outcome[0] == "error":
            error = outcome[1]
            error.add_note(f"parcelout: the {self._cluster.name} task running this batch failed")
            return BatchDone(worker, batch_id, [None] * n, dict.fromkeys(range(n), error), 0.0)
        reply = outcome[1]
        if reply[0] == "stopped":  # (only ever stopped once killed, and then not reported)
            return WorkerExited(worker, None, batch_id, -1, True, "its task was stopped")
        if reply[0] == "init_failed":
            return InitFailed(worker, decode_failures(reply[1], [0])[0])
        _, elapsed, blob, positions, failures = reply
        values, errors = decode(blob, lambda _: _RESULT_NOTE)
        errors.update(decode_failures(failures, positions))
        errors.update(unsent)
        return BatchDone(worker, batch_id, values, errors, elapsed)
