"""Offline encrypted-asset workflows between a data owner and a project owner.

Scenario 1 (data privacy): the data owner standardizes (on her side) and encrypts her
dataset; the project owner trains a logistic regression (one-vs-rest for more than two
classes) **on the ciphertexts** with only her public key and returns an encrypted model that
only she can decrypt, with her encrypted scaling folded in so that it works on raw rows.
Scenario 2 (model privacy): the project owner encrypts his model; the data owner trains it
on her plaintext data against the encrypted weights and returns it, still encrypted, to him.
No workflow ever needs a private key to leave its owner. Any other model (Keras, PyTorch,
``.npz``, ``.safetensors``) can be encrypted tensor by tensor for safekeeping
(:mod:`.tensors`).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: reading a dataset file needs neither TenSEAL nor the
    # training code (the harness imports :mod:`.formats` alone)
    from cifer_flwr.securetrain.algorithm import (
        DEFAULT_ITERATIONS,
        LR_TIMES_CURVATURE,
        SIGMOID_COEFFS,
        default_learning_rate,
        max_iterations,
        nesterov_etas,
        params_for_iterations,
        sigmoid_poly,
        train_plaintext,
    )
    from cifer_flwr.securetrain.data import (
        Dataset,
        Scaler,
        load_dataset,
        save_dataset,
        signed_design,
    )
    from cifer_flwr.securetrain.encrypted import (
        EncryptedDataset,
        EncryptedModel,
        PlainDesign,
        decrypt_model,
        encrypt_dataset,
        encrypt_model,
        load_encrypted_dataset,
        load_encrypted_model,
        plain_design,
        refresh_model,
        save_encrypted,
        train_encrypted,
    )
    from cifer_flwr.securetrain.model import (
        Classifier,
        LogisticModel,
        OneVsRestModel,
        evaluate,
        fold_scaler,
        read_model,
        roc_auc,
        write_model,
    )
    from cifer_flwr.securetrain.tensors import ModelTensors, read_tensors, write_tensors

__all__ = [
    "DEFAULT_ITERATIONS",
    "LR_TIMES_CURVATURE",
    "SIGMOID_COEFFS",
    "Classifier",
    "Dataset",
    "EncryptedDataset",
    "EncryptedModel",
    "LogisticModel",
    "ModelTensors",
    "OneVsRestModel",
    "PlainDesign",
    "Scaler",
    "decrypt_model",
    "default_learning_rate",
    "encrypt_dataset",
    "encrypt_model",
    "evaluate",
    "fold_scaler",
    "load_dataset",
    "load_encrypted_dataset",
    "load_encrypted_model",
    "max_iterations",
    "nesterov_etas",
    "params_for_iterations",
    "plain_design",
    "read_model",
    "read_tensors",
    "refresh_model",
    "roc_auc",
    "save_dataset",
    "save_encrypted",
    "sigmoid_poly",
    "signed_design",
    "train_encrypted",
    "train_plaintext",
    "write_model",
    "write_tensors",
]

_WHERE = {
    "DEFAULT_ITERATIONS": "cifer_flwr.securetrain.algorithm",
    "LR_TIMES_CURVATURE": "cifer_flwr.securetrain.algorithm",
    "SIGMOID_COEFFS": "cifer_flwr.securetrain.algorithm",
    "default_learning_rate": "cifer_flwr.securetrain.algorithm",
    "max_iterations": "cifer_flwr.securetrain.algorithm",
    "nesterov_etas": "cifer_flwr.securetrain.algorithm",
    "params_for_iterations": "cifer_flwr.securetrain.algorithm",
    "sigmoid_poly": "cifer_flwr.securetrain.algorithm",
    "train_plaintext": "cifer_flwr.securetrain.algorithm",
    "Dataset": "cifer_flwr.securetrain.data",
    "Scaler": "cifer_flwr.securetrain.data",
    "load_dataset": "cifer_flwr.securetrain.data",
    "save_dataset": "cifer_flwr.securetrain.data",
    "signed_design": "cifer_flwr.securetrain.data",
    "EncryptedDataset": "cifer_flwr.securetrain.encrypted",
    "EncryptedModel": "cifer_flwr.securetrain.encrypted",
    "PlainDesign": "cifer_flwr.securetrain.encrypted",
    "decrypt_model": "cifer_flwr.securetrain.encrypted",
    "encrypt_dataset": "cifer_flwr.securetrain.encrypted",
    "encrypt_model": "cifer_flwr.securetrain.encrypted",
    "load_encrypted_dataset": "cifer_flwr.securetrain.encrypted",
    "load_encrypted_model": "cifer_flwr.securetrain.encrypted",
    "plain_design": "cifer_flwr.securetrain.encrypted",
    "refresh_model": "cifer_flwr.securetrain.encrypted",
    "save_encrypted": "cifer_flwr.securetrain.encrypted",
    "train_encrypted": "cifer_flwr.securetrain.encrypted",
    "Classifier": "cifer_flwr.securetrain.model",
    "LogisticModel": "cifer_flwr.securetrain.model",
    "OneVsRestModel": "cifer_flwr.securetrain.model",
    "evaluate": "cifer_flwr.securetrain.model",
    "fold_scaler": "cifer_flwr.securetrain.model",
    "read_model": "cifer_flwr.securetrain.model",
    "roc_auc": "cifer_flwr.securetrain.model",
    "write_model": "cifer_flwr.securetrain.model",
    "ModelTensors": "cifer_flwr.securetrain.tensors",
    "read_tensors": "cifer_flwr.securetrain.tensors",
    "write_tensors": "cifer_flwr.securetrain.tensors",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cifer_flwr.securetrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
