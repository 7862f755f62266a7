"""Misbehaving objects and functions, as data.

Everything here is module-level so that process workers can import it by
reference (the test process pickles these by name, not by value).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

# ---------------------------------------------------------------- items


class PickleRefused(Exception):
    """What ``Unpicklable.__reduce__`` raises."""


class UnpickleRefused(Exception):
    """What loading an ``UnpicklesBadly`` raises."""


class Unpicklable:
    """An item that cannot be pickled: ``__reduce__`` raises."""

    def __init__(self, tag: str = "unpicklable") -> None:
        self.tag = tag

    def __reduce__(self) -> NoReturn:
        raise PickleRefused(f"{self.tag} refuses to be pickled")

    def __repr__(self) -> str:
        return f"Unpicklable({self.tag!r})"


def _refuse_to_unpickle(tag: str) -> NoReturn:
    raise UnpickleRefused(f"{tag} refuses to be unpickled")


class UnpicklesBadly:
    """An item that pickles, but raises when it is unpickled."""

    def __init__(self, tag: str = "unpickles-badly") -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Callable[[str], NoReturn], tuple[str]]:
        return (_refuse_to_unpickle, (self.tag,))

    def __repr__(self) -> str:
        return f"UnpicklesBadly({self.tag!r})"


# ---------------------------------------------------------------- exceptions


class TwoArgError(Exception):
    """``__init__`` takes two required arguments but passes one to ``super()``:
    it pickles, but unpickling calls ``TwoArgError(message)`` and fails. The
    standard library's process pool breaks or hangs on it."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class LockedError(Exception):
    """An exception holding an attribute that cannot be pickled (a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class InputBroke(Exception):
    """What a broken input generator raises."""


# ---------------------------------------------------------------- functions


def double(x: int) -> int:
    return 2 * x


def pid_of(x: int) -> int:
    """The worker's process id (which process ran the item)."""
    return os.getpid()


def explode_on_7(x: int) -> int:
    """Doubles, except item 7, which raises ``ValueError``."""
    if x == 7:
        raise ValueError(f"explode_on_7 got {x}")
    return 2 * x


def raise_two_arg_error_on_3(x: int) -> int:
    if x == 3:
        raise TwoArgError(42, f"two-arg failure on {x}")
    return 2 * x


def raise_locked_error_on_3(x: int) -> int:
    if x == 3:
        raise LockedError(f"locked failure on {x}")
    return 2 * x


def lock_result_on_3(x: int) -> object:
    """Returns an unpicklable result (a lock) for item 3, else ``2 * x``."""
    if x == 3:
        return threading.Lock()
    return 2 * x


def lambda_result_on_3(x: int) -> object:
    """Returns a local lambda (unpicklable by plain pickle) for item 3."""
    if x == 3:
        return lambda: x
    return 2 * x


def identity(x: object) -> object:
    return x


def hang_from_2(x: int) -> int:
    """Items below 2 return at once; the others block (for at most 30 s), so
    that a test can close the stream while workers are busy."""
    if x >= 2:
        threading.Event().wait(30)
    return x


def make_locked_closure() -> Callable[[int], int]:
    """A function that cannot be pickled: a closure over a lock."""
    lock = threading.Lock()

    def locked_double(x: int) -> int:
        with lock:
            return 2 * x

    return locked_double


class FailOn:
    """A picklable callable that raises ``ValueError`` on the chosen items and
    doubles the others."""

    def __init__(self, *bad: int) -> None:
        self.bad = frozenset(bad)

    def __call__(self, x: int) -> int:
        if x in self.bad:
            raise ValueError(f"FailOn rejects {x}")
        return 2 * x


# ---------------------------------------------------------------- inputs


def yields_then_raises(n: int, message: str = "input broke") -> Iterator[int]:
    """Yields ``0 .. n-1``, then raises ``InputBroke(message)``."""
    yield from range(n)
    raise InputBroke(message)


class Counting:
    """An endless input that counts how many items were taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[int]:
        while True:
            value = self.taken
            self.taken += 1
            yield value


# ---------------------------------------------------------------- process-level faults
# (Their imports are local: the lines above are not this section's to change.)


SLEEPERS: list[object] = []  # the grandchildren's Popen objects, kept so that none is collected while it runs


def start_sleeper(directory: str, x: int) -> None:
    """Start a grandchild (``sleep 60``) and write ``"<this pid> <its pid>"``
    to ``directory/pids-<x>`` (whole, by a rename)."""
    import subprocess
    from pathlib import Path

    sleeper = subprocess.Popen(["sleep", "60"])
    SLEEPERS.append(sleeper)
    path = Path(directory) / f"pids-{x}"
    path.with_suffix(".tmp").write_text(f"{os.getpid()} {sleeper.pid}")
    path.with_suffix(".tmp").rename(path)


def sleeper_then(directory: str, how: str, x: int) -> int:
    """Start a grandchild (see ``start_sleeper``), then return ``2 * x``
    (``"return"``), exit (``"exit"``), or block for at most 30 s, waiting on
    an event (``"block"``) or in C code that holds the GIL (``"hold-the-gil"``)."""
    start_sleeper(directory, x)
    if how == "exit":
        os._exit(7)
    if how == "block":
        threading.Event().wait(30)
    if how == "hold-the-gil":  # no other thread of this process runs meanwhile
        import ctypes

        ctypes.PyDLL(None).sleep(30)
    return 2 * x


def group_and_signals(x: int) -> tuple[bool, list[str]]:
    """Whether this process leads its own process group, and the signals of
    the terminal it ignores (of SIGINT, SIGTTOU, SIGTTIN)."""
    import signal

    ignored = [s.name for s in (signal.SIGINT, signal.SIGTTOU, signal.SIGTTIN) if signal.getsignal(s) == signal.SIG_IGN]
    return os.getpgrp() == os.getpid(), ignored


def say_on_stderr(x: int) -> int:
    import sys

    sys.stderr.write(f"item {x} says hello on stderr\n")
    sys.stderr.flush()
    return 2 * x


class ExitsWhenPickled:
    """A value whose ``__reduce__`` exits (raises ``SystemExit(1)``, as ``sys.exit(1)``)."""

    def __reduce__(self) -> NoReturn:
        raise SystemExit(1)


class ExitingError(Exception):
    """An exception whose ``__reduce__`` exits (raises ``SystemExit(1)``)."""

    def __reduce__(self) -> NoReturn:
        raise SystemExit(1)


def result_exits_when_pickled_on(culprit: int, x: int) -> object:
    return ExitsWhenPickled() if x == culprit else 2 * x


def raise_exiting_error_on(culprit: int, x: int) -> int:
    if x == culprit:
        raise ExitingError(f"exiting error on {x}")
    return 2 * x


def _exit(code: int) -> NoReturn:
    raise SystemExit(code)


class ExitsWhenUnpickled:
    """A function (doubles) that raises ``SystemExit(3)`` when it is unpickled."""

    def __call__(self, x: int) -> int:
        return 2 * x

    def __reduce__(self) -> tuple[Callable[[int], NoReturn], tuple[int]]:
        return (_exit, (3,))


def limit_address_space(headroom: int) -> None:
    """An initializer: this process may map only ``headroom`` bytes more."""
    import resource

    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (in_use + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))


def break_worker_receiving() -> None:
    """An initializer: the worker's receiving thread fails on its next message
    (reading its out-of-band buffers raises ``RuntimeError``)."""
    from parcelout.backends import _child

    def receive_buffers(*args: object) -> NoReturn:
        raise RuntimeError("injected: receiving is broken")

    vars(_child)["receive_buffers"] = receive_buffers
