"""The federated loop of an encrypted strategy: Flower's ``Strategy.start`` on ciphertexts.

:func:`run_rounds` is Flower 1.41's ``Strategy.start`` loop with what encryption changes:
the global model is encrypted before round 1 (or restored from a checkpoint, so the first
round may be later than 1), a masked round runs its setup stages first, train replies are
streamed through the one pull loop (:func:`~cifer_flwr.strategies.stream_replies`) and folded
one by one, and a checkpoint is written after every round.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Iterable
from logging import INFO
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

from cifer_flwr import crypto
from cifer_flwr.constants import (
    METRIC_AGGREGATE_S,
    METRIC_CLIPPED,
    METRIC_EXCLUDED,
    METRIC_MASKED,
    METRIC_RELEASED,
    METRIC_VALID_REPLIES,
)
from cifer_flwr.exceptions import CiferError, WorkerError
from cifer_flwr.strategies._fold import Accepted, RoundFold, node_of
from cifer_flwr.strategies._pull import stream_replies
from cifer_flwr.strategies._replies import metric_schema
from cifer_flwr.strategies._screen import consistent_metrics, metadata_problem

if TYPE_CHECKING:
    from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = [
    "MAX_REASON",
    "cifer_metrics",
    "log_encryption_summary",
    "refuse",
    "run_rounds",
    "train_round",
]

log = logging.getLogger("cifer_flwr.strategies")
#: Flower's own logger (its round banners go there, as Flower's strategies' do)
flwr_log = logging.getLogger("flwr").log
#: Longest exclusion reason kept (in the log and the results file).
MAX_REASON = 500


def run_rounds(
    strategy: EncryptedFedAvgBase,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
) -> Result:
    """Run ``strategy``'s rounds on ``grid`` (see ``EncryptedFedAvgBase.start``)."""
    strategy.excluded, strategy.round_stats = {}, {}
    strategy._reset_round_memory()
    restored = strategy._prepare_checkpoint(num_rounds)
    if restored is not None:
        parts, result, done = restored
    else:
        parts, result, done = strategy._to_parts(initial_arrays), Result(), 0
        strategy._set_layout(strategy._model_layout(parts))
    strategy._set_global(parts)
    arrays = strategy._global_record()  # the one copy of the global model (§6.2)
    del parts, restored

    flwr_log(INFO, "Starting %s strategy:", type(strategy).__name__)
    log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
    strategy.summary()
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
        messages = strategy.configure_train(current_round, arrays, train_config, grid)
        masking = strategy._masking
        if masking is not None:  # advertise + share first (docs/design.md §4.9)
            messages = masking.setup(
                grid,
                current_round,
                list(messages),
                timeout,
                strategy._exclude,
                partition=functools.partial(strategy._mask_groups, current_round),
            )
        train_replies = strategy._stream_replies(grid, messages, timeout)
        agg_arrays, agg_train_metrics = strategy.aggregate_train(current_round, train_replies)
        if agg_arrays is not None:
            result.arrays = agg_arrays
            arrays = agg_arrays
        if agg_train_metrics is not None:
            flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_train_metrics)
            result.train_metrics_clientapp[current_round] = agg_train_metrics
        evaluate_messages = list(
            strategy.configure_evaluate(current_round, arrays, evaluate_config, grid)
        )
        evaluate_replies = list(
            stream_replies(grid, evaluate_messages, timeout, batch=max(1, len(evaluate_messages)))
        )
        agg_evaluate_metrics = strategy.aggregate_evaluate(current_round, evaluate_replies)
        if agg_evaluate_metrics is not None:
            flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_evaluate_metrics)
            result.evaluate_metrics_clientapp[current_round] = agg_evaluate_metrics
        strategy._write_checkpoint(current_round, num_rounds, result)

    flwr_log(INFO, "")
    flwr_log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
    flwr_log(INFO, "")
    flwr_log(INFO, "Final results:")
    flwr_log(INFO, "")
    for line in io.StringIO(str(result)):
        flwr_log(INFO, "\t%s", line.strip("\n"))
    flwr_log(INFO, "")
    return result


def log_encryption_summary(strategy: EncryptedFedAvgBase) -> None:
    """Log what the server holds and refuses (part of ``summary``)."""
    p = strategy.key.params
    log.info(
        "\t├──> %s encryption: preset %s (%d-bit security), key fingerprint %s",
        p.scheme.upper(),
        p.name,
        p.security_bits,
        strategy.key.short_fingerprint,
    )
    log.info("\t│\t├── server holds ciphertexts and the public key only")
    log.info(
        "\t│\t├── min_replies %d: rounds with fewer valid replies release nothing",
        strategy.min_replies,
    )
    log.info("\t│\t├── replayed / duplicated / echoed ciphertexts are refused (SHA-256)")
    if strategy.masking:
        log.info(
            "\t│\t├── masking on: pairwise + self masks inside the sums; the server and "
            "colluding clients below the threshold see only sums of >= %d clients (§4.9)",
            max(3, strategy.min_replies),
        )
    log.info(
        "\t│\t└── checkpoint: %s%s",
        strategy.checkpoint_path or "off",
        " (resume)" if strategy.resume else "",
    )


