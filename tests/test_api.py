"""The one-shot functions as a user meets them: options, order, errors,
tracebacks and progress, on every backend."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import parcelout
from parcelout import Failure


class Rejected(Exception):
    pass


def square(x: int) -> int:
    return x * x


def reject_odd(x: int) -> int:
    if x % 2:
        raise Rejected(f"odd: {x}")
    return x


def fail_deep(x: int) -> int:
    return _deep_helper(x)


def _deep_helper(x: int) -> int:
    if x == 3:
        raise Rejected("three is not allowed")
    return x


def worker_identity(_: int) -> tuple[int, int]:
    import threading

    return os.getpid(), threading.get_ident()


_state: dict[str, int] = {}


def remember(value: int) -> None:
    _state["value"] = _state.get("value", 0) + value


def read_state(_: int) -> int:
    return _state.get("value", -1)


def record_to(directory: str, x: int) -> int:
    (Path(directory) / str(x)).touch()
    if x == 5:
        raise Rejected("five")
    return x


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def test_imap_yields_in_input_order(backend: str) -> None:
    items = [5, 3, 9, 1, 7] * 20
    assert list(parcelout.imap(square, items, backend=backend, workers=3)) == [x * x for x in items]


def test_imap_unordered_yields_each_result_once(backend: str) -> None:
    results = list(parcelout.imap_unordered(square, numbers(300), backend=backend, workers=3))
    assert sorted(results) == [x * x for x in range(300)]


def test_map_returns_a_list(backend: str) -> None:
    result = parcelout.map(square, numbers(50), backend=backend, workers=2)
    assert isinstance(result, list)
    assert result == [x * x for x in range(50)]


def test_lambdas_and_closures_travel_to_workers(backend: str) -> None:
    offset = 10
    assert parcelout.map(lambda x: x + offset, range(20), backend=backend, workers=2) == [x + 10 for x in range(20)]
    add = functools.partial(int.__add__, 5)
    assert parcelout.map(add, range(5), backend=backend, workers=2) == [5, 6, 7, 8, 9]


def test_a_function_defined_in_a_main_script_runs_on_process_workers(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import parcelout

            def cube(x):
                return x ** 3

            if __name__ == "__main__":
                print(parcelout.map(cube, range(6), backend="process", workers=2))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 8, 27, 64, 125]"


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_worker_count_is_honoured(workers: int) -> None:
    identities = parcelout.map(worker_identity, range(60), backend="process", workers=workers, chunksize=1)
    assert 1 <= len({pid for pid, _ in identities}) <= workers


def test_serial_runs_in_the_calling_thread() -> None:
    import threading

    identities = set(parcelout.map(worker_identity, range(10), backend="serial"))
    assert identities == {(os.getpid(), threading.get_ident())}


def test_the_initializer_runs_in_each_worker_before_its_work(backend: str) -> None:
    if backend != "process":
        _state.clear()
    values = parcelout.map(read_state, range(40), backend=backend, workers=2, initializer=remember, initargs=(7,))
    if backend in ("process", "interpreter"):
        assert values == [7] * 40  # once per fresh process or interpreter
    else:  # threads and the calling thread share one module: once per worker
        assert set(values) <= {7, 14}
        assert _state["value"] in {7, 14}
    _state.clear()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_start_method_is_an_option(start_method: str) -> None:
    assert parcelout.map(square, range(10), backend="process", workers=2, start_method=start_method) == [
        x * x for x in range(10)
    ]


def test_a_fixed_chunksize_is_used() -> None:
    sizes: list[int] = []

    def count(done: int, total: int | None) -> None:
        sizes.append(done)

    parcelout.map(square, range(40), backend="thread", workers=2, chunksize=8, progress=count)
    steps = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert steps == [8] * 5


def test_on_error_return_puts_a_failure_in_place(backend: str) -> None:
    outcomes = list(parcelout.imap(reject_odd, range(10), backend=backend, workers=2, on_error="return"))
    for index, outcome in enumerate(outcomes):
        if index % 2:
            assert isinstance(outcome, Failure)
            assert (outcome.index, outcome.item, outcome.kind, outcome.attempts) == (index, index, "error", 1)
            assert isinstance(outcome.error, Rejected)
            assert str(outcome.error) == f"odd: {index}"
        else:
            assert outcome == index


def test_on_error_skip_leaves_failures_out(backend: str) -> None:
    assert parcelout.map(reject_odd, range(10), backend=backend, workers=2, on_error="skip") == [0, 2, 4, 6, 8]


def test_raise_gives_the_first_failure_in_order_after_the_results_before_it(backend: str) -> None:
    seen: list[int] = []
    with pytest.raises(Rejected) as caught:
        for value in parcelout.imap(reject_odd, range(10), backend=backend, workers=2):
            seen.append(value)
    assert seen == [0]
    assert str(caught.value) == "odd: 1"
    assert any("raised by item 1 (1)" in note for note in caught.value.__notes__)


def test_the_workers_traceback_is_shown(backend: str) -> None:
    with pytest.raises(Rejected) as caught:
        parcelout.map(fail_deep, range(6), backend=backend, workers=2)
    failure = next(
        o for o in parcelout.imap(fail_deep, range(6), backend=backend, on_error="return") if isinstance(o, Failure)
    )
    for text in (failure.traceback, _shown(caught.value)):
        assert "_deep_helper" in text
        assert "three is not allowed" in text
    if backend == "process":
        assert isinstance(caught.value.__cause__, parcelout.RemoteTraceback)


def _shown(error: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(error))


def test_raise_cancels_the_work_not_yet_started(backend: str, tmp_path: Path) -> None:
    """Item 5 fails; of 10,000 items, only a window's worth ever ran."""
    run = functools.partial(record_to, str(tmp_path))
    with pytest.raises(Rejected):
        parcelout.map(run, range(10_000), backend=backend, workers=2, chunksize=1, window=8)
    ran = {int(p.name) for p in tmp_path.iterdir()}
    assert set(range(6)) <= ran
    assert len(ran) <= 6 + 8 + 2


