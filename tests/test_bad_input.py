"""Bad input fails clearly and costs only itself.

Each kind of bad input (a non-callable, a function, item or result that
cannot travel to or from a process worker, an exception that cannot travel
back, an input iterator that breaks halfway, an option out of range) must:

* fail with an exception of a telling type whose message or notes name the
  item (its index) and the cause;
* lose nothing: with ``on_error="return"`` every other item still gets its
  correct result, in order, exactly once;
* leave the pool working: a good task submitted after the bad one succeeds.

A bad option fails at the call, before any worker starts (the autouse check in
``conftest`` finds any worker left behind).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pytest

import parcelout
from parcelout import Failure, RemoteError, RemoteTraceback, TransferError
from tests import faults
from tests.faults import (
    InputBroke,
    LockedError,
    PickleRefused,
    TwoArgError,
    Unpicklable,
    UnpickleRefused,
    UnpicklesBadly,
)

PROMPTLY = 10.0  # seconds: the bound on every wait for a future


# ---------------------------------------------------------------- helpers


def unpickles_badly_on_3(x: int) -> object:
    """A result that pickles in the worker but fails to unpickle in the parent, for item 3."""
    if x == 3:
        return UnpicklesBadly(f"result of {x}")
    return 2 * x


def notes_of(error: BaseException) -> str:
    notes: list[str] = getattr(error, "__notes__", [])
    return "\n".join(notes)


def names_item(error: BaseException, index: int) -> bool:
    """Whether the error's notes name the item at ``index`` of the input."""
    return re.search(rf"\bitem {index}\b", notes_of(error)) is not None


def with_bad_item(n: int, bad_at: int, bad: object) -> list[object]:
    items: list[object] = list(range(n))
    items[bad_at] = bad
    return items


def only_these_failed(
    outcomes: Sequence[object], items: Sequence[object], expected: Callable[[Any], object], bad: Iterable[int]
) -> list[Failure[Any]]:
    """Check outcomes given in input order: a ``Failure`` for each index in
    ``bad`` (carrying its index and its very item), ``expected(item)`` for every
    other one, one outcome per item. Return the failures."""
    bad = set(bad)
    assert len(outcomes) == len(items), f"{len(items)} items gave {len(outcomes)} outcomes"
    failures: list[Failure[Any]] = []
    for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
        if index in bad:
            assert isinstance(outcome, Failure), f"item {index} should have failed, but gave {outcome!r}"
            assert outcome.index == index
            assert outcome.item is item
            assert outcome.kind == "error"
            failures.append(outcome)
        else:
            assert not isinstance(outcome, Failure), f"item {index} failed: {outcome!r}"
            assert outcome == expected(item), f"item {index} gave {outcome!r}"
    return failures


def the_pool_still_works(pool: parcelout.Pool) -> None:
    assert pool.submit(faults.double, 21).result(timeout=PROMPTLY) == 42
    assert list(pool.imap(faults.double, range(6))) == [0, 2, 4, 6, 8, 10]


def collect_until_error(outcomes: Iterable[object]) -> tuple[list[object], BaseException | None]:
    """What an iterator yields before it raises, and what it raises (or None)."""
    got: list[object] = []
    try:
        for outcome in outcomes:
            got.append(outcome)
    except Exception as error:
        return got, error
    return got, None


# ---------------------------------------------------------------- options: fail at the call

# Each entry point, called with the options under test. None of them is
# iterated: a bad option must fail at the call, before any work starts.
ENTRY_POINTS: dict[str, Callable[..., object]] = {
    "imap": lambda **options: parcelout.imap(faults.double, range(3), **options),
    "imap_unordered": lambda **options: parcelout.imap_unordered(faults.double, range(3), **options),
    "map": lambda **options: parcelout.map(faults.double, range(3), **options),
}
POOL_OPTIONS: dict[str, Callable[..., object]] = {**ENTRY_POINTS, "Pool": parcelout.Pool}
RUN_OPTIONS: dict[str, Callable[..., object]] = {
    **ENTRY_POINTS,
    "Pool.imap": lambda **options: run_on_a_pool("imap", options),
    "Pool.imap_unordered": lambda **options: run_on_a_pool("imap_unordered", options),
}


