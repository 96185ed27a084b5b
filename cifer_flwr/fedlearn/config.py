"""Cifer's JSON client / server config, read as hostile input and validated.

Cifer's documents configure a client with a JSON file such as::

    {"ip_address": "wss://localhost", "port": 8765, "n_round_clients": 2,
     "use_homomorphic": true, "use_secure": true,
     "certfile": "certificate/cert.pem", "keyfile": "certificate/key.pem"}

The same keys mean the same things here, on Flower: ``ip_address``/``port`` is the SuperLink
(Flower's Fleet API, over HTTP on one port, not a WebSocket: a ``ws://``/``wss://``
address is refused with what to write instead), ``use_secure`` is TLS, ``use_homomorphic``
is CKKS through ``ckks_mod`` (it needs ``private_key``, made by ``cifer keygen``), and
``dataset_path`` / ``model_path`` (plus ``model_class`` for a PyTorch state dict) are this
client's own data and model. Unknown keys,
wrong types and impossible combinations raise :class:`~cifer_flwr.exceptions.ConfigError`
naming the key. Relative paths are relative to the JSON file. A path is checked before the
file system sees it (no NUL byte, at most ``PATH_MAX`` bytes and ``NAME_MAX`` per component,
``~user`` only for a user that exists), and JSON is parsed with its own limits (integers of
at most 4 300 digits, bounded nesting) turned into ``ConfigError`` too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifer_flwr.exceptions import ConfigError

__all__ = [
    "CLIENT_KEYS",
    "MAX_CONFIG_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "SERVER_KEYS",
    "ClientConfig",
    "ServerConfig",
    "check_address",
    "read_json_config",
]

#: Largest JSON config accepted.
MAX_CONFIG_BYTES = 64 << 10
#: Longest path (bytes, Linux ``PATH_MAX``) and path component (``NAME_MAX``) a config may name.
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255
_LOOPBACK = ("127.0.0.1", "localhost")

#: Key -> (accepted types, description) of a client config.
CLIENT_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "ip_address": ((str,), "host of the SuperLink, e.g. 127.0.0.1"),
    "port": ((int,), "port of the SuperLink, 1..65535"),
    "n_round_clients": ((int,), "clients per round, >= 1"),
    "use_homomorphic": ((bool,), "CKKS encryption through ckks_mod (true/false)"),
    "use_secure": ((bool,), "TLS to the SuperLink (true/false)"),
    "certfile": ((str, type(None)), "CA certificate (PEM) the SuperLink's certificate chains to"),
    "keyfile": ((str, type(None)), "the server's TLS key (unused by a client)"),
    "dataset_path": ((str,), "this client's dataset file (.npz/.npy/.csv/.tfrecord)"),
    "model_path": ((str,), "the model file (.h5/.keras, .pt, .npz)"),
    "model_class": ((str,), "package.module:Class of a PyTorch state dict's module"),
    "private_key": ((str,), "the CKKS private key (keys/NAME/private.key, cifer keygen)"),
}
#: Key -> (accepted types, description) of a server config.
SERVER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "ip_address": ((str,), "address the SuperLink listens on (127.0.0.1 / localhost)"),
    "port": ((int,), "port of the SuperLink, 1..65535"),
    "n_round_clients": ((int,), "clients per round, >= 1"),
    "num_rounds": ((int,), "number of rounds, >= 1"),
    "use_secure": ((bool,), "TLS (true/false)"),
    "certfile": ((str, type(None)), "the SuperLink's TLS certificate (PEM)"),
    "keyfile": ((str, type(None)), "the SuperLink's TLS private key (PEM)"),
    "ca_certfile": ((str, type(None)), "CA certificate (PEM; default: certfile)"),
    "public_key": ((str, type(None)), "the CKKS public key (keys/NAME/public.key)"),
}


def _checked_path(value: str | os.PathLike[str], key: str, what: str) -> Path:
    """``value`` as a ``Path`` with ``~`` expanded, refused before the file system sees it.

    Raises
    ------
    ConfigError
        For a NUL byte, text that is not a file name (lone surrogates), more than
        :data:`MAX_PATH_BYTES` bytes or a component over :data:`MAX_NAME_BYTES`, or
        ``~user`` for a user that does not exist.

    """
    text = os.fspath(value)
    shown = f"{what}: {key} {text!r:.80}"
    if "\0" in text:
        raise ConfigError(f"{shown} holds a NUL byte; expected a file path (no NUL bytes).")
    try:
        raw = os.fsencode(text)
    except UnicodeError:
        raise ConfigError(
            f"{shown} is not a valid file name (unpaired surrogates); expected a file path."
        ) from None
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if len(raw) > MAX_PATH_BYTES or longest > MAX_NAME_BYTES:
        raise ConfigError(
            f"{shown} is {len(raw)} bytes with a {longest}-byte component; expected at most "
            f"{MAX_PATH_BYTES} bytes and {MAX_NAME_BYTES} per component. Give the real path."
        )
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser
        raise ConfigError(
            f"{shown} starts with ~USER for a user that does not exist; expected an existing "
            "home (~/ or ~name/), an absolute path, or a path relative to the config file."
        ) from None


def _is_file(p: Path, key: str, what: str) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError) as exc:  # e.g. ENAMETOOLONG after joining with the base
        raise ConfigError(
            f"{what}: {key} {str(p)!r:.80} cannot be checked ({type(exc).__name__}: "
            f"{exc!s:.80}); expected the path of an existing file."
        ) from None


def read_json_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object from ``path`` (at most :data:`MAX_CONFIG_BYTES`).

    Raises
    ------
    ConfigError
        For a missing, oversized or non-JSON file (including integers of more than 4 300
        digits and nesting deeper than Python's parser goes), or JSON that is not an object.

    """
    p = _checked_path(path, "config file", "config")
    if not _is_file(p, "config file", "config"):
        raise ConfigError(f"config file {str(p)!r:.200} does not exist.")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {str(p)!r} is {size} bytes; a config holds at most "
            f"{MAX_CONFIG_BYTES} bytes."
        )
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError too
        raise ConfigError(
            f"config file {str(p)!r:.200} is not JSON a config can hold ({type(exc).__name__}: "
            f"{exc!s:.120}); expected one flat JSON object of the documented keys."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} holds a {type(data).__name__}; expected a JSON object "
            '{"ip_address": ..., "port": ...}.'
        )
    return data


