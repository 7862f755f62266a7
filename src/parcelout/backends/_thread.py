"""Thread workers: one daemon thread per worker, each with its own inbox.

A thread cannot be killed: ``kill_worker`` asks it to stop after the item it
is running (the batch is flagged cancelled by the scheduler).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, WorkerExited
from parcelout.backends._base import run_batch


class ThreadBackend:
    def __init__(
        self,
        report: Callable[[Event], None],
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        name_prefix: str = "parcelout-thread",
    ) -> None:
        self._report = report
        self._initializer = initializer
        self._initargs = initargs
        self._prefix = name_prefix
        self._inboxes: dict[int, queue.SimpleQueue[Batch | None]] = {}
        self._threads: dict[int, threading.Thread] = {}

    def start_worker(self, worker: int) -> None:
        inbox: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        thread = threading.Thread(target=self._work, args=(worker, inbox), name=f"{self._prefix}_{worker}", daemon=True)
        self._inboxes[worker] = inbox
        self._threads = {w: t for w, t in self._threads.items() if t.is_alive()}
        self._threads[worker] = thread
        thread.start()

    def send(self, worker: int, batch: Batch) -> None:
        self._inboxes[worker].put(batch)

    def stop_worker(self, worker: int) -> None:
        inbox = self._inboxes.pop(worker, None)
        if inbox is not None:
            inbox.put(None)

    kill_worker = stop_worker

    def close(self) -> None:
        for inbox in self._inboxes.values():
            inbox.put(None)
        self._inboxes.clear()
        current = threading.current_thread()
        for thread in self._threads.values():
            if thread is not current:
                thread.join()
        self._threads.clear()

    def _work(self, worker: int, inbox: queue.SimpleQueue[Batch | None]) -> None:
        try:
            if self._initializer is not None:
                try:
                    self._initializer(*self._initargs)
                except BaseException as exc:
                    self._report(InitFailed(worker, exc))
                    return
            while (batch := inbox.get()) is not None:
                payloads = [item for _, item in batch.items]
                values, errors, elapsed = run_batch(batch.call.fn, batch.call.star, payloads, flag=batch)
                self._report(BatchDone(worker, batch.id, values, errors, elapsed))
        finally:
            self._report(WorkerExited(worker, 0))
