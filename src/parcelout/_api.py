"""The one-shot functions: ``imap``, ``imap_unordered`` and ``map``.

Each call makes its own pool when it starts iterating and tears it down when
the iteration ends, however it ends: at the end the workers stop cleanly; on
``break``, ``close()``, garbage collection or an exception the pending work is
dropped and process workers are killed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable
from typing import Any, Literal, TypeVar, overload

from parcelout._auto import AutoLane, Plan
from parcelout._core._engine import BackendFactory
from parcelout._core._feeder import Feeder
from parcelout._core._messages import DEFAULT_POLICY, Call
from parcelout._failure import Failure
from parcelout._journal import Journal
from parcelout._options import POLICY_OPTION_NAMES, OnError, PoolOptions, ProgressSpec, RetryOn, RunOptions, make_policy
from parcelout._pool import Pool, check_callable
from parcelout._stream import InlineLane, Lane, drive_batches, flatten, length_of

T = TypeVar("T")
R = TypeVar("R")


@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = ...,
    backend: str | BackendFactory = ...,
    chunksize: int | None = ...,
    window: int | None = ...,
    on_error: Literal["raise", "skip"] = ...,
    initializer: Callable[..., object] | None = ...,
    initargs: tuple[Any, ...] = ...,
    progress: ProgressSpec = ...,
    start_method: str | None = ...,
    max_tasks_per_worker: int | None = ...,
    timeout: float | None = ...,
    retries: int = ...,
    retry_on: RetryOn | None = ...,
    backoff: float = ...,
    max_crashes: int = ...,
    journal: str | os.PathLike[str] | Journal | None = ...,
    key: Callable[[T], str | int] | None = ...,
    retry_failed: bool = ...,
    client: Any = ...,
    address: str | None = ...,
) -> Generator[R, None, None]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = ...,
    backend: str | BackendFactory = ...,
    chunksize: int | None = ...,
    window: int | None = ...,
    on_error: Literal["return"],
    initializer: Callable[..., object] | None = ...,
    initargs: tuple[Any, ...] = ...,
    progress: ProgressSpec = ...,
    start_method: str | None = ...,
    max_tasks_per_worker: int | None = ...,
    timeout: float | None = ...,
    retries: int = ...,
    retry_on: RetryOn | None = ...,
    backoff: float = ...,
    max_crashes: int = ...,
    journal: str | os.PathLike[str] | Journal | None = ...,
    key: Callable[[T], str | int] | None = ...,
    retry_failed: bool = ...,
    client: Any = ...,
    address: str | None = ...,
) -> Generator[R | Failure[T], None, None]: ...
def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    backend: str | BackendFactory = "auto",
    chunksize: int | None = None,
    window: int | None = None,
    on_error: OnError = "raise",
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    progress: ProgressSpec = False,
    start_method: str | None = None,
    max_tasks_per_worker: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: RetryOn | None = None,
    backoff: float = 0.0,
    max_crashes: int = DEFAULT_POLICY.max_crashes,
    journal: str | os.PathLike[str] | Journal | None = None,
    key: Callable[[T], str | int] | None = None,
    retry_failed: bool = False,
    client: Any = None,
    address: str | None = None,
) -> Generator[Any, None, None]:
    """Apply ``fn`` to each item on a pool of workers; yield results in input order.

    Input is pulled lazily: at most ``window`` items are taken and not yet
    yielded, so an endless generator streams in bounded memory.

    Args:
        fn: a callable of one argument. Process workers receive it with
            cloudpickle, so lambdas and closures work.
        items: any iterable.
        workers: how many workers (default: as ``backend="auto"`` plans, or
            the usable CPUs).
        backend: ``"auto"`` (the default: measures the first items and
            chooses; see ``explain``), ``"process"``, ``"thread"``,
            ``"serial"`` (the calling thread), ``"dask"``, ``"ray"``, or a
            backend factory.
        chunksize: items per batch (default: adapted to measured item times).
        window: the most items taken and not yet yielded (default: four
            batches per worker; ``map`` without one bounds only the items out
            at the workers).
        on_error: ``"raise"`` the first failure in output order (the work not
            started is cancelled); ``"return"`` a ``Failure`` in its place;
            ``"skip"`` it.
        initializer, initargs: ``initializer(*initargs)`` runs once per worker.
        progress: True for a tqdm bar on standard error; or a callable
            receiving ``(done, total)``, ``total`` None for input of unknown
            length.
        start_method: for process workers (default forkserver).
        max_tasks_per_worker: replace a worker after this many items.
        timeout: seconds one item may run; past it, its process worker is
            stopped (its thread abandoned) and it fails with ``TaskTimeout``.
        retries: run a failed item (error, crash or timeout) up to this many
            more times, on another worker when there is one.
        retry_on: which failures to retry: exception types (a crash is a
            ``WorkerCrashed``, a timeout a ``TaskTimeout``) or a predicate
            of the exception (default: every ``Exception``).
        backoff: wait ``backoff * 2 ** (n - 1)`` seconds before the n-th retry.
        max_crashes: an item under which this many workers died fails for
            good (a poison item), whatever ``retries`` says.
        journal: a SQLite file (or a ``parcelout.Journal``) recording the
            run: run again with it, items done before are not run again and
            their stored results are yielded in their place.
        key: with a journal, what names an item across runs (item -> str or
            int); by default its input index and a hash of its pickle.
        retry_failed: with a journal, run again the items that failed before
            (by default their stored failures are given again).
        client, address: with ``backend="dask"``, the ``distributed.Client``
            to run on or the address of a Dask scheduler; by default a
            ``LocalCluster`` is started for the run and closed after it.

    Raises:
        TypeError: ``fn`` is not callable, or an option has the wrong type.
        ValueError: an option is out of range (``workers=0``...).
        JournalError: the journal is in use by another run, damaged, or was
            written by another function (at the first ``next()``).
        Exception: with ``on_error="raise"``, the first item's exception, with
            the worker's traceback as its ``__cause__`` (process workers) and a
            note naming the item; or the input iterator's own exception, after
            the results before it.
    """
    batches = _batches(
        fn,
        items,
        ordered=True,
        workers=workers,
        backend=backend,
        chunksize=chunksize,
        window=window,
        on_error=on_error,
        initializer=initializer,
        initargs=initargs,
        progress=progress,
        start_method=start_method,
        max_tasks_per_worker=max_tasks_per_worker,
        timeout=timeout,
        retries=retries,
        retry_on=retry_on,
        backoff=backoff,
        max_crashes=max_crashes,
        journal=journal,
        key=key,
        retry_failed=retry_failed,
        client=client,
        address=address,
    )
    return flatten(batches)


def _batches(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    ordered: bool,
    workers: int | None = None,
    backend: str | BackendFactory = "auto",
    chunksize: int | None = None,
    window: int | None = None,
    on_error: OnError = "raise",
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    progress: ProgressSpec = False,
    start_method: str | None = None,
    max_tasks_per_worker: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: RetryOn | None = None,
    backoff: float = 0.0,
    max_crashes: int = DEFAULT_POLICY.max_crashes,
    journal: str | os.PathLike[str] | Journal | None = None,
    key: Callable[[Any], Any] | None = None,
    retry_failed: bool = False,
    client: Any = None,
    address: str | None = None,
    _on_plan: Callable[[Plan], object] | None = None,
    _keeps_results: bool = False,
) -> Generator[list[Any], None, None]:
    """Check every option now, at the call; return the stream, a list of
    outcomes at a time. ``_on_plan`` (for ``parcelout run --verbose``) is
    given the plan ``backend="auto"`` makes; ``_keeps_results``: see
    ``RunOptions.keeps_results``."""
    check_callable(fn)
    pool_options = PoolOptions(
        workers=workers,
        backend=backend,
        initializer=initializer,
        initargs=initargs,
        start_method=start_method,
        max_tasks_per_worker=max_tasks_per_worker,
        client=client,
        address=address,
    )
    policy = make_policy(timeout, retries, retry_on, backoff, max_crashes)
    if timeout is not None and pool_options.kind == "serial":
        raise ValueError("timeout needs thread or process workers: the serial backend cannot stop an item")
    run = RunOptions(
        chunksize, window, on_error, progress, policy, Journal.of(journal), key, retry_failed, _keeps_results
    )
    return _owned(pool_options, fn, items, run, ordered=ordered, on_plan=_on_plan)


@overload
def imap_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Any,
) -> Generator[R, None, None]: ...
@overload
def imap_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["return"],
    **options: Any,
) -> Generator[R | Failure[T], None, None]: ...
def imap_unordered(
    fn: Callable[[T], R], items: Iterable[T], *, on_error: OnError = "raise", **options: Any
) -> Generator[Any, None, None]:
    """As ``imap``, with results in the order they complete. Same options."""
    return flatten(_batches(fn, items, ordered=False, on_error=on_error, **options))


@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Any,
) -> list[R]: ...
@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    on_error: Literal["return"],
    **options: Any,
) -> list[R | Failure[T]]: ...
def map(fn: Callable[[T], R], items: Iterable[T], *, on_error: OnError = "raise", **options: Any) -> list[Any]:
    """``list(imap(fn, items, ...))``. Same options.

    Without a ``window``, a slow item does not stop the workers: the results
    after it wait here in any number (the list holds them all anyway), and the
    window bounds only the items out at the workers.
    """
    out: list[Any] = []
    keeps = options.get("window") is None
    for outcomes in _batches(fn, items, ordered=True, on_error=on_error, _keeps_results=keeps, **options):
        out.extend(outcomes)
    return out


def _owned(
    pool_options: PoolOptions,
    fn: Callable[..., Any],
    items: Iterable[Any],
    run: RunOptions,
    *,
    ordered: bool,
    on_plan: Callable[[Plan], object] | None = None,
) -> Generator[list[Any], None, None]:
    """A stream over a pool of its own, started at the first ``next()``.

    With ``backend="auto"`` the pool is chosen after measuring the first
    items on a measuring thread (see ``_auto``).
    """
    pools: list[Pool] = []

    def pool_for(backend: Any, workers: int | None) -> Pool:
        pool = Pool(
            workers,
            backend,
            initializer=pool_options.initializer,
            initargs=pool_options.initargs,
            start_method=pool_options.start_method,
            max_tasks_per_worker=pool_options.max_tasks_per_worker,
            client=pool_options.client,
            address=pool_options.address,
        )
        pools.append(pool)
        return pool

    try:
        lane: Lane
        if pool_options.backend == "auto":
            lane = _auto_lane(pool_options, fn, items, run, pool_for, on_plan=on_plan)
        else:
            lane = pool_for(pool_options.backend, pool_options.workers)._new_lane()
        yield from drive_batches(lane, Call(fn), items, run, ordered)
    except GeneratorExit:
        for pool in pools:
            pool._terminate(wait=True)
        raise
    except BaseException:
        for pool in pools:
            pool._terminate(wait=pool.backend == "process")  # a thread's item cannot be stopped
        raise
    else:
        for pool in pools:
            pool.shutdown(wait=True)


def _auto_lane(
    pool_options: PoolOptions,
    fn: Callable[..., Any],
    items: Iterable[Any],
    run: RunOptions,
    pool_for: Callable[[Any, int | None], Pool],
    *,
    on_plan: Callable[[Plan], object] | None,
) -> AutoLane:
    inline = pool_for("serial", None)._new_lane()  # the initializer runs here, before anything is measured
    assert isinstance(inline, InlineLane)
    return AutoLane(
        fn,
        total=length_of(items),
        workers=pool_options.workers,
        inline=inline,
        make_lane=lambda plan: pool_for(plan.backend, plan.workers)._new_lane(),
        policy=run.policy,
        on_plan=on_plan,
    )


def explain(fn: Callable[..., Any], items: Iterable[Any], *, workers: int | None = None, **options: Any) -> Plan:
    """What ``backend="auto"`` would choose for ``fn`` over ``items``, and why.

    Runs only the few first items it needs to measure, in this process
    (an iterator passed as ``items`` loses them), and returns when they have
    finished; starts no worker. The
    result prints as a short report; see ``Plan``.
    """
    check_callable(fn)
    policy = make_policy(**{k: options.pop(k) for k in POLICY_OPTION_NAMES if k in options})
    pool_options = PoolOptions(workers=workers, **options)
    serial = Pool(1, "serial", initializer=pool_options.initializer, initargs=pool_options.initargs)
    inline = serial._new_lane()
    assert isinstance(inline, InlineLane)
    total = length_of(items)
    lane = AutoLane(fn, total=total, workers=workers, inline=inline, make_lane=lambda plan: None, policy=policy)
    source = Feeder(items)
    try:
        plan = lane.measure(Call(fn), source.take, policy)
    finally:
        serial.shutdown()
    if source.error is not None and lane.measurer.measured == 0:
        raise source.error
    return plan
