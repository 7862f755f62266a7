"""The scheduler: every policy decision of a pool, as a pure state machine.

::

    callers ── Submitted / CancelGroup / Shutdown ──┐
                                                   v
    backend ── BatchDone / WorkerExited / InitFailed ──> Scheduler.handle(event)
                                                   │
                                                   └──> [StartWorker, Send, Deliver,
                                                         StopWorker, KillWorker]

It owns the pending queue, the in-flight table (which worker runs which
batches, in order), crash attribution, worker recycling, cancellation and
shutdown. It never starts a thread, touches a pipe or reads a clock: the
engine feeds it events and carries out the instructions it returns, so tests
can drive it with any sequence of events without starting a worker.

Invariant: every batch handed to ``handle`` in a ``Submitted`` event comes out
as ``Deliver`` instructions covering each of its items exactly once, unless
its group is cancelled or the pool is shut down with ``cancel`` (then pending
items are dropped, delivered as cancelled for ``cancel``/``kill``).
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field

from parcelout._core._messages import (
    Batch,
    BatchDone,
    BatchResult,
    CancelGroup,
    Deliver,
    Event,
    InitFailed,
    Instruction,
    KillWorker,
    Send,
    Shutdown,
    StartWorker,
    StopWorker,
    Submitted,
    WorkerExited,
)
from parcelout.errors import InitializerFailed, WorkerCrashed

# A worker that dies before it is ready may be bad luck (killed from outside);
# this many in a row, with no batch finished between them, is a broken setup.
START_FAILURES_TO_BREAK = 3


@dataclass
class _Worker:
    id: int
    inflight: deque[Batch] = field(default_factory=deque)
    items_sent: int = 0
    retiring: bool = False


def describe_exit(exitcode: int | None) -> str:
    """'killed by SIGKILL', 'exit code 3', or 'exit code unknown'."""
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class Scheduler:
    """Policy for one pool of ``size`` workers.

    Args:
        size: how many workers to keep.
        new_id: returns a fresh batch id (for batches split off others).
        depth: how many batches a worker may hold at once (one running, the
            rest queued at the worker to hide the round trip); only
            ``queueable`` batches are queued behind another.
        max_items_per_worker: replace a worker after it was sent this many
            items (None: never).
    """

    def __init__(
        self,
        size: int,
        new_id: Callable[[], int],
        *,
        depth: int = 1,
        max_items_per_worker: int | None = None,
    ) -> None:
        self._size = size
        self._new_id = new_id
        self._depth = depth
        self._quota = max_items_per_worker
        self._pending: deque[Batch] = deque()
        self._workers: dict[int, _Worker] = {}
        self._next_worker = 0
        self._closing = False
        self._killing = False
        self._start_failures = 0
        self.broken: BaseException | None = None

    # ------------------------------------------------------------ queries
    @property
    def finished(self) -> bool:
        """Shut down and every worker gone: the engine may stop."""
        return self._closing and not self._workers

    @property
    def workers(self) -> dict[int, tuple[Batch, ...]]:
        """Each live worker and the batches it holds, running one first."""
        return {w.id: tuple(w.inflight) for w in self._workers.values()}

    @property
    def pending(self) -> tuple[Batch, ...]:
        return tuple(self._pending)

    # ------------------------------------------------------------ entry points
    def start(self) -> list[Instruction]:
        """Nothing yet: as in the standard executors, workers start on demand,
        when work arrives and no worker is free to take it."""
        return []

    def handle(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        match event:
            case Submitted(batch):
                self._on_submitted(batch, out)
            case BatchDone():
                self._on_batch_done(event, out)
            case WorkerExited():
                self._on_worker_exited(event, out)
            case InitFailed(worker, error):
                self._on_init_failed(worker, error, out)
            case CancelGroup(group):
                self._on_cancel_group(group)
            case Shutdown(cancel, kill):
                self._on_shutdown(cancel, kill, out)
        self._dispatch(out)
        self._stop_idle(out)
        return out

    # ------------------------------------------------------------ handlers
    def _on_submitted(self, batch: Batch, out: list[Instruction]) -> None:
        if self.broken is not None:
            out.append(_fail_all(batch, self.broken))
        elif self._closing:
            out.append(_fail_all(batch, RuntimeError("cannot schedule new futures after shutdown")))
        else:
            self._pending.append(batch)

    def _on_batch_done(self, event: BatchDone, out: list[Instruction]) -> None:
        self._start_failures = 0
        worker = self._workers.get(event.worker)
        if worker is None:
            return
        for batch in worker.inflight:
            if batch.id == event.batch_id:
                worker.inflight.remove(batch)
                out.append(Deliver(BatchResult(batch, event.values, event.errors, event.elapsed)))
                return

    def _on_worker_exited(self, event: WorkerExited, out: list[Instruction]) -> None:
        worker = self._workers.pop(event.worker, None)
        if worker is None:
            return
        if not event.started and not worker.retiring and not self._killing:
            self._start_failures += 1
            if self._start_failures >= START_FAILURES_TO_BREAK:
                cause = WorkerCrashed(
                    f"a worker process died during start-up ({describe_exit(event.exitcode)})", event.exitcode
                )
                self._break(
                    f"{self._start_failures} worker processes in a row died during start-up, the last with "
                    f"{describe_exit(event.exitcode)}; see their standard error (a main module that cannot be "
                    "imported again in a worker, such as a script read from standard input, is a common cause)",
                    cause,
                    worker,
                    out,
                )
        if worker.inflight and not self._killing:
            self._attribute_crash(worker, event, out)
        elif worker.inflight:
            out.extend(_cancelled(b) for b in worker.inflight)

    def _attribute_crash(self, worker: _Worker, event: WorkerExited, out: list[Instruction]) -> None:
        """Fail only the item that was running; give the others back to the queue.

        The worker's other batches never started; the items of the running
        batch before and after the culprit go back too (the results of those
        before it died with the worker).
        """
        running = worker.inflight.popleft()
        requeue = list(worker.inflight)
        known = event.batch_id == running.id and 0 <= event.position < len(running.items)
        culprit = event.position if known else -1
        if culprit < 0:
            requeue.insert(0, running)  # died between items: nothing to blame
        else:
            index, _ = running.items[culprit]
            error = WorkerCrashed(
                f"the worker process running item {index} died ({describe_exit(event.exitcode)})",
                event.exitcode,
            )
            head, rest = running.split(culprit, self._new_id())
            culprit_batch, tail = rest.split(1, self._new_id())
            out.append(Deliver(BatchResult(culprit_batch, [None], {0: error})))
            requeue[:0] = [b for b in (head, tail) if b.items]
        self._pending.extendleft(reversed(requeue))

    def _on_init_failed(self, worker_id: int, error: BaseException, out: list[Instruction]) -> None:
        reason = f"a worker's initializer raised {type(error).__name__}: {error}"
        self._break(reason, error, self._workers.get(worker_id), out)

    def _break(self, reason: str, cause: BaseException, worker: _Worker | None, out: list[Instruction]) -> None:
        """The pool cannot start workers: fail what waits and take no more work."""
        if self.broken is None:
            broken = InitializerFailed(f"{reason}; the pool takes no more work")
            broken.__cause__ = cause
            self.broken = broken
        for batch in [*self._pending, *(worker.inflight if worker else ())]:
            out.append(_fail_all(batch, self.broken))
        self._pending.clear()
        if worker is not None:
            worker.inflight.clear()

    def _on_cancel_group(self, group: int) -> None:
        for worker in self._workers.values():
            for batch in worker.inflight:
                if batch.group == group:
                    batch.cancelled = True
        self._pending = deque(b for b in self._pending if b.group != group)

    def _on_shutdown(self, cancel: bool, kill: bool, out: list[Instruction]) -> None:
        self._closing = True
        if cancel or kill:
            out.extend(_cancelled(b) for b in self._pending)
            self._pending.clear()
        if kill:
            self._killing = True
            for worker in self._workers.values():
                if worker.inflight:
                    for batch in worker.inflight:
                        batch.cancelled = True
                    worker.retiring = True
                    out.append(KillWorker(worker.id))

    # ------------------------------------------------------------ helpers
    def _can_grow(self) -> bool:
        if self._killing or self.broken is not None:
            return False
        return len(self._workers) < self._size

    def _spawn(self) -> StartWorker:
        worker = _Worker(self._next_worker)
        self._next_worker += 1
        self._workers[worker.id] = worker
        return StartWorker(worker.id)

    def _dispatch(self, out: list[Instruction]) -> None:
        while self._pending:
            worker = self._least_loaded()
            if (worker is None or worker.inflight) and self._can_grow():
                out.append(self._spawn())
                continue
            if worker is None or (worker.inflight and not self._pending[0].queueable):
                return
            batch = self._pending.popleft()
            if batch.cancelled or (batch.try_start is not None and not batch.try_start()):
                continue
            if self._quota is not None:
                room = self._quota - worker.items_sent
                if len(batch.items) > room:
                    batch, tail = batch.split(room, self._new_id())
                    self._pending.appendleft(tail)
            worker.inflight.append(batch)
            worker.items_sent += len(batch.items)
            out.append(Send(worker.id, batch))
            if self._quota is not None and worker.items_sent >= self._quota:
                worker.retiring = True
                out.append(StopWorker(worker.id))

    def _least_loaded(self) -> _Worker | None:
        best: _Worker | None = None
        for worker in self._workers.values():
            if worker.retiring or len(worker.inflight) >= self._depth:
                continue
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
        return best

    def _stop_idle(self, out: list[Instruction]) -> None:
        """Once shut down (or broken), workers with nothing left to do exit."""
        if not (self._closing or self.broken is not None) or self._pending:
            return
        for worker in self._workers.values():
            if not worker.inflight and not worker.retiring:
                worker.retiring = True
                out.append(StopWorker(worker.id))


def _fail_all(batch: Batch, error: BaseException) -> Deliver:
    n = len(batch.items)
    return Deliver(BatchResult(batch, [None] * n, dict.fromkeys(range(n), error)))


def _cancelled(batch: Batch) -> Deliver:
    return _fail_all(batch, CancelledError())


def covered(results: Iterable[BatchResult]) -> list[int]:
    """The input indices a sequence of results covers (for tests and checks)."""
    return [index for r in results for index, _ in r.batch.items]
