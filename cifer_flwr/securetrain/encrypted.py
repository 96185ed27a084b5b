"""Encrypted datasets and models, and logistic regression trained on ciphertexts.

Layout (see :mod:`cifer_flwr.crypto.linalg`): the data owner standardizes her features
first (:class:`~.data.Scaler`, docs/design.md §4.6); the signed design ``Z = y' * [1, X]``
is encrypted **column by column** (one design per class for one-vs-rest); each column's
samples are laid out periodically with a period ``p`` (the next power of two above ``n``,
at most the slot count; more samples use several ciphertexts per column). A model is one
constant ciphertext per coefficient ``[bias, weight...]`` (per class for one-vs-rest). The
scaler travels **encrypted** under the same key (its exact float64 bits as 16-bit integers)
from the dataset into the trained model, and decryption folds it in, so the decrypted model
works on raw rows.

One iteration (``v`` the Nesterov point, all values encrypted)::

    t      = sum_j (s Z_j) * U_j                      1 level   (U = v / s)
    S_j    = t * (c1 Z_j) + c0 Z_j                    1 level   (c_k folded with the step)
    G_j    = window_sum(S_j, p)                       rotations, no level
    U, B  <- Nesterov update with plaintext scalars   off the critical path

so ``k`` iterations need ``2 k`` levels (the sigmoid is ``1/2 + x/4``, :mod:`.algorithm`).
The weights are kept divided by ``s = sqrt(lr / n)``, which keeps every encrypted value
away from the CKKS noise floor; the model file records ``s`` as its public ``scale`` and
decryption multiplies it back.
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

from cifer_flwr import crypto
from cifer_flwr.constants import KIND_ENCRYPTED_DATASET, KIND_ENCRYPTED_MODEL
from cifer_flwr.crypto import container
from cifer_flwr.crypto.headers import finite_number
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
    START_SCORE_LIMIT,
    check_training_settings,
    default_learning_rate,
    max_row_norm,
    more_depth,
    nesterov_etas,
    norm_bound,
    period_for,
    start_shrink,
)
from cifer_flwr.securetrain.data import MAX_CLASSES, Dataset, Scaler, signed_design
from cifer_flwr.securetrain.model import Classifier, LogisticModel, OneVsRestModel, fold_scaler

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
    "refresh_model",
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
#: Largest public norm bound of an encrypted model (a power of two).
MAX_NORM_BOUND = 2.0**60
#: Name of the array holding the encrypted scaler words.
SCALER_ARRAY = "scaler"

#: ``progress(done, total)`` callback.
Progress = Callable[[int, int], None]

Column = Sequence[Ciphertext] | Sequence[npt.NDArray[np.float64]]
Plain = npt.NDArray[np.float64]


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
        ``outputs x (num_features + 1)`` columns (per output: intercept first), each
        ``chunks`` ciphertexts.
    num_samples, num_features, period : int
        Public shape and layout.
    key : crypto.Key
        The key the ciphertexts belong to.
    meta : dict
        Public annotations (creation time).
    outputs : int
        1 for binary labels, else the number of classes (one design each, one-vs-rest).
    scaler : EncryptedArrays, optional
        The owner's standardization, encrypted under ``key`` (``None``: not standardized).

    """

    columns: tuple[tuple[Ciphertext, ...], ...] = field(repr=False)
    num_samples: int
    num_features: int
    period: int
    key: crypto.Key = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    scaler: crypto.EncryptedArrays | None = field(default=None, repr=False)

    def design(self, output: int) -> tuple[tuple[Ciphertext, ...], ...]:
        """The ``num_features + 1`` columns of one output's signed design."""
        d1 = self.num_features + 1
        return self.columns[output * d1 : (output + 1) * d1]

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
            "outputs": self.outputs,
            **_scaler_header(self.scaler),
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        """Serialize into a cifer container (inverse of :func:`load_encrypted_dataset`)."""
        blobs = [ct.to_bytes() for col in self.columns for ct in col]
        blobs += _scaler_blobs(self.scaler)
        return container.pack(KIND_ENCRYPTED_DATASET, self.header(), blobs)


