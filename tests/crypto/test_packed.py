"""The ``packed`` preset (BFV, quantized, exact sums) and seeded uploads (issue 10).

Oracles: numpy integer sums of the quantized values, the statistics of stochastic rounding,
and the byte counts against fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifer_flwr import crypto, protocol
from cifer_flwr.crypto import container
from cifer_flwr.crypto.ckks import dequantize, quantize
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    UnsupportedOperationError,
)


@pytest.fixture(scope="module")
def packed() -> crypto.Key:
    return crypto.generate_key("packed")


def fp32_ratio(blobs: list[bytes], values: int) -> float:
    return sum(len(b) for b in blobs) / (4.0 * values)


def test_packed_preset_is_bfv_with_batching_and_secure():
    p = crypto.get_preset("packed")
    assert p.is_bfv and p.slots == p.poly_modulus_degree == 4096
    assert p.plain_modulus % (2 * p.poly_modulus_degree) == 1
    assert p.security_bits >= 128
    assert crypto.CkksParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    # CKKS presets keep their old dict form (key files and headers unchanged)
    assert "scheme" not in crypto.get_preset("default").to_dict()
    with pytest.raises(ConfigError, match="batching prime"):
        crypto.CkksParams("x", 4096, (54, 55), 21, scheme="bfv", plain_modulus=(1 << 30) + 1)


def test_upload_and_download_sizes_per_preset(key, packed):
    values = 3 * 4096
    x = {"w": np.random.default_rng(0).normal(0, 0.1, values).astype(np.float32)}
    for k, upload_max, download_max in ((key, 3.8, 7.3), (packed, 2.0, 4.0)):
        up = crypto.encrypt(x, k, weight=0.5, summands=10)
        assert up.wire is not None  # a key holder's encryption travels seeded
        assert fp32_ratio(up.serialized_chunks(), values) <= upload_max
        parsed = crypto.from_bytes(crypto.to_bytes(up), k.public())
        total = crypto.aggregate([parsed, parsed])
        assert total.wire is None  # the server cannot seed: sums travel in full
        assert fp32_ratio(total.serialized_chunks(), values) <= download_max


def test_seeded_upload_decrypts_like_a_full_one(key):
    x = {"a": np.linspace(-3, 3, 5000), "b": np.arange(7, dtype=np.float32)}
    seeded = crypto.encrypt(x, key, weight=0.25)
    full = crypto.encrypt(x, key.public(), weight=0.25)
    for enc in (seeded, full):
        back = crypto.from_bytes(crypto.to_bytes(enc), key.public())
        out = crypto.decrypt(crypto.aggregate([back, back]), key, divisor=0.5)
        for name in x:
            np.testing.assert_allclose(out[name], x[name], atol=1e-6)


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    p = crypto.get_preset("packed")
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.3 * p.precision) + np.linspace(-1, 1, 200_000)
    q, clipped = quantize(x, p, p.summand_bound(1), rng)
    err = dequantize(q, p) - x
    assert clipped == 0 and np.abs(err).max() < p.precision
    # E[err] = 0: the mean of 200 000 errors (each uniform-like, std <= step/2) is within 5 sigma
    assert abs(err.mean()) < 5 * 0.5 * p.precision / np.sqrt(x.size)
    # a round-to-nearest quantizer would be biased by 0.3 step on the constant offset
    q0, _ = quantize(np.full(100_000, 0.3 * p.precision), p, 10, rng)
    assert abs(q0.mean() - 0.3) < 0.01


def test_thousand_summands_at_the_bound_sum_exactly_without_wrapping(packed):
    """The worst case the headroom is for: 1000 clients, every value at its share's edge.

    Values on the quantization grid are encoded exactly (floor(k + u) = k), so the decrypted
    sum must equal numpy's integer sum exactly.
    """
    p = packed.params
    cohort = p.max_summands
    bound = p.summand_bound(cohort)
    rng = np.random.default_rng(2)
    ints = rng.integers(-bound, bound + 1, (cohort, 64))
    ints[:, 0], ints[:, 1] = bound, -bound
    encs = []
    for row in ints:
        enc = crypto.encrypt({"w": row * p.precision}, packed, summands=cohort)
        assert enc.clipped == 0
        encs.append(enc)
    total = crypto.decrypt_chunks(crypto.aggregate(encs), packed)[0][:64]
    np.testing.assert_array_equal(np.rint(total / p.precision).astype(np.int64), ints.sum(axis=0))
    assert total[0] == cohort * bound * p.precision < p.max_abs


def test_values_beyond_the_share_are_clipped_and_counted_never_wrapped(packed):
    p = packed.params
    edge = p.summand_bound(4) * p.precision
    x = np.array([0.0, 1.0, 3 * edge, -5 * edge, edge * 0.999])
    encs = [crypto.encrypt({"w": x}, packed, summands=4) for _ in range(4)]
    assert [e.clipped for e in encs] == [2, 2, 2, 2]
    out = crypto.decrypt(crypto.aggregate(encs), packed, divisor=4)["w"]
    np.testing.assert_allclose(out, [0.0, 1.0, edge, -edge, 0.999 * edge], atol=p.precision)


def test_client_mod_reports_clipped_values(packed):
    """The key holder's count reaches the reply's metrics (docs/design.md §4.7)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from cifer_flwr.constants import CFG_COHORT, CFG_WEIGHT_DIVISOR, METRIC_CLIPPED
    from cifer_flwr.mods import _encrypt_reply
    from tests.strategies import harness  # noqa: F401 - sets Flower's task identity

    edge = packed.params.summand_bound(100) * packed.params.precision
    y = np.array([0.1, 10 * edge, -10 * edge], np.float32)
    reply = Message(
        RecordDict(
            {
                "arrays": ArrayRecord([y]),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        ),
        dst_node_id=1,
        message_type="train",
    )
    config = {CFG_COHORT: 100, CFG_WEIGHT_DIVISOR: 1.0}
    _encrypt_reply(reply, packed, config, {}, {}, ConfigRecord())
    assert reply.content.metric_records["metrics"][METRIC_CLIPPED] == 2.0
    with pytest.raises(Exception, match="sums at most 1000"):
        _encrypt_reply(reply, packed, {CFG_COHORT: 5000}, {}, {}, ConfigRecord())


def test_state_weight_uses_the_whole_range_exactly(packed):
    p = packed.params
    state = {"x": np.array([0.7, -0.2]), "v": np.array([3e-9, 1e-4])}
    w = protocol.exact_weight(state, p)
    assert p.max_abs / 2 < 0.7 * w <= p.max_abs and np.log2(w) == int(np.log2(w))
    assert protocol.exact_weight(state, crypto.get_preset("default")) == 1.0
    enc = crypto.encrypt(state, packed, weight=w)
    assert protocol.part_weight_ok(enc)
    out = crypto.decrypt(enc, packed, divisor=enc.weight)
    assert np.abs(out["v"] - state["v"]).max() < p.precision / w
    assert not protocol.part_weight_ok(crypto.encrypt(state, packed, weight=3.0))


def test_bfv_ciphertexts_are_validated_before_seal(packed, key):
    x = {"w": np.ones(10)}
    up = crypto.encrypt(x, packed)
    blob = up.serialized_chunks()[0]
    pub = packed.public()
    assert crypto.load_vector(blob, pub).size() == 4096
    # a CKKS vector (scale field) under a BFV key, and the reverse, never reach TenSEAL
    ckks_blob = crypto.encrypt(x, key).serialized_chunks()[0]
    with pytest.raises(CiphertextFormatError, match=r"unexpected protobuf field 3"):
        crypto.load_vector(ckks_blob, pub)
    with pytest.raises(CiphertextFormatError, match=r"declared size 4096, expected 1\.\.2048"):
        crypto.load_vector(blob, key.public())
    with pytest.raises(KeyMismatchError):
        crypto.from_bytes(crypto.to_bytes(up), key.public())
    # truncated / bit-flipped seeded bodies are refused with a format error
    for bad in (blob[:-100], blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:]):
        with pytest.raises(CiphertextFormatError):
            crypto.load_vector(bad, pub)
    with pytest.raises(UnsupportedOperationError):
        crypto.aggregate([up, up], weights=[1.0, 2.0])
    # a ciphertext for another plain modulus (same ring and primes) does not match the parms id
    p = packed.params
    other_t = 1073668097  # the next 30-bit batching prime below the preset's
    assert other_t % (2 * p.poly_modulus_degree) == 1 and other_t != p.plain_modulus
    other = crypto.CkksParams(
        "packed", 4096, p.coeff_mod_bit_sizes, p.scale_bits, scheme="bfv", plain_modulus=other_t
    )
    foreign = crypto.encrypt(x, crypto.generate_key(other)).serialized_chunks()[0]
    with pytest.raises(CiphertextFormatError, match="made with other parameters"):
        crypto.load_vector(foreign, pub)


def test_packed_key_files_carry_the_scheme_and_refuse_tampering(packed, tmp_path):
    priv, pub = crypto.write_key_pair(packed, tmp_path / "k")
    assert crypto.load_public_key(pub).params == packed.params
    with pytest.raises(Exception, match="must never hold a secret key"):
        crypto.load_public_key(priv)
    header, blobs = container.unpack(pub.read_bytes())
    header.pop("kind", None)
    header.pop("blobs_sha256", None)
    # the header claims CKKS parameters but the material is BFV: refused
    header["params"] = crypto.get_preset("default").to_dict()
    forged = tmp_path / "forged.key"
    forged.write_bytes(container.pack("cifer.key", header, blobs))
    with pytest.raises(KeyFileError):
        crypto.load_public_key(forged)
