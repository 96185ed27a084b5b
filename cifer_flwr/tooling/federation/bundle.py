"""Per-host bundles for a federation across machines (``cifer federation bundle``).

One directory per host, made on one (admin) machine and copied to each host::

    OUT/superlink/               for the SuperLink host (also where `flwr run` is called)
        ca.crt server.crt        TLS: the CA and the SuperLink certificate (SANs: the address)
        server.key               its private key (0600)
        supernodes/NAME.pub      the SuperNodes' authentication public keys, to register
        public.key               the run's CKKS public key (run config ``public-key``)
        start.sh                 flower-superlink with TLS and SuperNode authentication
        flwr.sh                  the flwr CLI with this bundle's connection (``cifer``)
        bundle.json              what this bundle holds and for which address
    OUT/supernode-I/             for the host of SuperNode I
        ca.crt                   to verify the SuperLink
        auth.key auth.key.pub    this SuperNode's authentication key pair (0600 / 0644)
        private.key              the run's CKKS private key (0600)
        start.sh                 flower-supernode with its certificate, key and node config
        bundle.json

The SuperLink bundle never holds a CKKS secret key or a SuperNode's authentication private
key; a SuperNode bundle holds only its own authentication private key. The CA's private
key is not kept anywhere (new SuperNodes: make new bundles). Every secret file is 0600 and
every bundle directory 0700. The scripts find their files next to themselves, so a bundle
works wherever it is copied to.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cifer_flwr import crypto
from cifer_flwr.constants import NODE_CONFIG_PRIVATE_KEY
from cifer_flwr.exceptions import CiferError
from cifer_flwr.tooling.federation.certs import make_node_auth_key, make_tls_files

__all__ = [
    "BUNDLE_CONNECTION",
    "DEFAULT_PORT",
    "DEFAULT_VALID_DAYS",
    "BundleError",
    "Bundles",
    "bind_host",
    "make_bundles",
]

#: Port of the SuperLink (Fleet, Control and Runtime API share it in Flower 1.41/1.42).
DEFAULT_PORT = 9092
#: Days the CA and SuperLink certificates of a bundle are valid.
DEFAULT_VALID_DAYS = 365
#: Name of the ``flwr`` connection ``flwr.sh`` writes.
BUNDLE_CONNECTION = "cifer"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class BundleError(CiferError):
    """Bundles cannot be made as asked (address, node count, output directory, keys)."""


@dataclass(frozen=True)
class Bundles:
    """The bundles written by :func:`make_bundles`.

    Attributes
    ----------
    superlink : Path
        The SuperLink host's bundle.
    supernodes : tuple of Path
        One bundle per SuperNode, ``supernode-0`` first.
    address : str
        ``HOST:PORT`` the SuperNodes and the flwr CLI connect to.
    fingerprint : str
        Short fingerprint of the run's key pair (the same on every host).

    """

    superlink: Path
    supernodes: tuple[Path, ...]
    address: str
    fingerprint: str


def _check_host(host: str) -> str:
    """``host`` when it is an IP address or a DNS name; otherwise a :class:`BundleError`."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if _HOSTNAME.match(host) and not host.replace(".", "").isdigit():
            return host
        raise BundleError(
            f"--superlink-address {host!r} is neither an IP address nor a host name; give the "
            "address the SuperNodes reach the SuperLink at, without scheme or port, e.g. "
            "10.0.0.1 or superlink.example.org (the port is --port)."
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise BundleError(
            f"--superlink-address {host} is not an address a SuperNode can connect to; give "
            "the SuperLink host's own address (e.g. 10.0.0.1)."
        )
    return str(ip)


def bind_host(host: str) -> str:
    """Address ``flower-superlink --host`` binds: the IP itself, ``0.0.0.0`` for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "0.0.0.0"  # a host name: listen on all of the host's interfaces


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwrite, never through a link) with ``mode``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _script(path: Path, lines: list[str]) -> None:
    head = ["#!/bin/sh", "set -eu", 'D=$(cd "$(dirname "$0")" && pwd)']
    _write(path, ("\n".join([*head, *lines]) + "\n").encode(), 0o755)


def _manifest(path: Path, data: dict[str, object]) -> None:
    _write(path, (json.dumps(data, indent=2) + "\n").encode(), 0o644)


def _prepare_out(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"--out {out} is not a directory; give a new or empty directory.")
    if out.is_dir() and any(out.iterdir()):
        raise BundleError(
            f"--out {out} is not empty; bundles hold secret keys and are never written over "
            "older ones: give a new directory (or remove the old bundles first)."
        )
    out.mkdir(parents=True, exist_ok=True)


def _load_pair(private_key: Path, public_key: Path) -> str:
    """Check the pair (a private key, a public key without secret, same fingerprint)."""
    priv = crypto.load_private_key(private_key)
    pub = crypto.load_public_key(public_key)
    if priv.short_fingerprint != pub.short_fingerprint:
        raise BundleError(
            f"{private_key} (fingerprint {priv.short_fingerprint}) and {public_key} "
            f"(fingerprint {pub.short_fingerprint}) are not one key pair; give the two files "
            "of one `cifer keygen` directory."
        )
    return priv.short_fingerprint


def _expiry(cert: Path) -> str:
    """``notAfter`` of a PEM certificate, ISO 8601 UTC."""
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.isoformat()


def _superlink_lines(host: str, port: int) -> list[str]:
    args = [
        "flower-superlink",
        "--host",
        bind_host(host),
        "--port",
        str(port),
        "--ssl-ca-certfile",
        '"$D/ca.crt"',
        "--ssl-certfile",
        '"$D/server.crt"',
        "--ssl-keyfile",
        '"$D/server.key"',
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    ]
    return [
        "# the SuperLink: Fleet, Control and Runtime API on one port, TLS, SuperNode auth",
        f'exec {" ".join(args)} "$@"',
    ]


def _flwr_lines(address: str) -> list[str]:
    return [
        f"# the flwr CLI with connection {BUNDLE_CONNECTION!r} ({address}, this bundle's CA),",
        f"# e.g. ./flwr.sh supernode register supernodes/supernode-0.pub {BUNDLE_CONNECTION}",
        'mkdir -p "$D/flwr-home"',
        'cat > "$D/flwr-home/config.toml" <<EOF',
        "[superlink]",
        f'default = "{BUNDLE_CONNECTION}"',
        "",
        f"[superlink.{BUNDLE_CONNECTION}]",
        f'address = "{address}"',
        'root-certificates = "$D/ca.crt"',
        "EOF",
        'FLWR_HOME="$D/flwr-home" exec flwr "$@"',
    ]


def _supernode_lines(address: str, index: int, nodes: int) -> list[str]:
    config = (
        f"partition-id={index} num-partitions={nodes} "
        f'{NODE_CONFIG_PRIVATE_KEY}=\\"$D/private.key\\"'
    )
    args = [
        "flower-supernode",
        "--superlink",
        address,
        "--root-certificates",
        '"$D/ca.crt"',
        "--auth-supernode-private-key",
        '"$D/auth.key"',
        "--node-config",
        f'"{config}"',
    ]
    return [
        f"# SuperNode {index} of {nodes}: TLS to the SuperLink, its own auth key, the CKKS key",
        f'exec {" ".join(args)} "$@"',
    ]


def make_bundles(
    out: str | os.PathLike[str],
    *,
    superlink_address: str,
    nodes: int,
    private_key: str | os.PathLike[str],
    public_key: str | os.PathLike[str],
    port: int = DEFAULT_PORT,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> Bundles:
    """Write one bundle per host: the SuperLink's and one per SuperNode.

    Parameters
    ----------
    out : str or path
        A new or empty directory; ``superlink/`` and ``supernode-I/`` are made in it.
    superlink_address : str
        IP address or DNS name the SuperNodes reach the SuperLink at; the SuperLink
        certificate's SANs (with ``127.0.0.1`` and ``localhost`` for the host itself).
    nodes : int
        Number of SuperNodes (``num-partitions``); SuperNode ``i`` gets ``partition-id=i``.
    private_key, public_key : str or path
        The run's key pair (``cifer keygen``): the private key goes to every SuperNode
        bundle, the public key to the SuperLink bundle.
    port : int
        The SuperLink's port.
    valid_days : int
        Validity of the CA and SuperLink certificates (then: new bundles).

    Returns
    -------
    Bundles
        Where the bundles are, the address and the key pair's fingerprint.

    Raises
    ------
    BundleError
        For a bad address, port or node count, an ``out`` that is not new or empty, or
        key files that are not one pair (nothing is written then).
    KeyFileError
        When a key file cannot be loaded.
    KeyTypeError
        When the public key file holds a secret key (it would reach the SuperLink host).

    """
    host = _check_host(superlink_address.strip())
    if nodes < 1:
        raise BundleError(f"--nodes must be at least 1, got {nodes}.")
    if not 1 <= port <= 65535:
        raise BundleError(f"--port must be between 1 and 65535, got {port}.")
    if not 1 <= valid_days <= 3650:
        raise BundleError(f"--valid-days must be between 1 and 3650, got {valid_days}.")
    fingerprint = _load_pair(Path(private_key), Path(public_key))
    root = Path(out)
    _prepare_out(root)
    address = _address(host, port)

    link = root / "superlink"
    (link / "supernodes").mkdir(mode=0o700, parents=True)
    os.chmod(link, 0o700)
    tls = make_tls_files(link, hosts=(host,), valid_days=valid_days)
    _write(link / crypto.PUBLIC_KEY_FILE, Path(public_key).read_bytes(), 0o644)
    secret = Path(private_key).read_bytes()
    supernodes: list[Path] = []
    for i in range(nodes):
        name = f"supernode-{i}"
        node = root / name
        node.mkdir(mode=0o700)
        _write(node / "ca.crt", tls.ca_cert.read_bytes(), 0o644)
        _, auth_pub = make_node_auth_key(node, "auth.key")
        _write(link / "supernodes" / f"{name}.pub", auth_pub.read_bytes(), 0o644)
        _write(node / crypto.PRIVATE_KEY_FILE, secret, 0o600)
        _script(node / "start.sh", _supernode_lines(address, i, nodes))
        _manifest(
            node / "bundle.json",
            {
                "role": "supernode",
                "name": name,
                "superlink": address,
                "partition-id": i,
                "num-partitions": nodes,
                "key-fingerprint": fingerprint,
                "secret-files": ["auth.key", crypto.PRIVATE_KEY_FILE],
                "start": "./start.sh",
            },
        )
        supernodes.append(node)
    _script(link / "start.sh", _superlink_lines(host, port))
    _script(link / "flwr.sh", _flwr_lines(address))
    _manifest(
        link / "bundle.json",
        {
            "role": "superlink",
            "address": address,
            "listen": _address(bind_host(host), port),
            "supernodes": [f"supernodes/supernode-{i}.pub" for i in range(nodes)],
            "key-fingerprint": fingerprint,
            "certificate-expires": _expiry(tls.server_cert),
            "secret-files": ["server.key"],
            "start": "./start.sh",
            "register": [
                f"./flwr.sh supernode register supernodes/supernode-{i}.pub {BUNDLE_CONNECTION}"
                for i in range(nodes)
            ],
            "run": (
                f"./flwr.sh run APP {BUNDLE_CONNECTION} --run-config "
                f'"public-key=\\"$PWD/{crypto.PUBLIC_KEY_FILE}\\""'
            ),
        },
    )
    return Bundles(link, tuple(supernodes), address, fingerprint)
