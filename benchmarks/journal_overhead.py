"""What a journal costs: 1 ms items with and without ``journal=``.

Runs each configuration in turn, several rounds interleaved so that a noisy
machine hits them alike, and prints the median time of each and the ratio to
the run without a journal. Usage::

    .venv/bin/python benchmarks/journal_overhead.py [--items 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import parcelout


def one_ms(x: int) -> int:
    """About a millisecond of pure-Python work."""
    total = 0
    for i in range(12_000):
        total += (i * x) % 7
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="process")
    args = parser.parse_args()
    items = range(args.items)
    start = time.perf_counter()
    one_ms(3)
    per_item = time.perf_counter() - start
    times: dict[str, list[float]] = {"no journal": [], "journal": [], "journal, durability=full": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, samples in times.items():
                path = Path(tmp) / f"{round_}-{len(samples)}-{name[:12].replace(' ', '_')}.db"
                journal = None
                if name != "no journal":
                    journal = parcelout.Journal(path, durability="full" if "full" in name else "normal")
                start = time.perf_counter()
                parcelout.map(one_ms, items, backend=args.backend, journal=journal)
                samples.append(time.perf_counter() - start)
    base = statistics.median(times["no journal"])
    print(f"{args.items} items of {per_item * 1e3:.2f} ms, backend={args.backend}, medians of {args.rounds} rounds")
    print("| run | median s | / no journal |")
    print("|---|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {median / base:.3f}x |")


if __name__ == "__main__":
    main()
