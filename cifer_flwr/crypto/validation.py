"""The one door through which foreign ciphertext bytes reach TenSEAL/SEAL.

Every ciphertext another party sends is checked in three steps (docs/design.md §5):

1. before TenSEAL sees the bytes, its ``CKKSVectorProto`` (``BFVVectorProto`` for the
   ``packed`` preset) is parsed here (known fields and wire types only, exactly one SEAL
   ciphertext, declared size within the slots, CKKS: scale equal to the preset's, BFV: no
   scale);
2. the SEAL serialization header of the embedded ciphertext is checked (magic, header size,
   version, compression mode, declared size equal to the bytes present), and for compressed
   data the zstd frame is walked so that the inflated size is bounded by the largest size-2
   ciphertext of the preset *before* anything is inflated (no decompression bomb);
3. the object is inflated here and its members are checked before SEAL reads them
   (:func:`check_ciphertext_members`: 2 polynomials, the preset's ring degree, the expected
   level and parms id, which also pins the BFV plain modulus, NTT form for CKKS and not for
   BFV, the expected scale, and coefficient arrays whose sizes match the bytes present); SEAL
   then parses exactly these members, uncompressed;
4. after TenSEAL parsed it, the ciphertext must not be transparent and every coefficient
   must be reduced modulo its prime (``sealapi.is_valid_for``).

A *seeded* ciphertext (a key holder's symmetric encryption whose random half is replaced
by its PRNG seed, docs/design.md §4.7) passes the same steps: its SEAL body is half as long
plus the PRNG info, so the step-2 bound holds a fortiori, and SEAL's ``Ciphertext::load``
with the context expands the seed before step 4 checks the result.

Any failure raises :class:`~cifer_flwr.exceptions.CiphertextFormatError`; no TenSEAL
exception escapes.
"""

from __future__ import annotations

import struct
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from cifer_flwr.crypto._protobuf import varint
from cifer_flwr.crypto._seal import (
    SEAL_HEADER_SIZE,
    SEAL_MAGIC,
    SEAL_VERSION,
    check_seal_blob,
    inflate_seal_blob,
    uncompressed_seal_blob,
    vector_message,
)
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.exceptions import CiferError, CiphertextFormatError, LayoutMismatchError

__all__ = [
    "check_ciphertext_members",
    "check_seal_blob",
    "load_chunk",
    "load_vector",
    "max_ciphertext_bytes",
    "max_raw_ciphertext_bytes",
    "parse_vector_proto",
]

# Ciphertext members before the coefficients: parms_id (32), is_ntt_form (1), size,
# poly_modulus_degree, coeff_modulus_size, scale, correction_factor (8 each), then the
# coefficients as a DynArray with its own SEAL header and a u64 count.
_CT_HEAD = struct.Struct("<32sBQQQdQ")
_CT_MEMBERS = _CT_HEAD.size + SEAL_HEADER_SIZE + 8
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
# A seeded ciphertext ends with its PRNG's info: a SEAL header, the PRNG type (1 byte:
# 1 = BLAKE2xb, 2 = SHAKE-256) and a 64-byte seed (docs/design.md §4.7).
_PRNG_INFO_SIZE = SEAL_HEADER_SIZE + 1 + 64
_PRNG_TYPES = (1, 2)


def _fail(what: str, message: str) -> CiphertextFormatError:
    return CiphertextFormatError(f"{what}: {message}")


def max_raw_ciphertext_bytes(params: CkksParams, *, level: int = 0) -> int:
    """Uncompressed size of a size-2 ciphertext of ``params`` at ``level`` (SEAL members).

    Level 0 is the first data level (all data primes); each rescaling drops one prime.
    """
    primes = len(params.coeff_mod_bit_sizes) - 1 - level
    return _CT_MEMBERS + 8 * 2 * params.poly_modulus_degree * max(primes, 1)


