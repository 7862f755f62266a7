"""A worker's traceback, as a user reads it: it starts at the user's own
frame, names the script's file and shows its source line, as
``ProcessPoolExecutor``'s does (cloudpickle, which carries a script's
functions by value, drops the file name of their code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scripts import run_script

SCRIPT = """
import parcelout

def boom(x):
    if x == 3:
        raise ValueError("three")
    return x

if __name__ == "__main__":
    parcelout.map(boom, range(5), backend="process", workers=2, start_method={method!r})
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_a_worker_traceback_names_the_script_and_starts_at_its_frame(method: str, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(method=method))
    run = run_script(script)
    assert run.returncode == 1
    remote = re.search(r'"""\nTraceback \(most recent call last\):\n(.*?)"""', run.stderr, flags=re.DOTALL)
    assert remote, run.stderr
    frames = remote.group(1)
    assert "<dynamic-code>" not in frames
    assert frames.startswith(f'  File "{script}", line 6, in boom\n    raise ValueError("three")'), frames
