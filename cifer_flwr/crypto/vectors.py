"""CKKS vectors of any length with element-wise arithmetic, for the HomoCryption API.

A :class:`CkksVector` is a plain 1-D vector of ``length`` values encrypted as consecutive
full-ring :class:`~cifer_flwr.crypto.linalg.Ciphertext` chunks (zero-padded). It supports
``ct + ct``, ``ct + plain``, ``ct * plain`` and ``ct * ct``. A product of two ciphertexts
has three polynomials until it is *relinearized* (with the key's relinearization keys) back
to two; :func:`multiply` does that at once unless asked not to, and :func:`relinearize`
does it later. Only relinearized vectors serialize (the validated loader accepts size-2
ciphertexts only, docs/design.md §5).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from cifer_flwr.constants import KIND_CKKS_VECTOR
from cifer_flwr.crypto import container
from cifer_flwr.crypto._protobuf import fields, length_delimited
from cifer_flwr.crypto.headers import check_fingerprint
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.linalg import Ciphertext, encrypt_periodic
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    KeyMismatchError,
    LayoutMismatchError,
    NonFiniteError,
    UnsupportedOperationError,
)

__all__ = [
    "MAX_LENGTH",
    "CkksVector",
    "add",
    "add_plain",
    "decrypt",
    "encrypt",
    "from_bytes",
    "multiply",
    "multiply_plain",
    "relinearize",
    "to_bytes",
]

#: Longest vector accepted from another party (2**26 values: a few GB of ciphertexts).
MAX_LENGTH = 1 << 26
_HEADER_FIELDS = frozenset({"scheme", "fingerprint", "length", "level", "kind", "blobs_sha256"})


@dataclass(frozen=True)
class CkksVector:
    """An encrypted 1-D vector: ``length`` values in full-ring CKKS chunks.

    Attributes
    ----------
    chunks : tuple of Ciphertext
        ``ceil(length / slots)`` ciphertexts, all at the same level.
    length : int
        Number of values.
    key : Key
        The key the chunks belong to (public suffices for arithmetic).
    relinearized : bool
        False only for the direct output of ``multiply(..., relinearize=False)``.

    """

    chunks: tuple[Ciphertext, ...]
    length: int
    key: Key
    relinearized: bool = True

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the key."""
        return self.key.fingerprint

    @property
    def level(self) -> int:
        """Multiplicative levels used so far."""
        return self.chunks[0].level

    @property
    def levels_left(self) -> int:
        """Multiplications still possible."""
        return self.chunks[0].levels_left


def _check_scheme(key: Key) -> None:
    if getattr(key.params, "is_bfv", False):
        raise UnsupportedOperationError(
            f"preset {key.params.name!r} is the BFV integer scheme; the HomoCryption CKKS "
            "vectors need a CKKS preset (e.g. generate keys with preset 'nvflare' or depth=2)."
        )


def _padded(values: npt.ArrayLike, slots: int, what: str) -> tuple[int, list[npt.NDArray[Any]]]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{what} holds NaN or infinite values; CKKS cannot encode them.")
    count = max(1, math.ceil(arr.size / slots))
    full = np.zeros(count * slots)
    full[: arr.size] = arr
    return int(arr.size), [full[i * slots : (i + 1) * slots] for i in range(count)]


def encrypt(values: npt.ArrayLike, key: Key) -> CkksVector:
    """Encrypt a vector (flattened) under ``key``; inverse: :func:`decrypt`.

    Raises
    ------
    NonFiniteError, ValueRangeError
        For NaN/inf or values beyond the preset's safe range.

    """
    _check_scheme(key)
    length, parts = _padded(values, key.params.slots, "the vector to encrypt")
    slots = key.params.slots
    chunks = tuple(encrypt_periodic(p, slots, key) for p in parts)
    return CkksVector(chunks, length, key)


def decrypt(vec: CkksVector, key: Key) -> npt.NDArray[np.float64]:
    """Decrypt to a float64 vector of ``vec.length`` values (private ``key``)."""
    key.require_private("decrypt")
    if key.fingerprint != vec.fingerprint:
        raise KeyMismatchError(vec.fingerprint, key.fingerprint, "CKKS vector")
    if not vec.relinearized:
        vec = relinearize(vec)
    out = np.concatenate([c.decrypt(key) for c in vec.chunks])
    return np.asarray(out[: vec.length], dtype=np.float64)


def _check_pair(a: CkksVector, b: CkksVector) -> None:
    if a.fingerprint != b.fingerprint:
        raise KeyMismatchError(b.fingerprint, a.fingerprint, "CKKS vector")
    if a.length != b.length:
        raise LayoutMismatchError(
            f"vectors of {a.length} and {b.length} values cannot be combined."
        )


def add(a: CkksVector, b: CkksVector) -> CkksVector:
    """Element-wise ``a + b`` of two encrypted vectors (no level used)."""
    _check_pair(a, b)
    a, b = relinearize(a), relinearize(b)
    chunks = tuple(x + y for x, y in zip(a.chunks, b.chunks, strict=True))
    return CkksVector(chunks, a.length, a.key)


def _plain_parts(vec: CkksVector, plain: npt.ArrayLike | float) -> list[Any]:
    if np.ndim(plain) == 0:
        return [float(np.asarray(plain, dtype=np.float64))] * len(vec.chunks)
    arr = np.asarray(plain, dtype=np.float64).ravel()
    if arr.size != vec.length:
        raise LayoutMismatchError(
            f"a plaintext of {arr.size} values cannot be combined with an encrypted vector of "
            f"{vec.length}; give a scalar or {vec.length} values."
        )
    return list(_padded(arr, vec.key.params.slots, "the plaintext")[1])


