"""``parcelout demo``: three kinds of work on the three kinds of worker, then
a journaled run stopped part-way and resumed.

Each workload runs a few hundred items through ``parcelout.map`` on serial,
thread and process workers, with a progress bar, and the table shows the
time each took and its speedup over serial: threads win where the work
waits or releases the GIL, processes where it is pure Python. The resume
step counts, item by item, what ran in each part of the journaled run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
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


class Counted:
    """``pure_python`` that also notes each item it runs in a file (from any
    worker process), so the demo can show what ran."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __call__(self, x: int) -> int:
        with open(self.log, "a") as f:
            f.write(f"{x}\n")
        return pure_python(x)


def resume(out: TextIO = sys.stdout, scale: float = 1.0, progress: bool = True) -> tuple[Counter[int], Counter[int]]:
    """A journaled run stopped part-way, then resumed; print what ran in each
    part and return the two counts of runs per item."""
    n = max(20, int(300 * scale))
    stop_at = n * 2 // 5
    expected = [pure_python(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        journal, first_log, second_log = (os.path.join(tmp, name) for name in ("run.db", "first", "second"))
        stream = parcelout.imap(Counted(first_log), range(n), backend="process", journal=journal, progress=progress)
        seen = [next(stream) for _ in range(stop_at)]
        stream.close()  # as Ctrl-C or a kill would: what was yielded is in the journal
        done_at_stop = parcelout.read_summary(journal).done
        results = parcelout.map(Counted(second_log), range(n), backend="process", journal=journal, progress=progress)
        first, second = _runs(first_log), _runs(second_log)
    if seen != expected[:stop_at] or results != expected:
        raise AssertionError("resume: wrong results")
    twice = sorted(set(first) & set(second))
    print(
        f"\nResume: a journaled run of {n} items, stopped after yielding {stop_at} results"
        f" ({done_at_stop} were recorded done).\n"
        f"  first part ran {len(first)} items; the resumed run ran {len(second)} and took"
        f" {n - len(second)} from the journal.\n"
        f"  {len(results)} results, all correct; items run in both parts: {len(twice)}"
        f" (in flight at the stop, never one the caller had seen).",
        file=out,
    )
    return first, second


def _runs(log: str) -> Counter[int]:
    if not os.path.exists(log):
        return Counter()
    with open(log) as f:
        return Counter(int(line) for line in f)


def run(out: TextIO = sys.stdout, scale: float = 1.0, progress: bool = True) -> list[tuple[str, str, float]]:
    """Run every workload on every backend; print and return the timings;
    then the resume step."""
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
    resume(out, scale, progress)
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
