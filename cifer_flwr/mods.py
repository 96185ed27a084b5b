"""``ckks_mod``: make any Flower ClientApp encrypted without touching its code.

Incoming: every encrypted ``ArrayRecord`` is decrypted (and, for FedOpt, *materialized*: the
pending server step is applied) into a normal ``ArrayRecord`` before the user's
``@app.train()`` / ``@app.evaluate()`` function runs. Outgoing (train): the reply's arrays are
encrypted with the weight ``n_i / B`` the strategy asked for, so the server only adds
ciphertexts; SecureFed's clipping, noise and aggregation check happen here too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    RecordDict,
)
from flwr.common.constant import ErrorCode  # no public error codes (tests/test_flower_api.py)

from cifer_flwr import crypto, masking, protocol
from cifer_flwr.constants import (
    CFG_CHECK,
    CFG_CLIP_NORM,
    CFG_COHORT,
    CFG_NOISE_STD,
    CFG_RETURN_STATE,
    CFG_SESSION,
    CFG_SLOT,
    CFG_WEIGHT_DIVISOR,
    CFG_WEIGHTED_BY,
    ENV_PRIVATE_KEY,
    MASK_PAYLOAD,
    MASK_RECORD,
    MASK_STATE,
    METRIC_CLIPPED,
    NODE_CONFIG_PRIVATE_KEY,
    NODE_IDENTITY_KEY,
    NODE_ROSTER,
    PART_CHECK,
    PART_MODEL,
    PART_STATE,
    REPLY_FAILED_GROUPS,
    REPLY_RECORD,
    REPLY_STATE_CHECK,
    REPLY_STATE_DIGEST,
    REPLY_UPDATE_NORM,
    STATE_BASE_ARRAYS,
    STATE_BASE_INFO,
    STATE_FEDOPT_ARRAYS,
    STATE_FEDOPT_INFO,
)
from cifer_flwr.crypto.encoding import count_chunks
from cifer_flwr.exceptions import CiferError, KeyFileError, MaskingError
from cifer_flwr.flower_types import ClientAppCallable

__all__ = ["ckks_mod", "private_key_for"]

log = logging.getLogger(__name__)
_KEYS: dict[str, crypto.AnyKey] = {}
_KEYS_LOCK = threading.Lock()


def private_key_for(context: Context) -> crypto.AnyKey:
    """Load (once per path) the private key named by node config ``private-key`` or env.

    Raises
    ------
    KeyFileError
        When neither ``node_config["private-key"]`` nor ``$CIFER_PRIVATE_KEY`` is set.

    """
    path = context.node_config.get(NODE_CONFIG_PRIVATE_KEY) or os.environ.get(ENV_PRIVATE_KEY)
    if not path:
        raise KeyFileError(
            "ckks_mod needs the private key path: start the SuperNode with "
            f'--node-config "{NODE_CONFIG_PRIVATE_KEY}=keys/NAME/private.key" or set '
            f"{ENV_PRIVATE_KEY}."
        )
    with _KEYS_LOCK:
        if str(path) not in _KEYS:
            _KEYS[str(path)] = crypto.load_private_key(str(path))
        return _KEYS[str(path)]


def _config(msg: Message) -> Mapping[str, Any]:
    records = list(msg.content.config_records.values())
    return records[0] if records else {}


def _plain_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _num_examples(reply: Message, weighted_by: str) -> float:
    for record in reply.content.metric_records.values():
        if weighted_by in record:
            value = float(record[weighted_by])  # type: ignore[arg-type]
            if value <= 0:
                raise CiferError(f"'{weighted_by}' must be positive, got {value}.")
            return value
    raise CiferError(
        f"the train reply has no metric '{weighted_by}'; encrypted aggregation weights each "
        f"update by it. Return MetricRecord({{'{weighted_by}': len(trainset)}})."
    )


def _report_seconds(reply: Message, name: str, seconds: float) -> None:
    """Add a timing to the reply's first MetricRecord (aggregated by the strategy)."""
    records = list(reply.content.metric_records.values())
    if records:
        records[0][name] = seconds


