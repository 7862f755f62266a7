"""The engine: one dispatcher thread that runs a ``Scheduler`` against a backend.

It is the only thread that touches the scheduler, so the scheduler needs no
lock: callers and the backend talk to it by posting events into one inbox.
The engine carries out the instructions the scheduler returns and calls each
batch's sink with its result. It must never decide anything itself.

It must never die silently either. A sink that raises is logged and the
engine goes on. If the engine itself fails (a bug), it marks itself broken
(``BrokenPool``): every batch it holds, and every batch posted later, is
delivered failed with that error, so nobody waits on a dead thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from parcelout._core._messages import (
    Backend,
    Batch,
    BatchResult,
    Deliver,
    Event,
    Instruction,
    KillWorker,
    Send,
    StartWorker,
    StopWorker,
    Submitted,
    Tick,
)
from parcelout._core._scheduler import Scheduler, _fail_all
from parcelout.errors import BrokenPool

BackendFactory = Callable[[Callable[[Event], None]], Backend]
_log = logging.getLogger("parcelout")


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Set ``reached`` once every event posted before it has been handled."""

    reached: threading.Event


class Engine:
    """Runs ``scheduler`` on a daemon thread named ``name``.

    ``make_backend`` is called with the function the backend reports events
    through. ``clock`` must be the scheduler's clock: the engine sends it a
    ``Tick`` when its ``next_deadline`` comes.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        make_backend: BackendFactory,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._inbox: queue.SimpleQueue[Event | _Barrier] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders a post against the engine's death
        self._dead: BrokenPool | None = None
        self._scheduler = scheduler
        self._backend = make_backend(self._inbox.put)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def broken(self) -> BaseException | None:
        return self._dead or self._scheduler.broken

    def post(self, event: Event) -> None:
        with self._lock:
            if self._dead is None and not self._done.is_set():
                self._inbox.put(event)
                return
            error = self._refusal()
        if isinstance(event, Submitted):
            _fail(event.batch, error)

    def sync(self) -> None:
        """Return once every event posted before this call has been handled
        (at once on the engine's own thread, or once it is gone)."""
        if threading.current_thread() is self._thread:
            return
        barrier = _Barrier(threading.Event())
        with self._lock:
            if self._dead is not None or self._done.is_set():
                return
            self._inbox.put(barrier)
        barrier.reached.wait()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker is gone; True if so within ``timeout``.

        Called on the dispatcher thread itself (a future's done callback runs
        there), it cannot wait for itself and returns False at once.
        """
        if threading.current_thread() is self._thread:
            return self._done.is_set()
        return self._done.wait(timeout)

    def _run(self) -> None:
        event: Event | _Barrier | None = None
        try:
            self._carry_out(self._scheduler.start())
            while not self._scheduler.finished:
                event = self._next_event()
                if isinstance(event, _Barrier):
                    event.reached.set()
                    continue
                self._carry_out(self._scheduler.handle(event))
                event = None  # hold no item or result between events
        except BaseException as exc:  # a bug here must not leave callers waiting
            self._fail_everything(exc, event)
            raise
        finally:
            try:
                self._backend.close()
            finally:
                with self._lock:
                    self._done.set()
                self._release_barriers()

    def _next_event(self) -> Event | _Barrier:
        """The next event posted, or a ``Tick`` once the scheduler's deadline comes."""
        deadline = self._scheduler.next_deadline
        if deadline is None:
            return self._inbox.get()
        try:
            return self._inbox.get(timeout=max(0.0, deadline - self._clock()))
        except queue.Empty:
            return Tick()

    def _refusal(self) -> BaseException:
        """What a batch posted to the engine once it is gone fails with."""
        return self._dead or RuntimeError("cannot schedule new futures after shutdown")

    def _release_barriers(self) -> None:
        """Once gone, nothing posted is handled: release whoever waits."""
        while True:
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, _Barrier):
                event.reached.set()
            elif isinstance(event, Submitted):
                _fail(event.batch, self._refusal())

    def _carry_out(self, instructions: list[Instruction]) -> None:
        backend = self._backend
        for instruction in instructions:
            match instruction:
                case Send(worker, batch):
                    backend.send(worker, batch)
                case Deliver(result):
                    _deliver(result)
                case StartWorker(worker):
                    backend.start_worker(worker)
                case StopWorker(worker):
                    backend.stop_worker(worker)
                case KillWorker(worker, grace):
                    backend.kill_worker(worker, grace)

    def _fail_everything(self, exc: BaseException, event: Event | _Barrier | None) -> None:
        error = BrokenPool(f"parcelout's dispatcher thread failed ({exc!r}); the pool takes no more work")
        error.__cause__ = exc
        with self._lock:
            self._dead = error
        batches = [*self._scheduler.pending]
        if isinstance(event, Submitted) and not any(batch is event.batch for batch in batches):
            batches.append(event.batch)  # it failed while being taken in
        for held in self._scheduler.workers.values():
            batches.extend(held)
        for batch in batches:
            _fail(batch, error)
        self._release_barriers()


def _deliver(result: BatchResult) -> None:
    """Hand a result to its sink; a sink that raises is logged, never fatal."""
    try:
        result.batch.sink(result)
    except BaseException:
        _log.exception("parcelout: delivering the result of batch %d failed", result.batch.id)


def _fail(batch: Batch, error: BaseException) -> None:
    _deliver(_fail_all(batch, error).result)
