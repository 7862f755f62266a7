"""Work for the cluster backends' tests (Dask, Ray): importable by their
worker processes, which load functions by module and name."""

from __future__ import annotations

import threading


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
