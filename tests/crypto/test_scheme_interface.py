"""One scheme interface (issue 20 item 2): every key is a ``crypto.SchemeKey``.

CKKS (``default``), ``packed`` (BFV) and Paillier keys are driven through the same methods
and loaded by the one loader; the capabilities the protocol asks for
(``has_reserved_slots``, ``exact_sums``) are the key's, not ``isinstance`` checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.crypto import paillier
from cifer_flwr.exceptions import KeyMismatchError, KeyTypeError, UnsupportedOperationError

TEST_PAILLIER = paillier.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only")
ARRAYS = {"w": np.array([[0.5, -1.25], [2.0, 0.0]]), "b": np.array([0.75])}


@pytest.fixture(scope="module")
def keys() -> dict[str, crypto.AnyKey]:
    return {
        "default": crypto.generate_key("default"),
        "packed": crypto.generate_key("packed"),
        "paillier": paillier.generate_key(TEST_PAILLIER, insecure=True),
    }


CAPABILITIES = {  # scheme, has_reserved_slots, exact_sums
    "default": ("ckks", True, False),
    "packed": ("bfv", True, True),
    "paillier": ("paillier", False, False),
}


@pytest.mark.parametrize("name", list(CAPABILITIES))
def test_every_key_round_trips_through_the_interface(keys, name):
    key: crypto.SchemeKey = keys[name]
    assert (key.scheme, key.has_reserved_slots, key.exact_sums) == CAPABILITIES[name]
    assert crypto.has_reserved_slots(keys[name]) is key.has_reserved_slots
    assert crypto.has_exact_sums(keys[name]) is key.exact_sums
    enc = key.encrypt(ARRAYS, weight=2.0)
    assert enc.fingerprint == key.fingerprint == key.public().fingerprint
    parsed = key.public().from_bytes(crypto.to_bytes(enc))
    out = key.decrypt(parsed, divisor=2.0)
    for k, v in ARRAYS.items():
        np.testing.assert_allclose(out[k], v, atol=1e-3)
    # the module-level functions are the same methods
    np.testing.assert_allclose(crypto.decrypt(enc, key, divisor=2.0)["w"], ARRAYS["w"], atol=1e-3)
    with pytest.raises(KeyTypeError):
        key.public().decrypt(enc)


def test_a_key_refuses_another_schemes_ciphertexts(keys):
    ckks_enc = keys["default"].encrypt(ARRAYS)
    paillier_enc = keys["paillier"].encrypt(ARRAYS)
    with pytest.raises(KeyMismatchError):
        keys["paillier"].decrypt(ckks_enc)
    with pytest.raises(KeyMismatchError):
        keys["default"].decrypt(paillier_enc)


def test_paillier_refuses_what_it_cannot_carry(keys):
    with pytest.raises(UnsupportedOperationError, match="reserved slots"):
        keys["paillier"].encrypt(ARRAYS, reserved=2)
    with pytest.raises(UnsupportedOperationError, match="masks"):
        keys["paillier"].encrypt(ARRAYS, mask=np.zeros(4))


@pytest.mark.parametrize("name", list(CAPABILITIES))
def test_one_loader_reads_every_key_file(keys, tmp_path, name):
    key = keys[name]
    writer = paillier.write_key_pair if name == "paillier" else crypto.write_key_pair
    private, public = writer(key, tmp_path / name)
    for path, is_private in ((private, True), (public, False)):
        loaded = crypto.load_key(path)
        assert (loaded.scheme, loaded.fingerprint, loaded.is_private) == (
            key.scheme,
            key.fingerprint,
            is_private,
        )
    assert crypto.load_private_key(private).fingerprint == key.fingerprint
    assert crypto.load_public_key(public).is_private is False
    with pytest.raises(KeyTypeError):
        crypto.load_public_key(private)
    with pytest.raises(KeyTypeError):
        crypto.load_private_key(public)
