"""Encrypted FedAvgM with the deferred key-holder step (worked example of an extension).

This file is the reference for writing your own encrypted strategy: subclass Flower's class
and one of the public base classes (:class:`~cifer_flwr.strategies.EncryptedFedAvgBase`,
:class:`~cifer_flwr.strategies.EncryptedFedOptBase`), which take the encryption arguments and
forward Flower's (``**flower_kwargs``), and describe the update as a public
:class:`~cifer_flwr.protocol.OptimizerSpec` the key holders apply (docs/design.md §4.3.1).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM as FlwrFedAvgM

from cifer_flwr import protocol
from cifer_flwr.strategies._fedopt import EncryptedFedOptBase

__all__ = ["FedAvgM"]


class FedAvgM(EncryptedFedOptBase, FlwrFedAvgM):
    """FedAvgM with the model and the server momentum kept encrypted on the server.

    Flower's FedAvgM keeps the previous model and a momentum buffer and, after averaging,
    steps ``m = server_momentum * m + (x - mean)``, ``x = x - server_learning_rate * m``.
    The server cannot decrypt ``x`` or ``m``, so, as for FedYogi (docs/design.md §4.3.1), it
    keeps ``(x, m)`` encrypted together with the pending encrypted aggregate, and the
    sampled key holders apply Flower's exact step (:func:`cifer_flwr.protocol.avgm_step`)
    after decrypting, train from the new ``x`` and (two of them) return the refreshed
    encrypted ``(x, m)``. Decrypted models equal Flower's plaintext FedAvgM round by round.

    The server step travels as ``OptimizerSpec(kind="avgm", eta=server_learning_rate,
    beta_1=server_momentum, beta_2=0.0, tau=1.0)`` (``beta_2`` and ``tau`` unused).

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, \
masking, fold
        As in :class:`cifer_flwr.strategies.FedAvg`.
    **flower_kwargs
        Forwarded to Flower's FedAvgM with its defaults: ``fraction_train``,
        ``fraction_evaluate``, ``min_train_nodes``, ``min_evaluate_nodes``,
        ``min_available_nodes``, ``weighted_by_key``, ``arrayrecord_key``,
        ``configrecord_key``, ``train_metrics_aggr_fn``, ``evaluate_metrics_aggr_fn``,
        ``server_learning_rate`` (1.0; finite and > 0), ``server_momentum`` (0.0; in
        [0, 1)).

    Raises
    ------
    ConfigError
        For a server learning rate or momentum out of range.

    """

    _opt_kind = "avgm"

    @property
    def optimizer(self) -> protocol.OptimizerSpec:
        """The public FedAvgM step key holders apply (``kind="avgm"``)."""
        return protocol.OptimizerSpec(
            "avgm",
            float(self.server_learning_rate),
            float(self.server_momentum),
            protocol.AVGM_BETA_2,
            protocol.AVGM_TAU,
        )

    def _state_groups(self) -> tuple[int, ...]:
        """The state holds ``x`` (initially) or ``x, m``; FedAvgM has no ``v``."""
        return (1, 2)
