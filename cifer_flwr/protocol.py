"""The encrypted-FL protocol shared by the strategies (server) and ``ckks_mod`` (key holders).

Pure functions on numpy arrays and :mod:`cifer_flwr.crypto` objects; no TenSEAL import.
See docs/design.md §4.2-4.4.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt

from cifer_flwr import crypto
from cifer_flwr.constants import (
    CHECK_FAILED,
    META_BASE_ROUND,
    META_CLIP_NORM,
    META_NOISE_STD,
    META_ROUND,
    META_SESSION,
    META_SLOTS,
    META_STATE_ROUND,
    PART_CHECK,
    PART_GROUP_SUFFIX,
    PART_MODEL,
    PART_STATE,
)
from cifer_flwr.crypto.encoding import decode, reserved_values
from cifer_flwr.exceptions import CiferError, ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

__all__ = [
    "AVGM_BETA_2",
    "AVGM_TAU",
    "INTEGRITY_SLOTS",
    "AggregationCheckError",
    "BaseModel",
    "Opened",
    "OptimizerSpec",
    "OwnState",
    "add_noise",
    "avgm_step",
    "check_arrays",
    "ckks_error_bound",
    "clip_update",
    "exact_weight",
    "decrypt_global_model",
    "fedopt_step",
    "group_indices",
    "group_part",
    "integrity_fill",
    "integrity_scale",
    "integrity_tags",
    "materialize",
    "model_layout",
    "open_global",
    "open_reply",
    "pack_state",
    "parse_slots_mask",
    "part_weight_ok",
    "state_digest",
    "state_layout",
    "state_names",
    "state_tolerance",
    "unpack_state",
    "slots_mask",
    "update_norm_allowance",
    "verify_check",
    "weight_divisor",
]

Arrays = dict[str, npt.NDArray[Any]]
FloatArray = npt.NDArray[np.float64]


class AggregationCheckError(CiferError):
    """A key holder refuses an aggregate that violates what SecureFed guarantees.

    A dropped, duplicated or replayed update, a ciphertext under another key or from another
    round, client or position, or an update beyond the clipping bound. The message always
    opens with ``constants.CHECK_FAILED`` so the server can recognise refusals.
    """

    def __init__(self, message: str) -> None:
        if not message.startswith(CHECK_FAILED):
            message = f"{CHECK_FAILED}: {message}"
        super().__init__(message)


# --------------------------------------------------------------------------- weighting
def weight_divisor(num_sampled: int, examples_per_client: float) -> float:
    """Public divisor ``B = K * n_ref`` sent to clients; each encrypts ``(n_i / B) * w_i``.

    With ``n_ref`` near the true mean example count, ``sum n_i / B`` is about 1, so the
    aggregate keeps the magnitude of one model (no overflow for 1 000 clients and 10**7
    examples) and CKKS's absolute error stays small relative to it.
    """
    if num_sampled < 1 or not examples_per_client > 0:
        raise ConfigError(
            f"weight divisor needs >= 1 client and a positive example count, got "
            f"{num_sampled} and {examples_per_client}."
        )
    return float(num_sampled) * float(examples_per_client)


# --------------------------------------------------------------------------- FedOpt
OptKind = Literal["yogi", "adam", "adagrad", "avgm"]

#: FedAvgM (``kind="avgm"``) has no second moment and no adaptivity: its ``beta_2`` and
#: ``tau`` are unused and fixed to these values, so that one FedAvgM setting has exactly one
#: JSON form (checkpoints and ciphertext metadata compare these dicts).
AVGM_BETA_2 = 0.0
AVGM_TAU = 1.0


@dataclass(frozen=True)
class OptimizerSpec:
    """Hyper-parameters of a server step (public; travels in ciphertext metadata).

    ``kind`` is ``yogi``, ``adam`` or ``adagrad`` (Flower's FedOpt family) or ``avgm``
    (Flower's FedAvgM): there ``eta`` is ``server_learning_rate``, ``beta_1`` is
    ``server_momentum``, ``beta_2`` is :data:`AVGM_BETA_2` and ``tau`` is :data:`AVGM_TAU`
    (both unused).
    """

    kind: OptKind
    eta: float
    beta_1: float
    beta_2: float
    tau: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> OptimizerSpec:
        """Rebuild from :meth:`to_dict` output, checking every field.

        The settings are public metadata another party wrote, so nothing is trusted.

        Raises
        ------
        ConfigError
            For a missing field, an unknown kind or a value out of range.

        """
        if not isinstance(data, Mapping) or set(data) != {"kind", "eta", "beta_1", "beta_2", "tau"}:
            raise ConfigError(
                f"FedOpt settings {data!r:.120}; expected an object with exactly kind, eta, "
                "beta_1, beta_2 and tau."
            )
        kind = data["kind"]
        if kind not in ("yogi", "adam", "adagrad", "avgm"):
            raise ConfigError(
                f"unknown FedOpt kind {kind!r:.40}; expected yogi, adam, adagrad or avgm."
            )
        values = {}
        for name in ("eta", "beta_1", "beta_2", "tau"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"FedOpt {name} is {value!r:.40}; expected a number.")
            values[name] = float(value)
        if not 0 < values["eta"] < math.inf or not 0 < values["tau"] < math.inf:
            raise ConfigError(
                f"FedOpt eta={values['eta']!r} and tau={values['tau']!r}; both must be finite "
                "and > 0."
            )
        if not (0 <= values["beta_1"] < 1 and 0 <= values["beta_2"] < 1):
            raise ConfigError(
                f"FedOpt beta_1={values['beta_1']!r}, beta_2={values['beta_2']!r}; both must "
                "lie in [0, 1)."
            )
        if kind == "avgm" and (values["beta_2"] != AVGM_BETA_2 or values["tau"] != AVGM_TAU):
            raise ConfigError(
                f"FedAvgM settings with beta_2={values['beta_2']!r}, tau={values['tau']!r}; "
                f"FedAvgM does not use them and expects beta_2={AVGM_BETA_2} and "
                f"tau={AVGM_TAU} exactly."
            )
        return cls(
            kind,
            values["eta"],
            values["beta_1"],
            values["beta_2"],
            values["tau"],
        )


def fedopt_step(
    spec: OptimizerSpec,
    x: Arrays,
    m: Arrays | None,
    v: Arrays | None,
    aggregate: Arrays,
    server_round: int,
) -> tuple[Arrays, Arrays, Arrays | None]:
    """Apply Flower's FedYogi / FedAdam / FedAdagrad / FedAvgM server update exactly.

    FedAvgM (``spec.kind == "avgm"``) is dispatched to :func:`avgm_step`; its ``v`` is
    ignored and returned as ``None``.

    Parameters
    ----------
    spec : OptimizerSpec
        Which optimizer and its hyper-parameters.
    x, m, v : dict
        Current model and moments (``None`` moments start at zero, as in Flower).
    aggregate : dict
        Weighted mean of the clients' models of round ``server_round``.
    server_round : int
        Round the aggregate comes from (FedAdam's bias correction).

    Returns
    -------
    tuple of dict
        New ``(x, m, v)``.

    """
    if spec.kind == "avgm":
        x_new, m_new = avgm_step(spec, x, m, aggregate)
        return x_new, m_new, None
    delta = {k: aggregate[k] - x[k] for k in x}
    m_prev = m or {k: np.zeros_like(d) for k, d in delta.items()}
    v_prev = v or {k: np.zeros_like(d) for k, d in delta.items()}
    m_new = {k: spec.beta_1 * m_prev[k] + (1 - spec.beta_1) * delta[k] for k in delta}
    if spec.kind == "yogi":
        v_new = {
            k: v_prev[k]
            - (1.0 - spec.beta_2) * (delta[k] ** 2) * np.sign(v_prev[k] - delta[k] ** 2)
            for k in delta
        }
        eta = spec.eta
    elif spec.kind == "adam":
        v_new = {k: spec.beta_2 * v_prev[k] + (1 - spec.beta_2) * delta[k] ** 2 for k in delta}
        eta = (
            spec.eta
            * math.sqrt(1 - spec.beta_2 ** (server_round + 1.0))
            / (1 - spec.beta_1 ** (server_round + 1.0))
        )
    else:
        v_new = {k: v_prev[k] + delta[k] ** 2 for k in delta}
        eta = spec.eta
    x_new = {k: x[k] + eta * m_new[k] / (np.sqrt(v_new[k]) + spec.tau) for k in x}
    return x_new, m_new, v_new


def avgm_step(
    spec: OptimizerSpec, x: Arrays, m: Arrays | None, aggregate: Arrays
) -> tuple[Arrays, Arrays]:
    """Apply Flower's FedAvgM server update (``flwr.serverapp.strategy.FedAvgM``) exactly.

    With pseudo-gradient ``g = x - aggregate`` (updates are the opposite of gradients),
    momentum ``m_new = server_momentum * m + g`` (``m`` starts at zero, so round 1 gives
    ``m_new = g`` as Flower's first-round initialisation does; no dampening, no Nesterov)
    and ``x_new = x - server_learning_rate * m_new``. With ``server_momentum = 0`` this is
    Flower's momentum-free branch ``x - lr * g``; with ``lr = 1`` too, the aggregate itself.

    Parameters
    ----------
    spec : OptimizerSpec
        ``kind == "avgm"``; ``eta`` is the server learning rate, ``beta_1`` the momentum.
    x, m : dict
        Current model and momentum buffer (``None`` starts at zero).
    aggregate : dict
        Weighted mean of the clients' models.

    Returns
    -------
    tuple of dict
        New ``(x, m)``.

    """
    grad = {k: x[k] - aggregate[k] for k in x}
    m_prev = m or {k: np.zeros_like(g) for k, g in grad.items()}
    m_new = {k: spec.beta_1 * m_prev[k] + grad[k] for k in grad}
    x_new = {k: x[k] - spec.eta * m_new[k] for k in x}
    return x_new, m_new


_STATE_GROUPS = ("x", "m", "sqrtv")


def state_names(model_names: Sequence[str], *, moments: bool) -> tuple[str, ...]:
    """Entry names :func:`pack_state` gives a model's arrays: ``x`` only, or ``x, m, sqrt v``."""
    groups = _STATE_GROUPS if moments else _STATE_GROUPS[:1]
    return tuple(f"{g}/{n}" for g in groups for n in model_names)


def state_layout(model: crypto.Layout) -> crypto.Layout:
    """Layout of a state holding only ``x`` = the model (inverse of :func:`model_layout`).

    An encrypted plain model becomes a FedOpt state by this renaming alone: its ciphertexts
    are already in :func:`pack_state`'s order, nothing is decrypted.
    """
    return replace(model, names=state_names(model.names, moments=False))


def model_layout(state: crypto.Layout) -> crypto.Layout:
    """The model (``x``) entries of a state layout, under the model's own names."""
    keep = [i for i, n in enumerate(state.names) if n.partition("/")[0] == _STATE_GROUPS[0]]
    return crypto.Layout(
        tuple(state.names[i].partition("/")[2] for i in keep),
        tuple(state.shapes[i] for i in keep),
        tuple(state.dtypes[i] for i in keep),
    )


def pack_state(x: Arrays, m: Arrays | None, v: Arrays | None) -> Arrays:
    """Flatten ``(x, m, v)`` into one mapping (inverse of :func:`unpack_state`).

    ``v`` is stored as ``sqrt(v)``: CKKS's absolute error is ~1e-8, far too coarse for the
    tiny second moments, but harmless on their square roots, which is what the step uses.
    """
    x_group, m_group, v_group = _STATE_GROUPS
    out: Arrays = {f"{x_group}/{k}": a for k, a in x.items()}
    if m is not None:
        out.update({f"{m_group}/{k}": a for k, a in m.items()})
    if v is not None:
        out.update({f"{v_group}/{k}": np.sqrt(np.maximum(a, 0.0)) for k, a in v.items()})
    return out


def unpack_state(
    arrays: Mapping[str, npt.NDArray[Any]],
) -> tuple[Arrays, Arrays | None, Arrays | None]:
    """Split :func:`pack_state` output back into ``(x, m, v)``."""
    parts: dict[str, Arrays] = {g: {} for g in _STATE_GROUPS}
    for name, arr in arrays.items():
        group, _, key = name.partition("/")
        if group not in parts:
            raise ConfigError(f"unexpected entry {name!r} in a FedOpt state.")
        parts[group][key] = arr
    v = {k: np.maximum(a, 0.0) ** 2 for k, a in parts["sqrtv"].items()} or None
    return parts["x"], parts["m"] or None, v


@dataclass(frozen=True)
class OwnState:
    """The FedOpt state a key holder computed itself (docs/design.md §4.3).

    Attributes
    ----------
    round : int
        The train round in which it computed it (the round whose asked holders returned
        it encrypted).
    packed : dict
        :func:`pack_state` of the materialized ``(x, m, v)``.

    """

    round: int
    packed: Arrays


def state_tolerance(params: crypto.AnyParams, weight: float) -> float:
    """Largest honest error of one value of a returned state decrypted with ``weight``.

    A state holder encrypts the state once: CKKS adds at most
    :func:`ckks_error_bound` ``(params, 1)``, the quantized schemes (BFV ``packed``,
    Paillier) less than one step ``params.precision``; the key holder divides by the part's
    weight. Twice that is allowed.
    """
    if isinstance(params, crypto.CkksParams):
        one = ckks_error_bound(params, 1)
    else:
        one = float(params.precision)
    return 2.0 * one / weight


def _state_deviation(found: Arrays, own: Arrays) -> float:
    """Largest difference beyond float rounding between two packed states (inf: other arrays)."""
    if set(found) != set(own) or any(found[k].shape != own[k].shape for k in own):
        return math.inf
    worst = 0.0
    for name, mine in own.items():
        a = np.asarray(found[name], np.float64)
        b = np.asarray(mine, np.float64)
        if not np.all(np.isfinite(a)):
            return math.inf
        if mine.dtype.kind == "f":  # both sides rounded to the array's dtype
            slack = 2.0 * float(np.finfo(mine.dtype).eps) * np.abs(b)
        else:  # integer arrays: the decrypted value is rounded to an integer
            slack = np.ones_like(b)
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b) - slack)))
    return worst


