"""TLS certificates and SuperNode authentication keys for a local federation.

Everything is made with ``cryptography``: a self-signed CA, a server certificate for the
SuperLink (SANs ``127.0.0.1`` and ``localhost``) signed by it, and one P-384 key pair per
SuperNode in OpenSSH format (what ``flwr supernode register`` and
``flower-supernode --auth-supernode-private-key`` read). Private keys are written 0600.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "make_node_auth_key", "make_tls_files"]

_VALID_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the TLS material of a local federation.

    Attributes
    ----------
    ca_cert : Path
        The CA certificate (``--ssl-ca-certfile``, ``--root-certificates``, ``root-certificates``).
    server_cert, server_key : Path
        The SuperLink's certificate and private key (``--ssl-certfile``, ``--ssl-keyfile``).

    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_tls_files(
    directory: str | os.PathLike[str], hosts: tuple[str, ...] = (), *, valid_days: int = _VALID_DAYS
) -> TlsFiles:
    """Create a CA and a SuperLink server certificate in ``directory``.

    Parameters
    ----------
    directory : str or path
        Where ``ca.crt``, ``server.crt`` and ``server.key`` (0600) are written.
    hosts : tuple of str
        Extra DNS names or IP addresses for the server certificate; ``127.0.0.1`` and
        ``localhost`` are always included.
    valid_days : int
        Validity of the CA and the server certificate, in days.

    Returns
    -------
    TlsFiles
        The paths written.

    """
    d = Path(directory)
    now = _dt.datetime.now(_dt.UTC)
    not_before, not_after = now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cifer local federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in ("127.0.0.1", "localhost", *hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key")
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_key, _pem_key(server_key), 0o600)
    return files


def make_node_auth_key(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Create a SuperNode authentication key pair (NIST P-384, OpenSSH format).

    Parameters
    ----------
    directory : str or path
        Where ``NAME`` (private, 0600) and ``NAME.pub`` are written.
    name : str
        File name stem, e.g. ``node-0``.

    Returns
    -------
    tuple of Path
        ``(private key path, public key path)``.

    """
    d = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    priv_path, pub_path = d / name, d / f"{name}.pub"
    _write(priv_path, private, 0o600)
    _write(pub_path, public + f" {name}\n".encode(), 0o644)
    return priv_path, pub_path
