"""The server's part of secure aggregation (docs/design.md §4.9): relay, then unmask the sum.

:class:`RoundMasking` is a collaborator the encrypted strategies hold when constructed with
``masking=True``. Per round it runs the *advertise* and *share* exchanges with the sampled
nodes before the train messages go out (:meth:`RoundMasking.setup` attaches each node's sealed
shares to its train message), and after the strategy has decided which replies it keeps it
runs the *unmask* exchange and subtracts the rebuilt residual mask from the encrypted sum
(:meth:`RoundMasking.unmask`). Every reply of every stage is checked on its own: a bad or
missing one only drops that node (its masks are then removed through its key shares).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from cifer_flwr import crypto, masking
from cifer_flwr.constants import MASK_PAYLOAD, MASK_RECORD
from cifer_flwr.exceptions import CiferError, MaskingError
from cifer_flwr.strategies._screen import metadata_problem

__all__ = ["RoundMasking", "check_masking_key"]

log = logging.getLogger("cifer_flwr.strategies")
Exclude = Callable[[int, int, str], None]


def _mask_record(payload: bytes, server_round: int) -> ConfigRecord:
    """The masking record of a message: the payload and the round (for metering, §4.9)."""
    return ConfigRecord({MASK_PAYLOAD: payload, "server-round": server_round})


def check_masking_key(key: crypto.AnyKey) -> None:
    """Refuse masking before anything starts unless the key is the exact ``packed`` scheme."""
    if not crypto.has_exact_sums(key):
        raise MaskingError(
            f"masking=True needs the exact sums of preset 'packed' (BFV); this key's preset is "
            f"{key.params.name!r}. Generate the keys with `cifer keygen --preset packed` "
            "(encryption.preset=packed)."
        )


@dataclass
class RoundMasking:
    """One run's masking: a fresh :class:`cifer_flwr.masking.ServerSession` per round.

    Parameters
    ----------
    min_cohort : int
        Fewest clients a round masks with (the strategy's ``min_replies``, at least 3):
        below it nothing goes out and nothing is released.

    """

    min_cohort: int = 3
    grid: Grid | None = None
    timeout: float | None = None
    session: masking.ServerSession | None = None
    stats: dict[int, dict[str, float]] = field(default_factory=dict)
    authenticated: dict[int, bool] = field(default_factory=dict)

    # ------------------------------------------------------------------ before training
    def setup(
        self,
        grid: Grid,
        server_round: int,
        messages: Sequence[Message],
        timeout: float | None,
        exclude: Exclude,
        partition: Callable[[list[int]], list[list[int]]] | None = None,
    ) -> list[Message]:
        """Advertise and share with the nodes of ``messages``; return their masked train messages.

        Nodes that fail a stage are left out of the returned messages (and ``exclude``d with
        the reason). Returns ``[]`` when fewer than ``min_cohort`` nodes complete both stages.
        ``partition`` (SecureFed) splits the advertisers into groups fixed before sharing:
        masks then cancel inside each group (:meth:`unmask_group`).
        """
        self.grid, self.timeout = grid, timeout
        t0 = time.perf_counter()
        session = masking.ServerSession(server_round)
        self.session = session
        nodes = [int(m.metadata.dst_node_id) for m in messages]
        stats = self.stats.setdefault(server_round, {"mask-bytes": 0.0})
        request = session.advertise_request()
        for node, payload in self._exchange(server_round, nodes, lambda _: request, exclude):
            self._accept(server_round, node, exclude, session.accept_advert, payload)
        if len(session.adverts) >= self.min_cohort:
            groups = partition(sorted(session.adverts)) if partition is not None else []
            share = session.share_request(groups if len(groups) >= 2 else ())
            for node, payload in self._exchange(
                server_round, sorted(session.adverts), lambda _: share, exclude
            ):
                self._accept(server_round, node, exclude, session.accept_shares, payload)
        cohort = session.fix_cohort()
        self.authenticated[server_round] = all(
            session.adverts[n].signature is not None for n in cohort
        )
        stats["mask-setup-s"] = time.perf_counter() - t0
        stats["mask-cohort"] = float(len(cohort))
        stats["mask-authenticated"] = float(self.authenticated[server_round])
        if len(cohort) < self.min_cohort:
            log.warning(
                "round %d: %d clients completed the masking setup, fewer than the %d a masked "
                "round needs; no train messages are sent and nothing is released.",
                server_round,
                len(cohort),
                self.min_cohort,
            )
            return []
        if not self.authenticated[server_round]:
            log.warning(
                "round %d: masking without a roster (unsigned advertisements): it protects "
                "against an honest-but-curious server only (docs/design.md §4.9).",
                server_round,
            )
        out = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            if node not in cohort:
                continue
            payload = session.train_payload(node)
            stats["mask-bytes"] += len(payload)
            msg.content[MASK_RECORD] = _mask_record(payload, server_round)
            out.append(msg)
        return out

    # ------------------------------------------------------------------ after the fold
    def unmask(
        self,
        server_round: int,
        survivors: Iterable[int],
        total: crypto.AnyEncrypted,
        exclude: Exclude,
    ) -> crypto.AnyEncrypted | None:
        """The sum of ``survivors``' uploads with its residual mask removed, or ``None``.

        ``None`` (nothing may be released) when too few survivors answer or a secret cannot
        be rebuilt; the reason is logged.
        """
        session, grid = self.session, self.grid
        if session is None or grid is None or session.server_round != server_round:
            log.error(
                "round %d: no masking session for this round; nothing is released.", server_round
            )
            return None
        assert isinstance(total, crypto.EncryptedArrays)
        t0 = time.perf_counter()
        stats = self.stats.setdefault(server_round, {"mask-bytes": 0.0})
        request, alive, dropped = session.unmask_request(survivors)
        stats["mask-dropped"] = float(len(dropped))
        answered: list[int] = []
        for node, payload in self._exchange(server_round, alive, lambda _: request, exclude):
            try:
                session.accept_unmask(node, payload, alive)
                answered.append(node)
            except CiferError as exc:
                exclude(server_round, node, f"unmask reply refused: {exc}")
        try:
            params = total.params
            residual = session.residual(
                alive, len(total.vectors) * params.slots, params.plain_modulus
            )
            result = crypto.subtract_mask(total, residual)
        except CiferError as exc:
            log.error(
                "round %d: the masks cannot be removed (%s); nothing is released.",
                server_round,
                exc,
            )
            return None
        finally:
            stats["unmask-server-s"] = time.perf_counter() - t0
        log.info(
            "round %d: unmasked the sum of %d clients (%d dropped, %d answered the unmask request)",
            server_round,
            len(alive),
            len(dropped),
            len(answered),
        )
        return result

    def unmask_group(
        self, server_round: int, total: crypto.AnyEncrypted, members: Iterable[int]
    ) -> crypto.AnyEncrypted:
        """The sum of ``members``' uploads (whole masking groups) with its residual removed.

        Call after :meth:`unmask` of the same round: the shares it collected rebuild the
        group's secrets (SecureFed's candidate groups, docs/design.md §4.9).

        Raises
        ------
        MaskingError
            Without this round's session, or when the group's secrets cannot be rebuilt.

        """
        session = self.session
        if session is None or session.server_round != server_round:
            raise MaskingError(f"no masking session of round {server_round} to unmask a group.")
        assert isinstance(total, crypto.EncryptedArrays)
        chosen = set(members)
        params = total.params
        count = len(total.vectors) * params.slots
        residual = session.residual(
            sorted(chosen), count, params.plain_modulus, within=self._groups_of(session, chosen)
        )
        return crypto.subtract_mask(total, residual)

    @staticmethod
    def _groups_of(session: masking.ServerSession, members: set[int]) -> set[int]:
        """Every node of the masking groups that ``members`` belong to (dropped ones included)."""
        groups = session.groups or (session.cohort,)
        return {n for g in groups if members & set(g) for n in g}

    # ------------------------------------------------------------------ transport
    def _exchange(
        self,
        server_round: int,
        nodes: Sequence[int],
        payload_for: Callable[[int], bytes],
        exclude: Exclude,
    ) -> list[tuple[int, bytes]]:
        """Send one masking message per node; return ``(node, payload)`` of well-formed replies."""
        assert self.grid is not None
        stats = self.stats.setdefault(server_round, {"mask-bytes": 0.0})
        messages = []
        for node in nodes:
            payload = payload_for(node)
            stats["mask-bytes"] += len(payload)
            content = RecordDict({MASK_RECORD: _mask_record(payload, server_round)})
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        wanted, out = set(nodes), []
        sent = {int(m.metadata.dst_node_id): m for m in messages}  # ids set by the push
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            node = int(reply.metadata.src_node_id)
            if node not in wanted:
                exclude(
                    server_round,
                    node,
                    "masking reply from a node that was not asked (or a second one)",
                )
                continue
            problem = metadata_problem(reply, sent)
            if problem is not None:  # e.g. an answer to another node's message
                exclude(server_round, node, f"masking reply: {problem}")
                continue
            wanted.discard(node)
            if reply.has_error():
                exclude(server_round, node, f"masking stage refused: {reply.error.reason}")
                continue
            records = reply.content.config_records
            record = records.get(MASK_RECORD)
            value = None if record is None else record.get(MASK_PAYLOAD)
            if (
                len(reply.content.array_records)
                or len(records) != 1
                or not isinstance(value, bytes)
            ):
                exclude(
                    server_round, node, f"masking reply must hold only the {MASK_RECORD!r} record"
                )
                continue
            stats["mask-bytes"] += len(value)
            out.append((node, value))
        for node in sorted(wanted):
            exclude(server_round, node, "no masking reply (dropped)")
        return out

    @staticmethod
    def _accept(
        server_round: int,
        node: int,
        exclude: Exclude,
        accept: Callable[[int, bytes], None],
        payload: bytes,
    ) -> None:
        try:
            accept(node, payload)
        except CiferError as exc:
            exclude(server_round, node, f"masking reply refused: {exc}")
