"""Every Python example of the README runs as written: each ```python block
is saved as a script and run in its own interpreter, in an empty folder, as
a user who copies it would run it. (Synopses are ```text blocks.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip() and not line.startswith("import")), "")


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{n}:{_first_line(b)[:40]}" for n, b in enumerate(BLOCKS)])
def test_a_readme_example_runs_as_written(block: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block)
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=150, check=False
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
