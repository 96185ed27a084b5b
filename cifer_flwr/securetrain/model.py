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

from cifer_flwr.exceptions import FeatureMismatchError, ModelFormatError, NotLinearModelError
from cifer_flwr.extras import require
from cifer_flwr.securetrain.data import Dataset, Scaler
from cifer_flwr.securetrain.formats import SECURETRAIN_MODEL_SUFFIXES
from cifer_flwr.securetrain.limits import (
    MAX_MODEL_BYTES,
    ZIP_ERRORS,
    check_zip_members,
    read_npz,
)

__all__ = [
    "MODEL_EXTENSIONS",
    "check_h5_dataset",
    "Classifier",
    "LogisticModel",
    "OneVsRestModel",
    "accuracy",
    "fold_scaler",
    "evaluate",
    "read_model",
    "roc_auc",
    "write_model",
]

#: The model suffixes securetrain reads and writes (:mod:`.formats`).
MODEL_EXTENSIONS = SECURETRAIN_MODEL_SUFFIXES
_NPZ_LINEAR = frozenset({"weight", "bias", "classes"})
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

    def to_matrix(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(weight (1, d), bias (1,))``, the layout of a one-unit linear layer."""
        return self.weight.reshape(1, -1), np.array([self.bias])


@dataclass(frozen=True, eq=False)
class OneVsRestModel:
    """``K`` logistic models, one per class; the prediction is the class of highest score.

    Attributes
    ----------
    models : tuple of LogisticModel
        Model ``k`` separates class ``k`` from the others.
    classes : tuple of float, optional
        Original label values of the classes (``None`` when the file did not record them:
        then class ``k`` is the ``k``-th smallest label of the evaluation data).

    """

    models: tuple[LogisticModel, ...]
    classes: tuple[float, ...] | None = None

    @property
    def num_features(self) -> int:
        """Number of input features ``d``."""
        return self.models[0].num_features

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.models)

    def to_matrix(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(weight (K, d), bias (K,))``, the layout of a ``K``-unit linear layer."""
        return (
            np.stack([m.weight for m in self.models]),
            np.array([m.bias for m in self.models]),
        )

    @classmethod
    def from_matrix(
        cls,
        weight: npt.ArrayLike,
        bias: npt.ArrayLike,
        classes: tuple[float, ...] | None = None,
    ) -> OneVsRestModel:
        """Build from ``weight (K, d)`` and ``bias (K,)`` (inverse of :meth:`to_matrix`)."""
        w = np.asarray(weight, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64).ravel()
        return cls(tuple(LogisticModel(w[k].copy(), float(b[k])) for k in range(len(b))), classes)

    def decision_function(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Scores of shape ``(n, K)``."""
        return np.stack([m.decision_function(x) for m in self.models], axis=1)

    def predict_proba(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """One-vs-rest sigmoid probabilities, normalized over the classes, ``(n, K)``."""
        p = np.stack([m.predict_proba(x) for m in self.models], axis=1)
        return np.asarray(p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300))

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Class indices ``0 .. K-1``."""
        return np.asarray(np.argmax(self.decision_function(x), axis=1), dtype=np.int64)


#: A decrypted securetrain model: binary or one-vs-rest logistic regression.
Classifier = LogisticModel | OneVsRestModel


def fold_scaler(model: Classifier, scaler: Scaler) -> Classifier:
    """The model on raw rows, from a model trained on ``scaler``-standardized rows."""
    weight, bias = scaler.fold(*model.to_matrix())
    if isinstance(model, LogisticModel):
        return LogisticModel(weight[0].copy(), float(bias[0]))
    return OneVsRestModel.from_matrix(weight, bias, model.classes)


def _targets(model: Classifier, dataset: Dataset) -> npt.NDArray[np.int64]:
    """The dataset's labels as indices into the model's classes."""
    if isinstance(model, LogisticModel) or model.classes is None:
        expected = 2 if isinstance(model, LogisticModel) else model.num_classes
        if dataset.num_classes > expected:
            raise FeatureMismatchError(
                f"the model predicts {expected} classes but the dataset has "
                f"{dataset.num_classes} labels {list(dataset.classes)[:8]}; evaluate on data "
                "with the classes the model was trained for."
            )
        return dataset.y
    lookup = {c: i for i, c in enumerate(model.classes)}
    labels = np.asarray(dataset.classes)[dataset.y]
    unknown = sorted({float(v) for v in labels} - set(lookup))
    if unknown:
        raise FeatureMismatchError(
            f"the dataset has labels {unknown[:5]} the model was not trained for (its classes "
            f"are {list(model.classes)[:8]})."
        )
    return np.array([lookup[float(v)] for v in labels], dtype=np.int64)


def accuracy(model: Classifier, dataset: Dataset) -> float:
    """Fraction of correctly classified samples."""
    return float(np.mean(model.predict(dataset.X) == _targets(model, dataset)))


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


def evaluate(model: Classifier, dataset: Dataset) -> dict[str, float]:
    """Accuracy, ROC AUC and mean log-loss of ``model`` on ``dataset``.

    For a one-vs-rest model the AUC is the mean of the per-class one-vs-rest AUCs and the
    log-loss uses the normalized one-vs-rest probabilities.
    """
    if model.num_features != dataset.num_features:
        raise FeatureMismatchError(
            f"the model has {model.num_features} features but the dataset has "
            f"{dataset.num_features}; use the dataset the model was trained for."
        )
    y = _targets(model, dataset)
    if isinstance(model, OneVsRestModel):
        p = np.clip(model.predict_proba(dataset.X), 1e-12, 1.0)
        scores = model.decision_function(dataset.X)
        aucs = [roc_auc(scores[:, k], y == k) for k in range(model.num_classes)]
        finite = [a for a in aucs if np.isfinite(a)]
        return {
            "accuracy": accuracy(model, dataset),
            "auc": float(np.mean(finite)) if finite else float("nan"),
            "log_loss": float(-np.mean(np.log(p[np.arange(len(y)), y]))),
            "samples": float(dataset.num_samples),
        }
    q = np.clip(model.predict_proba(dataset.X), 1e-12, 1 - 1e-12)
    return {
        "accuracy": accuracy(model, dataset),
        "auc": roc_auc(model.decision_function(dataset.X), y),
        "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "samples": float(dataset.num_samples),
    }


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in MODEL_EXTENSIONS:
        raise ModelFormatError(
            f"unknown model extension {ext or '(none)'!r} for {path}; use .h5 / .keras "
            "(Keras), .pt (PyTorch state dict), .npz or .safetensors, or .enc for an "
            "encrypted model."
        )
    return ext


def _float_array(value: Any, source: str, entry: str) -> npt.NDArray[np.float64]:
    """Return a finite float64 copy of a weight entry, or raise naming it."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f" or arr.dtype.fields is not None:
        error = NotLinearModelError if arr.dtype.kind in "biu" else ModelFormatError
        raise error(
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
    *,
    kernel: bool = False,
    classes: tuple[float, ...] | None = None,
) -> Classifier:
    """A linear layer's weights as a model: one unit (binary) or ``K`` (one-vs-rest).

    ``kernel`` marks Keras's ``(d, K)`` layout; PyTorch and ``.npz`` use ``(K, d)``.
    """
    w = _float_array(weight, source, names[0])
    b = _float_array(bias, source, names[1]).ravel()
    shape_w, shape_b = w.shape, np.asarray(bias).shape
    if w.ndim == 1:
        w = w.reshape(1, -1)
    elif w.ndim == 2 and kernel:
        w = w.T
    elif w.ndim == 2 and b.size == 1 and w.shape[1] == 1:
        w = w.T  # a (d, 1) column
    if w.ndim != 2 or w.size == 0 or b.size == 0 or w.shape[0] != b.size:
        raise NotLinearModelError(
            f"{source}: expected one linear layer (weight (K, d) or Keras kernel (d, K), bias "
            f"(K,)), got {names[0]} {shape_w} and {names[1]} {shape_b}. securetrain trains "
            "logistic regression (one Dense / nn.Linear layer); `encrypt-model` still encrypts "
            "any model's tensors for safekeeping."
        )
    if b.size == 1:
        return LogisticModel(w[0].copy(), float(b[0]))
    if classes is not None and len(classes) != b.size:
        raise ModelFormatError(f"{source}: {len(classes)} class labels for {b.size} output units.")
    return OneVsRestModel.from_matrix(w, b, classes)


def check_h5_dataset(dset: Any, source: str, name: str, *, any_rank: bool = False) -> None:
    """Refuse anything but a small numeric dataset stored inside the file itself.

    A logistic model's weights are float and of rank 1 or 2; ``any_rank`` (any model's
    tensors, :mod:`.tensors`) also accepts integer tensors of any rank.
    """
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
    kinds = "fiub" if any_rank else "f"
    if dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
        plain_int = dtype.kind in "biu" and dtype.fields is None and dtype.subdtype is None
        raise (NotLinearModelError if plain_int else ModelFormatError)(
            f"{source}: dataset {name!r} holds {dtype} values; a weight must be an array of floats."
        )
    if not any_rank and len(dset.shape) not in (1, 2):
        raise NotLinearModelError(
            f"{source}: dataset {name!r} has shape {dset.shape}; a kernel is (d, 1) and a "
            "bias (1,)."
        )
    size = math.prod(dset.shape) * 8
    if size > MAX_MODEL_BYTES:
        raise ModelFormatError(
            f"{source}: dataset {name!r} has shape {dset.shape} ({size} bytes as float64), "
            f"over the limit of {MAX_MODEL_BYTES} bytes; refused before reading."
        )


def _read_h5(path: Path) -> Classifier:
    h5py = require("h5py", purpose="to read .h5 models")
    h5l = h5py.h5l

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
                raise NotLinearModelError(
                    f"{source}: found {len(found['kernel'])} kernels and "
                    f"{len(found['bias'])} biases; securetrain trains a single Dense(K, "
                    "sigmoid) layer (logistic regression). `encrypt-model` encrypts any "
                    "model's tensors for safekeeping."
                )
            arrays = []
            for name in (found["kernel"][0], found["bias"][0]):
                dset = fh[name]
                check_h5_dataset(dset, source, name)
                arrays.append(np.asarray(dset[()]))
    except ModelFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{source}: not a readable HDF5 model ({exc}).") from exc
    return _from_arrays(
        arrays[0], arrays[1], source, (found["kernel"][0], found["bias"][0]), kernel=True
    )


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


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load a PyTorch state dict of dense real tensors, its archive bounded first.

    The one loader of ``.pt`` files (a logistic model here, any model in :mod:`.tensors`).

    Raises
    ------
    ModelFormatError
        For a legacy (non-zip) file, an archive over the limits, anything ``weights_only``
        refuses, or an entry that is not a dense real tensor under a string name.
    MissingExtraError
        Without PyTorch (the ``torch`` extra).

    """
    torch = require("torch", purpose="to read .pt models")
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
                f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; a state "
                "dict maps names to tensors."
            )
        if value.layout != torch.strided or value.is_quantized or value.is_complex():
            raise ModelFormatError(
                f"{source}: entry {name!r} is a {value.dtype} tensor ({value.layout}); only "
                "dense real tensors are accepted."
            )
    return state


