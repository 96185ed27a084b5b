"""Offline datasets (shipped with scikit-learn) and federated partitioners (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import ConfigError

__all__ = ["Partition", "dirichlet_partition", "iid_partition", "load_dataset", "partition"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Partition:
    """One client's share: a train and a test split."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray

    @property
    def num_classes(self) -> int:
        """Number of distinct labels in the whole dataset this partition came from."""
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1


def load_dataset(name: str) -> tuple[FloatArray, IntArray]:
    """Load a dataset that ships with scikit-learn, standardized, as ``(X, y)``.

    ``digits`` (1797 8x8 images, 10 classes) and ``breast-cancer`` (569 x 30, binary)
    work offline. ``mnist`` needs the network (``flwr-datasets``) and is for online users.
    """
    if name == "mnist":  # pragma: no cover - needs the network
        from flwr_datasets import FederatedDataset  # type: ignore[import-not-found]

        ds = FederatedDataset(dataset="ylecun/mnist", partitioners={"train": 1})
        part = ds.load_partition(0).with_format("numpy")
        x = np.asarray(part["image"], np.float32).reshape(len(part), -1) / 255.0
        return x, np.asarray(part["label"], np.int64)
    from sklearn import datasets

    loaders: dict[str, Any] = {
        "digits": datasets.load_digits,
        "breast-cancer": datasets.load_breast_cancer,
    }
    if name not in loaders:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(loaders)} or 'mnist'.")
    x, y = loaders[name](return_X_y=True)
    x = np.asarray(x, np.float64)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    return x.astype(np.float32), np.asarray(y, np.int64)


def iid_partition(n: int, num_partitions: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """Shuffle ``range(n)`` and cut it into ``num_partitions`` near-equal index sets."""
    idx = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(idx, num_partitions)]


def dirichlet_partition(
    y: npt.NDArray[np.int64], num_partitions: int, alpha: float, seed: int, min_size: int = 10
) -> list[npt.NDArray[np.int64]]:
    """Label-skewed (non-IID) split: class shares per client drawn from Dirichlet(alpha).

    Smaller ``alpha`` means more skew. Redraws until every client has ``min_size`` samples.
    """
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}.")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, np.int64)) for p in parts]
    raise ConfigError(
        f"could not draw a Dirichlet({alpha}) split with >= {min_size} samples per client for "
        f"{num_partitions} clients; raise alpha or use fewer clients."
    )


def partition(
    dataset: str,
    partition_id: int,
    num_partitions: int,
    *,
    partitioner: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Partition:
    """Return client ``partition_id``'s train/test split of ``dataset``."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}.")
    x, y = load_dataset(dataset)
    if partitioner == "iid":
        parts = iid_partition(len(y), num_partitions, seed)
    elif partitioner in ("dirichlet", "non-iid"):
        parts = dirichlet_partition(y, num_partitions, alpha, seed)
    else:
        raise ConfigError(f"unknown partitioner {partitioner!r}; choose iid or dirichlet.")
    idx = np.random.default_rng(seed + 1 + partition_id).permutation(parts[partition_id])
    n_test = max(1, int(len(idx) * test_fraction))
    test, train = idx[:n_test], idx[n_test:]
    return Partition(x[train], y[train], x[test], y[test])
