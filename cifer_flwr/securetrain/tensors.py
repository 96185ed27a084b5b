"""Any model's tensors: Keras ``.h5`` / ``.keras``, PyTorch ``.pt``, ``.npz``, ``.safetensors``.

``encrypt-model`` trains only logistic models (:mod:`.model`), but it encrypts **any** model
for safekeeping: the named tensors (and, for Keras, the architecture) go into one encrypted
container and ``decrypt-model`` writes them back exactly (docs/design.md §4.6).

* ``.npz``: every array (read within :mod:`.limits`, never unpickled).
* ``.pt``: a PyTorch state dict of dense tensors (``torch.load(weights_only=True)``, its zip
  members bounded first, as in :mod:`.model`).
* ``.safetensors``: parsed here with numpy (8-byte header length, JSON header, raw data), every
  offset and size checked against the file before a byte is used; no extra package needed.
* ``.h5`` (Keras legacy HDF5): read with h5py in Keras's own weight order (the
  ``layer_names`` / ``weight_names`` attributes), with the same refusals as :mod:`.model` (no
  links, no external storage, no filter plugins, bounded shapes); the ``model_config``
  attribute is kept so the file can be rebuilt.
* ``.keras`` (Keras 3 zip): read with Keras itself (``safe_mode=True``); writing ``.h5`` /
  ``.keras`` needs Keras too (the ``tensorflow`` extra).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import ModelFormatError
from cifer_flwr.extras import require
from cifer_flwr.securetrain.formats import SECURETRAIN_MODEL_SUFFIXES
from cifer_flwr.securetrain.limits import MAX_MODEL_BYTES, read_npz
from cifer_flwr.securetrain.model import (
    check_h5_dataset,
    load_keras,
    load_state_dict,
    save_keras,
)

__all__ = [
    "ARCHITECTURE_ARRAY",
    "TENSOR_EXTENSIONS",
    "ModelTensors",
    "read_safetensors",
    "read_tensors",
    "write_safetensors",
    "write_tensors",
]

#: The model suffixes read and written as tensors (:mod:`.formats`).
TENSOR_EXTENSIONS = SECURETRAIN_MODEL_SUFFIXES
#: Name of the uint8 array that carries a Keras architecture (JSON) inside the encrypted file.
ARCHITECTURE_ARRAY = "__keras_architecture__"
#: Largest safetensors JSON header accepted (the format allows 100 MB; names and shapes of
#: a model below :data:`MAX_MODEL_BYTES` need far less).
MAX_SAFETENSORS_HEADER = 1 << 20
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_NUMPY_TO_SAFETENSORS = {np.dtype(v).str.lstrip("<|"): k for k, v in _SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class ModelTensors:
    """A model's named tensors, in their file order.

    Attributes
    ----------
    arrays : dict of str to ndarray
        Tensor name -> values (float or integer).
    architecture : str, optional
        Keras model JSON (``.h5`` / ``.keras``), needed to write a Keras file back.

    """

    arrays: dict[str, npt.NDArray[Any]] = field(repr=False)
    architecture: str | None = None

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Arrays to encrypt: the tensors plus the architecture as UTF-8 bytes (uint8).

        Inverse: :meth:`from_arrays`.
        """
        out = dict(self.arrays)
        if self.architecture is not None:
            out[ARCHITECTURE_ARRAY] = np.frombuffer(self.architecture.encode(), dtype=np.uint8)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> ModelTensors:
        """Split decrypted arrays back into tensors and the architecture."""
        rest = dict(arrays)
        raw = rest.pop(ARCHITECTURE_ARRAY, None)
        architecture = None
        if raw is not None:
            try:
                architecture = np.asarray(raw, dtype=np.uint8).tobytes().decode()
            except UnicodeDecodeError as exc:
                raise ModelFormatError(
                    f"the decrypted Keras architecture is not UTF-8 text ({exc.reason}); the "
                    "encrypted file was altered."
                ) from exc
        return cls(rest, architecture)


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in TENSOR_EXTENSIONS:
        raise ModelFormatError(
            f"unknown model extension {ext or '(none)'!r} for {path}; use .h5 / .keras (Keras), "
            ".pt (PyTorch state dict), .npz or .safetensors."
        )
    return ext


def _contiguous(value: Any) -> npt.NDArray[Any]:
    """A C-contiguous array of any rank (``np.ascontiguousarray`` turns 0-d into 1-d)."""
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _numeric(arr: npt.NDArray[Any], source: str, name: str) -> npt.NDArray[Any]:
    if arr.dtype.kind not in "fiub" or arr.dtype.fields is not None:
        raise ModelFormatError(
            f"{source}: tensor {name!r} holds {arr.dtype} values; only float, integer and "
            "bool tensors are accepted."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"{source}: tensor {name!r} holds NaN or infinite values.")
    return _contiguous(arr.astype(np.uint8) if arr.dtype.kind == "b" else arr)


