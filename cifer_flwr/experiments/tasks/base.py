"""What a federated task provides: data, an initial model, local training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cifer_flwr.apps.data import Partition

__all__ = ["Arrays", "Task", "TrainSettings", "accuracy_and_loss"]

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class TrainSettings:
    """Local training settings sent by the server (or fixed by the task config)."""

    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    proximal_mu: float = 0.0
    seed: int = 0


class Task(Protocol):
    """A model family + dataset, as plain named numpy arrays in and out."""

    dataset: str

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """Initial model parameters."""
        ...

    def train(
        self, arrays: Arrays, data: Partition, settings: TrainSettings
    ) -> tuple[Arrays, float]:
        """Train locally from ``arrays``; return the new arrays and the mean training loss."""
        ...

    def evaluate(self, arrays: Arrays, data: Partition) -> tuple[float, float]:
        """Return ``(loss, accuracy)`` on ``data``'s test split."""
        ...


def accuracy_and_loss(
    probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64]
) -> tuple[float, float]:
    """Cross-entropy loss and accuracy of class probabilities ``probs`` (n x classes)."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(p))), float(np.mean(np.argmax(probs, axis=1) == y))