def exact_weight(arrays: Mapping[str, npt.ArrayLike], params: crypto.AnyParams) -> float:
    """Weight to encrypt a part that is never summed (FedOpt state, an initial model) with.

    CKKS: 1. ``packed`` (BFV) and Paillier (quantized schemes): the power of two that
    scales the largest magnitude to between a half and all of ``params.max_abs``, so the
    part uses the whole quantization range (BFV: relative step ``<= 2**-28`` instead of the
    fixed step ``2**-scale_bits``; Paillier: values beyond ``bound`` fit); the key holder
    divides by the part's weight when decrypting (docs/design.md §4.7, §4.8).
    """
    if not params.quantized:
        return 1.0
    peak = max((float(np.max(np.abs(a))) for a in arrays.values() if np.size(a)), default=0.0)
    if not math.isfinite(peak) or peak <= 0.0:
        return 1.0
    exponent = math.floor(math.log2(params.max_abs / peak))
    return math.ldexp(1.0, max(-60, min(60, exponent)))


def part_weight_ok(enc: crypto.AnyEncrypted) -> bool:
    """Whether an unweighted reply part (state, check) carries an allowed weight.

    1, or for ``packed`` and Paillier a power of two from :func:`exact_weight`
    (docs/design.md §4.7).
    """
    if enc.weight == 1.0:
        return True
    if not enc.params.quantized:
        return False
    mantissa, exponent = math.frexp(enc.weight)
    return mantissa == 0.5 and -59 <= exponent <= 61