def max_ciphertext_bytes(params: CkksParams) -> int:
    """Upper bound of the serialized bytes of one ciphertext (a TenSEAL vector) of ``params``.

    Covers an uncompressed or zstd-compressed size-2 ciphertext at the first data level
    plus the TenSEAL protobuf around it; use it to refuse an oversized reply before
    parsing it (a layout of ``k`` chunks needs at most ``k * max_ciphertext_bytes(params)``).
    """
    raw = max_raw_ciphertext_bytes(params)
    # zstd never expands by more than ~1/256 plus a few block headers; protobuf adds < 40.
    return SEAL_HEADER_SIZE + raw + raw // 128 + 1024


def parse_vector_proto(
    blob: bytes, params: CkksParams, *, what: str = "ciphertext"
) -> tuple[int, bytes]:
    """Parse a serialized TenSEAL ``CKKSVectorProto``; return its size and SEAL ciphertext.

    The message must be exactly ``sizes`` (field 1, packed, one value in ``1..slots``),
    ``ciphertexts`` (field 2, exactly one) and ``scale`` (field 3, a double equal to
    ``2**params.scale_bits``), each present once, nothing else. For a BFV preset it is a
    ``BFVVectorProto``: the same without ``scale``.

    Raises
    ------
    CiphertextFormatError
        For any other structure.

    """
    data = bytes(blob)
    limit = max_ciphertext_bytes(params)
    if len(data) > limit:
        raise _fail(
            what,
            f"{len(data)} bytes, more than the {limit} a ciphertext of preset "
            f"{params.name!r} can take.",
        )
    pos = 0
    size: int | None = None
    seal: bytes | None = None
    scale: float | None = None
    try:
        while pos < len(data):
            tag, pos = varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number == 1 and wire == 2:
                if size is not None:
                    raise _fail(what, "the vector declares its size twice.")
                length, pos = varint(data, pos)
                end = pos + length
                if end > len(data):
                    raise _fail(what, "truncated size field.")
                size, pos = varint(data, pos)
                if pos != end:
                    raise _fail(what, "the vector declares more than one chunk size.")
            elif number == 2 and wire == 2:
                if seal is not None:
                    raise _fail(what, "the vector holds more than one SEAL ciphertext, expected 1.")
                length, pos = varint(data, pos)
                if pos + length > len(data):
                    raise _fail(what, "truncated SEAL ciphertext field.")
                seal = data[pos : pos + length]
                pos += length
            elif number == 3 and wire == 1 and not params.is_bfv:
                if scale is not None:
                    raise _fail(what, "the vector declares its scale twice.")
                if pos + 8 > len(data):
                    raise _fail(what, "truncated scale field.")
                (scale,) = struct.unpack_from("<d", data, pos)
                pos += 8
            else:
                expected = "1 (sizes), 2 (ciphertexts)" + ("" if params.is_bfv else ", 3 (scale)")
                raise _fail(
                    what,
                    f"unexpected protobuf field {number} (wire type {wire}) in a TenSEAL "
                    f"vector of preset {params.name!r}; expected only fields {expected}.",
                )
    except CiphertextFormatError as exc:
        if str(exc).startswith(what):
            raise
        raise _fail(what, str(exc)) from exc
    if seal is None:
        raise _fail(
            what,
            "the TenSEAL vector holds no SEAL ciphertext (expected exactly 1); it declares "
            f"size {size} but carries no encrypted data.",
        )
    if size is None or not 1 <= size <= params.slots:
        raise _fail(what, f"declared size {size}, expected 1..{params.slots}.")
    if params.is_bfv:
        return size, seal
    expected_scale = 2.0**params.scale_bits
    if scale != expected_scale:
        raise _fail(
            what,
            f"scale {scale!r}, expected 2**{params.scale_bits} = {expected_scale:g} "
            f"(preset {params.name!r}).",
        )
    return size, seal


def _parms_id_at(key: Key, level: int) -> Any:
    data = key.context().seal_context().data.first_context_data()
    for _ in range(level):
        data = data.next_context_data()
        if data is None:
            return None
    return data.parms_id()


