"""The feeder: pulls input lazily, numbering each item by its position.

It never reads ahead of what it is asked for, so the window above it bounds
memory. An exception raised by the input iterator is kept, with the position
it stopped at, to be raised after every earlier item has been yielded.

It also keeps an estimate of how large an item is (``item_bytes``), so that
the window can be bounded in bytes as well as in items: the first item of
each take is sized by pickling it, without copying its large buffers
(``size_of``).
"""

from __future__ import annotations

import itertools
import pickle
import sys
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def size_of(value: object) -> int:
    """About how many bytes ``value`` holds: its pickled size, counting large
    buffers (a NumPy array's data) by their length instead of copying them;
    ``sys.getsizeof`` for a value that does not pickle."""
    buffers = 0

    def count(buffer: pickle.PickleBuffer) -> bool:
        nonlocal buffers
        buffers += buffer.raw().nbytes
        return False  # out of band: not copied into the pickle

    try:
        return len(pickle.dumps(value, protocol=5, buffer_callback=count)) + buffers
    except Exception:
        return sys.getsizeof(value)


class SizeEstimate:
    """A running estimate of the bytes per value, from the values sized so far."""

    def __init__(self) -> None:
        self.bytes = 0  # 0 until a value has been sized

    def add(self, value: object) -> None:
        size = size_of(value)
        self.bytes = size if self.bytes == 0 else (3 * self.bytes + size) // 4


class Feeder(Generic[T]):
    def __init__(self, items: Iterable[T]) -> None:
        self._items: Iterator[T] = iter(items)
        self.taken = 0
        self.exhausted = False
        self.error: Exception | None = None
        self.item_bytes = SizeEstimate()

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
        if got:
            self.item_bytes.add(got[0])
        return got
