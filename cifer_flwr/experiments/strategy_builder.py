"""The harness's face of the one strategy builder: typed per-strategy configs -> a strategy.

Every entry point builds its strategy with the library's
:func:`cifer_flwr.apps.runconfig.build_strategy` (docs/design.md §3): the examples' ServerApps
and ``cifer demo`` (which runs the PyTorch example; :func:`cifer_flwr.apps.make_strategy`
translates Flower run config), the generic app behind ``cifer run``
(:func:`cifer_flwr.experiments.topology.centralized.make_strategy` translates the Hydra
:class:`~cifer_flwr.experiments.config.ExperimentConfig`) and the FedLearn API. Here the
builder takes a typed per-strategy config (:class:`~cifer_flwr.experiments.config.FedAvgConfig`,
...), whose ranges :func:`hyperparameter_problems` checks (the check
:func:`~cifer_flwr.experiments.config.check_experiment` applies before anything starts), so
a configuration means the same strategy whichever entry point reads it; a behaviour
difference between entry points is a bug.
"""

from __future__ import annotations

import os
from typing import Any

from flwr.serverapp.strategy import Strategy

from cifer_flwr.apps import runconfig
from cifer_flwr.apps.runconfig import (
    ENCRYPTED_STRATEGIES,
    PLAINTEXT_STRATEGIES,
    baseline_name,
    checkpoint_options,
    configuration_problems,
    plaintext_problem,
)
from cifer_flwr.experiments.config import STRATEGIES, StrategyConfig, strategy_name
from cifer_flwr.strategies.registry import RUN_CONFIG_KEYS, range_problem

__all__ = [
    "ENCRYPTED_STRATEGIES",
    "PLAINTEXT_STRATEGIES",
    "RUN_CONFIG_KEYS",
    "STRATEGIES",
    "baseline_name",
    "build_strategy",
    "checkpoint_options",
    "hyperparameter_problems",
    "plaintext_problem",
    "range_problem",
    "strategy_name",
]


def _values(strategy: StrategyConfig) -> dict[str, Any]:
    """Every hyperparameter the typed config holds, by name."""
    return {f: getattr(strategy, f) for f in strategy.hyperparameters()}


def hyperparameter_problems(
    strategy: StrategyConfig,
    *,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_nodes: tuple[int, ...] = (),
) -> list[str]:
    """What is wrong with these hyperparameters (empty when they are valid).

    The library's :func:`cifer_flwr.apps.runconfig.configuration_problems` for every field
    of the typed config (ranges of the registry, fractions in ``(0, 1]``, node counts
    ``>= 1``).
    :func:`cifer_flwr.experiments.config.check_experiment` reports the same problems for an
    experiment, :func:`build_strategy` refuses them.
    """
    return configuration_problems(
        strategy_name(strategy.name),
        _values(strategy),
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_nodes=min_nodes,
    )


def build_strategy(
    strategy: StrategyConfig,
    *,
    encrypted: bool,
    public_key: str | os.PathLike[str] | None = None,
    save_path: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_train_nodes: int = 2,
    min_evaluate_nodes: int = 2,
    min_available_nodes: int = 2,
) -> Strategy:
    """Build the strategy ``strategy`` names with :func:`cifer_flwr.apps.runconfig.build_strategy`.

    ``strategy`` is one of the typed per-strategy configs
    (:class:`~cifer_flwr.experiments.config.FedAvgConfig`, ...): its name and every
    hyperparameter it holds; the other arguments, the result and the errors are the
    library function's.
    """
    return runconfig.build_strategy(
        strategy.name,
        _values(strategy),
        encrypted=encrypted,
        public_key=public_key,
        save_path=save_path,
        checkpoint_path=checkpoint_path,
        resume=resume,
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_train_nodes,
        min_evaluate_nodes=min_evaluate_nodes,
        min_available_nodes=min_available_nodes,
    )
