"""One API over both schemes: CKKS/BFV (:mod:`.ckks`) and Paillier (:mod:`.paillier`).

Every key implements one interface, :class:`SchemeKey` (``encrypt``, ``decrypt``,
``from_bytes``, ``fingerprint``, ``has_reserved_slots``, ...), as cryptography's key classes
do; the crypto layer's public functions (``crypto.encrypt``, ``decrypt``, ``aggregate``,
``to_bytes``/``from_bytes``, the bundles and records) call its methods, so that the
protocol, the client mod and the strategies never name a scheme (docs/design.md §3, §4.8).
:func:`load_key` is the one loader of every key file. A Paillier key file is recognized by
its container kind (read from the header only); every other file goes to the CKKS loader
and its messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeGuard, TypeVar, overload

import numpy.typing as npt

from cifer_flwr.constants import KIND_ENCRYPTED_ARRAYS, KIND_ENCRYPTED_BUNDLE, KIND_PAILLIER_ARRAYS
from cifer_flwr.crypto import ckks, container, keys, paillier
from cifer_flwr.crypto.ckks import EncryptedArrays
from cifer_flwr.crypto.headers import check_part_name
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.paillier import PaillierArrays, PaillierKey, PaillierParams
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.crypto.validation import max_ciphertext_bytes as _ckks_max_bytes
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    LayoutMismatchError,
    UnsupportedOperationError,
)

__all__ = [
    "AnyEncrypted",
    "AnyKey",
    "AnyParams",
    "SchemeKey",
    "add",
    "aggregate",
    "bundle_from_bytes",
    "bundle_to_bytes",
    "decrypt",
    "encrypt",
    "from_bytes",
    "from_header_and_chunks",
    "generate_key_pair",
    "has_exact_sums",
    "has_reserved_slots",
    "load_key",
    "load_private_key",
    "load_public_key",
    "max_ciphertext_bytes",
    "to_bytes",
    "with_meta",
]


class SchemeKey(Protocol):
    """The scheme interface every key implements.

    CKKS and ``packed`` (BFV) by :class:`~cifer_flwr.crypto.keys.Key`, Paillier by
    :class:`PaillierKey`. Code above the crypto layer calls these methods and properties
    and never names a scheme (docs/design.md §3); a key comes from the one loader,
    :func:`load_key` (or :func:`load_private_key` / :func:`load_public_key`, which also
    check the kind).
    """

    @property
    def params(self) -> CkksParams | PaillierParams:
        """The parameter preset the key was made for."""

    @property
    def fingerprint(self) -> str:
        """Hash of the public material (equal for a private key and its public key)."""

    @property
    def short_fingerprint(self) -> str:
        """First 12 hex digits of the fingerprint, for messages."""

    @property
    def is_private(self) -> bool:
        """Whether the key can decrypt."""

    @property
    def scheme(self) -> str:
        """``"ckks"``, ``"bfv"`` (preset ``packed``) or ``"paillier"``."""

    @property
    def has_reserved_slots(self) -> bool:
        """Ciphertexts can carry SecureFed's integrity values (§4.4)."""

    @property
    def exact_sums(self) -> bool:
        """Sums are exact packed integers, as secure aggregation's masks need (§4.9)."""

    def public(self) -> SchemeKey:
        """The public part (same fingerprint, cannot decrypt)."""

    def require_private(self, action: str = ...) -> None:
        """Raise ``KeyTypeError`` unless the key holds a secret key."""

    def require_public(self, holder: str = ...) -> None:
        """Raise ``KeyTypeError`` if the key holds a secret key."""

    def to_bytes(self) -> bytes:
        """The key file's bytes."""

    def max_ciphertext_bytes(self) -> int:
        """Largest serialized ciphertext (reply size bounds)."""

    def encrypt(
        self,
        arrays: Mapping[str, npt.ArrayLike],
        *,
        weight: float = ...,
        meta: Mapping[str, Any] | None = ...,
        reserved: int = ...,
        fill: npt.ArrayLike | None = ...,
        summands: int = ...,
        mask: npt.ArrayLike | None = ...,
    ) -> EncryptedArrays | PaillierArrays:
        """Encrypt named arrays times ``weight`` (see :func:`encrypt`)."""

    def decrypt(self, enc: Any, *, divisor: float = ...) -> dict[str, npt.NDArray[Any]]:
        """Decrypt to named arrays divided by ``divisor`` (see :func:`decrypt`)."""

    def from_bytes(self, data: bytes) -> EncryptedArrays | PaillierArrays:
        """Parse a serialized container, validating everything (docs/design.md §5)."""

    def from_header_and_chunks(
        self,
        header: Mapping[str, Any],
        chunks: Sequence[bytes],
        *,
        what: str = ...,
        container: bool = ...,
        defer: bool | None = ...,
    ) -> EncryptedArrays | PaillierArrays:
        """Rebuild one encrypted part from its header and ciphertext bytes (validated)."""


