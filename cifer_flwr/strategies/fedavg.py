"""Encrypted FedAvg."""

from __future__ import annotations

from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = ["FedAvg"]


class FedAvg(EncryptedFedAvgBase):
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
    fold : {"auto", "in-process", "workers"} (default: "auto")
        Where the replies' ciphertexts are validated and added (docs/design.md §6.1):
        ``"auto"`` uses the crypto worker processes for a round of at least
        ``crypto.workers.PARALLEL_MIN_CHUNKS`` (1024) ciphertexts when two or more workers
        are available (``$CIFER_WORKERS``, else the CPUs), in-process otherwise;
        ``"in-process"`` never starts workers; ``"workers"`` always uses them (CKKS and
        ``packed`` keys, two or more workers).
    **flower_kwargs
        Forwarded to Flower's FedAvg with its defaults: ``fraction_train``,
        ``fraction_evaluate``, ``min_train_nodes``, ``min_evaluate_nodes``,
        ``min_available_nodes``, ``weighted_by_key``, ``arrayrecord_key``,
        ``configrecord_key``, ``train_metrics_aggr_fn``, ``evaluate_metrics_aggr_fn``.

    """