def run_on_a_pool(method: str, options: dict[str, Any]) -> object:
    """Call ``pool.<method>`` with run options on a fresh pool; the pool must
    still work after the call fails."""
    backend = options.pop("backend")
    with parcelout.Pool(2, backend) as pool:
        try:
            return getattr(pool, method)(faults.double, range(3), **options)
        finally:
            the_pool_still_works(pool)


NOT_CALLABLE = [pytest.param(42, id="int"), pytest.param("double", id="str"), pytest.param(None, id="None")]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("fn", NOT_CALLABLE)
def test_a_non_callable_fn_is_a_type_error_at_the_call(backend: str, entry: str, fn: Any) -> None:
    call: Callable[..., object] = getattr(parcelout, entry)
    with pytest.raises(TypeError) as caught:
        call(fn, range(3), backend=backend)
    message = str(caught.value)
    assert "fn must be callable" in message
    assert type(fn).__name__ in message
    assert repr(fn) in message


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_a_pool_stream_with_a_non_callable_fails_at_the_call_and_the_pool_goes_on(backend: str, method: str) -> None:
    not_callable: Any = 42
    with parcelout.Pool(2, backend) as pool:
        with pytest.raises(TypeError, match="fn must be callable, not int: 42"):
            getattr(pool, method)(not_callable, range(3))
        the_pool_still_works(pool)


def test_submitting_a_non_callable_fails_its_future_and_the_pool_goes_on(backend: str) -> None:
    not_callable: Any = 42
    with parcelout.Pool(2, backend) as pool:
        future: Future[Any] = pool.submit(not_callable, 3)  # as the standard executors: the future fails
        error = future.exception(timeout=PROMPTLY)
        assert isinstance(error, TypeError)
        assert "'int' object is not callable" in str(error)
        the_pool_still_works(pool)


@pytest.mark.parametrize("entry", POOL_OPTIONS)
@pytest.mark.parametrize("workers", [0, -1, -100])
def test_workers_below_one_is_a_value_error_at_the_call(backend: str, entry: str, workers: int) -> None:
    with pytest.raises(ValueError, match=r"^workers must be greater than 0$"):
        POOL_OPTIONS[entry](workers=workers, backend=backend)


@pytest.mark.parametrize("entry", POOL_OPTIONS)
@pytest.mark.parametrize(
    ("workers", "type_name"),
    [
        pytest.param(True, "bool", id="True"),
        pytest.param(False, "bool", id="False"),
        pytest.param(2.0, "float", id="float"),
        pytest.param("2", "str", id="str"),
    ],
)
def test_workers_that_is_not_an_int_is_a_type_error_at_the_call(
    backend: str, entry: str, workers: object, type_name: str
) -> None:
    """A bool is an int to Python, but ``workers=True`` is a mistake, not one worker."""
    with pytest.raises(TypeError, match=rf"^workers must be an int, not {type_name}$"):
        POOL_OPTIONS[entry](workers=workers, backend=backend)


def test_max_workers_below_one_names_max_workers() -> None:
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        parcelout.Pool(max_workers=0, backend="thread")


@pytest.mark.parametrize("entry", RUN_OPTIONS)
@pytest.mark.parametrize("chunksize", [0, -3])
def test_chunksize_below_one_is_a_value_error_at_the_call(backend: str, entry: str, chunksize: int) -> None:
    with pytest.raises(ValueError, match=r"^chunksize must be greater than 0$"):
        RUN_OPTIONS[entry](chunksize=chunksize, backend=backend)


@pytest.mark.parametrize("entry", RUN_OPTIONS)
def test_a_bool_chunksize_is_a_type_error_at_the_call(backend: str, entry: str) -> None:
    with pytest.raises(TypeError, match=r"^chunksize must be an int, not bool$"):
        RUN_OPTIONS[entry](chunksize=True, backend=backend)


