"""The scheduler, driven without a single worker: random event sequences
against a simulated transport, checking the invariants after every step.

* every submitted item is delivered exactly once (a result, a crash failure,
  or a cancellation at shutdown), never lost, never twice;
* no worker holds more than ``depth`` batches; there are never more live
  workers than the pool's size;
* a crash fails exactly the item that was running, and nothing else;
* with ``max_items_per_worker`` no worker is sent more items than that.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parcelout._core._messages import (
    DEFAULT_POLICY,
    Batch,
    BatchDone,
    BatchResult,
    Call,
    CancelGroup,
    Deliver,
    Event,
    InitFailed,
    Instruction,
    KillWorker,
    Send,
    Shutdown,
    StartWorker,
    StopWorker,
    Submitted,
    WorkerExited,
)
from parcelout._core._scheduler import Scheduler, describe_exit
from parcelout.errors import InitializerFailed, WorkerCrashed


def _noop(result: BatchResult) -> None:
    return None


@dataclass
class World:
    """A simulated transport: workers as queues of batches."""

    size: int
    depth: int
    quota: int | None = None
    ids: itertools.count[int] = field(default_factory=itertools.count)
    queues: dict[int, list[Batch]] = field(default_factory=dict)
    stopping: set[int] = field(default_factory=set)
    sent_items: Counter[int] = field(default_factory=Counter)
    delivered: Counter[int] = field(default_factory=Counter)
    suspected: Counter[int] = field(default_factory=Counter)
    crashed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    submitted: list[int] = field(default_factory=list)
    next_index: int = 0

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.size, self.ids.__next__, depth=self.depth, max_items_per_worker=self.quota)
        self.apply(self.scheduler.start())

    def post(self, event: Event) -> None:
        self.apply(self.scheduler.handle(event))

    def apply(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            match ins:
                case StartWorker(w):
                    assert w not in self.queues
                    self.queues[w] = []
                case Send(w, batch):
                    assert w not in self.stopping, "sent work to a stopping worker"
                    self.queues[w].append(batch)
                    self.sent_items[w] += len(batch.items)
                    assert len(self.queues[w]) <= self.depth
                case Deliver(result):
                    self.record(result)
                case StopWorker(w):
                    self.stopping.add(w)
                case KillWorker(w):
                    self.queues[w].clear()
                    self.stopping.add(w)
        assert len(self.queues) <= self.size
        if self.quota is not None:
            assert all(n <= self.quota for n in self.sent_items.values())

    def record(self, result: BatchResult) -> None:
        for pos, (index, _) in enumerate(result.batch.items):
            self.delivered[index] += 1
            assert self.delivered[index] == 1, f"item {index} delivered twice"
            error = result.errors.get(pos)
            if isinstance(error, WorkerCrashed):
                self.crashed.append(index)
            elif isinstance(error, CancelledError | InitializerFailed | RuntimeError):
                self.cancelled.append(index)

    # ------------------------------------------------------------ actions
    def submit(self, n: int, group: int = 0) -> None:
        items = [(self.next_index + i, None) for i in range(n)]
        self.submitted.extend(i for i, _ in items)
        self.next_index += n
        self.post(Submitted(Batch(next(self.ids), Call(print), items, _noop, group)))

    def finish(self, w: int) -> None:
        batch = self.queues[w].pop(0)
        n = len(batch.items)
        self.post(BatchDone(w, batch.id, list(range(n)), {}, 0.001 * n))

    def crash(self, w: int, position: int) -> list[int]:
        """Kill worker ``w`` while it runs item ``position`` of its first batch
        (outside any item if there is none there); the items that fail for it.

        A death outside any item makes each item of the first batch a suspect:
        one that has been a suspect ``max_crashes`` times fails."""
        queue = self.queues.pop(w)
        self.stopping.discard(w)
        if queue and 0 <= position < len(queue[0].items):
            self.post(WorkerExited(w, -9, queue[0].id, position))
            return [queue[0].items[position][0]]
        self.post(WorkerExited(w, -9))
        failed = []
        for index, _ in queue[0].items if queue else ():
            self.suspected[index] += 1
            if self.suspected[index] == DEFAULT_POLICY.max_crashes:
                failed.append(index)
        return failed

    def exit_stopped(self) -> None:
        for w in list(self.stopping):
            if w in self.queues and not self.queues[w]:
                del self.queues[w]
                self.stopping.discard(w)
                self.post(WorkerExited(w, 0))

    def drain(self) -> None:
        """Let every worker finish everything; stop the pool."""
        self.post(Shutdown())
        for _ in range(10_000):
            busy = [w for w, q in self.queues.items() if q]
            if busy:
                self.finish(busy[0])
            self.exit_stopped()
            if self.scheduler.finished:
                return
        raise AssertionError("the scheduler never finished")


actions = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 9)),
        st.tuples(st.just("finish"), st.integers(0, 20)),
        st.tuples(st.just("crash"), st.integers(0, 20), st.integers(-1, 9)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 4),
    depth=st.integers(1, 3),
    quota=st.none() | st.integers(1, 6),
    steps=actions,
)
def test_every_item_delivered_exactly_once(
    size: int, depth: int, quota: int | None, steps: list[tuple[Any, ...]]
) -> None:
    world = World(size, depth, quota)
    expected_crashes = []
    for step in steps:
        kind = step[0]
        busy = [w for w, q in world.queues.items() if q]
        if kind == "submit":
            world.submit(int(step[1]))
        elif kind == "finish" and busy:
            world.finish(busy[int(step[1]) % len(busy)])
        elif kind == "crash" and world.queues:
            live = sorted(world.queues)
            expected_crashes.extend(world.crash(live[int(step[1]) % len(live)], int(step[2])))
        world.exit_stopped()
    world.drain()
    assert sorted(world.delivered) == world.submitted
    assert all(n == 1 for n in world.delivered.values())
    assert sorted(world.crashed) == sorted(expected_crashes)
    assert not world.cancelled


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=10), cancel_after=st.integers(0, 10))
def test_cancelled_group_is_never_sent_again(sizes: list[int], cancel_after: int) -> None:
    world = World(2, 2)
    for i, n in enumerate(sizes):
        world.submit(n, group=1 if i % 2 else 2)
    for _ in range(cancel_after):
        busy = [w for w, q in world.queues.items() if q]
        if busy:
            world.finish(busy[0])
    world.post(CancelGroup(1))
    sent_after = [b for q in world.queues.values() for b in q]
    world.drain()
    late = [b for q in world.queues.values() for b in q if b not in sent_after]
    assert all(b.group != 1 for b in late)
    group2 = [index for i, n in enumerate(sizes) if i % 2 == 0 for index in range(sum(sizes[:i]), sum(sizes[: i + 1]))]
    assert all(world.delivered[i] == 1 for i in group2)


def test_crash_blames_the_running_item_only() -> None:
    world = World(1, 2)
    world.submit(5)  # items 0..4 in one batch on worker 0
    world.submit(3)  # items 5..7 queued behind it
    assert world.crash(0, 2) == [2]
    assert world.crashed == [2]
    world.drain()
    assert sorted(world.delivered) == list(range(8))
    assert world.crashed == [2]


def test_one_crash_between_items_fails_nobody() -> None:
    world = World(1, 2)
    world.submit(3)
    world.crash(0, -1)
    world.drain()
    assert world.crashed == []
    assert sorted(world.delivered) == [0, 1, 2]


def test_an_item_held_by_every_worker_that_dies_outside_items_fails_after_max_crashes() -> None:
    # Such as an item whose receipt kills the worker: it is not sent again forever.
    world = World(1, 1)
    world.submit(1)
    failed = [i for _ in range(DEFAULT_POLICY.max_crashes) for i in world.crash(min(world.queues), -1)]
    assert failed == [0]
    assert world.crashed == [0]
    world.drain()
    assert sorted(world.delivered) == [0]


def test_shutdown_with_cancel_drops_pending_and_finishes_running() -> None:
    world = World(1, 1)
    world.submit(2)
    world.submit(2)  # pending: the only worker holds one batch
    world.post(Shutdown(cancel=True))
    assert world.cancelled == [2, 3]
    world.drain()
    assert sorted(world.delivered) == [0, 1, 2, 3]


def test_kill_cancels_what_runs_and_spawns_nothing() -> None:
    world = World(2, 1)
    world.submit(1)
    world.submit(1)
    world.post(Shutdown(kill=True))
    for w in list(world.queues):
        world.crash(w, 0)
    assert world.scheduler.finished
    assert sorted(world.cancelled) == [0, 1]


def test_submit_after_shutdown_fails_the_batch() -> None:
    world = World(1, 1)
    world.post(Shutdown())
    world.submit(2)
    assert world.cancelled == [0, 1]


def test_initializer_failure_breaks_the_pool() -> None:
    world = World(2, 1)
    world.submit(1)
    world.submit(1)
    world.submit(1)  # pending
    world.post(InitFailed(0, ValueError("no config")))
    assert isinstance(world.scheduler.broken, InitializerFailed)
    assert isinstance(world.scheduler.broken.__cause__, ValueError)
    world.submit(1)
    assert 3 in world.cancelled  # refused at once
    world.drain()
    assert sorted(world.delivered) == [0, 1, 2, 3]


def test_recycling_replaces_a_worker_after_its_quota() -> None:
    world = World(1, 2, quota=3)
    world.submit(7)
    started = set(world.queues)
    world.drain()
    assert sorted(world.delivered) == list(range(7))
    assert max(world.sent_items.values()) == 3
    assert len(world.sent_items) == 3  # 3 + 3 + 1 items on three workers
    assert started == {0}


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(None) == "exit code unknown"
