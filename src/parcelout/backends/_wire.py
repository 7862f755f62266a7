"""How a list of values crosses a process boundary, one failure at a time.

Items go to a worker and results come back as one message per batch. If the
whole list were one pickle, a single value that fails to pickle, or pickles
but fails to unpickle on the other side (a class the other process cannot
import, a ``__reduce__`` that raises), would take the whole batch with it.
So a list is sent whole only when every value is a plain scalar (or a tuple
of them), which always loads; otherwise each value is pickled on its own and
the message is the list of those pickles, so a value that fails costs only
its own position.

``encode`` and ``decode`` never raise for a bad value: they return the
positions that failed, with the exception and a note naming the position.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

_WHOLE = b"W"
_EACH = b"E"
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _plain(value: object) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    return kind is tuple and all(type(part) in _SCALARS for part in value)  # type: ignore[attr-defined]


def dumps(value: object) -> bytes:
    """Plain pickle where it can, cloudpickle (by value) where it cannot.

    Plain pickle refers to functions and classes by module and name; one that
    names ``__main__`` may not load on the other side (a script read from
    standard input, a notebook, ``python -c``), so such values go by value.
    """
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    if b"__main__" in blob:
        return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return blob


def encode(values: Sequence[Any], note: Callable[[int], str]) -> tuple[bytes, dict[int, BaseException]]:
    """The message for ``values``, and the exceptions of those that did not pickle.

    ``note(pos)`` is added to the exception of the value at ``pos``, to say
    which value it was and where it was going.
    """
    if all(_plain(value) for value in values):
        return _WHOLE + pickle.dumps(list(values), protocol=pickle.HIGHEST_PROTOCOL), {}
    parts: list[bytes | None] = []
    errors: dict[int, BaseException] = {}
    for pos, value in enumerate(values):
        try:
            parts.append(dumps(value))
        except Exception as exc:
            exc.add_note(note(pos))
            errors[pos] = exc
            parts.append(None)
    return _EACH + pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL), errors


def decode(message: bytes, note: Callable[[int], str]) -> tuple[list[Any], dict[int, BaseException]]:
    """The values of a message from ``encode``, and the exceptions of those that
    did not unpickle (their value is None)."""
    view = memoryview(message)
    if view[:1] == _WHOLE:
        values: list[Any] = pickle.loads(view[1:])
        return values, {}
    parts: list[bytes | None] = pickle.loads(view[1:])
    out: list[Any] = []
    errors: dict[int, BaseException] = {}
    for pos, part in enumerate(parts):
        if part is None:
            out.append(None)  # it failed to pickle; the sender kept its error
            continue
        try:
            out.append(pickle.loads(part))
        except Exception as exc:
            exc.add_note(note(pos))
            errors[pos] = exc
            out.append(None)
    return out, errors
