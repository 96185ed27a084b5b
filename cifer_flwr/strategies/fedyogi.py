"""Encrypted FedYogi with the deferred key-holder step."""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi as FlwrFedYogi

from cifer_flwr.strategies._fedopt import EncryptedFedOptBase

__all__ = ["FedYogi"]


class FedYogi(EncryptedFedOptBase, FlwrFedYogi):
    """FedYogi with the model and optimizer state kept encrypted on the server.

    Square roots and divisions cannot run on ciphertexts, so the server keeps
    ``(x, m, v)`` encrypted and sums the clients' encrypted models; the sampled key holders
    apply Flower's exact FedYogi step after decrypting (docs/design.md §4.3). Two clients
    return the refreshed encrypted state, every client a digest of it; the server keeps the
    replies whose digest a strict majority holds and takes the state from an asked client
    among them, so a round survives the loss of either asked client. Decrypted models equal
    Flower's plaintext FedYogi round by round.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, \
masking, fold
        As in :class:`cifer_flwr.strategies.FedAvg`.
    **flower_kwargs
        Forwarded to Flower's FedYogi with its defaults: ``fraction_train``,
        ``fraction_evaluate``, ``min_train_nodes``, ``min_evaluate_nodes``,
        ``min_available_nodes``, ``weighted_by_key``, ``arrayrecord_key``,
        ``configrecord_key``, ``train_metrics_aggr_fn``, ``evaluate_metrics_aggr_fn``,
        ``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``.

    """

    _opt_kind = "yogi"
