"""SecureFed: encrypted FedAvg hardened for adversarial settings (DESIGN.md §4.4)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg

from cifer_flwr import crypto
from cifer_flwr.constants import (
    CFG_CHECK,
    CFG_CLIP_NORM,
    CFG_COHORT,
    CFG_NOISE_STD,
    CFG_SLOT,
    PART_CHECK,
    PART_MODEL,
)
from cifer_flwr.exceptions import CiphertextFormatError, ConfigError
from cifer_flwr.strategies.fedavg import FedAvg

__all__ = ["SecureFed"]

log = logging.getLogger("cifer_flwr.strategies")


class SecureFed(FedAvg):
    """Encrypted FedAvg with a minimum cohort, clipping, optional DP noise and a check.

    * **Minimum cohort**: an aggregate of fewer than ``min_cohort`` valid updates is never
      released (a sum of one update is that update).
    * **Client-side L2 clipping** of each update to ``clip_norm`` (the server cannot inspect
      ciphertexts, so clipping is what bounds one client's influence).
    * **Distributed DP noise**: each of the K sampled clients adds Gaussian noise with std
      ``noise_multiplier * clip_norm / sqrt(K)``, so the sum carries std
      ``noise_multiplier * clip_norm``.
    * **Aggregation check**: each client encrypts a participation tag for its own slot and
      round, plus its weight; key holders decrypt the summed check with the model and reject
      aggregates with a dropped, duplicated or replayed update.

    Parameters
    ----------
    min_cohort : int (default: 3)
        Fewest valid updates an aggregate may contain.
    clip_norm : float, optional
        L2 bound of each client's update; ``None`` disables clipping.
    noise_multiplier : float (default: 0.0)
        DP noise multiplier ``sigma``; needs ``clip_norm``.
    aggregation_check : bool (default: True)
        Add the aggregation check.
    public_key, save_path, examples_per_client, fraction_train, fraction_evaluate, \
min_train_nodes, min_evaluate_nodes, min_available_nodes, weighted_by_key, \
arrayrecord_key, configrecord_key, train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`cifer_flwr.strategies.FedAvg`.

    """

    def __init__(
        self,
        *,
        public_key: str | os.PathLike[str] | crypto.Key,
        min_cohort: int = 3,
        clip_norm: float | None = None,
        noise_multiplier: float = 0.0,
        aggregation_check: bool = True,
        save_path: str | os.PathLike[str] | None = None,
        examples_per_client: float = 1000.0,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 3,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 3,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
    ) -> None:
        if min_cohort < 2:
            raise ConfigError(
                f"min_cohort must be >= 2 (an aggregate of one update is that update), "
                f"got {min_cohort}."
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 or None, got {clip_norm}.")
        if noise_multiplier < 0 or (noise_multiplier > 0 and clip_norm is None):
            raise ConfigError(
                f"noise_multiplier={noise_multiplier} needs clip_norm (noise is scaled to the "
                "clipping bound) and must be >= 0."
            )
        super().__init__(
            public_key=public_key,
            save_path=save_path,
            examples_per_client=examples_per_client,
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=max(min_train_nodes, min_cohort),
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=max(min_available_nodes, min_cohort),
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.min_cohort = min_cohort
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.aggregation_check = aggregation_check
        self._min_replies = min_cohort

    def summary(self) -> None:
        """Log the strategy's configuration, each SecureFed feature included."""
        log.info("\t├──> SecureFed:")
        log.info(
            "\t│\t├── minimum cohort: %d (smaller aggregates are never released)", self.min_cohort
        )
        log.info(
            "\t│\t├── client-side L2 clipping: %s",
            f"clip_norm={self.clip_norm:g}" if self.clip_norm else "off",
        )
        log.info(
            "\t│\t├── distributed DP noise: %s",
            f"noise_multiplier={self.noise_multiplier:g} (std sigma*C/sqrt(K) per client)"
            if self.noise_multiplier
            else "off",
        )
        log.info(
            "\t│\t└── aggregation check (dropped/duplicated/replayed updates): %s",
            "on" if self.aggregation_check else "off",
        )
        self._summary_encryption()
        FlwrFedAvg.summary(self)

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        if self.clip_norm:
            cfg[CFG_CLIP_NORM] = float(self.clip_norm)
        if self.noise_multiplier and self.clip_norm:
            cfg[CFG_NOISE_STD] = self.noise_multiplier * self.clip_norm / math.sqrt(cohort)
        if self.aggregation_check:
            cfg.update({CFG_CHECK: True, CFG_SLOT: index, CFG_COHORT: cohort})
        return cfg

    def _parse_reply(self, msg: Message, server_round: int) -> dict[str, crypto.EncryptedArrays]:
        parts = super()._parse_reply(msg, server_round)
        if self.aggregation_check and PART_CHECK not in parts:
            raise CiphertextFormatError(
                "reply has no aggregation-check part; is the client running ckks_mod?"
            )
        return parts

    def _next_global(
        self,
        server_round: int,
        accepted: list[tuple[Message, dict[str, crypto.EncryptedArrays]]],
        aggregate: crypto.EncryptedArrays,
    ) -> dict[str, crypto.EncryptedArrays]:
        parts = {PART_MODEL: aggregate}
        if self.aggregation_check:
            parts[PART_CHECK] = crypto.aggregate([p[PART_CHECK] for _, p in accepted])
        return parts
