"""The serial backend has two paths: a plain map that raises at the first
failure runs at the speed of a plain loop (``_stream._run_plain``), and
everything else goes through the scheduler (``InlineLane``: the calling
thread as the one worker of a scheduler of its own; with nothing to retry,
it runs each batch straight). They must keep the same
contract: the same results, the same first failure, raised after the same
results, with the same note naming the item."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import parcelout
from tests.test_invariants import Boom, behave


def run(items: list[tuple[int, str]], chunksize: int | None, *, scheduled: bool) -> tuple[list[Any], str | None]:
    """What a user sees: the results taken before the failure, and the failure."""
    seen: list[Any] = []
    # A retry policy (one that retries nothing) takes the scheduled path; without one, the plain path.
    policy: Any = {"retries": 1, "retry_on": lambda error: False} if scheduled else {}
    stream = parcelout.imap(behave, items, backend="serial", chunksize=chunksize, **policy)
    try:
        for value in stream:
            seen.append(value)
    except Boom as failure:
        return seen, f"{failure!r} {getattr(failure, '__notes__', [])}"
    return seen, None


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.sampled_from(["ok", "ok", "ok", "raise"]), max_size=60),
    chunksize=st.none() | st.integers(1, 9),
)
def test_the_plain_path_and_the_scheduled_path_keep_the_same_contract(plan: list[str], chunksize: int | None) -> None:
    items = list(enumerate(plan))
    assert run(items, chunksize, scheduled=False) == run(items, chunksize, scheduled=True)


@pytest.mark.parametrize("scheduled", [False, True])
def test_both_paths_name_the_failing_item(scheduled: bool) -> None:
    seen, failure = run([(0, "ok"), (1, "ok"), (2, "raise"), (3, "ok")], None, scheduled=scheduled)
    assert seen == [0, 2]
    assert failure == "Boom(2) [\"parcelout: raised by item 2 ((2, 'raise'))\"]"
