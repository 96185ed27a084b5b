"""Federated feature statistics under encryption (docs/design.md §4.10).

Every client sums, over its own training rows, the row count and per feature the values
and their squares; the sums travel as ciphertexts, the server only adds them, and the key
holders (the clients) decrypt the total and standardise with the *global* mean and
standard deviation. The result is the same scaling one party holding the union of the rows
would compute (``numpy.mean`` / ``numpy.std`` over all rows).

Raw sums of squares do not fit the value range of an additive scheme (``default``: +-1024,
``packed``: +-256 shared by the summands, Paillier: +-4). So every sum is written as a
fixed-point integer (:data:`FRACTION_BITS` fractional bits) in signed base-64 digits
(*limbs* in ``-32 .. 31``), each limb divided by a public power of two ``D`` no smaller than
the number of clients: any number of clients up to ``D`` sums to limb totals within
``+-32``, every preset holds them, and the key holders recover the integer limb totals by
rounding ``D * value`` (exact for ``packed`` and for CKKS noise far below ``1 / (2 D)``).
The recombination ``sum_j total_j * 64**j`` is exact integer arithmetic, so are the mean
and variance (``n * Q - S**2``).

This module is the pure part (numpy and :mod:`cifer_flwr.crypto`); the message exchange on
a Flower ``Grid`` and in a ClientApp lives in :mod:`cifer_flwr.scaling`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cifer_flwr import crypto
from cifer_flwr.exceptions import CiferError, CiphertextFormatError, LayoutMismatchError

__all__ = [
    "FRACTION_BITS",
    "LIMBS",
    "LIMB_BASE",
    "SCALING_SOURCE",
    "FeatureStats",
    "StatisticsError",
    "check_divisor",
    "check_encrypted_sums",
    "check_plain_sums",
    "decode_sums",
    "decrypt_model_and_scaling",
    "decrypt_scaled_model",
    "decrypt_scaling",
    "divisor_for",
    "encode_sums",
    "encrypt_sums",
    "fold_first_layer",
    "local_sums",
    "open_sums",
    "plain_scaling_path",
    "read_plain_scaling",
    "saved_scaling",
    "scaling_path",
    "stats_from_sums",
    "sums_layout",
    "write_plain_scaling",
    "write_scaling",
]

FloatArray = npt.NDArray[np.float64]

#: Fractional bits of the fixed-point sums (a step of 2**-40 on every sum).
FRACTION_BITS: Final = 40
#: Base of the signed digits (limbs take values ``-32 .. 31``).
LIMB_BASE: Final = 64
#: Limbs per value: ``|sum| < 2**(6 * 16 - 2 - 40) = 2**54`` per client.
LIMBS: Final = 16
#: Array names of the encoded sums: row count, per-feature sums, per-feature sums of squares.
NAMES: Final = ("count", "sum", "sumsq")
#: ``meta["source"]`` of the encrypted sums a ServerApp saves beside the model.
SCALING_SOURCE: Final = "cifer.feature-statistics"
#: Largest divisor ``D`` (2**20 clients); ``packed`` steps of 2**-21 keep ``limb / D`` exact.
MAX_DIVISOR: Final = 1 << 20
#: Smallest divisor: Paillier presets hold values up to +-4, so ``32 / D`` must stay below.
MIN_DIVISOR: Final = 16
_HALF: Final = LIMB_BASE // 2
_MAX_FIXED: Final = float(2 ** (6 * LIMBS - 2))


class StatisticsError(CiferError):
    """Feature statistics that cannot be computed, encoded or trusted (the message says why)."""


@dataclass(frozen=True)
class FeatureStats:
    """Global per-feature statistics of the federation's training rows.

    Attributes
    ----------
    count : int
        Number of rows summed (all clients).
    mean : ndarray of float64, shape (features,)
        Per-feature mean.
    std : ndarray of float64, shape (features,)
        Per-feature population standard deviation (``numpy.std``), 1.0 where a feature is
        constant (as the loaders' own standardisation).

    """

    count: int
    mean: FloatArray
    std: FloatArray

    @property
    def num_features(self) -> int:
        """Number of features."""
        return int(self.mean.shape[0])

    def standardize(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """``(x - mean) / std`` per feature, float32, in ``x``'s shape (rows first).

        Raises
        ------
        StatisticsError
            When ``x`` has another number of features.

        """
        rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if rows.shape[1] != self.num_features:
            raise StatisticsError(
                f"rows have {rows.shape[1]} features, the federation's statistics "
                f"{self.num_features}; every client needs the same columns."
            )
        return ((rows - self.mean) / self.std).astype(np.float32).reshape(np.shape(x))

    def to_arrays(self) -> dict[str, FloatArray]:
        """Arrays ``mean``, ``std``, ``count`` (inverse: :meth:`from_arrays`)."""
        return {
            "mean": self.mean.copy(),
            "std": self.std.copy(),
            "count": np.array([self.count], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> FeatureStats:
        """Rebuild from :meth:`to_arrays` output (checked: shapes, finite, std > 0).

        Raises
        ------
        StatisticsError
            For missing or malformed arrays.

        """
        try:
            mean = np.asarray(arrays["mean"], dtype=np.float64).reshape(-1)
            std = np.asarray(arrays["std"], dtype=np.float64).reshape(-1)
            count = np.asarray(arrays["count"], dtype=np.float64).reshape(-1)
        except (KeyError, ValueError, TypeError) as exc:
            raise StatisticsError(f"malformed feature statistics ({exc}).") from None
        if (
            mean.shape != std.shape
            or count.shape != (1,)
            or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)))
            or np.any(std <= 0)
            or not count[0] >= 1
        ):
            raise StatisticsError(
                "malformed feature statistics: mean and std must be finite arrays of one "
                "shape with std > 0, count >= 1."
            )
        return cls(int(count[0]), mean, std)


def local_sums(x: npt.NDArray[Any]) -> tuple[int, FloatArray, FloatArray]:
    """Row count, per-feature sums and sums of squares of one client's rows.

    Raises
    ------
    StatisticsError
        For no rows or non-finite values.

    """
    rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if rows.shape[0] < 1 or not np.all(np.isfinite(rows)):
        raise StatisticsError(
            f"feature statistics need at least one row of finite values; got {rows.shape[0]} "
            "rows (or NaN / infinite values)."
        )
    return rows.shape[0], rows.sum(axis=0), np.square(rows).sum(axis=0)


def divisor_for(num_clients: int) -> int:
    """The public divisor ``D``: the power of two at least ``num_clients`` (and 16).

    Raises
    ------
    StatisticsError
        For fewer than one or more than 2**20 clients.

    """
    if not 1 <= num_clients <= MAX_DIVISOR:
        raise StatisticsError(
            f"feature statistics take 1..{MAX_DIVISOR} clients, not {num_clients}."
        )
    return max(MIN_DIVISOR, 1 << (num_clients - 1).bit_length())


def check_divisor(divisor: Any) -> int:
    """``divisor`` when it is a power of two in ``16 .. 2**20`` (else :class:`StatisticsError`)."""
    if (
        isinstance(divisor, bool)
        or not isinstance(divisor, int)
        or not MIN_DIVISOR <= divisor <= MAX_DIVISOR
        or divisor & (divisor - 1)
    ):
        raise StatisticsError(
            f"divisor {divisor!r:.40} is not a power of two in {MIN_DIVISOR}..{MAX_DIVISOR}."
        )
    return divisor


def _limbs(values: FloatArray) -> FloatArray:
    """Signed base-64 digits (``-32 .. 31``) of ``round(values * 2**FRACTION_BITS)``, low first.

    Float arithmetic is exact here: ``mod`` and the division by 64 of integer-valued floats.
    """
    v = np.round(np.ldexp(np.asarray(values, dtype=np.float64), FRACTION_BITS))
    if np.any(np.abs(v) >= _MAX_FIXED):
        raise StatisticsError(
            f"a feature's sum or sum of squares exceeds 2**{6 * LIMBS - 2 - FRACTION_BITS}; "
            "rescale that feature (e.g. change its unit) before federating."
        )
    digits = np.empty((LIMBS, *v.shape), dtype=np.float64)
    for j in range(LIMBS):
        r = np.mod(v, LIMB_BASE)
        d = r - LIMB_BASE * (r >= _HALF)
        digits[j] = d
        v = (v - d) / LIMB_BASE
    return digits


def encode_sums(
    count: int, sums: FloatArray, sumsq: FloatArray, divisor: int
) -> dict[str, FloatArray]:
    """One client's sums as limbs divided by ``divisor`` (what it encrypts).

    Returns
    -------
    dict
        ``count`` (limbs,), ``sum`` and ``sumsq`` (limbs, features), float64, every value
        in ``[-32 / divisor, 31 / divisor]``. Inverse (of the sum of many):
        :func:`decode_sums`.

    """
    check_divisor(divisor)
    return {
        "count": _limbs(np.array(float(count))) / divisor,
        "sum": _limbs(sums) / divisor,
        "sumsq": _limbs(sumsq) / divisor,
    }


def sums_layout(num_features: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of :func:`encode_sums` output for ``num_features`` features."""
    return {"count": (LIMBS,), "sum": (LIMBS, num_features), "sumsq": (LIMBS, num_features)}


def _limb_totals(values: npt.NDArray[Any], divisor: int, summands: int, name: str) -> list[Any]:
    """Integer limb totals ``D * values`` (checked: whole numbers within ``+-32 * summands``)."""
    scaled = np.asarray(values, dtype=np.float64) * divisor
    totals = np.round(scaled)
    off = float(np.max(np.abs(scaled - totals), initial=0.0))
    if not np.all(np.isfinite(scaled)) or off > 0.25:
        raise StatisticsError(
            f"the summed statistics '{name}' are not whole limb totals (off by {off:.3g}): "
            "the aggregate is corrupted or a client sent values it did not encode; "
            "refused."
        )
    if np.any(totals > (_HALF - 1) * summands) or np.any(totals < -_HALF * summands):
        raise StatisticsError(
            f"the summed statistics '{name}' hold limb totals beyond what {summands} "
            "clients can send: a client sent out-of-range values; refused."
        )
    return [int(t) for t in totals.reshape(LIMBS, -1).T.reshape(-1)]


def _recombine(values: npt.NDArray[Any], divisor: int, summands: int, name: str) -> list[int]:
    """Exact fixed-point integers ``sum_j total_j * 64**j`` per element."""
    flat = _limb_totals(values, divisor, summands, name)
    out = []
    for i in range(0, len(flat), LIMBS):
        acc = 0
        for t in reversed(flat[i : i + LIMBS]):
            acc = acc * LIMB_BASE + t
        out.append(acc)
    return out


def decode_sums(
    arrays: Mapping[str, npt.NDArray[Any]], divisor: int, summands: int
) -> tuple[int, list[int], list[int]]:
    """Fixed-point integer totals of a sum of ``summands`` :func:`encode_sums` outputs.

    Returns
    -------
    tuple
        ``(count, sums, sumsq)``: the row count, and per feature the sums and sums of
        squares times ``2**FRACTION_BITS``, as exact Python integers.

    Raises
    ------
    StatisticsError
        When the values are not whole limb totals or exceed what ``summands`` clients send.

    """
    check_divisor(divisor)
    if set(arrays) != set(NAMES):
        raise StatisticsError(f"summed statistics hold {sorted(arrays)}, expected {list(NAMES)}.")
    shape = np.shape(arrays["sum"])
    if len(shape) != 2 or shape[0] != LIMBS or np.shape(arrays["sumsq"]) != shape:
        raise StatisticsError(f"summed statistics of shape {shape}; expected ({LIMBS}, features).")
    if np.shape(arrays["count"]) != (LIMBS,):
        raise StatisticsError(f"summed count of shape {np.shape(arrays['count'])}, not ({LIMBS},).")
    (count_fixed,) = _recombine(arrays["count"][:, None], divisor, summands, "count")
    scale = 1 << FRACTION_BITS
    if count_fixed % scale or count_fixed < scale:
        raise StatisticsError(
            f"the summed row count {count_fixed / scale:g} is not a positive whole number; refused."
        )
    return (
        count_fixed // scale,
        _recombine(arrays["sum"], divisor, summands, "sum"),
        _recombine(arrays["sumsq"], divisor, summands, "sumsq"),
    )


def stats_from_sums(count: int, sums: list[int], sumsq: list[int], summands: int) -> FeatureStats:
    """Mean and population standard deviation from :func:`decode_sums` totals.

    The variance ``(n Q - S**2) / n**2`` is computed on the exact integers; a feature whose
    standard deviation is below the fixed-point resolution is constant (std 1.0).

    Raises
    ------
    StatisticsError
        For a clearly negative variance (sums of squares that cannot belong to the sums).

    """
    scale = 1 << FRACTION_BITS
    mean = np.array([s / (count * scale) for s in sums], dtype=np.float64)
    var = np.empty(len(sums), dtype=np.float64)
    for i, (s, q) in enumerate(zip(sums, sumsq, strict=True)):
        var[i] = (count * q * scale - s * s) / (count * count * scale * scale)
    # the rounding of each client's sums to 2**-40 bounds the error of the variance
    resolution = (summands + 1) / count * 2.0 ** (1 - FRACTION_BITS) * (1.0 + 2.0 * np.abs(mean))
    if np.any(var < -resolution):
        raise StatisticsError(
            "the summed statistics give a negative variance (sums of squares smaller than "
            "the sums allow): a client sent values it did not compute; refused."
        )
    std = np.sqrt(np.maximum(var, 0.0))
    std[var <= resolution] = 1.0
    return FeatureStats(int(count), mean, std)


def encrypt_sums(x: npt.NDArray[Any], key: crypto.AnyKey, divisor: int) -> crypto.AnyEncrypted:
    """Encrypt one client's :func:`encode_sums` under the federation's key."""
    count, sums, sumsq = local_sums(x)
    arrays = encode_sums(count, sums, sumsq, divisor)
    summands = min(divisor, key.params.max_summands)
    return crypto.encrypt(arrays, key, summands=summands)


def check_encrypted_sums(
    enc: crypto.AnyEncrypted, key: crypto.AnyKey, num_features: int
) -> crypto.AnyEncrypted:
    """``enc`` when it is one client's encrypted sums of ``num_features`` features.

    The server's check of a reply (after :func:`cifer_flwr.crypto.from_array_record`
    validated its framing, ciphertexts and key fingerprint): one encryption of weight 1 with
    exactly the names, shapes and float64 dtypes of :func:`sums_layout`.

    Raises
    ------
    CiphertextFormatError
        For anything else (the reply is excluded).

    """
    if enc.fingerprint != key.fingerprint:
        raise CiphertextFormatError(
            f"statistics encrypted under key {enc.fingerprint[:16]}, not the federation's "
            f"{key.fingerprint[:16]}."
        )
    expected = sums_layout(num_features)
    found = dict(zip(enc.layout.names, enc.layout.shapes, strict=True))
    if found != expected or set(enc.layout.dtypes) != {"float64"} or enc.layout.reserved:
        raise LayoutMismatchError(
            f"statistics reply holds {sorted(found.items())[:3]} (dtypes "
            f"{sorted(set(enc.layout.dtypes))}); expected {sorted(expected.items())} float64."
        )
    if enc.count != 1 or enc.weight != 1.0:
        raise CiphertextFormatError(
            f"statistics reply sums {enc.count} encryptions of weight {enc.weight:g}; "
            "expected one client's encryption of weight 1."
        )
    return enc


def check_plain_sums(
    arrays: Mapping[str, npt.NDArray[Any]], num_features: int, divisor: int
) -> dict[str, FloatArray]:
    """Plaintext runs: ``arrays`` when they are one client's :func:`encode_sums` output.

    Raises
    ------
    StatisticsError
        For other names, shapes or dtypes, non-finite values or values beyond the limbs.

    """
    expected = sums_layout(num_features)
    found = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    if found != expected:
        raise StatisticsError(
            f"statistics reply holds {sorted(found.items())[:3]}, expected {expected}."
        )
    out = {}
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype != np.float64 or not np.all(np.isfinite(a)):
            raise StatisticsError(f"statistics '{name}' must be finite float64 values.")
        if np.any(np.abs(a) * divisor > _HALF):
            raise StatisticsError(f"statistics '{name}' hold values beyond +-{_HALF}/{divisor}.")
        out[name] = a
    return out


def fold_first_layer(
    arrays: Mapping[str, npt.NDArray[Any]], stats: FeatureStats
) -> dict[str, npt.NDArray[Any]] | None:
    """The model with the standardisation folded into its first (affine) layer, or ``None``.

    A model trained on ``(x - mean) / std`` whose first two arrays are a weight matrix
    over the features and its bias (PyTorch ``Linear`` / scikit-learn ``coef_``:
    ``(out, features)``; Keras ``Dense``: ``(features, out)``) gives the same outputs on
    raw rows with ``W / std`` and ``b - W (mean / std)``. Any other first layer (a
    convolution, no bias, a square matrix whose input axis is ambiguous) returns ``None``:
    the scaling is then stored beside the weights instead.
    """
    names = list(arrays)
    if len(names) < 2:
        return None
    w = np.asarray(arrays[names[0]])
    b = np.asarray(arrays[names[1]])
    f = stats.num_features
    if w.ndim != 2 or b.ndim != 1 or w.dtype.kind != "f" or b.dtype.kind != "f":
        return None
    if w.shape[1] == f and w.shape[0] != f and b.shape[0] == w.shape[0]:
        w_raw = w.astype(np.float64) / stats.std[None, :]
        b_raw = b.astype(np.float64) - w_raw @ stats.mean
    elif w.shape[0] == f and w.shape[1] != f and b.shape[0] == w.shape[1]:
        w_raw = w.astype(np.float64) / stats.std[:, None]
        b_raw = b.astype(np.float64) - stats.mean @ w_raw
    else:
        return None
    out = dict(arrays)
    out[names[0]] = w_raw.astype(w.dtype)
    out[names[1]] = b_raw.astype(b.dtype)
    return out


def scaling_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the encrypted sums go beside a saved model (``m.enc`` -> ``m.scaling.enc``)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.scaling{p.suffix or '.enc'}")


def write_scaling(
    model_path: str | os.PathLike[str],
    total: crypto.AnyEncrypted,
    *,
    divisor: int,
    num_features: int,
) -> Path:
    """Save the encrypted summed statistics beside the encrypted model (the server's side).

    The file is an encrypted container (public header: ``source``, ``divisor``,
    ``num-features``; the sums are ciphertexts the server cannot read).
    """
    from cifer_flwr.crypto.container import write_file_atomic

    path = scaling_path(model_path)
    enc = crypto.with_meta(
        total, source=SCALING_SOURCE, divisor=divisor, **{"num-features": num_features}
    )
    write_file_atomic(path, crypto.to_bytes(enc))
    return path


def open_sums(
    total: crypto.AnyEncrypted, key: crypto.AnyKey, divisor: int, num_features: int
) -> FeatureStats:
    """A key holder's side: decrypt summed statistics and compute the global scaling.

    Raises
    ------
    StatisticsError, CiphertextFormatError
        For another layout, or sums that do not decode (see :func:`decode_sums`).

    """
    expected = sums_layout(num_features)
    found = dict(zip(total.layout.names, total.layout.shapes, strict=True))
    if found != expected:
        raise LayoutMismatchError(
            f"summed statistics hold {sorted(found.items())[:3]}; expected {expected}."
        )
    if not 1 <= total.count <= divisor:
        raise StatisticsError(
            f"summed statistics claim {total.count} clients; expected 1..{divisor}."
        )
    arrays = crypto.decrypt(total, key)
    count, sums, sumsq = decode_sums(arrays, divisor, total.count)
    return stats_from_sums(count, sums, sumsq, total.count)


def decrypt_scaling(path: str | os.PathLike[str], key: crypto.AnyKey) -> FeatureStats:
    """Decrypt the statistics :func:`write_scaling` saved (key holders only).

    Raises
    ------
    StatisticsError, CiphertextFormatError, KeyMismatchError
        For a file that is not such statistics, another key pair, or corrupted sums.

    """
    key.require_private("decrypt feature statistics")
    total = crypto.from_bytes(Path(path).read_bytes(), key)
    meta = dict(total.meta)
    if meta.get("source") != SCALING_SOURCE:
        raise StatisticsError(f"{path}: not federated feature statistics ({meta.get('source')!r}).")
    features = meta.get("num-features")
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise StatisticsError(f"{path}: num-features {features!r:.40} is not a positive integer.")
    return open_sums(total, key, check_divisor(meta.get("divisor")), features)


def saved_scaling(model_path: str | os.PathLike[str], key: crypto.AnyKey) -> FeatureStats | None:
    """The statistics saved beside an encrypted model (``None`` when there are none).

    Raises
    ------
    StatisticsError, CiphertextFormatError, KeyMismatchError
        As :func:`decrypt_scaling`.

    """
    path = scaling_path(model_path)
    return decrypt_scaling(path, key) if path.is_file() else None


def write_plain_scaling(model_path: str | os.PathLike[str], stats: FeatureStats) -> Path:
    """Write the scaling of a model that cannot fold it beside the plaintext model file.

    ``model.pt`` -> ``model.scaling.npz`` with arrays ``mean``, ``std`` and ``count``
    (no pickle): the model expects ``(x - mean) / std``.
    """
    import io

    from cifer_flwr.crypto.container import write_file_atomic

    path = plain_scaling_path(model_path)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **stats.to_arrays())
    write_file_atomic(path, buf.getvalue())
    return path


