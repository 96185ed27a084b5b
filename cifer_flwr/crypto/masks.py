"""Secure-aggregation primitives over vetted building blocks (``cryptography``).

Everything the masking protocol (:mod:`cifer_flwr.masking`, docs/design.md §4.9) computes
with keys lives here, in inverse pairs:

* :func:`expand_mask` / :func:`add_mask` — AES-128-CTR keystream turned into integers
  **exactly uniform** in ``[0, modulus)`` by rejection sampling (never a modulo bias, never a
  folded seed);
* :func:`derive_key` — HKDF-SHA256 with a domain-separated ``info``;
* :func:`new_exchange_key` / :func:`agree` — X25519 key agreement followed by HKDF;
* :func:`split_secret` / :func:`combine_shares` — Shamir sharing over the prime field
  ``GF(2^521 - 1)`` (a secret of up to 64 bytes is one field element);
* :func:`seal` / :func:`open_sealed` — AES-256-GCM with associated data (the per-pair channel);
* :func:`new_identity` / :func:`sign` / :func:`verify` — Ed25519 identity signatures.

Nothing here parses another party's bytes without checking their length first; every
failure is a :class:`~cifer_flwr.exceptions.CiferError`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat
from cryptography.hazmat.primitives.serialization import NoEncryption as _NoEncryption

from cifer_flwr.exceptions import MaskingError

__all__ = [
    "FIELD_PRIME",
    "KEY_BYTES",
    "SHARE_BYTES",
    "add_mask",
    "agree",
    "combine_shares",
    "derive_key",
    "expand_mask",
    "exchange_public",
    "identity_public",
    "new_exchange_key",
    "new_identity",
    "open_sealed",
    "seal",
    "sign",
    "split_secret",
    "verify",
]

#: The Mersenne prime 2^521 - 1: every 32-byte secret is one element of GF(p).
FIELD_PRIME = (1 << 521) - 1
#: Bytes of one Shamir share value (big-endian, < FIELD_PRIME).
SHARE_BYTES = 66
#: Bytes of an X25519 / Ed25519 key (private or public, raw form).
KEY_BYTES = 32
_NONCE_BYTES = 12
_AES_KEY_BYTES = 16
_MAX_SECRET_BYTES = 64


def _need(data: bytes, size: int, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray) or len(data) != size:
        found = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise MaskingError(f"{what} must be {size} bytes, got {found}.")
    return bytes(data)


def derive_key(secret: bytes, info: bytes, size: int = _AES_KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` with a domain-separating ``info``.

    No salt: ``secret`` is uniformly random or a fresh X25519 output.
    """
    return HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=info).derive(secret)


def expand_mask(seed: bytes, count: int, modulus: int) -> npt.NDArray[np.int64]:
    """``count`` integers exactly uniform in ``[0, modulus)`` from a 16-byte ``seed``.

    AES-128-CTR (key ``seed``, counter from zero) is read as little-endian 32-bit words;
    each word keeps its low ``bit_length(modulus - 1)`` bits and is **rejected** when the
    result is ``>= modulus`` (for the ``packed`` plain modulus ``t ~ 2^30`` about 5 in
    100 000 words); a rejected word among the first ``count`` is replaced by the next
    accepted word after them, so every value is an independent uniform draw.
    Deterministic: the same seed and count give the same mask on every machine.
    The accumulating form is :func:`add_mask`.
    """
    out = np.zeros(count, np.int64)
    add_mask(out, seed, 1, modulus)
    return out


def add_mask(acc: npt.NDArray[np.int64], seed: bytes, sign: int, modulus: int) -> None:
    """``acc += sign * expand_mask(seed, len(acc), modulus)`` without a temporary int64 copy.

    No reduction modulo ``modulus``: the caller reduces once after adding every mask
    (``|acc|`` stays below ``terms * modulus``).
    """
    _need(seed, _AES_KEY_BYTES, "a mask seed")
    count = len(acc)
    if not 2 <= modulus <= 1 << 32 or sign not in (1, -1):
        raise MaskingError(
            f"add_mask needs 2 <= modulus <= 2^32 and sign +-1, got {modulus}, {sign}."
        )
    keep, limit = np.uint32((1 << (modulus - 1).bit_length()) - 1), np.uint32(modulus - 1)
    cipher = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def words(n: int) -> npt.NDArray[np.uint32]:
        """The next ``n`` keystream words, each kept to the modulus' bit length."""
        buf = bytearray(4 * n + 15)  # update_into needs a block of slack
        cipher.update_into(bytes(4 * n), buf)
        values = np.frombuffer(buf, dtype="<u4", count=n)
        np.bitwise_and(values, keep, out=values)  # in place: no second copy
        return values

    stream = words(count + (count >> 8) + 16)  # rejections are rare: 1 in ~20 000 for t
    head, tail = stream[:count], stream[count:]
    rejected = np.flatnonzero(head > limit)
    if len(rejected):
        # each rejected word is replaced by the next accepted word after the first ``count``
        spare = tail[tail <= limit]
        while len(spare) < len(rejected):
            more = words(len(rejected) + 16)
            spare = np.concatenate([spare, more[more <= limit]])
        head[rejected] = spare[: len(rejected)]
    op = np.add if sign > 0 else np.subtract
    op(acc, head, out=acc, casting="unsafe")


def new_exchange_key() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw ``(private, public)`` bytes."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, _NoEncryption())
    return raw, exchange_public(raw)


