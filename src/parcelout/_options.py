"""The options of a run, declared once, and checked in one place: every
public entry point validates here, at the call, so a bad option fails before
any worker starts.

``Options`` names each option a run takes and its type; ``DEFAULTS`` gives
each its default. The one-shot functions, ``Pool.imap``, ``explain`` and the
command line take them as keyword arguments typed by ``Options``
(``**options: Unpack[Options]``), so a type checker catches a misspelt
option, and ``configure`` turns them into what the parts use: the pool's
make-up (``PoolOptions``), the failure policy (``Policy``) and the run's
shape (``RunOptions``). ``tests/test_options.py`` checks that every entry
point takes exactly these.
"""

from __future__ import annotations

import difflib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from parcelout._core._messages import DEFAULT_POLICY, Policy

if TYPE_CHECKING:
    from parcelout._core._engine import BackendFactory
    from parcelout._journal import Journal

OnError = Literal["raise", "return", "skip"]
BACKEND_NAMES = ("auto", "serial", "thread", "process", "interpreter", "dask", "ray")
CLUSTER_BACKENDS = ("dask", "ray")
START_METHODS = ("fork", "forkserver", "spawn")


def default_start_method() -> str:
    """parcelout's start method for process workers: forkserver where there
    is one, else spawn. Not fork: the parent runs threads (the dispatcher,
    the reader), and forking a process with threads can deadlock the child."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


ProgressSpec = bool | Callable[[int, int | None], object] | Mapping[str, Any]
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], object]
POLICY_OPTION_NAMES = ("task_timeout", "retries", "retry_on", "backoff", "max_crashes")  # make_policy's


class RunArgs(TypedDict, total=False):
    """The keyword options of one run over a pool (``on_error`` aside, which
    decides the type of the results): ``Pool.imap`` takes these."""

    chunksize: int | None
    window: int | None
    progress: ProgressSpec
    task_timeout: float | None
    timeout: float | None  # deprecated: the old name of task_timeout
    retries: int
    retry_on: RetryOn | None
    backoff: float
    max_crashes: int
    journal: str | os.PathLike[str] | Journal | None
    key: Callable[[Any], str | int] | None
    retry_failed: bool


class Options(RunArgs, total=False):
    """Every keyword option of a run and of the pool it makes: ``imap``,
    ``imap_unordered``, ``map``, ``starmap`` and ``explain`` take these.
    Defaults: ``DEFAULTS``."""

    workers: int | None
    max_workers: int | None  # the standard library's name for workers
    backend: str | BackendFactory
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    start_method: str | None
    max_tasks_per_worker: int | None
    client: Any
    address: str | None


DEFAULTS: dict[str, Any] = {
    "workers": None,
    "max_workers": None,
    "backend": "auto",
    "chunksize": None,
    "window": None,
    "initializer": None,
    "initargs": (),
    "progress": False,
    "start_method": None,
    "max_tasks_per_worker": None,
    "task_timeout": None,
    "timeout": None,
    "retries": 0,
    "retry_on": None,
    "backoff": 0.0,
    "max_crashes": DEFAULT_POLICY.max_crashes,
    "journal": None,
    "key": None,
    "retry_failed": False,
    "client": None,
    "address": None,
}
RUN_NAMES = tuple(RunArgs.__annotations__)  # what Pool.imap takes (the pool fixes the others)
TIMEOUT_NAMES = ("task_timeout", "timeout")


def checked(
    where: str, options: Mapping[str, Any], allowed: tuple[str, ...] | None = None, *, defaults: bool = True
) -> dict[str, Any]:
    """``options`` with the defaults filled in (unless not ``defaults``), once
    every name is known (``allowed``, by default every option's): an unknown
    one is a ``TypeError`` naming ``where`` (the public function) and the
    nearest option. ``timeout``, the old name of ``task_timeout``, still
    works, with a ``DeprecationWarning``; ``max_workers`` is ``workers``."""
    names = tuple(DEFAULTS) if allowed is None else allowed
    for name in options:
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
    values = ({name: DEFAULTS[name] for name in names} if defaults else {}) | dict(options)
    if values.get("timeout") is not None:
        if values.get("task_timeout") is not None:
            raise TypeError(f"{where}(): give task_timeout, not both it and timeout (its old name)")
        warnings.warn(
            f"{where}(timeout=) is now spelt task_timeout= (timeout keeps the standard library's meaning "
            "of a bound on waiting, as in Pool.map); timeout= will stop working in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        values["task_timeout"] = values["timeout"]
    values.pop("timeout", None)
    if values.get("max_workers") is not None:
        if values.get("workers") is not None:
            raise TypeError(f"{where}(): give workers or max_workers (the standard library's name), not both")
        values["workers"] = values["max_workers"]
    values.pop("max_workers", None)
    return values


def usable_cpus() -> int:
    """CPUs this process may use: those its CPU affinity allows, and no more
    than its cgroup's CPU quota (a container limited to 2 CPUs on a 64-core
    host gets 2)."""
    if hasattr(os, "process_cpu_count"):
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        n = os.cpu_count()
    quota = _cached_quota()
    return max(1, min(n or 1, quota if quota is not None else n or 1))


_quota_read: tuple[float, int | None] = (-math.inf, None)  # (when, what) the cgroup quota was last read
QUOTA_SECONDS = 1.0  # how long a reading of the quota holds (reading it takes ~50 us of file I/O)


def _cached_quota() -> int | None:
    """``cgroup_cpu_quota()``, read again at most once a second: every run
    asks, and a container's quota changes rarely."""
    global _quota_read
    when, quota = _quota_read
    now = time.monotonic()
    if now - when > QUOTA_SECONDS:
        quota = cgroup_cpu_quota()
        _quota_read = (now, quota)
    return quota


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """The CPUs the cgroup quota allows this process (rounded up), the least
    of its cgroup's and its ancestors'; None if no quota is set or known.

    cgroup v2: ``cpu.max`` ("max 100000" or "200000 100000"); v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none).
    """
    try:
        with open(membership) as lines:
            groups = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    limits: list[int] = []
    for _, controllers, path in (g for g in groups if len(g) == 3):
        if controllers == "":
            limits.extend(_quotas(root, path, _v2_quota))
        elif "cpu" in controllers.split(","):
            limits.extend(_quotas(os.path.join(root, "cpu"), path, _v1_quota))
            limits.extend(_quotas(os.path.join(root, controllers), path, _v1_quota))
    return min(limits, default=None)


