"""Small offline datasets and partitioners for the examples, the demo and the tests.

Numpy only (scikit-learn is imported lazily for its bundled datasets, which ship inside the
package and need no network). Every function is deterministic for a given ``seed``, so the
encrypted and the plaintext run of an experiment see exactly the same partitions.

* :func:`load_dataset` returns one of the built-in datasets as ``(X_train, y_train, X_test,
  y_test)``, standardized with statistics of the training split.
* :func:`partition_iid` and :func:`partition_dirichlet` split indices among clients.
* :func:`load_partition` is what a ClientApp calls with its ``partition-id`` /
  ``num-partitions`` node config.
* :func:`load_file_dataset` reads the user's own dataset (``.npz`` / ``.npy`` / ``.csv``, and
  TFRecords where TensorFlow is installed) with the hostile-input-safe readers of
  :mod:`cifer_flwr.securetrain.limits` (sizes checked before reading, no pickle) and splits
  and standardizes it like a built-in one; :func:`load_dataset` accepts such a path in place
  of a name, so every entry point that takes a dataset name takes a file too.

``mnist`` is an optional online loader (``pip install flwr-datasets``); it is never used
unless asked for.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from cifer_flwr.exceptions import CiferError, ConfigError, DatasetError
from cifer_flwr.extras import require
from cifer_flwr.securetrain.formats import HARNESS_DATASET_SUFFIXES, TABLE_READERS, column_index

__all__ = [
    "cached_dataset",
    "check_dataset_file",
    "existing_input_file",
    "check_partition",
    "node_partition",
    "run_dataset",
    "run_dataset_shape",
    "DATASETS",
    "DATASET_SUFFIXES",
    "PARTITIONERS",
    "Dataset",
    "Partition",
    "is_dataset_file",
    "load_dataset",
    "load_file_dataset",
    "load_partition",
    "partition_dirichlet",
    "partition_iid",
    "whole",
]

#: Names accepted by :func:`load_dataset` (``mnist`` needs flwr-datasets and the network).
DATASETS = ("digits", "breast-cancer", "mnist")
#: Environment variable overriding the cache directory of the bundled datasets.
ENV_CACHE = "CIFER_DATA_CACHE"
#: File suffixes :func:`load_file_dataset` reads (TFRecords need TensorFlow), from
#: :mod:`cifer_flwr.securetrain.formats`.
DATASET_SUFFIXES = HARNESS_DATASET_SUFFIXES
#: Most classes a dataset file may have (labels are integers ``0 .. MAX_CLASSES - 1``).
MAX_CLASSES = 1000
#: Most examples and features a TFRecord file may hold (its size is checked as well).
MAX_TFRECORD_VALUES = 1 << 27
#: Node config / run config key naming a dataset file (``dataset-path``).
DATASET_PATH_KEY = "dataset-path"
#: Names accepted by :func:`load_partition` (``non-iid`` is an alias of ``dirichlet``).
PARTITIONERS = ("iid", "dirichlet", "non-iid")

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Dataset:
    """A train/test split of a classification dataset.

    Attributes
    ----------
    name : str
        Dataset name.
    x_train, x_test : ndarray of float32, shape (n, *feature_shape)
        Standardized features (``digits``: 64 pixels, ``breast-cancer``: 30 features,
        ``mnist``: 784 pixels).
    y_train, y_test : ndarray of int64
        Class labels ``0 .. num_classes - 1``.
    num_classes : int
        Number of classes.
    image_shape : tuple of int or None
        ``(height, width)`` for image datasets, else ``None``.

    """

    name: str
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray
    num_classes: int
    image_shape: tuple[int, int] | None

    @property
    def num_features(self) -> int:
        """Number of input features per example."""
        return int(np.prod(self.x_train.shape[1:]))


@dataclass(frozen=True)
class Partition:
    """One client's share: its training examples and its local test examples."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


