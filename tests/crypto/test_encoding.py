import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cifer_flwr.crypto import Layout, decode, encode
from cifer_flwr.crypto.encoding import chunk, unchunk
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