def test_executor_map_chunksize_below_one_is_a_value_error_and_the_pool_goes_on(backend: str) -> None:
    with parcelout.Pool(2, backend) as pool:
        with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
            pool.map(faults.double, range(3), chunksize=0)
        the_pool_still_works(pool)


@pytest.mark.parametrize("entry", RUN_OPTIONS)
@pytest.mark.parametrize("on_error", ["ignore", "RAISE", "", None])
def test_an_unknown_on_error_is_a_value_error_naming_the_choices(backend: str, entry: str, on_error: Any) -> None:
    with pytest.raises(ValueError) as caught:
        RUN_OPTIONS[entry](on_error=on_error, backend=backend)
    message = str(caught.value)
    assert "on_error must be 'raise', 'return' or 'skip'" in message
    assert message.endswith(f"not {on_error!r}")


@pytest.mark.parametrize("entry", POOL_OPTIONS)
@pytest.mark.parametrize("name", ["threads", "Process", "", "spark"])
def test_an_unknown_backend_name_is_a_value_error_naming_the_choices(entry: str, name: str) -> None:
    with pytest.raises(ValueError) as caught:
        POOL_OPTIONS[entry](backend=name)
    message = str(caught.value)
    assert "backend must be one of" in message
    assert "serial, thread, process" in message
    assert f"not {name!r}" in message


@pytest.mark.parametrize("entry", POOL_OPTIONS)
def test_a_backend_that_is_neither_a_name_nor_a_factory_is_a_type_error(entry: str) -> None:
    with pytest.raises(TypeError, match=r"^backend must be a name or a backend factory, not int$"):
        POOL_OPTIONS[entry](backend=3)


# ---------------------------------------------------------------- a function that cannot be pickled


def test_a_function_that_cannot_be_pickled_fails_naming_the_function_and_the_first_item() -> None:
    locked_double = faults.make_locked_closure()
    with pytest.raises(TypeError) as caught:
        parcelout.map(locked_double, range(6), backend="process", workers=2)
    error = caught.value
    assert "cannot pickle '_thread.lock' object" in str(error)
    notes = notes_of(error)
    assert "locked_double" in notes
    assert "could not be pickled to send it to a worker" in notes
    assert names_item(error, 0)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_a_function_that_cannot_be_pickled_fails_every_item_exactly_once(chunksize: int) -> None:
    items = list(range(10))
    outcomes = parcelout.map(
        faults.make_locked_closure(), items, backend="process", workers=2, chunksize=chunksize, on_error="return"
    )
    failures = only_these_failed(outcomes, items, faults.double, bad=range(10))
    for failure in failures:
        assert isinstance(failure.error, TypeError)
        assert "locked_double" in notes_of(failure.error)
        assert "could not be pickled" in notes_of(failure.error)


def test_a_pool_goes_on_after_a_function_that_cannot_be_pickled() -> None:
    with parcelout.Pool(2, "process") as pool:
        outcomes = list(pool.imap(faults.make_locked_closure(), range(3), on_error="return"))
        assert [o.index for o in outcomes if isinstance(o, Failure)] == [0, 1, 2]
        with pytest.raises(TypeError, match="cannot pickle"):
            list(pool.imap(faults.make_locked_closure(), range(3)))
        the_pool_still_works(pool)


@pytest.mark.parametrize("backend", ["serial", "thread"])
def test_what_cannot_be_pickled_needs_no_pickling_in_process(backend: str) -> None:
    """The calling thread and thread workers share memory: nothing is pickled,
    so an unpicklable function, item or result just works."""
    assert parcelout.map(faults.make_locked_closure(), range(5), backend=backend, workers=2) == [0, 2, 4, 6, 8]
    items = with_bad_item(6, 3, Unpicklable("bad"))
    outcomes = parcelout.map(faults.identity, items, backend=backend, workers=2)
    assert len(outcomes) == len(items)
    assert all(got is item for got, item in zip(outcomes, items, strict=True))
    results = parcelout.map(faults.lock_result_on_3, range(6), backend=backend, workers=2)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    assert type(results[3]).__name__ == "lock"


