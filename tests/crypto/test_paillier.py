"""Paillier backend: packing, sums of many clients against numpy, key files, hostile input.

Keys here are 1024 bits (``insecure=True``): these tests check arithmetic, packing and
validation, which do not depend on the key size, and a 1024-bit key makes every
encryption ~8x cheaper than the 2048-bit default. The 2048-bit preset is measured by
``cifer bench crypto --preset paillier`` instead.
"""

from __future__ import annotations

import json
import os
import stat
import struct

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.constants import CONTAINER_MAGIC, KIND_PAILLIER_ARRAYS, KIND_PAILLIER_KEY
from cifer_flwr.crypto import container
from cifer_flwr.crypto import paillier as pl
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    KeyTypeError,
    LayoutMismatchError,
    UnsupportedOperationError,
    ValueRangeError,
)

TEST = pl.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")
#: Two headroom bits: a field holds the sum of at most 4 encodings.
TIGHT = pl.PaillierParams("paillier-tight", 1024, 16, 2, 1.0, "tests only (insecure)")


@pytest.fixture(scope="module")
def key() -> pl.PaillierKey:
    return pl.generate_key(TEST, insecure=True)


@pytest.fixture(scope="module")
def other_key() -> pl.PaillierKey:
    return pl.generate_key(TEST, insecure=True)


@pytest.fixture(scope="module")
def tight_key() -> pl.PaillierKey:
    return pl.generate_key(TIGHT, insecure=True)


def _repack(data: bytes, kind: str, edit_header=None, edit_blobs=None) -> bytes:
    """Re-pack a container after edits, recomputing its checksum as an attacker would."""
    header, blobs = container.unpack(data, kind=kind)
    header = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
    if edit_header:
        edit_header(header)
    if edit_blobs:
        blobs = edit_blobs(blobs)
    return container.pack(kind, header, blobs)


# --------------------------------------------------------------------- packing (pure)
def test_presets_fit_their_key_and_headroom():
    for params in (*pl.PRESETS.values(), TEST, TIGHT):
        assert params.slots * params.slot_bits <= params.key_bits - 1
        assert params.max_summands >= 2**params.headroom_bits
        assert params.max_summands * (2**params.value_bits - 1) < 2**params.slot_bits
    assert pl.PRESETS["paillier"].key_bits == 2048
    assert pl.PRESETS["paillier-3072"].security_bits == 128


def test_pack_unpack_are_inverse():
    rng = np.random.default_rng(1)
    ints = rng.integers(0, 2**TEST.slot_bits, 3 * TEST.slots + 5)
    plains = pl.pack(ints, TEST)
    assert len(plains) == 4
    assert all(p.bit_length() <= TEST.slots * TEST.slot_bits for p in plains)
    np.testing.assert_array_equal(pl.unpack(plains, TEST, ints.size), ints)


def test_unpack_refuses_overflow_and_nonzero_padding():
    plains = pl.pack([1, 2, 3], TEST)
    with pytest.raises(CiphertextFormatError, match="padding"):
        pl.unpack(plains, TEST, 2)
    with pytest.raises(CiphertextFormatError, match="bits"):
        pl.unpack([1 << (TEST.slots * TEST.slot_bits)], TEST, 1)


def test_quantize_error_is_half_a_step_and_range_is_enforced():
    v = np.linspace(-4.0, 4.0, 1001)
    back = pl.dequantize(pl.quantize(v, TEST), TEST)
    assert np.abs(back - v).max() <= TEST.step / 2 + 1e-12
    with pytest.raises(ValueRangeError, match="outside the Paillier range"):
        pl.quantize([4.01], TEST)


def test_stochastic_rounding_is_unbiased():
    v = np.full(20_000, 0.123456789)
    q = pl.quantize(v, TEST, rounding="stochastic", rng=np.random.default_rng(0))
    assert abs(pl.dequantize(q, TEST).mean() - v[0]) < TEST.step / 20


