"""CPython's own ``multiprocessing.Pool`` tests, run against
``parcelout.multiprocessing.Pool`` (see ``tests/suites/cpython_mp_pool.py``),
once per start method.

They ship with Python 3.13's standard library (``test._test_multiprocessing``);
where the interpreter has none, this is skipped. Each start method runs in its
own interpreter, as a user's program would, under a time limit: a hang fails.
"""

from __future__ import annotations

import sys

import pytest

from tests.suites.common import has_suite, run_kind

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 13) or not has_suite("test._test_multiprocessing"),
    reason="CPython's multiprocessing tests in this form ship with Python 3.13's standard library",
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_cpython_multiprocessing_pool_suite(method: str) -> None:
    passed, failed, run = run_kind("cpython_mp_pool", method, timeout=100)
    assert (failed, run.returncode) == (0, 0), run.stderr[-6000:]
    assert passed >= 25  # the suite really ran
