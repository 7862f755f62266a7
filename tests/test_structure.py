"""The code's shape, checked: the core decides, backends carry out.

``parcelout._core`` (feeder, batcher, scheduler, engine, collector) must not
import a backend or anything that does I/O for one: policy lives there, and
backends stay thin and replaceable.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import parcelout

CORE = Path(parcelout.__file__).parent / "_core"
ALLOWED_INTERNAL = ("parcelout._core", "parcelout.errors")
FORBIDDEN_STDLIB = {"multiprocessing", "subprocess", "socket", "os", "pickle"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_imports_no_backend_and_no_process_machinery() -> None:
    files = sorted(CORE.glob("*.py"))
    assert {f.stem for f in files} >= {"_scheduler", "_engine", "_feeder", "_batcher", "_collector", "_messages"}
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "parcelout":
                assert module.startswith(ALLOWED_INTERNAL), f"{path.name} imports {module}"
            else:
                assert top in sys.stdlib_module_names, f"{path.name} imports the third-party {module}"
                assert top not in FORBIDDEN_STDLIB, f"{path.name} imports {module}: I/O belongs in a backend"


def test_the_scheduler_reads_no_clock_and_starts_no_thread() -> None:
    modules = imported_modules(CORE / "_scheduler.py")
    assert not modules & {"time", "threading", "queue"}


def _calls(path: Path) -> set[str]:
    """The names of the attributes and functions ``path`` calls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def test_only_the_scheduler_decides_retries_and_back_off_and_no_lane_sleeps() -> None:
    package = Path(parcelout.__file__).parent
    scheduler = CORE / "_scheduler.py"
    assert {"retries_after", "backoff_before"} <= _calls(scheduler)
    for path in sorted(package.rglob("*.py")):
        if path == scheduler:
            continue
        calls = _calls(path)
        assert not calls & {"retries_after", "backoff_before"}, f"{path.name} decides a retry itself"
        if path.name not in ("_demo.py", "_stress.py"):  # the demo's work sleeps; stress yields the GIL with sleep(0)
            assert "sleep" not in calls, f"{path.name} sleeps"


def test_the_package_exports_exactly_what_it_lists_and_a_worker_imports_little() -> None:
    import subprocess

    assert sorted(parcelout.__all__) == sorted([*parcelout._WHERE, *parcelout._SUBMODULES])
    for name in parcelout.__all__:
        assert getattr(parcelout, name) is not None
    with_child = subprocess.run(
        [sys.executable, "-c", "import sys, parcelout.backends._child; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    # A process worker starts without the library's front (the API, auto, the journal, sqlite3).
    for heavy in ("parcelout._api", "parcelout._auto", "parcelout._journal", "sqlite3", "parcelout._stream"):
        assert f"'{heavy}'" not in with_child, heavy
