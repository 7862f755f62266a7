"""``backend="interpreter"``: one sub-interpreter per worker thread, each with
its own GIL (Python 3.14, or 3.13 with ``parcelout[interpreters]``).

The same contract as the other backends (exactly once, order, ``on_error``,
retries), what crosses between interpreters (bytes: a value that cannot
cross fails alone; lambdas, closures and ``__main__`` functions travel by
value), and what an interpreter cannot do: be stopped (a timed-out item's
worker is abandoned), import a single-phase extension module (each item
fails, soon, saying so), start work that hangs as it loads (the worker is
given up after a deadline). Where there are no interpreters, the call says
what to install.

This module's functions travel by value (see ``module_by_value``): it
imports hypothesis, whose extension module does not load in a
sub-interpreter. Items that must block wait on a pipe the test writes to at
its end, so that the abandoned thread ends; the test itself never sleeps.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parcelout
from parcelout import Failure, InitializerFailed, StartupFailed, TaskTimeout
from parcelout.backends import _interpreter
from tests import test_interrupt, test_invariants
from tests.conftest import NO_INTERPRETERS, parcelout_threads
from tests.waits import wait_until

needs_interpreters = pytest.mark.skipif(not _interpreter.available(), reason=NO_INTERPRETERS)
PROMPTLY = 10.0  # the bound on what should take well under a second

imap: Callable[..., Any] = parcelout.imap  # untyped: the failure-policy options


@pytest.fixture(autouse=True)
def module_by_value() -> Iterator[None]:
    """This module's functions go by value (a sub-interpreter cannot import it)."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture
def gate() -> Iterator[Callable[[], int]]:
    """A pipe items block on (``block(fd)``), opened at the test's end."""
    fds: list[tuple[int, int]] = []

    def make() -> int:
        read, write = os.pipe()
        fds.append((read, write))
        return read

    yield make
    for _, write in fds:
        os.write(write, b"x" * 64)  # every item still waiting returns
        os.close(write)
    wait_until(lambda: not parcelout_threads(), PROMPTLY, "the abandoned interpreter threads to end")
    for read, _ in fds:
        os.close(read)


# ---------------------------------------------------------------- work, in the interpreter


def square_or_fail(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad item {x}")
    return x * x


def block_on(fd: int, x: int) -> int:
    """Block until the test opens the gate, for item 0 only."""
    if x == 0:
        os.read(fd, 1)
    return x * 10


def fail_first_runs(folder: str, fails: int, x: int) -> int:
    """Fail the first ``fails`` runs of each item (counted in files: any worker)."""
    runs = len(list(Path(folder).glob(f"{x}-*")))
    Path(folder, f"{x}-{runs}").touch()
    if runs < fails:
        raise OSError(f"run {runs + 1} of item {x}")
    return x


def locked_result(x: int) -> object:
    return threading.Lock() if x == 2 else x


def import_module(name: str, x: int) -> int:
    __import__(name)
    return x


def write_file(folder: str) -> None:
    Path(folder, f"init-{os.getpid()}-{threading.get_ident()}").touch()


def refuse_to_start() -> None:
    raise RuntimeError("no database here")


class Unloadable:
    """Pickles, but fails to unpickle on the other side."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


class BlockingLoad:
    """Pickles; unpickling it blocks until a byte comes on ``fd`` (a load that hangs)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.read, (self.fd, 1))


# ---------------------------------------------------------------- the contract


@needs_interpreters
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=test_invariants.plans(crash=False),
    workers=st.integers(1, 3),
    chunksize=st.none() | st.integers(1, 17),
    window=st.none() | st.integers(1, 40),
    ordered=st.booleans(),
)
def test_exactly_once(plan: list[str], workers: int, chunksize: int | None, window: int | None, ordered: bool) -> None:
    cloudpickle.register_pickle_by_value(test_invariants)
    try:
        test_invariants.run("interpreter", plan, workers=workers, chunksize=chunksize, window=window, ordered=ordered)
    finally:
        cloudpickle.unregister_pickle_by_value(test_invariants)


@needs_interpreters
def test_results_come_in_order_and_unordered_in_full() -> None:
    items = [x for x in range(200) if x % 7 != 3]
    assert parcelout.map(square_or_fail, items, backend="interpreter", workers=2) == [x * x for x in items]
    assert list(parcelout.imap(square_or_fail, items, backend="interpreter", workers=2, chunksize=3)) == [
        x * x for x in items
    ]
    unordered = parcelout.imap_unordered(square_or_fail, items, backend="interpreter", workers=2, chunksize=1)
    assert sorted(unordered) == [x * x for x in items]