def _split(
    x: NDArray[np.floating], y: NDArray[np.integer], test_fraction: float, seed: int
) -> tuple[NDArray[np.floating], IntArray, NDArray[np.floating], IntArray]:
    """Stratified train/test split (numpy only)."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: max(1, round(len(idx) * test_fraction))].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    train, test = np.flatnonzero(~mask), np.flatnonzero(mask)
    rng.shuffle(train)
    rng.shuffle(test)
    return x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64)


def _standardize(
    x_train: NDArray[np.floating], x_test: NDArray[np.floating]
) -> tuple[FloatArray, FloatArray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _load_mnist(standardize: bool = True) -> Dataset:  # pragma: no cover - needs the network
    try:
        from datasets import load_dataset as hf_load  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            "dataset 'mnist' needs the Hugging Face `datasets` package and network access "
            "(pip install flwr-datasets); the offline default is dataset='digits'."
        ) from exc
    out = []
    for split in ("train", "test"):
        ds = hf_load("ylecun/mnist", split=split).with_format("numpy")
        x = np.asarray(ds["image"], dtype=np.float32).reshape(-1, 784) / 255.0
        out.append((x, np.asarray(ds["label"], dtype=np.int64)))
    (xtr, ytr), (xte, yte) = out
    xtr_s, xte_s = _standardize(xtr, xte) if standardize else (xtr, xte)
    return Dataset("mnist", xtr_s, ytr, xte_s, yte, 10, (28, 28))


def _cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cifer-flwr"


#: For the missing-extra message: the bundled datasets come with scikit-learn.
_BUNDLED = "the digits and breast-cancer datasets ship with scikit-learn"


def _bundled(name: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Raw ``(x, y)`` of a scikit-learn bundled dataset, cached as ``.npz``.

    Importing scikit-learn takes seconds; a Flower ClientApp starts a fresh process for every
    message, so the arrays are cached once (no pickle) and read with numpy afterwards.
    """
    cache = _cache_dir() / f"{name}.npz"
    try:
        with np.load(cache, allow_pickle=False) as data:
            return data["x"].astype(np.float64), data["y"].astype(np.int64)
    except (OSError, KeyError, ValueError):
        pass
    if name == "digits":
        bunch = require("sklearn.datasets", purpose=_BUNDLED).load_digits()
    else:
        bunch = require("sklearn.datasets", purpose=_BUNDLED).load_breast_cancer()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(cache)
    except OSError:
        pass  # read-only home: no cache, scikit-learn is imported each time
    return x, y


def is_dataset_file(name: str) -> bool:
    """Whether ``name`` names a dataset file (a suffix of :data:`DATASET_SUFFIXES`)."""
    return name not in DATASETS and Path(name).suffix.lower() in DATASET_SUFFIXES