def _read_pt(path: Path) -> Classifier:
    source = str(path)
    state = load_state_dict(path)
    weights = {k.rsplit(".", 1)[-1]: k for k in state}
    if set(weights) != {"weight", "bias"} or len(state) != 2:
        raise NotLinearModelError(
            f"{source}: expected the state dict of one nn.Linear(d, K) (keys weight, bias), "
            f"found keys {sorted(state)}; securetrain trains logistic regression. "
            "`encrypt-model` still encrypts any model's tensors for safekeeping."
        )
    for name in state:
        if not state[name].is_floating_point():
            raise NotLinearModelError(
                f"{source}: entry {name!r} is a {state[name].dtype} tensor; a weight must be a "
                "dense float tensor."
            )
    w, b = weights["weight"], weights["bias"]
    return _from_arrays(
        state[w].detach().double().numpy(), state[b].detach().double().numpy(), source, (w, b)
    )


def _read_npz(path: Path) -> Classifier:
    def pick(names: list[str]) -> list[str]:
        if "weight" not in names or "bias" not in names or set(names) - _NPZ_LINEAR:
            raise NotLinearModelError(
                f"{path}: expected arrays 'weight' and 'bias' (and optionally 'classes') of one "
                f"linear layer, found {names[:8]}. `encrypt-model` still encrypts any model's "
                "tensors for safekeeping."
            )
        return ["weight", "bias", *(["classes"] if "classes" in names else [])]

    _, arrays = read_npz(path, pick, error=ModelFormatError, limit=MAX_MODEL_BYTES)
    classes = None
    if "classes" in arrays:
        raw = np.asarray(arrays["classes"])
        if raw.ndim != 1 or raw.dtype.kind not in "biuf" or not np.all(np.isfinite(raw)):
            raise ModelFormatError(f"{path}: 'classes' must be a 1-D array of numeric labels.")
        classes = tuple(float(c) for c in raw)
    return _from_arrays(arrays["weight"], arrays["bias"], str(path), classes=classes)