# ---------------------------------------------------------------- an item that cannot be pickled


def test_an_item_that_cannot_be_pickled_raises_naming_its_index_and_the_cause() -> None:
    items = with_bad_item(10, 7, Unpicklable("bad"))
    with pytest.raises(PickleRefused, match="bad refuses to be pickled") as caught:
        parcelout.map(faults.identity, items, backend="process", workers=2, chunksize=4)
    error = caught.value
    assert names_item(error, 7)
    assert "Unpicklable('bad')" in notes_of(error)
    assert "could not be pickled to send it to a worker" in notes_of(error)


@pytest.mark.parametrize("chunksize", [1, 10, None])
def test_an_item_that_cannot_be_pickled_fails_alone(chunksize: int | None) -> None:
    items = with_bad_item(20, 7, Unpicklable("bad"))
    outcomes = parcelout.map(
        faults.identity, items, backend="process", workers=2, chunksize=chunksize, on_error="return"
    )
    [failure] = only_these_failed(outcomes, items, lambda item: item, bad=[7])
    assert isinstance(failure.error, PickleRefused)
    assert names_item(failure.error, 7)
    assert "could not be pickled" in notes_of(failure.error)


def test_an_item_that_cannot_be_pickled_is_skipped_alone() -> None:
    items = with_bad_item(20, 7, Unpicklable("bad"))
    outcomes = parcelout.map(faults.identity, items, backend="process", workers=2, chunksize=5, on_error="skip")
    assert outcomes == [i for i in range(20) if i != 7]


def test_an_item_that_cannot_be_pickled_fails_alone_unordered() -> None:
    items = with_bad_item(20, 7, Unpicklable("bad"))
    outcomes = list(
        parcelout.imap_unordered(faults.identity, items, backend="process", workers=2, chunksize=3, on_error="return")
    )
    by_index = {o.index if isinstance(o, Failure) else o: o for o in outcomes}
    assert len(by_index) == len(outcomes) == 20, "an item came out twice or was lost"
    ordered = [by_index[i] for i in range(20)]
    [failure] = only_these_failed(ordered, items, lambda item: item, bad=[7])
    assert isinstance(failure.error, PickleRefused)


# ---------------------------------------------------------------- an item that fails to unpickle in the worker


@pytest.mark.parametrize("chunksize", [1, 10])
def test_an_item_that_fails_to_unpickle_in_the_worker_raises_naming_its_index(chunksize: int) -> None:
    items = with_bad_item(10, 7, UnpicklesBadly("bad"))
    with pytest.raises(TransferError, match="could not be unpickled in the worker process") as caught:
        parcelout.map(faults.identity, items, backend="process", workers=2, chunksize=chunksize)
    error = caught.value
    assert isinstance(error, BrokenProcessPool)  # what the standard pool raises there
    assert isinstance(error.__cause__, UnpickleRefused)
    assert "bad refuses to be unpickled" in str(error)
    assert isinstance(error.__cause__.__cause__, RemoteTraceback)
    assert names_item(error, 7), notes_of(error)


@pytest.mark.parametrize("chunksize", [1, 10])
def test_an_item_that_fails_to_unpickle_in_the_worker_fails_alone(chunksize: int) -> None:
    items = with_bad_item(20, 7, UnpicklesBadly("bad"))
    outcomes = parcelout.map(
        faults.identity, items, backend="process", workers=2, chunksize=chunksize, on_error="return"
    )
    [failure] = only_these_failed(outcomes, items, lambda item: item, bad=[7])
    assert isinstance(failure.error, TransferError)
    assert isinstance(failure.error.__cause__, UnpickleRefused)
    assert "could not be unpickled in the worker" in str(failure.error)


