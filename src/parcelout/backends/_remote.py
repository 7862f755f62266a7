"""What runs a batch on a cluster engine's worker (Dask, Ray): the task.

A task gets the function and the items as bytes encoded by ``_wire``, and
returns its outcomes encoded the same way, so an item or a result that
cannot cross fails alone, as with local process workers. The function and
the initializer are unpickled once per worker process and kept.

A ``timeout`` is enforced here, per item: the item runs in a thread of its
own and, past its time, fails with ``TaskTimeout`` while that thread is
abandoned (a cluster engine cannot stop a running task either).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from parcelout.backends import _wire as wire
from parcelout.backends._base import run_batch
from parcelout.errors import TaskTimeout

_FUNCTIONS: dict[bytes, Callable[..., Any]] = {}
_INITIALIZED: set[bytes] = set()
_LOCK = threading.Lock()
_MAX_FUNCTIONS = 64


def run_task(
    fn_bytes: bytes, star: bool, payload: bytes, timeout: float | None, init_bytes: bytes | None
) -> tuple[Any, ...]:
    """Run one batch: ``("done", seconds, results, positions, exceptions)``,
    or ``("init_failed", exception)`` when the initializer raised here."""
    from parcelout.backends._child import transportable

    if init_bytes is not None:
        failure = _initialize(init_bytes)
        if failure is not None:
            encoded, _ = wire.encode([transportable(failure)], lambda _: "")
            return ("init_failed", encoded)
    fn = _function(fn_bytes)
    items, errors = wire.decode(payload, lambda _: "parcelout: the item could not be unpickled on the cluster worker")
    runnable = [pos for pos in range(len(items)) if pos not in errors]
    ran, ran_errors, elapsed = _run([items[pos] for pos in runnable], fn, star, timeout)
    values: list[Any] = [None] * len(items)
    for at, pos in enumerate(runnable):
        values[pos] = ran[at]
    errors.update((runnable[at], exc) for at, exc in ran_errors.items())
    blob, unpicklable = wire.encode(
        values, lambda _: "parcelout: the item's result could not be pickled to send it back from the cluster worker"
    )
    errors.update(unpicklable)
    positions = sorted(errors)
    failures, _ = wire.encode([transportable(errors[pos]) for pos in positions], lambda _: "")
    return ("done", elapsed, blob, positions, failures)


def _function(fn_bytes: bytes) -> Callable[..., Any]:
    token = hashlib.blake2b(fn_bytes, digest_size=16).digest()
    with _LOCK:
        fn = _FUNCTIONS.get(token)
        if fn is None:
            if len(_FUNCTIONS) >= _MAX_FUNCTIONS:
                _FUNCTIONS.clear()
            fn = _FUNCTIONS[token] = pickle.loads(fn_bytes)
    return fn


def _initialize(init_bytes: bytes) -> BaseException | None:
    """Run the initializer once in this worker process; its exception, if it raised."""
    token = hashlib.blake2b(init_bytes, digest_size=16).digest()
    with _LOCK:
        if token in _INITIALIZED:
            return None
        try:
            initializer, initargs = pickle.loads(init_bytes)
            initializer(*initargs)
        except Exception as exc:
            return exc
        _INITIALIZED.add(token)
    return None


def _run(
    items: list[Any], fn: Callable[..., Any], star: bool, timeout: float | None
) -> tuple[list[Any], dict[int, BaseException], float]:
    if timeout is None:
        return run_batch(fn, star, items)
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    start = time.perf_counter()
    for pos, item in enumerate(items):
        box: list[tuple[list[Any], dict[int, BaseException], float]] = []
        thread = threading.Thread(
            target=lambda item=item, box=box: box.append(run_batch(fn, star, [item])),
            name="parcelout-item",
            daemon=True,
        )
        thread.start()
        thread.join(timeout)
        if not box:  # still running: abandoned, as a thread cannot be stopped
            values.append(None)
            errors[pos] = TaskTimeout(f"item ran longer than its timeout of {timeout:g} s on the cluster", timeout)
            continue
        (value,), item_errors, _ = box[0]
        values.append(value)
        if item_errors:
            errors[pos] = item_errors[0]
    return values, errors, time.perf_counter() - start