def _quotas(base: str, path: str, read: Callable[[str], int | None]) -> list[int]:
    """The quotas set in ``base`` + ``path`` and each folder above it."""
    found = []
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts), -1, -1):
        quota = read(os.path.join(base, *parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(folder: str) -> int | None:
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _v1_quota(folder: str) -> int | None:
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as q, open(os.path.join(folder, "cpu.cfs_period_us")) as p:
            quota, period = int(q.read()), int(p.read())
        return None if quota <= 0 or period <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def positive_int(value: object, name: str, *, message: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(message or f"{name} must be greater than 0")
    return value


def make_policy(
    task_timeout: float | None = None,
    retries: int = 0,
    retry_on: RetryOn | None = None,
    backoff: float = 0.0,
    max_crashes: int = DEFAULT_POLICY.max_crashes,
) -> Policy:
    """The failure policy these options describe, checked."""
    defaults = (task_timeout, retries, retry_on, backoff, max_crashes)
    if defaults == (None, 0, None, 0.0, DEFAULT_POLICY.max_crashes) and bool not in map(type, defaults):
        return DEFAULT_POLICY  # the common case, at no cost (False and True compare equal to 0 and 1)
    if task_timeout is not None:
        if isinstance(task_timeout, bool) or not isinstance(task_timeout, int | float):
            raise TypeError(f"task_timeout must be a number of seconds or None, not {type(task_timeout).__name__}")
        if not task_timeout > 0 or math.isinf(task_timeout):
            raise ValueError(f"task_timeout must be a positive, finite number of seconds, not {task_timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or not 0 <= backoff < math.inf:
        raise ValueError(f"backoff must be a non-negative number of seconds, not {backoff!r}")
    positive_int(max_crashes, "max_crashes")
    return Policy(task_timeout, retries, _retry_predicate(retry_on), float(backoff), max_crashes)


def _retry_predicate(retry_on: RetryOn | None) -> Callable[[BaseException], bool]:
    """``retry_on`` as a predicate: exception types match by ``isinstance``;
    None retries every failure."""
    if retry_on is None:
        return DEFAULT_POLICY.retry_on
    candidates = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    types = tuple(t for t in candidates if isinstance(t, type) and issubclass(t, BaseException))
    if len(types) == len(candidates):
        return lambda error: isinstance(error, types)
    if callable(retry_on) and not isinstance(retry_on, tuple):
        predicate = retry_on
        return lambda error: bool(predicate(error))
    raise TypeError(f"retry_on must be an exception type, a tuple of them, or a predicate, not {retry_on!r}")


@dataclass(frozen=True)
class RunOptions:
    """How one map runs: batching, the in-flight window, errors, progress, and
    what happens to an item that fails or runs too long (``policy``)."""

    chunksize: int | None = None
    window: int | None = None
    on_error: OnError = "raise"
    progress: ProgressSpec = False
    policy: Policy = DEFAULT_POLICY
    journal: Any = None  # a parcelout.Journal
    key: Callable[[Any], Any] | None = None
    retry_failed: bool = False
    # The caller keeps every result (``map``): the window bounds the items out
    # at the workers, not those done and waiting for an earlier one.
    keeps_results: bool = False

    def __post_init__(self) -> None:
        if self.chunksize is not None:
            positive_int(self.chunksize, "chunksize")
        if self.window is not None:
            positive_int(self.window, "window")
        if self.on_error not in ("raise", "return", "skip"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'skip', not {self.on_error!r}")
        if isinstance(self.progress, Mapping):
            if not all(isinstance(name, str) for name in self.progress):
                raise TypeError("progress's options must be named by strings (tqdm's keyword arguments)")
        elif not isinstance(self.progress, bool) and not callable(self.progress):
            kind = type(self.progress).__name__
            raise TypeError(f"progress must be True, False, a dict of tqdm's options or a callable, not {kind}")
        if self.key is not None and not callable(self.key):
            raise TypeError(f"key must be a callable (item -> str or int), not {type(self.key).__name__}")
        if (self.key is not None or self.retry_failed) and self.journal is None:
            raise ValueError("key and retry_failed apply to a journal: pass journal= too")


@dataclass(frozen=True)
class PoolOptions:
    """What a pool is made of: its backend, size and worker set-up."""

    workers: int | None = None
    backend: Any = "auto"
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    start_method: str | None = None
    mp_context: Any = None
    max_tasks_per_worker: int | None = None
    thread_name_prefix: str = ""
    workers_name: str = "workers"
    client: Any = None  # a cluster engine's client (backend="dask")
    address: str | None = None  # or where its scheduler listens

    def __post_init__(self) -> None:
        if self.workers is not None:
            name = self.workers_name
            positive_int(self.workers, name, message=f"{name} must be greater than 0")
        if isinstance(self.backend, str):
            if self.backend not in BACKEND_NAMES:
                raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, not {self.backend!r}")
        elif not callable(self.backend):
            raise TypeError(f"backend must be a name or a backend factory, not {type(self.backend).__name__}")
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(self.initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(self.initargs).__name__}")
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, not {self.start_method!r}")
        if self.max_tasks_per_worker is not None:
            positive_int(self.max_tasks_per_worker, "max_tasks_per_worker", message="max_tasks_per_child must be >= 1")
        if (self.client is not None or self.address is not None) and self.backend not in CLUSTER_BACKENDS:
            raise ValueError(f"client and address are for a cluster backend ({', '.join(CLUSTER_BACKENDS)})")
        if self.client is not None and self.address is not None:
            raise ValueError("give client or address, not both")
        if self.address is not None and not isinstance(self.address, str):
            raise TypeError(f"address must be a string such as 'tcp://host:8786', not {type(self.address).__name__}")

    @property
    def kind(self) -> str:
        """serial, thread, process, interpreter, dask, ray, or custom (a backend factory)."""
        if not isinstance(self.backend, str):
            return "custom"
        return "process" if self.backend == "auto" else self.backend

    @property
    def size(self) -> int:
        if self.workers is not None:
            return self.workers
        if self.kind == "serial":
            return 1
        if self.kind == "thread":
            return min(32, usable_cpus() + 4)  # as ThreadPoolExecutor: waiting work wants more
        return usable_cpus()
