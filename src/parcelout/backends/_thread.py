"""Thread workers: one daemon thread per worker, each with its own inbox.

A thread cannot be killed. ``kill_worker`` makes it take nothing more: it
ends after the item it is running (the scheduler has flagged that batch
cancelled, so its other items are skipped). An item that runs past its
timeout is abandoned that way and runs on in its thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, ItemStarted, WorkerExited
from parcelout.backends._base import run_batch

_log = logging.getLogger("concurrent.futures")


class _StartReporter:
    """A slot that reports each item's start (for batches with a timeout)."""

    def __init__(self, report: Callable[[Event], None], worker: int, batch_id: int) -> None:
        self._report = report
        self._worker = worker
        self._batch_id = batch_id

    def __setitem__(self, key: int, position: int) -> None:
        self._report(ItemStarted(self._worker, self._batch_id, position))


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
        self._abandoned: set[int] = set()

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

    def kill_worker(self, worker: int, grace: float = 0.0) -> None:
        self._abandoned.add(worker)  # it takes nothing more from its inbox
        self._threads.pop(worker, None)  # and nobody waits for it
        self.stop_worker(worker)

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
                    _log.critical("Exception in initializer:", exc_info=True)  # as ThreadPoolExecutor logs it
                    self._report(InitFailed(worker, exc))
                    return
            while (batch := inbox.get()) is not None and worker not in self._abandoned:
                payloads = [item for _, item in batch.items]
                slot = None if batch.policy.timeout is None else _StartReporter(self._report, worker, batch.id)
                values, errors, elapsed = run_batch(batch.call.fn, batch.call.star, payloads, slot, flag=batch)
                self._report(BatchDone(worker, batch.id, values, errors, elapsed))
                del batch, payloads, slot, values, errors  # keep no item, function or result while idle
        finally:
            self._abandoned.discard(worker)
            self._report(WorkerExited(worker, 0))
