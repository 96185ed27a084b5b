"""Size limits and bounded readers for the plaintext files securetrain accepts.

Dataset and model files may come from another party, so every size is checked against a limit
**before** anything is read or decompressed (docs/design.md §2: every parser of another
party's bytes is hostile-input safe):

* ``.npy``: the header's ``shape x itemsize`` must fit :data:`MAX_ARRAY_BYTES` and match the
  file size (a truncated or padded file is refused).
* ``.npz``: each zip member's *uncompressed* size from the zip directory, their total and the
  member count are checked before a byte is inflated, then each member's ``.npy`` header as
  above; the inflated stream is never read past the declared size, so a zip bomb is never
  expanded.
* ``.csv``: the file size must fit :data:`MAX_CSV_BYTES` and one field :data:`CSV_FIELD_LIMIT`.
* ``.h5`` / ``.pt`` models: see :mod:`cifer_flwr.securetrain.model`, which uses
  :data:`MAX_MODEL_BYTES` for every array it reads.

All limits live here and only here.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import CiferError

__all__ = [
    "ALLOWED_ARRAY_KINDS",
    "ZIP_ERRORS",
    "CSV_FIELD_LIMIT",
    "MAX_ARRAY_BYTES",
    "MAX_CSV_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_NPZ_MEMBERS",
    "check_zip_members",
    "read_npy",
    "read_npz",
]

#: Largest array a dataset file may hold, counted as float64 (what training converts it to):
#: 1 GiB, i.e. 134 million values. Encrypted training handles far fewer.
MAX_ARRAY_BYTES = 1 << 30
#: Largest weight array a plaintext model may hold (a logistic model needs ``8 (d + 1)``
#: bytes; 64 MiB is 8 million features, beyond what one can encrypt coefficient-wise).
MAX_MODEL_BYTES = 64 << 20
#: Largest CSV file (the whole table is parsed in memory as text): 256 MiB.
MAX_CSV_BYTES = 256 << 20
#: Longest CSV field: 64 KiB (a number needs a few dozen characters).
CSV_FIELD_LIMIT = 64 << 10
#: Most arrays an ``.npz`` may hold (a dataset needs 2).
MAX_NPZ_MEMBERS = 64
#: NumPy dtype kinds an array file may hold: bool, integers, floats and text (text is
#: refused later with a message about encoding categorical columns).
ALLOWED_ARRAY_KINDS = "biufUS"

_MAX_NPY_HEADER = 10_000
#: What :mod:`zipfile` and :mod:`zlib` raise for a corrupted archive (``NotImplementedError``
#: for an unknown zip version, ``ValueError`` includes undecodable member names).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    NotImplementedError,
    OSError,
    EOFError,
    ValueError,
)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def _header(
    fh: IO[bytes], source: str, error: type[CiferError]
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                fh, max_header_size=_MAX_NPY_HEADER
            )
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                fh, max_header_size=_MAX_NPY_HEADER
            )
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (
        ValueError,
        TypeError,
        KeyError,
        OSError,
        EOFError,
        SyntaxError,
        RecursionError,
        tokenize.TokenError,
    ) as exc:  # numpy parses the header with tokenize + ast.literal_eval
        raise error(f"{source}: not a valid .npy array ({exc}).") from exc
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise error(f"{source}: not a valid .npy array (shape {shape}).")
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def _check_array(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    data_bytes: int | None,
    source: str,
    error: type[CiferError],
    limit: int,
) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise error(
            f"{source}: arrays of dtype {dtype} are not accepted; store plain numbers "
            "(np.savez with float or integer arrays)."
        )
    if dtype.kind not in ALLOWED_ARRAY_KINDS:
        raise error(f"{source}: arrays of dtype {dtype} are not numeric; store floats.")
    count = math.prod(shape)
    need = count * max(dtype.itemsize, 8)
    if need > limit:
        raise error(
            f"{source}: the array has shape {shape} ({count} values, {_human(need)} as float64), "
            f"over the limit of {_human(limit)}; refused before reading. Use a smaller file "
            "(securetrain trains on at most this much data)."
        )
    stored = count * dtype.itemsize
    if data_bytes is not None and stored != data_bytes:
        raise error(
            f"{source}: the header declares shape {shape} of {dtype} ({stored} bytes) but the "
            f"file holds {data_bytes} bytes of data; the file is truncated or corrupted."
        )


def _read_body(
    fh: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    count = math.prod(shape)
    data = fh.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise EOFError(f"expected {count * dtype.itemsize} bytes of data, read {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    if fortran:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def read_npy(
    path: str | os.PathLike[str], *, error: type[CiferError], limit: int = MAX_ARRAY_BYTES
) -> npt.NDArray[Any]:
    """Read one ``.npy`` array after checking its header against ``limit`` and the file size.

    Parameters
    ----------
    path : path-like
        The ``.npy`` file.
    error : type of CiferError
        Raised for anything wrong (``DatasetError`` or ``ModelFormatError``).
    limit : int
        Largest accepted array, in bytes counted as float64.

    Raises
    ------
    CiferError
        ``error`` for an invalid header, a dtype that is not plain numbers or text, an array
        over ``limit``, or a size that does not match the file.

    """
    p = Path(path)
    source = str(p)
    with p.open("rb") as fh:
        shape, fortran, dtype = _header(fh, source, error)
        data_bytes = os.fstat(fh.fileno()).st_size - fh.tell()
        _check_array(shape, dtype, data_bytes, source, error, limit)
        try:
            return _read_body(fh, shape, fortran, dtype)
        except (ValueError, OSError, EOFError) as exc:
            raise error(f"{source}: cannot read the array ({exc}).") from exc


def check_zip_members(
    zf: zipfile.ZipFile, source: str, *, error: type[CiferError], limit: int
) -> list[zipfile.ZipInfo]:
    """Check a zip's directory before anything is inflated.

    Every member must use no compression or deflate, and the declared uncompressed sizes
    must total at most ``limit`` bytes over at most :data:`MAX_NPZ_MEMBERS` members.

    Raises
    ------
    CiferError
        ``error`` naming the offending member.

    """
    infos = zf.infolist()
    if len(infos) > MAX_NPZ_MEMBERS:
        raise error(
            f"{source}: the archive holds {len(infos)} entries, at most {MAX_NPZ_MEMBERS} "
            "are accepted."
        )
    total = 0
    for info in infos:
        if info.compress_type not in _ZIP_METHODS:
            raise error(
                f"{source}: entry {info.filename!r} uses zip compression method "
                f"{info.compress_type}; only stored or deflate (np.savez / savez_compressed) "
                "are accepted."
            )
        if info.flag_bits & 0x1:
            raise error(f"{source}: entry {info.filename!r} is encrypted; not accepted.")
        total += info.file_size
        if info.file_size > limit or total > limit:
            raise error(
                f"{source}: entry {info.filename!r} expands to {_human(info.file_size)} "
                f"({_human(total)} so far), over the limit of {_human(limit)}; refused before "
                "decompressing (a zip bomb or a file too large for securetrain)."
            )
    return infos


def read_npz(
    path: str | os.PathLike[str],
    wanted: Callable[[list[str]], list[str]],
    *,
    error: type[CiferError],
    limit: int = MAX_ARRAY_BYTES,
) -> tuple[list[str], dict[str, npt.NDArray[Any]]]:
    """List the arrays of an ``.npz`` and read those ``wanted(names)`` picks, within limits.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file (``np.savez`` / ``np.savez_compressed``).
    wanted : callable
        ``wanted(names) -> list of names`` to read (may raise ``error``).
    error : type of CiferError
        Raised for anything wrong.
    limit : int
        Largest total of the arrays, in bytes counted as float64.

    Returns
    -------
    names : list of str
        All array names in the file.
    arrays : dict
        The arrays read.

    Raises
    ------
    CiferError
        ``error`` for a file that is not a zip of ``.npy`` arrays, or one over the limits.

    """
    p = Path(path)
    source = str(p)
    try:
        with zipfile.ZipFile(p) as zf:
            infos = check_zip_members(zf, source, error=error, limit=limit)
            by_name = {i.filename[: -len(".npy")]: i for i in infos if i.filename.endswith(".npy")}
            names = list(by_name)
            arrays: dict[str, npt.NDArray[Any]] = {}
            total = 0
            for name in wanted(names):
                info = by_name[name]
                member = f"{source}[{name}]"
                with zf.open(info) as fh:
                    shape, fortran, dtype = _header(fh, member, error)
                    data_bytes = info.file_size - fh.tell()
                    _check_array(shape, dtype, data_bytes, member, error, limit - total)
                    total += math.prod(shape) * max(dtype.itemsize, 8)
                    arrays[name] = _read_body(fh, shape, fortran, dtype)
            return names, arrays
    except CiferError:
        raise
    except ZIP_ERRORS as exc:
        raise error(f"{source}: not a readable .npz archive ({exc}).") from exc
