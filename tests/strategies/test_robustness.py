"""Bad replies are excluded with a reason; the round completes with the rest."""

import logging

import numpy as np
import pytest
from flwr.app import Array

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.exceptions import CiferError, KeyTypeError, UnsupportedOperationError
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}


def truncate_node(node):
    def tamper(call, replies):
        for reply in replies:
            if reply.metadata.src_node_id == node and reply.content.array_records:
                record = reply.content["arrays"]
                name = next(k for k, a in record.items() if a.stype.endswith("ciphertext/1"))
                a = record[name]
                record[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=a.data[:100])
        return replies

    return tamper


@pytest.mark.parametrize("fault", ["wrong-key", "truncated", "shape"])
def test_bad_reply_is_excluded_and_round_completes(fault, key_files, other_key, tmp_path, caplog):
    priv, pub = key_files
    other_priv, _ = crypto.write_key_pair(other_key, tmp_path / "other")
    seen = {}
    overrides = {3: other_priv} if fault == "wrong-key" else {}
    app = make_client_app(seen, encrypted=True, shape_bug_node=3 if fault == "shape" else None)
    grid = InProcessGrid(
        app,
        node_configs(priv, overrides=overrides),
        tamper=truncate_node(3) if fault == "truncated" else None,
    )
    strategy = strategies.FedAvg(public_key=pub, **COMMON)
    with caplog.at_level(logging.WARNING, logger="cifer_flwr"):
        result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)
    reasons = [r for rnd in (1, 2) for node, r in strategy.excluded.get(rnd, []) if node == 3]
    expected = {"wrong-key": "key mismatch", "truncated": "truncated", "shape": "layout"}[fault]
    assert reasons and all(expected in r for r in reasons), strategy.excluded
    assert any(expected in rec.getMessage() for rec in caplog.records)
    # nodes 1 and 2 were aggregated: the global model is their weighted mean
    key = crypto.load_private_key(priv)
    model, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    x = seen[("train", 2, 1)]
    for k, v in x.items():
        prev = seen[("train", 1, 1)][k]
        w1, w2 = 10.0, 20.0
        mean = (w1 * (0.8 * prev + 0.05) + w2 * (0.8 * prev + 0.10)) / (w1 + w2)
        np.testing.assert_allclose(v, mean, atol=1e-5)
    assert np.abs(model["w"] - (0.8 * x["w"] + (10 * 0.05 + 20 * 0.10) / 30)).max() < 1e-5


def test_strategy_refuses_a_private_key(key_files, key):
    priv, _ = key_files
    with pytest.raises(KeyTypeError, match="never hold a secret key"):
        strategies.FedAvg(public_key=priv)
    with pytest.raises(KeyTypeError):
        strategies.FedYogi(public_key=key)


def test_server_side_evaluate_fn_is_refused(key_files):
    _, pub = key_files
    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(key_files[0]))
    with pytest.raises(UnsupportedOperationError, match="federated evaluation"):
        strategies.FedAvg(public_key=pub).start(
            grid=grid, initial_arrays=plain_initial(), evaluate_fn=lambda rnd, arrays: None
        )


def test_encrypted_initial_arrays_and_checkpoint(key_files, tmp_path):
    priv, pub = key_files
    key = crypto.load_private_key(priv)
    initial = crypto.to_array_record(
        crypto.encrypt({k: a.numpy() for k, a in plain_initial().items()}, key.public())
    )
    save = tmp_path / "global.enc"
    seen = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv))
    strategy = strategies.FedYogi(public_key=pub, save_path=save, **COMMON)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=2)
    assert save.exists() and not list(tmp_path.glob(".global.enc.*"))  # atomic, no leftovers
    from_file, _ = protocol.materialize(crypto.bundle_from_bytes(save.read_bytes(), key), key)
    from_result, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    for k in from_file:
        np.testing.assert_array_equal(from_file[k], from_result[k])
        # the saved model is the one the clients evaluated after the last round
        np.testing.assert_allclose(from_file[k], seen[("evaluate", 2, 1)][k], atol=1e-6)
    assert strategy.round_stats[2]["bytes-received"] > 0


def test_fedopt_excludes_a_reply_with_a_minority_digest(key_files, caplog):
    """A reply whose state digest differs from the majority's is excluded; the round goes on."""
    priv, pub = key_files
    corrupted = {}

    def corrupt_digest(call, replies):
        if call == 3:  # round 2 train
            replies[2].content["cifer"]["state-digest"] = "0" * 64
            corrupted["node"] = replies[2].metadata.src_node_id
        return replies

    def drop_same(call, replies):
        if call == 3:
            return [r for r in replies if r.metadata.src_node_id != corrupted["node"]]
        return replies

    runs = {}
    for name, tamper in (("attack", corrupt_digest), ("oracle", drop_same)):
        seen = {}
        grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv), tamper)
        strategy = strategies.FedAdam(public_key=pub, **COMMON)
        with caplog.at_level(logging.ERROR, logger="cifer_flwr"):
            strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=3)
        runs[name] = (strategy, seen)
    strategy, seen = runs["attack"]
    reasons = [why for node, why in strategy.excluded[2] if node == corrupted["node"]]
    assert reasons and "another FedOpt state" in reasons[0]
    assert any("another FedOpt state" in r.getMessage() for r in caplog.records)
    # round 2 still released a new state: round 3 trains from a model that moved
    assert np.abs(seen[("train", 3, 1)]["w"] - seen[("train", 2, 1)]["w"]).max() > 1e-3
    # and it equals the run in which that reply was simply dropped
    for k in seen[("train", 3, 1)]:
        np.testing.assert_allclose(
            seen[("evaluate", 3, 1)][k], runs["oracle"][1][("evaluate", 3, 1)][k], atol=1e-6
        )


