"""``backend="auto"``'s decision, driven by a table of synthetic measurements:
no clock, no thread, no function run. Each row is one rule of the README's
"How ``backend="auto"`` chooses"."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout._auto_decide import (
    MAX_MEASURING_BATCH,
    MAX_PROBE_SECONDS,
    MAX_THREADS,
    MIN_PROBE_SECONDS,
    PROBE_SECONDS,
    SERIAL_BUDGET,
    TELLING_BATCH,
    TINY_SAMPLES,
    Continue,
    Decision,
    InterpreterProbe,
    NeedInterpreterProbe,
    NeedPickleCost,
    PickleCost,
    Plan,
    Probe,
    ProbeReading,
    ProbeSums,
    Samples,
    batch_size,
    decide,
    probe_done,
    probe_reading,
)
from parcelout._core._batcher import TARGET_SECONDS

MS = 1e-3
US = 1e-6
CHEAP = PickleCost(1 * US)  # an int and its result
COMPUTING = [(1, 1.5 * MS), (1, 1.5 * MS), (2, 3 * MS)]  # 1.5 ms per item on a CPU: the budget is up


def measured(
    *batches: tuple[int, float] | tuple[int, float, float],
    looked: tuple[float, float, int] | None = None,
    probing: bool = False,
    probed: int = 0,
    probe: tuple[float | None, float | None] | None = None,
    ended: bool = False,
) -> Samples:
    """Samples as the measuring threads would report them: finished batches
    of ``(count, wall[, cpu])`` (cpu defaults to wall: computing), a look at
    a running batch, the probe."""
    samples = Samples()
    for count, wall, *cpu in batches:
        samples = samples.finished(count, wall, cpu[0] if cpu else wall)
    if looked is not None:
        samples = samples.looked(*looked)
    if probing or probed or probe is not None:
        samples = samples.probe_started().finished(probed, probed * 1.5 * MS, probed * 1.5 * MS)
    if probe is not None:
        samples = samples.probe_ended(ProbeReading(*probe))
    return samples.input_ended() if ended else samples


@dataclass(frozen=True)
class Row:
    samples: Samples
    expect: str  # "continue", "probe", "pickle?", "interpreter?" or "<backend> <workers>"
    reason: str = ""  # a part of the plan's reason
    machine: dict[str, Any] = field(default_factory=dict)  # overrides of MACHINE


MACHINE: dict[str, Any] = {"total": 1000, "workers": None, "cpus": 4, "free_threaded": False, "pickle_cost": CHEAP}


def run_row(row: Row) -> Decision:
    return decide(row.samples, **{**MACHINE, **row.machine})


def said(decision: Decision) -> str:
    if isinstance(decision, Continue):
        return "continue"
    if isinstance(decision, Probe):
        return "probe"
    if isinstance(decision, NeedPickleCost):
        return "pickle?"
    if isinstance(decision, NeedInterpreterProbe):
        return "interpreter?"
    return f"{decision.backend} {decision.workers}"


PAUSED_TINY = [(1, 30 * US), (1, 5 * US), (2, 6 * US), (4, 8 * US), (8, 10 * US), (16, 15 * US), (32, 25 * US)]
TABLE = {
    # ------------------------------------------------ measuring on
    "nothing measured yet": Row(measured(), "continue"),
    "computing, budget not up": Row(measured((1, 1 * MS), (1, 1 * MS)), "continue"),
    "tiny, too few items to say": Row(measured((100, 500 * US)), "continue"),
    "waiting, too briefly to say": Row(measured((1, 0.5 * MS, 10 * US)), "continue"),
    "running, computing, budget not up": Row(measured(looked=(2 * MS, 2 * MS, 0)), "continue"),
    "running, a fifth to half on a CPU: not yet waiting": Row(measured(looked=(2 * MS, 0.8 * MS, 0)), "continue"),
    "probing: the probe decides": Row(measured(*COMPUTING, probing=True, probed=8), "continue"),
    # ------------------------------------------------ tiny
    "tiny on average": Row(measured((TINY_SAMPLES, TINY_SAMPLES * 5 * US)), "serial 1", "items take 5.0 us"),
    "tiny by the fastest telling batch, after a pause": Row(
        measured(*PAUSED_TINY, (64, 20 * MS)), "serial 1", "items take 0.8 us"
    ),
    "a fast batch under TELLING_BATCH items tells nothing": Row(
        measured((TELLING_BATCH - 1, 31 * US), (1, 10 * MS)), "probe"
    ),
    # ------------------------------------------------ waiting
    "waiting, finished batch": Row(measured((1, 2 * MS, 0.8 * MS)), "thread 10", "items wait (40% of"),
    "waiting, hardly on a CPU: at most MAX_THREADS": Row(
        measured((1, 5 * MS, 0.01 * MS)), f"thread {MAX_THREADS}", "items wait"
    ),
    "waiting: CPUs / the CPU share threads": Row(measured((1, 2 * MS, 0.9 * MS)), "thread 18", "", {"cpus": 8}),
    "waiting, running batch: as many threads as allowed": Row(
        measured(looked=(2 * MS, 0.2 * MS, 0)), f"thread {MAX_THREADS}", "items wait (10% of"
    ),
    # ------------------------------------------------ computing, before the probe
    "free-threaded": Row(measured(*COMPUTING), "thread 4", "no GIL", {"free_threaded": True}),
    "one CPU": Row(measured(*COMPUTING), "serial 1", "only one CPU", {"cpus": 1}),
    "running, computing, budget up: probe": Row(measured(looked=(SERIAL_BUDGET, SERIAL_BUDGET, 0)), "probe"),
    "computing: probe": Row(measured(*COMPUTING), "probe"),
    "too few items left to probe: process in question": Row(
        measured(*COMPUTING), "pickle?", machine={"total": 7, "pickle_cost": None}
    ),
    "too few items left to probe, and too short": Row(measured(*COMPUTING), "serial 1", "too short", {"total": 7}),
    # ------------------------------------------------ after the probe
    "speedup 1.5: releases the GIL": Row(measured(*COMPUTING, probe=(1.5, 0.9)), "thread 4", "1.50 at a time"),
    "speedup 1.15, few GIL waits: releases the GIL": Row(
        measured(*COMPUTING, probe=(1.15, 0.4)), "thread 4", "releases the GIL"
    ),
    "speedup 1.15, many GIL waits: holds it": Row(
        measured(*COMPUTING, probe=(1.15, 0.5)), "process 4", "holds the GIL"
    ),
    "speedup 1.15, GIL waits unknown: holds it": Row(measured(*COMPUTING, probe=(1.15, None)), "process 4"),
    "speedup 1.14, no GIL waits: holds it": Row(measured(*COMPUTING, probe=(1.14, 0.0)), "process 4"),
    "probe too brief to tell: holds it": Row(measured(*COMPUTING, probe=(None, None)), "process 4"),
    "holds the GIL, pickling not timed yet": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "pickle?", "", {"pickle_cost": None}
    ),
    "holds the GIL, GIL-free needs no pickling": Row(
        measured(*COMPUTING, probe=(1.9, 0.1)), "thread 4", "", {"pickle_cost": None}
    ),
    "unpicklable: thread": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "thread 4", "cannot be pickled", {"pickle_cost": PickleCost(None, True)}
    ),
    "pickling over half the item time: serial": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "serial 1", "pickling its items", {"pickle_cost": PickleCost(0.8 * MS)}
    ),
    "pickling under half the item time: process": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "process 4", "", {"pickle_cost": PickleCost(0.7 * MS)}
    ),
    "no item to time pickling on: process": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "process 4", "", {"pickle_cost": PickleCost(None)}
    ),
    "run too short for processes: serial": Row(
        measured(*COMPUTING, probe=(1.0, 1.0), probed=10), "serial 1", "too short", {"total": 14 + 99}
    ),
    "run long enough for processes": Row(
        measured(*COMPUTING, probe=(1.0, 1.0), probed=10), "process 4", "", {"total": 14 + 101}
    ),
    "unknown length: process": Row(measured(*COMPUTING, probe=(1.0, 1.0)), "process 4", "", {"total": None}),
    # ------------------------------------------------ sub-interpreters, where they are available
    "processes start fast (fork server): no interpreter probe": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "process 4", "", {"interpreters": True, "process_start": 0.02}
    ),
    "processes start slowly (spawn): probe an interpreter": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "interpreter?", "", {"interpreters": True, "process_start": 0.07}
    ),
    "an interpreter starts faster than processes: interpreters": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)),
        "interpreter 4",
        "a sub-interpreter started and loaded it in",
        {"interpreters": True, "process_start": 0.07, "interpreter": InterpreterProbe(0.04)},
    ),
    "an interpreter starts slower than processes: processes": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)),
        "process 4",
        "only processes",
        {"interpreters": True, "process_start": 0.07, "interpreter": InterpreterProbe(0.09)},
    ),
    "it cannot run in an interpreter (NumPy): processes": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)),
        "process 4",
        "cannot run in a sub-interpreter (ImportError: numpy",
        {"interpreters": True, "process_start": 0.07, "interpreter": InterpreterProbe(None, "ImportError: numpy")},
    ),
    "no interpreters here: processes, whatever they cost to start": Row(
        measured(*COMPUTING, probe=(1.0, 1.0)), "process 4", "", {"interpreters": False, "process_start": 0.07}
    ),
    # ------------------------------------------------ workers
    "workers= overrides": Row(measured(*COMPUTING, probe=(1.0, 1.0)), "process 3", "", {"workers": 3}),
    "workers= overrides for waiting work": Row(measured((1, 5 * MS, 0)), "thread 3", "", {"workers": 3}),
    "workers= does not make serial parallel": Row(measured((300, 300 * US)), "serial 1", "", {"workers": 3}),
    "no more workers than items left": Row(measured((1, 5 * MS, 0)), "thread 2", "", {"total": 3}),
    "at least one worker": Row(measured((1, 5 * MS, 0)), "thread 1", "", {"total": 1}),
    # ------------------------------------------------ the input ended, a timeout
    "input ended with nothing measured": Row(measured(ended=True), "serial 1", "nothing to measure"),
    "input ended early, computing": Row(measured((1, 1 * MS), ended=True), "serial 1", "too short", {"total": 1}),
    "input ended early, unknown length": Row(measured((1, 1 * MS), ended=True), "process 4", "", {"total": None}),
    "input ended during the probe": Row(
        measured(*COMPUTING, probing=True, probed=4, ended=True), "serial 1", "too short", {"total": 8}
    ),
    "timeout: process without measuring": Row(measured(), "process 4", "timeout", {"timeout": True}),
    "timeout, few items": Row(measured(), "process 2", "timeout", {"timeout": True, "total": 2}),
}


@pytest.mark.parametrize("row", list(TABLE.values()), ids=list(TABLE))
def test_decide(row: Row) -> None:
    decision = run_row(row)
    assert said(decision) == row.expect, decision
    if isinstance(decision, Plan):
        assert row.reason in decision.reason


def test_a_plan_carries_what_was_measured_and_a_chunk_size() -> None:
    decision = decide(measured(*COMPUTING, probe=(1.02, 0.9), probed=10), **MACHINE)
    assert isinstance(decision, Plan)
    m = decision.measurements
    assert (m.items, m.parallel_speedup, m.gil_waits, m.pickle_seconds_per_item) == (14, 1.02, 0.9, 1 * US)
    assert m.seconds_per_item == pytest.approx(1.5 * MS)
    assert m.cpu_fraction == 1.0
    assert not m.free_threaded
    assert decision.chunksize == int(TARGET_SECONDS / (1.5 * MS))  # about TARGET_SECONDS of work
    assert "on two threads it ran 1.02 at a time" in str(decision)


@pytest.mark.parametrize(
    ("samples", "chunksize"),
    [
        (measured((300, 300 * US)), None),  # serial
        (measured(looked=(2 * MS, 0.1 * MS, 0)), 1),  # only a running item known: it takes longer still
        (measured((1, 100 * MS, 1 * MS)), 1),  # an item longer than a batch's target
        (measured((1, 2 * MS, 0.2 * MS)), 10),
    ],
)
def test_chunk_size(samples: Samples, chunksize: int | None) -> None:
    decision = decide(samples, **MACHINE)
    assert isinstance(decision, Plan)
    assert decision.chunksize == chunksize


def test_a_running_look_counts_the_running_batch_as_one_item() -> None:
    decision = decide(measured((2, 1 * MS, 0.1 * MS), looked=(3 * MS, 0.1 * MS, 0)), **MACHINE)
    assert isinstance(decision, Plan)
    assert decision.measurements.seconds_per_item == pytest.approx(4 * MS / 3)
    assert decision.measurements.cpu_fraction == pytest.approx(0.2 / 4)


def test_a_finished_batch_replaces_the_look_at_it() -> None:
    samples = measured(looked=(2 * MS, 2 * MS, 0)).finished(1, 6 * MS, 6 * MS)
    assert samples.running is None
    assert (samples.count, samples.wall) == (1, 6 * MS)


def test_the_probe_counts_its_items_apart() -> None:
    samples = measured(*COMPUTING, probing=True, probed=6)
    assert (samples.count, samples.probed, samples.measured) == (4, 6, 10)
    assert samples.finished(3, 1.0, 1.0).probed == 9
    assert samples.finished(3, 1.0, 1.0).wall == samples.wall


@pytest.mark.parametrize(
    ("samples", "size"),
    [
        (measured(), 1),
        (measured((1, 1 * MS), (1, 1 * MS), (2, 2 * MS)), 4),  # doubling
        (measured((800, 800 * US), (800, 800 * US)), MAX_MEASURING_BATCH),
        (measured(*COMPUTING, probing=True), math.ceil(PROBE_SECONDS / (1.5 * MS))),  # a probe's worth each
        (measured((4, 4 * MS), (4, 4 * MS), probing=True), math.ceil(PROBE_SECONDS / (8 * MS / 8))),
        (measured((1, 1.0), probing=True), 2),  # at least two, one for each thread
        (measured((1000, 1 * MS), probing=True), MAX_MEASURING_BATCH),
    ],
)
def test_measuring_batch_size(samples: Samples, size: int) -> None:
    assert batch_size(samples) == size


@pytest.mark.parametrize(
    ("sums", "reading", "done"),
    [
        (ProbeSums(), (None, None), False),
        (ProbeSums(MIN_PROBE_SECONDS / 2, 0.001, 0, 2), (None, None), False),  # cut short: tells nothing
        (ProbeSums(PROBE_SECONDS, 0.04, 2, 40), (2.0, 0.05), True),  # GIL-free
        (ProbeSums(PROBE_SECONDS, 0.02, 40, 40), (1.0, 1.0), True),  # taking turns at the GIL
        (ProbeSums(PROBE_SECONDS, 0.02, None, 40), (1.0, None), True),  # sleeps unknown
        (ProbeSums(PROBE_SECONDS, 0.02, 4, 40), (1.0, 0.1), False),  # one at a time, hardly sleeping: unclear
        (ProbeSums(MAX_PROBE_SECONDS, 0.06, 12, 120), (1.0, 0.1), True),  # unclear, but long enough
        (ProbeSums(PROBE_SECONDS / 2, 0.02, 0, 20), (2.0, 0.0), False),  # not yet PROBE_SECONDS
    ],
)
def test_the_probe(sums: ProbeSums, reading: tuple[float | None, float | None], done: bool) -> None:
    got = probe_reading(sums)
    assert (got.speedup, got.gil_waits) == reading
    assert probe_done(sums) is done


def test_probe_sums_add_up_and_lose_unknown_sleeps() -> None:
    sums = ProbeSums().add(0.01, 0.02, 3, 20).add(0.01, 0.015, 1, 20)
    assert (sums.wall, sums.cpu) == pytest.approx((0.02, 0.035))
    assert (sums.slept, sums.switches) == (4, 40)
    assert sums.add(0.01, 0.01, None, 20).slept is None
    assert sums.add(0.01, 0.01, None, 20).add(0.01, 0.01, 5, 20).slept is None


def test_the_decision_reads_no_clock_and_asks_the_machine_nothing() -> None:
    path = Path(parcelout.__file__).parent / "_auto_decide.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.add(node.module)
    assert modules <= {"__future__", "math", "dataclasses", "typing", "parcelout._core._batcher"}, modules
