"""Check that no secret key material ended up where the server side can read it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cifer_flwr.constants import KIND_KEY
from cifer_flwr.crypto import container

__all__ = ["SECRET_KEY_MARKER", "find_secret_key"]

#: JSON header fragment that only a private key container holds (headers are sorted JSON).
SECRET_KEY_MARKER = b'"private": true'
_CHUNK = 48


def _needles(private_key_file: Path) -> list[bytes]:
    """Byte chunks of the secret context that do not occur in the public material."""
    header, blobs = container.unpack(private_key_file.read_bytes(), kind=KIND_KEY)
    if not header.get("private") or len(blobs) != 2:
        raise ValueError(f"{private_key_file} is not a private key file.")
    public, secret = blobs
    out = []
    step = max(_CHUNK, len(secret) // 16)
    for start in range(len(secret) // 4, len(secret) - _CHUNK, step):
        chunk = secret[start : start + _CHUNK]
        if chunk not in public:
            out.append(chunk)
    return out


def _files(paths: Iterable[str | os.PathLike[str]]) -> Iterable[Path]:
    for p in map(Path, paths):
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from (f for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def find_secret_key(
    paths: Iterable[str | os.PathLike[str]], private_key_file: str | os.PathLike[str]
) -> tuple[list[Path], int]:
    """Scan files (directories recursively) for the secret key of ``private_key_file``.

    A file is reported when it contains the private-key container marker next to the key
    container kind, or any of several byte chunks of the secret key material.

    Returns
    -------
    tuple
        ``(offending files, number of files scanned)``.

    """
    needles = _needles(Path(private_key_file))
    kind = f'"kind": "{KIND_KEY}"'.encode()
    hits, scanned = [], 0
    for f in _files(paths):
        try:
            data = f.read_bytes()
        except OSError:
            continue
        scanned += 1
        if (SECRET_KEY_MARKER in data and kind in data) or any(n in data for n in needles):
            hits.append(f)
    return hits, scanned
