"""What the fault tests run in their workers.

Module-level, so that process workers import it by reference, and light: it
imports the standard library, parcelout and ``tests/faults.py`` (not pytest),
because every worker a test starts (a recycling test starts dozens) imports
it afresh.

Items that must wait for the test block on an event nobody sets, bounded by
``BLOCK``, so a test that fails never hangs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import resource
import signal
import sys
import threading
from pathlib import Path

import parcelout
from tests import faults
from tests.faults import UnpicklesBadly

BLOCK = 10.0  # seconds an item waits to be killed before it gives up
INNER = 5  # items of each nested map


def index_and_pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


# ---------------------------------------------------------------- deaths


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _exhaust_memory() -> None:
    """Allocate far past a lowered address-space limit: MemoryError. The limit
    is put back before the error leaves, so the worker can report it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (in_use + 256 * 2**20, hard))
    try:
        bytearray(4 * 2**30)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def die(how: str) -> None:
    if how == "os._exit(7)":
        os._exit(7)
    elif how == "SIGKILL itself":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        _no_core_dump()
        ctypes.string_at(0)
    elif how == "abort":
        _no_core_dump()
        os.abort()
    elif how == "MemoryError":
        _exhaust_memory()
    elif how == "sys.exit(7)":
        sys.exit(7)
    threading.Event().wait(BLOCK)  # survived: wait, so that the test fails plainly


def exit_7(x: int) -> int:
    os._exit(7)


def die_on(culprit: int, how: str, x: int) -> int:
    if x == culprit:
        die(how)
    return 2 * x


def announce_then_block(directory: str, culprit: int, x: int) -> int:
    """The culprit writes its pid where the test looks, then waits to be killed."""
    if x == culprit:
        _write_pid(directory, "pid")
        threading.Event().wait(BLOCK)
    return 2 * x


def _write_pid(directory: str, name: str) -> None:
    temporary = Path(directory, f"{name}.{os.getpid()}.tmp")
    temporary.write_text(str(os.getpid()))
    temporary.replace(Path(directory, name))  # atomic: the test never reads half a pid


