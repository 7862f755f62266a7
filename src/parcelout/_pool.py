"""``Pool``: a ``concurrent.futures.Executor`` over the parcelout engine.

Code written for ``ThreadPoolExecutor`` or ``ProcessPoolExecutor`` works with
it unchanged: ``submit``, ``map`` (all work submitted at the call, its
``timeout`` running from the call, ``buffersize`` as in Python 3.14),
``shutdown(wait, cancel_futures)``, the context manager, and the standard
executors' keyword names. On top of that, ``imap`` and ``imap_unordered`` are
lazy maps through a bounded window.

The pool owns its engine (one dispatcher thread and the workers); no worker
outlives it: ``shutdown`` stops them, garbage collection of the pool shuts it
down, and interpreter exit waits for the work submitted, as the standard
executors do (a Ctrl-C during that wait stops the work at once).

A future's done-callbacks run on a callback thread of the pool's, never on
the dispatcher: a slow callback, or one that waits on another future of the
same pool, holds up no result, and one that raises (even ``SystemExit``) is
logged, as ``concurrent.futures`` logs it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from parcelout._core._batcher import CLUSTER_TARGET_SECONDS, TARGET_SECONDS
from parcelout._core._engine import BackendFactory, Engine
from parcelout._core._messages import (
    DEFAULT_POLICY,
    Backend,
    Batch,
    BatchResult,
    Call,
    Event,
    Policy,
    Shutdown,
    Submitted,
)
from parcelout._core._scheduler import Scheduler
from parcelout._journal import Journal
from parcelout._options import (
    BACKEND_NAMES,
    CLUSTER_BACKENDS,
    POLICY_OPTION_NAMES,
    RUN_NAMES,
    TIMEOUT_NAMES,
    OnError,
    PoolOptions,
    RetryOn,
    RunArgs,
    RunOptions,
    checked,
    make_policy,
    positive_int,
)
from parcelout._stream import EngineLane, InlineLane, Lane, drive
from parcelout.backends._base import apply_chunk
from parcelout.errors import BrokenPool, InitializerFailed, describe_item

if TYPE_CHECKING:
    from parcelout.backends._cluster import Cluster

T = TypeVar("T")
R = TypeVar("R")

_live: weakref.WeakSet[Pool] = weakref.WeakSet()
_exiting = False  # set once the interpreter has begun to exit: no new work
_log = logging.getLogger("concurrent.futures")  # where the standard executors log a failing callback
_SERIAL_TIMEOUT = (
    "task_timeout needs thread or process workers: the serial backend runs each item in the calling thread, "
    "which cannot be stopped"
)

# How many batches a worker may hold: a process worker gets the next batch
# while it runs one, hiding the pipe's round trip; a thread needs no head start.
_DEPTH = {"process": 2, "thread": 1, "interpreter": 1, "custom": 1, "dask": 1, "ray": 1}


class Pool(Executor):
    """A pool of workers: threads, processes, or the calling thread.

    Args:
        workers: how many workers (default: the usable CPUs; for threads, as
            ``ThreadPoolExecutor``, ``min(32, cpus + 4)``). ``max_workers`` is
            the same option under the standard library's name.
        backend: ``"process"`` (the default), ``"thread"``, ``"serial"``,
            ``"dask"``, ``"ray"``, or a backend factory ``report -> Backend``.
            (A pool cannot measure a function it has not seen, so
            ``"auto"`` is not offered here: it means ``"process"``, with a
            ``DeprecationWarning``.)
        initializer: called as ``initializer(*initargs)`` once in each worker.
        start_method: ``"forkserver"`` (default where available), ``"spawn"``
            or ``"fork"``; ``mp_context`` takes a multiprocessing context.
        max_tasks_per_worker: replace a worker after it has run this many items
            (``max_tasks_per_child`` is the standard library's name).
        thread_name_prefix: names the worker threads.
        task_timeout: seconds an item (a submitted call, or one item of a
            map) may run; past it, its process worker is stopped, or its
            thread abandoned, and it fails with ``TaskTimeout``. Not with
            serial. (``timeout``, its old name, still works, with a
            ``DeprecationWarning``.)
        retries: run a failed item (error, crash or task timeout) up to this many
            more times; ``retry_on`` (exception types or a predicate) narrows
            which failures, ``backoff`` waits ``backoff * 2 ** (n - 1)``
            seconds before the n-th retry.
        max_crashes: an item under which this many workers died fails for
            good, whatever ``retries`` says.
        client, address: for ``backend="dask"``: the ``distributed.Client``
            to run on, or the address of a Dask scheduler to connect to;
            neither starts a ``LocalCluster`` for the pool (closed with it).

    Raises:
        ValueError: ``workers`` is not greater than 0, or an unknown backend or
            start method.
        TypeError: an option of the wrong type, or an initializer that cannot
            be pickled for process workers.
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str | BackendFactory = "process",
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        start_method: str | None = None,
        mp_context: Any = None,
        max_tasks_per_worker: int | None = None,
        max_tasks_per_child: int | None = None,
        thread_name_prefix: str = "",
        task_timeout: float | None = None,
        retries: int = 0,
        retry_on: RetryOn | None = None,
        backoff: float = 0.0,
        max_crashes: int = DEFAULT_POLICY.max_crashes,
        client: Any = None,
        address: str | None = None,
        timeout: float | None = None,
    ) -> None:
        _refuse_in_a_starting_worker()
        if workers is not None and max_workers is not None:
            raise TypeError("give workers or max_workers, not both")
        backend = _pool_backend(backend)
        if timeout is not None:  # the old name of task_timeout
            given = {"task_timeout": task_timeout, "timeout": timeout}
            task_timeout = checked("Pool", given, TIMEOUT_NAMES)["task_timeout"]
        if max_tasks_per_worker is not None and max_tasks_per_child is not None:
            raise TypeError("give max_tasks_per_worker or max_tasks_per_child, not both")
        options = PoolOptions(
            workers=workers if max_workers is None else max_workers,
            backend=backend,
            initializer=initializer,
            initargs=initargs,
            start_method=start_method,
            mp_context=mp_context,
            max_tasks_per_worker=max_tasks_per_worker or max_tasks_per_child,
            thread_name_prefix=thread_name_prefix,
            workers_name="workers" if max_workers is None else "max_workers",
            client=client,
            address=address,
        )
        self._policy_args: dict[str, Any] = {
            "task_timeout": task_timeout,
            "retries": retries,
            "retry_on": retry_on,
            "backoff": backoff,
            "max_crashes": max_crashes,
        }
        self._policy = make_policy(**self._policy_args)
        if options.kind == "serial" and task_timeout is not None:
            raise ValueError(_SERIAL_TIMEOUT)
        self._options = options
        self._kind = options.kind
        factory, self._size = _backend_and_size(options)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._callbacks = _Callbacks()
        self._engine: Engine | None = None
        self._inline_ready = False
        self._inline_broken: BaseException | None = None
        if self._kind != "serial":
            scheduler = Scheduler(
                self._size,
                self._ids.__next__,
                depth=_DEPTH[self._kind],
                max_items_per_worker=options.max_tasks_per_worker,
                clock=time.monotonic,
            )
            self._engine = Engine(scheduler, factory, name="parcelout-dispatcher")
            finalizer = weakref.finalize(self, self._engine.post, Shutdown())
            finalizer.atexit = False
        _live.add(self)

    # ------------------------------------------------------------ properties
    @property
    def workers(self) -> int:
        """How many workers the pool keeps."""
        return self._size

    @property
    def backend(self) -> str:
        """The kind of worker: serial, thread, process or custom."""
        return self._kind

    # ------------------------------------------------------------ Executor
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``; return its future.

        Raises:
            RuntimeError: the pool was shut down.
            InitializerFailed: a worker's initializer failed earlier.
        """
        future: Future[R] = _Future(self._callbacks)
        with self._lock:
            self._check_open()
            if self._engine is None:
                try:
                    self._initialize_inline()
                except InitializerFailed as broken:
                    future.set_running_or_notify_cancel()
                    future.set_exception(broken)
                    return future
                _run_inline(future, fn, args, kwargs, self._policy)
                return future
            self._post(future, Call(fn, star=True), [(0, (args, kwargs))], functools.partial(self._settle, future))
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Generator[R, None, None]:
        """``Executor.map``: submits the work at the call (``buffersize`` at
        most at once), yields results in order, raises an item's exception
        where it comes, raises ``TimeoutError`` if the results are not all in
        ``timeout`` seconds after the call, and cancels what is left when the
        iterator is closed."""
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        positive_int(chunksize, "chunksize", message="chunksize must be >= 1.")
        end = None if timeout is None else timeout + time.monotonic()
        args = zip(*iterables, strict=False)
        chunks = iter(lambda: list(itertools.islice(args, chunksize)), [])
        first = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        starts = itertools.count(0, chunksize)
        call = Call(fn, star=True)  # one function for the whole map: a worker unpickles it once
        futures = deque(
            (self._submit_chunk(call, chunk, start), start, len(chunk)) for chunk, start in zip(first, starts)
        )
        more = zip(chunks, starts) if buffersize else None
        return _results(futures, end, more, weakref.ref(self), call)

    def _submit_chunk(self, call: Call, chunk: list[tuple[Any, ...]], start: int) -> Future[list[Any]]:
        """One chunk of ``map``, as one future whose result is the list of its
        results. Each call in it is an item of its own: the pool's
        ``task_timeout`` and ``retries`` apply to each, and a failure names
        the map's item and its arguments."""
        if self._engine is None:
            return self.submit(functools.partial(apply_chunk, call.fn), chunk)
        future: Future[list[Any]] = _Future(self._callbacks)
        items: list[tuple[int, Any]] = [(start + i, (args, {})) for i, args in enumerate(chunk)]
        with self._lock:
            self._check_open()
            self._post(future, call, items, _Chunk(future, start, len(chunk)))
        return future

    def _post(
        self, future: Future[Any], call: Call, items: list[tuple[int, Any]], sink: Callable[[BatchResult], None]
    ) -> None:
        """Hand the engine a batch for ``future`` (under the lock, the pool open):
        it starts when its future does, under the pool's policy."""
        assert self._engine is not None
        batch = Batch(
            next(self._ids), call, items, sink, try_start=future.set_running_or_notify_cancel, policy=self._policy
        )
        self._engine.post(Submitted(batch))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; with ``wait``, return once every worker is gone
        and every done-callback has run.

        ``cancel_futures`` cancels the futures whose work has not begun (the
        work submitted before the call has been offered to idle workers first).
        """
        with self._lock:
            first = not self._closed
            self._closed = True
        if self._engine is not None:
            if first or cancel_futures:
                self._engine.post(Shutdown(cancel=cancel_futures))
            if cancel_futures:
                self._engine.sync()  # the pending futures are cancelled when this returns
            if wait:
                self._engine.join()
        if wait:
            self._callbacks.join()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """As the standard executors: wait for the work submitted. But on
        Ctrl-C stop now: drop what waits, kill the process workers running
        items, and do not wait for thread workers that cannot be stopped."""
        self._end(exc, owned=False)

    # ------------------------------------------------------------ lazy maps
    def imap(
        self, fn: Callable[..., R], items: Iterable[Any], /, *, on_error: OnError = "raise", **options: Unpack[RunArgs]
    ) -> Generator[Any, None, None]:
        """Results of ``fn`` over ``items`` in input order, lazily (see ``parcelout.imap``).

        Takes ``parcelout.imap``'s options but those that make up the pool;
        ``task_timeout``, ``retries``, ``retry_on``, ``backoff`` and
        ``max_crashes`` default to the pool's.
        """
        return self._stream(fn, items, self._run_options("imap", on_error, options), ordered=True)

    def imap_unordered(
        self, fn: Callable[..., R], items: Iterable[Any], /, *, on_error: OnError = "raise", **options: Unpack[RunArgs]
    ) -> Generator[Any, None, None]:
        """As ``imap`` (the same options), in the order the results complete."""
        return self._stream(fn, items, self._run_options("imap_unordered", on_error, options), ordered=False)

    def _run_options(self, where: str, on_error: OnError, options: RunArgs) -> RunOptions:
        given = checked(f"Pool.{where}", options, RUN_NAMES, defaults=False)
        values = checked(f"Pool.{where}", {**self._policy_args, **given}, RUN_NAMES)  # the pool's, unless given
        policy = make_policy(**{name: values[name] for name in POLICY_OPTION_NAMES})
        run = (values["chunksize"], values["window"], on_error, values["progress"], policy)
        return RunOptions(*run, Journal.of(values["journal"]), values["key"], values["retry_failed"])

    def _stream(
        self, fn: Callable[..., Any], items: Iterable[Any], options: RunOptions, ordered: bool
    ) -> Generator[Any, None, None]:
        check_callable(fn)
        with self._lock:
            self._check_open()
        if self._engine is None and options.policy.timeout is not None:
            raise ValueError(_SERIAL_TIMEOUT)
        return drive(self._new_lane(), Call(fn), items, options, ordered)

    def _new_lane(self) -> Lane:
        """Where one stream's batches go: the engine, or the caller's thread."""
        if self._engine is None:
            return InlineLane(self._initialize_inline)
        batch_seconds = CLUSTER_TARGET_SECONDS if self._kind in CLUSTER_BACKENDS else TARGET_SECONDS
        return EngineLane(self._engine, self._size, self._ids, batch_seconds)

    # ------------------------------------------------------------ internals
    def _initialize_inline(self) -> None:
        """The serial pool's one worker is the caller: run the initializer
        there, once, before the first item."""
        if self._inline_ready:
            return
        self._inline_ready = True
        initializer = self._options.initializer
        if initializer is None:
            return
        try:
            initializer(*self._options.initargs)
        except BaseException as error:
            broken = InitializerFailed(
                f"the initializer raised {type(error).__name__}: {error}; the pool takes no more work"
            )
            broken.__cause__ = error
            self._inline_broken = broken
            raise broken from error

    def _check_open(self) -> None:
        broken = self._engine.broken if self._engine is not None else self._inline_broken
        if broken is not None:
            kind = type(broken) if isinstance(broken, BrokenPool) else BrokenPool
            raise kind(str(broken)) from broken.__cause__
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _settle(self, future: Future[Any], result: BatchResult) -> None:
        if future.done():
            return
        error = result.errors.get(0) if result.values else CancelledError()
        try:
            if isinstance(error, CancelledError):
                if not future.cancel():
                    future.set_exception(error)
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(result.values[0])
        except InvalidStateError:  # cancelled by its owner meanwhile
            pass

    def terminate(self) -> None:
        """Stop now: cancel the futures not yet running, fail the running ones
        with ``CancelledError`` (their process workers are killed; a thread
        that runs an item cannot be stopped and is abandoned), and return once
        the process workers are gone. As ``multiprocessing.Pool.terminate`` and Python
        3.14's ``ProcessPoolExecutor.terminate_workers``."""
        self._terminate(wait=True)

    def terminate_workers(self) -> None:
        """Python 3.14's name for ``terminate``."""
        self._terminate(wait=True)

    def kill_workers(self) -> None:
        """Python 3.14's name for stopping the workers at once: ``terminate``
        (process workers are killed with ``SIGKILL`` either way)."""
        self._terminate(wait=True)

    def _end(self, error: BaseException | None, *, owned: bool) -> None:
        """End the pool for the way its user's code is leaving it: the one
        place that decides, for the ``with`` block, the one-shot functions'
        own pools (``owned``) and interpreter exit.

        * No error, or any error but Ctrl-C from a ``with`` block: wait for
          the work submitted, as the standard executors do.
        * Ctrl-C, or a one-shot stream closed early (``GeneratorExit``): stop
          now: drop what waits, kill the process workers running items.
        * Any other error out of a one-shot stream: stop now too, but wait
          only for process workers (a thread's item cannot be stopped).
        """
        if error is None or (not owned and not isinstance(error, KeyboardInterrupt)):
            self.shutdown(wait=True)
        elif isinstance(error, KeyboardInterrupt | GeneratorExit):
            self._terminate(wait=True)
        else:
            self._terminate(wait=self._kind == "process")

    def _terminate(self, wait: bool) -> None:
        """Stop now: drop pending work and kill the running items' workers."""
        with self._lock:
            self._closed = True
        if self._engine is not None:
            self._engine.post(Shutdown(cancel=True, kill=True))
            if wait:
                self._engine.join()


