"""File-level steps of the securetrain commands: output checks and key handling.

The CLI only parses arguments and calls these functions (and those of :mod:`.encrypted`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from cifer_flwr.crypto.keys import (
    Key,
    generate_key,
    key_directory,
    load_key,
    load_public_key,
    write_key_pair,
)
from cifer_flwr.crypto.linalg import generate_training_key, has_training_keys
from cifer_flwr.crypto.paillier import PaillierKey
from cifer_flwr.exceptions import CiferError, KeyFileError, KeyTypeError, OutputPathError
from cifer_flwr.securetrain.algorithm import (
    DEFAULT_ITERATIONS,
    iterations_for_depth,
    max_iterations,
    params_for_iterations,
    period_for,
)
from cifer_flwr.securetrain.formats import (
    ENCRYPTED_SUFFIX,
    SECURETRAIN_DATASET_SUFFIXES,
    SECURETRAIN_MODEL_SUFFIXES,
)
from cifer_flwr.securetrain.tensors import ModelTensors

__all__ = [
    "ENCRYPTED_EXTENSION",
    "KeySetup",
    "check_encrypted_output",
    "MODEL_PRESET",
    "check_plain_output",
    "decrypt_federated_model",
    "decrypt_tensors",
    "encrypt_tensors",
    "is_federated_model",
    "load_training_key",
    "prepare_encryption_key",
]

ENCRYPTED_EXTENSION = ENCRYPTED_SUFFIX
#: CKKS preset of a key made for a model that is only stored encrypted (not trained):
#: values up to 2**18 with about 1e-9 relative error, so tensors round-trip within 1e-6.
MODEL_PRESET = "precise"
#: Public ``meta.source`` of a model encrypted by ``encrypt-model`` as tensors.
TENSORS_SOURCE = "securetrain-model"


def _check_exists(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputPathError(
            f"{path} already exists; expected a new file. Pass --force to replace it, or "
            "choose another output path."
        )


def check_encrypted_output(
    path: str | os.PathLike[str], *, force: bool = False, dataset: bool = False
) -> Path:
    """Validate the path of an encrypted result: ``.enc``, and new unless ``force``.

    ``dataset`` names the result an encrypted dataset in the message for a plaintext
    dataset extension (``.npz``, ``.npy``, ``.csv``).

    Raises
    ------
    OutputPathError
        For a plaintext model extension (the result is encrypted: nobody but the key holder
        can turn it into a ``.h5`` / ``.pt`` / ``.npz``), another extension, or an existing file.

    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext in SECURETRAIN_DATASET_SUFFIXES and dataset:
        raise OutputPathError(
            f"{p} names a plaintext {ext} dataset, but the encrypted dataset is a cifer "
            f"container that no numpy or CSV reader can open; write "
            f"{p.with_suffix(ENCRYPTED_EXTENSION)} instead (only .enc is accepted)."
        )
    if ext in SECURETRAIN_MODEL_SUFFIXES:
        raise OutputPathError(
            f"{p} names a plaintext {ext} model, but this result is encrypted: only the "
            "holder of the private key can decrypt it, so it cannot be written as "
            f"{ext} here. Write {p.with_suffix(ENCRYPTED_EXTENSION)} instead; the key holder "
            f"then runs `cifer securetrain decrypt-model --input-model "
            f"{p.with_suffix(ENCRYPTED_EXTENSION)} --private-key PRIVATE.key "
            f"--output-model {p}`."
        )
    if ext != ENCRYPTED_EXTENSION:
        raise OutputPathError(
            f"unknown extension {ext or '(none)'!r} for the encrypted output {p}; use .enc."
        )
    _check_exists(p, force)
    return p


