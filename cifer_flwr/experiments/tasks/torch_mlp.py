"""A small PyTorch MLP (64-32-10 for 8x8 digits)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from cifer_flwr.apps.data import Partition
from cifer_flwr.experiments.tasks.base import Arrays, TrainSettings
from cifer_flwr.extras import require

__all__ = ["TorchMLP"]


#: For the missing-extra message (cifer_flwr.extras.require).
PURPOSE = "task=*-torch trains a PyTorch model"


class TorchMLP:
    """Two-layer perceptron trained with SGD; FedProx's proximal term supported."""

    def __init__(self, dataset: str = "digits", hidden: int = 32) -> None:
        self.dataset = dataset
        self.hidden = hidden

    def _net(self, num_features: int, num_classes: int):  # type: ignore[no-untyped-def]
        torch = require("torch", purpose=PURPOSE)

        return torch.nn.Sequential(
            OrderedDict(
                fc1=torch.nn.Linear(num_features, self.hidden),
                act=torch.nn.ReLU(),
                fc2=torch.nn.Linear(self.hidden, num_classes),
            )
        )

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """Initial parameters, seeded."""
        torch = require("torch", purpose=PURPOSE)

        torch.manual_seed(seed)
        net = self._net(num_features, num_classes)
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}

    def _load(self, arrays: Arrays):  # type: ignore[no-untyped-def]
        torch = require("torch", purpose=PURPOSE)

        features, classes = arrays["fc1.weight"].shape[1], arrays["fc2.weight"].shape[0]
        net = self._net(features, classes)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        return net

    def train(
        self, arrays: Arrays, data: Partition, settings: TrainSettings
    ) -> tuple[Arrays, float]:
        """Train locally from ``arrays``; return new arrays and the mean training loss."""
        torch = require("torch", purpose=PURPOSE)

        torch.manual_seed(settings.seed)
        net = self._load(arrays)
        global_params = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=settings.learning_rate)
        x = torch.from_numpy(data.x_train)
        y = torch.from_numpy(data.y_train)
        losses = []
        for _ in range(settings.epochs):
            for batch in torch.randperm(len(y)).split(settings.batch_size):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                if settings.proximal_mu > 0:
                    prox = sum(
                        (p - g).pow(2).sum()
                        for p, g in zip(net.parameters(), global_params, strict=True)
                    )
                    loss = loss + settings.proximal_mu / 2 * prox
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}, float(
            np.mean(losses)
        )

    def evaluate(self, arrays: Arrays, data: Partition) -> tuple[float, float]:
        """``(loss, accuracy)`` on the test split."""
        torch = require("torch", purpose=PURPOSE)

        net = self._load(arrays)
        with torch.no_grad():
            logits = net(torch.from_numpy(data.x_test))
            loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.y_test)))
            acc = float((logits.argmax(1).numpy() == data.y_test).mean())
        return loss, acc
