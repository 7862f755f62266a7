"""The scheduler's failure policy, driven with a fake clock and no worker:
per-item timeouts, retries with back-off, suspects of a death that cannot
be pinned on one item, and the crash cap for poison items.

Invariants, under random sequences of results, failures, deaths, timeouts
and the passing of time:

* every submitted item is delivered exactly once;
* no item runs more than ``retries + 1`` times, and no item sees more than
  ``max_crashes`` workers die under it;
* a failure is delivered only once its retries are used up (or its error is
  not retried).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parcelout._core._messages import (
    Batch,
    BatchDone,
    BatchResult,
    Call,
    ItemStarted,
    KillWorker,
    Policy,
    Shutdown,
    Submitted,
    Tick,
    WorkerExited,
)
from parcelout._core._scheduler import TIMEOUT_GRACE, Scheduler
from parcelout.errors import TaskTimeout, WorkerCrashed
from tests.core.test_scheduler import World


class Flaky(Exception):
    pass


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class PolicyWorld(World):
    policy: Policy = field(default_factory=Policy)
    clock: Clock = field(default_factory=Clock)
    runs: Counter[int] = field(default_factory=Counter)
    outcomes: dict[int, tuple[BaseException | None, int, int]] = field(default_factory=dict)
    killed: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.size, self.ids.__next__, depth=self.depth, clock=self.clock)

    def submit(self, n: int, group: int = 0) -> None:
        items = [(self.next_index + i, None) for i in range(n)]
        self.submitted.extend(i for i, _ in items)
        self.next_index += n
        batch = Batch(next(self.ids), Call(print), items, self.record, group, policy=self.policy)
        self.post(Submitted(batch))

    def apply(self, instructions: list[Any]) -> None:
        for ins in instructions:
            if isinstance(ins, KillWorker):  # stopped: the scheduler has already forgotten it
                self.killed.append((ins.worker, ins.grace))
                self.queues.pop(ins.worker, None)
                self.stopping.discard(ins.worker)
            else:
                super().apply([ins])

    def record(self, result: BatchResult) -> None:
        super().record(result)
        for pos, (index, _) in enumerate(result.batch.items):
            self.outcomes[index] = (result.errors.get(pos), result.batch.attempt, result.batch.crashes)

    def start(self, w: int, position: int) -> None:
        """Worker ``w`` begins the item at ``position`` of its first batch."""
        batch = self.queues[w][0]
        self.runs[batch.items[position][0]] += 1
        self.post(ItemStarted(w, batch.id, position))

    def finish_with(self, w: int, failing: set[int]) -> None:
        """Worker ``w`` finishes its first batch; the items in ``failing`` raise."""
        batch = self.queues[w].pop(0)
        errors: dict[int, BaseException] = {
            pos: Flaky(index) for pos, (index, _) in enumerate(batch.items) if index in failing
        }
        self.post(BatchDone(w, batch.id, [None] * len(batch.items), errors, 0.0))

    def die(self, w: int, batch_id: int, position: int) -> None:
        self.queues.pop(w)
        self.stopping.discard(w)
        self.post(WorkerExited(w, -9, batch_id, position))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.post(Tick())


def test_an_item_past_its_timeout_fails_and_its_worker_is_stopped() -> None:
    world = PolicyWorld(1, 2, policy=Policy(timeout=5.0))
    world.submit(4)  # items 0..3 in one batch
    world.start(0, 0)
    world.start(0, 1)
    assert world.scheduler.next_deadline == 5.0
    world.advance(4.9)
    assert not world.killed
    world.advance(0.2)
    assert world.killed == [(0, TIMEOUT_GRACE)]
    error, attempt, _ = world.outcomes[1]
    assert isinstance(error, TaskTimeout)
    assert error.timeout == 5.0
    assert attempt == 1
    # The others run again on a new worker: item 0 (its result died with the
    # worker), 2 and 3 (never ran).
    assert 1 in world.queues
    world.drain()
    assert sorted(world.delivered) == [0, 1, 2, 3]
    assert [i for i, (e, _, _) in world.outcomes.items() if e is not None] == [1]


def test_each_item_gets_the_whole_timeout() -> None:
    world = PolicyWorld(1, 1, policy=Policy(timeout=1.0))
    world.submit(3)
    for pos in range(3):  # each item takes 0.9 s: the batch takes 2.7 s
        world.start(0, pos)
        world.advance(0.9)
    assert not world.killed
    world.drain()
    assert all(error is None for error, _, _ in world.outcomes.values())


def test_a_timed_out_item_is_retried() -> None:
    world = PolicyWorld(1, 1, policy=Policy(timeout=1.0, retries=1))
    world.submit(1)
    world.start(0, 0)
    world.advance(1.0)
    assert 0 not in world.outcomes  # not delivered: it runs again
    world.start(1, 0)
    world.finish(1)
    assert world.outcomes[0] == (None, 2, 0)


def test_retries_then_the_last_error() -> None:
    world = PolicyWorld(2, 1, policy=Policy(retries=2))
    world.submit(3)
    for _ in range(3):
        busy = [w for w, q in world.queues.items() if q]
        world.finish_with(busy[0], failing={1})
    error, attempt, _ = world.outcomes[1]
    assert isinstance(error, Flaky)
    assert attempt == 3
    assert world.outcomes[0] == (None, 1, 0)
    assert world.outcomes[2] == (None, 1, 0)


def test_a_retry_goes_to_another_worker_when_there_is_one() -> None:
    world = PolicyWorld(2, 1, policy=Policy(retries=1))
    world.submit(1)
    world.submit(1)
    world.finish(1)
    world.finish_with(0, failing={0})  # both idle now: the retry goes to worker 1
    assert (len(world.queues[0]), len(world.queues[1])) == (0, 1)
    world.finish(1)
    assert world.outcomes[0] == (None, 2, 0)


def test_a_retry_goes_back_to_its_worker_rather_than_wait() -> None:
    world = PolicyWorld(2, 1, policy=Policy(retries=1))
    world.submit(1)
    world.submit(1)
    world.finish_with(0, failing={0})  # worker 1 is busy
    assert (len(world.queues[0]), len(world.queues[1])) == (1, 1)


def test_retry_on_narrows_what_is_retried() -> None:
    world = PolicyWorld(1, 1, policy=Policy(retries=3, retry_on=lambda e: not isinstance(e, Flaky)))
    world.submit(2)
    world.finish_with(0, failing={0})
    error, attempt, _ = world.outcomes[0]
    assert isinstance(error, Flaky)
    assert attempt == 1


def test_backoff_holds_a_retry_until_its_time() -> None:
    world = PolicyWorld(1, 1, policy=Policy(retries=2, backoff=1.0))
    world.submit(1)
    world.finish_with(0, failing={0})
    assert world.scheduler.next_deadline == 1.0  # 1.0 * 2 ** 0
    assert not any(world.queues.values())
    world.advance(0.5)
    assert not any(world.queues.values())
    world.advance(0.5)
    world.finish_with(0, failing={0})
    assert world.scheduler.next_deadline == 3.0  # then 1.0 * 2 ** 1 more
    world.advance(2.0)
    world.finish(0)
    assert world.outcomes[0] == (None, 3, 0)


def test_a_poison_item_fails_after_max_crashes() -> None:
    world = PolicyWorld(1, 1, policy=Policy(retries=10, max_crashes=3))
    world.submit(1)
    for _ in range(3):
        (w,) = world.queues
        world.die(w, world.queues[w][0].id, 0)
    error, attempt, crashes = world.outcomes[0]
    assert isinstance(error, WorkerCrashed)
    assert (attempt, crashes) == (3, 3)


def test_a_death_after_the_items_ran_makes_them_suspects() -> None:
    world = PolicyWorld(1, 2, policy=Policy(max_crashes=2))
    world.submit(3)
    batch_id = world.queues[0][0].id
    world.die(0, batch_id, -1)  # died after the batch's items, before their results came
    assert not world.outcomes
    assert [len(b.items) for b in world.queues[1]] == [1]  # one suspect per batch
    assert [len(b.items) for b in world.scheduler.pending] == [1, 1]
    # The next death under a suspect is its second: it fails.
    first = world.queues[1][0]
    world.die(1, first.id, 0)
    error, _, crashes = world.outcomes[first.items[0][0]]
    assert isinstance(error, WorkerCrashed)
    assert crashes == 2
    world.drain()
    assert sorted(world.delivered) == [0, 1, 2]


actions = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 6)),
        st.tuples(st.just("start"), st.integers(0, 20), st.integers(0, 9)),
        st.tuples(st.just("finish"), st.integers(0, 20), st.sets(st.integers(0, 40), max_size=5)),
        st.tuples(st.just("die"), st.integers(0, 20), st.integers(-1, 9)),
        st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
    ),
    max_size=60,
)


policies = st.builds(
    Policy,
    timeout=st.none() | st.floats(0.5, 2.0),
    retries=st.integers(0, 3),
    backoff=st.sampled_from([0.0, 0.5]),
    max_crashes=st.integers(1, 3),
)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 3), depth=st.integers(1, 2), policy=policies, steps=actions)
def test_every_item_once_under_any_policy(size: int, depth: int, policy: Policy, steps: list[tuple[Any, ...]]) -> None:
    world = PolicyWorld(size, depth, policy=policy)
    for step in steps:
        live = sorted(w for w, q in world.queues.items() if q)
        match step:
            case ("submit", n):
                world.submit(n)
            case ("start", w, pos) if live:
                worker = live[w % len(live)]
                world.start(worker, pos % len(world.queues[worker][0].items))
            case ("finish", w, failing) if live:
                world.finish_with(live[w % len(live)], failing)
            case ("die", w, pos) if live:
                worker = live[w % len(live)]
                world.die(worker, world.queues[worker][0].id, pos)
            case ("wait", seconds):
                world.advance(seconds)
        world.exit_stopped()
    # Let everything finish: time passes (back-offs end), workers succeed.
    world.post(Shutdown())
    for _ in range(10_000):
        busy = [w for w, q in world.queues.items() if q]
        if busy:
            world.finish(busy[0])
        else:
            world.advance(100.0)
        world.exit_stopped()
        if world.scheduler.finished:
            break
    assert sorted(world.delivered) == world.submitted
    for index, (error, attempt, crashes) in world.outcomes.items():
        assert attempt <= policy.retries + 1, index
        assert crashes <= policy.max_crashes, index
        if error is not None and not isinstance(error, WorkerCrashed):
            assert attempt == policy.retries + 1, (index, error)
