"""Encrypted FedAvg."""

from __future__ import annotations

import os
from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg

from cifer_flwr import crypto
from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = ["FedAvg"]


class FedAvg(EncryptedFedAvgBase, FlwrFedAvg):
    """Federated Averaging on CKKS ciphertexts.

    Same arguments as :class:`flwr.serverapp.strategy.FedAvg`, plus the encryption ones.
    Clients (with :func:`cifer_flwr.mods.ckks_mod`) encrypt ``(n_i / B) * w_i``; the server
    only adds ciphertexts; the key holders divide by the total weight. Malformed, oversized,
    replayed or duplicated replies and hostile metrics are excluded with a reason
    (``excluded[round]``) and the round goes on with the others.

    Parameters
    ----------
    public_key : str, path or Key
        Public key file (``keys/NAME/public.key``). A file holding a secret key is refused.
    save_path : str or path, optional
        Write the encrypted global model there after every round (atomically), in the
        container ``cifer securetrain decrypt-model`` reads.
    examples_per_client : float (default: 1000)
        First guess of the mean example count, used for the public weight divisor of round 1;
        later rounds use the counts the clients report.
    min_replies : int (default: 2)
        Fewest valid replies a round aggregates; with fewer, the round releases nothing
        (an aggregate of one update is that update). Must be >= 2.
    checkpoint_path : str or path, optional
        Write a checkpoint there after every round (atomically): the encrypted global model,
        the round counter, exclusions, statistics, the replay memory and the metrics so far.
    resume : bool (default: False)
        Continue from the checkpoint at ``checkpoint_path`` when there is one (from the round
        after it; ``initial_arrays`` is then ignored). A checkpoint of another key, strategy
        or optimizer is refused.
    masking : bool (default: False)
        Secure aggregation inside the encrypted sums (docs/design.md §4.9): each client adds
        pairwise and self masks to its quantized update, so a single reply decrypts to
        uniform noise and only the sum of at least ``max(3, min_replies)`` clients can be
        unmasked. Needs preset ``packed``; anything else is refused here.
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, \
min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key, \
train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in Flower's FedAvg.

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
    ) -> None:
        FlwrFedAvg.__init__(
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
        FlwrFedAvg.summary(self)
