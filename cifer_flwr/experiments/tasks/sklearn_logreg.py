"""Logistic regression with scikit-learn's ``SGDClassifier`` (numpy parameters)."""

from __future__ import annotations

import warnings

import numpy as np

from cifer_flwr.apps.data import Partition
from cifer_flwr.experiments.tasks.base import Arrays, TrainSettings, accuracy_and_loss
from cifer_flwr.extras import require

__all__ = ["SklearnLogReg"]


class SklearnLogReg:
    """Federated logistic regression: ``coef`` and ``intercept`` travel, sklearn trains.

    ``proximal_mu`` is not supported by ``SGDClassifier``; FedProx runs as FedAvg here.
    """

    def __init__(self, dataset: str = "breast-cancer") -> None:
        self.dataset = dataset

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """Initial parameters, seeded."""
        rows = 1 if num_classes == 2 else num_classes
        return {
            "coef": np.zeros((rows, num_features), np.float64),
            "intercept": np.zeros(rows, np.float64),
        }

    def _model(self, arrays: Arrays, classes: int, settings: TrainSettings):  # type: ignore[no-untyped-def]
        linear_model = require("sklearn.linear_model", purpose="task=*-sklearn")

        model = linear_model.SGDClassifier(
            loss="log_loss",
            learning_rate="constant",
            eta0=settings.learning_rate,
            alpha=1e-4,
            random_state=settings.seed,
        )
        model.classes_ = np.arange(classes)
        model.coef_ = np.array(arrays["coef"], np.float64)
        model.intercept_ = np.array(arrays["intercept"], np.float64)
        return model

    def _probs(self, arrays: Arrays, x: np.ndarray) -> np.ndarray:
        logits = x.astype(np.float64) @ arrays["coef"].T + arrays["intercept"]
        if logits.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1 - p, p], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def train(
        self, arrays: Arrays, data: Partition, settings: TrainSettings
    ) -> tuple[Arrays, float]:
        """Train locally from ``arrays``; return new arrays and the mean training loss."""
        rows = arrays["coef"].shape[0]
        classes = 2 if rows == 1 else rows
        model = self._model(arrays, classes, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(settings.epochs):
                model.partial_fit(
                    data.x_train.astype(np.float64), data.y_train, classes=np.arange(classes)
                )
        out = {
            "coef": model.coef_.astype(np.float64),
            "intercept": model.intercept_.astype(np.float64),
        }
        loss, _ = accuracy_and_loss(self._probs(out, data.x_train), data.y_train)
        return out, loss

    def evaluate(self, arrays: Arrays, data: Partition) -> tuple[float, float]:
        """``(loss, accuracy)`` on the test split."""
        return accuracy_and_loss(self._probs(arrays, data.x_test), data.y_test)