def _file_data(
    path: str | os.PathLike[str], overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], Path, str]:
    """A config file's keys with ``overrides`` on top, its directory and its name."""
    p = _checked_path(path, "config file", "config")
    try:
        p = p.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigError(
            f"config file {str(p)!r:.200} cannot be resolved ({exc!s:.80}); expected the path "
            "of an existing file."
        ) from None
    return {**read_json_config(p), **(overrides or {})}, p.parent, str(p)


def _checked(
    data: Mapping[str, Any], schema: Mapping[str, tuple[tuple[type, ...], str]], what: str
) -> dict[str, Any]:
    unknown = sorted(str(k) for k in data if k not in schema)
    if unknown:
        # the other party's format? (Cifer's client and server JSON differ, issue 22)
        mine, other = (
            ("server", "client")
            if schema is SERVER_KEYS
            else ("client", "server")
            if schema is CLIENT_KEYS
            else ("", "")
        )
        other_keys = CLIENT_KEYS if other == "client" else SERVER_KEYS
        if other and all(k in other_keys for k in unknown):
            raise ConfigError(
                f"{what}: {', '.join(unknown)} are {other} config keys; expected a {mine} "
                f"config: the client and the server read different JSON formats (a client "
                "config names its own data, model and private key; the server config its "
                f"port, rounds and public key). Give the {mine} its own file with the keys "
                f"{', '.join(schema)}."
            )
        raise ConfigError(
            f"{what}: unknown key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; the keys are {', '.join(schema)}."
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        types, desc = schema[key]
        # bool is an int in Python: "port": true is refused like "port": "80"
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(
                f"{what}: key {key!r} is {json.dumps(value)[:60]} ({type(value).__name__}); "
                f"expected {names}: {desc}."
            )
        out[key] = value
    return out


def check_address(ip_address: str, port: int, what: str) -> str:
    """``HOST:PORT`` of a SuperLink, refusing what Flower cannot connect to.

    Raises
    ------
    ConfigError
        For a ``ws://`` / ``wss://`` (or any scheme) address, an empty host or a port
        outside 1..65535.

    """
    host = ip_address.strip()
    if "://" in host:
        scheme = host.split("://", 1)[0].lower()
        bare = host.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0] or "127.0.0.1"
        secure = ' and "use_secure": true' if scheme in ("wss", "https", "grpcs") else ""
        raise ConfigError(
            f"{what}: ip_address {ip_address!r} uses the {scheme}:// scheme; Cifer's WebSocket "
            "server is a Flower SuperLink here (its Fleet API over HTTP). Give the bare host, "
            f'"ip_address": "{bare}"{secure}, and the SuperLink\'s port in "port".'
        )
    if not host or any(c in host for c in " /?#@"):
        raise ConfigError(f"{what}: ip_address {ip_address!r} is not a host name or IP address.")
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is outside 1..65535.")
    return f"{host}:{port}"


