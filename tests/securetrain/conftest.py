"""Fixtures for securetrain: breast-cancer data (standardized) and a small training key."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.linalg import generate_training_key
from cifer_flwr.securetrain import Dataset
from cifer_flwr.securetrain.algorithm import params_for_iterations


@pytest.fixture(scope="session")
def cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    return Dataset(StandardScaler().fit_transform(X), y.astype(np.int64))


@pytest.fixture(scope="session")
def small_cancer(cancer: Dataset) -> Dataset:
    """200 samples, 8 features: keeps the encrypted unit tests fast."""
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(cancer.num_samples, 200, replace=False))
    return Dataset(cancer.X[idx, :8], cancer.y[idx])


@pytest.fixture(scope="session")
def train_key() -> Key:
    """Private key for one encrypted iteration (N=8192, depth 3), rotations up to 256."""
    return generate_training_key(params_for_iterations(1), max_period=256)


@pytest.fixture(scope="session")
def train_public(train_key: Key) -> Key:
    return train_key.public()
