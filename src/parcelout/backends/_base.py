"""What every transport shares: running one batch of items, in whatever
thread or process the transport gives it.

This module imports nothing heavy: the child process imports it first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class Slot(Protocol):
    """Where a worker marks the item it is running (shared memory in a child)."""

    def __setitem__(self, key: int, value: int) -> None: ...


class Flag(Protocol):
    cancelled: bool


def run_batch(
    fn: Callable[..., Any],
    star: bool,
    payloads: Sequence[Any],
    slot: Slot | None = None,
    *,
    flag: Flag | None = None,
    interruptible: bool = False,
) -> tuple[list[Any], dict[int, BaseException], float]:
    """Apply ``fn`` to each payload; return values, exceptions by position, seconds.

    Every ``BaseException`` an item raises is kept as its outcome (``SystemExit``
    comes back as itself, as in ``concurrent.futures``). ``slot[1]`` is set to
    the running position, then to -1 after the last item. A set
    ``flag.cancelled`` stops the batch between items; the rest are left out.
    ``interruptible``: a ``KeyboardInterrupt`` propagates (the caller's thread).
    """
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    start = time.perf_counter()
    if slot is None and flag is None and not star:
        # Nothing to mark or check between items: as fast as a plain loop.
        rest: Sequence[Any] = payloads
        while True:
            try:
                values.extend(map(fn, rest))  # what extend took stays in values if fn raises
                break
            except BaseException as exc:
                if interruptible and isinstance(exc, KeyboardInterrupt):
                    raise
                errors[len(values)] = exc
                values.append(None)
                rest = payloads[len(values) :]
        return values, errors, time.perf_counter() - start
    for pos, item in enumerate(payloads):
        if flag is not None and flag.cancelled:
            break
        if slot is not None:
            slot[1] = pos
        try:
            values.append(fn(*item[0], **item[1]) if star else fn(item))
        except BaseException as exc:
            if interruptible and isinstance(exc, KeyboardInterrupt):
                raise
            values.append(None)
            errors[pos] = exc
    if slot is not None:
        slot[1] = -1
    return values, errors, time.perf_counter() - start


class Star:
    """``fn`` applied to the elements of each item: ``fn(*item)`` (``starmap``,
    and ``map`` over several iterables). Defined beside ``run_batch``, whose
    frames a worker's traceback leaves out, so the user's function comes
    first there too."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Star, (self.fn,))


def apply_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """``Executor.map``'s chunk: ``fn(*args)`` for each ``args``, in one call
    (here, where a worker's traceback leaves parcelout's frames out)."""
    return [fn(*args) for args in chunk]
