"""Centralized topology: a Flower strategy (encrypted or Flower's own plaintext one)."""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from cifer_flwr.apps import ENCRYPTED_STRATEGIES, PLAINTEXT_STRATEGIES, MeteredGrid, round_rows
from cifer_flwr.config import ExperimentConfig
from cifer_flwr.exceptions import ConfigError

__all__ = ["make_strategy", "run_centralized"]


def make_strategy(
    exp: ExperimentConfig, *, public_key: str | None, save_path: str | None = None
) -> Any:
    """Build the strategy the config names: ours when encrypted, Flower's otherwise."""
    s = exp.strategy
    name = s.name.value
    nodes = exp.federation.nodes
    kwargs: dict[str, Any] = {
        "fraction_train": exp.fraction_train,
        "fraction_evaluate": exp.fraction_evaluate,
        "min_train_nodes": max(2, math.ceil(exp.fraction_train * nodes)),
        "min_evaluate_nodes": max(2, math.ceil(exp.fraction_evaluate * nodes)),
        "min_available_nodes": nodes,
    }
    if name == "fedprox":
        kwargs["proximal_mu"] = s.proximal_mu
    elif name in ("fedyogi", "fedadam"):
        kwargs.update(eta=s.eta, eta_l=s.eta_l, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau)
    elif name == "fedadagrad":
        kwargs.update(eta=s.eta, eta_l=s.eta_l, tau=s.tau)
    elif name == "securefed":
        kwargs.update(
            min_cohort=s.min_cohort,
            clip_norm=s.clip_norm,
            noise_multiplier=s.noise_multiplier,
            aggregation_check=s.aggregation_check,
        )
    if not exp.encryption.enabled:
        if name == "securefed":
            raise ConfigError(
                "strategy=securefed is an encrypted strategy; use encryption=ckks or pick "
                "fedavg for the plaintext baseline."
            )
        return PLAINTEXT_STRATEGIES[name](**kwargs)
    if public_key is None:
        raise ConfigError(
            "encryption is on but no public key path was given (run config 'public-key')."
        )
    return ENCRYPTED_STRATEGIES[name](public_key=public_key, save_path=save_path, **kwargs)


def run_centralized(
    grid: Grid,
    exp: ExperimentConfig,
    initial_arrays: ArrayRecord,
    *,
    public_key: str | None,
    save_path: str | None = None,
    timeout: float = 3600.0,
) -> list[dict[str, Any]]:
    """Run ``exp.num_rounds`` rounds; return the per-round rows of the results file."""
    strategy = make_strategy(exp, public_key=public_key, save_path=save_path)
    metered = MeteredGrid(grid)
    result = strategy.start(
        grid=metered, initial_arrays=initial_arrays, num_rounds=exp.num_rounds, timeout=timeout
    )
    return round_rows(metered, result, strategy, exp.num_rounds)
