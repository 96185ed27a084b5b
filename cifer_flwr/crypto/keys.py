"""CKKS key generation, key files and fingerprints.

A *private* key file holds the secret key and the public material (clients, data owners);
a *public* key file holds only the public key and the evaluation keys actually needed
(server, project owner). Both carry the same fingerprint: the SHA-256 of the serialized
public material.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import logging
import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy.typing as npt
import tenseal as ts

from cifer_flwr.constants import KIND_KEY
from cifer_flwr.crypto import container
from cifer_flwr.crypto._protobuf import encode_varint, fields, length_delimited, payload
from cifer_flwr.crypto._seal import check_seal_blob
from cifer_flwr.crypto.params import SCHEME_BFV, SCHEME_CKKS, CkksParams, get_preset
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    KeyExistsError,
    KeyFileError,
    KeyMismatchError,
    KeyTypeError,
    OutputPathError,
)

if TYPE_CHECKING:
    from cifer_flwr.crypto.ckks import EncryptedArrays

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "Key",
    "check_private_key_permissions",
    "fingerprint_of",
    "generate_key",
    "key_directory",
    "load_key",
    "load_private_key",
    "load_public_key",
    "parse_key",
    "check_key_directory",
    "without_evaluation_keys",
    "write_key_pair",
]

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"
_FORMAT_VERSION = 1
_KEY_HEADER_FIELDS = frozenset(
    {
        "format_version",
        "private",
        "params",
        "fingerprint",
        "created",
        "kind",
        "blobs_sha256",
        "public_digest",
    }
)
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Largest key file accepted (deep training keys with rotations weigh hundreds of MB).
MAX_KEY_FILE_BYTES = 4 * 1024**3


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
    slim : bool
        A securetrain training key: its private key file keeps the public key but omits the
        (large) evaluation keys, which only the computing party needs (the key holder
        encrypts and decrypts). A slim key loaded from that file has no evaluation keys.

    """

    params: CkksParams
    fingerprint: str
    is_private: bool
    public_bytes: bytes = field(repr=False)
    _private_bytes: bytes | None = field(default=None, repr=False)
    _contexts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    slim: bool = field(default=False, repr=False, compare=False)

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
            _set_scale(ctx, self.params)
            self._contexts["main"] = ctx
        return self._contexts["main"]

    def encryption_context(self) -> ts.Context:
        """Context to encrypt with: symmetric when the secret key is held (less noise, faster)."""
        if not self.is_private:
            return self.context()
        if "sym" not in self._contexts:
            assert self._private_bytes is not None
            ctx = _symmetric(self._private_bytes)
            _set_scale(ctx, self.params)
            self._contexts["sym"] = ctx
        return self._contexts["sym"]

    def public(self) -> Key:
        """Return the public part of this key (same fingerprint, cannot decrypt)."""
        return Key(self.params, self.fingerprint, False, self.public_bytes, slim=self.slim)

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

    # ----------------------------------------------------------- the scheme interface
    # (crypto.SchemeKey, docs/design.md §3): the same methods on a Paillier key; the
    # protocol, the client mod and the strategies call these and never name a scheme.

    @property
    def scheme(self) -> str:
        """``"ckks"``, or ``"bfv"`` for the exact integer sums of preset ``packed``."""
        return self.params.scheme

    @property
    def has_reserved_slots(self) -> bool:
        """Ciphertexts can carry SecureFed's integrity values in reserved slots (§4.4)."""
        return True

    @property
    def exact_sums(self) -> bool:
        """Sums are exact integers, which secure aggregation's masks need (§4.9)."""
        return self.params.is_bfv

    def encrypt(
        self,
        arrays: Mapping[str, npt.ArrayLike],
        *,
        weight: float = 1.0,
        meta: Mapping[str, Any] | None = None,
        reserved: int = 0,
        fill: npt.ArrayLike | None = None,
        summands: int = 1,
        mask: npt.ArrayLike | None = None,
    ) -> EncryptedArrays:
        """Encrypt named arrays times ``weight`` (:func:`cifer_flwr.crypto.ckks.encrypt`)."""
        from cifer_flwr.crypto import ckks

        return ckks.encrypt(
            arrays,
            self,
            weight=weight,
            meta=meta,
            reserved=reserved,
            fill=fill,
            summands=summands,
            mask=mask,
        )

    def decrypt(self, enc: Any, *, divisor: float = 1.0) -> dict[str, npt.NDArray[Any]]:
        """Decrypt ``enc`` to named arrays divided by ``divisor``.

        Raises
        ------
        KeyTypeError
            For a public key.
        KeyMismatchError
            When ``enc`` was encrypted under another key or scheme.

        """
        from cifer_flwr.crypto import ckks

        if not isinstance(enc, ckks.EncryptedArrays):
            raise KeyMismatchError(enc.fingerprint, self.fingerprint, "encrypted arrays")
        return ckks.decrypt(enc, self, divisor=divisor)

    def from_bytes(self, data: bytes) -> EncryptedArrays:
        """Parse a serialized encrypted-arrays container, validating everything (§5)."""
        from cifer_flwr.crypto import ckks

        return ckks.from_bytes(data, self)

    def from_header_and_chunks(
        self,
        header: Mapping[str, Any],
        chunks: Sequence[bytes],
        *,
        what: str = "encrypted arrays",
        container: bool = False,
        defer: bool | None = None,
    ) -> EncryptedArrays:
        """Rebuild one encrypted part from its header and ciphertext bytes (validated)."""
        from cifer_flwr.crypto import ckks

        return ckks.from_header_and_chunks(
            header, chunks, self, what=what, container=container, defer=defer
        )

    def max_ciphertext_bytes(self) -> int:
        """Largest serialized ciphertext of this key's parameters (reply size bounds)."""
        from cifer_flwr.crypto.validation import max_ciphertext_bytes

        return max_ciphertext_bytes(self.params)

    def to_bytes(self) -> bytes:
        """Serialize into a key-file container (inverse of :func:`load_key` on bytes)."""
        header = {
            "format_version": _FORMAT_VERSION,
            "private": self.is_private,
            "params": self.params.to_dict(),
            "fingerprint": self.fingerprint,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        public = self.public_bytes
        if self.slim and self.is_private:  # the evaluation keys stay in public.key only
            public = without_evaluation_keys(public)
            header["public_digest"] = fingerprint_of(public)
        elif self.slim and fingerprint_of(public) != self.fingerprint:
            raise KeyTypeError(
                f"this public key (fingerprint {self.short_fingerprint}) comes from a private "
                "key file that omits the evaluation keys, so it cannot be written as a "
                "public key file; the complete one is the public.key written with it."
            )
        blobs = [public]
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
    if params.is_bfv:
        ctx = ts.context(
            ts.SCHEME_TYPE.BFV,
            params.poly_modulus_degree,
            plain_modulus=params.plain_modulus,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
    else:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
    _set_scale(ctx, params)
    if relin_keys:
        ctx.generate_relin_keys()
    if galois_keys:
        ctx.generate_galois_keys()
    opts = {"save_galois_keys": galois_keys, "save_relin_keys": relin_keys}
    public_bytes = ctx.serialize(save_public_key=True, save_secret_key=False, **opts)
    private_bytes = ctx.serialize(save_public_key=True, save_secret_key=True, **opts)
    return Key(params, fingerprint_of(public_bytes), True, public_bytes, private_bytes)


def key_directory(keys_dir: str | os.PathLike[str], name: str) -> Path:
    """Map a key pair name to its directory ``keys_dir/name``: the one place that does.

    Raises
    ------
    ConfigError
        When ``name`` is not a plain name (letters, digits, ``._-``, starting with a letter
        or digit, at most 64 characters), so a name can never point outside ``keys_dir``.

    """
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"key name {name!r:.80} is not a plain name; use letters, digits, '.', '_' and "
            "'-' only, starting with a letter or digit, at most 64 characters (for example "
            "hospital-fl). Key names never contain '/' or '..'."
        )
    return Path(keys_dir) / name


def _context_bound(params: CkksParams) -> dict[str, int]:
    """Largest uncompressed size of each SEAL object a key context may hold."""
    n, primes = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    ct = 200 + 2 * n * primes * 8
    relin = (primes - 1) * ct + 1024
    galois_keys = 2 * max(1, n.bit_length()) + 2
    return {
        "encryption parameters": 64 * 1024,
        "public key": ct,
        "secret key": 200 + n * primes * 8,
        "relinearization keys": relin,
        "Galois keys": galois_keys * relin,
    }


def _check_context_bytes(raw: bytes, params: CkksParams, what: str) -> dict[int, bytes]:
    """Check a serialized TenSEAL context before TenSEAL parses it; return its top fields.

    Only the fields of ``TenSEALContextProto`` are allowed, each at most once, and every
    embedded SEAL object must have a valid SEAL header and a bounded inflated size
    (docs/design.md §5).
    """
    bounds = _context_bound(params)
    top_spec = {1: (2, "encryption parameters"), 2: (2, None), 3: (2, None), 4: (0, None)}
    public_spec = {
        1: (2, "public key"),
        2: (0, None),
        3: (1, None),
        4: (2, "relinearization keys"),
        5: (2, "Galois keys"),
    }
    private_spec = {1: (2, "secret key"), 2: (0, None), 3: (0, None)}

    def walk(data: bytes, spec: dict[int, tuple[int, str | None]], where: str) -> dict[int, bytes]:
        seen: dict[int, bytes] = {}
        for number, wire, field_bytes in fields(data):
            if number not in spec or spec[number][0] != wire or number in seen:
                raise KeyFileError(
                    f"{what}: unexpected field {number} (wire type {wire}) in the {where}; "
                    "the key file was altered or not written by cifer."
                )
            seen[number] = field_bytes
            seal_what = spec[number][1]
            if seal_what is not None:
                try:
                    check_seal_blob(payload(field_bytes), bounds[seal_what], what=seal_what)
                except CiphertextFormatError as exc:
                    raise KeyFileError(f"{what}: {exc}") from exc
        return seen

    try:
        top = walk(raw, top_spec, "TenSEAL context")
        if 2 in top:
            walk(payload(top[2]), public_spec, "public part")
        if 3 in top:
            walk(payload(top[3]), private_spec, "private part")
    except CiphertextFormatError as exc:
        raise KeyFileError(f"{what}: malformed TenSEAL context ({exc}).") from exc
    return top


def _set_scale(ctx: ts.Context, params: CkksParams) -> None:
    """CKKS contexts encode at ``2**scale_bits``; BFV contexts have no scale."""
    if not params.is_bfv:
        ctx.global_scale = 2.0**params.scale_bits


def _scheme_of(ctx: ts.Context) -> tuple[str, int]:
    """Scheme name and plain modulus (0 for CKKS) of a loaded context."""
    parms = ctx.seal_context().data.key_context_data().parms()
    # TenSEAL and its sealapi bind SCHEME_TYPE separately: compare by name
    scheme = str(parms.scheme()).rsplit(".", 1)[-1]
    if scheme == "BFV":
        return SCHEME_BFV, int(parms.plain_modulus().value())
    if scheme == "CKKS":
        return SCHEME_CKKS, 0
    return scheme[:20], 0


def _prime_bits(ctx: ts.Context) -> tuple[int, tuple[int, ...]]:
    """Ring degree and prime bit sizes (data primes, then the special prime) of ``ctx``."""
    data = ctx.seal_context().data
    totals = []
    level = data.key_context_data()
    degree = int(level.parms().poly_modulus_degree())
    while level is not None:
        totals.append(int(level.total_coeff_modulus_bit_count()))
        level = level.next_context_data()
    totals.reverse()  # last data level first, key level last
    bits = [totals[0]] + [b - a for a, b in itertools.pairwise(totals)]
    return degree, tuple(bits)


def _trial_encrypt(ctx: ts.Context, params: CkksParams) -> None:
    """Encrypt one value with ``ctx`` and add the result to itself.

    Public-key or symmetric, as the context is set. SEAL refuses a *transparent* result at
    the addition, which an altered public key produces without an error at encryption
    (found by the fuzzer).
    """
    vec = ts.bfv_vector(ctx, [1]) if params.is_bfv else ts.ckks_vector(ctx, [1.0])
    vec + vec


def _load_context(raw: bytes, params: CkksParams, *, private: bool, what: str) -> ts.Context:
    _check_context_bytes(raw, params, what)
    try:
        ctx = ts.context_from(raw)
        degree, bits = _prime_bits(ctx)
        scheme, plain_modulus = _scheme_of(ctx)
        has_secret = bool(ctx.has_secret_key())
    except CiferError:
        raise
    except Exception as exc:  # TenSEAL/SEAL errors of any type
        raise KeyFileError(
            f"{what}: the TenSEAL context does not load ({type(exc).__name__}: {exc!s:.200}); "
            "the key file is corrupted or was made by another TenSEAL version."
        ) from exc
    if degree != params.poly_modulus_degree or bits != params.coeff_mod_bit_sizes:
        raise KeyFileError(
            f"{what}: the key material has ring degree {degree} and primes {list(bits)}, but "
            f"the header says preset {params.name!r} (N={params.poly_modulus_degree}, "
            f"{list(params.coeff_mod_bit_sizes)}); the file was altered."
        )
    if (scheme, plain_modulus) != (params.scheme, params.plain_modulus):
        raise KeyFileError(
            f"{what}: the key material is {scheme} with plain modulus {plain_modulus}, but "
            f"the header says preset {params.name!r} ({params.scheme}, plain modulus "
            f"{params.plain_modulus}); the file was altered."
        )
    if has_secret != private:
        state = "contains" if has_secret else "lacks"
        raise KeyFileError(
            f"{what}: a {'private' if private else 'public'} key that {state} "
            "a secret key; the file was altered."
        )
    _set_scale(ctx, params)
    # a key's one job is to encrypt: public-key encryption (the encryption type is a field
    # too) and, for a private key, the symmetric encryption its holder uses (found by the
    # fuzzer: a private key whose material made SEAL refuse "transparent" ciphertexts)
    kind = "public-key"
    try:
        _trial_encrypt(ctx, params)
        if private:
            kind = "symmetric"
            sym = _symmetric(raw)
            _set_scale(sym, params)
            _trial_encrypt(sym, params)
    except Exception as exc:
        raise KeyFileError(
            f"{what}: the key cannot encrypt ({kind}: {type(exc).__name__}: {exc!s:.120}); "
            "the key file was altered."
        ) from exc
    return ctx


def check_private_key_permissions(path: Path) -> None:
    """Refuse a private key file that group or others may read or write (as ssh does).

    Raises
    ------
    KeyFileError
        Naming the mode and the ``chmod 600`` that fixes it.

    """
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        raise KeyFileError(
            f"private key file {str(path)!r} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); a secret key must be private to its owner. "
            f"Fix it with: chmod 600 {shlex.quote(str(path))}"
        )


def parse_key(data: bytes, source: str, path: Path | None = None) -> Key:
    """Parse and validate the bytes of a CKKS key file (``source`` names it in messages).

    ``path``: the file the bytes were read from; a private key's file permissions are
    checked there (:func:`check_private_key_permissions`).

    Raises
    ------
    KeyFileError
        For anything but a well-formed cifer key whose SEAL objects load and work.

    """
    try:
        header, blobs = container.unpack(data, kind=KIND_KEY)
    except CiphertextFormatError as exc:
        raise KeyFileError(f"{source} is not a valid cifer key file: {exc}") from exc
    unknown = sorted(str(k) for k in header if k not in _KEY_HEADER_FIELDS)
    version = header.get("format_version")
    is_private = header.get("private")
    if unknown or version != _FORMAT_VERSION or not isinstance(is_private, bool):
        raise KeyFileError(
            f"{source}: malformed key header (format_version {version!r:.20}, private "
            f"{is_private!r:.20}, unknown fields {unknown[:5]}); expected format_version "
            f"{_FORMAT_VERSION} and a boolean 'private'."
        )
    if path is not None and is_private:
        check_private_key_permissions(path)
    if not isinstance(header.get("params"), dict):
        raise KeyFileError(f"{source}: the key header has no CKKS parameters object.")
    try:
        params = CkksParams.from_dict(header["params"])
    except CiferError as exc:
        raise KeyFileError(f"{source}: invalid CKKS parameters in the key header: {exc}") from exc
    if len(blobs) != (2 if is_private else 1):
        raise KeyFileError(
            f"{source}: malformed key file ({len(blobs)} key blobs, expected "
            f"{2 if is_private else 1} for a {'private' if is_private else 'public'} key)."
        )
    fingerprint = fingerprint_of(blobs[0])
    slim = "public_digest" in header  # a training key's private file (Key.slim)
    claimed = header.get("public_digest") if slim else header.get("fingerprint")
    if fingerprint != claimed or (slim and not is_private):
        raise KeyFileError(
            f"{source}: the key material hashes to {fingerprint} but the header says "
            f"{str(claimed)[:40]}; the file was altered."
        )
    if slim:
        fingerprint = str(header.get("fingerprint"))
        if not re.fullmatch(r"[0-9a-f]{32}", fingerprint):
            raise KeyFileError(f"{source}: malformed key fingerprint {fingerprint[:40]!r}.")
    public_top = _check_context_bytes(blobs[0], params, f"{source} (public part)")
    if is_private:
        private_top = _check_context_bytes(blobs[1], params, f"{source} (private part)")
        same = public_top.get(1) == private_top.get(1) and _public_key_field(
            public_top
        ) == _public_key_field(private_top)
        if not same:
            raise KeyFileError(
                f"{source}: the secret part and the public part (fingerprint {fingerprint}) "
                "belong to different key pairs; the file was altered."
            )
    main = blobs[1] if is_private else blobs[0]
    ctx = _load_context(main, params, private=is_private, what=source)
    key = Key(
        params, fingerprint, is_private, blobs[0], blobs[1] if is_private else None, slim=slim
    )
    key._contexts["main"] = ctx
    return key


def without_evaluation_keys(public_bytes: bytes) -> bytes:
    """The public context without relinearization and Galois keys (public key kept)."""
    # TenSEALContextProto: 2 = public part; inside it 4 = relinearization, 5 = Galois keys
    out = b""
    for number, _, raw in fields(public_bytes):
        if number == 2:
            inner = b"".join(r for n, _, r in fields(payload(raw)) if n not in (4, 5))
            out += length_delimited(2, inner)
        else:
            out += raw
    return out


def _public_key_field(top: dict[int, bytes]) -> bytes | None:
    if 2 not in top:
        return None
    inner = {number: raw for number, _, raw in fields(payload(top[2]))}
    return inner.get(1)


def _not_a_key_file(p: Path, want: str | None = None) -> str:
    """Why ``p`` (not a regular file) cannot be a key file: what it is and what is expected.

    ``want`` (``"private"`` / ``"public"``) is the key the caller needs: a key-pair directory
    is then answered with that file inside it (issue 22: decrypting was sent to public.key).
    """
    expected = "expected a cifer key file (public.key or private.key)"
    if p.is_dir():
        order = (
            (p / PRIVATE_KEY_FILE, p / PUBLIC_KEY_FILE)
            if want == "private"
            else (p / PUBLIC_KEY_FILE, p / PRIVATE_KEY_FILE)
        )
        inside = [f.name for f in order if f.is_file()]
        if want == "private" and inside == [PUBLIC_KEY_FILE]:
            return (
                f"{str(p)!r} is a directory, not a key file; expected the private key: it "
                f"holds only {PUBLIC_KEY_FILE}, and decrypting needs the matching "
                f"{PRIVATE_KEY_FILE}, which stays with the key holder."
            )
        hint = (
            f"; it holds {' and '.join(inside)}: pass {p / inside[0]}"
            if inside
            else "; `cifer keygen --name NAME` writes keys/NAME/public.key and private.key"
        )
        return f"{str(p)!r} is a directory, not a key file; {expected}{hint}."
    if p.exists():
        mode = p.stat().st_mode
        kind = (
            "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a named pipe"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        return f"{str(p)!r} is {kind}, not a key file; {expected}."
    return (
        f"key file {str(p)!r} does not exist; {expected}: create a pair with "
        "`cifer keygen --name NAME` or pass the right path."
    )


def load_key(path: str | os.PathLike[str], *, want: str | None = None) -> Key:
    """Load a public or private key file.

    ``want`` (``"private"`` or ``"public"``) only shapes the advice when ``path`` is a key
    pair's directory: the message names the file inside it that the caller needs.

    Raises
    ------
    KeyFileError
        When the file does not exist, is too large, is not a valid cifer key file, or is a
        private key readable by group or others (the message gives the ``chmod 600`` fix).

    """
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(_not_a_key_file(p, want))
    size = p.stat().st_size
    if size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(
            f"key file {str(p)!r} has {size} bytes, more than the {MAX_KEY_FILE_BYTES} a cifer "
            "key file may have; it is not a key file."
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {str(p)!r} cannot be read: {exc}") from exc
    return parse_key(data, str(p), p)


class KeyFileLike(Protocol):
    """What the key-file helpers need of a key (a CKKS/BFV :class:`Key` or a Paillier key)."""

    @property
    def is_private(self) -> bool: ...

    @property
    def short_fingerprint(self) -> str: ...

    def require_private(self, purpose: str) -> None: ...

    def to_bytes(self) -> bytes: ...

    def public(self) -> KeyFileLike: ...


_K = TypeVar("_K", bound=KeyFileLike)


def require_private_file(key: _K, path: str | os.PathLike[str]) -> _K:
    """Return ``key`` (read from ``path``) if private; a public key raises KeyTypeError."""
    if not key.is_private:
        raise KeyTypeError(
            f"{str(path)!r} is a public key (fingerprint {key.short_fingerprint}); decrypting "
            "needs the matching private.key, which stays with the key holder."
        )
    return key


def load_private_key(path: str | os.PathLike[str]) -> Key:
    """Load a private key file; a public key file raises :class:`KeyTypeError`."""
    return require_private_file(load_key(path, want="private"), path)


def load_public_key(path: str | os.PathLike[str], *, holder: str = "the server") -> Key:
    """Load a public key file; a file holding a secret key raises :class:`KeyTypeError`."""
    key = load_key(path, want="public")
    key.require_public(holder)
    return key


def check_key_directory(directory: str | os.PathLike[str]) -> Path:
    """Refuse a key pair directory, or key file in it, that is a symbolic link.

    Called before a (slow) key generation and again by :func:`write_key_pair`.

    Raises
    ------
    OutputPathError
        ``directory``, ``private.key`` or ``public.key`` in it is a symbolic link.

    """
    d = Path(directory)
    for p in (d, d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE):
        if p.is_symlink():
            raise OutputPathError(
                f"{p} is a symbolic link (to {os.readlink(p)!r:.200}); expected a real "
                f"{'directory' if p == d else 'file'} or nothing. cifer never writes key files "
                "through a link (it could point at another user's or another run's files): "
                "remove the link or choose another --dir/--name."
            )
    return d


def write_key_pair(
    key: KeyFileLike, directory: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``private.key`` (mode 0600) and ``public.key`` (mode 0644) into ``directory``.

    Nothing is written through a symbolic link: ``directory`` (``keys/NAME``) and the two
    files must not be links (checked before anything is written, and again by the writer,
    which creates and renames through a descriptor of the directory opened with
    ``O_NOFOLLOW``).

    Raises
    ------
    KeyExistsError
        A ``FileExistsError``: either file exists and ``force`` is false (keys are never
        overwritten silently).
    OutputPathError
        ``directory`` or one of the files is a symbolic link.

    """
    key.require_private("write a key pair")
    d = Path(directory)
    priv, pub = d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE
    check_key_directory(d)
    for p in (priv, pub):
        if os.path.lexists(p) and not force:
            raise KeyExistsError(
                f"{p} already exists; refusing to overwrite a key (pass force=True to replace it)."
            )
    if not os.path.lexists(d):
        d.mkdir(parents=True)
    container.write_file_atomic(priv, key.to_bytes(), mode=0o600, follow_symlinks=False)
    container.write_file_atomic(pub, key.public().to_bytes(), mode=0o644, follow_symlinks=False)
    log.info("wrote key pair %s (fingerprint %s)", d, key.short_fingerprint)
    return priv, pub