def _error_reply(msg: Message, reason: str) -> Message:
    log.error("ckks_mod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _load_base(context: Context, name: str) -> protocol.BaseModel | None:
    """The last SecureFed global this key holder accepted for record ``name`` (or None)."""
    info = context.state.config_records.get(STATE_BASE_INFO)
    record = context.state.array_records.get(STATE_BASE_ARRAYS)
    if info is None or record is None or info.get("record") != name:
        return None
    arrays = {k: a.numpy() for k, a in record.items()}
    return protocol.BaseModel(int(info["round"]), arrays, float(info["error-bound"]))  # type: ignore[arg-type]


def _store_base(context: Context, name: str, opened: protocol.Opened) -> None:
    """Remember an accepted SecureFed global: the norm check of the next one needs it."""
    if opened.round is None:
        return
    context.state.array_records[STATE_BASE_ARRAYS] = _plain_record(opened.arrays)
    context.state.config_records[STATE_BASE_INFO] = ConfigRecord(
        {"record": name, "round": opened.round, "error-bound": opened.error_bound}
    )


def _load_own_state(context: Context, name: str) -> protocol.OwnState | None:
    """The FedOpt state this key holder computed in its last train round (or None)."""
    info = context.state.config_records.get(STATE_FEDOPT_INFO)
    record = context.state.array_records.get(STATE_FEDOPT_ARRAYS)
    if info is None or record is None or info.get("record") != name:
        return None
    packed = {k: a.numpy() for k, a in record.items()}
    return protocol.OwnState(int(info["round"]), packed)  # type: ignore[arg-type]


def _store_own_state(
    context: Context, name: str, server_round: int, opened: protocol.Opened
) -> None:
    """Remember the FedOpt state computed in a train round: next round's check needs it (§4.3)."""
    if opened.opt_state is None:
        return
    context.state.array_records[STATE_FEDOPT_ARRAYS] = _plain_record(
        protocol.pack_state(*opened.opt_state)
    )
    context.state.config_records[STATE_FEDOPT_INFO] = ConfigRecord(
        {"record": name, "round": server_round}
    )


def _decrypt_incoming(
    msg: Message, key: crypto.AnyKey, config: Mapping[str, Any], context: Context
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any], ConfigRecord]:
    """Replace encrypted records in ``msg`` by plaintext ones; return what was received.

    SecureFed globals are verified first (:func:`protocol.open_global`, docs/design.md
    §4.4): a failing aggregate raises :class:`protocol.AggregationCheckError`, and the
    verdicts on candidate groups go back to the server in the returned ConfigRecord.
    """
    received: dict[str, dict[str, np.ndarray]] = {}
    state: dict[str, Any] = {}
    report = ConfigRecord()
    is_train = msg.metadata.message_type.startswith(MessageType.TRAIN)
    server_round = int(config.get("server-round", 0))
    # a train message carries an aggregate of an earlier round, evaluate one of this round
    max_round = server_round - 1 if is_train else server_round
    for name, record in list(msg.content.array_records.items()):
        if not crypto.is_encrypted_record(record):
            continue
        parts = crypto.bundle_from_record(record, key)
        opened = protocol.open_global(
            parts,
            key,
            previous=_load_base(context, name),
            max_round=max_round,
            own_state=_load_own_state(context, name),
        )
        for note in opened.notes:
            log.warning("ckks_mod: %s", note)
        if opened.groups_tested:
            report[REPLY_FAILED_GROUPS] = ",".join(str(g) for g in opened.failed_groups)
        if opened.state_check is not None:
            report[REPLY_STATE_CHECK] = opened.state_check
        _store_base(context, name, opened)
        if is_train:  # the state the asked holders of this round return (§4.3)
            _store_own_state(context, name, server_round, opened)
        if opened.opt_state is not None:
            state[name] = opened.opt_state
        received[name] = opened.arrays
        msg.content.array_records[name] = _plain_record(opened.arrays)
    return received, state, report


