"""The record of one run of an encrypted strategy (docs/design.md §3.2, §6).

:class:`RunLedger` is the collaborator a strategy holds for what the run records round by
round: every exclusion with its reason (the results file and the checkpoint read them),
each round's statistics, and the ``Result`` so far, kept as Flower's ``Strategy.start``
keeps it, so that a checkpoint holds the metrics of every finished round and a resumed run
returns the restored rounds' metrics with the new ones.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

__all__ = ["MAX_REASON", "RunLedger"]

log = logging.getLogger("cifer_flwr.strategies")
#: Longest exclusion reason kept (in the log and the results file).
MAX_REASON = 500


class RunLedger:
    """Exclusions, round statistics and the ``Result`` of one run.

    ``excluded[round]`` lists ``(node, reason)``; ``round_stats[round]`` the round's
    figures (bytes, seconds, weight divisor, ...). Rounds up to :attr:`done` were finished
    before a restart and restored from the checkpoint: Flower's loop visits them, the
    strategy does nothing in them.
    """

    def __init__(self) -> None:
        self.begin(0)

    def begin(self, num_rounds: int, timeout: float | None = None) -> None:
        """Start a run of ``num_rounds`` rounds from round 1."""
        self.num_rounds = num_rounds
        #: the run's reply timeout (the masking stages wait as long as a round's replies)
        self.timeout = timeout
        self.result = Result()
        self.done = 0
        self._unsaved: int | None = None  # a finished round whose checkpoint is not written
        self.excluded: dict[int, list[tuple[int, str]]] = {}
        self.round_stats: dict[int, dict[str, float]] = {}

    def resume(
        self,
        result: Result,
        done: int,
        excluded: dict[int, list[tuple[int, str]]],
        round_stats: dict[int, dict[str, float]],
    ) -> None:
        """Continue after round ``done`` with a checkpoint's record of rounds ``1..done``."""
        self.result, self.done = result, done
        self.excluded, self.round_stats = excluded, round_stats

    def restored(self, server_round: int) -> bool:
        """Whether ``server_round`` was finished before the restart (nothing to do)."""
        return server_round <= self.done

    def exclude(self, server_round: int, node: int, reason: str) -> None:
        """Exclude ``node``'s reply of ``server_round`` with ``reason`` (logged, kept)."""
        if len(reason) > MAX_REASON:  # reasons may quote what a client sent
            reason = reason[: MAX_REASON - 3] + "..."
        log.warning("round %d: excluded node %d: %s", server_round, node, reason)
        self.excluded.setdefault(server_round, []).append((node, reason))

    def internal_error(self, server_round: int, node: int, exc: Exception) -> None:
        """Exclude ``node``'s reply because checking it raised ``exc`` (a bug, logged)."""
        log.error(
            "round %d: internal error while checking node %d's reply (a bug; the reply is "
            "excluded and the round goes on)",
            server_round,
            node,
            exc_info=exc,
        )
        self.excluded.setdefault(server_round, []).append(
            (node, f"internal error: {type(exc).__name__}: {exc}"[:MAX_REASON])
        )

    def excluded_in(self, server_round: int) -> int:
        """How many replies of ``server_round`` were excluded."""
        return len(self.excluded.get(server_round, []))

    def trained(
        self, server_round: int, arrays: ArrayRecord | None, metrics: MetricRecord | None
    ) -> None:
        """Record what ``aggregate_train`` returned, as Flower's loop records it."""
        if arrays is not None:
            self.result.arrays = arrays
        if metrics is not None:
            self.result.train_metrics_clientapp[server_round] = metrics

    def evaluated(self, server_round: int, metrics: MetricRecord | None) -> None:
        """Record what ``aggregate_evaluate`` returned, as Flower's loop records it.

        The round is finished: :meth:`finished` returns it once (its checkpoint is due).
        """
        if metrics is not None:
            self.result.evaluate_metrics_clientapp[server_round] = metrics
        self._unsaved = server_round

    def finished(self) -> int | None:
        """The round finished since the last call, if any (each round is returned once)."""
        done, self._unsaved = self._unsaved, None
        return done

    def merged(self, flower: Result) -> Result:
        """Flower's ``Result`` of this process with the rounds restored before it."""
        if not self.done:
            return flower
        restored = self.result
        for rnd, metrics in restored.train_metrics_clientapp.items():
            flower.train_metrics_clientapp.setdefault(rnd, metrics)
        for rnd, metrics in restored.evaluate_metrics_clientapp.items():
            flower.evaluate_metrics_clientapp.setdefault(rnd, metrics)
        flower.train_metrics_clientapp = dict(sorted(flower.train_metrics_clientapp.items()))
        flower.evaluate_metrics_clientapp = dict(sorted(flower.evaluate_metrics_clientapp.items()))
        if not flower.arrays and restored.arrays:
            flower.arrays = restored.arrays
        return flower
