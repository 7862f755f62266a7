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
import multiprocessing as mp
import parcelout

def boom(x, y=0):
    if x == 3:
        raise ValueError("three")
    return x

if __name__ == "__main__":
    {call}
"""
# Every way a script's function reaches a process worker.
CALLS = {
    "map": 'parcelout.map(boom, range(5), backend="process", workers=2, start_method={method!r})',
    "map over two iterables": 'parcelout.map(boom, range(5), range(5), backend="process", start_method={method!r})',
    "starmap": 'parcelout.starmap(boom, [(3, 1)], backend="process", start_method={method!r})',
    "Pool.map": "list(parcelout.ProcessPoolExecutor(2, mp_context=mp.get_context({method!r})).map(boom, range(5)))",
    "submit": "parcelout.Pool(1, start_method={method!r}).submit(boom, 3).result()",
}


def assert_the_traceback_starts_at_the_scripts_frame(tmp_path: Path, call: str) -> None:
    """Run a script whose worker raises; its remote traceback must start at the
    script's own frame, with the script's path and source line."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.replace("{call}", call))
    run = run_script(script)
    assert run.returncode == 1
    remote = re.search(r'"""\nTraceback \(most recent call last\):\n(.*?)"""', run.stderr, flags=re.DOTALL)
    assert remote, run.stderr
    frames = remote.group(1)
    assert "<dynamic-code>" not in frames
    assert frames.startswith(f'  File "{script}", line 7, in boom\n    raise ValueError("three")'), frames


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_a_worker_traceback_names_the_script_and_starts_at_its_frame(method: str, call: str, tmp_path: Path) -> None:
    assert_the_traceback_starts_at_the_scripts_frame(tmp_path, CALLS[call].format(method=method))


def test_an_interpreter_workers_traceback_names_the_script_too(tmp_path: Path) -> None:
    from parcelout.backends._interpreter import available

    if not available():
        pytest.skip("no sub-interpreters here: Python 3.14+, or 3.13 with parcelout[interpreters]")
    assert_the_traceback_starts_at_the_scripts_frame(tmp_path, 'parcelout.map(boom, range(5), backend="interpreter")')
