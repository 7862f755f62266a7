"""``backend="auto"``: measure the function on the first items, then choose.

The Python FAQ's rule, made a measurement. The first items run in the
calling thread, timed by the wall clock and by the thread's CPU clock:

* items of a few microseconds: ``serial`` (a worker costs more than it saves);
* items that mostly wait (CPU time well under the wall time): ``thread``, with
  more workers than CPUs (as many as keep the CPUs busy, at most 32);
* items that compute: a few more of them run on two threads at once. If they
  finish nearly twice as fast, the function releases the GIL (C code such as
  hashlib, NumPy, compression): ``thread``. Otherwise it holds the GIL:
  ``process``, unless its items and results cost more to pickle than to
  compute, or the whole run is too short to pay for starting processes:
  then ``serial``.

On a free-threaded interpreter (no GIL) every kind of work goes to threads.
The measured items are not wasted: their results are yielded in their place.
With a ``timeout`` nothing is measured in the calling thread (an item there
could not be stopped): the choice is ``process``.

``AutoLane`` is a lane (see ``_stream``) that measures while the stream's
first batches arrive and then hands everything to the lane it chose.
"""

from __future__ import annotations

import functools
import math
import pickle
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from parcelout._core._batcher import TARGET_SECONDS
from parcelout._core._messages import BatchResult, Call, Policy
from parcelout._options import usable_cpus
from parcelout._stream import InlineLane, Lane

# Below this per-item time, workers cost more than they save.
TINY_SECONDS = 10e-6
# Time the first items take in the calling thread before the choice.
SERIAL_BUDGET = 0.01
MAX_SAMPLES = 10_000
# This many items under TINY_SECONDS each are enough to call the work tiny.
TINY_SAMPLES = 200
# An item that took this long and mostly waited says enough on its own.
TELLING_SECONDS = 0.001
# Below this fraction of CPU time per wall time, the work waits.
WAITING_CPU_FRACTION = 0.5
# Two threads at once at least this much faster than one after the other: the
# function releases the GIL.
GIL_FREE_SPEEDUP = 1.4
CLEARLY_GIL_FREE_SPEEDUP = 1.6
# Fewer items left than this are not worth a probe (nor workers).
MIN_PROBE_ITEMS = 4
# Each of the two probing threads runs about this long.
PROBE_SECONDS = 0.02
# Probing threads that slept this often per switch interval took turns at the GIL.
GIL_WAITS_PER_INTERVAL = 0.5
# A GIL-bound run shorter than this (estimated, serial) stays serial: starting
# process workers and shipping the function costs about this much.
PROCESS_WORTH_SECONDS = 0.15
MAX_THREADS = 32


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
            f"  measured {m.items} item(s): {_seconds(m.seconds_per_item)} per item, "
            f"{m.cpu_fraction:.0%} of the time on the CPU",
        ]
        if m.parallel_speedup is not None:
            lines.append(f"  on two threads it ran {m.parallel_speedup:.2f} at a time")
        if m.gil_waits is not None:
            lines.append(f"  those threads slept {m.gil_waits:.2f} times per GIL switch interval")
        if m.pickle_seconds_per_item is not None:
            lines.append(f"  pickling an item and its result takes {_seconds(m.pickle_seconds_per_item)}")
        if m.free_threaded:
            lines.append("  the interpreter runs without a GIL")
        return "\n".join(lines)