@needs_interpreters
def test_on_error_return_skip_and_raise() -> None:
    returned = parcelout.map(square_or_fail, range(20), backend="interpreter", workers=2, on_error="return")
    failures = [o for o in returned if isinstance(o, Failure)]
    assert [f.index for f in failures] == [3, 10, 17]
    assert all(isinstance(f.error, ValueError) and f.kind == "error" for f in failures)
    assert "square_or_fail" in failures[0].traceback  # the interpreter's traceback, from the user's frame
    skipped = parcelout.map(square_or_fail, range(20), backend="interpreter", workers=2, on_error="skip")
    assert skipped == [x * x for x in range(20) if x % 7 != 3]
    with pytest.raises(ValueError, match="bad item 3") as caught:
        parcelout.map(square_or_fail, range(20), backend="interpreter", workers=2)
    assert isinstance(caught.value.__cause__, parcelout.RemoteTraceback)
    assert any("item 3" in note for note in getattr(caught.value, "__notes__", ()))


@needs_interpreters
def test_a_failing_item_is_retried(tmp_path: Path) -> None:
    fn = functools.partial(fail_first_runs, str(tmp_path), 1)
    outcomes = parcelout.map(fn, range(6), backend="interpreter", workers=2, retries=1, on_error="return")
    assert outcomes == list(range(6))
    fn = functools.partial(fail_first_runs, str(tmp_path / "again"), 5)
    (tmp_path / "again").mkdir()
    failed = parcelout.map(fn, range(2), backend="interpreter", workers=2, retries=2, on_error="return")
    assert all(isinstance(f, Failure) and f.attempts == 3 and isinstance(f.error, OSError) for f in failed)


@needs_interpreters
def test_an_item_past_its_timeout_fails_and_the_next_items_run_on(gate: Callable[[], int]) -> None:
    fn = functools.partial(block_on, gate())
    start = time.monotonic()
    outcomes = parcelout.map(fn, range(6), backend="interpreter", workers=1, task_timeout=0.3, on_error="return")
    assert time.monotonic() - start < PROMPTLY
    assert isinstance(outcomes[0], Failure) and outcomes[0].kind == "timeout"
    assert isinstance(outcomes[0].error, TaskTimeout)
    assert outcomes[1:] == [10, 20, 30, 40, 50]  # on a fresh interpreter: the abandoned one still blocks


@needs_interpreters
def test_a_pool_goes_on_after_a_timeout(gate: Callable[[], int]) -> None:
    fn = functools.partial(block_on, gate())
    with parcelout.Pool(2, "interpreter", task_timeout=0.3) as pool:
        with pytest.raises(TaskTimeout):
            pool.submit(fn, 0).result(PROMPTLY)
        assert pool.submit(fn, 4).result(PROMPTLY) == 40
        assert list(pool.imap(square_or_fail, [1, 2, 4])) == [1, 4, 16]


# ---------------------------------------------------------------- what crosses


@needs_interpreters
def test_an_item_that_cannot_cross_fails_alone() -> None:
    items: list[Any] = [0, 1, threading.Lock(), 3, Unloadable(), 5]
    outcomes = parcelout.map(repr, items, backend="interpreter", workers=2, chunksize=6, on_error="return")
    assert [outcomes[i] for i in (0, 1, 3, 5)] == ["0", "1", "3", "5"]
    unpicklable, unloadable = outcomes[2], outcomes[4]
    assert isinstance(unpicklable, Failure) and isinstance(unpicklable.error, TypeError)
    assert any("item 2" in note for note in getattr(unpicklable.error, "__notes__", ()))
    assert isinstance(unloadable, Failure) and isinstance(unloadable.error, parcelout.TransferError)


