"""The records that travel along the data flow, and the transport interface.

A ``Batch`` is the unit the scheduler hands to a worker: a ``Call`` (the
function and how to apply it) and a list of ``(index, item)`` pairs. A
worker answers with a ``BatchResult``: one value per item, and the
exceptions of the items that failed, by position in the batch.

Events go into the scheduler and instructions come out of it (see
``_scheduler``). They are small frozen records with names that say what they
carry. This module holds data only: no threads, no I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any, Protocol

_tokens = itertools.count()


@dataclass(eq=False)
class Call:
    """A function and the way it is applied to each item.

    ``star`` False: ``fn(item)``. ``star`` True: each item is an
    ``(args, kwargs)`` pair and the call is ``fn(*args, **kwargs)``.
    ``token`` names the function across batches, so that a worker process
    unpickles it once; ``payload`` caches its pickled form (set by the
    transport that needs it).
    """

    fn: Callable[..., Any]
    star: bool = False
    token: int = field(default_factory=lambda: next(_tokens))
    payload: bytes | BaseException | None = None


def _retry_any(error: BaseException) -> bool:
    """Every failure but an exit request (``SystemExit``, ``KeyboardInterrupt``)."""
    return isinstance(error, Exception)


@dataclass(frozen=True)
class Policy:
    """What happens to an item that fails or runs too long.

    ``timeout``: seconds an item may run before its worker is stopped and the
    item fails with ``TaskTimeout`` (None: no limit). ``retries``: how many
    more times a failed item runs, when ``retry_on(error)`` is true, after
    ``backoff * 2 ** (attempt - 1)`` seconds. ``max_crashes``: an item under
    which this many workers died fails for good, whatever ``retries`` says.
    """

    timeout: float | None = None
    retries: int = 0
    retry_on: Callable[[BaseException], bool] = _retry_any
    backoff: float = 0.0
    max_crashes: int = 3

    def retries_after(self, attempt: int, error: BaseException) -> bool:
        """Whether an item that failed with ``error`` on run ``attempt`` runs
        again (a ``retry_on`` that raises says no; a cancellation never)."""
        if attempt > self.retries or isinstance(error, CancelledError):
            return False
        try:
            return bool(self.retry_on(error))
        except Exception:
            return False

    def backoff_before(self, attempt: int) -> float:
        """Seconds to wait before the run after run ``attempt``."""
        return self.backoff * 2.0 ** (attempt - 1)


DEFAULT_POLICY = Policy()


@dataclass(eq=False)
class Batch:
    """Items to run on one worker, and where their outcomes go.

    ``sink`` receives the finished ``BatchResult``; ``try_start`` is asked once,
    just before the batch is sent, and a False answer drops it (a cancelled
    future); ``group`` lets one stream cancel all of its pending batches.
    ``cancelled`` is read by in-process workers between items. ``attempt``
    counts the runs of its items (a retry batch holds one item), ``crashes``
    the workers that died under them; ``avoid`` names the worker a retry
    should not go back to when another can take it. A ``queueable``
    batch may wait at a busy worker behind the one it runs (stream batches,
    sized to take a few milliseconds, so the round trip is hidden); any other
    batch waits in the pool's queue for an idle worker, so a quick task is
    never stranded behind a long one.
    """

    id: int
    call: Call
    items: list[tuple[int, Any]]
    sink: Callable[[BatchResult], None]
    group: int = 0
    try_start: Callable[[], bool] | None = None
    cancelled: bool = False
    queueable: bool = False
    policy: Policy = DEFAULT_POLICY
    attempt: int = 1
    crashes: int = 0
    avoid: int = -1

    def split(self, n: int, new_id: int) -> tuple[Batch, Batch]:
        """The first ``n`` items keep this batch's id; the rest get ``new_id``."""
        head = dataclasses.replace(self, items=self.items[:n], try_start=None)
        tail = dataclasses.replace(self, id=new_id, items=self.items[n:], try_start=None)
        return head, tail


@dataclass(eq=False)
class BatchResult:
    """What a worker reports for a batch.

    ``values[i]`` is the result of ``batch.items[i]`` unless ``i`` is a key of
    ``errors``, which maps positions to the exception that item raised.
    ``elapsed`` is the worker's time for the whole batch, in seconds.
    ``attempts`` maps positions whose run count differs from
    ``batch.attempt`` to theirs (items retried in place, inline).
    ``worker`` is the scheduler's number for the worker that ran it (None
    inline, or when no one worker did).
    """

    batch: Batch
    values: Sequence[Any]
    errors: dict[int, BaseException]
    elapsed: float = 0.0
    attempts: dict[int, int] = field(default_factory=dict)
    worker: int | None = None


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True)
class Submitted:
    batch: Batch


@dataclass(frozen=True, slots=True)
class CancelGroup:
    """Drop the pending batches of one stream (running ones finish)."""

    group: int


@dataclass(frozen=True, slots=True)
class BatchDone:
    worker: int
    batch_id: int
    values: Sequence[Any]
    errors: dict[int, BaseException]
    elapsed: float


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """A worker is gone, with ``exitcode`` as in ``Process.exitcode``.

    ``batch_id`` and ``position`` say which item it was running when it died
    (position -1: between items), as far as the transport knows. ``started``
    is False for a worker that died before it was ready to run anything.
    ``detail`` is what the transport knows of the death (its last standard
    error lines, its memory), for the crash report.
    """

    worker: int
    exitcode: int | None
    batch_id: int = -1
    position: int = -1
    started: bool = True
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ItemStarted:
    """A worker began the item at ``position`` of a batch (sent only for
    batches with a timeout)."""

    worker: int
    batch_id: int
    position: int


@dataclass(frozen=True, slots=True)
class Tick:
    """The time the scheduler asked to be woken at (``next_deadline``) has come."""


@dataclass(frozen=True, slots=True)
class InitFailed:
    worker: int
    error: BaseException


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop taking work. ``cancel``: drop pending batches. ``kill``: also stop
    the running ones now (their workers are killed)."""

    cancel: bool = False
    kill: bool = False


Event = Submitted | CancelGroup | BatchDone | ItemStarted | Tick | WorkerExited | InitFailed | Shutdown

# ---------------------------------------------------------------- instructions out


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker: int


@dataclass(frozen=True, slots=True)
class Send:
    worker: int
    batch: Batch


@dataclass(frozen=True, slots=True)
class Deliver:
    result: BatchResult


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Let the worker finish what it was sent, then exit."""

    worker: int


@dataclass(frozen=True, slots=True)
class KillWorker:
    """Stop the worker now. ``grace`` > 0: ask it to end (SIGTERM) and kill it
    if it has not after that many seconds. A thread cannot be killed: it
    takes nothing more and ends after its item."""

    worker: int
    grace: float = 0.0


Instruction = StartWorker | Send | Deliver | StopWorker | KillWorker

# ---------------------------------------------------------------- transport


class Backend(Protocol):
    """A transport: starts workers, runs batches, reports, kills, shuts down.

    It owns no policy. Every report goes through the ``report`` callable it
    was built with, as one of the events above (``BatchDone``,
    ``ItemStarted`` for batches with a timeout, ``WorkerExited``,
    ``InitFailed``), from any thread.
    """

    def start_worker(self, worker: int) -> None: ...

    def send(self, worker: int, batch: Batch) -> None: ...

    def stop_worker(self, worker: int) -> None: ...

    def kill_worker(self, worker: int, grace: float = 0.0) -> None: ...

    def close(self) -> None: ...
