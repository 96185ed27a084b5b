"""Encrypt, decrypt, aggregate and serialize named arrays as chunked CKKS vectors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import tenseal as ts

from cifer_flwr.constants import KIND_ENCRYPTED_ARRAYS
from cifer_flwr.crypto import container
from cifer_flwr.crypto._seal import seeded_bfv_vectors, seeded_vectors
from cifer_flwr.crypto.encoding import Layout, decode, encode, set_reserved
from cifer_flwr.crypto.headers import parse_arrays_header
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.crypto.validation import (
    load_chunk,
    load_vector,
    max_ciphertext_bytes,
)
from cifer_flwr.crypto.workers import shared_workers
from cifer_flwr.exceptions import (
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
    "decrypt",
    "decrypt_chunks",
    "deferred_blobs",
    "dequantize",
    "encrypt",
    "from_bytes",
    "from_header_and_chunks",
    "load_vector",
    "max_ciphertext_bytes",
    "quantize",
    "subtract_mask",
    "to_bytes",
    "with_wire",
]


@dataclass(frozen=True)
class EncryptedArrays:
    """Named arrays encrypted as one chunked stream of CKKS ciphertexts.

    Attributes
    ----------
    layout : Layout
        Names, shapes and dtypes of the plaintext arrays.
    vectors : sequence
        The ciphertexts (TenSEAL ``CKKSVector``), ``params.slots`` values each. For a fresh
        symmetric encryption they are parsed from ``wire`` on first access.
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
    wire : tuple of bytes or None
        The serialized ciphertexts when they were made seeded (a key holder's symmetric
        encryption, docs/design.md §4.7): what travels instead of ``vectors.serialize()``.
    clipped : int
        ``packed`` (BFV) only: how many values this encryption clipped to the summand
        bound (docs/design.md §4.7); local to the encrypting party, never serialized.

    """

    layout: Layout
    vectors: Sequence[Any] = field(repr=False)
    fingerprint: str
    params: CkksParams
    weight: float = 1.0
    count: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)
    wire: tuple[bytes, ...] | None = field(default=None, repr=False, compare=False)
    clipped: int = field(default=0, compare=False)

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
        """The ciphertexts as TenSEAL bytes (no context attached); seeded when made so."""
        if self.wire is not None:
            return list(self.wire)
        return [v.serialize() for v in self.vectors]


class _CachedVectors(Sequence[Any]):
    """Vectors made from serialized bytes on first access, then kept."""

    def __init__(self, blobs: Sequence[bytes]) -> None:
        self.blobs = tuple(blobs)
        self._cache: list[Any] = [None] * len(self.blobs)

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    @property
    def touched(self) -> bool:
        """Whether some vector was already made in this process."""
        return any(v is not None for v in self._cache)

    def __len__(self) -> int:
        return len(self.blobs)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._cache[index] is None:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))


class _LazyVectors(_CachedVectors):
    """Vectors parsed on first access from the sender's own seeded bytes (trusted: ours)."""

    def __init__(self, blobs: Sequence[bytes], ctx: ts.Context, *, bfv: bool = False) -> None:
        super().__init__(blobs)
        self._ctx = ctx
        self._from = ts.bfv_vector_from if bfv else ts.ckks_vector_from

    def _load(self, index: int) -> Any:
        return self._from(self._ctx, self.blobs[index])


class _DeferredVectors(_CachedVectors):
    """Foreign vectors whose framing was checked but whose SEAL load is deferred.

    Any access validates the ciphertext with :func:`load_chunk` (the same checks as an
    eager parse); :func:`decrypt_chunks` instead hands the untouched bytes to the crypto
    workers, which validate and decrypt them in parallel (docs/design.md §6.1).
    """

    def __init__(self, blobs: Sequence[bytes], key: Key, what: str) -> None:
        super().__init__(blobs)
        self.what = what
        self._key = key

    def _load(self, index: int) -> Any:
        what = f"{self.what}, ciphertext {index} of {len(self.blobs)}"
        return load_chunk(self.blobs[index], self._key, what=what)


def deferred_blobs(enc: object) -> tuple[bytes, ...] | None:
    """The still unvalidated ciphertext bytes of a deferred parse, else ``None``.

    Set when :func:`from_header_and_chunks` was asked to ``defer`` the SEAL load (the
    server's parallel validate-and-sum takes them, docs/design.md §6.1).
    """
    vecs = enc.vectors if isinstance(enc, EncryptedArrays) else None
    if isinstance(vecs, _DeferredVectors) and not vecs.touched:
        return vecs.blobs
    return None


