"""The process transport's encoding: a value that cannot cross fails alone."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from parcelout.backends import _wire as wire
from tests.faults import PickleRefused, Unpicklable, UnpickleRefused, UnpicklesBadly

plain = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(), st.binary(), st.none(), st.booleans())
values = st.one_of(
    plain,
    st.tuples(plain, plain),
    st.lists(plain, max_size=3),
    st.dictionaries(st.text(max_size=3), plain, max_size=3),
    st.builds(Unpicklable, st.text(max_size=5)),
    st.builds(UnpicklesBadly, st.text(max_size=5)),
)


@given(st.lists(values, max_size=30))
def test_every_value_crosses_or_fails_alone(sent: list[Any]) -> None:
    message, unsent = wire.encode(sent, lambda pos: f"note {pos}")
    received, unloaded = wire.decode(message, lambda pos: f"note {pos}")
    assert len(received) == len(sent)
    for pos, value in enumerate(sent):
        if isinstance(value, Unpicklable):
            assert isinstance(unsent[pos], PickleRefused)
            assert unsent[pos].__notes__ == [f"note {pos}"]
        elif isinstance(value, UnpicklesBadly):
            assert isinstance(unloaded[pos], UnpickleRefused)
            assert unloaded[pos].__notes__ == [f"note {pos}"]
        else:
            assert pos not in unsent
            assert pos not in unloaded
            assert received[pos] == value


def test_plain_lists_travel_as_one_pickle() -> None:
    message, _ = wire.encode([1, "a", (2, b"x"), None], str)
    assert message[:1] == b"W"
    message, _ = wire.encode([1, {"a": 1}], str)
    assert message[:1] == b"E"


def test_lambdas_travel_by_value() -> None:
    offset = 3
    message, unsent = wire.encode([lambda x: x + offset], str)
    [fn], unloaded = wire.decode(message, str)
    assert not unsent
    assert not unloaded
    assert fn(1) == 4
