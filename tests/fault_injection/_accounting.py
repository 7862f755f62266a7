"""Exactly-once accounting for the fault-injection suite.

``account(outcomes, n, result_index)`` checks that a run gave one outcome
per input item, never two, none missing and none stray (and, for ordered
maps, in input order), and adds what it found to ``TALLY``, which the
suite's ``conftest`` reports at the end of the session. It records before it
asserts, so a run that loses items is counted even though its test fails.

A run that loses an item may never end (an ordered map waits for it for
ever), so ``account`` takes the outcomes in a thread of its own and counts
what came within ``WITHIN`` seconds: a loss fails the test promptly, as a
loss, rather than at the global timeout.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from parcelout import Failure


@dataclass
class Tally:
    """What every ``account`` call of the session found."""

    runs: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0


TALLY = Tally()
WITHIN = 20.0  # seconds: far more than any run here takes, well under the global timeout


def drain(outcomes: Iterable[object], within: float = WITHIN) -> tuple[list[object], bool]:
    """What ``outcomes`` yields within ``within`` seconds, and whether it ended.
    An exception the iteration raises is raised here."""
    got: list[object] = []
    raised: list[BaseException] = []

    def take() -> None:
        try:
            for outcome in outcomes:
                got.append(outcome)  # one by one: a run that stalls keeps what came before
        except BaseException as error:
            raised.append(error)

    taker = threading.Thread(target=take, name="test-drain", daemon=True)  # left blocked if the run stalls
    taker.start()
    taker.join(within)
    if raised:
        raise raised[0]
    return list(got), not taker.is_alive()


def account(
    outcomes: Iterable[object], n: int, result_index: Callable[[Any], int], *, ordered: bool = True
) -> dict[int, object]:
    """Each index in ``range(n)`` exactly once; return the outcomes by index.

    A ``Failure`` names its index; ``result_index(result)`` says which item a
    result belongs to (each test's function returns values that carry it).
    """
    got, ended = drain(outcomes)
    indices = [o.index if isinstance(o, Failure) else result_index(o) for o in got]
    counts = Counter(indices)
    missing = [i for i in range(n) if counts[i] == 0]
    twice = {i: c for i, c in counts.items() if c > 1}
    TALLY.runs += 1
    TALLY.expected += n
    TALLY.lost += len(missing)
    TALLY.duplicated += sum(c - 1 for c in twice.values())
    stalled = "" if ended else f" (the run stalled: nothing more came in {WITHIN:g} s)"
    assert not missing, f"{len(missing)} of {n} items lost{stalled}: {missing[:20]}"
    assert ended, f"every item came out, but the run did not end{stalled}"
    assert not twice, f"items that came out more than once (index: count): {dict(list(twice.items())[:20])}"
    assert set(counts) == set(range(n)), f"outcomes for indices not in the input: {sorted(set(counts) - set(range(n)))}"
    if ordered:
        assert indices == list(range(n)), "outcomes out of input order"
    return dict(zip(indices, got, strict=True))
