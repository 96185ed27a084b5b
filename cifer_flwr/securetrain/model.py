"""Plaintext logistic-regression models: read/write ``.h5`` / ``.pt`` / ``.npz``, evaluate.

* ``.h5``: a Keras ``Sequential([Input((d,)), Dense(1, activation="sigmoid")])`` saved by
  Keras, so ``keras.models.load_model`` works. Reading uses ``h5py`` only (any HDF5 file
  holding one ``(d, 1)`` kernel and one ``(1,)`` bias).
* ``.pt``: a PyTorch ``nn.Linear(d, 1)`` state dict (``weight`` (1, d), ``bias`` (1,)),
  loadable with ``torch.load(path, weights_only=True)``.
* ``.npz``: the same ``weight`` and ``bias`` arrays (read without pickle, see below).

Model files may come from another party (docs/design.md §2), so reading is defensive and
every failure is a :class:`~cifer_flwr.exceptions.ModelFormatError` naming the entry:

* every weight must be a float array of rank 1 or 2 holding at most
  :data:`~cifer_flwr.securetrain.limits.MAX_MODEL_BYTES` (checked from the shape **before**
  reading, so a tiny compressed file that expands to gigabytes is refused unread);
* ``.h5``: only hard links are followed; soft links, external links, HDF5 external storage
  (``dset.external``), virtual datasets and filters other than gzip/shuffle/fletcher32/lzf are
  refused, so a model file can never pull bytes from another local file;
* ``.pt``: only the zip format (PyTorch >= 1.6), its members' sizes checked in the zip directory
  before ``torch.load(weights_only=True)``; every entry must be a dense float tensor (not an
  int, string, list or nested dict, which ``weights_only`` still allows);
* ``.npz``: the zip directory and each ``.npy`` header are checked before inflating
  (:func:`~cifer_flwr.securetrain.limits.read_npz`).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import FeatureMismatchError, ModelFormatError
from cifer_flwr.securetrain.data import Dataset
from cifer_flwr.securetrain.limits import (
    MAX_MODEL_BYTES,
    ZIP_ERRORS,
    check_zip_members,
    read_npz,
)

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
#: HDF5 filters a weight dataset may use (built into HDF5 / h5py; anything else would load a
#: filter plugin).
_H5_FILTERS = frozenset({"gzip", "shuffle", "fletcher32", "lzf"})


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


def _float_array(value: Any, source: str, entry: str) -> npt.NDArray[np.float64]:
    """Return a finite float64 copy of a weight entry, or raise naming it."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f" or arr.dtype.fields is not None:
        raise ModelFormatError(
            f"{source}: entry {entry!r} holds {arr.dtype} values of shape {arr.shape}; a "
            "weight must be an array of floats."
        )
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"{source}: entry {entry!r} holds NaN or infinite weights.")
    return np.asarray(arr, dtype=np.float64)


def _from_arrays(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    source: str,
    names: tuple[str, str] = ("weight", "bias"),
) -> LogisticModel:
    w = _float_array(weight, source, names[0])
    b = _float_array(bias, source, names[1])
    shape_w, shape_b = w.shape, b.shape
    if w.ndim == 2 and 1 in w.shape:
        w = w.ravel()
    if w.ndim != 1 or w.size == 0 or b.shape not in ((1,), ()):
        raise ModelFormatError(
            f"{source}: expected one output unit (weight (1, d) or (d, 1), bias (1,)), got "
            f"{names[0]} {shape_w} and {names[1]} {shape_b}. securetrain handles binary "
            "logistic regression (a single Dense(1, sigmoid) / Linear(d, 1) layer)."
        )
    return LogisticModel(w, float(b.ravel()[0]))


def _check_h5_dataset(dset: Any, source: str, name: str) -> None:
    """Refuse anything but a small float dataset stored inside the file itself."""
    if dset.external is not None:
        raise ModelFormatError(
            f"{source}: dataset {name!r} uses HDF5 external storage "
            f"({dset.external[0][0]!r}...); cifer reads weights stored inside the file only."
        )
    if dset.is_virtual:
        raise ModelFormatError(
            f"{source}: dataset {name!r} is an HDF5 virtual dataset (it maps other files); "
            "cifer reads weights stored inside the file only."
        )
    filters = set(dset._filters) - _H5_FILTERS
    if filters:
        raise ModelFormatError(
            f"{source}: dataset {name!r} uses HDF5 filter(s) {sorted(filters)}; only "
            f"{', '.join(sorted(_H5_FILTERS))} are accepted (no filter plugins are loaded)."
        )
    dtype = dset.dtype
    if dtype.kind != "f" or dtype.fields is not None or dtype.subdtype is not None:
        raise ModelFormatError(
            f"{source}: dataset {name!r} holds {dtype} values; a weight must be an array of floats."
        )
    if len(dset.shape) not in (1, 2):
        raise ModelFormatError(
            f"{source}: dataset {name!r} has shape {dset.shape}; a kernel is (d, 1) and a "
            "bias (1,)."
        )
    size = math.prod(dset.shape) * 8
    if size > MAX_MODEL_BYTES:
        raise ModelFormatError(
            f"{source}: dataset {name!r} has shape {dset.shape} ({size} bytes as float64), "
            f"over the limit of {MAX_MODEL_BYTES} bytes; refused before reading."
        )


