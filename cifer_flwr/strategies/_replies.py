"""Checks the strategies apply to every client reply before using it (docs/design.md §5-6).

Pure helpers, no Flower round logic: metric validation, reply size limits and the bounded
memory of ciphertext digests that refuses replays and duplicates.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, RecordDict

from cifer_flwr.constants import (
    REPLY_FAILED_GROUPS,
    REPLY_STATE_CHECK,
    REPLY_STATE_DIGEST,
    REPLY_UPDATE_NORM,
)
from cifer_flwr.crypto import FramedRecord, record_ciphertext_views
from cifer_flwr.exceptions import CiferError

__all__ = [
    "HEADER_ALLOWANCE",
    "MAX_EXAMPLES",
    "MAX_METRIC_ABS",
    "MAX_METRIC_KEYS",
    "MAX_METRIC_LIST",
    "MAX_METRIC_VALUES",
    "MAX_REMEMBERED_CHUNKS",
    "REPLY_CONFIG_BYTES",
    "DigestMemory",
    "ReplyError",
    "check_metrics",
    "check_reply_info",
    "config_record_bytes",
    "drop_foreign_config_records",
    "chunk_digests",
    "describe_schema",
    "metric_schema",
]

log = logging.getLogger("cifer_flwr.strategies")

#: Largest example count (``weighted_by_key``) a reply may report: a trillion.
MAX_EXAMPLES = 1e12
#: Largest magnitude of any other metric value (beyond it sums overflow or lose all precision).
MAX_METRIC_ABS = 1e15
#: Longest list metric.
MAX_METRIC_LIST = 100_000
#: Most metric keys in one reply.
MAX_METRIC_KEYS = 1_000
#: Most metric values in one reply, all lists together (a list of 100 000 floats is 800 kB).
MAX_METRIC_VALUES = 100_000
#: Largest ``cifer`` ConfigRecord a reply may carry (its entries: a 64-character digest, a
#: number and at most 64 group indices, about 500 bytes; docs/design.md §6).
REPLY_CONFIG_BYTES = 2_048
#: Bytes allowed per encrypted part for its JSON header and the ``Array`` key names, on top
#: of ``4 x`` the JSON size of the layout the server expects.
HEADER_ALLOWANCE = 64 * 1024
#: Most chunk digests the replay memory keeps (32 bytes each: 128 MiB); the oldest rounds
#: are forgotten first.
MAX_REMEMBERED_CHUNKS = 1 << 22

_DIGEST = 32


class ReplyError(CiferError):
    """A client reply the strategy refuses (the round goes on without it)."""


# --------------------------------------------------------------------------- metrics
def _check_number(name: str, value: Any) -> None:
    if type(value) is int:
        if abs(value) > MAX_METRIC_ABS:
            shown = (
                str(value) if len(str(value)) <= 24 else f"an integer of {len(str(value))} digits"
            )
            raise ReplyError(
                f"metric {name!r} is {shown}, beyond the accepted magnitude {MAX_METRIC_ABS:g}."
            )
        return
    if type(value) is not float:
        raise ReplyError(
            f"metric {name!r} has type {type(value).__name__}; expected int, float or a list "
            "of them."
        )
    if not math.isfinite(value):
        raise ReplyError(f"metric {name!r} is {value}; metrics must be finite numbers.")
    if abs(value) > MAX_METRIC_ABS:
        raise ReplyError(
            f"metric {name!r} is {value:g}, beyond the accepted magnitude {MAX_METRIC_ABS:g}."
        )


def check_metrics(content: RecordDict, weighted_by_key: str) -> float:
    """Validate the one ``MetricRecord`` of a reply and return its example count.

    Parameters
    ----------
    content : RecordDict
        The reply's content.
    weighted_by_key : str
        The metric holding the example count.

    Returns
    -------
    float
        The example count, in ``(0, MAX_EXAMPLES]``.

    Raises
    ------
    ReplyError
        For anything but exactly one MetricRecord whose values are finite numbers (or
        lists of them) of bounded size, with a positive scalar ``weighted_by_key``.

    """
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise ReplyError(
            f"reply carries {len(records)} MetricRecords; expected exactly one holding "
            f"{weighted_by_key!r}."
        )
    record = records[0]
    if len(record) > MAX_METRIC_KEYS:
        raise ReplyError(f"reply carries {len(record)} metrics, more than {MAX_METRIC_KEYS}.")
    values = sum(len(v) if isinstance(v, list) else 1 for v in record.values())
    if values > MAX_METRIC_VALUES:
        raise ReplyError(
            f"reply carries {values} metric values in all, more than {MAX_METRIC_VALUES}; "
            "report fewer or shorter list metrics."
        )
    for name, value in record.items():
        if not isinstance(name, str) or len(name) > 256:
            raise ReplyError(f"metric name {str(name)[:40]!r} is not a string of <= 256 chars.")
        if isinstance(value, list):
            if name == weighted_by_key:
                raise ReplyError(
                    f"metric {name!r} is a list; the example count must be one number."
                )
            if len(value) > MAX_METRIC_LIST:
                raise ReplyError(
                    f"metric {name!r} is a list of {len(value)} values, more than "
                    f"{MAX_METRIC_LIST}."
                )
            for item in value:
                _check_number(name, item)
        else:
            _check_number(name, value)
    if weighted_by_key not in record:
        raise ReplyError(
            f"reply lacks the metric {weighted_by_key!r} (its example count), which weights "
            "it in the aggregate."
        )
    n = float(record[weighted_by_key])  # type: ignore[arg-type]
    if not 0 < n <= MAX_EXAMPLES:
        raise ReplyError(
            f"metric {weighted_by_key!r} is {n:g}; expected an example count in "
            f"(0, {MAX_EXAMPLES:g}]."
        )
    return n


def metric_schema(content: RecordDict) -> tuple[tuple[str, int], ...]:
    """Metric names with ``-1`` for a scalar or the list length (after :func:`check_metrics`).

    Flower aggregates metrics only over replies with the same schema.
    """
    record = next(iter(content.metric_records.values()))
    return tuple(sorted((k, len(v) if isinstance(v, list) else -1) for k, v in record.items()))


def describe_schema(schema: tuple[tuple[str, int], ...], limit: int = 10) -> str:
    """Human form of a :func:`metric_schema`: ``{'loss': number, 'acc': list of 3}``."""
    items = [f"{k!r}: {'number' if n < 0 else f'list of {n}'}" for k, n in schema[:limit]]
    more = ", ..." if len(schema) > limit else ""
    return "{" + ", ".join(items) + more + "}"


def config_record_bytes(record: Mapping[str, Any]) -> int:
    """Bytes a ConfigRecord's keys and values take (strings and bytes by length, 8 per number)."""

    def size(value: Any) -> int:
        if isinstance(value, str | bytes):
            return len(value)
        if isinstance(value, list):
            return sum(size(v) for v in value)
        return 8

    return sum(len(str(k)) + size(v) for k, v in record.items())


