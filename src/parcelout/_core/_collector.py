"""The collector: turns batch results into per-item outcomes, in input order
(a reorder buffer) or as they complete.

Every batch of one stream covers a contiguous run of input positions (the
feeder numbers items in order, and the scheduler only ever splits a batch
into contiguous parts), so the reorder buffer holds whole results keyed by
their first position.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from parcelout._core._messages import BatchResult

Outcome = tuple[int, Any, bool, Any, int]
"""(index, item, ok, value or exception, attempts)"""


class Collector:
    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._next = 0
        self._held: dict[int, BatchResult] = {}

    @property
    def held(self) -> int:
        """Results received but not yet released (ordered mode)."""
        return len(self._held)

    def releases_whole(self, result: BatchResult) -> bool:
        """True if ``result`` is next in order (or order does not matter) and
        nothing is held: then all its values go out as they are, and it is
        counted as released."""
        if self._ordered:
            if self._held or not result.batch.items or result.batch.items[0][0] != self._next:
                return False
            self._next += len(result.batch.items)
        return True

    def add(self, result: BatchResult) -> Iterator[Outcome]:
        """The outcomes that ``result`` releases, in the order to yield them."""
        if not self._ordered:
            return _outcomes(result)
        if not result.batch.items:
            return iter(())
        self._held[result.batch.items[0][0]] = result
        return self._release()

    def _release(self) -> Iterator[Outcome]:
        while (result := self._held.pop(self._next, None)) is not None:
            self._next += len(result.batch.items)
            yield from _outcomes(result)


def _outcomes(result: BatchResult) -> Iterator[Outcome]:
    errors, values, attempt = result.errors, result.values, result.batch.attempt
    if not errors:
        for (index, item), value in zip(result.batch.items, values, strict=False):
            yield index, item, True, value, attempt
        return
    attempts = result.attempts
    for pos, (index, item) in enumerate(result.batch.items):
        if pos in errors:
            yield index, item, False, errors[pos], attempts.get(pos, attempt)
        else:
            yield index, item, True, values[pos], attempt
