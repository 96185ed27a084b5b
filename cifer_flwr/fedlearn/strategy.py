"""Cifer's strategies, ``fl.strategy.FedAvg(data_path=..., model_path=...)``, on Flower.

Each class is a *specification*: the data and model files, encryption on or off, the local
training settings and the strategy's hyperparameters (checked by
:func:`cifer_flwr.experiments.config.strategy_config`: an unknown one is refused). The
Flower strategy itself is built by the one strategy builder,
:func:`cifer_flwr.experiments.strategy_builder.build_strategy`, in
:meth:`Strategy.build` (docs/design.md §3): :class:`~cifer_flwr.fedlearn.Server` builds it
once to fail fast, then the ServerApp builds it again from run config
(:meth:`Strategy.to_run_config` / :meth:`Strategy.from_run_config`), inside the SuperLink.

The model file gives the initial global model, checked against the data file's number of
features and classes (the server never trains; with ``encryption=True`` it never sees a
plaintext model after round 0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import strategy_config
from cifer_flwr.experiments.strategy_builder import build_strategy, plaintext_problem

__all__ = [
    "RC_SPEC",
    "STRATEGY_CLASSES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "SecureFed",
    "Strategy",
]

#: Run config key carrying the strategy specification (JSON) to the ServerApp.
RC_SPEC = "fedlearn-strategy"


def _abs(value: str | os.PathLike[str] | None, key: str, *, builtin_ok: bool = False) -> str:
    if value is None or str(value) == "":
        raise ConfigError(f"strategy: {key} is required (an absolute path or a path from here).")
    text = str(value)
    if builtin_ok:
        from cifer_flwr.apps.data import DATASETS

        if text in DATASETS:
            return text
    p = Path(text).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"strategy: {key} = {text!r} does not exist.")
    return str(p)


class Strategy:
    """A strategy specification (use :class:`FedAvg`, :class:`FedProx`, ...).

    Parameters
    ----------
    data_path : path-like or str
        A dataset file (``.npz``/``.npy``/``.csv``/``.tfrecord``) or a built-in dataset name
        with the features and classes the model is checked against.
    model_path : path-like
        The initial model: ``.h5``/``.keras``, ``.pt`` (with ``model_class``) or ``.npz``.
    encryption : bool (default: True)
        Our CKKS strategy (the clients need ``use_homomorphic``) or Flower's plaintext
        class of the same name.
    model_class : str, optional
        ``package.module:Class`` of a PyTorch state dict's module.
    fraction_train, fraction_evaluate : float (default: 1.0)
        Fractions of the connected clients sampled per round.
    local_epochs, learning_rate, batch_size : (default: 1, 0.1, 32)
        Local training settings sent to the clients every round.
    seed : int (default: 0)
        Seed of the data split and local training.
    **hyperparameters
        The strategy's own, as listed with defaults and ranges in
        :data:`cifer_flwr.strategies.REGISTRY` (``proximal_mu`` for FedProx; ``eta``,
        ``eta_l``, ``beta_1``, ``beta_2``, ``tau`` for FedYogi; ``min_cohort``,
        ``clip_norm``, ... for SecureFed).

    Raises
    ------
    ConfigError
        For missing files, an unknown hyperparameter, or SecureFed without encryption.

    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        data_path: str | os.PathLike[str] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        *,
        encryption: bool = True,
        model_class: str = "",
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        local_epochs: int = 1,
        learning_rate: float = 0.1,
        batch_size: int = 32,
        seed: int = 0,
        **hyperparameters: Any,
    ) -> None:
        if not self.name:
            names = ", ".join(c.__name__ for c in STRATEGY_CLASSES.values())
            raise ConfigError(f"use a concrete strategy: {names}.")
        if not isinstance(encryption, bool):
            raise ConfigError(f"strategy: encryption must be True or False, got {encryption!r}.")
        self.data_path = _abs(data_path, "data_path", builtin_ok=True)
        self.model_path = _abs(model_path, "model_path")
        self.encryption = encryption
        self.model_class = model_class
        self.params = strategy_config({"name": self.name, **hyperparameters})
        self.hyperparameters = dict(hyperparameters)
        self.fraction_train = float(fraction_train)
        self.fraction_evaluate = float(fraction_evaluate)
        if local_epochs < 1 or batch_size < 1 or not learning_rate > 0:
            raise ConfigError(
                f"strategy: local_epochs ({local_epochs}) and batch_size ({batch_size}) must be "
                f">= 1 and learning_rate ({learning_rate}) > 0."
            )
        self.local_epochs = int(local_epochs)
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        if not encryption and plaintext_problem(self.name):
            raise ConfigError(plaintext_problem(self.name) + ".")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data_path={self.data_path!r}, model_path={self.model_path!r}, "
            f"encryption={self.encryption})"
        )

    def build(
        self,
        *,
        public_key: str | os.PathLike[str] | None,
        save_path: str | os.PathLike[str] | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        min_nodes: int = 2,
    ) -> FlowerStrategy:
        """The Flower strategy, from the one strategy builder.

        Raises
        ------
        ConfigError
            As :func:`~cifer_flwr.experiments.strategy_builder.build_strategy` (invalid
            hyperparameters, encryption without ``public_key``).

        """
        return build_strategy(
            self.params,
            encrypted=self.encryption,
            public_key=public_key if self.encryption else None,
            save_path=save_path if self.encryption else None,
            checkpoint_path=checkpoint_path if self.encryption else None,
            fraction_train=self.fraction_train,
            fraction_evaluate=self.fraction_evaluate,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )

    def train_config(self) -> dict[str, int | float]:
        """Local training settings sent to the clients (``local-epochs``, ...)."""
        return {
            "local-epochs": self.local_epochs,
            "learning-rate": self.learning_rate,
            "batch-size": self.batch_size,
            "seed": self.seed,
        }

    def initial_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The model file's weights, checked against the data file's features and classes."""
        from cifer_flwr.apps.data import cached_dataset
        from cifer_flwr.experiments.tasks import get_task

        data = cached_dataset(self.data_path, self.seed)
        task = get_task(
            "", self.data_path, model_path=self.model_path, model_class=self.model_class
        )
        arrays = task.init_arrays(data.num_features, data.num_classes, self.seed)
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    def to_run_config(self) -> dict[str, str | bool]:
        """Run config for the fedlearn ServerApp (the spec as JSON, plus what results show)."""
        spec = {
            "name": self.name,
            "data_path": self.data_path,
            "model_path": self.model_path,
            "model_class": self.model_class,
            "encryption": self.encryption,
            "fraction_train": self.fraction_train,
            "fraction_evaluate": self.fraction_evaluate,
            "local_epochs": self.local_epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "hyperparameters": self.hyperparameters,
        }
        return {RC_SPEC: json.dumps(spec), "strategy": self.name, "encryption": self.encryption}

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any]) -> Strategy:
        """Inverse of :meth:`to_run_config` (what the ServerApp does).

        Raises
        ------
        ConfigError
            For a missing or malformed specification.

        """
        try:
            spec = json.loads(str(run_config[RC_SPEC]))
            cls = STRATEGY_CLASSES[spec.pop("name")]
            hyper = spec.pop("hyperparameters")
            return cls(**spec, **hyper)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(
                f"run config {RC_SPEC!r} is not a fedlearn strategy specification ({exc}); "
                "submit the app through cifer_flwr.fedlearn.Server.run."
            ) from None


class FedAvg(Strategy):
    """Federated averaging (encrypted: ``cifer_flwr.strategies.FedAvg``)."""

    name = "fedavg"


class FedProx(Strategy):
    """FedAvg with the proximal term ``proximal_mu`` sent to the clients."""

    name = "fedprox"


class FedYogi(Strategy):
    """FedOpt with Yogi's server update (``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``)."""

    name = "fedyogi"


class FedAdam(Strategy):
    """FedOpt with Adam's server update (``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``)."""

    name = "fedadam"


class FedAdagrad(Strategy):
    """FedOpt with Adagrad's server update (``eta``, ``eta_l``, ``tau``)."""

    name = "fedadagrad"


class FedAvgM(Strategy):
    """FedAvg with server momentum (``server_learning_rate``, ``server_momentum``)."""

    name = "fedavgm"


class SecureFed(Strategy):
    """Encrypted aggregation hardened against hostile clients (encryption only)."""

    name = "securefed"


#: Strategy name -> specification class, one for every strategy of the library's registry
#: (:data:`cifer_flwr.strategies.REGISTRY`), in its order.
STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    c.name: c for c in (FedAvg, FedProx, FedYogi, FedAdam, FedAdagrad, FedAvgM, SecureFed)
}
