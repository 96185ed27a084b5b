import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cifer_flwr.crypto import Layout, decode, encode
from cifer_flwr.crypto.encoding import (
    chunk,
    count_chunks,
    reserved_values,
    set_reserved,
    unchunk,
)
from cifer_flwr.exceptions import LayoutMismatchError, NonFiniteError, UnsupportedOperationError

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
arrays = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=6),
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
        elements=st.floats(-100, 100, width=16),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(arrays, st.sampled_from([4, 7, 2048]))
def test_encode_decode_round_trip(named, slots):
    layout, chunks = encode(named, slots)
    assert all(c.shape == (slots,) for c in chunks)
    out = decode(layout, chunks)
    assert list(out) == list(named)
    for name, arr in named.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)


def test_one_stream_without_per_layer_padding():
    layout, chunks = encode({"a": np.ones(3), "b": np.ones(3)}, slots=4)
    assert len(chunks) == 2 and layout.total == 6
    np.testing.assert_array_equal(np.concatenate(chunks), [1, 1, 1, 1, 1, 1, 0, 0])


def test_encode_does_not_mutate_input():
    a = np.arange(5, dtype=np.float32)
    encode({"a": a}, 4)
    np.testing.assert_array_equal(a, np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(NonFiniteError, match="'w'"):
        encode({"w": np.array([1.0, bad])}, 4)


def test_non_numeric_dtype_is_refused():
    with pytest.raises(UnsupportedOperationError, match="dtype"):
        encode({"s": np.array(["a"])}, 4)


def test_layout_round_trip_and_mismatch():
    layout, chunks = encode({"w": np.zeros((2, 3), np.float32)}, 4)
    assert Layout.from_dict(layout.to_dict()) == layout
    with pytest.raises(LayoutMismatchError):
        unchunk(chunks[:1], layout.total)
    with pytest.raises(LayoutMismatchError):
        Layout.from_dict({"names": ["a"], "shapes": [[1], [2]], "dtypes": ["float32"]})


def test_chunk_unchunk_inverse():
    v = np.arange(10.0)
    np.testing.assert_array_equal(unchunk(chunk(v, 3), 10), v)


# ----------------------------------------------------------------------------- reserved slots
@settings(max_examples=60, deadline=None)
@given(arrays, st.sampled_from([8, 13, 2048]), st.integers(0, 6), st.data())
def test_reserved_slots_round_trip(named, slots, reserved, data):
    n = count_chunks(named, slots, reserved)
    fill = data.draw(hnp.arrays(np.float64, (n, reserved), elements=st.floats(-10, 10, width=32)))
    layout, chunks = encode(named, slots, reserved=reserved, fill=fill)
    assert layout.reserved == reserved and len(chunks) == n == layout.num_chunks(slots)
    assert all(c.shape == (slots,) for c in chunks)
    np.testing.assert_array_equal(reserved_values(layout, chunks), fill)
    out = decode(layout, chunks)
    assert list(out) == list(named)
    for name, arr in named.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)
    assert Layout.from_dict(layout.to_dict()) == layout


def test_reserved_slots_sit_at_the_end_of_every_chunk():
    layout, chunks = encode(
        {"a": np.arange(1, 6, dtype=np.float64)}, 4, reserved=1, fill=[[9], [8]]
    )
    np.testing.assert_array_equal(np.stack(chunks), [[1, 2, 3, 9], [4, 5, 0, 8]])
    # set_reserved replaces only the tail, and leaves its input alone
    again = set_reserved(layout, chunks, [[7], [6]])
    np.testing.assert_array_equal(np.stack(again), [[1, 2, 3, 7], [4, 5, 0, 6]])
    np.testing.assert_array_equal(chunks[0], [1, 2, 3, 9])


def test_no_reservation_keeps_the_historical_layout_form():
    layout, _ = encode({"w": np.zeros(3)}, 4)
    assert "reserved" not in layout.to_dict() and layout.reserved == 0
    reserved, _ = encode({"w": np.zeros(3)}, 4, reserved=2)
    assert reserved.to_dict()["reserved"] == 2 and reserved != layout


@pytest.mark.parametrize("bad", [-1, 65, 1.5, True, "2"])
def test_invalid_reservations_are_refused(bad):
    with pytest.raises(LayoutMismatchError, match="reserve"):
        Layout.from_dict({"names": [], "shapes": [], "dtypes": [], "reserved": bad})


def test_reservation_must_leave_data_slots_and_fill_must_fit():
    with pytest.raises(LayoutMismatchError, match="no slot for data"):
        encode({"w": np.zeros(3)}, 4, reserved=4)
    with pytest.raises(LayoutMismatchError, match=r"expected \(2, 2\)"):
        encode({"w": np.zeros(3)}, 4, reserved=2, fill=np.zeros((1, 2)))
    with pytest.raises(NonFiniteError):
        encode({"w": np.zeros(1)}, 4, reserved=1, fill=[[np.nan]])
