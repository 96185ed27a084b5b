"""A strategy's run on a metered grid, written to the results file after every round.

* :class:`MeteredGrid` wraps the ServerApp's ``Grid`` and measures, per round, the payload
  bytes sent and received, the wall time of the train and evaluate phases and the error
  replies.
* :func:`run_strategy` runs a strategy on a metered grid and writes the results file (JSON,
  :mod:`cifer_flwr.apps.results`) whose path comes from run config (``results-path``) after
  every round: the ServerApp runs in a subprocess of the SuperLink, so a file is how results
  reach the person who started the run, and a killed run keeps the rows of its completed
  rounds. :func:`run_metered` is its loop, shared with the harness's generic app.
* Resume: run config ``resume = true`` continues a killed run from the encrypted strategy's
  checkpoint (``checkpoint-path``, by default next to the results file, see
  :func:`~cifer_flwr.apps.runconfig.checkpoint_path`); the results then hold the restored
  rounds and the new ones.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from cifer_flwr.apps.results import ROUND_KEYS, ResultsWriter, round_row, run_failure
from cifer_flwr.apps.runconfig import (
    checkpoint_path,
    encryption_enabled,
    path_option,
    resume_requested,
)
from cifer_flwr.constants import MASK_RECORD, METRIC_VALID_REPLIES
from cifer_flwr.crypto.container import write_file_atomic
from cifer_flwr.exceptions import RunFailedError
from cifer_flwr.strategies import DelegatingGrid, EncryptedFedAvgBase, stream_replies
from cifer_flwr.strategies.registry import strategy_spec

if TYPE_CHECKING:  # the type Flower's public Grid declares for set_run / run; type only
    pass

__all__ = [
    "MeteredGrid",
    "RoundRecorder",
    "masking_row",
    "previous_rows",
    "round_rows",
    "run_metered",
    "run_strategy",
    "save_plaintext_model",
]

log = logging.getLogger(__name__)


def save_plaintext_model(path: str | os.PathLike[str], arrays: ArrayRecord) -> None:
    """Write plaintext arrays as ``.npz`` (no pickle), atomically.

    Used by the plaintext baseline so that its final model can be evaluated exactly like the
    decrypted encrypted one.
    """
    import io

    buf = io.BytesIO()
    named: dict[str, Any] = {name: arr.numpy() for name, arr in arrays.items()}
    np.savez(buf, allow_pickle=False, **named)
    write_file_atomic(Path(path), buf.getvalue())


def _payload_bytes(msg: Message) -> int:
    if msg.has_error() or not msg.has_content():
        return 0
    return int(sum(rec.count_bytes() for rec in msg.content.array_records.values()))


def _server_round(msg: Message) -> int:
    for record in msg.content.config_records.values():
        if "server-round" in record:
            value = record["server-round"]
            return int(value) if isinstance(value, int | float) else 0
    return 0


def _phase(msg: Message) -> str:
    kind = msg.metadata.message_type
    if MASK_RECORD in msg.content.config_records and not msg.content.array_records:
        return "mask"  # a masking stage of a round, not its train message (§4.9)
    if kind.startswith(MessageType.TRAIN):
        return "train"
    return "evaluate" if kind.startswith(MessageType.EVALUATE) else "other"


class MeteredGrid(DelegatingGrid):
    """A :class:`~flwr.serverapp.Grid` that measures what goes through it, per round.

    It meters at the level of ``push_messages`` / ``pull_messages``, so it sees both
    Flower's ``send_and_receive`` and the strategies' streaming of replies. Per round
    number (the messages' config ``server-round``) and phase (``train`` / ``evaluate``) it
    records: the payload bytes of all ``ArrayRecord`` s sent and received, the time from
    the first push to the last reply, the number of messages and replies, and the error
    replies ``(node id, reason)``.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.
    poll_interval : float (default: 0.2)
        Seconds between pulls for replies (also the streaming strategies' ``pull_interval``).
        Flower 1.41's own ``send_and_receive`` sleeps 3 s between pulls, which adds up to
        3 s to every train and evaluate phase.

    """

    def __init__(self, grid: Grid, *, poll_interval: float = 0.2) -> None:
        super().__init__(grid)
        self.pull_interval = poll_interval
        self.rounds: dict[int, dict[str, Any]] = {}
        self._sent: dict[str, tuple[int, str]] = {}  # message id -> (round, phase)

    # --- metering ---------------------------------------------------------------------
    def _stats(self, server_round: int, phase: str) -> dict[str, Any]:
        stats = self.rounds.setdefault(server_round, {})
        stats.setdefault("errors", [])
        for name in ("bytes-sent", "bytes-received", "replies", "expected"):
            stats.setdefault(f"{phase}-{name}", 0)
        return stats

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the wrapped grid; record bytes, count and start time per phase."""
        messages = list(messages)
        now = time.time()
        ids = list(self.inner.push_messages(messages))
        for msg, message_id in zip(messages, ids, strict=False):
            server_round, phase = _server_round(msg), _phase(msg)
            self._sent[message_id] = (server_round, phase)
            stats = self._stats(server_round, phase)
            stats.setdefault(f"{phase}-start", now)
            stats[f"{phase}-bytes-sent"] += _payload_bytes(msg)
            stats[f"{phase}-expected"] += 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped grid; record bytes, replies, errors and end time."""
        replies = list(self.inner.pull_messages(message_ids))
        now = time.time()
        for reply in replies:
            sent = self._sent.pop(reply.metadata.reply_to_message_id, None)
            if sent is None:
                continue
            server_round, phase = sent
            stats = self._stats(server_round, phase)
            stats[f"{phase}-end"] = now
            stats[f"{phase}-s"] = now - stats[f"{phase}-start"]
            stats[f"{phase}-bytes-received"] += _payload_bytes(reply)
            stats[f"{phase}-replies"] += 1
            if reply.has_error():
                stats["errors"].append(
                    {
                        "node": reply.metadata.src_node_id,
                        "phase": phase,
                        "reason": reply.error.reason,
                    }
                )
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every ``poll_interval`` s until all replies or ``timeout``.

        The strategies' pull loop (:func:`cifer_flwr.strategies.stream_replies`), every
        pending id in each pull.
        """
        messages = list(messages)
        return list(stream_replies(self, messages, timeout, batch=max(1, len(messages))))


def _metrics(record: Mapping[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {k: (v if isinstance(v, int | float) else list(v)) for k, v in record.items()}


def round_rows(
    grid: MeteredGrid,
    result: Result,
    strategy: Strategy,
    num_rounds: int,
    *,
    only: Iterable[int] | None = None,
    released: Mapping[int, tuple[bool, int | None]] | None = None,
) -> list[dict[str, Any]]:
    """Per-round rows of the results file from a metered grid and Flower's result.

    ``only`` restricts the rows to these rounds (default: 1 to ``num_rounds``);
    ``released`` maps a round to (whether ``aggregate_train`` returned a model, the number
    of replies it aggregated or ``None`` when the strategy does not say).
    """
    released = released or {}
    round_stats = getattr(strategy, "round_stats", {})
    excluded = getattr(strategy, "excluded", {})
    events = getattr(strategy, "integrity_events", [])
    rows = []
    for r in range(1, num_rounds + 1) if only is None else sorted(only):
        g = grid.rounds.get(r, {})
        train = _metrics(result.train_metrics_clientapp.get(r))
        evaluate = _metrics(result.evaluate_metrics_clientapp.get(r))
        enc_s, dec_s = train.get("cifer-encrypt-s"), train.get("cifer-decrypt-s")
        # a masked round starts with its masking stages (docs/design.md §4.9)
        start = min((g[k] for k in ("mask-start", "train-start") if k in g), default=None)
        end = g.get("evaluate-end", g.get("train-end"))
        row: dict[str, Any] = {
            "round": r,  # every key of ROUND_KEYS (round_row checks)
            "accuracy": evaluate.get("accuracy"),
            "loss": evaluate.get("loss"),
            "train-loss": train.get("train-loss"),
            "round-s": (end - start) if start is not None and end is not None else None,
            "train-s": g.get("train-s"),
            "evaluate-s": g.get("evaluate-s"),
            "bytes-sent": g.get("train-bytes-sent", 0) + g.get("evaluate-bytes-sent", 0),
            "bytes-received": g.get("train-bytes-received", 0)
            + g.get("evaluate-bytes-received", 0),
            "train-bytes-sent": g.get("train-bytes-sent"),
            "train-bytes-received": g.get("train-bytes-received"),
            "aggregate-s": round_stats.get(r, {}).get("aggregate-s"),
            "client-encrypt-s": enc_s,
            "client-decrypt-s": dec_s,
            "client-crypto-s": None if enc_s is None else enc_s + (dec_s or 0.0),
            "train-replies": g.get("train-replies"),
            "accepted": released.get(r, (None, None))[1],
            "released": released.get(r, (None, None))[0],
            "errors": g.get("errors", []),
            "excluded": [{"node": n, "reason": why} for n, why in excluded.get(r, [])],
            # SecureFed: refused releases, failing groups, suspects, excluded nodes (§4.4.3)
            "integrity-events": [e for e in events if e.get("round") == r],
            # secure aggregation (§4.9): authenticated by a roster?, cohort, dropped, cost
            "masking": masking_row(round_stats.get(r, {})),
            "train-metrics": train,
            "evaluate-metrics": evaluate,
        }
        rows.append(round_row(row))
    return rows


def masking_row(stats: Mapping[str, float]) -> dict[str, Any] | None:
    """The ``masking`` field of a results row from a masked round's statistics (or None)."""
    if "mask-cohort" not in stats:
        return None
    authenticated = bool(stats.get("mask-authenticated", 0.0))
    return {
        "authenticated": authenticated,
        "guarantee": "active server (roster)" if authenticated else "honest-but-curious server",
        "cohort": int(stats["mask-cohort"]),
        "dropped": int(stats.get("mask-dropped", 0)),
        "bytes": int(stats.get("mask-bytes", 0)),
        "setup-s": stats.get("mask-setup-s"),
        "unmask-s": stats.get("unmask-server-s"),
    }


def previous_rows(results_path: Path | None) -> list[dict[str, Any]]:
    """The per-round rows of an earlier (killed) run's results file, for a resumed run.

    A missing, unreadable or foreign file gives no rows: the rounds the checkpoint
    restores then get rows built from the restored history, without grid figures.
    """
    if results_path is None or not results_path.is_file():
        return []
    try:
        data = json.loads(results_path.read_text())
    except (OSError, ValueError):
        log.warning("resume: cannot read the earlier results %s; rows rebuilt", results_path)
        return []
    rows = data.get("rounds") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    # rows of the schema's keys only (an older file may hold others)
    return [
        round_row({k: v for k, v in r.items() if k in ROUND_KEYS})
        for r in rows
        if isinstance(r, dict) and isinstance(r.get("round"), int)
    ]


class RoundRecorder:
    """Keeps Flower's per-round history while a strategy runs and reports each round.

    Flower's ``Strategy.start`` only returns its ``Result`` at the end; to write the
    results file after every round, the recorder wraps the strategy's ``aggregate_train``
    and ``aggregate_evaluate`` (on the instance) and records what they return. After the
    evaluation of every round it calls ``on_round(round)``. The rounds a resumed encrypted
    strategy restored from its checkpoint (Flower's loop passes them; the strategy does
    nothing in them) are not recorded: their rows come from ``restored``.

    Parameters
    ----------
    strategy : Strategy
        The strategy about to run (its methods are wrapped in place).
    grid : MeteredGrid
        The grid it runs on (its per-round figures go into the rows).
    num_rounds : int
        Rounds of the whole run (restored ones included).
    restored : list of dict
        Rows of an earlier run's results file (resume); those of rounds this run does not
        perform are kept as they are.
    on_round : callable, optional
        Called with the round number after each completed round.

    """

    def __init__(
        self,
        strategy: Strategy,
        grid: MeteredGrid,
        num_rounds: int,
        *,
        restored: Iterable[Mapping[str, Any]] = (),
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.grid = grid
        self.num_rounds = num_rounds
        self.restored = {int(r["round"]): dict(r) for r in restored}
        self.on_round = on_round
        self.result = Result()
        self.completed: list[int] = []
        #: round -> (an aggregate was released, replies aggregated or None), for run_failure
        self.released: dict[int, tuple[bool, int | None]] = {}
        train, evaluate = strategy.aggregate_train, strategy.aggregate_evaluate
        # a resumed encrypted run: Flower's loop passes the rounds its checkpoint restored
        skip = strategy.ledger.restored if isinstance(strategy, EncryptedFedAvgBase) else None

        def aggregate_train(server_round: int, replies: Iterable[Message]) -> Any:
            arrays, metrics = train(server_round, replies)
            if skip is not None and skip(server_round):
                return arrays, metrics
            if metrics is not None:
                self.result.train_metrics_clientapp[server_round] = metrics
            valid = None if metrics is None else metrics.get(METRIC_VALID_REPLIES)
            self.released[server_round] = (
                arrays is not None,
                int(valid) if isinstance(valid, int | float) else None,
            )
            return arrays, metrics

        def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> Any:
            metrics = evaluate(server_round, replies)
            if skip is not None and skip(server_round):
                return metrics
            if metrics is not None:
                self.result.evaluate_metrics_clientapp[server_round] = metrics
            self.completed.append(server_round)
            if self.on_round is not None:
                self.on_round(server_round)
            return metrics

        setattr(strategy, "aggregate_train", aggregate_train)  # noqa: B010
        setattr(strategy, "aggregate_evaluate", aggregate_evaluate)  # noqa: B010

    @property
    def performed(self) -> list[int]:
        """Rounds this run started (a resumed run starts after the restored ones)."""
        return sorted(r for r, g in self.grid.rounds.items() if r >= 1 and "train-start" in g)

    @property
    def resumed_after(self) -> int:
        """Last round restored from a checkpoint (0 for a fresh run)."""
        done = self.performed
        return (min(done) - 1) if done else max(self.restored, default=0)

    def rows(self, final: Result | None = None) -> list[dict[str, Any]]:
        """Rows of every round so far, restored ones first; all rounds given ``final``."""
        first = min(self.performed, default=self.num_rounds + 1)
        if final is None:
            kept = [self.restored[r] for r in sorted(self.restored) if r < first]
            fresh = round_rows(
                self.grid,
                self.result,
                self.strategy,
                self.num_rounds,
                only=self.completed,
                released=self.released,
            )
            return kept + fresh
        rows = []
        rows_final = round_rows(
            self.grid, final, self.strategy, self.num_rounds, released=self.released
        )
        for row in rows_final:
            r = row["round"]
            rows.append(self.restored[r] if r < first and r in self.restored else row)
        return rows


def run_metered(
    strategy: Strategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    *,
    num_rounds: int,
    writer: ResultsWriter,
    restored: Iterable[Mapping[str, Any]] = (),
    **start_options: Any,
) -> tuple[Result, list[dict[str, Any]], int]:
    """Run ``strategy`` on a :class:`MeteredGrid`, reporting every round to ``writer``.

    The one run loop of the examples (:func:`run_strategy`) and the generic app
    (:func:`cifer_flwr.experiments.topology.centralized.run_centralized`): the results file
    is rewritten after every round and one progress line per round goes to Flower's logger
    (:meth:`ResultsWriter.round_completed`); an exception writes status ``error`` with the
    completed rounds and is re-raised.

    Parameters
    ----------
    strategy, grid, initial_arrays
        As for ``Strategy.start``.
    num_rounds : int
        Rounds of the whole run (restored ones included).
    writer : ResultsWriter
        Receives the strategy's description and the rows.
    restored : iterable of dict
        Rows of a killed run's results file (resume).
    **start_options
        Further keywords of ``Strategy.start`` (``timeout``, ``train_config``, ...).

    Returns
    -------
    tuple
        Flower's result, the rows of every round and the last round restored from a
        checkpoint (0 for a fresh run).

    """
    metered = MeteredGrid(grid)
    recorder = RoundRecorder(strategy, metered, num_rounds, restored=restored)
    writer.update(num_rounds=num_rounds)
    writer.describe_strategy(strategy)
    writer.start(recorder.rows())
    recorder.on_round = lambda _r: writer.round_completed(
        recorder.rows(), resumed_after=recorder.resumed_after
    )
    try:
        result = strategy.start(
            grid=metered, initial_arrays=initial_arrays, num_rounds=num_rounds, **start_options
        )
    except BaseException as exc:
        writer.fail(exc, recorder.rows(), resumed_after=recorder.resumed_after)
        raise
    rows = recorder.rows(result)
    cause = run_failure(rows, num_rounds)
    if cause is not None:  # a run that aggregated nothing is a failure, not "ok" (issue 22)
        failure = RunFailedError(cause)
        writer.fail(failure, rows, resumed_after=recorder.resumed_after)
        raise failure
    return result, rows, recorder.resumed_after


def run_strategy(
    strategy: Strategy,
    grid: Grid,
    context: Context,
    initial_arrays: ArrayRecord,
    *,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    app_name: str = "",
) -> Result:
    """Run ``strategy`` with :func:`run_metered` and write the results file.

    Run config read: ``num-server-rounds`` (default 3), ``results-path`` (absolute; no
    file when empty), ``save-path`` (plaintext baseline: the final model as ``.npz``;
    encrypted strategies write their encrypted model there themselves), ``resume`` and the
    keys :func:`~cifer_flwr.apps.runconfig.make_strategy` reads (copied into the results as
    ``run-config``).

    The results file (schema ``cifer.results/1``, :mod:`cifer_flwr.apps.results`,
    the same as the generic app's) is rewritten atomically after every round (``status``
    ``running``), so a killed run keeps the rows of its completed rounds; a resumed run
    (``resume = true``, the strategy built with
    :func:`~cifer_flwr.apps.runconfig.make_strategy` from the same run config) keeps the
    rows of the rounds restored from the checkpoint and adds the new ones. Each completed
    round is logged as one line on Flower's logger.

    Returns
    -------
    Result
        Flower's result (its ``arrays`` are encrypted when encrypting).

    """
    cfg = context.run_config
    num_rounds = int(cfg.get("num-server-rounds", 3))
    results_path = path_option(cfg, "results-path")
    save_path = path_option(cfg, "save-path")
    encrypted = encryption_enabled(cfg)
    resume = resume_requested(cfg)
    writer = ResultsWriter(
        results_path,
        app=app_name,
        run_id=context.run_id,
        strategy=strategy_spec(cfg.get("strategy", "fedavg")).name,
        topology="centralized",
        encrypted=encrypted,
        run_config=cfg,
        resume=resume,
        checkpoint_path=str(checkpoint_path(cfg)) if encrypted else None,
        save_path=str(save_path) if save_path else None,
    )
    result, rows, resumed_after = run_metered(
        strategy,
        grid,
        initial_arrays,
        num_rounds=num_rounds,
        writer=writer,
        restored=previous_rows(results_path) if resume else (),
        train_config=train_config,
        evaluate_config=evaluate_config,
    )
    if save_path is not None and not encrypted:
        save_plaintext_model(save_path, result.arrays)
    writer.write("ok", rows, resumed_after=resumed_after)
    if results_path is not None:
        log.info("wrote results to %s", results_path)
    return result
