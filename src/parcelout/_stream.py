"""A stream: one lazy map over a pool, running the data flow in the caller's
thread::

    items -> Feeder -> Batcher -> lane (the pool's engine, or inline) -> Collector -> caller

At most ``window`` items are taken from the input and not yet yielded, and
about ``WINDOW_BYTES`` of them and their results at most (sizes estimated
from samples), so an endless generator of large items streams in bounded
memory too. Closing the stream (end,
``break``, ``close()``, garbage collection, an exception) cancels its batches
that have not started.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Protocol

from parcelout._core._batcher import TARGET_SECONDS, Batcher
from parcelout._core._collector import Collector
from parcelout._core._engine import Engine
from parcelout._core._feeder import Feeder, SizeEstimate
from parcelout._core._messages import (
    Batch,
    BatchDone,
    BatchResult,
    Call,
    CancelGroup,
    Deliver,
    Instruction,
    Policy,
    Send,
    Shutdown,
    Submitted,
    Tick,
)
from parcelout._core._scheduler import Scheduler
from parcelout._failure import Failure, kind_of
from parcelout._journal import JournalLane, open_journal
from parcelout._options import RunOptions
from parcelout._progress import Progress
from parcelout.backends._base import Flag, Slot, run_batch
from parcelout.backends._wire import size_of
from parcelout.errors import describe_item

_groups = itertools.count(1)
# What a lane's next_result returns when woken: no items, more input to take.
WAKE = BatchResult(Batch(-1, Call(print), [], lambda _: None), [], {})
# The most bytes of items, and of their results, taken and not yet yielded
# (as estimated from samples): large items make a smaller window.
WINDOW_BYTES = 64 * 2**20


class Lane(Protocol):
    """Where a stream's batches run and its results come back from."""

    @property
    def workers(self) -> int: ...

    @property
    def inline(self) -> bool:
        """Whether it runs each batch in the caller's thread when submitted."""

    @property
    def batch_seconds(self) -> float:
        """How long a batch should take, to amortise a round trip to a worker."""

    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None: ...

    def next_result(self) -> BatchResult:
        """The next finished batch. A result with no items means that none has
        finished yet but the lane takes more input now (an auto lane that has
        just chosen)."""

    def cancel(self) -> None: ...

    def serial_now(self) -> bool:
        """True if items run in the caller's thread from now on (the initializer,
        if any, has run): the stream may then call the function itself."""

    def wake(self) -> None:
        """Make a ``next_result`` that waits return a result with no items
        (from any thread): the input has more for the stream to take."""


class EngineLane:
    inline = False

    def __init__(self, engine: Engine, workers: int, ids: Iterator[int], batch_seconds: float = TARGET_SECONDS) -> None:
        self.workers = workers
        self.batch_seconds = batch_seconds
        self._engine = engine
        self._ids = ids
        self._group = next(_groups)
        self._results: queue.SimpleQueue[BatchResult] = queue.SimpleQueue()

    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        batch = Batch(next(self._ids), call, items, self._results.put, self._group, queueable=True, policy=policy)
        self._engine.post(Submitted(batch))

    def next_result(self) -> BatchResult:
        return self._results.get()

    def cancel(self) -> None:
        self._engine.post(CancelGroup(self._group))

    def serial_now(self) -> bool:
        return False

    def wake(self) -> None:
        self._results.put(WAKE)