class _Chunk:
    """Where the results of one chunk of ``Pool.map`` go: its future gets the
    list of them once every item is in (the scheduler may split the chunk
    and report its parts apart), a failed call's place holding its error,
    with a note naming the item."""

    def __init__(self, future: Future[list[Any]], start: int, size: int) -> None:
        self._future = future
        self._start = start
        self._values: list[Any] = [None] * size
        self._cancelled = False
        self._left = size

    def __call__(self, result: BatchResult) -> None:
        for pos, (index, payload) in enumerate(result.batch.items):
            error = result.errors.get(pos)
            if error is None:
                self._values[index - self._start] = result.values[pos]
            elif isinstance(error, CancelledError):
                self._cancelled = True
            else:
                error.add_note(f"parcelout: raised by Pool.map's item {index} ({describe_item(payload[0])})")
                self._values[index - self._start] = _Failed(error)
            self._left -= 1
        if isinstance(result.values, list):
            result.values.clear()  # the caller's list is the one place a result stays (as the standard map)
        if self._left or self._future.done():
            return
        try:
            if self._cancelled:
                if not self._future.cancel():
                    self._future.set_exception(CancelledError())
            else:
                self._future.set_result(self._values)
        except InvalidStateError:  # cancelled by its owner meanwhile
            pass
        self._values = []


