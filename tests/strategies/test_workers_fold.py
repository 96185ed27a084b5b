"""The server's validate-and-sum in crypto worker processes (docs/design.md §6.1).

Tiny test models never reach the workers' threshold, so these tests lower it: the same
strategies then parse and add every model reply in the workers, and must still equal
Flower's plaintext strategies and exclude a hostile reply exactly as in-process.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, strategies
from cifer_flwr.crypto import workers
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial
from tests.strategies.test_attacks import ROUNDS as ATTACK_ROUNDS
from tests.strategies.test_attacks import scenario

ROUNDS = 3
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
CASES = {
    "FedAvg": {},
    "FedYogi": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
}


@pytest.fixture
def forced_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every round uses two workers; returns a list that counts the staged replies."""
    monkeypatch.setattr(workers, "PARALLEL_MIN_CHUNKS", 1)
    monkeypatch.setenv(workers.ENV_WORKERS, "2")
    staged: list[int] = []
    original = crypto.CryptoWorkers.stage

    def stage(self, group, blobs, *, what):
        staged.append(len(blobs))
        return original(self, group, blobs, what=what)

    monkeypatch.setattr(crypto.CryptoWorkers, "stage", stage)
    return staged


def _run(strategy, priv, encrypted):
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=encrypted), node_configs(priv))
    strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return seen


@pytest.mark.parametrize("name", list(CASES))
def test_worker_sums_match_flower_plaintext(name, key_files, forced_workers):
    priv, pub = key_files
    plain = _run(getattr(flwr_strategy, name)(**COMMON, **CASES[name]), priv, False)
    ours = getattr(strategies, name)(public_key=pub, **COMMON, **CASES[name])
    enc = _run(ours, priv, True)
    # every train reply of every round went through the workers
    assert len(forced_workers) == 3 * ROUNDS
    assert set(enc) == set(plain)
    gap = max(float(np.abs(enc[k][n] - plain[k][n]).max()) for k in plain for n in plain[k])
    assert gap <= 1e-5, gap
    assert sum(len(v) for v in ours.excluded.values()) == 0


def test_packed_worker_sums_match_flower_plaintext(packed_key_files, forced_workers):
    priv, pub = packed_key_files
    plain = _run(flwr_strategy.FedAvg(**COMMON), priv, False)
    enc = _run(strategies.FedAvg(public_key=pub, examples_per_client=20.0, **COMMON), priv, True)
    assert len(forced_workers) == 3 * ROUNDS
    gap = max(float(np.abs(enc[k][n] - plain[k][n]).max()) for k in plain for n in plain[k])
    assert 0 < gap <= 1e-5, gap


def test_a_corrupted_ciphertext_is_excluded_by_the_workers(key_files, forced_workers):
    priv, pub = (str(p) for p in key_files)
    out = scenario("corrupt-seal-body", priv, pub)
    assert forced_workers, "the workers were not used"
    assert out["rounds_done"] == list(range(1, ATTACK_ROUNDS + 1)), out
    for rnd, reasons in out["reasons"].items():
        assert any("ciphertext" in r for r in reasons), (rnd, out["all_excluded"])
        assert not any(r.startswith("internal error") for r in reasons), reasons
    assert all(v == 1 for v in out["released"].values()), out["released"]
    assert out["eval_diff"] <= 1e-6 and out["model_diff"] <= 1e-6, out


def test_masked_sums_from_the_workers_unmask(packed_key_files, forced_workers):
    """Masking (§4.9) on top of the workers' validate-and-sum: the residual comes off exactly."""
    priv, pub = packed_key_files
    plain = _run(flwr_strategy.FedAvg(**COMMON), priv, False)
    ours = strategies.FedAvg(public_key=pub, examples_per_client=20.0, masking=True, **COMMON)
    enc = _run(ours, priv, True)
    assert len(forced_workers) == 3 * ROUNDS
    assert all(ours.round_stats[r]["mask-cohort"] == 3 for r in range(1, ROUNDS + 1))
    gap = max(float(np.abs(enc[k][n] - plain[k][n]).max()) for k in plain for n in plain[k])
    assert 0 < gap <= 1e-5, gap


@pytest.fixture
def counted_stages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Two workers available (the threshold left as it is); counts the staged replies."""
    monkeypatch.setenv(workers.ENV_WORKERS, "2")
    staged: list[int] = []
    original = crypto.CryptoWorkers.stage

    def stage(self, group, blobs, *, what):
        staged.append(len(blobs))
        return original(self, group, blobs, what=what)

    monkeypatch.setattr(crypto.CryptoWorkers, "stage", stage)
    return staged


@pytest.mark.slow  # ~11 s on a loaded 2-core machine (two runs and a worker pool)
def test_fold_is_chosen_at_construction(key_files, counted_stages, monkeypatch):
    """fold='workers' sums this tiny model in the workers, 'in-process' never does."""
    priv, pub = key_files
    plain = _run(flwr_strategy.FedAvg(**COMMON), priv, False)
    enc = _run(strategies.FedAvg(public_key=pub, fold="workers", **COMMON), priv, True)
    assert len(counted_stages) == 3 * ROUNDS  # below PARALLEL_MIN_CHUNKS, yet in the workers
    gap = max(float(np.abs(enc[k][n] - plain[k][n]).max()) for k in plain for n in plain[k])
    assert gap <= 1e-5, gap
    monkeypatch.setattr(workers, "PARALLEL_MIN_CHUNKS", 1)  # 'auto' would now use them
    _run(strategies.FedAvg(public_key=pub, fold="in-process", **COMMON), priv, True)
    assert len(counted_stages) == 3 * ROUNDS  # nothing more was staged


def test_fold_workers_is_refused_without_workers(key_files, monkeypatch):
    from cifer_flwr.exceptions import ConfigError

    monkeypatch.setenv(workers.ENV_WORKERS, "1")
    with pytest.raises(ConfigError, match="fold='workers' needs at least 2 worker"):
        strategies.FedAvg(public_key=key_files[1], fold="workers")
    with pytest.raises(ConfigError, match="expected one of"):
        strategies.FedAvg(public_key=key_files[1], fold="gpu")  # type: ignore[arg-type]
