import numpy as np
import pytest
from flwr.app import ArrayRecord

from cifer_flwr import crypto
from cifer_flwr.exceptions import CiphertextFormatError


def test_array_record_round_trip(key, public_key):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5000)}
    record = crypto.to_array_record(crypto.encrypt(arrays, key, meta={"round": 3}))
    assert crypto.is_encrypted_record(record)
    back = crypto.from_array_record(record, public_key)
    assert back.meta == {"round": 3}
    out = crypto.decrypt(back, key)
    np.testing.assert_allclose(out["a"], arrays["a"], atol=1e-6)
    assert out["a"].dtype == np.float32


def test_numpy_on_a_ciphertext_array_raises(key):
    record = crypto.to_array_record(crypto.encrypt({"w": np.ones(3)}, key))
    for arr in record.values():
        with pytest.raises(TypeError):
            arr.numpy()


def test_plain_record_is_not_mistaken_for_encrypted(public_key):
    plain = ArrayRecord([np.ones(3)])
    assert not crypto.is_encrypted_record(plain)
    with pytest.raises(CiphertextFormatError, match="ckks_mod"):
        crypto.from_array_record(plain, public_key)
