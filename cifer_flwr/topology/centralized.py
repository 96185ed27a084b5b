"""Centralized topology: a Flower strategy (encrypted or Flower's own plaintext one)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from cifer_flwr.apps import (
    ENCRYPTED_STRATEGIES,
    PLAINTEXT_STRATEGIES,
    MeteredGrid,
    RoundRecorder,
    checkpoint_options,
)
from cifer_flwr.config import ExperimentConfig
from cifer_flwr.exceptions import ConfigError

__all__ = ["make_strategy", "run_centralized"]


def make_strategy(
    exp: ExperimentConfig,
    *,
    public_key: str | None,
    save_path: str | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
) -> Any:
    """Build the strategy the config names: ours when encrypted, Flower's otherwise.

    ``checkpoint_path`` (where an encrypted strategy checkpoints after every round) and
    ``resume`` (continue from that checkpoint) are passed to the encrypted strategy;
    ``resume`` with a plaintext strategy is a :class:`ConfigError`.
    """
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
        checkpoint_options(PLAINTEXT_STRATEGIES[name], None, resume, encrypted=False)
        return PLAINTEXT_STRATEGIES[name](**kwargs)
    if public_key is None:
        raise ConfigError(
            "encryption is on but no public key path was given (run config 'public-key')."
        )
    cls = ENCRYPTED_STRATEGIES[name]
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    kwargs.update(checkpoint_options(cls, ckpt, resume, encrypted=True))
    return cls(public_key=public_key, save_path=save_path, **kwargs)


def run_centralized(
    grid: Grid,
    exp: ExperimentConfig,
    initial_arrays: ArrayRecord,
    *,
    public_key: str | None,
    save_path: str | None = None,
    timeout: float = 3600.0,
    checkpoint_path: str | None = None,
    resume: bool = False,
    restored_rows: Iterable[Mapping[str, Any]] = (),
    on_round: Callable[[list[dict[str, Any]], int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Run ``exp.num_rounds`` rounds.

    ``on_round`` gets the rows so far and the last restored round after every round
    (restored rows of a resumed run first); ``restored_rows`` are the rows of the killed
    run's results file, kept for the rounds the checkpoint restores.

    Returns
    -------
    tuple of (list of dict, int)
        The per-round rows of the results file (all rounds) and the last round restored
        from a checkpoint (0 for a fresh run).

    """
    strategy = make_strategy(
        exp,
        public_key=public_key,
        save_path=save_path,
        checkpoint_path=checkpoint_path,
        resume=resume,
    )
    metered = MeteredGrid(grid)
    recorder = RoundRecorder(strategy, metered, exp.num_rounds, restored=restored_rows)
    if on_round is not None:
        report = on_round
        recorder.on_round = lambda _r: report(recorder.rows(), recorder.resumed_after)
    result = strategy.start(
        grid=metered, initial_arrays=initial_arrays, num_rounds=exp.num_rounds, timeout=timeout
    )
    return recorder.rows(result), recorder.resumed_after
