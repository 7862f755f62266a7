"""``parcelout demo``: three kinds of work on the three kinds of worker.

Each workload runs a few hundred items through ``parcelout.map`` on serial,
thread and process workers, with a progress bar, and the table shows the
time each took and its speedup over serial: threads win where the work
waits or releases the GIL, processes where it is pure Python.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import parcelout

_BUFFER = b"\x5a" * (1 << 20)


def pure_python(x: int) -> int:
    """About 2 ms of pure-Python arithmetic: holds the GIL."""
    total = 0
    for i in range(50_000):
        total += (i * x) % 7
    return total


def gil_releasing(x: int) -> int:
    """SHA-256 over 2 MiB: hashlib releases the GIL for large buffers."""
    digest = hashlib.sha256()
    for _ in range(2):
        digest.update(_BUFFER)
    return digest.digest()[x % 32]


def waiting(x: int) -> int:
    """10 ms of waiting, as for a network reply."""
    time.sleep(0.01)
    return x


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[int], Any]
    items: int
    thread_workers: int | None = None


WORKLOADS = (
    Workload("pure-Python CPU", pure_python, 300),
    Workload("GIL-releasing (hashlib)", gil_releasing, 300),
    Workload("waiting (sleep 10 ms)", waiting, 200, thread_workers=32),
)
BACKENDS = ("serial", "thread", "process")


def run(out: TextIO = sys.stdout, scale: float = 1.0, progress: bool = True) -> list[tuple[str, str, float]]:
    """Run every workload on every backend; print and return the timings."""
    rows: list[tuple[str, str, float]] = []
    for workload in WORKLOADS:
        n = max(4, int(workload.items * scale))
        expected = [workload.fn(i) for i in range(min(n, 4))]
        for backend in BACKENDS:
            workers = workload.thread_workers if backend == "thread" else None
            start = time.perf_counter()
            results = parcelout.map(workload.fn, range(n), backend=backend, workers=workers, progress=progress)
            elapsed = time.perf_counter() - start
            if results[: len(expected)] != expected or len(results) != n:
                raise AssertionError(f"{workload.name} on {backend}: wrong results")
            rows.append((workload.name, backend, elapsed))
    print(table(rows), file=out)
    return rows


def table(rows: list[tuple[str, str, float]]) -> str:
    serial = {name: t for name, backend, t in rows if backend == "serial"}
    lines = [
        f"{'workload':26} {'backend':8} {'seconds':>8} {'vs serial':>10}",
        "-" * 55,
    ]
    for name, backend, t in rows:
        lines.append(f"{name:26} {backend:8} {t:8.3f} {serial[name] / t:9.2f}x")
    return "\n".join(lines)
