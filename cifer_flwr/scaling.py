"""The federated feature-statistics round on a Flower Grid (docs/design.md §4.10).

The Flower side of :mod:`cifer_flwr.statistics` (which is pure numpy and crypto), for any
Flower app whose clients hold raw rows. Before ``strategy.start`` the ServerApp calls
:func:`exchange_statistics`: every connected
SuperNode gets a ``query.cifer_stats`` message and answers with its encrypted per-feature
sums (:func:`answer_statistics`, registered by the ClientApp with
``@app.query("cifer_stats")``); the server validates every reply as it validates model
replies, adds the valid ones as ciphertexts and sends the encrypted total back; each key
holder decrypts it, keeps the global mean and standard deviation in its ``context.state``
and standardises its raw rows with them (:func:`global_statistics`). The encrypted total is
saved beside the encrypted model (:func:`cifer_flwr.statistics.write_scaling`), so that
``cifer decrypt-model`` folds the scaling into the model it decrypts.

Without encryption (the plaintext baseline) the same exchange runs on plaintext sums, and
the server (which then sees them) writes the scaling beside the plaintext model
(:func:`cifer_flwr.statistics.write_plain_scaling`).

A ServerApp::

    exchange_statistics(grid, num_features=F, public_key=pub, min_nodes=2, save_path=enc)
    strategy.start(grid=grid, ...)

A ClientApp::

    @app.query("cifer_stats")
    def statistics(msg, context):
        return answer_statistics(msg, context, raw_x_train, encrypted=True)

    @app.train()
    def train(msg, context):
        x = global_statistics(context).standardize(raw_x_train)
        ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.common.constant import ErrorCode  # no public error codes (tests/test_flower_api.py)
from flwr.serverapp import Grid

from cifer_flwr import crypto
from cifer_flwr import statistics as fstats
from cifer_flwr.exceptions import CiferError, RunFailedError

__all__ = [
    "MESSAGE_TYPE",
    "STATE_RECORD",
    "STATS_RECORD",
    "StatisticsRound",
    "answer_statistics",
    "exchange_statistics",
    "global_statistics",
    "stored_statistics",
]

log = logging.getLogger(__name__)

#: Message type of both phases (``@app.query("cifer_stats")`` on the ClientApp).
MESSAGE_TYPE: Final = "query.cifer_stats"
#: Record name of the request config, the client's sums and the returned total.
STATS_RECORD: Final = "cifer.stats"
#: ``context.state`` ArrayRecord in which a key holder keeps the global statistics.
STATE_RECORD: Final = "cifer.feature-stats"
#: Phases (config ``phase``): the client's sums, then the total to open.
PHASE_SUMS: Final = "sums"
PHASE_RESULT: Final = "result"
PHASE_READY: Final = "ready"


@dataclass
class StatisticsRound:
    """What the statistics round did (the server's view: no plaintext statistics).

    Attributes
    ----------
    nodes : list of int
        Nodes asked.
    contributors : list of int
        Nodes whose sums were added.
    ready : list of int
        Nodes that opened the total and keep the scaling.
    excluded : list of dict
        ``{"node", "phase", "reason"}`` of every reply left out.
    path : Path or None
        The encrypted total saved beside the model.

    """

    nodes: list[int] = field(default_factory=list)
    contributors: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None


def _wait_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() >= end:
            return nodes
        time.sleep(0.5)


def _messages(
    nodes: list[int], config: dict[str, Any], extra: RecordDict | None = None
) -> list[Message]:
    out = []
    for node in nodes:
        content = RecordDict({STATS_RECORD: ConfigRecord(dict(config))})
        if extra is not None:
            for name, record in extra.items():
                content[name] = record
        out.append(Message(content=content, dst_node_id=node, message_type=MESSAGE_TYPE))
    return out


def _reply_record(reply: Message) -> ArrayRecord:
    """The one ArrayRecord of a sums reply; anything else in it is refused."""
    content = reply.content
    if (
        list(content.array_records) != [STATS_RECORD]
        or content.config_records
        or content.metric_records
    ):
        raise fstats.StatisticsError(
            f"a statistics reply holds exactly one ArrayRecord {STATS_RECORD!r}; got "
            f"{sorted(content.keys())[:5]}."
        )
    return content.array_records[STATS_RECORD]


def _collect(
    replies: list[Message], nodes: list[int], phase: str, check: Callable[[Message], Any]
) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """Validated replies by node (one per asked node) and the excluded ones with reasons."""
    valid: dict[int, Any] = {}
    excluded: list[dict[str, Any]] = []
    answered: set[int] = set()
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if node not in nodes or node in answered:
            # a second reply of one node voids its first: neither is added
            excluded.append({"node": node, "phase": phase, "reason": "unexpected or duplicate"})
            valid.pop(node, None)
            continue
        answered.add(node)
        if reply.has_error():
            excluded.append({"node": node, "phase": phase, "reason": str(reply.error.reason)[:300]})
            continue
        try:
            valid[node] = check(reply)
        except (CiferError, ValueError, TypeError, KeyError) as exc:
            excluded.append({"node": node, "phase": phase, "reason": str(exc)[:300]})
    for node in nodes:
        if node not in answered:
            excluded.append({"node": node, "phase": phase, "reason": "no reply in time"})
    return valid, excluded


def exchange_statistics(
    grid: Grid,
    *,
    num_features: int,
    public_key: str | crypto.AnyKey | None,
    min_nodes: int,
    timeout: float = 600.0,
    save_path: str | Path | None = None,
) -> StatisticsRound:
    """Run the statistics round: sums in, encrypted total out, every key holder scales.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    num_features : int
        Features per row (the model's input size).
    public_key : str, path, Key or None
        The federation's public key (the server never holds a private one); ``None`` runs
        the plaintext baseline's exchange.
    min_nodes : int
        Fewest valid contributions (and key holders that open the total): an aggregate of
        fewer is never released.
    timeout : float
        Seconds to wait for nodes, and for each phase's replies.
    save_path : path, optional
        The saved model's path: the encrypted total goes beside it
        (:func:`cifer_flwr.statistics.scaling_path`); without encryption the plaintext
        scaling does (``model.scaling.npz``, :func:`cifer_flwr.statistics.write_plain_scaling`).

    Raises
    ------
    RunFailedError
        When fewer than ``min_nodes`` clients send valid sums or keep the total.

    """
    key = crypto.load_public_key(public_key) if isinstance(public_key, str | Path) else public_key
    minimum = max(1, int(min_nodes))
    done = StatisticsRound(nodes=_wait_nodes(grid, minimum, timeout))
    divisor = fstats.divisor_for(max(1, len(done.nodes)))
    request = {"phase": PHASE_SUMS, "num-features": int(num_features), "divisor": divisor}
    replies = list(grid.send_and_receive(_messages(done.nodes, request), timeout=timeout))

    def check(reply: Message) -> Any:
        record = _reply_record(reply)
        if key is None:
            arrays = {k: a.numpy() for k, a in record.items()}
            return fstats.check_plain_sums(arrays, num_features, divisor)
        enc = crypto.from_array_record(record, key)
        return fstats.check_encrypted_sums(enc, key, num_features)

    valid, done.excluded = _collect(replies, done.nodes, PHASE_SUMS, check)
    done.contributors = sorted(valid)
    if len(valid) < minimum:
        raise RunFailedError(
            f"feature statistics: {len(valid)} of {len(done.nodes)} clients sent valid sums, "
            f"fewer than the minimum {minimum} (an aggregate of fewer is never released); "
            f"excluded: {done.excluded[:5]}."
        )
    parts = [valid[n] for n in done.contributors]
    result = {**request, "phase": PHASE_RESULT, "summands": len(parts)}
    extra = None
    if key is None:
        total_plain = {name: np.sum([p[name] for p in parts], axis=0) for name in parts[0]}
        extra = RecordDict(
            {STATS_RECORD + ".total": ArrayRecord({k: Array(v) for k, v in total_plain.items()})}
        )
    else:
        total = crypto.aggregate(parts)
        result["total"] = crypto.to_bytes(total)
    acks = list(grid.send_and_receive(_messages(done.nodes, result, extra), timeout=timeout))

    def ready(reply: Message) -> bool:
        record = reply.content.config_records.get(STATS_RECORD)
        if record is None or record.get("phase") != PHASE_READY:
            raise fstats.StatisticsError("the key holder did not confirm the statistics.")
        return True

    opened, refused = _collect(acks, done.nodes, PHASE_RESULT, ready)
    done.excluded += refused
    done.ready = sorted(opened)
    if len(opened) < minimum:
        raise RunFailedError(
            f"feature statistics: {len(opened)} of {len(done.nodes)} key holders kept the "
            f"summed statistics, fewer than the minimum {minimum}; refused: {refused[:5]}."
        )
    if key is not None and save_path is not None:
        done.path = fstats.write_scaling(
            save_path, total, divisor=divisor, num_features=int(num_features)
        )
    elif save_path is not None:  # the plaintext baseline: the server sees the sums anyway
        counts = fstats.decode_sums(total_plain, divisor, len(parts))
        done.path = fstats.write_plain_scaling(
            save_path, fstats.stats_from_sums(*counts, len(parts))
        )
    log.info(
        "feature statistics: %d of %d clients summed, %d key holders scale with them%s",
        len(done.contributors),
        len(done.nodes),
        len(done.ready),
        f"; excluded {done.excluded}" if done.excluded else "",
    )
    return done


def _error(msg: Message, reason: str) -> Message:
    log.error("feature statistics: %s", reason)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def answer_statistics(
    msg: Message, context: Context, x_train: npt.NDArray[Any], *, encrypted: bool
) -> Message:
    """A client's side of both phases: send encrypted sums; open and keep the total.

    Parameters
    ----------
    msg : Message
        The ``query.cifer_stats`` message.
    context : Context
        The node's context: the private key path (node config ``private-key``) and
        ``state``, where the global statistics are kept.
    x_train : ndarray
        This node's raw training rows.
    encrypted : bool
        Whether the run encrypts (else the plaintext baseline's exchange).

    Returns
    -------
    Message
        The reply, or an error reply with the reason (the server excludes it).

    """
    from cifer_flwr.mods import private_key_for

    try:
        config = msg.content.config_records.get(STATS_RECORD)
        if config is None:
            raise fstats.StatisticsError(f"the statistics message has no {STATS_RECORD!r} record.")
        features = config.get("num-features")
        divisor = fstats.check_divisor(config.get("divisor"))
        rows = np.asarray(x_train).reshape(len(x_train), -1)
        if features != rows.shape[1]:
            raise fstats.StatisticsError(
                f"the server asks for statistics of {features!r:.20} features, this node's "
                f"rows have {rows.shape[1]}."
            )
        key = private_key_for(context) if encrypted else None
        phase = config.get("phase")
        if phase == PHASE_SUMS:
            if key is None:
                count, sums, sumsq = fstats.local_sums(rows)
                arrays = fstats.encode_sums(count, sums, sumsq, divisor)
                record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
            else:
                record = crypto.to_array_record(fstats.encrypt_sums(rows, key, divisor))
            return Message(content=RecordDict({STATS_RECORD: record}), reply_to=msg)
        if phase != PHASE_RESULT:
            raise fstats.StatisticsError(f"unknown statistics phase {phase!r:.40}.")
        if key is None:
            summands = config.get("summands")
            if isinstance(summands, bool) or not isinstance(summands, int):
                raise fstats.StatisticsError("the plaintext total has no summand count.")
            if not 1 <= summands <= divisor:
                raise fstats.StatisticsError(f"{summands} summands for divisor {divisor}.")
            plain = msg.content.array_records.get(STATS_RECORD + ".total")
            if plain is None:
                raise fstats.StatisticsError("the plaintext total is missing.")
            arrays = {k: a.numpy() for k, a in plain.items()}
            stats = fstats.stats_from_sums(*fstats.decode_sums(arrays, divisor, summands), summands)
        else:
            blob = config.get("total")
            if not isinstance(blob, bytes):
                raise fstats.StatisticsError("the encrypted total is missing.")
            total = crypto.from_bytes(blob, key)
            stats = fstats.open_sums(total, key, divisor, int(features))
        context.state.array_records[STATE_RECORD] = ArrayRecord(
            {k: Array(v) for k, v in stats.to_arrays().items()}
        )
        reply = RecordDict({STATS_RECORD: ConfigRecord({"phase": PHASE_READY})})
        return Message(content=reply, reply_to=msg)
    except CiferError as exc:
        return _error(msg, f"feature statistics refused: {exc}")


def stored_statistics(context: Context) -> fstats.FeatureStats | None:
    """The global statistics this node keeps for the run (``None`` before the round)."""
    record = context.state.array_records.get(STATE_RECORD)
    if record is None:
        return None
    return fstats.FeatureStats.from_arrays({k: a.numpy() for k, a in record.items()})


def global_statistics(context: Context) -> fstats.FeatureStats:
    """The federation's statistics this node keeps for the run, to scale its raw rows.

    Raises
    ------
    StatisticsError
        When this node has none (it missed the statistics round, e.g. it connected later):
        its train or evaluate reply is then an error the server excludes, never a model
        trained on unscaled rows.

    """
    stats = stored_statistics(context)
    if stats is None:
        raise fstats.StatisticsError(
            "this node has no federated feature statistics for the run (it was not connected "
            "for the statistics round); it cannot scale its rows and takes no part."
        )
    return stats
