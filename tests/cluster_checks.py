"""What the Dask and Ray tests check alike: a per-item task timeout on a
cluster, decided by the pool's scheduler as on local workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import parcelout
from parcelout import Failure, TaskTimeout
from tests.cluster_work import Stalls, runs_of


def a_stalled_item_fails_alone_and_frees_its_slot(backend: str, cluster: str, tmp_path: Path, bound: float) -> None:
    """A stalled item in each of the first two batches holds each of the
    cluster's two CPUs: the rest ends within ``bound`` seconds only if the
    killed tasks let go of them."""
    began = time.monotonic()
    options: dict[str, Any] = {"backend": backend, "address": cluster, "chunksize": 3, "on_error": "return"}
    out = parcelout.map(Stalls(tmp_path, {1, 4}), range(8), task_timeout=1, **options)
    assert time.monotonic() - began < bound  # the stalled items wait 30 s
    for stalled in (1, 4):
        failure = out[stalled]
        assert isinstance(failure, Failure)
        assert isinstance(failure.error, TaskTimeout)
        assert failure.kind == "timeout"
        assert f"item {stalled} " in str(failure.error)
        assert "task_timeout of 1 s" in str(failure.error)
    assert [o for i, o in enumerate(out) if i not in (1, 4)] == [0, 2, 3, 5, 6, 7]
    ran = runs_of(tmp_path)
    assert all(ran[x] == 1 for x in (1, 2, 4, 5, 6, 7))  # after a stalled item: not run by the stopped task
    assert ran[0] <= 2 and ran[3] <= 2  # before it: its result went with the killed task


def a_timed_out_item_runs_again_when_its_policy_says(backend: str, cluster: str, tmp_path: Path) -> None:
    options: dict[str, Any] = {"backend": backend, "address": cluster, "chunksize": 4, "task_timeout": 1}
    out = parcelout.map(Stalls(tmp_path / "once", {2}), range(4), retries=1, retry_on=TaskTimeout, **options)
    assert out == [0, 1, 2, 3]
    assert runs_of(tmp_path / "once")[2] == 2
    out = parcelout.map(Stalls(tmp_path / "twice", {2}, 2), range(4), retries=1, on_error="return", **options)
    assert isinstance(out[2], Failure) and out[2].kind == "timeout" and out[2].attempts == 2
    assert runs_of(tmp_path / "twice")[2] == 2
