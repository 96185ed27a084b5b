"""The base of the encrypted strategies: Flower's FedAvg on ciphertexts (§3.2).

:class:`EncryptedFedAvgBase` subclasses Flower's ``FedAvg`` and replaces every code path
that would touch plaintext (``Array.numpy()``); sampling, metrics, messages and the loop
(``Strategy.start``) are Flower's.

Rounds are streamed (docs/design.md §6): replies are pulled as they arrive
(:class:`~cifer_flwr.strategies._pull.StreamingGrid`) and each valid model is added to a
running sum and dropped, so the server's memory does not grow with the cohort.

Robustness (docs/design.md §6): one client reply never stops a round. Every reply goes
through, in this order,

1. Flower's error filter; a second reply of a node, or one from a node that was not sampled;
2. its metrics (:func:`~cifer_flwr.strategies._replies.check_metrics`) and the ``cifer``
   ConfigRecord the client mod adds;
3. its size: a reply larger than the parts the server expects from that node can take
   (chunks x :func:`cifer_flwr.crypto.max_ciphertext_bytes` + a header allowance per part)
   is refused *before* parsing;
4. the replay memory: a reply repeating any ciphertext chunk already received or sent (in
   this round or an earlier one, the global model included) is refused;
5. parsing (the crypto layer validates every ciphertext), the exact set of parts, layout,
   count and weight.

A reply failing any step is excluded with its reason in ``excluded[round]`` (the
results file reads it) and a log line; any other exception is caught per reply, logged at
error level and excluded as ``internal error: ...``. Rounds with fewer than ``min_replies``
valid replies release nothing. After every round an atomic checkpoint lets ``start`` resume.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg
from flwr.serverapp.strategy import Result

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import PART_MODEL, REPLY_RECORD
from cifer_flwr.exceptions import ConfigError, UnsupportedOperationError
from cifer_flwr.strategies._checkpoint import RunCheckpoints
from cifer_flwr.strategies._fold import Accepted, FoldMode, FoldPolicy, Parts
from cifer_flwr.strategies._ledger import RunLedger
from cifer_flwr.strategies._masking import RoundMasking, check_masking_key
from cifer_flwr.strategies._memory import release_large_buffers
from cifer_flwr.strategies._pull import StreamingGrid, pull_batch
from cifer_flwr.strategies._release import GlobalModel
from cifer_flwr.strategies._replies import REPLY_CONFIG_BYTES
from cifer_flwr.strategies._resume import begin_run, checkpoint_of
from cifer_flwr.strategies._rounds import (
    cifer_metrics,
    configure_train_messages,
    log_encryption_summary,
    train_round,
)
from cifer_flwr.strategies._screen import ReplyScreen

__all__ = [
    "Accepted",
    "EncryptedFedAvgBase",
    "Parts",
    "load_server_key",
]

log = logging.getLogger("cifer_flwr.strategies")


def load_server_key(public_key: str | os.PathLike[str] | crypto.AnyKey) -> crypto.AnyKey:
    """Load the server's key; anything that holds a secret key is refused.

    Raises
    ------
    KeyTypeError
        When the file or object contains a secret key.

    """
    if isinstance(public_key, crypto.AnyKey):
        public_key.require_public("a strategy (server side)")
        return public_key
    return crypto.load_public_key(public_key, holder="a strategy (server side)")


class EncryptedFedAvgBase(FlwrFedAvg):
    """Base class of an encrypted strategy: Flower's FedAvg on ciphertexts.

    The extension point for your own encrypted strategy (docs/design.md §3): subclass it,
    alone or before the Flower strategy it encrypts (every Flower strategy of the FedAvg
    family); its ``__init__`` takes the encryption arguments and forwards every other
    keyword to Flower's::

        class MyStrategy(EncryptedFedAvgBase, flwr.serverapp.strategy.FedProx):
            \"\"\"Encrypted FedProx under another name.\"\"\"

    The federated loop is Flower's ``Strategy.start``, given a
    :class:`~cifer_flwr.strategies._pull.StreamingGrid` so that replies are folded as they
    arrive; sampling, messages and metric aggregation stay Flower's. The class holds one
    collaborator per job: :class:`~._screen.ReplyScreen` (every check a reply passes), a
    :class:`~._fold.FoldPolicy` (where the sums run), :class:`~._ledger.RunLedger`
    (exclusions, statistics, the ``Result`` so far), :class:`~._release.GlobalModel`,
    :class:`~._checkpoint.RunCheckpoints` with :mod:`~._resume` (what a checkpoint holds)
    and :class:`~._masking.RoundMasking`. The hooks a subclass may override
    (``_encrypt_initial``, ``_to_parts``, ``_model_layout``, ``_extra_config``,
    ``_parse_reply``, ``_select_replies``, ``_fold_key``, ``_keeps_models``,
    ``_mask_groups``, ``_next_global``, ``_checkpoint_extra`` / ``_restore_extra``,
    ``_optimizer_json``, ``_final_result``) are listed with their contracts in
    docs/design.md §3.2; ``fedavgm.py`` is a complete worked example. Everything a hook
    raises other than a ``CiferError`` is caught per reply (or per round) and logged as an
    internal error: a bug in a hook never stops the run.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, \
