"""The one-shot functions: ``imap``, ``imap_unordered`` and ``map``.

Each call makes its own pool when it starts iterating and tears it down when
the iteration ends, however it ends: at the end the workers stop cleanly; on
``break``, ``close()``, garbage collection or an exception the pending work is
dropped and process workers are killed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Literal, TypeVar, Unpack, overload

from parcelout._auto import AutoLane, Measurements, Plan
from parcelout._auto_decide import PROCESS_START_SECONDS
from parcelout._core._feeder import Feeder
from parcelout._core._messages import Call
from parcelout._failure import Failure
from parcelout._journal import Journal
from parcelout._options import (
    POLICY_OPTION_NAMES,
    OnError,
    Options,
    PoolOptions,
    RunOptions,
    checked,
    default_start_method,
    make_policy,
)
from parcelout._pool import Pool, check_callable
from parcelout._stream import InlineLane, Lane, drive_batches, flatten, length_of
from parcelout.backends._base import Star

T = TypeVar("T")
R = TypeVar("R")


@overload
def imap(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Options],
) -> Generator[R, None, None]: ...
@overload
def imap(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["return"],
    **options: Unpack[Options],
) -> Generator[R | Failure[Any], None, None]: ...
def imap(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: OnError = "raise",
    **options: Unpack[Options],
) -> Generator[Any, None, None]:
    """Apply ``fn`` to each item on a pool of workers; yield results in input order.

    Input is pulled lazily: at most ``window`` items are taken and not yet
    yielded, so an endless generator streams in bounded memory. With several
    iterables, as the built-in ``map``: ``fn(x, y)`` for ``x, y`` taken from
    them side by side, until the shortest ends.

    Args:
        fn: a callable. Process workers receive it with cloudpickle, so
            lambdas and closures work.
        items, iterables: any iterables.
        on_error: ``"raise"`` the first failure in output order (the work not
            started is cancelled); ``"return"`` a ``Failure`` in its place;
            ``"skip"`` it.
        workers: how many workers (default: as ``backend="auto"`` plans, or
            the usable CPUs); ``max_workers`` is the standard library's name.
        backend: ``"auto"`` (the default: measures the first items and
            chooses; see ``explain``), ``"process"``, ``"thread"``,
            ``"serial"`` (the calling thread), ``"dask"``, ``"ray"``, or a
            backend factory.
        chunksize: items per batch (default: adapted to measured item times).
        window: the most items taken and not yet yielded (default: four
            batches per worker, and 64 MiB of items and results; ``map``
            bounds only the items out at the workers, since its list holds
            every result anyway).
        initializer, initargs: ``initializer(*initargs)`` runs once per worker.
        progress: True for a tqdm bar on standard error; a dict of tqdm's
            options (``desc``, ``position``, ``leave``, ``total`` for input of
            unknown length, ``tqdm_class``...); or a callable receiving
            ``(done, total)``, ``total`` None for input of unknown length.
        start_method: for process workers (default forkserver).
        max_tasks_per_worker: replace a worker after this many items.
        task_timeout: seconds one item may run; past it, its process worker
            is stopped (its thread abandoned) and it fails with
            ``TaskTimeout``. (``timeout``, its old name, still works, with a
            ``DeprecationWarning``.)
        retries: run a failed item (error, crash or task timeout) up to this
            many more times, on another worker when there is one.
        retry_on: which failures to retry: exception types (a crash is a
            ``WorkerCrashed``, a task timeout a ``TaskTimeout``) or a
            predicate of the exception (default: every ``Exception``).
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
        TypeError: ``fn`` is not callable, an option is unknown (the message
            names the nearest one) or has the wrong type.
        ValueError: an option is out of range (``workers=0``...).
        JournalError: the journal is in use by another run, damaged, or was
            written by another function (at the first ``next()``).
        Exception: with ``on_error="raise"``, the first item's exception, with
            the worker's traceback as its ``__cause__`` (process workers) and a
            note naming the item; or the input iterator's own exception, after
            the results before it.
    """
    fn, items = _applied(fn, items, iterables)
    return flatten(_batches(fn, items, ordered=True, on_error=on_error, where="imap", options=options))


@overload
def imap_unordered(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Options],
) -> Generator[R, None, None]: ...
@overload
def imap_unordered(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["return"],
    **options: Unpack[Options],
) -> Generator[R | Failure[Any], None, None]: ...
def imap_unordered(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: OnError = "raise",
    **options: Unpack[Options],
) -> Generator[Any, None, None]:
    """As ``imap``, with results in the order they complete. Same options."""
    fn, items = _applied(fn, items, iterables)
    return flatten(_batches(fn, items, ordered=False, on_error=on_error, where="imap_unordered", options=options))


@overload
def map(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Options],
) -> list[R]: ...
@overload
def map(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: Literal["return"],
    **options: Unpack[Options],
) -> list[R | Failure[Any]]: ...
def map(
    fn: Callable[..., R],
    items: Iterable[Any],
    /,
    *iterables: Iterable[Any],
    on_error: OnError = "raise",
    **options: Unpack[Options],
) -> list[Any]:
    """``list(imap(fn, items, ...))``. Same options.

    Without a ``window``, a slow item does not stop the workers: the results
    after it wait here in any number (the list holds them all anyway), and the
    window bounds only the items out at the workers.
    """
    fn, items = _applied(fn, items, iterables)
    return _collect(fn, items, on_error, "map", options)


@overload
def starmap(
    fn: Callable[..., R],
    items: Iterable[Iterable[Any]],
    /,
    *,
    on_error: Literal["raise", "skip"] = ...,
    **options: Unpack[Options],
) -> list[R]: ...
@overload
def starmap(
    fn: Callable[..., R],
    items: Iterable[Iterable[Any]],
    /,
    *,
    on_error: Literal["return"],
    **options: Unpack[Options],
) -> list[R | Failure[Any]]: ...
def starmap(
    fn: Callable[..., R], items: Iterable[Iterable[Any]], /, *, on_error: OnError = "raise", **options: Unpack[Options]
) -> list[Any]:
    """``fn(*args)`` for each ``args`` in ``items``, as a list, as
    ``itertools.starmap`` and ``multiprocessing.Pool.starmap``. Same options
    as ``map``; a ``Failure``'s item is the ``args`` tuple."""
    return _collect(Star(fn), items, on_error, "starmap", options)


