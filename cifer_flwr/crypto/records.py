"""Encrypted arrays <-> Flower ``ArrayRecord``.

An encrypted record is a *bundle* of named parts (``model``, ``state``, ``check``...). Each
part has one header ``Array`` (JSON: layout, fingerprint, parameters, weight) and one
``Array`` per ciphertext, all with custom ``stype`` values, so calling ``Array.numpy()`` on
them raises instead of yielding meaningless numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, overload

from flwr.app import Array, ArrayRecord

from cifer_flwr.constants import RECORD_PREFIX, STYPE_CIPHERTEXT, STYPE_HEADER
from cifer_flwr.crypto.ckks import EncryptedArrays
from cifer_flwr.crypto.headers import check_part_name
from cifer_flwr.crypto.keys import Key
from cifer_flwr.crypto.paillier import PaillierArrays, PaillierKey
from cifer_flwr.crypto.schemes import from_header_and_chunks
from cifer_flwr.exceptions import CiphertextFormatError, ConfigError, LayoutMismatchError

__all__ = [
    "bundle_from_record",
    "bundle_to_record",
    "from_array_record",
    "is_encrypted_record",
    "record_headers",
    "to_array_record",
]

#: Most parts an encrypted record may hold, and the largest JSON header of one part.
MAX_PARTS = 64
MAX_HEADER_BYTES = 16 * 1024 * 1024


def _header_key(part: str) -> str:
    return f"{RECORD_PREFIX}{part}.header"


def _chunk_key(part: str, index: int) -> str:
    return f"{RECORD_PREFIX}{part}.ct.{index:06d}"


def bundle_to_record(parts: Mapping[str, EncryptedArrays | PaillierArrays]) -> ArrayRecord:
    """Pack named encrypted parts into an ``ArrayRecord`` (inverse of :func:`bundle_from_record`).

    Each part contributes a JSON header ``Array`` and one ``Array`` per ciphertext.
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
        for i, blob in enumerate(enc.serialized_chunks()):
            arrays[_chunk_key(part, i)] = Array(
                dtype=dtype, shape=(enc.params.slots,), stype=STYPE_CIPHERTEXT, data=blob
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


@overload
def bundle_from_record(record: ArrayRecord, key: Key) -> dict[str, EncryptedArrays]: ...
@overload
def bundle_from_record(record: ArrayRecord, key: PaillierKey) -> dict[str, PaillierArrays]: ...
@overload
def bundle_from_record(
    record: ArrayRecord, key: Key | PaillierKey
) -> dict[str, EncryptedArrays | PaillierArrays]: ...
def bundle_from_record(record: ArrayRecord, key: Key | PaillierKey) -> dict[str, Any]:
    """Rebuild every encrypted part of an ``ArrayRecord``; ``key`` (either scheme) may be public.

    Every entry must be a part header or a ciphertext ``PART.ct.NNNNNN`` of a part that
    has a header, numbered 0, 1, ... without gaps; every header field and ciphertext is
    validated (docs/design.md §5).

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed record, a layout that does not match the ciphertexts, or another key.

    """
    headers = record_headers(record)
    chunks: dict[str, dict[int, bytes]] = {part: {} for part in headers}
    for name, arr in record.items():
        part, index = _split_name(name)
        if index is None:
            continue
        if arr.stype != STYPE_CIPHERTEXT:
            raise CiphertextFormatError(
                f"entry {name!r} has stype {str(arr.stype)[:60]!r}, expected {STYPE_CIPHERTEXT!r}."
            )
        if part not in chunks:
            raise CiphertextFormatError(f"ciphertext {name!r} belongs to no header.")
        chunks[part][index] = arr.data
    out: dict[str, Any] = {}
    for part, header in headers.items():
        got = chunks[part]
        if sorted(got) != list(range(len(got))):
            missing = sorted(set(range(max(got, default=-1) + 1)) - set(got))
            raise LayoutMismatchError(
                f"part {part!r}: ciphertexts numbered {sorted(got)[:5]}...; expected 0.."
                f"{len(got) - 1} without gaps (missing {missing[:5]})."
            )
        blobs = [got[i] for i in range(len(got))]
        out[part] = from_header_and_chunks(header, blobs, key, what=f"part {part!r}")
    return out


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