masking, fold
        See :class:`cifer_flwr.strategies.FedAvg`.
    **flower_kwargs
        Forwarded to the Flower strategy next in the MRO (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ``eta``, ...), with Flower's defaults.

    Raises
    ------
    ConfigError
        For an out-of-range setting (the optimizer's included).
    MaskingError
        For ``masking=True`` with a key other than ``packed``.
    KeyTypeError
        When ``public_key`` holds a secret key.

    """

    #: ConfigRecords a reply may carry, with the most bytes each may take; any other is
    #: dropped before the reply is kept (docs/design.md §6). A subclass whose client side
    #: adds another record extends this mapping.
    reply_config_records: Mapping[str, int] = {REPLY_RECORD: REPLY_CONFIG_BYTES}

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
        fold: FoldMode = "auto",
        **flower_kwargs: Any,
    ) -> None:
        super().__init__(**flower_kwargs)  # the Flower strategy next in the MRO
        optimizer = self._optimizer_json()
        if optimizer is not None:  # refused here as the key holders would refuse it
            protocol.OptimizerSpec.from_dict(optimizer)
        self.key = load_server_key(public_key)
        release_large_buffers()  # freed ciphertext buffers go back to the OS (§6, memory)
        self.save_path = Path(save_path) if save_path is not None else None
        #: the released global model, the one serialized copy kept (docs/design.md §6.2)
        self.global_model = GlobalModel(self.save_path)
        if not examples_per_client > 0:
            raise ConfigError(f"examples_per_client must be > 0, got {examples_per_client}.")
        if isinstance(min_replies, bool) or not isinstance(min_replies, int) or min_replies < 2:
            raise ConfigError(
                f"min_replies must be an integer >= 2, got {min_replies!r}: an aggregate of "
                "one update is that update, which every key holder could decrypt."
            )
        if resume and checkpoint_path is None:
            raise ConfigError(
                "resume=True needs checkpoint_path (the file written after every round); "
                "pass checkpoint_path=... or drop resume."
            )
        self.examples_per_client = float(examples_per_client)
        self.min_replies = min_replies
        #: the run's checkpoint file, resume flag and MAC key
        self.checkpoints = RunCheckpoints(
            Path(checkpoint_path) if checkpoint_path is not None else None, bool(resume)
        )
        self.masking = bool(masking)
        if self.masking:
            check_masking_key(self.key)
        self._masking = RoundMasking(min_cohort=max(3, min_replies)) if self.masking else None
        self.fold_policy = FoldPolicy(fold)
        self.fold_policy.check(self.key)
        #: the reply screening (docs/design.md §6): what each node was sent, replay memory
        self.screen = ReplyScreen(
            self.key, self.arrayrecord_key, self.weighted_by_key, self.reply_config_records
        )
        #: exclusions, round statistics and the ``Result`` so far
        self.ledger = RunLedger()
        self._reset_round_memory()

    def summary(self) -> None:
        """Log the strategy's configuration, encryption included."""
        self._summary_encryption()
        super().summary()

    def _summary_encryption(self) -> None:
        log_encryption_summary(self)

    def _reset_round_memory(self) -> None:
        """Forget what a previous run of this object left (subclasses extend it)."""
        self.screen.reset()
        self.global_model.clear()
        self._defer = False

    # ------------------------------------------------------------------ state
    @property
    def excluded(self) -> dict[int, list[tuple[int, str]]]:
        """Per round, the ``(node, reason)`` of every excluded reply."""
        return self.ledger.excluded

    @property
    def round_stats(self) -> dict[int, dict[str, float]]:
        """Per round, its figures (bytes, seconds, weight divisor, ...)."""
        return self.ledger.round_stats

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint written after every round (``None``: off)."""
        return self.checkpoints.path

    @property
    def resume(self) -> bool:
        """Whether ``start`` continues from the checkpoint."""
        return self.checkpoints.resume

    @property
    def layout(self) -> crypto.Layout | None:
        """The global model's layout (``None`` before ``start``)."""
        return self.screen.layout

    @layout.setter
    def layout(self, layout: crypto.Layout) -> None:
        self.screen.set_layout(layout)

    # ------------------------------------------------------------------ hooks
    def _encrypt_initial(self, arrays: Mapping[str, Any]) -> Parts:
        """Encrypt the plaintext initial model into the first global parts."""
        weight = protocol.exact_weight(arrays, self.key.params)  # quantized: fit the range
        return {PART_MODEL: crypto.encrypt(arrays, self.key, weight=weight)}

    def _model_layout(self, parts: Mapping[str, crypto.AnyEncrypted]) -> crypto.Layout:
        """Layout of the model inside the global parts (replies must match it)."""
        return parts[PART_MODEL].layout

    def _to_parts(self, arrays: ArrayRecord) -> Parts:
        """Global parts from ``initial_arrays`` (encrypted record or plaintext)."""
        if crypto.is_encrypted_record(arrays):
            return crypto.bundle_from_record(arrays, self.key)
        plain = {name: arr.numpy() for name, arr in arrays.items()}
        return self._encrypt_initial(plain)

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        """Per-message config entries (subclasses add theirs)."""
        return {}

    def _parse_reply(self, msg: Message, server_round: int) -> Parts:
        """Parse one screened reply into its parts, checking part set, counts, layout, weight.

        Raises
        ------
        CiferError
            Any subclass of it excludes the reply with its message as the reason.

        """
        divisor = self.ledger.round_stats[server_round]["weight-divisor"]
        return self.screen.parse(msg, divisor, defer=self._defer)

    def _fold_key(self, msg: Message) -> Hashable:
        """Replies that may only be added together share a key (FedOpt: the state digest)."""
        return None

    def _keeps_models(self, server_round: int) -> bool:
        """Keep every accepted reply's model part (for a ``_next_global`` that needs them).

        ``False`` (the default) folds each model into its group's running sum and drops
        it, so memory does not grow with the cohort (docs/design.md §6).
        """
        return False

    def _mask_groups(self, server_round: int, nodes: list[int]) -> list[list[int]]:
        """Masking groups fixed before sharing (docs/design.md §4.9).

        Default: none (one cohort). SecureFed: its candidate groups, so that each group's
        sum can be unmasked and released on its own.
        """
        return []

    def _select_replies(self, server_round: int, accepted: Accepted) -> Accepted:
        """Hook between per-reply checks and aggregation (FedOpt: the digest majority).

        The messages no longer hold their ``ArrayRecord`` (it was folded into the running
        sum) and the parts hold the model only when :meth:`_keeps_models` says so.
        """
        return accepted

    def _next_global(
        self,
        server_round: int,
        accepted: Accepted,
        aggregate: crypto.AnyEncrypted,
    ) -> Parts | None:
        """Next global parts from the encrypted weighted sum of the accepted models.

        ``aggregate`` carries the round in its metadata; return ``None`` to release
        nothing this round (the previous global model stays).
        """
        return {PART_MODEL: aggregate}

    def _optimizer_json(self) -> dict[str, Any] | None:
        """Settings a checkpoint must match to be resumed (``None``: nothing to match)."""
        return None

    def _checkpoint_extra(self) -> dict[str, Any]:
        """JSON state a subclass needs to resume (stored under ``extra``)."""
        return {}

    def _restore_extra(self, extra: Mapping[str, Any]) -> None:
        """Inverse of :meth:`_checkpoint_extra`."""

    def _final_result(self, result: Result) -> Result:
        """The run's ``Result`` before :meth:`start` returns it (here unchanged)."""
        return result

    # ------------------------------------------------------------------ Flower API
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run Flower's federated loop on ciphertexts, checkpointing after every round.

        ``initial_arrays`` may be plaintext (encrypted here with the public key before
        round 1) or an encrypted record. The returned ``Result.arrays`` is encrypted. With
        ``resume=True`` and a checkpoint at ``checkpoint_path``, the run continues from the
        round after the checkpoint's (``initial_arrays`` is then ignored; Flower's loop
        passes the rounds done before, which do nothing) and the returned ``Result``
        covers the restored rounds and the new ones.

        Raises
        ------
        UnsupportedOperationError
            When ``evaluate_fn`` is given: server-side evaluation would need the plaintext
            model. Use federated evaluation (clients decrypt) instead.
        KeyMismatchError, ConfigError, CiphertextFormatError
            When resuming from a checkpoint of another key, another strategy or optimizer,
            or a corrupted one.

        """
        if evaluate_fn is not None:
            raise UnsupportedOperationError(
                "server-side evaluate_fn needs the plaintext global model, which the server "
                "never holds under encryption; drop evaluate_fn and rely on federated "
                "evaluation (fraction_evaluate > 0), where the clients decrypt."
            )
        arrays = begin_run(self, initial_arrays, num_rounds, timeout)
        streaming = StreamingGrid(grid, self._pull_batch)
        result = super().start(
            streaming, arrays, num_rounds, timeout, train_config, evaluate_config
        )
        self._write_checkpoint()  # the last round's
        return self._final_result(self.ledger.merged(result))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as Flower does and add the encryption settings to each config.

        The chunks of the global model sent are remembered, so that a client echoing them
        back is refused. With masking, the round's setup stages run here (§4.9). The
        previous round's checkpoint is written first (the round ended when Flower's loop
        called this method).
        """
        self._write_checkpoint()
        if self.ledger.restored(server_round):
            log.info(
                "round %d: done before the restart (restored from the checkpoint)", server_round
            )
            return []
        messages = configure_train_messages(self, server_round, arrays, config, grid)
        if self._masking is not None and messages:  # advertise + share first (§4.9)
            messages = self._masking.setup(
                grid,
                server_round,
                messages,
                self.ledger.timeout,
                self.ledger.exclude,
                partition=functools.partial(self._mask_groups, server_round),
            )
        return messages

    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The Flower strategy's sampling (FedOpt and SecureFed narrow it)."""
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's evaluate messages; each node's is remembered to check its reply (§6)."""
        if self.ledger.restored(server_round):
            return []
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self.screen.eval_msgs = {int(m.metadata.dst_node_id): m for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the valid encrypted updates; exclude every other reply with a reason.

        ``replies`` is consumed one reply at a time: each valid model is added to a
        running sum and its ciphertexts dropped (``start`` passes an iterator that pulls
        replies as they arrive). Releases nothing (and says so in the metrics
        ``cifer-released``) when fewer than ``min_replies`` valid replies remain.
        """
        if self.ledger.restored(server_round):
            return None, None
        stats = self.ledger.round_stats.setdefault(server_round, {})
        try:
            arrays, metrics = train_round(self, server_round, replies, stats)
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: aggregation failed (%s: %s); nothing is released this round.",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            stats["released"] = 0.0
            arrays, metrics = None, cifer_metrics(self, server_round, False, 0)
        self.ledger.trained(server_round, arrays, metrics)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the evaluate metrics of the replies that pass the metric checks.

        Hostile values (lists, NaN, Inf, huge, missing example counts, other metric
        names) are excluded (reason prefixed ``evaluate reply:``) before
        ``evaluate_metrics_aggr_fn`` sees them. The last call of a round in Flower's loop:
        the round's checkpoint is written after it returns, when the next round starts
        (:meth:`configure_train`) or the run ends.
        """
        if self.ledger.restored(server_round):
            return None
        metrics = None
        try:
            good = self.screen.evaluate_replies(
                replies,
                server_round,
                functools.partial(self.ledger.exclude, server_round),
                functools.partial(self.ledger.internal_error, server_round),
            )
            if good:
                metrics = self.evaluate_metrics_aggr_fn(
                    [m.content for m in good], self.weighted_by_key
                )
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: evaluate aggregation failed (%s: %s); no evaluate metrics this round.",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        self.ledger.evaluated(server_round, metrics)
        return metrics

    def _write_checkpoint(self) -> None:
        """Write the checkpoint of the last finished round, if not written yet."""
        done = self.ledger.finished()
        if done is not None:
            self.checkpoints.write(done, functools.partial(checkpoint_of, self, done))

    # ------------------------------------------------------------------ sizes
    def _pull_batch(self) -> int:
        """Reply ids per pull in a train round (:func:`~._pull.pull_batch`)."""
        return pull_batch(self.key.params, self.layout)

    def _round_chunks(self) -> int:
        """Ciphertexts a round sums (the model's chunks times the cohort)."""
        if self.layout is None:
            return 0
        return self.layout.num_chunks(self.key.params.slots) * max(1, len(self.screen.sent_config))
