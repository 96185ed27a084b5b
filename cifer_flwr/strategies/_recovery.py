"""SecureFed's clean-cohort recovery (docs/design.md §4.4).

:class:`CohortRecovery` is the collaborator :class:`~cifer_flwr.strategies.SecureFed` holds
for what happens after key holders refuse an aggregate: the releases it sent (each a
:class:`Release` with its candidate groups), the key holders' verdicts on each group, the
suspect set that every failing group narrows, and the nodes excluded from sampling. It
decides; SecureFed sends and sums.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    META_BASE_ROUND,
    META_ROUND,
    PART_CHECK,
    PART_MODEL,
    REPLY_FAILED_GROUPS,
    REPLY_RECORD,
)
from cifer_flwr.strategies._fold import Parts
from cifer_flwr.strategies._release import GlobalModel
from cifer_flwr.strategies._screen import metadata_problem

__all__ = ["CohortRecovery", "Release", "release_from_parts"]

log = logging.getLogger("cifer_flwr.strategies")


@dataclass(eq=False)
class Release:
    """One global model the server released, with what it needs to recover from it."""

    round: int  # round of the contributions it sums (0: the initial model)
    base_round: int  # round of the global those contributions trained from
    parts: Parts  # full aggregate (model, check) and, with >= 2 groups, model_gN/check_gN
    groups: list[frozenset[int]] = field(default_factory=list)  # node ids per group
    contributors: frozenset[int] = frozenset()
    rejected: bool = False  # a majority of key holders refused the full aggregate
    failed: set[int] = field(default_factory=set)  # groups a majority of key holders refused
    base: Release | None = None  # the release the contributions trained from (fallback)
    _cache: tuple[tuple[bool, frozenset[int]], ArrayRecord] | None = None

    def outgoing(self) -> Parts:
        """What key holders receive: the full aggregate, or after a refusal its groups."""
        if not self.rejected:
            return {k: v for k, v in self.parts.items() if k in (PART_MODEL, PART_CHECK)}
        out: Parts = {}
        for g in range(len(self.groups)):
            if g not in self.failed:
                for part in (PART_MODEL, PART_CHECK):
                    out[protocol.group_part(part, g)] = self.parts[protocol.group_part(part, g)]
        return out

    def record(self) -> ArrayRecord:
        """:meth:`outgoing` as the record sent (built once per refusal state)."""
        state = (self.rejected, frozenset(self.failed))
        if self._cache is None or self._cache[0] != state:
            self._cache = (state, crypto.bundle_to_record(self.outgoing()))
        return self._cache[1]


def release_from_parts(parts: Parts) -> Release:
    """A release rebuilt from encrypted parts (initial model, or a saved SecureFed model)."""
    meta = parts[PART_MODEL].meta
    rnd = meta.get(META_ROUND, 0)
    base = meta.get(META_BASE_ROUND, 0)
    groups = protocol.group_indices(parts)
    return Release(
        round=rnd if isinstance(rnd, int) else 0,
        base_round=base if isinstance(base, int) else 0,
        parts=dict(parts),
        groups=[frozenset() for _ in groups],
    )


class CohortRecovery:
    """Releases, candidate groups, verdicts, suspects and exclusions of one SecureFed run.

    Parameters
    ----------
    min_cohort : int
        Fewest updates in a candidate group.
    global_model : GlobalModel
        The strategy's global model (a dropped release puts its base back there).

    Attributes
    ----------
    banned : set of int
        Node ids excluded from sampling after recovery identified them.
    suspects : set of int or None
        The current suspect set ``T``.
    events : list of dict
        Every refusal, failed group and exclusion, in order (for the results file).
    release : Release or None
        The current release (``None`` before the run, or after a resume until it is
        rebuilt from the global model: :meth:`current`).

    """

    def __init__(self, min_cohort: int, global_model: GlobalModel) -> None:
        self.min_cohort = min_cohort
        self.global_model = global_model
        self.banned: set[int] = set()
        self.suspects: set[int] | None = None
        self.events: list[dict[str, Any]] = []
        self.release: Release | None = None
        self._fixed_groups: dict[int, list[list[int]]] = {}  # masking: fixed before sharing
        self._restored: Any = None

    # ------------------------------------------------------------------ checkpoints
    def to_json(self) -> dict[str, Any]:
        """The recovery state a checkpoint keeps (inverse: :meth:`restore`)."""
        release = self.release
        return {
            "banned": sorted(self.banned),
            "suspects": None if self.suspects is None else sorted(self.suspects),
            "events": list(self.events),
            "release": None
            if release is None
            else {
                "rejected": release.rejected,
                "failed": sorted(release.failed),
                "groups": [sorted(g) for g in release.groups],
                "contributors": sorted(release.contributors),
            },
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take a checkpoint's recovery state (the release is rebuilt by :meth:`current`)."""
        self.banned = {int(n) for n in saved.get("banned") or []}
        suspects = saved.get("suspects")
        self.suspects = None if suspects is None else {int(n) for n in suspects}
        self.events = list(saved.get("events") or [])
        self._restored = saved.get("release")

    def current(self, arrays: ArrayRecord, key: crypto.AnyKey) -> Release:
        """The current release; after a resume, rebuilt from the global model ``arrays``."""
        if self.release is None:
            release = release_from_parts(crypto.bundle_from_record(arrays, key))
            saved = self._restored
            if isinstance(saved, dict) and len(saved.get("groups") or []) == len(release.groups):
                release.groups = [frozenset(int(n) for n in g) for g in saved["groups"]]
                release.contributors = frozenset(int(n) for n in saved.get("contributors") or [])
                release.rejected = bool(saved.get("rejected"))
                release.failed = {int(g) for g in saved.get("failed") or []}
            self.release = release
        return self.release

    def event(self, server_round: int, kind: str, **info: Any) -> None:
        """Record a recovery event (refusal, failed group, suspects, exclusion, drop)."""
        self.events.append({"round": server_round, "event": kind, **info})

    # ------------------------------------------------------------------ groups
    def partition(self, nodes: list[int]) -> list[list[int]]:
        """Split ``nodes`` into ``len // min_cohort`` groups, suspects spread round-robin."""
        g = len(nodes) // self.min_cohort
        if g < 2:
            return []
        suspects = self.suspects or set()
        order = [n for n in nodes if n in suspects] + [n for n in nodes if n not in suspects]
        return [order[i::g] for i in range(g)]

    def fix_groups(self, server_round: int, nodes: list[int]) -> list[list[int]]:
        """Fix a masked round's candidate groups before sharing: masks cancel inside each."""
        groups = self.partition(nodes)
        self._fixed_groups[server_round] = [list(g) for g in groups]
        return groups

    def masked_groups(self, server_round: int, accepted: set[int]) -> list[list[int]]:
        """The round's fixed groups, restricted to the accepted replies.

        A group that lost members below ``min_cohort`` is merged into the smallest other
        one (a union of whole groups still unmasks); fewer than two groups: none.
        """
        groups = [[n for n in g if n in accepted] for g in self._fixed_groups.pop(server_round, [])]
        groups = [g for g in groups if g]
        while len(groups) >= 2 and min(len(g) for g in groups) < self.min_cohort:
            groups.sort(key=len)
            small = groups.pop(0)
            groups[0] = sorted(groups[0] + small)
        return groups if len(groups) >= 2 else []

    def released(
        self,
        server_round: int,
        base_round: int,
        parts: Parts,
        groups: list[list[int]],
        contributors: set[int],
        sent: Release | None,
    ) -> None:
        """Make the aggregate of ``server_round`` (with its groups) the current release."""
        if sent is not None:
            sent.base = None  # keep one level of fallback only
        self.release = Release(
            round=server_round,
            base_round=base_round,
            parts=parts,
            groups=[frozenset(m) for m in groups],
            contributors=frozenset(contributors),
            base=sent,
        )

    # ------------------------------------------------------------------ verdicts
    def _narrow(self, server_round: int, failing: frozenset[int]) -> None:
        if not failing:
            return
        narrowed = failing if self.suspects is None else (self.suspects & failing)
        self.suspects = set(narrowed or failing)
        if len(self.suspects) == 1:
            (node,) = self.suspects
            self.banned.add(node)
            self.suspects = None
            self.event(server_round, "excluded", node=node)
            log.warning(
                "round %d: node %d was in every failing group; it is excluded from sampling",
                server_round,
                node,
            )
        else:
            self.event(server_round, "suspects", nodes=sorted(self.suspects))

    def collect_verdicts(
        self,
        server_round: int,
        sent: Release,
        replies: list[Message],
        sent_msgs: Mapping[int, Message],
    ) -> None:
        """Majority vote of the key holders on each candidate group they received."""
        voters = 0
        votes: dict[int, int] = {}
        for msg in replies:
            if msg.has_error() or metadata_problem(msg, sent_msgs) is not None:
                continue
            info = msg.content.config_records.get(REPLY_RECORD)
            value = None if info is None else info.get(REPLY_FAILED_GROUPS)
            if not isinstance(value, str):
                continue
            try:
                listed = {int(v) for v in value.split(",") if v.strip()}
            except ValueError:
                continue
            voters += 1
            for g in listed & set(range(len(sent.groups))):
                votes[g] = votes.get(g, 0) + 1
        failing = {g for g, n in votes.items() if 2 * n > voters} - sent.failed
        if not failing:
            return
        sent.failed |= failing
        for g in sorted(failing):
            self.event(
                server_round,
                "group-failed",
                release_round=sent.round,
                group=g,
                nodes=sorted(sent.groups[g]),
            )
            log.warning(
                "round %d: key holders refused group %d of round %d's aggregate (nodes %s)",
                server_round,
                g,
                sent.round,
                sorted(sent.groups[g]),
            )
        if len(failing) == 1:  # one failing group: it holds the misbehaving client
            group = sent.groups[failing.pop()]
            if not group & self.banned:  # else: explained by a client excluded already
                self._narrow(server_round, group)

    def reject(
        self, server_round: int, release: Release, phase: str, refused: int, accepted: int
    ) -> None:
        """A majority of key holders refused ``release``: send its groups, or drop it."""
        self.event(
            server_round,
            "refused",
            phase=phase,
            release_round=release.round,
            refused=refused,
            accepted=accepted,
        )
        log.warning(
            "round %d (%s): %d key holders refused the aggregate of round %d (%d accepted)",
            server_round,
            phase,
            refused,
            release.round,
            accepted,
        )
        if release is not self.release and release.rejected:
            return  # already handled
        if not release.rejected and len(release.groups) - len(release.failed) >= 2:
            release.rejected = True
            return
        # no candidate left (or fewer than two groups): drop the release, resend its base
        if len(release.groups) < 2:
            self._narrow(server_round, release.contributors)
        if release.base is not None and release is self.release:
            log.warning(
                "round %d: the aggregate of round %d is dropped; the global of round %d is "
                "sent again",
                server_round,
                release.round,
                release.base.round,
            )
            self.release = release.base
            self.global_model.set(release.base.parts)
            self.global_model.save(server_round)
            self.event(server_round, "dropped", release_round=release.round)