@needs_interpreters
def test_a_result_that_cannot_cross_fails_alone() -> None:
    outcomes = parcelout.map(locked_result, range(5), backend="interpreter", workers=1, chunksize=5, on_error="return")
    assert [outcomes[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    failed = outcomes[2]
    assert isinstance(failed, Failure) and isinstance(failed.error, TypeError)
    assert any("result could not be pickled" in note for note in getattr(failed.error, "__notes__", ()))


@needs_interpreters
def test_lambdas_and_closures_travel_by_value() -> None:
    offset = 5
    assert parcelout.map(lambda x: x + offset, range(4), backend="interpreter", workers=2) == [5, 6, 7, 8]
    with parcelout.Pool(2, "interpreter") as pool:
        assert pool.submit(lambda a, b=1: a * b, 6, b=7).result(PROMPTLY) == 42
        assert list(pool.map(pow, [2, 3], [5, 2])) == [32, 9]  # several iterables: starmap


SCRIPT = """
import json, sys
import parcelout

def double(x):
    return 2 * x

class Point:
    def __init__(self, x):
        self.x = x

def to_point(x):
    return Point(x)

if __name__ == "__main__":
    scale = 3
    print(json.dumps({
        "main": parcelout.map(double, range(4), backend="interpreter", workers=2),
        "lambda": parcelout.map(lambda x: x - 1, range(4), backend="interpreter", workers=2),
        "closure": list(parcelout.imap(lambda x: x * scale, range(4), backend="interpreter", workers=2)),
        "class": [p.x for p in parcelout.map(to_point, range(3), backend="interpreter")],
        "same class": all(type(p) is Point for p in parcelout.map(to_point, range(3), backend="interpreter")),
    }))
"""


@needs_interpreters
def test_main_module_functions_lambdas_and_closures_in_a_script(tmp_path: Path) -> None:
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "main": [0, 2, 4, 6],
        "lambda": [-1, 0, 1, 2],
        "closure": [0, 3, 6, 9],
        "class": [0, 1, 2],
        "same class": True,
    }


# ---------------------------------------------------------------- what an interpreter cannot do


def single_phase_modules() -> list[Any]:
    """NumPy where installed, and CPython's own single-phase test module."""
    names = ["numpy", "_testsinglephase"]
    params = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=f"{name} is not installed")))
        else:
            params.append(pytest.param(name))
    return params


@needs_interpreters
@pytest.mark.parametrize("module", single_phase_modules())
def test_a_module_that_cannot_load_in_an_interpreter_fails_each_item_saying_so(module: str) -> None:
    start = time.monotonic()
    fn = functools.partial(import_module, module)
    outcomes = parcelout.map(fn, range(4), backend="interpreter", workers=2, on_error="return")
    assert time.monotonic() - start < PROMPTLY
    assert all(isinstance(o, Failure) and isinstance(o.error, ImportError) for o in outcomes)
    for outcome in outcomes:
        assert isinstance(outcome, Failure)
        notes = "\n".join(getattr(outcome.error, "__notes__", ()))
        assert "cannot be imported in a sub-interpreter" in notes and 'backend="process"' in notes


@needs_interpreters
def test_a_numpy_function_fails_each_item_saying_so() -> None:
    numpy = pytest.importorskip("numpy")
    start = time.monotonic()
    outcomes = parcelout.map(numpy.sqrt, range(5), backend="interpreter", workers=2, on_error="return")
    assert time.monotonic() - start < PROMPTLY
    assert all(isinstance(o, Failure) and isinstance(o.error, ImportError) for o in outcomes)
    first = outcomes[0]
    assert isinstance(first, Failure)
    assert 'backend="process"' in "\n".join(getattr(first.error, "__notes__", ()))


@needs_interpreters
def test_a_first_batch_that_does_not_start_gives_the_interpreter_up(
    gate: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_interpreter, "START_DEADLINE", 0.3)
    hang = BlockingLoad(gate())
    start = time.monotonic()
    with pytest.raises(StartupFailed, match=r"did not start its first batch within 0\.3 s") as raised:
        parcelout.map(repr, [hang], backend="interpreter", workers=1)
    assert time.monotonic() - start < PROMPTLY
    assert "workers in a row failed to start" in str(raised.value)
    assert "process" not in str(raised.value)  # nothing about processes or a script's guard: not the cause here


@needs_interpreters
def test_the_initializer_runs_once_in_each_interpreter(tmp_path: Path) -> None:
    init = functools.partial(write_file, str(tmp_path))
    with parcelout.Pool(2, "interpreter", initializer=init) as pool:
        assert list(pool.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    inits = list(tmp_path.iterdir())
    assert 1 <= len(inits) <= 2
    assert len({p.name.split("-")[2] for p in inits}) == len(inits)  # one thread each


@needs_interpreters
def test_a_failing_initializer_breaks_the_pool_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.CRITICAL, logger="concurrent.futures"),
        pytest.raises(InitializerFailed, match="no database here"),
    ):
        parcelout.map(abs, range(4), backend="interpreter", workers=2, initializer=refuse_to_start)
    assert "Exception in initializer:" in caplog.text


