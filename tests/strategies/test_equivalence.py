"""Decrypted global models equal Flower's own plaintext strategies, round by round."""

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import strategies
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

ROUNDS = 5
CASES = {
    "FedAvg": {},
    "FedProx": {"proximal_mu": 0.1},
    "FedYogi": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedAdam": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedAdagrad": {"eta": 0.05, "tau": 1e-3},
}


def run(strategy, key_path, encrypted):
    seen = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=encrypted), node_configs(key_path))
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return seen, grid, result


@pytest.mark.parametrize("name", list(CASES))
def test_decrypted_models_match_flower_plaintext(name, key_files):
    priv, pub = key_files
    common = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
    plain_seen, _, _ = run(getattr(flwr_strategy, name)(**common, **CASES[name]), priv, False)
    ours = getattr(strategies, name)(public_key=pub, **common, **CASES[name])
    enc_seen, grid, result = run(ours, priv, True)

    assert set(enc_seen) == set(plain_seen)
    for phase in ("train", "evaluate"):
        for rnd in range(1, ROUNDS + 1):
            for node in (1, 2, 3):
                a, b = enc_seen[(phase, rnd, node)], plain_seen[(phase, rnd, node)]
                for k in a:
                    assert np.abs(a[k] - b[k]).max() <= 1e-5, (phase, rnd, node, k)
    # the model actually moved, so the comparison is not trivial
    assert (
        np.abs(enc_seen[("evaluate", ROUNDS, 1)]["w"] - enc_seen[("train", 1, 1)]["w"]).max() > 0.01
    )

    # server blindness: public key only, and no plaintext Array ever leaves the server
    assert not ours.key.is_private and not ours.key.context().has_secret_key()
    for msg in grid.sent:
        for record in msg.content.array_records.values():
            assert all(arr.stype.startswith("cifer.") for arr in record.values())
    assert all(arr.stype.startswith("cifer.") for arr in result.arrays.values())
    assert sum(len(v) for v in ours.excluded.values()) == 0
