import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    KeyMismatchError,
    KeyTypeError,
    LayoutMismatchError,
    NonFiniteError,
    UnsupportedOperationError,
    ValueRangeError,
)


def model(rng, scale=1.0):
    return {
        "conv.weight": (scale * rng.normal(size=(4, 3, 3, 3))).astype(np.float32),
        "conv.bias": (scale * rng.normal(size=4)).astype(np.float16),
        "fc.weight": (scale * rng.normal(size=(10, 300))).astype(np.float64),
        "steps": np.array(7, dtype=np.int64),
    }


def test_round_trip_preserves_names_shapes_dtypes(key):
    rng = np.random.default_rng(0)
    arrays = model(rng)
    out = crypto.decrypt(crypto.encrypt(arrays, key), key)
    assert list(out) == list(arrays)
    for name, arr in arrays.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        tol = 1e-3 if arr.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(out[name], arr, atol=tol, rtol=0)


@pytest.mark.parametrize("k", [1, 10, pytest.param(1000, marks=pytest.mark.slow)])
def test_sum_of_k_weighted_encryptions_matches_numpy(key, public_key, k):
    rng = np.random.default_rng(k)
    base = rng.uniform(-1, 1, 3000)
    updates = [{"w": base + 0.1 * rng.uniform(-1, 1, 3000)} for _ in range(k)]
    n = rng.integers(1, 10_000, k).astype(float)
    weights = n / n.sum()
    # clients hold the private key (symmetric); half encrypt with the public key instead
    encs = [
        crypto.encrypt(u, key if i % 2 else public_key, weight=float(w))
        for i, (u, w) in enumerate(zip(updates, weights, strict=True))
    ]
    blobs = [crypto.to_bytes(e) for e in encs]
    total = crypto.aggregate([crypto.from_bytes(b, public_key) for b in blobs])
    assert total.count == k
    assert total.weight == pytest.approx(1.0)
    got = crypto.decrypt(total, key)["w"]
    exact = sum(w * u["w"] for u, w in zip(updates, weights, strict=True))
    assert np.abs(got - exact).max() / np.abs(exact).max() <= 1e-6


def test_aggregate_does_not_modify_inputs(key):
    a = crypto.encrypt({"w": np.ones(10)}, key)
    b = crypto.encrypt({"w": np.full(10, 2.0)}, key)
    crypto.aggregate([a, b, a])
    np.testing.assert_allclose(crypto.decrypt(a, key)["w"], np.ones(10), atol=1e-6)
    np.testing.assert_allclose(crypto.decrypt(b, key)["w"], np.full(10, 2.0), atol=1e-6)


def test_public_key_cannot_decrypt(key, public_key):
    enc = crypto.encrypt({"w": np.ones(3)}, public_key)
    with pytest.raises(KeyTypeError, match="public key"):
        crypto.decrypt(enc, public_key)
    np.testing.assert_allclose(crypto.decrypt(enc, key)["w"], np.ones(3), atol=1e-6)


def test_wrong_key_names_both_fingerprints(key, other_key):
    enc = crypto.encrypt({"w": np.ones(3)}, key)
    with pytest.raises(KeyMismatchError) as info:
        crypto.decrypt(enc, other_key)
    assert key.fingerprint in str(info.value) and other_key.fingerprint in str(info.value)
    with pytest.raises(KeyMismatchError):
        crypto.from_bytes(crypto.to_bytes(enc), other_key.public())
    with pytest.raises(KeyMismatchError):
        crypto.aggregate([enc, crypto.encrypt({"w": np.ones(3)}, other_key)])


def test_truncated_and_corrupted_bytes_are_detected(key, public_key):
    blob = crypto.to_bytes(crypto.encrypt({"w": np.ones(5000)}, key))
    with pytest.raises(CiphertextFormatError, match="truncated"):
        crypto.from_bytes(blob[:-1000], public_key)
    corrupted = bytearray(blob)
    corrupted[len(blob) // 2] ^= 0xFF
    with pytest.raises(CiphertextFormatError, match="SHA-256"):
        crypto.from_bytes(bytes(corrupted), public_key)
    with pytest.raises(CiphertextFormatError, match="not a cifer container"):
        crypto.from_bytes(b"garbage" * 10, public_key)


def test_corrupted_ciphertext_without_container_is_detected(key, public_key):
    enc = crypto.encrypt({"w": np.ones(5000)}, key)
    header, chunks = enc.header(), enc.serialized_chunks()
    chunks[1] = chunks[1][: len(chunks[1]) // 2]
    with pytest.raises(CiphertextFormatError, match="truncated"):
        crypto.ckks.from_header_and_chunks(header, chunks, public_key)


def test_layout_that_does_not_match_ciphertexts(key, public_key):
    enc = crypto.encrypt({"w": np.ones(5000)}, key)
    header = enc.header()
    header["layout"]["shapes"] = [[50000]]
    with pytest.raises(LayoutMismatchError, match="needs 25 ciphertexts"):
        crypto.ckks.from_header_and_chunks(header, enc.serialized_chunks(), public_key)
    with pytest.raises(LayoutMismatchError, match="different layouts"):
        crypto.aggregate([enc, crypto.encrypt({"v": np.ones(5000)}, key)])


def test_values_outside_safe_range_and_non_finite(key):
    limit = key.params.max_abs
    with pytest.raises(ValueRangeError, match="safe range"):
        crypto.encrypt({"w": np.array([limit * 2])}, key)
    with pytest.raises(ValueRangeError):
        crypto.encrypt({"w": np.array([limit * 0.75])}, key, weight=2.0)
    with pytest.raises(NonFiniteError):
        crypto.encrypt({"w": np.array([np.nan])}, key)


def test_plaintext_weights_need_a_multiplicative_level(key):
    enc = crypto.encrypt({"w": np.ones(4)}, key)
    with pytest.raises(UnsupportedOperationError, match="nvflare"):
        crypto.aggregate([enc, enc], weights=[0.5, 0.5])
    flare = crypto.generate_key("nvflare")
    a = crypto.encrypt({"w": np.full(4, 2.0)}, flare)
    b = crypto.encrypt({"w": np.full(4, 4.0)}, flare)
    out = crypto.decrypt(crypto.aggregate([a, b], weights=[0.25, 0.75]), flare)["w"]
    np.testing.assert_allclose(out, np.full(4, 3.5), atol=1e-5)