def _collect(
    fn: Callable[..., Any], items: Iterable[Any], on_error: OnError, where: str, options: Options
) -> list[Any]:
    out: list[Any] = []
    keeps = options.get("window") is None
    for outcomes in _batches(fn, items, ordered=True, on_error=on_error, where=where, options=options, keeps=keeps):
        out.extend(outcomes)
    return out


def _applied(
    fn: Callable[..., Any], items: Iterable[Any], iterables: tuple[Iterable[Any], ...]
) -> tuple[Callable[..., Any], Iterable[Any]]:
    """One iterable: ``fn`` over it. Several: ``fn`` over their elements side
    by side (the items are the tuples of arguments)."""
    if not iterables:
        return fn, items
    return Star(fn), zip(items, *iterables, strict=False)


def _batches(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    ordered: bool,
    on_error: OnError,
    where: str,
    options: Mapping[str, Any],
    keeps: bool = False,
    on_plan: Callable[[Plan], object] | None = None,
) -> Generator[list[Any], None, None]:
    """Check every option now, at the call; return the stream, a list of
    outcomes at a time. ``on_plan`` (for ``parcelout run --verbose``) is
    given the plan ``backend="auto"`` makes; ``keeps``: see
    ``RunOptions.keeps_results``."""
    check_callable(fn)
    pool_options, run = configure(where, on_error, options, keeps=keeps)
    return _owned(pool_options, fn, items, run, ordered=ordered, on_plan=on_plan)


def configure(
    where: str, on_error: OnError, options: Mapping[str, Any], *, keeps: bool = False
) -> tuple[PoolOptions, RunOptions]:
    """The pool a run needs and how it runs, from its options, checked."""
    values = checked(where, options)
    pool_options = PoolOptions(**{name: values[name] for name in POOL_FIELDS})
    policy = make_policy(**{name: values[name] for name in POLICY_OPTION_NAMES})
    if policy.timeout is not None and pool_options.kind == "serial":
        raise ValueError("task_timeout needs thread or process workers: the serial backend cannot stop an item")
    run = RunOptions(
        values["chunksize"],
        values["window"],
        on_error,
        values["progress"],
        policy,
        Journal.of(values["journal"]),
        values["key"],
        values["retry_failed"],
        keeps,
    )
    return pool_options, run


POOL_FIELDS = (
    "workers",
    "backend",
    "initializer",
    "initargs",
    "start_method",
    "max_tasks_per_worker",
    "client",
    "address",
)


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
    except BaseException as error:
        for pool in pools:
            pool._end(error, owned=True)
        raise
    else:
        for pool in pools:
            pool._end(None, owned=True)


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
        process_start=process_start(pool_options),
    )


def explain(fn: Callable[..., Any], items: Iterable[Any], /, **options: Unpack[Options]) -> Plan:
    """What ``backend="auto"`` would choose for ``fn`` over ``items``, and why.

    Runs only the few first items it needs to measure, in this process
    (an iterator passed as ``items`` loses them), and returns when they have
    finished; starts no worker. The result prints as a short report; see
    ``Plan``. Takes the options of ``imap``: a named ``backend`` is taken as
    it is (nothing measured), as are ``workers`` and ``chunksize``.
    """
    check_callable(fn)
    pool_options, run = configure("explain", "raise", options)
    policy = run.policy
    if pool_options.backend != "auto":
        return _named_plan(pool_options, run)
    serial = Pool(1, "serial", initializer=pool_options.initializer, initargs=pool_options.initargs)
    inline = serial._new_lane()
    assert isinstance(inline, InlineLane)
    total = length_of(items)
    workers = pool_options.workers
    lane = AutoLane(
        fn,
        total=total,
        workers=workers,
        inline=inline,
        make_lane=lambda plan: None,
        policy=policy,
        process_start=process_start(pool_options),
    )
    source = Feeder(items)
    try:
        plan = lane.measure(Call(fn), source.take, policy)
    finally:
        serial.shutdown()
    if source.error is not None and lane.measurer.measured == 0:
        raise source.error
    if run.chunksize is not None and plan.backend != "serial":
        plan = dataclasses.replace(plan, chunksize=run.chunksize)
    return plan


def _named_plan(pool_options: PoolOptions, run: RunOptions) -> Plan:
    """The plan for a backend named by the caller: nothing to measure."""
    kind = pool_options.kind
    workers = 1 if kind == "serial" else pool_options.size
    chunksize = None if kind == "serial" else run.chunksize
    return Plan(kind, workers, chunksize, "the backend was named", Measurements(0, 0.0, 1.0, None, None, None, False))


def process_start(pool_options: PoolOptions) -> float:
    """About how long process workers take to start, by the start method they
    would use (auto weighs sub-interpreters against it)."""
    method = pool_options.start_method or default_start_method()
    return PROCESS_START_SECONDS.get(method, PROCESS_START_SECONDS["spawn"])