@dataclass(frozen=True)
class PlainDesign:
    """The signed design in plaintext, laid out like :class:`EncryptedDataset` (scenario 2).

    With a ``scaler`` (the data owner's, never sent), ``columns`` are standardized,
    ``raw_columns`` are the raw design (the first iteration's scores with a raw-coordinate
    model) and ``folded_columns`` are ``Z_std M^T`` (the last gradient, mapped back to raw
    coordinates without a level).
    """

    columns: tuple[tuple[npt.NDArray[np.float64], ...], ...] = field(repr=False)
    num_samples: int
    num_features: int
    period: int
    outputs: int = 1
    scaler: Scaler | None = field(default=None, repr=False)
    raw_columns: tuple[tuple[npt.NDArray[np.float64], ...], ...] = field(default=(), repr=False)
    folded_columns: tuple[tuple[npt.NDArray[np.float64], ...], ...] = field(default=(), repr=False)
    classes: tuple[float, ...] = ()
    row_norm: float = 1.0

    def design(self, output: int) -> tuple[tuple[npt.NDArray[np.float64], ...], ...]:
        """The ``num_features + 1`` columns of one output's signed design."""
        d1 = self.num_features + 1
        return self.columns[output * d1 : (output + 1) * d1]


@dataclass(frozen=True)
class EncryptedModel:
    """Encrypted logistic-regression coefficients ``[bias, weight...]``.

    Attributes
    ----------
    coefficients : tuple of Ciphertext
        One constant ciphertext per coefficient, ``outputs`` blocks of ``[bias, weight...]``.
    scale : float
        Public factor: plaintext coefficient = ``scale`` x decrypted value.
    key : crypto.Key
        The key the ciphertexts belong to.
    meta : dict
        Public training annotations (iterations, learning rate, samples, class labels).
    outputs : int
        1 (binary) or the number of classes (one-vs-rest).
    scaler : EncryptedArrays, optional
        The data owner's standardization, encrypted, folded in by :func:`decrypt_model`.
    bound : float, optional
        Public bound on the plaintext coefficients' L2 norm (per output block), a power of
        two set by the key holder (:func:`encrypt_model`, :func:`refresh_model`); ``None``
        for a model straight out of training (nobody could see its size).

    """

    coefficients: tuple[Ciphertext, ...] = field(repr=False)
    scale: float
    key: crypto.Key = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    scaler: crypto.EncryptedArrays | None = field(default=None, repr=False)
    bound: float | None = None

    @property
    def num_features(self) -> int:
        """Number of input features ``d``."""
        return len(self.coefficients) // self.outputs - 1

    def block(self, output: int) -> list[Ciphertext]:
        """The coefficients ``[bias, weight...]`` of one output."""
        d1 = self.num_features + 1
        return list(self.coefficients[output * d1 : (output + 1) * d1])

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
            "shape": _model_shape(self.outputs, self.num_features),
            "outputs": self.outputs,
            "order": "bias,weights",
            "scale": self.scale,
            "levels": [ct.level for ct in self.coefficients],
            **({} if self.bound is None else {"norm_bound": self.bound}),
            **_scaler_header(self.scaler),
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        """Serialize into a cifer container (inverse of :func:`load_encrypted_model`)."""
        blobs = [ct.to_bytes() for ct in self.coefficients] + _scaler_blobs(self.scaler)
        return container.pack(KIND_ENCRYPTED_MODEL, self.header(), blobs)


def _model_shape(outputs: int, num_features: int) -> list[int]:
    return [num_features + 1] if outputs == 1 else [outputs, num_features + 1]


def _scaler_header(scaler: crypto.EncryptedArrays | None) -> dict[str, Any]:
    if scaler is None:
        return {}
    return {"scaler": {"header": scaler.header(), "chunks": len(scaler.vectors)}}


def _scaler_blobs(scaler: crypto.EncryptedArrays | None) -> list[bytes]:
    return [] if scaler is None else [bytes(b) for b in scaler.serialized_chunks()]


def encrypt_scaler(scaler: Scaler, key: crypto.Key) -> crypto.EncryptedArrays:
    """Encrypt the owner's scaler under her key (inverse of :func:`decrypt_scaler`)."""
    return crypto.encrypt({SCALER_ARRAY: scaler.to_words()}, key)


