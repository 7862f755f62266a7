"""parcelout on Dask against plain ``client.map`` on the same LocalCluster.

Two workloads: tiny items (``x * x``) and 10 ms items (a sleep). Each
configuration runs in turn, several rounds interleaved, on one cluster of
worker processes started once; it prints the median times and the ratio
parcelout / client.map. Usage::

    .venv/bin/python benchmarks/dask_vs_client_map.py [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import distributed

import parcelout


def tiny(x: int) -> int:
    return x * x


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


def client_map(client: Any, fn: Callable[[int], int], items: range) -> list[int]:
    futures = client.map(fn, items, pure=False)
    results: list[int] = client.gather(futures)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", type=int, default=20_000)
    parser.add_argument("--slow", type=int, default=400)
    args = parser.parse_args()
    workloads = {"tiny": (tiny, range(args.tiny)), "10 ms": (ten_ms, range(args.slow))}
    with (
        distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, (fn, items) in workloads.items():
                expected = [fn(x) for x in items[:3]]
                runners: dict[str, Callable[[], list[int]]] = {
                    "client.map": lambda fn=fn, items=items: client_map(client, fn, items),
                    "parcelout": lambda fn=fn, items=items: parcelout.map(fn, items, backend="dask", client=client),
                }
                for how, run in runners.items():
                    start = time.perf_counter()
                    out = run()
                    times.setdefault((name, how), []).append(time.perf_counter() - start)
                    assert out[:3] == expected and len(out) == len(items)
    print(f"LocalCluster of {args.workers} worker processes x 1 thread; medians of {args.rounds} rounds")
    print("| workload | items | client.map s | parcelout s | parcelout / client.map |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, items) in workloads.items():
        plain, ours = (statistics.median(times[name, how]) for how in ("client.map", "parcelout"))
        print(f"| {name} | {len(items)} | {plain:.3f} | {ours:.3f} | {ours / plain:.3f}x |")


if __name__ == "__main__":
    main()
