"""parcelout.stress finds races that plain threads hide; parcelout.sync's
helpers survive it; the FAQ's table of atomic operations, executable."""

from __future__ import annotations

import random
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import parcelout
from parcelout import RaceDetected, StressReport, stress, sync
from tests.faq_ops import SCENARIOS, THREADS, Scenario

pytestmark = pytest.mark.timeout(120)
RUNS = 20  # a non-atomic operation must show its race in every one of these runs
ROUNDS_TO_SHOW_A_RACE = 10
ROUNDS_FOR_ATOMIC = 10


def increment(state: dict[str, int]) -> None:
    for _ in range(500):
        state["x"] = state["x"] + 1


def fresh() -> dict[str, int]:
    return {"x": 0}


def complete(state: dict[str, int]) -> bool:
    return state["x"] == 4 * 500


# ---------------------------------------------------------------- stress itself


def test_plain_threads_hide_the_race_that_stress_shows() -> None:
    """The motivation: with the switch interval alone, d[x] = d[x] + 1 from
    4 threads loses nothing in these rounds; under stress it does at once."""
    lost = 0
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            state = fresh()
            workers = [threading.Thread(target=increment, args=(state,)) for _ in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            lost += 4 * 500 - state["x"]
    finally:
        sys.setswitchinterval(old)
    with pytest.raises(RaceDetected):
        stress(increment, threads=4, rounds=ROUNDS_TO_SHOW_A_RACE, setup=fresh, check=complete)
    assert lost < 4 * 500 * 5 // 10  # a handful at most, where stress loses many in one round


def test_a_race_names_its_round_and_seed_and_replays() -> None:
    with pytest.raises(RaceDetected) as caught:
        stress(increment, threads=4, rounds=20, setup=fresh, check=complete, seed=1234)
    race = caught.value
    assert isinstance(race, AssertionError)
    assert race.seed == 1234
    assert 0 <= race.round < 20
    assert f"round {race.round}" in str(race)
    assert "seed=1234" in str(race)
    assert "the check returned False" in str(race)
    with pytest.raises(RaceDetected) as again:  # the same seed, the same race (likely; here, every time)
        stress(increment, threads=4, rounds=20, setup=fresh, check=complete, seed=1234)
    assert again.value.seed == 1234


def test_a_check_that_asserts_gives_its_message() -> None:
    def check(state: dict[str, int]) -> None:
        assert state["x"] == 2000, f"lost {2000 - state['x']} updates"

    with pytest.raises(RaceDetected, match=r"lost \d+ updates"):
        stress(increment, threads=4, rounds=ROUNDS_TO_SHOW_A_RACE, setup=fresh, check=check)


def test_no_race_returns_a_report() -> None:
    report = stress(lambda state: state.append(1), threads=3, rounds=7, setup=list, check=lambda s: len(s) == 3)
    assert isinstance(report, StressReport)
    assert (report.rounds, report.threads) == (7, 3)
    assert report.seconds > 0
    assert report.method in ("sys.monitoring", "sys.settrace")
    assert "no race seen" in str(report)


def test_without_setup_fn_and_check_take_no_argument() -> None:
    calls = parcelout.sync.Counter()
    report = stress(calls.add, threads=5, rounds=4, check=lambda: calls.value % 5 == 0)
    assert report.rounds == 4
    assert calls.value == 20


def test_an_exception_in_fn_is_raised_with_its_round() -> None:
    def boom(state: list[int]) -> None:
        state.append(1)
        if threading.current_thread().name.endswith("-2"):  # the third thread of each round
            raise KeyError("third")

    with pytest.raises(KeyError, match="third") as caught:
        stress(boom, threads=4, rounds=5, setup=list, seed=9)
    assert "raised by fn in round 0 (seed 9)" in "".join(caught.value.__notes__)


def test_the_interpreter_is_put_back_as_it_was() -> None:
    old_interval = sys.getswitchinterval()

    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    sys.settrace(tracer)
    try:
        with pytest.raises(RaceDetected):
            stress(increment, threads=4, rounds=ROUNDS_TO_SHOW_A_RACE, setup=fresh, check=complete)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert sys.getswitchinterval() == old_interval
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        assert all(monitoring.get_tool(tool) != "parcelout.stress" for tool in range(6))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="threads"):
        stress(increment, threads=0)
    with pytest.raises(ValueError, match="rounds"):
        stress(increment, rounds=-1)
    with pytest.raises(ValueError, match="switch_probability"):
        stress(increment, switch_probability=0)
    with pytest.raises(TypeError, match="callable"):
        stress(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the FAQ's table


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.atomic], ids=lambda s: s.operation)
def test_an_atomic_operation_keeps_its_invariant(scenario: Scenario) -> None:
    report = stress(scenario.fn, threads=THREADS, rounds=ROUNDS_FOR_ATOMIC, setup=scenario.setup, check=scenario.check)
    assert report.switches > 0  # switches were forced, and still nothing broke


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if not s.atomic], ids=lambda s: s.operation)
def test_a_non_atomic_operation_loses_updates_in_every_run(scenario: Scenario) -> None:
    for run in range(RUNS):
        seed = random.randrange(2**32)
        with pytest.raises(RaceDetected):
            stress(
                scenario.fn,
                threads=THREADS,
                rounds=ROUNDS_TO_SHOW_A_RACE,
                setup=scenario.setup,
                check=scenario.check,
                seed=seed,
            )
            pytest.fail(f"run {run}: no race in {ROUNDS_TO_SHOW_A_RACE} rounds (seed {seed})")


