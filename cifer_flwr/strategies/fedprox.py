"""Encrypted FedProx."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx as FlwrFedProx

from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = ["FedProx"]


class FedProx(EncryptedFedAvgBase, FlwrFedProx):
    """FedProx on CKKS ciphertexts.

    The server side is encrypted FedAvg (:class:`cifer_flwr.strategies.FedAvg`); the proximal
    term is applied by the clients, which receive ``proximal-mu`` in their config exactly as
    with Flower's FedProx.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, \
masking, fold
        As in :class:`cifer_flwr.strategies.FedAvg`.
    **flower_kwargs
        Forwarded to Flower's FedProx with its defaults: ``fraction_train``,
        ``fraction_evaluate``, ``min_train_nodes``, ``min_evaluate_nodes``,
        ``min_available_nodes``, ``weighted_by_key``, ``arrayrecord_key``,
        ``configrecord_key``, ``train_metrics_aggr_fn``, ``evaluate_metrics_aggr_fn``,
        ``proximal_mu`` (0.0; sent to clients as ``proximal-mu``).

    """
