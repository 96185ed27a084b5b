"""Federated tasks (model + offline dataset) used by the Hydra launcher and the generic app."""

from __future__ import annotations

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.tasks.base import Arrays, Task, TrainSettings

__all__ = ["TASKS", "Arrays", "Task", "TrainSettings", "get_task"]

#: Task names of the ``task/`` config group -> (model family, dataset).
TASKS: dict[str, tuple[str, str]] = {
    "digits-torch": ("torch", "digits"),
    "digits-tensorflow": ("tensorflow", "digits"),
    "breast-cancer-sklearn": ("sklearn", "breast-cancer"),
    "digits-sklearn": ("sklearn", "digits"),
    "mnist-torch": ("torch", "mnist"),
}


def get_task(model: str, dataset: str, *, model_path: str = "", model_class: str = "") -> Task:
    """Return the task for a model family (``torch``, ``tensorflow``, ``sklearn``) and dataset.

    With ``model_path`` the user's own model file is trained instead (the family is then
    the file's: see :func:`cifer_flwr.experiments.tasks.model_files.model_task`);
    ``model_class`` is the ``package.module:Class`` of a PyTorch state dict.
    """
    if model_path:
        from cifer_flwr.experiments.tasks.model_files import model_task

        return model_task(model_path, model_class, dataset)
    if model == "torch":
        from cifer_flwr.experiments.tasks.torch_mlp import TorchMLP

        return TorchMLP(dataset)
    if model == "tensorflow":
        from cifer_flwr.experiments.tasks.keras_mlp import KerasMLP

        return KerasMLP(dataset)
    if model == "sklearn":
        from cifer_flwr.experiments.tasks.sklearn_logreg import SklearnLogReg

        return SklearnLogReg(dataset)
    raise ConfigError(f"unknown model family {model!r}; choose torch, tensorflow or sklearn.")