# --------------------------------------------------------------------- arithmetic vs numpy
def test_round_trip_restores_names_shapes_dtypes(key):
    arrays = {
        "w": np.linspace(-1, 1, 300).reshape(20, 15).astype(np.float32),
        "b": np.array([0.5, -0.25]),
        "n": np.array([3, -2], dtype=np.int64),
    }
    enc = pl.encrypt(arrays, key)
    assert len(enc.ciphertexts) == TEST.num_chunks(304)
    out = pl.decrypt(enc, key)
    for name, arr in arrays.items():
        assert out[name].shape == arr.shape and out[name].dtype == arr.dtype
        np.testing.assert_allclose(out[name], arr, atol=TEST.step / 2 + 1e-7)


def test_sum_of_k_clients_equals_numpy_within_quantization(key):
    rng = np.random.default_rng(7)
    k = 6
    updates = [{"w": rng.uniform(-1, 1, 250)} for _ in range(k)]
    weights = rng.uniform(0.5, 2.0, k)
    public = key.public()
    uploads = [pl.to_bytes(pl.encrypt(u, key, weight=float(w))) for u, w in zip(updates, weights)]
    total = pl.aggregate([pl.from_bytes(b, public) for b in uploads], public)  # server side
    assert total.count == k and total.weight == pytest.approx(weights.sum())
    got = pl.decrypt(pl.from_bytes(pl.to_bytes(total), key), key, divisor=total.weight)["w"]
    exact = sum(w * u["w"] for u, w in zip(updates, weights)) / weights.sum()
    assert np.abs(got - exact).max() <= k * TEST.step / 2 / weights.sum() + 1e-12


def test_fields_never_carry_at_full_headroom(tight_key):
    # max_summands encodings of the largest value: every field is at its maximum.
    n = TIGHT.max_summands
    vec = np.full(2 * TIGHT.slots, TIGHT.bound)
    vec[::3] = -TIGHT.bound
    total = pl.aggregate([pl.encrypt({"v": vec}, tight_key) for _ in range(n)], tight_key)
    np.testing.assert_allclose(pl.decrypt(total, tight_key)["v"], n * vec, atol=1e-9)


def test_sum_beyond_headroom_is_refused(tight_key):
    enc = pl.encrypt({"v": np.zeros(3)}, tight_key)
    with pytest.raises(UnsupportedOperationError, match="headroom"):
        pl.aggregate([enc] * (TIGHT.max_summands + 1), tight_key)


def test_scalar_product_and_plain_sum(key):
    v = np.array([0.5, -1.0, 2.0])
    enc = pl.encrypt({"v": v}, key)
    np.testing.assert_allclose(pl.decrypt(pl.mul_scalar(enc, 3, key), key)["v"], 3 * v, atol=2e-6)
    half = pl.mul_scalar(enc, 0.375, key)
    assert half.scale_bits > 0
    np.testing.assert_allclose(pl.decrypt(half, key)["v"], 0.375 * v, atol=2e-6)
    mixed = pl.aggregate([half, enc], key)  # scales are aligned
    np.testing.assert_allclose(pl.decrypt(mixed, key)["v"], 1.375 * v, atol=4e-6)
    plus = pl.add_plain(enc, {"v": np.array([1.0, 1.0, -1.0])}, key)
    np.testing.assert_allclose(pl.decrypt(plus, key)["v"], v + np.array([1, 1, -1]), atol=2e-6)
    with pytest.raises(UnsupportedOperationError, match="non-negative"):
        pl.mul_scalar(enc, -2.0, key)
    with pytest.raises(UnsupportedOperationError, match="one scalar"):
        pl.mul_scalar(enc, [1.0, 2.0, 3.0], key)


def test_clip_counts_instead_of_refusing(key):
    with pytest.raises(ValueRangeError):
        pl.encrypt({"v": np.array([9.0, 0.0])}, key)
    enc = pl.encrypt({"v": np.array([9.0, 0.0, -5.0])}, key, clip=True)
    assert enc.meta["clipped"] == 2
    np.testing.assert_allclose(pl.decrypt(enc, key)["v"], [4.0, 0.0, -4.0], atol=1e-6)