# ---------------------------------------------------------------- a result that cannot travel back


@pytest.mark.parametrize("chunksize", [1, 10])
def test_a_result_that_cannot_be_pickled_raises_naming_its_index_and_the_cause(chunksize: int) -> None:
    with pytest.raises(TypeError, match=re.escape("cannot pickle '_thread.lock' object")) as caught:
        parcelout.map(faults.lock_result_on_3, range(10), backend="process", workers=2, chunksize=chunksize)
    error = caught.value
    assert "result could not be pickled to send it back from the worker" in notes_of(error)
    assert names_item(error, 3)


@pytest.mark.parametrize("chunksize", [1, 10, None])
def test_a_result_that_cannot_be_pickled_fails_alone(chunksize: int | None) -> None:
    items = list(range(20))
    outcomes = parcelout.map(
        faults.lock_result_on_3, items, backend="process", workers=2, chunksize=chunksize, on_error="return"
    )
    [failure] = only_these_failed(outcomes, items, faults.double, bad=[3])
    assert isinstance(failure.error, TypeError)
    assert "result could not be pickled" in notes_of(failure.error)


def test_a_result_that_only_cloudpickle_can_carry_comes_back() -> None:
    results = parcelout.map(faults.lambda_result_on_3, range(6), backend="process", workers=2, chunksize=6)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    assert callable(results[3])
    assert results[3]() == 3


@pytest.mark.parametrize("chunksize", [1, 10])
def test_a_result_that_fails_to_unpickle_in_the_parent_raises_naming_its_index(chunksize: int) -> None:
    with pytest.raises(TransferError, match="result of 3 refuses to be unpickled") as caught:
        parcelout.map(unpickles_badly_on_3, range(10), backend="process", workers=2, chunksize=chunksize)
    error = caught.value
    assert "could not be unpickled in the parent" in str(error)
    assert isinstance(error.__cause__, UnpickleRefused)
    assert names_item(error, 3), notes_of(error)


@pytest.mark.parametrize("chunksize", [1, 10])
def test_a_result_that_fails_to_unpickle_in_the_parent_fails_alone(chunksize: int) -> None:
    items = list(range(20))
    outcomes = parcelout.map(
        unpickles_badly_on_3, items, backend="process", workers=2, chunksize=chunksize, on_error="return"
    )
    [failure] = only_these_failed(outcomes, items, faults.double, bad=[3])
    assert isinstance(failure.error, TransferError)
    assert isinstance(failure.error.__cause__, UnpickleRefused)


# ---------------------------------------------------------------- an exception that cannot travel back


@dataclass(frozen=True)
class Unsendable:
    """A function raising, on item 3, an exception that cannot travel back from a
    process worker; what it raises, and why it cannot travel."""

    fn: Callable[[int], int]
    kind: type[Exception]
    message: str
    reason: str


UNPICKLABLE_EXCEPTIONS = [
    pytest.param(
        Unsendable(faults.raise_two_arg_error_on_3, TwoArgError, "code 42: two-arg failure on 3", "detail"),
        id="two-arg",
    ),
    pytest.param(
        Unsendable(faults.raise_locked_error_on_3, LockedError, "locked failure on 3", "lock"), id="holds-a-lock"
    ),
]


def check_stand_in(error: BaseException, backend: str, case: Unsendable) -> None:
    """In process, the exception itself; from a process worker or a
    sub-interpreter, a ``RemoteError`` naming its type, its message, why it
    could not travel, and its traceback."""
    kind, message = case.kind, case.message
    if backend not in ("process", "interpreter"):
        assert type(error) is kind
        assert str(error) == message
        return
    assert isinstance(error, RemoteError)
    assert error.type_name == f"{kind.__module__}.{kind.__qualname__}"
    assert error.message == message
    assert case.reason in error.reason
    assert kind.__qualname__ in str(error)
    assert message in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert kind.__qualname__ in error.__cause__.tb
    assert case.fn.__name__ in error.__cause__.tb  # where it was raised


