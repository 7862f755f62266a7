"""Functions and objects for the audit's fault tests (``test_pool_faults``).

Module-level, so process workers import them by reference.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NoReturn


def square(x: int) -> int:
    return x * x


def wait_for(event: threading.Event) -> str:
    """Block (thread workers only) until the test sets ``event``; at most 30 s."""
    event.wait(30)
    return "released"


def _raise_system_exit() -> NoReturn:
    raise SystemExit(5)


class ExitsInTheParent:
    """Pickling it raises ``SystemExit``: in the parent, as an item is sent."""

    def __reduce__(self) -> NoReturn:
        raise SystemExit(4)


class ExitsWhenRebuilt:
    """Pickles, but rebuilding it raises ``SystemExit``: in the parent, as a result comes back."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_raise_system_exit, ())


def result_that_exits_when_rebuilt(x: int) -> object:
    return ExitsWhenRebuilt()


def die_the_first_time(marker: str) -> None:
    """An initializer: the first worker to run it dies at start-up; later ones start."""
    path = Path(marker)
    try:
        path.touch(exist_ok=False)
    except FileExistsError:
        return
    os._exit(3)


def wait_to_be_killed(directory: str, kills: int) -> None:
    """An initializer: the first ``kills`` workers write their pid to
    ``directory/starting-<n>`` and wait there (30 s at most) to be killed
    from outside; the worker after them starts."""
    folder = Path(directory)
    n = len(list(folder.glob("starting-*")))
    if n >= kills:
        return
    partial = folder / f"partial-{n}"
    partial.write_text(str(os.getpid()))
    partial.rename(folder / f"starting-{n}")
    threading.Event().wait(30)


def read_fifo(path: str) -> str:
    """Block until the test opens the FIFO at ``path`` and writes to it."""
    with open(path) as fifo:
        return fifo.read()


class Payload:
    """An argument or result whose lifetime a test follows with a weak reference."""

    def __init__(self, size: int = 1000) -> None:
        self.data = list(range(size))


def make_payload(x: int) -> Payload:
    return Payload(x)


def length(payload: Payload) -> int:
    return len(payload.data)


def say_ready(queue: object) -> None:
    """An initializer whose argument travels only as a worker starts (a
    multiprocessing Queue): it says the worker is ready."""
    queue.put(os.getpid())  # type: ignore[attr-defined]


def fail_and_log_to(queue: object) -> None:
    """An initializer that sends the ``concurrent.futures`` log to ``queue``, then fails."""
    import logging
    from logging.handlers import QueueHandler

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(QueueHandler(queue))  # type: ignore[arg-type]
    logger.propagate = False
    raise ValueError("error in initializer")