class _Failed:
    """A failed call in a ``Pool.map`` chunk's results: the results before it
    are yielded, then its error is raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Future(Future[R]):
    """A future whose done-callbacks run on its pool's callback thread.

    A callback added once the future is done runs at once, in the caller's
    thread, as ``Future`` does.
    """

    def __init__(self, callbacks: _Callbacks) -> None:
        super().__init__()
        self._pool_callbacks = callbacks

    def add_done_callback(self, fn: Callable[[Future[R]], object]) -> None:
        if self.done():
            _call_back(fn, self)
            return
        super().add_done_callback(functools.partial(self._pool_callbacks.run, fn))


def _call_back(fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
    try:
        fn(future)
    except BaseException:  # a callback never takes a parcelout thread down
        _log.exception("exception calling callback for %r", future)


class _Callbacks:
    """Runs done-callbacks in order on one thread, started when one is due
    and ended when none is left."""

    def __init__(self) -> None:
        self._due: deque[tuple[Callable[[Future[Any]], object], Future[Any]]] = deque()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
        with self._idle:
            self._due.append((fn, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="parcelout-callbacks", daemon=True)
                self._thread.start()

    def join(self) -> None:
        """Wait until every callback due has run (not on the callback thread)."""
        with self._idle:
            if self._thread is not threading.current_thread():
                self._idle.wait_for(lambda: self._thread is None)

    def _work(self) -> None:
        while True:
            with self._idle:
                if not self._due:
                    self._thread = None
                    self._idle.notify_all()
                    return
                fn, future = self._due.popleft()
            _call_back(fn, future)
            del fn, future


NO_MAIN_GUARD = (
    "parcelout: a worker process, importing the main script again as it starts, was asked to start a pool: "
    'put the script\'s work under `if __name__ == "__main__":` (process workers import the main module again, '
    "as multiprocessing's do)"
)


def _refuse_in_a_starting_worker() -> None:
    """A script without the ``__main__`` guard runs its work again in every
    process worker, as the worker imports it (spawn, forkserver): end that
    worker with one line that names the guard, not a page of tracebacks."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # Written here: a fork server's child ends on SystemExit without a word.
        sys.stderr.write(NO_MAIN_GUARD + "\n")
        sys.stderr.flush()
        raise SystemExit(1)