@needs_interpreters
def test_closing_a_stream_early_leaves_no_thread() -> None:
    stream = parcelout.imap(square_or_fail, range(10_000), backend="interpreter", workers=2, chunksize=1)
    assert [next(stream) for _ in range(3)] == [0, 1, 4]
    stream.close()
    wait_until(lambda: not parcelout_threads(), PROMPTLY, "the interpreter threads to end")


@needs_interpreters
@pytest.mark.parametrize("case", ["one-shot imap", "Pool block, future.result()", "Pool left to interpreter exit"])
def test_one_ctrl_c_ends_the_program_promptly(case: str, tmp_path: Path) -> None:
    path = tmp_path / "interrupted.py"
    path.write_text(test_interrupt.PRELUDE + test_interrupt.CASES[case])
    script = test_interrupt.Script(path, "interpreter")
    try:
        wait_until(
            lambda: len(script.lines) >= test_interrupt.WORKERS or script.proc.poll() is not None,
            test_interrupt.STARTUP_BOUND,
            "the workers to be busy",
        )
        assert script.proc.poll() is None, f"the script ended early:\n{script.stderr()}"
        assert set(script.busy_pids()) == {script.proc.pid}  # one process: the interpreters are in it
        took = script.interrupt()
    finally:
        if script.proc.poll() is None:
            script.kill()
        script.finish()
    test_interrupt.assert_stopped(script, took, [])
    assert script.proc.returncode != 0
    assert "Fatal Python error" not in script.stderr(), script.stderr()


# ---------------------------------------------------------------- where there are none


def test_without_the_backport_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("Python 3.14 has interpreters in its standard library")
    monkeypatch.setitem(sys.modules, "backports.interpreters", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "backports", None)
    with pytest.raises(ImportError, match=r"pip install 'parcelout\[interpreters\]'"):
        parcelout.map(abs, [1], backend="interpreter")
    with pytest.raises(ImportError, match=r"pip install 'parcelout\[interpreters\]'"):
        parcelout.Pool(2, "interpreter")
    with pytest.raises(ImportError, match=r"pip install 'parcelout\[interpreters\]'"):
        list(parcelout.imap(abs, [1], backend="interpreter"))


def test_the_command_line_takes_the_interpreter_backend(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(f"{x}\n" for x in range(-3, 3)))
    command = [sys.executable, "-m", "parcelout", "run", "builtins:abs", "--input", str(source)]
    done = subprocess.run(
        [*command, "--output", str(out), "--backend", "interpreter"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if not _interpreter.available():
        assert done.returncode != 0
        assert "interpreters" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["value"] for line in out.read_text().splitlines()] == [3, 2, 1, 0, 1, 2]


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="this Python may have interpreters")
def test_before_python_3_13_the_error_names_the_versions() -> None:
    message = r"needs Python 3\.14 or later, or Python 3\.13 with pip install 'parcelout\[interpreters\]'"
    with pytest.raises(ImportError, match=message):
        parcelout.map(abs, [1], backend="interpreter")
    with pytest.raises(ImportError, match=message):
        parcelout.Pool(2, backend="interpreter")
    assert not _interpreter.available()


# ---------------------------------------------------------------- backend="auto"


def holds_the_gil(x: int) -> int:
    total = 0
    for i in range(40_000):  # about 2 ms of pure Python
        total += (i * x) % 7
    return total


@needs_interpreters
def test_auto_weighs_interpreters_only_where_processes_start_slowly() -> None:
    # From the fork server (the default on Linux) processes start in about 20 ms:
    # faster than any sub-interpreter, so none is tried.
    assert parcelout.explain(holds_the_gil, range(2000)).backend == "process"
    # With spawn, processes take about 70 ms to start: a sub-interpreter is tried.
    plan = parcelout.explain(holds_the_gil, range(2000), start_method="spawn")
    assert plan.measurements.interpreter_start_seconds is not None, str(plan)
    if plan.backend == "interpreter":
        assert "sub-interpreter started and loaded it" in plan.reason
    else:  # a loaded machine may start it slower than processes would
        assert plan.backend == "process", str(plan)
    # Whichever it chose, the run gives every result once, in order.
    assert parcelout.map(holds_the_gil, range(60), start_method="spawn") == [holds_the_gil(x) for x in range(60)]


@needs_interpreters
def test_auto_sends_numpy_work_to_processes_not_interpreters() -> None:
    numpy = pytest.importorskip("numpy")

    def uses_numpy(x: int) -> int:
        return int(numpy.sqrt(x)) + holds_the_gil(x)

    plan = parcelout.explain(uses_numpy, range(2000), start_method="spawn")
    assert plan.backend == "process", str(plan)
    assert "cannot run in a sub-interpreter" in plan.reason
