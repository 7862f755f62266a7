"""parcelout: parcel out work to threads, processes, or the calling thread.

Every input item ends as exactly one result or one failure; nothing hangs and
no worker outlives its pool.
"""

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

__all__ = [
    "BrokenPool",
    "Failure",
    "Plan",
    "InitializerFailed",
    "Journal",
    "JournalError",
    "JournalSummary",
    "Measurements",
    "Options",
    "Pool",
    "ProcessPoolExecutor",
    "RaceDetected",
    "StressReport",
    "RemoteError",
    "RemoteTraceback",
    "RunArgs",
    "StartupFailed",
    "StoredOutcome",
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

for _name in (
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
):
    globals()[_name].__module__ = "parcelout"
del _name

__version__ = "0.1.0"