def decrypt_scaler(enc: crypto.EncryptedArrays, key: crypto.Key, num_features: int) -> Scaler:
    """Decrypt and check a scaler (its words must round to exact 16-bit integers).

    Raises
    ------
    CiphertextFormatError
        When the decrypted values are not the words of ``num_features`` means and scales.

    """
    flat = np.concatenate(crypto.decrypt_chunks(enc, key))[: 8 * num_features]
    if flat.size != 8 * num_features or np.abs(flat - np.rint(flat)).max(initial=0.0) > 0.05:
        raise CiphertextFormatError(
            "the encrypted scaler does not decrypt to whole 16-bit words; it was altered or "
            "encrypted under another key."
        )
    words = np.rint(flat)
    if words.min(initial=0.0) < 0 or words.max(initial=0.0) > 0xFFFF:
        raise CiphertextFormatError("the encrypted scaler holds words outside 0..65535.")
    try:
        return Scaler.from_words(words.astype(np.uint16), "encrypted scaler")
    except CiferError as exc:
        raise CiphertextFormatError(str(exc)) from exc


# ----------------------------------------------------------------------------- encryption


def _layout(z: npt.NDArray[np.float64], period: int, slots: int) -> list[list[Plain]]:
    """Columns of ``z`` as periodic chunks of ``period`` samples."""
    chunks = _chunks(z.shape[0], period)
    return [
        [periodic(z[c * period : (c + 1) * period, j], period, slots) for c in range(chunks)]
        for j in range(z.shape[1])
    ]


def _designs(dataset: Dataset) -> list[npt.NDArray[np.float64]]:
    """One signed design per output: binary (class 1 positive) or one per class."""
    if dataset.num_outputs == 1:
        return [signed_design(dataset)]
    return [signed_design(dataset, k) for k in range(dataset.num_classes)]


