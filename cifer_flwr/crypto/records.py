"""Encrypted arrays <-> Flower ``ArrayRecord``.

An encrypted record is a *bundle* of named parts (``model``, ``state``, ``check``...). Each
part has one header ``Array`` (JSON: layout, fingerprint, parameters, weight, ``num_chunks``)
and one or more *pack* ``Array`` s ``PART.ct.NNNNNN`` (numbered 0, 1, ... without gaps), each
holding several serialized ciphertexts in a length-prefixed framing (:func:`pack_ciphertexts`)
of at most :data:`PACK_BYTES`. All carry custom ``stype`` values, so calling ``Array.numpy()``
on them raises instead of yielding meaningless numbers.

Why packs (docs/design.md §5): Flower 1.41 moves every ``Array`` of a message as one object,
one object per RPC (two at a time), split into 5 MB ``ArrayChunk`` s. One ``Array`` per
ciphertext (118-236 KB) made a 25M-parameter model ~12,000 objects, i.e. ~24,000 RPCs per
message and node; packs of up to 4 MB make it ~50 objects of one chunk each.

Framing of one pack (big-endian)::

    b"CFP1" | count: u32 | count x length: u32 | payload 0 | payload 1 | ...

Every length is in ``1 .. max_ciphertext_bytes(key.params)``, ``count >= 1``, the payloads
fill the rest of the pack exactly (no trailing bytes, no overlaps: offsets are implied), and
the packs of a part together hold exactly the header's ``num_chunks`` ciphertexts. All of it
is checked before any payload reaches TenSEAL or phe; each payload then goes through the
scheme's validated loader (crypto/validation.py ``load_vector`` for CKKS/BFV).

Reading a record is two steps: :func:`frame_record` checks all of that and locates every
ciphertext (views into the packs, nothing deserialized or copied), :func:`bundle_from_framed`
parses the located ciphertexts; :func:`bundle_from_record` is the two together. A server
hashes a reply's ciphertexts (replay checks) between the two, so the packs are walked once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from flwr.app import Array, ArrayRecord

from cifer_flwr.constants import (
    KIND_ENCRYPTED_BUNDLE,
    RECORD_PREFIX,
    STYPE_CIPHERTEXT,
    STYPE_HEADER,
)
from cifer_flwr.crypto import container
from cifer_flwr.crypto.ckks import EncryptedArrays
from cifer_flwr.crypto.headers import check_part_name
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.paillier import PaillierArrays, PaillierKey
from cifer_flwr.crypto.schemes import AnyParams, from_header_and_chunks, max_ciphertext_bytes
from cifer_flwr.exceptions import CiphertextFormatError, ConfigError, LayoutMismatchError

__all__ = [
    "PACK_BYTES",
    "FramedPart",
    "FramedRecord",
    "bundle_from_framed",
    "bundle_from_record",
    "bundle_to_record",
    "frame_record",
    "from_array_record",
    "is_encrypted_record",
    "pack_ciphertexts",
    "record_bundle_stream",
    "record_ciphertext_views",
    "record_ciphertexts",
    "record_headers",
    "record_part_names",
    "to_array_record",
    "unpack_ciphertexts",
]

#: Most parts an encrypted record may hold, and the largest JSON header of one part.
MAX_PARTS = 64
MAX_HEADER_BYTES = 16 * 1024 * 1024

#: Target size of one pack ``Array``: below Flower 1.41's 5 MB ``ArrayChunk``, so a pack
#: travels as one object in one RPC (docs/design.md §5). A ciphertext larger than this
#: gets a pack of its own.
PACK_BYTES = 4 * 1024 * 1024
PACK_MAGIC = b"CFP1"
_U32 = struct.Struct(">I")
_PACK_HEAD = len(PACK_MAGIC) + _U32.size


def _header_key(part: str) -> str:
    return f"{RECORD_PREFIX}{part}.header"


def _chunk_key(part: str, index: int) -> str:
    return f"{RECORD_PREFIX}{part}.ct.{index:06d}"


def pack_ciphertexts(blobs: Sequence[bytes]) -> bytes:
    """Frame serialized ciphertexts into one pack (inverse of :func:`unpack_ciphertexts`)."""
    if not blobs or any(len(b) == 0 for b in blobs):
        raise ConfigError(
            f"pack_ciphertexts: got {len(blobs)} ciphertexts (some empty?); expected at least "
            "one, each non-empty."
        )
    lengths = b"".join(_U32.pack(len(b)) for b in blobs)
    return b"".join([PACK_MAGIC, _U32.pack(len(blobs)), lengths, *blobs])


@overload
def unpack_ciphertexts(
    data: bytes | bytearray | memoryview,
    *,
    max_items: int,
    max_item_bytes: int,
    what: str = ...,
    views: Literal[False] = ...,
) -> list[bytes]: ...
@overload
def unpack_ciphertexts(
    data: bytes | bytearray | memoryview,
    *,
    max_items: int,
    max_item_bytes: int,
    what: str = ...,
    views: Literal[True],
) -> list[memoryview]: ...
def unpack_ciphertexts(
    data: bytes | bytearray | memoryview,
    *,
    max_items: int,
    max_item_bytes: int,
    what: str = "ciphertext pack",
    views: bool = False,
) -> list[bytes] | list[memoryview]:
    """Split one pack into its serialized ciphertexts, checking the framing first.

    Parameters
    ----------
    data : bytes
        The pack (another party's bytes: hostile).
    max_items : int
        Most ciphertexts this pack may hold (what the part's header still expects).
    max_item_bytes : int
        Largest serialized ciphertext of the key's scheme
        (:func:`~cifer_flwr.crypto.max_ciphertext_bytes`).
    what : str
        Name of the pack in error messages.
    views : bool
        Return read-only memoryviews into ``data`` instead of copies (no extra memory).

    Returns
    -------
    list of bytes (or memoryview)
        The payloads, in order; not yet deserialized.

    Raises
    ------
    CiphertextFormatError
        On a wrong magic, a count of 0 or above ``max_items``, a length of 0 or above
        ``max_item_bytes``, lengths that overrun the pack, or trailing bytes.

    """
    view = memoryview(data)
    size = len(view)
    if size < _PACK_HEAD or bytes(view[: len(PACK_MAGIC)]) != PACK_MAGIC:
        raise CiphertextFormatError(
            f"{what}: {size} bytes starting {bytes(view[:8])!r}; expected a cifer ciphertext "
            f"pack starting {PACK_MAGIC!r} (is the sender running this cifer-flwr version?)."
        )
    (count,) = _U32.unpack_from(view, len(PACK_MAGIC))
    if not 1 <= count <= max_items:
        raise CiphertextFormatError(
            f"{what}: declares {count} ciphertexts; expected 1..{max_items} (what the part's "
            "header num_chunks still allows)."
        )
    body = _PACK_HEAD + _U32.size * count
    if body > size:
        raise CiphertextFormatError(
            f"{what}: {count} lengths need {body} bytes of framing, the pack has {size}."
        )
    lengths = [_U32.unpack_from(view, _PACK_HEAD + _U32.size * i)[0] for i in range(count)]
    if 0 in lengths:
        raise CiphertextFormatError(
            f"{what}: ciphertext {lengths.index(0)} declares 0 bytes; expected >= 1."
        )
    declared = body + sum(lengths)
    if declared != size:
        problem = "truncated pack" if declared > size else "trailing bytes after the last"
        raise CiphertextFormatError(
            f"{what}: {problem}: {body} bytes of framing + {sum(lengths)} bytes of "
            f"ciphertexts declared, the pack has {size} bytes."
        )
    for i, n in enumerate(lengths):
        if n > max_item_bytes:
            raise CiphertextFormatError(
                f"{what}: ciphertext {i} declares {n} bytes; expected 1..{max_item_bytes} "
                "(the largest ciphertext of the key's preset)."
            )
    offsets, pos = [], body
    for n in lengths:
        offsets.append(pos)
        pos += n
    if views:
        ro = view.toreadonly()
        return [ro[pos : pos + n] for pos, n in zip(offsets, lengths, strict=True)]
    return [bytes(view[pos : pos + n]) for pos, n in zip(offsets, lengths, strict=True)]


def _groups(blobs: Iterable[bytes], limit: int) -> Iterator[list[bytes]]:
    """Consecutive runs of ``blobs`` whose pack stays within ``limit`` bytes (>= 1 each).

    Lazy: a run is yielded as soon as the next blob would not fit, so only one pack's
    ciphertexts are held at a time.
    """
    group: list[bytes] = []
    size = 0
    for blob in blobs:
        grown = size + _U32.size + len(blob)
        if group and grown <= limit:
            group.append(blob)
            size = grown
        else:
            if group:
                yield group
            group = [blob]
            size = _PACK_HEAD + _U32.size + len(blob)
    if group:
        yield group


def _serialized(enc: EncryptedArrays | PaillierArrays) -> Iterable[bytes]:
    """The part's ciphertexts as bytes, serialized one at a time when they live in SEAL."""
    if isinstance(enc, EncryptedArrays) and enc.wire is None:
        return (v.serialize() for v in enc.vectors)  # as serialized_chunks(), lazily
    return enc.serialized_chunks()


def bundle_to_record(
    parts: Mapping[str, EncryptedArrays | PaillierArrays], *, pack_bytes: int = PACK_BYTES
) -> ArrayRecord:
    """Pack named encrypted parts into an ``ArrayRecord`` (inverse of :func:`bundle_from_record`).

    Each part contributes a JSON header ``Array`` and its ciphertexts in packs of at most
    ``pack_bytes`` (:data:`PACK_BYTES`; a larger ciphertext gets a pack of its own).
    Ciphertexts are serialized pack by pack: besides the record, only one pack's worth
    is held at a time (docs/design.md §6).
    """
    arrays: dict[str, Array] = {}
    for part, enc in parts.items():
        try:
            check_part_name(part, what="bundle_to_record")
        except CiphertextFormatError as exc:
            raise ConfigError(str(exc)) from exc
        head = json.dumps(enc.header(), sort_keys=True).encode("utf-8")
        arrays[_header_key(part)] = Array(
            dtype="json", shape=(len(head),), stype=STYPE_HEADER, data=head
        )
        dtype = "paillier" if isinstance(enc, PaillierArrays) else "ckks"
        for i, group in enumerate(_groups(_serialized(enc), pack_bytes)):
            arrays[_chunk_key(part, i)] = Array(
                dtype=dtype,
                shape=(len(group),),
                stype=STYPE_CIPHERTEXT,
                data=pack_ciphertexts(group),
            )
    return ArrayRecord(arrays)


def to_array_record(enc: EncryptedArrays | PaillierArrays, part: str = "model") -> ArrayRecord:
    """Pack one encrypted object into an ``ArrayRecord`` (inverse of :func:`from_array_record`)."""
    return bundle_to_record({part: enc})


def is_encrypted_record(record: ArrayRecord) -> bool:
    """Whether ``record`` was made by :func:`bundle_to_record` / :func:`to_array_record`."""
    return any(
        name.startswith(RECORD_PREFIX) and arr.stype == STYPE_HEADER for name, arr in record.items()
    )


def record_part_names(record: ArrayRecord) -> set[str]:
    """Names of the parts ``record``'s header entries declare, read from their keys only.

    Nothing is decoded or validated (:func:`frame_record` does): a cheap look at which
    parts a reply claims, before its size is checked.
    """
    return {
        name[len(RECORD_PREFIX) : -len(".header")]
        for name, arr in record.items()
        if arr.stype == STYPE_HEADER and name.startswith(RECORD_PREFIX)
    }


def record_ciphertexts(record: ArrayRecord) -> list[bytes]:
    """Every serialized ciphertext of every pack of ``record``, in record order (no key).

    Structural framing checks only (bounded by each pack's own size); for the server's
    duplicate/replay digests, which are per ciphertext, not per pack.

    Raises
    ------
    CiphertextFormatError
        When a pack's framing is malformed.

    """
    return [bytes(view) for view in record_ciphertext_views(record)]


def record_ciphertext_views(record: ArrayRecord) -> Iterator[memoryview]:
    """As :func:`record_ciphertexts`, lazily and without copies: read-only views into the packs.

    Raises
    ------
    CiphertextFormatError
        When a pack's framing is malformed (when that pack is reached).

    """
    for name, arr in record.items():
        if arr.stype == STYPE_CIPHERTEXT:
            size = len(arr.data)
            yield from unpack_ciphertexts(
                arr.data, max_items=size, max_item_bytes=size, what=name, views=True
            )


def record_bundle_stream(record: ArrayRecord) -> container.StreamedBlob:
    """The bytes :func:`~cifer_flwr.crypto.bundle_to_bytes` gives for ``record``'s parts, in pieces.

    For writing a large encrypted model (checkpoint, saved global model) without TenSEAL
    and without a second copy of it in memory: the pieces are memoryviews into the
    record's packs. ``bundle_from_bytes`` reads the result. Structure only is checked
    (part names, packs numbered without gaps, ``num_chunks``): meant for records this
    process built with :func:`bundle_to_record`.

    Raises
    ------
    CiphertextFormatError
        When ``record`` is not an encrypted record, or its packs do not hold the number
        of ciphertexts its headers declare.

    """
    headers = record_headers(record)
    packs: dict[str, dict[int, bytes]] = {part: {} for part in headers}
    for name, arr in record.items():
        part, index = _split_name(name)
        if index is not None:
            if part not in packs:
                raise CiphertextFormatError(f"ciphertext pack {name!r} belongs to no header.")
            packs[part][index] = arr.data
    parts: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for part, header in headers.items():
        got = packs[part]
        if sorted(got) != list(range(len(got))):
            raise CiphertextFormatError(
                f"part {part!r}: packs numbered {sorted(got)[:5]}...; expected 0.."
                f"{len(got) - 1} without gaps."
            )
        chunks: list[memoryview] = []
        for i in range(len(got)):
            data = got[i]
            chunks += unpack_ciphertexts(
                data, max_items=len(data), max_item_bytes=len(data), what=f"{part}/{i}", views=True
            )
        if len(chunks) != _num_chunks(header, f"part {part!r}"):
            raise CiphertextFormatError(
                f"part {part!r}: the header declares {header.get('num_chunks')} ciphertexts, "
                f"the packs hold {len(chunks)}."
            )
        parts.append({"name": part, "header": header, "chunks": len(chunks)})
        blobs += chunks
    return container.streamed_pack(KIND_ENCRYPTED_BUNDLE, {"parts": parts}, blobs)


def _num_chunks(header: Mapping[str, Any], what: str) -> int:
    n = header.get("num_chunks")
    if type(n) is not int or n < 0:
        raise CiphertextFormatError(
            f"{what}: header num_chunks {n!r:.40}; expected the number of ciphertexts (an "
            "integer >= 0) in every encrypted record header."
        )
    return n


def _decode_json(data: bytes, what: str) -> Any:
    if len(data) > MAX_HEADER_BYTES:
        raise CiphertextFormatError(
            f"{what}: {len(data)} bytes, at most {MAX_HEADER_BYTES} expected."
        )
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CiphertextFormatError(f"{what} is not valid JSON: {exc!s:.200}") from exc


def _split_name(name: str) -> tuple[str, int | None]:
    """``cifer.PART.header`` -> (PART, None); ``cifer.PART.ct.000007`` -> (PART, 7)."""
    if not isinstance(name, str) or not name.startswith(RECORD_PREFIX):
        raise CiphertextFormatError(
            f"unexpected entry {name!r:.80} in an encrypted record (expected keys "
            f"{RECORD_PREFIX}PART.header and {RECORD_PREFIX}PART.ct.NNNNNN)."
        )
    rest = name[len(RECORD_PREFIX) :]
    if rest.endswith(".header"):
        part = check_part_name(rest[: -len(".header")], what="encrypted record")
        return part, None
    part, sep, index = rest.partition(".ct.")
    if not sep or len(index) != 6 or not index.isdigit() or not index.isascii():
        raise CiphertextFormatError(
            f"unexpected entry {name!r:.80} in an encrypted record (expected "
            f"{RECORD_PREFIX}PART.ct.NNNNNN)."
        )
    return check_part_name(part, what="encrypted record"), int(index)


def record_headers(record: ArrayRecord) -> dict[str, dict[str, Any]]:
    """Return the public JSON header of every part of an encrypted record (no key needed).

    Only the structure is checked here (key names, stypes, JSON objects, bounded sizes);
    :func:`bundle_from_record` validates every header field.

    Raises
    ------
    CiphertextFormatError
        When the record is not an encrypted record or a header is malformed.

    """
    if not is_encrypted_record(record):
        raise CiphertextFormatError(
            f"expected an encrypted ArrayRecord (keys {RECORD_PREFIX}*, stype "
            f"{STYPE_HEADER!r}); got keys {list(record.keys())[:5]}. Is the sender "
            "running cifer's ckks_mod?"
        )
    headers: dict[str, dict[str, Any]] = {}
    for name, arr in record.items():
        part, index = _split_name(name)
        if index is not None:
            continue
        if arr.stype != STYPE_HEADER:
            raise CiphertextFormatError(
                f"entry {name!r} has stype {str(arr.stype)[:60]!r}, expected {STYPE_HEADER!r}."
            )
        if len(headers) >= MAX_PARTS:
            raise CiphertextFormatError(f"an encrypted record with more than {MAX_PARTS} parts.")
        header = _decode_json(arr.data, f"header of part {part!r}")
        if not isinstance(header, dict):
            raise CiphertextFormatError(f"malformed header of part {part!r}: not an object")
        headers[part] = header
    return headers


@dataclass(frozen=True)
class FramedPart:
    """One part of a :class:`FramedRecord`: its JSON header and its ciphertexts, framed.

    ``chunks`` are read-only memoryviews into the record's packs (no copy), exactly the
    header's ``num_chunks`` of them, each of ``1 .. max_ciphertext_bytes`` bytes; the
    header's fields are not validated yet (:func:`bundle_from_framed` does).
    """

    header: dict[str, Any]
    chunks: tuple[memoryview, ...]


@dataclass(frozen=True)
class FramedRecord:
    """An encrypted ``ArrayRecord`` whose structure and pack framing were checked once.

    Made only by :func:`frame_record`: every ciphertext is located (views into the packs)
    but none is deserialized, so another party's reply can be hashed (replay checks)
    before any of it reaches TenSEAL or phe, and then parsed with
    :func:`bundle_from_framed` without walking its packs again (docs/design.md §6).
    """

    parts: dict[str, FramedPart]
    #: the parameters of the key the framing was checked against (largest ciphertext)
    params: AnyParams

    def ciphertexts(self) -> Iterator[memoryview]:
        """Every ciphertext of every part, part by part, as views into the packs."""
        for part in self.parts.values():
            yield from part.chunks


def frame_record(record: ArrayRecord, key: Key | PaillierKey) -> FramedRecord:
    """Check an encrypted record's structure and framing, locating every ciphertext once.

    Every entry must be a part header or a ciphertext pack ``PART.ct.NNNNNN`` of a part that
    has a header, numbered 0, 1, ... without gaps; each pack's framing is checked against
    what the header's ``num_chunks`` still allows and against the key's largest ciphertext,
    and the packs of a part must hold exactly ``num_chunks`` ciphertexts. Nothing is
    deserialized and nothing is copied: the result holds views into ``record``'s packs.

    Parameters
    ----------
    record : ArrayRecord
        Another party's record (hostile).
    key : Key or PaillierKey
        The key the record will be parsed with (public suffices); only its parameters are
        used here.

    Returns
    -------
    FramedRecord
        The parts, in the record's header order; :func:`bundle_from_framed` parses them.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError
        For a malformed record or packs that do not hold the ciphertexts their headers
        declare.

    """
    headers = record_headers(record)
    packs: dict[str, dict[int, bytes]] = {part: {} for part in headers}
    for name, arr in record.items():
        part, index = _split_name(name)
        if index is None:
            continue
        if arr.stype != STYPE_CIPHERTEXT:
            raise CiphertextFormatError(
                f"entry {name!r} has stype {str(arr.stype)[:60]!r}, expected {STYPE_CIPHERTEXT!r}."
            )
        if part not in packs:
            raise CiphertextFormatError(f"ciphertext {name!r} belongs to no header.")
        packs[part][index] = arr.data
    limit = max_ciphertext_bytes(key.params)
    parts: dict[str, FramedPart] = {}
    for part, header in headers.items():
        got = packs[part]
        if sorted(got) != list(range(len(got))):
            missing = sorted(set(range(max(got, default=-1) + 1)) - set(got))
            raise LayoutMismatchError(
                f"part {part!r}: ciphertexts numbered {sorted(got)[:5]}...; expected 0.."
                f"{len(got) - 1} without gaps (missing {missing[:5]})."
            )
        what = f"part {part!r}"
        needed = _num_chunks(header, what)
        chunks: list[memoryview] = []
        for i in range(len(got)):
            if len(chunks) == needed:
                raise LayoutMismatchError(
                    f"{what}: the header needs {needed} ciphertexts, but packs {i}.."
                    f"{len(got) - 1} remain after them; drop the extra packs."
                )
            chunks += unpack_ciphertexts(
                got[i],
                max_items=needed - len(chunks),
                max_item_bytes=limit,
                what=f"{what}, pack {i} of {len(got)}",
                views=True,
            )
        if len(chunks) != needed:
            raise LayoutMismatchError(
                f"{what}: the header needs {needed} ciphertexts, the packs hold {len(chunks)}."
            )
        parts[part] = FramedPart(header, tuple(chunks))
    return FramedRecord(parts, key.params)


@overload
def bundle_from_framed(
    framed: FramedRecord, key: Key, *, defer: bool | None = ...
) -> dict[str, EncryptedArrays]: ...
@overload
def bundle_from_framed(
    framed: FramedRecord, key: PaillierKey, *, defer: bool | None = ...
) -> dict[str, PaillierArrays]: ...
@overload
def bundle_from_framed(
    framed: FramedRecord, key: Key | PaillierKey, *, defer: bool | None = ...
) -> dict[str, EncryptedArrays | PaillierArrays]: ...
def bundle_from_framed(
    framed: FramedRecord, key: Key | PaillierKey, *, defer: bool | None = None
) -> dict[str, Any]:
    """Rebuild every part of a :func:`frame_record` result, validating each header and ciphertext.

    The packs are not walked again: each part's ciphertexts are copied out of their views
    (the parts outlive the record) and go through the scheme's validated parser
    (:func:`~cifer_flwr.crypto.schemes.from_header_and_chunks`; ``defer`` as there: SEAL
    loads of large parts may happen later, in the crypto workers, docs/design.md §6.1).

    Raises
    ------
    ConfigError
        When ``key`` has other parameters than the key ``framed`` was checked against.
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed header or ciphertext, a layout that does not match the
        ciphertexts, or another key.

    """
    if key.params != framed.params:
        raise ConfigError(
            "bundle_from_framed: the record was framed for another key's parameters; frame "
            "it with the key that parses it."
        )
    out: dict[str, Any] = {}
    for part, framed_part in framed.parts.items():
        blobs = [bytes(view) for view in framed_part.chunks]
        out[part] = from_header_and_chunks(
            framed_part.header, blobs, key, what=f"part {part!r}", defer=defer
        )
        del blobs
    return out


@overload
def bundle_from_record(
    record: ArrayRecord, key: Key, *, defer: bool | None = ...
) -> dict[str, EncryptedArrays]: ...
@overload
def bundle_from_record(
    record: ArrayRecord, key: PaillierKey, *, defer: bool | None = ...
) -> dict[str, PaillierArrays]: ...
@overload
def bundle_from_record(
    record: ArrayRecord, key: Key | PaillierKey, *, defer: bool | None = ...
) -> dict[str, EncryptedArrays | PaillierArrays]: ...
def bundle_from_record(
    record: ArrayRecord, key: Key | PaillierKey, *, defer: bool | None = None
) -> dict[str, Any]:
    """Rebuild every encrypted part of an ``ArrayRecord``; ``key`` (either scheme) may be public.

    :func:`frame_record` then :func:`bundle_from_framed`: the record's structure and every
    pack's framing are checked (against the headers' ``num_chunks`` and the key's largest
    ciphertext) before any ciphertext is deserialized; every header field and ciphertext
    is validated (docs/design.md §5). ``defer`` as in
    :func:`~cifer_flwr.crypto.schemes.from_header_and_chunks` (SEAL loads of large parts
    may happen later, in the crypto workers, docs/design.md §6.1).

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed record, a layout that does not match the ciphertexts, or another key.

    """
    return bundle_from_framed(frame_record(record, key), key, defer=defer)


def from_array_record(
    record: ArrayRecord, key: Key | PaillierKey, part: str = "model"
) -> EncryptedArrays | PaillierArrays:
    """Rebuild the encrypted object ``part`` of an ``ArrayRecord``; ``key`` may be public."""
    parts = bundle_from_record(record, key)
    if part not in parts:
        raise CiphertextFormatError(
            f"the encrypted record has parts {sorted(parts)}, not {part!r}."
        )
    return parts[part]
