"""The HomoCryption API against numpy, for both schemes; hostile bytes and keys refused.

Paillier keys are 1024 bits (``insecure=True``): these tests check the API's arithmetic and
validation, which do not depend on the key size, and 1024-bit keys keep them fast. CKKS
uses the smallest 128-bit-secure parameters with the depth each test needs.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from cifer_flwr import homocryption as hc
from cifer_flwr.crypto import container
from cifer_flwr.crypto.paillier import PaillierParams
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    KeyTypeError,
    LayoutMismatchError,
    UnsupportedOperationError,
)

SMALL_PAILLIER = PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def ckks(keydir) -> hc.Keys:
    return hc.generate_named_keys("ckks-a", "ckks", directory=keydir, depth=2)


@pytest.fixture(scope="module")
def pai(keydir) -> hc.Keys:
    return hc.generate_named_keys(
        "pai-a", "paillier", directory=keydir, preset=SMALL_PAILLIER, insecure=True
    )


@pytest.fixture(params=["ckks", "paillier"])
def keys(request, ckks, pai) -> hc.Keys:
    return ckks if request.param == "ckks" else pai


def _tol(keys: hc.Keys, terms: int = 1) -> float:
    return 1e-4 if keys.scheme == "ckks" else terms * SMALL_PAILLIER.step / 2 + 1e-12


def test_generated_keys_load_by_name_with_0600(keys, keydir):
    folder = keydir / keys.name
    assert stat.S_IMODE((folder / "private.key").stat().st_mode) == 0o600
    loaded = hc.load_keys(keys.name, directory=keydir)
    assert loaded.scheme == keys.scheme and loaded.is_private
    assert loaded.fingerprint == keys.fingerprint
    public = hc.load_keys(keys.name, directory=keydir, private=False)
    assert not public.is_private and public.fingerprint == keys.fingerprint
    x = np.array([0.25, -1.5, 3.0])
    np.testing.assert_allclose(hc.decrypt(loaded, hc.encrypt(public, x)), x, atol=_tol(keys))
    with pytest.raises(KeyTypeError):
        hc.decrypt(public, hc.encrypt(keys, x))


def test_sum_of_k_clients_matches_numpy(keys):
    rng = np.random.default_rng(3)
    k, n = 5, 300
    clients = [rng.uniform(-0.8, 0.8, n) for _ in range(k)]
    server = keys.public()
    # each client serializes; the server deserializes with the public key and adds
    cts = [hc.deserialize(hc.serialize(hc.encrypt(keys, c)), server) for c in clients]
    total = cts[0]
    for ct in cts[1:]:
        total = hc.add(total, ct)
    np.testing.assert_allclose(hc.decrypt(keys, total), np.sum(clients, axis=0), atol=_tol(keys, k))


def test_plain_add_and_scalar_mul_match_numpy(keys):
    x = np.array([0.5, -0.25, 1.0, 0.0])
    ct = hc.encrypt(keys, x)
    np.testing.assert_allclose(hc.decrypt(keys, hc.add(ct, 1.5)), x + 1.5, atol=_tol(keys))
    shift = np.array([1.0, 2.0, -1.0, 0.5])
    np.testing.assert_allclose(hc.decrypt(keys, hc.add(ct, shift)), x + shift, atol=_tol(keys, 2))
    np.testing.assert_allclose(hc.decrypt(keys, hc.mul(ct, 3)), 3 * x, atol=_tol(keys, 3))
    np.testing.assert_allclose(hc.decrypt(keys, hc.mul(ct, 0.75)), 0.75 * x, atol=_tol(keys, 1))


def test_ckks_elementwise_products_and_relinearize(ckks):
    a, b = np.linspace(-1, 1, 3000), np.linspace(2, 0.5, 3000)
    ca, cb = hc.encrypt(ckks, a), hc.encrypt(ckks, b)
    np.testing.assert_allclose(hc.decrypt(ckks, hc.mul(ca, b)), a * b, atol=1e-4)
    raw = hc.mul(ca, cb)
    with pytest.raises(UnsupportedOperationError, match="relinearize"):
        hc.serialize(raw)
    prod = hc.relinearize(raw)
    back = hc.deserialize(hc.serialize(prod), ckks.public())
    np.testing.assert_allclose(hc.decrypt(ckks, back), a * b, atol=1e-4)
    # a second product (depth 2) from the deserialized one
    sq = hc.relinearize(hc.mul(back, ca))
    np.testing.assert_allclose(hc.decrypt(ckks, sq), a * b * a, atol=1e-3)
    with pytest.raises(UnsupportedOperationError, match="depth"):
        hc.mul(sq, ca)


def test_paillier_refuses_what_it_cannot_do(pai):
    ct = hc.encrypt(pai, [1.0, 2.0])
    with pytest.raises(UnsupportedOperationError, match="additively"):
        hc.mul(ct, ct)
    with pytest.raises(UnsupportedOperationError):
        hc.mul(ct, [1.0, 2.0])
    with pytest.raises(UnsupportedOperationError):
        hc.mul(ct, -1.0)
    assert hc.relinearize(ct) is ct


def test_wrong_keys_are_refused(keys, keydir):
    other = hc.generate_named_keys(
        f"other-{keys.scheme}",
        keys.scheme,
        directory=keydir,
        preset=SMALL_PAILLIER if keys.scheme == "paillier" else None,
        depth=1,
        insecure=True,
    )
    ct = hc.encrypt(other, [1.0])
    with pytest.raises(KeyMismatchError):
        hc.decrypt(keys, ct)
    with pytest.raises(KeyMismatchError):
        hc.add(hc.encrypt(keys, [1.0]), ct)
    with pytest.raises(KeyMismatchError):
        hc.deserialize(hc.serialize(ct), keys.public())


def test_tampered_and_foreign_bytes_are_refused(keys, ckks, pai):
    data = hc.serialize(hc.encrypt(keys, np.arange(10) / 10))
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    with pytest.raises(CiphertextFormatError):
        hc.deserialize(bytes(flipped), keys)
    with pytest.raises(CiphertextFormatError):
        hc.deserialize(data[:-100], keys)
    foreign = pai if keys.scheme == "ckks" else ckks
    with pytest.raises(CiphertextFormatError, match="kind"):
        hc.deserialize(hc.serialize(hc.encrypt(foreign, [1.0])), keys)
    # an attacker who recomputes the checksum and claims a huge vector
    header, blobs = container.unpack(data)
    header = {k: v for k, v in header.items() if k not in ("blobs_sha256",)}
    kind = header.pop("kind")
    if keys.scheme == "ckks":
        header["length"] = 1 << 40
    else:
        header["layout"]["shapes"] = [[1 << 30]]
    with pytest.raises((CiphertextFormatError, LayoutMismatchError)):
        hc.deserialize(container.pack(kind, header, blobs), keys)


def test_lengths_must_match(keys):
    with pytest.raises(CiferError):
        hc.add(hc.encrypt(keys, [1.0, 2.0]), hc.encrypt(keys, [1.0]))
    with pytest.raises(CiferError):
        hc.add(hc.encrypt(keys, [1.0, 2.0]), [1.0, 2.0, 3.0])


def test_key_files_with_loose_permissions_and_bad_names(pai, keydir):
    path = keydir / pai.name / "private.key"
    os.chmod(path, 0o640)
    try:
        with pytest.raises(KeyFileError, match="chmod 600"):
            hc.load_keys(pai.name, directory=keydir)
    finally:
        os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        hc.load_keys("../etc", directory=keydir)
    with pytest.raises(ConfigError):
        hc.generate_named_keys("x", "rsa", directory=keydir)  # type: ignore[arg-type]
    with pytest.raises(KeyFileError):
        hc.load_keys("missing", directory=keydir)


def test_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    """The README's HomoCryption example runs as written (2048-bit Paillier: ~1 s)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## HomoCryption API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out == ["[3.5 0.5 6.5]", "[2.  2.  1.5 1. ]"]
    assert oct((tmp_path / "keys/notebook/private.key").stat().st_mode & 0o777) == "0o600"


def test_every_scheme_loads_through_the_one_loader_and_packed_is_refused(ckks, pai, keydir):
    """load_keys reads keys as `cifer keys inspect` does; the label always matches the key."""
    from cifer_flwr import crypto

    for keys in (ckks, pai):
        for private in (True, False):
            loaded = hc.load_keys(keys.name, directory=keydir, private=private)
            assert loaded.scheme == keys.scheme and loaded.is_private is private
            assert type(loaded.key) is type(crypto.load_key(keydir / keys.name / "public.key"))
    crypto.write_key_pair(crypto.generate_key("packed"), keydir / "packed-a")
    for private in (True, False):
        with pytest.raises(UnsupportedOperationError, match=r"'packed' key .*CKKS or Paillier"):
            hc.load_keys("packed-a", directory=keydir, private=private)
    with pytest.raises(KeyTypeError, match="labelled scheme 'ckks' hold a paillier key"):
        hc.Keys("ckks", pai.key)
    with pytest.raises(KeyTypeError, match="labelled scheme 'paillier' hold a ckks key"):
        hc.Keys("paillier", ckks.key)
