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
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_COHORT,
    CFG_WEIGHT_DIVISOR,
    CFG_WEIGHTED_BY,
    PART_MODEL,
    REPLY_RECORD,
)
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
    UnsupportedOperationError,
)
from cifer_flwr.strategies._checkpoint import (
    Checkpoint,
    RunCheckpoints,
    RunSettings,
    restore_state,
    result_to_json,
)
from cifer_flwr.strategies._fold import Accepted, FoldMode, FoldPolicy, Parts
from cifer_flwr.strategies._masking import RoundMasking, check_masking_key
from cifer_flwr.strategies._memory import release_large_buffers
from cifer_flwr.strategies._pull import pull_batch, stream_replies
from cifer_flwr.strategies._release import GlobalModel
from cifer_flwr.strategies._replies import (
    REPLY_CONFIG_BYTES,
    DigestMemory,
    ReplyError,
)
from cifer_flwr.strategies._rounds import (
    MAX_REASON,
    cifer_metrics,
    log_encryption_summary,
    run_rounds,
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
#: Flower's own logger (its round banners go there, as Flower's strategies' do)
flwr_log = logging.getLogger("flwr").log
_T = TypeVar("_T")


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

    The extension point for your own encrypted strategy (docs/design.md §3): list it (or
    :class:`EncryptedFedOptBase`) before the Flower strategy it encrypts; its ``__init__``
    takes the encryption arguments and forwards every other keyword to Flower's::

        class MyStrategy(EncryptedFedAvgBase, flwr.serverapp.strategy.FedAvg):
            \"\"\"Encrypted FedAvg under another name.\"\"\"

    Sampling, messages and metric aggregation stay Flower's; this class drives the
    round (``start``, ``configure_train``, ``aggregate_train``, ``aggregate_evaluate``) and
    holds one collaborator per job: :class:`~cifer_flwr.strategies._screen.ReplyScreen`
    (every check a reply passes), a :class:`~cifer_flwr.strategies._fold.FoldPolicy`
    (where the sums run), :class:`~cifer_flwr.strategies._masking.RoundMasking`, the pull
    loop (:func:`~cifer_flwr.strategies.stream_replies`) and the checkpoint functions of
    ``_checkpoint``. The hooks a subclass may override (``_encrypt_initial``,
    ``_to_parts``, ``_model_layout``, ``_extra_config``, ``_parse_reply``,
    ``_select_replies``, ``_fold_key``, ``_keeps_models``, ``_next_global``,
    ``_checkpoint_extra`` / ``_restore_extra``, ``_optimizer_json``) are listed with their
    contracts in docs/design.md §3.2; ``fedavgm.py`` is a complete worked example.
    Everything a hook raises other than a ``CiferError`` is caught per reply (or per
    round) and logged as an internal error: a bug in a hook never stops the run.

    Parameters
    ----------
    public_key, save_path, examples_per_client, min_replies, checkpoint_path, resume, \
masking, fold
        See :class:`cifer_flwr.strategies.FedAvg`.
    **flower_kwargs
        Forwarded to the Flower strategy next in the MRO (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ``eta``, ...), with Flower's defaults.

    """

    # provided by Flower's FedAvg
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str
    train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
    evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
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
        self._init_encryption(
            public_key,
            save_path,
            examples_per_client,
            min_replies=min_replies,
            checkpoint_path=checkpoint_path,
            resume=resume,
            masking=masking,
            fold=fold,
        )

    def summary(self) -> None:
        """Log the strategy's configuration, encryption included."""
        self._summary_encryption()
        super().summary()  # type: ignore[misc]

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
        """Set up the encryption (``__init__`` calls it after Flower's ``__init__``).

        The arguments are documented on :class:`cifer_flwr.strategies.FedAvg`.

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
        self.excluded: dict[int, list[tuple[int, str]]] = {}
        self.round_stats: dict[int, dict[str, float]] = {}
        self._reset_round_memory()

    def _reset_round_memory(self) -> None:
        self.screen.reset()
        self.global_model.clear()
        self._defer = False

    # ------------------------------------------------------------------ helpers
    def _summary_encryption(self) -> None:
        log_encryption_summary(self)

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
        """Make ``parts`` the global model (:class:`~._release.GlobalModel`)."""
        self.global_model.set(parts)

    def _global_record(self) -> ArrayRecord:
        """The global model as the record sent to clients: the one copy kept (§6.2)."""
        return self.global_model.record()

    def _save(self, parts: Parts, server_round: int) -> None:
        """Write the global model just set with ``_set_global(parts)`` to ``save_path``."""
        self.global_model.save(server_round)

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

    def _require_layout(self) -> crypto.Layout:
        return self.screen.require_layout()

    def _set_layout(self, layout: crypto.Layout) -> None:
        self.screen.set_layout(layout)

    def _exclude(self, server_round: int, node: int, reason: str) -> None:
        if len(reason) > MAX_REASON:  # reasons may quote what a client sent
            reason = reason[: MAX_REASON - 3] + "..."
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
        ``Result`` covers the restored rounds and the new ones. The loop
        (:func:`~cifer_flwr.strategies._rounds.run_rounds`) is Flower's ``Strategy.start``
        with a first round other than 1; replies of both phases come through the one pull
        loop.

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
        result = run_rounds(
            self, grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config
        )
        return self._final_result(result)

    def _final_result(self, result: Result) -> Result:
        """Hook: the run's ``Result`` before :meth:`start` returns it (here unchanged)."""
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
        if cohort < self.min_replies:
            log.warning(
                "round %d: only %d clients sampled, fewer than min_replies=%d; this round "
                "cannot release an aggregate.",
                server_round,
                cohort,
                self.min_replies,
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

    def _check_reply(self, msg: Message, server_round: int, size: int | None = None) -> Parts:
        """Every check of one train reply, cheapest first; returns its parsed parts.

        ``size``: the reply's ``ArrayRecord`` bytes when the caller counted them already.
        """
        self.screen.screen(msg, server_round, size)
        return self._parse_reply(msg, server_round)

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
            return train_round(self, server_round, replies, stats)
        except Exception as exc:  # last line of defence: a bug never stops the run
            log.error(
                "round %d: aggregation failed (%s: %s); nothing is released this round.",
                server_round,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            stats["released"] = 0.0
            return None, cifer_metrics(self, server_round, False, 0)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the evaluate metrics of the replies that pass the metric checks.

        Hostile values (lists, NaN, Inf, huge, missing example counts, other metric
        names) are excluded (reason prefixed ``evaluate reply:``) before
        ``evaluate_metrics_aggr_fn`` sees them.
        """
        try:
            good = self.screen.evaluate_replies(
                replies,
                server_round,
                functools.partial(self._exclude, server_round),
                functools.partial(self._internal_error, server_round),
            )
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
        path = self.checkpoints.to_resume()
        if path is None:
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
            "min_replies": self.min_replies,
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
        return Checkpoint(state, self._global_record(), digests, self.checkpoints.run_key())

    def _write_checkpoint(self, server_round: int, num_rounds: int, result: Result) -> None:
        self.checkpoints.write(
            server_round, lambda: self._checkpoint_state(server_round, num_rounds, result)
        )

    def _restore(self, path: Path, num_rounds: int | None = None) -> tuple[Parts, Result, int]:
        """Load the checkpoint at ``path`` for this run (docs/design.md §6, resume).

        :func:`read_checkpoint` verifies its MAC; :func:`restore_state` checks every field's
        type and range and that the settings (key, preset, strategy, optimizer,
        ``min_replies``, masking) are this run's and the round is within ``num_rounds``.
        """
        ckpt = self.checkpoints.read(path)
        run = RunSettings(
            fingerprint=self.key.fingerprint,
            preset=self.key.params.name,
            strategy=self._strategy_id(),
            optimizer=self._optimizer_json(),
            min_replies=self.min_replies,
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
        result = saved.result
        if saved.released:
            result.arrays = crypto.bundle_to_record(parts)
        return parts, result, saved.round