# ---------------------------------------------------------------- parcelout.sync under stress


def test_counter_loses_no_update() -> None:
    def bump(counter: sync.Counter) -> None:
        for _ in range(300):
            counter.add()

    stress(bump, threads=THREADS, rounds=10, setup=sync.Counter, check=lambda c: c.value == THREADS * 300)
    assert sync.Counter(5).add(2) == 7


def test_guarded_updates_are_whole_and_snapshots_stay_put() -> None:
    def work(guarded: sync.Guarded[dict[str, int]]) -> None:
        for _ in range(100):
            guarded.update(lambda d: {**d, "x": d["x"] + 1})
            snapshot = guarded.get()
            snapshot["x"] = -1  # changes the copy only

    def check(guarded: sync.Guarded[dict[str, int]]) -> bool:
        return guarded.get() == {"x": THREADS * 100}

    stress(work, threads=THREADS, rounds=5, setup=lambda: sync.Guarded({"x": 0}), check=check)
    guarded = sync.Guarded([1])
    assert guarded.update(lambda v: [*v, 2]) == [1, 2]
    with pytest.raises(ZeroDivisionError):
        guarded.update(lambda v: [1 // 0])
    assert guarded.get() == [1, 2]  # a failed update changes nothing


def test_once_runs_once_however_many_threads_ask() -> None:
    def setup() -> SimpleNamespace:
        state = SimpleNamespace(calls=0)

        def build() -> object:
            state.calls += 1
            return object()

        state.get = sync.once(build)
        state.seen = []
        return state

    def work(state: SimpleNamespace) -> None:
        for _ in range(50):
            state.seen.append(state.get())

    def check(state: SimpleNamespace) -> bool:
        return state.calls == 1 and len({id(v) for v in state.seen}) == 1

    stress(work, threads=THREADS, rounds=10, setup=setup, check=check)


def test_once_tries_again_after_a_failure() -> None:
    attempts: list[int] = []

    @sync.once
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("first")
        return "ready"

    with pytest.raises(ConnectionError):
        flaky()
    assert flaky() == flaky() == "ready"
    assert len(attempts) == 2
    assert flaky.__name__ == "flaky"


def test_the_unguarded_versions_do_race() -> None:
    """The helpers are needed: the same work on a bare int and a bare
    read-modify-write loses updates under stress."""

    def bump(state: SimpleNamespace) -> None:
        for _ in range(300):
            state.value += 1

    with pytest.raises(RaceDetected):
        stress(
            bump,
            threads=THREADS,
            rounds=ROUNDS_TO_SHOW_A_RACE,
            setup=lambda: SimpleNamespace(value=0),
            check=lambda s: s.value == THREADS * 300,
        )
