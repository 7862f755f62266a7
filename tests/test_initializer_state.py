"""The most common initializer, as a user writes it in a script: it loads
something into a global, and the function uses it. The script's functions
travel by value (cloudpickle), one pickle each; in a worker they must still
share the script's globals, as they do when ``ProcessPoolExecutor``'s
workers import the script again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import run_script

SCRIPT = """
import functools
import sys
import parcelout

MODEL = None
CACHE = {}

def load(path, scale=1):
    global MODEL
    MODEL = {"path": path, "scale": scale}   # a global set by assignment
    CACHE["hits"] = 0                         # and one changed in place

def helper(x):
    CACHE["hits"] += 1
    return MODEL["scale"] * x

def predict(x):
    return helper(x) + len(MODEL["path"])

if __name__ == "__main__":
    backend, method, partial = sys.argv[1], sys.argv[2], sys.argv[3] == "partial"
    options = {"start_method": method} if method != "-" else {}
    init = functools.partial(load, scale=1) if partial else load
    print(parcelout.map(predict, range(6), backend=backend, workers=2, initializer=init,
                        initargs=("model.bin",), **options))
    with parcelout.Pool(2, backend, initializer=load, initargs=("model.bin", 3), **options) as pool:
        print(pool.submit(predict, 2).result(), list(pool.map(predict, [1, 2])))
"""

CASES = [
    ("process", "forkserver", "plain"),
    ("process", "spawn", "plain"),
    ("process", "fork", "plain"),
    ("process", "forkserver", "partial"),
    ("thread", "-", "plain"),
    ("interpreter", "-", "plain"),
]


def _interpreters() -> bool:
    from parcelout.backends._interpreter import available

    return available()


@pytest.mark.parametrize(("backend", "method", "initializer"), CASES)
def test_what_the_initializer_sets_in_a_scripts_globals_the_function_sees(
    backend: str, method: str, initializer: str, tmp_path: Path
) -> None:
    if backend == "interpreter" and not _interpreters():
        pytest.skip("no sub-interpreters here: Python 3.14+, or 3.13 with parcelout[interpreters]")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    run = run_script(script, backend, method, initializer)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[9, 10, 11, 12, 13, 14]", "15 [12, 15]"]
