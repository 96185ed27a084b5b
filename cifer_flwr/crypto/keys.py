"""CKKS key generation, key files and fingerprints.

A *private* key file holds the secret key and the public material (clients, data owners);
a *public* key file holds only the public key and the evaluation keys actually needed
(server, project owner). Both carry the same fingerprint: the SHA-256 of the serialized
public material.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenseal as ts

from cifer_flwr.constants import KIND_KEY
from cifer_flwr.crypto import container
from cifer_flwr.crypto._protobuf import encode_varint, fields
from cifer_flwr.crypto.params import CkksParams, get_preset
from cifer_flwr.exceptions import CiphertextFormatError, KeyFileError, KeyTypeError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "Key",
    "fingerprint_of",
    "generate_key",
    "load_key",
    "load_private_key",
    "load_public_key",
    "write_key_pair",
]

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"
_FORMAT_VERSION = 1


def fingerprint_of(public_material: bytes) -> str:
    """Return the key fingerprint: the first 128 bits of SHA-256, as 32 hex digits."""
    return hashlib.sha256(public_material).hexdigest()[:32]


def _symmetric(private_context_bytes: bytes) -> ts.Context:
    """Return a context that encrypts symmetrically with the same secret key.

    TenSEAL fixes the encryption type when a context is created; its protobuf carries it as
    field 4 (``encryption_type``: 0 asymmetric, 1 symmetric). We rewrite only that field.
    """
    kept = b"".join(raw for number, _, raw in fields(private_context_bytes) if number != 4)
    return ts.context_from(kept + encode_varint(4 << 3) + encode_varint(1))


@dataclass(frozen=True)
class Key:
    """A loaded CKKS key (public, or private with its public part).

    Use :func:`generate_key`, :func:`load_public_key` or :func:`load_private_key` to get one.

    Attributes
    ----------
    params : CkksParams
        The parameter preset the key was made for.
    fingerprint : str
        Hash of the public material; equal for a private key and its public key.
    is_private : bool
        Whether the key can decrypt.
    public_bytes : bytes
        Serialized public context (public key and evaluation keys, no secret key).

    """

    params: CkksParams
    fingerprint: str
    is_private: bool
    public_bytes: bytes = field(repr=False)
    _private_bytes: bytes | None = field(default=None, repr=False)
    _contexts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def short_fingerprint(self) -> str:
        """First 12 hex digits of the fingerprint, for log lines."""
        return self.fingerprint[:12]

    def context(self) -> ts.Context:
        """The TenSEAL context: with the secret key when private, public-only otherwise."""
        if "main" not in self._contexts:
            raw = self._private_bytes if self.is_private else self.public_bytes
            assert raw is not None
            ctx = ts.context_from(raw)
            ctx.global_scale = 2.0**self.params.scale_bits
            self._contexts["main"] = ctx
        return self._contexts["main"]

    def encryption_context(self) -> ts.Context:
        """Context to encrypt with: symmetric when the secret key is held (less noise, faster)."""
        if not self.is_private:
            return self.context()
        if "sym" not in self._contexts:
            assert self._private_bytes is not None
            ctx = _symmetric(self._private_bytes)
            ctx.global_scale = 2.0**self.params.scale_bits
            self._contexts["sym"] = ctx
        return self._contexts["sym"]

    def public(self) -> Key:
        """Return the public part of this key (same fingerprint, cannot decrypt)."""
        return Key(self.params, self.fingerprint, False, self.public_bytes)

    def require_private(self, action: str = "decrypt") -> None:
        """Raise :class:`KeyTypeError` unless this key holds a secret key."""
        if not self.is_private:
            raise KeyTypeError(
                f"cannot {action} with a public key (fingerprint {self.short_fingerprint}); "
                "give the private key file (keys/NAME/private.key) of the key holder."
            )

    def require_public(self, holder: str = "the server") -> None:
        """Raise :class:`KeyTypeError` if this key holds a secret key."""
        if self.is_private:
            raise KeyTypeError(
                f"{holder} must never hold a secret key, but a private key "
                f"(fingerprint {self.short_fingerprint}) was given; pass the public key file "
                "(keys/NAME/public.key) instead."
            )

    def to_bytes(self) -> bytes:
        """Serialize into a key-file container (inverse of :func:`load_key` on bytes)."""
        header = {
            "format_version": _FORMAT_VERSION,
            "private": self.is_private,
            "params": self.params.to_dict(),
            "fingerprint": self.fingerprint,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        blobs = [self.public_bytes]
        if self.is_private:
            assert self._private_bytes is not None
            blobs.append(self._private_bytes)
        return container.pack(KIND_KEY, header, blobs)


def generate_key(
    preset: str | CkksParams = "default", *, relin_keys: bool = False, galois_keys: bool = False
) -> Key:
    """Generate a fresh CKKS key pair and return its private :class:`Key`.

    Parameters
    ----------
    preset : str or CkksParams
        Parameter preset name or parameters.
    relin_keys, galois_keys : bool
        Put relinearization / Galois (rotation) keys in the public material; needed only
        for ciphertext multiplication and rotations (encrypted training), not for
        aggregation.

    """
    params = get_preset(preset) if isinstance(preset, str) else preset
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    ctx.global_scale = 2.0**params.scale_bits
    if relin_keys:
        ctx.generate_relin_keys()
    if galois_keys:
        ctx.generate_galois_keys()
    opts = {"save_galois_keys": galois_keys, "save_relin_keys": relin_keys}
    public_bytes = ctx.serialize(save_public_key=True, save_secret_key=False, **opts)
    private_bytes = ctx.serialize(save_public_key=True, save_secret_key=True, **opts)
    return Key(params, fingerprint_of(public_bytes), True, public_bytes, private_bytes)


def _parse(data: bytes, source: str) -> Key:
    try:
        header, blobs = container.unpack(data, kind=KIND_KEY)
    except CiphertextFormatError as exc:
        raise KeyFileError(f"{source} is not a valid cifer key file: {exc}") from exc
    params = CkksParams.from_dict(header["params"])
    is_private = bool(header.get("private"))
    if len(blobs) != (2 if is_private else 1):
        raise KeyFileError(f"{source}: malformed key file ({len(blobs)} key blobs).")
    fingerprint = fingerprint_of(blobs[0])
    if fingerprint != header.get("fingerprint"):
        raise KeyFileError(
            f"{source}: the key material hashes to {fingerprint} but the header says "
            f"{header.get('fingerprint')}; the file was altered."
        )
    if not is_private and ts.context_from(blobs[0]).has_secret_key():
        raise KeyFileError(f"{source}: a 'public' key file that contains a secret key.")
    return Key(params, fingerprint, is_private, blobs[0], blobs[1] if is_private else None)


def load_key(path: str | os.PathLike[str]) -> Key:
    """Load a public or private key file.

    Raises
    ------
    KeyFileError
        When the file does not exist or is not a valid cifer key file.

    """
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(
            f"key file {str(p)!r} does not exist; create a pair with "
            "`cifer keygen --name NAME` or pass the right path."
        )
    return _parse(p.read_bytes(), str(p))


def load_private_key(path: str | os.PathLike[str]) -> Key:
    """Load a private key file; a public key file raises :class:`KeyTypeError`."""
    key = load_key(path)
    if not key.is_private:
        raise KeyTypeError(
            f"{str(path)!r} is a public key (fingerprint {key.short_fingerprint}); decrypting "
            "needs the matching private.key, which stays with the key holder."
        )
    return key


def load_public_key(path: str | os.PathLike[str], *, holder: str = "the server") -> Key:
    """Load a public key file; a file holding a secret key raises :class:`KeyTypeError`."""
    key = load_key(path)
    key.require_public(holder)
    return key


def write_key_pair(
    key: Key, directory: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``private.key`` (mode 0600) and ``public.key`` (mode 0644) into ``directory``.

    Raises
    ------
    FileExistsError
        When either file exists and ``force`` is false (keys are never overwritten silently).

    """
    key.require_private("write a key pair")
    d = Path(directory)
    priv, pub = d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE
    for p in (priv, pub):
        if p.exists() and not force:
            raise FileExistsError(
                f"{p} already exists; refusing to overwrite a key (pass force=True / --force)."
            )
    d.mkdir(parents=True, exist_ok=True)
    container.write_file_atomic(priv, key.to_bytes(), mode=0o600)
    container.write_file_atomic(pub, key.public().to_bytes(), mode=0o644)
    log.info("wrote key pair %s (fingerprint %s)", d, key.short_fingerprint)
    return priv, pub
