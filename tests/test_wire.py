"""The process transport's encoding: a value that cannot cross fails alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parcelout.backends import _wire as wire
from parcelout.errors import TransferError
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
            assert isinstance(unloaded[pos], TransferError)
            assert isinstance(unloaded[pos].__cause__, UnpickleRefused)
            assert str(unloaded[pos]).startswith(f"note {pos}: UnpickleRefused: ")
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


def test_large_buffers_travel_out_of_band_and_arrive_writable() -> None:
    np = pytest.importorskip("numpy")
    big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    small = np.arange(10)
    buffers: list[memoryview] = []
    nested = {"x": np.ones(wire.OUT_OF_BAND_BYTES, dtype=np.uint8)}
    message, unsent = wire.encode([big, small, nested], str, buffers)
    assert not unsent
    assert len(message) < 4096  # the data is not in the message ...
    assert [b.nbytes for b in buffers] == [big.nbytes, wire.OUT_OF_BAND_BYTES]
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), big)  # ... nor copied to be sent
    received = [bytearray(b) for b in buffers]  # what the receiver reads them into
    (got_big, got_small, got_dict), unloaded = wire.decode(message, str, received)
    assert not unloaded
    assert np.array_equal(got_big, big)
    assert np.array_equal(got_small, small)
    assert np.array_equal(got_dict["x"], nested["x"])
    assert got_big.flags.writeable
    assert np.shares_memory(got_big, np.frombuffer(received[0], dtype=np.float64))  # no copy on arrival


@given(st.lists(st.one_of(st.integers(100), st.integers(0, 99), st.builds(Unpicklable, st.text(max_size=5)))))
def test_out_of_band_buffers_stay_with_their_value(spec: list[Any]) -> None:
    np = pytest.importorskip("numpy")
    big = wire.OUT_OF_BAND_BYTES
    sent = [np.full(big + v, v, dtype=np.uint8) if isinstance(v, int) and v < 100 else v for v in spec[:10]]
    buffers: list[memoryview] = []
    message, unsent = wire.encode(sent, str, buffers)
    received, unloaded = wire.decode(message, str, [bytearray(b) for b in buffers])
    assert not unloaded
    for pos, value in enumerate(sent):
        if isinstance(value, Unpicklable):
            assert pos in unsent
        elif isinstance(value, int):
            assert received[pos] == value
        else:
            assert np.array_equal(received[pos], value)


def _double_in_place(array: Any) -> Any:
    array *= 2  # the array arrived writable, as it left
    return array


@pytest.mark.timeout(60)
def test_arrays_cross_process_workers_both_ways() -> None:
    np = pytest.importorskip("numpy")
    import parcelout

    arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(12)]  # 1 MiB each
    results = parcelout.map(_double_in_place, arrays, backend="process", workers=2, chunksize=3)
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(12)]
    assert all(r.shape == (1 << 17,) and r.flags.writeable for r in results)
    assert [float(a[0]) for a in arrays] == [float(i) for i in range(12)]  # the caller's arrays are its own