def plain_scaling_path(model_path: str | os.PathLike[str]) -> Path:
    """Where :func:`write_plain_scaling` puts the scaling (``m.npz`` -> ``m.scaling.npz``)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.scaling.npz")


def read_plain_scaling(model_path: str | os.PathLike[str]) -> FeatureStats | None:
    """The scaling :func:`write_plain_scaling` wrote beside a model (``None`` when none).

    Raises
    ------
    StatisticsError
        For a file that is not such a scaling (no pickle is ever loaded).

    """
    path = plain_scaling_path(model_path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("mean", "std", "count") if name in data}
    except (OSError, ValueError) as exc:
        raise StatisticsError(f"{path}: not a scaling file ({exc}).") from None
    return FeatureStats.from_arrays(arrays)


def decrypt_model_and_scaling(
    model_path: str | os.PathLike[str], private_key: str | os.PathLike[str] | crypto.AnyKey
) -> tuple[dict[str, npt.NDArray[Any]], FeatureStats | None]:
    """Decrypt a saved federated model and the scaling it still needs (key holders).

    The statistics saved beside the model (``model.scaling.enc``) are folded into its first
    layer where that is affine (:func:`fold_first_layer`; the scaling returned is then
    ``None``: the model takes raw rows); otherwise (a convolution first, e.g.) the model is
    returned as trained with the scaling beside it, to apply as ``stats.standardize(x)``.
    A model saved without statistics comes back as decrypted, with ``None``.

    Raises
    ------
    KeyTypeError, KeyMismatchError, CiphertextFormatError, StatisticsError
        As :func:`~cifer_flwr.protocol.decrypt_global_model` and :func:`decrypt_scaling`.

    """
    from cifer_flwr.protocol import decrypt_global_model

    key = (
        private_key
        if isinstance(private_key, crypto.Key | crypto.PaillierKey)
        else crypto.load_private_key(private_key)
    )
    arrays = decrypt_global_model(Path(model_path), key)
    stats = saved_scaling(model_path, key)
    if stats is None:
        return arrays, None
    folded = fold_first_layer(arrays, stats)
    return (arrays, stats) if folded is None else (folded, None)


def decrypt_scaled_model(
    model_path: str | os.PathLike[str], private_key: str | os.PathLike[str] | crypto.AnyKey
) -> dict[str, npt.NDArray[Any]]:
    """Decrypt a saved federated model with its federation's scaling folded in (key holders).

    :func:`cifer_flwr.protocol.decrypt_global_model`, then the statistics saved beside the
    model (``model.scaling.enc``, docs/design.md §4.10) folded into the first layer
    (:func:`fold_first_layer`): the result takes raw rows. A model saved without statistics
    (built-in datasets, bytes) is returned as decrypted.

    Raises
    ------
    StatisticsError
        When the model's first layer cannot absorb the scaling (use ``cifer securetrain
        decrypt-model``, which writes it beside the model, or :func:`saved_scaling`).
    KeyTypeError, KeyMismatchError, CiphertextFormatError
        As :func:`~cifer_flwr.protocol.decrypt_global_model`.

    """
    arrays, stats = decrypt_model_and_scaling(model_path, private_key)
    if stats is not None:
        raise StatisticsError(
            f"{model_path}: the model's first layer is not an affine layer over the "
            f"{stats.num_features} features, so the federation's scaling cannot be folded "
            "in; `cifer securetrain decrypt-model` writes it beside the model, or use "
            "cifer_flwr.statistics.decrypt_model_and_scaling."
        )
    return arrays
