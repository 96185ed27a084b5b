"""A train round of an encrypted strategy, as Flower's ``Strategy.start`` drives it.

:func:`configure_train_messages` adds the encryption settings to the messages Flower's
sampling made; :func:`train_round` folds the replies one by one as the pull loop
(:func:`~cifer_flwr.strategies.stream_replies`) yields them, selects, sums, unmasks and
releases (docs/design.md §3.2, §6).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from logging import INFO
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_COHORT,
    CFG_WEIGHT_DIVISOR,
    CFG_WEIGHTED_BY,
    METRIC_AGGREGATE_S,
    METRIC_CLIPPED,
    METRIC_EXCLUDED,
    METRIC_MASKED,
    METRIC_RELEASED,
    METRIC_VALID_REPLIES,
)
from cifer_flwr.exceptions import CiferError, WorkerError
from cifer_flwr.strategies._fold import Accepted, RoundFold, node_of
from cifer_flwr.strategies._ledger import MAX_REASON
from cifer_flwr.strategies._replies import metric_schema
from cifer_flwr.strategies._screen import consistent_metrics, metadata_problem

if TYPE_CHECKING:
    from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = [
    "cifer_metrics",
    "configure_train_messages",
    "log_encryption_summary",
    "refuse",
    "train_round",
]

log = logging.getLogger("cifer_flwr.strategies")
#: Flower's own logger (its round banners go there, as Flower's strategies' do)
flwr_log = logging.getLogger("flwr").log


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
    if strategy.ledger.done:
        log.info(
            "\t│\t├── resumed after round %d of %d from the checkpoint",
            strategy.ledger.done,
            strategy.ledger.num_rounds,
        )
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
        strategy.ledger.exclude(server_round, node, problem)
        return
    if msg.has_error():
        tally["errors"] += 1
        reason = f"error reply: {msg.error.reason}"[:MAX_REASON]
        strategy.ledger.excluded.setdefault(server_round, []).append((node, reason))
        return
    tally["received"] += 1
    size = sum(r.count_bytes() for r in msg.content.array_records.values())
    tally["bytes"] += size
    try:
        strategy.screen.screen(msg, server_round, size)
        parts = strategy._parse_reply(msg, server_round)
        fold.add((metric_schema(msg.content), strategy._fold_key(msg)), msg, parts)
    except WorkerError:
        raise  # the workers' running sums are lost: the round fails (aggregate_train)
    except Exception as exc:
        refuse(strategy, server_round, msg, exc)


def refuse(strategy: EncryptedFedAvgBase, server_round: int, msg: Message, exc: Exception) -> None:
    """Exclude a reply: its reason for a CiferError, else as an internal error (a bug)."""
    if isinstance(exc, CiferError):
        strategy.ledger.exclude(server_round, node_of(msg), str(exc))
    else:  # last line of defence: a bug never stops the round
        strategy.ledger.internal_error(server_round, node_of(msg), exc)


def configure_train_messages(
    strategy: EncryptedFedAvgBase,
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    grid: Grid,
) -> list[Message]:
    """The sampled nodes' train messages with the encryption settings (``configure_train``).

    Each message's config gets the round's public weight divisor, the cohort size and the
    subclass's entries (``_extra_config``); what each node was sent is remembered for its
    reply's checks, and large rounds start the crypto workers while the clients train
    (§6.1).
    """
    config[CFG_WEIGHTED_BY] = strategy.weighted_by_key
    messages = list(strategy._base_configure_train(server_round, arrays, config, grid))
    strategy.screen.open_round(server_round, arrays)
    cohort = len(messages)
    if cohort == 0:
        return []
    if cohort < strategy.min_replies:
        log.warning(
            "round %d: only %d clients sampled, fewer than min_replies=%d; this round "
            "cannot release an aggregate.",
            server_round,
            cohort,
            strategy.min_replies,
        )
    divisor = protocol.weight_divisor(cohort, strategy.examples_per_client)
    out = []
    for index, msg in enumerate(messages):
        node = msg.metadata.dst_node_id
        cfg = ConfigRecord(dict(msg.content.config_records[strategy.configrecord_key]))
        cfg[CFG_WEIGHT_DIVISOR] = divisor
        cfg[CFG_COHORT] = cohort  # packed preset: the sum's headroom (docs/design.md §4.7)
        cfg.update(strategy._extra_config(index, node, cohort, server_round))
        content = RecordDict({strategy.arrayrecord_key: arrays, strategy.configrecord_key: cfg})
        sent = Message(
            content=content,
            message_type=msg.metadata.message_type,
            dst_node_id=node,
            group_id=msg.metadata.group_id,
        )
        strategy.screen.sent(int(node), index, cfg, sent)  # its reply is checked against it
        out.append(sent)
    strategy.ledger.round_stats[server_round] = {
        "bytes-sent": float(arrays.count_bytes() * cohort),
        "weight-divisor": divisor,
    }
    # large rounds: the crypto workers start while the clients train (§6.1)
    strategy.fold_policy.workers(
        strategy.key, strategy._round_chunks(), strategy._keeps_models(server_round)
    )
    return out


def cifer_metrics(
    strategy: EncryptedFedAvgBase, server_round: int, released: bool, valid: int
) -> MetricRecord:
    """The ``cifer-*`` metrics every train round reports."""
    return MetricRecord(
        {
            METRIC_MASKED: int(strategy.masking),
            METRIC_RELEASED: int(released),
            METRIC_VALID_REPLIES: valid,
            METRIC_EXCLUDED: strategy.ledger.excluded_in(server_round),
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
    strategy.ledger.excluded.setdefault(server_round, [])
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
        fold.members(),
        lambda item: item[0],
        functools.partial(strategy.ledger.exclude, server_round),
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
            server_round, [node_of(msg) for msg, _ in accepted], total, strategy.ledger.exclude
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
    strategy.global_model.set(new_parts)
    strategy.global_model.save(server_round)
    return strategy.global_model.record(), metrics