def _fold_reply(
    strategy: EncryptedFedAvgBase,
    server_round: int,
    fold: RoundFold,
    tally: dict[str, int],
    msg: Message,
) -> None:
    """Check one reply and, if valid, add its model to the running sum of its group."""
    node = node_of(msg)
    problem = metadata_problem(msg, strategy.screen.sent_msgs)
    if problem is not None:
        strategy._exclude(server_round, node, problem)
        return
    if msg.has_error():
        tally["errors"] += 1
        reason = f"error reply: {msg.error.reason}"[:MAX_REASON]
        strategy.excluded.setdefault(server_round, []).append((node, reason))
        return
    tally["received"] += 1
    size = sum(r.count_bytes() for r in msg.content.array_records.values())
    tally["bytes"] += size
    try:
        parts = strategy._check_reply(msg, server_round, size)
        fold.add((metric_schema(msg.content), strategy._fold_key(msg)), msg, parts)
    except WorkerError:
        raise  # the workers' running sums are lost: the round fails (aggregate_train)
    except Exception as exc:
        refuse(strategy, server_round, msg, exc)


def refuse(strategy: EncryptedFedAvgBase, server_round: int, msg: Message, exc: Exception) -> None:
    """Exclude a reply: its reason for a CiferError, else as an internal error (a bug)."""
    if isinstance(exc, CiferError):
        strategy._exclude(server_round, node_of(msg), str(exc))
    else:  # last line of defence: a bug never stops the round
        strategy._internal_error(server_round, node_of(msg), exc)


def cifer_metrics(
    strategy: EncryptedFedAvgBase, server_round: int, released: bool, valid: int
) -> MetricRecord:
    """The ``cifer-*`` metrics every train round reports."""
    return MetricRecord(
        {
            METRIC_MASKED: int(strategy.masking),
            METRIC_RELEASED: int(released),
            METRIC_VALID_REPLIES: valid,
            METRIC_EXCLUDED: len(strategy.excluded.get(server_round, [])),
        }
    )


def _client_metrics(
    strategy: EncryptedFedAvgBase, server_round: int, accepted: Accepted
) -> MetricRecord:
    """``train_metrics_aggr_fn`` over the accepted replies (empty if it fails)."""
    try:
        return strategy.train_metrics_aggr_fn(
            [msg.content for msg, _ in accepted], strategy.weighted_by_key
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


def train_round(
    strategy: EncryptedFedAvgBase,
    server_round: int,
    replies: Iterable[Message],
    stats: dict[str, float],
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """Fold ``replies`` one by one, select, sum, unmask and release (``aggregate_train``)."""
    fold = strategy.fold_policy.fold(
        strategy.key,
        strategy._round_chunks(),
        keep_models=strategy._keeps_models(server_round),
        arrayrecord_key=strategy.arrayrecord_key,
        reject=functools.partial(refuse, strategy, server_round),
    )
    tally = {"received": 0, "errors": 0, "bytes": 0}
    strategy.excluded.setdefault(server_round, [])
    t_start = time.perf_counter()
    strategy._defer = fold.defer
    try:
        for msg in replies:
            _fold_reply(strategy, server_round, fold, tally, msg)
            del msg  # the running sum holds what counts
        fold.flush()
    finally:
        strategy._defer = False
    stats["receive-fold-s"] = time.perf_counter() - t_start
    stats["bytes-received"] = float(tally["bytes"])
    flwr_log(
        INFO,
        "aggregate_train: Received %s results and %s failures",
        tally["received"],
        tally["errors"],
    )
    t0 = time.perf_counter()
    accepted = consistent_metrics(
        fold.members(), lambda item: item[0], functools.partial(strategy._exclude, server_round)
    )
    accepted = strategy._select_replies(server_round, accepted)
    total = None
    if len(accepted) >= strategy.min_replies:
        total = fold.total(accepted)
    stats["aggregate-s"] = fold.add_s + time.perf_counter() - t0
    stats["valid-replies"] = float(len(accepted))
    del fold
    if total is not None and strategy._masking is not None:
        # survivors reveal what removes the residual mask (docs/design.md §4.9)
        total = strategy._masking.unmask(
            server_round, [node_of(msg) for msg, _ in accepted], total, strategy._exclude
        )
        stats.update(strategy._masking.stats.pop(server_round, {}))
        if total is None:
            stats["released"] = 0.0
            return None, cifer_metrics(strategy, server_round, False, len(accepted))
    if total is None or len(accepted) < strategy.min_replies:
        log.warning(
            "round %d: %d valid encrypted updates, fewer than the %d required; "
            "nothing is aggregated or released this round.",
            server_round,
            len(accepted),
            strategy.min_replies,
        )
        stats["released"] = 0.0
        return None, cifer_metrics(strategy, server_round, False, len(accepted))
    t0 = time.perf_counter()
    total = crypto.with_meta(total, round=server_round)
    new_parts = strategy._next_global(server_round, accepted, total)
    stats["aggregate-s"] += time.perf_counter() - t0
    strategy.examples_per_client = total.weight * stats["weight-divisor"] / len(accepted)
    metrics = _client_metrics(strategy, server_round, accepted)
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
    metrics.update(cifer_metrics(strategy, server_round, released, len(accepted)))
    stats["released"] = float(released)
    if new_parts is None:
        return None, metrics
    strategy._set_global(new_parts)
    strategy._save(new_parts, server_round)
    return strategy._global_record(), metrics