def _labels_of(raw: NDArray[Any], n: int, source: str) -> IntArray:
    """Integer class labels ``0 .. K - 1`` (``K <= MAX_CLASSES``) from any numeric column."""
    if raw.dtype.kind not in "biuf":
        raise DatasetError(
            f"{source}: labels of dtype {raw.dtype} are not numbers; encode the classes as "
            f"integers 0 .. K-1."
        )
    y = np.asarray(raw, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise DatasetError(f"{source}: {y.shape[0]} labels for {n} examples; expected {n}.")
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise DatasetError(
            f"{source}: labels must be integers 0 .. K-1 (found NaN, infinite or fractional "
            "values); encode the classes as integers."
        )
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise DatasetError(
            f"{source}: labels range over {int(y.min())} .. {int(y.max())}; expected integers "
            f"0 .. K-1 with K <= {MAX_CLASSES}; re-encode the classes."
        )
    return y.astype(np.int64)


def _features_of(raw: NDArray[Any], source: str) -> NDArray[np.float64]:
    if raw.dtype.kind not in "biuf":
        raise DatasetError(
            f"{source}: features of dtype {raw.dtype} are not numbers; encode categorical "
            "columns as numbers."
        )
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim < 2 or x.shape[0] < 2 or min(x.shape[1:]) < 1:
        raise DatasetError(
            f"{source}: expected features of shape (examples >= 2, features >= 1), got {x.shape}."
        )
    bad = ~np.isfinite(x)
    if bad.any():
        raise DatasetError(
            f"{source}: {int(bad.sum())} NaN or infinite feature values (first in example "
            f"{int(np.argwhere(bad)[0][0])}); impute or drop them first."
        )
    return x.reshape(x.shape[0], -1)


def _table_split(
    table: NDArray[Any], header: list[str] | None, label_column: str | int | None, source: str
) -> tuple[NDArray[np.float64], IntArray]:
    if table.ndim != 2 or table.shape[1] < 2:
        raise DatasetError(
            f"{source}: expected a table of feature columns and a label column, got shape "
            f"{table.shape}."
        )
    if label_column is None and header is not None:
        named = [c for c in ("label", "target", "y", "class") if c in header]
        label_column = named[0] if named else None
    idx = column_index(label_column, header, table.shape[1])
    x = _features_of(np.delete(table, idx, axis=1), source)
    return x, _labels_of(table[:, idx], x.shape[0], source)


def _read_npz_dataset(
    path: Path,
) -> tuple[NDArray[np.float64], IntArray, tuple[NDArray[np.float64], IntArray] | None]:
    from cifer_flwr.securetrain.limits import read_npz

    source = str(path)
    layouts = (("x", "y"), ("X", "y"), ("features", "labels"))

    def pick(names: list[str]) -> list[str]:
        for fx, fy in layouts:
            if fx in names and fy in names:
                test = [n for n in ("x_test", "y_test") if n in names]
                if len(test) == 1:
                    raise DatasetError(
                        f"{source}: holds {test[0]} without its pair; store both x_test and "
                        "y_test or neither."
                    )
                return [fx, fy, *test]
        raise DatasetError(
            f"{source}: holds arrays {names}; expected x/y (or X/y, features/labels), "
            "optionally with x_test/y_test (np.savez(path, x=X, y=y))."
        )

    _, arrays = read_npz(path, pick, error=DatasetError)
    names = list(arrays)
    x = _features_of(arrays[names[0]], source)
    y = _labels_of(arrays[names[1]], x.shape[0], source)
    test = None
    if "x_test" in arrays:
        xt = _features_of(arrays["x_test"], source + " (x_test)")
        if xt.shape[1] != x.shape[1]:
            raise DatasetError(
                f"{source}: x_test has {xt.shape[1]} features, x has {x.shape[1]}; they must match."
            )
        test = (xt, _labels_of(arrays["y_test"], xt.shape[0], source + " (y_test)"))
    return x, y, test


def _read_tfrecord(path: Path) -> tuple[NDArray[np.float64], IntArray]:
    """TFRecords of ``tf.train.Example`` with a float list ``x`` and an int64 ``y``."""
    source = str(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cifer_flwr.extras import require

    tf = require("tensorflow", purpose=f"{source} is a TFRecord file (or save it as .npz / .csv)")
    xs: list[list[float]] = []
    ys: list[int] = []
    total = 0
    try:
        for raw in tf.data.TFRecordDataset(str(path)):
            ex = tf.train.Example.FromString(raw.numpy())
            feats = ex.features.feature
            if "x" not in feats or "y" not in feats:
                raise DatasetError(
                    f"{source}: record {len(ys)} has features {sorted(feats)}; expected a "
                    "float list 'x' and an int64 'y'."
                )
            row = list(feats["x"].float_list.value)
            label = list(feats["y"].int64_list.value)
            if len(label) != 1 or (xs and len(row) != len(xs[0])):
                raise DatasetError(
                    f"{source}: record {len(ys)} has {len(row)} features and {len(label)} "
                    "labels; every record needs the same number of features and one label."
                )
            total += len(row) + 1
            if total > MAX_TFRECORD_VALUES:
                raise DatasetError(
                    f"{source}: more than {MAX_TFRECORD_VALUES} values; use a smaller file."
                )
            xs.append(row)
            ys.append(int(label[0]))
    except tf.errors.OpError as exc:
        raise DatasetError(f"{source}: not a readable TFRecord file ({exc.message}).") from exc
    x = _features_of(np.asarray(xs, dtype=np.float64), source)
    return x, _labels_of(np.asarray(ys, dtype=np.int64), x.shape[0], source)


def check_dataset_file(path: str | os.PathLike[str]) -> Path:
    """The cheap checks of :func:`load_file_dataset`: a known suffix and an existing file.

    ``cifer run`` calls it before any key pair or process exists, so that a wrong
    ``task.dataset_path`` fails in a second, not after the federation started.

    Raises
    ------
    DatasetError
        For an unknown suffix or a missing file (a relative path also gets the advice to
        give an absolute one: the ClientApps read it from the SuperNodes' directory).

    """
    p = Path(path).expanduser()
    source = str(p)
    suffix = p.suffix.lower()
    if suffix not in DATASET_SUFFIXES:
        raise DatasetError(
            f"dataset {source!r} has suffix {suffix or '(none)'!r}; use one of "
            f"{', '.join(DATASET_SUFFIXES)} or a built-in name ({', '.join(DATASETS)})."
        )
    return existing_input_file(p, what="dataset", error=DatasetError)


def existing_input_file(path: Path, *, what: str, error: type[CiferError]) -> Path:
    """``path`` when it names a file, else ``error`` saying what it is instead.

    A relative path gets the advice to give an absolute one: the apps read input files
    (datasets, models) from the SuperNodes' and SuperLink's working directories.

    Raises
    ------
    CiferError
        ``error`` (``DatasetError``, ``ModelFormatError``) for a directory or a missing file.

    """
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        hint = (
            f"give the path of a {what} file on this machine"
            if path.is_absolute()
            else "relative paths are read from the SuperNodes' working directory: "
            "use an absolute path"
        )
        raise error(f"{what} file {str(path)!r} {where}; expected a file: {hint}.")
    return path


def load_file_dataset(
    path: str | os.PathLike[str],
    *,
    label_column: str | int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
) -> Dataset:
    """Read the user's own dataset file, split it (stratified) and standardize it.

    Files are hostile input (docs/design.md §5): sizes are checked before anything is read
    or decompressed, nothing goes through pickle, features must be finite numbers and labels
    integers ``0 .. K-1`` (``K <= MAX_CLASSES``).

    Parameters
    ----------
    path : path-like
        ``.npz``: arrays ``x``/``y`` (or ``X``/``y``, ``features``/``labels``), optionally a
        held-out ``x_test``/``y_test``; ``.npy``: a 2-D table; ``.csv``: a header row and
        numeric rows; ``.tfrecord``: ``tf.train.Example`` records with a float list ``x``
        and an int64 ``y`` (needs TensorFlow).
    label_column : str or int, optional
        Label column of a table (``.npy`` / ``.csv``), by name or index. Default: a column
        named ``label``, ``target``, ``y`` or ``class``, else the last one.
    test_fraction : float
        Share of each class held out as the test split (unless the file has its own).
    seed : int
        Seed of the split.
    standardize : bool
        Standardize with the training split's statistics, as the built-in datasets are.

    Returns
    -------
    Dataset
        Named after the file's absolute path; ``num_classes`` is ``max(label) + 1``
        (at least 2).

    Raises
    ------
    DatasetError
        For a missing file, an unknown suffix, a file over the size limits, text, NaN,
        fractional or negative labels, or too few examples to split.

    """
    p = check_dataset_file(path)
    source = str(p)
    suffix = p.suffix.lower()
    test: tuple[NDArray[np.float64], IntArray] | None = None
    try:
        if suffix == ".npz":
            x, y, test = _read_npz_dataset(p)
        elif suffix in TABLE_READERS:
            header, table = TABLE_READERS[suffix](p)
            x, y = _table_split(table, header, label_column, source)
        else:
            x, y = _read_tfrecord(p)
    except OSError as exc:
        raise DatasetError(f"{source}: cannot read the file ({exc}).") from exc
    classes = max(2, int(y.max()) + 1, int(test[1].max()) + 1 if test else 0)
    if test is None:
        if len(y) < 4:
            raise DatasetError(f"{source}: {len(y)} examples; at least 4 are needed to split.")
        xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    else:
        xtr, ytr, (xte, yte) = x, y, test
    if standardize:
        xtr_s, xte_s = _standardize(xtr, xte)
    else:
        xtr_s, xte_s = xtr.astype(np.float32), xte.astype(np.float32)
    return Dataset(str(p.resolve()), xtr_s, ytr, xte_s, yte, classes, None)


def load_dataset(
    name: str = "digits", *, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
) -> Dataset:
    """Load a built-in dataset, split it (stratified) and standardize it.

    Parameters
    ----------
    name : {"digits", "breast-cancer", "mnist"} or path
        ``digits``: scikit-learn's 8x8 handwritten digits (1 797 images, 10 classes);
        ``breast-cancer``: Wisconsin diagnostic (569 examples, 30 features, 2 classes);
        both ship with scikit-learn, offline. ``mnist`` downloads MNIST (online only).
        A path with a suffix of :data:`DATASET_SUFFIXES` is read by
        :func:`load_file_dataset`.
    test_fraction : float
        Share of each class held out as the global test set.
    seed : int
        Seed of the split.
    standardize : bool
        Standardize with the training split's statistics; ``False``: the raw rows (as
        float32), for clients that scale with the federation's statistics (§4.10).

    Returns
    -------
    Dataset
        Standardized (or raw) train and test splits.

    Raises
    ------
    ConfigError
        For an unknown name, or ``mnist`` without its optional dependency.

    """
    if is_dataset_file(name):
        return load_file_dataset(
            name, test_fraction=test_fraction, seed=seed, standardize=standardize
        )
    if name == "mnist":
        return _load_mnist(standardize)
    shapes: dict[str, tuple[int, tuple[int, int] | None]] = {
        "digits": (10, (8, 8)),
        "breast-cancer": (2, None),
    }
    if name not in shapes:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or give a file "
            f"({', '.join(DATASET_SUFFIXES)})."
        )
    classes, shape = shapes[name]
    x, y = _bundled(name)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    if standardize:
        xtr_s, xte_s = _standardize(xtr, xte)
    else:
        xtr_s, xte_s = xtr.astype(np.float32), xte.astype(np.float32)
    return Dataset(name, xtr_s, ytr, xte_s, yte, classes, shape)


def partition_iid(num_examples: int, num_partitions: int, *, seed: int = 0) -> list[IntArray]:
    """Split ``range(num_examples)`` into ``num_partitions`` shuffled, near-equal parts.

    Raises
    ------
    ConfigError
        When there are fewer examples than partitions.

    """
    if num_partitions < 1 or num_examples < num_partitions:
        raise ConfigError(f"cannot split {num_examples} examples into {num_partitions} partitions.")
    idx = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(idx, num_partitions)]


