"""Keras model, data and training of the TensorFlow quickstart (no Flower, no encryption)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

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
SHAPES = {"digits": (64, 10), "breast-cancer": (30, 2), "mnist": (784, 10)}
#: Run config key of the initial model file: .keras / .h5 (or .npz ``layer0`` ..).
MODEL_PATH_KEY = "model-path"


def dataset_shape(run_config: Mapping[str, Any]) -> tuple[int, int]:
    """(features, classes): run config ``num-features``/``num-classes``, ``dataset-path``
    (your own file) or ``dataset`` (a known name)."""
    return run_dataset_shape(run_config, SHAPES, "digits")


def make_model(run_config: Mapping[str, Any]) -> keras.Model:
    """A small MLP for the run config's dataset; deterministic initial weights (``seed``).

    Its shape: run config ``num-features``/``num-classes``, ``dataset-path`` (your own file)
    or ``dataset`` (a known name).
    """
    features, classes = dataset_shape(run_config)
    keras.utils.set_random_seed(int(run_config.get("seed", 42)))
    model = keras.Sequential(
        [
            keras.Input(shape=(features,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=float(run_config.get("lr", 0.05)), momentum=0.9
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def load_data(
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> Partition:
    """This SuperNode's raw rows: node config ``dataset-path`` (its own file, used whole), else
    its partition (``partition-id`` / ``num-partitions``) of run config ``dataset-path`` /
    ``dataset``; standardised with ``scaling`` (the federation's mean and std) when given."""
    part = node_partition(run_config, node_config, default_dataset="digits", standardize=False)
    source = str(node_config.get(DATASET_PATH_KEY, "") or run_dataset(run_config, "digits"))
    part = check_partition(part, *dataset_shape(run_config), source)
    if scaling is None:
        return part
    x_train, x_test = scaling.standardize(part.x_train), scaling.standardize(part.x_test)
    return Partition(x_train, part.y_train, x_test, part.y_test)


def model_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights named ``layer0``, ``layer1``, ... (``get_weights()`` order)."""
    return {f"layer{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}


def initial_model(run_config: Mapping[str, Any]) -> keras.Model:
    """:func:`make_model`, with the weights of run config ``model-path`` when it is set.

    The file (``model.save("model.keras")``, ``.h5``, or an ``.npz`` of ``layer0`` ..) is
    hostile input: size-bounded, loaded with ``safe_mode=True`` (no Lambda-layer code), finite
    floats only, and every weight's shape checked against this run's MLP.
    """
    model = make_model(run_config)
    path = str(run_config.get(MODEL_PATH_KEY, "") or "")
    if path:
        weights = check_model_arrays(read_model_arrays(path), model_weights(model), path)
        set_weights(model, [weights[f"layer{i}"] for i in range(len(weights))])
    return model


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow (deterministic local training)."""
    keras.utils.set_random_seed(seed)


def set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    """Load a list of arrays (the order of ``model.get_weights()``)."""
    model.set_weights([np.asarray(w, dtype=np.float32) for w in weights])


def evaluate_arrays(
    arrays: Mapping[str, np.ndarray],
    run_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> dict[str, float]:
    """Evaluate plaintext model arrays on the global test set's raw rows.

    ``arrays`` take raw rows (``decrypt_scaled_model`` folds the federation's scaling into
    the first ``Dense`` layer); a model that expects standardised rows comes with its
    ``scaling``, applied to the rows first.
    """
    model = make_model(run_config)
    set_weights(model, [arrays[k] for k in sorted(arrays, key=int)])
    seed = int(run_config.get("seed", 42))
    ds = cached_dataset(run_dataset(run_config, "digits"), seed, standardize=False)
    x = ds.x_test if scaling is None else scaling.standardize(ds.x_test)
    loss, accuracy = model.evaluate(x, ds.y_test, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy), "num-examples": float(len(ds.y_test))}
