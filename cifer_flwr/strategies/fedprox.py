"""Encrypted FedProx."""

from __future__ import annotations

import os
from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedProx as FlwrFedProx

from cifer_flwr import crypto
from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = ["FedProx"]


class FedProx(EncryptedFedAvgBase, FlwrFedProx):
    """FedProx on CKKS ciphertexts.

    The server side is encrypted FedAvg (:class:`cifer_flwr.strategies.FedAvg`); the proximal
    term is applied by the clients, which receive ``proximal-mu`` in their config exactly as
    with Flower's FedProx.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, masking
        As in :class:`cifer_flwr.strategies.FedAvg`.
    proximal_mu : float (default: 0.0)
        Weight of the proximal term, sent to clients as ``proximal-mu``.
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, \
min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key, \
train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in Flower's FedProx.

    """

    def __init__(
        self,
        *,
        public_key: str | os.PathLike[str] | crypto.AnyKey,
        save_path: str | os.PathLike[str] | None = None,
        examples_per_client: float = 1000.0,
        min_replies: int = 2,
        checkpoint_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
        masking: bool = False,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        proximal_mu: float = 0.0,
    ) -> None:
        FlwrFedProx.__init__(
            self,
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            proximal_mu=proximal_mu,
        )
        self._init_encryption(
            public_key,
            save_path,
            examples_per_client,
            min_replies=min_replies,
            checkpoint_path=checkpoint_path,
            resume=resume,
            masking=masking,
        )

    def summary(self) -> None:
        """Log the strategy's configuration, encryption included."""
        self._summary_encryption()
        FlwrFedProx.summary(self)
