"""A small Keras MLP (TensorFlow CPU)."""

from __future__ import annotations

import os

import numpy as np

from cifer_flwr.apps.data import Partition
from cifer_flwr.experiments.tasks.base import Arrays, TrainSettings
from cifer_flwr.extras import require

__all__ = ["KerasMLP"]


#: For the missing-extra message (cifer_flwr.extras.require).
PURPOSE = "task=digits-tensorflow trains a Keras model"


class KerasMLP:
    """Dense(32, relu) -> Dense(classes, softmax), trained with SGD.

    Weights travel as ``layer{i}`` arrays in Keras' ``get_weights()`` order.
    """

    def __init__(self, dataset: str = "digits", hidden: int = 32) -> None:
        self.dataset = dataset
        self.hidden = hidden

    def _model(self, num_features: int, num_classes: int, lr: float = 0.1):  # type: ignore[no-untyped-def]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        keras = require("keras", purpose=PURPOSE)

        model = keras.Sequential(
            [
                keras.Input((num_features,)),
                keras.layers.Dense(self.hidden, activation="relu"),
                keras.layers.Dense(num_classes, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """Initial parameters, seeded."""
        keras = require("keras", purpose=PURPOSE)

        keras.utils.set_random_seed(seed)
        model = self._model(num_features, num_classes)
        return {f"layer{i}": w for i, w in enumerate(model.get_weights())}

    def _load(self, arrays: Arrays, lr: float = 0.1):  # type: ignore[no-untyped-def]
        weights = [arrays[f"layer{i}"] for i in range(len(arrays))]
        model = self._model(weights[0].shape[0], weights[-1].shape[0], lr)
        model.set_weights(weights)
        return model

    def train(
        self, arrays: Arrays, data: Partition, settings: TrainSettings
    ) -> tuple[Arrays, float]:
        """Train locally from ``arrays``; return new arrays and the mean training loss."""
        keras = require("keras", purpose=PURPOSE)

        keras.utils.set_random_seed(settings.seed)
        model = self._load(arrays, settings.learning_rate)
        hist = model.fit(
            data.x_train,
            data.y_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            verbose=0,
        )
        weights = model.get_weights()
        return {f"layer{i}": w for i, w in enumerate(weights)}, float(np.mean(hist.history["loss"]))

    def evaluate(self, arrays: Arrays, data: Partition) -> tuple[float, float]:
        """``(loss, accuracy)`` on the test split."""
        loss, acc = self._load(arrays).evaluate(data.x_test, data.y_test, verbose=0)
        return float(loss), float(acc)
