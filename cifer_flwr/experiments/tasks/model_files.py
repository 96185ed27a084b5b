"""The user's own model as a federated task: Keras ``.h5``/``.keras``, PyTorch ``.pt``, ``.npz``.

A model file gives the *initial* global model and the architecture the clients train:

* Keras ``.h5`` / ``.keras``: the whole model (architecture + weights), loaded with
  ``keras.models.load_model(..., compile=False, safe_mode=True)`` (no Lambda-layer code is
  deserialized); its weights travel as ``layer{i}`` in ``get_weights()`` order, as in
  :class:`~cifer_flwr.experiments.tasks.keras_mlp.KerasMLP`, and it is trained with SGD on
  sparse cross-entropy (from logits unless the last layer is a softmax).
* PyTorch ``.pt``: a *state dict* (``torch.save(model.state_dict(), path)``) plus the import
  path of the module, ``package.module:Class`` (called without arguments). The file is bounded
  and read with ``torch.load(weights_only=True)``; every entry must be a dense float tensor;
  it is trained as :class:`~cifer_flwr.experiments.tasks.torch_mlp.TorchMLP` is (SGD,
  cross-entropy, FedProx's proximal term). An ``.npz`` of the state dict works as well.
* ``.npz`` without a module: the weights of a built-in family, recognized by their names:
  ``coef``/``intercept`` (logistic regression), ``fc1.weight``/``fc1.bias``/``fc2.weight``/
  ``fc2.bias`` (the PyTorch MLP), ``layer0`` .. ``layer3`` (the Keras MLP).

Files are hostile input (docs/design.md §5): they are read by the library's readers
(:mod:`cifer_flwr.apps.model_files`, which the examples use too: sizes checked before reading,
nothing unpickled, weights finite floats), and the model's input and output sizes are checked
against the dataset.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cifer_flwr.apps.data import Partition
from cifer_flwr.apps.model_files import (
    check_model_arrays,
    check_model_file,
    load_keras_model,
    read_model_arrays,
)
from cifer_flwr.exceptions import ConfigError, ModelFormatError
from cifer_flwr.experiments.tasks.base import Arrays, Task, TrainSettings
from cifer_flwr.experiments.tasks.keras_mlp import KerasMLP
from cifer_flwr.experiments.tasks.sklearn_logreg import SklearnLogReg
from cifer_flwr.experiments.tasks.torch_mlp import TorchMLP
from cifer_flwr.extras import require

__all__ = [
    "MODEL_CLASS_PATTERN",
    "FileArraysTask",
    "KerasFileTask",
    "TorchModuleTask",
    "model_task",
]

#: ``package.module:Class`` (a class or a factory called without arguments).
MODEL_CLASS_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class FileArraysTask:
    """A built-in family (``inner``) whose initial model comes from a file's arrays.

    Training and evaluation are ``inner``'s; :meth:`init_arrays` returns the file's weights
    after checking their names and shapes against the model ``inner`` builds for the dataset.
    """

    def __init__(self, inner: Task, arrays: Arrays, source: str) -> None:
        self.inner = inner
        self.dataset = inner.dataset
        self.arrays = arrays
        self.source = source

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """The file's weights, checked against the model for ``num_features``/``num_classes``."""
        expected = self.inner.init_arrays(num_features, num_classes, seed)
        return check_model_arrays(self.arrays, expected, self.source)

    def train(
        self, arrays: Arrays, data: Partition, settings: TrainSettings
    ) -> tuple[Arrays, float]:
        """Train as the built-in family does."""
        return self.inner.train(arrays, data, settings)

    def evaluate(self, arrays: Arrays, data: Partition) -> tuple[float, float]:
        """Evaluate as the built-in family does."""
        return self.inner.evaluate(arrays, data)


def _builtin_for(arrays: Arrays, source: str, dataset: str) -> Task:
    names = set(arrays)
    if names == {"coef", "intercept"}:
        return SklearnLogReg(dataset)
    if names == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}:
        return TorchMLP(dataset, hidden=int(arrays["fc1.weight"].shape[0]))
    if names == {f"layer{i}" for i in range(4)} and arrays["layer0"].ndim == 2:
        return KerasMLP(dataset, hidden=int(arrays["layer0"].shape[1]))
    raise ModelFormatError(
        f"{source}: arrays {sorted(names)[:8]} are not a built-in model (coef/intercept, "
        "fc1.weight/fc1.bias/fc2.weight/fc2.bias, layer0..layer3); for your own PyTorch "
        "module give its import path package.module:Class as well."
    )


