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

What differs between engines is small and lives in a ``Cluster``: how to
submit a task, hear that it is done, read its outcome, cancel, and close.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

import cloudpickle

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, WorkerExited
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
        """Start ``_remote.run_task(*args)`` as a task; return its handle."""

    def when_done(self, task: Any, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) once ``task`` has finished."""

    def outcome(self, task: Any) -> Outcome: ...

    def cancel(self, tasks: list[Any]) -> None: ...

    def close(self) -> None:
        """Let go of the cluster (stopping it, if it was started for the pool)."""


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
        self._running: dict[int, tuple[int, Any]] = {}  # slot -> (batch id, task)
        self._stopping: set[int] = set()

    def start_worker(self, worker: int) -> None:
        pass  # a slot needs nothing started: the cluster's workers are there

    def send(self, worker: int, batch: Batch) -> None:
        n = len(batch.items)
        fn_bytes = function_bytes(batch.call)
        if isinstance(fn_bytes, BaseException):
            self._report(BatchDone(worker, batch.id, [None] * n, dict.fromkeys(range(n), fn_bytes), 0.0))
            return
        payload, unsent = encode_items(batch, None)
        args = (fn_bytes, batch.call.star, payload, batch.policy.timeout, self._init)
        task = self._cluster.submit(args, f"parcelout-{self._run}-{batch.id}")
        with self._lock:
            self._running[worker] = (batch.id, task)
        self._cluster.when_done(task, functools.partial(self._finished, worker, batch.id, n, unsent, task))

    def stop_worker(self, worker: int) -> None:
        with self._lock:
            if worker in self._running:
                self._stopping.add(worker)
                return
        self._report(WorkerExited(worker, 0))

    def kill_worker(self, worker: int, grace: float = 0.0) -> None:
        with self._lock:
            entry = self._running.pop(worker, None)
            self._stopping.discard(worker)
        if entry is not None:
            with contextlib.suppress(Exception):  # the cluster is going away
                self._cluster.cancel([entry[1]])
        self._report(WorkerExited(worker, 0))

    def close(self) -> None:
        with self._lock:
            tasks = [task for _, task in self._running.values()]
            self._running.clear()
        if tasks:
            with contextlib.suppress(Exception):
                self._cluster.cancel(tasks)
        self._cluster.close()

    def _finished(self, worker: int, batch_id: int, n: int, unsent: dict[int, BaseException], task: Any) -> None:
        """A task is done (on the engine's callback thread): report it."""
        with self._lock:
            entry = self._running.get(worker)
            if entry is None or entry[0] != batch_id:
                return  # killed meanwhile: already reported
            del self._running[worker]
            stopping = worker in self._stopping
            self._stopping.discard(worker)
        self._report(self._event(worker, batch_id, n, unsent, task))
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
        if reply[0] == "init_failed":
            return InitFailed(worker, decode_failures(reply[1], [0])[0])
        _, elapsed, blob, positions, failures = reply
        values, errors = decode(blob, lambda _: _RESULT_NOTE)
        errors.update(decode_failures(failures, positions))
        errors.update(unsent)
        return BatchDone(worker, batch_id, values, errors, elapsed)