@pytest.mark.parametrize("case", UNPICKLABLE_EXCEPTIONS)
def test_an_exception_that_cannot_be_pickled_raises_clearly_naming_the_item(backend: str, case: Unsendable) -> None:
    with pytest.raises(Exception) as caught:  # the type depends on the backend: checked below
        parcelout.map(case.fn, range(10), backend=backend, workers=2, chunksize=4)
    check_stand_in(caught.value, backend, case)
    assert names_item(caught.value, 3)


@pytest.mark.parametrize("case", UNPICKLABLE_EXCEPTIONS)
@pytest.mark.parametrize("chunksize", [1, 10])
def test_an_exception_that_cannot_be_pickled_fails_its_item_alone(
    backend: str, case: Unsendable, chunksize: int
) -> None:
    items = list(range(20))
    outcomes = parcelout.map(case.fn, items, backend=backend, workers=2, chunksize=chunksize, on_error="return")
    [failure] = only_these_failed(outcomes, items, faults.double, bad=[3])
    check_stand_in(failure.error, backend, case)
    assert case.kind.__qualname__ in failure.traceback


@pytest.mark.parametrize("case", UNPICKLABLE_EXCEPTIONS)
def test_a_pool_goes_on_after_an_exception_that_cannot_be_pickled(backend: str, case: Unsendable) -> None:
    with parcelout.Pool(2, backend) as pool:
        error = pool.submit(case.fn, 3).exception(timeout=PROMPTLY)
        assert error is not None
        check_stand_in(error, backend, case)
        the_pool_still_works(pool)


# ---------------------------------------------------------------- pool: one bad task, then good ones

BAD_TASKS = [
    pytest.param(faults.identity, Unpicklable("task"), PickleRefused, "could not be pickled", id="item-unpicklable"),
    pytest.param(
        faults.identity, UnpicklesBadly("task"), TransferError, "could not be unpickled", id="item-unpickles-badly"
    ),
    pytest.param(faults.lock_result_on_3, 3, TypeError, "result could not be pickled", id="result-unpicklable"),
    pytest.param(unpickles_badly_on_3, 3, TransferError, "could not be unpickled", id="result-unpickles-badly"),
    pytest.param(faults.make_locked_closure(), 3, TypeError, "locked_double", id="function-unpicklable"),
]


@pytest.mark.parametrize(("fn", "arg", "kind", "note"), BAD_TASKS)
def test_a_bad_task_fails_only_its_future_and_the_pool_goes_on(
    fn: Callable[[Any], object], arg: object, kind: type[Exception], note: str
) -> None:
    with parcelout.Pool(2, "process") as pool:
        before = pool.submit(faults.double, 1)
        bad = pool.submit(fn, arg)
        after = pool.submit(faults.double, 2)
        error = bad.exception(timeout=PROMPTLY)
        assert isinstance(error, kind)
        assert note in notes_of(error) or (kind is TransferError and note in str(error))
        assert before.result(timeout=PROMPTLY) == 2
        assert after.result(timeout=PROMPTLY) == 4
        the_pool_still_works(pool)


def test_executor_map_raises_an_unpicklable_item_at_its_position_and_the_pool_goes_on() -> None:
    with parcelout.Pool(2, "process") as pool:
        got, error = collect_until_error(pool.map(faults.identity, [0, Unpicklable("mapped"), 2]))
        assert got == [0]
        assert isinstance(error, PickleRefused)
        assert "Unpicklable('mapped')" in notes_of(error)
        the_pool_still_works(pool)


def test_executor_map_names_the_position_of_an_unpicklable_item() -> None:
    with parcelout.Pool(2, "process") as pool:
        _, error = collect_until_error(pool.map(faults.identity, [0, Unpicklable("mapped"), 2]))
    assert isinstance(error, PickleRefused)
    assert names_item(error, 1), notes_of(error)