#: A key of either scheme (each implements :class:`SchemeKey`).
AnyKey = Key | PaillierKey
# mypy checks that both key classes implement the interface
_CKKS_KEY: type[SchemeKey] = Key
_PAILLIER_KEY: type[SchemeKey] = PaillierKey


def has_reserved_slots(key: Key | PaillierKey) -> TypeGuard[Key]:
    """Whether ``key``'s ciphertexts have reserved slots (SecureFed's integrity values).

    ``key.has_reserved_slots``, as a type guard: after it, the type checker knows the key
    encrypts slot vectors (CKKS or ``packed``).
    """
    return key.has_reserved_slots


def has_exact_sums(key: Key | PaillierKey) -> TypeGuard[Key]:
    """Whether ``key`` sums exact packed integers (secure aggregation's masks, §4.9).

    ``key.exact_sums``, as a type guard (the ``packed`` preset).
    """
    return key.exact_sums


#: Encrypted arrays of either scheme.
AnyEncrypted = EncryptedArrays | PaillierArrays
#: Parameters of either scheme.
AnyParams = CkksParams | PaillierParams

_E = TypeVar("_E", bound=EncryptedArrays | PaillierArrays)

#: Most parts a bundle may hold.
_MAX_PARTS = 64


# --------------------------------------------------------------------------- keys
def _is_paillier_file(path: str | os.PathLike[str]) -> bool:
    try:
        return paillier.key_file_scheme(path) == "paillier"
    except KeyFileError:  # not readable / not a key file: the CKKS loader says why
        return False


def load_key(path: str | os.PathLike[str]) -> Key | PaillierKey:
    """Load a public or private key file of either scheme (validated, docs/design.md §5)."""
    return paillier.load_key(path) if _is_paillier_file(path) else keys.load_key(path)


def load_private_key(path: str | os.PathLike[str]) -> Key | PaillierKey:
    """Load a private key file of either scheme; a public key raises ``KeyTypeError``."""
    if _is_paillier_file(path):
        return paillier.load_private_key(path)
    return keys.load_private_key(path)


def load_public_key(
    path: str | os.PathLike[str], *, holder: str = "the server"
) -> Key | PaillierKey:
    """Load a public key file of either scheme; a secret key raises ``KeyTypeError``."""
    if _is_paillier_file(path):
        return paillier.load_public_key(path, holder=holder)
    return keys.load_public_key(path, holder=holder)