def test_public_key_encrypts_but_cannot_decrypt(key):
    enc = pl.encrypt({"v": np.array([1.0])}, key.public())
    np.testing.assert_allclose(pl.decrypt(enc, key)["v"], [1.0], atol=1e-6)
    with pytest.raises(KeyTypeError):
        pl.decrypt(enc, key.public())


# --------------------------------------------------------------------- key files
def test_key_files_round_trip_with_modes(tmp_path, key):
    priv, pub = pl.write_key_pair(key, tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert b"pickle" not in priv.read_bytes() and priv.read_bytes().startswith(CONTAINER_MAGIC)
    loaded = pl.load_private_key(priv)
    assert loaded.fingerprint == key.fingerprint and loaded.n == key.n
    public = pl.load_public_key(pub)
    assert not public.is_private and public.fingerprint == key.fingerprint
    assert pl.key_file_scheme(pub) == "paillier"
    with pytest.raises(KeyTypeError):
        pl.load_private_key(pub)
    with pytest.raises(KeyTypeError):
        pl.load_public_key(priv)
    with pytest.raises(FileExistsError):
        pl.write_key_pair(key, tmp_path / "k")
    os.chmod(priv, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        pl.load_key(priv)


def test_short_keys_need_insecure():
    with pytest.raises(ConfigError, match="2048"):
        pl.generate_key(TEST)


def test_ckks_loader_refuses_a_paillier_key_and_back(tmp_path, key):
    _, pub = pl.write_key_pair(key, tmp_path / "p")
    with pytest.raises(CiferError):
        crypto.keys.load_key(pub)  # the CKKS loader itself
    # the crypto layer's loader dispatches on the container kind (docs/design.md §4.8)
    assert crypto.load_key(pub).fingerprint == key.fingerprint
    ckks = crypto.generate_key("default")
    _, cpub = crypto.write_key_pair(ckks, tmp_path / "c")
    assert pl.key_file_scheme(cpub) == "ckks"
    with pytest.raises(KeyFileError):
        pl.load_key(cpub)


@pytest.mark.parametrize(
    "attack",
    [
        "short_n",
        "even_n",
        "n_bits_header",
        "swap_factor",
        "unknown_field",
        "oversized",
        "truncated",
        "bad_fingerprint",
    ],
)
def test_altered_key_files_are_refused(tmp_path, key, other_key, attack):
    data = key.to_bytes()
    width = TEST.key_bits // 8

    def with_n(n: int):
        def edit_blobs(blobs):
            return [n.to_bytes(width, "big"), *blobs[1:]]

        def edit_header(h):
            h["fingerprint"] = crypto.keys.fingerprint_of(n.to_bytes(width, "big"))

        return _repack(data, KIND_PAILLIER_KEY, edit_header, edit_blobs)

    if attack == "short_n":
        bad = with_n(key.n >> 8)
    elif attack == "even_n":
        bad = with_n(key.n + 1)
    elif attack == "n_bits_header":
        bad = _repack(data, KIND_PAILLIER_KEY, lambda h: h["params"].update(key_bits=2048))
    elif attack == "swap_factor":
        half = TEST.key_bits // 16
        bad = _repack(
            data,
            KIND_PAILLIER_KEY,
            edit_blobs=lambda b: [b[0], other_key._p.to_bytes(half, "big"), b[2]],
        )
    elif attack == "unknown_field":
        bad = _repack(data, KIND_PAILLIER_KEY, lambda h: h.update(g="2"))
    elif attack == "oversized":
        bad = data + b"\0" * pl.MAX_KEY_FILE_BYTES
    elif attack == "truncated":
        bad = data[:-10]
    else:
        bad = _repack(data, KIND_PAILLIER_KEY, lambda h: h.update(fingerprint="0" * 32))
    path = tmp_path / "private.key"
    path.write_bytes(bad)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        pl.load_key(path)


# --------------------------------------------------------------------- hostile ciphertexts
def _upload(key: pl.PaillierKey) -> bytes:
    return pl.to_bytes(pl.encrypt({"v": np.linspace(-1, 1, 2 * TEST.slots)}, key))


def test_wrong_key_is_refused(key, other_key):
    with pytest.raises(KeyMismatchError):
        pl.from_bytes(_upload(other_key), key.public())
    enc = pl.encrypt({"v": np.zeros(2)}, key)
    with pytest.raises(KeyMismatchError):
        pl.aggregate([enc, pl.encrypt({"v": np.zeros(2)}, other_key)], key)


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ("zero", CiphertextFormatError),
        ("too_big", CiphertextFormatError),
        ("multiple_of_n", CiphertextFormatError),
        ("short_blob", LayoutMismatchError),
        ("count", CiphertextFormatError),
        ("scale", CiphertextFormatError),
        ("weight", CiphertextFormatError),
        ("unknown", CiphertextFormatError),
        ("params", LayoutMismatchError),
        ("num_chunks", LayoutMismatchError),
        ("layout", LayoutMismatchError),
    ],
)
def test_altered_ciphertexts_are_refused(key, attack, error):
    data = _upload(key)
    width = TEST.ciphertext_bytes

    def set_ct(value: int):
        return lambda b: [value.to_bytes(width, "big") + b[0][width:]]

    edits = {
        "zero": (None, set_ct(0)),
        "too_big": (None, set_ct(key.n * key.n)),
        "multiple_of_n": (None, set_ct(key.n * 5)),
        "short_blob": (None, lambda b: [b[0][:-1]]),
        "count": (lambda h: h.update(count=TEST.max_summands + 1), None),
        "scale": (lambda h: h.update(scale_bits=-1), None),
        "weight": (lambda h: h.update(weight=float("inf")), None),
        "unknown": (lambda h: h.update(extra=1), None),
        "params": (lambda h: h["params"].update(value_bits=20), None),
        "num_chunks": (lambda h: h.update(num_chunks=99), None),
        "layout": (lambda h: h["layout"].update(shapes=[[10**6]]), None),
    }
    edit_header, edit_blobs = edits[attack]
    with pytest.raises(error):
        pl.from_bytes(_repack(data, KIND_PAILLIER_ARRAYS, edit_header, edit_blobs), key.public())


