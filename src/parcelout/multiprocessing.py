"""``multiprocessing.Pool``'s API on parcelout process workers.

``parcelout.multiprocessing.Pool`` takes the standard pool's arguments in
their order and offers its methods (``apply``, ``map``, ``imap``,
``starmap``, their ``_async`` forms with ``callback`` and
``error_callback``, ``close``, ``join``, ``terminate``, the ``with`` block).
Changing the import is the whole migration.

This module only translates: names and arguments onto ``parcelout.Pool``,
and futures into ``AsyncResult`` objects. It must never grow scheduling
policy of its own (windows, retries, crash handling): that is the engine's,
and every door shares it. What users get from the engine: a worker that dies
(a segfault, ``os._exit``, ``SIGKILL``) fails only its own task, with
``parcelout.WorkerCrashed``, where the standard pool waits forever; and no
worker outlives the pool.

Callbacks run on the pool's callback thread, in the order the tasks complete
(``parcelout.Pool``'s done-callbacks); one that raises is logged, its result
is still ready, and the pool goes on.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing as _mp
import multiprocessing.pool as _mp_pool
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from typing import Any, Generic, NoReturn, TypeVar

from parcelout._failure import Failure
from parcelout._pool import Pool as _Pool
from parcelout.errors import RemoteTraceback

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "IMapUnorderedIterator", "MapResult", "Pool", "TimeoutError"]

R = TypeVar("R")

TimeoutError = _mp.TimeoutError  # what ``get(timeout)`` raises, as the standard pool's

RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

_Callback = Callable[[Any], object] | None


class Pool:
    """``multiprocessing.Pool`` on parcelout process workers.

    Args:
        processes: how many workers (default: the usable CPUs).
        initializer: called as ``initializer(*initargs)`` once in each worker.
        maxtasksperchild: replace a worker after it has run this many tasks
            (parcelout's ``max_tasks_per_worker``; a chunk of ``map`` is one task).
        context: a multiprocessing context, whose start method the workers
            use. Without one, the start method set with
            ``multiprocessing.set_start_method``, else parcelout's default
            (forkserver where there is one).

    Raises:
        ValueError: ``processes`` is less than 1, or ``maxtasksperchild`` is
            not a positive int.
        TypeError: ``initializer`` is not callable.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        where: dict[str, Any] = (
            {"mp_context": context} if context is not None else {"start_method": _mp.get_start_method(allow_none=True)}
        )
        self._state = RUN
        self._pool = _Pool(
            workers=processes,
            backend="process",
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_worker=maxtasksperchild,
            **where,
        )

    def __repr__(self) -> str:
        cls = type(self)
        return f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={self._pool.workers}>"

    def __reduce__(self) -> NoReturn:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # ------------------------------------------------------------ one call
    def apply(self, func: Callable[..., R], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> R:
        """``func(*args, **kwds)`` in a worker; wait for its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: _Callback = None,
        error_callback: _Callback = None,
    ) -> ApplyResult[R]:
        """Run ``func(*args, **kwds)`` in a worker; return its ``AsyncResult``."""
        self._check_running()
        future = self._pool.submit(func, *args, **(kwds or {}))
        return ApplyResult(future, callback, error_callback)

    # ------------------------------------------------------------ eager maps
    def map(self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int | None = None) -> list[R]:
        """``list(map(func, iterable))``, in chunks on the workers."""
        return self._map_async(func, iterable, chunksize, star=False).get()

    def map_async(
        self,
        func: Callable[[Any], R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: _Callback = None,
        error_callback: _Callback = None,
    ) -> MapResult[R]:
        """As ``map``, returning its ``AsyncResult`` at once."""
        return self._map_async(func, iterable, chunksize, star=False, callback=callback, error_callback=error_callback)

    def starmap(
        self, func: Callable[..., R], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[R]:
        """``list(itertools.starmap(func, iterable))``, in chunks on the workers."""
        return self._map_async(func, iterable, chunksize, star=True).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: _Callback = None,
        error_callback: _Callback = None,
    ) -> MapResult[R]:
        """As ``starmap``, returning its ``AsyncResult`` at once."""
        return self._map_async(func, iterable, chunksize, star=True, callback=callback, error_callback=error_callback)

    def _map_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None,
        *,
        star: bool,
        callback: _Callback = None,
        error_callback: _Callback = None,
    ) -> MapResult[R]:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize = -(-len(items) // (self._pool.workers * 4)) or 1  # the standard pool's choice
        futures = [
            self._pool.submit(_run_chunk, func, star, items[start : start + chunksize])
            for start in range(0, len(items), chunksize)
        ]
        del items
        return MapResult(futures, callback, error_callback)

    # ------------------------------------------------------------ lazy maps
    def imap(self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator[R]:
        """The results of ``func`` over ``iterable`` in input order; tasks of
        ``chunksize`` items. The input is read lazily, through parcelout's
        bounded window."""
        return IMapIterator(self._chunk_results(self._pool.imap, func, iterable, chunksize))

    def imap_unordered(
        self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapUnorderedIterator[R]:
        """As ``imap``, in the order the tasks complete."""
        return IMapUnorderedIterator(self._chunk_results(self._pool.imap_unordered, func, iterable, chunksize))

    def _chunk_results(
        self, run: Callable[..., Iterator[Any]], func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        """Each chunk's list of results, or its ``Failure``, from a lazy map of parcelout's."""
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        return run(functools.partial(_run_chunk, func, False), _chunked(iterable, chunksize), on_error="return")

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Take no more tasks. The workers stay for the tasks given, and for
        the ``imap`` iterators already made, which read their input lazily
        (consume them before ``join``); ``join`` lets them go."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop now: kill the workers and drop the tasks not done (their
        results raise ``concurrent.futures.CancelledError``)."""
        self._state = TERMINATE
        self._pool.terminate()

    def join(self) -> None:
        """Wait for the tasks given, then for the workers to leave, after
        ``close`` or ``terminate``.

        Raises:
            ValueError: the pool is still running.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()  # as the standard pool: leaving the block stops the work

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")


def _run_chunk(func: Callable[..., R], star: bool, chunk: Iterable[Any]) -> list[R]:
    """A task of a map: ``func`` over a chunk of items, in a worker."""
    if star:
        return [func(*args) for args in chunk]
    return [func(item) for item in chunk]


def _chunked(iterable: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    """Chunks of ``size`` items, as the standard pool forms them: an input that
    raises midway loses the chunk it was filling."""
    items = iter(iterable)
    while chunk := tuple(itertools.islice(items, size)):
        yield chunk


def _translated(error: BaseException) -> BaseException:
    """The worker's exception as the standard pool gives it: its traceback as
    a ``multiprocessing.pool.RemoteTraceback`` cause."""
    cause = error.__cause__
    if isinstance(cause, RemoteTraceback):
        error.__cause__ = _mp_pool.RemoteTraceback(str(cause))  # type: ignore[attr-defined]
    return error


def _outcome(future: Future[Any]) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, exception)`` for a failed or cancelled task."""
    if future.cancelled():
        return False, CancelledError("the pool was terminated before the task was done")
    error = future.exception()
    if error is not None:
        return False, _translated(error)
    return True, future.result()


class ApplyResult(Generic[R]):
    """The result of ``apply_async``: ready once its task is done and its
    callback has run."""

    def __init__(self, future: Future[R] | None, callback: _Callback = None, error_callback: _Callback = None) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        if future is not None:
            future.add_done_callback(self._done)

    def ready(self) -> bool:
        """Whether the task is done."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the task returned without raising.

        Raises:
            ValueError: the result is not ready.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, at most ``timeout`` seconds."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> R:
        """The task's result, or its exception raised here.

        Raises:
            multiprocessing.TimeoutError: not ready within ``timeout`` seconds.
            parcelout.WorkerCrashed: the worker running the task died.
            concurrent.futures.CancelledError: the pool was terminated first.
        """
        if not self._event.wait(timeout):
            raise TimeoutError
        if self._success:
            value: R = self._value
            return value
        raise self._value

    def _done(self, future: Future[Any]) -> None:
        self._set(*_outcome(future), call_back=not future.cancelled())

    def _set(self, success: bool, value: Any, call_back: bool = True) -> None:
        """Keep the outcome, run the callback, then say the result is ready,
        even if the callback raised (the pool's callback thread logs it)."""
        self._success, self._value = success, value
        callback = self._callback if success else self._error_callback
        self._callback = self._error_callback = None
        try:
            if call_back and callback is not None:
                callback(value)
        finally:
            self._event.set()


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[R]]):
    """The result of ``map_async`` and ``starmap_async``: ready once every
    chunk is done; its exception is the first a chunk raised."""

    def __init__(self, futures: list[Future[list[R]]], callback: _Callback, error_callback: _Callback) -> None:
        super().__init__(None, callback, error_callback)
        self._chunks: list[list[R]] = [[] for _ in futures]
        self._left = len(futures)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        if not futures:
            self._set(True, [], call_back=False)  # as the standard pool: no callback for no work
        for position, future in enumerate(futures):
            future.add_done_callback(functools.partial(self._chunk_done, position))

    def _chunk_done(self, position: int, future: Future[list[R]]) -> None:
        success, value = _outcome(future)
        with self._lock:
            if success:
                self._chunks[position] = value
            elif self._error is None:
                self._error = value
            self._left -= 1
            if self._left:
                return
        if self._error is None:
            self._set(True, list(itertools.chain.from_iterable(self._chunks)))
        else:
            self._set(False, self._error, call_back=not isinstance(self._error, CancelledError))
        self._chunks = []


class IMapIterator(Generic[R]):
    """The results of ``imap``, in input order. A task that failed raises its
    exception where its results would be; the iteration can go on after it."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks
        self._ready: list[R] = []

    def __iter__(self) -> IMapIterator[R]:
        return self

    def __next__(self) -> R:
        while not self._ready:
            chunk = next(self._chunks)
            if isinstance(chunk, Failure):
                raise _translated(chunk.error)
            self._ready = list(reversed(chunk))
        return self._ready.pop()


class IMapUnorderedIterator(IMapIterator[R]):
    """The results of ``imap_unordered``, in the order the tasks complete."""