def partition_dirichlet(
    labels: NDArray[np.integer],
    num_partitions: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 10,
) -> list[IntArray]:
    """Non-IID split: each class is divided among clients by Dirichlet(``alpha``) shares.

    Smaller ``alpha`` means more skewed label distributions. Draws are repeated (at most 100
    times) until every partition holds at least ``min_size`` examples.

    Raises
    ------
    ConfigError
        For ``alpha <= 0`` or when no draw gives every partition ``min_size`` examples.

    """
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            rng.shuffle(idx)
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"no Dirichlet(alpha={alpha}) split of {len(labels)} examples gives each of "
        f"{num_partitions} partitions {min_size} examples; raise alpha or use fewer partitions."
    )


def load_partition(
    dataset: Dataset,
    partition_id: int,
    num_partitions: int,
    *,
    partitioner: Literal["iid", "dirichlet", "non-iid"] | str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> Partition:
    """Return client ``partition_id``'s share of ``dataset``.

    The training split is partitioned with ``partitioner``; the global test split is divided
    IID so that each client also has a local test set for federated evaluation.

    Raises
    ------
    ConfigError
        For an unknown partitioner or a partition id outside ``0 .. num_partitions - 1``.

    """
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions={num_partitions})."
        )
    if partitioner == "iid":
        train_parts = partition_iid(len(dataset.y_train), num_partitions, seed=seed)
    elif partitioner in ("dirichlet", "non-iid"):
        train_parts = partition_dirichlet(dataset.y_train, num_partitions, alpha=alpha, seed=seed)
    else:
        raise ConfigError(
            f"unknown partitioner {partitioner!r}; choose one of {', '.join(PARTITIONERS)}."
        )
    test_parts = partition_iid(len(dataset.y_test), num_partitions, seed=seed + 1)
    tr, te = train_parts[partition_id], test_parts[partition_id]
    return Partition(
        dataset.x_train[tr], dataset.y_train[tr], dataset.x_test[te], dataset.y_test[te]
    )