def _first_time(directory: str, name: str) -> bool:
    """True the first time any process asks, in this directory."""
    try:
        os.close(os.open(Path(directory, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def deaths(directory: str) -> int:
    return sum(1 for p in Path(directory).iterdir() if p.name.startswith("death-"))


def _maybe_die(directory: str, times: int) -> None:
    """SIGKILL this worker, unless ``times`` workers died here already (the
    deaths are counted in ``directory``)."""
    died = deaths(directory)
    if died < times and _first_time(directory, f"death-{died}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _die_then_be(directory: str, times: int, value: int) -> int:
    _maybe_die(directory, times)
    return value


class DiesWhilePickled:
    """A result that kills its worker while the worker pickles it to send it
    back: after the item returned, before the parent has it. It kills at most
    ``times`` workers; after that it pickles as the int ``value``."""

    def __init__(self, directory: str, value: int, times: int) -> None:
        self.directory = directory
        self.value = value
        self.times = times

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        _maybe_die(self.directory, self.times)
        return (int, (self.value,))


def result_dies_while_pickled(directory: str, culprit: int, times: int, x: int) -> object:
    if x == culprit:
        return DiesWhilePickled(directory, 2 * x, times)
    return 2 * x


class DiesWhenUnpickled:
    """An item that kills the worker unpickling it, before any item of its
    batch runs. It kills at most ``times`` workers; after that it unpickles
    as the int ``value``."""

    def __init__(self, directory: str, value: int, times: int) -> None:
        self.directory = directory
        self.value = value
        self.times = times

    def __reduce__(self) -> tuple[object, tuple[str, int, int]]:
        return (_die_then_be, (self.directory, self.times, self.value))

    def __repr__(self) -> str:
        return f"DiesWhenUnpickled({self.value})"


class BlocksWhilePickled:
    """A result whose pickling, the first time, writes the worker's pid and
    blocks, so that the test kills the worker while it is sending."""

    def __init__(self, directory: str, value: int) -> None:
        self.directory = directory
        self.value = value

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        if _first_time(self.directory, "blocked"):
            _write_pid(self.directory, "pid")
            threading.Event().wait(BLOCK)
        return (int, (self.value,))


def result_blocks_while_pickled(directory: str, culprit: int, x: int) -> object:
    if x == culprit:
        return BlocksWhilePickled(directory, 2 * x)
    return 2 * x


def huge_result_killed_mid_send(directory: str, culprit: int, x: int) -> object:
    """The culprit returns 64 MiB and, the first time, a thread of its worker
    kills the worker as the result is being pickled and sent."""
    if x != culprit:
        return (x, b"")
    if _first_time(directory, "armed"):
        return (x, KillSoon(), bytes(64 * 2**20))
    return (x, bytes(64 * 2**20))


def _kill_me_soon(directory: str | None = None) -> None:
    if directory is not None:
        _write_pid(directory, "pid")
    threading.Event().wait(0.005)  # a moment: lands during whatever the worker does next
    os.kill(os.getpid(), signal.SIGKILL)


class KillSoon:
    """Pickling it starts a thread that kills the worker a moment later."""

    def __reduce__(self) -> tuple[type[KillSoon], tuple[()]]:
        threading.Thread(target=_kill_me_soon, daemon=True).start()
        return (KillSoon, ())


def kill_after_returning(directory: str, culprit: int, x: int) -> tuple[int, int]:
    """The first run of the culprit leaves a thread that kills its worker just
    after the item returned (while the worker sends, idles or runs the next)."""
    if x == culprit and _first_time(directory, "armed"):
        threading.Thread(target=_kill_me_soon, args=(directory,), daemon=True).start()
    return x, os.getpid()


# ---------------------------------------------------------------- nested maps


def parcelout_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("parcelout") and t.is_alive()]


def nested_map(backend: str, x: int) -> tuple[list[int], list[str], list[int]]:
    """A map inside a worker: its results, and what it left once it returned:
    the parcelout threads and the processes below this one (in a process
    worker there must be none of either)."""
    values = parcelout.map(faults.double, range(x, x + INNER), backend=backend, workers=2, chunksize=2)
    return values, parcelout_threads(), live_descendants()


def _helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers: the fork server, the resource tracker."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    return {pid for pid in pids if pid is not None}


def live_descendants() -> list[int]:
    """The pids of every process below this one that is not one of
    multiprocessing's own helpers and has not exited, the fork server's
    children included."""
    import psutil  # here: most workers never need it

    helpers = _helper_pids()
    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.pid not in helpers and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# ---------------------------------------------------------------- values in transit


def unpickles_badly_on_3(x: int) -> object:
    """A result that pickles in the worker but fails to unpickle in the parent, for item 3."""
    if x == 3:
        return UnpicklesBadly(f"result of {x}")
    return 2 * x


def blob(seed: int, size: int) -> bytes:
    """``size`` bytes that differ at every position and from seed to seed."""
    return random.Random(seed).randbytes(size)


def big_result(size: int, x: int) -> tuple[int, bytes]:
    return x, blob(x, size)


def digest_of(item: tuple[int, bytes]) -> tuple[int, int, str]:
    index, data = item
    return index, len(data), hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- many faults in one run


class Boom(Exception):
    """What a ``raise`` item raises."""


def behave(item: tuple[int, str]) -> tuple[int, object]:
    """Act out the item's part: ``ok`` gives ``(index, 2 * index)``, ``raise``
    raises, ``crash`` kills the worker, ``unpicklable`` returns a lock (which
    cannot travel back from a process worker)."""
    index, how = item
    if how == "raise":
        raise Boom(index)
    if how == "crash":
        os._exit(7)
    if how == "unpicklable":
        return index, threading.Lock()
    return index, 2 * index