def generate_key_pair(
    preset: str, directory: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Generate a key pair of the preset's scheme and write ``private.key`` / ``public.key``.

    ``paillier`` / ``paillier-3072`` make a Paillier pair, every other preset a CKKS (or
    ``packed`` BFV) pair. Returns ``(private, public)`` paths.
    """
    if paillier.is_paillier_preset(preset):
        return paillier.write_key_pair(paillier.generate_key(preset), directory, force=force)
    return keys.write_key_pair(keys.generate_key(preset), directory, force=force)


def max_ciphertext_bytes(params: CkksParams | PaillierParams) -> int:
    """Largest serialized ciphertext of the parameters' scheme (reply size bounds)."""
    if isinstance(params, PaillierParams):
        return params.ciphertext_bytes
    return _ckks_max_bytes(params)


# --------------------------------------------------------------------------- arrays
@overload
def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: Key,
    *,
    weight: float = ...,
    meta: Mapping[str, Any] | None = ...,
    reserved: int = ...,
    fill: npt.ArrayLike | None = ...,
    summands: int = ...,
    mask: npt.ArrayLike | None = ...,
) -> EncryptedArrays: ...
@overload
def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: PaillierKey,
    *,
    weight: float = ...,
    meta: Mapping[str, Any] | None = ...,
    reserved: int = ...,
    fill: npt.ArrayLike | None = ...,
    summands: int = ...,
    mask: npt.ArrayLike | None = ...,
) -> PaillierArrays: ...
@overload
def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: Key | PaillierKey,
    *,
    weight: float = ...,
    meta: Mapping[str, Any] | None = ...,
    reserved: int = ...,
    fill: npt.ArrayLike | None = ...,
    summands: int = ...,
    mask: npt.ArrayLike | None = ...,
) -> EncryptedArrays | PaillierArrays: ...
def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: Key | PaillierKey,
    *,
    weight: float = 1.0,
    meta: Mapping[str, Any] | None = None,
    reserved: int = 0,
    fill: npt.ArrayLike | None = None,
    summands: int = 1,
    mask: npt.ArrayLike | None = None,
) -> EncryptedArrays | PaillierArrays:
    """Encrypt named arrays multiplied by ``weight`` under ``key`` (either scheme).

    CKKS / ``packed``: :func:`cifer_flwr.crypto.ckks.encrypt`. Paillier: quantized with
    unbiased stochastic rounding on ``[-bound, bound]`` and packed
    (:func:`cifer_flwr.crypto.paillier.encrypt`); ``summands`` (the cohort) must fit the
    preset's headroom (``params.max_summands``, 4096 for ``paillier``), and values beyond
    ``bound`` are clipped and counted in the result's local ``clipped``, like ``packed``
    (docs/design.md §4.7-4.8). Paillier has no reserved slots (SecureFed needs CKKS or
    ``packed``).

    Raises
    ------
    ConfigError
        Paillier: ``summands`` outside ``1..params.max_summands``.
    UnsupportedOperationError
        Paillier: ``reserved`` slots or ``fill`` values were asked for.

    """
    return key.encrypt(
        arrays,
        weight=weight,
        meta=meta,
        reserved=reserved,
        fill=fill,
        summands=summands,
        mask=mask,
    )


def decrypt(
    enc: EncryptedArrays | PaillierArrays, key: Key | PaillierKey, *, divisor: float = 1.0
) -> dict[str, npt.NDArray[Any]]:
    """Decrypt to the original names, shapes and dtypes, dividing by ``divisor``.

    Raises
    ------
    KeyTypeError
        For a public key.
    KeyMismatchError
        When ``enc`` was encrypted under another key (or scheme).

    """
    return key.decrypt(enc, divisor=divisor)


@overload
def aggregate(
    items: Sequence[EncryptedArrays], weights: Sequence[float] | None = ...
) -> EncryptedArrays: ...
@overload
def aggregate(
    items: Sequence[PaillierArrays], weights: Sequence[float] | None = ...
) -> PaillierArrays: ...
@overload
def aggregate(
    items: Sequence[EncryptedArrays | PaillierArrays], weights: Sequence[float] | None = ...
) -> EncryptedArrays | PaillierArrays: ...
def aggregate(
    items: Sequence[EncryptedArrays | PaillierArrays], weights: Sequence[float] | None = None
) -> EncryptedArrays | PaillierArrays:
    """Homomorphic (weighted) sum of encrypted arrays of one key and layout.

    Paillier sums (ciphertext products) need no key argument: the objects carry their
    public key. Plaintext ``weights`` are CKKS-only (apply them when encrypting).

    Raises
    ------
    KeyMismatchError, LayoutMismatchError
        When the items do not belong together (another key, scheme or layout).
    UnsupportedOperationError
        For ``weights`` with Paillier, or a sum beyond a Paillier preset's headroom.

    """
    if not items:
        raise ConfigError("aggregate() needs at least one encrypted object, got none.")
    first = items[0]
    cks = [it for it in items if isinstance(it, EncryptedArrays)]
    pls = [it for it in items if isinstance(it, PaillierArrays)]
    if cks and pls:
        other = pls[0] if isinstance(first, EncryptedArrays) else cks[0]
        raise KeyMismatchError(other.fingerprint, first.fingerprint, "encrypted arrays")
    if pls:
        if weights is not None:
            raise UnsupportedOperationError(
                "Paillier aggregation takes no plaintext weights; encrypt with "
                "encrypt(..., weight=w) on the client (cifer's protocol)."
            )
        return paillier.aggregate(pls)
    return ckks.aggregate(cks, weights)