@lru_cache(maxsize=4)
def cached_dataset(name: str, seed: int = 0, standardize: bool = True) -> Dataset:
    """:func:`load_dataset` once per process (a ClientApp process may handle many messages)."""
    return load_dataset(name, seed=seed, standardize=standardize)


def whole(dataset: Dataset) -> Partition:
    """All of ``dataset`` as one partition (a node that holds its own data file)."""
    return Partition(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)


def node_partition(
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    *,
    default_dataset: str = "digits",
    standardize: bool = True,
) -> Partition:
    """Return this SuperNode's partition, as the examples configure it.

    Run config: ``dataset-path`` or ``dataset`` (see :func:`run_dataset`), ``seed`` (default
    42), ``partitioner``, ``dirichlet-alpha``; node config:
    ``partition-id``, ``num-partitions``, and ``dataset-path``: this node's own dataset file,
    used whole (each node brings its own data, nothing is partitioned). ``standardize=False``
    gives the raw rows (the examples scale them with the federation's statistics, §4.10).
    """
    seed = int(run_config.get("seed", 42))
    own = str(node_config.get(DATASET_PATH_KEY, "") or "")
    if own:
        return whole(cached_dataset(own, seed, standardize))
    return load_partition(
        cached_dataset(run_dataset(run_config, default_dataset), seed, standardize),
        int(node_config.get("partition-id", 0)),
        int(node_config.get("num-partitions", 1)),
        partitioner=str(run_config.get("partitioner", "iid")),
        alpha=float(run_config.get("dirichlet-alpha", 0.5)),
        seed=seed,
    )