def _folding(scaler: Scaler) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(M, M^-1)``: ``beta_raw = M beta_std`` for ``[bias, weight...]`` vectors."""
    d = scaler.num_features
    m = np.zeros((d + 1, d + 1))
    m[0, 0] = 1.0
    m[0, 1:] = -scaler.mean / scaler.scale
    m[1:, 1:] = np.diag(1.0 / scaler.scale)
    inv = np.zeros((d + 1, d + 1))
    inv[0, 0] = 1.0
    inv[0, 1:] = scaler.mean
    inv[1:, 1:] = np.diag(scaler.scale)
    return m, inv


def plain_design(dataset: Dataset, params: CkksParams, *, standardize: bool = True) -> PlainDesign:
    """Lay a plaintext dataset out for training against encrypted weights (scenario 2).

    With ``standardize`` the data owner's features are standardized on her side; the
    trainer converts the (raw-coordinate) encrypted model in and out with plaintext scalars
    (docs/design.md §4.6), so the model returned to its owner works on raw rows and the
    scaler never leaves the data owner.
    """
    period = period_for(dataset.num_samples, params.slots)
    scaler = Scaler.fit(dataset.X) if standardize else None
    std = dataset if scaler is None else scaler.transform(dataset)
    cols: list[tuple[Plain, ...]] = []
    raw: list[tuple[Plain, ...]] = []
    out: list[tuple[Plain, ...]] = []
    for z_raw, z_std in zip(_designs(dataset), _designs(std), strict=True):
        cols += [tuple(c) for c in _layout(z_std, period, params.slots)]
        if scaler is not None:
            m, _ = _folding(scaler)
            raw += [tuple(c) for c in _layout(z_raw, period, params.slots)]
            out += [tuple(c) for c in _layout(z_std @ m.T, period, params.slots)]
    return PlainDesign(
        tuple(cols),
        dataset.num_samples,
        dataset.num_features,
        period,
        dataset.num_outputs,
        scaler,
        tuple(raw),
        tuple(out),
        tuple(dataset.classes),
        max_row_norm(dataset.X),
    )


def encrypt_dataset(
    dataset: Dataset,
    key: crypto.Key,
    *,
    standardize: bool = True,
    progress: Progress | None = None,
) -> EncryptedDataset:
    """Encrypt a dataset for training by another party (inverse: decrypting each column).

    Only the signed designs ``y' * [1, X]`` are encrypted (one per class for more than two
    classes); labels never appear on their own. With ``standardize`` (the default) the
    features are standardized first and the scaler is encrypted alongside, under the same
    key: only the key holder can read it, and :func:`decrypt_model` folds it into the model
    (docs/design.md §4.6).
    """
    scaler = Scaler.fit(dataset.X) if standardize else None
    data = dataset if scaler is None else scaler.transform(dataset)
    period = period_for(dataset.num_samples, key.params.slots)
    cols = [col for z in _designs(data) for col in _layout(z, period, key.params.slots)]
    total = sum(len(c) for c in cols) + (scaler is not None)
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
    encrypted_scaler = None if scaler is None else encrypt_scaler(scaler, key)
    if progress is not None:
        progress(total, total)
    meta = {"created": _now(), "classes": list(dataset.classes)}
    return EncryptedDataset(
        tuple(out),
        dataset.num_samples,
        dataset.num_features,
        period,
        key,
        meta,
        dataset.num_outputs,
        encrypted_scaler,
    )


def _outputs(model: Classifier) -> list[LogisticModel]:
    return [model] if isinstance(model, LogisticModel) else list(model.models)


def encrypt_model(
    model: Classifier,
    key: crypto.Key,
    *,
    scaler: crypto.EncryptedArrays | None = None,
    progress: Progress | None = None,
) -> EncryptedModel:
    """Encrypt a plaintext model (inverse of :func:`decrypt_model`).

    ``scaler`` marks the coefficients as standardized coordinates of that encrypted scaler
    (the zero model a trainer starts from on a standardized encrypted dataset).
    """
    beta = np.concatenate([m.to_vector() for m in _outputs(model)])
    cts = []
    for i, value in enumerate(beta):
        cts.append(encrypt_constant(float(value), key))
        if progress is not None:
            progress(i + 1, beta.size)
    meta: dict[str, Any] = {"created": _now(), "trained_iterations": 0}
    if isinstance(model, OneVsRestModel) and model.classes is not None:
        meta["classes"] = list(model.classes)
    outputs = 1 if isinstance(model, LogisticModel) else model.num_classes
    return EncryptedModel(tuple(cts), 1.0, key, meta, outputs, scaler, norm_bound(model))


def _classes(meta: dict[str, Any], outputs: int) -> tuple[float, ...] | None:
    raw = meta.get("classes")
    if (
        isinstance(raw, list)
        and len(raw) == outputs
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in raw)
    ):
        return tuple(float(c) for c in raw)
    return None


def decrypt_model(enc: EncryptedModel, key: crypto.Key) -> Classifier:
    """Decrypt with the private key (the slot average reduces CKKS noise).

    When the model carries its data owner's encrypted scaler, the scaler is decrypted and
    folded in, so the model works on raw rows (docs/design.md §4.6).

    Raises
    ------
    KeyTypeError
        When ``key`` is public.
    KeyMismatchError
        When the model was encrypted under another key.
    CiphertextFormatError
        When the decrypted coefficients are not finite or the scaler is not valid.

    """
    beta = _coefficients(
        enc,
        key,
        "decrypt the model",
        "the decrypted model holds NaN or infinite coefficients: its ciphertexts or public "
        "scale were altered, or training ran past the parameters' range.",
    )
    blocks = beta.reshape(enc.outputs, -1)
    model: Classifier
    if enc.outputs == 1:
        model = LogisticModel.from_vector(blocks[0])
    else:
        model = OneVsRestModel.from_matrix(
            blocks[:, 1:], blocks[:, 0], _classes(enc.meta, enc.outputs)
        )
    if enc.scaler is not None:
        model = fold_scaler(model, decrypt_scaler(enc.scaler, key, enc.num_features))
    return model


def _coefficients(
    enc: EncryptedModel, key: crypto.Key, purpose: str, not_finite: str
) -> npt.NDArray[np.float64]:
    """The model's decrypted coefficients (private key of the model's key pair, finite)."""
    key.require_private(purpose)
    if key.fingerprint != enc.key.fingerprint:
        raise KeyMismatchError(enc.key.fingerprint, key.fingerprint, "encrypted model")
    beta = np.array([float(np.mean(ct.decrypt(key))) for ct in enc.coefficients]) * enc.scale
    if not np.all(np.isfinite(beta)):
        raise CiphertextFormatError(not_finite)
    return beta


def refresh_model(
    enc: EncryptedModel, key: crypto.Key, *, progress: Progress | None = None
) -> EncryptedModel:
    """Key holder's refresh: decrypt the coefficients and encrypt them again at level 0.

    CKKS without bootstrapping runs out of levels after a few iterations; the key holder is
    entitled to the model anyway, so she decrypts it (without folding the scaler: the model
    stays in the coordinates it trains in) and encrypts it afresh, with a new public
    :func:`~.algorithm.norm_bound`. The trainer then continues with the full depth
    (docs/design.md §4.6, the refresh round trip). Inverse: nothing to undo, the
    coefficients are unchanged up to CKKS noise. The result is meant to be saved
    (:func:`save_encrypted`) and sent: the trainer loads it with the public key, whose
    evaluation keys training needs (the private key file holds none).

    Raises
    ------
    KeyTypeError
        When ``key`` is public.
    KeyMismatchError
        When the model was encrypted under another key.
    CiphertextFormatError
        When the coefficients do not decrypt to finite values.

    """
    beta = _coefficients(
        enc,
        key,
        "refresh the model",
        "the model holds NaN or infinite coefficients after decryption: its ciphertexts "
        "or public scale were altered, or training ran past the parameters' range; "
        "train again from the last good model.",
    )
    cts = []
    for i, value in enumerate(beta):
        cts.append(encrypt_constant(float(value), key))
        if progress is not None:
            progress(i + 1, beta.size)
    blocks = beta.reshape(enc.outputs, -1)
    plain: Classifier = (
        LogisticModel.from_vector(blocks[0])
        if enc.outputs == 1
        else OneVsRestModel.from_matrix(blocks[:, 1:], blocks[:, 0])
    )
    meta = {**enc.meta, "refreshed": _now()}
    return EncryptedModel(
        tuple(cts), 1.0, enc.key, meta, enc.outputs, enc.scaler, norm_bound(plain)
    )


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


def _check_header(header: dict[str, Any], key: crypto.Key, what: str) -> None:
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


def load_encrypted_dataset(path: str | os.PathLike[str], key: crypto.Key) -> EncryptedDataset:
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
    outputs = _outputs_field(header, what)
    meta = _meta(header, what)
    columns = outputs * (d + 1)
    blobs, scaler = _split_scaler(header, blobs, key, what, d)
    if len(blobs) != columns * chunks:
        raise CiphertextFormatError(
            f"{path}: {len(blobs)} ciphertexts, expected {columns * chunks} "
            f"({columns} columns x {chunks} chunks)."
        )
    cts = [Ciphertext.from_bytes(b, key, 0) for b in blobs]
    cols = tuple(tuple(cts[j * chunks : (j + 1) * chunks]) for j in range(columns))
    return EncryptedDataset(cols, n, d, period, key, meta, outputs, scaler)


def _outputs_field(header: dict[str, Any], what: str) -> int:
    outputs = header.get("outputs", 1)
    if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs == 2:
        raise _bad(what, "outputs", outputs, f"1 (binary) or 3..{MAX_CLASSES} (classes)")
    if not 1 <= outputs <= MAX_CLASSES:
        raise _bad(what, "outputs", outputs, f"1 (binary) or 3..{MAX_CLASSES} (classes)")
    return outputs


def _split_scaler(
    header: dict[str, Any], blobs: list[bytes], key: crypto.Key, what: str, num_features: int
) -> tuple[list[bytes], crypto.EncryptedArrays | None]:
    """Separate and validate the encrypted scaler's ciphertexts (the last blobs)."""
    if "scaler" not in header:
        return blobs, None
    raw = header["scaler"]
    if not isinstance(raw, dict) or set(raw) != {"header", "chunks"}:
        raise _bad(what, "scaler", raw, "an object with 'header' and 'chunks'")
    chunks = raw["chunks"]
    if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= len(blobs):
        raise _bad(what, "scaler.chunks", chunks, f"an integer in [1, {len(blobs)}]")
    enc = key.from_header_and_chunks(
        raw["header"], blobs[-chunks:], what=f"{what}, encrypted scaler"
    )
    layout = enc.layout
    expected = ((SCALER_ARRAY,), ((8 * num_features,),), ("uint16",))
    if (layout.names, layout.shapes, layout.dtypes) != expected:
        raise _bad(
            what,
            "scaler.header.layout",
            {"names": layout.names, "shapes": layout.shapes, "dtypes": layout.dtypes},
            f"one uint16 array {SCALER_ARRAY!r} of {8 * num_features} words",
        )
    return blobs[:-chunks], enc