def check_plain_output(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Validate the path of a decrypted model: ``.h5``, ``.pt`` or ``.npz``, new unless ``force``.

    Raises
    ------
    OutputPathError
        For ``.enc`` or an unknown extension, or an existing file.

    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in SECURETRAIN_MODEL_SUFFIXES:
        raise OutputPathError(
            f"unknown model extension {ext or '(none)'!r} for {p}; a decrypted model is "
            "written as .h5 / .keras (Keras), .pt (PyTorch state dict), .npz or .safetensors."
        )
    _check_exists(p, force)
    return p


@dataclass(frozen=True)
class KeySetup:
    """The key to encrypt with and, when one was created, where its files went.

    Attributes
    ----------
    key : Key
        Key used to encrypt (private when just created, else as loaded).
    private_path, public_path : Path or None
        Files of a newly created pair (``None`` when an existing key was reused).

    """

    key: Key
    private_path: Path | None = None
    public_path: Path | None = None

    @property
    def created(self) -> bool:
        """Whether a new key pair was written."""
        return self.private_path is not None


def prepare_encryption_key(
    *,
    public_key: str | os.PathLike[str] | None,
    key_name: str | None,
    keys_dir: str | os.PathLike[str] = "keys",
    iterations: int = DEFAULT_ITERATIONS,
    num_samples: int | None = None,
    trainable: bool = True,
) -> KeySetup:
    """Return the key to encrypt a dataset or model with, creating a key pair if none is given.

    Parameters
    ----------
    public_key : path-like, optional
        Reuse this key file (a training key: relinearization + Galois keys).
    key_name : str, optional
        Name of a new pair: ``keys_dir/key_name/{public,private}.key``; without a name the
        pair goes to ``keys_dir/{public,private}.key``.
    keys_dir : path-like
        Parent directory of new key pairs.
    iterations : int
        Encrypted iterations the key must support (picks the CKKS parameters).
    num_samples : int, optional
        Samples of the dataset to encrypt (fixes the rotations needed); rotations for all
        slots when unknown (a model whose training data is not known yet).
    trainable : bool
        ``False`` for a model that is only stored encrypted (any architecture): a new pair
        uses the small :data:`MODEL_PRESET` without evaluation keys, and a reused key needs
        no training keys.

    Raises
    ------
    ConfigError
        When ``key_name`` is not a plain name (:func:`cifer_flwr.crypto.keys.key_directory`).
    KeyFileError
        When a pair exists at the target (never overwritten) or a reused key cannot train.
    UnsupportedOperationError
        When ``iterations`` exceed what a secure ring allows.

    """
    params = params_for_iterations(iterations) if trainable else None
    if public_key is not None:
        key = load_key(public_key)
        if trainable:
            _require_training(key, str(public_key), iterations)
        return KeySetup(key)
    directory = Path(keys_dir) if key_name is None else key_directory(keys_dir, key_name)
    for name in ("private.key", "public.key"):
        if (directory / name).exists():
            raise KeyFileError(
                f"{directory / name} already exists and keys are never overwritten. Reuse it "
                f"with --public-key {directory / 'public.key'}, or create a new pair with "
                "--key-name NAME."
            )
    if params is None:
        key = generate_key(MODEL_PRESET)
    else:
        period = params.slots if num_samples is None else period_for(num_samples, params.slots)
        key = generate_training_key(params, max_period=period)
    priv, pub = write_key_pair(key, directory)
    return KeySetup(key, priv, pub)


def _require_training(key: Key, source: str, iterations: int) -> None:
    if not has_training_keys(key.public() if key.is_private else key):
        raise KeyFileError(
            f"{source} has no relinearization/rotation keys, so nobody can train with it; "
            "let encrypt-dataset / encrypt-model create a training key pair (--key-name NAME)."
        )
    fit = iterations_for_depth(key.params.depth)
    if fit < iterations:
        raise KeyFileError(
            f"{source} (parameters {key.params.name}, depth {key.params.depth}) supports at "
            f"most {fit} encrypted iterations, {iterations} were asked. Pass --iterations "
            f"{fit}, or create a new key pair with --key-name NAME --iterations "
            f"{min(iterations, max_iterations())} (at most {max_iterations()} fit any key)."
        )


def load_training_key(path: str | os.PathLike[str]) -> Key:
    """Load the public key a computing party trains with.

    Raises
    ------
    KeyTypeError
        When the file holds a private key (it must stay with its owner).
    KeyFileError
        When it cannot train (no relinearization or rotation keys).

    """
    try:
        key = load_public_key(path, holder="the training party")
    except KeyTypeError as exc:
        raise KeyTypeError(
            f"{path} is a private key. Training needs only the key holder's public key "
            "(public.key); a private key must never be sent to anyone."
        ) from exc
    if not has_training_keys(key):
        raise KeyFileError(
            f"{path} has no relinearization/rotation keys, so it cannot train; the key holder "
            "should create the pair with `cifer securetrain encrypt-dataset` or "
            "`encrypt-model`."
        )
    return key


def is_federated_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an encrypted *federated* global model (a strategy's ``save_path``).

    Reads only the public container header; no key is needed.
    """
    from cifer_flwr.constants import (
        KIND_ENCRYPTED_ARRAYS,
        KIND_ENCRYPTED_BUNDLE,
        KIND_PAILLIER_ARRAYS,
    )
    from cifer_flwr.crypto import container

    p = Path(path)
    if not p.is_file():
        return False
    try:
        header, _ = container.read_file(p)
    except CiferError:
        return False
    kinds = (KIND_ENCRYPTED_ARRAYS, KIND_ENCRYPTED_BUNDLE, KIND_PAILLIER_ARRAYS)
    return header.get("kind") in kinds


def decrypt_federated_model(
    path: str | os.PathLike[str], key: Key | PaillierKey
) -> dict[str, npt.NDArray[Any]]:
    """Decrypt a strategy's encrypted global model into named arrays (key holders only).

    For FedYogi / FedAdam / FedAdagrad the last round's pending server step is applied
    first (docs/design.md §4.3), so the result is the model Flower's plaintext strategy returns.
    """
    from cifer_flwr import protocol

    return protocol.decrypt_global_model(Path(path), key)


def encrypt_tensors(tensors: ModelTensors, key: Key) -> bytes:
    """Encrypt any model's tensors (and Keras architecture) into one container.

    The container is the one a federated strategy saves (``crypto.to_bytes``), so
    ``decrypt-model`` opens both; tensor names, shapes and dtypes are public, the values and
    the architecture are encrypted (docs/design.md §4.6). Inverse: :func:`decrypt_tensors`.

    Raises
    ------
    ValueRangeError
        When a value exceeds the key's safe range.

    """
    from cifer_flwr import crypto

    enc = crypto.encrypt(tensors.to_arrays(), key, meta={"source": TENSORS_SOURCE})
    return crypto.to_bytes(enc)


def decrypt_tensors(path: str | os.PathLike[str], key: Key | PaillierKey) -> ModelTensors:
    """Decrypt a model written by :func:`encrypt_tensors` or a strategy's ``save_path``."""
    return ModelTensors.from_arrays(decrypt_federated_model(path, key))
