"""Process-wide interpreter settings parcelout changes for a while: one owner.

Today that is the switch interval (``sys.setswitchinterval``), which
``backend="auto"`` lowers while its measuring threads take turns at the GIL
and ``stress`` lowers while it forces thread switches. Runs overlap (two
``auto`` runs in two threads, a ``stress`` beside them), so no caller may
save and restore the setting on its own: the second saver would save the
first one's lowered value, and put it back for good.

Every change goes through a reference-counted hold instead. The first hold
records the interpreter's interval; while any hold remains, the interval is
the lowest asked for (never above the recorded one: a hold only lowers);
when the last hold is released, the recorded interval comes back, unless
something outside parcelout set another one meanwhile (theirs stays).
Holds may be released in any order, from any thread. This module never
raises the interval above what it found, and touches nothing else.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SwitchIntervalHold", "lower_switch_interval", "lowered_switch_interval"]

_lock = threading.Lock()
_holds: dict[int, float] = {}  # a live hold's number -> the interval it asked for
_numbers = itertools.count()
_original: float | None = None  # the interval found at the first hold
_applied: float | None = None  # the interval as last set here (read back: the interpreter rounds)
_NUDGE = 1e-10  # see _set


class SwitchIntervalHold:
    """One caller's request for a lowered switch interval; ``release`` ends it
    (once: a second call does nothing)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._released = False
        with _lock:
            global _original
            self._number = next(_numbers)
            if not _holds:
                _original = sys.getswitchinterval()
            _holds[self._number] = seconds
            _apply()

    def release(self) -> None:
        with _lock:
            if self._released:
                return
            self._released = True
            del _holds[self._number]
            _apply()

    def __enter__(self) -> SwitchIntervalHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lower_switch_interval(seconds: float) -> SwitchIntervalHold:
    """Hold the interpreter's switch interval at ``seconds`` or lower until
    the hold is released."""
    if not seconds > 0:
        raise ValueError(f"a switch interval must be positive, not {seconds!r}")
    return SwitchIntervalHold(seconds)


@contextmanager
def lowered_switch_interval(seconds: float) -> Iterator[None]:
    """``lower_switch_interval`` for the length of a ``with`` block."""
    with lower_switch_interval(seconds):
        yield


def _apply() -> None:
    """Set the interval the holds ask for, or give back the original (under the lock)."""
    global _original, _applied
    assert _original is not None
    current = sys.getswitchinterval()
    if _applied is not None and current != _applied:
        _original = current  # set outside parcelout while held: that is the one to give back
    if _holds:
        _set(min(_original, *_holds.values()))
        _applied = sys.getswitchinterval()
        return
    _set(_original)
    _original = _applied = None


def _set(seconds: float) -> None:
    """Set the interval, unless it is that already. The interpreter keeps
    whole microseconds, truncating: a value read back from it and set again
    could lose one each time, so a tenth of a nanosecond is added."""
    if sys.getswitchinterval() != seconds:
        sys.setswitchinterval(seconds + _NUDGE)
