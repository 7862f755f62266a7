"""``Failure``: what a failed item becomes when ``on_error="return"``."""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from parcelout.errors import RemoteTraceback, TaskTimeout, WorkerCrashed

T = TypeVar("T")
Kind = Literal["error", "timeout", "crash"]


@dataclass(frozen=True)
class Failure(Generic[T]):
    """One item that did not produce a result.

    Attributes:
        index: the item's position in the input.
        item: the item itself.
        error: the exception. From a process worker its ``__cause__`` is a
            ``RemoteTraceback`` holding the worker's traceback.
        kind: ``"error"`` (the function raised), ``"crash"`` (the worker died:
            ``WorkerCrashed``) or ``"timeout"`` (it ran past its timeout:
            ``TaskTimeout``).
        attempts: how many times the item was run (more than 1 with
            ``retries``).
    """

    index: int
    item: T
    error: BaseException
    kind: Kind = "error"
    attempts: int = 1

    @property
    def traceback(self) -> str:
        """The traceback of the error where it was raised, formatted."""
        cause = self.error.__cause__
        if isinstance(cause, RemoteTraceback):
            return cause.tb
        return "".join(_traceback.format_exception(self.error))


def kind_of(error: BaseException) -> Kind:
    if isinstance(error, WorkerCrashed):
        return "crash"
    if isinstance(error, TaskTimeout):
        return "timeout"
    return "error"