def _encrypt_reply(
    reply: Message,
    key: crypto.AnyKey,
    config: Mapping[str, Any],
    received: Mapping[str, Mapping[str, np.ndarray]],
    opt_state: Mapping[str, Any],
    report: ConfigRecord,
    masker: _TrainMasker | None = None,
) -> None:
    weighted_by = str(config.get(CFG_WEIGHTED_BY, "num-examples"))
    divisor = float(config.get(CFG_WEIGHT_DIVISOR, 1.0))
    n = _num_examples(reply, weighted_by)
    weight = n / divisor
    info = ConfigRecord(dict(report))
    summands = _summands(config, key)
    clipped = 0
    t0 = time.perf_counter()
    if masker is not None and len(reply.content.array_records) != 1:
        raise MaskingError(
            f"a masked round needs exactly one ArrayRecord in the train reply, got "
            f"{len(reply.content.array_records)}."
        )
    for name, record in list(reply.content.array_records.items()):
        arrays = {k: a.numpy() for k, a in record.items()}
        base = received.get(name)
        clip = float(config.get(CFG_CLIP_NORM, 0.0))
        if clip > 0 and base is not None:
            arrays, norm = protocol.clip_update(arrays, dict(base), clip)
            info[REPLY_UPDATE_NORM] = norm
        noise = float(config.get(CFG_NOISE_STD, 0.0))
        if noise > 0:
            arrays = protocol.add_noise(arrays, noise, np.random.default_rng())
        if config.get(CFG_CHECK):
            parts = _encrypt_checked(arrays, key, config, weight, masker)
        else:
            mask = None if masker is None else masker(count_chunks(arrays, key.params.slots))
            model = crypto.encrypt(arrays, key, weight=weight, summands=summands, mask=mask)
            parts = {PART_MODEL: model}
        clipped += sum(p.clipped for p in parts.values())
        if name in opt_state:
            x, m, v = opt_state[name]
            info[REPLY_STATE_DIGEST] = protocol.state_digest(x, m, v)
            if config.get(CFG_RETURN_STATE):
                packed = protocol.pack_state(x, m, v)
                scale = protocol.exact_weight(packed, key.params)
                parts[PART_STATE] = crypto.encrypt(packed, key, weight=scale)
        reply.content.array_records[name] = crypto.bundle_to_record(parts)
    _report_seconds(reply, "cifer-encrypt-s", time.perf_counter() - t0)
    if key.params.quantized:
        _report_seconds(reply, METRIC_CLIPPED, float(clipped))
        if clipped:
            log.warning(
                "ckks_mod: %d values exceeded this client's share of the quantized range and "
                "were clipped (docs/design.md §4.7, §4.8).",
                clipped,
            )
    if len(info):
        reply.content.config_records[REPLY_RECORD] = info


def _encrypt_checked(
    arrays: Mapping[str, np.ndarray],
    key: crypto.AnyKey,
    config: Mapping[str, Any],
    weight: float,
    masker: _TrainMasker | None = None,
) -> dict[str, crypto.AnyEncrypted]:
    """SecureFed: the model with integrity values in every ciphertext, plus the check part."""
    slot, cohort = int(config[CFG_SLOT]), int(config[CFG_COHORT])
    server_round = int(config.get("server-round", 0))
    session = str(config.get(CFG_SESSION, ""))
    if not session:
        raise CiferError(
            f"the SecureFed config has no '{CFG_SESSION}'; the server's cifer_flwr is older "
            "than this client's. Use the same cifer_flwr version on both sides."
        )
    if not crypto.has_reserved_slots(key):
        raise CiferError(
            "SecureFed's integrity values need reserved ciphertext slots, which a Paillier key "
            "does not have; run SecureFed with a CKKS or packed key (docs/design.md §4.4)."
        )
    reserved = protocol.INTEGRITY_SLOTS
    num_chunks = count_chunks(arrays, key.params.slots, reserved)
    fill = protocol.integrity_fill(session, server_round, slot, cohort, num_chunks, key.params)
    summands = _summands(config, key)
    mask = None if masker is None else masker(num_chunks)
    model = crypto.encrypt(
        arrays, key, weight=weight, reserved=reserved, fill=fill, summands=summands, mask=mask
    )
    check = protocol.check_arrays(slot, cohort, server_round, weight)
    return {PART_MODEL: model, PART_CHECK: crypto.encrypt(check, key, summands=summands)}