def _pool_backend(backend: Any) -> Any:
    """``Pool``'s backend, checked for the standard executors' second
    arguments (a pool is not measured: "auto" means processes)."""
    if isinstance(backend, multiprocessing.context.BaseContext):
        raise TypeError(
            "Pool's second argument is the backend; pass mp_context=, or use parcelout.ProcessPoolExecutor, "
            "which takes ProcessPoolExecutor's arguments in their order"
        )
    if backend == "auto":
        warnings.warn(
            'Pool(backend="auto") means process workers: a pool cannot measure a function it has not seen; '
            'say backend="process" (the default)',
            DeprecationWarning,
            stacklevel=3,
        )
        return "process"
    if isinstance(backend, str) and backend not in BACKEND_NAMES:
        raise ValueError(
            f"backend must be one of {', '.join(BACKEND_NAMES[1:])}, not {backend!r} (Pool's second argument is the "
            "backend; parcelout.ThreadPoolExecutor takes ThreadPoolExecutor's arguments in their order)"
        )
    return backend


def check_callable(fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}: {fn!r}")


def _run_inline(
    future: Future[R], fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any], policy: Policy
) -> None:
    """The serial pool's submit: run the call now, in the caller's thread."""
    if not future.set_running_or_notify_cancel():
        return
    lane = InlineLane()
    lane.submit(Call(fn, star=True), [(0, (args, kwargs))], policy)
    result = lane.next_result()
    if result.errors:
        future.set_exception(result.errors[0])
    else:
        future.set_result(result.values[0])


