"""Encrypted arrays <-> Flower ``ArrayRecord``.

An encrypted record holds one header ``Array`` (JSON: layout, fingerprint, parameters,
weight) and one ``Array`` per ciphertext, all with custom ``stype`` values, so calling
``Array.numpy()`` on them raises instead of yielding meaningless numbers.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord

from cifer_flwr.constants import (
    RECORD_CHUNK_PREFIX,
    RECORD_HEADER_KEY,
    STYPE_CIPHERTEXT,
    STYPE_HEADER,
)
from cifer_flwr.crypto.ckks import EncryptedArrays, from_header_and_chunks
from cifer_flwr.crypto.keys import Key
from cifer_flwr.exceptions import CiphertextFormatError

__all__ = ["from_array_record", "is_encrypted_record", "record_header", "to_array_record"]


def to_array_record(enc: EncryptedArrays) -> ArrayRecord:
    """Pack encrypted arrays into an ``ArrayRecord`` (inverse of :func:`from_array_record`)."""
    head = json.dumps(enc.header(), sort_keys=True).encode("utf-8")
    arrays: dict[str, Array] = {
        RECORD_HEADER_KEY: Array(dtype="json", shape=(len(head),), stype=STYPE_HEADER, data=head)
    }
    for i, blob in enumerate(enc.serialized_chunks()):
        arrays[f"{RECORD_CHUNK_PREFIX}{i:06d}"] = Array(
            dtype="ckks", shape=(enc.params.slots,), stype=STYPE_CIPHERTEXT, data=blob
        )
    return ArrayRecord(arrays)


def is_encrypted_record(record: ArrayRecord) -> bool:
    """Whether ``record`` was made by :func:`to_array_record`."""
    head = record.get(RECORD_HEADER_KEY)
    return head is not None and head.stype == STYPE_HEADER


def record_header(record: ArrayRecord) -> dict[str, Any]:
    """Return the public JSON header of an encrypted record (no key needed).

    Raises
    ------
    CiphertextFormatError
        When the record is not an encrypted record or its header is malformed.

    """
    if not is_encrypted_record(record):
        raise CiphertextFormatError(
            f"expected an encrypted ArrayRecord (key {RECORD_HEADER_KEY!r}, stype "
            f"{STYPE_HEADER!r}); got keys {list(record.keys())[:5]}. Is the sender "
            "running cifer's ckks_mod?"
        )
    try:
        header = json.loads(record[RECORD_HEADER_KEY].data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CiphertextFormatError(f"malformed encrypted-record header: {exc}") from exc
    if not isinstance(header, dict):
        raise CiphertextFormatError("malformed encrypted-record header: not an object")
    return header


def from_array_record(record: ArrayRecord, key: Key) -> EncryptedArrays:
    """Rebuild encrypted arrays from an ``ArrayRecord``; ``key`` may be public.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError, KeyMismatchError
        For a malformed record, a layout that does not match the ciphertexts, or another key.

    """
    header = record_header(record)
    chunks = []
    for name, arr in record.items():
        if name == RECORD_HEADER_KEY:
            continue
        if not name.startswith(RECORD_CHUNK_PREFIX) or arr.stype != STYPE_CIPHERTEXT:
            raise CiphertextFormatError(
                f"unexpected entry {name!r} (stype {arr.stype!r}) in an encrypted record."
            )
        chunks.append((name, arr.data))
    chunks.sort()
    return from_header_and_chunks(header, [c for _, c in chunks], key)
