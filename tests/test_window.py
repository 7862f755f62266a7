"""Input is pulled lazily through a bounded window: the items taken from the
input and not yet yielded never exceed it, on millions of items, and the
parent's memory stays flat."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import psutil
import pytest

import parcelout
from parcelout._core._batcher import MAX_BATCH
from parcelout._stream import WINDOW_BYTES, default_window

MILLIONS = 2_000_000


def add_one(x: int) -> int:
    return x + 1


class Counting:
    """An endless input that counts what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.taken
            self.taken += 1


@pytest.mark.parametrize("window", [1, 7, 1000])
def test_in_flight_never_exceeds_the_window(backend: str, window: int) -> None:
    source = Counting()
    most = 0
    for yielded, value in enumerate(parcelout.imap(add_one, source, backend=backend, workers=2, window=window), 1):
        assert value == yielded
        most = max(most, source.taken - yielded)
        if yielded == 20_000:
            break
    assert most <= window


class SizedCounting(Counting):
    """As ``Counting``, with a length: a dataset of a million records."""

    def __len__(self) -> int:
        return 1_000_000


# An endless input, and a long one with a length: neither is pulled further
# ahead than the default window, whatever the input's length.
@pytest.mark.parametrize("kind", [Counting, SizedCounting], ids=["endless", "sized-1000000"])
def test_default_window_is_bounded_however_long_the_input(backend: str, kind: type[Counting]) -> None:
    source = kind()
    most = 0
    for yielded, _ in enumerate(parcelout.imap(add_one, source, backend=backend, workers=2), 1):
        most = max(most, source.taken - yielded)
        if yielded == 100_000:
            break
    assert most <= default_window(2, MAX_BATCH)


KIB_256 = 256 * 1024


class LargeItems:
    """An endless input of distinct 256 KiB items that counts what was taken."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.taken += 1
            yield bytes([self.taken % 256]) * KIB_256


def test_a_window_of_large_items_is_bounded_in_bytes(backend: str) -> None:
    source = LargeItems()
    most = 0
    for yielded, size in enumerate(parcelout.imap(len, source, backend=backend, workers=2), 1):
        assert size == KIB_256
        most = max(most, source.taken - yielded)
        if yielded == 1500:  # 375 MiB through
            break
    assert most * KIB_256 <= WINDOW_BYTES + 4 * KIB_256, f"{most} items of 256 KiB taken ahead"


@pytest.mark.timeout(120)
def test_millions_of_items_in_flat_memory(backend: str) -> None:
    source = Counting()
    window = 10_000
    rss = psutil.Process().memory_info().rss
    total = 0
    most = 0
    stream = parcelout.imap(add_one, source, backend=backend, workers=2, window=window)
    for yielded, value in enumerate(stream, 1):
        total += value
        if yielded % 100_000 == 0:
            most = max(most, source.taken - yielded)
            if yielded == 200_000:
                gc.collect()
                rss = psutil.Process().memory_info().rss  # after start-up and warm-up
        if yielded == MILLIONS:
            break
    stream.close()
    grown = psutil.Process().memory_info().rss - rss
    assert total == MILLIONS * (MILLIONS + 1) // 2
    assert most <= window
    # 1.8 million more items held would be well over 50 MiB.
    assert grown < 30 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"


class HeadWaits:
    """Item 0 ends only once every other item has run."""

    def __init__(self, total: int, patience: float) -> None:
        self.total = total
        self.patience = patience
        self.ran = 0
        self.lock = threading.Lock()
        self.rest_ran = threading.Event()

    def __call__(self, x: int) -> int:
        if x == 0:
            if not self.rest_ran.wait(self.patience):  # the work itself: a long first item
                raise TimeoutError(f"only {self.ran} of the other items ran")
            return -1
        with self.lock:
            self.ran += 1
            if self.ran == self.total - 1:
                self.rest_ran.set()
        return x


def test_map_goes_past_a_slow_item_while_imap_keeps_its_window() -> None:
    # map holds every result anyway: its window bounds only the items out at
    # the workers, so one slow item does not stop them.
    head = HeadWaits(500, patience=30)
    assert parcelout.map(head, range(500), backend="thread", workers=2, chunksize=1) == [-1, *range(1, 500)]
    # imap yields in order, and its window bounds what waits for the slow item:
    # the first item gives up after a second, with the rest held back.
    head = HeadWaits(500, patience=1)
    with pytest.raises(TimeoutError, match="of the other items ran"):
        list(parcelout.imap(head, range(500), backend="thread", workers=2, chunksize=1, window=20))
    assert 0 < head.ran < 20


class Lockstep:
    """An input that, from item 2 on, gives the next item only once the
    previous one's result has been yielded (waiting ``patience`` seconds at
    most): results must come while the input waits."""

    def __init__(self, n: int, patience: float) -> None:
        self.n = n
        self.patience = patience
        self.yielded = [threading.Event() for _ in range(n)]
        self.waited_in_vain: list[int] = []

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            if i >= 2 and not self.yielded[i - 1].wait(self.patience):
                self.waited_in_vain.append(i)
            yield i


def test_results_are_yielded_while_a_slow_input_waits(backend: str) -> None:
    source = Lockstep(12, patience=2.0)
    for result in parcelout.imap(add_one, source, backend=backend, workers=2):
        source.yielded[result - 1].set()
    # The first waits show the input is slow (a run of 1 or 2 items read in
    # this thread); from then on it is read on a reader thread, and each
    # result comes while the input waits for it.
    assert all(i <= 3 for i in source.waited_in_vain), source.waited_in_vain