def drop_foreign_config_records(
    content: RecordDict, allowed: Mapping[str, int]
) -> list[tuple[str, int]]:
    """Remove every ConfigRecord of a reply but the ``allowed`` ones; bound those.

    Another party controls a reply's records: a ConfigRecord the strategy does not read is
    dropped before the reply is kept (only metrics and these records are kept per reply,
    docs/design.md §6), so its size never adds up over a round.

    Parameters
    ----------
    content : RecordDict
        The reply's content (changed in place).
    allowed : mapping of str to int
        Name of each ConfigRecord the strategy reads, with the most bytes it may take
        (:func:`config_record_bytes`).

    Returns
    -------
    list of (str, int)
        Name and size of every ConfigRecord dropped.

    Raises
    ------
    ReplyError
        When an allowed record is larger than its bound.

    """
    dropped = []
    for name in list(content.config_records):
        size = config_record_bytes(content.config_records[name])
        if name not in allowed:
            dropped.append((str(name)[:40], size))
            del content[name]
        elif size > allowed[name]:
            raise ReplyError(
                f"the reply's {name!r} ConfigRecord takes {size} bytes; at most "
                f"{allowed[name]} expected (the client mod writes a few hundred)."
            )
    return dropped


def check_reply_info(info: Mapping[str, Any]) -> None:
    """Validate the ``cifer`` ConfigRecord the client mod adds to a train reply.

    Raises
    ------
    ReplyError
        For an unknown entry, a state digest that is not 64 hex characters or a
        non-finite update norm.

    """
    for name, value in info.items():
        if name == REPLY_STATE_DIGEST:
            if not (
                isinstance(value, str)
                and len(value) == 64
                and all(c in "0123456789abcdef" for c in value)
            ):
                raise ReplyError(f"state digest {str(value)[:70]!r} is not a SHA-256 hex digest.")
        elif name == REPLY_UPDATE_NORM:
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise ReplyError(f"update norm {value!r} is not a finite number >= 0.")
        elif name == REPLY_STATE_CHECK:  # FedOpt state verdict (docs/design.md §4.3)
            if value not in ("pass", "fail"):
                raise ReplyError(f"state-check {str(value)[:40]!r} is not 'pass' or 'fail'.")
        elif name == REPLY_FAILED_GROUPS:  # SecureFed verdicts (docs/design.md §4.4)
            if not isinstance(value, str) or not re.fullmatch(r"(\d{1,4}(,\d{1,4}){0,63})?", value):
                raise ReplyError(
                    f"failed-groups {str(value)[:70]!r} is not a comma-separated list of "
                    "group indices."
                )
        else:
            raise ReplyError(
                f"unexpected entry {str(name)[:40]!r} in the reply's 'cifer' ConfigRecord; "
                f"expected {REPLY_STATE_DIGEST!r}, {REPLY_UPDATE_NORM!r}, "
                f"{REPLY_STATE_CHECK!r} or {REPLY_FAILED_GROUPS!r}."
            )


