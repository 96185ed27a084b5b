"""The encrypted-FL protocol shared by the strategies (server) and ``ckks_mod`` (key holders).

Pure functions on numpy arrays and :mod:`cifer_flwr.crypto` objects; no TenSEAL import.
See DESIGN.md §4.2-4.4.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cifer_flwr import crypto
from cifer_flwr.constants import PART_CHECK, PART_MODEL, PART_STATE
from cifer_flwr.exceptions import CiferError, ConfigError

__all__ = [
    "AggregationCheckError",
    "OptimizerSpec",
    "add_noise",
    "check_arrays",
    "clip_update",
    "fedopt_step",
    "materialize",
    "pack_state",
    "state_digest",
    "unpack_state",
    "verify_check",
    "weight_divisor",
]

Arrays = dict[str, npt.NDArray[Any]]


class AggregationCheckError(CiferError):
    """The key holders detected a dropped, duplicated or replayed update in an aggregate."""


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
OptKind = Literal["yogi", "adam", "adagrad"]


@dataclass(frozen=True)
class OptimizerSpec:
    """Hyper-parameters of a FedOpt server step (public; travels in ciphertext metadata)."""

    kind: OptKind
    eta: float
    beta_1: float
    beta_2: float
    tau: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerSpec:
        """Rebuild from :meth:`to_dict` output."""
        kind = str(data["kind"])
        if kind not in ("yogi", "adam", "adagrad"):
            raise ConfigError(f"unknown FedOpt kind {kind!r}; expected yogi, adam or adagrad.")
        return cls(
            kind,  # type: ignore[arg-type]
            float(data["eta"]),
            float(data["beta_1"]),
            float(data["beta_2"]),
            float(data["tau"]),
        )


def fedopt_step(
    spec: OptimizerSpec,
    x: Arrays,
    m: Arrays | None,
    v: Arrays | None,
    aggregate: Arrays,
    server_round: int,
) -> tuple[Arrays, Arrays, Arrays]:
    """Apply Flower's FedYogi / FedAdam / FedAdagrad server update, exactly as Flower does.

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


def pack_state(x: Arrays, m: Arrays | None, v: Arrays | None) -> Arrays:
    """Flatten ``(x, m, v)`` into one mapping (inverse of :func:`unpack_state`).

    ``v`` is stored as ``sqrt(v)``: CKKS's absolute error is ~1e-8, far too coarse for the
    tiny second moments, but harmless on their square roots, which is what the step uses.
    """
    out: Arrays = {f"x/{k}": a for k, a in x.items()}
    if m is not None:
        out.update({f"m/{k}": a for k, a in m.items()})
    if v is not None:
        out.update({f"sqrtv/{k}": np.sqrt(np.maximum(a, 0.0)) for k, a in v.items()})
    return out


def unpack_state(
    arrays: Mapping[str, npt.NDArray[Any]],
) -> tuple[Arrays, Arrays | None, Arrays | None]:
    """Split :func:`pack_state` output back into ``(x, m, v)``."""
    parts: dict[str, Arrays] = {"x": {}, "m": {}, "sqrtv": {}}
    for name, arr in arrays.items():
        group, _, key = name.partition("/")
        if group not in parts:
            raise ConfigError(f"unexpected entry {name!r} in a FedOpt state.")
        parts[group][key] = arr
    v = {k: np.maximum(a, 0.0) ** 2 for k, a in parts["sqrtv"].items()} or None
    return parts["x"], parts["m"] or None, v


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


def verify_check(
    check: Mapping[str, npt.NDArray[Any]], model: crypto.EncryptedArrays, server_round: int
) -> None:
    """Verify a decrypted aggregation check against the aggregate it came with.

    Raises
    ------
    AggregationCheckError
        When a slot holds two contributions (duplicate), a tag from another round (replay),
        or the number of contributions / their weights differ from what the aggregate claims.

    """
    tag = _round_tag(server_round)
    part = np.asarray(check["participation"], np.float64)
    tol = 1e-3
    present = part > 0.5
    if np.any(part > tag + 0.5):
        slots = np.flatnonzero(part > tag + 0.5).tolist()
        raise AggregationCheckError(
            f"aggregation check failed: slots {slots} were counted more than once "
            "(a duplicated update)."
        )
    wrong = present & (np.abs(part - tag) > tol)
    if wrong.any():
        raise AggregationCheckError(
            f"aggregation check failed: slots {np.flatnonzero(wrong).tolist()} carry a tag of "
            f"another round than {server_round} (a replayed update)."
        )
    if int(present.sum()) != model.count:
        raise AggregationCheckError(
            f"aggregation check failed: {int(present.sum())} clients contributed but the "
            f"aggregate claims {model.count} updates (a dropped or injected update)."
        )
    total = float(np.asarray(check["weights"], np.float64).sum())
    if not math.isclose(total, model.weight, rel_tol=1e-4, abs_tol=1e-6):
        raise AggregationCheckError(
            f"aggregation check failed: the contributions carry total weight {total:.8g} "
            f"but the aggregate claims {model.weight:.8g}."
        )


# --------------------------------------------------------------------------- key holder
def materialize(
    parts: Mapping[str, crypto.EncryptedArrays],
    key: crypto.Key,
    *,
    check_round: int | None = None,
) -> tuple[Arrays, tuple[Arrays, Arrays | None, Arrays | None] | None]:
    """Decrypt an encrypted global model into plaintext arrays (key holders only).

    * ``model`` alone: the weighted mean ``sum / weight`` (FedAvg, FedProx, SecureFed).
    * ``state`` (+ ``model`` pending): FedOpt; the pending aggregate is folded into the
      state with :func:`fedopt_step` (the deferred key-holder step, DESIGN.md §4.3).
    * ``check``: verified against ``model`` with :func:`verify_check` for ``check_round``.

    Returns
    -------
    tuple
        The model arrays and, for FedOpt, the materialized ``(x, m, v)``.

    """
    model = parts.get(PART_MODEL)
    if PART_CHECK in parts and model is not None and check_round is not None:
        verify_check(crypto.decrypt(parts[PART_CHECK], key), model, check_round)
    if PART_STATE not in parts:
        if model is None:
            raise ConfigError(f"encrypted model has parts {sorted(parts)}; expected 'model'.")
        return crypto.decrypt(model, key, divisor=model.weight), None
    state_enc = parts[PART_STATE]
    x, m, v = unpack_state(crypto.decrypt(state_enc, key, divisor=state_enc.weight))
    if model is not None:
        spec = OptimizerSpec.from_dict(state_enc.meta["fedopt"])
        agg = crypto.decrypt(model, key, divisor=model.weight)
        x64 = {k: a.astype(np.float64) for k, a in x.items()}
        x_new, m, v = fedopt_step(spec, x64, m, v, agg, int(model.meta["round"]))
        x = {k: x_new[k].astype(x[k].dtype) for k in x}
    return x, (x, m, v)
