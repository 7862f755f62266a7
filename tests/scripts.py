"""Running a script as a user runs it: in its own interpreter, this test
run's ``sys.path`` given to it, output captured, under a time limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_script(script: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the command-line ``args``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
