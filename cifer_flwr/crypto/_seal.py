"""SEAL serialization headers and zstd frames, checked before SEAL reads them.

SEAL inflates compressed objects completely before parsing them; a few kilobytes can
declare gigabytes. :func:`check_seal_blob` bounds what an object may inflate to by walking
the zstd frame (docs/design.md §5).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from cifer_flwr.crypto._protobuf import encode_varint
from cifer_flwr.exceptions import CiphertextFormatError

if TYPE_CHECKING:
    import numpy.typing as npt
    import tenseal as ts

    from cifer_flwr.crypto.params import CkksParams

__all__ = [
    "SEAL_HEADER_SIZE",
    "SEAL_MAGIC",
    "SEAL_VERSION",
    "check_seal_blob",
    "inflate_seal_blob",
    "seeded_bfv_vectors",
    "seeded_ciphertexts",
    "seeded_vectors",
    "uncompressed_seal_blob",
    "vector_message",
]

SEAL_MAGIC = 0xA15E
SEAL_HEADER_SIZE = 16
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 128 * 1024


def _seal_version() -> tuple[int, int]:
    header = sealapi.Serialization.SEALHeader()
    return int(header.version_major), int(header.version_minor)


SEAL_VERSION = _seal_version()


def _fail(what: str, message: str) -> CiphertextFormatError:
    return CiphertextFormatError(f"{what}: {message}")


def _zstd_inflated_bound(frame: bytes, max_raw: int, what: str) -> int:
    """Walk one zstd frame; return its declared content size after bounding every block."""
    if len(frame) < 6 or int.from_bytes(frame[:4], "little") != _ZSTD_MAGIC:
        raise _fail(what, "the compressed SEAL data is not a zstd frame.")
    fhd = frame[4]
    fcs_flag, single, reserved, checksum, dict_flag = (
        fhd >> 6,
        (fhd >> 5) & 1,
        (fhd >> 3) & 1,
        (fhd >> 2) & 1,
        fhd & 3,
    )
    if reserved or dict_flag:
        raise _fail(what, "the zstd frame uses a dictionary or reserved bits.")
    pos = 5
    window = 0
    if not single:
        wd = frame[pos]
        pos += 1
        base = 1 << (10 + (wd >> 3))
        window = base + (base // 8) * (wd & 7)
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if fcs_len == 0:
        raise _fail(what, "the zstd frame does not declare its content size.")
    if pos + fcs_len > len(frame):
        raise _fail(what, "truncated zstd frame header.")
    content = int.from_bytes(frame[pos : pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    if content > max_raw:
        raise _fail(
            what,
            f"the compressed ciphertext declares {content} bytes once inflated, more than "
            f"the {max_raw} a size-2 ciphertext can take (refused before decompression).",
        )
    if single:
        window = content
    if window > 2 * max_raw + _ZSTD_BLOCK_MAX:
        raise _fail(what, f"zstd window of {window} bytes, at most {2 * max_raw} expected.")
    block_max = min(window, _ZSTD_BLOCK_MAX) if window else _ZSTD_BLOCK_MAX
    bound = 0
    while True:
        if pos + 3 > len(frame):
            raise _fail(what, "truncated zstd block header.")
        head = int.from_bytes(frame[pos : pos + 3], "little")
        pos += 3
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            raise _fail(what, "reserved zstd block type.")
        if size > _ZSTD_BLOCK_MAX:
            raise _fail(what, f"zstd block of {size} bytes (the maximum is {_ZSTD_BLOCK_MAX}).")
        pos += 1 if kind == 1 else size
        bound += size if kind in (0, 1) else block_max
        if pos > len(frame):
            raise _fail(what, "truncated zstd block.")
        if bound > 2 * max_raw + _ZSTD_BLOCK_MAX:
            raise _fail(
                what,
                f"the zstd blocks may inflate to {bound} bytes, far more than the {max_raw} "
                "of a size-2 ciphertext (decompression bomb refused).",
            )
        if last:
            break
    pos += 4 if checksum else 0
    if pos != len(frame):
        raise _fail(what, f"{len(frame) - pos} unexpected bytes after the zstd frame.")
    return content


def check_seal_blob(blob: bytes, max_raw: int, *, what: str = "SEAL object") -> int:
    """Check a SEAL serialization header and bound what loading it would inflate to.

    Parameters
    ----------
    blob : bytes
        One serialized SEAL object (``Ciphertext::save`` output).
    max_raw : int
        Largest uncompressed size the object may legitimately have.
    what : str
        Name of the object in error messages.

    Raises
    ------
    CiphertextFormatError
        On a wrong magic, header size, version or compression mode, a declared size that
        differs from the bytes present, or compressed data that may inflate beyond
        ``max_raw``.

    Returns
    -------
    int
        The size of the object's members once inflated (declared by the zstd frame).

    """
    if len(blob) < SEAL_HEADER_SIZE:
        raise _fail(what, f"{len(blob)} bytes, shorter than a SEAL header.")
    magic, header_size, major, minor, compr, reserved, size = _SEAL_HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or header_size != SEAL_HEADER_SIZE:
        raise _fail(
            what,
            f"SEAL magic 0x{magic:04X} / header size {header_size}, expected "
            f"0x{SEAL_MAGIC:04X} / {SEAL_HEADER_SIZE}.",
        )
    if (major, minor) != SEAL_VERSION:
        raise _fail(
            what,
            f"SEAL serialization version {major}.{minor}, expected "
            f"{SEAL_VERSION[0]}.{SEAL_VERSION[1]} (the version this TenSEAL writes).",
        )
    if reserved:
        raise _fail(what, "non-zero reserved field in the SEAL header.")
    if size != len(blob):
        raise _fail(what, f"the SEAL header declares {size} bytes, {len(blob)} are present.")
    if compr == _COMPR_NONE:
        if size - SEAL_HEADER_SIZE > max_raw:
            raise _fail(what, f"{size} bytes, more than the {max_raw} expected.")
        return int(size) - SEAL_HEADER_SIZE
    if compr == _COMPR_ZSTD:
        return _zstd_inflated_bound(blob[SEAL_HEADER_SIZE:], max_raw, what)
    raise _fail(
        what,
        f"SEAL compression mode {compr}, expected 0 (none) or 2 (zstd) "
        "(zlib streams cannot be bounded before inflation).",
    )


def inflate_seal_blob(blob: bytes, max_raw: int, *, what: str = "SEAL object") -> bytes:
    """:func:`check_seal_blob`, then the object's members exactly as SEAL will read them.

    A zstd-compressed object is inflated here (its size was bounded first), so that the
    members' own sizes can be checked against the bytes present before SEAL parses them:
    SEAL reads past the end of an inconsistent object with exceptions that escape TenSEAL
    and abort the process (docs/design.md §5).

    Raises
    ------
    CiphertextFormatError
        When :func:`check_seal_blob` does, or the zstd data does not inflate to exactly the
        size its frame declares.

    """
    declared = check_seal_blob(blob, max_raw, what=what)
    body = bytes(blob[SEAL_HEADER_SIZE:])
    if blob[5] != _COMPR_ZSTD:  # the header's compression mode byte
        return body
    try:
        members = zstandard.ZstdDecompressor().decompress(body, max_output_size=declared)
    except zstandard.ZstdError as exc:
        raise _fail(what, f"the zstd data does not inflate ({exc}).") from exc
    if len(members) != declared:
        raise _fail(
            what, f"the zstd data inflates to {len(members)} bytes, its frame declares {declared}."
        )
    return members


@contextmanager
def _scratch_file() -> Iterator[tuple[int, str]]:
    """An in-memory file (``memfd``) and a path SEAL's file-based ``save`` can write to."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cifer-ct", os.MFD_CLOEXEC)
        try:
            yield fd, f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(dir=shm) as handle:
        yield handle.fileno(), handle.name


