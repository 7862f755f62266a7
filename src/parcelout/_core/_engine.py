"""The engine: one dispatcher thread that runs a ``Scheduler`` against a backend.

It is the only thread that touches the scheduler, so the scheduler needs no
lock: callers and the backend talk to it by posting events into one inbox.
The engine carries out the instructions the scheduler returns and calls each
batch's sink with its result. It must never decide anything itself.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from parcelout._core._messages import (
    Backend,
    BatchResult,
    Deliver,
    Event,
    Instruction,
    KillWorker,
    Send,
    StartWorker,
    StopWorker,
    Tick,
)
from parcelout._core._scheduler import Scheduler

BackendFactory = Callable[[Callable[[Event], None]], Backend]


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
        self._inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._scheduler = scheduler
        self._backend = make_backend(self._inbox.put)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def broken(self) -> BaseException | None:
        return self._scheduler.broken

    def post(self, event: Event) -> None:
        self._inbox.put(event)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker is gone; True if so within ``timeout``.

        Called on the dispatcher thread itself (a future's done callback runs
        there), it cannot wait for itself and returns False at once.
        """
        if threading.current_thread() is self._thread:
            return self._done.is_set()
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            self._carry_out(self._scheduler.start())
            while not self._scheduler.finished:
                self._carry_out(self._scheduler.handle(self._next_event()))
        except BaseException as exc:  # a bug here must not leave callers waiting
            self._fail_everything(exc)
            raise
        finally:
            self._backend.close()
            self._done.set()

    def _next_event(self) -> Event:
        """The next event posted, or a ``Tick`` once the scheduler's deadline comes."""
        deadline = self._scheduler.next_deadline
        if deadline is None:
            return self._inbox.get()
        try:
            return self._inbox.get(timeout=max(0.0, deadline - self._clock()))
        except queue.Empty:
            return Tick()

    def _carry_out(self, instructions: list[Instruction]) -> None:
        backend = self._backend
        for instruction in instructions:
            match instruction:
                case Send(worker, batch):
                    backend.send(worker, batch)
                case Deliver(result):
                    result.batch.sink(result)
                case StartWorker(worker):
                    backend.start_worker(worker)
                case StopWorker(worker):
                    backend.stop_worker(worker)
                case KillWorker(worker, grace):
                    backend.kill_worker(worker, grace)

    def _fail_everything(self, exc: BaseException) -> None:
        error = RuntimeError(f"parcelout's dispatcher thread failed: {exc!r}")
        error.__cause__ = exc
        batches = [*self._scheduler.pending]
        for held in self._scheduler.workers.values():
            batches.extend(held)
        for batch in batches:
            n = len(batch.items)
            batch.sink(BatchResult(batch, [None] * n, dict.fromkeys(range(n), error)))
