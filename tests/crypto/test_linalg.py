"""Homomorphic linear algebra (crypto/linalg.py): round trips and plaintext oracles."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr.crypto import generate_key
from cifer_flwr.crypto._protobuf import fields as _fields
from cifer_flwr.crypto.linalg import (
    Ciphertext,
    _with_size,
    encrypt_constant,
    encrypt_periodic,
    estimate_public_key_bytes,
    generate_training_key,
    has_training_keys,
    periodic,
    rotation_steps,
    sum_all,
)
from cifer_flwr.crypto.params import for_depth
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    KeyMismatchError,
    KeyTypeError,
    NonFiniteError,
    UnsupportedOperationError,
)


@pytest.fixture(scope="module")
def tkey():
    return generate_training_key(for_depth(3, scale_bits=35), max_period=64)


@pytest.fixture(scope="module")
def tpub(tkey):
    return tkey.public()


def test_periodic_round_trip():
    values = np.arange(5.0)
    out = periodic(values, 8, 32)
    assert out.shape == (32,)
    np.testing.assert_array_equal(out[:5], values)
    np.testing.assert_array_equal(out[8:13], values)
    assert out[5:8].sum() == 0
    with pytest.raises(ValueError):
        periodic(np.arange(9.0), 8, 32)


def test_rotation_steps():
    assert rotation_steps(16) == [1, 2, 4, 8]
    assert rotation_steps(1) == []
    with pytest.raises(ValueError):
        rotation_steps(12)


def test_size_rewrite_round_trip(tpub):
    ct = encrypt_constant(1.0, tpub)
    raw = ct.to_bytes()
    resized = _with_size(raw, 7)
    assert next(f for f in _fields(resized) if f[0] == 1)[2][-1] == 7
    back = _with_size(resized, tpub.params.slots)
    assert sorted(_fields(back)) == sorted(_fields(raw))


def test_training_key_pair(tkey, tpub):
    assert tkey.is_private and not tpub.is_private
    assert tkey.fingerprint == tpub.fingerprint
    assert has_training_keys(tpub)
    assert not has_training_keys(generate_key("default").public())
    assert estimate_public_key_bytes(tkey.params, 64) > 0


def test_encrypt_decrypt_round_trip(tkey, tpub):
    values = np.linspace(-3, 3, 50)
    ct = encrypt_periodic(values, 64, tpub)
    np.testing.assert_allclose(ct.decrypt(tkey)[:50], values, atol=1e-4)
    const = encrypt_constant(0.25, tkey)
    np.testing.assert_allclose(const.decrypt(tkey), 0.25, atol=1e-5)


def test_arithmetic_matches_numpy(tkey, tpub):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=64), rng.normal(size=64)
    ca, cb = encrypt_periodic(a, 64, tpub), encrypt_periodic(b, 64, tpub)
    slots = tpub.params.slots
    pb = periodic(b, 64, slots)
    cases = {
        "add": (ca + cb, a + b, 0),
        "sub": (ca - cb, a - b, 0),
        "scalar_add": (ca + 2.0, a + 2.0, 0),
        "plain_add": (ca + pb, a + b, 0),
        "mul": (ca * cb, a * b, 1),
        "scalar": (ca * 0.5, a * 0.5, 1),
        "plain_mul": (ca * pb, a * b, 1),
        "square": (ca.square(), a * a, 1),
        "chain": ((ca * cb) * ca, a * b * a, 2),
    }
    for name, (ct, expected, level) in cases.items():
        np.testing.assert_allclose(ct.decrypt(tkey)[:64], expected, atol=1e-3, err_msg=name)
        assert ct.level == level, name
    total = sum_all([ca, cb, ca])
    np.testing.assert_allclose(total.decrypt(tkey)[:64], 2 * a + b, atol=1e-3)


def test_window_sum_fills_every_slot(tkey, tpub):
    values = np.arange(1.0, 41.0)
    summed = encrypt_periodic(values, 64, tpub).window_sum(64)
    np.testing.assert_allclose(summed.decrypt(tkey), values.sum(), atol=1e-2)
    assert summed.level == 0


def test_window_sum_without_rotation_keys_is_explained(tkey, tpub):
    ct = encrypt_constant(1.0, tpub)
    with pytest.raises(UnsupportedOperationError, match="Galois"):
        ct.window_sum(tpub.params.slots)


def test_depth_is_enforced(tpub):
    ct = encrypt_constant(1.0, tpub)
    for _ in range(tpub.params.depth):
        ct = ct * 1.0
    assert ct.levels_left == 0
    with pytest.raises(UnsupportedOperationError, match="depth exhausted"):
        ct * 1.0


def test_bytes_round_trip_and_corruption(tkey, tpub):
    ct = encrypt_periodic(np.arange(10.0), 64, tpub) * 2.0
    back = Ciphertext.from_bytes(ct.to_bytes(), tpub, ct.level)
    np.testing.assert_allclose(back.decrypt(tkey)[:10], np.arange(10.0) * 2, atol=1e-3)
    with pytest.raises(CiphertextFormatError):
        Ciphertext.from_bytes(ct.to_bytes()[: len(ct.to_bytes()) // 2], tpub, 1)


def test_key_checks(tkey, tpub):
    other = generate_training_key(for_depth(3, scale_bits=35), max_period=2)
    ct = encrypt_constant(1.0, tpub)
    with pytest.raises(KeyTypeError):
        ct.decrypt(tpub)
    with pytest.raises(KeyMismatchError, match=other.fingerprint):
        ct.decrypt(other)
    with pytest.raises(KeyMismatchError):
        ct + encrypt_constant(1.0, other)
    with pytest.raises(NonFiniteError):
        encrypt_constant(float("nan"), tpub)