@overload
def add(a: EncryptedArrays, b: EncryptedArrays) -> EncryptedArrays: ...
@overload
def add(a: PaillierArrays, b: PaillierArrays) -> PaillierArrays: ...
@overload
def add(
    a: EncryptedArrays | PaillierArrays, b: EncryptedArrays | PaillierArrays
) -> EncryptedArrays | PaillierArrays: ...
def add(
    a: EncryptedArrays | PaillierArrays, b: EncryptedArrays | PaillierArrays
) -> EncryptedArrays | PaillierArrays:
    """Homomorphic sum of two encrypted objects of the same key and layout."""
    return aggregate([a, b])


def with_meta(enc: _E, **meta: Any) -> _E:
    """Return a copy of ``enc`` with extra public annotations."""
    return replace(enc, meta={**enc.meta, **meta})


def to_bytes(enc: EncryptedArrays | PaillierArrays) -> bytes:
    """Serialize into a cifer container (inverse of :func:`from_bytes`)."""
    return paillier.to_bytes(enc) if isinstance(enc, PaillierArrays) else ckks.to_bytes(enc)


@overload
def from_bytes(data: bytes, key: Key) -> EncryptedArrays: ...
@overload
def from_bytes(data: bytes, key: PaillierKey) -> PaillierArrays: ...
@overload
def from_bytes(data: bytes, key: Key | PaillierKey) -> EncryptedArrays | PaillierArrays: ...
def from_bytes(data: bytes, key: Key | PaillierKey) -> EncryptedArrays | PaillierArrays:
    """Parse :func:`to_bytes` output with ``key`` (public suffices), validating everything."""
    return key.from_bytes(data)


@overload
def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: Key,
    *,
    what: str = ...,
    container: bool = ...,
    defer: bool | None = ...,
) -> EncryptedArrays: ...
@overload
def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: PaillierKey,
    *,
    what: str = ...,
    container: bool = ...,
    defer: bool | None = ...,
) -> PaillierArrays: ...
@overload
def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: Key | PaillierKey,
    *,
    what: str = ...,
    container: bool = ...,
    defer: bool | None = ...,
) -> EncryptedArrays | PaillierArrays: ...
def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: Key | PaillierKey,
    *,
    what: str = "encrypted arrays",
    container: bool = False,
    defer: bool | None = None,
) -> EncryptedArrays | PaillierArrays:
    """Rebuild one encrypted part from its header and ciphertext bytes (either scheme).

    The parser of ``key``'s scheme validates every field and ciphertext before any of it
    reaches TenSEAL or the big-integer arithmetic (docs/design.md §5). ``defer``: see
    :func:`cifer_flwr.crypto.ckks.from_header_and_chunks` (Paillier parses eagerly).
    """
    return key.from_header_and_chunks(header, chunks, what=what, container=container, defer=defer)


# --------------------------------------------------------------------------- bundles
def bundle_to_bytes(parts: Mapping[str, EncryptedArrays | PaillierArrays]) -> bytes:
    """Serialize named encrypted parts into one container (inverse of :func:`bundle_from_bytes`)."""
    names = list(parts)
    blobs: list[bytes] = []
    headers = []
    for name in names:
        chunks = parts[name].serialized_chunks()
        headers.append({"name": name, "header": parts[name].header(), "chunks": len(chunks)})
        blobs.extend(chunks)
    return container.pack(KIND_ENCRYPTED_BUNDLE, {"parts": headers}, blobs)


@overload
def bundle_from_bytes(data: bytes, key: Key) -> dict[str, EncryptedArrays]: ...
@overload
def bundle_from_bytes(data: bytes, key: PaillierKey) -> dict[str, PaillierArrays]: ...
@overload
def bundle_from_bytes(
    data: bytes, key: Key | PaillierKey
) -> dict[str, EncryptedArrays | PaillierArrays]: ...
def bundle_from_bytes(data: bytes, key: Key | PaillierKey) -> dict[str, Any]:
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
    if kind in (KIND_ENCRYPTED_ARRAYS, KIND_PAILLIER_ARRAYS):
        return {"model": from_bytes(data, key)}
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
    out: dict[str, Any] = {}
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
