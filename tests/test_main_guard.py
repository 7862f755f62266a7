"""A script without the ``if __name__ == "__main__":`` guard, as a new user
writes one: process workers import the script again as they start and would
run its work again. It ends promptly, non-zero, with a few lines that name
the guard, not pages of nested tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import run_script

UNGUARDED = """
import parcelout

def square(x):
    return x * x

print(parcelout.map(square, range(10), backend="process", workers=2, start_method={method!r}))
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_script_without_the_main_guard_is_told_so_in_a_few_lines(method: str, tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(method=method))
    run = run_script(script)
    assert run.returncode != 0
    assert 'if __name__ == "__main__":' in run.stderr
    assert "bootstrapping phase" not in run.stderr
    assert len(run.stderr.splitlines()) < 40, run.stderr