def load_encrypted_model(path: str | os.PathLike[str], key: crypto.Key) -> EncryptedModel:
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
    outputs = _outputs_field(header, what)
    shape = header.get("shape")
    if shape != _model_shape(outputs, d):
        raise _bad(
            what, "shape", shape, f"{_model_shape(outputs, d)} (outputs x bias and {d} weights)"
        )
    scale = _field(header, "scale", what)
    if not finite_number(scale) or not 0 < scale <= MAX_SCALE:
        raise _bad(what, "scale", scale, f"a finite number in (0, {MAX_SCALE:g}]")
    levels = _field(header, "levels", what)
    depth = key.params.depth
    if (
        not isinstance(levels, list)
        or len(levels) != outputs * (d + 1)
        or any(isinstance(lv, bool) or not isinstance(lv, int) for lv in levels)
        or any(not 0 <= lv <= depth for lv in levels)
    ):
        raise _bad(
            what,
            "levels",
            levels,
            f"{outputs * (d + 1)} integers in [0, {depth}] (the key's depth)",
        )
    bound = header.get("norm_bound")
    if bound is not None and (
        isinstance(bound, bool)
        or not isinstance(bound, int | float)
        or not (bound == 0 or (0 < bound <= MAX_NORM_BOUND and math.log2(bound).is_integer()))
    ):
        raise _bad(what, "norm_bound", bound, f"0 or a power of two up to {MAX_NORM_BOUND:g}")
    meta = _meta(header, what)
    blobs, scaler = _split_scaler(header, blobs, key, what, d)
    if len(blobs) != outputs * (d + 1):
        raise CiphertextFormatError(
            f"{path}: {len(blobs)} ciphertexts for {outputs} x ({d} features + bias)."
        )
    cts = tuple(Ciphertext.from_bytes(b, key, lv) for b, lv in zip(blobs, levels, strict=True))
    return EncryptedModel(
        cts, float(scale), key, meta, outputs, scaler, None if bound is None else float(bound)
    )


