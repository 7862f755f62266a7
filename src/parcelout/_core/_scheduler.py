"""The scheduler: every policy decision of a pool, as a pure state machine.

::

    callers ── Submitted / CancelGroup / Shutdown ──┐
    engine ─── Tick (at next_deadline) ─────────────┤
                                                   v
    backend ── BatchDone / ItemStarted / WorkerExited / InitFailed ──> Scheduler.handle(event)
                                                   │
                                                   └──> [StartWorker, Send, Deliver,
                                                         StopWorker, KillWorker]

It owns the pending queue, the in-flight table (which worker runs which
batches, in order), crash attribution, per-item timeouts, retries, worker
recycling, cancellation and shutdown. It never starts a thread, touches a
pipe or waits: the engine feeds it events and carries out the instructions
it returns, and the clock is given to it, so tests can drive it with any
sequence of events, and any time, without starting a worker.

Invariant: every batch handed to ``handle`` in a ``Submitted`` event comes out
as ``Deliver`` instructions covering each of its items exactly once, unless
its group is cancelled or the pool is shut down with ``cancel`` (then pending
items are dropped, delivered as cancelled for ``cancel``/``kill``). A batch
is only ever split into contiguous parts, so a stream's results still cover
contiguous runs of input positions.

Faults stay local. When a worker dies, or runs an item past its timeout,
only the item it was running fails (``WorkerCrashed`` or ``TaskTimeout``), or
runs again if its policy retries it; the other items it held go back to the
queue. A death that cannot be pinned on one item (between items, while
sending a result) makes every item of the batch a suspect: they run again
one per batch, so the next death is pinned, and an item under which
``max_crashes`` workers died fails for good.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
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
    ItemStarted,
    KillWorker,
    Send,
    Shutdown,
    StartWorker,
    StopWorker,
    Submitted,
    Tick,
    WorkerExited,
)
from parcelout.errors import InitializerFailed, StartupFailed, TaskTimeout, WorkerCrashed, describe_payload

# A worker that dies before it is ready by itself (an exit, a crash) this many
# times in a row, with no batch finished between them, is a broken setup.
START_FAILURES_TO_BREAK = 3
# Killed from outside before it was ready (SIGKILL, SIGTERM...) is bad luck, not
# a broken set-up, unless it happens this many times in a row.
START_KILLS_TO_BREAK = 20
_KILLED_FROM_OUTSIDE = frozenset(
    -int(s) for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
)
# A process worker past its timeout gets SIGTERM, then SIGKILL this much later.
TIMEOUT_GRACE = 1.0


@dataclass
class _Worker:
    id: int
    inflight: deque[Batch] = field(default_factory=deque)
    items_sent: int = 0
    retiring: bool = False
    deadline: float | None = None
    position: int = -1


def _no_clock() -> float:
    return 0.0


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
        clock: the time now, in seconds (timeouts and retry back-off).
    """

    def __init__(
        self,
        size: int,
        new_id: Callable[[], int],
        *,
        depth: int = 1,
        max_items_per_worker: int | None = None,
        clock: Callable[[], float] = _no_clock,
    ) -> None:
        self._size = size
        self._clock = clock
        self._delayed: list[tuple[float, int, Batch]] = []  # retries waiting out their back-off
        self._delay_order = itertools.count()
        self._new_id = new_id
        self._depth = depth
        self._quota = max_items_per_worker
        self._pending: deque[Batch] = deque()
        self._workers: dict[int, _Worker] = {}
        self._next_worker = 0
        self._closing = False
        self._killing = False
        self._start_failures = 0
        self._start_kills = 0
        self.broken: BaseException | None = None

    # ------------------------------------------------------------ queries
    @property
    def finished(self) -> bool:
        """Shut down and every worker gone: the engine may stop."""
        return self._closing and not self._workers

    @property
    def finished_all(self) -> bool:
        """Nothing pending, held back for a retry, or running."""
        return not self._pending and not self._delayed and not any(w.inflight for w in self._workers.values())

    @property
    def workers(self) -> dict[int, tuple[Batch, ...]]:
        """Each live worker and the batches it holds, running one first."""
        return {w.id: tuple(w.inflight) for w in self._workers.values()}

    @property
    def pending(self) -> tuple[Batch, ...]:
        return (*self._pending, *(batch for _, _, batch in self._delayed))

    @property
    def next_deadline(self) -> float | None:
        """When to send a ``Tick``: the first item timeout or retry back-off
        to expire (None: nothing to wait for)."""
        times = [w.deadline for w in self._workers.values() if w.deadline is not None]
        if self._delayed:
            times.append(self._delayed[0][0])
        return min(times, default=None)

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
            case ItemStarted(worker, batch_id, position):
                self._on_item_started(worker, batch_id, position)
            case Tick():
                self._expire(out)
            case WorkerExited():
                self._on_worker_exited(event, out)
            case InitFailed(worker, error):
                self._on_init_failed(worker, error, out)
            case CancelGroup(group):
                self._on_cancel_group(group)
            case Shutdown(cancel, kill):
                self._on_shutdown(cancel, kill, out)
        self._release_delayed()
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
        self._start_failures = self._start_kills = 0
        worker = self._workers.get(event.worker)
        if worker is None:
            return  # a worker already given up on (timed out): its batches went elsewhere
        for batch in worker.inflight:
            if batch.id == event.batch_id:
                if batch is worker.inflight[0]:
                    worker.deadline, worker.position = None, -1
                worker.inflight.remove(batch)
                result = BatchResult(batch, event.values, event.errors, event.elapsed, worker=worker.id)
                self._settle(result, worker.id, out)
                return

    def _settle(self, result: BatchResult, worker_id: int, out: list[Instruction]) -> None:
        """Deliver a finished batch, less the failed items its policy retries."""
        batch, values, errors = result.batch, result.values, result.errors
        policy = batch.policy
        retry = [p for p in sorted(errors) if policy.retries_after(batch.attempt, errors[p])]
        if not retry:
            out.append(Deliver(result))
            return
        start = 0
        for pos in [*retry, len(batch.items)]:
            if pos > start:  # the run of items before this retried one
                part = dataclasses.replace(batch, id=self._new_id(), items=batch.items[start:pos])
                part_errors = {p - start: e for p, e in errors.items() if start <= p < pos}
                out.append(Deliver(BatchResult(part, values[start:pos], part_errors, 0.0, worker=worker_id)))
            if pos < len(batch.items):
                self._retry(_one(batch, pos, self._new_id()), worker_id)
            start = pos + 1

    def _on_item_started(self, worker_id: int, batch_id: int, position: int) -> None:
        worker = self._workers.get(worker_id)
        if worker is None or not worker.inflight or worker.inflight[0].id != batch_id:
            return
        timeout = worker.inflight[0].policy.timeout
        if timeout is not None and position >= 0:
            worker.deadline, worker.position = self._clock() + timeout, position
        else:
            worker.deadline, worker.position = None, -1

    def _expire(self, out: list[Instruction]) -> None:
        """Stop the workers whose item ran past its timeout; fail or retry the item."""
        now = self._clock()
        for worker in [w for w in self._workers.values() if w.deadline is not None and w.deadline <= now]:
            running = worker.inflight[0]
            del self._workers[worker.id]  # gone for the scheduler; a replacement may start
            out.append(KillWorker(worker.id, grace=TIMEOUT_GRACE))
            timeout = running.policy.timeout
            index, item = running.items[worker.position]
            what = describe_payload(item, running.call.star)
            message = f"item {index} ({what}) ran longer than its task_timeout of {timeout:g} s"
            self._blame(worker, worker.position, TaskTimeout(message, timeout), crashed=False, out=out)
            running.cancelled = True  # (after the split: its parts run again) a thread stops after the item

    def _on_worker_exited(self, event: WorkerExited, out: list[Instruction]) -> None:
        worker = self._workers.pop(event.worker, None)
        if worker is None:
            return
        if not event.started and not worker.retiring and not self._killing:
            if event.exitcode in _KILLED_FROM_OUTSIDE:
                self._start_kills += 1
            else:
                self._start_failures += 1
            if self._start_failures >= START_FAILURES_TO_BREAK or self._start_kills >= START_KILLS_TO_BREAK:
                count = max(self._start_failures, self._start_kills)
                if event.exitcode is None:  # not a process (a sub-interpreter): what it knows is in detail
                    cause = WorkerCrashed(f"a worker failed to start ({event.detail or 'no detail'})", None)
                    reason = f"{count} workers in a row failed to start; " + (event.detail or "no detail")
                else:
                    how = describe_exit(event.exitcode)
                    cause = WorkerCrashed(f"a worker process died during start-up ({how})", event.exitcode)
                    reason = (
                        f"{count} worker processes in a row died during start-up, the last with {how}; "
                        + (event.detail or "see their standard error")
                        + " (a main module that cannot be imported again in a worker, or a script without the "
                        '`if __name__ == "__main__":` guard, is a common cause)'
                    )
                self._break(reason, cause, worker, out)
        if worker.inflight and not self._killing:
            self._attribute_crash(worker, event, out)
        elif worker.inflight:
            out.extend(_cancelled(b) for b in worker.inflight)

    def _attribute_crash(self, worker: _Worker, event: WorkerExited, out: list[Instruction]) -> None:
        """Fail (or retry) only the item that was running; give the others back.

        The worker's other batches never started; the items of the running
        batch before and after the culprit go back too (the results of those
        before it died with the worker). A death outside any item of the
        running batch (while receiving or unpickling it, after the last item,
        while sending the results) makes all its items suspects, so an item
        whose receipt kills workers fails after ``max_crashes`` deaths; a
        death before the worker was ready blames nothing.
        """
        running = worker.inflight[0]
        culprit = event.position if event.batch_id == running.id and event.position < len(running.items) else -1
        if culprit >= 0:
            index, item = running.items[culprit]
            how = describe_exit(event.exitcode)
            message = (
                f"the worker process running item {index} ({describe_payload(item, running.call.star)}) died ({how})"
            )
            error = WorkerCrashed(message + (f"; {event.detail}" if event.detail else ""), event.exitcode)
            self._blame(worker, culprit, error, crashed=True, out=out)
            return
        worker.inflight.popleft()
        if event.started:  # died outside its items' runs: each one a suspect
            how = describe_exit(event.exitcode)
            message = (
                f"the worker process holding item {{}} died ({how}) outside any item's run "
                "(receiving its batch or sending results)" + (f"; {event.detail}" if event.detail else "")
            )
            suspects = []
            for pos in range(len(running.items)):
                suspect = dataclasses.replace(_one(running, pos, self._new_id()), crashes=running.crashes + 1)
                if suspect.crashes >= suspect.policy.max_crashes:
                    error = WorkerCrashed(message.format(suspect.items[0][0]), event.exitcode)
                    out.append(Deliver(BatchResult(suspect, [None], {0: error}, attempts={0: _runs(suspect)})))
                else:
                    suspects.append(suspect)
            self._pending.extendleft(reversed(suspects))
        else:
            worker.inflight.appendleft(running)
        self._pending.extendleft(reversed(worker.inflight))
        worker.inflight.clear()

    def _blame(
        self, worker: _Worker, culprit: int, error: BaseException, *, crashed: bool, out: list[Instruction]
    ) -> None:
        """The running batch's item at ``culprit`` failed with ``error`` and took
        the worker with it: fail or retry it; requeue everything else the
        worker held."""
        running = worker.inflight.popleft()
        head, rest = running.split(culprit, self._new_id())
        culprit_batch, tail = rest.split(1, self._new_id())
        requeue = [b for b in (head, tail) if b.items] + list(worker.inflight)
        worker.inflight.clear()
        worker.deadline, worker.position = None, -1
        self._pending.extendleft(reversed(requeue))
        crashes = culprit_batch.crashes + crashed
        policy = culprit_batch.policy
        if policy.retries_after(culprit_batch.attempt, error) and crashes < policy.max_crashes:
            self._retry(dataclasses.replace(culprit_batch, crashes=crashes), worker.id)
        else:
            failed = dataclasses.replace(culprit_batch, crashes=crashes)
            out.append(Deliver(BatchResult(failed, [None], {0: error}, attempts={0: _runs(failed)})))

    def _retry(self, batch: Batch, worker_id: int) -> None:
        """Queue ``batch`` (one failed item) to run again, after its back-off,
        preferably not on the worker it failed on."""
        again = dataclasses.replace(batch, attempt=batch.attempt + 1, avoid=worker_id)
        delay = again.policy.backoff_before(batch.attempt)
        if delay > 0:
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._delay_order), again))
        else:
            self._pending.appendleft(again)

    def _release_delayed(self) -> None:
        if not self._delayed:
            return
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            self._pending.appendleft(heapq.heappop(self._delayed)[2])

    def _on_init_failed(self, worker_id: int, error: BaseException, out: list[Instruction]) -> None:
        reason = f"a worker's initializer raised {type(error).__name__}: {error}"
        self._break(reason, error, self._workers.get(worker_id), out, kind=InitializerFailed)

    def _break(
        self,
        reason: str,
        cause: BaseException,
        worker: _Worker | None,
        out: list[Instruction],
        kind: type[StartupFailed] = StartupFailed,
    ) -> None:
        """The pool cannot start workers: fail what waits and take no more work."""
        if self.broken is None:
            broken = kind(f"{reason}; the pool takes no more work")
            broken.__cause__ = cause
            self.broken = broken
        for batch in [*self.pending, *(worker.inflight if worker else ())]:
            out.append(_fail_all(batch, self.broken))
        self._pending.clear()
        self._delayed.clear()
        if worker is not None:
            worker.inflight.clear()

    def _on_cancel_group(self, group: int) -> None:
        for worker in self._workers.values():
            for batch in worker.inflight:
                if batch.group == group:
                    batch.cancelled = True
        self._pending = deque(b for b in self._pending if b.group != group)
        self._delayed = [entry for entry in self._delayed if entry[2].group != group]
        heapq.heapify(self._delayed)

    def _on_shutdown(self, cancel: bool, kill: bool, out: list[Instruction]) -> None:
        self._closing = True
        if cancel or kill:
            out.extend(_cancelled(b) for b in self.pending)
            self._pending.clear()
            self._delayed.clear()
        if kill:  # the workers running something are stopped now, and not waited for
            self._killing = True
            for worker in [w for w in self._workers.values() if w.inflight]:
                for batch in worker.inflight:
                    batch.cancelled = True
                out.extend(_cancelled(b) for b in worker.inflight)
                out.append(KillWorker(worker.id))
                del self._workers[worker.id]

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
            batch = self._pending[0]
            worker = self._least_loaded(avoid=batch.avoid)
            if (worker is None or worker.inflight) and self._can_grow():
                out.append(self._spawn())
                continue
            if worker is None and batch.avoid >= 0:  # no other worker: go back to the one it failed on
                worker = self._least_loaded(avoid=-1)
            if worker is None or (worker.inflight and not batch.queueable):
                return
            self._pending.popleft()
            if batch.cancelled or (batch.try_start is not None and not batch.try_start()):
                continue
            batch.try_start = None  # asked once: a batch sent again (its worker died) is started already
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

    def _least_loaded(self, avoid: int) -> _Worker | None:
        best: _Worker | None = None
        for worker in self._workers.values():
            if worker.id == avoid or worker.retiring or len(worker.inflight) >= self._depth:
                continue
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
        return best

    def _stop_idle(self, out: list[Instruction]) -> None:
        """Once shut down (or broken), workers with nothing left to do exit."""
        if not (self._closing or self.broken is not None) or self._pending or self._delayed:
            return
        for worker in self._workers.values():
            if not worker.inflight and not worker.retiring:
                worker.retiring = True
                out.append(StopWorker(worker.id))


def _runs(batch: Batch) -> int:
    """How many times a failed item was sent to a worker: its attempts, or
    more when more workers died holding it (a suspect sent again after a
    death outside any item's run is not a new attempt of its retry policy)."""
    return max(batch.attempt, batch.crashes)


def _one(batch: Batch, pos: int, new_id: int) -> Batch:
    """The item at ``pos`` of ``batch``, as a batch of its own."""
    return dataclasses.replace(batch, id=new_id, items=batch.items[pos : pos + 1], try_start=None)


def _fail_all(batch: Batch, error: BaseException) -> Deliver:
    n = len(batch.items)
    return Deliver(BatchResult(batch, [None] * n, dict.fromkeys(range(n), error)))


def _cancelled(batch: Batch) -> Deliver:
    return _fail_all(batch, CancelledError())


def covered(results: Iterable[BatchResult]) -> list[int]:
    """The input indices a sequence of results covers (for tests and checks)."""
    return [index for r in results for index, _ in r.batch.items]