def _check_key(fingerprint: str, key: Key, what: str) -> None:
    if fingerprint != key.fingerprint:
        raise KeyMismatchError(fingerprint, key.fingerprint, what)


def quantize(
    chunk: npt.NDArray[np.float64],
    params: CkksParams,
    bound: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], int]:
    """Unbiased stochastic rounding of ``chunk`` to integer steps of ``params.precision``.

    ``q = floor(x / step + u)`` with ``u ~ U[0, 1)``, so ``E[q * step] = x`` and
    ``|q * step - x| < step``; then clipped to ``[-bound, bound]``. Inverse (up to the
    rounding): :func:`dequantize`. Returns the integers and how many values were clipped
    (docs/design.md §4.7).
    """
    scaled = np.asarray(chunk, np.float64) / params.precision
    q = np.floor(scaled + rng.random(scaled.shape))
    clipped = int(np.count_nonzero(np.abs(q) > bound))
    return np.clip(q, -bound, bound).astype(np.int64), clipped


def dequantize(q: npt.ArrayLike, params: CkksParams) -> npt.NDArray[np.float64]:
    """Integers (a decrypted BFV sum) back to values: ``q * params.precision``."""
    return np.asarray(q, np.float64) * params.precision


def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: Key,
    *,
    weight: float = 1.0,
    meta: Mapping[str, Any] | None = None,
    reserved: int = 0,
    fill: npt.ArrayLike | None = None,
    summands: int = 1,
    mask: npt.ArrayLike | None = None,
) -> EncryptedArrays:
    """Encrypt named arrays, multiplied by ``weight``, into one chunked ciphertext stream.

    A private key encrypts symmetrically (faster, less noise); a public key encrypts with
    the public key. Inverse: :func:`decrypt` (with ``divisor=weight``).

    ``reserved`` slots at the end of every ciphertext carry no data but the values of
    ``fill`` (shape ``(num_chunks, reserved)``, placed as given, *not* multiplied by
    ``weight``; zeros when omitted): SecureFed's per-chunk integrity values
    (docs/design.md §4.4). :func:`decrypt_chunks` reads them back.

    ``packed`` (BFV) presets quantize ``weight * value`` with :func:`quantize` instead: each
    encryption may use ``1 / summands`` of the plain modulus' range (pass the cohort size
    for what will be summed; the default 1 suits a part that is never summed), so a sum of
    that many never wraps; values beyond are clipped and counted in the result's
    ``clipped`` (docs/design.md §4.7). ``summands`` is ignored by CKKS.

    ``mask`` (``packed`` only; ``num_chunks * slots`` integers in ``[0, t)``, chunk by chunk)
    is added to the quantized integers modulo the plain modulus ``t`` after clipping: the
    secure-aggregation masks of docs/design.md §4.9. Inverse on the sum:
    :func:`subtract_mask`.

    Raises
    ------
    NonFiniteError
        For NaN or infinite values.
    ValueRangeError
        When ``weight * value`` exceeds the preset's safe magnitude ``params.max_abs``
        (CKKS; BFV clips and counts instead).

    """
    if not np.isfinite(weight) or weight <= 0:
        raise ValueRangeError(f"weight must be a finite positive number, got {weight}.")
    params = key.params
    layout, chunks = encode(arrays, params.slots, reserved=reserved)
    chunks = set_reserved(layout, [c * weight for c in chunks], fill)
    if params.is_bfv:
        masked = None if mask is None else _mask_rows(mask, len(chunks), params)
        return _encrypt_bfv(layout, chunks, key, float(weight), dict(meta or {}), summands, masked)
    if mask is not None:
        raise UnsupportedOperationError(
            f"preset {params.name!r} is CKKS, whose sums are approximate: masks need the exact "
            "sums of preset 'packed' (docs/design.md §4.9)."
        )
    peak = max((float(np.abs(c).max()) for c in chunks), default=0.0)
    if peak > params.max_abs:
        raise ValueRangeError(
            f"a value of magnitude {peak:.6g} (after weighting by {weight:g}) exceeds the safe "
            f"range +-{params.max_abs:g} of preset {params.name!r}; scale the values down "
            "(e.g. a smaller weight) or choose a preset with a larger range ('precise')."
        )
    ctx = key.encryption_context()
    workers = shared_workers(key, len(chunks))
    if workers is not None:  # large models: every core (docs/design.md §6.1)
        wire = tuple(workers.encrypt(chunks))
    elif key.is_private:
        # a key holder's ciphertexts travel seeded: half the bytes (docs/design.md §4.7)
        wire = tuple(seeded_vectors(ctx, chunks, params))
    else:
        vectors = tuple(ts.ckks_vector(ctx, c.tolist()) for c in chunks)
        return EncryptedArrays(
            layout, vectors, key.fingerprint, params, float(weight), 1, dict(meta or {})
        )
    return EncryptedArrays(
        layout,
        _LazyVectors(wire, ctx),
        key.fingerprint,
        params,
        float(weight),
        1,
        dict(meta or {}),
        wire,
    )