def _results(
    futures: deque[tuple[Future[list[R]], int, int]],
    end: float | None,
    more: Iterator[tuple[list[Any], int]] | None,
    pool: weakref.ref[Pool],
    call: Call,
) -> Generator[R, None, None]:
    """Executor.map's iterator: in order, with a deadline, refilling a buffer.

    ``futures`` holds each chunk's future with the position of its first item
    and its length, so an error can say which items it came from.
    """
    try:
        while futures:
            if more is not None and (owner := pool()) is not None and (next_chunk := next(more, None)):
                chunk, start = next_chunk
                futures.append((owner._submit_chunk(call, chunk, start), start, len(chunk)))
                del owner
            future, start, size = futures.popleft()
            try:
                chunk_results = future.result(None if end is None else end - time.monotonic())
            except (TimeoutError, CancelledError):
                raise
            except BaseException as error:
                named = any("parcelout: raised by Pool.map's" in note for note in getattr(error, "__notes__", ()))
                if future.done() and not future.cancelled() and future.exception() is error and not named:
                    where = f"item {start}" if size == 1 else f"one of the items {start} to {start + size - 1}"
                    error.add_note(f"parcelout: raised by Pool.map's {where}")
                raise
            finally:
                future.cancel()
            del future  # hold no result the caller has let go of (as the standard map)
            chunk_results.reverse()
            while chunk_results:
                if isinstance(chunk_results[-1], _Failed):  # the results before it were yielded
                    failed: Any = chunk_results.pop()
                    raise failed.error
                yield chunk_results.pop()  # (no name for it here: the caller's is its only reference)
    finally:
        for future, _, _ in futures:
            future.cancel()


