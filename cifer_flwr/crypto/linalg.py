"""Homomorphic linear algebra on CKKS vectors, for training on encrypted data.

The securetrain workflows need more than the additions of federated aggregation:
ciphertext x ciphertext and ciphertext x plaintext products, polynomial evaluation and sums
over slots (rotations). This module is the thin, typed layer over TenSEAL that provides them;
everything above it (datasets, the training loop) is plain Python and never sees TenSEAL.

Conventions
-----------
* Every :class:`Ciphertext` spans all ``slots`` of the ring (``N / 2`` values). Data that is
  shorter is laid out *periodically*: a column of ``p`` values (``p`` a power of two dividing
  ``slots``) is repeated ``slots / p`` times, so that :meth:`Ciphertext.window_sum` with
  period ``p`` leaves the total of one period in **every** slot (no masking level needed).
* A weight is a constant vector (the same value in every slot).
* Every product (ciphertext or plaintext) is rescaled at once and costs one level;
  additions are free. :attr:`Ciphertext.level` counts the levels already used.
* Rotations need Galois keys for the steps ``1, 2, 4, ..., p / 2``;
  :func:`generate_training_key` makes a key pair holding only those (a full set of Galois keys
  for a deep ring would weigh gigabytes).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sealapi

from cifer_flwr.crypto._protobuf import encode_varint, fields, length_delimited, payload
from cifer_flwr.crypto._seal import seeded_vectors
from cifer_flwr.crypto.keys import Key, fingerprint_of
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.crypto.validation import load_vector
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    KeyMismatchError,
    NonFiniteError,
    UnsupportedOperationError,
    ValueRangeError,
)

__all__ = [
    "Ciphertext",
    "Plain",
    "encrypt_constant",
    "encrypt_periodic",
    "estimate_public_key_bytes",
    "generate_training_key",
    "has_training_keys",
    "periodic",
    "rotation_steps",
    "sum_all",
]

Plain = npt.NDArray[np.float64]


def _with_size(serialized: bytes, size: int) -> bytes:
    """Rewrite the logical ``size`` (field 1) of a serialized TenSEAL ``CKKSVector``.

    TenSEAL keeps a logical length next to the ciphertext; ``sum`` sets it to 1 and binary
    operations on different lengths "broadcast" with an extra masking level. All our vectors
    span the whole ring, so we set the length explicitly instead.
    """
    parts = [raw for number, _, raw in fields(serialized) if number != 1]
    return length_delimited(1, encode_varint(size)) + b"".join(parts)


# --------------------------------------------------------------------------------- key pairs


def rotation_steps(max_period: int) -> list[int]:
    """Rotation steps a window sum over ``max_period`` slots needs: ``1, 2, ..., p / 2``."""
    if max_period < 1 or max_period & (max_period - 1):
        raise ConfigError(f"max_period must be a power of two, got {max_period}.")
    return [1 << i for i in range(int(math.log2(max_period)))]


def estimate_public_key_bytes(params: CkksParams, max_period: int) -> int:
    """Rough size of a training public key: relinearization + one Galois key per step.

    One key-switching key holds ``L - 1`` ciphertexts of ``L`` primes (``L`` primes in all);
    seeding stores one of each ciphertext's two polynomials as a seed, and SEAL's zstd
    compression saves about a quarter of the rest.
    """
    primes = len(params.coeff_mod_bit_sizes)
    per_key = (primes - 1) * params.poly_modulus_degree * primes * 8
    keys = 1 + len(rotation_steps(max_period))
    return int(per_key * keys * 0.75)


def generate_training_key(params: CkksParams, *, max_period: int) -> Key:
    """Generate a key pair able to train on encrypted data.

    The public part holds the public key, relinearization keys and Galois keys for the
    rotation steps ``1, 2, 4, ..., max_period / 2`` only. The private part holds the secret
    key and the public key (no evaluation keys, so it loads fast: it only encrypts and
    decrypts); so does its private key *file* (``Key.slim``: the evaluation keys, nearly
    all of the public material, are written to the public key file only).

    Parameters
    ----------
    params : CkksParams
        Parameters with enough depth (see :func:`cifer_flwr.crypto.params.for_depth`).
    max_period : int
        Largest period (power of two, at most ``params.slots``) a window sum will use.

    Returns
    -------
    Key
        The private key; ``key.public()`` is what the computing party receives.

    """
    if max_period > params.slots:
        raise ConfigError(
            f"max_period {max_period} exceeds the {params.slots} slots of {params.name!r}."
        )
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**params.scale_bits
    two_n = 2 * params.poly_modulus_degree
    # Seeded evaluation keys: SEAL's Serializable keys store the uniformly random half of
    # every key-switching ciphertext as the seed of its PRNG (half the bytes, zstd on top);
    # loading re-expands it. Only the secret-key holder can make them (docs/design.md §4.6).
    generator = sealapi.KeyGenerator(ctx.seal_context().data, ctx.secret_key().data)
    elements = [pow(3, s, two_n) for s in rotation_steps(max_period)]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "keys")
        generator.create_relin_keys().save(path)
        relin_bytes = Path(path).read_bytes()
        generator.create_galois_keys(elements).save(path)
        galois_bytes = Path(path).read_bytes()
    public = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    # TenSEALContextProto: 1 encryption parameters, 2 public part (4 = relinearization
    # keys, 5 = Galois keys).
    top = fields(public)
    rebuilt = b""
    for number, _, raw in top:
        if number == 2:
            part = b"".join(r for n, _, r in fields(payload(raw)) if n not in (4, 5))
            rebuilt += length_delimited(
                2, part + length_delimited(4, relin_bytes) + length_delimited(5, galois_bytes)
            )
        else:
            rebuilt += raw
    private = ctx.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    # slim: the private key file keeps only what the key holder needs (Key.slim)
    return Key(params, fingerprint_of(rebuilt), True, rebuilt, private, slim=True)


def has_training_keys(key: Key) -> bool:
    """Whether ``key``'s loaded context holds relinearization and Galois keys."""
    ctx = key.context()
    return bool(ctx.has_relin_keys() and ctx.has_galois_keys())