def _encrypt_bfv(
    layout: Layout,
    chunks: list[npt.NDArray[np.float64]],
    key: Key,
    weight: float,
    meta: dict[str, Any],
    summands: int,
    mask: npt.NDArray[np.int64] | None = None,
) -> EncryptedArrays:
    params = key.params
    count = int(summands)
    if not 1 <= count <= params.max_summands:
        raise ConfigError(
            f"summands must be 1..{params.max_summands} for preset {params.name!r} (the "
            f"cohort it was made for), got {summands}; use smaller cohorts."
        )
    bound = params.summand_bound(count)
    rng = np.random.default_rng()
    ints, clipped = [], 0
    for index, chunk in enumerate(chunks):
        q, n = quantize(chunk, params, bound, rng)
        ints.append(q if mask is None else _centered(q + mask[index], params.plain_modulus))
        clipped += n
    ctx = key.encryption_context()
    workers = shared_workers(key, len(ints))
    if workers is not None:  # large models: every core (docs/design.md §6.1)
        wire = tuple(workers.encrypt(ints))
    elif key.is_private:
        wire = tuple(seeded_bfv_vectors(ctx, ints))
    else:
        vectors = tuple(ts.bfv_vector(ctx, q.tolist()) for q in ints)
        return EncryptedArrays(
            layout, vectors, key.fingerprint, params, weight, 1, meta, None, clipped
        )
    lazy = _LazyVectors(wire, ctx, bfv=True)
    return EncryptedArrays(layout, lazy, key.fingerprint, params, weight, 1, meta, wire, clipped)


