"""Peer-to-peer (gossip) topology: the ServerApp only relays ciphertexts (docs/design.md §4.5).

There is no global model and no aggregation on the server. Each round every peer receives
its neighbours' latest models (ciphertexts when encryption is on), decrypts and mixes them
with its own with gossip weights, trains, keeps the result in its ClientApp state and
returns it (encrypted) for the server to relay next round. Peers report the consensus
distance: the RMS difference between their model and the mean of their neighbours' models.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from cifer_flwr import crypto, protocol
from cifer_flwr.apps.data import Partition
from cifer_flwr.apps.results import round_row
from cifer_flwr.experiments.tasks import Task, TrainSettings
from cifer_flwr.experiments.topology.graph import build_graph, mix, mixing_weights

__all__ = ["P2P_EVALUATE", "P2P_TRAIN", "PeerRuntime", "p2p_evaluate", "p2p_train", "run_p2p"]

log = logging.getLogger(__name__)

P2P_TRAIN = "train.p2p"
P2P_EVALUATE = "evaluate.p2p"
_STATE_KEY = "cifer.p2p.model"
_PEER_PREFIX = "peer."
Arrays = dict[str, Any]


# ------------------------------------------------------------------------------ peer side
@dataclass
class PeerRuntime:
    """What a peer needs: its task, data, training settings and (optionally) the key."""

    task: Task
    data: Partition
    settings: TrainSettings
    key: crypto.AnyKey | None
    init: Callable[[], Arrays]


def _to_record(arrays: Arrays, key: crypto.AnyKey | None) -> tuple[ArrayRecord, float]:
    t0 = time.perf_counter()
    if key is None:
        return ArrayRecord({k: ArrayRecord([np.asarray(v)])["0"] for k, v in arrays.items()}), 0.0
    weight = protocol.exact_weight(arrays, key.params)  # quantized schemes: fit the range
    record = crypto.to_array_record(crypto.encrypt(arrays, key, weight=weight))
    return record, time.perf_counter() - t0


def _from_record(record: ArrayRecord, key: crypto.AnyKey | None) -> Arrays:
    if key is None:
        return {k: a.numpy() for k, a in record.items()}
    enc = crypto.from_array_record(record, key)
    return crypto.decrypt(enc, key, divisor=enc.weight)


def _rms(a: Arrays, b: Arrays) -> float:
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in a)
    return math.sqrt(num / max(1, sum(np.asarray(a[k]).size for k in a)))


def p2p_train(msg: Message, context: Context, rt: PeerRuntime) -> Message:
    """Mix the neighbours' models into this peer's own, train, keep and return the result."""
    cfg = msg.content.config_records["config"]
    me = int(cast(int, cfg["peer-index"]))
    stored = context.state.array_records.get(_STATE_KEY)
    own = {k: a.numpy() for k, a in stored.items()} if stored is not None else rt.init()
    t0 = time.perf_counter()
    others = {
        int(name[len(_PEER_PREFIX) :]): _from_record(rec, rt.key)
        for name, rec in msg.content.array_records.items()
        if name.startswith(_PEER_PREFIX)
    }
    decrypt_s = time.perf_counter() - t0
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": float(len(rt.data.y_train))
    }
    if others:
        mean = {k: np.mean([o[k] for o in others.values()], axis=0) for k in own}
        metrics["consensus-distance"] = _rms(own, mean)
        weights = {me: float(cfg["mix.self"])}  # type: ignore[arg-type]
        weights.update({j: float(cfg[f"mix.{j}"]) for j in others})  # type: ignore[arg-type]
        own = mix(own, others, weights, me)
    trained, loss = rt.task.train(own, rt.data, rt.settings)
    context.state.array_records[_STATE_KEY] = ArrayRecord(
        {k: ArrayRecord([np.asarray(v)])["0"] for k, v in trained.items()}
    )
    record, encrypt_s = _to_record(trained, rt.key)
    metrics.update({"train-loss": loss, "cifer-encrypt-s": encrypt_s, "cifer-decrypt-s": decrypt_s})
    content = RecordDict({"model": record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def p2p_evaluate(msg: Message, context: Context, rt: PeerRuntime) -> Message:
    """Evaluate this peer's own model on its local test split."""
    stored = context.state.array_records.get(_STATE_KEY)
    arrays = {k: a.numpy() for k, a in stored.items()} if stored is not None else rt.init()
    loss, acc = rt.task.evaluate(arrays, rt.data)
    metrics = MetricRecord(
        {"num-examples": float(len(rt.data.y_test)), "loss": loss, "accuracy": acc}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


# ------------------------------------------------------------------------------ relay side
def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {n} peers connected within {timeout:.0f}s.")
        time.sleep(0.5)
    return nodes[:n]


def _metric(reply: Message, name: str) -> float | None:
    for record in reply.content.metric_records.values():
        if name in record:
            return float(record[name])  # type: ignore[arg-type]
    return None


def _weighted(replies: list[Message], name: str, weights: list[float]) -> float | None:
    if not replies:
        return None
    return float(np.average([_metric(r, name) or 0.0 for r in replies], weights=weights))


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def run_p2p(
    grid: Grid,
    *,
    num_peers: int,
    num_rounds: int,
    graph: str = "ring",
    degree: int = 2,
    mixing: str = "metropolis",
    seed: int = 0,
    timeout: float = 600.0,
    on_round: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Schedule gossip rounds; relay the peers' (encrypted) models between neighbours.

    The server never decrypts, averages or keeps a global model: it stores each peer's
    latest reply only to forward it. A peer whose reply is missing or an error is skipped by
    its neighbours in the next round (gossip weights are recomputed without it).
    ``on_round`` gets the rows so far after every round (the generic app writes them and
    logs the round, :class:`~cifer_flwr.apps.results.ResultsWriter`).

    Returns
    -------
    list of dict
        Per round: mean accuracy and loss, mean consensus distance, bytes relayed, seconds.

    """
    nodes = _wait_for_nodes(grid, num_peers, timeout)
    edges = build_graph(graph, len(nodes), degree, seed)
    latest: dict[int, ArrayRecord] = {}
    history: list[dict[str, Any]] = []
    for rnd in range(1, num_rounds + 1):
        t0 = time.perf_counter()
        have = set(latest)
        messages = []
        sent = 0
        for i, node in enumerate(nodes):
            weights = mixing_weights(edges, have | {i}, mixing)[i]
            cfg = ConfigRecord({"server-round": rnd, "peer-index": i, "mix.self": weights[i]})
            content = RecordDict({"config": cfg})
            for j in edges[i]:
                if j in latest:
                    cfg[f"mix.{j}"] = weights[j]
                    content[f"{_PEER_PREFIX}{j}"] = latest[j]
                    sent += latest[j].count_bytes()
            messages.append(Message(content=content, message_type=P2P_TRAIN, dst_node_id=node))
        replies = {
            r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)
        }
        received, dropped, train_replies = 0, [], []
        errors: list[dict[str, Any]] = []
        for i, node in enumerate(nodes):
            reply = replies.get(node)
            if reply is None or reply.has_error() or "model" not in reply.content.array_records:
                reason = (
                    "no reply"
                    if reply is None
                    else (reply.error.reason if reply.has_error() else "no model")
                )
                log.warning(
                    "round %d: peer %d dropped out (%s); neighbours skip it", rnd, i, reason
                )
                latest.pop(i, None)
                dropped.append(i)
                errors.append({"node": node, "phase": "train", "reason": reason})
                continue
            latest[i] = reply.content.array_records["model"]
            received += latest[i].count_bytes()
            train_replies.append(reply)
        evals = list(
            grid.send_and_receive(
                [
                    Message(
                        content=RecordDict({"config": ConfigRecord({"server-round": rnd})}),
                        message_type=P2P_EVALUATE,
                        dst_node_id=nodes[i],
                    )
                    for i in sorted(latest)
                ],
                timeout=timeout,
            )
        )
        evals = [e for e in evals if not e.has_error()]
        weights_n = [(_metric(e, "num-examples") or 1.0) for e in evals]
        enc_s = _mean([_metric(r, "cifer-encrypt-s") for r in train_replies])
        dec_s = _mean([_metric(r, "cifer-decrypt-s") for r in train_replies])
        row = round_row(
            {
                "round": rnd,
                "accuracy": _weighted(evals, "accuracy", weights_n),
                "loss": _weighted(evals, "loss", weights_n),
                "train-loss": _mean([_metric(r, "train-loss") for r in train_replies]),
                "consensus-distance": _mean(
                    [_metric(r, "consensus-distance") for r in train_replies]
                ),
                "client-encrypt-s": enc_s,
                "client-decrypt-s": dec_s,
                "client-crypto-s": None if enc_s is None else enc_s + (dec_s or 0.0),
                "bytes-sent": sent,
                "bytes-received": received,
                "round-s": time.perf_counter() - t0,
                "train-replies": len(train_replies),
                "peers": len(latest),
                "dropped": dropped,
                "errors": errors,
            }
        )
        history.append(row)
        if on_round is not None:
            on_round(list(history))
    return history
