"""Plaintext model files (.npz, .pt, .h5) and metrics."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cifer_flwr.exceptions import FeatureMismatchError, ModelFormatError, NotLinearModelError
from cifer_flwr.securetrain import (
    LogisticModel,
    OneVsRestModel,
    evaluate,
    read_model,
    roc_auc,
    write_model,
)

MODEL = LogisticModel(np.array([0.5, -1.25, 2.0]), -0.3)


@pytest.mark.parametrize("ext", [".npz", ".pt", ".h5", ".keras", ".safetensors"])
def test_model_file_round_trip(tmp_path, ext):
    path = write_model(MODEL, tmp_path / f"m{ext}")
    back = read_model(path)
    np.testing.assert_allclose(back.weight, MODEL.weight, rtol=1e-6)
    assert back.bias == pytest.approx(MODEL.bias, rel=1e-6)
    ovr = OneVsRestModel.from_matrix(np.arange(12.0).reshape(3, 4) / 7, [0.5, -1.0, 2.0])
    back = read_model(write_model(ovr, tmp_path / f"ovr{ext}"))
    assert isinstance(back, OneVsRestModel)
    for got, want in zip(back.to_matrix(), ovr.to_matrix(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    x = np.random.default_rng(0).normal(size=(20, 4))
    np.testing.assert_array_equal(back.predict(x), ovr.predict(x))


def test_vector_round_trip():
    back = LogisticModel.from_vector(MODEL.to_vector())
    np.testing.assert_array_equal(back.weight, MODEL.weight)
    assert back.bias == MODEL.bias


def test_pt_loads_with_torch_weights_only(tmp_path):
    import torch

    path = write_model(MODEL, tmp_path / "m.pt")
    state = torch.load(path, weights_only=True)
    layer = torch.nn.Linear(3, 1)
    layer.load_state_dict(state)
    x = np.array([[1.0, 2.0, 3.0]])
    out = torch.sigmoid(layer(torch.tensor(x, dtype=torch.float32))).detach().numpy().ravel()
    np.testing.assert_allclose(out, MODEL.predict_proba(x), rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="TensorFlow/Keras absent")
def test_h5_loads_with_keras(tmp_path):
    import keras

    path = write_model(MODEL, tmp_path / "m.h5")
    model = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(
        model.predict(x, verbose=0).ravel(), MODEL.predict_proba(x), rtol=1e-5, atol=1e-6
    )


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFormatError, match="extension"):
        read_model(tmp_path / "m.joblib")
    with pytest.raises(ModelFormatError, match="does not exist"):
        read_model(tmp_path / "m.npz")
    np.savez(tmp_path / "two.npz", weight=np.ones((2, 3)), bias=np.ones(3))
    with pytest.raises(NotLinearModelError, match="one linear layer"):
        read_model(tmp_path / "two.npz")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFormatError):
        read_model(tmp_path / "junk.h5")
    with pytest.raises(ModelFormatError, match="extension"):
        write_model(MODEL, tmp_path / "m.pkl")


def test_metrics_match_sklearn(cancer):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.normal(size=200).round(1)
    labels = rng.integers(0, 2, 200)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    model = LogisticModel(np.zeros(cancer.num_features), 0.1)
    assert evaluate(model, cancer)["accuracy"] == pytest.approx(cancer.y.mean())
    with pytest.raises(FeatureMismatchError, match="30"):
        evaluate(LogisticModel(np.zeros(3), 0.0), cancer)
