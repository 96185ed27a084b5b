"""Encrypted FedAdagrad with the deferred key-holder step."""

from __future__ import annotations

import os
from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad as FlwrFedAdagrad

from cifer_flwr import crypto
from cifer_flwr.strategies._base import EncryptedFedOptBase

__all__ = ["FedAdagrad"]


class FedAdagrad(EncryptedFedOptBase, FlwrFedAdagrad):
    """FedAdagrad with the model and optimizer state kept encrypted on the server.

    Square roots and divisions cannot run on ciphertexts, so the server keeps
    ``(x, m, v)`` encrypted and sums the clients' encrypted models; the sampled key holders
    apply Flower's exact FedAdagrad step after decrypting (docs/design.md §4.3). Two clients
    return the refreshed encrypted state, every client a digest of it; the server keeps the
    replies whose digest a strict majority holds and takes the state from an asked client
    among them, so a round survives the loss of either asked client. Decrypted models equal
    Flower's plaintext FedAdagrad round by round.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, masking
        As in :class:`cifer_flwr.strategies.FedAvg`.
    eta, eta_l, tau
        As in Flower's FedAdagrad.
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, \
min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key, \
train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in Flower's FedAdagrad.

    """

    _opt_kind = "adagrad"

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
        eta: float = 1e-1,
        eta_l: float = 1e-1,
        tau: float = 1e-3,
    ) -> None:
        FlwrFedAdagrad.__init__(
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
            eta=eta,
            eta_l=eta_l,
            tau=tau,
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
        FlwrFedAdagrad.summary(self)
