"""Many faults in one long run: items that raise, crash their worker, return
a result that cannot travel back, or behave, all mixed in 10,000 items.

The accounting is exact: every item comes out once, in input order, each
crashing item as a crash, each raising one as an error, each unpicklable
result as an error (process) or as itself (thread), every other item as its
value. The pool still works after the run; no process is left.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest

import parcelout
from parcelout import Failure, WorkerCrashed
from tests.fault_injection import _work as work
from tests.fault_injection._accounting import account
from tests.fault_injection._support import notes_of, still_works

N = 10_000
CRASHES = 20  # each costs a worker's respawn
LOCK_TYPE = type(threading.Lock())


def plan(crashes: int) -> list[tuple[int, str]]:
    """Each item's part; the crashing items at random (a fixed seed) places."""
    crashing = set(random.Random(20240611).sample(range(N), crashes))
    parts = []
    for i in range(N):
        if i in crashing:
            how = "crash"
        elif i % 97 == 0:
            how = "raise"
        elif i % 89 == 0:
            how = "unpicklable"
        else:
            how = "ok"
        parts.append((i, how))
    return parts


def check(outcome: object, index: int, how: str, backend: str) -> None:
    if how == "ok":
        assert outcome == (index, 2 * index), f"item {index}: {outcome!r}"
    elif how == "unpicklable" and backend == "thread":
        assert isinstance(outcome, tuple), f"item {index}: {outcome!r}"
        assert outcome[0] == index
        assert isinstance(outcome[1], LOCK_TYPE)
    else:
        assert isinstance(outcome, Failure), f"item {index} ({how}) gave {outcome!r}"
        failure: Failure[Any] = outcome
        assert failure.item == (index, how)
        if how == "crash":
            assert failure.kind == "crash"
            assert isinstance(failure.error, WorkerCrashed)
            assert failure.error.exitcode == 7, str(failure.error)
            assert f"exit code {failure.error.exitcode}" in str(failure.error)
        elif how == "raise":
            assert failure.kind == "error"
            assert isinstance(failure.error, work.Boom)
            assert failure.error.args == (index,)
        else:
            assert failure.kind == "error"
            assert isinstance(failure.error, TypeError)
            assert "could not be pickled" in notes_of(failure.error)


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
@pytest.mark.parametrize(("backend", "crashes"), [("process", CRASHES), ("thread", 0)], ids=["process", "thread"])
def test_many_mixed_faults_in_one_run_are_each_accounted_for(backend: str, crashes: int, ordered: bool) -> None:
    parts = plan(crashes)
    with parcelout.Pool(2, backend) as pool:
        mapper = pool.imap if ordered else pool.imap_unordered
        by_index = account(mapper(work.behave, parts, on_error="return"), N, lambda r: r[0], ordered=ordered)
        for index, how in parts:
            check(by_index[index], index, how, backend)
        failed = Counter(o.kind for o in by_index.values() if isinstance(o, Failure))
        assert failed["crash"] == crashes
        assert failed["error"] > 100  # the raising items, and in process the unpicklable results
        still_works(pool)