# ------------------------------------------------------------------------------- ciphertexts


def periodic(values: npt.ArrayLike, period: int, slots: int) -> Plain:
    """Lay ``values`` out periodically: zero-pad to ``period`` and repeat to ``slots``.

    Inverse: ``out[: len(values)]``.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size > period or slots % period:
        raise ConfigError(f"{arr.size} values do not fit a period of {period} in {slots} slots.")
    padded = np.zeros(period)
    padded[: arr.size] = arr
    return np.tile(padded, slots // period)


class Ciphertext:
    """One CKKS ciphertext over all slots of the ring, with level bookkeeping.

    Build with :func:`encrypt_periodic`, :func:`encrypt_constant` or :meth:`from_bytes`;
    arithmetic returns new objects and never modifies its operands.
    """

    __slots__ = ("_vec", "_wire", "key", "level")

    def __init__(self, vec: Any, key: Key, level: int, wire: bytes | None = None) -> None:
        self._vec = vec
        self.key = key
        self.level = level
        # Seeded bytes of a fresh symmetric encryption (half the size); results of
        # arithmetic are new objects without them and serialize in full.
        self._wire = wire

    @property
    def slots(self) -> int:
        """Number of slots (``N / 2``)."""
        return self.key.params.slots

    @property
    def levels_left(self) -> int:
        """Multiplications still possible before the modulus is exhausted."""
        return self.key.params.depth - self.level

    def _check(self, other: Ciphertext) -> None:
        if other.key.fingerprint != self.key.fingerprint:
            raise KeyMismatchError(other.key.fingerprint, self.key.fingerprint, "ciphertext")

    def _need_level(self, *levels: int) -> int:
        level = max((self.level, *levels)) + 1
        if level > self.key.params.depth:
            raise UnsupportedOperationError(
                f"multiplicative depth exhausted: this product needs level {level}, but the "
                f"parameters ({self.key.params.name}) allow {self.key.params.depth}. Use "
                "fewer iterations or a key made for more."
            )
        return level

    def __add__(self, other: Ciphertext | float | Plain) -> Ciphertext:
        """Sum with a ciphertext, a scalar or a full-length plaintext vector (no level)."""
        if isinstance(other, Ciphertext):
            self._check(other)
            return Ciphertext(self._vec + other._vec, self.key, max(self.level, other.level))
        if isinstance(other, np.ndarray):
            self._check_plain(other)
            return Ciphertext(self._vec + other.tolist(), self.key, self.level)
        return Ciphertext(self._vec + float(other), self.key, self.level)

    def _check_plain(self, other: Plain) -> None:
        if other.shape != (self.slots,):
            raise ConfigError(f"plaintext of shape {other.shape}, expected ({self.slots},).")

    __radd__ = __add__

    def __sub__(self, other: Ciphertext) -> Ciphertext:
        self._check(other)
        return Ciphertext(self._vec - other._vec, self.key, max(self.level, other.level))

    def __mul__(self, other: Ciphertext | float | Plain) -> Ciphertext:
        """Product with a ciphertext, a scalar or a full-length plaintext vector (one level)."""
        if isinstance(other, Ciphertext):
            self._check(other)
            level = self._need_level(other.level)
            return Ciphertext(self._vec * other._vec, self.key, level)
        level = self._need_level()
        if isinstance(other, np.ndarray):
            self._check_plain(other)
            return Ciphertext(self._vec * other.tolist(), self.key, level)
        return Ciphertext(self._vec * float(other), self.key, level)

    __rmul__ = __mul__

    def square(self) -> Ciphertext:
        """Elementwise square (one level)."""
        return Ciphertext(self._vec.square(), self.key, self._need_level())

    def window_sum(self, period: int) -> Ciphertext:
        """Sum each window of ``period`` consecutive slots (cyclically) into every slot.

        For periodic data of that period, every slot receives the total of one period.
        Uses ``log2(period)`` rotations and no level.
        """
        if period == 1:
            return self
        sized = self._resized(period)
        try:
            summed = sized.sum()
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedOperationError(
                f"rotating the ciphertext failed ({exc}); the public key lacks the Galois "
                f"keys for a period of {period} slots. Create the key pair for this many "
                "samples (encrypt-dataset does) or with more rotations."
            ) from exc
        return Ciphertext(_resize(summed, self.slots, self.key), self.key, self.level)

    def _resized(self, size: int) -> Any:
        return _resize(self._vec, size, self.key)

    def decrypt(self, key: Key) -> Plain:
        """Decrypt all slots with the private ``key`` (inverse of :func:`encrypt_periodic`)."""
        key.require_private("decrypt")
        if key.fingerprint != self.key.fingerprint:
            raise KeyMismatchError(self.key.fingerprint, key.fingerprint, "ciphertext")
        vec = ts.ckks_vector_from(key.context(), self._vec.serialize())
        return np.asarray(vec.decrypt(), dtype=np.float64)

    def to_bytes(self) -> bytes:
        """Serialize the ciphertext (no key material); inverse of :meth:`from_bytes`.

        A ciphertext the secret-key holder just encrypted is written *seeded* (its uniformly
        random half replaced by a 64-byte seed, about half the bytes); :meth:`from_bytes`
        re-expands it.
        """
        if self._wire is not None:
            return self._wire
        return bytes(self._vec.serialize())

    @classmethod
    def from_bytes(
        cls, data: bytes, key: Key, level: int, *, what: str = "ciphertext"
    ) -> Ciphertext:
        """Load a ciphertext made under ``key`` (public suffices) at ``level``.

        The bytes go through :func:`~cifer_flwr.crypto.validation.load_vector`: a
        ciphertext of another level, scale, size or ring is refused (docs/design.md §5).

        Raises
        ------
        CiphertextFormatError
            When the bytes do not parse, the ciphertext is not at ``level`` or does not
            span the ring.

        """
        if isinstance(level, bool) or not isinstance(level, int):
            raise CiphertextFormatError(f"ciphertext level {level!r:.40}, expected an integer.")
        if not 0 <= level <= key.params.depth:
            raise CiphertextFormatError(
                f"ciphertext level {level}, expected 0..{key.params.depth} for parameters "
                f"{key.params.name!r}."
            )
        vec = load_vector(data, key, level=level, what=what)
        if vec.size() != key.params.slots:
            raise CiphertextFormatError(
                f"{what}: holds {vec.size()} values, expected {key.params.slots}."
            )
        return cls(vec, key, level)


def _resize(vec: Any, size: int, key: Key) -> Any:
    if vec.size() == size:
        return vec
    return ts.ckks_vector_from(key.context(), _with_size(vec.serialize(), size))


def _encrypt(values: Plain, key: Key) -> Ciphertext:
    _check_values(values, key)
    if key.is_private:
        # Symmetric and seeded (docs/design.md §4.7): less noise, half the bytes.
        wire = seeded_vectors(key.encryption_context(), [values], key.params)[0]
        return Ciphertext(ts.ckks_vector_from(key.context(), wire), key, 0, wire)
    vec = ts.ckks_vector(key.encryption_context(), values.tolist())
    vec.link_context(key.context())  # evaluation always uses one context
    return Ciphertext(vec, key, 0)


def encrypt_periodic(values: npt.ArrayLike, period: int, key: Key) -> Ciphertext:
    """Encrypt ``values`` laid out by :func:`periodic` (inverse: ``decrypt()[:len(values)]``).

    Raises
    ------
    NonFiniteError
        For NaN or infinite values.
    ValueRangeError
        When a value exceeds the parameters' safe magnitude.

    """
    return _encrypt(periodic(values, period, key.params.slots), key)


def encrypt_constant(value: float, key: Key) -> Ciphertext:
    """Encrypt ``value`` into every slot (a weight); inverse: ``decrypt()[0]``."""
    return _encrypt(np.full(key.params.slots, float(value)), key)


def _check_values(values: Plain, key: Key) -> None:
    if not np.all(np.isfinite(values)):
        raise NonFiniteError("cannot encrypt NaN or infinite values.")
    peak = float(np.abs(values).max(initial=0.0))
    if peak > key.params.max_abs:
        raise ValueRangeError(
            f"a value of magnitude {peak:.6g} exceeds the safe range +-{key.params.max_abs:g} "
            f"of parameters {key.params.name!r}; standardize the data first."
        )


def sum_all(items: Sequence[Ciphertext]) -> Ciphertext:
    """Sum ciphertexts (no level); ``items`` must not be empty."""
    if not items:
        raise ConfigError("sum_all() needs at least one ciphertext, got none.")
    acc = items[0]
    for item in items[1:]:
        acc = acc + item
    return acc