def _read(path: str | os.PathLike[str], kind: str, what: str) -> tuple[dict[str, Any], list[bytes]]:
    p = Path(path)
    if not p.is_file():
        raise CiphertextFormatError(container.not_a_file(p, what))
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


def _linear(cts: Sequence[Ciphertext], matrix: npt.NDArray[np.float64]) -> list[Ciphertext]:
    """``out_j = sum_k matrix[j, k] cts[k]`` with plaintext scalars (one level)."""
    return [sum_all([cts[k] * float(v) for k, v in enumerate(row) if v != 0.0]) for row in matrix]


def _check_scalers(design: EncryptedDataset | PlainDesign, model: EncryptedModel) -> None:
    """The model's coordinates must be those the data is in (docs/design.md §4.6)."""
    if isinstance(design, PlainDesign):
        if model.scaler is not None:
            raise UnsupportedOperationError(
                "this encrypted model is in the standardized coordinates of another data "
                "owner's encrypted scaler, so it cannot be trained on plaintext data; train it "
                "on that owner's encrypted dataset, or ask the key holder to decrypt it first."
            )
        return
    if design.scaler is None and model.scaler is None:
        return
    if design.scaler is not None and model.scaler is None:
        raise UnsupportedOperationError(
            "the encrypted dataset was standardized by its owner with a scaler only the key "
            "holder can read, so an encrypted model in raw coordinates cannot start from it. "
            "Train from zero weights (no --encrypted-model), or let the data owner train the "
            "model on her plaintext data (--dataset) or encrypt her data with "
            "--no-standardize."
        )
    if (
        design.scaler is None
        or model.scaler is None
        or design.scaler.serialized_chunks() != model.scaler.serialized_chunks()
    ):
        raise UnsupportedOperationError(
            "the encrypted model was trained on data standardized with another scaler than "
            "this encrypted dataset's; continue training only on the dataset it came from."
        )