def seeded_ciphertexts(
    seal_context: Any, secret_key: Any, plaintexts: Iterable[Any]
) -> list[bytes]:
    """Encrypt SEAL plaintexts symmetrically and return each as *seeded* SEAL bytes.

    SEAL replaces the uniformly random half ``c1`` of a symmetric ciphertext by the seed
    of its PRNG when saving (``Encryptor.encrypt_symmetric`` returns a ``Serializable``):
    about half the bytes. ``Ciphertext::load`` with the context re-expands the seed and
    checks the result (docs/design.md §4.7). Only a secret-key holder can make them.
    """
    encryptor = sealapi.Encryptor(seal_context, secret_key)
    out = []
    with _scratch_file() as (fd, path):
        for plain in plaintexts:
            encryptor.encrypt_symmetric(plain).save(path)
            out.append(os.pread(fd, os.fstat(fd).st_size, 0))
    return out


def _ckks_plaintexts(
    ctx: ts.Context, chunks: Iterable[npt.NDArray[np.float64]], scale: float
) -> Iterator[Any]:
    encoder = sealapi.CKKSEncoder(ctx.seal_context().data)
    for chunk in chunks:
        plain = sealapi.Plaintext()
        encoder.encode(np.asarray(chunk, np.float64).tolist(), scale, plain)
        yield plain


