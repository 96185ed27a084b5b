"""The deferred key-holder step for server optimizers (docs/design.md §4.3).

:class:`EncryptedFedOptBase` is the base of FedYogi, FedAdam, FedAdagrad and FedAvgM: the
server keeps the optimizer state encrypted, the key holders apply the step, and a strict
majority of state digests decides which replies are summed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg
from flwr.serverapp.strategy import Result

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_RETURN_STATE,
    META_STATE_ROUND,
    PART_MODEL,
    PART_STATE,
    REPLY_RECORD,
    REPLY_STATE_CHECK,
    REPLY_STATE_DIGEST,
)
from cifer_flwr.exceptions import LayoutMismatchError
from cifer_flwr.strategies._base import EncryptedFedAvgBase
from cifer_flwr.strategies._fold import Accepted, Parts, node_of
from cifer_flwr.strategies._screen import metadata_problem

__all__ = ["STATE_HOLDERS", "EncryptedFedOptBase"]

log = logging.getLogger("cifer_flwr.strategies")
_node = node_of

#: FedOpt: how many sampled clients are asked to return the refreshed encrypted state (the
#: first ones in sampling order), so that a round survives the loss of any one of them.
STATE_HOLDERS = 2


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
        messages = FlwrFedAvg.configure_train(self, server_round, arrays, config, grid)
        return [m for m in messages if int(m.metadata.dst_node_id) not in self.banned]

    def _final_result(self, result: Result) -> Result:
        """``Result.arrays`` is the current global.

        When the key holders refused the state of the last round's global in its
        evaluation, the other asked holder's state replaced it (docs/design.md §4.3).
        """
        if result.arrays and self.global_model.is_set:
            result.arrays = self.global_model.record()
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
        if not self.global_model.is_set:
            return arrays
        return self.global_model.record()

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
        parts = crypto.bundle_from_record(self.global_model.record(), self.key)
        parts[PART_STATE] = state
        self.global_model.set(parts)
        self.global_model.save(server_round)
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
        model = self.screen.require_layout()
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
            self.ledger.exclude(
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
                self.ledger.exclude(
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
            self.ledger.exclude(
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