def read_model(path: str | os.PathLike[str]) -> Classifier:
    """Read a plaintext model; the format follows the extension (inverse of :func:`write_model`).

    Raises
    ------
    ModelFormatError
        For an unknown extension, a missing or unreadable file, or a model that is not one
        linear layer (``K = 1`` output: binary; ``K > 1``: one-vs-rest).
    MissingExtraError
        For ``.h5`` without h5py or ``.pt`` without torch (the message names the extra).

    """
    p = Path(path)
    ext = _extension(p)
    if not p.is_file():
        where = "is a directory; pass the model file itself" if p.is_dir() else "does not exist"
        raise ModelFormatError(f"model file {str(p)!r} {where}; expected a model file.")
    if ext == ".h5":
        return _read_h5(p)
    if ext == ".pt":
        return _read_pt(p)
    if ext == ".npz":
        return _read_npz(p)
    from cifer_flwr.securetrain.tensors import read_tensors

    arrays = read_tensors(p).arrays  # .keras / .safetensors: one kernel (or weight) + bias
    if len(arrays) != 2:
        raise NotLinearModelError(
            f"{p}: {len(arrays)} tensors ({', '.join(list(arrays)[:4])}); "
            "securetrain trains one linear layer (a weight and a bias). `encrypt-model` still "
            "encrypts any model's tensors for safekeeping."
        )
    (wname, weight), (bname, bias) = sorted(
        arrays.items(), key=lambda kv: np.asarray(kv[1]).ndim, reverse=True
    )
    return _from_arrays(weight, bias, str(p), (wname, bname), kernel=ext == ".keras")


