"""Encrypted datasets and models, and logistic regression trained on ciphertexts.

Layout (see :mod:`cifer_flwr.crypto.linalg`): the signed design ``Z = y' * [1, X]`` is
encrypted **column by column**; each column's samples are laid out periodically with a period
``p`` (the next power of two above ``n``, at most the slot count; more samples use several
ciphertexts per column). A model is one constant ciphertext per coefficient
``[bias, weight...]``.

One iteration (``v`` the Nesterov point, all values encrypted)::

    t      = sum_j (s Z_j) * U_j                      1 level   (U = v / s)
    S_j    = t^2 * (t * c3 Z_j) + t * (c1 Z_j) + c0 Z_j  2 levels  (c_k folded with the step)
    G_j    = window_sum(S_j, p)                       rotations, no level
    U, B  <- Nesterov update with plaintext scalars   off the critical path

so ``k`` iterations need ``3 k`` levels. The weights are kept divided by
``s = sqrt(lr / n)``, which keeps every encrypted value away from the CKKS noise floor; the
model file records ``s`` as its public ``scale`` and decryption multiplies it back.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.constants import KIND_ENCRYPTED_DATASET, KIND_ENCRYPTED_MODEL
from cifer_flwr.crypto import container
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.linalg import (
    Ciphertext,
    encrypt_constant,
    encrypt_periodic,
    periodic,
    sum_all,
)
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    FeatureMismatchError,
    KeyMismatchError,
    UnsupportedOperationError,
)
from cifer_flwr.securetrain.algorithm import (
    LEVELS_PER_ITERATION,
    SIGMOID_COEFFS,
    _check_hyper,
    nesterov_etas,
    period_for,
)
from cifer_flwr.securetrain.data import Dataset, signed_design
from cifer_flwr.securetrain.model import LogisticModel

__all__ = [
    "FORMAT_VERSION",
    "EncryptedDataset",
    "EncryptedModel",
    "PlainDesign",
    "Progress",
    "decrypt_model",
    "encrypt_dataset",
    "encrypt_model",
    "levels_needed",
    "load_encrypted_dataset",
    "load_encrypted_model",
    "plain_design",
    "save_encrypted",
    "train_encrypted",
]

FORMAT_VERSION = 1
SCHEME = "CKKS"
#: Header bounds of encrypted files (anything larger is refused as corrupted): features of
#: a model or dataset, ciphertexts per column, trained iterations, and the public scale.
MAX_FEATURES = 1 << 20
MAX_CIPHERTEXTS = 1 << 20
MAX_ITERATIONS = 1 << 20
MAX_SCALE = 1e6

#: ``progress(done, total)`` callback.
Progress = Callable[[int, int], None]

Column = Sequence[Ciphertext] | Sequence[npt.NDArray[np.float64]]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _chunks(num_samples: int, period: int) -> int:
    return math.ceil(num_samples / period)


@dataclass(frozen=True)
class EncryptedDataset:
    """A signed design matrix encrypted column by column (scenario 1).

    Attributes
    ----------
    columns : tuple of tuple of Ciphertext
        ``num_features + 1`` columns (intercept first), each ``chunks`` ciphertexts.
    num_samples, num_features, period : int
        Public shape and layout.
    key : Key
        The key the ciphertexts belong to.
    meta : dict
        Public annotations (label values, creation time).

    """

    columns: tuple[tuple[Ciphertext, ...], ...] = field(repr=False)
    num_samples: int
    num_features: int
    period: int
    key: Key = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        """Public JSON header of the file."""
        return {
            "format_version": FORMAT_VERSION,
            "scheme": SCHEME,
            "params": self.key.params.to_dict(),
            "fingerprint": self.key.fingerprint,
            "encoding": "signed-design-columns",
            "num_samples": self.num_samples,
            "num_features": self.num_features,
            "period": self.period,
            "chunks": len(self.columns[0]),
            "shape": [self.num_samples, self.num_features],
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        """Serialize into a cifer container (inverse of :func:`load_encrypted_dataset`)."""
        blobs = [ct.to_bytes() for col in self.columns for ct in col]
        return container.pack(KIND_ENCRYPTED_DATASET, self.header(), blobs)


@dataclass(frozen=True)
class PlainDesign:
    """The signed design in plaintext, laid out like :class:`EncryptedDataset` (scenario 2)."""

    columns: tuple[tuple[npt.NDArray[np.float64], ...], ...] = field(repr=False)
    num_samples: int
    num_features: int
    period: int


@dataclass(frozen=True)
class EncryptedModel:
    """Encrypted logistic-regression coefficients ``[bias, weight...]``.

    Attributes
    ----------
    coefficients : tuple of Ciphertext
        One constant ciphertext per coefficient.
    scale : float
        Public factor: plaintext coefficient = ``scale`` x decrypted value.
    key : Key
        The key the ciphertexts belong to.
    meta : dict
        Public training annotations (iterations, learning rate, samples).

    """

    coefficients: tuple[Ciphertext, ...] = field(repr=False)
    scale: float
    key: Key = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        """Number of input features ``d``."""
        return len(self.coefficients) - 1

    @property
    def level(self) -> int:
        """Levels already used by the deepest coefficient."""
        return max(ct.level for ct in self.coefficients)

    def header(self) -> dict[str, Any]:
        """Public JSON header of the file."""
        return {
            "format_version": FORMAT_VERSION,
            "scheme": SCHEME,
            "params": self.key.params.to_dict(),
            "fingerprint": self.key.fingerprint,
            "model": "logistic-regression",
            "num_features": self.num_features,
            "shape": [self.num_features + 1],
            "order": "bias,weights",
            "scale": self.scale,
            "levels": [ct.level for ct in self.coefficients],
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        """Serialize into a cifer container (inverse of :func:`load_encrypted_model`)."""
        blobs = [ct.to_bytes() for ct in self.coefficients]
        return container.pack(KIND_ENCRYPTED_MODEL, self.header(), blobs)


# ----------------------------------------------------------------------------- encryption


def _columns(dataset: Dataset, slots: int) -> tuple[int, list[list[npt.NDArray[np.float64]]]]:
    z = signed_design(dataset)
    period = period_for(dataset.num_samples, slots)
    chunks = _chunks(dataset.num_samples, period)
    cols = [
        [periodic(z[c * period : (c + 1) * period, j], period, slots) for c in range(chunks)]
        for j in range(z.shape[1])
    ]
    return period, cols


def plain_design(dataset: Dataset, params: CkksParams) -> PlainDesign:
    """Lay a plaintext dataset out for training against encrypted weights (scenario 2)."""
    period, cols = _columns(dataset, params.slots)
    return PlainDesign(
        tuple(tuple(c) for c in cols), dataset.num_samples, dataset.num_features, period
    )


def encrypt_dataset(
    dataset: Dataset, key: Key, *, progress: Progress | None = None
) -> EncryptedDataset:
    """Encrypt a dataset for training by another party (inverse: decrypting each column).

    Only the signed design ``y' * [1, X]`` is encrypted; labels never appear on their own.
    """
    period, cols = _columns(dataset, key.params.slots)
    total = sum(len(c) for c in cols)
    done = 0
    out: list[tuple[Ciphertext, ...]] = []
    for col in cols:
        enc = []
        for chunk in col:
            enc.append(encrypt_periodic(chunk[:period], period, key))
            done += 1
            if progress is not None:
                progress(done, total)
        out.append(tuple(enc))
    meta = {"classes": list(dataset.classes), "created": _now()}
    return EncryptedDataset(
        tuple(out), dataset.num_samples, dataset.num_features, period, key, meta
    )


def encrypt_model(
    model: LogisticModel, key: Key, *, progress: Progress | None = None
) -> EncryptedModel:
    """Encrypt a plaintext model (inverse of :func:`decrypt_model`)."""
    beta = model.to_vector()
    cts = []
    for i, value in enumerate(beta):
        cts.append(encrypt_constant(float(value), key))
        if progress is not None:
            progress(i + 1, beta.size)
    return EncryptedModel(tuple(cts), 1.0, key, {"created": _now(), "trained_iterations": 0})


def decrypt_model(enc: EncryptedModel, key: Key) -> LogisticModel:
    """Decrypt with the private key (the slot average reduces CKKS noise).

    Raises
    ------
    KeyTypeError
        When ``key`` is public.
    KeyMismatchError
        When the model was encrypted under another key.
    CiphertextFormatError
        When the decrypted coefficients are not finite.

    """
    key.require_private("decrypt the model")
    if key.fingerprint != enc.key.fingerprint:
        raise KeyMismatchError(enc.key.fingerprint, key.fingerprint, "encrypted model")
    beta = np.array([float(np.mean(ct.decrypt(key))) for ct in enc.coefficients]) * enc.scale
    if not np.all(np.isfinite(beta)):
        raise CiphertextFormatError(
            "the decrypted model holds NaN or infinite coefficients: its ciphertexts or public "
            "scale were altered, or training ran past the parameters' range."
        )
    return LogisticModel.from_vector(beta)


# ---------------------------------------------------------------------------------- files


def _bad(what: str, field_name: str, found: Any, expected: str) -> CiphertextFormatError:
    shown = repr(found)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return CiphertextFormatError(
        f"{what}: header field {field_name!r} is {shown}, expected {expected}; the file is "
        "corrupted or was not written by cifer securetrain."
    )


def _field(header: dict[str, Any], name: str, what: str) -> Any:
    if name not in header:
        raise CiphertextFormatError(
            f"{what}: the header has no {name!r} field; the file is corrupted or was not "
            "written by cifer securetrain."
        )
    return header[name]


def _int_field(header: dict[str, Any], name: str, what: str, low: int, high: int) -> int:
    value = _field(header, name, what)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(what, name, value, f"an integer in [{low}, {high}]")
    return value


def _meta(header: dict[str, Any], what: str) -> dict[str, Any]:
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise _bad(what, "meta", meta, "an object")
    done = meta.get("trained_iterations", 0)
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= MAX_ITERATIONS:
        raise _bad(what, "meta.trained_iterations", done, f"an integer in [0, {MAX_ITERATIONS}]")
    return dict(meta)


def _check_header(header: dict[str, Any], key: Key, what: str) -> None:
    version = header.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CiphertextFormatError(
            f"{what} has format version {version!r}; this cifer reads version {FORMAT_VERSION}."
        )
    if header.get("scheme") != SCHEME:
        raise CiphertextFormatError(f"{what} uses scheme {header.get('scheme')!r}, not CKKS.")
    fingerprint = _field(header, "fingerprint", what)
    if not isinstance(fingerprint, str) or len(fingerprint) > 64:
        raise _bad(what, "fingerprint", fingerprint, "a hexadecimal key fingerprint")
    if fingerprint != key.fingerprint:
        raise KeyMismatchError(fingerprint, key.fingerprint, what)
    raw = _field(header, "params", what)
    if not isinstance(raw, dict):
        raise _bad(what, "params", raw, "an object of CKKS parameters")
    try:
        params = CkksParams.from_dict(raw)
    except CiferError as exc:
        raise CiphertextFormatError(
            f"{what}: invalid CKKS parameters in the header ({exc})."
        ) from exc
    if params != key.params:
        raise CiphertextFormatError(
            f"{what}: header parameters {params.name} differ from the key's {key.params.name}."
        )


def load_encrypted_dataset(path: str | os.PathLike[str], key: Key) -> EncryptedDataset:
    """Read an encrypted dataset file with the data owner's public (or private) key.

    Every header field is checked (types, ranges, and that the shape, period, chunk count
    and ciphertext count agree) before a ciphertext is parsed.

    Raises
    ------
    CiphertextFormatError
        When the file is truncated, corrupted or not an encrypted dataset.
    KeyMismatchError
        When it was encrypted under another key.

    """
    what = f"encrypted dataset {path}"
    header, blobs = _read(path, KIND_ENCRYPTED_DATASET, "encrypted dataset")
    _check_header(header, key, what)
    slots = key.params.slots
    if header.get("encoding") != "signed-design-columns":
        raise _bad(what, "encoding", header.get("encoding"), "'signed-design-columns'")
    d = _int_field(header, "num_features", what, 1, MAX_FEATURES)
    n = _int_field(header, "num_samples", what, 1, slots * MAX_CIPHERTEXTS)
    period = _int_field(header, "period", what, 1, slots)
    if period != period_for(n, slots):
        raise _bad(what, "period", period, f"{period_for(n, slots)} for {n} samples")
    chunks = _int_field(header, "chunks", what, 1, MAX_CIPHERTEXTS)
    if chunks != _chunks(n, period):
        raise _bad(what, "chunks", chunks, f"{_chunks(n, period)} for {n} samples")
    shape = header.get("shape")
    if shape != [n, d]:
        raise _bad(what, "shape", shape, f"[{n}, {d}] (num_samples, num_features)")
    meta = _meta(header, what)
    if len(blobs) != (d + 1) * chunks:
        raise CiphertextFormatError(
            f"{path}: {len(blobs)} ciphertexts, expected {(d + 1) * chunks} "
            f"({d + 1} columns x {chunks} chunks)."
        )
    cts = [Ciphertext.from_bytes(b, key, 0) for b in blobs]
    cols = tuple(tuple(cts[j * chunks : (j + 1) * chunks]) for j in range(d + 1))
    return EncryptedDataset(cols, n, d, period, key, meta)


def load_encrypted_model(path: str | os.PathLike[str], key: Key) -> EncryptedModel:
    """Read an encrypted model file (public key to train, private key to decrypt).

    Every header field is checked (types, ranges, one level per coefficient within the
    key's depth, a finite positive scale) before a ciphertext is parsed.

    Raises
    ------
    CiphertextFormatError
        When the file is truncated, corrupted or not an encrypted model.
    KeyMismatchError
        When it was encrypted under another key.

    """
    what = f"encrypted model {path}"
    header, blobs = _read(path, KIND_ENCRYPTED_MODEL, "encrypted model")
    _check_header(header, key, what)
    if header.get("model") != "logistic-regression":
        raise _bad(what, "model", header.get("model"), "'logistic-regression'")
    if header.get("order") != "bias,weights":
        raise _bad(what, "order", header.get("order"), "'bias,weights'")
    d = _int_field(header, "num_features", what, 1, MAX_FEATURES)
    shape = header.get("shape")
    if shape != [d + 1]:
        raise _bad(what, "shape", shape, f"[{d + 1}] (bias and {d} weights)")
    scale = _field(header, "scale", what)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not (math.isfinite(scale) and 0 < scale <= MAX_SCALE)
    ):
        raise _bad(what, "scale", scale, f"a finite number in (0, {MAX_SCALE:g}]")
    levels = _field(header, "levels", what)
    depth = key.params.depth
    if (
        not isinstance(levels, list)
        or len(levels) != d + 1
        or any(isinstance(lv, bool) or not isinstance(lv, int) for lv in levels)
        or any(not 0 <= lv <= depth for lv in levels)
    ):
        raise _bad(what, "levels", levels, f"{d + 1} integers in [0, {depth}] (the key's depth)")
    meta = _meta(header, what)
    if len(blobs) != d + 1:
        raise CiphertextFormatError(f"{path}: {len(blobs)} ciphertexts for {d} features + bias.")
    cts = tuple(Ciphertext.from_bytes(b, key, lv) for b, lv in zip(blobs, levels, strict=True))
    return EncryptedModel(cts, float(scale), key, meta)


def _read(path: str | os.PathLike[str], kind: str, what: str) -> tuple[dict[str, Any], list[bytes]]:
    p = Path(path)
    if not p.is_file():
        raise CiphertextFormatError(f"{what} file {str(p)!r} does not exist.")
    try:
        return container.read_file(p, kind=kind)
    except CiphertextFormatError as exc:
        raise CiphertextFormatError(f"{p}: {exc}") from exc


def save_encrypted(obj: EncryptedDataset | EncryptedModel, path: str | os.PathLike[str]) -> Path:
    """Write an encrypted dataset or model atomically."""
    return container.write_file_atomic(path, obj.to_bytes())


# -------------------------------------------------------------------------------- training


def levels_needed(iterations: int, model: EncryptedModel, data_encrypted: bool) -> int:
    """Levels a run of ``iterations`` from ``model`` uses, counting the model's own levels."""
    extra = 1 if data_encrypted and model.scale != 1.0 else 0
    return max(model.level, extra) + LEVELS_PER_ITERATION * iterations


def _scaled(column: Column, factor: float) -> list[Any]:
    if factor == 1.0:
        return list(column)
    return [x * factor for x in column]


def train_encrypted(
    design: EncryptedDataset | PlainDesign,
    model: EncryptedModel,
    *,
    iterations: int,
    learning_rate: float,
    on_step: Callable[[int, int, int], None] | None = None,
) -> EncryptedModel:
    """Run the algorithm of :func:`~.algorithm.train_plaintext` on encrypted weights.

    Parameters
    ----------
    design : EncryptedDataset or PlainDesign
        Encrypted data (scenario 1) or the computing party's own plaintext data (scenario 2).
    model : EncryptedModel
        Starting weights, encrypted under the same key as ``design`` (if encrypted).
    iterations : int
        Nesterov iterations; each uses three multiplicative levels.
    learning_rate : float
        Step size.
    on_step : callable, optional
        ``on_step(iteration, done, total)`` after each coefficient of each iteration.

    Returns
    -------
    EncryptedModel
        The trained model, still encrypted; only the key holder can decrypt it.

    Raises
    ------
    FeatureMismatchError
        When the model and the data have different numbers of features.
    UnsupportedOperationError
        When the key's parameters lack the depth for ``iterations``.

    """
    _check_hyper(iterations, learning_rate)
    if model.num_features != design.num_features:
        raise FeatureMismatchError(
            f"the encrypted model has {model.num_features} features but the data has "
            f"{design.num_features}; use data with the columns the model was built for."
        )
    key = model.key
    encrypted = isinstance(design, EncryptedDataset)
    if isinstance(design, EncryptedDataset) and design.key.fingerprint != key.fingerprint:
        raise KeyMismatchError(design.key.fingerprint, key.fingerprint, "encrypted dataset")
    need = levels_needed(iterations, model, encrypted)
    if need > key.params.depth:
        fit = key.params.depth - max(model.level, 1 if encrypted and model.scale != 1 else 0)
        fit //= LEVELS_PER_ITERATION
        raise UnsupportedOperationError(
            f"{iterations} iterations need {need} multiplicative levels, but the key's "
            f"parameters ({key.params.name}: N={key.params.poly_modulus_degree}, depth "
            f"{key.params.depth}) allow {key.params.depth} and this model already used "
            f"{model.level}. Train at most {max(fit, 0)} iterations, or ask the key holder "
            f"to encrypt again for more (`--iterations {iterations}` on encrypt-dataset / "
            "encrypt-model) - there is no bootstrapping, so depth cannot be refreshed."
        )
    n, period = design.num_samples, design.period
    columns: list[Column] = list(design.columns)
    a0, a1, a3 = SIGMOID_COEFFS
    s = math.sqrt(learning_rate / n)
    etas = nesterov_etas(iterations)
    d1 = len(columns)

    weights: list[Ciphertext] = list(model.coefficients)
    ratio = model.scale / s
    u = [w * ratio for w in weights]  # Nesterov point v / s
    b = u  # current beta / s
    for k, eta in enumerate(etas):
        last = k == iterations - 1
        if on_step is not None:
            on_step(k, 0, d1)
        src, src_scale = (weights, model.scale) if k == 0 else (u, s)
        zt = [_scaled(col, src_scale) for col in columns]
        chunks = len(columns[0])
        t = [sum_all([src[j] * zt[j][c] for j in range(d1)]) for c in range(chunks)]
        t2 = [x.square() for x in t]
        m = 1.0 if last else 1.0 - eta
        c0, c1, c3 = s * m * a0, -s * m * a1, -s * m * a3
        grads: list[Ciphertext] = []
        for j, col in enumerate(columns):
            parts = []
            for c in range(chunks):
                z = col[c]
                parts.append(t2[c] * (t[c] * (z * c3)) + t[c] * (z * c1) + z * c0)
            grads.append(sum_all(parts).window_sum(period))
            if on_step is not None:
                on_step(k, j + 1, d1)
        if last or eta == 0.0:
            new_b = [u[j] + grads[j] for j in range(d1)]
            u, b = new_b, new_b
        else:
            new_u = [u[j] * (1.0 - eta) + grads[j] + b[j] * eta for j in range(d1)]
            b = [u[j] + grads[j] * (1.0 / (1.0 - eta)) for j in range(d1)]
            u = new_u
    meta = {
        "created": _now(),
        "trained_iterations": int(model.meta.get("trained_iterations", 0)) + iterations,
        "learning_rate": learning_rate,
        "samples": n,
        "algorithm": "nesterov-logistic-sigmoid3",
    }
    return EncryptedModel(tuple(b), s, key, meta)