def add_plain(vec: CkksVector, plain: npt.ArrayLike | float) -> CkksVector:
    """Element-wise ``vec + plain`` (a scalar or a vector of ``vec.length`` values)."""
    vec = relinearize(vec)
    chunks = tuple(c + p for c, p in zip(vec.chunks, _plain_parts(vec, plain), strict=True))
    return CkksVector(chunks, vec.length, vec.key)


def multiply_plain(vec: CkksVector, plain: npt.ArrayLike | float) -> CkksVector:
    """Element-wise ``vec * plain`` (scalar or vector); uses one level."""
    vec = relinearize(vec)
    chunks = tuple(c * p for c, p in zip(vec.chunks, _plain_parts(vec, plain), strict=True))
    return CkksVector(chunks, vec.length, vec.key)


def multiply(a: CkksVector, b: CkksVector, *, relinearize_now: bool = True) -> CkksVector:
    """Element-wise ``a * b`` of two encrypted vectors; uses one level.

    The raw product has three polynomials. With ``relinearize_now`` (default) it is
    relinearized at once; otherwise call :func:`relinearize` before serializing it (a
    chain of additions of raw products then needs one relinearization at the end).

    Raises
    ------
    UnsupportedOperationError
        When the key has no relinearization keys or no level is left.

    """
    _check_pair(a, b)
    a, b = relinearize(a), relinearize(b)
    ctx = a.key.context()
    if not ctx.has_relin_keys():
        raise UnsupportedOperationError(
            f"key {a.key.short_fingerprint} has no relinearization keys, so ciphertexts cannot "
            "be multiplied; generate the keys with relinearization keys (HomoCryption CKKS "
            "keys include them; `cifer keygen --relin`)."
        )
    previous = ctx.auto_relin
    ctx.auto_relin = False
    try:
        chunks = tuple(x * y for x, y in zip(a.chunks, b.chunks, strict=True))
    finally:
        ctx.auto_relin = previous
    raw = CkksVector(chunks, a.length, a.key, relinearized=False)
    return relinearize(raw) if relinearize_now else raw


def _relinearize_chunk(chunk: Ciphertext) -> Ciphertext:
    key = chunk.key
    ctx = key.context()
    vec = chunk._vec
    (seal_ct,) = vec.ciphertext()
    if seal_ct.size() == 2:
        return chunk
    evaluator = sealapi.Evaluator(ctx.seal_context().data)
    evaluator.relinearize_inplace(seal_ct, ctx.relin_keys().data)
    fd, tmp = tempfile.mkstemp(prefix=".cifer-relin-")
    os.close(fd)
    try:
        seal_ct.save(tmp)
        seal_bytes = Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)
    # CKKSVectorProto: 1 sizes, 2 ciphertexts, 3 scale; only the ciphertext changes.
    kept = [raw for number, _, raw in fields(vec.serialize()) if number != 2]
    proto = kept[0] + length_delimited(2, seal_bytes) + b"".join(kept[1:])
    new = ts.ckks_vector_from(ctx, proto)
    return Ciphertext(new, key, chunk.level)


def relinearize(vec: CkksVector) -> CkksVector:
    """Bring every chunk of a ciphertext product back to two polynomials (no level used).

    Already relinearized vectors are returned unchanged.
    """
    if vec.relinearized:
        return vec
    return replace(vec, chunks=tuple(_relinearize_chunk(c) for c in vec.chunks), relinearized=True)


def to_bytes(vec: CkksVector) -> bytes:
    """Serialize into a cifer container (inverse of :func:`from_bytes`).

    Raises
    ------
    UnsupportedOperationError
        For an unrelinearized product (call :func:`relinearize` first).

    """
    if not vec.relinearized:
        raise UnsupportedOperationError(
            "a ciphertext product must be relinearized before it is serialized; call "
            "relinearize(ct) first."
        )
    header = {
        "scheme": "ckks",
        "fingerprint": vec.fingerprint,
        "length": vec.length,
        "level": vec.level,
    }
    return container.pack(KIND_CKKS_VECTOR, header, [c.to_bytes() for c in vec.chunks])


def from_bytes(data: bytes, key: Key, *, what: str = "CKKS vector") -> CkksVector:
    """Parse :func:`to_bytes` output with ``key`` (public suffices), validating everything.

    Raises
    ------
    KeyMismatchError
        When the vector was made under another key.
    CiphertextFormatError
        For a malformed container or header, or a ciphertext the validated loader refuses.

    """
    _check_scheme(key)
    header, blobs = container.unpack(data, kind=KIND_CKKS_VECTOR)
    if set(header) != _HEADER_FIELDS or header.get("scheme") != "ckks":
        raise CiphertextFormatError(
            f"{what}: header fields {sorted(str(k) for k in header)[:8]}, expected "
            f"{sorted(_HEADER_FIELDS)} with scheme 'ckks'."
        )
    fingerprint = check_fingerprint(header["fingerprint"], what=what)
    if fingerprint != key.fingerprint:
        raise KeyMismatchError(fingerprint, key.fingerprint, what)
    length, level = header["length"], header["level"]
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise CiphertextFormatError(f"{what}: length {length!r:.40}, expected 0..{MAX_LENGTH}.")
    expected = max(1, math.ceil(length / key.params.slots))
    if len(blobs) != expected:
        raise CiphertextFormatError(
            f"{what}: {len(blobs)} ciphertexts for {length} values, expected {expected}."
        )
    chunks = tuple(
        Ciphertext.from_bytes(b, key, level, what=f"{what}, ciphertext {i} of {expected}")
        for i, b in enumerate(blobs)
    )
    return CkksVector(chunks, length, key)