def test_an_initializer_that_cannot_be_pickled_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match=re.escape("cannot pickle '_thread.lock' object")) as caught:
        parcelout.Pool(2, "process", initializer=faults.make_locked_closure(), initargs=(1,))
    assert "the initializer could not be pickled" in notes_of(caught.value)


# ---------------------------------------------------------------- an input that raises halfway


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
@pytest.mark.parametrize("on_error", ["raise", "return", "skip"])
@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_an_input_that_raises_halfway_yields_what_came_before_then_raises(
    backend: str, ordered: bool, on_error: str, chunksize: int | None
) -> None:
    mapper: Callable[..., Iterable[object]] = parcelout.imap if ordered else parcelout.imap_unordered
    message = f"broke after 5 ({backend}, {on_error}, {chunksize})"
    got, error = collect_until_error(
        mapper(
            faults.double,
            faults.yields_then_raises(5, message),
            backend=backend,
            workers=2,
            chunksize=chunksize,
            on_error=on_error,
        )
    )
    assert isinstance(error, InputBroke)
    assert str(error) == message
    assert (got if ordered else sorted(got)) == [0, 2, 4, 6, 8]  # type: ignore[type-var]


def test_an_input_that_raises_at_once_yields_nothing(backend: str) -> None:
    got, error = collect_until_error(
        parcelout.imap(faults.double, faults.yields_then_raises(0, "empty"), backend=backend, workers=2)
    )
    assert got == []
    assert isinstance(error, InputBroke)
    assert str(error) == "empty"


def test_a_long_input_that_raises_yields_every_result_before_it(backend: str) -> None:
    got, error = collect_until_error(
        parcelout.imap(faults.double, faults.yields_then_raises(300, "late"), backend=backend, workers=2)
    )
    assert got == [2 * i for i in range(300)]
    assert isinstance(error, InputBroke)


def test_an_items_failure_before_the_input_breaks_comes_first(backend: str) -> None:
    with pytest.raises(ValueError, match="FailOn rejects 1") as caught:
        list(parcelout.imap(faults.FailOn(1), faults.yields_then_raises(5), backend=backend, workers=2))
    assert names_item(caught.value, 1)


def test_an_input_that_raises_after_a_failed_item_keeps_the_failure(backend: str) -> None:
    items = list(range(5))
    got, error = collect_until_error(
        parcelout.imap(faults.FailOn(1), faults.yields_then_raises(5), backend=backend, workers=2, on_error="return")
    )
    [failure] = only_these_failed(got, items, faults.double, bad=[1])
    assert isinstance(failure.error, ValueError)
    assert isinstance(error, InputBroke)


def test_an_input_error_says_it_came_from_the_input_and_where(backend: str) -> None:
    _, error = collect_until_error(
        parcelout.imap(faults.double, faults.yields_then_raises(5), backend=backend, workers=2)
    )
    assert isinstance(error, InputBroke)
    notes = notes_of(error)
    assert "input" in notes
    assert re.search(r"\b[45]\b", notes), notes


def test_a_pool_goes_on_after_an_input_that_raises(backend: str) -> None:
    with parcelout.Pool(2, backend) as pool:
        got, error = collect_until_error(pool.imap(faults.double, faults.yields_then_raises(4, "pool input")))
        assert got == [0, 2, 4, 6]
        assert isinstance(error, InputBroke)
        got, error = collect_until_error(
            pool.imap_unordered(faults.double, faults.yields_then_raises(4, "pool input"), on_error="return")
        )
        assert sorted(got) == [0, 2, 4, 6]  # type: ignore[type-var]
        assert isinstance(error, InputBroke)
        the_pool_still_works(pool)


@pytest.mark.parametrize(("backend", "module"), [("dask", "distributed"), ("ray", "ray")])
def test_a_cluster_backend_without_its_extra_names_the_extra(
    backend: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf"pip install 'parcelout\[{backend}\]'"):
        parcelout.map(faults.double, range(3), backend=backend)
