"""``parcelout.stress``: make races in threaded code show, and replay them.

The interpreter switches threads only at loop back-edges and calls (and
after its switch interval), so a read-modify-write such as
``d["x"] = d["x"] + 1`` is almost never cut in the middle, however small the
switch interval: the race is real but hides. ``stress`` runs a function in
many threads at once under a chaos scheduler that forces a switch at random
bytecode instructions, seeded so that a failure can be replayed.

How a switch is forced: each stress thread has its instructions reported to
a callback (``sys.monitoring`` on 3.12 and later, per-opcode tracing with
``sys.settrace`` before), which with probability ``switch_probability``
releases the GIL (``time.sleep(0)``) while the switch interval is tiny, so
that a thread waiting for the GIL takes it then. (With ``sys.monitoring``
the callback runs in every thread while ``stress`` runs, and returns at once
outside the stress threads.) The interpreter's tracing, monitoring and
switch interval are put back as they were afterwards (the switch interval
through ``_settings``, its one owner, so that a ``backend="auto"`` run
lowering it at the same time does not leave it lowered).

The seed fixes where each thread is asked to switch; which thread the
operating system runs next is not under its control, so a replay makes the
same race likely, not certain.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from parcelout._settings import SwitchIntervalHold, lower_switch_interval

__all__ = ["RaceDetected", "StressReport", "stress"]

DEFAULT_SWITCH_PROBABILITY = 0.05
_MONITORING: Any = getattr(sys, "monitoring", None)  # 3.12 and later
_CHAOS_SWITCH_INTERVAL = 1e-6


class RaceDetected(AssertionError):
    """A ``check`` failed after a round of ``stress``: the threads raced.

    Attributes:
        round: the round (from 0) whose check failed.
        seed: the seed to pass to ``stress`` to replay the run.
    """

    def __init__(self, message: str, round: int, seed: int) -> None:
        super().__init__(message)
        self.round = round
        self.seed = seed


@dataclass(frozen=True)
class StressReport:
    """What a ``stress`` run did (it found no race)."""

    rounds: int
    threads: int
    switches: int  # thread switches forced, over all rounds
    seconds: float
    seed: int
    method: str  # "sys.monitoring" or "sys.settrace"

    @property
    def rounds_per_second(self) -> float:
        return self.rounds / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.rounds} rounds of {self.threads} threads, {self.switches} forced switches, "
            f"{self.seconds:.2f} s ({self.rounds_per_second:.1f} rounds/s, {self.method}), seed {self.seed}: "
            "no race seen"
        )


def stress(
    fn: Callable[..., Any],
    *,
    threads: int = 8,
    rounds: int = 50,
    setup: Callable[[], Any] | None = None,
    check: Callable[..., object] | None = None,
    seed: int | None = None,
    switch_probability: float = DEFAULT_SWITCH_PROBABILITY,
) -> StressReport:
    """Run ``fn`` in ``threads`` threads at once, ``rounds`` times, forcing
    thread switches at random instructions; raise ``RaceDetected`` when
    ``check`` fails.

    Each round calls ``setup()`` (if given) for a fresh shared state and runs
    ``fn(state)`` (``fn()`` without ``setup``) in every thread, released
    together by a barrier; then ``check(state)`` (``check()`` without
    ``setup``). A check that returns False or raises ``AssertionError`` ends
    the run with ``RaceDetected``, saying the round, the seed and the
    check's message. An exception raised by ``fn`` in a thread is raised
    here (with a note naming the round and the seed), not swallowed.

    Returns:
        A ``StressReport``: rounds, switches forced, time, the seed.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    for name, value in (("threads", threads), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, not {value!r}")
    if not 0.0 < switch_probability <= 1.0:
        raise ValueError(f"switch_probability must be in (0, 1], not {switch_probability!r}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    chaos = _Chaos(switch_probability)
    start = time.perf_counter()
    with chaos.installed():
        for round_ in range(rounds):
            state = setup() if setup is not None else None
            errors = _run_round(
                fn, state, with_state=setup is not None, threads=threads, chaos=chaos, seed=seed, round_=round_
            )
            if errors:
                error = errors[0]
                error.add_note(f"parcelout.stress: raised by fn in round {round_} (seed {seed})")
                raise error
            if check is not None:
                _check(check, state, setup is not None, round_, seed)
    return StressReport(rounds, threads, chaos.switches, time.perf_counter() - start, seed, chaos.method)


def _run_round(
    fn: Callable[..., Any], state: Any, *, with_state: bool, threads: int, chaos: _Chaos, seed: int, round_: int
) -> list[BaseException]:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def body(k: int) -> None:
        rng = random.Random(f"{seed}:{round_}:{k}")
        try:
            barrier.wait()
            with chaos.in_this_thread(rng):
                if with_state:
                    fn(state)
                else:
                    fn()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=body, args=(k,), name=f"parcelout-stress-{k}") for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def _check(check: Callable[..., object], state: Any, with_state: bool, round_: int, seed: int) -> None:
    try:
        verdict = check(state) if with_state else check()
    except AssertionError as exc:
        message = str(exc) or "the check failed"
    else:
        if verdict is not False:
            return
        message = "the check returned False"
    raise RaceDetected(f"race in round {round_} (replay with seed={seed}): {message}", round_, seed)


class _Chaos:
    """Forces thread switches in the threads that ask for it."""

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.switches = 0
        self._local = threading.local()
        self._tool: int | None = None
        self.method = "sys.settrace" if _MONITORING is None else "sys.monitoring"

    # -- the whole run
    def installed(self) -> _Installed:
        return _Installed(self)

    def install(self) -> None:
        if self.method == "sys.monitoring":
            monitoring = _MONITORING
            for tool in (3, 4, 2, 1, 0):  # 3 and 4 are free by convention
                if monitoring.get_tool(tool) is None:
                    monitoring.use_tool_id(tool, "parcelout.stress")
                    self._tool = tool
                    break
            else:
                self.method = "sys.settrace"  # every tool id is taken: trace instead
                return
            monitoring.register_callback(self._tool, monitoring.events.INSTRUCTION, self._on_instruction)
            monitoring.set_events(self._tool, monitoring.events.INSTRUCTION)  # every thread: others return at once

    def uninstall(self) -> None:
        if self._tool is not None:
            monitoring = _MONITORING
            monitoring.set_events(self._tool, 0)
            monitoring.register_callback(self._tool, monitoring.events.INSTRUCTION, None)
            monitoring.free_tool_id(self._tool)
            self._tool = None

    # -- one thread
    def in_this_thread(self, rng: random.Random) -> _Scope:
        return _Scope(self, rng)

    def start_thread(self, rng: random.Random) -> None:
        self._local.rng = rng
        if self._tool is None:
            sys.settrace(self._trace)

    def stop_thread(self) -> None:
        self._local.rng = None
        if self._tool is None:
            sys.settrace(None)

    def _maybe_switch(self) -> None:
        rng = getattr(self._local, "rng", None)
        if rng is not None and rng.random() < self.probability:
            self.switches += 1  # a racy count is good enough for a report
            time.sleep(0)  # noqa: TID251  (releases the GIL: the forced switch itself, not a wait)

    def _on_instruction(self, code: object, offset: int) -> None:
        self._maybe_switch()

    def _trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if event == "call":
            frame.f_trace_opcodes = True
            return self._trace
        if event == "opcode":
            self._maybe_switch()
        return self._trace


class _Installed:
    def __init__(self, chaos: _Chaos) -> None:
        self._chaos = chaos
        self._interval: SwitchIntervalHold | None = None

    def __enter__(self) -> None:
        self._chaos.install()
        self._interval = lower_switch_interval(_CHAOS_SWITCH_INTERVAL)

    def __exit__(self, *exc: object) -> None:
        if self._interval is not None:
            self._interval.release()  # back as it was, once no other run holds it lowered
            self._interval = None
        self._chaos.uninstall()


class _Scope:
    def __init__(self, chaos: _Chaos, rng: random.Random) -> None:
        self._chaos = chaos
        self._rng = rng
        self._trace = sys.gettrace()

    def __enter__(self) -> None:
        self._chaos.start_thread(self._rng)

    def __exit__(self, *exc: object) -> None:
        self._chaos.stop_thread()
        if self._chaos.method == "sys.settrace":
            sys.settrace(self._trace)
