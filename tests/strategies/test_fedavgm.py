"""Encrypted FedAvgM, the worked extension example (issue 13, requirement 6).

Oracles: Flower's plaintext ``FedAvgM`` with identical client updates (round by round),
``torch.optim.SGD`` with momentum for the server step alone (Flower follows its convention),
and an uninterrupted run for checkpoint/resume.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import PART_STATE
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.strategies._checkpoint import read_checkpoint
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial
from tests.strategies.test_checkpoint import K, N, decrypted
from tests.strategies.test_checkpoint import run as run_ckpt

ROUNDS = 5
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
SETTINGS = {"server_learning_rate": 0.8, "server_momentum": 0.9}


def run(strategy, key_path, encrypted):
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=encrypted), node_configs(key_path))
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return seen, grid, result


def max_gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def encrypted_run(key_files):
    priv, pub = key_files
    ours = strategies.FedAvgM(public_key=pub, **COMMON, **SETTINGS)
    seen, grid, result = run(ours, priv, True)
    return ours, seen, grid, result


def test_decrypted_models_match_flower_plaintext_fedavgm(encrypted_run, key_files):
    ours, enc_seen, grid, result = encrypted_run
    plain_seen, _, _ = run(flwr_strategy.FedAvgM(**COMMON, **SETTINGS), key_files[0], False)

    assert set(enc_seen) == set(plain_seen)
    for key, arrays in enc_seen.items():
        assert max_gap(arrays, plain_seen[key]) <= 1e-5, key
    # the model moved, so the comparison is not trivial
    assert max_gap(enc_seen[("evaluate", ROUNDS, 1)], enc_seen[("train", 1, 1)]) > 0.01

    # the server holds the public key only, and never sends or returns a plaintext Array
    assert not ours.key.is_private and not ours.key.context().has_secret_key()
    for msg in grid.sent:
        for record in msg.content.array_records.values():
            assert all(arr.stype.startswith("cifer.") for arr in record.values())
    assert all(arr.stype.startswith("cifer.") for arr in result.arrays.values())
    assert sum(len(v) for v in ours.excluded.values()) == 0
    # the encrypted state is (x, m): FedAvgM has no second moment
    parts = crypto.bundle_from_record(result.arrays, ours.key)
    groups = {name.partition("/")[0] for name in parts[PART_STATE].layout.names}
    assert groups == {"x", "m"}
    assert parts[PART_STATE].meta["fedopt"] == {
        "kind": "avgm",
        "eta": 0.8,
        "beta_1": 0.9,
        "beta_2": 0.0,
        "tau": 1.0,
    }


def test_momentum_matters_encrypted_fedavgm_is_not_plain_fedavg(encrypted_run, key_files):
    _, enc_seen, _, _ = encrypted_run
    fedavg_seen, _, _ = run(flwr_strategy.FedAvg(**COMMON), key_files[0], False)
    no_momentum, _, _ = run(
        flwr_strategy.FedAvgM(**COMMON, server_learning_rate=0.8), key_files[0], False
    )
    # round 1 trains from the initial model in every strategy
    assert max_gap(enc_seen[("train", 1, 1)], fedavg_seen[("train", 1, 1)]) <= 1e-5
    # afterwards the server step (learning rate, then momentum) separates them
    assert max_gap(enc_seen[("train", 3, 1)], fedavg_seen[("train", 3, 1)]) > 1e-2
    assert max_gap(enc_seen[("train", 3, 1)], no_momentum[("train", 3, 1)]) > 1e-2


def test_avgm_step_is_torch_sgd_with_momentum():
    rng = np.random.default_rng(3)
    x = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    spec = protocol.OptimizerSpec("avgm", 0.7, 0.9, protocol.AVGM_BETA_2, protocol.AVGM_TAU)
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in x.items()}
    sgd = torch.optim.SGD(list(params.values()), lr=0.7, momentum=0.9)
    m = None
    for _ in range(4):
        aggregate = {k: 0.8 * v + rng.normal(0, 0.1, v.shape) for k, v in x.items()}
        for k, p in params.items():  # pseudo-gradient: old model minus the new average
            p.grad = torch.tensor(x[k] - aggregate[k])
        sgd.step()
        x, m, v = protocol.fedopt_step(spec, x, m, None, aggregate, 1)
        assert v is None
        for k, p in params.items():
            np.testing.assert_allclose(x[k], p.detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"beta_2": 0.99}, "beta_2"),
        ({"tau": 1e-3}, "tau"),
        ({"beta_1": 1.0}, r"\[0, 1\)"),
        ({"eta": 0.0}, "> 0"),
    ],
)
def test_avgm_settings_are_checked(changes, match):
    good = {"kind": "avgm", "eta": 1.0, "beta_1": 0.9, "beta_2": 0.0, "tau": 1.0}
    assert protocol.OptimizerSpec.from_dict(good).to_dict() == good
    with pytest.raises(ConfigError, match=match):
        protocol.OptimizerSpec.from_dict({**good, **changes})


@pytest.mark.parametrize(
    "settings", [{"server_momentum": 1.0}, {"server_momentum": -0.1}, {"server_learning_rate": 0}]
)
def test_out_of_range_settings_are_refused_at_construction(settings, key_files):
    with pytest.raises(ConfigError):
        strategies.FedAvgM(public_key=key_files[1], **settings)


def test_resumed_run_equals_uninterrupted_run(key_files, tmp_path):
    _, full_seen, full = run_ckpt(key_files, "FedAvgM", N, **SETTINGS)
    ckpt = tmp_path / "run.ckpt"
    run_ckpt(key_files, "FedAvgM", K, checkpoint_path=ckpt, **SETTINGS)
    assert read_checkpoint(ckpt).state["round"] == K
    _, seen, resumed = run_ckpt(
        key_files, "FedAvgM", N, checkpoint_path=ckpt, resume=True, **SETTINGS
    )
    assert {r for (_, r, _) in seen} == set(range(K + 1, N + 1))
    for key, arrays in seen.items():
        assert max_gap(arrays, full_seen[key]) <= 1e-6, key
    final = decrypted(resumed, key_files)
    assert max_gap(final, decrypted(full, key_files)) <= 1e-6
    assert max_gap(final, full_seen[("train", K, 1)]) > 1e-3
    # another momentum cannot resume this checkpoint
    other = strategies.FedAvgM(
        public_key=key_files[1],
        checkpoint_path=ckpt,
        resume=True,
        server_learning_rate=0.8,
        server_momentum=0.5,
        **COMMON,
    )
    with pytest.raises(ConfigError, match="optimizer"):
        other.start(grid=None, initial_arrays=plain_initial(), num_rounds=N)


def test_returned_state_groups_are_checked_per_optimizer(encrypted_run, key_files):
    ours = encrypted_run[0]
    layout = ours.layout
    yogi = strategies.FedYogi(public_key=key_files[1], **COMMON)
    yogi.layout = layout

    def state(groups: int):
        names = protocol.state_names(layout.names, moments=True)[: groups * len(layout.names)]
        return crypto.Layout(names, layout.shapes * groups, layout.dtypes * groups)

    assert [ours._state_layout_ok(state(g)) for g in (1, 2, 3)] == [True, True, False]
    assert [yogi._state_layout_ok(state(g)) for g in (1, 2, 3)] == [True, False, True]


class MinimalStrategy(strategies.EncryptedFedAvgBase, flwr_strategy.FedProx):
    """The subclass sketched in EncryptedFedAvgBase's docstring."""


def test_the_documented_minimal_subclass_is_an_encrypted_fedprox(key_files):
    priv, pub = key_files
    ours = MinimalStrategy(public_key=pub, proximal_mu=0.5, **COMMON)
    enc_seen, grid, _ = run(ours, priv, True)
    plain_seen, _, _ = run(flwr_strategy.FedProx(proximal_mu=0.5, **COMMON), priv, False)
    assert all(
        m.content["config"]["proximal-mu"] == 0.5
        for m in grid.sent
        if m.metadata.message_type == "train"
    )
    for key, arrays in enc_seen.items():
        assert max_gap(arrays, plain_seen[key]) <= 1e-5, key
    for msg in grid.sent:
        for record in msg.content.array_records.values():
            assert all(arr.stype.startswith("cifer.") for arr in record.values())