def state_digest(x: Arrays, m: Arrays | None, v: Arrays | None, decimals: int = 6) -> str:
    """SHA-256 over the rounded state, so that key holders can prove they agree."""
    h = hashlib.sha256()
    for name, arr in sorted(pack_state(x, m, v).items()):
        h.update(name.encode())
        h.update(np.round(np.asarray(arr, dtype=np.float64), decimals).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- SecureFed
def clip_update(new: Arrays, old: Arrays, clip_norm: float) -> tuple[Arrays, float]:
    """Clip the update ``new - old`` to L2 norm ``clip_norm``; return the model and the norm.

    The norm is taken over all arrays together.
    """
    delta = {k: np.asarray(new[k], np.float64) - np.asarray(old[k], np.float64) for k in new}
    norm = float(math.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (old[k] + factor * delta[k]).astype(new[k].dtype) for k in new}, norm


def add_noise(arrays: Arrays, std: float, rng: np.random.Generator) -> Arrays:
    """Add Gaussian noise of standard deviation ``std`` to every float array."""
    return {
        k: (a + rng.normal(0.0, std, a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a
        for k, a in arrays.items()
    }


def _round_tag(server_round: int) -> float:
    return 1.0 + (server_round % 256) / 256.0


def check_arrays(slot: int, cohort: int, server_round: int, weight: float) -> Arrays:
    """The aggregation-check values one client encrypts (weight 1) next to its update.

    Slot ``slot`` of ``participation`` carries a round tag in [1, 2) and slot ``slot`` of
    ``weights`` the weight the client applied; every other slot is zero. After summation a
    key holder sees who contributed, how often and from which round (:func:`verify_check`).
    """
    if not 0 <= slot < cohort:
        raise ConfigError(f"check slot {slot} is outside the cohort of {cohort}.")
    participation = np.zeros(cohort)
    participation[slot] = _round_tag(server_round)
    weights = np.zeros(cohort)
    weights[slot] = weight
    return {"participation": participation, "weights": weights}


def _check_vectors(check: Mapping[str, npt.NDArray[Any]]) -> tuple[FloatArray, FloatArray]:
    try:
        part = np.asarray(check["participation"], np.float64).ravel()
        weights = np.asarray(check["weights"], np.float64).ravel()
    except KeyError as exc:
        raise AggregationCheckError(
            f"the check part has arrays {sorted(check)}, expected participation and weights."
        ) from exc
    if part.shape != weights.shape or part.size < 1:
        raise AggregationCheckError(
            f"the check part has {part.size} participation and {weights.size} weight slots; "
            "expected the same positive number (the cohort size)."
        )
    return part, weights


def slots_mask(slots: Iterable[int]) -> str:
    """The public ``slots`` metadata of an aggregate: a hex bitmask of its cohort slots."""
    mask = 0
    for slot in slots:
        mask |= 1 << int(slot)
    return format(mask, "x")


def parse_slots_mask(value: Any, cohort: int) -> frozenset[int]:
    """Inverse of :func:`slots_mask` for a cohort of ``cohort`` slots.

    Raises
    ------
    AggregationCheckError
        For anything but a lowercase hex string naming slots below ``cohort``.

    """
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= cohort // 4 + 1
        or not re.fullmatch(r"[0-9a-f]+", value)
    ):
        raise AggregationCheckError(
            f"the aggregate's public metadata {META_SLOTS!r} is {value!r:.40}; expected a hex "
            f"bitmask of the slots of a cohort of {cohort}."
        )
    mask = int(value, 16)
    if mask >> cohort:
        raise AggregationCheckError(
            f"the aggregate's {META_SLOTS!r} {value:.40} names slots beyond the cohort of {cohort}."
        )
    return frozenset(s for s in range(cohort) if mask >> s & 1)


def verify_check(
    check: Mapping[str, npt.NDArray[Any]],
    model: crypto.EncryptedArrays,
    server_round: int,
    slots: frozenset[int] | None = None,
) -> None:
    """Verify a decrypted aggregation check against the aggregate it came with.

    ``slots``: the cohort slots the server summed (metadata ``slots``). With it, the check
    part must hold a contribution in exactly these slots and nothing (participation or
    weight) in any other: a client's contribution then shows only in the sums that hold
    it, so a client claiming another's slot fails its own group, never another's
    (docs/design.md §4.4.3).

    Raises
    ------
    AggregationCheckError
        When a slot holds two contributions (duplicate), a tag from another round (replay),
        slots other than ``slots`` carry a contribution, or the number of contributions /
        their weights differ from what the aggregate claims.

    """
    tag = _round_tag(server_round)
    part, weights = _check_vectors(check)
    tol = 1e-3
    present = part > 0.5
    if np.any(part > tag + 0.5):
        twice = np.flatnonzero(part > tag + 0.5).tolist()
        raise AggregationCheckError(
            f"slots {twice[:10]} were counted more than once (a duplicated update)."
        )
    if slots is not None:
        in_set = np.zeros(part.size, dtype=bool)
        in_set[sorted(s for s in slots if s < part.size)] = True
        zero_tol = 1e-9 + ckks_error_bound(model.params, model.count)  # an encrypted zero
        foreign = np.flatnonzero(~in_set & ((np.abs(part) > 0.5) | (np.abs(weights) > zero_tol)))
        absent = np.flatnonzero(in_set & ~(part > 0.5))
        if foreign.size or absent.size or len(slots) != int(in_set.sum()):
            raise AggregationCheckError(
                f"slots {foreign.tolist()[:10]} carry a contribution and slots "
                f"{absent.tolist()[:10]} none, but the aggregate sums the updates of slots "
                f"{sorted(slots)[:10]}{'...' if len(slots) > 10 else ''} (a client that "
                "claimed another client's slot, or a dropped update)."
            )
    wrong = present & (np.abs(part - tag) > tol)
    if wrong.any():
        raise AggregationCheckError(
            f"slots {np.flatnonzero(wrong).tolist()[:10]} carry a tag of another round than "
            f"{server_round} (a replayed update)."
        )
    if int(present.sum()) != model.count:
        raise AggregationCheckError(
            f"{int(present.sum())} clients contributed but the aggregate claims {model.count} "
            "updates (a dropped or injected update)."
        )
    total = float(weights.sum())
    if not math.isclose(total, model.weight, rel_tol=1e-4, abs_tol=1e-6):
        raise AggregationCheckError(
            f"the contributions carry total weight {total:.8g} but the aggregate claims "
            f"{model.weight:.8g}."
        )


# --------------------------------------------------------------------------- SecureFed integrity
#: Slots reserved at the end of every SecureFed model ciphertext for integrity values
#: (docs/design.md §4.4): 4 of 2 048 slots, 0.2 %.
INTEGRITY_SLOTS: Final = 4
#: Tail bound used for the DP-noise allowance of the norm check: a Gaussian vector's norm
#: exceeds ``std * (sqrt(d) + t)`` with probability below ``exp(-t**2 / 2)`` (about 2e-22).
NOISE_TAIL: Final = 10.0


def integrity_scale(params: crypto.CkksParams, cohort: int) -> float:
    """Magnitude of one client's integrity values: ``max_abs / (4 * cohort)``.

    The sum of a whole cohort's values (tags < 2) then stays below ``max_abs / 2``, and a
    wrong value differs from the expected one by about a third of this scale, far above
    the CKKS error (:func:`ckks_error_bound`).
    """
    if cohort < 1:
        raise ConfigError(f"the cohort size must be >= 1, got {cohort}.")
    return params.max_abs / (4.0 * cohort)


def integrity_tags(
    session: str, server_round: int, slot: int, num_chunks: int, reserved: int = INTEGRITY_SLOTS
) -> FloatArray:
    """Pseudo-random tags in [1, 2) for every reserved slot of every chunk of one client.

    Derived with SHAKE-256 from ``(session, round, cohort slot)``; row ``j`` belongs to chunk
    ``j``. Public (anyone can compute them): they bind a ciphertext to its run, round, client
    slot and position, not to a secret.
    """
    seed = f"cifer-securefed-integrity/v1|{session}|{server_round}|{slot}".encode()
    raw = hashlib.shake_256(seed).digest(8 * num_chunks * reserved)
    words = np.frombuffer(raw, dtype="<u8") >> np.uint64(11)
    return 1.0 + (words.astype(np.float64) / float(1 << 53)).reshape(num_chunks, reserved)


def integrity_fill(
    session: str,
    server_round: int,
    slot: int,
    cohort: int,
    num_chunks: int,
    params: crypto.CkksParams,
) -> FloatArray:
    """The reserved-slot values one client encrypts (``crypto.encrypt(..., fill=...)``)."""
    return integrity_scale(params, cohort) * integrity_tags(session, server_round, slot, num_chunks)


def ckks_error_bound(params: crypto.CkksParams, count: int) -> float:
    """Bound on the absolute CKKS error of one slot of a sum of ``count`` fresh encryptions.

    Measured on this machine: the largest error of a fresh (public-key) encryption over
    8 192 slots is about ``3 500 / 2**scale_bits`` at N=4096 and ``8 900 / 2**scale_bits``
    at N=8192. We allow ``2**14 * N / 4096 / 2**scale_bits`` per encryption (about 2x the
    worst seen, roughly 16 standard deviations) and add the errors of a sum linearly.

    ``packed`` (BFV) sums are exact; each summand's stochastic rounding is off by less
    than one step, so the bound is ``count * 2**-scale_bits`` (docs/design.md §4.7).
    """
    if params.is_bfv:
        return max(1, count) * params.precision
    per = 2.0**14 * params.poly_modulus_degree / 4096.0 * params.precision
    return max(1, count) * per


@dataclass(frozen=True)
class BaseModel:
    """The last global model a key holder accepted (for the norm check of the next one).

    Attributes
    ----------
    round : int
        Round of the contributions it sums (0 for the initial model).
    arrays : dict
        Its plaintext arrays.
    error_bound : float
        Bound on the CKKS error of each value.

    """

    round: int
    arrays: Arrays
    error_bound: float


@dataclass(frozen=True)
class Opened:
    """What a key holder gets from :func:`open_global`.

    Attributes
    ----------
    arrays : dict
        The plaintext model (weighted mean; for FedOpt the materialized ``x``).
    opt_state : tuple or None
        FedOpt ``(x, m, v)``.
    round : int or None
        SecureFed: round of the contributions of the accepted aggregate; None otherwise.
    error_bound : float
        Bound on the CKKS error of each value of ``arrays``.
    groups_tested : bool
        Whether candidate groups were verified (SecureFed recovery, docs/design.md §4.4).
    state_check : str or None
        FedOpt: ``"pass"`` or ``"fail"`` when the received state was compared with the
        key holder's own (:class:`OwnState`); on ``"fail"`` the own state was used
        (docs/design.md §4.3). ``None`` when there was nothing to compare.
    failed_groups : tuple of int
        Indices of the candidate groups that failed their check.
    notes : tuple of str
        Why a group failed, or why the norm check was skipped.

    """

    arrays: Arrays
    opt_state: tuple[Arrays, Arrays | None, Arrays | None] | None = None
    round: int | None = None
    error_bound: float = 0.0
    groups_tested: bool = False
    failed_groups: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    state_check: str | None = None


def group_part(part: str, index: int) -> str:
    """Name of candidate group ``index``'s ``part`` (``model_g0``, ``check_g0``...)."""
    return f"{part}{PART_GROUP_SUFFIX}{index}"


def group_indices(parts: Mapping[str, Any]) -> list[int]:
    """Indices of the candidate groups present (both model and check parts)."""
    pattern = re.compile(rf"{PART_MODEL}{PART_GROUP_SUFFIX}(\d{{1,4}})")
    out = []
    for name in parts:
        m = pattern.fullmatch(name)
        if m and group_part(PART_CHECK, int(m.group(1))) in parts:
            out.append(int(m.group(1)))
    return sorted(out)


def _check_state_matches(x: Arrays, m: Arrays | None, v: Arrays | None, aggregate: Arrays) -> None:
    """The FedOpt state and the pending aggregate must describe the same arrays."""
    want = {k: a.shape for k, a in x.items()}
    for what, arrays in (("m", m), ("v", v), ("pending aggregate", aggregate)):
        if arrays is not None and {k: a.shape for k, a in arrays.items()} != want:
            raise ConfigError(
                f"the FedOpt {what} has arrays {sorted(arrays)} that do not match the state's "
                f"x {sorted(want)} (names and shapes); the server sent an inconsistent model."
            )


def _meta_int(enc: crypto.AnyEncrypted, name: str) -> int:
    value = enc.meta.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AggregationCheckError(
            f"the aggregate's public metadata {name!r} is {value!r:.40}; expected a round "
            "number >= 0."
        )
    return value


def _meta_float(enc: crypto.AnyEncrypted, name: str) -> float:
    value = enc.meta.get(name)
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise AggregationCheckError(
            f"the aggregate's public metadata {name!r} is {value!r:.40}; expected a number >= 0."
        )
    return float(value)


@dataclass(frozen=True)
class _Checked:
    chunks: list[FloatArray]
    weight: float
    count: int
    weights: FloatArray


def _verify_integrity(
    model: crypto.EncryptedArrays,
    check: crypto.EncryptedArrays,
    key: crypto.Key,
    max_round: int | None,
) -> _Checked:
    """Check part + per-chunk integrity values of one aggregate (docs/design.md §4.4)."""
    rnd = _meta_int(model, META_ROUND)
    if max_round is not None and rnd > max_round:
        raise AggregationCheckError(
            f"the aggregate claims round {rnd}, later than the current round {max_round}."
        )
    session = model.meta.get(META_SESSION)
    if not isinstance(session, str) or not session:
        raise AggregationCheckError("the aggregate names no session; it cannot be verified.")
    if model.layout.reserved != INTEGRITY_SLOTS:
        raise AggregationCheckError(
            f"the model reserves {model.layout.reserved} integrity slots per ciphertext, "
            f"expected {INTEGRITY_SLOTS}; it cannot be verified."
        )
    part, weights = _check_vectors(crypto.decrypt(check, key))
    mask = model.meta.get(META_SLOTS)
    summed = None if mask is None else parse_slots_mask(mask, part.size)
    verify_check({"participation": part, "weights": weights}, model, rnd, summed)
    present = np.flatnonzero(part > 0.5)
    chunks = crypto.decrypt_chunks(model, key)
    found = reserved_values(model.layout, chunks)
    expected = np.zeros_like(found)
    for slot in present:
        expected += integrity_tags(session, rnd, int(slot), len(chunks), model.layout.reserved)
    expected *= integrity_scale(model.params, part.size)
    tol = ckks_error_bound(model.params, model.count) + 1e-12 * float(np.abs(expected).max())
    deviation = np.abs(found - expected).max(axis=1)
    bad = np.flatnonzero(~(deviation <= tol))
    if bad.size:
        raise AggregationCheckError(
            f"{bad.size} of {len(chunks)} model ciphertexts (chunks {bad[:8].tolist()}) carry "
            f"wrong integrity values (largest deviation {float(deviation[bad].max()):.3g}, "
            f"tolerance {tol:.3g}): a ciphertext under another key, or one taken from another "
            "round, client or position."
        )
    return _Checked(chunks, model.weight, model.count, weights[present])


def update_norm_allowance(
    layout: crypto.Layout,
    *,
    clip_norm: float,
    noise_std: float,
    weights: npt.ArrayLike,
    error_bound: float,
    norms: float,
) -> float:
    """Largest L2 norm an honest aggregate's update (mean minus base) may have.

    ``clip_norm`` (a weighted mean of updates clipped to ``C`` has norm <= ``C``) plus:

    * DP noise: each client adds ``N(0, noise_std**2)`` to each of the ``d`` float values;
      the weighted mean carries ``noise_std * sqrt(sum (w_i/W)**2)`` per value, whose norm
      stays below that times ``sqrt(d) + NOISE_TAIL`` except with probability ~2e-22;
    * CKKS: ``error_bound`` (of mean and base together) per value, times ``sqrt(d)``;
    * rounding to the arrays' dtypes: ``eps`` of the widest-eps float dtype times ``norms``
      (the norms of mean and base), and 1.5 per integer value (clipped integers truncate).

    """
    w = np.asarray(weights, np.float64)
    share = float(np.sqrt(np.sum((w / w.sum()) ** 2))) if w.size and w.sum() > 0 else 1.0
    floats = sum(
        s for s, dt in zip(layout.sizes, layout.dtypes, strict=True) if np.dtype(dt).kind == "f"
    )
    ints = layout.total - floats
    eps = max(
        (float(np.finfo(np.dtype(dt)).eps) for dt in layout.dtypes if np.dtype(dt).kind == "f"),
        default=0.0,
    )
    return (
        clip_norm
        + noise_std * share * (math.sqrt(floats) + NOISE_TAIL)
        + error_bound * math.sqrt(layout.total)
        + eps * norms
        + 1.5 * math.sqrt(ints)
    )


def _verify_norm(
    model: crypto.EncryptedArrays,
    mean: Arrays,
    checked_weights: FloatArray,
    error_bound: float,
    previous: BaseModel | None,
) -> str | None:
    """The norm bound implied by client clipping; returns a note when it cannot be checked."""
    clip = _meta_float(model, META_CLIP_NORM)
    if clip <= 0:
        return None
    base_round = _meta_int(model, META_BASE_ROUND)
    if previous is None or previous.round != base_round:
        held = "none" if previous is None else f"round {previous.round}"
        return (
            f"norm check skipped: the aggregate trained from the global of round {base_round}, "
            f"this key holder holds {held}."
        )
    base = previous.arrays
    if set(base) != set(mean):
        raise AggregationCheckError(
            f"the aggregate holds arrays {sorted(mean)[:5]}, the global it claims to update "
            f"holds {sorted(base)[:5]}."
        )
    diff = math.sqrt(
        sum(
            float(np.sum((np.asarray(mean[k], np.float64) - np.asarray(base[k], np.float64)) ** 2))
            for k in mean
        )
    )
    norms = math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in mean.values()))
    norms += math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in base.values()))
    allowed = update_norm_allowance(
        model.layout,
        clip_norm=clip,
        noise_std=_meta_float(model, META_NOISE_STD),
        weights=checked_weights,
        error_bound=error_bound + previous.error_bound,
        norms=norms,
    )
    if not diff <= allowed:
        raise AggregationCheckError(
            f"the aggregate moves the model by L2 norm {diff:.6g}, more than the {allowed:.6g} "
            f"that clipping to {clip:g} allows (plus noise and CKKS allowances): a client "
            "skipped clipping."
        )
    return None


