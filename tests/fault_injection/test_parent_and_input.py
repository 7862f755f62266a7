"""Faults on the parent's side: the parent process is killed, or its input
iterator raises halfway.

A parent killed with SIGKILL runs no clean-up at all: its workers must notice
on their own (their pipe to the parent reaches end of file) and exit, however
busy they are. They are not this test process's children, so the test
watches them itself, by pid. (Nobody is left to account for that run's
items; a fresh run in this process must still work.)

An input that raises halfway: the outcomes of the items before it come
first, exactly once, then its exception; the pool still works.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest

import parcelout
from parcelout import Failure
from tests import faults
from tests.fault_injection._accounting import account
from tests.fault_injection._support import (
    CONCURRENT,
    PROMPTLY,
    a_fresh_run_works,
    all_gone,
    expect,
    halve,
    still_works,
)
from tests.faults import InputBroke
from tests.waits import wait_until

WORKERS = 2

# Each item says where it runs (one file per worker pid), then holds its worker
# far longer than the test lasts.
PARENT_SCRIPT = textwrap.dedent(
    """
    import functools, os, sys, threading
    from pathlib import Path

    import parcelout

    def announce_and_hold(directory, x):
        Path(directory, str(os.getpid())).touch()
        threading.Event().wait(60)
        return x

    if __name__ == "__main__":
        directory, start_method = sys.argv[1], sys.argv[2]
        with parcelout.Pool({workers}, "process", start_method=start_method) as pool:
            fn = functools.partial(announce_and_hold, directory)
            for _ in pool.imap_unordered(fn, range(8), chunksize=1):
                pass
    """
).format(workers=WORKERS)


def kill_all(processes: Iterable[psutil.Process]) -> None:
    """Clean-up after a failed test: kill what is left of the killed parent's
    processes (psutil checks that each pid is still the process it was)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_exit_on_their_own_when_the_parent_is_killed(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with (tmp_path / "stderr").open("w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, str(script), str(pid_dir), start_method],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    family: list[psutil.Process] = []
    try:

        def busy_workers() -> bool:
            if parent.poll() is not None:
                raise AssertionError(f"the parent exited first: {(tmp_path / 'stderr').read_text()}")
            return len(list(pid_dir.iterdir())) >= WORKERS

        wait_until(busy_workers, PROMPTLY, "every worker to start an item")
        workers = [int(p.name) for p in pid_dir.iterdir()]
        family = psutil.Process(parent.pid).children(recursive=True)  # the workers, fork server, resource tracker
        assert set(workers) <= {p.pid for p in family}
        parent.send_signal(signal.SIGKILL)
        assert parent.wait(PROMPTLY) == -signal.SIGKILL
        wait_until(lambda: all_gone(workers), PROMPTLY, "the dead parent's workers to exit")
        wait_until(lambda: all_gone(p.pid for p in family), PROMPTLY, "every process the dead parent started to exit")
        a_fresh_run_works("process")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        kill_all(p for p in family if p.is_running())


# ---------------------------------------------------------------- the input raises halfway


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
@pytest.mark.parametrize("backend", CONCURRENT)
def test_an_input_that_raises_halfway_yields_what_came_before_then_raises(backend: str, ordered: bool) -> None:
    n = 10
    with parcelout.Pool(WORKERS, backend) as pool:
        mapper: Callable[..., Iterable[object]] = pool.imap if ordered else pool.imap_unordered
        items = faults.yields_then_raises(n, "broke after 10")
        got: list[object] = []
        with pytest.raises(InputBroke) as raised:
            for outcome in mapper(faults.FailOn(4), items, chunksize=3, on_error="return"):
                got.append(outcome)
        assert str(raised.value) == "broke after 10"
        by_index = account(got, n, halve, ordered=ordered)
        failure = expect(by_index, lambda i: 2 * i, {4: ("error", ValueError)})[4]
        assert isinstance(failure, Failure)
        still_works(pool)
