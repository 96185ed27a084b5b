"""Keras model, data and training of the TensorFlow quickstart (no Flower, no encryption)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from cifer_flwr.experiments.data import Partition, cached_dataset, node_partition

# (num features, num classes) of the datasets this example knows
SHAPES = {"digits": (64, 10), "breast-cancer": (30, 2), "mnist": (784, 10)}


def make_model(run_config: Mapping[str, Any]) -> keras.Model:
    """A small MLP for run config ``dataset``; deterministic initial weights (``seed``)."""
    name = str(run_config.get("dataset", "digits"))
    if name not in SHAPES:
        raise ValueError(f"dataset {name!r} is not one of {list(SHAPES)}")
    features, classes = SHAPES[name]
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


def load_data(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> Partition:
    """This SuperNode's partition (node config ``partition-id`` / ``num-partitions``)."""
    return node_partition(run_config, node_config, default_dataset="digits")


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow (deterministic local training)."""
    keras.utils.set_random_seed(seed)


def set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    """Load a list of arrays (the order of ``model.get_weights()``)."""
    model.set_weights([np.asarray(w, dtype=np.float32) for w in weights])


def evaluate_arrays(
    arrays: Mapping[str, np.ndarray], run_config: Mapping[str, Any]
) -> dict[str, float]:
    """Evaluate plaintext model arrays (e.g. a decrypted final model) on the global test set."""
    model = make_model(run_config)
    set_weights(model, [arrays[k] for k in sorted(arrays, key=int)])
    ds = cached_dataset(str(run_config.get("dataset", "digits")), int(run_config.get("seed", 42)))
    loss, accuracy = model.evaluate(ds.x_test, ds.y_test, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy), "num-examples": float(len(ds.y_test))}
