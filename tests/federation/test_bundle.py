"""`cifer federation bundle`: what each host of a federation across machines gets.

The certificate chain is checked with ``cryptography`` (the CA signed the SuperLink
certificate, whose SANs hold the address), secrets are 0600, and the SuperLink bundle holds
no secret key (scanned with the audit used on real deployments). The bundles are run for
real in ``tests/e2e/test_across_hosts.py``.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from cifer_flwr import crypto
from cifer_flwr.cli import app
from cifer_flwr.exceptions import KeyTypeError
from cifer_flwr.tooling.federation.audit import find_secret_key
from cifer_flwr.tooling.federation.bundle import BundleError, bind_host, make_bundles


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return ips | set(ext.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize("address", ["10.0.0.1", "superlink.example.org"])
def test_bundles_hold_what_each_host_needs_and_no_more(tmp_path, key_files, address):
    private, public = key_files
    made = make_bundles(
        tmp_path / "out",
        superlink_address=address,
        nodes=3,
        private_key=private,
        public_key=public,
        port=9100,
    )
    link = made.superlink
    assert made.address == f"{address}:9100"
    assert [n.name for n in made.supernodes] == ["supernode-0", "supernode-1", "supernode-2"]
    assert made.fingerprint == crypto.load_public_key(public).short_fingerprint

    # TLS: the CA signed the SuperLink certificate, valid for the address
    ca = x509.load_pem_x509_certificate((link / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((link / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert address in _san(server)
    for cert in (ca, server):  # a year by default (a local federation's are 30 days)
        valid = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 365 <= valid.days <= 366
    manifest = json.loads((link / "bundle.json").read_text())
    assert manifest["certificate-expires"] == server.not_valid_after_utc.isoformat()
    server_key = serialization.load_pem_private_key((link / "server.key").read_bytes(), None)
    assert server_key.public_key().public_numbers() == server.public_key().public_numbers()

    # the SuperLink host: public material only, beside its TLS key
    hits, scanned = find_secret_key([link], private)
    assert scanned >= 10 and hits == []
    assert find_secret_key([made.supernodes[0]], private)[0]  # the scan is not vacuous
    pub_key = crypto.load_public_key(link / crypto.PUBLIC_KEY_FILE)
    assert pub_key.short_fingerprint == made.fingerprint
    assert not list(link.rglob("auth.key")) and not list(link.rglob(crypto.PRIVATE_KEY_FILE))
    secret_files = {p.name for p in link.rglob("*") if p.is_file() and _mode(p) & 0o077 == 0}
    assert secret_files == {"server.key"}

    registered = sorted((link / "supernodes").iterdir())
    assert [p.name for p in registered] == [f"supernode-{i}.pub" for i in range(3)]
    for i, node in enumerate(made.supernodes):
        # each SuperNode: the CA, its own auth key pair, the CKKS private key, 0600
        assert sorted(p.name for p in node.iterdir()) == sorted(
            ["ca.crt", "auth.key", "auth.key.pub", "private.key", "start.sh", "bundle.json"]
        )
        assert (node / "ca.crt").read_bytes() == (link / "ca.crt").read_bytes()
        assert _mode(node / "auth.key") == 0o600 and _mode(node / "private.key") == 0o600
        assert _mode(node) == 0o700
        assert crypto.load_private_key(node / "private.key").short_fingerprint == made.fingerprint
        auth = serialization.load_ssh_private_key((node / "auth.key").read_bytes(), None)
        assert isinstance(auth, ec.EllipticCurvePrivateKey)
        mine = auth.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        # the SuperLink registers exactly this node's public key under its name
        assert (link / "supernodes" / f"supernode-{i}.pub").read_bytes().startswith(mine)
        others = [m for m in made.supernodes if m != node]
        theirs = [(o / "auth.key").read_bytes() for o in others]
        assert (node / "auth.key").read_bytes() not in theirs
        manifest = json.loads((node / "bundle.json").read_text())
        assert manifest["partition-id"] == i and manifest["num-partitions"] == 3
        assert manifest["superlink"] == made.address
        script = (node / "start.sh").read_text()
        assert f"--superlink {made.address}" in script
        assert f'partition-id={i} num-partitions=3 private-key=\\"$D/private.key\\"' in script
        assert '--auth-supernode-private-key "$D/auth.key"' in script

    script = (link / "start.sh").read_text()
    assert f"--host {bind_host(address)} --port 9100" in script
    assert "--enable-supernode-auth" in script and "--insecure" not in script
    assert '--ssl-keyfile "$D/server.key"' in script


def test_flwr_wrapper_writes_the_connection_wherever_the_bundle_is(tmp_path, key_files):
    private, public = key_files
    made = make_bundles(
        tmp_path / "out",
        superlink_address="10.0.0.1",
        nodes=1,
        private_key=private,
        public_key=public,
    )
    moved = tmp_path / "elsewhere" / "superlink"  # copied to the host: any path
    moved.parent.mkdir()
    made.superlink.rename(moved)
    bin_dir = tmp_path / "bin"  # a stand-in `flwr` that prints what it got
    bin_dir.mkdir()
    fake = bin_dir / "flwr"
    fake.write_text(
        '#!/bin/sh\necho "FLWR_HOME=$FLWR_HOME args=$*"\ncat "$FLWR_HOME/config.toml"\n'
    )
    fake.chmod(0o755)
    res = subprocess.run(
        ["sh", str(moved / "flwr.sh"), "supernode", "ls", "cifer"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"FLWR_HOME={moved}/flwr-home args=supernode ls cifer" in res.stdout
    config = (moved / "flwr-home" / "config.toml").read_text()
    import tomllib

    data = tomllib.loads(config)
    assert data["superlink"]["default"] == "cifer"
    assert data["superlink"]["cifer"] == {
        "address": "10.0.0.1:9092",
        "root-certificates": f"{moved}/ca.crt",
    }


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"superlink_address": "https://10.0.0.1"}, "neither an IP address nor a host name"),
        ({"superlink_address": "10.0.0.1:9092"}, "neither an IP address nor a host name"),
        ({"superlink_address": "0.0.0.0"}, "not an address a SuperNode can connect to"),
        ({"nodes": 0}, "--nodes must be at least 1"),
        ({"port": 70000}, "--port must be between 1 and 65535"),
        ({"valid_days": 0}, "--valid-days must be between 1 and 3650"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, key_files, options, match):
    private, public = key_files
    kwargs = {"superlink_address": "10.0.0.1", "nodes": 2, **options}
    with pytest.raises(BundleError, match=match):
        make_bundles(tmp_path / "out", private_key=private, public_key=public, **kwargs)
    assert not (tmp_path / "out").exists()


def test_keys_must_be_one_pair_and_the_public_one_public(tmp_path, key_files, other_key):
    private, public = key_files
    _, other_public = crypto.write_key_pair(other_key, tmp_path / "other")
    with pytest.raises(BundleError, match="are not one key pair"):
        make_bundles(
            tmp_path / "a",
            superlink_address="10.0.0.1",
            nodes=1,
            private_key=private,
            public_key=other_public,
        )
    with pytest.raises(KeyTypeError, match="never hold a secret key"):  # private as public
        make_bundles(
            tmp_path / "b",
            superlink_address="10.0.0.1",
            nodes=1,
            private_key=private,
            public_key=private,
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_old_bundles_are_never_written_over(tmp_path, key_files):
    private, public = key_files
    out = tmp_path / "out"
    make_bundles(out, superlink_address="10.0.0.1", nodes=1, private_key=private, public_key=public)
    before = (out / "supernode-0" / "auth.key").read_bytes()
    with pytest.raises(BundleError, match="is not empty"):
        make_bundles(
            out, superlink_address="10.0.0.1", nodes=1, private_key=private, public_key=public
        )
    assert (out / "supernode-0" / "auth.key").read_bytes() == before


def test_bind_host():
    assert bind_host("10.0.0.1") == "10.0.0.1"
    assert bind_host("superlink.example.org") == "0.0.0.0"
    assert ipaddress.ip_address(bind_host("::1")).version == 6


def test_cli_makes_the_bundles_and_prints_what_each_host_runs(tmp_path, key_files):
    private, public = key_files
    keys = tmp_path / "keys" / "fed"
    keys.mkdir(parents=True)
    shutil.copy2(private, keys / "private.key")
    shutil.copy2(public, keys / "public.key")
    args = ["federation", "bundle", "--superlink-address", "10.0.0.1", "--nodes", "2"]
    args += ["--keys", "fed", "--keys-dir", str(tmp_path / "keys")]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "bundles for SuperLink 10.0.0.1:9092" in res.output
    assert "./flwr.sh supernode register supernodes/supernode-1.pub cifer" in res.output
    assert (tmp_path / "b" / "supernode-1" / "private.key").read_bytes() == private.read_bytes()
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert again.exit_code != 0 and "is not empty" in again.output
    assert "Traceback" not in again.output
