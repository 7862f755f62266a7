"""The feeder: pulls input lazily, numbering each item by its position.

It never reads ahead of what it is asked for, so the window above it bounds
memory. An exception raised by the input iterator is kept, with the position
it stopped at, to be raised after every earlier item has been yielded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Feeder(Generic[T]):
    def __init__(self, items: Iterable[T]) -> None:
        self._items: Iterator[T] = iter(items)
        self.taken = 0
        self.exhausted = False
        self.error: Exception | None = None

    def take(self, n: int) -> list[tuple[int, T]]:
        """Up to ``n`` more ``(index, item)`` pairs; fewer only at the end."""
        start = self.taken
        got = self.take_items(n)
        return list(zip(range(start, self.taken), got, strict=True))

    def take_items(self, n: int) -> list[T]:
        """Up to ``n`` more items, numbered from ``taken``; fewer only at the end."""
        got: list[T] = []
        if self.exhausted or n <= 0:
            return []
        try:
            got.extend(itertools.islice(self._items, n))
        except Exception as exc:  # the input itself failed: keep what came before
            position = self.taken + len(got)
            exc.add_note(
                f"parcelout: the input iterable raised this while producing item {position} "
                f"(items 0 to {position - 1} were processed)"
                if position
                else "parcelout: the input iterable raised this before producing item 0"
            )
            self.error = exc
            self.exhausted = True
        else:
            self.exhausted = len(got) < n
        self.taken += len(got)
        return got
