"""The one strategy builder: name, encryption and typed hyperparameters -> a strategy.

Every entry point builds its strategy here (docs/design.md §3): the examples' ServerApps and
``cifer demo`` (which runs the PyTorch example;
:func:`cifer_flwr.experiments.apps.make_strategy` translates Flower run config), the generic
app behind ``cifer run`` (:func:`cifer_flwr.experiments.topology.centralized.make_strategy`
translates the Hydra :class:`~cifer_flwr.experiments.config.ExperimentConfig`) and the
FedLearn API. The builder is a pure function of a typed per-strategy config
(:class:`~cifer_flwr.experiments.config.FedAvgConfig`, ...), whose ranges
:func:`hyperparameter_problems` checks (the check
:func:`~cifer_flwr.experiments.config.check_experiment` applies before anything starts), so
a configuration means the same strategy whichever entry point reads it; a behaviour
difference between entry points is a bug.

It sits in the experiment harness, not in the library: it knows both our encrypted
strategies and Flower's plaintext baselines of the same name, and the harness's
checkpoint / resume conventions. It imports neither :mod:`cifer_flwr.experiments.apps` nor the
topology code, so both can use it without an import cycle.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Final

from flwr.serverapp.strategy import Strategy

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import (
    STRATEGIES,
    FedAvgConfig,
    StrategyConfig,
    strategy_name,
)
from cifer_flwr.strategies import registry
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

#: Strategy name -> our encrypted class / Flower's plaintext class of the same name (from
#: the registry). SecureFed has no plaintext counterpart: it is refused without encryption.
ENCRYPTED_STRATEGIES: Final[dict[str, type[Strategy]]] = {
    name: spec.encrypted for name, spec in registry.REGISTRY.items()
}
PLAINTEXT_STRATEGIES: Final[dict[str, type[Strategy]]] = {
    name: spec.plaintext for name, spec in registry.REGISTRY.items() if spec.plaintext is not None
}


def baseline_name(name: str) -> str:
    """The strategy of the plaintext baseline that a run of ``name`` is compared with.

    The same name, except SecureFed: its baseline is FedAvg without the hardening (asked
    for explicitly; SecureFed itself without encryption is a :class:`ConfigError`).
    """
    value = strategy_name(name)
    return value if value in PLAINTEXT_STRATEGIES else FedAvgConfig.name


def plaintext_problem(name: str) -> str:
    """Why ``name`` cannot run without encryption (empty when it can).

    :func:`cifer_flwr.experiments.config.validate` reports it for a composed config before anything
    starts; :func:`build_strategy` refuses the same combination.
    """
    value = strategy_name(name)
    if value in PLAINTEXT_STRATEGIES:
        return ""
    return (
        f"strategy={value} is an encrypted strategy and has no plaintext baseline; turn "
        "encryption on (encryption=ckks / run config encryption=true) or pick "
        f"{baseline_name(value)} for the plaintext baseline"
    )


def hyperparameter_problems(
    strategy: StrategyConfig,
    *,
    fraction_train: float = 1.0,
    fraction_evaluate: float = 1.0,
    min_nodes: tuple[int, ...] = (),
) -> list[str]:
    """What is wrong with these hyperparameters (empty when they are valid).

    Every field of the typed config is checked against its range in the library's registry
    (:func:`cifer_flwr.strategies.registry.hyperparameter_problems`: ``eta``, ``eta_l``, ``tau``,
    ``server_learning_rate > 0``; ``beta_1``, ``beta_2``, ``server_momentum`` in
    ``[0, 1)``; ``proximal_mu``, ``noise_multiplier >= 0``; ``min_cohort >= 2``;
    ``clip_norm > 0`` or ``None``); ``noise_multiplier > 0`` needs ``clip_norm``; fractions
    must lie in ``(0, 1]`` and node counts be ``>= 1``.
    :func:`cifer_flwr.experiments.config.check_experiment` reports the same problems for an
    experiment, :func:`build_strategy` refuses them.
    """
    problems: list[str] = []
    for label, value in (
        ("fraction_train", fraction_train),
        ("fraction_evaluate", fraction_evaluate),
    ):
        if not 0.0 < value <= 1.0:
            problems.append(f"{label} must be in (0, 1], got {value}")
    for count in min_nodes:
        if count < 1:
            problems.append(f"node counts must be >= 1, got {count}")
    values = {f: getattr(strategy, f) for f in strategy.hyperparameters()}
    problems += registry.hyperparameter_problems(strategy_name(strategy.name), values)
    return problems


def checkpoint_options(
    strategy_class: type, path: Path | None, resume: bool, *, encrypted: bool
) -> dict[str, Any]:
    """Constructor keywords ``checkpoint_path`` / ``resume`` for ``strategy_class``.

    Raises
    ------
    ConfigError
        When ``resume`` is asked for a plaintext strategy (Flower's strategies keep no
        checkpoint: the plaintext baseline is rerun from round 1), or without a path.

    """
    if not encrypted:
        if resume:
            raise ConfigError(
                "resume=true needs an encrypted strategy: the plaintext baseline "
                "(encryption=none / encryption=false) keeps no checkpoint; rerun it from "
                "round 1 without resume."
            )
        return {}
    if resume and path is None:
        raise ConfigError(
            "resume=true but no checkpoint path: set run config 'results-path' (the "
            "checkpoint lives next to it) or 'checkpoint-path' to an absolute path."
        )
    params = inspect.signature(strategy_class).parameters
    if "checkpoint_path" not in params:  # a strategy without checkpoints (none today)
        if resume:
            raise ConfigError(
                f"{strategy_class.__name__} cannot resume (no checkpoint_path argument); "
                "rerun without resume."
            )
        return {}
    return {"checkpoint_path": path, "resume": resume}


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
    """Build the strategy ``strategy`` names, encrypted or as Flower's plaintext baseline.

    Parameters
    ----------
    strategy : StrategyConfig
        One of the typed per-strategy configs (:class:`~cifer_flwr.experiments.config.FedAvgConfig`,
        ...): its name and every hyperparameter it holds.
    encrypted : bool
        Our encrypted strategy (``True``) or Flower's class of the same name.
    public_key : path, optional
        The federation's ``public.key``; required when ``encrypted``.
    save_path, checkpoint_path : path, optional
        Where an encrypted strategy writes its encrypted global model / its checkpoint.
    resume : bool (default: False)
        Continue from ``checkpoint_path`` (encrypted strategies only).
    fraction_train, fraction_evaluate : float (default: 1.0)
        Fractions of the available nodes sampled per round, in ``(0, 1]``.
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int (default: 2)
        Flower's node minimums.

    Returns
    -------
    Strategy
        A :mod:`cifer_flwr.strategies` instance, or a :mod:`flwr.serverapp.strategy` one.

    Raises
    ------
    ConfigError
        For an unknown name, invalid hyperparameters (:func:`hyperparameter_problems`),
        SecureFed without encryption, encryption without ``public_key``, or ``resume``
        without encryption or checkpoint path.

    """
    name = strategy_name(strategy.name)
    counts = (min_train_nodes, min_evaluate_nodes, min_available_nodes)
    problems = hyperparameter_problems(
        strategy,
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_nodes=counts,
    )
    if problems:
        raise ConfigError(f"invalid {name} configuration: " + "; ".join(problems) + ".")
    kwargs: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": min_train_nodes,
        "min_evaluate_nodes": min_evaluate_nodes,
        "min_available_nodes": min_available_nodes,
    }
    kwargs.update({f: getattr(strategy, f) for f in strategy.hyperparameters()})
    masking = bool(kwargs.pop("masking", False))
    if not encrypted:
        problem = plaintext_problem(name)
        if problem:
            raise ConfigError(problem + ".")
        if masking:
            raise ConfigError(
                "masking=true masks updates inside encrypted sums; turn encryption on with "
                "preset packed (encryption.preset=packed / run config encryption=true)."
            )
        checkpoint_options(PLAINTEXT_STRATEGIES[name], None, resume, encrypted=False)
        return PLAINTEXT_STRATEGIES[name](**kwargs)
    if public_key is None or not str(public_key):
        raise ConfigError(
            "encryption is on but no public key was given; pass the absolute path of the "
            "federation's public.key (run config 'public-key', e.g. --run-config "
            "'public-key=\"/abs/keys/NAME/public.key\"'), or turn encryption off."
        )
    cls: Any = ENCRYPTED_STRATEGIES[name]  # every encrypted class takes these keywords
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    kwargs.update(checkpoint_options(cls, ckpt, resume, encrypted=True))
    save = Path(save_path) if save_path else None
    if masking:  # only passed when on: SecureFed refuses it with its own message
        kwargs["masking"] = True
    built: Strategy = cls(public_key=public_key, save_path=save, **kwargs)
    return built