def exchange_public(private: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    key = X25519PrivateKey.from_private_bytes(_need(private, KEY_BYTES, "an X25519 private key"))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, info: bytes, size: int = _AES_KEY_BYTES) -> bytes:
    """X25519(private, peer_public) then HKDF with ``info``: the pair's shared key.

    Symmetric: ``agree(a, pub(b), info) == agree(b, pub(a), info)``.

    Raises
    ------
    MaskingError
        For keys of the wrong length or a low-order peer key (all-zero shared secret).

    """
    mine = X25519PrivateKey.from_private_bytes(_need(private, KEY_BYTES, "an X25519 private key"))
    peer = X25519PublicKey.from_public_bytes(_need(peer_public, KEY_BYTES, "an X25519 public key"))
    try:
        shared = mine.exchange(peer)
    except ValueError as exc:  # low-order point: cryptography refuses the all-zero output
        raise MaskingError(f"X25519 key agreement refused the peer's public key: {exc}") from exc
    return derive_key(shared, info, size)


def split_secret(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shamir shares of ``secret`` at the points ``xs`` (any ``threshold`` rebuild it).

    Inverse: :func:`combine_shares`. The secret is one element of ``GF(2^521 - 1)`` (up to
    64 bytes; its length is fixed by the caller and restored by ``combine_shares``); the
    polynomial's other coefficients come from :mod:`secrets`.
    """
    if len(secret) > _MAX_SECRET_BYTES:
        raise MaskingError(
            f"a shared secret may have at most {_MAX_SECRET_BYTES} bytes, got {len(secret)}."
        )
    points = [int(x) for x in xs]
    if len(set(points)) != len(points) or any(not 0 < x < FIELD_PRIME for x in points):
        raise MaskingError(f"share points must be distinct and nonzero, got {points[:8]}.")
    if not 1 <= threshold <= len(points):
        raise MaskingError(
            f"threshold must be 1..{len(points)} (the share count), got {threshold}."
        )
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)
    ]
    shares = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % FIELD_PRIME
        shares[x] = acc.to_bytes(SHARE_BYTES, "big")
    return shares


def combine_shares(shares: Mapping[int, bytes], threshold: int, size: int) -> bytes:
    """The ``size``-byte secret from at least ``threshold`` shares (Lagrange at zero).

    Only the first ``threshold`` shares (by point) are used. Denominators are inverted
    once (one modular inverse for the whole set), so a threshold of 667 takes milliseconds.

    Raises
    ------
    MaskingError
        With fewer than ``threshold`` shares, malformed share values, or when the result
        does not fit ``size`` bytes (a wrong share set).

    """
    if len(shares) < threshold or threshold < 1:
        raise MaskingError(
            f"{len(shares)} shares cannot rebuild a secret of threshold {threshold}."
        )
    points = sorted(int(x) for x in shares)[:threshold]
    values = []
    for x in points:
        value = int.from_bytes(_need(shares[x], SHARE_BYTES, "a share value"), "big")
        if not 0 < x < FIELD_PRIME or value >= FIELD_PRIME:
            raise MaskingError(f"share at point {x} is outside the field.")
        values.append(value)
    p = FIELD_PRIME
    numerators, denominators = [], []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % p
                den = den * (xj - xi) % p
        numerators.append(num)
        denominators.append(den)
    # batch inversion: one pow() for every denominator
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % p)
    inv = pow(prefix[-1], p - 2, p)
    secret = 0
    for i in range(len(points) - 1, -1, -1):
        inv_i = inv * prefix[i] % p
        inv = inv * denominators[i] % p
        secret = (secret + values[i] * numerators[i] * inv_i) % p
    if secret >= 1 << (8 * size):
        raise MaskingError(
            f"the shares rebuild a value wider than {size} bytes: at least one share is wrong."
        )
    return secret.to_bytes(size, "big")


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce | ciphertext | tag``, bound to ``aad``. Inverse: :func:`open_sealed`."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(_need(key, 32, "a channel key")).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate :func:`seal`'s output, or raise :class:`MaskingError`."""
    if not isinstance(sealed, bytes) or len(sealed) < _NONCE_BYTES + 16:
        raise MaskingError("a sealed share is too short to hold a nonce and a tag.")
    try:
        return AESGCM(_need(key, 32, "a channel key")).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad
        )
    except InvalidTag as exc:
        raise MaskingError(
            "a sealed share failed authentication (altered, or not addressed to this client "
            "for this run and round)."
        ) from exc


def new_identity() -> tuple[bytes, bytes]:
    """A fresh Ed25519 identity key pair as raw ``(private, public)`` bytes."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, _NoEncryption())
    return raw, identity_public(raw)


def identity_public(private: bytes) -> bytes:
    """The raw Ed25519 public key of a raw private key."""
    key = Ed25519PrivateKey.from_private_bytes(_need(private, KEY_BYTES, "an identity key"))
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private: bytes, message: bytes) -> bytes:
    """Ed25519 signature of ``message``. Inverse check: :func:`verify`."""
    key = Ed25519PrivateKey.from_private_bytes(_need(private, KEY_BYTES, "an identity key"))
    return key.sign(message)


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`MaskingError` unless ``signature`` is ``public``'s over ``message``."""
    key = Ed25519PublicKey.from_public_bytes(_need(public, KEY_BYTES, "an identity public key"))
    try:
        key.verify(_need(signature, 64, "a signature"), message)
    except InvalidSignature as exc:
        raise MaskingError("an advertisement's signature does not verify.") from exc