def load_vector(
    blob: bytes | bytearray | memoryview,
    key: Key,
    *,
    level: int = 0,
    what: str = "ciphertext",
) -> Any:
    """Validate and deserialize one foreign TenSEAL vector of ``key``'s preset.

    A ``CKKSVector`` for CKKS presets, a ``BFVVector`` for ``packed``; full or seeded.

    The only function that hands another party's ciphertext bytes to TenSEAL.

    Parameters
    ----------
    blob : bytes
        ``CKKSVector.serialize()`` output (no context attached).
    key : Key
        The key it belongs to (public suffices).
    level : int
        Expected level: number of rescalings since encryption (0 for fresh ciphertexts and
        their sums).
    what : str
        Name of the ciphertext in error messages (``"ciphertext 3 of 489 of part 'model'"``).

    Returns
    -------
    tenseal.CKKSVector or tenseal.BFVVector
        The vector, linked to ``key.context()``.

    Raises
    ------
    CiphertextFormatError
        When any check fails (see the module docstring); the message says what was found
        and what was expected.

    """
    params = key.params
    data = bytes(blob)
    size, seal = parse_vector_proto(data, params, what=what)
    members = inflate_seal_blob(seal, max_raw_ciphertext_bytes(params, level=level), what=what)
    check_ciphertext_members(members, key, level=level, what=what)
    # SEAL reads exactly the members checked above, uncompressed: its own zstd never runs
    # on another party's bytes.
    scale = None if params.is_bfv else 2.0**params.scale_bits
    data = vector_message(size, uncompressed_seal_blob(members), scale)
    ctx = key.context()
    try:
        vec = ts.bfv_vector_from(ctx, data) if params.is_bfv else ts.ckks_vector_from(ctx, data)
        cts = vec.ciphertext()
    except CiferError:
        raise
    except Exception as exc:  # TenSEAL/SEAL raise ValueError, RuntimeError, TypeError...
        raise _fail(
            what,
            f"{len(data)} bytes do not parse as a ciphertext of preset {params.name!r} "
            f"({type(exc).__name__}: {exc}); truncated, corrupted or made with other parameters.",
        ) from exc
    if len(cts) != 1:
        raise _fail(what, f"{len(cts)} SEAL ciphertexts, expected 1.")
    ct = cts[0]
    _check_seal_ciphertext(ct, key, what)
    return vec


