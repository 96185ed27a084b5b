"""Model, data and training loops of the PyTorch quickstart (no Flower, no encryption here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

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
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.statistics import FeatureStats

# (num features, num classes) of the datasets this example knows: square grey images
SHAPES = {"digits": (64, 10), "mnist": (784, 10)}
#: Run config key of the initial model file: a state dict of :class:`Net` (.pt or .npz).
MODEL_PATH_KEY = "model-path"


class Net(nn.Module):
    """A small CNN: two 3x3 convolutions with pooling, then one linear layer."""

    def __init__(self, num_classes: int = 10, side: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * (side // 4) ** 2, num_classes)
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def image_shape(run_config: Mapping[str, Any]) -> tuple[int, int]:
    """(num classes, image side) for run config ``num-features``/``num-classes``,
    ``dataset-path`` (your own file: each row a flattened square image) or ``dataset``."""
    features, classes = run_dataset_shape(run_config, SHAPES, "digits")
    side = math.isqrt(features)
    if side * side != features or side < 4:
        raise ConfigError(
            f"{run_dataset(run_config, 'digits')}: {features} features; this example's CNN "
            "(task.Net) takes square grey images of side >= 4 (16, 25, 64, ... pixels per row). "
            "For tabular data use quickstart-sklearn or quickstart-tensorflow."
        )
    return classes, side


def make_model(run_config: Mapping[str, Any]) -> Net:
    """The model for the run config's dataset, with deterministic initial weights (``seed``)."""
    classes, side = image_shape(run_config)
    torch.manual_seed(int(run_config.get("seed", 42)))
    return Net(classes, side)


def initial_model(run_config: Mapping[str, Any]) -> Net:
    """:func:`make_model`, with the weights of run config ``model-path`` when it is set.

    The file is a state dict of :class:`Net` (``torch.save(net.state_dict(), "net.pt")``),
    read as hostile input: bounded, ``torch.load(weights_only=True)`` (no pickle code runs),
    finite float tensors only, every name and shape checked against this run's ``Net``.
    """
    model = make_model(run_config)
    path = str(run_config.get(MODEL_PATH_KEY, "") or "")
    if path:
        expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        state = check_model_arrays(read_model_arrays(path), expected, path)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
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
    classes, side = image_shape(run_config)
    source = str(node_config.get(DATASET_PATH_KEY, "") or run_dataset(run_config, "digits"))
    part = check_partition(part, side * side, classes, source)
    if scaling is None:
        return part
    x_train, x_test = scaling.standardize(part.x_train), scaling.standardize(part.x_test)
    return Partition(x_train, part.y_train, x_test, part.y_test)


def train(
    model: Net,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> float:
    """Train with SGD (momentum 0.9); FedProx's proximal term when ``proximal_mu > 0``."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    global_params = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if proximal_mu > 0:
                prox = sum(
                    ((p - g) ** 2).sum()
                    for p, g in zip(model.parameters(), global_params, strict=False)
                )
                loss = loss + proximal_mu / 2 * prox
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def test(model: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` on ``(x, y)``."""
    model.eval()
    logits = model(torch.from_numpy(x))
    loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
    accuracy = float((logits.argmax(1).numpy() == y).mean())
    return loss, accuracy


def evaluate_arrays(
    arrays: Mapping[str, np.ndarray],
    run_config: Mapping[str, Any],
    scaling: FeatureStats | None = None,
) -> dict[str, float]:
    """Evaluate plaintext model arrays on the global test set's raw rows.

    The CNN's first layer is a convolution, which cannot absorb the federation's scaling:
    the model comes with its ``scaling`` (``decrypt_model_and_scaling``), applied to the
    rows first.
    """
    model = make_model(run_config)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    seed = int(run_config.get("seed", 42))
    ds = cached_dataset(run_dataset(run_config, "digits"), seed, standardize=False)
    x = ds.x_test if scaling is None else scaling.standardize(ds.x_test)
    loss, accuracy = test(model, x, ds.y_test)
    return {"loss": loss, "accuracy": accuracy, "num-examples": float(len(ds.y_test))}