def _path(value: str | None, base: Path, key: str, what: str) -> Path | None:
    if value is None or value == "":
        return None
    p = _checked_path(value, repr(key), what)
    try:
        return (p if p.is_absolute() else base / p).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a path too long with the base
        raise ConfigError(
            f"{what}: {key!r} = {value!r:.80} cannot be resolved ({exc!s:.80}); expected the "
            "path of an existing file."
        ) from None


def _require_file(path: Path | None, key: str, what: str, hint: str) -> Path:
    if path is None:
        raise ConfigError(f"{what}: {key!r} is missing; {hint}.")
    if not _is_file(path, repr(key), what):
        raise ConfigError(f"{what}: {key!r} = {str(path)!r} does not exist; {hint}.")
    return path


@dataclass(frozen=True)
class ClientConfig:
    """A validated client config (paths absolute).

    Attributes
    ----------
    address : str
        ``HOST:PORT`` of the SuperLink.
    n_round_clients : int
        Clients per round (used as ``num-partitions`` in node config).
    use_homomorphic, use_secure : bool
        CKKS on the client side; TLS to the SuperLink.
    certfile : Path or None
        CA certificate the SuperNode verifies the SuperLink with (``use_secure``).
    dataset_path, model_path : Path
        This client's data and model.
    model_class : str
        ``package.module:Class`` for a PyTorch state dict ("" otherwise).
    private_key : Path or None
        CKKS private key (``use_homomorphic``).

    """

    address: str
    n_round_clients: int
    use_homomorphic: bool
    use_secure: bool
    certfile: Path | None
    dataset_path: Path
    model_path: Path
    model_class: str
    private_key: Path | None

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: str | os.PathLike[str] = ".", what: str = "client"
    ) -> ClientConfig:
        """Validate Cifer's client keys (see :data:`CLIENT_KEYS`).

        Raises
        ------
        ConfigError
            Naming the key: unknown, wrong type, missing, impossible combination.

        """
        d = _checked(data, CLIENT_KEYS, what)
        root = Path(base)
        address = check_address(
            str(d.get("ip_address", "127.0.0.1")), int(d.get("port", 9092)), what
        )
        n = int(d.get("n_round_clients", 2))
        if n < 1:
            raise ConfigError(f"{what}: n_round_clients must be >= 1, got {n}.")
        secure = bool(d.get("use_secure", False))
        homomorphic = bool(d.get("use_homomorphic", True))
        certfile = _path(d.get("certfile"), root, "certfile", what)
        if secure:
            certfile = _require_file(
                certfile,
                "certfile",
                what,
                "use_secure needs the CA certificate (PEM) that signed the SuperLink's "
                'certificate in "certfile", or set "use_secure": false on a trusted network',
            )
        key = _path(d.get("private_key"), root, "private_key", what)
        if homomorphic:
            key = _require_file(
                key,
                "private_key",
                what,
                "use_homomorphic needs the CKKS private key: run `cifer keygen --name NAME` "
                'and set "private_key": "keys/NAME/private.key" (or "use_homomorphic": false)',
            )
        dataset = _require_file(
            _path(d.get("dataset_path"), root, "dataset_path", what),
            "dataset_path",
            what,
            "give this client's dataset file (.npz, .npy, .csv or .tfrecord)",
        )
        model = _require_file(
            _path(d.get("model_path"), root, "model_path", what),
            "model_path",
            what,
            "give the model file (.h5/.keras, .pt with model_class, or .npz)",
        )
        return cls(
            address=address,
            n_round_clients=n,
            use_homomorphic=homomorphic,
            use_secure=secure,
            certfile=certfile if secure else None,
            dataset_path=dataset,
            model_path=model,
            model_class=str(d.get("model_class", "")),
            private_key=key if homomorphic else None,
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
    ) -> ClientConfig:
        """Read and validate a JSON client config (relative paths: next to the file).

        ``overrides`` replace the file's values of the same keys.
        """
        data, base, what = _file_data(path, overrides)
        return cls.from_mapping(data, base=base, what=what)


