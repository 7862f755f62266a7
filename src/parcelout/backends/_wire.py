"""How a list of values crosses a process boundary, one failure at a time.

Items go to a worker and results come back as one message per batch. If the
whole list were one pickle, a single value that fails to pickle, or pickles
but fails to unpickle on the other side (a class the other process cannot
import, a ``__reduce__`` that raises), would take the whole batch with it.
So a list is sent whole only when every value is a plain scalar (or a tuple
of them), which always loads; otherwise each value is pickled on its own and
the message is the list of those pickles, so a value that fails costs only
its own position.

``encode`` and ``decode`` never raise for a bad value, whatever it raises
(``SystemExit`` included): they return the positions that failed. A value
that does not pickle fails with its own exception and a note naming the
position; one that pickles but does not unpickle fails with a
``TransferError`` (a ``BrokenProcessPool``, as the standard pool raises
there) whose cause is the unpickling error.

Large buffers (a NumPy array's data: whatever pickles its data with
``pickle.PickleBuffer``) can stay out of the pickle (protocol 5's
out-of-band buffers): ``encode`` then lists them apart, the sender writes each
straight to the pipe, and the receiver reads each into a ``bytearray`` that
the unpickled value keeps as its memory. An 8 MiB array then costs one copy
on each side of the pipe instead of three.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from parcelout._core._messages import Batch, Call
from parcelout.errors import RemoteError, RemoteTraceback, TransferError, describe_item

_WHOLE = b"W"
_EACH = b"E"
# Buffers at least this large travel out of band; smaller ones are cheaper to copy.
OUT_OF_BAND_BYTES = 64 * 1024
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _plain(value: object) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    return kind is tuple and all(type(part) in _SCALARS for part in value)  # type: ignore[attr-defined]


def dumps(value: object, buffers: list[memoryview] | None = None) -> bytes:
    """Plain pickle where it can, cloudpickle (by value) where it cannot.

    Plain pickle refers to functions and classes by module and name; one that
    names ``__main__`` may not load on the other side (a script read from
    standard input, a notebook, ``python -c``), so such values go by value.
    With ``buffers``, large buffers are appended to it instead of copied in.
    """
    kept: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        kept.append(view)
        return False

    callback = None if buffers is None else out_of_band
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=callback)
    except Exception:
        kept.clear()
        blob = bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=callback))
    else:
        if b"__main__" in blob:
            kept.clear()
            blob = bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=callback))
    if buffers is not None:
        buffers.extend(kept)
    return blob


def encode(
    values: Sequence[Any], note: Callable[[int], str], buffers: list[memoryview] | None = None
) -> tuple[bytes, dict[int, BaseException]]:
    """The message for ``values``, and the exceptions of those that did not pickle.

    ``note(pos)`` is added to the exception of the value at ``pos``, to say
    which value it was and where it was going. With ``buffers``, the values'
    large buffers are appended to it, to be sent after the message.
    """
    if all(_plain(value) for value in values):
        return _WHOLE + pickle.dumps(list(values), protocol=pickle.HIGHEST_PROTOCOL), {}
    parts: list[tuple[bytes, int] | None] = []
    errors: dict[int, BaseException] = {}
    for pos, value in enumerate(values):
        before = len(buffers) if buffers is not None else 0
        try:
            blob = dumps(value, buffers)
        except BaseException as exc:  # a __reduce__ that exits fails its own value, as itself
            exc.add_note(note(pos))
            errors[pos] = exc
            parts.append(None)
        else:
            parts.append((blob, len(buffers) - before if buffers is not None else 0))
    return _EACH + pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL), errors


def decode(
    message: bytes, note: Callable[[int], str], buffers: Sequence[bytearray] = ()
) -> tuple[list[Any], dict[int, BaseException]]:
    """The values of a message from ``encode`` (and the buffers sent after it),
    and the exceptions of those that did not unpickle (their value is None)."""
    view = memoryview(message)
    if view[:1] == _WHOLE:
        values: list[Any] = pickle.loads(view[1:])
        return values, {}
    parts: list[tuple[bytes, int] | None] = pickle.loads(view[1:])
    out: list[Any] = []
    errors: dict[int, BaseException] = {}
    taken = 0
    for pos, part in enumerate(parts):
        if part is None:
            out.append(None)  # it failed to pickle; the sender kept its error
            continue
        blob, count = part
        own, taken = buffers[taken : taken + count], taken + count
        try:
            out.append(pickle.loads(blob, buffers=own))
        except BaseException as exc:  # even SystemExit from a reconstructor fails only its value
            what = note(pos).removeprefix("parcelout: ")
            errors[pos] = TransferError(f"{what}: {type(exc).__name__}: {exc}", exc)
            out.append(None)
    return out, errors


def size_of(value: object) -> int:
    """About how many bytes ``value`` holds: its pickled size, counting large
    buffers (a NumPy array's data) by their length instead of copying them;
    ``sys.getsizeof`` for a value that does not pickle."""
    buffers = 0

    def count(buffer: pickle.PickleBuffer) -> bool:
        nonlocal buffers
        buffers += buffer.raw().nbytes
        return False  # out of band: not copied into the pickle

    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=count)) + buffers
    except Exception:
        return sys.getsizeof(value)


# ---------------------------------------------------------------- batches
def function_bytes(call: Call) -> bytes | BaseException:
    """The pickled function, made once per call and kept on it."""
    if call.payload is None:
        try:
            call.payload = bytes(cloudpickle.dumps(call.fn))
        except Exception as exc:
            exc.add_note(f"parcelout: the function {call.fn!r} could not be pickled to send it to a worker")
            call.payload = exc
    return call.payload


def encode_items(batch: Batch, buffers: list[memoryview] | None) -> tuple[bytes, dict[int, BaseException]]:
    """The batch's items as one message (and their large ``buffers``); those
    that cannot be pickled are left out and come back as their pickling error."""
    items = batch.items

    def note(pos: int) -> str:
        index, item = items[pos]
        if batch.call.star:  # a submitted call: its arguments
            args, kwargs = item
            what = f"the arguments {describe_item(args)}" + (f" and {describe_item(kwargs)}" if kwargs else "")
            return f"parcelout: {what} could not be pickled to send them to a worker"
        return f"parcelout: item {index} ({describe_item(item)}) could not be pickled to send it to a worker"

    return encode([item for _, item in items], note, buffers)


def decode_failures(blob: bytes, positions: list[int]) -> dict[int, BaseException]:
    """The exceptions a worker sent, by position, each with its traceback."""
    note = "parcelout: the item's exception could not be unpickled in the parent process"
    pairs, broken = decode(blob, lambda _: note)
    errors: dict[int, BaseException] = {}
    for at, (pos, pair) in enumerate(zip(positions, pairs, strict=True)):
        if at in broken:
            errors[pos] = broken[at]
        elif pair is None:
            errors[pos] = RemoteError("unknown", "the worker could not send this item's exception", "pickling failed")
        else:
            exc, tb = pair
            # The worker's traceback goes last in the chain (a TransferError brings its cause).
            last = exc if exc.__cause__ is None else exc.__cause__
            if last.__cause__ is None:
                last.__cause__ = RemoteTraceback(tb)
            errors[pos] = exc
    return errors
