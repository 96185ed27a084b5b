"""Data as people have it: unscaled features and more than two classes (issue 11, item 5).

The data owner standardizes on her side; the scaler travels only encrypted and is folded into
the model she decrypts, so the model works on raw rows. Oracles: the plaintext run of the same
algorithm on standardized data, and scikit-learn's LogisticRegression for one-vs-rest.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from hypothesis.extra import numpy as hnp

from cifer_flwr import securetrain as st
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.linalg import generate_training_key
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    DatasetError,
    FeatureMismatchError,
    UnsupportedOperationError,
)
from cifer_flwr.securetrain.algorithm import params_for_iterations
from cifer_flwr.securetrain.encrypted import decrypt_scaler, encrypt_scaler

#: One encrypted iteration's step size (a larger step is the lever when depth is scarce).
LR = 1.0


@pytest.fixture(scope="module")
def raw_cancer() -> st.Dataset:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return st.Dataset(x, y.astype(np.int64))


@pytest.fixture(scope="module")
def raw_wine() -> st.Dataset:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    return st.Dataset(x, y.astype(np.int64), (0.0, 1.0, 2.0))


@pytest.fixture(scope="module")
def key1024() -> Key:
    """One-iteration key (N=8192) with rotations for up to 1024 samples."""
    return generate_training_key(params_for_iterations(1), max_period=1024)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=6),
        elements=hs.floats(-1e12, 1e12, allow_nan=False),
    )
)
def test_scaler_words_round_trip_exactly(x):
    scaler = st.Scaler.fit(x)
    back = st.Scaler.from_words(scaler.to_words())
    np.testing.assert_array_equal(back.mean, scaler.mean)
    np.testing.assert_array_equal(back.scale, scaler.scale)


def test_fold_gives_the_same_scores_on_raw_rows():
    rng = np.random.default_rng(0)
    x = rng.normal([1000.0, -3.0, 0.001], [300.0, 1.0, 0.0004], size=(50, 3))
    ds = st.Dataset(x, (x[:, 0] > 1000).astype(np.int64))
    scaler = st.Scaler.fit(x)
    std_model = st.LogisticModel(np.array([0.7, -1.2, 2.5]), 0.3)
    raw_model = st.fold_scaler(std_model, scaler)
    np.testing.assert_allclose(
        raw_model.decision_function(x),
        std_model.decision_function(scaler.transform(ds).X),
        rtol=1e-9,
        atol=1e-9,
    )
    weight, bias = scaler.unfold(raw_model.weight, raw_model.bias)
    np.testing.assert_allclose(weight, std_model.weight)
    assert float(bias) == pytest.approx(std_model.bias)
    constant = st.Scaler.fit(np.ones((4, 2)))
    np.testing.assert_array_equal(constant.scale, [1.0, 1.0])


def test_bad_scaler_words_are_refused():
    words = st.Scaler(np.array([1.0]), np.array([-2.0])).to_words()
    with pytest.raises(DatasetError, match="non-positive"):
        st.Scaler.from_words(words)
    with pytest.raises(DatasetError, match="8 per feature"):
        st.Scaler.from_words(words[:5])


def test_multiclass_labels_are_class_indices(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.arange(8.0).reshape(4, 2), y=np.array([7, 3, 5, 3]))
    ds = st.load_dataset(tmp_path / "d.npz")
    assert ds.classes == (3.0, 5.0, 7.0) and ds.num_outputs == 3
    np.testing.assert_array_equal(ds.y, [2, 0, 1, 0])
    back = st.load_dataset(st.save_dataset(ds, tmp_path / "e.npz"))
    np.testing.assert_array_equal(back.y, ds.y)
    np.savez(tmp_path / "many.npz", X=np.arange(200.0)[:, None], y=np.arange(200.0))
    with pytest.raises(DatasetError, match="--label-column"):
        st.load_dataset(tmp_path / "many.npz")


def test_plaintext_raw_equals_standardized_and_old_behaviour_fails(raw_cancer):
    """The oracle: without standardizing, 3 iterations reach 0.37 (issue 11's symptom)."""
    std = st.Scaler.fit(raw_cancer.X).transform(raw_cancer)
    folded = st.train_plaintext(raw_cancer, iterations=3, standardize=True)
    on_std = st.train_plaintext(std, iterations=3)
    assert st.evaluate(folded, raw_cancer)["accuracy"] == st.evaluate(on_std, std)["accuracy"]
    assert st.evaluate(folded, raw_cancer)["accuracy"] >= 0.93
    assert st.evaluate(st.train_plaintext(raw_cancer, iterations=3), raw_cancer)["accuracy"] < 0.6


def test_encrypted_one_vs_rest_wine_against_sklearn(raw_wine, key1024):
    """Three classes, raw features: one encrypted iteration per class vs a converged solver.

    Tolerance: one Nesterov step with a degree-3 sigmoid reaches 0.94 on wine where
    scikit-learn's LogisticRegression reaches 1.00; we require at most 7 points below it,
    and the exact predictions of the plaintext run of the same algorithm.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pub = key1024.public()
    enc = st.encrypt_dataset(raw_wine, pub)
    assert enc.outputs == 3 and len(enc.columns) == 3 * 14
    zeros = st.OneVsRestModel.from_matrix(np.zeros((3, 13)), np.zeros(3))
    start = st.encrypt_model(zeros, pub, scaler=enc.scaler)
    trained = st.train_encrypted(enc, start, iterations=1, learning_rate=LR)
    assert trained.scaler is not None  # the scaler only travels encrypted
    model = st.decrypt_model(trained, key1024)
    assert isinstance(model, st.OneVsRestModel) and model.classes == (0.0, 1.0, 2.0)
    oracle = st.train_plaintext(raw_wine, iterations=1, learning_rate=LR, standardize=True)
    np.testing.assert_array_equal(model.predict(raw_wine.X), oracle.predict(raw_wine.X))
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    sk_acc = sk.fit(raw_wine.X, raw_wine.y).score(raw_wine.X, raw_wine.y)
    acc = st.evaluate(model, raw_wine)["accuracy"]
    assert acc >= sk_acc - 0.07, (acc, sk_acc)


def test_scenario2_raw_plaintext_data_returns_a_raw_model(raw_cancer, key1024):
    """Alice standardizes her plaintext rows herself; Bob's model comes back in raw units."""
    pub = key1024.public()
    rng = np.random.default_rng(1)
    bob = st.LogisticModel(rng.normal(0, 1e-3, 30), 0.1)
    design = st.plain_design(raw_cancer, pub.params)
    trained = st.train_encrypted(design, st.encrypt_model(bob, pub), iterations=1, learning_rate=LR)
    assert trained.scaler is None  # Alice's scaler never leaves her
    model = st.decrypt_model(trained, key1024)
    oracle = st.train_plaintext(
        raw_cancer, iterations=1, learning_rate=LR, init=bob, standardize=True
    )
    # CKKS is approximate: the first scores use raw values (up to 4254) at a 2^35 scale.
    np.testing.assert_allclose(
        model.decision_function(raw_cancer.X),
        oracle.decision_function(raw_cancer.X),
        rtol=5e-4,
        atol=2e-3,
    )
    np.testing.assert_array_equal(model.predict(raw_cancer.X), oracle.predict(raw_cancer.X))
    assert st.evaluate(model, raw_cancer)["accuracy"] >= 0.9


def test_coordinates_must_agree(small_cancer, train_key, train_public):
    enc = st.encrypt_dataset(small_cancer, train_public)
    raw_model = st.encrypt_model(st.LogisticModel.zeros(8), train_public)
    with pytest.raises(UnsupportedOperationError, match="--no-standardize"):
        st.train_encrypted(enc, raw_model, iterations=1, learning_rate=0.5)
    other = st.encrypt_dataset(small_cancer, train_public)  # another encryption of a scaler
    start = st.encrypt_model(st.LogisticModel.zeros(8), train_public, scaler=other.scaler)
    with pytest.raises(UnsupportedOperationError, match="another scaler"):
        st.train_encrypted(enc, start, iterations=1, learning_rate=0.5)
    design = st.plain_design(small_cancer, train_public.params)
    with pytest.raises(UnsupportedOperationError, match="plaintext data"):
        st.train_encrypted(design, start, iterations=1, learning_rate=0.5)
    ovr = st.encrypt_model(
        st.OneVsRestModel.from_matrix(np.zeros((3, 8)), np.zeros(3)), train_public
    )
    with pytest.raises(FeatureMismatchError, match="3 output"):
        st.train_encrypted(design, ovr, iterations=1, learning_rate=0.5)
    plain = st.encrypt_dataset(small_cancer, train_public, standardize=False)
    assert plain.scaler is None
    st.train_encrypted(plain, raw_model, iterations=1, learning_rate=0.5)


def test_tampered_scaler_is_refused(small_cancer, train_key, train_public):
    enc = encrypt_scaler(st.Scaler.fit(small_cancer.X), train_public)
    assert decrypt_scaler(enc, train_key, 8).num_features == 8
    from cifer_flwr import crypto

    shifted = crypto.encrypt({"scaler": np.full(64, 0.5)}, train_public)
    with pytest.raises(CiphertextFormatError, match="whole 16-bit words"):
        decrypt_scaler(shifted, train_key, 8)
