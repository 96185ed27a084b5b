"""An asked FedOpt state holder that returns a tampered state is caught (issue 18, item 2).

The attacker is the first client asked for the refreshed state in round 2 (the one whose
state the server takes); from then on, whenever it is asked, it returns ``x + 5`` (and the
moments unchanged) with the honest digest. The next round's key holders compare the state
with the one they computed themselves (docs/design.md §4.3): they train from their own,
report ``state-check: fail``, and the server excludes the attacker. The decrypted models of
the honest nodes equal Flower's plaintext strategy on the run where the attacker's updates
stop counting from the round it is excluded.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import CFG_RETURN_STATE
from cifer_flwr.crypto import paillier as pl
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

NODES = (1, 2, 3, 4)
ROUNDS = 5
ATTACK_ROUND = 2
COMMON = {"min_train_nodes": 4, "min_available_nodes": 4, "min_evaluate_nodes": 4}
SETTINGS = {
    "FedAdam": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedYogi": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedAvgM": {"server_learning_rate": 0.8, "server_momentum": 0.9},
}


#: The insecure test preset of tests/strategies/test_paillier_strategies.py.
PAILLIER_TEST = pl.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")


@pytest.fixture(scope="module")
def paillier_files(tmp_path_factory: pytest.TempPathFactory):
    key = pl.generate_key(PAILLIER_TEST, insecure=True)
    return pl.write_key_pair(key, tmp_path_factory.mktemp("keys") / "paillier")


def is_train(msg):
    return msg.metadata.message_type.startswith("train")


class TamperedState:
    """Grid tamper: the first asked state holder of ``attack_round``, and later, adds 5 to x."""

    def __init__(self, grid: InProcessGrid, key: crypto.AnyKey, attack_round: int) -> None:
        self.grid, self.key, self.attack_round = grid, key, attack_round
        self.attacker: int | None = None
        self.tampered: list[int] = []

    def __call__(self, call, replies):
        pushed = self.grid.pushed[call - 1]
        if not pushed or not is_train(pushed[0]):
            return replies
        rnd = int(pushed[0].content["config"]["server-round"])
        if rnd == self.attack_round and self.attacker is None:
            asked = [m for m in pushed if m.content["config"].get(CFG_RETURN_STATE)]
            self.attacker = asked[0].metadata.dst_node_id
        for reply in replies:
            if reply.metadata.src_node_id != self.attacker or reply.has_error():
                continue
            parts = crypto.bundle_from_record(reply.content["arrays"], self.key)
            if "state" not in parts:
                continue
            state = parts["state"]
            packed = crypto.decrypt(state, self.key, divisor=state.weight)
            forged = {
                k: (a + 5).astype(a.dtype) if k.startswith("x/") else a for k, a in packed.items()
            }
            weight = protocol.exact_weight(forged, self.key.params)
            parts["state"] = crypto.with_meta(
                crypto.encrypt(forged, self.key, weight=weight), **state.meta
            )
            reply.content["arrays"] = crypto.bundle_to_record(parts)  # digest left honest
            self.tampered.append(rnd)
        return replies


def encrypted_run(name, key_path, tamper_key, attack_round=ATTACK_ROUND, fraction_evaluate=1.0):
    priv, pub = key_path
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv, nodes=NODES))
    tamper = None if tamper_key is None else TamperedState(grid, tamper_key, attack_round)
    grid.tamper = tamper
    quantized = "packed" in str(pub) or "paillier" in str(pub)
    kwargs = {"examples_per_client": 25.0} if quantized else {}
    kwargs["fraction_evaluate"] = fraction_evaluate
    strategy = getattr(strategies, name)(public_key=pub, **COMMON, **SETTINGS[name], **kwargs)
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return strategy, seen, result, tamper


def flower_run(name, key_path, attacker, from_round, fraction_evaluate=1.0):
    """Flower's plaintext strategy; the attacker's train replies are dropped from a round on."""
    seen: dict = {}
    grid = InProcessGrid(
        make_client_app(seen, encrypted=False), node_configs(key_path[0], nodes=NODES)
    )

    def drop(call, replies):
        rnd = (call + 1) // 2
        if call % 2 == 1 and rnd >= from_round:
            return [r for r in replies if r.metadata.src_node_id != attacker]
        return replies

    grid.tamper = drop
    strategy = getattr(flwr_strategy, name)(
        **COMMON, **SETTINGS[name], fraction_evaluate=fraction_evaluate
    )
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return seen, {k: a.numpy() for k, a in result.arrays.items()}


@pytest.mark.parametrize(
    ("name", "keys", "fraction_evaluate", "attack_round"),
    [
        ("FedAdam", "key_files", 1.0, ATTACK_ROUND),
        ("FedYogi", "packed_key_files", 1.0, ATTACK_ROUND),
        ("FedAvgM", "key_files", 1.0, ATTACK_ROUND),
        ("FedAvgM", "paillier_files", 1.0, ATTACK_ROUND),
        ("FedAdam", "key_files", 0.0, ATTACK_ROUND),  # caught in the next train round
        ("FedYogi", "packed_key_files", 1.0, ROUNDS),  # the last round's state
    ],
)
def test_tampered_state_is_refused_and_its_holder_excluded(
    name, keys, fraction_evaluate, attack_round, request
):
    key_files = request.getfixturevalue(keys)
    load = pl.load_private_key if keys == "paillier_files" else crypto.load_private_key
    key = load(key_files[0])
    strategy, seen, result, tamper = encrypted_run(
        name, key_files, key, attack_round, fraction_evaluate
    )
    attacker = tamper.attacker
    assert tamper.tampered and tamper.tampered[0] == attack_round
    # the key holders that computed the state refused it (in the evaluation of the same
    # round, or without evaluation in the next train round); the attacker is excluded
    caught = attack_round if fraction_evaluate else attack_round + 1
    assert strategy.banned == {attacker}
    (event,) = strategy.state_events
    assert event["round"] == caught and event["node"] == attacker
    assert event["fail"] >= 3 and event["pass"] == 0
    reasons = [why for n, why in strategy.excluded[caught] if n == attacker]
    assert reasons and "found different from the state they computed" in reasons[0]
    # every honest node's models equal Flower's run in which the attacker's updates stop
    # counting from the next round on
    oracle, oracle_final = flower_run(
        name, key_files, attacker, attack_round + 1, fraction_evaluate
    )
    honest = [n for n in NODES if n != attacker]
    assert {k for k in seen if k[2] in honest} == {k for k in oracle if k[2] in honest}
    gap = max(
        float(np.abs(seen[key_][k] - oracle[key_][k]).max())
        for key_ in oracle
        if key_[2] in honest
        for k in oracle[key_]
    )
    assert gap <= 1e-5, gap
    # and so does the final model (what decrypt-model returns), even for a last-round attack
    final, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    assert all(np.abs(final[k] - oracle_final[k]).max() <= 1e-5 for k in oracle_final)
    # the attacker was sampled no more
    assert not [k for k in seen if k[2] == attacker and k[1] > attack_round + 1]


def test_honest_run_reports_passing_state_checks(key_files):
    strategy, seen, _, _ = encrypted_run("FedAdam", key_files, None)
    assert strategy.banned == set() and strategy.state_events == []
    assert not any(strategy.excluded.values())


def test_state_tolerance_and_own_state_substitution(key):
    """open_global: a state within the tolerance passes, one beyond it is replaced."""
    x = {"w": np.linspace(-1, 1, 50).astype(np.float32)}
    m = {"w": np.full(50, 0.01)}
    v = {"w": np.full(50, 1e-4)}
    packed = protocol.pack_state(x, m, v)
    own = protocol.OwnState(3, packed)
    spec = protocol.OptimizerSpec("adam", 0.05, 0.9, 0.99, 1e-3)

    def sent(values):
        enc = crypto.encrypt(values, key)
        return {"state": crypto.with_meta(enc, fedopt=spec.to_dict(), state_round=3)}

    honest = protocol.open_global(sent(packed), key, own_state=own)
    assert honest.state_check == "pass"
    nudged = {
        k: (a + (1e-3 if k.startswith("x/") else 0)).astype(a.dtype) for k, a in packed.items()
    }
    opened = protocol.open_global(sent(nudged), key, own_state=own)
    assert opened.state_check == "fail" and "differs from the state" in opened.notes[0]
    np.testing.assert_array_equal(opened.arrays["w"], x["w"])  # its own state
    # another round's own state: nothing to compare
    assert (
        protocol.open_global(sent(nudged), key, own_state=protocol.OwnState(2, packed)).state_check
        is None
    )
    assert protocol.state_tolerance(key.params, 1.0) < 1e-5
