"""Validation of the public JSON headers that travel with ciphertexts (docs/design.md §5).

A header comes from another party: every field's type and range is checked before it is
used, and any failure raises a :class:`~cifer_flwr.exceptions.CiferError` subclass whose
message names the field, what was found and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifer_flwr.crypto.encoding import MAX_RESERVED, Layout
from cifer_flwr.crypto.params import CkksParams
from cifer_flwr.exceptions import CiferError, CiphertextFormatError, LayoutMismatchError

__all__ = [
    "ARRAYS_HEADER_FIELDS",
    "MAX_ARRAYS",
    "MAX_CHUNKS",
    "MAX_COUNT",
    "ArraysHeader",
    "check_fingerprint",
    "check_meta",
    "check_part_name",
    "finite_number",
    "parse_arrays_header",
    "parse_layout",
]

#: Fields an encrypted-arrays header may hold (``kind`` and ``blobs_sha256`` come from the
#: container when the header is a container header).
ARRAYS_HEADER_FIELDS = frozenset(
    {"layout", "fingerprint", "params", "weight", "count", "meta", "num_chunks"}
)
_CONTAINER_FIELDS = frozenset({"kind", "blobs_sha256"})
_REQUIRED = ("layout", "fingerprint", "params")
#: Bounds on what a header may describe: 100 000 arrays, 2**20 ciphertexts (2**31 values at
#: 2 048 slots), 10**9 summed encryptions, 32 dimensions, 256-character names.
MAX_ARRAYS = 100_000
MAX_CHUNKS = 1 << 20
MAX_COUNT = 10**9
MAX_WEIGHT = 1e15
_MAX_DIMS = 32
_MAX_NAME = 256
_MAX_META_BYTES = 4096
_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64"}
)
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")
_PART_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class ArraysHeader:
    """A validated encrypted-arrays header."""

    layout: Layout
    fingerprint: str
    params: CkksParams
    weight: float
    count: int
    meta: dict[str, Any]
    num_chunks: int


def _fail(what: str, message: str) -> CiphertextFormatError:
    return CiphertextFormatError(f"{what}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number (int or float, not bool) finite as a float.

    The one check for numeric header fields another party wrote: ``math.isfinite`` raises
    ``OverflowError`` for an integer beyond the float range (``10**400`` in JSON), this
    returns ``False``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_fingerprint(value: Any, *, what: str = "header") -> str:
    """Return ``value`` if it is a key fingerprint (32 lowercase hex digits)."""
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
        raise _fail(what, f"key fingerprint {value!r:.80}, expected 32 lowercase hex digits.")
    return value


def check_part_name(value: Any, *, what: str = "bundle") -> str:
    """Return ``value`` if it is a valid bundle part name (an identifier, <= 64 chars)."""
    if not isinstance(value, str) or not _PART_NAME.fullmatch(value):
        raise _fail(
            what,
            f"part name {value!r:.80}, expected an identifier of at most 64 characters "
            "(letters, digits, underscore).",
        )
    return value


def _scalar_ok(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return not isinstance(value, str) or len(value) <= 1024
    if _is_int(value):
        return bool(abs(value) < 2**63)
    return isinstance(value, float) and bool(math.isfinite(value))


def check_meta(value: Any, *, what: str = "header") -> dict[str, Any]:
    """Return ``value`` if it is small public metadata.

    A JSON object of at most 4 kB whose values are JSON scalars (finite numbers, strings,
    booleans, null) or flat objects of such scalars.
    """
    if not isinstance(value, dict):
        raise _fail(what, f"meta is a {type(value).__name__}, expected a JSON object.")
    for k, v in value.items():
        inner = v if isinstance(v, dict) else {"": v}
        if not isinstance(k, str) or not all(
            isinstance(ik, str) and _scalar_ok(iv) for ik, iv in inner.items()
        ):
            raise _fail(
                what,
                f"meta entry {k!r:.40} holds {type(v).__name__} {v!r:.80}; expected JSON "
                "scalars (finite numbers, strings, booleans, null) or flat objects of them.",
            )
    size = len(json.dumps(value))
    if size > _MAX_META_BYTES:
        raise _fail(what, f"meta of {size} bytes, at most {_MAX_META_BYTES} expected.")
    return dict(value)


def parse_layout(value: Any, *, what: str = "header") -> Layout:
    """Check a layout dict field by field (types, bounds, totals) and build the Layout."""
    if not isinstance(value, dict) or set(value) - {"reserved"} != {"names", "shapes", "dtypes"}:
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise LayoutMismatchError(
            f"{what}: layout {keys!r:.120}, expected an object with exactly names, shapes, "
            "dtypes (and optionally reserved)."
        )
    reserved = value.get("reserved", 0)
    if not _is_int(reserved) or not 0 <= reserved <= MAX_RESERVED:
        raise LayoutMismatchError(
            f"{what}: layout reserves {reserved!r:.40} slots per chunk, expected an integer "
            f"in 0..{MAX_RESERVED}."
        )
    names, shapes, dtypes = value["names"], value["shapes"], value["dtypes"]
    if not all(isinstance(x, list) for x in (names, shapes, dtypes)):
        raise LayoutMismatchError(f"{what}: layout names, shapes and dtypes must be lists.")
    if not len(names) == len(shapes) == len(dtypes) or len(names) > MAX_ARRAYS:
        raise LayoutMismatchError(
            f"{what}: layout lists {len(names)} names, {len(shapes)} shapes, {len(dtypes)} "
            f"dtypes; expected equal lengths of at most {MAX_ARRAYS}."
        )
    total = 0
    for name, shape, dtype in zip(names, shapes, dtypes, strict=True):
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            raise LayoutMismatchError(
                f"{what}: array name {name!r:.80}, expected a string of 1..{_MAX_NAME} chars."
            )
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(_is_int(d) and 0 <= d <= 2**31 for d in shape)
        ):
            raise LayoutMismatchError(
                f"{what}: shape {shape!r:.80} of array {name!r:.40}, expected a list of at most "
                f"{_MAX_DIMS} integers in 0..2**31."
            )
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise LayoutMismatchError(
                f"{what}: dtype {dtype!r:.40} of array {name!r:.40}, expected one of "
                f"{sorted(_DTYPES)}."
            )
        total += math.prod(shape)
        if total > MAX_CHUNKS * 32768:
            raise LayoutMismatchError(f"{what}: the layout describes more than 2**35 values.")
    if len(set(names)) != len(names):
        raise LayoutMismatchError(f"{what}: duplicate array names in the layout.")
    try:
        return Layout.from_dict(value)
    except CiferError:
        raise
    except Exception as exc:  # pragma: no cover - everything is checked above
        raise LayoutMismatchError(f"{what}: malformed layout ({exc}).") from exc


def parse_arrays_header(
    header: Any, *, what: str = "encrypted arrays", container: bool = False
) -> ArraysHeader:
    """Validate an encrypted-arrays header (from a record or a container).

    Parameters
    ----------
    header : Any
        The decoded JSON.
    what : str
        Name of the object in error messages.
    container : bool
        Whether the container fields ``kind`` and ``blobs_sha256`` may appear.

    Raises
    ------
    CiphertextFormatError, LayoutMismatchError
        For unknown or missing fields, wrong types or values out of range.

    """
    if not isinstance(header, Mapping):
        raise _fail(what, f"the header is a {type(header).__name__}, expected a JSON object.")
    allowed = ARRAYS_HEADER_FIELDS | (_CONTAINER_FIELDS if container else frozenset())
    unknown = sorted(str(k) for k in header if k not in allowed)
    missing = [k for k in _REQUIRED if k not in header]
    if unknown or missing:
        raise _fail(
            what,
            f"header fields: unknown {unknown[:5]}, missing {missing}; expected "
            f"{sorted(ARRAYS_HEADER_FIELDS)}.",
        )
    fingerprint = check_fingerprint(header["fingerprint"], what=what)
    layout = parse_layout(header["layout"], what=what)
    if not isinstance(header["params"], dict):
        raise _fail(what, "params must be a JSON object.")
    try:
        params = CkksParams.from_dict(header["params"])
    except CiferError as exc:
        raise _fail(what, f"invalid CKKS parameters: {exc}") from exc
    weight = header.get("weight", 1.0)
    if not finite_number(weight) or not 0 < weight <= MAX_WEIGHT:
        raise _fail(
            what, f"weight {weight!r:.40}, expected a finite number in (0, {MAX_WEIGHT:g}]."
        )
    count = header.get("count", 1)
    if not _is_int(count) or not 1 <= count <= MAX_COUNT:
        raise _fail(what, f"count {count!r:.40}, expected an integer in 1..{MAX_COUNT}.")
    meta = check_meta(header.get("meta", {}), what=what)
    expected = layout.num_chunks(params.slots)
    if expected > MAX_CHUNKS:
        raise _fail(what, f"the layout needs {expected} ciphertexts, at most {MAX_CHUNKS}.")
    num_chunks = header.get("num_chunks", expected)
    if not _is_int(num_chunks) or num_chunks != expected:
        raise LayoutMismatchError(
            f"{what}: num_chunks {num_chunks!r:.40}, but the layout ({layout.total} values) "
            f"needs {expected} ciphertexts of {params.slots} slots."
        )
    return ArraysHeader(layout, fingerprint, params, float(weight), count, meta, expected)
