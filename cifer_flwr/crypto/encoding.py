"""Flatten / chunk named ndarrays into slot vectors and back (pure numpy).

All arrays of a model go into **one** stream of values, so no slot is wasted on per-layer
padding; only the last chunk is padded with zeros. :class:`Layout` records names, shapes,
dtypes and offsets so that :func:`decode` restores exactly what :func:`encode` received.

A layout may *reserve* the last ``reserved`` slots of every chunk (``Layout.reserved``,
default 0): the data stream then fills only the first ``slots - reserved`` slots of each
chunk and the reserved tail carries values placed by :func:`encode` (``fill``) and read back by
:func:`reserved_values`. SecureFed puts its per-chunk integrity values there
(docs/design.md §4.4); plain FedAvg reserves nothing and is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import LayoutMismatchError, NonFiniteError, UnsupportedOperationError

__all__ = [
    "MAX_RESERVED",
    "Layout",
    "chunk",
    "count_chunks",
    "decode",
    "encode",
    "flatten",
    "reserved_values",
    "set_reserved",
    "unchunk",
    "unflatten",
]

#: Most slots a layout may reserve per chunk (SecureFed uses a handful).
MAX_RESERVED = 64

_FLOAT_KINDS = {"f"}
_INT_KINDS = {"i", "u"}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays packed into one slot stream.

    ``reserved`` slots at the end of every chunk hold no data (see the module docstring).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    reserved: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.reserved, int)
            or isinstance(self.reserved, bool)
            or not 0 <= self.reserved <= MAX_RESERVED
        ):
            raise LayoutMismatchError(
                f"layout reserves {self.reserved!r:.40} slots per chunk; expected an integer "
                f"in 0..{MAX_RESERVED}."
            )
        if not len(self.names) == len(self.shapes) == len(self.dtypes):
            raise LayoutMismatchError(
                f"layout lists {len(self.names)} names, {len(self.shapes)} shapes and "
                f"{len(self.dtypes)} dtypes; they must have the same length."
            )
        if len(set(self.names)) != len(self.names):
            raise LayoutMismatchError(f"layout has duplicate array names: {list(self.names)}")
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise LayoutMismatchError(f"negative dimension in shape {shape}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of values of each array."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def total(self) -> int:
        """Number of values of all arrays together."""
        return sum(self.sizes)

    def data_slots(self, slots: int) -> int:
        """Number of data values one chunk of ``slots`` slots holds (``slots - reserved``).

        Raises
        ------
        LayoutMismatchError
            When the reservation leaves no data slot.

        """
        if slots - self.reserved < 1:
            raise LayoutMismatchError(
                f"the layout reserves {self.reserved} of {slots} slots per chunk, leaving no "
                "slot for data; use ciphertexts with more slots or reserve fewer."
            )
        return slots - self.reserved

    def num_chunks(self, slots: int) -> int:
        """Number of ciphertexts needed at ``slots`` slots each (at least one)."""
        return max(1, math.ceil(self.total / self.data_slots(slots)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (inverse of :meth:`from_dict`).

        ``reserved`` is written only when non-zero, so layouts without a reservation keep
        their historical form.
        """
        out: dict[str, Any] = {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
        }
        if self.reserved:
            out["reserved"] = self.reserved
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild a layout from :meth:`to_dict` output."""
        try:
            reserved = data.get("reserved", 0)
            if not isinstance(reserved, int) or isinstance(reserved, bool):
                raise TypeError(f"reserved must be an integer, got {reserved!r:.40}")
            return cls(
                tuple(str(n) for n in data["names"]),
                tuple(tuple(int(d) for d in s) for s in data["shapes"]),
                tuple(str(np.dtype(d)) for d in data["dtypes"]),
                reserved,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LayoutMismatchError(f"malformed layout metadata: {exc}") from exc


def flatten(arrays: Mapping[str, npt.ArrayLike]) -> tuple[Layout, FloatArray]:
    """Concatenate named arrays into one float64 vector (inverse of :func:`unflatten`).

    Raises
    ------
    NonFiniteError
        When an array holds NaN or infinity (the name and count are given).
    UnsupportedOperationError
        For dtypes other than float and integer.

    """
    names, shapes, dtypes, parts = [], [], [], []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in _FLOAT_KINDS | _INT_KINDS:
            raise UnsupportedOperationError(
                f"array {name!r} has dtype {arr.dtype}; only float16/32/64 and integer "
                "arrays can be encrypted. Cast it, or leave it out of the encrypted arrays."
            )
        flat = arr.astype(np.float64, copy=False).ravel()
        bad = ~np.isfinite(flat)
        if bad.any():
            raise NonFiniteError(
                f"array {name!r} holds {int(bad.sum())} non-finite values (NaN/Inf) of "
                f"{flat.size}; CKKS cannot encrypt them. Fix the training step that produced them."
            )
        names.append(str(name))
        shapes.append(tuple(int(d) for d in arr.shape))
        dtypes.append(str(arr.dtype))
        parts.append(flat)
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    return Layout(tuple(names), tuple(shapes), tuple(dtypes)), vector


def count_chunks(arrays: Mapping[str, npt.ArrayLike], slots: int, reserved: int = 0) -> int:
    """Number of chunks :func:`encode` makes of ``arrays`` (without copying any data)."""
    total = sum(int(np.size(a)) for a in arrays.values())
    return max(1, math.ceil(total / Layout((), (), (), reserved).data_slots(slots)))


def unflatten(layout: Layout, vector: npt.ArrayLike) -> dict[str, npt.NDArray[Any]]:
    """Split a flat vector back into named arrays with their original shapes and dtypes."""
    vec = np.asarray(vector, dtype=np.float64)
    if vec.size != layout.total:
        raise LayoutMismatchError(
            f"the layout describes {layout.total} values but {vec.size} were given."
        )
    out: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for name, shape, dtype, size in zip(
        layout.names, layout.shapes, layout.dtypes, layout.sizes, strict=True
    ):
        part = vec[offset : offset + size].reshape(shape)
        dt = np.dtype(dtype)
        out[name] = np.rint(part).astype(dt) if dt.kind in _INT_KINDS else part.astype(dt)
        offset += size
    return out


def _fill_matrix(fill: npt.ArrayLike | None, n: int, reserved: int) -> FloatArray:
    if fill is None:
        return np.zeros((n, reserved), dtype=np.float64)
    values = np.asarray(fill, dtype=np.float64)
    if values.shape != (n, reserved):
        raise LayoutMismatchError(
            f"reserved-slot values of shape {values.shape}; expected ({n}, {reserved}) "
            f"(one row of {reserved} values per chunk)."
        )
    if not np.isfinite(values).all():
        raise NonFiniteError("reserved-slot values hold NaN or infinity.")
    return values


def chunk(
    vector: npt.ArrayLike, slots: int, reserved: int = 0, fill: npt.ArrayLike | None = None
) -> list[FloatArray]:
    """Cut a vector into ``slots``-long zero-padded pieces (inverse of :func:`unchunk`).

    Each piece holds ``slots - reserved`` data values followed by ``reserved`` values taken
    from the matching row of ``fill`` (zeros when ``fill`` is None).
    """
    vec = np.asarray(vector, dtype=np.float64)
    width = Layout((), (), (), reserved).data_slots(slots)
    n = max(1, math.ceil(vec.size / width))
    padded = np.zeros(n * width, dtype=np.float64)
    padded[: vec.size] = vec
    out = np.zeros((n, slots), dtype=np.float64)
    out[:, :width] = padded.reshape(n, width)
    if reserved:
        out[:, width:] = _fill_matrix(fill, n, reserved)
    elif fill is not None:
        _fill_matrix(fill, n, reserved)
    return list(out)


def unchunk(chunks: Sequence[npt.ArrayLike], total: int, reserved: int = 0) -> FloatArray:
    """Join chunks, skip their ``reserved`` tail slots and drop the padding.

    Keeps the first ``total`` data values.
    """
    if not chunks:
        raise LayoutMismatchError("no chunks to join")
    rows = [np.asarray(c, dtype=np.float64).ravel() for c in chunks]
    if reserved:
        if any(r.size <= reserved for r in rows):
            raise LayoutMismatchError(
                f"a chunk holds no more than the {reserved} reserved slots; no data is left."
            )
        rows = [r[: r.size - reserved] for r in rows]
    joined = np.concatenate(rows)
    if joined.size < total:
        raise LayoutMismatchError(
            f"the chunks hold {joined.size} values but the layout needs {total}."
        )
    return joined[:total]


def reserved_values(layout: Layout, chunks: Sequence[npt.ArrayLike]) -> FloatArray:
    """The reserved tail of every chunk, shape ``(len(chunks), layout.reserved)``.

    The counterpart of :func:`encode`'s ``fill``.
    """
    rows = [np.asarray(c, dtype=np.float64).ravel() for c in chunks]
    r = layout.reserved
    if any(row.size <= r for row in rows):
        raise LayoutMismatchError(
            f"a chunk holds no more than the {r} reserved slots of the layout."
        )
    if not rows:
        return np.zeros((0, r), dtype=np.float64)
    return np.stack([row[row.size - r :] for row in rows]).reshape(len(rows), r)


def set_reserved(
    layout: Layout, chunks: Sequence[npt.ArrayLike], fill: npt.ArrayLike | None
) -> list[FloatArray]:
    """Copies of ``chunks`` whose reserved tails hold ``fill`` (zeros when None)."""
    r = layout.reserved
    out = [np.array(c, dtype=np.float64).ravel() for c in chunks]
    values = _fill_matrix(fill, len(out), r)
    if r:
        for row, tail in zip(out, values, strict=True):
            if row.size <= r:
                raise LayoutMismatchError(
                    f"a chunk of {row.size} slots cannot hold {r} reserved slots and data."
                )
            row[row.size - r :] = tail
    return out


def encode(
    arrays: Mapping[str, npt.ArrayLike],
    slots: int,
    *,
    reserved: int = 0,
    fill: npt.ArrayLike | None = None,
) -> tuple[Layout, list[FloatArray]]:
    """Flatten and chunk named arrays (inverse of :func:`decode`).

    Parameters
    ----------
    arrays : mapping of str to array
        The named arrays.
    slots : int
        Values per chunk (``params.slots``).
    reserved : int (default: 0)
        Slots at the end of every chunk kept free of data.
    fill : array of shape (num_chunks, reserved), optional
        Values placed in the reserved slots (zeros when omitted); :func:`count_chunks`
        gives ``num_chunks`` beforehand, :func:`reserved_values` reads them back.

    """
    layout, vector = flatten(arrays)
    layout = replace(layout, reserved=reserved)
    return layout, chunk(vector, slots, reserved, fill)


def decode(layout: Layout, chunks: Sequence[npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]:
    """Join chunks (skipping reserved slots) and restore the arrays described by ``layout``."""
    return unflatten(layout, unchunk(chunks, layout.total, layout.reserved))
