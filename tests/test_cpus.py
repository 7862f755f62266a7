"""The CPUs parcelout counts as usable: affinity, and a container's CPU quota
(cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), so that a container
limited to 2 CPUs on a 64-core host does not start 64 workers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

import parcelout
from parcelout import _options
from parcelout._options import cgroup_cpu_quota


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_v2_quota_is_read_from_the_process_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    membership = tmp_path / "cgroup"
    write(membership, "0::/kubepods/pod1/container\n")
    root = tmp_path / "fs"
    write(root / "cpu.max", "max 100000\n")
    write(root / "kubepods" / "cpu.max", "400000 100000\n")
    write(root / "kubepods" / "pod1" / "container" / "cpu.max", "150000 100000\n")  # 1.5 CPUs
    assert cgroup_cpu_quota(str(root), str(membership)) == 2


def test_a_v1_quota_is_read(tmp_path: Path) -> None:
    membership = tmp_path / "cgroup"
    write(membership, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    group = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    write(group / "cpu.cfs_quota_us", "300000\n")
    write(group / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "fs"), str(membership)) == 3


@pytest.mark.parametrize("text", ["max 100000\n", "garbage\n"])
def test_no_quota_or_an_unreadable_one_sets_no_limit(tmp_path: Path, text: str) -> None:
    membership = tmp_path / "cgroup"
    write(membership, "0::/\n")
    write(tmp_path / "fs" / "cpu.max", text)
    assert cgroup_cpu_quota(str(tmp_path / "fs"), str(membership)) is None
    assert cgroup_cpu_quota(str(tmp_path / "missing"), str(tmp_path / "missing")) is None


def test_a_pool_in_a_container_limited_to_2_cpus_starts_2_process_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_options, "cgroup_cpu_quota", lambda: 2)
    monkeypatch.setattr(_options, "_quota_read", (-math.inf, None))  # read the quota again now
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if hasattr(os, "process_cpu_count"):
        monkeypatch.setattr(os, "process_cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    with parcelout.Pool(backend="process") as pool:
        assert pool.workers == 2
    with parcelout.Pool(backend="thread") as pool:
        assert pool.workers == 6  # as ThreadPoolExecutor: cpus + 4