def test_understated_count_is_detected_on_decryption(key):
    # A server that sums 3 uploads but claims count=1 would shift every value by 2*bound.
    total = pl.aggregate([pl.from_bytes(_upload(key), key) for _ in range(3)], key)
    lie = _repack(pl.to_bytes(total), KIND_PAILLIER_ARRAYS, lambda h: h.update(count=1))
    with pytest.raises(CiphertextFormatError, match="count"):
        pl.decrypt(pl.from_bytes(lie, key), key)


def test_garbage_is_a_cifer_error(key):
    for blob in (b"", b"junk", CONTAINER_MAGIC + struct.pack(">I", 2) + b"{}"):
        with pytest.raises(CiferError):
            pl.from_bytes(blob, key)
    header = json.dumps({"kind": KIND_PAILLIER_ARRAYS}).encode()
    with pytest.raises(CiferError):
        pl.from_bytes(CONTAINER_MAGIC + struct.pack(">I", len(header)) + header, key)


def test_cli_keygen_scheme_paillier(tmp_path):
    """`cifer keygen --scheme paillier` writes loadable 2048-bit key files (0600 private)."""
    from typer.testing import CliRunner

    from cifer_flwr.cli import app

    result = CliRunner().invoke(
        app, ["keygen", "--scheme", "paillier", "--name", "pk", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    priv = pl.load_private_key(tmp_path / "pk" / "private.key")
    assert priv.params.name == "paillier" and priv.n.bit_length() == 2048
    assert priv.fingerprint in result.output
    assert stat.S_IMODE((tmp_path / "pk" / "private.key").stat().st_mode) == 0o600
    shown = CliRunner().invoke(
        app, ["keys", "inspect", str(tmp_path / "pk" / "public.key"), "--json"]
    )
    info = json.loads(shown.output.strip().splitlines()[-1])
    assert info["scheme"] == "paillier" and info["type"] == "public"
    assert info["fingerprint"] == priv.fingerprint and info["key_bits"] == 2048
    bad = CliRunner().invoke(
        app, ["keygen", "--scheme", "rsa", "--name", "x", "--dir", str(tmp_path)]
    )
    assert bad.exit_code != 0 and "ckks or paillier" in bad.output


_JUNK = [None, True, -1, 0, 2**70, 1e308, float("nan"), "x" * 300, [], {}, [[1]], {"a": {"b": 1}}]


def _mutations(data: bytes, kind: str, seed: int, count: int):
    """Hostile variants of a container, each with a valid checksum (as an attacker sends)."""
    rng = np.random.default_rng(seed)
    header, blobs = container.unpack(data, kind=kind)
    base = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
    for _ in range(count):
        h = json.loads(json.dumps(base))
        b = [bytearray(x) for x in blobs]
        op = rng.integers(4)
        if op == 0:  # replace a header field (or a field of a nested object) by junk
            target = h
            k = list(target)[rng.integers(len(target))]
            if isinstance(target[k], dict) and target[k] and rng.integers(2):
                target = target[k]
                k = list(target)[rng.integers(len(target))]
            target[k] = _JUNK[rng.integers(len(_JUNK))]
        elif op == 1:  # flip bytes of a blob
            i = rng.integers(len(b))
            for _ in range(rng.integers(1, 5)):
                if b[i]:
                    b[i][rng.integers(len(b[i]))] ^= int(rng.integers(1, 256))
        elif op == 2:  # cut or extend a blob
            i = rng.integers(len(b))
            b[i] = b[i][: rng.integers(len(b[i]) + 1)] if rng.integers(2) else b[i] + b"\x01" * 7
        else:  # drop or duplicate a blob
            b = b[:-1] if rng.integers(2) else [*b, b[0]]
        yield container.pack(kind, h, [bytes(x) for x in b])


def test_mutated_ciphertexts_and_keys_raise_only_cifer_errors(tmp_path, key):
    """A small fuzz run: every mutation parses or raises a CiferError, nothing else."""
    public = key.public()
    outcomes = {"parsed": 0, "refused": 0}
    for blob in _mutations(_upload(key), KIND_PAILLIER_ARRAYS, seed=11, count=150):
        try:
            enc = pl.from_bytes(blob, public)
            pl.decrypt(enc, key)
            outcomes["parsed"] += 1
        except CiferError:
            outcomes["refused"] += 1
    path = tmp_path / "private.key"
    for blob in _mutations(key.to_bytes(), KIND_PAILLIER_KEY, seed=12, count=60):
        path.write_bytes(blob)
        os.chmod(path, 0o600)
        try:
            pl.load_key(path)
            outcomes["parsed"] += 1
        except CiferError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 150  # almost every mutation is caught by validation


def test_pure_python_fallback_matches_gmpy2(monkeypatch, tmp_path, key):
    """Without gmpy2 the same arithmetic runs on Python integers (and interoperates)."""
    made_with_gmpy2 = pl.to_bytes(pl.encrypt({"v": np.array([0.5, -2.0])}, key))
    monkeypatch.setattr(pl, "_gmpy2", None)
    fresh = pl.load_key_bytes(key.to_bytes())  # no cached gmpy2 numbers
    assert fresh.fingerprint == key.fingerprint
    enc = pl.encrypt({"v": np.array([1.0, 3.0])}, fresh)
    total = pl.aggregate([enc, pl.from_bytes(made_with_gmpy2, fresh)], fresh)
    np.testing.assert_allclose(pl.decrypt(total, fresh)["v"], [1.5, 1.0], atol=1e-6)
    assert all(type(c) is int for c in total.ciphertexts)