# --------------------------------------------------------------------------- digests
def chunk_digests(record: ArrayRecord | FramedRecord) -> list[bytes]:
    """SHA-256 of every ciphertext of an encrypted record (inside its packs).

    A :class:`~cifer_flwr.crypto.FramedRecord` (a reply framed once by the screen, then
    parsed from the same views) is hashed part by part; an ``ArrayRecord`` (the server's
    own global model) in record order, with structural framing checks only.
    """
    # views into the packs: no copy of the model (docs/design.md §6, memory)
    if isinstance(record, FramedRecord):
        return [hashlib.sha256(blob).digest() for blob in record.ciphertexts()]
    return [hashlib.sha256(blob).digest() for blob in record_ciphertext_views(record)]


class DigestMemory:
    """The SHA-256 digests of every ciphertext chunk received or sent, by round.

    The current (open) rounds are Python sets; closed rounds are frozen into sorted
    ``S32`` numpy arrays, so memory is 32 bytes per chunk and a lookup is a binary search
    per remembered round. Beyond ``limit`` digests the oldest rounds are forgotten (a
    replay older than that passes this check; SecureFed's round tags still catch it).

    Parameters
    ----------
    limit : int
        Most digests to keep.

    """

    def __init__(self, limit: int = MAX_REMEMBERED_CHUNKS) -> None:
        self.limit = limit
        self._frozen: dict[int, npt.NDArray[Any]] = {}
        self._open: dict[int, set[bytes]] = {}

    def __len__(self) -> int:
        return sum(len(a) for a in self._frozen.values()) + sum(len(s) for s in self._open.values())

    def rounds(self) -> list[int]:
        """Rounds with remembered digests, oldest first."""
        return sorted({*self._frozen, *self._open})

    def first_seen(self, digests: Sequence[bytes]) -> tuple[int, int] | None:
        """``(position in digests, round)`` of the first remembered digest, or ``None``."""
        for rnd in sorted(self._open):
            for pos, digest in enumerate(digests):
                if digest in self._open[rnd]:
                    return pos, rnd
        if self._frozen and digests:
            query = np.array(list(digests), dtype=f"S{_DIGEST}")
            for rnd in sorted(self._frozen):
                arr = self._frozen[rnd]
                if not len(arr):
                    continue
                idx = np.minimum(np.searchsorted(arr, query), len(arr) - 1)
                hits = np.flatnonzero(arr[idx] == query)
                if hits.size:
                    return int(hits[0]), rnd
        return None

    def add(self, server_round: int, digests: Iterable[bytes]) -> None:
        """Remember ``digests`` under ``server_round``."""
        self._open.setdefault(server_round, set()).update(digests)

    def freeze(self, before: int) -> None:
        """Freeze the rounds before ``before`` and forget the oldest beyond ``limit``."""
        for rnd in [r for r in self._open if r < before]:
            digests = self._open.pop(rnd)
            arr = np.sort(np.array(list(digests), dtype=f"S{_DIGEST}"))
            if rnd in self._frozen:
                arr = np.sort(np.concatenate([self._frozen[rnd], arr]))
            self._frozen[rnd] = arr
        dropped = []
        while len(self) > self.limit and self._frozen:
            oldest = min(self._frozen)
            dropped.append(oldest)
            del self._frozen[oldest]
        if dropped:
            log.info(
                "replay memory: forgot the chunk digests of rounds %s (limit %d digests)",
                dropped,
                self.limit,
            )

    def to_blob(self) -> tuple[list[list[int]], bytes]:
        """``([[round, count], ...], concatenated digests)`` (inverse of :meth:`from_blob`)."""
        index: list[list[int]] = []
        parts: list[bytes] = []
        for rnd in self.rounds():
            digests = sorted(
                {bytes(d).ljust(_DIGEST, b"\0") for d in self._frozen.get(rnd, ())}
                | self._open.get(rnd, set())
            )
            index.append([rnd, len(digests)])
            parts.extend(digests)
        return index, b"".join(parts)

    @classmethod
    def from_blob(
        cls, index: Sequence[Sequence[int]], blob: bytes, limit: int = MAX_REMEMBERED_CHUNKS
    ) -> DigestMemory:
        """Rebuild from :meth:`to_blob` output; every round is frozen.

        Raises
        ------
        ReplyError
            When the index does not match the blob's length.

        """
        memory = cls(limit)
        pos = 0
        for rnd, count in index:
            end = pos + int(count) * _DIGEST
            if end > len(blob):
                raise ReplyError(
                    f"digest index lists {count} digests for round {rnd}, the blob ends "
                    f"after {len(blob)} bytes."
                )
            memory._frozen[int(rnd)] = np.sort(
                np.frombuffer(blob[pos:end], dtype=f"S{_DIGEST}").copy()
            )
            pos = end
        if pos != len(blob):
            raise ReplyError(f"digest blob has {len(blob) - pos} bytes beyond its index.")
        return memory
