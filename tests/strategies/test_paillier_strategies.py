"""Paillier keys in the same strategies and client mod as CKKS (docs/design.md §4.8).

Keys here are 1024 bits (``insecure=True``): these tests check the protocol, not security;
the arithmetic is the same at 2048 bits, only slower.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, Message
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import CFG_WEIGHT_DIVISOR, METRIC_CLIPPED, STYPE_CIPHERTEXT
from cifer_flwr.crypto import paillier as pl
from cifer_flwr.crypto.records import record_bundle_stream
from cifer_flwr.exceptions import ConfigError, KeyTypeError
from tests.strategies.harness import (
    INITIAL,
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
)

TEST = pl.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")
ROUNDS = 3
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
#: The test clients report 10, 20, 30 examples: announcing their mean makes sum n_i / B = 1.
EXAMPLES = 20.0
COHORT = 3
#: Quantization step of the test preset (as of ``paillier``): 8 / (2**24 - 1) = 4.8e-7.
STEP = TEST.step
#: Averaging strategies: each summand's stochastic rounding is off by < STEP, so a round's
#: mean is off by < COHORT * STEP / W (W = sum n_i / B = 1); the test clients train
#: y = 0.8 x + c, which contracts earlier errors by 0.8 per round: the error of any round's
#: model stays below COHORT * STEP / (1 - 0.8) = 15 * STEP = 7.2e-6. The initial model
#: (exact power-of-two weight, step / 2**k) adds less than STEP, also contracted.
AVERAGING_TOL = (COHORT + 1) * STEP / (1 - 0.8)
#: Adaptive / momentum optimizers have no such contraction (FedAdam divides by
#: sqrt(v) + tau); they are held to the bound the CKKS and packed tests use, 1e-5.
TOL = {"FedAvg": AVERAGING_TOL, "FedAdam": 1e-5, "FedAvgM": 1e-5}
CASES = {
    "FedAvg": {},
    "FedAdam": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedAvgM": {"server_learning_rate": 0.8, "server_momentum": 0.9},
}


@pytest.fixture(scope="module")
def paillier_files(tmp_path_factory: pytest.TempPathFactory):
    key = pl.generate_key(TEST, insecure=True)
    return pl.write_key_pair(key, tmp_path_factory.mktemp("keys") / "paillier")


def run(strategy, key_path, encrypted, tamper=None):
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=encrypted), node_configs(key_path))
    grid.tamper = tamper
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return seen, grid, result


def gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k][n] - b[k][n]).max()) for k in b for n in b[k])


@pytest.mark.parametrize("name", list(CASES))
def test_paillier_decrypted_models_match_flower_plaintext(name, paillier_files):
    priv, pub = paillier_files
    plain_seen, _, _ = run(getattr(flwr_strategy, name)(**COMMON, **CASES[name]), priv, False)
    ours = getattr(strategies, name)(
        public_key=pub, examples_per_client=EXAMPLES, **COMMON, **CASES[name]
    )
    enc_seen, grid, result = run(ours, priv, True)

    # the server holds the public Paillier key only; nothing in plaintext leaves it
    assert isinstance(ours.key, crypto.PaillierKey) and not ours.key.is_private
    for msg in grid.sent:
        for record in msg.content.array_records.values():
            assert all(arr.stype.startswith("cifer.") for arr in record.values())
    assert all(arr.stype.startswith("cifer.") for arr in result.arrays.values())
    # every train reply went through Paillier (header scheme), none was refused
    assert not [r.error.reason for r in grid.replies if r.has_error()]
    assert sum(len(v) for v in ours.excluded.values()) == 0
    headers = crypto.record_headers(result.arrays)
    assert {h["scheme"] for h in headers.values()} == {"paillier"}

    d = gap(enc_seen, plain_seen)
    assert 0 < d <= TOL[name], (name, d, TOL[name])  # quantized: close, not bit-equal
    assert (
        np.abs(enc_seen[("evaluate", ROUNDS, 1)]["w"] - enc_seen[("train", 1, 1)]["w"]).max() > 0.01
    )
    for rnd in range(1, ROUNDS + 1):
        assert result.train_metrics_clientapp[rnd][METRIC_CLIPPED] == 0
    # the saved global decrypts with the private key file to the last model sent
    saved = b"".join(record_bundle_stream(ours.global_model.record()).pieces())
    final = protocol.decrypt_global_model(saved, priv)
    assert set(final) == set(INITIAL)


def _weight(reply: Message, grid: InProcessGrid) -> float:
    node = reply.metadata.src_node_id
    sent = next(m for m in grid.pushed[-1] if m.metadata.dst_node_id == node)
    return float(reply.content["metrics"]["num-examples"]) / float(
        sent.content["config"][CFG_WEIGHT_DIVISOR]
    )


def _chunk(reply: Message) -> str:
    return next(k for k, a in reply.content["arrays"].items() if a.stype == STYPE_CIPHERTEXT)


def _set_chunk(reply: Message, data: bytes) -> Message:
    record = reply.content["arrays"]
    name = _chunk(reply)
    a = record[name]
    record[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=data)
    return reply


def _wrong_key(reply: Message, grid: InProcessGrid) -> Message:
    other = pl.generate_key(TEST, insecure=True)
    enc = crypto.encrypt(dict(INITIAL), other, weight=_weight(reply, grid), summands=COHORT)
    reply.content["arrays"] = crypto.bundle_to_record({"model": enc})
    return reply


def _ckks_reply(reply: Message, grid: InProcessGrid) -> Message:
    enc = crypto.encrypt(dict(INITIAL), crypto.generate_key("default"), weight=0.5)
    reply.content["arrays"] = crypto.bundle_to_record({"model": enc})
    return reply


ATTACKS = {
    "wrong-key": _wrong_key,
    "ckks-reply": _ckks_reply,
    "ciphertext-above-n2": lambda r, g: _set_chunk(r, b"\xff" * TEST.ciphertext_bytes),
    "ciphertext-zero": lambda r, g: _set_chunk(r, bytes(TEST.ciphertext_bytes)),
    "ciphertext-truncated": lambda r, g: _set_chunk(r, b"\x01" * (TEST.ciphertext_bytes - 1)),
}
ATTACKER = 3


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_bad_paillier_reply_is_excluded_like_a_dropped_one(attack, paillier_files):
    """Round 1: node 3's reply is replaced; the round equals Flower's FedAvg without it."""
    priv, pub = paillier_files
    mutate = ATTACKS[attack]

    def tamper_factory(drop: bool):
        def tamper(call: int, replies: list[Message]) -> list[Message]:
            if call != 1:  # round 1's train replies only
                return replies
            if drop:
                return [r for r in replies if r.metadata.src_node_id != ATTACKER]
            grid.pub = pub  # type: ignore[attr-defined]
            return [mutate(r, grid) if r.metadata.src_node_id == ATTACKER else r for r in replies]

        return tamper

    common = {**COMMON, "min_train_nodes": 3}
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, **common)
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv))
    grid.tamper = tamper_factory(False)
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)

    plain_seen: dict = {}
    pgrid = InProcessGrid(make_client_app(plain_seen, encrypted=False), node_configs(priv))
    pgrid.tamper = tamper_factory(True)
    flwr_strategy.FedAvg(**common).start(pgrid, plain_initial(), 2)

    assert [node for node, _ in ours.excluded.get(1, [])] == [ATTACKER], ours.excluded
    assert ours.excluded.get(2, []) == []
    # what the others evaluate after round 1 and train on in round 2 equals the oracle's
    for key in [("evaluate", 1, 1), ("train", 2, 1), ("train", 2, 2)]:
        for n in seen[key]:
            assert np.abs(seen[key][n] - plain_seen[key][n]).max() <= AVERAGING_TOL, (attack, key)


def test_server_refuses_a_private_paillier_key(paillier_files):
    priv, _ = paillier_files
    with pytest.raises(KeyTypeError, match=r"public\.key"):
        strategies.FedAvg(public_key=priv)
    with pytest.raises(KeyTypeError):
        strategies.FedAvg(public_key=crypto.load_private_key(priv))


def test_securefed_with_paillier_is_a_clear_config_error(paillier_files):
    _, pub = paillier_files
    with pytest.raises(ConfigError, match="SecureFed needs a CKKS or packed key"):
        strategies.SecureFed(public_key=pub, min_cohort=3)


def test_client_update_beyond_the_range_is_clipped_and_counted(paillier_files):
    priv, _ = paillier_files
    key = crypto.load_private_key(priv)
    enc = crypto.encrypt({"x": np.array([0.5, 9.0, -7.0])}, key, weight=1.0, summands=COHORT)
    assert enc.clipped == 2 and "clipped" not in enc.meta  # local, never in the header
    out = crypto.decrypt(enc, key)["x"]
    assert np.allclose(out, [0.5, 4.0, -4.0], atol=STEP)
    with pytest.raises(ConfigError, match="summands"):
        crypto.encrypt({"x": np.zeros(3)}, key, summands=TEST.max_summands + 1)
