"""backend="ray": the same guarantees on Ray (run when Ray is installed).

Most tests run on a Ray cluster started as a user starts one by hand
(``ray start --head``), whose processes are not children of the tests; one
lets parcelout start a local Ray for the run and shut it down after.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout import Failure, TaskTimeout
from tests.cluster_checks import (
    a_stalled_item_fails_alone_and_frees_its_slot,
    a_timed_out_item_runs_again_when_its_policy_says,
)
from tests.cluster_work import fail_on_3, slow_on_2, square
from tests.waits import wait_until

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(180)
STARTUP = 90


def _ray_command(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("ray")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=STARTUP, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Holds:
    """Notes each run (item, worker pid), then waits until a file ``go`` exists."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def __call__(self, x: int) -> int:
        with open(os.path.join(self.directory, "runs"), "a") as f:
            f.write(f"{x} {os.getpid()}\n")
        go = os.path.join(self.directory, "go")
        for _ in range(600):  # at most a minute
            if os.path.exists(go):
                break
            threading.Event().wait(0.1)  # the workload waiting on a file, not the test waiting
        return 3 * x


def runs(directory: Path) -> list[tuple[int, int]]:
    path = directory / "runs"
    if not path.exists():
        return []
    return [(int(x), int(pid)) for x, pid in (line.split() for line in path.read_text().splitlines())]


def kill_one_worker_midway(directory: Path, options: dict[str, Any]) -> list[Any]:
    outcomes: list[Any] = []
    running = threading.Thread(
        target=lambda: outcomes.extend(parcelout.imap(Holds(directory), range(12), **options)), name="test-run"
    )
    running.start()
    try:
        wait_until(lambda: len(runs(directory)) >= 2 or not running.is_alive(), STARTUP, "items to start")
        assert running.is_alive(), "the run ended before its items started"
        victim = runs(directory)[0][1]
        os.kill(victim, signal.SIGKILL)
    finally:
        (directory / "go").touch()
        running.join(STARTUP)
    assert not running.is_alive()
    killed = {x for x, pid in runs(directory) if pid == victim}
    ran = [x for x, _ in runs(directory)]
    assert killed
    assert all(ran.count(x) >= 2 for x in killed)  # what the lost worker held ran again
    return outcomes


def test_an_own_local_ray_runs_the_items_and_survives_a_killed_worker(tmp_path: Path) -> None:
    assert not ray.is_initialized()
    outcomes = kill_one_worker_midway(tmp_path, {"backend": "ray", "workers": 2, "chunksize": 2})
    assert outcomes == [3 * x for x in range(12)]
    assert not ray.is_initialized()  # shut down with the run


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    port = _free_port()
    started = _ray_command("start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false")
    assert started.returncode == 0, started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _ray_command("stop", "--force")


def test_map_imap_and_failures_on_a_cluster(cluster: str) -> None:
    assert parcelout.map(square, range(300), backend="ray", address=cluster) == [x * x for x in range(300)]
    unordered = list(parcelout.imap_unordered(square, range(100), backend="ray", address=cluster))
    assert sorted(unordered) == [x * x for x in range(100)]
    out = parcelout.map(fail_on_3, range(30), backend="ray", address=cluster, on_error="return", chunksize=4)
    for index, outcome in enumerate(out):
        if index % 10 == 3:
            assert isinstance(outcome, Failure)
            assert str(outcome.error) == f"three: {index}"
        else:
            assert outcome == index


def test_timeout_on_a_cluster(cluster: str) -> None:
    out = parcelout.map(slow_on_2, range(5), backend="ray", address=cluster, task_timeout=0.5, on_error="return")
    assert isinstance(out[2], Failure)
    assert isinstance(out[2].error, TaskTimeout)
    assert [o for i, o in enumerate(out) if i != 2] == [0, 1, 3, 4]


def test_an_item_past_its_task_timeout_fails_alone_and_frees_its_slot(cluster: str, tmp_path: Path) -> None:
    a_stalled_item_fails_alone_and_frees_its_slot("ray", cluster, tmp_path, bound=25)


def test_a_timed_out_item_runs_again_when_its_policy_says(cluster: str, tmp_path: Path) -> None:
    a_timed_out_item_runs_again_when_its_policy_says("ray", cluster, tmp_path)


def test_a_killed_worker_on_a_cluster_loses_no_item(cluster: str, tmp_path: Path) -> None:
    outcomes = kill_one_worker_midway(tmp_path, {"backend": "ray", "address": cluster, "chunksize": 2})
    assert outcomes == [3 * x for x in range(12)]


def test_a_ray_pool_submits(cluster: str) -> None:
    with parcelout.Pool(backend="ray", address=cluster) as pool:
        assert pool.backend == "ray"
        assert pool.submit(square, 9).result(timeout=60) == 81
