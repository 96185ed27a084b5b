"""Encrypted arrays <-> Flower ``ArrayRecord``.

An encrypted record is a *bundle* of named parts (``model``, ``state``, ``check``...). Each
part has one header ``Array`` (JSON: layout, fingerprint, parameters, weight) and one
``Array`` per ciphertext, all with custom ``stype`` values, so calling ``Array.numpy()`` on
them raises instead of yielding meaningless numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord

from cifer_flwr.constants import RECORD_PREFIX, STYPE_CIPHERTEXT, STYPE_HEADER
from cifer_flwr.crypto.ckks import EncryptedArrays, from_header_and_chunks
from cifer_flwr.crypto.keys import Key
from cifer_flwr.exceptions import CiphertextFormatError

__all__ = [
    "bundle_from_record",
    "bundle_to_record",
    "from_array_record",
    "is_encrypted_record",
    "record_headers",
    "to_array_record",
]


def _header_key(part: str) -> str:
    return f"{RECORD_PREFIX}{part}.header"


def _chunk_key(part: str, index: int) -> str:
    return f"{RECORD_PREFIX}{part}.ct.{index:06d}"


def bundle_to_record(parts: Mapping[str, EncryptedArrays]) -> ArrayRecord:
    """Pack named encrypted parts into an ``ArrayRecord`` (inverse of :func:`bundle_from_record`).

    Each part contributes a JSON header ``Array`` and one ``Array`` per ciphertext.
    """
    arrays: dict[str, Array] = {}
    for part, enc in parts.items():
        if not part.isidentifier():
            raise ValueError(f"bundle part names must be identifiers, got {part!r}")
        head = json.dumps(enc.header(), sort_keys=True).encode("utf-8")
        arrays[_header_key(part)] = Array(
            dtype="json", shape=(len(head),), stype=STYPE_HEADER, data=head
        )
        for i, blob in enumerate(enc.serialized_chunks()):
            arrays[_chunk_key(part, i)] = Array(
                dtype="ckks", shape=(enc.params.slots,), stype=STYPE_CIPHERTEXT, data=blob
            )
    return ArrayRecord(arrays)


def to_array_record(enc: EncryptedArrays, part: str = "model") -> ArrayRecord:
    """Pack one encrypted object into an ``ArrayRecord`` (inverse of :func:`from_array_record`)."""
    return bundle_to_record({part: enc})


def is_encrypted_record(record: ArrayRecord) -> bool:
    """Whether ``record`` was made by :func:`bundle_to_record` / :func:`to_array_record`."""
    return any(
        name.startswith(RECORD_PREFIX) and arr.stype == STYPE_HEADER for name, arr in record.items()
    )


def record_headers(record: ArrayRecord) -> dict[str, dict[str, Any]]:
    """Return the public JSON header of every part of an encrypted record (no key needed).

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
        if arr.stype != STYPE_HEADER:
            continue
        part = name[len(RECORD_PREFIX) : -len(".header")]
        try:
            header = json.loads(arr.data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CiphertextFormatError(f"malformed header of part {part!r}: {exc}") from exc
        if not isinstance(header, dict):
            raise CiphertextFormatError(f"malformed header of part {part!r}: not an object")
        headers[part] = header
    return headers


def bundle_from_record(record: ArrayRecord, key: Key) -> dict[str, EncryptedArrays]:
    """Rebuild every encrypted part of an ``ArrayRecord``; ``key`` may be public.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed record, a layout that does not match the ciphertexts, or another key.

    """
    headers = record_headers(record)
    chunks: dict[str, list[tuple[str, bytes]]] = {part: [] for part in headers}
    for name, arr in record.items():
        if arr.stype == STYPE_HEADER:
            continue
        part, sep, _ = name[len(RECORD_PREFIX) :].partition(".ct.")
        if not name.startswith(RECORD_PREFIX) or not sep or arr.stype != STYPE_CIPHERTEXT:
            raise CiphertextFormatError(
                f"unexpected entry {name!r} (stype {arr.stype!r}) in an encrypted record."
            )
        if part not in chunks:
            raise CiphertextFormatError(f"ciphertext {name!r} belongs to no header.")
        chunks[part].append((name, arr.data))
    return {
        part: from_header_and_chunks(headers[part], [c for _, c in sorted(chunks[part])], key)
        for part in headers
    }


def from_array_record(record: ArrayRecord, key: Key, part: str = "model") -> EncryptedArrays:
    """Rebuild the encrypted object ``part`` of an ``ArrayRecord``; ``key`` may be public."""
    parts = bundle_from_record(record, key)
    if part not in parts:
        raise CiphertextFormatError(
            f"the encrypted record has parts {sorted(parts)}, not {part!r}."
        )
    return parts[part]
