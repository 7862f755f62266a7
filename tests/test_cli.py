"""The ``parcelout`` command, run as a user runs it: a separate process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import parcelout

ROW = re.compile(
    r"^(?P<workload>.+?)\s+(?P<backend>serial|thread|process)\s+(?P<seconds>\d+\.\d+)\s+(?P<speedup>\d+\.\d+)x$"
)


def parcelout_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("parcelout")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=50, check=False, env=env)


def test_demo_prints_a_row_per_workload_and_backend() -> None:
    done = parcelout_command("demo", "--scale", "0.05", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = [m.groupdict() for line in done.stdout.splitlines() if (m := ROW.match(line.strip()))]
    workloads = {row["workload"] for row in rows}
    assert len(workloads) == 3
    assert sorted((row["workload"], row["backend"]) for row in rows) == sorted(
        (w, b) for w in workloads for b in ("serial", "thread", "process")
    )
    for row in rows:
        assert float(row["seconds"]) > 0
        if row["backend"] == "serial":
            assert row["speedup"] == "1.00"
    assert done.stderr == ""  # --no-progress: no bars


def test_demo_shows_progress_bars_on_standard_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the suite turns bars off
    done = parcelout_command("demo", "--scale", "0.02", env=env)
    assert done.returncode == 0, done.stderr
    assert "item/s" in done.stderr  # the rate
    assert "100%" in done.stderr


def test_version_and_usage_errors() -> None:
    version = parcelout_command("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"parcelout {parcelout.__version__}"
    unknown = parcelout_command("no-such-command")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr
    bad_scale = parcelout_command("demo", "--scale", "many")
    assert bad_scale.returncode == 2
    assert "--scale" in bad_scale.stderr


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "parcelout", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"parcelout {parcelout.__version__}"
