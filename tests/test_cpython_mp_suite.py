"""CPython's own ``multiprocessing.Pool`` tests, run against
``parcelout.multiprocessing.Pool`` (see ``tests/suites/cpython_mp_pool.py``),
once per start method.

They ship with Python 3.13's standard library (``test._test_multiprocessing``);
where the interpreter has none, this is skipped. Each start method runs in its
own interpreter, as a user's program would, under a time limit: a hang fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_suite() -> bool:
    try:
        return importlib.util.find_spec("test._test_multiprocessing") is not None
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 13) or not _has_suite(),
    reason="CPython's multiprocessing tests in this form ship with Python 3.13's standard library",
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_cpython_multiprocessing_pool_suite(method: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.suites.cpython_mp_pool", method],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=100,
    )
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    counts = re.fullmatch(r"(\d+) passed, (\d+) failed, (\d+) skipped", last)
    assert counts, f"no summary line:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    passed, failed, _ = map(int, counts.groups())
    assert (failed, run.returncode) == (0, 0), run.stderr[-6000:]
    assert passed >= 25  # the suite really ran
