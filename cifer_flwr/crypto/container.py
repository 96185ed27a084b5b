"""The versioned cifer container: magic, JSON header, length-prefixed binary blobs.

Layout (all integers big-endian)::

    MAGIC (8 bytes) | header length (u32) | header (UTF-8 JSON) |
    blob count (u32) | { blob length (u64) | blob bytes } * count

The header records ``kind``, and ``blobs_sha256``, a SHA-256 over the blobs, so that a
truncated or corrupted file is reported as such rather than failing deep inside SEAL.
No pickle is involved anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import stat
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifer_flwr.constants import CONTAINER_MAGIC
from cifer_flwr.exceptions import CiphertextFormatError, OutputPathError

__all__ = [
    "MAX_BLOBS",
    "MAX_HEADER_BYTES",
    "StreamedBlob",
    "iter_pack",
    "not_a_file",
    "pack",
    "read_file",
    "streamed_pack",
    "unpack",
    "write_file_atomic",
]


def not_a_file(path: Path, what: str) -> str:
    """Why ``path`` cannot be read as a ``what`` file: a directory, or missing (message text)."""
    if path.is_dir():
        return (
            f"{what} file {str(path)!r} is a directory; expected a {what} file: pass the "
            "path of the file itself."
        )
    return f"{what} file {str(path)!r} does not exist; expected an existing file: check the path."


#: Largest JSON header and most blobs a container may declare (docs/design.md §5).
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_BLOBS = 1 << 21


Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class StreamedBlob:
    """A blob given in pieces, never held whole (a large model inside a checkpoint).

    Attributes
    ----------
    size : int
        Total length of the pieces.
    pieces : callable
        Returns a fresh iterator over the pieces each time it is called.

    """

    size: int
    pieces: Callable[[], Iterable[Bytes]]


def _pieces(blob: Bytes | StreamedBlob) -> Iterable[Bytes]:
    return blob.pieces() if isinstance(blob, StreamedBlob) else (blob,)


def _size(blob: Bytes | StreamedBlob) -> int:
    return blob.size if isinstance(blob, StreamedBlob) else len(blob)


def _digest(blobs: Iterable[Bytes | StreamedBlob]) -> str:
    h = hashlib.sha256()
    for blob in blobs:
        h.update(struct.pack(">Q", _size(blob)))
        for piece in _pieces(blob):
            h.update(piece)
    return h.hexdigest()


def _head(kind: str, header: dict[str, Any], count: int, digest: str) -> bytes:
    full = {**header, "kind": kind, "blobs_sha256": digest}
    head = json.dumps(full, sort_keys=True).encode("utf-8")
    return b"".join([CONTAINER_MAGIC, struct.pack(">I", len(head)), head, struct.pack(">I", count)])


def _body(blobs: Iterable[Bytes | StreamedBlob]) -> Iterator[Bytes]:
    for blob in blobs:
        yield struct.pack(">Q", _size(blob))
        yield from _pieces(blob)


def iter_pack(
    kind: str, header: dict[str, Any], blobs: Sequence[Bytes | StreamedBlob]
) -> Iterator[Bytes]:
    """:func:`pack`'s bytes in pieces, so that a large container is never held whole.

    ``blobs`` are read twice (the digest, then the output); a :class:`StreamedBlob` is
    produced piece by piece each time. ``b"".join(iter_pack(...)) == pack(...)``.
    """
    yield _head(kind, header, len(blobs), _digest(blobs))
    yield from _body(blobs)


def streamed_pack(
    kind: str, header: dict[str, Any], blobs: Sequence[Bytes | StreamedBlob]
) -> StreamedBlob:
    """:func:`pack`'s bytes as a :class:`StreamedBlob` (to nest a large container in another).

    The digest is computed once, here; the pieces are the blobs themselves (memoryviews
    into a record's packs are not copied).
    """
    head = _head(kind, header, len(blobs), _digest(blobs))
    size = len(head) + sum(8 + _size(blob) for blob in blobs)
    return StreamedBlob(size, lambda: [head, *_body(blobs)])


def pack(kind: str, header: dict[str, Any], blobs: Sequence[Bytes]) -> bytes:
    """Serialize a header and blobs into container bytes (inverse of :func:`unpack`).

    Parameters
    ----------
    kind : str
        What the container holds (``constants.KIND_*``).
    header : dict
        JSON-serializable metadata; ``kind`` and ``blobs_sha256`` are added.
    blobs : sequence of bytes
        Binary payloads, e.g. serialized ciphertexts.

    """
    return b"".join(iter_pack(kind, header, blobs))


def unpack(data: bytes, *, kind: str | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """Parse container bytes into ``(header, blobs)``, verifying structure and digest.

    Raises
    ------
    CiphertextFormatError
        On a wrong magic, a truncated or corrupted payload, or an unexpected ``kind``.

    """
    view = memoryview(data)
    if bytes(view[: len(CONTAINER_MAGIC)]) != CONTAINER_MAGIC:
        raise CiphertextFormatError(
            f"not a cifer container: the first bytes are {bytes(view[:8])!r}, expected "
            f"{CONTAINER_MAGIC!r}. Was the file written by cifer, and is it complete?"
        )
    pos = len(CONTAINER_MAGIC)

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise CiphertextFormatError(
                f"truncated cifer container: needed {n} bytes for the {what} at offset "
                f"{pos}, only {len(view) - pos} remain (file size {len(view)} bytes). "
                "Copy the file again."
            )
        out = view[pos : pos + n]
        pos += n
        return out

    (head_len,) = struct.unpack(">I", take(4, "header length"))
    if head_len > MAX_HEADER_BYTES:
        raise CiphertextFormatError(
            f"corrupted cifer container: header length {head_len}, at most "
            f"{MAX_HEADER_BYTES} expected."
        )
    try:
        header = json.loads(bytes(take(head_len, "header")).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CiphertextFormatError(f"corrupted cifer container header: {exc!s:.200}") from exc
    if not isinstance(header, dict):
        raise CiphertextFormatError("corrupted cifer container: the header is not an object.")
    (count,) = struct.unpack(">I", take(4, "blob count"))
    if count > MAX_BLOBS or count * 8 > len(view) - pos:
        raise CiphertextFormatError(
            f"corrupted cifer container: {count} blobs declared, but only {len(view) - pos} "
            f"bytes remain (and at most {MAX_BLOBS} blobs are allowed)."
        )
    blobs: list[bytes] = []
    for i in range(count):
        (size,) = struct.unpack(">Q", take(8, f"length of blob {i}"))
        blobs.append(bytes(take(size, f"blob {i} of {count}")))
    if pos != len(view):
        raise CiphertextFormatError(
            f"corrupted cifer container: {len(view) - pos} unexpected trailing bytes."
        )
    if not isinstance(header.get("blobs_sha256"), str) or header["blobs_sha256"] != _digest(blobs):
        raise CiphertextFormatError(
            "corrupted cifer container: the payload does not match the SHA-256 in its "
            "header (bytes were altered in transit or on disk). Copy the file again."
        )
    if kind is not None and header.get("kind") != kind:
        raise CiphertextFormatError(
            f"wrong kind of cifer file: found {str(header.get('kind'))[:60]!r}, expected {kind!r}."
        )
    return header, blobs


def write_file_atomic(
    path: str | os.PathLike[str],
    data: Bytes | Iterable[Bytes],
    *,
    mode: int = 0o644,
    temp_prefix: str | None = None,
    follow_symlinks: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the directory).

    ``data`` is bytes or an iterable of byte pieces written in order (e.g.
    :func:`iter_pack`), so a large file is never held in memory whole.

    The file is created with ``mode`` from the start, so a secret never exists with
    looser permissions, and a crash never leaves a half-written file at ``path``. The
    temporary file is named ``temp_prefix`` + random (default ``.NAME.``), so a caller can
    find and remove what a killed writer left behind.

    With ``follow_symlinks=False`` (key files), neither the file's directory nor the file
    may be a symbolic link: the directory is opened with ``O_NOFOLLOW`` and every step
    (create, rename, fsync) goes through that descriptor, so a link swapped in after the
    check is not followed either.

    Raises
    ------
    OutputPathError
        ``follow_symlinks`` is false and the directory or the file is a symbolic link.

    """
    target = Path(path)
    prefix = f".{target.name}." if temp_prefix is None else temp_prefix
    try:
        if not follow_symlinks:
            if not os.path.lexists(target.parent):  # a (dangling) link is refused
                target.parent.mkdir(parents=True, exist_ok=True)
            return _write_nofollow(target, data, mode, prefix)
        return _write_via_temp(target, data, mode, prefix)
    except OSError as exc:
        if exc.filename is None or not os.path.basename(str(exc.filename)).startswith(prefix):
            raise
        # the temporary file is internal: the message names the file that was asked for
        raise OSError(exc.errno, exc.strerror, str(target)) from None


def _write_durably(fd: int, data: Bytes | Iterable[Bytes], mode: int) -> None:
    """Write ``data`` (bytes or pieces) to the new file ``fd`` with ``mode``, fsync, close it."""
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as fh:
        for piece in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
            fh.write(piece)
        fh.flush()
        os.fsync(fh.fileno())


def _write_via_temp(target: Path, data: Bytes | Iterable[Bytes], mode: int, prefix: str) -> Path:
    """:func:`write_file_atomic` through a temporary file in the target's directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    try:
        _write_durably(fd, data, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)
    return target


def _write_nofollow(target: Path, data: Bytes | Iterable[Bytes], mode: int, prefix: str) -> Path:
    """:func:`write_file_atomic` through a directory descriptor opened without following links."""
    fix = (
        "cifer writes key files only into a real directory, never through a symbolic link "
        "(it could point at another user's or another run's files); remove the link or "
        "choose another --dir/--name"
    )
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if target.parent.is_symlink() or exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OutputPathError(
                f"{target.parent} is a symbolic link (to {os.path.realpath(target.parent)}); "
                f"expected a directory. {fix}."
            ) from None
        raise
    try:
        try:
            st = os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise OutputPathError(
                f"{target} is a symbolic link; expected a regular file or nothing. {fix}."
            )
        for _ in range(100):
            tmp = f"{prefix}{secrets.token_hex(6)}"
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    mode,
                    dir_fd=dir_fd,
                )
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random 48-bit names taken
            raise FileExistsError(f"no free temporary name {prefix}* in {target.parent}")
        try:
            _write_durably(fd, data, mode)
            os.replace(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def remove_temp_files(
    path: str | os.PathLike[str], *, temp_prefix: str | None = None
) -> list[Path]:
    """Remove the temporary files a killed :func:`write_file_atomic` left next to ``path``.

    ``temp_prefix`` must be the one the writer used (default ``.NAME.``).
    """
    target = Path(path)
    prefix = f".{target.name}." if temp_prefix is None else temp_prefix
    removed = []
    if target.parent.is_dir():
        for tmp in target.parent.glob(f"{glob.escape(prefix)}*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def read_file(
    path: str | os.PathLike[str], *, kind: str | None = None
) -> tuple[dict[str, Any], list[bytes]]:
    """Read and :func:`unpack` a container file; a missing file raises ``FileNotFoundError``."""
    return unpack(Path(path).read_bytes(), kind=kind)
