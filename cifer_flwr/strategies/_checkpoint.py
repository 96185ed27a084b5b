"""The strategy checkpoint file: one atomic cifer container per completed round.

Layout (docs/design.md §6): a cifer container of kind ``cifer.strategy-checkpoint`` whose
JSON header holds the round state (round number, layout, exclusions, statistics, the
metrics history of Flower's ``Result``, the replay-memory index, the optimizer spec) and two
blobs: the encrypted global model (:func:`cifer_flwr.crypto.bundle_to_bytes`) and the
concatenated 32-byte chunk digests. No pickle. The file is written in pieces straight from
the strategy's encrypted global record (:func:`cifer_flwr.crypto.records.record_bundle_stream`),
so a checkpoint never holds a second copy of the model in memory (docs/design.md §6).
Written to a temporary file in the same
directory (name ``.NAME.cifer-tmp-XXXX``), fsynced, then renamed over the checkpoint, and
the directory fsynced: a crash leaves either the previous or the new checkpoint, plus at
worst a temporary file that the next start removes.

Integrity (docs/design.md §6, issue 18): the header carries ``mac``, an HMAC-SHA256 over the
canonical JSON of ``format`` and ``state`` and over both blobs, keyed by the run's
*checkpoint key*: 32 random bytes a run makes when it writes its first checkpoint, kept in
``NAME.key`` next to the checkpoint (mode 0600, never through a symlink), or, when
``$CIFER_CHECKPOINT_KEY`` is set, derived from that secret (then nothing is on disk).
:func:`read_checkpoint` refuses a checkpoint whose MAC does not verify, and
:func:`restore_state` refuses one whose fields are out of range or whose settings (key,
preset, strategy, optimizer, ``min_replies``, masking) differ from the run's. What the MAC
protects against: accidents and anyone who can write the checkpoint but cannot read the key
file (another account with write access to the directory, a file put in place from
elsewhere). It does not stop someone who can read the key file (the run's own Unix user):
set ``$CIFER_CHECKPOINT_KEY`` from a secret store for that. The range checks hold either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from cifer_flwr.constants import CHECKPOINT_TMP_MARK, KIND_STRATEGY_CHECKPOINT
from cifer_flwr.crypto import Layout, container
from cifer_flwr.crypto.headers import finite_number, parse_layout
from cifer_flwr.crypto.records import record_bundle_stream
from cifer_flwr.exceptions import CiferError, CiphertextFormatError, ConfigError, KeyMismatchError

__all__ = [
    "RunCheckpoints",
    "CHECKPOINT_FORMAT",
    "ENV_CHECKPOINT_KEY",
    "Checkpoint",
    "RestoredState",
    "RunSettings",
    "checkpoint_key_path",
    "new_checkpoint_key",
    "read_checkpoint",
    "remove_temp_files",
    "restore_state",
    "result_from_json",
    "result_to_json",
    "write_checkpoint",
]

log = logging.getLogger("cifer_flwr.strategies")

#: Version of the checkpoint header; bumped on incompatible changes (2: ``mac``).
CHECKPOINT_FORMAT = 2
#: Environment variable: a secret the checkpoint key is derived from (no key file then).
ENV_CHECKPOINT_KEY = "CIFER_CHECKPOINT_KEY"
#: Shortest ``$CIFER_CHECKPOINT_KEY`` accepted (characters).
MIN_ENV_KEY_CHARS = 16
_KEY_BYTES = 32
_MAC_DOMAIN = b"cifer-flwr strategy checkpoint v2\0"
#: Bounds of what a checkpoint may describe (far beyond any real run).
MAX_ROUNDS = 10**6
MAX_NODE_ID = 2**64 - 1
MAX_REASON_CHARS = 10_000
MAX_EXAMPLES = 1e15
_INT64 = 2**63


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint file holds.

    Attributes
    ----------
    state : dict
        JSON round state (see :func:`~cifer_flwr.strategies._resume.checkpoint_of`).
    model : bytes or ArrayRecord
        The encrypted global model: ``crypto.bundle_to_bytes`` output (as read), or the
        encrypted record (when writing: the same bytes are streamed from its packs).
    digests : bytes
        The replay memory's concatenated chunk digests.

    """

    state: dict[str, Any]
    model: bytes | ArrayRecord
    digests: bytes
    #: The checkpoint key (``None`` when writing: the one in the key file, made if missing;
    #: when read: the key the MAC verified with).
    integrity_key: bytes | None = None


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{CHECKPOINT_TMP_MARK}"


