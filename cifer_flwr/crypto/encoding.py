"""Flatten / chunk named ndarrays into slot vectors and back (pure numpy).

All arrays of a model go into **one** stream of values, so no slot is wasted on per-layer
padding; only the last chunk is padded with zeros. :class:`Layout` records names, shapes,
dtypes and offsets so that :func:`decode` restores exactly what :func:`encode` received.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import LayoutMismatchError, NonFiniteError, UnsupportedOperationError

__all__ = ["Layout", "chunk", "decode", "encode", "flatten", "unchunk", "unflatten"]

_FLOAT_KINDS = {"f"}
_INT_KINDS = {"i", "u"}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays packed into one slot stream."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __post_init__(self) -> None:
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

    def num_chunks(self, slots: int) -> int:
        """Number of ciphertexts needed at ``slots`` values each (at least one)."""
        return max(1, math.ceil(self.total / slots))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (inverse of :meth:`from_dict`)."""
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        """Rebuild a layout from :meth:`to_dict` output."""
        try:
            return cls(
                tuple(str(n) for n in data["names"]),
                tuple(tuple(int(d) for d in s) for s in data["shapes"]),
                tuple(str(np.dtype(d)) for d in data["dtypes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
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


def chunk(vector: npt.ArrayLike, slots: int) -> list[FloatArray]:
    """Cut a vector into ``slots``-long zero-padded pieces (inverse of :func:`unchunk`)."""
    vec = np.asarray(vector, dtype=np.float64)
    n = max(1, math.ceil(vec.size / slots))
    padded = np.zeros(n * slots, dtype=np.float64)
    padded[: vec.size] = vec
    return list(padded.reshape(n, slots))


def unchunk(chunks: Sequence[npt.ArrayLike], total: int) -> FloatArray:
    """Join chunks and drop the padding, keeping the first ``total`` values."""
    if not chunks:
        raise LayoutMismatchError("no chunks to join")
    joined = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in chunks])
    if joined.size < total:
        raise LayoutMismatchError(
            f"the chunks hold {joined.size} values but the layout needs {total}."
        )
    return joined[:total]


def encode(arrays: Mapping[str, npt.ArrayLike], slots: int) -> tuple[Layout, list[FloatArray]]:
    """Flatten and chunk named arrays (inverse of :func:`decode`)."""
    layout, vector = flatten(arrays)
    return layout, chunk(vector, slots)


def decode(layout: Layout, chunks: Sequence[npt.ArrayLike]) -> dict[str, npt.NDArray[Any]]:
    """Join chunks and restore the named arrays described by ``layout``."""
    return unflatten(layout, unchunk(chunks, layout.total))