def _centered(values: npt.NDArray[np.int64], modulus: int) -> npt.NDArray[np.int64]:
    """The signed representative of ``values mod modulus`` for values in ``(-t/2, 3t/2)``.

    Both callers stay in that range (a clipped quantized value plus a mask in ``[0, t)``; a
    residual in ``[0, t)``), so one conditional subtraction replaces a modulo.
    """
    return np.where(values > modulus // 2, values - modulus, values).astype(np.int64)


def _mask_rows(mask: npt.ArrayLike, chunks: int, params: CkksParams) -> npt.NDArray[np.int64]:
    """A mask as ``(chunks, slots)`` integers in ``[0, t)``; any other shape is refused."""
    arr = np.asarray(mask)
    if arr.dtype.kind not in "iu" or arr.size != chunks * params.slots:
        raise ConfigError(
            f"a mask must be {chunks} x {params.slots} integers (one per slot of every "
            f"ciphertext), got {arr.size} values of dtype {arr.dtype}."
        )
    rows = arr.astype(np.int64).reshape(chunks, params.slots)
    if rows.size and (rows.min() < 0 or rows.max() >= params.plain_modulus):
        raise ConfigError(f"mask values must lie in [0, {params.plain_modulus}).")
    return rows


def subtract_mask(enc: EncryptedArrays, residual: npt.ArrayLike) -> EncryptedArrays:
    """The encrypted sum minus the plaintext ``residual`` mask (``packed`` only; exact).

    ``residual`` holds ``num_chunks * slots`` integers mod ``t`` (docs/design.md §4.9); each
    ciphertext gets one plaintext subtraction (no noise added, no key needed). Inverse of
    adding the masks in :func:`encrypt`; the input is not modified.
    """
    if not enc.params.is_bfv:
        raise UnsupportedOperationError(
            f"preset {enc.params.name!r} has no exact sums; masks need preset 'packed'."
        )
    rows = _mask_rows(residual, len(enc.vectors), enc.params)
    modulus = enc.params.plain_modulus
    vectors = tuple(
        vec - _centered(row, modulus).tolist() for vec, row in zip(enc.vectors, rows, strict=True)
    )
    return replace(enc, vectors=vectors, wire=None)


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
    blobs = deferred_blobs(enc)
    workers = None if blobs is None else shared_workers(key, len(blobs))
    if blobs is not None and workers is not None:
        assert isinstance(enc.vectors, _DeferredVectors)
        raw = workers.decrypt(blobs, what=enc.vectors.what)
        if enc.params.is_bfv:
            return [dequantize(r, enc.params) for r in raw]
        return raw
    ctx = key.context()
    plain = []
    for vec in enc.vectors:
        vec.link_context(ctx)
        if enc.params.is_bfv:  # centered integers of the exact sum
            plain.append(dequantize(np.asarray(vec.decrypt(), dtype=np.int64), enc.params))
        else:
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
    defer: bool | None = None,
) -> EncryptedArrays:
    """Rebuild encrypted arrays from their public header and ciphertext bytes.

    ``key`` may be public; it must have the fingerprint named in the header. Every header
    field is validated (:func:`~cifer_flwr.crypto.headers.parse_arrays_header`) and every
    ciphertext goes through :func:`~cifer_flwr.crypto.validation.load_vector`
    (docs/design.md §5). ``what`` names the object in error messages; ``container`` allows
    the container fields ``kind`` and ``blobs_sha256`` in the header.

    ``defer=True`` leaves every check of the ciphertexts (after the header's) to the first
    access of a vector, to :func:`decrypt_chunks` (which then validates and decrypts in the
    crypto workers) or to a server's parallel validate-and-sum (:func:`deferred_blobs`,
    docs/design.md §6.1): each of them validates with
    :func:`~cifer_flwr.crypto.validation.load_chunk` before using a ciphertext.
    ``defer=None`` defers when a private key opens enough ciphertexts for the workers to
    pay (:func:`~cifer_flwr.crypto.workers.shared_workers`).

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
    if defer is None:
        defer = key.is_private and shared_workers(key, len(chunks)) is not None
    vectors: Sequence[Any]
    if defer:
        vectors = _DeferredVectors(chunks, key, what)
    else:
        vectors = tuple(
            load_chunk(blob, key, what=f"{what}, ciphertext {i} of {len(chunks)}")
            for i, blob in enumerate(chunks)
        )
    layout, fingerprint, params = head.layout, head.fingerprint, head.params
    weight, count, meta = head.weight, head.count, head.meta
    return EncryptedArrays(layout, vectors, fingerprint, params, weight, count, meta)


def from_bytes(data: bytes, key: Key) -> EncryptedArrays:
    """Parse :func:`to_bytes` output with ``key`` (public suffices)."""
    header, chunks = container.unpack(data, kind=KIND_ENCRYPTED_ARRAYS)
    return from_header_and_chunks(header, chunks, key, container=True)


def with_wire(enc: EncryptedArrays, blobs: Sequence[bytes], key: Key) -> EncryptedArrays:
    """``enc`` (its header) with ciphertexts this party made: serialized bytes it trusts.

    For the sums a party's own crypto workers return (docs/design.md §6.1): the bytes
    travel as they are and are parsed only if an operation needs the vectors. Never for
    bytes another party sent (those go through :func:`from_header_and_chunks`).

    Raises
    ------
    LayoutMismatchError
        When the number of ciphertexts does not fit the layout.

    """
    _check_key(enc.fingerprint, key, "encrypted arrays")
    expected = enc.layout.num_chunks(enc.params.slots)
    if len(blobs) != expected:
        raise LayoutMismatchError(
            f"{len(blobs)} ciphertexts for a layout of {enc.layout.total} values; expected "
            f"{expected}."
        )
    wire = tuple(blobs)
    lazy = _LazyVectors(wire, key.context(), bfv=enc.params.is_bfv)
    return replace(enc, vectors=lazy, wire=wire)


def with_meta(enc: EncryptedArrays, **meta: Any) -> EncryptedArrays:
    """Return a copy of ``enc`` with extra public annotations."""
    return replace(enc, meta={**enc.meta, **meta})
