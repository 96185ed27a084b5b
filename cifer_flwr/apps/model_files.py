"""The user's initial model file as named float arrays: ``.npz``, PyTorch ``.pt``, Keras.

An example (or a harness task) reads its initial global model with
:func:`read_model_arrays` and checks it against the model it builds with
:func:`check_model_arrays`. Files are hostile input (docs/design.md §5): sizes are checked
before reading (the bounded readers of :mod:`cifer_flwr.securetrain.limits`), nothing is
unpickled (PyTorch state dicts load with ``torch.load(weights_only=True)``, Keras models with
``safe_mode=True``) and weights must be finite floats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.apps.data import existing_input_file
from cifer_flwr.exceptions import ModelFormatError
from cifer_flwr.securetrain.formats import HARNESS_MODEL_SUFFIXES

__all__ = [
    "MAX_KERAS_BYTES",
    "MODEL_SUFFIXES",
    "check_model_arrays",
    "check_model_file",
    "load_keras_model",
    "read_model_arrays",
]

#: Named weights, as they travel (encrypted) between server and clients.
_Arrays = dict[str, npt.NDArray[Any]]
#: Suffixes of the model files :func:`read_model_arrays` reads
#: (:mod:`cifer_flwr.securetrain.formats`).
MODEL_SUFFIXES = HARNESS_MODEL_SUFFIXES
#: Largest Keras model file (read by Keras/h5py as a whole).
MAX_KERAS_BYTES = 256 << 20


def check_model_file(path: Path, suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> str:
    """The lower-case suffix of model file ``path``, after the cheap checks.

    Raises
    ------
    ModelFormatError
        For a suffix outside ``suffixes`` or a missing file (a relative path also gets the
        advice to give an absolute one: the apps read it from the SuperNodes' directory).

    """
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ModelFormatError(
            f"model {str(path)!r} has suffix {suffix or '(none)'!r}; use one of "
            f"{', '.join(suffixes)}."
        )
    existing_input_file(path, what="model", error=ModelFormatError)
    return suffix


def _float_arrays(arrays: dict[str, Any], source: str) -> _Arrays:
    out: _Arrays = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise ModelFormatError(
                f"{source}: weight {name!r} has dtype {arr.dtype}; every weight must be a float "
                "array (integer buffers such as BatchNorm's num_batches_tracked cannot be "
                "averaged: drop them or use a model without them)."
            )
        if not np.all(np.isfinite(arr)):
            raise ModelFormatError(f"{source}: weight {name!r} holds NaN or infinite values.")
        out[name] = np.ascontiguousarray(arr)
    if not out:
        raise ModelFormatError(f"{source}: the model has no weights.")
    return out


def _read_npz(path: Path) -> _Arrays:
    from cifer_flwr.securetrain.limits import MAX_MODEL_BYTES, read_npz

    _, arrays = read_npz(path, lambda names: names, error=ModelFormatError, limit=MAX_MODEL_BYTES)
    return _float_arrays(arrays, str(path))


def _read_state_dict(path: Path) -> _Arrays:
    # the one bounded .pt loader (zip members checked, torch.load(weights_only=True))
    from cifer_flwr.securetrain.model import load_state_dict

    state = load_state_dict(path)
    return _float_arrays({k: v.detach().numpy() for k, v in state.items()}, str(path))


def load_keras_model(path: Path) -> Any:
    """The Keras model in ``path`` (``.h5`` / ``.keras``), loaded without its compile state.

    ``safe_mode=True``: no Lambda-layer code is deserialized.

    Raises
    ------
    ModelFormatError
        For a file over :data:`MAX_KERAS_BYTES` or one Keras cannot load.

    """
    size = path.stat().st_size
    if size > MAX_KERAS_BYTES:
        raise ModelFormatError(
            f"{path}: {size} bytes, over the limit of {MAX_KERAS_BYTES} bytes for a Keras model."
        )
    from cifer_flwr.securetrain.model import load_keras

    keras = load_keras(f"{path} is a Keras model")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras and h5py raise many types for a bad file
        raise ModelFormatError(
            f"{path}: not a loadable Keras model ({str(exc).splitlines()[0][:200]}); save it "
            "with model.save('model.keras') (Lambda layers are refused: safe_mode)."
        ) from exc


def read_model_arrays(path: str | os.PathLike[str], model_class: str = "") -> _Arrays:
    """The weights of a model file as named float arrays (what travels, encrypted).

    Parameters
    ----------
    path : path-like
        ``.npz``, ``.pt`` / ``.pth`` (a state dict), ``.h5`` / ``.keras``.
    model_class : str, optional
        Unused for reading; accepted so that a ``(path, class)`` pair reads the same way.

    Raises
    ------
    ModelFormatError
        For a missing or oversized file, anything that is not named finite float arrays.

    """
    del model_class
    p = Path(path).expanduser()
    suffix = check_model_file(p)
    if suffix == ".npz":
        return _read_npz(p)
    if suffix in (".pt", ".pth"):
        return _read_state_dict(p)
    weights = load_keras_model(p).get_weights()
    return _float_arrays({f"layer{i}": w for i, w in enumerate(weights)}, str(p))


def check_model_arrays(arrays: _Arrays, expected: _Arrays, source: str) -> _Arrays:
    """``arrays`` when they have the names and shapes of ``expected``, cast to its dtypes.

    Raises
    ------
    ModelFormatError
        Naming the first weight whose name set or shape differs from ``expected``.

    """
    if set(arrays) != set(expected):
        raise ModelFormatError(
            f"{source}: weights {sorted(arrays)} do not match the model's {sorted(expected)}."
        )
    for name, ref in expected.items():
        if arrays[name].shape != ref.shape:
            raise ModelFormatError(
                f"{source}: weight {name!r} has shape {arrays[name].shape}, the model for this "
                f"dataset needs {ref.shape} (number of features or classes differs)."
            )
    return {name: arrays[name].astype(expected[name].dtype) for name in expected}