# ------------------------------------------------------------------------------ safetensors


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """Read a ``.safetensors`` file with numpy, every offset checked first.

    Raises
    ------
    ModelFormatError
        For a header that is not bounded JSON, an unknown dtype, offsets that overlap, leave
        gaps or do not match the shape, or a file over :data:`~.limits.MAX_MODEL_BYTES`.

    """
    p = Path(path)
    source = str(p)
    size = p.stat().st_size
    if size > MAX_MODEL_BYTES + MAX_SAFETENSORS_HEADER + 8:
        raise ModelFormatError(
            f"{source}: {size} bytes, over the limit of {MAX_MODEL_BYTES} bytes of tensors; "
            "refused before reading."
        )
    with p.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise ModelFormatError(f"{source}: not a safetensors file (shorter than 8 bytes).")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ModelFormatError(
                f"{source}: declares a {header_len}-byte header in a {size}-byte file (at most "
                f"{MAX_SAFETENSORS_HEADER}); not a valid safetensors file."
            )
        try:
            header = json.loads(fh.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFormatError(f"{source}: the header is not JSON ({exc}).") from exc
        data = fh.read()
    if not isinstance(header, dict):
        raise ModelFormatError(f"{source}: the header is not a JSON object.")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ModelFormatError(
                f"{source}: entry {name!r:.60} must hold exactly dtype, shape, data_offsets."
            )
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        shape, offsets = info["shape"], info["data_offsets"]
        if dtype is None:
            raise ModelFormatError(
                f"{source}: entry {name!r:.60} has dtype {info['dtype']!r:.20}; accepted: "
                f"{', '.join(_SAFETENSORS_DTYPES)}."
            )
        if (
            not isinstance(shape, list)
            or len(shape) > 32
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise ModelFormatError(f"{source}: entry {name!r:.60} has a malformed shape/offsets.")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise ModelFormatError(
                f"{source}: entry {name!r:.60} spans {offsets[1] - offsets[0]} bytes, its "
                f"shape {shape} of {info['dtype']} needs {nbytes}."
            )
        entries.append((offsets[0], offsets[1], name, dtype, tuple(shape)))
    entries.sort()
    position = 0
    arrays: dict[str, npt.NDArray[Any]] = {}
    for begin, end, name, dtype, shape in entries:
        if begin != position:
            raise ModelFormatError(
                f"{source}: tensor {name!r:.60} starts at byte {begin}, expected {position} "
                "(tensors must be contiguous and must not overlap)."
            )
        if end > len(data):
            raise ModelFormatError(
                f"{source}: tensor {name!r:.60} ends at byte {end} but the file holds "
                f"{len(data)} bytes of data; the file is truncated."
            )
        position = end
        arrays[name] = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=begin)
        arrays[name] = arrays[name].reshape(shape).copy()
    if position != len(data):
        raise ModelFormatError(
            f"{source}: the tensors end at byte {position} but the file holds {len(data)} "
            "bytes of data; the file is truncated or padded."
        )
    order = [n for n in header if n in arrays]
    return {n: arrays[n] for n in order}


def write_safetensors(arrays: dict[str, npt.NDArray[Any]], path: str | os.PathLike[str]) -> None:
    """Write arrays as ``.safetensors`` (inverse of :func:`read_safetensors`)."""
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, value in arrays.items():
        arr = _contiguous(value)
        kind = _NUMPY_TO_SAFETENSORS.get(arr.dtype.newbyteorder("<").str.lstrip("<|"))
        if kind is None:
            raise ModelFormatError(f"tensor {name!r} has dtype {arr.dtype}; not writable.")
        raw = arr.astype(_SAFETENSORS_DTYPES[kind]).tobytes()
        header[name] = {
            "dtype": kind,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with Path(path).open("wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ---------------------------------------------------------------------------------- formats


def _read_pt(path: Path) -> dict[str, npt.NDArray[Any]]:
    source = str(path)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, value in load_state_dict(path).items():
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        out[name] = _numeric(tensor.numpy(), source, name)
    return out


def _write_pt(arrays: dict[str, npt.NDArray[Any]], path: Path) -> None:
    torch = require("torch", purpose="to write .pt models")
    torch.save({k: torch.from_numpy(_contiguous(v)) for k, v in arrays.items()}, path)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _hard_link(h5py: Any, group: Any, name: str, source: str) -> None:
    """Refuse a soft or external link (it could point into another file)."""
    if not isinstance(group.get(name, getlink=True), h5py.HardLink):
        raise ModelFormatError(
            f"{source}: {name!r} is an HDF5 soft or external link (or missing); cifer follows "
            "no links (they can point into other files)."
        )


def _hard_links(h5py: Any, group: Any, path: str, source: str) -> None:
    """Every component of ``path`` under ``group`` must be a hard link."""
    node = group
    for part in [p for p in path.split("/") if p]:
        _hard_link(h5py, node, part, source)
        node = node[part]


def _read_h5(path: Path) -> ModelTensors:
    h5py = require("h5py", purpose="to read .h5 models")
    source = str(path)
    try:
        with h5py.File(path, "r") as fh:
            if "model_weights" in fh:
                _hard_link(h5py, fh, "model_weights", source)
            root = fh.get("model_weights", fh)
            config = fh.attrs.get("model_config")
            names = [_text(n) for n in root.attrs.get("layer_names", [])]
            if not names:
                raise ModelFormatError(
                    f"{source}: no Keras layer_names attribute; save the model with Keras "
                    "(model.save('model.h5')) or use .npz / .pt / .safetensors."
                )
            arrays: dict[str, npt.NDArray[Any]] = {}
            total = 0
            for layer in names:
                _hard_link(h5py, root, layer, source)
                weight_names = root[layer].attrs.get("weight_names", [])
                for raw in weight_names:
                    wname = _text(raw)
                    _hard_links(h5py, root[layer], wname, f"{source}: {layer}")
                    dset = root[layer][wname]
                    if not isinstance(dset, h5py.Dataset):
                        raise ModelFormatError(f"{source}: {layer}/{wname} is not a dataset.")
                    check_h5_dataset(dset, source, f"{layer}/{wname}", any_rank=True)
                    total += dset.size * 8
                    if total > MAX_MODEL_BYTES:
                        raise ModelFormatError(
                            f"{source}: the weights exceed {MAX_MODEL_BYTES} bytes; refused "
                            "before reading."
                        )
                    arrays[f"{layer}/{wname}"] = _numeric(np.asarray(dset[()]), source, wname)
    except ModelFormatError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelFormatError(f"{source}: not a readable Keras HDF5 model ({exc}).") from exc
    text = config.decode() if isinstance(config, bytes) else (str(config) if config else None)
    return ModelTensors(arrays, text)


def _read_keras(path: Path) -> ModelTensors:
    keras = load_keras("to read .keras models")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelFormatError(
            f"{path}: Keras cannot load this model in safe mode ({str(exc).splitlines()[0]})."
        ) from exc
    arrays = {w.path: _numeric(np.asarray(w.numpy()), str(path), w.path) for w in model.weights}
    return ModelTensors(arrays, model.to_json())


def _write_keras(tensors: ModelTensors, path: Path) -> None:
    if tensors.architecture is None:
        raise ModelFormatError(
            f"{path}: these tensors carry no Keras architecture (they came from a .pt, .npz, "
            ".safetensors or a federated model), so they cannot be written as a Keras file; "
            "use .npz, .pt or .safetensors and load the weights into your model."
        )
    keras = load_keras(f"to write {path.suffix} models")
    try:
        # Keras's own JSON (.keras) and the legacy HDF5 model_config both hold class_name and
        # config; from_config rebuilds Sequential and functional models from either.
        config = json.loads(tensors.architecture)
        cls = keras.Sequential if config.get("class_name") == "Sequential" else keras.Model
        model = cls.from_config(config["config"])
        model.set_weights(list(tensors.arrays.values()))
    except Exception as exc:  # Keras raises many types for a mismatched architecture
        raise ModelFormatError(
            f"{path}: Keras cannot rebuild the model from its architecture "
            f"({str(exc).splitlines()[0]})."
        ) from exc
    save_keras(model, path)


def read_tensors(path: str | os.PathLike[str]) -> ModelTensors:
    """Read every tensor of a model file (inverse of :func:`write_tensors`).

    Raises
    ------
    ModelFormatError
        For an unknown extension, a missing file or one refused by the checks above.
    MissingExtraError
        When the format needs a package that is not installed (the message names the extra).

    """
    p = Path(path)
    ext = _extension(p)
    if not p.is_file():
        where = "is a directory; pass the model file itself" if p.is_dir() else "does not exist"
        raise ModelFormatError(f"model file {str(p)!r} {where}; expected a model file.")
    if ext == ".h5":
        return _read_h5(p)
    if ext == ".keras":
        return _read_keras(p)
    if ext == ".pt":
        return ModelTensors(_read_pt(p))
    if ext == ".safetensors":
        arrays = read_safetensors(p)
    else:
        _, arrays = read_npz(p, lambda names: names, error=ModelFormatError, limit=MAX_MODEL_BYTES)
    return ModelTensors({k: _numeric(v, str(p), k) for k, v in arrays.items()})


def write_tensors(tensors: ModelTensors, path: str | os.PathLike[str]) -> Path:
    """Write a model's tensors; the format follows the extension (atomic replace).

    Raises
    ------
    ModelFormatError
        For ``.h5`` / ``.keras`` without a Keras architecture, or an unknown extension.
    MissingExtraError
        When the format needs a package that is not installed.

    """
    p = Path(path)
    ext = _extension(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{ext}")
    try:
        if ext in (".h5", ".keras"):
            _write_keras(tensors, tmp)
        elif ext == ".pt":
            _write_pt(tensors.arrays, tmp)
        elif ext == ".safetensors":
            write_safetensors(tensors.arrays, tmp)
        else:
            with tmp.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **tensors.arrays)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
