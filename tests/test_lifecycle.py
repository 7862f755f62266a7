"""How a run ends: however the caller stops iterating, the work stops after a
bounded number of items and nothing is left behind (the autouse fixture in
conftest checks for child processes and parcelout threads after each test).
Scripts run as a user runs them: a separate interpreter."""

from __future__ import annotations

import functools
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import parcelout
from tests.waits import wait_until

WINDOW = 8


def touch(directory: str, x: int) -> int:
    """Leave a file per item run, so a test can count what ran on any backend."""
    Path(directory, str(x)).touch()
    return x


def ran(directory: Path) -> int:
    return sum(1 for _ in directory.iterdir())


def endless() -> Iterator[int]:
    n = 0
    while True:
        yield n
        n += 1


class Stop(Exception):
    pass


def square(x: int) -> int:
    return x * x


def pid_of(_: object) -> int:
    return os.getpid()


def stream(backend: str, directory: Path) -> Generator[Any, None, None]:
    fn = _touch_in(directory)
    return parcelout.imap(fn, endless(), backend=backend, workers=2, window=WINDOW, chunksize=1)


def _touch_in(directory: Path) -> Callable[[int], int]:
    return functools.partial(touch, str(directory))


def bound(done: int) -> int:
    """What may have run beyond the items consumed: the window plus what the
    workers had in hand."""
    return done + WINDOW + 2


# ---------------------------------------------------------------- stopping a run


def test_break_stops_the_work(backend: str, tmp_path: Path) -> None:
    results = stream(backend, tmp_path)
    for value in results:
        if value == 20:
            break
    results.close()  # what the end of a for loop's scope does in CPython
    assert 21 <= ran(tmp_path) <= bound(21)


def test_close_stops_the_work_at_once(backend: str, tmp_path: Path) -> None:
    results = stream(backend, tmp_path)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    results.close()
    count = ran(tmp_path)
    assert 5 <= count <= bound(5)
    with pytest.raises(StopIteration):
        next(results)


def test_a_garbage_collected_stream_stops_the_work(backend: str, tmp_path: Path) -> None:
    results = stream(backend, tmp_path)
    assert next(results) == 0
    del results
    gc.collect()
    assert 1 <= ran(tmp_path) <= bound(1)


def test_an_exception_in_the_callers_loop_stops_the_work(backend: str, tmp_path: Path) -> None:
    results = stream(backend, tmp_path)
    with pytest.raises(Stop):
        try:
            for value in results:
                if value == 10:
                    raise Stop
        finally:
            results.close()
    assert 11 <= ran(tmp_path) <= bound(11)


def test_an_exception_escaping_a_pool_block_stops_its_streams(backend: str, tmp_path: Path) -> None:
    with pytest.raises(Stop), parcelout.Pool(2, backend) as pool:
        for value in pool.imap(_touch_in(tmp_path), endless(), window=WINDOW, chunksize=1):
            if value == 10:
                raise Stop
    assert 11 <= ran(tmp_path) <= bound(11)


def test_an_endless_generator_streams(backend: str) -> None:
    squares = parcelout.imap(square, endless(), backend=backend, workers=2)
    taken = []
    for value in squares:
        taken.append(value)
        if len(taken) == 5000:
            break
    squares.close()
    assert taken == [x * x for x in range(5000)]


def test_imap_unordered_on_an_endless_generator_yields_each_item_once(backend: str) -> None:
    values = parcelout.imap_unordered(abs, endless(), backend=backend, workers=2, window=64)
    seen = []
    for value in values:
        seen.append(value)
        if len(seen) == 3000:
            break
    values.close()
    assert len(set(seen)) == 3000
    assert max(seen) < 3000 + 64


# ---------------------------------------------------------------- pools


def test_a_pool_reused_for_many_runs_keeps_its_workers(backend: str) -> None:
    with parcelout.Pool(2, backend) as pool:
        pids = set()
        for run in range(30):
            outcome = list(pool.imap(pid_of, range(run + 1)))
            assert len(outcome) == run + 1
            pids.update(outcome)
    if backend == "process":
        assert len(pids) <= 2
        assert os.getpid() not in pids
    else:
        assert pids == {os.getpid()}


def test_a_garbage_collected_pool_leaves_nothing_behind(backend: str) -> None:
    pool = parcelout.Pool(2, backend)
    assert pool.submit(abs, -3).result(timeout=30) == 3
    assert list(pool.imap(abs, [-1, -2])) == [1, 2]
    del pool
    gc.collect()
    # The autouse fixture then waits, bounded, for the workers to be gone.


def test_a_pool_abandoned_mid_stream_leaves_nothing_behind(backend: str) -> None:
    pool = parcelout.Pool(2, backend)
    results = pool.imap(abs, endless())
    assert next(results) == 0
    del results, pool
    gc.collect()


# ---------------------------------------------------------------- scripts


def run_script(
    source: str, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=os.path.dirname(source) if source else None,
    )


def all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


SCRIPT_WITHOUT_SHUTDOWN = """
import os, sys
import parcelout

def pid(_):
    return os.getpid()

if __name__ == "__main__":
    pool = parcelout.Pool(2, {backend!r})
    pids = set(pool.map(pid, range(50)))
    print(" ".join(map(str, pids)), flush=True)
    stream = pool.imap(abs, iter(int, 1))  # endless, left open
    next(stream)
    # exits without shutdown, with a stream still open
"""


def test_a_script_that_exits_without_shutdown_ends_and_leaves_no_worker(backend: str, tmp_path: Path) -> None:
    script = tmp_path / "no_shutdown.py"
    script.write_text(SCRIPT_WITHOUT_SHUTDOWN.format(backend=backend))
    done = run_script(str(script), str(script), timeout=60)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    wait_until(lambda: all_gone(pids), 10, "the script's workers to exit")


STDIN_SCRIPT = """
import parcelout

class Point:
    def __init__(self, x):
        self.x = x

def cube(x):
    return x ** 3

def point(x):
    return Point(x)

with parcelout.Pool(2, "process", start_method={method!r}) as pool:
    print(sum(pool.map(cube, range(100))))
    print(sum(parcelout.imap(lambda x: x + 1, range(10), backend="process", start_method={method!r})))
    points = list(pool.imap(point, range(5)))
    print(all(isinstance(p, Point) for p in points), sum(p.x for p in points))
"""


def test_a_script_read_from_standard_input_runs_process_workers(start_method: str, tmp_path: Path) -> None:
    source = textwrap.dedent(STDIN_SCRIPT.format(method=start_method))
    done = run_script(str(tmp_path / "unused"), "-", stdin=source)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sum(x**3 for x in range(100))), str(sum(range(1, 11))), "True", "10"]


MAIN_THAT_EXITS_IN_CHILDREN = """
import sys
import parcelout

if __name__ != "__main__":
    raise SystemExit(3)  # importing this module anywhere but as the script kills the interpreter

def double(x):
    return 2 * x

try:
    parcelout.map(double, range(10), backend="process", workers=2, start_method={method!r})
except parcelout.InitializerFailed as error:  # there is no initializer: it must not be blamed
    print("InitializerFailed:", error)
    sys.exit(1)
except parcelout.StartupFailed as error:
    print("StartupFailed:", error)
    sys.exit(0)
print("no error")
sys.exit(1)
"""


def test_a_main_module_that_exits_when_imported_breaks_the_run_promptly(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "exits_in_children.py"
    script.write_text(MAIN_THAT_EXITS_IN_CHILDREN.format(method=start_method))
    done = run_script(str(script), str(script), timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.startswith("StartupFailed:")