def seeded_vectors(
    ctx: ts.Context, chunks: list[npt.NDArray[np.float64]], params: CkksParams
) -> list[bytes]:
    """Seeded TenSEAL ``CKKSVector`` bytes of ``chunks`` (``ctx`` must hold the secret key).

    The bytes are exactly a serialized ``CKKSVectorProto`` (sizes, one SEAL ciphertext,
    scale) whose ciphertext is seeded; ``tenseal.ckks_vector_from`` and
    :func:`cifer_flwr.crypto.validation.load_vector` read them like full ones.
    """
    scale = 2.0**params.scale_bits
    seals = seeded_ciphertexts(
        ctx.seal_context().data, ctx.secret_key().data, _ckks_plaintexts(ctx, chunks, scale)
    )
    return [
        vector_message(len(chunk), seal, scale) for chunk, seal in zip(chunks, seals, strict=True)
    ]


def vector_message(count: int, seal: bytes, scale: float | None) -> bytes:
    """Serialize a TenSEAL vector: one chunk of ``count`` values in ``seal``.

    A ``CKKSVectorProto`` with ``scale``, a ``BFVVectorProto`` when ``scale`` is ``None``.
    """
    size = encode_varint(count)
    message = b"\x0a" + encode_varint(len(size)) + size + b"\x12" + encode_varint(len(seal)) + seal
    return message if scale is None else message + b"\x19" + struct.pack("<d", scale)


def uncompressed_seal_blob(members: bytes) -> bytes:
    """A SEAL object of this SEAL version holding ``members`` uncompressed."""
    size = SEAL_HEADER_SIZE + len(members)
    header = _SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER_SIZE, *SEAL_VERSION, _COMPR_NONE, 0, size)
    return header + members


def seeded_bfv_vectors(ctx: ts.Context, ints: list[npt.NDArray[np.int64]]) -> list[bytes]:
    """Seeded TenSEAL ``BFVVector`` bytes (sizes, one seeded SEAL ciphertext) of ``ints``.

    ``ctx`` must hold the secret key; every value must lie in ``(-t/2, t/2)``.
    """
    seal_context = ctx.seal_context().data
    encoder = sealapi.BatchEncoder(seal_context)

    def plaintexts() -> Iterator[Any]:
        for chunk in ints:
            plain = sealapi.Plaintext()
            encoder.encode(np.asarray(chunk, np.int64).tolist(), plain)
            yield plain

    seals = seeded_ciphertexts(seal_context, ctx.secret_key().data, plaintexts())
    return [vector_message(len(chunk), seal, None) for chunk, seal in zip(ints, seals, strict=True)]
