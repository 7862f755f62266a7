"""Work for the cluster backends' tests (Dask, Ray): importable by their
worker processes, which load functions by module and name."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path


def square(x: int) -> int:
    return x * x


def fail_on_3(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"three: {x}")
    return x


def slow_on_2(x: int) -> int:
    if x == 2:
        threading.Event().wait(20)
    return x


class Stalls:
    """Notes each run of an item in ``directory/runs``; the items in ``stall``
    wait (as their own work, 30 s at most) on their first ``stalls`` runs."""

    def __init__(self, directory: Path, stall: set[int], stalls: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = str(directory)
        self.stall = stall
        self.stalls = stalls

    def __call__(self, x: int) -> int:
        path = os.path.join(self.directory, "runs")
        with open(path, "a") as f:
            f.write(f"{x}\n")
        if x in self.stall:
            with open(path) as f:
                runs = [int(line) for line in f].count(x)
            if runs <= self.stalls:
                threading.Event().wait(30)  # the workload waiting: past any task_timeout of the tests
        return x


def runs_of(directory: Path) -> Counter[int]:
    """How many times each item ran (see ``Stalls``)."""
    path = directory / "runs"
    return Counter(int(line) for line in path.read_text().splitlines()) if path.exists() else Counter()
