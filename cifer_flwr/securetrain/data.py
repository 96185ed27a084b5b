"""Plaintext datasets for securetrain: read ``.npz`` / ``.npy`` / ``.csv``, validate, encode.

A dataset is a float feature matrix ``X`` (n samples x d features) and binary labels ``y``
in {0, 1}. Files never go through pickle (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import array
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import DatasetError
from cifer_flwr.securetrain.limits import CSV_FIELD_LIMIT, MAX_CSV_BYTES, read_npy, read_npz

__all__ = [
    "DATASET_EXTENSIONS",
    "Dataset",
    "from_signed_design",
    "load_dataset",
    "save_dataset",
    "signed_design",
]

DATASET_EXTENSIONS = (".npz", ".npy", ".csv")
_FEATURE_KEYS = ("X", "features", "x")
_LABEL_KEYS = ("y", "labels", "Y")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features and binary labels, validated.

    Attributes
    ----------
    X : ndarray of shape (n, d)
        Finite float features.
    y : ndarray of shape (n,)
        Labels in {0, 1}.
    classes : tuple of float
        The original label values mapped to 0 and 1.

    """

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    classes: tuple[float, float] = (0.0, 1.0)

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
            f"{source}: {int(bad.sum())} NaN or infinite feature values (first at row "
            f"{int(rows[0])}, column {int(cols[0])}); impute or drop them before training."
        )
    return arr


def _labels(
    raw: npt.ArrayLike, n: int, source: str
) -> tuple[npt.NDArray[np.int64], tuple[float, float]]:
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
    if classes.size > 2:
        raise DatasetError(
            f"{source}: {classes.size} classes found ({classes[:5].tolist()}...); securetrain "
            "trains binary logistic regression. Make one label column per class "
            "(one-vs-rest) and train one model each."
        )
    return (arr == classes[1]).astype(np.int64), (float(classes[0]), float(classes[1]))


def _column_index(label_column: str | int | None, header: list[str] | None, ncols: int) -> int:
    if label_column is None:
        return ncols - 1
    if header is not None and str(label_column) in header:
        return header.index(str(label_column))
    try:
        idx = int(label_column)
    except ValueError:
        raise DatasetError(
            f"label column {label_column!r} not found; columns are {header}."
        ) from None
    if not -ncols <= idx < ncols:
        raise DatasetError(f"label column {idx} is out of range for {ncols} columns.")
    return idx % ncols


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
    idx = _column_index(label_column, header, table.shape[1])
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
    ext = p.suffix.lower()
    if ext not in DATASET_EXTENSIONS:
        raise DatasetError(
            f"unknown dataset extension {ext or '(none)'!r} for {p}; use one of "
            f"{', '.join(DATASET_EXTENSIONS)}."
        )
    if not p.is_file():
        raise DatasetError(f"dataset file {str(p)!r} does not exist.")
    source = str(p)
    try:
        if ext == ".npz":
            return _load_npz(p, features_key, labels_key)
        if ext == ".npy":
            return _split(read_npy(p, error=DatasetError), label_column, None, source)
        header, table = _read_csv(p)
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


def _read_csv(path: Path) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Parse a CSV of numbers into ``(header, table)`` within the limits of :mod:`.limits`.

    The file may hold at most :data:`~.limits.MAX_CSV_BYTES` bytes and a field at most
    :data:`~.limits.CSV_FIELD_LIMIT` characters; values are converted row by row into one
    flat float buffer (8 bytes a value), so memory stays proportional to the file.
    """
    source = str(path)
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise DatasetError(
            f"{source}: the CSV is {size} bytes, over the limit of {MAX_CSV_BYTES} bytes "
            f"({MAX_CSV_BYTES >> 20} MiB); refused before reading. Convert it to .npy / .npz "
            "or use fewer rows."
        )
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    flat = array.array("d")
    header: list[str] = []
    line = 0
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if not header:
                    header = [h.strip() for h in row]
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"{source}, line {line}: {len(row)} columns, the header has "
                        f"{len(header)}; rows do not all have {len(header)} columns."
                    )
                for col, cell in enumerate(row):
                    text = cell.strip()
                    try:
                        flat.append(float(text) if text else math.nan)
                    except ValueError:
                        raise DatasetError(
                            f"{source}, line {line}, column {header[col]!r}: {text[:40]!r} is "
                            "text, not a number; encode categorical columns and labels as "
                            "numbers before training."
                        ) from None
    except csv.Error as exc:
        raise DatasetError(
            f"{source}, line {line + 1}: {exc} (a field may hold at most {CSV_FIELD_LIMIT} "
            "characters); the file is not a table of numbers."
        ) from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{source}, after line {line}: the file is not UTF-8 text ({exc.reason}); save "
            "the CSV as UTF-8."
        ) from exc
    finally:
        csv.field_size_limit(previous)
    if not header or not flat:
        raise DatasetError(f"{source}: a CSV needs a header row and at least one data row.")
    table = np.frombuffer(flat, dtype=np.float64).reshape(-1, len(header))
    return header, table.copy()


def save_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``X`` and ``y`` to an ``.npz`` (inverse of :func:`load_dataset`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, X=dataset.X, y=dataset.y)
    return p


def signed_design(dataset: Dataset) -> npt.NDArray[np.float64]:
    """Return ``Z = y' * [1, X]`` with ``y' = 2y - 1`` (Kim et al.'s encoding).

    Logistic regression only ever needs these products, so labels never travel on their own.
    Inverse: :func:`from_signed_design`.
    """
    sign = (2.0 * dataset.y - 1.0)[:, None]
    return np.asarray(
        sign * np.hstack([np.ones((dataset.num_samples, 1)), dataset.X]), dtype=np.float64
    )


def from_signed_design(design: npt.NDArray[np.float64]) -> Dataset:
    """Recover the dataset from ``Z`` (its first column is the sign ``y'``)."""
    sign = design[:, 0]
    return Dataset(design[:, 1:] * sign[:, None], (sign > 0).astype(np.int64))
