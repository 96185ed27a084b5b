"""Encrypt, decrypt, aggregate and serialize named arrays as chunked CKKS vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts

from cifer_flwr.constants import KIND_ENCRYPTED_ARRAYS, KIND_ENCRYPTED_BUNDLE
from cifer_flwr.crypto import container
from cifer_flwr.crypto.encoding import Layout, decode, encode, set_reserved
from cifer_flwr.crypto.headers import check_part_name, parse_arrays_header
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.crypto.validation import load_vector, max_ciphertext_bytes
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    KeyMismatchError,
    LayoutMismatchError,
    UnsupportedOperationError,
    ValueRangeError,
)

__all__ = [
    "EncryptedArrays",
    "add",
    "aggregate",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "decrypt",
    "decrypt_chunks",
    "encrypt",
    "from_bytes",
    "from_header_and_chunks",
    "load_vector",
    "max_ciphertext_bytes",
    "to_bytes",
]

#: Most parts a bundle may hold.
_MAX_PARTS = 64


@dataclass(frozen=True)
class EncryptedArrays:
    """Named arrays encrypted as one chunked stream of CKKS ciphertexts.

    Attributes
    ----------
    layout : Layout
        Names, shapes and dtypes of the plaintext arrays.
    vectors : tuple
        The ciphertexts (TenSEAL ``CKKSVector``), ``params.slots`` values each.
    fingerprint : str
        Fingerprint of the key the ciphertexts belong to.
    params : CkksParams
        CKKS parameters of that key.
    weight : float
        Sum of the weights the encrypting parties applied; divide a decrypted sum by it
        to get the weighted mean.
    count : int
        Number of encryptions summed into this object.
    meta : dict
        Public, JSON-serializable annotations (never secret).

    """

    layout: Layout
    vectors: tuple[Any, ...] = field(repr=False)
    fingerprint: str
    params: CkksParams
    weight: float = 1.0
    count: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_values(self) -> int:
        """Number of plaintext values."""
        return self.layout.total

    def header(self) -> dict[str, Any]:
        """Public metadata that travels with the ciphertexts."""
        return {
            "layout": self.layout.to_dict(),
            "fingerprint": self.fingerprint,
            "params": self.params.to_dict(),
            "weight": self.weight,
            "count": self.count,
            "meta": dict(self.meta),
            "num_chunks": len(self.vectors),
        }

    def serialized_chunks(self) -> list[bytes]:
        """The ciphertexts as SEAL bytes (no context attached)."""
        return [v.serialize() for v in self.vectors]


def _check_key(fingerprint: str, key: Key, what: str) -> None:
    if fingerprint != key.fingerprint:
        raise KeyMismatchError(fingerprint, key.fingerprint, what)


def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: Key,
    *,
    weight: float = 1.0,
    meta: Mapping[str, Any] | None = None,
    reserved: int = 0,
    fill: npt.ArrayLike | None = None,
) -> EncryptedArrays:
    """Encrypt named arrays, multiplied by ``weight``, into one chunked ciphertext stream.

    A private key encrypts symmetrically (faster, less noise); a public key encrypts with
    the public key. Inverse: :func:`decrypt` (with ``divisor=weight``).

    ``reserved`` slots at the end of every ciphertext carry no data but the values of
    ``fill`` (shape ``(num_chunks, reserved)``, placed as given, *not* multiplied by
    ``weight``; zeros when omitted): SecureFed's per-chunk integrity values
    (docs/design.md §4.4). :func:`decrypt_chunks` reads them back.

    Raises
    ------
    NonFiniteError
        For NaN or infinite values.
    ValueRangeError
        When ``weight * value`` exceeds the preset's safe magnitude ``params.max_abs``.

    """
    if not np.isfinite(weight) or weight <= 0:
        raise ValueRangeError(f"weight must be a finite positive number, got {weight}.")
    params = key.params
    layout, chunks = encode(arrays, params.slots, reserved=reserved)
    chunks = set_reserved(layout, [c * weight for c in chunks], fill)
    peak = max((float(np.abs(c).max()) for c in chunks), default=0.0)
    if peak > params.max_abs:
        raise ValueRangeError(
            f"a value of magnitude {peak:.6g} (after weighting by {weight:g}) exceeds the safe "
            f"range +-{params.max_abs:g} of preset {params.name!r}; scale the values down "
            "(e.g. a smaller weight) or choose a preset with a larger range ('precise')."
        )
    ctx = key.encryption_context()
    vectors = tuple(ts.ckks_vector(ctx, c.tolist()) for c in chunks)
    return EncryptedArrays(
        layout, vectors, key.fingerprint, params, float(weight), 1, dict(meta or {})
    )


def decrypt(enc: EncryptedArrays, key: Key, *, divisor: float = 1.0) -> dict[str, npt.NDArray[Any]]:
    """Decrypt to the original names, shapes and dtypes, dividing every value by ``divisor``.

    Raises
    ------
    KeyTypeError
        When ``key`` is public.
    KeyMismatchError
        When ``enc`` was encrypted under another key.

    """
    return decode(enc.layout, [c / divisor for c in decrypt_chunks(enc, key)])


def decrypt_chunks(enc: EncryptedArrays, key: Key) -> list[npt.NDArray[np.float64]]:
    """Decrypt every ciphertext to its raw float64 slot vector (reserved slots included).

    No division and no decoding: :func:`~cifer_flwr.crypto.encoding.decode` and
    :func:`~cifer_flwr.crypto.encoding.reserved_values` take it from there.

    Raises
    ------
    KeyTypeError
        When ``key`` is public.
    KeyMismatchError
        When ``enc`` was encrypted under another key.

    """
    key.require_private("decrypt")
    _check_key(enc.fingerprint, key, "encrypted arrays")
    ctx = key.context()
    plain = []
    for vec in enc.vectors:
        vec.link_context(ctx)
        plain.append(np.asarray(vec.decrypt(), dtype=np.float64))
    return plain


def _check_compatible(first: EncryptedArrays, other: EncryptedArrays) -> None:
    if other.fingerprint != first.fingerprint:
        raise KeyMismatchError(other.fingerprint, first.fingerprint, "encrypted arrays being added")
    if other.layout != first.layout:
        raise LayoutMismatchError(
            f"cannot add encrypted arrays with different layouts: {other.layout.names} / "
            f"{other.layout.shapes} vs {first.layout.names} / {first.layout.shapes}."
        )


def add(a: EncryptedArrays, b: EncryptedArrays) -> EncryptedArrays:
    """Homomorphic sum of two encrypted objects of the same key and layout."""
    return aggregate([a, b])


def aggregate(
    items: Sequence[EncryptedArrays], weights: Sequence[float] | None = None
) -> EncryptedArrays:
    """Homomorphic (weighted) sum of encrypted arrays; inputs are not modified.

    Parameters
    ----------
    items : sequence of EncryptedArrays
        Objects under the same key and layout.
    weights : sequence of float, optional
        Plaintext multipliers. They need one multiplicative level (``params.depth >= 1``);
        with additions-only presets apply the weight when encrypting
        (``encrypt(..., weight=w)``), which is what cifer's protocol does.

    Raises
    ------
    KeyMismatchError, LayoutMismatchError
        When the items do not belong together.
    UnsupportedOperationError
        For ``weights`` on a preset without a multiplicative level.

    """
    if not items:
        raise ConfigError("aggregate() needs at least one encrypted object, got none.")
    first = items[0]
    for other in items[1:]:
        _check_compatible(first, other)
    if weights is not None:
        if len(weights) != len(items):
            raise ConfigError(
                f"aggregate() got {len(weights)} weights for {len(items)} items; give one "
                "weight per item."
            )
        if first.params.depth < 1:
            raise UnsupportedOperationError(
                f"preset {first.params.name!r} has no multiplicative level, so the server "
                "cannot multiply ciphertexts by plaintext weights; encrypt with "
                "encrypt(..., weight=w) on the client (cifer's protocol) or use a preset with "
                "depth >= 1 such as 'nvflare'."
            )
    ws = [1.0] * len(items) if weights is None else [float(w) for w in weights]
    sums = []
    for idx in range(len(first.vectors)):
        terms = [
            it.vectors[idx] if weights is None else it.vectors[idx] * w
            for it, w in zip(items, ws, strict=True)
        ]
        # ``a + b`` allocates the accumulator (``copy()`` is ~1000x slower in TenSEAL);
        # only that fresh object is updated in place, never an input ciphertext.
        acc = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        for term in terms[2:]:
            acc.add_(term)
        sums.append(acc)
    return EncryptedArrays(
        first.layout,
        tuple(sums),
        first.fingerprint,
        first.params,
        sum(w * it.weight for w, it in zip(ws, items, strict=True)),
        sum(it.count for it in items),
        {},
    )


def to_bytes(enc: EncryptedArrays) -> bytes:
    """Serialize into a cifer container (inverse of :func:`from_bytes`)."""
    return container.pack(KIND_ENCRYPTED_ARRAYS, enc.header(), enc.serialized_chunks())


def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: Key,
    *,
    what: str = "encrypted arrays",
    container: bool = False,
) -> EncryptedArrays:
    """Rebuild encrypted arrays from their public header and ciphertext bytes.

    ``key`` may be public; it must have the fingerprint named in the header. Every header
    field is validated (:func:`~cifer_flwr.crypto.headers.parse_arrays_header`) and every
    ciphertext goes through :func:`~cifer_flwr.crypto.validation.load_vector`
    (docs/design.md §5). ``what`` names the object in error messages; ``container`` allows
    the container fields ``kind`` and ``blobs_sha256`` in the header.

    Raises
    ------
    KeyMismatchError
        When the header names another key.
    LayoutMismatchError
        When the layout needs a different number of ciphertexts than given.
    CiphertextFormatError
        When a header field or a ciphertext is malformed (wrong size, scale, level...).

    """
    head = parse_arrays_header(header, what=what, container=container)
    _check_key(head.fingerprint, key, what)
    if head.params != key.params:
        raise LayoutMismatchError(
            f"{what}: header parameters {head.params.to_dict()} differ from the key's "
            f"{key.params.to_dict()}; the sender uses another preset."
        )
    if len(chunks) != head.num_chunks:
        raise LayoutMismatchError(
            f"{what}: the layout ({head.layout.total} values) needs {head.num_chunks} "
            f"ciphertexts of {head.params.slots} slots, but {len(chunks)} were received."
        )
    vectors = []
    for i, blob in enumerate(chunks):
        vec = load_vector(blob, key, what=f"{what}, ciphertext {i} of {len(chunks)}")
        if vec.size() != head.params.slots:
            raise LayoutMismatchError(
                f"{what}: ciphertext {i} holds {vec.size()} values, expected {head.params.slots}."
            )
        vectors.append(vec)
    layout, fingerprint, params = head.layout, head.fingerprint, head.params
    weight, count, meta = head.weight, head.count, head.meta
    return EncryptedArrays(layout, tuple(vectors), fingerprint, params, weight, count, meta)


def from_bytes(data: bytes, key: Key) -> EncryptedArrays:
    """Parse :func:`to_bytes` output with ``key`` (public suffices)."""
    header, chunks = container.unpack(data, kind=KIND_ENCRYPTED_ARRAYS)
    return from_header_and_chunks(header, chunks, key, container=True)


def with_meta(enc: EncryptedArrays, **meta: Any) -> EncryptedArrays:
    """Return a copy of ``enc`` with extra public annotations."""
    return replace(enc, meta={**enc.meta, **meta})


def bundle_to_bytes(parts: Mapping[str, EncryptedArrays]) -> bytes:
    """Serialize named encrypted parts into one container (inverse of :func:`bundle_from_bytes`)."""
    names = list(parts)
    blobs: list[bytes] = []
    headers = []
    for name in names:
        chunks = parts[name].serialized_chunks()
        headers.append({"name": name, "header": parts[name].header(), "chunks": len(chunks)})
        blobs.extend(chunks)
    return container.pack(KIND_ENCRYPTED_BUNDLE, {"parts": headers}, blobs)


def bundle_from_bytes(data: bytes, key: Key) -> dict[str, EncryptedArrays]:
    """Parse :func:`bundle_to_bytes` output with ``key`` (public suffices).

    A plain :func:`to_bytes` container is accepted too and returned as part ``model``.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed container or bundle header (part names must be unique identifiers,
        chunk counts must add up to the blobs present), or a malformed part.

    """
    header, blobs = container.unpack(data)
    kind = header.get("kind")
    if kind == KIND_ENCRYPTED_ARRAYS:
        return {"model": from_header_and_chunks(header, blobs, key, container=True)}
    if kind != KIND_ENCRYPTED_BUNDLE:
        raise CiphertextFormatError(
            f"expected encrypted arrays or a bundle, found a {str(kind)[:60]!r} container."
        )
    unknown = sorted(str(k) for k in header if k not in ("parts", "kind", "blobs_sha256"))
    parts = header.get("parts")
    if unknown or not isinstance(parts, list) or not 1 <= len(parts) <= _MAX_PARTS:
        raise CiphertextFormatError(
            f"malformed bundle header: unknown fields {unknown[:5]}, parts "
            f"{type(parts).__name__} of {len(parts) if isinstance(parts, list) else 0}; "
            f"expected a list of 1..{_MAX_PARTS} parts."
        )
    out: dict[str, EncryptedArrays] = {}
    pos = 0
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or set(part) != {"name", "header", "chunks"}:
            raise CiphertextFormatError(
                f"malformed bundle header: part {index} is not an object with exactly "
                "name, header, chunks."
            )
        name = check_part_name(part["name"], what="bundle")
        n = part["chunks"]
        if name in out:
            raise CiphertextFormatError(f"malformed bundle header: part {name!r} appears twice.")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(blobs) - pos:
            raise LayoutMismatchError(
                f"bundle part {name!r} declares {n!r:.40} ciphertexts; "
                f"{len(blobs) - pos} remain in the container."
            )
        out[name] = from_header_and_chunks(
            part["header"], blobs[pos : pos + n], key, what=f"bundle part {name!r}"
        )
        pos += n
    if pos != len(blobs):
        raise LayoutMismatchError(f"bundle lists {pos} ciphertexts but holds {len(blobs)}.")
    return out
