"""Plaintext logistic-regression models: read/write ``.h5`` / ``.pt`` / ``.npz``, evaluate.

* ``.h5``: a Keras ``Sequential([Input((d,)), Dense(1, activation="sigmoid")])`` saved by
  Keras, so ``keras.models.load_model`` works. Reading uses ``h5py`` only (any HDF5 file
  holding one ``(d, 1)`` kernel and one ``(1,)`` bias).
* ``.pt``: a PyTorch ``nn.Linear(d, 1)`` state dict (``weight`` (1, d), ``bias`` (1,)),
  loadable with ``torch.load(path, weights_only=True)``.
* ``.npz``: the same ``weight`` and ``bias`` arrays (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import FeatureMismatchError, ModelFormatError
from cifer_flwr.securetrain.data import Dataset

__all__ = [
    "MODEL_EXTENSIONS",
    "LogisticModel",
    "accuracy",
    "evaluate",
    "read_model",
    "roc_auc",
    "write_arrays",
    "write_model",
]

MODEL_EXTENSIONS = (".h5", ".pt", ".npz")


@dataclass(frozen=True, eq=False)
class LogisticModel:
    """``p(y=1 | x) = sigmoid(x . weight + bias)``.

    Attributes
    ----------
    weight : ndarray of shape (d,)
        Feature weights.
    bias : float
        Intercept.

    """

    weight: npt.NDArray[np.float64]
    bias: float

    @property
    def num_features(self) -> int:
        """Number of input features ``d``."""
        return int(self.weight.shape[0])

    def to_vector(self) -> npt.NDArray[np.float64]:
        """``[bias, weight...]`` (inverse of :meth:`from_vector`)."""
        return np.concatenate([[self.bias], self.weight]).astype(np.float64)

    @classmethod
    def from_vector(cls, beta: npt.ArrayLike) -> LogisticModel:
        """Build from ``[bias, weight...]``."""
        arr = np.asarray(beta, dtype=np.float64).ravel()
        return cls(arr[1:].copy(), float(arr[0]))

    @classmethod
    def zeros(cls, num_features: int) -> LogisticModel:
        """A model with all weights and the bias at zero."""
        return cls(np.zeros(num_features), 0.0)

    def decision_function(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Linear scores ``x @ weight + bias``."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.num_features:
            raise FeatureMismatchError(
                f"the model expects {self.num_features} features, the data has "
                f"{arr.shape[1] if arr.ndim == 2 else arr.shape}; use the dataset the model "
                "was trained for (same columns, same order)."
            )
        return np.asarray(arr @ self.weight + self.bias, dtype=np.float64)

    def predict_proba(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Probability of class 1 (the exact sigmoid)."""
        z = np.clip(self.decision_function(x), -500, 500)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Class labels in {0, 1}."""
        return (self.decision_function(x) > 0).astype(np.int64)


def accuracy(model: LogisticModel, dataset: Dataset) -> float:
    """Fraction of correctly classified samples."""
    return float(np.mean(model.predict(dataset.X) == dataset.y))


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def evaluate(model: LogisticModel, dataset: Dataset) -> dict[str, float]:
    """Accuracy, ROC AUC and mean log-loss of ``model`` on ``dataset``."""
    if model.num_features != dataset.num_features:
        raise FeatureMismatchError(
            f"the model has {model.num_features} features but the dataset has "
            f"{dataset.num_features}; use the dataset the model was trained for."
        )
    p = np.clip(model.predict_proba(dataset.X), 1e-12, 1 - 1e-12)
    y = dataset.y
    return {
        "accuracy": accuracy(model, dataset),
        "auc": roc_auc(model.decision_function(dataset.X), y),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "samples": float(dataset.num_samples),
    }


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in MODEL_EXTENSIONS:
        raise ModelFormatError(
            f"unknown model extension {ext or '(none)'!r} for {path}; use .h5 (Keras), "
            ".pt (PyTorch state dict) or .npz, or .enc for an encrypted model."
        )
    return ext


def _from_arrays(weight: npt.ArrayLike, bias: npt.ArrayLike, source: str) -> LogisticModel:
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).ravel()
    if w.ndim == 2 and 1 in w.shape:
        w = w.ravel()
    if w.ndim != 1 or b.shape != (1,):
        raise ModelFormatError(
            f"{source}: expected one output unit (weight (1, d) or (d, 1), bias (1,)), got "
            f"weight {np.shape(weight)} and bias {np.shape(bias)}. securetrain handles binary "
            "logistic regression (a single Dense(1, sigmoid) / Linear(d, 1) layer)."
        )
    if not (np.all(np.isfinite(w)) and np.isfinite(b[0])):
        raise ModelFormatError(f"{source}: the model holds NaN or infinite weights.")
    return LogisticModel(w, float(b[0]))


def _read_h5(path: Path) -> LogisticModel:
    import h5py

    found: dict[str, list[Any]] = {"kernel": [], "bias": []}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            leaf = name.rsplit("/", 1)[-1].split(":")[0]
            if leaf in found:
                found[leaf].append(np.asarray(obj[()]))

    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(visit)
    except OSError as exc:
        raise ModelFormatError(f"{path}: not a readable HDF5 file ({exc}).") from exc
    if len(found["kernel"]) != 1 or len(found["bias"]) != 1:
        raise ModelFormatError(
            f"{path}: found {len(found['kernel'])} kernels and {len(found['bias'])} biases; "
            "expected a single Dense(1, sigmoid) layer."
        )
    return _from_arrays(found["kernel"][0], found["bias"][0], str(path))


def _read_pt(path: Path) -> LogisticModel:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelFormatError(f"{path}: not a loadable PyTorch state dict ({exc}).") from exc
    if not isinstance(state, dict):
        raise ModelFormatError(f"{path}: expected a state dict, found {type(state).__name__}.")
    weights = {k.rsplit(".", 1)[-1]: v for k, v in state.items()}
    if set(weights) != {"weight", "bias"} or len(state) != 2:
        raise ModelFormatError(
            f"{path}: expected the state dict of one nn.Linear(d, 1) (keys weight, bias), "
            f"found keys {sorted(state)}."
        )
    return _from_arrays(
        weights["weight"].detach().double().numpy(),
        weights["bias"].detach().double().numpy(),
        str(path),
    )


def _read_npz(path: Path) -> LogisticModel:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "weight" not in npz.files or "bias" not in npz.files:
                raise ModelFormatError(
                    f"{path}: expected arrays 'weight' and 'bias', found {list(npz.files)}."
                )
            return _from_arrays(npz["weight"], npz["bias"], str(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"{path}: not a readable .npz model ({exc}).") from exc


def read_model(path: str | os.PathLike[str]) -> LogisticModel:
    """Read a plaintext model; the format follows the extension (inverse of :func:`write_model`).

    Raises
    ------
    ModelFormatError
        For an unknown extension, a missing or unreadable file, or a model that is not a
        single-output linear layer.

    """
    p = Path(path)
    ext = _extension(p)
    if not p.is_file():
        raise ModelFormatError(f"model file {str(p)!r} does not exist.")
    if ext == ".h5":
        return _read_h5(p)
    if ext == ".pt":
        return _read_pt(p)
    return _read_npz(p)


def _write_h5(model: LogisticModel, path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    import keras

    keras_model = keras.Sequential(
        [keras.Input((model.num_features,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    keras_model.layers[-1].set_weights(
        [model.weight.reshape(-1, 1).astype(np.float32), np.array([model.bias], np.float32)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("absl").level
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            keras_model.save(path)
        finally:
            logging.getLogger("absl").setLevel(level)


def _write_pt(model: LogisticModel, path: Path) -> None:
    import torch

    state = {
        "weight": torch.tensor(model.weight.reshape(1, -1), dtype=torch.float32),
        "bias": torch.tensor([model.bias], dtype=torch.float32),
    }
    torch.save(state, path)


def write_model(model: LogisticModel, path: str | os.PathLike[str]) -> Path:
    """Write a plaintext model; the format follows the extension (see module docstring)."""
    p = Path(path)
    ext = _extension(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{ext}")
    try:
        if ext == ".h5":
            _write_h5(model, tmp)
        elif ext == ".pt":
            _write_pt(model, tmp)
        else:
            with tmp.open("wb") as fh:
                np.savez(fh, weight=model.weight.reshape(1, -1), bias=np.array([model.bias]))
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_arrays(arrays: dict[str, npt.NDArray[Any]], path: str | os.PathLike[str]) -> Path:
    """Write named arrays (a federated model) as ``.npz`` or a PyTorch ``.pt`` state dict.

    Raises
    ------
    ModelFormatError
        For ``.h5``: a Keras file needs the model's architecture, which an encrypted
        federated model does not carry; write ``.npz`` or ``.pt`` and load the weights
        into your own model.

    """
    p = Path(path)
    ext = _extension(p)
    if ext == ".h5":
        raise ModelFormatError(
            f"{p}: a federated model holds named weight arrays, not a Keras architecture, so "
            "it cannot be written as .h5; use .npz (np.load) or .pt (torch state dict) and "
            "load the weights into your model."
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{ext}")
    try:
        if ext == ".pt":
            import torch

            torch.save(
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, tmp
            )
        else:
            with tmp.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
