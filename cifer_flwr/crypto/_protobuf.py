"""Minimal protobuf field surgery on TenSEAL's serialized objects (no protobuf dependency).

TenSEAL's Python API cannot choose the encryption type of a context, the Galois steps of a
key or the logical size of a vector; all three are single fields of its protobuf messages,
which these helpers split and rebuild.
"""

from __future__ import annotations

from cifer_flwr.exceptions import CiphertextFormatError

__all__ = ["encode_varint", "fields", "length_delimited", "payload", "varint"]


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return ``(value, next position)``."""
    shift = value = 0
    while True:
        if pos >= len(data):
            raise CiphertextFormatError("truncated protobuf varint in a TenSEAL object.")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    """Encode ``value`` as a protobuf varint (inverse of :func:`varint`)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a protobuf message into ``(field number, wire type, raw field bytes)``."""
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = varint(data, pos)
        elif wire == 2:
            length, pos = varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise CiphertextFormatError(f"unexpected protobuf wire type {wire}.")
        if pos > len(data):
            raise CiphertextFormatError("truncated protobuf field in a TenSEAL object.")
        out.append((tag >> 3, wire, data[start:pos]))
    return out


def length_delimited(field_number: int, data: bytes) -> bytes:
    """Encode ``data`` as a length-delimited field (wire type 2)."""
    return encode_varint(field_number << 3 | 2) + encode_varint(len(data)) + data


def payload(raw_field: bytes) -> bytes:
    """The bytes inside a raw length-delimited field."""
    _, pos = varint(raw_field, 0)
    length, pos = varint(raw_field, pos)
    return raw_field[pos : pos + length]