class InlineLane:
    """The serial backend: the caller's thread is the pool's one worker, under
    the same scheduler as every other backend.

    ``submit`` hands the batch to a ``Scheduler`` of one worker and runs what
    it sends here at once; the scheduler decides what a failure means (a
    retry, after its back-off, or a failure to deliver), exactly as for
    thread and process workers. A retry waiting out its back-off is the
    scheduler's timer: ``next_result`` waits for it (on ``cancel``, it stops
    waiting) only when nothing else has finished, so a back-off never runs
    inside a batch. A task timeout cannot be enforced in the caller's own
    thread (the options refuse one here).
    """

    workers = 1
    inline = True
    batch_seconds = TARGET_SECONDS

    def __init__(
        self,
        prepare: Callable[[], None] = lambda: None,
        flag: Flag | None = None,
        slot: Slot | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._done: deque[BatchResult] = deque()
        self._sent: deque[tuple[int, Batch]] = deque()  # what the scheduler sent this thread to run
        self._prepare = prepare
        self._flag = flag  # set, it stops a batch between items
        self._slot = slot  # slot[1]: the position running (run_batch)
        self._clock = clock
        self._ids = itertools.count()
        self._scheduler_: Scheduler | None = None  # made at the first batch that may be retried
        self._cancelled = threading.Event()

    def prepare(self) -> None:
        """Run the pool's initializer, once: raises if it failed."""
        self._prepare()

    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        self._prepare()
        batch = Batch(next(self._ids), call, items, self._done.append, policy=policy)
        if not policy.retries and (self._scheduler_ is None or self._scheduler_.finished_all):
            # Nothing to retry and nothing held back: the scheduler would send
            # the batch here and deliver what it gives, so run it straight.
            self._done.append(self._run(batch))
            return
        self._carry_out(self._scheduler.handle(Submitted(batch)))
        self._run_sent()

    @property
    def _scheduler(self) -> Scheduler:
        if self._scheduler_ is None:
            self._scheduler_ = Scheduler(1, self._ids.__next__, clock=self._clock)
        return self._scheduler_

    def next_result(self) -> BatchResult:
        """The next finished part of a batch: a batch comes back in parts
        when the scheduler holds an item back for a retry."""
        while not self._done:
            deadline = self._scheduler.next_deadline
            if deadline is None:
                raise RuntimeError("nothing is running or waiting here")  # pragma: no cover - a caller's bug
            if self._cancelled.is_set():  # the retries still waiting come back cancelled
                self._carry_out(self._scheduler.handle(Shutdown(cancel=True)))
                continue
            self._cancelled.wait(max(0.0, deadline - self._clock()))  # the scheduler's timer: a retry's back-off
            self._carry_out(self._scheduler.handle(Tick()))
            self._run_sent()
        return self._done.popleft()

    def cancel(self) -> None:
        """Stop waiting for retries (from any thread): those still waiting
        come back cancelled."""
        self._cancelled.set()

    def serial_now(self) -> bool:
        self._prepare()
        return True

    def wake(self) -> None:
        pass  # nothing runs while the caller waits for input

    def _carry_out(self, instructions: list[Instruction]) -> None:
        for instruction in instructions:
            match instruction:
                case Send(worker, batch):
                    self._sent.append((worker, batch))
                case Deliver(result):
                    result.worker = None  # no pool worker: the calling thread ran it
                    result.batch.sink(result)
                case _:  # start or stop a worker: the caller's thread is always there
                    pass

    def _run_sent(self) -> None:
        while self._sent:
            worker, batch = self._sent.popleft()
            ran = self._run(batch)
            self._carry_out(self._scheduler.handle(BatchDone(worker, batch.id, ran.values, ran.errors, ran.elapsed)))

    def _run(self, batch: Batch) -> BatchResult:
        payloads = [item for _, item in batch.items]
        call = batch.call
        values, errors, elapsed = run_batch(
            call.fn, call.star, payloads, self._slot, flag=self._flag, interruptible=True
        )
        return BatchResult(batch, values, errors, elapsed)


def default_window(workers: int, batch_size: int) -> int:
    """Enough items for every worker to hold a batch, another queued, and more
    waiting to be sent."""
    return max(4 * workers * batch_size, 16)


def window_and_batch(lane: Lane, size: int, window: int | None, item_bytes: int = 0) -> tuple[int, int]:
    """The window now, and how many items to take at a time.

    Inline, one batch runs at a time. Otherwise at most four batches per
    worker are out, so that the batch size can adapt to what it measures, and
    a batch is only sent whole: topping up the window item by item would
    shrink every batch to one item. Either way, no more items than
    ``WINDOW_BYTES`` holds at ``item_bytes`` each (an item and its result),
    but at least one per worker.
    """
    if lane.inline:
        limit = _inline_size(size, window, item_bytes)
        return limit, limit
    limit = default_window(lane.workers, size)
    if item_bytes:
        limit = min(limit, max(lane.workers, WINDOW_BYTES // item_bytes))
    window = min(window, limit) if window else limit
    return window, max(1, min(size, window // (2 * lane.workers)))


def _inline_size(size: int, window: int | None, item_bytes: int) -> int:
    """How many items to take at once when they run in this thread."""
    fit = WINDOW_BYTES // item_bytes if item_bytes else size
    return max(1, min(size, fit, window or size))


class _ResultSizes(SizeEstimate):
    """The bytes per result, from the first value of a few first results,
    then of one result in 16."""

    def __init__(self) -> None:
        super().__init__(size_of)
        self._seen = 0

    def observe(self, result: BatchResult) -> None:
        if result.values and (self._seen < 4 or self._seen % 16 == 0):
            self.add(result.values[0])
        self._seen += 1


def length_of(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def drive(
    lane: Lane, call: Call, items: Iterable[Any], options: RunOptions, ordered: bool
) -> Generator[Any, None, None]:
    """Yield each item's result (or Failure), in input order if ``ordered``."""
    return flatten(drive_batches(lane, call, items, options, ordered))


def flatten(batches: Generator[list[Any], None, None]) -> Generator[Any, None, None]:
    """One outcome at a time from a stream of lists; closing this closes the stream."""
    try:
        for outcomes in batches:
            yield from outcomes
    finally:
        batches.close()


def drive_batches(
    lane: Lane, call: Call, items: Iterable[Any], options: RunOptions, ordered: bool
) -> Generator[list[Any], None, None]:
    """As ``drive``, a list of outcomes at a time (what one batch released)."""
    if options.journal is None:
        yield from _drive(lane, call, items, options, ordered)
        return
    # The journal's lane skips what is done and records what comes back.
    journal = JournalLane(lane, open_journal(options.journal, call.fn, options.key, length_of(items)), options)
    try:
        yield from _drive(journal, call, items, options, ordered)
    finally:
        journal.close()


def _drive(
    lane: Lane, call: Call, items: Iterable[Any], options: RunOptions, ordered: bool
) -> Generator[list[Any], None, None]:
    total = length_of(items)
    feeder = Feeder(items, wake=getattr(lane, "wake", None), size_of=size_of)
    batcher = Batcher(lane.workers, options.chunksize, total, lane.batch_seconds)
    collector = Collector(ordered)
    progress = Progress(options.progress, total)
    on_error = options.on_error
    # A plain run that stays in this thread can skip the batch machinery.
    plain = on_error == "raise" and options.progress is False and options.policy.retries == 0
    in_flight = 0  # taken from the input, not yet yielded
    out = 0  # at the lane, not yet back
    result_bytes = _ResultSizes()
    try:
        while True:
            if plain and in_flight == 0 and not feeder.exhausted and lane.serial_now():
                yield from _run_plain(call.fn, feeder, batcher, options.window)
                continue
            per_item = feeder.item_bytes.bytes + result_bytes.bytes
            in_window = out if options.keeps_results else in_flight
            added = _fill(lane, call, feeder, batcher, options, in_flight=in_window, item_bytes=per_item)
            in_flight, out = in_flight + added, out + added
            if in_flight == 0:
                break
            result = lane.next_result()
            if not result.batch.items:
                continue  # the lane takes more input before anything finished
            out -= len(result.batch.items)
            result_bytes.observe(result)
            if result.elapsed:
                batcher.observe(len(result.values), result.elapsed)
            progress.advance(len(result.batch.items))
            if not result.errors and collector.releases_whole(result):
                in_flight -= len(result.values)
                yield list(result.values)
                continue
            released, count, failed = _release(collector, result, on_error)
            in_flight -= count
            if released:
                yield released
            if failed is not None:
                raise failed
        if feeder.error is not None:
            raise feeder.error
    finally:
        feeder.close()
        lane.cancel()
        progress.close()


def _fill(
    lane: Lane,
    call: Call,
    feeder: Feeder[Any],
    batcher: Batcher,
    options: RunOptions,
    *,
    in_flight: int,
    item_bytes: int,
) -> int:
    """Submit batches while the window, ``in_flight`` full, has room; how many items went."""
    batcher.workers = lane.workers  # an auto lane knows its workers once it has chosen
    window, want = window_and_batch(lane, batcher.size, options.window, item_bytes)
    added = 0
    while window - in_flight - added >= want and not feeder.exhausted:
        # Wait for input only with nothing out: else a slow input's items go
        # as they come, and results are yielded meanwhile.
        chunk = feeder.take(want, block=in_flight + added == 0, room=window - in_flight - added)
        if chunk:
            lane.submit(call, chunk, options.policy)
            added += len(chunk)
        if len(chunk) < want:
            break
    return added


def _release(collector: Collector, result: BatchResult, on_error: str) -> tuple[list[Any], int, BaseException | None]:
    """The outcomes ``result`` releases, how many, and the failure to raise
    (``on_error="raise"``: the outcomes stop before it)."""
    released: list[Any] = []
    count = 0
    for index, item, ok, value, attempts in collector.add(result):
        count += 1
        if ok:
            released.append(value)
        elif on_error == "raise":
            value.add_note(f"parcelout: raised by item {index} ({describe_item(item)})")
            return released, count, value
        elif on_error == "return":
            released.append(Failure(index, item, value, kind_of(value), attempts))
    return released, count, None


def _run_plain(
    fn: Callable[[Any], Any], feeder: Feeder[Any], batcher: Batcher, window: int | None
) -> Generator[list[Any], None, None]:
    """Run the next batch of items in this thread (see ``_run_here``); yield
    their results, then raise the exception that stopped them, if one did."""
    size = _inline_size(batcher.size, window, feeder.item_bytes.bytes)
    start = time.perf_counter()
    values, failed = _run_here(fn, feeder, size)
    batcher.observe(len(values) + (failed is not None), time.perf_counter() - start)
    if values:
        yield values
    if failed is not None:
        raise failed


def _run_here(fn: Callable[[Any], Any], feeder: Feeder[Any], size: int) -> tuple[list[Any], BaseException | None]:
    """Run the next ``size`` items in this thread at the speed of a plain
    loop: their results, up to the first exception, and that exception."""
    start = feeder.taken
    items = feeder.take_items(size)
    values: list[Any] = []
    try:
        values.extend(map(fn, items))  # what extend took stays in values if fn raises
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        pos = len(values)
        exc.add_note(f"parcelout: raised by item {start + pos} ({describe_item(items[pos])})")
        return values, exc
    return values, None