def _write_h5(model: Classifier, path: Path) -> None:
    keras = load_keras("to write .h5 models")
    weight, bias = model.to_matrix()
    keras_model = keras.Sequential(
        [
            keras.Input((model.num_features,)),
            keras.layers.Dense(bias.size, activation="sigmoid"),
        ]
    )
    keras_model.layers[-1].set_weights([weight.T.astype(np.float32), bias.astype(np.float32)])
    save_keras(keras_model, path)


def save_keras(keras_model: Any, path: Path) -> None:
    """Save a Keras model quietly (TensorFlow's warnings and absl logs silenced)."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("absl").level
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            keras_model.save(path)
        finally:
            logging.getLogger("absl").setLevel(level)


def load_keras(purpose: str) -> Any:
    """Import Keras (the ``tensorflow`` extra) with TensorFlow's C++ logs silenced.

    Raises
    ------
    MissingExtraError
        When TensorFlow/Keras is not installed (the message names the extra).

    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return require("keras", purpose=purpose)


def _write_pt(model: Classifier, path: Path) -> None:
    torch = require("torch", purpose="to write .pt models")
    weight, bias = model.to_matrix()
    state = {
        "weight": torch.tensor(weight, dtype=torch.float32),
        "bias": torch.tensor(bias, dtype=torch.float32),
    }
    torch.save(state, path)


def write_model(model: Classifier, path: str | os.PathLike[str]) -> Path:
    """Write a plaintext model; the format follows the extension (see module docstring).

    A one-vs-rest model is one ``K``-unit layer (Keras ``Dense(K, sigmoid)``, PyTorch
    ``nn.Linear(d, K)``); ``.npz`` also records its class labels.
    """
    p = Path(path)
    ext = _extension(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{ext}")
    try:
        if ext in (".h5", ".keras"):
            _write_h5(model, tmp)
        elif ext == ".safetensors":
            from cifer_flwr.securetrain.tensors import write_safetensors

            weight, bias = model.to_matrix()
            write_safetensors({"weight": weight, "bias": bias}, tmp)
        elif ext == ".pt":
            _write_pt(model, tmp)
        else:
            weight, bias = model.to_matrix()
            arrays: dict[str, npt.NDArray[Any]] = {"weight": weight, "bias": bias}
            if isinstance(model, OneVsRestModel) and model.classes is not None:
                arrays["classes"] = np.asarray(model.classes)
            with tmp.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