class TorchModuleTask(TorchMLP):
    """The user's PyTorch module (``package.module:Class``), trained like :class:`TorchMLP`.

    Parameters
    ----------
    model_class : str
        Import path ``package.module:Class`` of a module (or factory) taking no arguments.
    state : dict of str to ndarray
        Its initial state dict (from the file).
    source : str
        The file, for messages.
    dataset : str
        Dataset name or path.

    """

    def __init__(self, model_class: str, state: Arrays, source: str, dataset: str = "") -> None:
        super().__init__(dataset)
        if not MODEL_CLASS_PATTERN.match(model_class):
            raise ConfigError(
                f"model class {model_class!r} is not an import path; expected "
                "package.module:Class (a torch.nn.Module taking no arguments)."
            )
        self.model_class = model_class
        self.state = state
        self.source = source

    def _module(self) -> Any:
        torch = require("torch", purpose="PyTorch model files")

        module_name, attr = self.model_class.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import {self.model_class!r} ({exc}); put its package on PYTHONPATH "
                "of every SuperNode and of the server."
            ) from exc
        try:
            net = factory()
        except TypeError as exc:
            raise ConfigError(
                f"{self.model_class} must be callable without arguments ({exc}); wrap it in a "
                "factory function."
            ) from exc
        if not isinstance(net, torch.nn.Module):
            raise ConfigError(
                f"{self.model_class}() returned a {type(net).__name__}, not a torch.nn.Module."
            )
        return net

    def _load(self, arrays: Arrays) -> Any:
        torch = require("torch", purpose="PyTorch model files")

        net = self._module()
        expected = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        checked = check_model_arrays(arrays, expected, self.source)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in checked.items()})
        return net

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """The file's state dict, checked against the module and the dataset's sizes."""
        torch = require("torch", purpose="PyTorch model files")

        net = self._load(self.state)
        with torch.no_grad():
            try:
                out = net(torch.zeros(2, num_features))
            except RuntimeError as exc:
                raise ModelFormatError(
                    f"{self.source}: {self.model_class} does not take {num_features} input "
                    f"features ({str(exc).splitlines()[0]})."
                ) from exc
        if tuple(out.shape) != (2, num_classes):
            raise ModelFormatError(
                f"{self.source}: {self.model_class} outputs shape {tuple(out.shape)[1:]} per "
                f"example; the dataset has {num_classes} classes (one logit per class needed)."
            )
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


class KerasFileTask(KerasMLP):
    """The user's Keras model (``.h5`` / ``.keras``), trained like :class:`KerasMLP`."""

    def __init__(self, path: Path, dataset: str = "") -> None:
        super().__init__(dataset)
        self.path = path
        self._loaded: Any = None

    def _file_model(self) -> Any:
        if self._loaded is None:
            self._loaded = load_keras_model(self.path)
        return self._loaded

    def _load(self, arrays: Arrays, lr: float = 0.1) -> Any:
        keras = require("keras", purpose="Keras model files")

        model = keras.models.clone_model(self._file_model())
        expected = {f"layer{i}": w for i, w in enumerate(model.get_weights())}
        checked = check_model_arrays(arrays, expected, str(self.path))
        model.set_weights([checked[f"layer{i}"] for i in range(len(checked))])
        last = model.layers[-1]
        softmax = getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
            metrics=["accuracy"],
        )
        return model

    def init_arrays(self, num_features: int, num_classes: int, seed: int) -> Arrays:
        """The file's weights, checked against the dataset's sizes."""
        model = self._file_model()
        shape_in = tuple(model.input_shape)
        shape_out = tuple(model.output_shape)
        if shape_in[-1] != num_features or shape_out[-1] != num_classes:
            raise ModelFormatError(
                f"{self.path}: the model maps {shape_in[1:]} to {shape_out[1:]}; the dataset has "
                f"{num_features} features and {num_classes} classes (one output per class)."
            )
        return {f"layer{i}": w for i, w in enumerate(model.get_weights())}


def model_task(
    model_path: str | os.PathLike[str], model_class: str = "", dataset: str = ""
) -> Task:
    """The task that trains the model in ``model_path`` (see the module docstring).

    Parameters
    ----------
    model_path : path-like
        ``.h5`` / ``.keras`` (Keras), ``.pt`` / ``.pth`` (a PyTorch state dict, with
        ``model_class``) or ``.npz`` (a built-in family's weights, or a state dict with
        ``model_class``).
    model_class : str, optional
        ``package.module:Class`` of the PyTorch module.
    dataset : str, optional
        The dataset name or path (recorded on the task).

    Raises
    ------
    ConfigError, ModelFormatError
        For a file that cannot be used, naming what was found and what to do.

    """
    p = Path(model_path).expanduser()
    suffix = check_model_file(p)
    if suffix in (".h5", ".keras"):
        return KerasFileTask(p, dataset)
    if suffix in (".pt", ".pth") and not model_class:
        raise ConfigError(
            f"{p}: a PyTorch state dict needs the module's import path as well "
            "(model_class / task.model_class = 'package.module:Class')."
        )
    arrays = read_model_arrays(p)
    if model_class:
        return TorchModuleTask(model_class, arrays, str(p), dataset)
    return FileArraysTask(_builtin_for(arrays, str(p), dataset), arrays, str(p))
