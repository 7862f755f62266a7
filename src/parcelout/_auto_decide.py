"""What ``backend="auto"`` chooses, from what was measured: pure decisions.

This module owns every rule of the README's "How ``backend="auto"``
chooses" and every tuning constant, each named once with its reason. It
never reads a clock, starts a thread, asks the machine anything (CPUs, the
interpreter's build) or pickles anything: what it needs is passed in, so a
table of synthetic measurements tests it (``tests/test_auto_decide.py``).

::

    measuring threads --(clocks: the sampler in _auto)--> Samples
    Samples + the machine --decide()--> Continue | Probe | NeedPickleCost | Plan
    NeedPickleCost: the caller times pickling once, and decides again

``Samples`` is a frozen record; its methods return the record after one
more reading (a finished batch, a look at a running one, the probe's end,
the input's end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from parcelout._core._batcher import TARGET_SECONDS

# ---------------------------------------------------------------- tuning constants
# Below this per-item time, workers cost more than they save.
TINY_SECONDS = 10e-6
# Time the first items take on one measuring thread before the probe.
SERIAL_BUDGET = 0.005
MAX_SAMPLES = 10_000
# This many items under TINY_SECONDS each are enough to call the work tiny.
TINY_SAMPLES = 200
# A batch of at least this many items says how fast an item can run: its
# fixed cost is spread thin. A pause (the machine lent to another process)
# only ever makes a batch slower, so the fastest such batch is the one to trust.
TELLING_BATCH = 32
# Pickling is timed this many times; the fastest is the cost (see TELLING_BATCH).
PICKLE_TRIALS = 3
# An item that took this long and mostly waited says enough on its own.
TELLING_SECONDS = 0.001
# A batch still running is looked at after this long: if it has spent under
# this fraction on a CPU so far, the work waits.
RUNNING_LOOK_SECONDS = 0.002
RUNNING_WAITING_CPU_FRACTION = 0.2
# Below this fraction of CPU time per wall time, the work waits.
WAITING_CPU_FRACTION = 0.5
# Two threads that ran at least this many at a time (by their CPU clocks): the
# function releases the GIL. Threads taking turns at the GIL run 1.00 at a time;
# a GIL-free function 1.9 or more on an idle machine, down to 1.0 on a shared
# one whose host lends it fewer CPUs for a moment.
GIL_FREE_SPEEDUP = 1.5
# Threads taking turns at the GIL sleep about once per switch interval; GIL-free
# ones hardly sleep. Two threads that ran at least MAYBE_GIL_FREE_SPEEDUP at a
# time and slept less than this per switch interval release the GIL.
GIL_WAITS_PER_INTERVAL = 0.5
MAYBE_GIL_FREE_SPEEDUP = 1.15
# Threads that ran about one at a time yet hardly slept (a busy machine, for a
# GIL-holding function or a GIL-free one) are probed for up to this long.
MAX_PROBE_SECONDS = 0.06
# Fewer items left than this are not worth a probe (nor workers).
MIN_PROBE_ITEMS = 4
# The probe lasts this long while both measuring threads run.
PROBE_SECONDS = 0.02
# A probe cut shorter than this (the input ran out) tells nothing.
MIN_PROBE_SECONDS = 0.002
# A GIL-bound run shorter than this (estimated, serial) stays serial: starting
# process workers and shipping the function costs about this much.
PROCESS_WORTH_SECONDS = 0.15
# Pickling an item and its result that costs more than this share of running
# it: a process worker would spend its time pickling.
PICKLE_SHARE = 0.5
# Waiting work gets at most this many threads.
MAX_THREADS = 32
# A measuring batch holds at most this many items.
MAX_MEASURING_BATCH = 1000
# While two measuring threads may take turns at the GIL (the probe), and while a
# measured item that holds it runs on after the choice of processes, the other
# threads here take the GIL back this often: at the interpreter's default,
# 5 ms per hand-over, the calling thread would judge late and the pool's own
# threads would starve its workers.
BUSY_SWITCH_INTERVAL = 0.0005
# Seconds to start a pool's process workers and run a first item, by start
# method (measured on Linux, 2 workers: about 12 ms from the fork server, 72 ms
# with spawn, which starts a fresh interpreter and imports parcelout in each).
PROCESS_START_SECONDS = {"fork": 0.01, "forkserver": 0.02, "spawn": 0.07}
# Starting a sub-interpreter and running a first item takes at least this long
# (create it, import what a worker needs): where processes start faster, the
# probe is not worth its cost, and processes it is.
INTERPRETER_START_FLOOR = 0.03


# ---------------------------------------------------------------- the outcome
@dataclass(frozen=True)
class Measurements:
    """What the first items showed."""

    items: int
    seconds_per_item: float
    cpu_fraction: float
    parallel_speedup: float | None  # how many of two threads ran it at a time
    gil_waits: float | None  # how often those threads slept, per switch interval
    pickle_seconds_per_item: float | None
    free_threaded: bool
    interpreter_start_seconds: float | None = None  # a sub-interpreter started and loaded the function in this


@dataclass(frozen=True)
class Plan:
    """The choice ``backend="auto"`` made, and why.

    ``chunksize`` is the batch size to start from (it adapts as the run goes);
    None for ``serial``.
    """

    backend: str
    workers: int
    chunksize: int | None
    reason: str
    measurements: Measurements

    def __str__(self) -> str:
        m = self.measurements
        lines = [
            f"backend={self.backend} workers={self.workers} chunksize={self.chunksize or '-'}",
            f"  because {self.reason}",
        ]
        if m.items or m.seconds_per_item:  # (a batch still running may have decided: 0 items finished)
            lines.append(
                f"  measured {m.items} item(s): {seconds(m.seconds_per_item)} per item, "
                f"{m.cpu_fraction:.0%} of the time on the CPU"
            )
        else:
            lines.append("  nothing was measured")
        if m.parallel_speedup is not None:
            lines.append(f"  on two threads it ran {m.parallel_speedup:.2f} at a time")
        if m.gil_waits is not None:
            lines.append(f"  those threads slept {m.gil_waits:.2f} times per GIL switch interval")
        if m.pickle_seconds_per_item is not None:
            lines.append(f"  pickling an item and its result takes {seconds(m.pickle_seconds_per_item)}")
        if m.interpreter_start_seconds is not None:
            lines.append(f"  a sub-interpreter started and loaded it in {seconds(m.interpreter_start_seconds)}")
        if m.free_threaded:
            lines.append("  the interpreter runs without a GIL")
        return "\n".join(lines)


@dataclass(frozen=True)
class Continue:
    """Not enough yet: measure the next batch on one thread."""


@dataclass(frozen=True)
class Probe:
    """Computing work: run the next batches on two threads at once."""


@dataclass(frozen=True)
class NeedPickleCost:
    """Processes are in question: time pickling (``PickleCost``) and decide again."""


@dataclass(frozen=True)
class NeedInterpreterProbe:
    """Sub-interpreters are in question (they may start faster than processes):
    run the first item in one (``InterpreterProbe``) and decide again."""


@dataclass(frozen=True)
class InterpreterProbe:
    """The first item run in a new sub-interpreter: ``seconds`` to start it
    and run the item, its result pickled back; or ``error``, why it could not
    (a module that cannot load there, as NumPy)."""

    seconds: float | None
    error: str | None = None


Decision = Continue | Probe | NeedPickleCost | NeedInterpreterProbe | Plan
CONTINUE, PROBE, NEED_PICKLE_COST = Continue(), Probe(), NeedPickleCost()
NEED_INTERPRETER_PROBE = NeedInterpreterProbe()


def seconds(s: float) -> str:
    """A duration, readable."""
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


# ---------------------------------------------------------------- what was measured
@dataclass(frozen=True)
class Look:
    """The first measuring thread's batch, still running, as the look that
    decided found it: ``wall`` seconds so far, ``cpu`` of them ready to run,
    ``items`` finished (at least 1: the running one counts as one)."""

    wall: float
    cpu: float
    items: int


@dataclass(frozen=True)
class ProbeReading:
    """How many of two threads ran at a time (None: too briefly to tell), and
    how often they slept per switch interval (None: unknown)."""

    speedup: float | None
    gil_waits: float | None


@dataclass(frozen=True)
class PickleCost:
    """What a process worker adds per item: ``seconds`` to pickle and unpickle
    an item and its result (None: no item finished to time), or
    ``unpicklable`` (the function, an item or a result cannot be pickled)."""

    seconds: float | None
    unpicklable: bool = False


@dataclass(frozen=True, slots=True)
class Samples:
    """Every reading so far, added up.

    ``count``, ``wall`` and ``cpu``: the batches finished on the first
    measuring thread before the probe (``cpu``: seconds on a CPU or waiting
    for one); ``last_*``: the latest of them; ``fastest``: seconds per item
    of the fastest of them with ``TELLING_BATCH`` items or more; ``running``:
    the look that decided; ``probed``: items finished from the probe on.
    """

    count: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    last_wall: float = 0.0
    last_cpu: float = 0.0
    fastest: float = math.inf
    running: Look | None = None
    probing: bool = False
    probed: int = 0
    probe: ProbeReading | None = None
    ended: bool = False

    @property
    def measured(self) -> int:
        return self.count + self.probed

    def finished(self, count: int, wall: float, cpu: float) -> Samples:
        """A measuring thread finished ``count`` items in ``wall`` seconds."""
        if self.probing or self.probe is not None:
            return replace(self, probed=self.probed + count)
        fastest = min(self.fastest, wall / count) if count >= TELLING_BATCH else self.fastest
        # Built directly, not with dataclasses.replace: this runs after every measured batch.
        return Samples(
            self.count + count,
            self.wall + wall,
            self.cpu + cpu,
            wall,
            cpu,
            fastest,
            None,
            self.probing,
            self.probed,
            self.probe,
            self.ended,
        )

    def looked(self, wall: float, cpu: float, items: int) -> Samples:
        """The first thread's batch has run ``wall`` seconds, ``cpu`` of them
        ready to run, and finished ``items`` of its items."""
        return replace(self, running=Look(wall, cpu, max(1, items)))

    def probe_started(self) -> Samples:
        return replace(self, probing=True)

    def probe_ended(self, reading: ProbeReading) -> Samples:
        return replace(self, probing=False, probe=reading)

    def input_ended(self) -> Samples:
        return replace(self, ended=True)


class _Machine(NamedTuple):
    total: int | None
    workers: int | None
    cpus: int
    free_threaded: bool
    pickle_cost: PickleCost | None
    process_start: float
    interpreters: bool
    interpreter: InterpreterProbe | None


# ---------------------------------------------------------------- deciding
def decide(
    samples: Samples,
    *,
    total: int | None,
    workers: int | None,
    cpus: int,
    free_threaded: bool,
    pickle_cost: PickleCost | None = None,
    timeout: bool = False,
    process_start: float = PROCESS_START_SECONDS["forkserver"],
    interpreters: bool = False,
    interpreter: InterpreterProbe | None = None,
) -> Decision:
    """What to do after ``samples``: measure on, probe, time pickling, or a plan.

    ``total``: the number of items, None if unknown; ``workers``: the
    caller's override; ``cpus``: usable CPUs; ``free_threaded``: no GIL;
    ``pickle_cost``: None until timed (``NeedPickleCost`` asks for it);
    ``timeout``: a per-item timeout is set, and nothing may run here;
    ``process_start``: seconds to start the process workers (see
    ``PROCESS_START_SECONDS``); ``interpreters``: sub-interpreters are
    available; ``interpreter``: None until probed (``NeedInterpreterProbe``
    asks for it).
    """
    machine = _Machine(total, workers, cpus, free_threaded, pickle_cost, process_start, interpreters, interpreter)
    if timeout:
        return _plan(samples, machine, "process", cpus, "a timeout needs workers that can be stopped")
    if samples.ended:
        if not samples.count and samples.running is None:
            return _plan(samples, machine, "serial", 1, "there was nothing to measure")
        if samples.probe is None:
            return _after_serial(samples, machine, final=True)
        return _decide_compute(samples, machine)
    if samples.probe is not None:
        return _decide_compute(samples, machine)
    if samples.probing or not _enough(samples):
        return CONTINUE
    return _after_serial(samples, machine, final=False)


def batch_size(samples: Samples) -> int:
    """How many items a batch should hold while measuring: doubling on one
    thread; about ``PROBE_SECONDS`` of them for each of two when probing."""
    if samples.probing:
        return min(MAX_MEASURING_BATCH, max(2, math.ceil(PROBE_SECONDS / max(per_item(samples), 1e-9))))
    return min(MAX_MEASURING_BATCH, max(1, samples.count))


def per_item(samples: Samples) -> float:
    """Seconds per item on one thread; a batch still running counts as one item."""
    running = samples.running or Look(0.0, 0.0, 0)
    return (samples.wall + running.wall) / max(1, samples.count + running.items)


def _cpu_fraction(samples: Samples) -> float:
    running = samples.running or Look(0.0, 0.0, 0)
    wall = samples.wall + running.wall
    return min(1.0, (samples.cpu + running.cpu) / wall) if wall > 0 else 1.0


def _tiny(samples: Samples) -> bool:
    """Whether items take under TINY_SECONDS: all of them on average, or
    those of the fastest telling batch (the others may have been paused)."""
    return per_item(samples) < TINY_SECONDS or samples.fastest < TINY_SECONDS


def _enough(samples: Samples) -> bool:
    """Whether one thread has measured enough: the time is up, a batch
    (finished, or running as looked at) waits, or the work is tiny."""
    look = samples.running
    if look is not None:
        if look.wall >= TELLING_SECONDS and look.cpu < RUNNING_WAITING_CPU_FRACTION * look.wall:
            return True
        if samples.wall + look.wall >= SERIAL_BUDGET:
            return True
    waiting = samples.last_wall >= TELLING_SECONDS and samples.last_cpu < WAITING_CPU_FRACTION * samples.last_wall
    tiny = samples.count >= TINY_SAMPLES and _tiny(samples)
    return samples.wall >= SERIAL_BUDGET or samples.count >= MAX_SAMPLES or waiting or tiny


def _after_serial(samples: Samples, machine: _Machine, *, final: bool) -> Decision:
    per, cpu, cpus = per_item(samples), _cpu_fraction(samples), machine.cpus
    if _tiny(samples):
        fastest = min(per, samples.fastest)
        return _plan(
            samples, machine, "serial", 1, f"items take {seconds(fastest)}: a worker would cost more than it saves"
        )
    if cpu < WAITING_CPU_FRACTION:
        # An item still running will have spent an even smaller share on a
        # CPU by its end: then as many threads as allowed.
        wanted = MAX_THREADS if samples.running is not None else math.ceil(cpus / max(cpu, 1 / MAX_THREADS))
        threads = min(MAX_THREADS, max(cpus, wanted))
        return _plan(samples, machine, "thread", threads, f"items wait ({cpu:.0%} of their time on a CPU)")
    if machine.free_threaded:
        return _plan(samples, machine, "thread", cpus, "the interpreter has no GIL, so threads compute in parallel")
    if cpus < 2:
        return _plan(samples, machine, "serial", 1, "only one CPU is usable and the work computes")
    if final or _remaining_items(samples, machine) < MIN_PROBE_ITEMS:
        return _decide_compute(samples, machine)  # too few items left to tell
    return PROBE  # the next items run on two threads at once


def _decide_compute(samples: Samples, machine: _Machine) -> Decision:
    cpus = machine.cpus
    # Taking a GIL-bound function for a GIL-free one would lose all
    # parallelism; the reverse only some speed.
    probe = samples.probe or ProbeReading(None, None)
    speedup = probe.speedup or 0.0
    gil_free = speedup >= GIL_FREE_SPEEDUP or (
        speedup >= MAYBE_GIL_FREE_SPEEDUP and probe.gil_waits is not None and probe.gil_waits < GIL_WAITS_PER_INTERVAL
    )
    if gil_free:
        return _plan(
            samples, machine, "thread", cpus, f"two threads ran it {speedup:.2f} at a time: it releases the GIL"
        )
    cost = machine.pickle_cost
    if cost is None:
        return NEED_PICKLE_COST
    if cost.unpicklable:
        return _plan(samples, machine, "thread", cpus, "its items or results cannot be pickled for a process")
    if cost.seconds is not None and cost.seconds > PICKLE_SHARE * per_item(samples):
        reason = "it holds the GIL, and pickling its items costs more than half of running them"
        return _plan(samples, machine, "serial", 1, reason)
    if _remaining_seconds(samples, machine) < PROCESS_WORTH_SECONDS:
        reason = "it holds the GIL, and the run is too short to pay for starting processes"
        return _plan(samples, machine, "serial", 1, reason)
    if machine.interpreters and machine.process_start > INTERPRETER_START_FLOOR:
        tried = machine.interpreter
        if tried is None:
            return NEED_INTERPRETER_PROBE
        if tried.error is not None:
            reason = f"it holds the GIL and cannot run in a sub-interpreter ({tried.error}): processes run it"
            return _plan(samples, machine, "process", cpus, reason)
        if tried.seconds is not None and tried.seconds < machine.process_start:
            reason = (
                f"it holds the GIL, and a sub-interpreter started and loaded it in {seconds(tried.seconds)}, "
                f"where starting process workers takes about {seconds(machine.process_start)}"
            )
            return _plan(samples, machine, "interpreter", cpus, reason)
    return _plan(samples, machine, "process", cpus, "it holds the GIL: only processes run it in parallel")


def _remaining_items(samples: Samples, machine: _Machine) -> float:
    return math.inf if machine.total is None else machine.total - samples.measured


def _remaining_seconds(samples: Samples, machine: _Machine) -> float:
    if machine.total is None:
        return math.inf
    return max(0, machine.total - samples.measured) * per_item(samples)


def _plan(samples: Samples, machine: _Machine, backend: str, workers: int, reason: str) -> Plan:
    if machine.workers is not None and backend != "serial":
        workers = machine.workers
    if machine.total is not None and backend != "serial":
        workers = max(1, min(workers, machine.total - samples.measured))
    per = per_item(samples)
    # An item still running took longer than it has so far: start at one.
    known = samples.count or samples.probed
    chunksize = None if backend == "serial" else max(1, int(TARGET_SECONDS / max(per, 1e-9))) if known else 1
    probe = samples.probe or ProbeReading(None, None)
    cost = machine.pickle_cost
    measurements = Measurements(
        samples.measured,
        per,
        _cpu_fraction(samples),
        probe.speedup,
        probe.gil_waits,
        None if cost is None else cost.seconds,
        machine.free_threaded,
        None if machine.interpreter is None else machine.interpreter.seconds,
    )
    return Plan(backend, workers, chunksize, reason, measurements)


# ---------------------------------------------------------------- the probe
@dataclass(frozen=True)
class ProbeSums:
    """The probe's stretches (while both measuring threads ran), added up:
    wall seconds, CPU seconds of both threads, their sleeps (None once
    unknown), and how many switch intervals the stretches lasted."""

    wall: float = 0.0
    cpu: float = 0.0
    slept: int | None = 0
    switches: float = 0.0

    def add(self, wall: float, cpu: float, slept: int | None, switches: float) -> ProbeSums:
        """One more stretch (``slept``: None when unknown)."""
        total_slept = None if self.slept is None or slept is None else self.slept + slept
        return ProbeSums(self.wall + wall, self.cpu + cpu, total_slept, self.switches + switches)


def probe_reading(sums: ProbeSums) -> ProbeReading:
    """How many threads ran at a time over the probe so far, and how often
    they slept per switch interval."""
    if sums.wall < MIN_PROBE_SECONDS:
        return ProbeReading(None, None)
    # A thread that waits for the GIL sleeps once per switch interval or
    # so; threads that do not share it hardly sleep.
    return ProbeReading(sums.cpu / sums.wall, None if sums.slept is None else sums.slept / sums.switches)


def probe_done(sums: ProbeSums) -> bool:
    """Whether the probe has run long enough: ``PROBE_SECONDS``, or up to
    ``MAX_PROBE_SECONDS`` while the threads ran about one at a time yet
    hardly slept (a busy machine: unclear)."""
    return sums.wall >= PROBE_SECONDS and (sums.wall >= MAX_PROBE_SECONDS or not _unclear(probe_reading(sums)))


def _unclear(reading: ProbeReading) -> bool:
    return (
        reading.speedup is not None
        and reading.speedup < MAYBE_GIL_FREE_SPEEDUP
        and reading.gil_waits is not None
        and reading.gil_waits < GIL_WAITS_PER_INTERVAL
    )
