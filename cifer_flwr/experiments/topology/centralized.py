"""Centralized topology: a Flower strategy (encrypted or Flower's own plaintext one)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from cifer_flwr.apps.results import ResultsWriter
from cifer_flwr.apps.run import run_metered
from cifer_flwr.experiments.config import ExperimentConfig
from cifer_flwr.experiments.strategy_builder import build_strategy

__all__ = ["make_strategy", "run_centralized"]


def make_strategy(
    exp: ExperimentConfig,
    *,
    public_key: str | None,
    save_path: str | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
) -> Strategy:
    """Build the strategy ``exp`` names with :func:`build_strategy` (ours or Flower's).

    Translates the Hydra config into the builder's inputs: the hyperparameters
    ``exp.strategy``, encryption ``exp.encryption.enabled``, the fractions, and node
    minimums ``max(2, ceil(fraction * nodes))`` for train and evaluate and ``nodes``
    available. ``checkpoint_path`` and ``resume`` go to the encrypted strategy.

    Raises
    ------
    ConfigError
        As :func:`~cifer_flwr.experiments.strategy_builder.build_strategy`.

    """
    nodes = exp.federation.nodes
    return build_strategy(
        exp.strategy,
        encrypted=exp.encryption.enabled,
        public_key=public_key,
        save_path=save_path,
        checkpoint_path=checkpoint_path,
        resume=resume,
        fraction_train=exp.fraction_train,
        fraction_evaluate=exp.fraction_evaluate,
        min_train_nodes=max(2, math.ceil(exp.fraction_train * nodes)),
        min_evaluate_nodes=max(2, math.ceil(exp.fraction_evaluate * nodes)),
        min_available_nodes=nodes,
    )


def run_centralized(
    grid: Grid,
    exp: ExperimentConfig,
    initial_arrays: ArrayRecord,
    *,
    public_key: str | None,
    writer: ResultsWriter,
    save_path: str | None = None,
    timeout: float = 3600.0,
    checkpoint_path: str | None = None,
    resume: bool = False,
    restored_rows: Iterable[Mapping[str, Any]] = (),
) -> tuple[list[dict[str, Any]], int]:
    """Run ``exp.num_rounds`` rounds with :func:`~cifer_flwr.apps.run.run_metered`.

    ``writer`` gets the rows after every round (restored rows of a resumed run first) and
    logs one line per round; ``restored_rows`` are the rows of the killed run's results
    file, kept for the rounds the checkpoint restores.

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
    _, rows, resumed_after = run_metered(
        strategy,
        grid,
        initial_arrays,
        num_rounds=exp.num_rounds,
        writer=writer,
        restored=restored_rows,
        timeout=timeout,
    )
    return rows, resumed_after