def test_progress_callback_counts_to_the_total(backend: str) -> None:
    calls: list[tuple[int, int | None]] = []
    parcelout.map(square, range(100), backend=backend, workers=2, progress=lambda d, t: calls.append((d, t)))
    assert calls
    assert calls[-1] == (100, 100)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert {t for _, t in calls} == {100}


def test_progress_callback_without_a_length_gets_none(backend: str) -> None:
    calls: list[tuple[int, int | None]] = []
    parcelout.map(square, numbers(30), backend=backend, workers=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (30, None)


@pytest.mark.parametrize("length_known", [True, False])
def test_progress_bar_on_standard_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, length_known: bool
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    items = range(50) if length_known else numbers(50)
    assert parcelout.map(square, items, backend="thread", workers=2, progress=True) == [x * x for x in range(50)]
    captured = capsys.readouterr()
    assert captured.out == ""
    final = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert "50/50" in final if length_known else "50" in final
    assert "item/s" in final


def test_a_custom_backend_factory_is_used() -> None:
    from parcelout.backends._thread import ThreadBackend

    made: list[object] = []

    def factory(report):  # type: ignore[no-untyped-def]
        backend = ThreadBackend(report)
        made.append(backend)
        return backend

    assert parcelout.map(square, range(20), backend=factory, workers=2) == [x * x for x in range(20)]
    assert len(made) == 1


def refuse_to_start() -> None:
    raise Rejected("no database")


def test_a_failing_initializer_raises_initializer_failed(backend: str) -> None:
    with pytest.raises(parcelout.InitializerFailed, match="no database") as caught:
        parcelout.map(square, range(10), backend=backend, workers=2, initializer=refuse_to_start)
    assert isinstance(caught.value.__cause__, Rejected)