def checkpoint_key_path(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint key of the checkpoint ``path`` lives: ``NAME.key`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".key")


def new_checkpoint_key() -> bytes:
    """A fresh random checkpoint key (one per run; ``$CIFER_CHECKPOINT_KEY`` overrides it)."""
    return secrets.token_bytes(_KEY_BYTES)


def _env_key() -> bytes | None:
    secret = os.environ.get(ENV_CHECKPOINT_KEY)
    if secret is None or secret == "":
        return None
    if len(secret) < MIN_ENV_KEY_CHARS:
        raise ConfigError(
            f"${ENV_CHECKPOINT_KEY} holds {len(secret)} characters; expected at least "
            f"{MIN_ENV_KEY_CHARS} (a random secret, e.g. `openssl rand -hex 32`), or unset it "
            "to keep a random key file next to the checkpoint."
        )
    return hashlib.sha256(_MAC_DOMAIN + secret.encode("utf-8", "surrogatepass")).digest()


def _read_key_file(path: Path) -> bytes:
    """The checkpoint key stored next to ``path`` (hex), read without following a link."""
    key_path = checkpoint_key_path(path)
    fix = (
        "a checkpoint is resumed only with the key file its run wrote next to it (or the "
        f"same ${ENV_CHECKPOINT_KEY}); start without resume (the checkpoint is then "
        "overwritten)"
    )
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CiphertextFormatError(
            f"checkpoint {path} has no integrity key ({key_path.name} missing); expected the "
            f"key file beside it. {fix}."
        ) from None
    except OSError as exc:
        raise CiphertextFormatError(
            f"checkpoint key {key_path} cannot be opened ({exc.strerror}; a symbolic link is "
            f"refused); expected a regular file. {fix}."
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise CiphertextFormatError(
                f"checkpoint key {key_path} has mode {stat.filemode(info.st_mode)}; expected "
                f"a regular file only its owner can read (0600). {fix}."
            )
        raw = os.read(fd, 4 * _KEY_BYTES)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise CiphertextFormatError(
            f"checkpoint key {key_path} does not hold {_KEY_BYTES} hex-encoded bytes. {fix}."
        )
    return key


def _store_key(path: Path, key: bytes) -> None:
    """Write ``key`` to the key file of ``path`` unless it already holds it (0600, no link)."""
    try:
        if _read_key_file(path) == key:
            return
    except CiphertextFormatError:
        pass
    container.write_file_atomic(
        checkpoint_key_path(path),
        (key.hex() + "\n").encode("ascii"),
        mode=0o600,
        temp_prefix=_temp_prefix(checkpoint_key_path(path)),
        follow_symlinks=False,
    )


def _blob_pieces(blob: bytes | container.StreamedBlob) -> tuple[int, Any]:
    if isinstance(blob, container.StreamedBlob):
        return blob.size, blob.pieces()
    return len(blob), (blob,)


def _mac(
    key: bytes, head: Mapping[str, Any], blobs: Sequence[bytes | container.StreamedBlob]
) -> str:
    """HMAC-SHA256 over the canonical JSON of ``head`` and every blob (length-prefixed)."""
    text = json.dumps(head, sort_keys=True, separators=(",", ":")).encode("utf-8")
    mac = hmac.new(key, _MAC_DOMAIN, hashlib.sha256)
    mac.update(struct.pack(">Q", len(text)))
    mac.update(text)
    for blob in blobs:
        size, pieces = _blob_pieces(blob)
        mac.update(struct.pack(">Q", size))
        for piece in pieces:
            mac.update(piece)
    return mac.hexdigest()


def remove_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files a crash during :func:`write_checkpoint` left next to ``path``."""
    return container.remove_temp_files(path, temp_prefix=_temp_prefix(Path(path)))


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename, fsync dir).

    The file is written in pieces; a model given as an ``ArrayRecord`` is never copied
    whole (the bytes equal those of its ``crypto.bundle_to_bytes``). The header's ``mac``
    is keyed by ``$CIFER_CHECKPOINT_KEY`` when set, else by ``checkpoint.integrity_key``
    (written to the key file first when it does not hold it yet), else by the key file's
    key (made when missing).
    """
    target = Path(path)
    key = _env_key()
    if key is None:
        key = checkpoint.integrity_key
        if key is None:
            try:
                key = _read_key_file(target)
            except CiphertextFormatError:
                key = new_checkpoint_key()
        _store_key(target, key)
    model = checkpoint.model
    blobs = [
        record_bundle_stream(model) if isinstance(model, ArrayRecord) else model,
        checkpoint.digests,
    ]
    head = {"state": checkpoint.state, "format": CHECKPOINT_FORMAT}
    data = container.iter_pack(
        KIND_STRATEGY_CHECKPOINT, {**head, "mac": _mac(key, head, blobs)}, blobs
    )
    return container.write_file_atomic(target, data, mode=0o600, temp_prefix=_temp_prefix(target))


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    The MAC is checked (with ``$CIFER_CHECKPOINT_KEY`` when set, else the key file next to
    the checkpoint) before anything else of the header is used.

    Raises
    ------
    CiphertextFormatError
        When the file is not a checkpoint of this format, is truncated or corrupted, its
        key file is missing or unusable, or its MAC does not verify (an edited file).

    """
    target = Path(path)
    header, blobs = container.read_file(target, kind=KIND_STRATEGY_CHECKPOINT)
    fields = sorted(str(k)[:40] for k in header if k not in ("kind", "blobs_sha256"))
    if (
        header.get("format") != CHECKPOINT_FORMAT
        or fields != ["format", "mac", "state"]
        or len(blobs) != 2
    ):
        raise CiphertextFormatError(
            f"checkpoint {path} has format {header.get('format')!r:.20}, fields {fields[:5]} "
            f"and {len(blobs)} blobs; this version reads format {CHECKPOINT_FORMAT} (fields "
            "format, mac, state) with 2 blobs. Start without resume (the checkpoint is then "
            "overwritten)."
        )
    state, found = header["state"], header["mac"]
    key = _env_key() or _read_key_file(target)
    expected = _mac(key, {"state": state, "format": CHECKPOINT_FORMAT}, blobs)
    if not isinstance(found, str) or not hmac.compare_digest(found, expected):
        source = f"${ENV_CHECKPOINT_KEY}" if _env_key() else checkpoint_key_path(target).name
        raise CiphertextFormatError(
            f"checkpoint {path} fails its integrity check: its MAC {str(found)[:16]!r}... is "
            f"not the HMAC-SHA256 of its content under the run's checkpoint key ({source}); "
            "expected an unmodified checkpoint written by this run. The file was edited or "
            "belongs to another run: start without resume (the checkpoint is then "
            "overwritten)."
        )
    if not isinstance(state, dict):
        raise CiphertextFormatError(f"checkpoint {path} has no state object.")
    return Checkpoint(state, blobs[0], blobs[1], key)


def _metrics_to_json(history: Mapping[int, MetricRecord]) -> dict[str, dict[str, Any]]:
    return {str(rnd): dict(record.items()) for rnd, record in history.items()}


class _FieldError(CiphertextFormatError):
    """A field of a checkpoint out of type or range (raised with the checkpoint's path)."""


def _bad(field: str, found: Any, expected: str) -> _FieldError:
    return _FieldError(f"{field} is {found!r:.80}; expected {expected}")


def _strict_int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(field, value, f"an integer in {low}..{high}")
    return value


def _round_key(value: Any, field: str, done: int) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 7:
        raise _bad(f"{field} round", value, f"a round number 1..{done}")
    return _strict_int(int(value), f"{field} round", 1, done)


def _metric_value(value: Any, field: str) -> int | float | list[int] | list[float]:
    if isinstance(value, list) and len(value) <= 1_000_000:
        if all(isinstance(v, float) for v in value):
            return list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [_strict_int(v, field, -_INT64, _INT64 - 1) for v in value]
    elif isinstance(value, float):
        return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return _strict_int(value, field, -_INT64, _INT64 - 1)
    raise _bad(field, value, "an int64, a float, or a list of one of them")


def _metrics_from_json(
    data: Any, field: str = "metrics", done: int = MAX_ROUNDS
) -> dict[int, MetricRecord]:
    if not isinstance(data, dict):
        raise _bad(field, type(data).__name__, "an object of rounds")
    out = {}
    for rnd, values in data.items():
        r = _round_key(rnd, field, done)
        if not isinstance(values, dict):
            raise _bad(f"{field}[{r}]", type(values).__name__, "an object of metrics")
        record: dict[str, Any] = {}
        for name, value in values.items():
            if not isinstance(name, str) or len(name) > 256:
                raise _bad(f"{field}[{r}] metric name", name, "a string of <= 256 characters")
            record[name] = _metric_value(value, f"{field}[{r}][{name}]")
        out[r] = MetricRecord(record)
    return out


def result_to_json(result: Result) -> dict[str, Any]:
    """The metrics history of Flower's ``Result`` (its arrays travel as the model blob)."""
    return {
        "released": len(result.arrays) > 0,
        "train": _metrics_to_json(result.train_metrics_clientapp),
        "evaluate": _metrics_to_json(result.evaluate_metrics_clientapp),
        "serverapp": _metrics_to_json(result.evaluate_metrics_serverapp),
    }


def result_from_json(data: Mapping[str, Any], done: int = MAX_ROUNDS) -> tuple[Result, bool]:
    """Inverse of :func:`result_to_json`: the ``Result`` (no arrays) and ``released``.

    Raises
    ------
    CiphertextFormatError
        For a missing or extra field, a round outside ``1..done`` or a metric that is not
        an int64, a float or a list of one of them.

    """
    if not isinstance(data, Mapping) or set(data) != {"released", "train", "evaluate", "serverapp"}:
        raise _bad("result", data, "an object of released, train, evaluate, serverapp")
    if not isinstance(data["released"], bool):
        raise _bad("result.released", data["released"], "true or false")
    result = Result()
    result.train_metrics_clientapp = _metrics_from_json(data["train"], "result.train", done)
    result.evaluate_metrics_clientapp = _metrics_from_json(
        data["evaluate"], "result.evaluate", done
    )
    result.evaluate_metrics_serverapp = _metrics_from_json(
        data["serverapp"], "result.serverapp", done
    )
    return result, data["released"]


@dataclass(frozen=True)
class RunSettings:
    """What a checkpoint must match to be resumed by a run (see :func:`restore_state`).

    Attributes
    ----------
    fingerprint, preset : str
        The run's key.
    strategy : str
        The strategy's class (module and name).
    optimizer : dict or None
        The FedOpt settings (``None`` for FedAvg-like strategies).
    min_replies : int
        The release rule.
    masking : bool
        Secure aggregation inside the sums.
    num_rounds : int or None
        The run's rounds (``None``: not known; only the checkpoint's own bound is checked).

    """

    fingerprint: str
    preset: str
    strategy: str
    optimizer: dict[str, Any] | None
    min_replies: int
    masking: bool
    num_rounds: int | None = None


@dataclass(frozen=True)
class RestoredState:
    """A checkpoint's state, every field checked (see :func:`restore_state`)."""

    round: int
    num_rounds: int
    layout: Layout
    examples_per_client: float
    excluded: dict[int, list[tuple[int, str]]]
    round_stats: dict[int, dict[str, float]]
    seen: list[tuple[int, int]]
    result: Result
    released: bool
    extra: dict[str, Any]


#: Every field of a checkpoint's state (format 2).
STATE_FIELDS = frozenset(
    {
        "strategy",
        "fingerprint",
        "preset",
        "optimizer",
        "masking",
        "round",
        "num_rounds",
        "min_replies",
        "examples_per_client",
        "layout",
        "excluded",
        "round_stats",
        "seen",
        "result",
        "extra",
    }
)


def _settings(state: Mapping[str, Any], path: Path, run: RunSettings) -> None:
    fingerprint = state["fingerprint"]
    if not isinstance(fingerprint, str) or fingerprint != run.fingerprint:
        raise KeyMismatchError(str(fingerprint)[:64], run.fingerprint, f"checkpoint {path}")
    fix = (
        "resume with the same settings, or start without resume (the checkpoint is then "
        "overwritten)"
    )
    for name, found, expected in (
        ("preset", state["preset"], run.preset),
        ("strategy", state["strategy"], run.strategy),
        ("optimizer", state["optimizer"], run.optimizer),
        ("masking", state["masking"], run.masking),
    ):
        if found != expected or type(found) is not type(expected):
            raise ConfigError(
                f"checkpoint {path} was written with {name} {found!r:.200}, but this run "
                f"uses {expected!r:.200}; {fix}."
            )
    found = state["min_replies"]
    if isinstance(found, bool) or found != run.min_replies:
        raise ConfigError(
            f"checkpoint {path} was written with min_replies {found!r:.40}, but this run uses "
            f"{run.min_replies}; {fix} (a lower min_replies would release smaller aggregates)."
        )


def _rounds(state: Mapping[str, Any], path: Path, run: RunSettings) -> tuple[int, int]:
    total = _strict_int(state["num_rounds"], "num_rounds", 1, MAX_ROUNDS)
    done = _strict_int(state["round"], "round", 1, total)
    if run.num_rounds is not None and done > run.num_rounds:
        raise ConfigError(
            f"checkpoint {path} holds round {done} of {total}, but this run has num_rounds="
            f"{run.num_rounds}; expected a checkpoint of round <= {run.num_rounds}. Resume "
            "with num_rounds >= the checkpoint's round, or start without resume."
        )
    return done, total


def _excluded(data: Any, done: int) -> dict[int, list[tuple[int, str]]]:
    if not isinstance(data, dict):
        raise _bad("excluded", type(data).__name__, "an object of rounds")
    out: dict[int, list[tuple[int, str]]] = {}
    for rnd, entries in data.items():
        r = _round_key(rnd, "excluded", done)
        if not isinstance(entries, list):
            raise _bad(f"excluded[{r}]", type(entries).__name__, "a list of [node, reason]")
        rows = []
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                raise _bad(f"excluded[{r}] entry", entry, "[node id, reason]")
            node = _strict_int(entry[0], f"excluded[{r}] node", 0, MAX_NODE_ID)
            why = entry[1]
            if not isinstance(why, str) or len(why) > MAX_REASON_CHARS:
                raise _bad(f"excluded[{r}] reason", why, f"text of <= {MAX_REASON_CHARS} chars")
            rows.append((node, why))
        out[r] = rows
    return out


def _round_stats(data: Any, done: int) -> dict[int, dict[str, float]]:
    if not isinstance(data, dict):
        raise _bad("round_stats", type(data).__name__, "an object of rounds")
    out: dict[int, dict[str, float]] = {}
    for rnd, stats in data.items():
        r = _round_key(rnd, "round_stats", done)
        if not isinstance(stats, dict):
            raise _bad(f"round_stats[{r}]", type(stats).__name__, "an object of numbers")
        row: dict[str, float] = {}
        for name, value in stats.items():
            if not isinstance(name, str) or len(name) > 256:
                raise _bad(f"round_stats[{r}] name", name, "a string of <= 256 characters")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(f"round_stats[{r}][{name}]", value, "a number")
            if isinstance(value, int):
                value = _strict_int(value, f"round_stats[{r}][{name}]", -_INT64, _INT64 - 1)
            row[name] = float(value)
        out[r] = row
    return out


def _seen(data: Any, done: int, digests: bytes) -> list[tuple[int, int]]:
    if not isinstance(data, list):
        raise _bad("seen", type(data).__name__, "a list of [round, count]")
    index, total = [], 0
    for entry in data:
        if not isinstance(entry, list) or len(entry) != 2:
            raise _bad("seen entry", entry, "[round, count]")
        rnd = _strict_int(entry[0], "seen round", 1, done)
        count = _strict_int(entry[1], "seen count", 0, len(digests) // 32)
        index.append((rnd, count))
        total += count
    if total * 32 != len(digests):
        raise _bad(
            "seen", f"{total} digests", f"{len(digests) // 32} (the digest blob's size / 32)"
        )
    return index


def restore_state(
    ckpt: Checkpoint, path: str | os.PathLike[str], run: RunSettings
) -> RestoredState:
    """Check every field of a checkpoint's state (read by :func:`read_checkpoint`) for ``run``.

    The settings must be the run's; the round must lie in ``1..num_rounds`` of the
    checkpoint and not beyond the run's ``num_rounds``; every other field is type- and
    range-checked (rounds of the history within ``1..round``, node ids, finite positive
    example reference, the layout through :func:`cifer_flwr.crypto.headers.parse_layout`,
    the digest index adding up to the digest blob).

    Raises
    ------
    KeyMismatchError
        The checkpoint belongs to another key.
    ConfigError
        Another preset, strategy, optimizer, ``min_replies`` or masking, or a round beyond
        the run's ``num_rounds``.
    CiphertextFormatError
        Any field out of type or range.

    """
    p = Path(path)
    state = ckpt.state
    fields = sorted(str(k)[:40] for k in state)
    if set(state) != STATE_FIELDS:
        raise CiphertextFormatError(
            f"checkpoint {p} has state fields {fields[:20]}; expected {sorted(STATE_FIELDS)}. "
            "Start without resume (the checkpoint is then overwritten)."
        )
    _settings(state, p, run)
    try:
        done, total = _rounds(state, p, run)
        examples = state["examples_per_client"]
        if not finite_number(examples) or not 0 < examples <= MAX_EXAMPLES:
            raise _bad("examples_per_client", examples, f"a number in (0, {MAX_EXAMPLES:g}]")
        layout = parse_layout(state["layout"], what=f"checkpoint {p} layout")
        excluded = _excluded(state["excluded"], done)
        round_stats = _round_stats(state["round_stats"], done)
        seen = _seen(state["seen"], done, ckpt.digests)
        result, released = result_from_json(state["result"], done)
        extra = state["extra"]
        if not isinstance(extra, dict):
            raise _bad("extra", type(extra).__name__, "an object")
    except _FieldError as exc:
        raise CiphertextFormatError(
            f"checkpoint {p}: {exc}. The checkpoint is corrupted or was edited: start "
            "without resume (the checkpoint is then overwritten)."
        ) from None
    except (CiferError, TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ConfigError | KeyMismatchError):
            raise
        raise CiphertextFormatError(
            f"checkpoint {p} holds a field cifer cannot use ({type(exc).__name__}: "
            f"{exc!s:.200}); expected a checkpoint this version wrote. Start without resume."
        ) from None
    return RestoredState(
        done, total, layout, float(examples), excluded, round_stats, seen, result, released, extra
    )


class RunCheckpoints:
    """The checkpoint file of one run: where, whether to resume, its MAC key.

    The collaborator a strategy holds for checkpointing: it cleans what an interrupted
    write left, says whether there is a checkpoint to resume, writes one after every round
    (a failed write is logged and the run goes on) and keeps the run's HMAC key (made at
    the first write, or the one a resumed checkpoint verified with). What goes in the
    checkpoint and how it is applied are :mod:`~cifer_flwr.strategies._resume`'s
    (``checkpoint_of`` / ``restore_run``).

    Parameters
    ----------
    path : path, optional
        The checkpoint file (``None``: no checkpoints).
    resume : bool
        Continue from ``path`` when it exists.

    """

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self.resume = resume
        self.key: bytes | None = None

    def to_resume(self) -> Path | None:
        """Remove leftover temp files; the checkpoint to resume from, or ``None``."""
        path = self.path
        if path is None:
            return None
        for tmp in remove_temp_files(path):
            log.info("removed %s, left behind by an interrupted checkpoint write", tmp)
        if not self.resume:
            if path.exists():
                log.info("resume=False: the checkpoint %s will be overwritten", path)
            return None
        if not path.exists():
            log.info("resume=True but no checkpoint at %s yet: starting from round 1", path)
            return None
        return path

    def read(self, path: Path) -> Checkpoint:
        """Read and verify ``path``; the run keeps its MAC key."""
        ckpt = read_checkpoint(path)
        self.key = ckpt.integrity_key
        return ckpt

    def run_key(self) -> bytes:
        """The run's MAC key (a new run: a new key; a resumed one keeps its)."""
        if self.key is None:
            self.key = new_checkpoint_key()
        return self.key

    def write(self, server_round: int, build: Callable[[], Checkpoint]) -> None:
        """Write the checkpoint ``build()`` makes; a failure is logged, the run goes on."""
        if self.path is None:
            return
        try:
            write_checkpoint(self.path, build())
        except (OSError, CiferError, TypeError, ValueError) as exc:
            log.error(
                "round %d: writing the checkpoint %s failed (%s: %s); the run goes on, but "
                "cannot resume from this round",
                server_round,
                self.path,
                type(exc).__name__,
                exc,
            )
            return
        log.info("round %d: checkpoint written to %s", server_round, self.path)