@dataclass(frozen=True)
class ServerConfig:
    """A validated server config (paths absolute); see :data:`SERVER_KEYS`."""

    host: str
    port: int
    n_round_clients: int
    num_rounds: int
    use_secure: bool
    certfile: Path | None
    keyfile: Path | None
    ca_certfile: Path | None
    public_key: Path | None

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: str | os.PathLike[str] = ".", what: str = "server"
    ) -> ServerConfig:
        """Validate the server keys.

        Raises
        ------
        ConfigError
            Naming the key: unknown, wrong type, a non-loopback or ``ws://`` address,
            ``use_secure`` without ``certfile`` and ``keyfile``.

        """
        d = _checked(data, SERVER_KEYS, what)
        root = Path(base)
        host = str(d.get("ip_address", "127.0.0.1"))
        port = int(d.get("port", 9092))
        check_address(host, port, what)
        if host not in _LOOPBACK:
            raise ConfigError(
                f"{what}: ip_address {host!r}: fedlearn.Server starts its SuperLink on this "
                'machine\'s loopback; use "127.0.0.1" (for clients on other machines start '
                "`flower-superlink` yourself and submit the app with `flwr run`)."
            )
        n = int(d.get("n_round_clients", 2))
        rounds = int(d.get("num_rounds", 3))
        if n < 1 or rounds < 1:
            raise ConfigError(
                f"{what}: n_round_clients ({n}) and num_rounds ({rounds}) must be >= 1."
            )
        secure = bool(d.get("use_secure", False))
        cert = _path(d.get("certfile"), root, "certfile", what)
        key = _path(d.get("keyfile"), root, "keyfile", what)
        ca = _path(d.get("ca_certfile"), root, "ca_certfile", what)
        if secure:
            hint = (
                'use_secure needs the SuperLink\'s certificate and key in "certfile" and '
                '"keyfile" (PEM; make a CA and certificate with openssl), or "use_secure": '
                "false on a trusted network"
            )
            cert = _require_file(cert, "certfile", what, hint)
            key = _require_file(key, "keyfile", what, hint)
            ca = _require_file(ca or cert, "ca_certfile", what, hint)
        return cls(
            host="127.0.0.1",
            port=port,
            n_round_clients=n,
            num_rounds=rounds,
            use_secure=secure,
            certfile=cert if secure else None,
            keyfile=key if secure else None,
            ca_certfile=ca if secure else None,
            public_key=_path(d.get("public_key"), root, "public_key", what),
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
    ) -> ServerConfig:
        """Read and validate a JSON server config (relative paths: next to the file).

        ``overrides`` replace the file's values of the same keys.
        """
        data, base, what = _file_data(path, overrides)
        return cls.from_mapping(data, base=base, what=what)