def _seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _ready_seconds() -> float | None:
    """Seconds this thread has run or waited to run (Linux schedstat), or None."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
            running, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return (int(running) + int(waiting)) / 1e9


def _sleeps() -> int | None:
    """How often this thread has slept (voluntary context switches, Linux), or None."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/status", "rb") as f:
            for line in f:
                if line.startswith(b"voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def free_threaded() -> bool:
    """True on a free-threaded build running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


class Measurer:
    """Runs items in the calling thread, times them, and decides."""

    def __init__(self, fn: Callable[..., Any], total: int | None, workers: int | None) -> None:
        self._fn = fn
        self._total = total
        self._workers = workers
        self._count = 0  # items timed in the calling thread
        self._wall = 0.0
        self._cpu = 0.0
        self._probed = 0  # items timed on two threads
        self._speedup: float | None = None
        self._gil_waits: float | None = None  # sleeps per switch interval while probing
        self._probe_per_item: float | None = None
        self._pickle: float | None = None
        self._sample: tuple[object, object] | None = None  # an item and its result
        self._pickle_failed = False
        self.plan: Plan | None = None
        self.probing = False

    @property
    def measured(self) -> int:
        return self._count + self._probed

    def wanted(self) -> int:
        """How many items to measure next: doubling in this thread; enough
        for about ``PROBE_SECONDS`` on each of two threads when probing."""
        if self.probing:
            return min(1000, max(4, 2 * math.ceil(PROBE_SECONDS / max(self._per_item(), 1e-9))))
        return min(1000, max(1, self._count))

    def timed(self, run: Callable[[], tuple[list[Any], dict[int, BaseException]]], items: list[Any]) -> None:
        """Run ``items`` (``run`` does) in this thread, timing them; decide
        once that is enough."""
        wall, cpu, ready = time.perf_counter(), time.thread_time(), _ready_seconds()
        values, errors = run()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if ready is not None and (now := _ready_seconds()) is not None:
            cpu = now - ready  # waiting for a CPU on a busy machine is not waiting for I/O
        self._count += len(items)
        self._wall += wall
        self._cpu += cpu
        if self._sample is None and 0 not in errors and values:
            self._sample = (items[0], values[0])  # pickled only if processes come into question
        waiting = wall >= TELLING_SECONDS and cpu < WAITING_CPU_FRACTION * wall
        tiny = self._count >= TINY_SAMPLES and self._wall < TINY_SECONDS * self._count
        if self._wall >= SERIAL_BUDGET or self._count >= MAX_SAMPLES or waiting or tiny:
            self._after_serial()

    def probe(self, runs: list[Callable[[], object]], count: int) -> None:
        """Run ``runs`` (two parts of ``count`` items) on two threads at once.

        How many threads could run at once, over the wall time: about 2 when
        the function releases the GIL, about 1 when it holds it, whatever the
        first items cost (a lazy set-up, say). A thread could run while it
        ran on a CPU or waited in the kernel's run queue for one (Linux
        reports both), so a machine busy with other work does not hide a
        GIL-free function; a thread waiting for the GIL is asleep. Elsewhere
        only the CPU time is known.
        """
        ready = [0.0] * len(runs)
        cpu = [0.0] * len(runs)
        waits: list[int | None] = [None] * len(runs)

        def timing(k: int, run: Callable[[], object]) -> None:
            start, start_ready, start_waits = time.thread_time(), _ready_seconds(), _sleeps()
            try:
                run()
            finally:
                cpu[k] = time.thread_time() - start
                end_ready, end_waits = _ready_seconds(), _sleeps()
                ready[k] = cpu[k] if start_ready is None or end_ready is None else end_ready - start_ready
                if start_waits is not None and end_waits is not None:
                    waits[k] = end_waits - start_waits

        threads = [
            threading.Thread(target=timing, args=(k, run), name="parcelout-probe", daemon=True)
            for k, run in enumerate(runs)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = max(time.perf_counter() - start, 1e-9)
        self._probed += count
        self._speedup = sum(ready) / wall
        self._probe_per_item = sum(cpu) / count
        if all(w is not None for w in waits):
            # A thread that waits for the GIL sleeps once per switch interval
            # or so; threads that do not share it hardly sleep at all.
            self._gil_waits = sum(w or 0 for w in waits) / (wall / sys.getswitchinterval())
        self.probing = False
        self._decide_compute()

    def finish(self) -> Plan:
        """Decide with what was measured (the input ended first)."""
        if self.plan is None:
            if not self._count:
                self._set("serial", 1, "there was nothing to measure")
            elif self.probing or self._speedup is None:
                self._after_serial(final=True)
            else:
                self._decide_compute()
        assert self.plan is not None
        return self.plan

    # ------------------------------------------------------------ decisions
    def _per_item(self) -> float:
        if self._probe_per_item is not None:
            return self._probe_per_item
        return self._wall / max(1, self._count)

    def _cpu_fraction(self) -> float:
        return min(1.0, self._cpu / self._wall) if self._wall > 0 else 1.0

    def _remaining_items(self) -> float:
        return math.inf if self._total is None else self._total - self.measured

    def _remaining_seconds(self) -> float:
        if self._total is None:
            return math.inf
        return max(0, self._total - self.measured) * self._per_item()

    def _after_serial(self, final: bool = False) -> None:
        per, cpu = self._per_item(), self._cpu_fraction()
        cpus = usable_cpus()
        if per < TINY_SECONDS:
            self._set("serial", 1, f"items take {_seconds(per)}: a worker would cost more than it saves")
        elif cpu < WAITING_CPU_FRACTION:
            wanted = math.ceil(cpus / max(cpu, 1 / MAX_THREADS))
            self._set("thread", min(MAX_THREADS, max(cpus, wanted)), f"items wait ({cpu:.0%} of their time on a CPU)")
        elif free_threaded():
            self._set("thread", cpus, "the interpreter has no GIL, so threads compute in parallel")
        elif cpus < 2:
            self._set("serial", 1, "only one CPU is usable and the work computes")
        elif final or self._remaining_items() < MIN_PROBE_ITEMS:
            self._decide_compute()  # too few items left to tell
        else:
            self.probing = True  # the next items run on two threads at once

    def _decide_compute(self) -> None:
        per = self._per_item()
        cpus = usable_cpus()
        # Two threads that clearly ran at once say enough. Short of that (a
        # busy machine), the threads must also have hardly slept, as threads
        # taking turns at the GIL do. Taking a GIL-bound function for a
        # GIL-free one would lose all parallelism; the reverse only some speed.
        speedup = self._speedup or 0.0
        gil_free = speedup >= CLEARLY_GIL_FREE_SPEEDUP or (
            speedup >= GIL_FREE_SPEEDUP and self._gil_waits is not None and self._gil_waits < GIL_WAITS_PER_INTERVAL
        )
        if gil_free and self._speedup is not None:
            how = f"two threads ran it {self._speedup:.2f} at a time"
            self._set("thread", cpus, f"{how}: it releases the GIL")
            return
        self._time_pickling()
        if self._pickle_failed:
            self._set("thread", cpus, "its items or results cannot be pickled for a process")
        elif self._pickle is not None and self._pickle > 0.5 * per:
            self._set("serial", 1, "it holds the GIL, and pickling its items costs more than half of running them")
        elif self._remaining_seconds() < PROCESS_WORTH_SECONDS:
            self._set("serial", 1, "it holds the GIL, and the run is too short to pay for starting processes")
        else:
            self._set("process", cpus, "it holds the GIL: only processes run it in parallel")

    def _set(self, backend: str, workers: int, reason: str) -> None:
        if self._workers is not None and backend != "serial":
            workers = self._workers
        if self._total is not None and backend != "serial":
            workers = max(1, min(workers, self._total - self.measured))
        per = self._per_item()
        chunksize = None if backend == "serial" else max(1, int(TARGET_SECONDS / max(per, 1e-9)))
        measurements = Measurements(
            self.measured, per, self._cpu_fraction(), self._speedup, self._gil_waits, self._pickle, free_threaded()
        )
        self.plan = Plan(backend, workers, chunksize, reason, measurements)
        self.probing = False

    def _time_pickling(self) -> None:
        """Time a round trip of the sample item and result through pickle
        (what a process worker costs per item), once."""
        if self._sample is None or self._pickle is not None or self._pickle_failed:
            return
        item, result = self._sample
        start = time.perf_counter()
        try:
            for value in (item, result):
                try:
                    pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
                except Exception:
                    cloudpickle.loads(cloudpickle.dumps(value))
            cloudpickle.dumps(self._fn)
        except Exception:
            self._pickle_failed = True
            return
        self._pickle = time.perf_counter() - start


class AutoLane:
    """A lane that measures the first items inline, then hands over.

    ``make_lane(plan)`` builds the lane for the chosen backend (it may start
    a pool); ``inline`` runs items in the calling thread (it runs the
    initializer first, once); ``on_plan(plan)`` hears the choice.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        total: int | None,
        workers: int | None,
        inline: Lane,
        make_lane: Callable[[Plan], Lane | None],
        policy: Policy,
        on_plan: Callable[[Plan], object] | None = None,
    ) -> None:
        self.measurer = Measurer(fn, total, workers)
        self._inline = inline
        self._make_lane = make_lane
        self._lane: Lane | None = None
        self._done: deque[BatchResult] = deque()
        self._on_plan = on_plan
        if policy.timeout is not None:  # nothing may run here, where it cannot be stopped
            self.measurer._set("process", usable_cpus(), "a timeout needs workers that can be stopped")
            self._hand_over()

    @property
    def workers(self) -> int:
        return self._lane.workers if self._lane is not None else 1

    @property
    def inline(self) -> bool:
        return self._lane is None or getattr(self._lane, "inline", False)

    batch_seconds = TARGET_SECONDS  # its lanes are local

    @property
    def plan(self) -> Plan | None:
        return self.measurer.plan

    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        if self._lane is not None:
            self._lane.submit(call, items, policy)
            return
        if self.measurer.probing and len(items) >= 2:
            self._probe(call, items, policy)
        else:
            run = functools.partial(self._run_inline, call, items, policy)
            self.measurer.timed(run, [item for _, item in items])
            self._hand_over()

    def next_result(self) -> BatchResult:
        if self._done or self._lane is None:
            return self._done.popleft()
        return self._lane.next_result()

    def cancel(self) -> None:
        if self._lane is not None:
            self._lane.cancel()

    def serial_now(self) -> bool:
        return self._lane is self._inline and not self._done and self._inline.serial_now()

    def finish_measuring(self) -> Plan:
        """The plan, deciding now if the input ended before the measurement."""
        plan = self.measurer.finish()
        if self._lane is None:
            self._hand_over()
        return plan

    def _run_inline(
        self, call: Call, items: list[tuple[int, Any]], policy: Policy
    ) -> tuple[list[Any], dict[int, BaseException]]:
        self._inline.submit(call, items, policy)
        result = self._inline.next_result()
        self._done.append(result)
        return list(result.values), result.errors

    def _probe(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        half = len(items) // 2
        parts = [items[:half], items[half:]]
        outcomes: list[BatchResult | None] = [None, None]
        lanes = [InlineLane(), InlineLane()]  # the initializer already ran in this process

        def runner(k: int) -> Callable[[], None]:
            def run() -> None:
                lanes[k].submit(call, parts[k], policy)
                outcomes[k] = lanes[k].next_result()

            return run

        self.measurer.probe([runner(0), runner(1)], len(items))
        for part, outcome in zip(parts, outcomes, strict=True):
            if outcome is None:  # its thread failed outside the items: run them here
                self._run_inline(call, part, policy)
            else:
                self._done.append(outcome)
        self._hand_over()

    def _hand_over(self) -> None:
        plan = self.measurer.plan
        if plan is not None and self._lane is None:
            if self._on_plan is not None:
                self._on_plan(plan)
            self._lane = self._inline if plan.backend == "serial" else self._make_lane(plan)