def run_dataset(run_config: Mapping[str, Any], default_dataset: str = "digits") -> str:
    """The dataset every node reads and partitions, as the examples configure it.

    Run config ``dataset-path`` (the user's own file) when it is set, else ``dataset`` (a
    built-in name or a file), else ``default_dataset``.
    """
    path = str(run_config.get(DATASET_PATH_KEY, "") or "")
    return path or str(run_config.get("dataset", "") or default_dataset)


def run_dataset_shape(
    run_config: Mapping[str, Any],
    known: Mapping[str, tuple[int, int]],
    default_dataset: str = "digits",
) -> tuple[int, int]:
    """``(num features, num classes)`` of the model an example builds for its run config.

    Run config ``num-features`` and ``num-classes`` when both are > 0 (every node holds its
    own file, node config ``dataset-path``, so the server has no dataset to look at); else
    those of :func:`run_dataset`: ``known[name]`` for a built-in name, read from a file.

    Raises
    ------
    ConfigError
        For a name that is neither in ``known`` nor a dataset file.

    """
    features = int(run_config.get("num-features", 0) or 0)
    classes = int(run_config.get("num-classes", 0) or 0)
    if features > 0 and classes > 0:
        return features, max(2, classes)
    name = run_dataset(run_config, default_dataset)
    if is_dataset_file(name):
        ds = cached_dataset(name, int(run_config.get("seed", 42)))
        return ds.num_features, ds.num_classes
    if name not in known:
        raise ConfigError(
            f"dataset {name!r} is not one of {', '.join(known)}; give your own file as run "
            f"config dataset-path ({', '.join(DATASET_SUFFIXES)}, absolute path)."
        )
    return known[name]


def check_partition(part: Partition, num_features: int, num_classes: int, source: str) -> Partition:
    """``part`` when its examples fit a model of ``num_features`` inputs and ``num_classes``.

    Raises
    ------
    DatasetError
        When a node's file has another number of features or a label ``>= num_classes``
        (the fix: run config ``num-features`` / ``num-classes`` matching every node's file).

    """
    features = int(np.prod(part.x_train.shape[1:]))
    if features != num_features:
        raise DatasetError(
            f"{source}: {features} features per example, the federated model takes "
            f"{num_features}; every node's file needs the same columns (set run config "
            "num-features / num-classes to match them)."
        )
    top = max(int(part.y_train.max(initial=0)), int(part.y_test.max(initial=0)))
    if top >= num_classes:
        raise DatasetError(
            f"{source}: label {top}, the federated model has {num_classes} classes "
            f"(0 .. {num_classes - 1}); set run config num-classes to at least {top + 1}."
        )
    return part
