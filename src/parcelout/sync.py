"""``parcelout.sync``: small helpers for state that threads share.

Each is correct under the GIL and on a free-threaded interpreter alike (each
takes a lock for its read-modify-write; none relies on an operation being
atomic), and each is shown race-free by ``parcelout.stress`` in the tests.

* ``Counter``: ``add(n)`` and ``value``, for counts that many threads bump.
* ``Guarded(value)``: ``update(fn)`` applies a read-modify-write to the value
  at once; ``get()`` returns a snapshot (a deep copy) to read at leisure.
* ``once(fn)``: call ``fn`` at most once per process, lazily, whichever
  thread asks first; every caller gets its result. For expensive set-up
  (a model, a connection pool) that each worker process builds on first use.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Counter", "Guarded", "once"]

T = TypeVar("T")


class Counter:
    """An integer that threads add to without losing an update."""

    def __init__(self, start: int = 0) -> None:
        self._value = start
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> int:
        """Add ``n``; return the new value."""
        with self._lock:
            self._value += n
            return self._value

    @property
    def value(self) -> int:
        with self._lock:
            return self._value

    def __repr__(self) -> str:
        return f"Counter({self.value})"


class Guarded(Generic[T]):
    """A value that threads read and change only under its lock."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._lock = threading.Lock()

    def update(self, fn: Callable[[T], T]) -> T:
        """Replace the value by ``fn(value)``, with no other update in
        between; return the new value. ``fn`` may also change the value in
        place and return it. If ``fn`` raises, the value is left as it was
        (unless ``fn`` changed it in place before raising)."""
        with self._lock:
            self._value = fn(self._value)
            return self._value

    def get(self) -> T:
        """A snapshot of the value: a deep copy, taken under the lock, that
        later updates do not change."""
        with self._lock:
            return copy.deepcopy(self._value)

    def __repr__(self) -> str:
        return f"Guarded({self.get()!r})"


def once(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn()`` at most once per process; every call returns its result.

    The first caller runs ``fn`` while any other thread that asks waits for
    it. If ``fn`` raises, the exception goes to that caller and the next call
    tries again. In a process forked after the first call, ``fn`` runs again
    on first use there (a fork copies the result, but not, say, a live
    connection's peer).
    """
    guard = _Once(fn)

    @functools.wraps(fn)
    def call() -> T:
        return guard()

    return call


class _Once(Generic[T]):
    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        # (pid, result), published in one store, so a reader without the lock
        # sees all of it or nothing, with or without a GIL.
        self._done: tuple[int, T] | None = None
        _all_once.add(self)

    def __call__(self) -> T:
        pid = os.getpid()
        done = self._done
        if done is not None and done[0] == pid:
            return done[1]
        with self._lock:
            done = self._done
            if done is None or done[0] != pid:
                done = self._done = (pid, self._fn())
        return done[1]

    def forked(self) -> None:
        self._lock = threading.Lock()  # a thread that held it did not come along


_all_once: weakref.WeakSet[_Once[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for guard in list(_all_once):
        guard.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
