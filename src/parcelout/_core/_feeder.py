"""The feeder: pulls input lazily, numbering each item by its position.

It never reads ahead of what it is asked for, so the window above it bounds
memory. An exception raised by the input iterator is kept, with the position
it stopped at, to be raised after every earlier item has been yielded.

It also keeps an estimate of how large an item is (``item_bytes``), so that
the window can be bounded in bytes as well as in items: the first item of
each take is sized by the ``size_of`` it is given (the stream gives one that
pickles it without copying its large buffers).

An input that makes the stream wait (a read took over ``SLOW_ITEM`` seconds)
is read from then on by a reader thread, so that the stream yields the
results that finish while the next item is awaited (``tail -f log |
parcelout run ...``). The reader takes no more items than the stream allows
(``room``), so the window still holds, and ``wake`` tells the stream that
items wait to be taken: an item that was slow to come (it goes at once), or
a whole batch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
# Seconds a read from the input may take before the input counts as slow and
# is read on a reader thread (well above a wait for the GIL).
SLOW_ITEM = 0.02


class SizeEstimate:
    """A running estimate of the bytes per value, from the values ``size_of``
    has sized so far (none: no estimate)."""

    def __init__(self, size_of: Callable[[object], int] | None = None) -> None:
        self._size_of = size_of
        self.bytes = 0  # 0 until a value has been sized

    def add(self, value: object) -> None:
        if self._size_of is None:
            return
        size = self._size_of(value)
        self.bytes = size if self.bytes == 0 else (3 * self.bytes + size) // 4


class Feeder(Generic[T]):
    def __init__(
        self,
        items: Iterable[T],
        wake: Callable[[], None] | None = None,
        size_of: Callable[[object], int] | None = None,
    ) -> None:
        self._items: Iterator[T] = iter(items)
        self._wake = wake
        self._reader: _Reader[T] | None = None
        self.taken = 0
        self.exhausted = False
        self.error: Exception | None = None
        self.item_bytes = SizeEstimate(size_of)

    def take(self, n: int, *, block: bool = True, room: int | None = None) -> list[tuple[int, T]]:
        """Up to ``n`` more ``(index, item)`` pairs (see ``take_items``)."""
        start = self.taken
        got = self.take_items(n, block=block, room=room)
        return list(zip(range(start, self.taken), got, strict=True))

    def take_items(self, n: int, *, block: bool = True, room: int | None = None) -> list[T]:
        """Up to ``n`` more items, numbered from ``taken``.

        Read here, fewer only at the end. From a slow input's reader, those
        that have come: at least one (unless at the end) with ``block``, maybe
        none without; ``room`` (default ``n``) is how many items the stream
        may take now, which the reader may read ahead up to.
        """
        if self.exhausted or n <= 0:
            return []
        if self._reader is not None:
            got = self._reader.take(n, block, self.taken + (n if room is None else room))
            self.exhausted = self._reader.ended
            self.error = self._reader.error
        else:
            got = self._read(n)
        self.taken += len(got)
        if got:
            self.item_bytes.add(got[0])
        return got

    def close(self) -> None:
        """The stream is done: a reader reads no more (it ends once the item
        it awaits, if any, comes)."""
        if self._reader is not None:
            self._reader.close()

    def _read(self, n: int) -> list[T]:
        """Up to ``n`` items, read here in runs of 1, 2, 4... items, so that a
        slow one is seen after its run: then the items so far are returned and
        a reader takes over (if the stream can be woken)."""
        got: list[T] = []
        run = 1
        while len(got) < n:
            start = time.perf_counter()
            want = min(run, n - len(got))
            before = len(got)
            try:
                got.extend(itertools.islice(self._items, want))
            except Exception as exc:  # the input itself failed: keep what came before
                self.error = _noted(exc, self.taken + len(got))
                self.exhausted = True
                return got
            if len(got) - before < want:
                self.exhausted = True
                return got
            if self._wake is not None and time.perf_counter() - start > SLOW_ITEM:
                self._reader = _Reader(self._items, self._wake, self.taken + len(got))
                return got
            run *= 2
        return got


def _noted(exc: Exception, position: int) -> Exception:
    exc.add_note(
        f"parcelout: the input iterable raised this while producing item {position} "
        f"(items 0 to {position - 1} were processed)"
        if position
        else "parcelout: the input iterable raised this before producing item 0"
    )
    return exc


class _Reader(Generic[T]):
    """Reads a slow input on its own thread, one item at a time, while it may
    (``limit``: how many items, counted from the input's start, it may have
    read); calls ``wake`` when an item comes or the input ends."""

    def __init__(self, items: Iterator[T], wake: Callable[[], None], read: int) -> None:
        self._items = items
        self._wake = wake
        self._cond = threading.Condition()
        self._buffer: deque[T] = deque()
        self._read = read
        self._limit = read
        self._batch = 1  # items the stream takes at once: a batch waiting wakes it
        self._closed = False
        self._done = False  # the input ended (or failed); the buffer may hold more
        self.error: Exception | None = None
        threading.Thread(target=self._run, name="parcelout-feeder", daemon=True).start()

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._done and not self._buffer

    def take(self, n: int, block: bool, limit: int) -> list[T]:
        with self._cond:
            self._limit = max(self._limit, limit)
            self._batch = n
            self._cond.notify_all()
            if block:
                self._cond.wait_for(lambda: self._buffer or self._done)
            return [self._buffer.popleft() for _ in range(min(n, len(self._buffer)))]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._read < self._limit)
                if self._closed:
                    return
            start = time.perf_counter()
            try:
                item = next(self._items)
            except StopIteration:
                self._end(None)
                return
            except Exception as exc:  # the input failed: after the items before it
                self._end(_noted(exc, self._read))
                return
            with self._cond:
                self._buffer.append(item)
                self._read += 1
                self._cond.notify_all()
                wake = time.perf_counter() - start > SLOW_ITEM or len(self._buffer) >= self._batch
            del item
            if wake:
                self._wake()

    def _end(self, error: Exception | None) -> None:
        with self._cond:
            self._done = True
            self.error = error
            self._cond.notify_all()
        self._wake()
