"""Reply screening: every check a client reply passes before its model is used (§5-6).

:class:`ReplyScreen` is the collaborator a strategy holds for one job: deciding whether a
reply is what the node it was sent to may return. In order, cheapest first:

1. the reply's metadata matches the message sent to that node (run, group, type, id);
2. the node was sampled this round and has not replied yet;
3. ConfigRecords the strategy does not read are dropped, the ones it reads bounded;
   its one MetricRecord is valid (:func:`check_metrics`, run once per reply) and the
   ``cifer`` record's entries well formed;
4. its size: larger than the parts expected from the node can take is refused *before*
   parsing;
5. the record's structure and pack framing (:func:`~cifer_flwr.crypto.frame_record`:
   every ciphertext located, none deserialized), then the replay memory: a reply
   repeating any ciphertext already received or sent (this round or an earlier one, the
   global model included) is refused;
6. parsing the ciphertexts located in step 5 (the crypto layer validates every one), the
   exact set of parts, count, layout and weight.

The parts expected from a node are derived once per round from the config sent to it.
Each reply's packs are walked once: :meth:`ReplyScreen.screen` keeps the framed record of
the reply it passed (one reply's views, never the cohort's) and :meth:`ReplyScreen.parse`
takes it.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from flwr.app import ArrayRecord, Message

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_CHECK,
    CFG_COHORT,
    CFG_RETURN_STATE,
    PART_CHECK,
    PART_MODEL,
    PART_STATE,
    REPLY_RECORD,
)
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
)
from cifer_flwr.strategies._fold import Parts, node_of
from cifer_flwr.strategies._replies import (
    HEADER_ALLOWANCE,
    DigestMemory,
    ReplyError,
    check_metrics,
    check_reply_info,
    chunk_digests,
    describe_schema,
    drop_foreign_config_records,
    metric_schema,
)

__all__ = ["KEY_ALLOWANCE", "ReplyScreen", "consistent_metrics", "metadata_problem"]

log = logging.getLogger("cifer_flwr.strategies")
#: Flower's own logger (the "Received N results" lines go there, as Flower's strategies')
flwr_log = logging.getLogger("flwr")
_T = TypeVar("_T")
#: ``exclude(node, reason)``: record a refused reply
Exclude = Callable[[int, str], None]

#: Bytes allowed per ciphertext ``Array`` for its key name in the record.
KEY_ALLOWANCE = 64


def metadata_problem(msg: Message, sent: Mapping[int, Message]) -> str | None:
    """Why ``msg`` is not a reply to the message its node was sent, or ``None``.

    The run id, group id and message type must be those of the message sent to the
    node, and ``reply_to_message_id`` its id (once the grid assigned one); a node that
    was sent nothing is left to the caller.
    """
    request = sent.get(node_of(msg))
    if request is None:
        return None
    got, want = msg.metadata, request.metadata
    for what, found, expected in (
        ("run id", got.run_id, want.run_id),
        ("group id", got.group_id, want.group_id),
        ("message type", got.message_type, want.message_type),
    ):
        if found != expected:
            return (
                f"reply has {what} {found!r:.60}, but the message sent to this node has "
                f"{expected!r:.60}; a reply to another run, round or message is refused."
            )
    if want.message_id and got.reply_to_message_id != want.message_id:
        return (
            f"reply has reply_to_message_id {got.reply_to_message_id!r:.70}, but the "
            f"message sent to this node has id {want.message_id!r:.70}; refused."
        )
    return None


class ReplyScreen:
    """What each node was sent this round, and the checks its reply must pass.

    Parameters
    ----------
    key : Key
        The server's public key (replies are parsed with it).
    arrayrecord_key, weighted_by_key : str
        Flower's record and metric names (the strategy's).
    reply_config_records : mapping of str to int
        ConfigRecords a reply may carry, with the most bytes each may take.

    """

    def __init__(
        self,
        key: crypto.AnyKey,
        arrayrecord_key: str,
        weighted_by_key: str,
        reply_config_records: Mapping[str, int],
    ) -> None:
        self.key = key
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self.reply_config_records = reply_config_records
        self.layout: crypto.Layout | None = None
        self._layout_json = 0
        self.reset()

    def reset(self) -> None:
        """Forget every round (a new run)."""
        #: digests of every ciphertext received or sent, by round (replays)
        self.seen = DigestMemory()
        self._round_origin: dict[bytes, str] = {}
        #: per node sampled this round: the config, the sampling index, the message sent
        self.sent_config: dict[int, dict[str, Any]] = {}
        self.sent_index: dict[int, int] = {}
        self.sent_msgs: dict[int, Message] = {}
        #: the evaluate message each node was sent
        self.eval_msgs: dict[int, Message] = {}
        self._expected: dict[int, dict[str, int]] = {}
        self._examples: dict[int, float] = {}
        self._replied: set[int] = set()
        #: the record screen() passed last, framed (parse() takes it): one reply at most
        self._framed: tuple[ArrayRecord, crypto.FramedRecord] | None = None

    # ------------------------------------------------------------------ the round
    def set_layout(self, layout: crypto.Layout) -> None:
        """The global model's layout (replies must match it)."""
        self.layout = layout
        self._layout_json = len(json.dumps(layout.to_dict()))

    def require_layout(self) -> crypto.Layout:
        """The layout; a strategy that was not started has none."""
        if self.layout is None:
            raise ConfigError("the strategy has no model layout yet; call start() first.")
        return self.layout

    def open_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Start a train round: remember the global model sent (an echo is refused)."""
        self.sent_config, self.sent_index, self.sent_msgs = {}, {}, {}
        self._expected, self._examples, self._replied = {}, {}, set()
        self._framed = None
        self.seen.freeze(before=server_round)
        digests = chunk_digests(arrays)
        self.seen.add(server_round, digests)
        self._round_origin = dict.fromkeys(
            digests, f"the global model the server sent in round {server_round} (an echo)"
        )

    def sent(self, node: int, index: int, config: Mapping[str, Any], msg: Message) -> None:
        """Remember what ``node`` was sent (its reply is checked against it)."""
        self.sent_config[node] = dict(config)
        self.sent_index[node] = index
        self.sent_msgs[node] = msg

    def expected_parts(self, node: int) -> dict[str, int]:
        """Parts the reply of ``node`` must hold, with the most chunks each may have.

        Derived (once per round) from the config sent to that node: ``model`` always,
        ``state`` when it was asked to return the FedOpt state, ``check`` when SecureFed's
        check was on.
        """
        cached = self._expected.get(node)
        if cached is not None:
            return cached
        layout = self.require_layout()
        slots = self.key.params.slots
        parts = {PART_MODEL: layout.num_chunks(slots)}
        cfg = self.sent_config.get(node, {})
        if cfg.get(CFG_RETURN_STATE) is True:
            parts[PART_STATE] = max(1, math.ceil(3 * layout.total / slots))
        if cfg.get(CFG_CHECK) is True:
            cohort = max(1, int(cfg.get(CFG_COHORT, 1)))
            parts[PART_CHECK] = math.ceil(2 * cohort / slots) + 1
        self._expected[node] = parts
        return parts

    def limits(self, node: int) -> tuple[int, int]:
        """``(bytes, arrays)`` a reply of ``node`` may hold at most."""
        parts = self.expected_parts(node)
        per_chunk = crypto.max_ciphertext_bytes(self.key.params) + KEY_ALLOWANCE
        per_header = HEADER_ALLOWANCE + 4 * self._layout_json
        size = sum(n * per_chunk + per_header for n in parts.values())
        return size, sum(n + 1 for n in parts.values())

    # ------------------------------------------------------------------ checks
    def drop_records(self, msg: Message, server_round: int, what: str = "") -> None:
        """Drop the ConfigRecords the strategy does not read; bound those it does (§6)."""
        for name, size in drop_foreign_config_records(msg.content, self.reply_config_records):
            log.warning(
                "round %d: dropped the %sConfigRecord %r (%d bytes) of node %d's reply; only "
                "%s are read",
                server_round,
                what,
                name,
                size,
                node_of(msg),
                sorted(self.reply_config_records),
            )

    def screen(self, msg: Message, server_round: int, size: int | None = None) -> None:
        """Every check of a train reply before parsing (steps 2-5 of the module docstring).

        ``size`` is the bytes of the reply's ``ArrayRecord`` s when the caller counted them
        (each reply's bytes are counted once); ``None`` counts them here. The framed
        record of a reply that passes is kept for :meth:`parse` (replacing the previous
        one), so its packs are not walked again.

        Raises
        ------
        CiferError
            The reason the reply is refused.

        """
        self._framed = None
        node = node_of(msg)
        if node not in self.sent_config:
            raise ReplyError(f"node {node} was not sampled in round {server_round}.")
        if node in self._replied:
            raise ReplyError("a second reply from this node in the same round.")
        self._replied.add(node)
        self.drop_records(msg, server_round)
        self._examples[node] = check_metrics(msg.content, self.weighted_by_key)
        info = msg.content.config_records.get(REPLY_RECORD)
        if info is not None:
            check_reply_info(info)
        records = msg.content.array_records
        if list(records) != [self.arrayrecord_key]:
            raise ReplyError(
                f"reply carries ArrayRecords {sorted(records)[:5]}; expected exactly one "
                f"named {self.arrayrecord_key!r}."
            )
        record = records[self.arrayrecord_key]
        expected = self.expected_parts(node)
        named = crypto.record_part_names(record)  # from the Array keys: no parsing needed
        if named:
            check_part_set(named, expected)
        max_bytes, max_arrays = self.limits(node)
        if size is None:
            size = record.count_bytes()  # the one record: all the reply's bytes
        if size > max_bytes or len(record) > max_arrays:
            raise ReplyError(
                f"reply of {size} bytes in {len(record)} arrays exceeds the {max_bytes} bytes "
                f"in {max_arrays} arrays that the parts expected from this node "
                f"({expected} chunks) can take; refused before parsing."
            )
        framed = crypto.frame_record(record, self.key)
        self._remember(framed, node, server_round)
        self._framed = (record, framed)

    def _remember(self, framed: crypto.FramedRecord, node: int, server_round: int) -> None:
        """Refuse a reply repeating a known ciphertext; remember its own."""
        digests = chunk_digests(framed)
        if len(set(digests)) != len(digests):
            raise ReplyError("reply repeats one of its own ciphertexts (a duplicated chunk).")
        for digest in digests:
            origin = self._round_origin.get(digest)
            if origin is not None:
                raise ReplyError(f"reply repeats a ciphertext of {origin}; refused.")
        hit = self.seen.first_seen(digests)
        if hit is not None:
            raise ReplyError(
                f"reply repeats a ciphertext the server already received or sent in round "
                f"{hit[1]} (a replay); refused."
            )
        self.seen.add(server_round, digests)
        self._round_origin.update(
            dict.fromkeys(digests, f"node {node}'s reply in round {server_round} (a duplicate)")
        )

    def evaluate_replies(
        self,
        replies: Iterable[Message],
        server_round: int,
        exclude: Exclude,
        internal_error: Callable[[int, Exception], None],
    ) -> list[Message]:
        """The evaluate replies whose metrics may be aggregated; the others are excluded.

        A reply to another message, an error reply (logged as Flower's strategies do),
        foreign ConfigRecords (dropped), hostile metrics and a metric schema other than
        most replies' are refused, each reason prefixed ``evaluate reply:``.
        """
        what = "evaluate reply: "
        matching, errors = [], []
        for msg in replies:
            why = metadata_problem(msg, self.eval_msgs)
            if why is not None:
                exclude(node_of(msg), what + why)
            elif msg.has_error():
                errors.append(msg)
            else:
                matching.append(msg)
        if matching or errors:
            flwr_log.info(
                "aggregate_evaluate: Received %s results and %s failures",
                len(matching),
                len(errors),
            )
        for msg in errors:
            flwr_log.info(
                "\t> Received error in reply from node %d: %s",
                msg.metadata.src_node_id,
                msg.error.reason,
            )
        good = []
        for msg in matching:
            try:
                self.drop_records(msg, server_round, "evaluate reply's ")
                check_metrics(msg.content, self.weighted_by_key)
                good.append(msg)
            except CiferError as exc:
                exclude(node_of(msg), what + str(exc))
            except Exception as exc:
                internal_error(node_of(msg), exc)
        return consistent_metrics(good, lambda m: m, exclude, what)

    def parse(self, msg: Message, divisor: float, *, defer: bool = False) -> Parts:
        """Parse a screened reply into its parts: part set, counts, layout and weight.

        ``divisor`` is the round's public weight divisor; with ``defer`` the model's SEAL
        loads are left to the crypto workers (docs/design.md §6.1). The ciphertexts are
        those :meth:`screen` framed and hashed for this very record (its framing is
        dropped here, whatever the outcome); a record it did not pass is framed now.

        Raises
        ------
        CiferError
            The reason the reply is refused.

        """
        content = msg.content
        node = node_of(msg)
        held, self._framed = self._framed, None
        if self.arrayrecord_key not in content.array_records:
            raise CiphertextFormatError(f"reply has no ArrayRecord '{self.arrayrecord_key}'.")
        record = content.array_records[self.arrayrecord_key]
        framed = held[1] if held is not None and held[0] is record else None
        del held
        if framed is None:
            framed = crypto.frame_record(record, self.key)
        parts = crypto.bundle_from_framed(framed, self.key, defer=defer)
        del framed
        check_part_set(parts, self.expected_parts(node))
        for name, enc in parts.items():
            if name != PART_MODEL and isinstance(enc, crypto.EncryptedArrays):
                tuple(enc.vectors)  # only the model is summed in the workers: validate now
            if enc.count != 1:
                raise CiphertextFormatError(
                    f"part {name!r} claims to sum {enc.count} encryptions; a client reply "
                    "holds exactly one."
                )
            if name != PART_MODEL and not protocol.part_weight_ok(enc):
                raise CiphertextFormatError(
                    f"part {name!r} has weight {enc.weight:g}; expected 1 (only the model "
                    "part is weighted)."
                )
        model = parts[PART_MODEL]
        layout = self.require_layout()
        if model.layout != layout:
            raise LayoutMismatchError(
                f"reply layout {list(model.layout.names)} / {list(model.layout.shapes)} does "
                f"not match the global model's {list(layout.names)} / {list(layout.shapes)}."
            )
        n = self._examples.get(node)
        if n is None:  # parsed without screen() (a direct call): check the metrics now
            n = check_metrics(content, self.weighted_by_key)
        expected = n / divisor
        if not math.isclose(model.weight, expected, rel_tol=1e-9, abs_tol=1e-12):
            raise ReplyError(
                f"reply is weighted {model.weight:.6g} but reports {n:g} examples "
                f"(expected weight {expected:.6g})."
            )
        return parts


def consistent_metrics(
    items: list[_T], message: Callable[[_T], Message], exclude: Exclude, what: str = ""
) -> list[_T]:
    """Keep the replies whose metric names/list lengths are those most replies have.

    Flower aggregates metrics only over replies of one schema (and raises otherwise); the
    others are excluded with ``what`` before their reason.
    """
    if not items:
        return items
    schemas = [metric_schema(message(item).content) for item in items]
    counts = Counter(schemas)
    best = max(counts, key=lambda s: (counts[s], -schemas.index(s)))
    kept = []
    for item, schema in zip(items, schemas, strict=True):
        if schema == best:
            kept.append(item)
            continue
        exclude(
            node_of(message(item)),
            f"{what}its metrics {describe_schema(schema)} differ in names or list "
            f"lengths from those most replies carry {describe_schema(best)}.",
        )
    return kept


def check_part_set(parts: Iterable[str], expected: Mapping[str, int]) -> None:
    """Refuse a reply whose parts are not exactly those expected from its node."""
    parts = set(parts)
    extra = sorted(parts - set(expected))
    missing = sorted(set(expected) - parts)
    if PART_STATE in extra:
        raise ReplyError(
            "reply holds a FedOpt state part although this client was not asked for it "
            f"({CFG_RETURN_STATE} was false); only the asked clients may return the state."
        )
    if extra or missing:
        raise CiphertextFormatError(
            f"reply has parts {sorted(parts)}; expected {sorted(expected)} (missing "
            f"{missing}, unexpected {extra})."
        )
