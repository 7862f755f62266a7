"""The Python FAQ's table of atomic operations, measured with parcelout.stress.

Runs each scenario of ``tests/faq_ops.py`` ``--runs`` times (fresh random
seeds, at most ``--rounds`` rounds of 4 threads each) and prints, as a
Markdown table, what the FAQ says, in how many runs a race was seen, after
how many rounds and seconds (medians), and the rounds per second of
``stress`` next to plain threads doing the same rounds (its overhead).
Usage::

    .venv/bin/python benchmarks/faq_table.py [--runs 20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.faq_ops

from tests.faq_ops import SCENARIOS, THREADS, Scenario

from parcelout import RaceDetected, stress


def plain_rounds_per_second(scenario: Scenario, rounds: int) -> float:
    """The same rounds on plain threads (no forced switches): the baseline."""
    start = time.perf_counter()
    for _ in range(rounds):
        state = scenario.setup()
        barrier = threading.Barrier(THREADS)

        def body(state: object = state, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            scenario.fn(state)

        workers = [threading.Thread(target=body) for _ in range(THREADS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        scenario.check(state)
    return rounds / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"Python {platform.python_version()} ({sys.implementation.name}), {THREADS} threads, ", end="")
    print(f"{args.runs} runs of at most {args.rounds} rounds each")
    print()
    print(
        "| operation | FAQ says | what the threads do | runs with a race | to the race: rounds, seconds "
        "| stress rounds/s | plain threads rounds/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        raced: list[int] = []
        seconds: list[float] = []
        rates: list[float] = []
        for _ in range(args.runs):
            seed = random.randrange(2**32)
            start = time.perf_counter()
            try:
                report = stress(
                    scenario.fn,
                    threads=THREADS,
                    rounds=args.rounds,
                    setup=scenario.setup,
                    check=scenario.check,
                    seed=seed,
                )
            except RaceDetected as race:
                raced.append(race.round + 1)
                seconds.append(time.perf_counter() - start)
            else:
                rates.append(report.rounds_per_second)
        says = "atomic" if scenario.atomic else "not atomic"
        when = f"{statistics.median(raced):g}, {statistics.median(seconds):.3f} s" if raced else "-"
        rate = f"{statistics.median(rates):.0f}" if rates else "-"
        plain = f"{plain_rounds_per_second(scenario, args.rounds):.0f}"
        print(
            f"| `{scenario.operation}` | {says} | {scenario.how} | {len(raced)} of {args.runs} | {when} "
            f"| {rate} | {plain} |"
        )


if __name__ == "__main__":
    main()
