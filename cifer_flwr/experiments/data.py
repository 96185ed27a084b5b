"""Small offline datasets and partitioners for the examples, the demo and the tests.

Numpy only (scikit-learn is imported lazily for its bundled datasets, which ship inside the
package and need no network). Every function is deterministic for a given ``seed``, so the
encrypted and the plaintext run of an experiment see exactly the same partitions.

* :func:`load_dataset` returns one of the built-in datasets as ``(X_train, y_train, X_test,
  y_test)``, standardized with statistics of the training split.
* :func:`partition_iid` and :func:`partition_dirichlet` split indices among clients.
* :func:`load_partition` is what a ClientApp calls with its ``partition-id`` /
  ``num-partitions`` node config.

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

from cifer_flwr.exceptions import ConfigError

__all__ = [
    "cached_dataset",
    "node_partition",
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "Partition",
    "load_dataset",
    "load_partition",
    "partition_dirichlet",
    "partition_iid",
]

#: Names accepted by :func:`load_dataset` (``mnist`` needs flwr-datasets and the network).
DATASETS = ("digits", "breast-cancer", "mnist")
#: Environment variable overriding the cache directory of the bundled datasets.
ENV_CACHE = "CIFER_DATA_CACHE"
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


def _load_mnist() -> Dataset:  # pragma: no cover - needs the network
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
    xtr_s, xte_s = _standardize(xtr, xte)
    return Dataset("mnist", xtr_s, ytr, xte_s, yte, 10, (28, 28))


def _cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cifer-flwr"


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
        from sklearn.datasets import load_digits

        bunch = load_digits()
    else:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
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


def load_dataset(name: str = "digits", *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load a built-in dataset, split it (stratified) and standardize it.

    Parameters
    ----------
    name : {"digits", "breast-cancer", "mnist"}
        ``digits``: scikit-learn's 8x8 handwritten digits (1 797 images, 10 classes);
        ``breast-cancer``: Wisconsin diagnostic (569 examples, 30 features, 2 classes);
        both ship with scikit-learn, offline. ``mnist`` downloads MNIST (online only).
    test_fraction : float
        Share of each class held out as the global test set.
    seed : int
        Seed of the split.

    Returns
    -------
    Dataset
        Standardized train and test splits.

    Raises
    ------
    ConfigError
        For an unknown name, or ``mnist`` without its optional dependency.

    """
    if name == "mnist":
        return _load_mnist()
    shapes: dict[str, tuple[int, tuple[int, int] | None]] = {
        "digits": (10, (8, 8)),
        "breast-cancer": (2, None),
    }
    if name not in shapes:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    classes, shape = shapes[name]
    x, y = _bundled(name)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    xtr_s, xte_s = _standardize(xtr, xte)
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
def cached_dataset(name: str, seed: int = 0) -> Dataset:
    """:func:`load_dataset` once per process (a ClientApp process may handle many messages)."""
    return load_dataset(name, seed=seed)


def node_partition(
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    *,
    default_dataset: str = "digits",
) -> Partition:
    """Return this SuperNode's partition, as the examples configure it.

    Run config: ``dataset``, ``seed`` (default 42), ``partitioner``, ``dirichlet-alpha``;
    node config: ``partition-id``, ``num-partitions``.
    """
    seed = int(run_config.get("seed", 42))
    return load_partition(
        cached_dataset(str(run_config.get("dataset", default_dataset)), seed),
        int(node_config.get("partition-id", 0)),
        int(node_config.get("num-partitions", 1)),
        partitioner=str(run_config.get("partitioner", "iid")),
        alpha=float(run_config.get("dirichlet-alpha", 0.5)),
        seed=seed,
    )