def check_ciphertext_members(
    members: bytes, key: Key, *, level: int = 0, what: str = "ciphertext"
) -> None:
    """Check the inflated members of a SEAL ciphertext before SEAL parses them.

    Every field SEAL reads must be the one a fresh size-2 ciphertext of ``key``'s preset at
    ``level`` carries (parms id, NTT form, size, ring degree, prime count, scale, correction
    factor), and the coefficient array's header and count must match the bytes present
    exactly: a full ciphertext (``2 * degree * primes`` coefficients) or a seeded one (half
    of them, then the PRNG info). SEAL reads an inconsistent object past its end with an
    exception TenSEAL does not translate (the process aborts), so nothing else may reach it.

    Raises
    ------
    CiphertextFormatError
        Naming the first member that differs, what was found and what was expected.

    """
    params = key.params
    primes = len(params.coeff_mod_bit_sizes) - 1 - level
    degree = params.poly_modulus_degree
    if len(members) < _CT_MEMBERS:
        raise _fail(what, f"{len(members)} bytes of SEAL ciphertext members, fewer than a header.")
    parms_id, ntt, size, found_degree, found_primes, scale, correction = _CT_HEAD.unpack_from(
        members
    )
    preset = f"preset {params.name!r}"
    if size != 2:
        raise _fail(
            what,
            f"the SEAL ciphertext has {size} polynomials, expected 2 (a size-3 ciphertext is "
            "an unrelinearized product).",
        )
    if found_degree != degree:
        raise _fail(what, f"ring degree {found_degree}, expected {degree} ({preset}).")
    if found_primes != primes:
        at = len(params.coeff_mod_bit_sizes) - 1 - found_primes
        raise _fail(
            what,
            f"ciphertext at level {at} ({found_primes} primes), expected level {level} "
            f"({primes} primes) of {preset}.",
        )
    if parms_id != struct.pack("<4Q", *(_parms_id_at(key, level) or [0, 0, 0, 0])):
        raise _fail(
            what,
            f"SEAL parms id {parms_id.hex()} is not the one of level {level} of {preset}: "
            "made with other parameters (another plain modulus or primes).",
        )
    if ntt != (0 if params.is_bfv else 1):
        form = "in NTT form; BFV ciphertexts are not" if ntt else "not in NTT form; CKKS ones are"
        raise _fail(what, f"the SEAL ciphertext is {form} (NTT flag {ntt}).")
    expected_scale = 1.0 if params.is_bfv else 2.0**params.scale_bits
    if scale != expected_scale:
        raise _fail(what, f"SEAL scale {scale!r}, expected {expected_scale:g} ({preset}).")
    if correction != 1:
        raise _fail(what, f"SEAL correction factor {correction}, expected 1.")
    full = 2 * degree * primes
    count = struct.unpack_from("<Q", members, _CT_HEAD.size + SEAL_HEADER_SIZE)[0]
    tail = {full: 0, full // 2: _PRNG_INFO_SIZE}.get(count)
    if tail is None:
        raise _fail(
            what,
            f"the SEAL ciphertext declares {count} coefficients, expected {full} (full) or "
            f"{full // 2} (seeded).",
        )
    array_end = _CT_MEMBERS + 8 * count
    if len(members) != array_end + tail:
        raise _fail(
            what,
            f"{len(members)} bytes of SEAL ciphertext members, expected {array_end + tail} "
            f"for {count} coefficients.",
        )
    _check_plain_header(members, _CT_HEAD.size, array_end - _CT_HEAD.size, what)
    if tail:
        _check_plain_header(members, array_end, _PRNG_INFO_SIZE, what)
        if members[array_end + SEAL_HEADER_SIZE] not in _PRNG_TYPES:
            raise _fail(
                what,
                f"seeded ciphertext with PRNG type {members[array_end + SEAL_HEADER_SIZE]}, "
                f"expected one of {_PRNG_TYPES}.",
            )


def _check_plain_header(members: bytes, offset: int, size: int, what: str) -> None:
    """An inner SEAL header at ``offset``: this SEAL's version, uncompressed, ``size`` bytes."""
    found = _SEAL_HEADER.unpack_from(members, offset)
    expected = (SEAL_MAGIC, SEAL_HEADER_SIZE, *SEAL_VERSION, 0, 0, size)
    if found != expected:
        raise _fail(
            what,
            f"inner SEAL header {found} at offset {offset}, expected {expected} "
            "(magic, header size, version, no compression, reserved, size).",
        )


def load_chunk(blob: bytes | bytearray | memoryview, key: Key, *, what: str = "ciphertext") -> Any:
    """:func:`load_vector` of a fresh (level 0) ciphertext that must fill all the key's slots.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError
        When the ciphertext fails validation or holds another number of values.

    """
    vec = load_vector(blob, key, what=what)
    if vec.size() != key.params.slots:
        raise LayoutMismatchError(
            f"{what}: holds {vec.size()} values, expected {key.params.slots}."
        )
    return vec


def _check_seal_ciphertext(ct: Any, key: Key, what: str) -> None:
    """What only the parsed ciphertext shows (its members were checked before SEAL read them)."""
    if ct.is_transparent():
        raise _fail(what, "the SEAL ciphertext is transparent (it encrypts nothing).")
    if not sealapi.is_valid_for(ct, key.context().seal_context().data):
        raise _fail(
            what,
            "the SEAL ciphertext is not valid for the key's parameters (a coefficient is "
            "not reduced modulo its prime).",
        )
