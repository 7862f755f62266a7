"""CPython's own ``concurrent.futures`` tests, run against parcelout's
``ThreadPoolExecutor`` and ``ProcessPoolExecutor`` (see
``tests/suites/cpython_futures.py``), once per kind of executor.

They ship with Python 3.13's standard library (``test.test_concurrent_futures``);
where the interpreter has none, this is skipped. Each kind runs in its own
interpreter, as a user's program would, under a time limit: a hang fails.
"""

from __future__ import annotations

import sys

import pytest

from tests.suites.common import has_suite, run_kind

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 13) or not has_suite("test.test_concurrent_futures"),
    reason="CPython's concurrent.futures tests in this form ship with Python 3.13's standard library",
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["thread", "fork", "forkserver", "spawn"])
def test_cpython_concurrent_futures_suite(kind: str) -> None:
    passed, failed, run = run_kind("cpython_futures", kind, timeout=220)
    assert (failed, run.returncode) == (0, 0), run.stderr[-6000:]
    assert passed >= 30  # the suite really ran
