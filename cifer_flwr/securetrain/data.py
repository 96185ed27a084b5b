"""Plaintext datasets for securetrain: read ``.npz`` / ``.npy`` / ``.csv``, validate, encode.

A dataset is a float feature matrix ``X`` (n samples x d features) and labels ``y``: class
indices ``0 .. K-1`` into the sorted original label values ``classes`` (``K = 2`` is binary
logistic regression, ``K > 2`` is trained one-vs-rest). Features may be on any scale: the
data owner's :class:`Scaler` standardizes them on her side before encryption and is folded
back into the model she decrypts (docs/design.md §4.6). Files never go through pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import DatasetError
from cifer_flwr.securetrain.formats import (
    SECURETRAIN_DATASET_SUFFIXES,
    column_index,
    read_table,
    suffix_of,
)
from cifer_flwr.securetrain.limits import read_npz

__all__ = [
    "DATASET_EXTENSIONS",
    "MAX_CLASSES",
    "Dataset",
    "Scaler",
    "from_signed_design",
    "load_dataset",
    "save_dataset",
    "signed_design",
]

#: The dataset suffixes securetrain reads (:mod:`.formats`).
DATASET_EXTENSIONS = SECURETRAIN_DATASET_SUFFIXES
_FEATURE_KEYS = ("X", "features", "x")
_LABEL_KEYS = ("y", "labels", "Y")
#: Most classes a dataset may have (one-vs-rest trains one encrypted model per class).
MAX_CLASSES = 64


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features and class labels, validated.

    Attributes
    ----------
    X : ndarray of shape (n, d)
        Finite float features (any scale).
    y : ndarray of shape (n,)
        Class indices in ``0 .. len(classes) - 1`` (binary: 0 and 1).
    classes : tuple of float
        The original label values, sorted; ``y == k`` means label ``classes[k]``.

    """

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    classes: tuple[float, ...] = (0.0, 1.0)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (2 for binary data)."""
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """Logistic models to train: 1 for binary data, else one per class (one-vs-rest)."""
        return 1 if self.num_classes <= 2 else self.num_classes

    @property
    def num_samples(self) -> int:
        """Number of samples ``n``."""
        return int(self.X.shape[0])

    @property
    def num_features(self) -> int:
        """Number of features ``d`` (without the intercept)."""
        return int(self.X.shape[1])


def _features(raw: npt.ArrayLike, source: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(raw)
    if arr.dtype.kind in "USO":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{source}: the features hold text ({exc}); encode categorical columns as "
                "numbers before training."
            ) from exc
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{source}: features of dtype {arr.dtype} are not numeric.")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DatasetError(f"{source}: expected a 2-D feature matrix, got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DatasetError(
            f"{source}: {int(bad.sum())} NaN or infinite feature values (first at data row "
            f"{int(rows[0]) + 1}, feature column {int(cols[0]) + 1} (counting from 1)); "
            "impute or drop them before training."
        )
    return arr


def _labels(
    raw: npt.ArrayLike, n: int, source: str
) -> tuple[npt.NDArray[np.int64], tuple[float, ...]]:
    arr = np.asarray(raw)
    if arr.dtype.kind in "USO":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{source}: the labels hold text ({exc}); use numeric labels such as 0/1."
            ) from exc
    arr = np.asarray(arr, dtype=np.float64).ravel()
    if arr.shape[0] != n:
        raise DatasetError(f"{source}: {arr.shape[0]} labels for {n} samples.")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{source}: the labels contain NaN or infinite values.")
    classes = np.unique(arr)
    if classes.size < 2:
        raise DatasetError(
            f"{source}: every label is {classes[0] if classes.size else 'missing'}; a "
            "classifier needs examples of both classes."
        )
    if classes.size > MAX_CLASSES:
        raise DatasetError(
            f"{source}: {classes.size} distinct labels found ({classes[:5].tolist()}...), at "
            f"most {MAX_CLASSES} classes are trained (one encrypted model each); is the label "
            "column a feature? Choose it with --label-column."
        )
    return np.searchsorted(classes, arr).astype(np.int64), tuple(float(c) for c in classes)


def _split(
    table: npt.NDArray[Any],
    label_column: str | int | None,
    header: list[str] | None,
    source: str,
) -> Dataset:
    if table.ndim != 2 or table.shape[1] < 2:
        raise DatasetError(
            f"{source}: expected a table with feature columns and a label column, got shape "
            f"{table.shape}."
        )
    idx = column_index(label_column, header, table.shape[1])
    x = _features(np.delete(table, idx, axis=1), source)
    y, classes = _labels(table[:, idx], x.shape[0], source)
    return Dataset(x, y, classes)


def load_dataset(
    path: str | os.PathLike[str],
    *,
    features_key: str | None = None,
    labels_key: str | None = None,
    label_column: str | int | None = None,
) -> Dataset:
    """Read and validate a dataset file.

    Parameters
    ----------
    path : path-like
        ``.npz`` (arrays ``X``/``y`` or ``features``/``labels``), ``.npy`` (a 2-D table whose
        last column, or ``label_column``, is the label) or ``.csv`` (a header row; the label
        is the last column or ``label_column``, by name or index).
    features_key, labels_key : str, optional
        Array names inside an ``.npz``.
    label_column : str or int, optional
        Label column of a ``.npy`` / ``.csv`` table.

    Raises
    ------
    DatasetError
        For an unknown extension, missing arrays, text, NaN, one class or more than two, or
        a file over the limits of :mod:`cifer_flwr.securetrain.limits` (checked before the
        data is read or decompressed; a CSV error names its line).

    """
    p = Path(path)
    ext = suffix_of(p, DATASET_EXTENSIONS, what="dataset", error=DatasetError)
    if not p.is_file():
        raise DatasetError(f"dataset file {str(p)!r} does not exist.")
    source = str(p)
    try:
        if ext == ".npz":
            return _load_npz(p, features_key, labels_key)
        header, table = read_table(p)
    except OSError as exc:
        raise DatasetError(f"{source}: cannot read the file ({exc}).") from exc
    return _split(table, label_column, header, source)


def _load_npz(path: Path, features_key: str | None, labels_key: str | None) -> Dataset:
    source = str(path)
    chosen: list[str] = []

    def pick(names: list[str]) -> list[str]:
        fkey = features_key or next((k for k in _FEATURE_KEYS if k in names), None)
        lkey = labels_key or next((k for k in _LABEL_KEYS if k in names), None)
        if fkey is None or lkey is None or fkey not in names or lkey not in names:
            raise DatasetError(
                f"{source}: holds arrays {names}; expected X/y or features/labels, or "
                "name them with --features-key / --labels-key."
            )
        chosen.extend([fkey, lkey])
        return list(dict.fromkeys(chosen))

    _, arrays = read_npz(path, pick, error=DatasetError)
    x = _features(arrays[chosen[0]], source)
    y, classes = _labels(arrays[chosen[1]], x.shape[0], source)
    return Dataset(x, y, classes)


def save_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``X`` and the label values to an ``.npz`` (inverse of :func:`load_dataset`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, X=dataset.X, y=np.asarray(dataset.classes)[dataset.y])
    return p


def signed_design(dataset: Dataset, positive: int = 1) -> npt.NDArray[np.float64]:
    """Return ``Z = y' * [1, X]`` with ``y' = +1`` for class ``positive``, else ``-1``.

    Kim et al.'s encoding: logistic regression only ever needs these products, so labels
    never travel on their own. One-vs-rest uses one design per class. Inverse (binary):
    :func:`from_signed_design`.
    """
    sign = np.where(dataset.y == positive, 1.0, -1.0)[:, None]
    return np.asarray(
        sign * np.hstack([np.ones((dataset.num_samples, 1)), dataset.X]), dtype=np.float64
    )


def from_signed_design(design: npt.NDArray[np.float64]) -> Dataset:
    """Recover the dataset from ``Z`` (its first column is the sign ``y'``)."""
    sign = design[:, 0]
    return Dataset(design[:, 1:] * sign[:, None], (sign > 0).astype(np.int64))


@dataclass(frozen=True, eq=False)
class Scaler:
    """Per-feature standardization ``(x - mean) / scale``, fitted by the data owner.

    The data owner standardizes on her side before encrypting (the polynomial sigmoid of
    training is accurate only for standardized inputs) and keeps the scaler secret: it
    travels only encrypted under her key (docs/design.md §4.6). :meth:`fold` turns a model
    trained on standardized rows into the same model on raw rows.

    Attributes
    ----------
    mean, scale : ndarray of shape (d,)
        Column means and standard deviations (1 for a constant column).

    """

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, x: npt.ArrayLike) -> Scaler:
        """Column means and standard deviations of ``x`` (a constant column gets scale 1)."""
        arr = np.asarray(x, dtype=np.float64)
        std = arr.std(axis=0)
        return cls(arr.mean(axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def identity(cls, num_features: int) -> Scaler:
        """The scaler that changes nothing."""
        return cls(np.zeros(num_features), np.ones(num_features))

    @property
    def num_features(self) -> int:
        """Number of features ``d``."""
        return int(self.mean.shape[0])

    def transform(self, dataset: Dataset) -> Dataset:
        """Standardize the features of ``dataset`` (inverse: :meth:`inverse_transform`)."""
        return Dataset((dataset.X - self.mean) / self.scale, dataset.y, dataset.classes)

    def inverse_transform(self, dataset: Dataset) -> Dataset:
        """Undo :meth:`transform`."""
        return Dataset(dataset.X * self.scale + self.mean, dataset.y, dataset.classes)

    def fold(
        self, weight: npt.ArrayLike, bias: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Map linear weights on standardized rows to raw rows (inverse: :meth:`unfold`).

        ``w . (x - m) / s + b == (w / s) . x + (b - w . (m / s))``; ``weight`` is ``(d,)`` or
        ``(K, d)`` with ``bias`` ``()`` or ``(K,)``.
        """
        w = np.asarray(weight, dtype=np.float64)
        raw_w = w / self.scale
        return raw_w, np.asarray(bias, dtype=np.float64) - raw_w @ self.mean

    def unfold(
        self, weight: npt.ArrayLike, bias: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Map linear weights on raw rows to standardized rows (inverse of :meth:`fold`)."""
        w = np.asarray(weight, dtype=np.float64)
        return w * self.scale, np.asarray(bias, dtype=np.float64) + w @ self.mean

    def to_words(self) -> npt.NDArray[np.uint16]:
        """The exact float64 bits of ``mean`` then ``scale`` as 16-bit words.

        Small integers survive CKKS exactly (rounded after decryption), so the scaler
        round-trips bit for bit whatever its magnitude. Inverse: :meth:`from_words`.
        """
        both = np.concatenate([self.mean, self.scale]).astype("<f8")
        return np.frombuffer(both.tobytes(), dtype="<u2").astype(np.uint16)

    @classmethod
    def from_words(cls, words: npt.ArrayLike, source: str = "scaler") -> Scaler:
        """Rebuild from :meth:`to_words`; refuses anything that is not a valid scaler.

        Raises
        ------
        DatasetError
            When the words do not hold finite means and positive finite scales.

        """
        arr = np.asarray(words)
        if arr.ndim != 1 or arr.size == 0 or arr.size % 8:
            raise DatasetError(
                f"{source}: {arr.size} words, expected 8 per feature (mean and scale)."
            )
        values = np.frombuffer(arr.astype("<u2").tobytes(), dtype="<f8").astype(np.float64)
        d = values.size // 2
        mean, scale = values[:d], values[d:]
        if not (np.all(np.isfinite(values)) and np.all(scale > 0)):
            raise DatasetError(
                f"{source}: the decrypted scaler holds non-finite means or non-positive "
                "scales; the encrypted file was altered."
            )
        return cls(mean.copy(), scale.copy())
