"""backend="dask": the same guarantees on a real Dask cluster.

Most tests run on a cluster started as a user starts one by hand: a
``dask scheduler`` and a ``dask worker`` with two worker processes, in
processes of their own (not children of the tests, so the leak check does
not count them), reached by ``address=`` or by a ``client=``. Others let
parcelout start its own ``LocalCluster`` for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout import Failure, TaskTimeout
from parcelout._journal import read_outcomes
from tests.cluster_checks import (
    a_stalled_item_fails_alone_and_frees_its_slot,
    a_timed_out_item_runs_again_when_its_policy_says,
)
from tests.cluster_work import fail_on_3, slow_on_2, square
from tests.waits import wait_until

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(120)
STARTUP = 60  # seconds a cluster may take to come up on a busy machine


def _daemon(args: list[str], log: Path) -> int:
    """Start ``args`` in a session of its own, orphaned (so not our child);
    return its pid, which is its process group's id."""
    line = " ".join(f"'{a}'" for a in args)
    started = subprocess.run(
        ["sh", "-c", f"setsid {line} > '{log}' 2>&1 < /dev/null & echo $!"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(started.stdout.strip())


def _stop(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a scheduler with 2 single-threaded worker processes."""
    here = tmp_path_factory.mktemp("dask")
    scheduler_file = here / "scheduler.json"
    env_python = sys.executable
    groups = [
        _daemon(
            [
                env_python,
                "-m",
                "distributed.cli.dask_scheduler",
                "--scheduler-file",
                str(scheduler_file),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--no-show",
            ],
            here / "scheduler.log",
        )
    ]
    try:
        wait_until(scheduler_file.exists, STARTUP, "the Dask scheduler to start")
        groups.append(
            _daemon(
                [
                    env_python,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                here / "worker.log",
            )
        )
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=STARTUP)
        yield address
    finally:
        for group in groups:
            _stop(group)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this item refuses to be pickled")


def test_map_imap_and_imap_unordered_on_a_cluster(cluster: str) -> None:
    assert parcelout.map(square, range(500), backend="dask", address=cluster) == [x * x for x in range(500)]
    ordered = list(parcelout.imap(square, range(200), backend="dask", address=cluster, chunksize=7))
    assert ordered == [x * x for x in range(200)]
    unordered = list(parcelout.imap_unordered(square, range(200), backend="dask", address=cluster))
    assert sorted(unordered) == [x * x for x in range(200)]


def test_a_client_may_be_given(cluster: str) -> None:
    with distributed.Client(cluster, set_as_default=False) as client:
        assert parcelout.map(square, range(50), backend="dask", client=client) == [x * x for x in range(50)]
        assert client.status == "running"  # the caller's client stays open


def test_failures_stay_with_their_items(cluster: str) -> None:
    items: list[Any] = list(range(40))
    items[17] = Unpicklable()
    out = parcelout.map(fail_on_3, items, backend="dask", address=cluster, on_error="return", chunksize=5)
    for index, outcome in enumerate(out):
        if index == 17:
            assert isinstance(outcome, Failure)
            assert "refuses to be pickled" in str(outcome.error)
        elif index % 10 == 3:
            assert isinstance(outcome, Failure)
            assert str(outcome.error) == f"three: {index}"
            assert "fail_on_3" in outcome.traceback  # the worker's traceback came back
        else:
            assert outcome == index
    with pytest.raises(ValueError, match="three: 3"):
        parcelout.map(fail_on_3, range(40), backend="dask", address=cluster)


def test_timeout_and_retries(cluster: str) -> None:
    out = parcelout.map(slow_on_2, range(6), backend="dask", address=cluster, task_timeout=0.5, on_error="return")
    assert [o for i, o in enumerate(out) if i != 2] == [0, 1, 3, 4, 5]
    assert isinstance(out[2], Failure)
    assert isinstance(out[2].error, TaskTimeout)
    assert out[2].kind == "timeout"
    flaky = parcelout.map(Flaky(), range(6), backend="dask", address=cluster, retries=2, on_error="return")
    assert flaky == list(range(6))


def test_an_item_past_its_task_timeout_fails_alone_and_frees_its_slot(cluster: str, tmp_path: Path) -> None:
    a_stalled_item_fails_alone_and_frees_its_slot("dask", cluster, tmp_path, bound=20)


def test_a_timed_out_item_runs_again_when_its_policy_says(cluster: str, tmp_path: Path) -> None:
    a_timed_out_item_runs_again_when_its_policy_says("dask", cluster, tmp_path)


class Flaky:
    """Fails the first time it sees each item in a worker process."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, x: int) -> int:
        if x not in self.seen:
            self.seen.add(x)
            raise ConnectionError(f"first try of {x}")
        return x


def test_the_window_bounds_what_is_sent(cluster: str) -> None:
    taken = 0

    def endless() -> Iterator[int]:
        nonlocal taken
        while True:
            taken += 1
            yield taken

    stream = parcelout.imap(square, endless(), backend="dask", address=cluster, window=40)
    assert [next(stream) for _ in range(100)] == [x * x for x in range(1, 101)]
    stream.close()
    assert taken <= 100 + 40


def test_pool_submit_and_journal(cluster: str, tmp_path: Path) -> None:
    with parcelout.Pool(backend="dask", address=cluster) as pool:
        assert pool.backend == "dask"
        assert pool.submit(square, 12).result(timeout=30) == 144
        journal = tmp_path / "run.db"
        stream = pool.imap(square, range(300), journal=journal, chunksize=10)
        first = [next(stream) for _ in range(100)]
        stream.close()
        assert first == [x * x for x in range(100)]
        assert list(pool.imap(square, range(300), journal=journal)) == [x * x for x in range(300)]
    assert [o.index for o in read_outcomes(journal)] == list(range(300))


class Holds:
    """Notes each item's worker pid in a directory, then waits until a file
    named ``go`` exists there."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __call__(self, x: int) -> int:
        with open(os.path.join(self.directory, f"{x}.pid"), "w") as f:
            f.write(str(os.getpid()))
        with open(os.path.join(self.directory, "runs"), "a") as f:
            f.write(f"{x} {os.getpid()}\n")
        go = os.path.join(self.directory, "go")
        for _ in range(600):  # at most a minute
            if os.path.exists(go):
                break
            threading.Event().wait(0.1)  # the test's workload waiting on a file, not the test waiting
        return 3 * x


@pytest.mark.parametrize("where", ["own LocalCluster", "given cluster"])
def test_a_killed_dask_worker_loses_no_item(where: str, cluster: str, tmp_path: Path) -> None:
    options: dict[str, Any] = {"backend": "dask", "chunksize": 2, "on_error": "return"}
    if where == "given cluster":
        options["address"] = cluster
    outcomes: list[Any] = []
    running = threading.Thread(
        target=lambda: outcomes.extend(parcelout.imap(Holds(tmp_path), range(24), **options)), name="test-run"
    )
    running.start()
    try:
        wait_until(lambda: len(list(tmp_path.glob("*.pid"))) >= 2 or not running.is_alive(), STARTUP, "items to start")
        assert running.is_alive(), "the run ended before its items started"
        victim = int(next(iter(sorted(tmp_path.glob("*.pid")))).read_text())
        os.kill(victim, signal.SIGKILL)
    finally:
        (tmp_path / "go").touch()
        running.join(90)
    assert not running.is_alive()
    assert outcomes == [3 * x for x in range(24)]  # every item, once, in order: none lost
    runs = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    ran = Counter(int(x) for x, _ in runs)
    assert set(ran) == set(range(24))
    killed = {int(x) for x, pid in runs if int(pid) == victim}
    assert killed
    assert all(ran[x] >= 2 for x in killed)  # what the lost worker held ran again elsewhere


def test_an_own_local_cluster_is_closed_after_the_run() -> None:
    assert parcelout.map(square, range(20), backend="dask", workers=2) == [x * x for x in range(20)]
    # the leak check (conftest) then finds no process of that cluster left


def test_client_and_address_are_for_cluster_backends() -> None:
    with pytest.raises(ValueError, match="client and address are for a cluster backend"):
        parcelout.map(square, range(3), backend="thread", address="tcp://127.0.0.1:1")


def test_the_command_line_runs_on_a_cluster(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def cube(x):\n    return x ** 3\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "parcelout",
            "run",
            "jobs:cube",
            "--range",
            "30",
            "--backend",
            "dask",
            "--address",
            cluster,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == [x**3 for x in range(30)]
    misuse = subprocess.run(
        [sys.executable, "-m", "parcelout", "run", "jobs:cube", "--range", "3", "--address", cluster],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert misuse.returncode == 2
    assert "--address names a cluster" in misuse.stderr
