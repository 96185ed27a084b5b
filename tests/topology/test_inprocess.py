"""Centralized vs peer-to-peer on digits, through the generic app and an in-process Grid."""

import numpy as np
import pytest

from cifer_flwr.experiments.config import compose
from tests.strategies.harness import run_generic_app


def run(overrides, key_files, tamper=None):
    priv, pub = key_files
    return run_generic_app(compose(overrides), priv, pub, tamper)


#: The fastest task that still shows gossip at work: logistic regression on digits, one
#: local epoch per round (so that mixing, not local training, drives consensus).
COMMON = "task=digits-sklearn task.epochs=1 federation.nodes=4 seed=1"


@pytest.mark.parametrize("encryption", ["ckks", "none"])
def test_p2p_reaches_centralized_accuracy_and_consensus_shrinks(key_files, encryption):
    central, _ = run(f"num_rounds=6 encryption={encryption} {COMMON}", key_files)
    p2p, grid = run(
        f"topology=p2p topology.graph=ring num_rounds=6 encryption={encryption} {COMMON}", key_files
    )
    acc_c = central["rounds"][-1]["accuracy"]
    acc_p = p2p["rounds"][-1]["accuracy"]
    assert acc_c > 0.85
    assert acc_p >= acc_c - 0.05, (acc_p, acc_c)
    dist = [r["consensus-distance"] for r in p2p["rounds"][1:]]
    assert dist[-1] < 0.5 * dist[0], dist
    # the relay never aggregates: every server->peer message carries only neighbours' models
    for msg in grid.sent:
        peers = [k for k in msg.content.array_records if k.startswith("peer.")]
        assert len(peers) <= 2
        if encryption == "ckks":
            for k in peers:
                assert all(a.stype.startswith("cifer.") for a in msg.content[k].values())


def test_p2p_skips_a_dropped_peer(key_files):
    def drop_peer_3(call, replies):
        if call == 3:  # round 2 train
            replies = [r for r in replies if r.metadata.src_node_id != 3]
        return replies

    res, grid = run(f"topology=p2p num_rounds=3 encryption=none {COMMON}", key_files, drop_peer_3)
    assert res["rounds"][1]["dropped"] == [2]
    assert res["rounds"][2]["peers"] == 4  # back in round 3, with its own model
    # in round 3 the neighbours of peer index 2 received no model from it
    round3 = [m for m in grid.sent if m.metadata.message_type == "train.p2p"][-4:]
    assert all("peer.2" not in m.content.array_records for m in round3)
    assert res["rounds"][-1]["accuracy"] > 0.5


def test_centralized_results_have_bytes_and_timings(key_files):
    res, _ = run(f"strategy=fedyogi num_rounds=2 {COMMON}", key_files)
    row = res["rounds"][-1]
    assert row["bytes-sent"] > 0 and row["bytes-received"] > 0
    assert row["client-encrypt-s"] > 0 and row["aggregate-s"] > 0
    assert res["encrypted"] and res["strategy"] == "fedyogi"
    assert np.isfinite(row["accuracy"])
