"""What the runners of other projects' suites share: running the scripts a
test starts in a child interpreter with parcelout in place, the summary
line, and (for pytest) running one kind of a suite in its own interpreter
and reading that line back."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unittest
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
SUMMARY = re.compile(r"(\d+) passed, (\d+) failed, (\d+) skipped")


def put_in_child_interpreters(prologue: str) -> None:
    """Run ``prologue`` first in every script a test starts through
    ``test.support.script_helper`` (with ``-c`` or a script file)."""
    from test.support import script_helper

    for name in ("assert_python_ok", "assert_python_failure", "run_python_until_end"):
        setattr(script_helper, name, _with_prologue(getattr(script_helper, name), prologue))


def _with_prologue(original: Any, prologue: str) -> Any:
    def run(*args: Any, **env: Any) -> Any:
        command = list(args)
        if len(command) >= 2 and command[0] == "-c":
            command[1] = prologue + command[1]
        elif command and isinstance(command[0], str) and command[0].endswith(".py"):
            # A script file: run it as __main__ after the prologue.
            command[:1] = ["-c", f"{prologue}import runpy; runpy.run_path({command[0]!r}, run_name='__main__')"]
        return original(*command, **env)

    return run


def summary(result: unittest.TestResult, known: int = 0) -> str:
    """The last line a runner prints; ``known`` failures count as skipped."""
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped) + known
    # On a line of its own: a test's output may end without one.
    return f"\n{result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped"


def has_suite(module: str) -> bool:
    """Whether this interpreter ships the standard library's test ``module``."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def run_kind(runner: str, kind: str, timeout: float) -> tuple[int, int, subprocess.CompletedProcess[str]]:
    """Run ``python -m tests.suites.RUNNER KIND`` in its own interpreter, as a
    user's program would; passed and failed counts, and the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", f"tests.suites.{runner}", kind],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    counts = SUMMARY.fullmatch(last)
    assert counts, f"no summary line:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    passed, failed, _ = map(int, counts.groups())
    return passed, failed, run
