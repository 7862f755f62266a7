"""The exceptions parcelout raises, each a subclass of what a standard-library
user already catches.

* ``WorkerCrashed`` is a ``concurrent.futures.process.BrokenProcessPool``, so a
  handler written for ``ProcessPoolExecutor`` still catches it, yet a parcelout
  pool is not broken by it: only the item that was running fails.
* ``TaskTimeout`` is a ``TimeoutError`` (which ``concurrent.futures.TimeoutError``
  is): an item ran past its ``timeout``.
* ``BrokenPool`` is both a ``BrokenProcessPool`` and a ``BrokenThreadPool``:
  after it the pool takes no more work, as the standard executors do. Its
  subclass ``InitializerFailed`` says a worker's initializer raised.
* ``TransferError`` is a ``BrokenProcessPool`` too (what the standard pool
  raises there), yet only its item fails: the item or its result was pickled
  but could not be unpickled on the other side; the unpickling error is its
  ``__cause__``.
* ``RemoteTraceback`` is attached as ``__cause__`` of an exception that came
  back from a process worker, so the worker's traceback is printed with it.
* ``RemoteError`` stands in for an exception that could not travel back from a
  process worker (one that cannot be pickled or unpickled).
* ``JournalError``: a journal that cannot be used (in use by another run,
  damaged, or written by another function).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

__all__ = [
    "BrokenPool",
    "InitializerFailed",
    "JournalError",
    "RemoteError",
    "RemoteTraceback",
    "TaskTimeout",
    "TransferError",
    "WorkerCrashed",
]


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(Exception):
    """An exception raised in a worker that could not be sent back as itself.

    Attributes:
        type_name: the qualified name of the original exception's type.
        message: ``str()`` of the original exception.
        reason: why it could not travel (the pickling error).
    """

    def __init__(self, type_name: str, message: str, reason: str) -> None:
        super().__init__(type_name, message, reason)
        self.type_name = type_name
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message} (raised in a worker; it could not be sent back as itself: {self.reason})"
        )


class WorkerCrashed(BrokenProcessPool):
    """The worker process running the item died (signal, ``os._exit``, OOM kill).

    Only that item fails; the pool respawns the worker and goes on.

    Attributes:
        exitcode: the process's exit code, negative for a signal (as in
            ``multiprocessing.Process.exitcode``), or None if unknown.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[str, int | None]]:
        return (type(self), (str(self), self.exitcode))


class TaskTimeout(TimeoutError):
    """The item ran longer than its ``timeout``; its process worker was killed
    (a thread worker cannot be: it is abandoned and runs on).

    Attributes:
        timeout: the limit, in seconds.
    """

    def __init__(self, message: str, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[str, float | None]]:
        return (type(self), (str(self), self.timeout))


class JournalError(Exception):
    """The journal cannot be used: in use by another run, damaged, or written
    by another function. The message says which, and what to do."""


class BrokenPool(BrokenProcessPool, BrokenThreadPool):
    """The pool takes no more work: its workers cannot be started, or
    parcelout's own dispatcher thread failed. Every waiting future gets it."""


class StartupFailed(BrokenPool):
    """Workers die as they start, again and again (before their first
    item): the pool takes no more work."""


class InitializerFailed(StartupFailed):
    """A worker's ``initializer`` raised; the pool takes no more work."""


class TransferError(BrokenProcessPool):
    """An item or a result was pickled but could not be unpickled on the other
    side of a process boundary. Only its item fails; the pool goes on.

    The unpickling error is its ``__cause__`` (and travels with it).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.__cause__ = cause

    def __reduce__(self) -> tuple[type[TransferError], tuple[str, BaseException | None]]:
        return (type(self), (str(self), self.__cause__))


def describe_item(obj: object, limit: int = 80) -> str:
    """A short repr of an item for error notes; never raises."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_payload(payload: object, star: bool) -> str:
    """``describe_item`` of what an item is to its user: a submitted call's
    arguments (``(args, kwargs)``: the args alone when there are no kwargs)."""
    if star and isinstance(payload, tuple) and len(payload) == 2:
        args, kwargs = payload
        return describe_item(args if not kwargs else payload)
    return describe_item(payload)