def _read_h5(path: Path) -> LogisticModel:
    import h5py
    from h5py import h5l

    source = str(path)
    found: dict[str, list[str]] = {"kernel": [], "bias": []}
    links: list[tuple[str, str]] = []
    try:
        with h5py.File(path, "r") as fh:

            def visit(raw: bytes, info: Any) -> None:
                # Link types come from HDF5's own link info (nothing is dereferenced), and
                # the callback never raises: h5py's lock turns that into SystemError.
                name = raw.decode("utf-8", "replace")
                if info.type != h5l.TYPE_HARD:
                    kinds = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}
                    links.append((name, kinds.get(info.type, f"user-defined link {info.type}")))
                    return
                leaf = name.rsplit("/", 1)[-1].split(":")[0]
                if leaf in found:
                    found[leaf].append(name)

            fh.id.links.visit(visit, info=True)
            for leaf, names in found.items():  # groups named kernel/bias do not count
                found[leaf] = [n for n in names if isinstance(fh.get(n), h5py.Dataset)]
            if links:
                name, kind = links[0]
                raise ModelFormatError(
                    f"{source}: {name!r} is an HDF5 {kind}; cifer follows no soft or "
                    "external links (they can point into other files)."
                )
            if len(found["kernel"]) != 1 or len(found["bias"]) != 1:
                raise ModelFormatError(
                    f"{source}: found {len(found['kernel'])} kernels and "
                    f"{len(found['bias'])} biases; expected a single Dense(1, sigmoid) layer."
                )
            arrays = []
            for name in (found["kernel"][0], found["bias"][0]):
                dset = fh[name]
                _check_h5_dataset(dset, source, name)
                arrays.append(np.asarray(dset[()]))
    except ModelFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{source}: not a readable HDF5 model ({exc}).") from exc
    return _from_arrays(arrays[0], arrays[1], source, (found["kernel"][0], found["bias"][0]))


def _check_pt_archive(path: Path) -> None:
    """Bound a ``.pt`` (a zip since PyTorch 1.6) before torch reads it."""
    source = str(path)
    try:
        if not zipfile.is_zipfile(path):
            raise ModelFormatError(
                f"{source}: not a PyTorch zip archive (legacy .pt files are not accepted); "
                "save the state dict with torch.save from PyTorch 1.6 or later."
            )
        with zipfile.ZipFile(path) as zf:
            check_zip_members(zf, source, error=ModelFormatError, limit=MAX_MODEL_BYTES)
    except ModelFormatError:
        raise
    except ZIP_ERRORS as exc:
        raise ModelFormatError(f"{source}: a corrupted PyTorch archive ({exc}).") from exc


def _read_pt(path: Path) -> LogisticModel:
    import torch

    source = str(path)
    _check_pt_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        # torch's weights_only refusal advises weights_only=False: never for a file from
        # another party. Keep only its diagnosis.
        detail = next(
            (ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln),
            str(exc),
        )
        raise ModelFormatError(
            f"{source}: not a loadable PyTorch state dict of plain tensors ({detail}); cifer "
            "loads .pt files with weights_only=True and never unpickles other objects."
        ) from exc
    if not isinstance(state, dict):
        raise ModelFormatError(f"{source}: expected a state dict, found {type(state).__name__}.")
    for name, value in state.items():
        if not isinstance(name, str):
            raise ModelFormatError(
                f"{source}: state dict key {name!r} is a {type(name).__name__}, not a name."
            )
        if not isinstance(value, torch.Tensor):
            raise ModelFormatError(
                f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; expected "
                "the state dict of one nn.Linear(d, 1)."
            )
        if value.layout != torch.strided or value.is_quantized or not value.is_floating_point():
            raise ModelFormatError(
                f"{source}: entry {name!r} is a {value.dtype} tensor ({value.layout}); a weight "
                "must be a dense float tensor."
            )
    weights = {k.rsplit(".", 1)[-1]: k for k in state}
    if set(weights) != {"weight", "bias"} or len(state) != 2:
        raise ModelFormatError(
            f"{source}: expected the state dict of one nn.Linear(d, 1) (keys weight, bias), "
            f"found keys {sorted(state)}."
        )
    w, b = weights["weight"], weights["bias"]
    return _from_arrays(
        state[w].detach().double().numpy(), state[b].detach().double().numpy(), source, (w, b)
    )


def _read_npz(path: Path) -> LogisticModel:
    def pick(names: list[str]) -> list[str]:
        if "weight" not in names or "bias" not in names:
            raise ModelFormatError(f"{path}: expected arrays 'weight' and 'bias', found {names}.")
        return ["weight", "bias"]

    _, arrays = read_npz(path, pick, error=ModelFormatError, limit=MAX_MODEL_BYTES)
    return _from_arrays(arrays["weight"], arrays["bias"], str(path))


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
