"""SecureFed: encrypted FedAvg hardened for adversarial settings (docs/design.md §4.4)."""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg
from flwr.serverapp.strategy import Result

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_CHECK,
    CFG_CLIP_NORM,
    CFG_COHORT,
    CFG_NOISE_STD,
    CFG_SESSION,
    CFG_SLOT,
    CHECK_FAILED,
    META_BASE_ROUND,
    META_CLIP_NORM,
    META_GROUP,
    META_NOISE_STD,
    META_ROUND,
    META_SESSION,
    META_SLOTS,
    PART_CHECK,
    PART_MODEL,
)
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
)
from cifer_flwr.strategies._fold import FoldMode, Parts
from cifer_flwr.strategies._recovery import CohortRecovery, Release, release_from_parts
from cifer_flwr.strategies._screen import metadata_problem
from cifer_flwr.strategies.fedavg import FedAvg

__all__ = ["SecureFed"]

log = logging.getLogger("cifer_flwr.strategies")


class SecureFed(FedAvg):
    """Encrypted FedAvg with a minimum cohort, clipping, DP noise, checks and recovery.

    * **Minimum cohort**: no aggregate of fewer than ``min_cohort`` updates is ever
      released (a sum of one update is that update).
    * **Client-side L2 clipping** of each update to ``clip_norm`` (the server cannot inspect
      ciphertexts, so clipping is what bounds one client's influence).
    * **Distributed DP noise**: each of the K sampled clients adds Gaussian noise with std
      ``noise_multiplier * clip_norm / sqrt(K)``, so the sum carries std
      ``noise_multiplier * clip_norm``.
    * **Aggregation check** (key holders verify, :func:`cifer_flwr.protocol.open_global`):

      - a *check part*: each client encrypts a round tag in its cohort slot and its weight,
        so a dropped, duplicated or replayed update shows in the sum;
      - a check *inside every ciphertext*: the last ``protocol.INTEGRITY_SLOTS`` (4) slots
        of every model ciphertext carry ``max_abs / (4K) * tag(session, round, slot, chunk)``
        with public SHAKE-256 tags in [1, 2). The key holder recomputes the sum of the tags
        of the slots the check part shows and requires every ciphertext to match within
        the CKKS error bound. A ciphertext under another key decrypts to noise, a ciphertext
        from another round, client or position carries other tags: both fail (chance of a
        pass per ciphertext with 1 000 clients: about 5e-14 with preset ``default``, 5e-8
        with ``compact``);
      - the *norm bound* of clipping: a key holder holding the global the contributions
        trained from requires ``||mean - base|| <= clip_norm`` plus the DP-noise, CKKS and
        rounding allowances (:func:`cifer_flwr.protocol.update_norm_allowance`).

      A key holder never trains or evaluates on an aggregate that fails: ``ckks_mod``
      answers with an error reply whose reason opens with ``"aggregation check failed"``.

    * **Clean-cohort recovery** (docs/design.md §4.4). When the round-``r`` replies are
      aggregated, the server also fixes a partition of them into ``g = K // min_cohort``
      groups (round-robin, current suspects first, so every group has >= ``min_cohort``
      updates) and keeps the group sums (only when ``g >= 2``). Then:

      1. Normal rounds send only the full aggregate.
      2. When more key holders refuse it than accept it (evaluate replies of round ``r`` or
         train replies of round ``r + 1``), the server sends, in the next train round, the
         group sums instead. Each key holder verifies each group, trains from the weighted
         mean of the groups that pass, and reports the failing indices
         (``failed-groups``). A group a majority reports is dropped from later sends.
      3. If every group fails (or there were fewer than two), the release is dropped and
         the server sends the previous global again.
      4. Suspects: the first failing group becomes the suspect set ``T``; every later
         failing group ``F`` narrows it, ``T := T ∩ F`` (restarting from ``F`` if that is
         empty); the next partition spreads ``T`` over the groups, so every failure
         leaves at most ``ceil(|T| / 2)`` suspects. When one node is left it is excluded
         from sampling.

      Only unions of one round's groups are ever released, so every value a key holder
      can compute is a sum of >= ``min_cohort`` updates. With one misbehaving client and
      >= ``2 * min_cohort`` valid replies per round: no poisoned update is ever used;
      with federated evaluation on, no round is lost; without it each attack costs the
      next train round; the client is excluded after at most
      ``1 + ceil(log2(2 * min_cohort - 1))`` attacks (4 for ``min_cohort=3``).

    Parameters
    ----------
    min_cohort : int (default: 3)
        Fewest valid updates an aggregate may contain.
    clip_norm : float, optional
        L2 bound of each client's update; ``None`` disables clipping (and the norm check).
    noise_multiplier : float (default: 0.0)
        DP noise multiplier ``sigma``; needs ``clip_norm``.
    aggregation_check : bool (default: True)
        Add the aggregation check (and with it recovery).
    public_key, save_path, examples_per_client, checkpoint_path, resume, masking, fold
        As in :class:`cifer_flwr.strategies.FedAvg`.
    min_train_nodes, min_available_nodes : int (default: 3)
        As in Flower's FedAvg, raised to ``min_cohort`` when lower.
    **flower_kwargs
        Forwarded to Flower's FedAvg with its defaults: ``fraction_train``,
        ``fraction_evaluate``, ``min_evaluate_nodes``, ``weighted_by_key``,
        ``arrayrecord_key``, ``configrecord_key``, ``train_metrics_aggr_fn``,
        ``evaluate_metrics_aggr_fn``.

    """

    def __init__(
        self,
        *,
        public_key: str | os.PathLike[str] | crypto.AnyKey,
        min_cohort: int = 3,
        clip_norm: float | None = None,
        noise_multiplier: float = 0.0,
        aggregation_check: bool = True,
        save_path: str | os.PathLike[str] | None = None,
        examples_per_client: float = 1000.0,
        checkpoint_path: str | os.PathLike[str] | None = None,
        resume: bool = False,
        masking: bool = False,
        fold: FoldMode = "auto",
        min_train_nodes: int = 3,
        min_available_nodes: int = 3,
        **flower_kwargs: Any,
    ) -> None:
        if min_cohort < 2:
            raise ConfigError(
                f"min_cohort must be >= 2 (an aggregate of one update is that update), "
                f"got {min_cohort}."
            )
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0 or None, got {clip_norm}.")
        if noise_multiplier < 0 or (noise_multiplier > 0 and clip_norm is None):
            raise ConfigError(
                f"noise_multiplier={noise_multiplier} needs clip_norm (noise is scaled to the "
                "clipping bound) and must be >= 0."
            )
        if "min_replies" in flower_kwargs:
            raise ConfigError("SecureFed takes min_cohort (its min_replies); drop min_replies.")
        super().__init__(
            public_key=public_key,
            save_path=save_path,
            examples_per_client=examples_per_client,
            min_replies=min_cohort,
            checkpoint_path=checkpoint_path,
            resume=resume,
            masking=masking,
            fold=fold,
            min_train_nodes=max(min_train_nodes, min_cohort),
            min_available_nodes=max(min_available_nodes, min_cohort),
            **flower_kwargs,
        )
        if not crypto.has_reserved_slots(self.key):
            raise ConfigError(
                f"SecureFed needs a CKKS or packed key: its per-ciphertext integrity values "
                f"(docs/design.md §4.4) use reserved slots, which the {self.key.params.name!r} "
                "Paillier key does not have. Use encryption.preset=default (or packed), or "
                "another strategy (FedAvg, FedProx, FedAdam, ...) with Paillier."
            )
        self.min_cohort = min_cohort
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.aggregation_check = aggregation_check

    def _reset_round_memory(self) -> None:
        super()._reset_round_memory()
        self.session = secrets.token_hex(8)
        #: releases, candidate groups, verdicts, suspects and exclusions (§4.4)
        self.recovery = CohortRecovery(self.min_replies, self.global_model)
        self._sent: dict[int, Release] = {}
        self._eval_sent: dict[int, Release] = {}
        self._slots: dict[int, dict[int, int]] = {}
        self._cohort: dict[int, int] = {}

    @property
    def banned(self) -> set[int]:
        """Node ids excluded from sampling after recovery identified them."""
        return self.recovery.banned

    @property
    def suspects(self) -> set[int] | None:
        """The current suspect set ``T`` (``None``: none)."""
        return self.recovery.suspects

    @property
    def integrity_events(self) -> list[dict[str, Any]]:
        """Every refusal, failed group and exclusion, in order (for the results file)."""
        return self.recovery.events

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_extra(self) -> dict[str, Any]:
        return {"session": self.session, **self.recovery.to_json()}

    def _restore_extra(self, extra: Mapping[str, Any]) -> None:
        self.session = str(extra.get("session") or self.session)
        self.recovery.restore(extra)

    def _final_result(self, result: Result) -> Result:
        """``Result.arrays`` is the release key holders should use.

        The last aggregate with its candidate groups (``protocol.open_global`` falls back to
        the groups that pass when the full aggregate fails), or the previous one if the last
        was dropped.
        """
        release = self.recovery.release
        if release is not None and release.round > 0:
            result.arrays = crypto.bundle_to_record(release.parts)
        return result

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Log the strategy's configuration, each SecureFed feature included."""
        log.info("\t├──> SecureFed:")
        log.info(
            "\t│\t├── minimum cohort: %d (smaller aggregates are never released)", self.min_cohort
        )
        log.info(
            "\t│\t├── client-side L2 clipping: %s",
            f"clip_norm={self.clip_norm:g} (key holders check the norm bound)"
            if self.clip_norm
            else "off",
        )
        log.info(
            "\t│\t├── distributed DP noise: %s",
            f"noise_multiplier={self.noise_multiplier:g} (std sigma*C/sqrt(K) per client)"
            if self.noise_multiplier
            else "off",
        )
        log.info(
            "\t│\t├── aggregation check (check part + %d integrity slots per ciphertext): %s",
            protocol.INTEGRITY_SLOTS,
            "on" if self.aggregation_check else "off",
        )
        log.info(
            "\t│\t└── clean-cohort recovery: groups of >= %d updates (needs >= %d replies)",
            self.min_cohort,
            2 * self.min_cohort,
        )
        self._summary_encryption()
        FlwrFedAvg.summary(self)

    # ------------------------------------------------------------------ releases
    @property
    def _reserved(self) -> int:
        return protocol.INTEGRITY_SLOTS if self.aggregation_check else 0

    def _meta(self, server_round: int, base_round: int) -> dict[str, Any]:
        cohort = self._cohort.get(server_round, 0)
        noise = (
            self.noise_multiplier * self.clip_norm / math.sqrt(cohort)
            if self.noise_multiplier and self.clip_norm and cohort
            else 0.0
        )
        return {
            META_ROUND: server_round,
            META_BASE_ROUND: base_round,
            META_SESSION: self.session,
            META_CLIP_NORM: float(self.clip_norm or 0.0),
            META_NOISE_STD: float(noise),
        }

    def _encrypt_initial(self, arrays: Mapping[str, Any]) -> Parts:
        meta = {META_ROUND: 0, META_BASE_ROUND: 0, META_SESSION: self.session}
        model = crypto.encrypt(arrays, self.key, reserved=self._reserved, meta=meta)
        return {PART_MODEL: model}

    def _to_parts(self, arrays: ArrayRecord) -> Parts:
        parts = super()._to_parts(arrays)
        model = parts[PART_MODEL]
        if model.layout.reserved != self._reserved:
            raise ConfigError(
                f"the encrypted initial model reserves {model.layout.reserved} slots per "
                f"ciphertext, SecureFed needs {self._reserved}; pass the plaintext initial "
                "arrays (the strategy encrypts them) or a model saved by SecureFed."
            )
        self.recovery.release = release_from_parts(parts)
        return parts

    # ------------------------------------------------------------------ Flower API
    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super()._base_configure_train(server_round, arrays, config, grid)
        return [m for m in messages if m.metadata.dst_node_id not in self.banned]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample (never an excluded node) and send the current release.

        The current release is the last full aggregate, or its candidate groups after the
        key holders refused it (see the class docstring).
        """
        release = self.recovery.current(arrays, self.key)
        self._sent[server_round] = release
        if release.rejected:
            log.warning(
                "round %d: sending the %d candidate groups of round %d's aggregate instead of "
                "the refused aggregate",
                server_round,
                len(release.groups) - len(release.failed),
                release.round,
            )
        return super().configure_train(server_round, release.record(), config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current release for federated evaluation (never to an excluded node)."""
        release = self.recovery.current(arrays, self.key)
        self._eval_sent[server_round] = release
        messages = super().configure_evaluate(server_round, release.record(), config, grid)
        return [m for m in messages if m.metadata.dst_node_id not in self.banned]

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        self._slots.setdefault(server_round, {})[node_id] = index
        self._cohort[server_round] = cohort
        if self.clip_norm:
            cfg[CFG_CLIP_NORM] = float(self.clip_norm)
        if self.noise_multiplier and self.clip_norm:
            cfg[CFG_NOISE_STD] = self.noise_multiplier * self.clip_norm / math.sqrt(cohort)
        if self.aggregation_check:
            cfg.update(
                {CFG_CHECK: True, CFG_SLOT: index, CFG_COHORT: cohort, CFG_SESSION: self.session}
            )
        return cfg

    def _keeps_models(self, server_round: int) -> bool:
        # candidate groups need each model; a node banned this round is dropped from its sum
        return self.aggregation_check or any(n in self.banned for n in self.screen.sent_config)

    def _parse_reply(self, msg: Message, server_round: int) -> dict[str, crypto.AnyEncrypted]:
        parts = super()._parse_reply(msg, server_round)
        if not self.aggregation_check:
            return parts
        if set(parts) != {PART_MODEL, PART_CHECK}:
            raise CiphertextFormatError(
                f"reply has parts {sorted(parts)}, expected exactly ['check', 'model']; is the "
                "client running ckks_mod?"
            )
        check = parts[PART_CHECK]
        cohort = self._cohort.get(server_round, 0)
        expected = crypto.Layout(
            ("participation", "weights"), ((cohort,), (cohort,)), ("float64",) * 2
        )
        if check.layout != expected:
            raise LayoutMismatchError(
                f"reply's check part has layout {check.layout.names} / {check.layout.shapes}, "
                f"expected participation and weights of the cohort size {cohort}."
            )
        return parts

    def _refusals(self, replies: list[Message], sent: Mapping[int, Message]) -> tuple[int, int]:
        """Refusals and successes among the replies to the messages in ``sent`` (§6)."""
        replies = [r for r in replies if metadata_problem(r, sent) is None]
        refused = sum(
            1 for r in replies if r.has_error() and CHECK_FAILED in str(r.error.reason or "")
        )
        return refused, sum(1 for r in replies if not r.has_error())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Collect verdicts and refusals, then aggregate the valid encrypted updates.

        When more key holders refused the global they received than accepted it, their
        round is lost: nothing is aggregated and the refused release is replaced (its
        groups, or the previous global) in the next round.
        """
        replies = list(replies)
        sent = self._sent.get(server_round)
        if sent is not None and sent.rejected:
            self.recovery.collect_verdicts(server_round, sent, replies, self.screen.sent_msgs)
        refused, accepted = self._refusals(replies, self.screen.sent_msgs)
        if sent is not None and refused and refused > accepted:
            self.recovery.reject(server_round, sent, "train", refused, accepted)
            return None, None
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics; a refusal by the majority triggers recovery."""
        replies = list(replies)
        sent = self._eval_sent.get(server_round)
        refused, accepted = self._refusals(replies, self.screen.eval_msgs)
        if sent is not None and refused and refused > accepted:
            self.recovery.reject(server_round, sent, "evaluate", refused, accepted)
        return super().aggregate_evaluate(server_round, replies)

    def _select_replies(
        self, server_round: int, accepted: list[tuple[Message, Parts]]
    ) -> list[tuple[Message, Parts]]:
        """Drop replies of nodes excluded in this very round (by the verdicts just counted)."""
        kept = []
        for msg, parts in super()._select_replies(server_round, accepted):
            node = int(msg.metadata.src_node_id)
            if node in self.banned:
                self.ledger.exclude(server_round, node, "node excluded by SecureFed's recovery")
            else:
                kept.append((msg, parts))
        return kept

    def _next_global(
        self,
        server_round: int,
        accepted: list[tuple[Message, dict[str, crypto.AnyEncrypted]]],
        aggregate: crypto.AnyEncrypted,
    ) -> dict[str, crypto.AnyEncrypted]:
        sent = self._sent.get(server_round)
        base_round = sent.round if sent is not None else 0
        meta = self._meta(server_round, base_round)
        if not self.aggregation_check:
            return {PART_MODEL: replace(aggregate, meta=meta)}
        by_node = {msg.metadata.src_node_id: p for msg, p in accepted}
        slots = self._slots.get(server_round, {})
        # each sum names the cohort slots it holds: key holders require exactly those in its
        # check part, so a client's claim on another's slot fails its own group (§4.4.3)
        parts: Parts = {
            PART_MODEL: replace(
                aggregate,
                meta={**meta, META_SLOTS: protocol.slots_mask(slots[n] for n in by_node)},
            ),
            PART_CHECK: crypto.aggregate([p[PART_CHECK] for _, p in accepted]),
        }
        if self._masking is not None:  # the groups the masks cancel in (§4.9)
            groups = self.recovery.masked_groups(server_round, set(by_node))
        else:
            groups = self.recovery.partition(sorted(by_node, key=lambda n: slots.get(n, n)))
        for g, members in enumerate(groups):
            if len(members) < self.min_cohort:  # pragma: no cover - partition() guarantees it
                raise AssertionError("a candidate group below the minimum cohort")
            model = crypto.aggregate([by_node[n][PART_MODEL] for n in members])
            if self._masking is not None:
                model = self._masking.unmask_group(server_round, model, members)
            check = crypto.aggregate([by_node[n][PART_CHECK] for n in members])
            group_meta = {
                **meta,
                META_GROUP: g,
                META_SLOTS: protocol.slots_mask(slots[n] for n in members),
            }
            parts[protocol.group_part(PART_MODEL, g)] = replace(model, meta=group_meta)
            parts[protocol.group_part(PART_CHECK, g)] = check
        self.recovery.released(server_round, base_round, parts, groups, set(by_node), sent)
        return parts

    # ------------------------------------------------------------------ recovery
    def _mask_groups(self, server_round: int, nodes: list[int]) -> list[list[int]]:
        """Fix this round's candidate groups before sharing: masks cancel inside each."""
        slots = self._slots.get(server_round, {})
        return self.recovery.fix_groups(server_round, sorted(nodes, key=lambda n: slots.get(n, n)))
