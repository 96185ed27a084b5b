"""File formats of plaintext datasets and models: the one suffix table, the table readers.

Every reader of a dataset or model file, in :mod:`cifer_flwr.securetrain` and in the
experiment harness (``cifer_flwr.experiments``), takes its suffixes from here, so a
format is named, accepted or refused the same way everywhere (docs/design.md §3, §5).
Each face reads a subset: securetrain has no TensorFlow, so no TFRecord datasets; the
harness's model tasks read PyTorch's ``.pth`` too but no ``.safetensors``.

The table readers (``.npy`` and ``.csv``: a 2-D table of numbers whose label column is
picked with :func:`column_index`) are shared as well; every read is bounded by the limits
of :mod:`cifer_flwr.securetrain.limits` before the data is parsed.
"""

from __future__ import annotations

import array
import csv
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import CiferError, DatasetError
from cifer_flwr.securetrain.limits import CSV_FIELD_LIMIT, MAX_CSV_BYTES, read_npy

__all__ = [
    "DATASET_FORMATS",
    "ENCRYPTED_SUFFIX",
    "HARNESS_DATASET_SUFFIXES",
    "HARNESS_MODEL_SUFFIXES",
    "MODEL_FORMATS",
    "SECURETRAIN_DATASET_SUFFIXES",
    "SECURETRAIN_MODEL_SUFFIXES",
    "TABLE_READERS",
    "column_index",
    "read_csv",
    "read_table",
    "suffix_of",
]

#: The suffix of every cifer container written by securetrain (encrypted datasets, models).
ENCRYPTED_SUFFIX: Final = ".enc"

#: Dataset suffix -> format.
DATASET_FORMATS: Final[Mapping[str, str]] = {
    ".npz": "numpy arrays (features and labels)",
    ".npy": "numpy 2-D table (label column: last, or named)",
    ".csv": "CSV table of numbers with a header row",
    ".tfrecord": "TFRecord of tf.train.Example (features, label)",
    ".tfrecords": "TFRecord of tf.train.Example (features, label)",
}
#: Model suffix -> format.
MODEL_FORMATS: Final[Mapping[str, str]] = {
    ".h5": "Keras HDF5",
    ".keras": "Keras v3 archive",
    ".pt": "PyTorch state dict (weights only)",
    ".pth": "PyTorch state dict (weights only)",
    ".npz": "numpy named arrays",
    ".safetensors": "safetensors",
}

#: What each face reads (subsets of the tables above, in the order messages list them).
SECURETRAIN_DATASET_SUFFIXES: Final = (".npz", ".npy", ".csv")
HARNESS_DATASET_SUFFIXES: Final = (".npz", ".npy", ".csv", ".tfrecord", ".tfrecords")
SECURETRAIN_MODEL_SUFFIXES: Final = (".h5", ".keras", ".pt", ".npz", ".safetensors")
HARNESS_MODEL_SUFFIXES: Final = (".npz", ".pt", ".pth", ".h5", ".keras")


def suffix_of(
    path: str | os.PathLike[str],
    suffixes: tuple[str, ...],
    *,
    what: str,
    error: type[CiferError],
) -> str:
    """The lower-case suffix of ``path`` when it is one of ``suffixes``.

    Raises
    ------
    CiferError
        ``error`` naming the suffix found and the accepted ones.

    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in suffixes:
        raise error(
            f"unknown {what} extension {ext or '(none)'!r} for {p}; use one of "
            f"{', '.join(suffixes)}."
        )
    return ext


def column_index(label_column: str | int | None, header: list[str] | None, ncols: int) -> int:
    """Index of the label column of a table with ``ncols`` columns.

    ``label_column`` by header name or (negative) index; the last column when ``None``.

    Raises
    ------
    DatasetError
        For a name not in the header or an index out of range.

    """
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


def read_csv(path: Path) -> tuple[list[str], npt.NDArray[np.float64]]:
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


def _read_npy_table(path: Path) -> tuple[list[str] | None, npt.NDArray[Any]]:
    return None, read_npy(path, error=DatasetError)


#: Table suffix -> reader returning ``(header or None, table)``.
TABLE_READERS: Final[Mapping[str, Callable[[Path], tuple[list[str] | None, npt.NDArray[Any]]]]] = {
    ".npy": _read_npy_table,
    ".csv": read_csv,
}


def read_table(path: Path) -> tuple[list[str] | None, npt.NDArray[Any]]:
    """Read a ``.npy`` or ``.csv`` table (:data:`TABLE_READERS`): ``(header or None, table)``.

    Raises
    ------
    DatasetError
        For another suffix, a file over the limits, text or ragged rows.

    """
    ext = suffix_of(path, tuple(TABLE_READERS), what="table", error=DatasetError)
    return TABLE_READERS[ext](path)
