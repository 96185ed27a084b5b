"""Server-side machinery shared by the encrypted strategies (one class per public file).

The mixins sit before Flower's class in the MRO, so every Flower code path that would touch
plaintext (``Array.numpy()``) is replaced; sampling, metrics and messages are Flower's.

Rounds are streamed (docs/design.md §6): replies are pulled as they arrive
(:func:`stream_replies`) and each valid model is added to a running sum and dropped, so the
server's memory does not grow with the cohort.

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

A reply failing any step is excluded with its reason in ``self.excluded[round]`` (the
results file reads it) and a log line; any other exception is caught per reply, logged at
error level and excluded as ``internal error: ...``. Rounds with fewer than ``min_replies``
valid replies release nothing. After every round an atomic checkpoint lets ``start`` resume.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import replace
from logging import INFO
from pathlib import Path
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_COHORT,
    CFG_RETURN_STATE,
    CFG_WEIGHT_DIVISOR,
    CFG_WEIGHTED_BY,
    META_STATE_ROUND,
    METRIC_AGGREGATE_S,
    METRIC_CLIPPED,
    METRIC_EXCLUDED,
    METRIC_MASKED,
    METRIC_RELEASED,
    METRIC_VALID_REPLIES,
    PART_MODEL,
    PART_STATE,
    REPLY_RECORD,
    REPLY_STATE_CHECK,
    REPLY_STATE_DIGEST,
)
from cifer_flwr.crypto import records as crypto_records
from cifer_flwr.crypto.container import write_file_atomic
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
    UnsupportedOperationError,
    WorkerError,
)
from cifer_flwr.strategies._checkpoint import (
    Checkpoint,
    RunSettings,
    new_checkpoint_key,
    read_checkpoint,
    remove_temp_files,
    restore_state,
    result_to_json,
    write_checkpoint,
)
from cifer_flwr.strategies._fold import Accepted, FoldMode, FoldPolicy, Parts, RoundFold
from cifer_flwr.strategies._masking import RoundMasking, check_masking_key
from cifer_flwr.strategies._memory import release_large_buffers
from cifer_flwr.strategies._pull import pull_batch, stream_replies
from cifer_flwr.strategies._replies import (
    REPLY_CONFIG_BYTES,
    DigestMemory,
    ReplyError,
    check_metrics,
    describe_schema,
    metric_schema,
)
from cifer_flwr.strategies._screen import ReplyScreen, metadata_problem

__all__ = [
    "STATE_HOLDERS",
    "Accepted",
    "EncryptedFedAvgBase",
    "EncryptedFedOptBase",
    "Parts",
    "load_server_key",
]

log = logging.getLogger("cifer_flwr.strategies")
#: Flower's own logger (its round banners go there, as Flower's strategies' do)
flwr_log = logging.getLogger("flwr").log
_T = TypeVar("_T")

#: FedOpt: how many sampled clients are asked to return the refreshed encrypted state (the
#: first ones in sampling order), so that a round survives the loss of any one of them.
STATE_HOLDERS = 2
#: Longest exclusion reason kept (in the log and the results file).
_MAX_REASON = 500


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


def _node(msg: Message) -> int:
    return int(msg.metadata.src_node_id)


class EncryptedFedAvgBase:
    """Base class of an encrypted strategy: FedAvg round logic on ciphertexts.

    This is the extension point for your own encrypted strategy (docs/design.md §4). The
    server only adds ciphertexts; anything non-linear runs on the key holders (the
    clients) through the deferred step of :class:`EncryptedFedOptBase`. A strategy is one
    class that lists this mixin (or :class:`EncryptedFedOptBase`) *before* the Flower
    strategy it encrypts, so that every Flower code path touching plaintext is replaced::

        class MyStrategy(EncryptedFedAvgBase, flwr.serverapp.strategy.FedAvg):
            def __init__(self, *, public_key, **flower_kwargs):
                flwr.serverapp.strategy.FedAvg.__init__(self, **flower_kwargs)
                self._init_encryption(public_key, None, 1000.0)

            def summary(self) -> None:
                self._summary_encryption()
                flwr.serverapp.strategy.FedAvg.summary(self)

    ``cifer_flwr/strategies/fedavgm.py`` is a complete worked example (encrypted FedAvgM).
    Sampling, messages and metric aggregation stay Flower's; ``start``,
    ``configure_train`` and ``aggregate_train`` are this class's (replay, size and layout
    checks, ``min_replies``, checkpoints). A subclass may override these hooks (all typed;
    ``Parts`` is ``dict[str, EncryptedArrays]`` keyed by part name such as ``"model"`` or
    ``"state"``, ``Accepted`` is ``list[tuple[Message, Parts]]``):

    ``_encrypt_initial(arrays) -> Parts``
        Encrypt the plaintext initial model (default: ``{"model": encrypt(arrays)}``).
    ``_to_parts(arrays: ArrayRecord) -> Parts``
        Turn ``initial_arrays`` (plaintext or an encrypted record) into parts.
    ``_model_layout(parts) -> Layout``
        The model's layout inside the global parts (the layout replies must match).
    ``_extra_config(index, node_id, cohort, server_round) -> dict``
        Extra ConfigRecord entries for the ``index``-th sampled node (the client mod and
        your ClientApp read them); default ``{}``.
    ``_expected_parts(server_round, node_id) -> dict[str, int]``
        The exact part names that node's reply must hold, each with the most chunks it may
        have (replies are size-checked against it before parsing).
    ``_parse_reply(msg, server_round) -> Parts``
        Parse and validate one reply; call ``super()._parse_reply`` first and raise a
        :class:`~cifer_flwr.exceptions.CiferError` to exclude the reply with its message.
    ``_select_replies(server_round, accepted) -> Accepted``
        Drop replies after the per-reply checks (e.g. a majority vote); excluded ones
        should be recorded with ``self._exclude(server_round, node, reason)``. Rounds are
        streamed (docs/design.md §6): by then each model was added to the running sum of
        its group and dropped, so keep or drop whole groups (see ``_fold_key``).
    ``_fold_key(msg) -> Hashable``
        Replies with different keys are summed apart (default ``None``; FedOpt: the
        state digest its majority vote selects on).
    ``_keeps_models(server_round) -> bool``
        ``True`` keeps every accepted reply's model part for ``_select_replies`` and
        ``_next_global`` (memory then grows with the cohort); default ``False``.
    ``_next_global(server_round, accepted, aggregate) -> Parts | None``
        The next global parts from the encrypted weighted sum ``aggregate`` (default
        ``{"model": aggregate}``); ``None`` releases nothing this round.
    ``_checkpoint_extra() -> dict`` / ``_restore_extra(extra) -> None``
        JSON state your subclass needs to resume from a checkpoint, and its inverse.
    ``_optimizer_json() -> dict | None``
        Settings a checkpoint must match to be resumed (default ``None``).

    Everything a hook raises other than a ``CiferError`` is caught per reply (or per
    round) and logged as an internal error: a bug in a hook never stops the run.
    """

    # provided by Flower's FedAvg
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str
    train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
    evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
    _check_and_log_replies: Callable[..., tuple[list[Message], list[Message]]]
    summary: Callable[[], None]
    #: ConfigRecords a reply may carry, with the most bytes each may take; any other is
    #: dropped before the reply is kept (docs/design.md §6). A subclass whose client side
    #: adds another record extends this mapping.
    reply_config_records: Mapping[str, int] = {REPLY_RECORD: REPLY_CONFIG_BYTES}

    def _init_encryption(
        self,
        public_key: str | os.PathLike[str] | crypto.AnyKey,
        save_path: str | os.PathLike[str] | None,
        examples_per_client: float,
        *,
        min_replies: int = 2,
        checkpoint_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
        masking: bool = False,
        fold: FoldMode = "auto",
    ) -> None:
        """Set up the encryption; call it from ``__init__`` after Flower's ``__init__``.

        Parameters
        ----------
        public_key : str, path or Key
            The CKKS public key (a file holding a secret key is refused).
        save_path : str or path, optional
            Where the encrypted global model is written after every released round.
        examples_per_client : float
            First-round guess of the examples per client (scales the weights sent).
        min_replies : int
            Fewest valid replies a round needs to release an aggregate (>= 2).
        checkpoint_path : str or path, optional
            Checkpoint written after every round.
        resume : bool
            Continue from ``checkpoint_path`` if it exists.
        masking : bool
            Secure aggregation inside the sums (docs/design.md §4.9): pairwise and self masks
            that only the sum of at least ``max(3, min_replies)`` clients removes. Needs
            preset ``packed``.
        fold : {"auto", "in-process", "workers"}
            Where the replies' ciphertexts are validated and added
            (:data:`~cifer_flwr.strategies._fold.FoldMode`; docs/design.md §6.1).

        Raises
        ------
        ConfigError
            For an out-of-range setting.
        MaskingError
            For ``masking=True`` with a key other than ``packed``.
        KeyTypeError
            When ``public_key`` holds a secret key.

        """
        self.key = load_server_key(public_key)
        release_large_buffers()  # freed ciphertext buffers go back to the OS (§6, memory)
        self.save_path = Path(save_path) if save_path is not None else None
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
        self._min_replies = min_replies
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.resume = bool(resume)
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
        self.excluded: dict[int, list[tuple[int, str]]] = {}
        self.round_stats: dict[int, dict[str, float]] = {}
        self._reset_round_memory()

    def _reset_round_memory(self) -> None:
        self.screen.reset()
        self._global_parts: Parts | None = None
        self._global_arrays: ArrayRecord | None = None
        self._defer = False

    # ------------------------------------------------------------------ helpers
    def _summary_encryption(self) -> None:
        p = self.key.params
        log.info(
            "\t├──> %s encryption: preset %s (%d-bit security), key fingerprint %s",
            p.scheme.upper(),
            p.name,
            p.security_bits,
            self.key.short_fingerprint,
        )
        log.info("\t│\t├── server holds ciphertexts and the public key only")
        log.info(
            "\t│\t├── min_replies %d: rounds with fewer valid replies release nothing",
            self._min_replies,
        )
        log.info("\t│\t├── replayed / duplicated / echoed ciphertexts are refused (SHA-256)")
        if self.masking:
            log.info(
                "\t│\t├── masking on: pairwise + self masks inside the sums; the server and "
                "colluding clients below the threshold see only sums of >= %d clients (§4.9)",
                max(3, self._min_replies),
            )
        log.info(
            "\t│\t└── checkpoint: %s%s",
            self.checkpoint_path or "off",
            " (resume)" if self.resume else "",
        )

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

    def _set_global(self, parts: Parts) -> None:
        """Make ``parts`` the global model (serialized on first use: :meth:`_global_record`)."""
        self._global_parts = parts
        self._global_arrays = None

    def _global_record(self) -> ArrayRecord:
        """The global model as the record sent to clients: the one copy the strategy keeps.

        Built once from the parts given to :meth:`_set_global`, pack by pack; the parts
        (SEAL objects of the size of the model) are then dropped, and saving and
        checkpoints stream from this record (docs/design.md §6, memory).
        """
        if self._global_arrays is None:
            if self._global_parts is None:
                raise ConfigError("no global model yet; call start() first.")
            self._global_arrays = crypto.bundle_to_record(self._global_parts)
            self._global_parts = None
        return self._global_arrays

    def _save(self, parts: Parts, server_round: int) -> None:
        """Write the global model just set with ``_set_global(parts)`` to ``save_path``.

        Streamed from :meth:`_global_record` (the bytes of ``crypto.bundle_to_bytes``).
        """
        if self.save_path is None:
            return
        stream = crypto_records.record_bundle_stream(self._global_record())
        write_file_atomic(self.save_path, stream.pieces())
        log.info("saved encrypted global model of round %d to %s", server_round, self.save_path)

    @property
    def layout(self) -> crypto.Layout | None:
        """The global model's layout (``None`` before ``start``)."""
        return self.screen.layout

    @layout.setter
    def layout(self, layout: crypto.Layout) -> None:
        self.screen.set_layout(layout)

    def _require_layout(self) -> crypto.Layout:
        return self.screen.require_layout()

    def _set_layout(self, layout: crypto.Layout) -> None:
        self.screen.set_layout(layout)

    def _exclude(self, server_round: int, node: int, reason: str) -> None:
        if len(reason) > _MAX_REASON:  # reasons may quote what a client sent
            reason = reason[: _MAX_REASON - 3] + "..."
        log.warning("round %d: excluded node %d: %s", server_round, node, reason)
        self.excluded.setdefault(server_round, []).append((node, reason))

    def _internal_error(self, server_round: int, node: int, exc: Exception) -> None:
        log.error(
            "round %d: internal error while checking node %d's reply (a bug; the reply is "
            "excluded and the round goes on)",
            server_round,
            node,
            exc_info=exc,
        )
        self.excluded.setdefault(server_round, []).append(
            (node, f"internal error: {type(exc).__name__}: {exc}")
        )

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
        """Run the federated loop on ciphertexts, checkpointing after every round.

        ``initial_arrays`` may be plaintext (encrypted here with the public key before
        round 1) or an encrypted record. The returned ``Result.arrays`` is encrypted. With
        ``resume=True`` and a checkpoint at ``checkpoint_path``, the run continues from the
        round after the checkpoint's (``initial_arrays`` is then ignored) and the returned
        ``Result`` covers the restored rounds and the new ones. The loop is Flower's
        ``Strategy.start`` with a first round other than 1.

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
        self.excluded, self.round_stats = {}, {}
        self._reset_round_memory()
        restored = self._prepare_checkpoint(num_rounds)
        if restored is not None:
            parts, result, done = restored
        else:
            parts, result, done = self._to_parts(initial_arrays), Result(), 0
            self._set_layout(self._model_layout(parts))
        self._set_global(parts)
        arrays = self._global_record()  # the one copy of the global model (§6.2)
        del parts, restored

        flwr_log(INFO, "Starting %s strategy:", type(self).__name__)
        log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
        self.summary()
        flwr_log(INFO, "")
        if done:
            flwr_log(INFO, "Resuming after round %d of %d from the checkpoint", done, num_rounds)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        t_start = time.time()
        for current_round in range(done + 1, num_rounds + 1):
            flwr_log(INFO, "")
            flwr_log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
            # Replies are pulled and folded one by one (docs/design.md §6, streamed
            # aggregation): the ServerApp never holds the whole cohort's replies.
            messages = self.configure_train(current_round, arrays, train_config, grid)
            if self._masking is not None:  # advertise + share first (docs/design.md §4.9)
                messages = self._masking.setup(
                    grid,
                    current_round,
                    list(messages),
                    timeout,
                    self._exclude,
                    partition=functools.partial(self._mask_groups, current_round),
                )
            train_replies = self._stream_replies(grid, messages, timeout)
            agg_arrays, agg_train_metrics = self.aggregate_train(current_round, train_replies)
            if agg_arrays is not None:
                result.arrays = agg_arrays
                arrays = agg_arrays
            if agg_train_metrics is not None:
                flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_train_metrics)
                result.train_metrics_clientapp[current_round] = agg_train_metrics
            evaluate_replies = grid.send_and_receive(
                messages=self.configure_evaluate(current_round, arrays, evaluate_config, grid),
                timeout=timeout,
            )
            agg_evaluate_metrics = self.aggregate_evaluate(current_round, evaluate_replies)
            if agg_evaluate_metrics is not None:
                flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_evaluate_metrics)
                result.evaluate_metrics_clientapp[current_round] = agg_evaluate_metrics
            self._write_checkpoint(current_round, num_rounds, result)

        flwr_log(INFO, "")
        flwr_log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
        flwr_log(INFO, "")
        flwr_log(INFO, "Final results:")
        flwr_log(INFO, "")
        for line in io.StringIO(str(result)):
            flwr_log(INFO, "\t%s", line.strip("\n"))
        flwr_log(INFO, "")
        return result

    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc, no-any-return]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as Flower does and add the encryption settings to each config.

        The chunks of the global model sent are remembered, so that a client echoing them
        back is refused.
        """
        config[CFG_WEIGHTED_BY] = self.weighted_by_key
        messages = list(self._base_configure_train(server_round, arrays, config, grid))
        self.screen.open_round(server_round, arrays)
        cohort = len(messages)
        if cohort == 0:
            return []
        if cohort < self._min_replies:
            log.warning(
                "round %d: only %d clients sampled, fewer than min_replies=%d; this round "
                "cannot release an aggregate.",
                server_round,
                cohort,
                self._min_replies,
            )
        divisor = protocol.weight_divisor(cohort, self.examples_per_client)
        out = []
        for index, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            cfg = ConfigRecord(dict(msg.content.config_records[self.configrecord_key]))
            cfg[CFG_WEIGHT_DIVISOR] = divisor
            cfg[CFG_COHORT] = cohort  # packed preset: the sum's headroom (docs/design.md §4.7)
            cfg.update(self._extra_config(index, node, cohort, server_round))
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            sent = Message(
                content=content,
                message_type=msg.metadata.message_type,
                dst_node_id=node,
                group_id=msg.metadata.group_id,
            )
            self.screen.sent(int(node), index, cfg, sent)  # its reply is checked against it
            out.append(sent)
        self.round_stats[server_round] = {
            "bytes-sent": float(arrays.count_bytes() * cohort),
            "weight-divisor": divisor,
        }
        # large rounds: the crypto workers start while the clients train (§6.1)
        self.fold_policy.workers(self.key, self._round_chunks(), self._keeps_models(server_round))
        return out

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's evaluate messages; each node's is remembered to check its reply (§6)."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        self.screen.eval_msgs = {int(m.metadata.dst_node_id): m for m in messages}
        return messages

    # ------------------------------------------------------------------ reply checks
    def _parse_reply(self, msg: Message, server_round: int) -> Parts:
        """Parse one screened reply into its parts, checking part set, counts, layout, weight.

        Raises
        ------
        CiferError
            Any subclass of it excludes the reply with its message as the reason.

        """
        divisor = self.round_stats[server_round]["weight-divisor"]
        return self.screen.parse(msg, divisor, defer=self._defer)

    def _check_reply(self, msg: Message, server_round: int) -> Parts:
        """Every check of one train reply, cheapest first; returns its parsed parts."""
        self.screen.screen(msg, server_round)
        return self._parse_reply(msg, server_round)

    def _consistent_metrics(
        self,
        server_round: int,
        items: list[_T],
        message: Callable[[_T], Message],
        what: str,
    ) -> list[_T]:
        """Keep the replies whose metric names/list lengths are those most replies have.

        Flower aggregates metrics only over replies of one schema (and raises otherwise).
        """
        if not items:
            return items
        schemas = [metric_schema(message(item).content) for item in items]
        counts = Counter(schemas)
        best = max(counts, key=lambda s: (counts[s], -schemas.index(s)))
        kept = []
        for item, schema in zip(items, schemas, strict=True):
            if schema == best:
                kept.append(item)
                continue
            self._exclude(
                server_round,
                _node(message(item)),
                f"{what}its metrics {describe_schema(schema)} differ in names or list "
                f"lengths from those most replies carry {describe_schema(best)}.",
            )
        return kept

    # ------------------------------------------------------------------ streamed rounds
    def _stream_replies(
        self, grid: Grid, messages: Iterable[Message], timeout: float | None
    ) -> Iterator[Message]:
        """Push ``messages`` now; return an iterator pulling the replies as they arrive."""
        return stream_replies(grid, messages, timeout, batch=self._pull_batch())

    def _pull_batch(self) -> int:
        """Reply ids per pull (:func:`~cifer_flwr.strategies._pull.pull_batch`)."""
        return pull_batch(self.key.params, self.layout)

    def _fold_key(self, msg: Message) -> Hashable:
        """Replies that may only be added together share a key (FedOpt: the state digest)."""
        return None

    def _keeps_models(self, server_round: int) -> bool:
        """Keep every accepted reply's model part (for a ``_next_global`` that needs them).

        ``False`` (the default) folds each model into its group's running sum and drops
        it, so memory does not grow with the cohort (docs/design.md §6).
        """
        return False

    def _fold_reply(
        self, server_round: int, fold: RoundFold, tally: dict[str, int], msg: Message
    ) -> None:
        """Check one reply and, if valid, add its model to the running sum of its group."""
        node = _node(msg)
        problem = metadata_problem(msg, self.screen.sent_msgs)
        if problem is not None:
            self._exclude(server_round, node, problem)
            return
        if msg.has_error():
            tally["errors"] += 1
            reason = f"error reply: {msg.error.reason}"[:_MAX_REASON]
            self.excluded.setdefault(server_round, []).append((node, reason))
            return
        tally["received"] += 1
        tally["bytes"] += sum(r.count_bytes() for r in msg.content.array_records.values())
        try:
            parts = self._check_reply(msg, server_round)
            fold.add((metric_schema(msg.content), self._fold_key(msg)), msg, parts)
        except WorkerError:
            raise  # the workers' running sums are lost: the round fails (aggregate_train)
        except Exception as exc:
            self._refuse(server_round, msg, exc)

    def _refuse(self, server_round: int, msg: Message, exc: Exception) -> None:
        """Exclude a reply: its reason for a CiferError, else as an internal error (a bug)."""
        if isinstance(exc, CiferError):
            self._exclude(server_round, _node(msg), str(exc))
        else:  # last line of defence: a bug never stops the round
            self._internal_error(server_round, _node(msg), exc)

    def _round_chunks(self) -> int:
        """Ciphertexts a round sums (the model's chunks times the cohort)."""
        if self.layout is None:
            return 0
        return self.layout.num_chunks(self.key.params.slots) * max(1, len(self.screen.sent_config))

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

    def _cifer_metrics(self, server_round: int, released: bool, valid: int) -> MetricRecord:
        return MetricRecord(
            {
                METRIC_MASKED: int(self.masking),
                METRIC_RELEASED: int(released),
                METRIC_VALID_REPLIES: valid,
                METRIC_EXCLUDED: len(self.excluded.get(server_round, [])),
            }
        )

    def _aggregate_train_metrics(self, server_round: int, accepted: Accepted) -> MetricRecord:
        try:
            return self.train_metrics_aggr_fn(
                [msg.content for msg, _ in accepted], self.weighted_by_key
            )
        except Exception as exc:
            log.error(
                "round %d: train_metrics_aggr_fn failed (%s: %s); the round's client metrics "
                "are left out",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return MetricRecord()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the valid encrypted updates; exclude every other reply with a reason.

        ``replies`` is consumed one reply at a time: each valid model is added to a
        running sum and its ciphertexts dropped (``start`` passes an iterator that pulls
        replies as they arrive). Releases nothing (and says so in the metrics
        ``cifer-released``) when fewer than ``min_replies`` valid replies remain.
        """
        stats = self.round_stats.setdefault(server_round, {})
        try:
            return self._aggregate_train(server_round, replies, stats)
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: aggregation failed (%s: %s); nothing is released this round.",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            stats["released"] = 0.0
            return None, self._cifer_metrics(server_round, False, 0)

    def _aggregate_train(
        self, server_round: int, replies: Iterable[Message], stats: dict[str, float]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        fold = self.fold_policy.fold(
            self.key,
            self._round_chunks(),
            keep_models=self._keeps_models(server_round),
            arrayrecord_key=self.arrayrecord_key,
            reject=functools.partial(self._refuse, server_round),
        )
        tally = {"received": 0, "errors": 0, "bytes": 0}
        self.excluded.setdefault(server_round, [])
        t_start = time.perf_counter()
        self._defer = fold.defer
        try:
            for msg in replies:
                self._fold_reply(server_round, fold, tally, msg)
                del msg  # the running sum holds what counts
            fold.flush()
        finally:
            self._defer = False
        stats["receive-fold-s"] = time.perf_counter() - t_start
        stats["bytes-received"] = float(tally["bytes"])
        flwr_log(
            INFO,
            "aggregate_train: Received %s results and %s failures",
            tally["received"],
            tally["errors"],
        )
        t0 = time.perf_counter()
        accepted = self._consistent_metrics(server_round, fold.members(), lambda item: item[0], "")
        accepted = self._select_replies(server_round, accepted)
        total = None
        if len(accepted) >= self._min_replies:
            total = fold.total(accepted)
        stats["aggregate-s"] = fold.add_s + time.perf_counter() - t0
        stats["valid-replies"] = float(len(accepted))
        del fold
        if total is not None and self._masking is not None:
            # survivors reveal what removes the residual mask (docs/design.md §4.9)
            total = self._masking.unmask(
                server_round, [_node(msg) for msg, _ in accepted], total, self._exclude
            )
            stats.update(self._masking.stats.pop(server_round, {}))
            if total is None:
                stats["released"] = 0.0
                return None, self._cifer_metrics(server_round, False, len(accepted))
        if total is None or len(accepted) < self._min_replies:
            log.warning(
                "round %d: %d valid encrypted updates, fewer than the %d required; "
                "nothing is aggregated or released this round.",
                server_round,
                len(accepted),
                self._min_replies,
            )
            stats["released"] = 0.0
            return None, self._cifer_metrics(server_round, False, len(accepted))
        t0 = time.perf_counter()
        total = crypto.with_meta(total, round=server_round)
        new_parts = self._next_global(server_round, accepted, total)
        stats["aggregate-s"] += time.perf_counter() - t0
        self.examples_per_client = total.weight * stats["weight-divisor"] / len(accepted)
        metrics = self._aggregate_train_metrics(server_round, accepted)
        metrics[METRIC_AGGREGATE_S] = stats["aggregate-s"]
        clipped = [
            float(value)
            for msg, _ in accepted
            for record in msg.content.metric_records.values()
            if isinstance(value := record.get(METRIC_CLIPPED), int | float)
        ]
        if clipped:  # packed: values clipped by the key holders are counted, not averaged
            metrics[METRIC_CLIPPED] = sum(clipped)
            stats["clipped"] = sum(clipped)
        released = new_parts is not None
        metrics.update(self._cifer_metrics(server_round, released, len(accepted)))
        stats["released"] = float(released)
        if new_parts is None:
            return None, metrics
        self._set_global(new_parts)
        self._save(new_parts, server_round)
        return self._global_record(), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the evaluate metrics of the replies that pass the metric checks.

        Hostile values (lists, NaN, Inf, huge, missing example counts, other metric
        names) are excluded (reason prefixed ``evaluate reply:``) before
        ``evaluate_metrics_aggr_fn`` sees them.
        """
        try:
            matching = []
            for msg in replies:
                why = metadata_problem(msg, self.screen.eval_msgs)
                if why is None:
                    matching.append(msg)
                else:
                    self._exclude(server_round, _node(msg), f"evaluate reply: {why}")
            valid, _ = self._check_and_log_replies(matching, is_train=False, validate=False)
            good = []
            for msg in valid:
                try:
                    self.screen.drop_records(msg, server_round, "evaluate reply's ")
                    check_metrics(msg.content, self.weighted_by_key)
                    good.append(msg)
                except CiferError as exc:
                    self._exclude(server_round, _node(msg), f"evaluate reply: {exc}")
                except Exception as exc:
                    self._internal_error(server_round, _node(msg), exc)
            good = self._consistent_metrics(server_round, good, lambda m: m, "evaluate reply: ")
            if not good:
                return None
            return self.evaluate_metrics_aggr_fn([m.content for m in good], self.weighted_by_key)
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: evaluate aggregation failed (%s: %s); no evaluate metrics this round.",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            return None

    # ------------------------------------------------------------------ checkpoints
    #: The run's checkpoint key (HMAC, docs/design.md §6): made at the first checkpoint,
    #: or the one a resumed checkpoint verified with.
    _checkpoint_key: bytes | None = None

    def _strategy_id(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def _optimizer_json(self) -> dict[str, Any] | None:
        """Settings a checkpoint must match to be resumed (``None``: nothing to match)."""
        return None

    def _checkpoint_extra(self) -> dict[str, Any]:
        """JSON state a subclass needs to resume (stored under ``extra``)."""
        return {}

    def _restore_extra(self, extra: Mapping[str, Any]) -> None:
        """Inverse of :meth:`_checkpoint_extra`."""

    def _prepare_checkpoint(
        self, num_rounds: int | None = None
    ) -> tuple[Parts, Result, int] | None:
        """Remove leftover temp files; on resume, load the checkpoint if there is one."""
        path = self.checkpoint_path
        if path is None:
            return None
        for tmp in remove_temp_files(path):
            log.info("removed %s, left behind by an interrupted checkpoint write", tmp)
        if not self.resume:
            if path.exists():
                log.info("resume=False: the checkpoint %s will be overwritten", path)
            return None
        if not path.exists():
            log.info("resume=True but no checkpoint at %s yet: starting from round 1", path)
            return None
        restored = self._restore(path, num_rounds)
        log.info(
            "resumed from checkpoint %s after round %d; initial_arrays is ignored",
            path,
            restored[2],
        )
        return restored

    def _checkpoint_state(self, server_round: int, num_rounds: int, result: Result) -> Checkpoint:
        index, digests = self.screen.seen.to_blob()
        state = {
            "strategy": self._strategy_id(),
            "fingerprint": self.key.fingerprint,
            "preset": self.key.params.name,
            "optimizer": self._optimizer_json(),
            "masking": self.masking,
            "round": server_round,
            "num_rounds": num_rounds,
            "min_replies": self._min_replies,
            "examples_per_client": self.examples_per_client,
            "layout": self._require_layout().to_dict(),
            "excluded": {
                str(r): [[node, why] for node, why in v] for r, v in self.excluded.items()
            },
            "round_stats": {str(r): dict(v) for r, v in self.round_stats.items()},
            "seen": index,
            "result": result_to_json(result),
            "extra": self._checkpoint_extra(),
        }
        if self._checkpoint_key is None:  # a new run: a new key (a resumed one keeps its)
            self._checkpoint_key = new_checkpoint_key()
        return Checkpoint(state, self._global_record(), digests, self._checkpoint_key)

    def _write_checkpoint(self, server_round: int, num_rounds: int, result: Result) -> None:
        if self.checkpoint_path is None:
            return
        try:
            ckpt = self._checkpoint_state(server_round, num_rounds, result)
            write_checkpoint(self.checkpoint_path, ckpt)
        except (OSError, CiferError, TypeError, ValueError) as exc:
            log.error(
                "round %d: writing the checkpoint %s failed (%s: %s); the run goes on, but "
                "cannot resume from this round",
                server_round,
                self.checkpoint_path,
                type(exc).__name__,
                exc,
            )
            return
        log.info("round %d: checkpoint written to %s", server_round, self.checkpoint_path)

    def _restore(self, path: Path, num_rounds: int | None = None) -> tuple[Parts, Result, int]:
        """Load the checkpoint at ``path`` for this run (docs/design.md §6, resume).

        :func:`read_checkpoint` verifies its MAC; :func:`restore_state` checks every field's
        type and range and that the settings (key, preset, strategy, optimizer,
        ``min_replies``, masking) are this run's and the round is within ``num_rounds``.
        """
        ckpt = read_checkpoint(path)
        run = RunSettings(
            fingerprint=self.key.fingerprint,
            preset=self.key.params.name,
            strategy=self._strategy_id(),
            optimizer=self._optimizer_json(),
            min_replies=self._min_replies,
            masking=self.masking,
            num_rounds=num_rounds,
        )
        saved = restore_state(ckpt, path, run)
        fix = "the file is corrupted or was edited; start without resume."
        try:
            seen = DigestMemory.from_blob(saved.seen, ckpt.digests)
        except ReplyError as exc:
            raise CiphertextFormatError(f"checkpoint {path}: {exc}; {fix}") from None
        model = ckpt.model
        parts = (
            crypto.bundle_from_record(model, self.key)
            if isinstance(model, ArrayRecord)
            else crypto.bundle_from_bytes(model, self.key)
        )
        if self._model_layout(parts) != saved.layout:
            raise LayoutMismatchError(
                f"checkpoint {path}: the encrypted model's layout does not match the layout "
                f"recorded with it; {fix}"
            )
        try:
            self._restore_extra(saved.extra)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CiphertextFormatError(
                f"checkpoint {path}: its extra state is unusable ({type(exc).__name__}: "
                f"{exc!s:.200}); {fix}"
            ) from None
        self._set_layout(saved.layout)
        self.examples_per_client = saved.examples_per_client
        self.excluded, self.round_stats, self.screen.seen = saved.excluded, saved.round_stats, seen
        self._checkpoint_key = ckpt.integrity_key  # the resumed run keeps its key
        result = saved.result
        if saved.released:
            result.arrays = crypto.bundle_to_record(parts)
        return parts, result, saved.round


class EncryptedFedOptBase(EncryptedFedAvgBase):
    """Base class of a server optimizer under the deferred key-holder step (docs/design.md §4.3).

    FedYogi, FedAdam, FedAdagrad and FedAvgM derive from it. The server keeps the packed
    state (``x``, ``m`` and ``sqrt v``, :func:`cifer_flwr.protocol.pack_state`) encrypted
    with the pending aggregate; the key holders decrypt both, apply
    :func:`cifer_flwr.protocol.fedopt_step` and train from the new ``x``. A subclass sets
    ``_opt_kind`` (a :data:`cifer_flwr.protocol.OptKind`) and either the attributes
    ``eta``, ``beta_1``, ``beta_2``, ``tau`` (as Flower's FedOpt does) or overrides the
    :attr:`optimizer` property (as :class:`cifer_flwr.strategies.FedAvgM` does). A new
    update rule is a new ``OptKind`` with its branch in ``fedopt_step``. Hooks beyond those
    of :class:`EncryptedFedAvgBase`: ``_state_groups() -> tuple[int, ...]`` (how many of
    ``x``, ``m``, ``sqrt v`` a returned state may hold).

    The first :data:`STATE_HOLDERS` sampled clients are asked to return the refreshed
    encrypted state, every client returns a digest of it. The server keeps the replies
    whose digest is held by a strict majority of the valid replies (the others trained from
    another state and are excluded) and takes the state of the first asked client among
    them, so a round survives the loss of either asked client.
    """

    eta: float
    beta_1: float
    beta_2: float
    tau: float
    _opt_kind: protocol.OptKind

    @property
    def optimizer(self) -> protocol.OptimizerSpec:
        """The public optimizer spec key holders apply."""
        return protocol.OptimizerSpec(self._opt_kind, self.eta, self.beta_1, self.beta_2, self.tau)

    def _state_groups(self) -> tuple[int, ...]:
        """How many state groups (``x``; ``x, m``; ``x, m, sqrt v``) a returned state may have."""
        return (1, 3)

    def _optimizer_json(self) -> dict[str, Any] | None:
        return self.optimizer.to_dict()

    def _summary_encryption(self) -> None:
        super()._summary_encryption()
        log.info(
            "\t│\t└── deferred key-holder %s step: the state stays encrypted; %d "
            "clients return the refreshed state, all return digests, the majority digest wins",
            self._opt_kind,
            STATE_HOLDERS,
        )

    def _encrypt_initial(self, arrays: Mapping[str, Any]) -> Parts:
        packed = protocol.pack_state(dict(arrays), None, None)
        weight = protocol.exact_weight(packed, self.key.params)  # quantized: fit the range
        state = crypto.encrypt(packed, self.key, weight=weight)
        return {PART_STATE: crypto.with_meta(state, fedopt=self.optimizer.to_dict())}

    def _to_parts(self, arrays: ArrayRecord) -> Parts:
        parts = super()._to_parts(arrays)
        if PART_STATE in parts:
            return parts
        # An encrypted plain model becomes the state ``x`` by renaming its layout alone.
        model = parts[PART_MODEL]
        state = replace(
            model,
            layout=protocol.state_layout(model.layout),
            meta={"fedopt": self.optimizer.to_dict()},
        )
        return {PART_STATE: state}

    def _model_layout(self, parts: Mapping[str, crypto.AnyEncrypted]) -> crypto.Layout:
        return protocol.model_layout(parts[PART_STATE].layout)

    def _reset_round_memory(self) -> None:
        super()._reset_round_memory()
        #: Nodes excluded from sampling: they returned a state the key holders refused.
        self.banned: set[int] = set()
        #: Refused states, in order (for the results file and the checkpoint).
        self.state_events: list[dict[str, Any]] = []
        # (round, node) of the state in the current global: who returned it, in which round
        self._state_source: tuple[int, int] | None = None
        # the other asked holder's state of the same round, until that round's evaluation
        self._state_alt: tuple[int, crypto.AnyEncrypted] | None = None

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {
            **super()._checkpoint_extra(),
            "banned": sorted(self.banned),
            "state_source": None if self._state_source is None else list(self._state_source),
            "state_events": list(self.state_events),
        }

    def _restore_extra(self, extra: Mapping[str, Any]) -> None:
        super()._restore_extra(extra)
        self.banned = {int(n) for n in extra.get("banned") or []}
        source = extra.get("state_source")
        self._state_source = None if source is None else (int(source[0]), int(source[1]))
        self.state_events = list(extra.get("state_events") or [])

    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Flower's FedOpt.configure_train reads the plaintext arrays; skip to FedAvg's.
        messages = FlwrFedAvg.configure_train(self, server_round, arrays, config, grid)  # type: ignore[arg-type]
        return [m for m in messages if int(m.metadata.dst_node_id) not in self.banned]

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
        """Run the federated loop (see :meth:`EncryptedFedAvgBase.start`).

        ``Result.arrays`` is the current global: when the key holders refused the state of
        the last round's global in its evaluation, the other asked holder's state replaced
        it (docs/design.md §4.3).
        """
        result = super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )
        if result.arrays and (self._global_parts is not None or self._global_arrays is not None):
            result.arrays = self._global_record()
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As :meth:`EncryptedFedAvgBase.configure_train`, with the current global.

        The current global is ``arrays`` unless a refused state was replaced since
        (:meth:`aggregate_evaluate`); the alternative state is dropped here.
        """
        self._state_alt = None
        return super().configure_train(server_round, self._current_global(arrays), config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's evaluate messages, never to a node excluded for a refused state (§4.3)."""
        arrays = self._current_global(arrays)
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return [m for m in messages if int(m.metadata.dst_node_id) not in self.banned]

    def _current_global(self, arrays: ArrayRecord) -> ArrayRecord:
        if self._global_parts is None and self._global_arrays is None:
            return arrays
        return self._global_record()

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluate metrics; count the key holders' verdicts on the state first.

        Key holders that trained in this round compared the state of this round's global
        with their own (``state-check`` in the evaluate reply's ``cifer`` record). When
        ``fail`` outnumbers ``pass``, the node that returned the state is excluded and the
        other asked holder's state of this round (same majority digest) replaces it in the
        global, which is saved again (docs/design.md §4.3).
        """
        replies = list(replies)
        try:
            self._judge_evaluated_state(server_round, replies)
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: counting the state verdicts failed (%s: %s)",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        return super().aggregate_evaluate(server_round, replies)

    def _judge_evaluated_state(self, server_round: int, replies: list[Message]) -> None:
        source = self._state_source
        if source is None or source[0] != server_round:
            return
        verdicts = Counter(
            self._verdict_of(m)
            for m in replies
            if not m.has_error() and metadata_problem(m, self.screen.eval_msgs) is None
        )
        if verdicts["fail"] <= verdicts["pass"]:
            return
        self._refuse_state(server_round, verdicts["fail"], verdicts["pass"])
        if self._state_alt is None:
            log.error(
                "round %d: no other asked holder returned this round's state; the refused "
                "state stays in the global until the next round replaces it",
                server_round,
            )
            return
        node, state = self._state_alt
        self._state_alt = None
        parts = crypto.bundle_from_record(self._global_record(), self.key)
        parts[PART_STATE] = state
        self._set_global(parts)
        self._save(parts, server_round)
        self._state_source = (server_round, node)
        log.warning(
            "round %d: the refused FedOpt state is replaced by node %d's (the other asked holder)",
            server_round,
            node,
        )

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        return {CFG_RETURN_STATE: index < STATE_HOLDERS}

    def _state_layout_ok(self, layout: crypto.Layout) -> bool:
        model = self._require_layout()
        n = len(model.names)
        full = protocol.state_names(model.names, moments=True)
        groups = len(layout.names) // n if n else 0
        return (
            groups in self._state_groups()
            and layout.names == full[: groups * n]
            and layout.shapes == model.shapes * groups
            and layout.dtypes[:n] == model.dtypes
        )

    def _parse_reply(self, msg: Message, server_round: int) -> Parts:
        parts = super()._parse_reply(msg, server_round)
        state = parts.get(PART_STATE)
        if state is not None and not self._state_layout_ok(state.layout):
            raise LayoutMismatchError(
                f"the returned FedOpt state has entries {list(state.layout.names)[:6]}...; "
                f"expected the {self._state_groups()} first of the x/, m/, sqrtv/ groups of "
                "the global model's arrays."
            )
        return parts

    def _fold_key(self, msg: Message) -> Hashable:
        # replies trained from different states are summed apart: the majority picks one;
        # the node that returned the current state is summed alone, so that the key
        # holders' verdicts on that state can drop its reply (§4.3)
        holder = None if self._state_source is None else self._state_source[1]
        return (self._digest_of(msg), _node(msg) == holder)

    @staticmethod
    def _verdict_of(msg: Message) -> str | None:
        info = msg.content.config_records.get(REPLY_RECORD)
        value = None if info is None else info.get(REPLY_STATE_CHECK)
        return value if value in ("pass", "fail") else None

    def _judge_state(self, server_round: int, accepted: Accepted) -> Accepted:
        """Exclude the node whose returned state most checking key holders refused (§4.3).

        Key holders that computed the state of the current global themselves (they were
        sampled in the round it came from) report ``state-check`` ``pass`` or ``fail``.
        When ``fail`` outnumbers ``pass``, the node that returned it is excluded from
        sampling and its reply of this round dropped; a lone liar cannot do it.
        """
        verdicts = Counter(self._verdict_of(msg) for msg, _ in accepted)
        fails, passes = verdicts["fail"], verdicts["pass"]
        if self._state_source is None or fails <= passes:
            if fails:
                log.warning(
                    "round %d: %d key holders refused the FedOpt state, %d accepted it; kept",
                    server_round,
                    fails,
                    passes,
                )
            return accepted
        holder = self._refuse_state(server_round, fails, passes)
        return [(msg, parts) for msg, parts in accepted if _node(msg) != holder]

    def _refuse_state(self, server_round: int, fails: int, passes: int) -> int:
        """Exclude the node that returned the current global's state; return its id."""
        assert self._state_source is not None
        state_round, holder = self._state_source
        if holder not in self.banned:
            self.banned.add(holder)
            self.state_events.append(
                {
                    "round": server_round,
                    "event": "excluded",
                    "node": holder,
                    "state_round": state_round,
                    "fail": fails,
                    "pass": passes,
                }
            )
            self._exclude(
                server_round,
                holder,
                f"returned a FedOpt state in round {state_round} that {fails} key holders "
                f"found different from the state they computed ({passes} found it equal); "
                "the node is excluded from sampling.",
            )
        return holder

    @staticmethod
    def _digest_of(msg: Message) -> str | None:
        info = msg.content.config_records.get(REPLY_RECORD)
        value = None if info is None else info.get(REPLY_STATE_DIGEST)
        return value if isinstance(value, str) else None

    def _select_replies(self, server_round: int, accepted: Accepted) -> Accepted:
        """Keep the replies trained from the state a strict majority of valid replies holds."""
        accepted = self._judge_state(server_round, accepted)
        if not accepted:
            return accepted
        digests = [self._digest_of(msg) for msg, _ in accepted]
        counts = Counter(d for d in digests if d is not None)
        majority = next((d for d, c in counts.items() if 2 * c > len(accepted)), None)
        if majority is None:
            log.error(
                "round %d: no strict majority of the %d valid replies agrees on the FedOpt "
                "state (digests %s); every reply is excluded and nothing is released.",
                server_round,
                len(accepted),
                {
                    _node(m): (d or "missing")[:12]
                    for (m, _), d in zip(accepted, digests, strict=True)
                },
            )
            for msg, _ in accepted:
                self._exclude(
                    server_round,
                    _node(msg),
                    "no strict majority of the valid replies agrees on the FedOpt state digest.",
                )
            return []
        kept: Accepted = []
        for (msg, parts), digest in zip(accepted, digests, strict=True):
            if digest == majority:
                kept.append((msg, parts))
                continue
            log.error(
                "round %d: node %d trained from another FedOpt state (digest %s, majority "
                "%s); its update is excluded.",
                server_round,
                _node(msg),
                (digest or "missing")[:12],
                majority[:12],
            )
            self._exclude(
                server_round,
                _node(msg),
                f"trained from another FedOpt state: digest {(digest or 'missing')[:12]}, "
                f"the majority's {majority[:12]}.",
            )
        return kept

    def _next_global(
        self,
        server_round: int,
        accepted: Accepted,
        aggregate: crypto.AnyEncrypted,
    ) -> Parts | None:
        holders = sorted(
            (self.screen.sent_index.get(_node(msg), len(self.screen.sent_index)), _node(msg), parts)
            for msg, parts in accepted
            if PART_STATE in parts
        )
        if not holders:
            log.error(
                "round %d: none of the clients asked for the refreshed FedOpt state returned "
                "a valid one; nothing is released this round.",
                server_round,
            )
            return None
        _, node, parts = holders[0]
        log.info("round %d: refreshed FedOpt state taken from node %d", server_round, node)
        # the next round's key holders compare it with the state they computed (§4.3)
        meta = {"fedopt": self.optimizer.to_dict(), META_STATE_ROUND: server_round}
        state = replace(parts[PART_STATE], meta=meta)
        self._state_source = (server_round, node)
        # kept until this round's evaluation, in case its key holders refuse the first
        self._state_alt = (
            (holders[1][1], replace(holders[1][2][PART_STATE], meta=meta))
            if len(holders) > 1
            else None
        )
        return {PART_STATE: state, PART_MODEL: aggregate}
