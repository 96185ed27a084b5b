"""Logistic regression (scikit-learn's SGDClassifier with log loss) and its numpy parameters."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from cifer_flwr.apps import (
    DATASET_PATH_KEY,
    Partition,
    cached_dataset,
    check_model_arrays,
    check_partition,
    node_partition,
    read_model_arrays,
    run_dataset,
    run_dataset_shape,
)
from cifer_flwr.statistics import FeatureStats

# (num features, num classes) of the datasets this example knows
SHAPES = {"breast-cancer": (30, 2), "digits": (64, 10), "mnist": (784, 10)}


#: Run config key of the initial model file (.npz with ``coef`` and ``intercept``).
MODEL_PATH_KEY = "model-path"


def dataset_shape(run_config: Mapping[str, Any]) -> tuple[int, int]:
    """(features, classes): run config ``num-features``/``num-classes``, ``dataset-path``
    (your own .npz/.npy/.csv file) or ``dataset`` (a known name)."""
    return run_dataset_shape(run_config, SHAPES, "breast-cancer")


def make_model(run_config: Mapping[str, Any]) -> SGDClassifier:
    """Logistic regression trained by SGD, with ``local-epochs`` passes per round."""
    return SGDClassifier(
        loss="log_loss",
        learning_rate="constant",
        eta0=float(run_config.get("lr", 0.01)),
        alpha=1e-4,
        random_state=int(run_config.get("seed", 42)),
    )


def initial_params(run_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run config ``model-path`` (an .npz of ``coef``/``intercept``), else zero weights.

    Binary problems have one row of coefficients, as in scikit-learn.
    """
    features, classes = dataset_shape(run_config)
    rows = 1 if classes == 2 else classes
    zeros = {
        "coef": np.zeros((rows, features), dtype=np.float64),
        "intercept": np.zeros(rows, dtype=np.float64),
    }
    path = str(run_config.get(MODEL_PATH_KEY, "") or "")
    if not path:
        return zeros
    # your initial model: an .npz read without pickle, names and shapes checked (hostile file)
    return check_model_arrays(read_model_arrays(path), zeros, path)


def set_params(model: SGDClassifier, params: Mapping[str, np.ndarray], classes: int) -> None:
    """Put numpy parameters into the model (also before its first fit)."""
    model.classes_ = np.arange(classes)
    model.coef_ = np.array(params["coef"], dtype=np.float64)
    model.intercept_ = np.array(params["intercept"], dtype=np.float64)


def get_params(model: SGDClassifier) -> dict[str, np.ndarray]:
    """The model's parameters as named numpy arrays (what travels, encrypted)."""
    return {"coef": model.coef_.copy(), "intercept": model.intercept_.copy()}


def load_data(
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> Partition:
    """This SuperNode's raw rows: node config ``dataset-path`` (its own file, used whole), else
    its partition (``partition-id`` / ``num-partitions``) of run config ``dataset-path`` /
    ``dataset``; standardised with ``scaling`` (the federation's mean and std) when given."""
    part = node_partition(
        run_config, node_config, default_dataset="breast-cancer", standardize=False
    )
    source = str(node_config.get(DATASET_PATH_KEY, "") or run_dataset(run_config, "breast-cancer"))
    part = check_partition(part, *dataset_shape(run_config), source)
    if scaling is None:
        return part
    x_train, x_test = scaling.standardize(part.x_train), scaling.standardize(part.x_test)
    return Partition(x_train, part.y_train, x_test, part.y_test)


def train(model: SGDClassifier, x: np.ndarray, y: np.ndarray, epochs: int, classes: int) -> None:
    """``epochs`` passes of SGD from the current parameters (missing classes are fine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            model.partial_fit(x.astype(np.float64), y, classes=np.arange(classes))


def test(model: SGDClassifier, x: np.ndarray, y: np.ndarray, classes: int) -> tuple[float, float]:
    """Return ``(log loss, accuracy)``."""
    x = x.astype(np.float64)
    proba = model.predict_proba(x)
    loss = float(log_loss(y, proba, labels=np.arange(classes)))
    return loss, float((model.predict(x) == y).mean())


def evaluate_arrays(
    arrays: Mapping[str, np.ndarray],
    run_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> dict[str, float]:
    """Evaluate plaintext parameters on the global test set's raw rows.

    ``arrays`` take raw rows (``decrypt_scaled_model`` folds the federation's scaling into
    ``coef``/``intercept``); a model that expects standardised rows comes with its
    ``scaling``, applied to the rows first.
    """
    _, classes = dataset_shape(run_config)
    model = make_model(run_config)
    set_params(model, arrays, classes)
    seed = int(run_config.get("seed", 42))
    ds = cached_dataset(run_dataset(run_config, "breast-cancer"), seed, standardize=False)
    x = ds.x_test if scaling is None else scaling.standardize(ds.x_test)
    loss, accuracy = test(model, x, ds.y_test, classes)
    return {"loss": loss, "accuracy": accuracy, "num-examples": float(len(ds.y_test))}
