"""The cluster backend's shape, checked: the pool's scheduler times items out
there too; the task that runs a batch on a cluster's worker decides nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import parcelout

BACKENDS = Path(parcelout.__file__).parent / "backends"


def _names(path: Path) -> set[str]:
    """Every name ``path`` imports, refers to or defines as a parameter."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def test_the_remote_task_decides_no_timeout() -> None:
    names = _names(BACKENDS / "_remote.py")
    assert "TaskTimeout" not in names  # the scheduler's message, as for local workers
    assert not names & {"timeout", "task_timeout", "deadline", "perf_counter", "monotonic"}
    assert "parcelout.errors" not in (BACKENDS / "_remote.py").read_text()


def test_the_cluster_backend_reports_starts_and_decides_no_timeout() -> None:
    names = _names(BACKENDS / "_cluster.py")
    assert "ItemStarted" in names  # the scheduler arms each deadline from these
    assert not names & {"TaskTimeout", "retries_after", "backoff_before", "deadline", "monotonic"}
    for engine in ("_dask.py", "_ray.py"):
        assert "TaskTimeout" not in _names(BACKENDS / engine)
