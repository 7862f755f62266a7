"""One vocabulary: the options of a run are declared once (``Options``), every
entry point takes exactly them, a misspelt one is caught (by a type checker,
and at the call with the nearest name), each word has one meaning, and the
spellings of the standard library and multiprocessing work.

Written as a user meets them: the call with the typo, the old spelling, the
standard library's argument order, several iterables."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import io
import multiprocessing
import operator
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout import Failure, _commands
from parcelout._options import DEFAULTS, RUN_NAMES, Options, RunArgs

ENTRY_POINTS = [parcelout.imap, parcelout.imap_unordered, parcelout.map, parcelout.starmap, parcelout.explain]


def fails_on_3(x: int, y: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * y


def nap(x: float) -> float:
    threading.Event().wait(x)  # the work itself: an item that takes this long
    return x


# ------------------------------------------------------------ declared once


def test_the_options_are_declared_once_with_a_default_each() -> None:
    assert set(Options.__annotations__) == set(DEFAULTS)
    assert set(RunArgs.__annotations__) == set(RUN_NAMES) < set(DEFAULTS)


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda fn: fn.__name__)
def test_every_one_shot_entry_point_takes_exactly_the_declared_options(fn: Any) -> None:
    (options,) = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
    assert options.annotation == "Unpack[Options]"


@pytest.mark.parametrize("name", ["imap", "imap_unordered"])
def test_pool_maps_take_the_options_of_a_run(name: str) -> None:
    (options,) = [
        p for p in inspect.signature(getattr(parcelout.Pool, name)).parameters.values() if p.kind is p.VAR_KEYWORD
    ]
    assert options.annotation == "Unpack[RunArgs]"


def test_a_type_checker_catches_a_misspelt_option(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent("""
        import parcelout

        def double(x: int) -> int:
            return 2 * x

        parcelout.map(double, range(3), retires=2)
        parcelout.imap(double, range(3), task_timeout="soon")
        with parcelout.Pool(2) as pool:
            pool.imap(double, range(3), retry=1)
        """)
    )
    out, _, status = mypy_api.run([str(script), "--no-incremental", "--cache-dir", str(tmp_path / "cache")])
    assert status == 1, out
    assert '"retires"' in out
    assert '"retry"' in out
    assert "task_timeout" in out


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda: parcelout.map(abs, [1], retires=2), "map"),  # type: ignore[call-overload]
        (lambda: parcelout.imap(abs, [1], retires=2), "imap"),  # type: ignore[call-overload]
        (lambda: parcelout.imap_unordered(abs, [1], retires=2), "imap_unordered"),  # type: ignore[call-overload]
        (lambda: parcelout.starmap(abs, [(1,)], retires=2), "starmap"),  # type: ignore[call-overload]
        (lambda: parcelout.explain(abs, [1], retires=2), "explain"),  # type: ignore[call-arg]
    ],
)
def test_a_misspelt_option_names_the_function_and_the_nearest_option(call: Any, where: str) -> None:
    with pytest.raises(
        TypeError, match=rf"^{where}\(\) got an unexpected keyword argument 'retires' \(did you mean 'retries'\?\)"
    ):
        call()


def test_a_misspelt_option_of_a_pool_map_names_it_too() -> None:
    with parcelout.Pool(1, "thread") as pool, pytest.raises(TypeError, match=r"Pool\.imap\(\) .* 'windw' .* 'window'"):
        pool.imap(abs, [1], windw=2)  # type: ignore[call-arg]


# ------------------------------------------------------------ one meaning per word


def test_the_per_item_limit_is_task_timeout() -> None:
    outcomes = parcelout.map(nap, [0.0, 30.0, 0.0], backend="process", workers=2, task_timeout=0.5, on_error="return")
    assert outcomes[0] == outcomes[2] == 0.0
    assert isinstance(outcomes[1], Failure)
    assert outcomes[1].kind == "timeout"
    assert isinstance(outcomes[1].error, parcelout.TaskTimeout)


def test_timeout_still_works_for_one_release_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="task_timeout"):
        outcomes = parcelout.map(nap, [30.0], backend="process", timeout=0.5, on_error="return")
    assert isinstance(outcomes[0], Failure)
    assert outcomes[0].kind == "timeout"
    with pytest.warns(DeprecationWarning, match="task_timeout"), parcelout.Pool(1, "thread", timeout=5) as pool:
        assert pool.submit(abs, -2).result(30) == 2
    with pytest.raises(TypeError, match="not both"):
        parcelout.map(abs, [1], backend="thread", timeout=1, task_timeout=1)


def test_pool_map_keeps_the_standard_meaning_of_timeout() -> None:
    # A bound on the wait for the results, from the call; the items are not killed.
    with parcelout.Pool(1, "thread") as pool:
        results = pool.map(nap, [0.0, 5.0], timeout=0.3)
        assert next(results) == 0.0
        with pytest.raises(TimeoutError):
            next(results)


def test_command_line_task_timeout_and_the_old_flag(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("import time\ndef nap(x):\n    time.sleep(x)\n    return x\n")
    items = tmp_path / "items.jsonl"
    items.write_text("0\n30\n")
    for flag in ("--task-timeout", "--timeout"):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "parcelout",
                "run",
                "jobs:nap",
                "--input",
                str(items),
                "--backend",
                "process",
                flag,
                "0.5",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 1, run.stderr
        assert '"kind": "timeout"' in run.stdout
        assert ("--timeout is now spelt --task-timeout" in run.stderr) == (flag == "--timeout")


def test_a_pool_is_process_workers_unless_told_and_auto_is_not_offered() -> None:
    with parcelout.Pool(1) as pool:
        assert pool.backend == "process"
    with pytest.warns(DeprecationWarning, match="cannot measure"), parcelout.Pool(1, "auto") as pool:
        assert pool.backend == "process"


def test_explain_takes_the_options_of_imap() -> None:
    plan = parcelout.explain(abs, range(100), backend="thread", workers=3, chunksize=7, window=20)
    assert (plan.backend, plan.workers, plan.chunksize) == ("thread", 3, 7)
    assert "named" in plan.reason
    assert str(plan).splitlines()[-1] == "  nothing was measured"
    assert parcelout.explain(abs, range(10), backend="serial").backend == "serial"
    measured = parcelout.explain(abs, range(100_000), chunksize=50)
    assert measured.backend == "serial"  # tiny work: nothing to batch
    assert isinstance(measured.measurements, parcelout.Measurements)


# ------------------------------------------------------------ the spellings users bring


def test_one_shot_functions_take_max_workers() -> None:
    assert parcelout.map(abs, [-1, -2], backend="thread", max_workers=2) == [1, 2]
    with pytest.raises(TypeError, match="not both"):
        parcelout.map(abs, [-1], backend="thread", max_workers=2, workers=2)


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_map_over_several_iterables_as_the_builtin_map(backend: str) -> None:
    assert parcelout.map(pow, [2, 3, 4], [5, 2], backend=backend) == [32, 9]  # the shortest ends it
    assert list(parcelout.imap(operator.add, "ab", "cd", backend=backend)) == ["ac", "bd"]
    assert sorted(parcelout.imap_unordered(pow, [2, 3], [2, 2], backend=backend)) == [4, 9]


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_starmap_and_its_failures_name_the_arguments(backend: str) -> None:
    assert parcelout.starmap(pow, [(2, 5), (3, 2)], backend=backend) == [32, 9]
    outcomes = parcelout.starmap(fails_on_3, [(1, 2), (3, 4)], backend=backend, on_error="return")
    assert outcomes[0] == 2
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert (failure.index, failure.item, type(failure.error)) == (1, (3, 4), ValueError)


def test_a_traceback_from_several_iterables_starts_at_the_users_function() -> None:
    with pytest.raises(ValueError, match="three") as raised:
        parcelout.map(fails_on_3, [3], [1], backend="process")
    remote = "".join(str(raised.value.__cause__))
    assert "fails_on_3" in remote
    assert "_base.py" not in remote


def test_the_pools_second_argument_is_the_backend_and_errors_say_where_the_standard_order_is() -> None:
    with pytest.raises(TypeError, match="ProcessPoolExecutor"):
        parcelout.Pool(2, multiprocessing.get_context("spawn"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ThreadPoolExecutor"):
        parcelout.Pool(2, "my-threads")
    with parcelout.ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(abs, -3).result(60) == 3


def test_the_thread_drop_in_is_accepted_as_asyncios_default_executor() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(parcelout.ThreadPoolExecutor(2))
        return [await loop.run_in_executor(None, pow, 2, 10), await asyncio.to_thread(pow, 3, 3)]

    assert asyncio.run(main()) == [1024, 27]


def test_terminate_stops_now_and_fails_what_is_running() -> None:
    pool = parcelout.Pool(1, "process")
    running = pool.submit(nap, 30.0)
    waiting = pool.submit(nap, 30.0)
    started = time.monotonic()
    pool.terminate()
    assert time.monotonic() - started < 10
    assert waiting.cancelled()
    assert running.done()
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(abs, 1)


def test_progress_takes_tqdms_own_options_and_a_total() -> None:
    tqdm: Any = pytest.importorskip("tqdm").tqdm
    out = io.StringIO()
    bars: list[Any] = []

    class Recorded(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    items = (x for x in range(50))  # no length: the caller gives the total
    options = {"desc": "squares", "leave": True, "total": 50, "file": out, "tqdm_class": Recorded}
    assert parcelout.map(abs, items, backend="thread", progress=options) == list(range(50))
    (bar,) = bars
    assert (bar.n, bar.total, bar.desc) == (50, 50, "squares")
    assert "squares" in out.getvalue()
    with pytest.raises(TypeError, match="progress"):
        parcelout.map(abs, [1], progress=3)  # type: ignore[call-overload]


def test_every_type_a_public_function_returns_is_exported() -> None:
    for name in ("Plan", "Measurements", "JournalSummary", "StoredOutcome", "Failure", "Options", "StartupFailed"):
        assert name in parcelout.__all__
        assert hasattr(parcelout, name)
    assert issubclass(parcelout.InitializerFailed, parcelout.StartupFailed)
    assert issubclass(parcelout.StartupFailed, parcelout.BrokenPool)


def test_workers_that_die_at_start_up_are_not_called_an_initializer_failure() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with parcelout.Pool(1, "process", initializer=exit_at_start) as pool:
            future = pool.submit(abs, 1)
            error = future.exception(120)
    assert isinstance(error, parcelout.StartupFailed)
    assert not isinstance(error, parcelout.InitializerFailed)


def exit_at_start() -> None:
    import os

    os._exit(3)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_pools_task_timeout_limits_each_call_of_a_map_chunk_not_the_chunk(kind: str) -> None:
    # Six calls of 0.1 s in one chunk take 0.6 s, more than the 0.35 s limit of each.
    with parcelout.Pool(2, kind, task_timeout=0.35) as pool:
        assert list(pool.map(nap, [0.1] * 12, chunksize=6)) == [0.1] * 12
        results = pool.map(nap, [0.0, 0.0, 3.0, 0.0], chunksize=4)
        assert next(results) == next(results) == 0.0
        with pytest.raises(parcelout.TaskTimeout) as raised:
            next(results)
    message = str(raised.value)
    assert "item 2 ((3.0,))" in message
    assert "task_timeout of 0.35 s" in message


# What a flag of `parcelout run` is that is not an option of a run: where the
# items come from and go, and how the command itself behaves.
COMMAND_ONLY_FLAGS = {
    "function",
    "input",
    "range",
    "lines",
    "output",
    "force",
    "trust_owner",
    "verbose",
    "timeout",  # the old spelling of --task-timeout, mapped to task_timeout
    "handler",
}


def test_every_option_flag_of_the_command_line_is_an_option_of_a_run() -> None:
    parser = argparse.ArgumentParser()
    _commands.add_commands(parser.add_subparsers(dest="command"))
    (run,) = (
        choice
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, choice in action.choices.items()
        if name == "run"
    )
    flags = {action.dest for action in run._actions if action.dest != "help"}
    assert flags - COMMAND_ONLY_FLAGS <= set(DEFAULTS), sorted(flags - COMMAND_ONLY_FLAGS - set(DEFAULTS))
    # and the command passes each of them on under that name
    args = run.parse_args(["m:f", "--range", "3", "--workers", "2", "--chunksize", "4", "--task-timeout", "5"])
    options = _commands.imap_options(args)
    assert set(options) <= set(DEFAULTS)
    assert (options["workers"], options["chunksize"], options["task_timeout"]) == (2, 4, 5.0)