def _summands(config: Mapping[str, Any], key: crypto.AnyKey) -> int:
    """How many updates the server may sum (``packed``: each gets that share of the range).

    The cohort size the server sent; the preset's maximum when it sent none
    (docs/design.md §4.7).
    """
    cohort = config.get(CFG_COHORT)
    limit = key.params.max_summands
    if isinstance(cohort, int) and not isinstance(cohort, bool) and 1 <= cohort <= limit:
        return cohort
    if cohort is not None and key.params.quantized:
        raise CiferError(
            f"the server announced a cohort of {cohort!r:.20}; preset {key.params.name!r} "
            f"sums at most {limit} updates without wrapping. Sample fewer clients."
        )
    return limit


def ckks_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: decrypt what the server sends, encrypt what the client returns.

    Add it to any ClientApp: ``ClientApp(mods=[ckks_mod])``. The private key path comes from
    node config ``private-key`` (``flower-supernode --node-config "private-key=..."``) or the
    environment variable ``CIFER_PRIVATE_KEY``. Errors (wrong key, failed aggregation check)
    become error replies with the reason, which the server logs.
    """
    try:
        key = private_key_for(context)
        mask_request = _pop_mask_request(msg)  # the masking stages (docs/design.md §4.9)
        if mask_request is not None and mask_request[0] != "train":
            return _answer_mask_stage(msg, context, *mask_request)
        config = _config(msg)
        masker = None if mask_request is None else _TrainMasker(context, key, mask_request[1])
        if masker is None and _requires_masking(msg, context):
            raise MaskingError(
                "this node has a masking roster, so it uploads only masked updates; the "
                "server sent a train message without masking (docs/design.md §4.9)."
            )
        t0 = time.perf_counter()
        received, opt_state, report = _decrypt_incoming(msg, key, config, context)
        decrypt_s = time.perf_counter() - t0
    except protocol.AggregationCheckError as exc:
        # never train or evaluate on it; the reason opens with CHECK_FAILED (docs/design.md §4.4)
        return _error_reply(msg, f"{exc} The global model is refused.")
    except MaskingError as exc:
        return _error_reply(msg, f"masking refused: {exc}")
    except CiferError as exc:
        return _error_reply(msg, f"cannot decrypt the server's message: {exc}")
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if not msg.metadata.message_type.startswith(MessageType.TRAIN):
        verdict = report.get(REPLY_STATE_CHECK)
        if verdict is not None:  # the FedOpt state verdict (docs/design.md §4.3)
            reply.content.config_records[REPLY_RECORD] = ConfigRecord({REPLY_STATE_CHECK: verdict})
        return reply
    _report_seconds(reply, "cifer-decrypt-s", decrypt_s)
    try:
        _encrypt_reply(reply, key, config, received, opt_state, report, masker)
    except CiferError as exc:
        return _error_reply(msg, f"cannot encrypt the reply: {exc}")
    finally:
        if masker is not None:
            masker.save()
    return reply


# ------------------------------------------------------------------ masking (§4.9)
def _pop_mask_request(msg: Message) -> tuple[str, bytes] | None:
    """Take the masking payload out of ``msg`` (the user's ClientApp never sees it)."""
    record = msg.content.config_records.get(MASK_RECORD)
    if record is None:
        return None
    del msg.content[MASK_RECORD]
    payload = record.get(MASK_PAYLOAD)
    if not isinstance(payload, bytes) or not set(record) <= {MASK_PAYLOAD, "server-round"}:
        raise MaskingError(
            f"the {MASK_RECORD!r} record must hold one bytes value {MASK_PAYLOAD!r}."
        )
    return masking.request_stage(payload), payload


def _identity_and_roster(
    context: Context,
) -> tuple[masking.Identity | None, masking.Roster | None]:
    """The node's identity key and roster, from node config ``identity-key`` / ``roster``."""
    ident_path = context.node_config.get(NODE_IDENTITY_KEY)
    roster_path = context.node_config.get(NODE_ROSTER)
    identity = masking.load_identity(str(ident_path)) if ident_path else None
    roster = masking.load_roster(str(roster_path)) if roster_path else None
    if roster is not None and identity is None:
        raise MaskingError(
            f"this node has a roster but no identity key: set --node-config "
            f'"{NODE_IDENTITY_KEY}=keys/NAME/identity.key" (cifer keygen --identity NAME).'
        )
    return identity, roster


def _session(context: Context) -> tuple[masking.ClientSession | None, int]:
    record = context.state.config_records.get(MASK_STATE)
    if record is None:
        return None, 0
    raw, last = record.get("session"), record.get("last-round", 0)
    session = masking.ClientSession.from_bytes(raw) if isinstance(raw, bytes) and raw else None
    return session, int(last) if isinstance(last, int) else 0


def _store_session(context: Context, session: masking.ClientSession | None, last: int) -> None:
    raw = b"" if session is None or session.stage == "answered" else session.to_bytes()
    context.state.config_records[MASK_STATE] = ConfigRecord({"session": raw, "last-round": last})


def _answer_mask_stage(msg: Message, context: Context, stage: str, payload: bytes) -> Message:
    """Answer an advertise, share or unmask request itself (no user code runs)."""
    session, last = _session(context)
    if stage == "advertise":
        identity, _ = _identity_and_roster(context)
        session, answer = masking.ClientSession.advertise(
            payload, int(context.node_id), identity, last
        )
        last = session.server_round
    elif session is None:
        raise MaskingError(f"a {stage} request arrived, but this client advertised no keys.")
    elif stage == "share":
        answer = session.share(payload, _identity_and_roster(context)[1])
    else:
        answer = session.unmask(payload)
    _store_session(context, session, last)
    content = RecordDict({MASK_RECORD: ConfigRecord({MASK_PAYLOAD: answer})})
    return Message(content, reply_to=msg)


def _requires_masking(msg: Message, context: Context) -> bool:
    """A node with a roster opted into masking: it never uploads an unmasked update."""
    return bool(context.node_config.get(NODE_ROSTER)) and msg.metadata.message_type.startswith(
        MessageType.TRAIN
    )


class _TrainMasker:
    """The train stage's mask, computed once for the model part's ciphertext count."""

    def __init__(self, context: Context, key: crypto.AnyKey, payload: bytes) -> None:
        session, self.last = _session(context)
        if session is None:
            raise MaskingError("a masked train message arrived, but this client shared no keys.")
        if not crypto.has_exact_sums(key):
            raise MaskingError(
                f"masking needs preset 'packed' (exact sums); this client's key is "
                f"{key.params.name!r}."
            )
        self.context, self.session, self.payload = context, session, payload
        self.slots, self.modulus = key.params.slots, key.params.plain_modulus

    def __call__(self, num_chunks: int) -> np.ndarray:
        """``num_chunks * slots`` mask integers in ``[0, t)`` (once per round)."""
        mask = self.session.mask(self.payload, num_chunks * self.slots, self.modulus)
        if self.session.unopened:
            log.warning(
                "ckks_mod: masking: the shares of nodes %s were missing or forged; this client "
                "cannot help rebuild their secrets (the others can)",
                self.session.unopened[:10],
            )
        return mask

    def save(self) -> None:
        """Keep the session (now holding the shares addressed to this client) for unmask."""
        _store_session(self.context, self.session, self.last)