def train_encrypted(
    design: EncryptedDataset | PlainDesign,
    model: EncryptedModel,
    *,
    iterations: int,
    learning_rate: float | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> EncryptedModel:
    """Run the algorithm of :func:`~.algorithm.train_plaintext` on encrypted weights.

    Parameters
    ----------
    design : EncryptedDataset or PlainDesign
        Encrypted data (scenario 1) or the computing party's own plaintext data (scenario 2).
    model : EncryptedModel
        Starting weights, encrypted under the same key as ``design`` (if encrypted), with
        one block per output (one-vs-rest).
    iterations : int
        Nesterov iterations; each uses two multiplicative levels.
    learning_rate : float, optional
        Step size; :func:`~.algorithm.default_learning_rate` of the feature count by
        default (converges for standardized features).
    on_step : callable, optional
        ``on_step(step, done, total)`` after each coefficient of each iteration; ``step``
        counts iterations over all outputs (``output * iterations + iteration``).
    on_notice : callable, optional
        Receives a sentence for the person training (never stored in the model): on
        plaintext data, when the start was shrunk to fit the sigmoid approximation
        (:func:`~.algorithm.start_shrink`), or carries no size bound to check.

    Returns
    -------
    EncryptedModel
        The trained model, still encrypted; only the key holder can decrypt it. Trained on a
        standardized encrypted dataset it carries the dataset's encrypted scaler; trained on
        standardized plaintext data it is already mapped back to raw coordinates.

    Raises
    ------
    FeatureMismatchError
        When the model and the data have different numbers of features or outputs.
    UnsupportedOperationError
        When the key's parameters lack the depth for ``iterations``, or the model and the
        data are in different coordinates (see :func:`_check_scalers`).

    """
    if learning_rate is None:
        learning_rate = default_learning_rate(design.num_features)
    check_training_settings(iterations, learning_rate)
    if model.num_features != design.num_features:
        raise FeatureMismatchError(
            f"the encrypted model has {model.num_features} features but the data has "
            f"{design.num_features}; use data with the columns the model was built for."
        )
    if model.outputs != design.outputs:
        raise FeatureMismatchError(
            f"the encrypted model has {model.outputs} output(s) but the data needs "
            f"{design.outputs} (1 for two classes, one per class above two); use a model "
            "built for the data's classes."
        )
    key = model.key
    encrypted = isinstance(design, EncryptedDataset)
    if isinstance(design, EncryptedDataset) and design.key.fingerprint != key.fingerprint:
        raise KeyMismatchError(design.key.fingerprint, key.fingerprint, "encrypted dataset")
    _check_scalers(design, model)
    need = levels_needed(iterations, model, encrypted)
    if need > key.params.depth:
        fit = key.params.depth - max(model.level, 1 if encrypted and model.scale != 1 else 0)
        fit //= LEVELS_PER_ITERATION
        raise UnsupportedOperationError(
            f"{iterations} iterations need {need} multiplicative levels, but the key's "
            f"parameters ({key.params.name}: N={key.params.poly_modulus_degree}, depth "
            f"{key.params.depth}) allow {key.params.depth} and this model already used "
            f"{model.level}. Train at most {max(fit, 0)} iterations, or {more_depth(iterations)}"
        )
    shrink = _start_shrink(design, model, on_notice)
    fold = None
    if isinstance(design, PlainDesign) and design.scaler is not None:
        fold = _folding(design.scaler)
    coefficients: list[Ciphertext] = []
    for output in range(design.outputs):

        def step(k: int, done: int, total: int, output: int = output) -> None:
            if on_step is not None:
                on_step(output * iterations + k, done, total)

        raw = folded = None
        if isinstance(design, PlainDesign) and fold is not None:
            d1 = design.num_features + 1
            raw = design.raw_columns[output * d1 : (output + 1) * d1]
            folded = design.folded_columns[output * d1 : (output + 1) * d1]
        coefficients += _train_block(
            list(design.design(output)),
            model.block(output),
            model.scale,
            design,
            iterations,
            learning_rate,
            step,
            fold,
            raw,
            folded,
            shrink,
        )
    meta: dict[str, Any] = {
        "created": _now(),
        "trained_iterations": int(model.meta.get("trained_iterations", 0)) + iterations,
        "learning_rate": learning_rate,
        "samples": design.num_samples,
        "algorithm": "nesterov-logistic-sigmoid3",
    }
    classes = design.meta.get("classes") if isinstance(design, EncryptedDataset) else design.classes
    if design.outputs > 1 and classes is not None:
        meta["classes"] = list(classes)
    s = math.sqrt(learning_rate / design.num_samples)
    scaler = design.scaler if isinstance(design, EncryptedDataset) else None
    return EncryptedModel(tuple(coefficients), s, key, meta, design.outputs, scaler)


def _start_shrink(
    design: EncryptedDataset | PlainDesign,
    model: EncryptedModel,
    on_notice: Callable[[str], None] | None,
) -> float:
    """Factor applied to a start on plaintext rows so its scores fit the approximation."""
    if not isinstance(design, PlainDesign):
        return 1.0  # zero start or a model trained on this very encrypted dataset
    trained = model.meta.get("trained_iterations", 0)
    if isinstance(trained, int) and not isinstance(trained, bool) and trained > 0:
        # A continuation (trained, refreshed, trained again): cifer's training left its
        # scores where the convex loss put them; the raw-row bound below is far too loose
        # for a trained model (it would undo the training). Only fresh starts are checked.
        return 1.0
    notice = on_notice or (lambda _msg: None)
    if model.bound is None:
        notice(
            "the encrypted model carries no public size bound (it was written before cifer "
            "recorded one), so its scores on your rows cannot be checked against the range "
            f"+-{START_SCORE_LIMIT:g} where the sigmoid's approximation holds; if the result "
            "is poor, ask the key holder to run `cifer securetrain refresh` on it (which "
            "records the bound) and train again."
        )
        return 1.0
    factor = start_shrink(model.bound, design.row_norm)
    if factor < 1.0:
        notice(
            f"the starting model (norm up to {model.bound:g}) may score up to "
            f"+-{model.bound * design.row_norm:.4g} on your rows (largest row norm "
            f"{design.row_norm:.4g}), beyond the +-{START_SCORE_LIMIT:g} where the sigmoid's "
            f"approximation 1/2 + x/4 holds; it was shrunk by {factor:.3g} before training, "
            "which keeps its predictions. Standardize the inputs the model was built for, "
            "or start from zeros, to avoid this."
        )
    return factor


def _train_block(
    columns: list[Column],
    weights: list[Ciphertext],
    model_scale: float,
    design: EncryptedDataset | PlainDesign,
    iterations: int,
    learning_rate: float,
    on_step: Callable[[int, int, int], None],
    fold: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None,
    raw: Sequence[Column] | None,
    folded: Sequence[Column] | None,
    shrink: float = 1.0,
) -> list[Ciphertext]:
    """Train one output's ``[bias, weight...]``; returns the coefficients divided by ``s``.

    With ``fold = (M, M^-1)`` (standardized plaintext data, a raw-coordinate model) the first
    scores use the ``raw`` design, the Nesterov point is converted with ``M^-1`` and the last
    gradient uses the ``folded`` columns, so the result is in raw coordinates again.
    """
    n, period = design.num_samples, design.period
    a0, a1 = SIGMOID_COEFFS
    s = math.sqrt(learning_rate / n)
    etas = nesterov_etas(iterations)
    d1 = len(columns)
    ratio = model_scale * shrink / s
    u = [w * ratio for w in weights] if fold is None else _linear(weights, fold[1] * ratio)
    b = u  # current beta / s
    for k, eta in enumerate(etas):
        last = k == iterations - 1
        on_step(k, 0, d1)
        if k == 0:
            src, src_scale = weights, model_scale * shrink
            inputs = list(raw) if raw is not None else columns
        else:
            src, src_scale, inputs = u, s, columns
        zt = [_scaled(col, src_scale) for col in inputs]
        chunks = len(columns[0])
        t = [sum_all([src[j] * zt[j][c] for j in range(d1)]) for c in range(chunks)]
        m = 1.0 if last else 1.0 - eta
        c0, c1 = s * m * a0, -s * m * a1
        outs = list(folded) if (last and folded is not None) else columns
        grads: list[Ciphertext] = []
        for j, col in enumerate(outs):
            parts = []
            for c in range(chunks):
                z = col[c]
                parts.append(t[c] * (z * c1) + z * c0)
            grads.append(sum_all(parts).window_sum(period))
            on_step(k, j + 1, d1)
        if last:
            base = _linear(u, fold[0]) if fold is not None else u
            b = [base[j] + grads[j] for j in range(d1)]
            u = b
        elif eta == 0.0:
            new_b = [u[j] + grads[j] for j in range(d1)]
            u, b = new_b, new_b
        else:
            new_u = [u[j] * (1.0 - eta) + grads[j] + b[j] * eta for j in range(d1)]
            b = [u[j] + grads[j] * (1.0 / (1.0 - eta)) for j in range(d1)]
            u = new_u
    return b