def _open_one(
    model: crypto.EncryptedArrays,
    check: crypto.EncryptedArrays,
    key: crypto.Key,
    previous: BaseModel | None,
    max_round: int | None,
) -> tuple[_Checked, Arrays, str | None]:
    checked = _verify_integrity(model, check, key, max_round)
    mean = decode(model.layout, [c / checked.weight for c in checked.chunks])
    bound = ckks_error_bound(model.params, checked.count) / checked.weight
    note = _verify_norm(model, mean, checked.weights, bound, previous)
    return checked, mean, note


def _open_securefed(
    parts: Mapping[str, crypto.EncryptedArrays],
    key: crypto.Key,
    previous: BaseModel | None,
    max_round: int | None,
) -> Opened:
    notes: list[str] = []
    model, check = parts.get(PART_MODEL), parts.get(PART_CHECK)
    groups = group_indices(parts)
    if model is not None and check is not None:
        try:
            checked, mean, note = _open_one(model, check, key, previous, max_round)
        except AggregationCheckError as exc:
            if not groups:
                raise
            notes.append(f"the full aggregate failed ({exc}); falling back to its groups")
        else:
            return Opened(
                mean,
                round=_meta_int(model, META_ROUND),
                error_bound=ckks_error_bound(model.params, checked.count) / checked.weight,
                notes=tuple(n for n in [note] if n),
            )
    if not groups:
        raise AggregationCheckError(
            f"the global model has parts {sorted(parts)[:8]}: neither a model with its check "
            "part nor candidate groups."
        )
    good: list[tuple[crypto.EncryptedArrays, _Checked]] = []
    failed: list[int] = []
    rounds = set()
    for g in groups:
        g_model, g_check = parts[group_part(PART_MODEL, g)], parts[group_part(PART_CHECK, g)]
        try:
            checked, _, note = _open_one(g_model, g_check, key, previous, max_round)
        except AggregationCheckError as exc:
            failed.append(g)
            notes.append(f"group {g}: {exc}")
            continue
        if note:
            notes.append(f"group {g}: {note}")
        good.append((g_model, checked))
        rounds.add(_meta_int(g_model, META_ROUND))
    if not good:
        raise AggregationCheckError(f"every candidate group failed ({'; '.join(notes)[:600]}).")
    if len(rounds) != 1 or any(m.layout != good[0][0].layout for m, _ in good):
        raise AggregationCheckError(
            f"the candidate groups mix rounds {sorted(rounds)} or layouts; expected one round."
        )
    weight = sum(c.weight for _, c in good)
    count = sum(c.count for _, c in good)
    total = [np.sum([c.chunks[j] for _, c in good], axis=0) for j in range(len(good[0][1].chunks))]
    first = good[0][0]
    return Opened(
        decode(first.layout, [t / weight for t in total]),
        round=rounds.pop(),
        error_bound=ckks_error_bound(first.params, count) / weight,
        groups_tested=True,
        failed_groups=tuple(failed),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- key holder
def open_global(
    parts: Mapping[str, crypto.AnyEncrypted],
    key: crypto.AnyKey,
    *,
    previous: BaseModel | None = None,
    max_round: int | None = None,
    own_state: OwnState | None = None,
) -> Opened:
    """Decrypt, verify and materialize an encrypted global model (key holders only).

    * ``model`` alone: the weighted mean ``sum / weight`` (FedAvg, FedProx; SecureFed's
      initial model).
    * ``state`` (+ ``model`` pending): FedOpt; the pending aggregate is folded into the
      state with :func:`fedopt_step` (the deferred key-holder step, docs/design.md §4.3).
    * SecureFed (``check`` part or candidate groups ``model_gN``/``check_gN``): the check
      part, every ciphertext's integrity values and, when ``previous`` is the global the
      contributions trained from, the norm bound of the clipping are verified; candidate
      groups are verified one by one and the mean over the groups that pass is returned
      (docs/design.md §4.4).

    Parameters
    ----------
    parts : mapping
        The encrypted parts.
    key : Key
        A private key.
    previous : BaseModel, optional
        The last global this key holder accepted (for the norm check).
    max_round : int, optional
        Latest round an aggregate may claim.
    own_state : OwnState, optional
        FedOpt: the state this key holder computed itself. When the received state's
        ``state_round`` is its round, the decrypted state must equal it within
        :func:`state_tolerance`; otherwise the own state is used and ``state_check`` is
        ``"fail"`` (an asked holder returned another state, docs/design.md §4.3).

    Raises
    ------
    AggregationCheckError
        When a SecureFed aggregate (and every candidate group) fails its checks.

    """
    model = parts.get(PART_MODEL)
    if PART_CHECK in parts or group_indices(parts):
        if not crypto.has_reserved_slots(key):  # Paillier has no integrity slots (§4.8)
            raise AggregationCheckError(
                "a SecureFed aggregate arrived for a Paillier key; SecureFed needs a CKKS or "
                "packed key (docs/design.md §4.4)."
            )
        return _open_securefed(
            cast(Mapping[str, crypto.EncryptedArrays], parts), key, previous, max_round
        )
    if PART_STATE not in parts:
        if model is None:
            raise ConfigError(f"encrypted model has parts {sorted(parts)}; expected 'model'.")
        if model.layout.reserved and isinstance(model, crypto.EncryptedArrays):
            rnd = _meta_int(model, META_ROUND)
            if rnd != 0:
                raise AggregationCheckError(
                    f"a SecureFed aggregate of round {rnd} arrived without its check part."
                )
            arrays = crypto.decrypt(model, key, divisor=model.weight)
            bound = ckks_error_bound(model.params, model.count) / model.weight
            return Opened(arrays, round=0, error_bound=bound)
        return Opened(crypto.decrypt(model, key, divisor=model.weight))
    state_enc = parts[PART_STATE]
    packed = crypto.decrypt(state_enc, key, divisor=state_enc.weight)
    verdict: str | None = None
    notes: tuple[str, ...] = ()
    if own_state is not None and state_enc.meta.get(META_STATE_ROUND) == own_state.round:
        deviation = _state_deviation(packed, own_state.packed)
        tol = state_tolerance(key.params, state_enc.weight)
        verdict = "pass" if deviation <= tol else "fail"
        if verdict == "fail":
            notes = (
                f"the FedOpt state of round {own_state.round} the server sent differs from the "
                f"state this key holder computed in that round by {deviation:.3g} (tolerance "
                f"{tol:.3g}); its own state is used and the server is told (state-check fail)",
            )
            packed = dict(own_state.packed)
    x, m, v = unpack_state(packed)
    if model is not None:
        spec = OptimizerSpec.from_dict(state_enc.meta.get("fedopt"))
        agg = crypto.decrypt(model, key, divisor=model.weight)
        _check_state_matches(x, m, v, agg)
        x64 = {k: a.astype(np.float64) for k, a in x.items()}
        x_new, m, v = fedopt_step(spec, x64, m, v, agg, _meta_int(model, META_ROUND))
        x = {k: x_new[k].astype(x[k].dtype) for k in x}
    return Opened(x, (x, m, v), notes=notes, state_check=verdict)


def materialize(
    parts: Mapping[str, crypto.AnyEncrypted],
    key: crypto.AnyKey,
    *,
    check_round: int | None = None,
) -> tuple[Arrays, tuple[Arrays, Arrays | None, Arrays | None] | None]:
    """Decrypt an encrypted global model into plaintext arrays (key holders only).

    :func:`open_global` without a previous model (so SecureFed's norm check is skipped, its
    integrity checks are not); ``check_round`` is the latest round an aggregate may claim.

    Returns
    -------
    tuple
        The model arrays and, for FedOpt, the materialized ``(x, m, v)``.

    Raises
    ------
    AggregationCheckError
        When a SecureFed aggregate fails its checks.

    """
    opened = open_global(parts, key, max_round=check_round)
    return opened.arrays, opened.opt_state


def decrypt_global_model(
    model: str | os.PathLike[str] | bytes,
    private_key: str | os.PathLike[str] | crypto.AnyKey,
) -> Arrays:
    """Decrypt an encrypted global model an encrypted strategy saved (key holders only).

    The file (or its bytes) is what a strategy writes to ``save_path``: the encrypted model,
    or for FedOpt / FedAvgM the encrypted state and the pending aggregate, whose deferred
    server step (docs/design.md §4.3.1) is applied here, so the result equals the model
    Flower's plaintext strategy returns. SecureFed aggregates are checked as the key
    holders check them (§4.4).

    Parameters
    ----------
    model : str, path or bytes
        Path of the saved model (e.g. ``final_model.enc``), or its content.
    private_key : str, path or Key
        The federation's ``private.key`` file, or the loaded private
        :class:`~cifer_flwr.crypto.Key`.

    Returns
    -------
    dict of str to numpy.ndarray
        The plaintext model arrays by name.

    Raises
    ------
    KeyTypeError
        For a public key.
    KeyMismatchError
        For a model encrypted under another key pair.
    CiphertextFormatError
        For a malformed or truncated file.
    AggregationCheckError
        When a SecureFed aggregate fails its checks.

    """
    key = (
        private_key
        if isinstance(private_key, crypto.AnyKey)
        else crypto.load_private_key(private_key)
    )
    key.require_private("decrypt a global model")
    data = bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
    arrays, _ = materialize(crypto.bundle_from_bytes(data, key), key)
    return arrays


def open_reply(
    record: ArrayRecord,
    private_key: str | os.PathLike[str] | crypto.AnyKey,
) -> Arrays:
    """Decrypt one client's train reply as any key holder could: its model update.

    The way to check the masking guarantee (docs/design.md §4.9) from the attacker's side:
    without masking the result is the client's (weighted, then unweighted here) update; with
    masking it is uniform noise over the ``packed`` range, and only the sum of the survivors
    with the residual mask removed carries information.

    Parameters
    ----------
    record : ArrayRecord
        The encrypted ``ArrayRecord`` of a train reply (``ckks_mod``'s output).
    private_key : str, path or Key
        A key holder's ``private.key`` (file or loaded key).

    Returns
    -------
    dict of str to numpy.ndarray
        The model part decrypted and divided by the reply's own weight ``n_i / B``.

    Raises
    ------
    KeyTypeError, KeyMismatchError, CiphertextFormatError
        For a public key, another key pair, or a malformed record.

    """
    key = (
        private_key
        if isinstance(private_key, crypto.AnyKey)
        else crypto.load_private_key(private_key)
    )
    key.require_private("open a reply")
    model = crypto.bundle_from_record(record, key)[PART_MODEL]
    return crypto.decrypt(model, key, divisor=model.weight)
