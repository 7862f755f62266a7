"""The promise, property-tested on every backend: every input item produces
exactly one outcome (a result or a Failure), never lost, never duplicated,
in input order for ``imap``, whatever the worker count, chunk size, window
and failing items."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parcelout
from parcelout import Failure


class Boom(Exception):
    pass


def behave(item: tuple[int, str]) -> int:
    index, how = item
    if how == "raise":
        raise Boom(index)
    if how == "crash":
        os._exit(7)
    return index * 2


def plans(crash: bool) -> st.SearchStrategy[list[str]]:
    kinds = ["ok", "ok", "ok", "raise"] + (["crash"] if crash else [])
    return st.lists(st.sampled_from(kinds), max_size=120)


def check(outcomes: Sequence[object], plan: list[str], ordered: bool) -> None:
    seen: dict[int, object] = {}
    for outcome in outcomes:
        index = outcome.index if isinstance(outcome, Failure) else int(outcome) // 2  # type: ignore[call-overload]
        assert index not in seen, f"item {index} came out twice"
        seen[index] = outcome
    assert sorted(seen) == list(range(len(plan))), "an item was lost"
    for index, how in enumerate(plan):
        outcome = seen[index]
        if how == "ok":
            assert outcome == index * 2
        else:
            assert isinstance(outcome, Failure)
            assert outcome.item == (index, how)
            assert outcome.kind == ("crash" if how == "crash" else "error")
            if how == "crash":
                assert isinstance(outcome.error, parcelout.WorkerCrashed)
            else:
                assert isinstance(outcome.error, Boom)
    if ordered:
        indices = [o.index if isinstance(o, Failure) else int(o) // 2 for o in outcomes]  # type: ignore[call-overload]
        assert indices == sorted(indices)


def run(
    backend: str, plan: list[str], *, workers: int, chunksize: int | None, window: int | None, ordered: bool
) -> None:
    items = list(enumerate(plan))
    mapper = parcelout.imap if ordered else parcelout.imap_unordered
    outcomes = list(
        mapper(
            behave,
            iter(items),  # no length: the unknown-length path
            backend=backend,
            workers=workers,
            chunksize=chunksize,
            window=window,
            on_error="return",
        )
    )
    check(outcomes, plan, ordered)


common = {
    "workers": st.integers(1, 4),
    "chunksize": st.none() | st.integers(1, 17),
    "window": st.none() | st.integers(1, 40),
    "ordered": st.booleans(),
}
quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
slow = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(plan=plans(crash=False), **common)
def test_exactly_once_serial(
    plan: list[str], workers: int, chunksize: int | None, window: int | None, ordered: bool
) -> None:
    run("serial", plan, workers=workers, chunksize=chunksize, window=window, ordered=ordered)


@quick
@given(plan=plans(crash=False), **common)
def test_exactly_once_thread(
    plan: list[str], workers: int, chunksize: int | None, window: int | None, ordered: bool
) -> None:
    run("thread", plan, workers=workers, chunksize=chunksize, window=window, ordered=ordered)


@slow
@given(plan=plans(crash=True), **common)
def test_exactly_once_process_with_crashes(
    plan: list[str], workers: int, chunksize: int | None, window: int | None, ordered: bool
) -> None:
    run("process", plan, workers=workers, chunksize=chunksize, window=window, ordered=ordered)


@slow
@given(plan=plans(crash=False), chunksize=st.none() | st.integers(1, 9))
def test_exactly_once_on_one_shared_pool(plan: list[str], chunksize: int | None) -> None:
    with parcelout.Pool(2, backend="process") as pool:
        first = list(pool.imap(behave, list(enumerate(plan)), chunksize=chunksize, on_error="return"))
        second = list(pool.imap_unordered(behave, list(enumerate(plan)), chunksize=chunksize, on_error="return"))
    check(first, plan, ordered=True)
    check(second, plan, ordered=False)


def test_many_items_with_random_failures(backend: str) -> None:
    plan = ["raise" if (i * 7919) % 13 == 0 else "ok" for i in range(20_000)]
    outcomes = list(parcelout.imap(behave, list(enumerate(plan)), backend=backend, workers=2, on_error="return"))
    check(outcomes, plan, ordered=True)
