"""``backend="auto"``: measure the function on the first items, then choose.

The Python FAQ's rule, made a measurement. The first items run on a
measuring thread, timed by the wall clock and by the thread's CPU clock,
while the calling thread watches:

* items of a few microseconds: ``serial`` (a worker costs more than it saves);
* items that mostly wait (CPU time well under the wall time): ``thread``, with
  more workers than CPUs (as many as keep the CPUs busy, at most 32);
* items that compute: the next ones run on a second thread beside the first.
  If the two run nearly twice as fast as one, the function releases the GIL
  (C code such as hashlib, NumPy, compression): ``thread``. Otherwise it
  holds the GIL: ``process``, unless its items and results cost more to
  pickle than to compute, or the whole run is too short to pay for starting
  processes: then ``serial``.

On Linux a thread's CPU time can be read while it runs, so the choice does
not wait for a slow item to end: an item that waits shows it within
milliseconds, and one that computes for long is probed beside the next ones.
On a free-threaded interpreter (no GIL) every kind of work goes to threads.
The measured items are not wasted: their results are yielded in their place.
With a ``timeout`` nothing is measured in this process (an item here could not
be stopped): the choice is ``process``.

Three parts, kept apart:

* the sampler (here: ``_Runner``, ``AutoLane._serve`` and the probe's
  stretches) reads clocks, run queues and sleep counts, and decides nothing;
* ``Measurer`` adds the readings up (``Samples``) and asks
  ``_auto_decide.decide``, the pure decision, passing it the machine
  (``usable_cpus()``, ``free_threaded()``) and the pickling cost, timed here
  once processes come into question;
* ``AutoLane``, a lane (see ``_stream``) that runs the stream's first
  batches on the measuring threads and then hands everything to the lane
  it chose. It lowers the switch interval through ``_settings``, the one
  owner of that process-wide setting.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import cloudpickle

from parcelout._auto_decide import (
    BUSY_SWITCH_INTERVAL,
    INTERPRETER_START_FLOOR,
    PICKLE_TRIALS,
    PROBE_SECONDS,
    PROCESS_START_SECONDS,
    RUNNING_LOOK_SECONDS,
    SERIAL_BUDGET,
    TINY_SECONDS,
    Continue,
    Decision,
    InterpreterProbe,
    Measurements,
    NeedInterpreterProbe,
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
from parcelout._core._messages import Batch, BatchResult, Call, Policy
from parcelout._options import usable_cpus
from parcelout._settings import SwitchIntervalHold, lower_switch_interval
from parcelout._stream import InlineLane, Lane

__all__ = [
    "BUSY_SWITCH_INTERVAL",
    "LIVE",
    "TINY_SECONDS",
    "AutoLane",
    "Measurements",
    "Measurer",
    "Plan",
    "free_threaded",
    "time_pickling",
    "usable_cpus",
]


# ---------------------------------------------------------------- the sampler's clocks
def _queued_seconds(native_id: int) -> float:
    """Seconds a thread has waited in the kernel's run queue for a CPU (Linux
    schedstat; 0 elsewhere): on a busy machine, time it would have run."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _sleeps(native_id: int) -> int | None:
    """How often a thread has slept (voluntary context switches, Linux), or None."""
    try:
        with open(f"/proc/self/task/{native_id}/status", "rb") as f:
            for line in f:
                if line.startswith(b"voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _cpu_clock() -> int | None:
    """This thread's CPU clock, readable from other threads while it runs (no
    I/O, so reading it does not give up the GIL), or None where there is none."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        time.clock_gettime(clock)
    except (AttributeError, OSError):
        return None
    return clock


# Whether a thread's CPU time can be read while it runs. Elsewhere the
# measuring threads' batches are judged when they finish.
LIVE = _cpu_clock() is not None


def free_threaded() -> bool:
    """True on a free-threaded build running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


def time_pickling(fn: Callable[..., Any], sample: tuple[object, object] | None) -> PickleCost:
    """What a process worker adds per item: the sample item and its result
    pickled and unpickled (the fastest of ``PICKLE_TRIALS``; the function
    crosses once per worker, so it is only checked, not timed)."""
    if sample is None:
        return PickleCost(None)
    try:
        cloudpickle.dumps(fn)
        return PickleCost(min(_round_trip(sample) for _ in range(PICKLE_TRIALS)))
    except Exception:
        return PickleCost(None, unpicklable=True)


def _round_trip(values: tuple[object, ...]) -> float:
    """Seconds to pickle and unpickle ``values``, each on its own, as a process
    worker's items and results cross."""
    start = time.perf_counter()
    for value in values:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            data = cloudpickle.dumps(value)
        pickle.loads(data)
    return time.perf_counter() - start


def _minus(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


# ---------------------------------------------------------------- the readings, added up
class Measurer:
    """Adds up the readings ``AutoLane`` hands it (under its lock) and asks
    ``decide`` once each may tell; holds the plan once there is one."""

    def __init__(
        self,
        fn: Callable[..., Any],
        total: int | None,
        workers: int | None,
        process_start: float = PROCESS_START_SECONDS["forkserver"],
    ) -> None:
        self._fn = fn
        self._total = total
        self._workers = workers
        self._process_start = process_start
        self._interpreters: bool | None = None  # whether sub-interpreters exist here: asked only if they may matter
        self._interpreter: InterpreterProbe | None = None
        self.samples = Samples()
        self._sample: tuple[object, object] | None = None  # an item and its result
        self._pickle_cost: PickleCost | None = None  # timed once processes come into question
        self.plan: Plan | None = None

    @property
    def measured(self) -> int:
        return self.samples.measured

    @property
    def serial_wall(self) -> float:
        return self.samples.wall

    @property
    def probing(self) -> bool:
        """Whether the next batches run on two threads at once."""
        return self.plan is None and self.samples.probing

    def wanted(self) -> int:
        """How many items a batch should hold while measuring."""
        return batch_size(self.samples)

    def finished(self, count: int, wall: float, cpu: float, sample: tuple[object, object] | None) -> None:
        """A measuring thread finished ``count`` items in ``wall`` seconds, ``cpu``
        of them on a CPU (or waiting for one); decide once that is enough."""
        if self._sample is None:
            self._sample = sample  # pickled only if processes come into question
        self.samples = self.samples.finished(count, wall, cpu)
        if self.plan is None and not self.samples.probing:
            self._apply(self._decide(self.samples))

    def running(self, wall: float, cpu: float, items: int) -> None:
        """The first measuring thread's batch has run ``wall`` seconds so far,
        ``cpu`` of them on a CPU, and finished ``items`` of its items: decide
        now if that tells, without waiting for the batch to end."""
        if self.plan is not None or self.probing:
            return
        looked = self.samples.looked(wall, cpu, items)
        decision = self._decide(looked)
        if not isinstance(decision, Continue):  # a look that tells nothing is forgotten
            self.samples = looked
            self._apply(decision)

    def probed(self, speedup: float | None, gil_waits: float | None) -> None:
        """Two threads ran it at once, ``speedup`` at a time (None: too briefly
        to tell), sleeping ``gil_waits`` times per switch interval (None: unknown)."""
        self.samples = self.samples.probe_ended(ProbeReading(speedup, gil_waits))
        self._apply(self._decide(self.samples))

    def finish(self) -> Plan:
        """Decide with what was measured (the input ended first)."""
        if self.plan is None:
            self.samples = self.samples.input_ended()
            self._apply(self._decide(self.samples))
        assert self.plan is not None
        return self.plan

    def choose_without_measuring(self) -> Plan:
        """A timeout: nothing may run here, where it could not be stopped."""
        self._apply(self._decide(self.samples, timeout=True))
        assert self.plan is not None
        return self.plan

    def _decide(self, samples: Samples, *, timeout: bool = False) -> Decision:
        while True:
            decision = decide(
                samples,
                total=self._total,
                workers=self._workers,
                cpus=usable_cpus(),
                free_threaded=free_threaded(),
                pickle_cost=self._pickle_cost,
                timeout=timeout,
                process_start=self._process_start,
                interpreters=self._interpreters_here(),
                interpreter=self._interpreter,
            )
            if isinstance(decision, Continue | Probe | Plan):
                return decision
            if isinstance(decision, NeedInterpreterProbe):
                from parcelout.backends._interpreter import probe

                self._interpreter = InterpreterProbe(*probe(self._fn, self._sample))
                continue
            self._pickle_cost = time_pickling(self._fn, self._sample)

    def _interpreters_here(self) -> bool:
        """Whether sub-interpreters are available, asked once, and only where
        they could start faster than processes."""
        if self._interpreters is None:
            self._interpreters = False
            if self._process_start > INTERPRETER_START_FLOOR:
                from parcelout.backends._interpreter import available

                self._interpreters = available()
        return self._interpreters

    def _apply(self, decision: Decision) -> None:
        if isinstance(decision, Plan):
            self.plan = decision
        elif isinstance(decision, Probe):
            self.samples = self.samples.probe_started()


class _Stop:
    """Set, the measuring threads stop between items (``run_batch``'s flag)."""

    cancelled = False


class _Runner:
    """A measuring thread: it runs the auto lane's waiting batches, one after another."""

    def __init__(self, lane: AutoLane) -> None:
        self.native_id: int | None = None
        self.clock: int | None = None  # its CPU clock
        self.busy_since: float | None = None  # when its running batch started
        self.lane: InlineLane | None = None  # where it runs them (under its own scheduler)
        self.ready_at_start = 0.0
        self.looked = False  # its running batch was looked at once already
        self.cpu_done = 0.0  # CPU time of its finished batches
        self.stretch_cpu = 0.0  # and of those that started in the probe's current stretch
        self.stretch_batches = 0
        self.slot = [0, -1]  # slot[1]: the position running in its batch (run_batch)
        self.size = 0  # items in its running batch
        self.thread = threading.Thread(target=lane._serve, args=(self,), name="parcelout-measure", daemon=True)

    def cpu(self) -> float:
        """Seconds it has run on a CPU so far; where that cannot be read while
        it runs, in its finished batches."""
        return self.cpu_done if self.clock is None else time.clock_gettime(self.clock)

    def sleeps(self) -> int | None:
        """How often it has slept so far (I/O), None where that cannot be read."""
        return None if self.native_id is None else _sleeps(self.native_id)

    def ready(self) -> float:
        """Seconds it has run or waited in the run queue to run (reading the
        queue is I/O: not while another thread may hold the GIL for long)."""
        return self.cpu() + (0.0 if self.native_id is None else _queued_seconds(self.native_id))


class AutoLane:
    """A lane that measures the first batches, then hands over to the lane it chose.

    The batches it measures run on a measuring thread, one after another,
    while the calling thread waits and watches (on Linux a thread's CPU time
    can be read while a batch runs): so a long first item does not hold the
    choice up, and an item that waits shows it within milliseconds. To probe,
    a second measuring thread runs the next batches beside the first. The
    measuring threads start a batch only while the calling thread waits, and
    it waits until they are idle, so that its own work does not slow what is
    measured. Once it has chosen, the batches waiting here go to the chosen
    lane; those the measuring threads are running finish there, and their
    results come back with the others.

    ``make_lane(plan)`` builds the lane for the chosen backend (it may start a
    pool; None: measure only, as ``explain`` does); ``inline`` runs items in
    the calling thread, where the initializer runs once before anything is
    measured; ``on_plan(plan)`` hears the choice.
    """

    MEASURING_THREADS = 2

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        total: int | None,
        workers: int | None,
        inline: InlineLane,
        make_lane: Callable[[Plan], Lane | None],
        policy: Policy,
        on_plan: Callable[[Plan], object] | None = None,
        process_start: float = PROCESS_START_SECONDS["forkserver"],
    ) -> None:
        self.measurer = Measurer(fn, total, workers, process_start)
        self._inline = inline
        self._make_lane = make_lane
        self._on_plan = on_plan
        self._lane: Lane | None = None
        self._lane_out = 0  # items out at the chosen lane (a batch may come back in parts)
        self._cond = threading.Condition()
        self._waiting: deque[tuple[Call, list[tuple[int, Any]], Policy]] = deque()
        self._runners: list[_Runner] = []
        self._busy = 0  # batches the measuring threads are running
        self._watching = False  # the calling thread waits: the measuring threads may start batches
        self._asked = False  # it said "take more" and nothing was submitted since
        self._woken = False  # the input has more: next_result returns with no items
        self._call: Call | None = None
        self._done: deque[BatchResult] = deque()
        self._error: BaseException | None = None
        self._stop = _Stop()
        # The probe adds up stretches while both threads run: the current
        # one's start, and the threads' CPU times and sleeps then; the sums so far.
        self._stretch: tuple[float, list[float], list[int | None]] | None = None
        self._probe_sums = ProbeSums()
        self._prepared = False
        self._busy_interval: SwitchIntervalHold | None = None  # BUSY_SWITCH_INTERVAL, while held
        if policy.timeout is not None:  # nothing may run here, where it cannot be stopped
            self.measurer.choose_without_measuring()
            self._hand_over()

    @property
    def workers(self) -> int:
        if self._lane is not None:
            return self._lane.workers
        return self.MEASURING_THREADS if self.measurer.probing else 1

    @property
    def inline(self) -> bool:
        """One batch at a time while one thread measures, as inline."""
        if self._lane is not None:
            return self._lane.inline
        return self.measurer.plan is None and not self.measurer.probing

    batch_seconds = TARGET_SECONDS  # its lanes are local

    @property
    def plan(self) -> Plan | None:
        return self.measurer.plan

    # ------------------------------------------------------------ the lane
    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        if self._lane is not None:
            self._lane.submit(call, items, policy)
            self._lane_out += len(items)
            return
        if not self._prepared:
            self._inline.prepare()  # the initializer, here and once; raises if it failed
            self._prepared = True
        self._call = call
        with self._cond:
            self._asked = False
            self._waiting.append((call, items, policy))
            if not self._runners:
                self._start_runner()

    def next_result(self) -> BatchResult:
        while True:
            self._wait()
            if self._lane is None and self.measurer.plan is not None:
                self._hand_over()
            with self._cond:
                if self._woken:
                    self._woken = False
                    assert self._call is not None
                    return BatchResult(Batch(0, self._call, [], self._done.append), [], {})
                if self._done:
                    return self._done.popleft()
                if self._lane is not None and self._lane_out:
                    break
                if self._takes_more():
                    # A batch runs on, but the chosen lane or the probe wants input now.
                    self._asked = True
                    assert self._call is not None
                    return BatchResult(Batch(0, self._call, [], self._done.append), [], {})
                if not self._busy and not self._waiting:
                    raise RuntimeError("parcelout: asked for a result with no batch out")  # a bug, not a hang
        assert self._lane is not None
        result = self._lane.next_result()
        self._lane_out -= len(result.batch.items)  # none when woken
        return result

    def wake(self) -> None:
        lane = self._lane
        if lane is not None:
            lane.wake()
            return
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def cancel(self) -> None:
        self._close(wait=False)
        if self._lane is not None:
            self._lane.cancel()

    def serial_now(self) -> bool:
        return (
            self._lane is self._inline
            and not self._done
            and not self._busy
            and not self._lane_out
            and self._inline.serial_now()
        )

    # ------------------------------------------------------------ measuring only
    def measure(self, call: Call, take: Callable[[int], list[tuple[int, Any]]], policy: Policy) -> Plan:
        """Run only the items it takes to decide, from ``take(n)``, and decide
        (``explain``); returns when every item it started has finished."""
        try:
            while self.measurer.plan is None:
                threads = self.MEASURING_THREADS if self.measurer.probing else 1
                chunks = [take(self.measurer.wanted()) for _ in range(threads)]
                for chunk in chunks:
                    if chunk:
                        self.submit(call, chunk, policy)
                if not any(chunks):
                    break  # the input ended
                self._wait()
                self._done.clear()
            with self._cond:
                if self.measurer.probing:
                    self._conclude_probe()
        finally:
            self._close(wait=True)
        return self.measurer.finish()

    # ------------------------------------------------------------ the calling thread
    def _wait(self) -> None:
        """Wait until there is something to do here; meanwhile let the
        measuring threads run, and judge their running batches at the moments
        when that can decide."""
        with self._cond:
            self._watching = True
            self._cond.notify_all()
            try:
                while self._error is None and not self._settled():
                    self._cond.wait(self._look(time.perf_counter()))
            finally:
                self._watching = False
            if self._error is not None:
                error, self._error = self._error, None
                raise error

    def _settled(self) -> bool:
        """Whether the calling thread has something to do (under the lock)."""
        if self._woken or self._done or self._lane_out or (not self._busy and not self._waiting):
            return True
        if self.measurer.plan is not None and self._lane is None:
            return True  # to hand over
        return self._takes_more()

    def _takes_more(self) -> bool:
        """Whether the lane wants more input while a batch still runs, and has
        not asked for it yet (under the lock)."""
        if self._asked or self._waiting:
            return False
        if self.measurer.probing:
            return self._busy < self.MEASURING_THREADS
        return self._lane is not None and not self._lane_out

    def _look(self, now: float) -> float | None:
        """Judge the running batches if it is time (under the lock); the
        seconds until it is time again (0: it judged), None if it will not be."""
        if self.measurer.plan is not None or not LIVE:
            return None
        if self._stretch is not None:
            due = self._stretch[0] + PROBE_SECONDS - self._probe_sums.wall
            if now < due:
                return due - now
            self._end_stretch(now)
            return 0.0  # judged: look at what to do now
        first = self._runners[0] if self._runners else None
        if self.measurer.probing or first is None or first.busy_since is None:
            return None
        if first.looked:
            due = first.busy_since + max(RUNNING_LOOK_SECONDS, SERIAL_BUDGET - self.measurer.serial_wall)
        else:
            due = first.busy_since + RUNNING_LOOK_SECONDS
        if now < due:
            return due - now
        first.looked = True
        position = first.slot[1]
        finished = first.size if position < 0 else position
        self.measurer.running(now - first.busy_since, first.ready() - first.ready_at_start, finished)
        if self.measurer.probing:
            self._start_runner()
        if self.measurer.plan is not None or self.measurer.probing:
            return 0.0  # judged: look at what to do now
        return self._look(now)

    def _hand_over(self) -> None:
        plan = self.measurer.plan
        assert plan is not None and self._lane is None
        if self._on_plan is not None:
            self._on_plan(plan)
        lane = self._inline if plan.backend == "serial" else self._make_lane(plan)
        if lane is None:
            return
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
            if plan.backend == "process" and self._busy:
                self._lower_switch_interval()
        self._lane = lane
        for call, items, policy in waiting:
            lane.submit(call, items, policy)
            self._lane_out += len(items)

    def _close(self, *, wait: bool) -> None:
        """Stop measuring: drop the waiting batches; join the measuring threads
        (with ``wait``, also those still running a batch)."""
        with self._cond:
            self._stop.cancelled = True
            self._waiting.clear()
            self._restore_switch_interval()
            runners = [r for r in self._runners if wait or r.busy_since is None]
            if not wait:
                for runner in runners:
                    if runner.lane is not None:
                        runner.lane.cancel()  # a retry waiting out its back-off comes back cancelled
            self._cond.notify_all()
        for runner in runners:
            runner.thread.join()

    def _lower_switch_interval(self) -> None:
        """Lower the interpreter's switch interval until the measuring threads
        are idle (under the lock; ``_settings`` owns the setting)."""
        if self._busy_interval is None:
            self._busy_interval = lower_switch_interval(BUSY_SWITCH_INTERVAL)

    def _restore_switch_interval(self) -> None:
        """Let go of the lowered switch interval (under the lock)."""
        if self._busy_interval is not None:
            self._busy_interval.release()
            self._busy_interval = None

    # ------------------------------------------------------------ the measuring threads
    def _start_runner(self) -> None:
        runner = _Runner(self)
        self._runners.append(runner)
        runner.thread.start()

    def _serve(self, runner: _Runner) -> None:
        runner.native_id, runner.clock = threading.get_native_id(), _cpu_clock()
        lane = InlineLane(flag=self._stop, slot=runner.slot)  # the initializer already ran in this process
        runner.lane = lane
        while True:
            with self._cond:
                job = self._next_job(runner)
            if job is None:
                return
            call, items, policy = job
            start, cpu, queued = time.perf_counter(), time.thread_time(), _queued_seconds(runner.native_id)
            began = runner.busy_since
            try:
                lane.submit(call, items, policy)  # runs the batch; a retry with a back-off waits in the lane
                wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
                # Waiting for a CPU on a busy machine is not waiting for I/O.
                ready = cpu + _queued_seconds(runner.native_id) - queued
                with self._cond:
                    runner.busy_since = None  # what follows (a retry's back-off) is not the function's time
                parts = [lane.next_result()]
                while sum(len(part.batch.items) for part in parts) < len(items):
                    parts.append(lane.next_result())
            except BaseException as exc:  # the function raised KeyboardInterrupt itself
                with self._cond:
                    self._busy -= 1
                    runner.busy_since = None
                    self._error = exc
                    self._restore_switch_interval()
                    self._cond.notify_all()
                return
            first = parts[0]
            ok = first.values and first.batch.items[0] == items[0] and 0 not in first.errors
            sample = (items[0][1], first.values[0]) if ok else None
            with self._cond:
                self._busy -= 1
                if self._stretch is not None and began is not None and began >= self._stretch[0]:
                    runner.stretch_cpu += cpu
                    runner.stretch_batches += 1
                runner.cpu_done += cpu
                self._done.extend(parts)
                if not self._busy:
                    self._restore_switch_interval()
                if self.measurer.plan is None:
                    self.measurer.finished(len(items), wall, ready, sample)
                    if self.measurer.probing and len(self._runners) < self.MEASURING_THREADS:
                        self._start_runner()
                    elif self._stretch is not None and not LIVE and self._each_finished_one():
                        self._end_stretch(time.perf_counter())
                self._cond.notify_all()

    def _next_job(self, runner: _Runner) -> tuple[Call, list[tuple[int, Any]], Policy] | None:
        """The next waiting batch for ``runner`` (under the lock), None to stop."""
        while True:
            if self._stop.cancelled or self.measurer.plan is not None or self._error is not None:
                return None
            if self._waiting and self._watching:
                job = self._waiting.popleft()
                self._busy += 1
                runner.busy_since = time.perf_counter()
                if not self.measurer.probing:  # one thread: the run queue may be read (see ready)
                    runner.ready_at_start = runner.ready()
                    self._cond.notify_all()  # the calling thread times its look
                runner.looked = False
                runner.size = len(job[1])
                if self._stretch is None and self.measurer.probing and self._busy == self.MEASURING_THREADS:
                    self._lower_switch_interval()
                    self._start_stretch(runner.busy_since)  # this batch is the stretch's
                    self._cond.notify_all()  # the calling thread times the probe
                return job
            if self._stretch is not None:
                self._end_stretch(time.perf_counter())  # this thread ran out of work
                continue
            self._cond.wait()

    def _each_finished_one(self) -> bool:
        """Whether each measuring thread finished a batch that started in this
        stretch (where only finished batches can be read)."""
        return all(r.stretch_batches for r in self._runners)

    def _end_stretch(self, now: float) -> None:
        """Add up a stretch of the probe (under the lock); judge once the
        probe has run ``PROBE_SECONDS``.

        How many threads ran at once: about 2 when the function releases the
        GIL, about 1 when it holds it, whatever the items cost. Their CPU
        clocks are read while they run; the run queue (I/O, which would give
        up the GIL to a thread that holds it for milliseconds) is not.
        Elsewhere only the CPU time of finished batches is known: of those
        that started in the stretch, which errs towards "holds the GIL".
        """
        assert self._stretch is not None
        start, cpus, sleeps = self._stretch
        self._stretch = None
        if LIVE:
            cpu = sum(r.cpu() - before for r, before in zip(self._runners, cpus, strict=True))
        else:  # what batches that started in the stretch and finished ran: no more than ran in it
            cpu = sum(r.stretch_cpu for r in self._runners)
        slept = [_minus(r.sleeps(), before) for r, before in zip(self._runners, sleeps, strict=True)]
        stretch_slept = None if None in slept else sum(x or 0 for x in slept)
        switches = (now - start) / sys.getswitchinterval()
        self._probe_sums = self._probe_sums.add(now - start, cpu, stretch_slept, switches)
        if probe_done(self._probe_sums):
            self._conclude_probe()
        elif self._busy == self.MEASURING_THREADS:  # both still run: the next stretch starts now
            self._start_stretch(time.perf_counter())
        self._cond.notify_all()

    def _start_stretch(self, start: float) -> None:
        """Begin a stretch of the probe at ``start`` (under the lock)."""
        cpus = [r.cpu() for r in self._runners]  # clocks first: reading the sleeps is I/O, and gives up the GIL
        for r in self._runners:
            r.stretch_cpu, r.stretch_batches = 0.0, 0
        self._stretch = (start, cpus, [r.sleeps() for r in self._runners])

    def _conclude_probe(self) -> None:
        """Decide from the probe's stretches so far (under the lock)."""
        reading = probe_reading(self._probe_sums)
        self.measurer.probed(reading.speedup, reading.gil_waits)
