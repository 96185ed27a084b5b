"""Paillier: quantized values packed many to a plaintext, summed exactly (docs/design.md §4.8).

The second scheme next to CKKS. Paillier is *additively* homomorphic on integers modulo
``n``: the product of two ciphertexts decrypts to the sum of their plaintexts, and a
ciphertext raised to an integer ``k`` decrypts to ``k`` times its plaintext. One
ciphertext holds one integer of ``key_bits - 1`` bits, so cifer packs many values into it
the way BatchCrypt (Zhang et al., USENIX ATC 2020) does:

1. **quantize**: a value ``v`` in ``[-bound, bound]`` becomes the integer
   ``x = round((v + bound) / step)`` in ``[0, 2**value_bits - 1]``, with
   ``step = 2 * bound / (2**value_bits - 1)`` (offset encoding: no sign bit, no borrows);
2. **pack**: ``slots = (key_bits - 1) // (value_bits + headroom_bits)`` integers go into one
   plaintext, each in a field of ``value_bits + headroom_bits`` bits. The ``headroom_bits``
   zero bits above each value leave room for the sum of up to ``2**headroom_bits`` values,
   so adding ciphertexts never carries from one field into the next and the packed sum
   stays below ``n``;
3. the server **adds** ciphertexts (multiplies them modulo ``n**2``);
4. the key holder **decrypts**, unpacks the fields and dequantizes:
   ``sum v = sum x * step - count * bound`` where ``count`` (public, in the header) is the
   number of encodings summed.

Every object tracks ``count``; an operation that would let a field reach ``2**(value_bits +
headroom_bits)`` is refused before it happens, never silently wrapped.

Key holders (who hold ``p`` and ``q``) compute the random mask ``r**n mod n**2`` with the
Chinese remainder theorem, about twice as fast as with the public key alone. ``phe``
(python-paillier) generates the keys and decrypts; when ``gmpy2`` is installed both ``phe``
and this module use it (about 10x faster than Python integers).

Everything another party sends is validated before use (docs/design.md §5): key files
(integer sizes, ``n``'s bit length equals the declared key size, ``p * q == n`` with ``p``
and ``q`` probable primes of half the size), ciphertexts (fixed width, in ``[1, n**2)``,
coprime to ``n``), headers (every field's type and range) and decrypted plaintexts (every
field within what ``count`` allows, padding fields zero).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import os
import secrets
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from cifer_flwr.constants import (
    CONTAINER_MAGIC,
    KIND_KEY,
    KIND_PAILLIER_ARRAYS,
    KIND_PAILLIER_KEY,
)
from cifer_flwr.crypto import container
from cifer_flwr.crypto import keys as _keys
from cifer_flwr.crypto.encoding import Layout, flatten, unflatten
from cifer_flwr.crypto.headers import check_fingerprint, check_meta, finite_number, parse_layout
from cifer_flwr.crypto.keys import (
    check_private_key_permissions,
    fingerprint_of,
)
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    KeyTypeError,
    LayoutMismatchError,
    UnknownPresetError,
    UnsupportedOperationError,
    ValueRangeError,
)
from cifer_flwr.extras import require


def _phe() -> Any:
    """The ``phe.paillier`` module; phe is the optional ``paillier`` extra."""
    return require("phe.paillier", purpose="the Paillier scheme")


def _phe_util() -> Any:
    return require("phe.util", purpose="the Paillier scheme")


try:  # optional accelerator; phe picks it up by itself too
    _gmpy2: Any = importlib.import_module("gmpy2")
except ImportError:  # pragma: no cover - depends on the environment
    _gmpy2 = None

__all__ = [
    "HAVE_GMPY2",
    "MAX_KEY_FILE_BYTES",
    "PRESETS",
    "PaillierArrays",
    "PaillierKey",
    "PaillierParams",
    "add",
    "add_plain",
    "aggregate",
    "bench_preset",
    "decrypt",
    "dequantize",
    "encrypt",
    "from_bytes",
    "from_header_and_chunks",
    "generate_key",
    "get_preset",
    "is_paillier_preset",
    "key_file_scheme",
    "load_key",
    "load_private_key",
    "load_public_key",
    "mul_scalar",
    "pack",
    "quantize",
    "to_bytes",
    "unpack",
    "write_key_pair",
]


#: Whether gmpy2 accelerates the big-integer arithmetic.
HAVE_GMPY2 = _gmpy2 is not None
#: A Paillier key file is a few kB; anything larger is refused before it is read.
MAX_KEY_FILE_BYTES = 64 * 1024
_FORMAT_VERSION = 1
_SCHEME = "paillier"
#: Key sizes accepted and their classical security level (NIST SP 800-57 for RSA-type moduli).
#: 1024 bits is accepted only where a caller asks for it explicitly (tests, ``insecure=True``).
_SECURITY_BITS = {1024: 80, 2048: 112, 3072: 128, 4096: 152}
_MIN_SECURE_KEY_BITS = 2048
_KEY_HEADER_FIELDS = frozenset(
    {"format_version", "scheme", "private", "params", "fingerprint", "created"}
)
_CONTAINER_FIELDS = frozenset({"kind", "blobs_sha256"})
_ARRAYS_HEADER_FIELDS = frozenset(
    {"scheme", "layout", "fingerprint", "params", "weight", "count", "scale_bits", "meta"}
    | {"num_chunks"}
)
_MAX_WEIGHT = 1e15
#: Most fractional bits a scalar multiplication may add (2**-64 is far below any step).
_MAX_SCALE_BITS = 64
_PRIME_ROUNDS = 40
_SMALL_PRIMES = tuple(
    p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))
)

FloatArray = npt.NDArray[np.float64]
Rounding = Literal["nearest", "stochastic"]


# --------------------------------------------------------------------------- integers
def _mpz(value: int) -> Any:
    """A big integer in the fastest available representation (gmpy2 ``mpz`` or ``int``)."""
    return _gmpy2.mpz(value) if _gmpy2 is not None else int(value)


def _powmod(base: Any, exponent: Any, modulus: Any) -> Any:
    if _gmpy2 is not None:
        return _gmpy2.powmod(base, exponent, modulus)
    return pow(int(base), int(exponent), int(modulus))


def _is_probable_prime(value: int) -> bool:
    if _gmpy2 is not None:
        return bool(_gmpy2.is_prime(_gmpy2.mpz(value), _PRIME_ROUNDS))
    return bool(_phe_util().is_prime(value, _PRIME_ROUNDS))


def _int_to_bytes(value: int, width: int) -> bytes:
    return int(value).to_bytes(width, "big")


def _strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class PaillierParams:
    """A validated Paillier key size and packing.

    Parameters
    ----------
    name : str
        Preset name, stored in key files and ciphertext headers.
    key_bits : int
        Bit length of the modulus ``n`` (2048, 3072 or 4096; 1024 only for tests).
    value_bits : int
        Bits of one quantized value: the precision (``step = 2 * bound / (2**value_bits - 1)``).
    headroom_bits : int
        Zero bits above each value: room for the sum of up to ``2**headroom_bits``
        encodings (clients) without a carry into the next field.
    bound : float
        Values are quantized on ``[-bound, bound]``; larger magnitudes are refused (or
        clipped and counted when the caller asks for clipping).
    description : str
        What the preset is for.

    """

    #: Scheme name (as ``CkksParams.scheme``); not a field: never in ``to_dict``.
    scheme: ClassVar[str] = _SCHEME

    name: str
    key_bits: int
    value_bits: int
    headroom_bits: int
    bound: float
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 64:
            raise ConfigError(f"Paillier preset name {self.name!r:.80}, expected 1..64 chars.")
        if not _strict_int(self.key_bits) or self.key_bits not in _SECURITY_BITS:
            raise ConfigError(
                f"Paillier key size {self.key_bits!r:.40} bits, expected one of "
                f"{sorted(_SECURITY_BITS)} (2048 or 3072 for real use)."
            )
        if not _strict_int(self.value_bits) or not 8 <= self.value_bits <= 48:
            raise ConfigError(f"value_bits {self.value_bits!r:.40}, expected 8..48.")
        if not _strict_int(self.headroom_bits) or not 1 <= self.headroom_bits <= 15:
            raise ConfigError(
                f"headroom_bits {self.headroom_bits!r:.40}, expected 1..15 (up to 32768 summands)."
            )
        bound = self.bound
        if not isinstance(bound, float) or not math.isfinite(bound) or not 0 < bound <= 2**20:
            raise ConfigError(f"bound {bound!r:.40}, expected a float in (0, 2**20].")

    @property
    def slot_bits(self) -> int:
        """Width of one packed field: the value bits plus the headroom bits."""
        return self.value_bits + self.headroom_bits

    @property
    def slots(self) -> int:
        """Number of values one ciphertext holds."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def step(self) -> float:
        """Quantization step: a fresh value is off by at most ``step / 2``."""
        return 2.0 * self.bound / float(2**self.value_bits - 1)

    @property
    def max_summands(self) -> int:
        """Most encodings a field can hold the sum of (``count`` never exceeds it)."""
        return int((2**self.slot_bits - 1) // (2**self.value_bits - 1))

    @property
    def quantized(self) -> bool:
        """Always true: values are quantized integers (as for the ``packed`` BFV preset)."""
        return True

    @property
    def max_abs(self) -> float:
        """Largest magnitude one encoding may take: ``bound`` (a sum may reach ``count`` x it)."""
        return self.bound

    @property
    def precision(self) -> float:
        """Quantization step (:attr:`step`), the name the CKKS parameters use."""
        return self.step

    @property
    def security_bits(self) -> int:
        """Classical security level of the key size (NIST SP 800-57)."""
        return _SECURITY_BITS[self.key_bits]

    @property
    def ciphertext_bytes(self) -> int:
        """Serialized size of one ciphertext (an integer below ``n**2``)."""
        return 2 * self.key_bits // 8

    def num_chunks(self, total: int) -> int:
        """Number of ciphertexts ``total`` values take (at least one)."""
        return max(1, math.ceil(total / self.slots))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PaillierParams:
        """Build parameters from :meth:`to_dict` output, validating every field."""
        expected = {"name", "key_bits", "value_bits", "headroom_bits", "bound", "description"}
        if not isinstance(data, dict) or set(data) != expected:
            keys = sorted(str(k) for k in data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(
                f"Paillier parameters {keys!r:.200}, expected exactly the fields "
                f"{sorted(expected)}."
            )
        description = data["description"]
        if not isinstance(description, str) or len(description) > 1024:
            raise ConfigError("Paillier parameter 'description' must be a string <= 1024 chars.")
        bound = data["bound"]
        if _strict_int(bound) and abs(bound) <= 2**20:
            bound = float(bound)
        return cls(
            data["name"],
            data["key_bits"],
            data["value_bits"],
            data["headroom_bits"],
            bound,
            description,
        )


#: Named Paillier presets (docs/design.md §4.8 explains the choice and the figures).
PRESETS: dict[str, PaillierParams] = {
    p.name: p
    for p in (
        PaillierParams(
            "paillier",
            2048,
            24,
            12,
            4.0,
            "2048-bit key (112-bit security), 56 values of 24 bits per ciphertext, sums of up "
            "to 4096 clients, values in [-4, 4] (step 4.8e-7).",
        ),
        PaillierParams(
            "paillier-3072",
            3072,
            24,
            12,
            4.0,
            "3072-bit key (128-bit security, as the CKKS presets), 85 values per ciphertext; "
            "about twice the encryption time of 'paillier'.",
        ),
    )
}


def is_paillier_preset(name: str) -> bool:
    """Whether ``name`` names a Paillier preset (rather than a CKKS one)."""
    return name in PRESETS


def get_preset(preset: str | PaillierParams) -> PaillierParams:
    """Return the Paillier parameters of a preset name (or the parameters themselves).

    Raises
    ------
    UnknownPresetError
        For a name that is not a Paillier preset.

    """
    if isinstance(preset, PaillierParams):
        return preset
    if preset not in PRESETS:
        raise UnknownPresetError(
            f"unknown Paillier preset {preset!r:.80}; choose one of {sorted(PRESETS)}."
        )
    return PRESETS[preset]


# --------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class PaillierKey:
    """A loaded Paillier key: public (``n``) or private (``n``, ``p``, ``q``).

    Use :func:`generate_key`, :func:`load_public_key` or :func:`load_private_key`.
    ``g`` is always ``n + 1`` (never stored, so never chosen by an attacker).

    Attributes
    ----------
    params : PaillierParams
        Key size and packing.
    fingerprint : str
        First 128 bits of the SHA-256 of the public material; equal for a private key and
        its public key.
    is_private : bool
        Whether the key can decrypt.
    n : int
        The public modulus.

    """

    scheme: ClassVar[str] = _SCHEME

    params: PaillierParams
    fingerprint: str
    is_private: bool
    n: int = field(repr=False)
    _p: int | None = field(default=None, repr=False)
    _q: int | None = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def short_fingerprint(self) -> str:
        """First 12 hex digits of the fingerprint, for log lines."""
        return self.fingerprint[:12]

    @property
    def public_bytes(self) -> bytes:
        """The public material: ``n`` as ``key_bits / 8`` big-endian bytes."""
        return _int_to_bytes(self.n, self.params.key_bits // 8)

    def public(self) -> PaillierKey:
        """Return the public part of this key (same fingerprint, cannot decrypt)."""
        return PaillierKey(self.params, self.fingerprint, False, self.n)

    def require_private(self, action: str = "decrypt") -> None:
        """Raise :class:`KeyTypeError` unless this key holds ``p`` and ``q``."""
        if not self.is_private:
            raise KeyTypeError(
                f"cannot {action} with a public Paillier key (fingerprint "
                f"{self.short_fingerprint}); give the private key file (keys/NAME/private.key)."
            )

    def require_public(self, holder: str = "the server") -> None:
        """Raise :class:`KeyTypeError` if this key holds the secret factors."""
        if self.is_private:
            raise KeyTypeError(
                f"{holder} must never hold a secret key, but a private Paillier key "
                f"(fingerprint {self.short_fingerprint}) was given; pass the public key file "
                "(keys/NAME/public.key) instead."
            )

    # ----------------------------------------------------------- the scheme interface
    # (crypto.SchemeKey, docs/design.md §3): the same methods as a CKKS / packed Key.

    @property
    def has_reserved_slots(self) -> bool:
        """Paillier ciphertexts carry no reserved slots (SecureFed needs CKKS or packed)."""
        return False

    @property
    def exact_sums(self) -> bool:
        """Sums are exact, but secure aggregation's masks need packed (BFV) slots (§4.9)."""
        return False

    def encrypt(
        self,
        arrays: Mapping[str, npt.ArrayLike],
        *,
        weight: float = 1.0,
        meta: Mapping[str, Any] | None = None,
        reserved: int = 0,
        fill: npt.ArrayLike | None = None,
        summands: int = 1,
        mask: npt.ArrayLike | None = None,
    ) -> PaillierArrays:
        """Quantize with unbiased stochastic rounding, clip to ``[-bound, bound]``, encrypt.

        ``summands`` (the cohort) must fit the preset's headroom (``params.max_summands``);
        values beyond ``bound`` are clipped and counted in the result's local ``clipped``
        (never in the public header), like ``packed`` (docs/design.md §4.7-4.8).

        Raises
        ------
        ConfigError
            ``summands`` outside ``1..params.max_summands``.
        UnsupportedOperationError
            For ``mask`` (secure aggregation), ``reserved`` slots or ``fill`` values.

        """
        if mask is not None:
            raise UnsupportedOperationError(
                "masks (secure aggregation) need the exact packed sums of preset 'packed'; "
                "Paillier keys cannot carry them (docs/design.md §4.9)."
            )
        if reserved or fill is not None:
            raise UnsupportedOperationError(
                f"Paillier ciphertexts have no reserved slots (asked for {reserved}); "
                "SecureFed's per-ciphertext integrity values need a CKKS or packed key "
                "(encryption.preset=default or packed), docs/design.md §4.4."
            )
        limit = self.params.max_summands
        if not 1 <= int(summands) <= limit:
            raise ConfigError(
                f"summands must be 1..{limit} for preset {self.params.name!r} (its headroom "
                f"bits hold the sum of that many updates), got {summands}; use smaller cohorts."
            )
        enc = encrypt(arrays, self, weight=weight, meta=meta, clip=True, rounding="stochastic")
        return replace(enc, meta=dict(meta or {}), clipped=int(enc.meta.get("clipped", 0)))

    def decrypt(self, enc: Any, *, divisor: float = 1.0) -> dict[str, npt.NDArray[Any]]:
        """Decrypt ``enc`` to named arrays divided by ``divisor``.

        Raises
        ------
        KeyTypeError
            For a public key.
        KeyMismatchError
            When ``enc`` was encrypted under another key or scheme.

        """
        if not isinstance(enc, PaillierArrays):
            raise KeyMismatchError(enc.fingerprint, self.fingerprint, "encrypted arrays")
        return decrypt(enc, self, divisor=divisor)

    def from_bytes(self, data: bytes) -> PaillierArrays:
        """Parse a serialized Paillier container, validating everything (§5)."""
        return from_bytes(data, self)

    def from_header_and_chunks(
        self,
        header: Mapping[str, Any],
        chunks: Sequence[bytes],
        *,
        what: str = "encrypted arrays",
        container: bool = False,
        defer: bool | None = None,
    ) -> PaillierArrays:
        """Rebuild one encrypted part from its header and ciphertexts (parsed eagerly)."""
        del defer  # Paillier parts are parsed eagerly
        return from_header_and_chunks(header, chunks, self, what=what, container=container)

    def max_ciphertext_bytes(self) -> int:
        """Size of one serialized ciphertext of this key's parameters."""
        return self.params.ciphertext_bytes

    def _numbers(self) -> dict[str, Any]:
        """Cached big integers: ``n``, ``n**2`` and, when private, the CRT constants."""
        if "n" not in self._cache:
            n = _mpz(self.n)
            nums: dict[str, Any] = {"n": n, "n2": n * n}
            if self.is_private:
                assert self._p is not None and self._q is not None
                p, q = _mpz(self._p), _mpz(self._q)
                p2, q2 = p * p, q * q
                nums.update(
                    p=p, q=q, p2=p2, q2=q2, p2_inv=_mpz(_phe_util().invert(int(p2), int(q2)))
                )
                nums["phe"] = _phe().PaillierPrivateKey(
                    _phe().PaillierPublicKey(self.n), self._p, self._q
                )
            self._cache.update(nums)
        return self._cache

    def to_bytes(self) -> bytes:
        """Serialize into a key-file container (inverse of :func:`load_key` on bytes)."""
        header = {
            "format_version": _FORMAT_VERSION,
            "scheme": _SCHEME,
            "private": self.is_private,
            "params": self.params.to_dict(),
            "fingerprint": self.fingerprint,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        blobs = [self.public_bytes]
        if self.is_private:
            assert self._p is not None and self._q is not None
            half = self.params.key_bits // 16
            blobs += [_int_to_bytes(self._p, half), _int_to_bytes(self._q, half)]
        return container.pack(KIND_PAILLIER_KEY, header, blobs)


def generate_key(
    preset: str | PaillierParams = "paillier", *, insecure: bool = False
) -> PaillierKey:
    """Generate a fresh Paillier key pair (with ``phe``) and return its private key.

    Parameters
    ----------
    preset : str or PaillierParams
        Preset name or parameters.
    insecure : bool
        Allow keys below 2048 bits (tests only, where security is not the point).

    Raises
    ------
    ConfigError
        For a key below 2048 bits without ``insecure=True``.

    """
    params = get_preset(preset)
    if params.key_bits < _MIN_SECURE_KEY_BITS and not insecure:
        raise ConfigError(
            f"a {params.key_bits}-bit Paillier key offers only ~{params.security_bits}-bit "
            "security; use 2048 or 3072 bits (presets 'paillier', 'paillier-3072'). Pass "
            "insecure=True only in tests."
        )
    while True:  # what the loader will insist on (equal-size factors); virtually always once
        public, private = _phe().generate_paillier_keypair(n_length=params.key_bits)
        n, p, q = int(public.n), int(private.p), int(private.q)
        if p.bit_length() == q.bit_length() == params.key_bits // 2:
            break
    fingerprint = fingerprint_of(_int_to_bytes(n, params.key_bits // 8))
    return PaillierKey(params, fingerprint, True, n, p, q)


def _fail_key(source: str, message: str) -> KeyFileError:
    return KeyFileError(f"{source}: {message}")


def _check_modulus(n: int, params: PaillierParams, source: str) -> None:
    if n.bit_length() != params.key_bits:
        raise _fail_key(
            source,
            f"the modulus n has {n.bit_length()} bits but the header declares a "
            f"{params.key_bits}-bit key; the file was altered.",
        )
    small = next((p for p in (2, *_SMALL_PRIMES) if n % p == 0), None)
    if small is not None:
        raise _fail_key(
            source, f"the modulus n is divisible by {small}; it is not a Paillier modulus."
        )


def _check_factors(n: int, p: int, q: int, params: PaillierParams, source: str) -> None:
    half = params.key_bits // 2
    if p == q or p * q != n or p.bit_length() != half or q.bit_length() != half:
        raise _fail_key(
            source,
            "the secret factors p and q do not multiply to the public modulus n (or are "
            f"equal, or not {half}-bit numbers); the file was altered or mixes two keys.",
        )
    if not (_is_probable_prime(p) and _is_probable_prime(q)):
        raise _fail_key(source, "a secret factor is not prime; the file was altered.")


def _parse_key(data: bytes, source: str, path: Path | None = None) -> PaillierKey:
    try:
        header, blobs = container.unpack(data, kind=KIND_PAILLIER_KEY)
    except CiphertextFormatError as exc:
        raise KeyFileError(f"{source} is not a valid cifer Paillier key file: {exc}") from exc
    fields = set(header) - _CONTAINER_FIELDS
    is_private = header.get("private")
    if (
        fields != _KEY_HEADER_FIELDS
        or header.get("format_version") != _FORMAT_VERSION
        or header.get("scheme") != _SCHEME
        or not isinstance(is_private, bool)
    ):
        raise _fail_key(
            source,
            f"malformed Paillier key header (fields {sorted(str(k) for k in fields)[:8]}, "
            f"format_version {header.get('format_version')!r:.20}, scheme "
            f"{header.get('scheme')!r:.20}); expected the fields {sorted(_KEY_HEADER_FIELDS)}, "
            f"format_version {_FORMAT_VERSION}, scheme 'paillier'.",
        )
    if path is not None and is_private:
        check_private_key_permissions(path)
    try:
        params = PaillierParams.from_dict(header["params"])
    except CiferError as exc:
        raise _fail_key(source, f"invalid Paillier parameters in the key header: {exc}") from exc
    n_width, half_width = params.key_bits // 8, params.key_bits // 16
    widths = [n_width, half_width, half_width] if is_private else [n_width]
    if [len(b) for b in blobs] != widths:
        raise _fail_key(
            source,
            f"key blobs of {[len(b) for b in blobs][:4]} bytes, expected {widths} for a "
            f"{params.key_bits}-bit {'private' if is_private else 'public'} key.",
        )
    fingerprint = fingerprint_of(blobs[0])
    if header.get("fingerprint") != fingerprint:
        raise _fail_key(
            source,
            f"the key material hashes to {fingerprint} but the header says "
            f"{str(header.get('fingerprint'))[:40]}; the file was altered.",
        )
    n = int.from_bytes(blobs[0], "big")
    _check_modulus(n, params, source)
    if not is_private:
        return PaillierKey(params, fingerprint, False, n)
    p, q = (int.from_bytes(b, "big") for b in blobs[1:])
    _check_factors(n, p, q, params, source)
    return PaillierKey(params, fingerprint, True, n, p, q)


def key_file_scheme(path: str | os.PathLike[str]) -> str:
    """Return ``"paillier"`` or ``"ckks"`` for a key file, reading only its header.

    Raises
    ------
    KeyFileError
        When the file is missing or is not a cifer key file.

    """
    p = Path(path)
    kind: Any = None
    try:
        with p.open("rb") as fh:
            head = fh.read(len(CONTAINER_MAGIC) + 4)
            if len(head) == len(CONTAINER_MAGIC) + 4 and head.startswith(CONTAINER_MAGIC):
                (size,) = struct.unpack(">I", head[len(CONTAINER_MAGIC) :])
                if size <= 64 * 1024:
                    kind = json.loads(fh.read(size).decode("utf-8")).get("kind")
    except OSError as exc:
        raise KeyFileError(
            f"key file {str(p)!r} cannot be read ({exc.strerror}); create a pair with "
            "`cifer keygen --name NAME` or pass the right path."
        ) from exc
    except (ValueError, AttributeError):  # not JSON / not an object: not a key file
        kind = None
    if kind in (KIND_PAILLIER_KEY, KIND_KEY):
        return _SCHEME if kind == KIND_PAILLIER_KEY else "ckks"
    raise KeyFileError(
        f"{str(p)!r} is not a cifer key file (container kind {str(kind)[:40]!r}); give a "
        "keys/NAME/public.key or private.key written by `cifer keygen`."
    )


def load_key(path: str | os.PathLike[str]) -> PaillierKey:
    """Load a public or private Paillier key file, validating every field.

    Raises
    ------
    KeyFileError
        When the file is missing, too large, altered, not a Paillier key file, or a private
        key readable by group or others (the message gives the ``chmod 600`` fix).

    """
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(
            f"key file {str(p)!r} does not exist; create a pair with "
            "`cifer keygen --scheme paillier --name NAME` or pass the right path."
        )
    size = p.stat().st_size
    if size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(
            f"key file {str(p)!r} has {size} bytes, more than the {MAX_KEY_FILE_BYTES} a "
            "Paillier key file may have; it is not a Paillier key file."
        )
    return _parse_key(p.read_bytes(), str(p), p)


def load_key_bytes(data: bytes, *, source: str = "Paillier key") -> PaillierKey:
    """Parse key-file bytes (inverse of :meth:`PaillierKey.to_bytes`); no permission check."""
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{source}: {len(data)} bytes, at most {MAX_KEY_FILE_BYTES} expected.")
    return _parse_key(data, source)


def load_private_key(path: str | os.PathLike[str]) -> PaillierKey:
    """Load a private Paillier key file; a public key file raises :class:`KeyTypeError`."""
    return _keys.require_private_file(load_key(path), path)


def load_public_key(path: str | os.PathLike[str], *, holder: str = "the server") -> PaillierKey:
    """Load a public Paillier key file; a private key file raises :class:`KeyTypeError`."""
    key = load_key(path)
    key.require_public(holder)
    return key


def write_key_pair(
    key: PaillierKey, directory: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``private.key`` (mode 0600) and ``public.key`` (mode 0644) into ``directory``.

    The same writer as CKKS keys (:func:`cifer_flwr.crypto.keys.write_key_pair`).

    Raises
    ------
    KeyExistsError
        A ``FileExistsError``: either file exists and ``force`` is false.

    """
    return _keys.write_key_pair(key, directory, force=force)


# --------------------------------------------------------------------------- encoding
def quantize(
    values: npt.ArrayLike,
    params: PaillierParams,
    *,
    rounding: Rounding = "nearest",
    rng: np.random.Generator | None = None,
) -> npt.NDArray[np.int64]:
    """Map values in ``[-bound, bound]`` to integers in ``[0, 2**value_bits - 1]``.

    ``"nearest"`` is off by at most ``step / 2``; ``"stochastic"`` rounds up with the
    probability of the remainder, so the error is zero on average (what a sum of many
    clients wants). Inverse (up to the rounding): :func:`dequantize` with ``count=1``.

    Raises
    ------
    ValueRangeError
        For a value outside ``[-bound, bound]`` (clip first if clipping is intended).

    """
    v = np.asarray(values, dtype=np.float64)
    peak = float(np.abs(v).max()) if v.size else 0.0
    if not peak <= params.bound:
        raise ValueRangeError(
            f"a value of magnitude {peak:.6g} lies outside the Paillier range "
            f"[-{params.bound:g}, {params.bound:g}] of preset {params.name!r}; scale the "
            "values down, clip them (clip=True), or use parameters with a larger bound."
        )
    scaled = (v + params.bound) / params.step
    if rounding == "nearest":
        q = np.rint(scaled)
    elif rounding == "stochastic":
        gen = rng if rng is not None else np.random.default_rng()
        q = np.floor(scaled + gen.random(scaled.shape))
    else:
        raise ConfigError(f"rounding {rounding!r:.40}, expected 'nearest' or 'stochastic'.")
    return np.clip(q, 0, 2**params.value_bits - 1).astype(np.int64)


def dequantize(
    sums: npt.ArrayLike, params: PaillierParams, *, count: int = 1, scale_bits: int = 0
) -> FloatArray:
    """Values from summed quantized integers: ``(x * step - count * bound) / 2**scale_bits``."""
    x = np.asarray(sums, dtype=np.float64)
    return (x * params.step - count * params.bound) / float(2**scale_bits)


def pack(ints: npt.ArrayLike, params: PaillierParams) -> list[int]:
    """Pack non-negative field values, ``params.slots`` per plaintext (inverse of :func:`unpack`).

    Value ``i`` of a chunk sits at bits ``[i * slot_bits, (i + 1) * slot_bits)``; the last
    chunk is padded with zero fields.
    """
    arr = np.asarray(ints, dtype=np.int64).ravel()
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 2**params.slot_bits):
        raise ValueRangeError(
            f"packed fields must lie in [0, 2**{params.slot_bits}), got "
            f"[{int(arr.min())}, {int(arr.max())}]."
        )
    width, slots = params.slot_bits, params.slots
    out = []
    values = arr.tolist()
    for start in range(0, max(1, len(values)), slots):
        acc = 0
        for v in reversed(values[start : start + slots]):
            acc = (acc << width) | v
        out.append(acc)
    return out


def unpack(plains: Sequence[int], params: PaillierParams, total: int) -> npt.NDArray[np.int64]:
    """Split packed plaintexts into their fields and return the first ``total`` of them.

    Raises
    ------
    CiphertextFormatError
        When a plaintext uses bits above the last field (it was not made by :func:`pack`, or
        a sum overflowed), or a padding field past ``total`` is not zero.

    """
    width, slots = params.slot_bits, params.slots
    mask = (1 << width) - 1
    limit = slots * width
    fields_: list[int] = []
    for i, m in enumerate(plains):
        m = int(m)
        if m.bit_length() > limit:
            raise CiphertextFormatError(
                f"ciphertext {i} decrypts to a {m.bit_length()}-bit plaintext, but packed "
                f"plaintexts have at most {limit} bits; it was altered or not made by cifer."
            )
        fields_.extend((m >> (width * j)) & mask for j in range(slots))
    if any(fields_[total:]):
        raise CiphertextFormatError(
            "a padding field after the last value decrypts to a non-zero number; the "
            "ciphertexts were altered or not made by cifer."
        )
    return np.asarray(fields_[:total], dtype=np.int64)


# --------------------------------------------------------------------------- ciphertexts
@dataclass(frozen=True)
class PaillierArrays:
    """Named arrays, quantized, packed and Paillier-encrypted.

    Attributes
    ----------
    layout : Layout
        Names, shapes and dtypes of the plaintext arrays.
    ciphertexts : tuple of int
        One integer in ``[1, n**2)`` per ``params.slots`` values.
    fingerprint : str
        Fingerprint of the key.
    params : PaillierParams
        Key size and packing.
    weight : float
        Sum of the weights the encrypting parties applied (divide by it for a mean).
    count : int
        Number of encodings summed into every field (the offset multiplier; fresh: 1).
    scale_bits : int
        Values are stored multiplied by ``2**scale_bits`` (raised by :func:`mul_scalar`).
    meta : dict
        Public, JSON-serializable annotations.
    clipped : int
        How many values this encryption clipped to ``[-bound, bound]`` when the caller
        asked for clipping (``crypto.encrypt`` does for client updates); local to the
        encrypting party, never serialized (docs/design.md §4.8).
    public_key : PaillierKey or None
        The public key the ciphertexts were made or parsed with (public material only), so
        that :func:`aggregate` can sum them without being handed the key again.

    """

    scheme: ClassVar[str] = _SCHEME

    layout: Layout
    ciphertexts: tuple[Any, ...] = field(repr=False)
    fingerprint: str
    params: PaillierParams
    weight: float = 1.0
    count: int = 1
    scale_bits: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    clipped: int = field(default=0, compare=False)
    public_key: PaillierKey | None = field(default=None, repr=False, compare=False)

    @property
    def num_values(self) -> int:
        """Number of plaintext values."""
        return self.layout.total

    def header(self) -> dict[str, Any]:
        """Public metadata that travels with the ciphertexts."""
        return {
            "scheme": _SCHEME,
            "layout": self.layout.to_dict(),
            "fingerprint": self.fingerprint,
            "params": self.params.to_dict(),
            "weight": self.weight,
            "count": self.count,
            "scale_bits": self.scale_bits,
            "meta": dict(self.meta),
            "num_chunks": len(self.ciphertexts),
        }

    def serialized_chunks(self) -> list[bytes]:
        """Every ciphertext as ``params.ciphertext_bytes`` big-endian bytes (one per entry)."""
        width = self.params.ciphertext_bytes
        return [_int_to_bytes(int(c), width) for c in self.ciphertexts]


def _check_key(fingerprint: str, key: PaillierKey, what: str) -> None:
    if fingerprint != key.fingerprint:
        raise KeyMismatchError(fingerprint, key.fingerprint, what)


def _random_unit(n: Any) -> Any:
    while True:
        r = _mpz(secrets.randbelow(int(n) - 1) + 1)
        if math.gcd(int(r), int(n)) == 1:
            return r


def _encrypt_int(m: int, key: PaillierKey) -> Any:
    """``(1 + m n) * r**n mod n**2`` (``g = n + 1``); CRT for ``r**n`` when ``p, q`` are held."""
    nums = key._numbers()
    n, n2 = nums["n"], nums["n2"]
    nude = (1 + _mpz(m) * n) % n2
    if key.is_private:
        # r**n mod n**2 is uniform over the n-th residues. p and q have the same bit length
        # (checked on load), so gcd(n, phi(n)) = 1 and the n-th residues are exactly the
        # product of the order-(p-1) subgroup mod p**2 and the order-(q-1) one mod q**2;
        # t -> t**p mod p**2 maps Z*_p onto the first bijectively (likewise for q). Same
        # distribution as the textbook mask, two half-size exponentiations.
        p, q, p2, q2 = nums["p"], nums["q"], nums["p2"], nums["q2"]
        a = _powmod(_random_unit(p), p, p2)
        b = _powmod(_random_unit(q), q, q2)
        mask = a + p2 * (((b - a) * nums["p2_inv"]) % q2)
    else:
        mask = _powmod(_random_unit(n), n, n2)
    return (nude * mask) % n2


def _plain_int(m: int, key: PaillierKey) -> Any:
    """The unrandomized encryption ``1 + m n`` of a public plaintext (to add to a ciphertext)."""
    nums = key._numbers()
    return (1 + _mpz(m) * nums["n"]) % nums["n2"]


def _prepare(
    arrays: Mapping[str, npt.ArrayLike], params: PaillierParams, weight: float, clip: bool
) -> tuple[Layout, FloatArray, int]:
    if not math.isfinite(weight) or weight <= 0:
        raise ValueRangeError(f"weight must be a finite positive number, got {weight}.")
    layout, vec = flatten(arrays)
    vec = vec * weight
    outside = int(np.count_nonzero(np.abs(vec) > params.bound))
    if outside and clip:
        vec = np.clip(vec, -params.bound, params.bound)
    return layout, vec, outside if clip else 0


def encrypt(
    arrays: Mapping[str, npt.ArrayLike],
    key: PaillierKey,
    *,
    weight: float = 1.0,
    meta: Mapping[str, Any] | None = None,
    clip: bool = False,
    rounding: Rounding = "nearest",
    rng: np.random.Generator | None = None,
) -> PaillierArrays:
    """Quantize, pack and encrypt named arrays multiplied by ``weight``.

    A private key masks with the Chinese remainder theorem (faster); a public key encrypts
    as anyone can. Inverse: :func:`decrypt` (with ``divisor=weight``).

    Parameters
    ----------
    arrays : mapping of str to array_like
        Float or integer arrays.
    key : PaillierKey
        Public or private key.
    weight : float
        Multiplier applied before quantization (cifer's protocol weights ``n_i / B``).
    meta : mapping, optional
        Public annotations.
    clip : bool
        Clip values outside ``[-bound, bound]`` instead of refusing them; the number of
        clipped values is recorded in ``meta["clipped"]``.
    rounding : {"nearest", "stochastic"}
        See :func:`quantize`.
    rng : numpy.random.Generator, optional
        Source of the stochastic rounding.

    Raises
    ------
    NonFiniteError
        For NaN or infinite values.
    ValueRangeError
        For a weighted value outside ``[-bound, bound]`` when ``clip`` is false.

    """
    params = key.params
    layout, vec, clipped = _prepare(arrays, params, float(weight), clip)
    ints = quantize(vec, params, rounding=rounding, rng=rng)
    cts = tuple(_encrypt_int(m, key) for m in pack(ints, params))
    info = dict(meta or {})
    if clip:
        info["clipped"] = clipped
    return PaillierArrays(
        layout, cts, key.fingerprint, params, float(weight), 1, 0, info, public_key=key.public()
    )


def decrypt_fields(enc: PaillierArrays, key: PaillierKey) -> npt.NDArray[np.int64]:
    """Decrypt and unpack to the summed integer fields (no dequantization).

    Raises
    ------
    KeyTypeError, KeyMismatchError
        For a public key or another key.
    CiphertextFormatError
        When a plaintext does not unpack, or a field exceeds what ``count`` encodings can
        sum to (the ciphertext was altered: integrity of the packing, docs/design.md §4.8).

    """
    key.require_private("decrypt")
    _check_key(enc.fingerprint, key, "Paillier ciphertexts")
    priv = key._numbers()["phe"]
    plains = [int(priv.raw_decrypt(int(c))) for c in enc.ciphertexts]
    fields_ = unpack(plains, enc.params, enc.layout.total)
    cap = enc.count * (2**enc.params.value_bits - 1)
    if fields_.size and int(fields_.max()) > cap:
        raise CiphertextFormatError(
            f"a decrypted field holds {int(fields_.max())}, more than the {cap} that "
            f"{enc.count} encodings can sum to; the ciphertexts or their count were altered."
        )
    return fields_


def decrypt(
    enc: PaillierArrays, key: PaillierKey, *, divisor: float = 1.0
) -> dict[str, npt.NDArray[Any]]:
    """Decrypt to the original names, shapes and dtypes, dividing every value by ``divisor``.

    Raises
    ------
    KeyTypeError, KeyMismatchError, CiphertextFormatError
        See :func:`decrypt_fields`.

    """
    fields_ = decrypt_fields(enc, key)
    values = dequantize(fields_, enc.params, count=enc.count, scale_bits=enc.scale_bits)
    return unflatten(enc.layout, values / divisor)


def _check_compatible(first: PaillierArrays, other: PaillierArrays) -> None:
    if other.fingerprint != first.fingerprint:
        raise KeyMismatchError(other.fingerprint, first.fingerprint, "Paillier ciphertexts")
    if other.layout != first.layout or other.params != first.params:
        raise LayoutMismatchError(
            f"cannot add Paillier ciphertexts with different layouts or parameters: "
            f"{other.layout.names} / {other.layout.shapes} ({other.params.name}) vs "
            f"{first.layout.names} / {first.layout.shapes} ({first.params.name})."
        )


def _check_count(count: int, params: PaillierParams, action: str) -> None:
    if count > params.max_summands:
        raise UnsupportedOperationError(
            f"{action} would put the sum of {count} encodings into one field, but preset "
            f"{params.name!r} has headroom for {params.max_summands}; a field would overflow "
            "into the next. Use fewer clients or parameters with more headroom_bits."
        )


def _power(enc: PaillierArrays, k: int, scale_bits: int, n2: Any) -> PaillierArrays:
    """Multiply every field by the integer ``k`` (``c**k``), raising the scale."""
    count = enc.count * k
    _check_count(count, enc.params, f"multiplying by {k}")
    cts = tuple(_powmod(_mpz(c), k, n2) for c in enc.ciphertexts)
    return replace(enc, ciphertexts=cts, count=count, scale_bits=scale_bits, meta={})


def aggregate(items: Sequence[PaillierArrays], key: PaillierKey | None = None) -> PaillierArrays:
    """Homomorphic sum of encrypted arrays of the same key and layout; inputs unchanged.

    ``key`` (public suffices) gives ``n**2``; without it the public key the first item was
    made or parsed with is used. Items at different scales (after :func:`mul_scalar`) are
    first brought to the largest scale.

    Raises
    ------
    KeyMismatchError, LayoutMismatchError
        When the items do not belong together or to ``key``.
    UnsupportedOperationError
        When the sum needs more headroom than the parameters have.

    """
    if not items:
        raise ConfigError("aggregate() needs at least one encrypted object, got none.")
    first = items[0]
    if key is None:
        if first.public_key is None:
            raise ConfigError(
                "aggregate() needs the Paillier key for these ciphertexts (they carry none); "
                "pass key=..."
            )
        key = first.public_key
    _check_key(first.fingerprint, key, "Paillier ciphertexts")
    for other in items[1:]:
        _check_compatible(first, other)
    n2 = key._numbers()["n2"]
    scale = max(it.scale_bits for it in items)
    items = [
        it if it.scale_bits == scale else _power(it, 2 ** (scale - it.scale_bits), scale, n2)
        for it in items
    ]
    count = sum(it.count for it in items)
    _check_count(count, first.params, f"adding {len(items)} ciphertexts")
    sums = []
    for idx in range(len(first.ciphertexts)):
        acc = _mpz(items[0].ciphertexts[idx])
        for it in items[1:]:
            acc = (acc * it.ciphertexts[idx]) % n2
        sums.append(acc)
    return PaillierArrays(
        first.layout,
        tuple(sums),
        first.fingerprint,
        first.params,
        sum(it.weight for it in items),
        count,
        scale,
        {},
        public_key=key if not key.is_private else key.public(),
    )


def add(a: PaillierArrays, b: PaillierArrays, key: PaillierKey) -> PaillierArrays:
    """Homomorphic sum of two encrypted objects (``key``: public suffices)."""
    return aggregate([a, b], key)


def add_plain(
    enc: PaillierArrays, arrays: Mapping[str, npt.ArrayLike], key: PaillierKey
) -> PaillierArrays:
    """Add plaintext arrays of the same layout to encrypted ones (``key``: public suffices).

    The plaintext is quantized at the ciphertext's scale and counts as one more encoding.

    Raises
    ------
    LayoutMismatchError
        When ``arrays`` do not have the layout of ``enc``.
    ValueRangeError
        When a plaintext value times ``2**scale_bits`` lies outside ``[-bound, bound]``.

    """
    _check_key(enc.fingerprint, key, "Paillier ciphertexts")
    layout, vec = flatten(arrays)
    if (layout.names, layout.shapes) != (enc.layout.names, enc.layout.shapes):
        raise LayoutMismatchError(
            f"plaintext arrays {layout.names} / {layout.shapes} do not match the encrypted "
            f"layout {enc.layout.names} / {enc.layout.shapes}."
        )
    ints = quantize(vec * float(2**enc.scale_bits), enc.params)
    plain = PaillierArrays(
        enc.layout,
        tuple(_plain_int(m, key) for m in pack(ints, enc.params)),
        enc.fingerprint,
        enc.params,
        0.0,
        1,
        enc.scale_bits,
        {},
    )
    total = aggregate([enc, plain], key)
    return replace(total, weight=enc.weight)


def mul_scalar(
    enc: PaillierArrays, scalar: npt.ArrayLike, key: PaillierKey, *, max_frac_bits: int = 30
) -> PaillierArrays:
    """Multiply every encrypted value by a non-negative plaintext scalar (``c**k mod n**2``).

    An integer scalar is exact. A fractional one becomes ``k / 2**f`` with the fewest
    fractional bits ``f <= max_frac_bits`` that represent it to 1e-6 (or the most the
    headroom allows: ``count * k`` must stay within ``params.max_summands``); the
    ciphertext's ``scale_bits`` grows by ``f``.

    Raises
    ------
    UnsupportedOperationError
        For a negative scalar (offset-encoded packed fields cannot be negated), a vector
        (all fields of a ciphertext share one multiplier), or a scalar the headroom cannot
        represent to 1e-3 relative precision.

    """
    _check_key(enc.fingerprint, key, "Paillier ciphertexts")
    s = float(np.asarray(scalar, dtype=np.float64)) if np.ndim(scalar) == 0 else None
    if s is None:
        raise UnsupportedOperationError(
            "a packed Paillier ciphertext can only be multiplied by one scalar: its "
            f"{enc.params.slots} values share one plaintext. Multiply by a number, or use CKKS "
            "for element-wise products."
        )
    if not math.isfinite(s) or s < 0:
        raise UnsupportedOperationError(
            f"Paillier packing multiplies by non-negative finite scalars only, got {s!r}; "
            "negate after decryption, or use CKKS."
        )
    n2 = key._numbers()["n2"]
    if s.is_integer():
        return _power(enc, int(s), enc.scale_bits, n2)
    room = enc.params.max_summands // max(enc.count, 1)
    frac, k = 0, round(s)
    for bits in range(max_frac_bits + 1):  # fewest fractional bits that represent s
        candidate = round(s * 2**bits)
        if candidate > room:
            break
        frac, k = bits, candidate
        if abs(k / 2**bits - s) <= 1e-6 * s:
            break
    if k == 0 or abs(k / 2**frac - s) > 1e-3 * s or enc.scale_bits + frac > _MAX_SCALE_BITS:
        raise UnsupportedOperationError(
            f"multiplying by {s:g}: the headroom left ({room} per field after {enc.count} "
            f"encodings) represents it only as {k}/2**{frac}; use parameters with more "
            "headroom_bits, or CKKS."
        )
    return _power(enc, k, enc.scale_bits + frac, n2)


# --------------------------------------------------------------------------- serialization
def to_bytes(enc: PaillierArrays) -> bytes:
    """Serialize into a cifer container: JSON header + one blob of fixed-width ciphertexts."""
    width = enc.params.ciphertext_bytes
    blob = b"".join(_int_to_bytes(int(c), width) for c in enc.ciphertexts)
    return container.pack(KIND_PAILLIER_ARRAYS, enc.header(), [blob])


def _fail(what: str, message: str) -> CiphertextFormatError:
    return CiphertextFormatError(f"{what}: {message}")


def from_header_and_chunks(
    header: Mapping[str, Any],
    chunks: Sequence[bytes],
    key: PaillierKey,
    *,
    what: str = "Paillier ciphertexts",
    container: bool = False,
) -> PaillierArrays:
    """Rebuild Paillier ciphertexts from their public header and one blob per ciphertext.

    ``key`` may be public; it must have the fingerprint named in the header. Every header
    field is validated, and every ciphertext must be ``params.ciphertext_bytes`` long and an
    element of ``Z*_(n^2)`` (docs/design.md §5) before any arithmetic touches it.
    ``container`` allows the container fields ``kind`` and ``blobs_sha256``.

    Raises
    ------
    KeyMismatchError
        When the header names another key.
    LayoutMismatchError
        When the parameters or the number or size of the ciphertexts do not match.
    CiphertextFormatError
        For a malformed header, or a ciphertext outside ``[1, n**2)`` or sharing a factor
        with ``n``.

    """
    if not isinstance(header, Mapping):
        raise _fail(what, f"header is a {type(header).__name__}, expected an object.")
    allowed = _ARRAYS_HEADER_FIELDS | (_CONTAINER_FIELDS if container else frozenset())
    unknown = sorted(str(k) for k in set(header) - allowed)
    missing = sorted(_ARRAYS_HEADER_FIELDS - set(header))
    if unknown or missing or header.get("scheme") != _SCHEME:
        raise _fail(
            what,
            f"header fields: unknown {unknown[:5]}, missing {missing}, scheme "
            f"{header.get('scheme')!r:.20}; expected {sorted(_ARRAYS_HEADER_FIELDS)} and "
            "scheme 'paillier'.",
        )
    fingerprint = check_fingerprint(header["fingerprint"], what=what)
    _check_key(fingerprint, key, what)
    try:
        params = PaillierParams.from_dict(header["params"])
    except CiferError as exc:
        raise _fail(what, f"invalid Paillier parameters: {exc}") from exc
    if params != key.params:
        raise LayoutMismatchError(
            f"{what}: header parameters {params.name!r} ({params.to_dict()}) differ from the "
            f"key's {key.params.name!r}; the sender uses another preset."
        )
    layout = parse_layout(header["layout"], what=what)
    if layout.reserved:
        raise LayoutMismatchError(f"{what}: Paillier layouts reserve no slots.")
    weight = header["weight"]
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise _fail(what, f"weight {weight!r:.40}, expected a number.")
    if not finite_number(weight) or not 0 <= weight <= _MAX_WEIGHT:
        raise _fail(what, f"weight {weight!r:.40}, expected a finite number in [0, 1e15].")
    count, scale_bits = header["count"], header["scale_bits"]
    if not _strict_int(count) or not 0 <= count <= params.max_summands:
        raise _fail(what, f"count {count!r:.40}, expected an integer in 0..{params.max_summands}.")
    if not _strict_int(scale_bits) or not 0 <= scale_bits <= _MAX_SCALE_BITS:
        raise _fail(what, f"scale_bits {scale_bits!r:.40}, expected 0..{_MAX_SCALE_BITS}.")
    meta = check_meta(header["meta"], what=what)
    expected = params.num_chunks(layout.total)
    width = params.ciphertext_bytes
    num_chunks = header["num_chunks"]
    if (
        not _strict_int(num_chunks)
        or num_chunks != expected
        or len(chunks) != expected
        or any(len(b) != width for b in chunks)
    ):
        raise LayoutMismatchError(
            f"{what}: the layout ({layout.total} values) needs {expected} ciphertexts of "
            f"{width} bytes, but the header says {header['num_chunks']!r:.20} and "
            f"{len(chunks)} ciphertexts of {sorted({len(b) for b in chunks})[:4]} bytes were "
            "received."
        )
    n, n2 = key.n, key.n * key.n
    cts = []
    for i, blob in enumerate(chunks):
        c = int.from_bytes(blob, "big")
        if not 0 < c < n2 or math.gcd(c, n) != 1:
            raise _fail(
                what,
                f"ciphertext {i} of {expected} is not an element of Z*_(n^2) (zero, >= n^2, "
                "or sharing a factor with n); it was altered or made with another key.",
            )
        cts.append(_mpz(c))
    public = key.public() if key.is_private else key
    return PaillierArrays(
        layout,
        tuple(cts),
        fingerprint,
        params,
        float(weight),
        count,
        scale_bits,
        meta,
        public_key=public,
    )


def from_bytes(
    data: bytes, key: PaillierKey, *, what: str = "Paillier ciphertexts"
) -> PaillierArrays:
    """Parse :func:`to_bytes` output with ``key`` (public suffices), validating everything.

    Raises
    ------
    KeyMismatchError, LayoutMismatchError, CiphertextFormatError
        See :func:`from_header_and_chunks`; also for a container that is not one blob of
        whole ciphertexts.

    """
    header, blobs = container.unpack(data, kind=KIND_PAILLIER_ARRAYS)
    width = key.params.ciphertext_bytes
    if len(blobs) != 1 or len(blobs[0]) % width:
        raise LayoutMismatchError(
            f"{what}: expected one blob of {width}-byte ciphertexts, got {len(blobs)} blob(s) "
            f"of {sum(len(b) for b in blobs)} bytes."
        )
    blob = blobs[0]
    chunks = [blob[i : i + width] for i in range(0, len(blob), width)]
    return from_header_and_chunks(header, chunks, key, what=what, container=True)


# --------------------------------------------------------------------------- benchmark
def bench_preset(
    preset: str | PaillierParams,
    updates: Sequence[Mapping[str, npt.NDArray[Any]]],
    weights: Sequence[float],
    progress: Callable[[str], None] | None = None,
    *,
    key: PaillierKey | None = None,
) -> dict[str, float]:
    """Measure one Paillier preset the way ``cifer bench crypto`` measures a CKKS preset.

    Each client encrypts ``weight_i * update_i`` and serializes it; the server parses every
    upload with the public key and sums them; the key holder decrypts the sum.

    Returns
    -------
    dict
        ``upload_x`` / ``expansion`` (mean upload bytes / fp32 bytes), ``download_x`` (the
        aggregate's bytes / fp32 bytes), per-client ``encrypt_s``, ``serialize_s``,
        ``deserialize_s``, the server's ``aggregate_s``, the key holder's ``decrypt_s`` and
        ``rel_error`` = ``max|decrypted - exact| / max|exact|``, plus ``max_abs_error``.

    """
    report = progress or (lambda _msg: None)
    params = get_preset(preset)
    private = key if key is not None else generate_key(params, insecure=True)
    public = private.public()
    blobs, enc_s, ser_s = [], 0.0, 0.0
    for i, (upd, w) in enumerate(zip(updates, weights, strict=True)):
        report(f"{params.name}: encrypting client {i + 1}/{len(updates)}")
        t0 = time.perf_counter()
        enc = encrypt(upd, private, weight=float(w))
        t1 = time.perf_counter()
        blobs.append(to_bytes(enc))
        enc_s += t1 - t0
        ser_s += time.perf_counter() - t1
    report(f"{params.name}: server parses and sums {len(blobs)} updates")
    t0 = time.perf_counter()
    loaded = [from_bytes(b, public) for b in blobs]
    t1 = time.perf_counter()
    total = aggregate(loaded, public)
    t2 = time.perf_counter()
    download = to_bytes(total)
    report(f"{params.name}: key holder decrypts")
    t3 = time.perf_counter()
    plain = decrypt(from_bytes(download, private), private)
    dec_s = time.perf_counter() - t3
    name = next(iter(updates[0]))
    exact = sum(w * u[name].astype(np.float64) for u, w in zip(updates, weights, strict=True))
    diff = np.abs(np.asarray(plain[name], dtype=np.float64) - exact)
    fp32 = updates[0][name].size * 4
    k = len(updates)
    upload_x = float(np.mean([len(b) for b in blobs]) / fp32)
    return {
        "expansion": upload_x,
        "upload_x": upload_x,
        "download_x": len(download) / fp32,
        "encrypt_s": enc_s / k,
        "serialize_s": ser_s / k,
        "deserialize_s": (t1 - t0) / k,
        "aggregate_s": t2 - t1,
        "decrypt_s": dec_s,
        "rel_error": float(diff.max() / np.abs(exact).max()),
        "max_abs_error": float(diff.max()),
    }