def test_weighting_without_overflow_for_1000_clients_and_10M_examples(key):
    rng = np.random.default_rng(0)
    n = rng.multinomial(10**7 - 1000, np.ones(1000) / 1000) + 1
    assert n.sum() == 10**7
    base = rng.normal(0, 0.5, 2000)
    updates = [base + 0.05 * rng.normal(size=2000) for _ in range(1000)]
    # the server's first guess of examples per client is 100x too small
    divisor = protocol.weight_divisor(1000, 100.0)
    encs = [crypto.encrypt({"w": u}, key, weight=float(ni) / divisor) for u, ni in zip(updates, n)]
    total = crypto.aggregate(encs)
    got = crypto.decrypt(total, key, divisor=total.weight)["w"]
    exact = sum(ni * u for u, ni in zip(updates, n)) / n.sum()
    assert total.weight * divisor == pytest.approx(10**7)
    assert np.abs(got - exact).max() / np.abs(exact).max() < 1e-6


def test_plaintext_reply_is_excluded(key_files):
    priv, pub = key_files

    def strip_encryption(call, replies):
        if call == 1:
            reply = replies[0]
            reply.content["arrays"] = plain_initial()
        return replies

    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv), strip_encryption)
    strategy = strategies.FedAvg(public_key=pub, **COMMON)
    strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=1)
    assert any("ckks_mod" in reason for _, reason in strategy.excluded[1])


def test_digest_memory_round_trip_lookup_and_bound():
    import hashlib

    from cifer_flwr.strategies._replies import DigestMemory

    def digests(rnd, n):
        return [hashlib.sha256(f"{rnd}/{i}".encode()).digest() for i in range(n)]

    memory = DigestMemory(limit=250)
    for rnd in range(1, 4):
        memory.add(rnd, digests(rnd, 100))
        memory.freeze(before=rnd)  # round rnd stays open, the earlier ones are frozen
    # a digest ending in zero bytes survives numpy's fixed-width bytes
    memory.add(3, [b"\x07" * 30 + b"\x00\x00"])
    assert memory.first_seen(digests(9, 5)) is None
    assert memory.first_seen(digests(9, 2) + digests(3, 1)) == (2, 3)
    assert memory.first_seen([b"\x07" * 30 + b"\x00\x00"]) == (0, 3)
    memory.freeze(before=4)  # 301 digests > 250: round 1 is forgotten
    assert memory.rounds() == [2, 3] and len(memory) == 201
    assert memory.first_seen(digests(1, 3)) is None
    assert memory.first_seen(digests(2, 100)[50:]) == (0, 2)
    index, blob = memory.to_blob()
    assert index == [[2, 100], [3, 101]] and len(blob) == 201 * 32
    again = DigestMemory.from_blob(index, blob)
    assert again.first_seen([b"\x07" * 30 + b"\x00\x00"]) == (0, 3)
    assert again.to_blob() == (index, blob)
    with pytest.raises(CiferError):
        DigestMemory.from_blob([[2, 300]], blob)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"num-examples": 10, "acc": [0.1, float("inf")]}, "finite"),
        ({"num-examples": 10, "acc": [0.0] * 100_001}, "more than"),
        ({"num-examples": 0}, "example count in"),
        ({"num-examples": 2e12}, "example count in"),
        ({"num-examples": 10, "big": 1e16}, "magnitude"),
        ({"num-examples": 10, "big": -(10**400)}, "digits"),
    ],
)
def test_metric_checks(metrics, reason):
    from flwr.app import MetricRecord, RecordDict

    from cifer_flwr.strategies._replies import check_metrics

    with pytest.raises(CiferError, match=reason):
        check_metrics(RecordDict({"m": MetricRecord(metrics)}), "num-examples")
    two = RecordDict({"a": MetricRecord({"num-examples": 1}), "b": MetricRecord({"x": 1})})
    with pytest.raises(CiferError, match="exactly one"):
        check_metrics(two, "num-examples")
    ok = RecordDict({"m": MetricRecord({"num-examples": 7, "acc": [0.5, 0.25]})})
    assert check_metrics(ok, "num-examples") == 7.0
