"""Encrypted datasets, models and training, against the plaintext oracle."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr import securetrain as st
from cifer_flwr.crypto.linalg import generate_training_key
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    FeatureMismatchError,
    KeyMismatchError,
    KeyTypeError,
    UnsupportedOperationError,
)
from cifer_flwr.securetrain.algorithm import params_for_iterations


def test_model_encrypt_decrypt_round_trip(tmp_path, train_key, train_public):
    model = st.LogisticModel(np.array([0.5, -2.0, 3.25]), 0.75)
    enc = st.encrypt_model(model, train_public)
    path = st.save_encrypted(enc, tmp_path / "m.enc")
    back = st.decrypt_model(st.load_encrypted_model(path, train_key), train_key)
    np.testing.assert_allclose(back.to_vector(), model.to_vector(), atol=1e-5)


def test_dataset_file_round_trip(tmp_path, small_cancer, train_key, train_public):
    enc = st.encrypt_dataset(small_cancer, train_key, standardize=False)
    path = st.save_encrypted(enc, tmp_path / "d.enc")
    back = st.load_encrypted_dataset(path, train_public)
    assert (back.num_samples, back.num_features, back.period) == (200, 8, 256)
    z = st.signed_design(small_cancer)
    for j in (0, 3, 8):
        np.testing.assert_allclose(back.columns[j][0].decrypt(train_key)[:200], z[:, j], atol=1e-4)


@pytest.mark.parametrize("encrypted_data", [True, False], ids=["scenario1", "scenario2"])
def test_one_encrypted_iteration_matches_oracle(
    small_cancer, train_key, train_public, encrypted_data
):
    # Without standardization (the owner's scaling is covered by test_scaling.py).
    init = st.LogisticModel(np.full(8, 0.05), -0.1)
    design = (
        st.encrypt_dataset(small_cancer, train_public, standardize=False)
        if encrypted_data
        else st.plain_design(small_cancer, train_public.params, standardize=False)
    )
    steps = []
    trained = st.train_encrypted(
        design,
        st.encrypt_model(init, train_public),
        iterations=1,
        learning_rate=0.5,
        on_step=lambda k, done, total: steps.append((k, done, total)),
    )
    assert steps[-1] == (0, 9, 9)
    got = st.decrypt_model(trained, train_key)
    want = st.train_plaintext(small_cancer, iterations=1, learning_rate=0.5, init=init)
    np.testing.assert_allclose(got.to_vector(), want.to_vector(), atol=1e-3)


def test_depth_limit_is_explained(small_cancer, train_public):
    design = st.plain_design(small_cancer, train_public.params)
    model = st.encrypt_model(st.LogisticModel.zeros(8), train_public)
    with pytest.raises(UnsupportedOperationError, match="at most 1 iterations"):
        st.train_encrypted(design, model, iterations=2, learning_rate=0.1)


def test_feature_mismatch(small_cancer, train_public):
    design = st.plain_design(small_cancer, train_public.params)
    model = st.encrypt_model(st.LogisticModel.zeros(5), train_public)
    with pytest.raises(FeatureMismatchError, match="5 features"):
        st.train_encrypted(design, model, iterations=1, learning_rate=0.1)


def test_wrong_and_public_keys(tmp_path, train_key, train_public):
    path = st.save_encrypted(
        st.encrypt_model(st.LogisticModel.zeros(2), train_public), tmp_path / "m.enc"
    )
    other = generate_training_key(params_for_iterations(1), max_period=2)
    with pytest.raises(KeyMismatchError) as info:
        st.load_encrypted_model(path, other)
    assert train_key.fingerprint in str(info.value) and other.fingerprint in str(info.value)
    enc = st.load_encrypted_model(path, train_public)
    with pytest.raises(KeyTypeError):
        st.decrypt_model(enc, train_public)
    with pytest.raises(KeyMismatchError):
        st.decrypt_model(enc, other)


def test_corrupted_and_truncated_files(tmp_path, small_cancer, train_public):
    path = st.save_encrypted(
        st.encrypt_model(st.LogisticModel.zeros(2), train_public), tmp_path / "m.enc"
    )
    data = path.read_bytes()
    (tmp_path / "trunc.enc").write_bytes(data[: len(data) // 2])
    with pytest.raises(CiphertextFormatError, match="truncated"):
        st.load_encrypted_model(tmp_path / "trunc.enc", train_public)
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    (tmp_path / "flip.enc").write_bytes(bytes(flipped))
    with pytest.raises(CiphertextFormatError, match="corrupted"):
        st.load_encrypted_model(tmp_path / "flip.enc", train_public)
    with pytest.raises(CiphertextFormatError, match="wrong kind"):
        st.load_encrypted_dataset(path, train_public)
