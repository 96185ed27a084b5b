"""Output-path checks and key handling of the commands."""

from __future__ import annotations

import stat

import pytest

from cifer_flwr.crypto import generate_key, write_key_pair
from cifer_flwr.crypto.keys import load_key
from cifer_flwr.exceptions import KeyFileError, KeyTypeError, OutputPathError
from cifer_flwr.securetrain.workflow import (
    check_encrypted_output,
    check_plain_output,
    load_training_key,
    prepare_encryption_key,
)


@pytest.mark.parametrize("ext", [".h5", ".pt", ".npz"])
def test_plaintext_extension_for_encrypted_output_is_refused(tmp_path, ext):
    with pytest.raises(OutputPathError, match="decrypt-model") as info:
        check_encrypted_output(tmp_path / f"model{ext}")
    assert "model.enc" in str(info.value)


def test_existing_outputs_need_force(tmp_path):
    (tmp_path / "m.enc").write_bytes(b"x")
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(OutputPathError, match="--force"):
        check_encrypted_output(tmp_path / "m.enc")
    with pytest.raises(OutputPathError, match="--force"):
        check_plain_output(tmp_path / "m.h5")
    assert check_encrypted_output(tmp_path / "m.enc", force=True).name == "m.enc"
    with pytest.raises(OutputPathError, match="extension"):
        check_plain_output(tmp_path / "m.enc")
    with pytest.raises(OutputPathError, match="extension"):
        check_encrypted_output(tmp_path / "m.bin")


def test_key_pair_is_created_once(tmp_path):
    setup = prepare_encryption_key(
        public_key=None, key_name="p", keys_dir=tmp_path, iterations=1, num_samples=100
    )
    assert setup.created
    assert stat.S_IMODE(setup.private_path.stat().st_mode) == 0o600
    assert load_key(setup.public_path).fingerprint == setup.key.fingerprint
    with pytest.raises(KeyFileError, match="--public-key"):
        prepare_encryption_key(public_key=None, key_name="p", keys_dir=tmp_path, iterations=1)
    reused = prepare_encryption_key(
        public_key=setup.public_path, key_name=None, keys_dir=tmp_path, iterations=1
    )
    assert not reused.created and reused.key.fingerprint == setup.key.fingerprint
    with pytest.raises(KeyFileError, match="--iterations"):
        prepare_encryption_key(
            public_key=setup.public_path, key_name=None, keys_dir=tmp_path, iterations=3
        )
    with pytest.raises(KeyTypeError, match="private key"):
        load_training_key(setup.private_path)
    assert load_training_key(setup.public_path).fingerprint == setup.key.fingerprint


def test_aggregation_keys_cannot_train(tmp_path):
    _, pub = write_key_pair(generate_key("default"), tmp_path / "agg")
    with pytest.raises(KeyFileError, match="rotation"):
        load_training_key(pub)
    with pytest.raises(KeyFileError, match="rotation"):
        prepare_encryption_key(public_key=pub, key_name=None, keys_dir=tmp_path, iterations=1)
