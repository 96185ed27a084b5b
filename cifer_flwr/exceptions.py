"""Exceptions raised by cifer_flwr.

Every message states the value found, the value expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CiferError",
    "CiphertextFormatError",
    "ConfigError",
    "DatasetError",
    "FeatureMismatchError",
    "KeyFileError",
    "KeyExistsError",
    "KeyMismatchError",
    "KeyTypeError",
    "MaskingError",
    "LayoutMismatchError",
    "MissingExtraError",
    "ModelFormatError",
    "NotLinearModelError",
    "NonFiniteError",
    "OutputPathError",
    "RunFailedError",
    "UnknownPresetError",
    "UnsupportedOperationError",
    "ValueRangeError",
    "WorkerError",
]


class CiferError(Exception):
    """Base class of every error raised on purpose by cifer_flwr."""


class KeyMismatchError(CiferError):
    """Two encrypted objects, or an object and a key, belong to different key pairs."""

    def __init__(self, found: str, expected: str, what: str = "encrypted object") -> None:
        self.found = found
        self.expected = expected
        super().__init__(
            f"key mismatch: the {what} was made with key fingerprint {found}, "
            f"but the key in use has fingerprint {expected}. Use the key pair the "
            "object was encrypted with (`cifer keys inspect FILE` prints a key's fingerprint)."
        )


class KeyTypeError(CiferError):
    """A public key was given where a private key is needed, or the reverse."""


class KeyFileError(CiferError):
    """A key file is missing, unreadable or not a cifer key file."""


class CiphertextFormatError(CiferError):
    """Serialized ciphertexts or their container are truncated, corrupted or malformed."""


class LayoutMismatchError(CiphertextFormatError):
    """Layout metadata does not match the ciphertexts, or two layouts differ."""


class NonFiniteError(CiferError, ValueError):
    """An array to encrypt holds NaN or infinite values."""


class ValueRangeError(CiferError, ValueError):
    """A value to encrypt lies outside the safe range of the CKKS parameters."""


class UnknownPresetError(CiferError, ValueError):
    """A parameter preset name that does not exist."""


class UnsupportedOperationError(CiferError):
    """An operation the chosen scheme, parameters or setting cannot perform."""


class RunFailedError(CiferError):
    """A federated run ended without releasing an aggregate (no round, or its last rounds)."""


class WorkerError(CiferError):
    """A crypto worker process failed, died, or broke its frame protocol (docs/design.md §6.1)."""


class ConfigError(CiferError, ValueError):
    """An invalid configuration value (strategy argument, run config, Hydra option)."""


class DatasetError(CiferError, ValueError):
    """A dataset file cannot be used: unknown format, missing columns, NaN, text, one class."""


class ModelFormatError(CiferError, ValueError):
    """A model file cifer cannot read, or one it refuses (hostile or malformed content)."""


class NotLinearModelError(ModelFormatError):
    """A readable model that is not one linear layer (securetrain trains only those)."""


class FeatureMismatchError(CiferError, ValueError):
    """A model and a dataset disagree on the number of features."""


class OutputPathError(CiferError, ValueError):
    """An output path that exists (without ``--force``) or has the wrong extension."""


class KeyExistsError(OutputPathError, FileExistsError):
    """A key file exists and ``force`` was not given (keys are never overwritten silently)."""


class MissingExtraError(CiferError, ImportError):
    """An optional package is not installed; the message names the pip extra that brings it.

    Raised by :func:`cifer_flwr.extras.require`; also an ``ImportError``, so code written
    against a plain failed import still catches it.
    """


class MaskingError(CiferError):
    """A secure-aggregation (masking) message or step that must be refused (docs/design.md §4.9).

    Raised on the key holder for an advertisement, share or unmask request it will not
    answer, and on the server for a round whose masks cannot be removed.
    """
