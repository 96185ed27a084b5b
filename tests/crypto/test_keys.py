import stat

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.exceptions import KeyFileError, KeyTypeError


def test_key_files_modes_and_fingerprints(key, key_files):
    priv, pub = key_files
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    loaded_priv = crypto.load_private_key(priv)
    loaded_pub = crypto.load_public_key(pub)
    assert loaded_priv.fingerprint == loaded_pub.fingerprint == key.fingerprint
    assert loaded_priv.is_private and not loaded_pub.is_private


def test_public_key_file_holds_no_secret_key(key_files):
    _, pub = key_files
    loaded = crypto.load_public_key(pub)
    assert not loaded.context().has_secret_key()
    assert loaded.context().has_public_key()


def test_public_and_private_files_interoperate(key_files):
    priv, pub = key_files
    enc = crypto.encrypt({"w": np.arange(4.0)}, crypto.load_public_key(pub))
    out = crypto.decrypt(enc, crypto.load_private_key(priv))
    np.testing.assert_allclose(out["w"], np.arange(4.0), atol=1e-6)


def test_private_key_is_refused_where_a_public_key_is_expected(key_files):
    priv, _ = key_files
    with pytest.raises(KeyTypeError, match="never hold a secret key"):
        crypto.load_public_key(priv)


def test_public_key_is_refused_where_a_private_key_is_needed(key_files):
    _, pub = key_files
    with pytest.raises(KeyTypeError, match="public key"):
        crypto.load_private_key(pub)


def test_missing_and_garbage_key_files(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        crypto.load_key(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a valid cifer key file"):
        crypto.load_key(bad)


def test_tampered_key_file_is_detected(tmp_path, key):
    crypto.write_key_pair(key, tmp_path)
    path = tmp_path / "public.key"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KeyFileError):
        crypto.load_key(path)


def test_keys_are_never_overwritten_silently(tmp_path, key):
    crypto.write_key_pair(key, tmp_path)
    with pytest.raises(FileExistsError):
        crypto.write_key_pair(key, tmp_path)
    crypto.write_key_pair(key, tmp_path, force=True)


def test_key_repr_never_shows_key_bytes(key):
    text = repr(key)
    assert "private_bytes" not in text and "public_bytes" not in text
