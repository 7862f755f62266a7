"""The batcher: how many items go to a worker at once.

A fixed ``chunksize`` is used as given. Otherwise the size adapts: it starts
at one item, measures how long items take on the workers, and aims for
batches of about ``target`` seconds (``TARGET_SECONDS`` for local workers,
``CLUSTER_TARGET_SECONDS`` for a cluster engine, whose round trip costs
milliseconds), long enough to amortise the round trip to a worker and short
enough to balance the tail. Where the input's length is
known, a batch never exceeds a quarter of each worker's share, so that every
worker gets several batches; and never ``MAX_BATCH`` items, however long the
input, so that the window (a few batches per worker) does not grow with it.
"""

from __future__ import annotations

import math

TARGET_SECONDS = 0.02
CLUSTER_TARGET_SECONDS = 0.1
MAX_BATCH = 4096


class Batcher:
    def __init__(
        self, workers: int, chunksize: int | None = None, total: int | None = None, target: float = TARGET_SECONDS
    ) -> None:
        self._fixed = chunksize
        self._target = target
        self._total = total
        self.workers = workers
        self._per_item: float | None = None
        self._size = chunksize or 1

    @property
    def size(self) -> int:
        return self._size

    @property
    def _cap(self) -> int:
        if self._total is None:
            return MAX_BATCH
        return max(1, min(MAX_BATCH, math.ceil(self._total / (4 * self.workers))))

    def observe(self, items: int, seconds: float) -> None:
        """Learn from a finished batch of ``items`` that took ``seconds``."""
        if self._fixed is not None or items <= 0:
            return
        per_item = seconds / items
        self._per_item = per_item if self._per_item is None else 0.5 * (self._per_item + per_item)
        ideal = self._target / max(self._per_item, 1e-9)
        self._size = max(1, min(self._cap, int(ideal)))