def _backend_and_size(options: PoolOptions) -> tuple[BackendFactory, int]:
    """The backend factory for these options, and how many workers it has."""
    if options.kind == "serial":
        return _no_backend, 1  # the caller's thread is the worker: no engine
    if options.kind in ("dask", "ray"):
        from parcelout.backends._cluster import SLOTS_PER_CPU, ClusterBackend

        cluster = _open_cluster(options)
        factory: BackendFactory = functools.partial(
            ClusterBackend, cluster=cluster, initializer=options.initializer, initargs=options.initargs
        )
        # Two batches per worker: one running, one waiting on the cluster.
        return factory, SLOTS_PER_CPU * options.workers if options.workers else cluster.slots()
    return _backend_factory(options), options.size


def _no_backend(report: Callable[[Event], None]) -> Backend:
    raise AssertionError("a serial pool starts no backend")  # pragma: no cover


def _open_cluster(options: PoolOptions) -> Cluster:
    """Connect to (or start) the cluster engine that ``backend`` names."""
    if options.kind == "dask":
        from parcelout.backends._dask import DaskCluster

        return DaskCluster(options.client, options.address, options.workers)
    from parcelout.backends._ray import RayCluster

    return RayCluster(options.client, options.address, options.workers)


def _backend_factory(options: PoolOptions) -> BackendFactory:
    if options.kind == "custom":
        factory: BackendFactory = options.backend
        return factory
    if options.kind == "thread":
        from parcelout.backends._thread import ThreadBackend

        prefix = options.thread_name_prefix or "parcelout-thread"
        return functools.partial(
            ThreadBackend, initializer=options.initializer, initargs=options.initargs, name_prefix=prefix
        )
    if options.kind == "interpreter":
        from parcelout.backends._interpreter import InterpreterBackend, load

        load()  # no interpreters here: the error that says what to install, at the call
        return functools.partial(InterpreterBackend, initializer=options.initializer, initargs=options.initargs)
    from parcelout.backends._process import ProcessBackend, default_context

    context = options.mp_context or default_context(options.start_method)
    return functools.partial(
        ProcessBackend, context=context, initializer=options.initializer, initargs=options.initargs
    )


def _shutdown_at_exit() -> None:
    """As the standard executors: interpreter exit waits for submitted work
    (before ``atexit`` hooks run, which may no longer submit any), unless the
    program is ending on Ctrl-C, or Ctrl-C comes during that wait: then the
    work stops now and the program ends as an uncaught Ctrl-C ends it."""
    global _exiting
    _exiting = True
    if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        _terminate_all()
        return
    try:
        for pool in list(_live):
            pool._end(None, owned=False)
    except KeyboardInterrupt:
        _terminate_all()
        sys.stderr.write("KeyboardInterrupt\n")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _terminate_all() -> None:
    for pool in list(_live):
        while True:
            try:
                pool._end(KeyboardInterrupt(), owned=False)
                break
            except KeyboardInterrupt:  # a second Ctrl-C: the pool is being stopped already
                continue


threading._register_atexit(_shutdown_at_exit)  # type: ignore[attr-defined]  # as concurrent.futures does
# A forked child (a fork worker) inherits the pools but not their threads: its
# exit must not wait for them.
os.register_at_fork(after_in_child=_live.clear)
