"""parcelout: parcel out work to threads, processes, or the calling thread.

Every input item ends as exactly one result or one failure; nothing hangs and
no worker outlives its pool.

The names below are loaded when first used: a worker (a process, a
sub-interpreter) imports ``parcelout.backends._child`` or ``_base`` without
the whole library, which cuts its start-up by tens of milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parcelout import sync
    from parcelout._api import explain, imap, imap_unordered, map, starmap
    from parcelout._auto import Measurements, Plan
    from parcelout._executors import ProcessPoolExecutor, ThreadPoolExecutor
    from parcelout._failure import Failure
    from parcelout._journal import Journal, JournalSummary, StoredOutcome, read_outcomes, read_summary
    from parcelout._options import Options, RunArgs
    from parcelout._pool import Pool
    from parcelout._stress import RaceDetected, StressReport, stress
    from parcelout.errors import (
        BrokenPool,
        InitializerFailed,
        JournalError,
        RemoteError,
        RemoteTraceback,
        StartupFailed,
        TaskTimeout,
        TransferError,
        WorkerCrashed,
    )

# Each public name and the module it lives in.
_WHERE = {
    "explain": "parcelout._api",
    "imap": "parcelout._api",
    "imap_unordered": "parcelout._api",
    "map": "parcelout._api",
    "starmap": "parcelout._api",
    "Measurements": "parcelout._auto",
    "Plan": "parcelout._auto",
    "ProcessPoolExecutor": "parcelout._executors",
    "ThreadPoolExecutor": "parcelout._executors",
    "Failure": "parcelout._failure",
    "Journal": "parcelout._journal",
    "JournalSummary": "parcelout._journal",
    "StoredOutcome": "parcelout._journal",
    "read_outcomes": "parcelout._journal",
    "read_summary": "parcelout._journal",
    "Options": "parcelout._options",
    "RunArgs": "parcelout._options",
    "Pool": "parcelout._pool",
    "RaceDetected": "parcelout._stress",
    "StressReport": "parcelout._stress",
    "stress": "parcelout._stress",
    "BrokenPool": "parcelout.errors",
    "InitializerFailed": "parcelout.errors",
    "JournalError": "parcelout.errors",
    "RemoteError": "parcelout.errors",
    "RemoteTraceback": "parcelout.errors",
    "StartupFailed": "parcelout.errors",
    "TaskTimeout": "parcelout.errors",
    "TransferError": "parcelout.errors",
    "WorkerCrashed": "parcelout.errors",
}
_SUBMODULES = ("sync",)
# Shown as parcelout.X (in help(), reprs and tracebacks), where they are documented.
_SHOWN_HERE = {
    "imap",
    "imap_unordered",
    "map",
    "starmap",
    "explain",
    "Failure",
    "Journal",
    "Plan",
    "Pool",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "stress",
    "RaceDetected",
    "StressReport",
}

__all__ = [
    "BrokenPool",
    "Failure",
    "InitializerFailed",
    "Journal",
    "JournalError",
    "JournalSummary",
    "Measurements",
    "Options",
    "Plan",
    "Pool",
    "ProcessPoolExecutor",
    "RaceDetected",
    "RemoteError",
    "RemoteTraceback",
    "RunArgs",
    "StartupFailed",
    "StoredOutcome",
    "StressReport",
    "TaskTimeout",
    "ThreadPoolExecutor",
    "TransferError",
    "WorkerCrashed",
    "explain",
    "imap",
    "imap_unordered",
    "map",
    "read_outcomes",
    "read_summary",
    "starmap",
    "stress",
    "sync",
]
__version__ = "0.1.0"

if not TYPE_CHECKING:  # a type checker sees the imports above; at run time, each name is loaded when first used

    def __getattr__(name: str) -> Any:
        if name in _SUBMODULES:
            return importlib.import_module(f"parcelout.{name}")
        where = _WHERE.get(name)
        if where is None:
            raise AttributeError(f"module 'parcelout' has no attribute {name!r}")
        value = getattr(importlib.import_module(where), name)
        if name in _SHOWN_HERE:
            value.__module__ = "parcelout"
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
