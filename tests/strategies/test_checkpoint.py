"""Checkpoint and resume of the encrypted strategies (issue 9, requirement 6, strategy side).

A run of N rounds is compared with a run stopped (or crashed) after k rounds and resumed from
its checkpoint: same decrypted models round by round, same metrics, a Result covering all
rounds.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import CHECKPOINT_TMP_MARK, CONTAINER_MAGIC
from cifer_flwr.exceptions import CiphertextFormatError, ConfigError, KeyMismatchError
from cifer_flwr.strategies._checkpoint import read_checkpoint, remove_temp_files
from tests.strategies.harness import (
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
    run_encrypted,
)

N, K = 4, 2
NODES = (1, 2, 3)
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
ROOT = Path(__file__).resolve().parents[2]


def run(key_files, name, rounds, tamper=None, **kwargs):
    return run_encrypted(key_files, name, rounds, NODES, COMMON, tamper, **kwargs)


def decrypted(result, key_files):
    key = crypto.load_private_key(key_files[0])
    return protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)[0]


def plain_metrics(history):
    return {r: {k: v for k, v in m.items() if not k.endswith("-s")} for r, m in history.items()}


def assert_same_metrics(a, b):
    a, b = plain_metrics(a), plain_metrics(b)
    assert set(a) == set(b)
    for rnd in a:
        assert set(a[rnd]) == set(b[rnd]), rnd
        for k in a[rnd]:
            assert math.isclose(a[rnd][k], b[rnd][k], rel_tol=1e-6, abs_tol=1e-9), (rnd, k)


@pytest.mark.parametrize("name", ["FedAvg", "FedYogi"])
@pytest.mark.parametrize("how", ["stopped", "crashed"])
def test_resumed_run_equals_uninterrupted_run(name, how, key_files, tmp_path, caplog):
    _, full_seen, full = run(key_files, name, N)
    ckpt = tmp_path / "run.ckpt"
    if how == "stopped":
        run(key_files, name, K, checkpoint_path=ckpt)
    else:

        def die(call, replies):  # the ServerApp dies while round K+1 is under way
            if call == 2 * K + 1:
                raise KeyboardInterrupt("killed")
            return replies

        with pytest.raises(KeyboardInterrupt):
            run(key_files, name, N, tamper=die, checkpoint_path=ckpt)
    assert read_checkpoint(ckpt).state["round"] == K
    with caplog.at_level(logging.INFO, logger="cifer_flwr"):
        strategy, seen, resumed = run(key_files, name, N, checkpoint_path=ckpt, resume=True)
    assert any("resumed from checkpoint" in r.getMessage() for r in caplog.records)
    # the resumed run trained rounds K+1..N only; the Result covers all rounds
    assert {r for (_, r, _) in seen} == set(range(K + 1, N + 1))
    assert set(resumed.train_metrics_clientapp) == set(range(1, N + 1))
    assert set(resumed.evaluate_metrics_clientapp) == set(range(1, N + 1))
    assert_same_metrics(resumed.train_metrics_clientapp, full.train_metrics_clientapp)
    assert_same_metrics(resumed.evaluate_metrics_clientapp, full.evaluate_metrics_clientapp)
    for (phase, rnd, node), arrays in seen.items():
        for k in arrays:
            assert np.abs(arrays[k] - full_seen[(phase, rnd, node)][k]).max() <= 1e-6
    final, reference = decrypted(resumed, key_files), decrypted(full, key_files)
    for k in final:
        assert np.abs(final[k] - reference[k]).max() <= 1e-6
    # not trivially equal: the model moved after the resume
    assert np.abs(final["w"] - full_seen[("train", K, 1)]["w"]).max() > 1e-3
    assert read_checkpoint(ckpt).state["round"] == N
    assert not list(tmp_path.glob(f"*{CHECKPOINT_TMP_MARK}*"))


def test_leftover_temp_file_is_removed_on_start(key_files, tmp_path, caplog):
    ckpt = tmp_path / "run.ckpt"
    leftover = tmp_path / f".run.ckpt{CHECKPOINT_TMP_MARK}x1y2z3"
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.ckpt.cifer-tmp-abc"
    unrelated.write_bytes(b"not ours")
    with caplog.at_level(logging.INFO, logger="cifer_flwr"):
        run(key_files, "FedAvg", 1, checkpoint_path=ckpt)
    assert not leftover.exists() and unrelated.exists()
    assert any("interrupted checkpoint write" in r.getMessage() for r in caplog.records)
    data = ckpt.read_bytes()
    assert data.startswith(CONTAINER_MAGIC) and b"pickle" not in data[:64]
    assert oct(ckpt.stat().st_mode & 0o777) == "0o600"


def test_resume_without_checkpoint_starts_at_round_one(key_files, tmp_path, caplog):
    ckpt = tmp_path / "absent.ckpt"
    with caplog.at_level(logging.INFO, logger="cifer_flwr"):
        _, seen, result = run(key_files, "FedAvg", 2, checkpoint_path=ckpt, resume=True)
    assert {r for (_, r, _) in seen} == {1, 2}
    assert any("starting from round 1" in r.getMessage() for r in caplog.records)
    assert read_checkpoint(ckpt).state["round"] == 2


def test_without_resume_an_existing_checkpoint_is_overwritten(key_files, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    run(key_files, "FedAvg", 3, checkpoint_path=ckpt)
    _, seen, _ = run(key_files, "FedAvg", 1, checkpoint_path=ckpt)
    assert {r for (_, r, _) in seen} == {1}
    assert read_checkpoint(ckpt).state["round"] == 1


def test_resume_after_the_last_round_runs_nothing(key_files, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    _, _, first = run(key_files, "FedYogi", 2, checkpoint_path=ckpt)
    _, seen, again = run(key_files, "FedYogi", 2, checkpoint_path=ckpt, resume=True)
    assert seen == {}
    assert set(again.train_metrics_clientapp) == {1, 2}
    a, b = decrypted(again, key_files), decrypted(first, key_files)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-9)


def test_checkpoint_of_another_key_strategy_or_optimizer_is_refused(key_files, other_key, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    run(key_files, "FedYogi", 1, checkpoint_path=ckpt, eta=0.05)
    priv, pub = key_files
    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv, nodes=NODES))
    resume = {"checkpoint_path": ckpt, "resume": True, **COMMON}
    cases = [
        (strategies.FedYogi(public_key=other_key.public(), eta=0.05, **resume), KeyMismatchError),
        (strategies.FedAdam(public_key=pub, eta=0.05, **resume), ConfigError),
        (strategies.FedYogi(public_key=pub, eta=0.1, **resume), ConfigError),
        (strategies.FedAvg(public_key=pub, **resume), ConfigError),
    ]
    for strategy, error in cases:
        with pytest.raises(error):
            strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)
    assert grid.calls == 0  # refused before any round


def test_corrupted_checkpoint_is_refused(key_files, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    run(key_files, "FedAvg", 1, checkpoint_path=ckpt)
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CiphertextFormatError):
        run(key_files, "FedAvg", 2, checkpoint_path=ckpt, resume=True)
    ckpt.write_bytes(bytes(data[:1000]))
    with pytest.raises(CiphertextFormatError):
        run(key_files, "FedAvg", 2, checkpoint_path=ckpt, resume=True)


def test_resume_needs_a_checkpoint_path(key_files):
    with pytest.raises(ConfigError, match="checkpoint_path"):
        strategies.FedAvg(public_key=key_files[1], resume=True)


def test_replay_memory_survives_a_resume(key_files, tmp_path):
    """A reply of round K replayed in round K+1, after the restart, is still refused."""
    ckpt = tmp_path / "run.ckpt"
    stash = {}

    def remember(call, replies):
        if call == 2 * K - 1:
            stash["content"] = copy.deepcopy(replies[0].content)
            stash["node"] = replies[0].metadata.src_node_id
        return replies

    def replay(call, replies):
        if call == 1:  # round K+1's train call in the resumed run
            for i, reply in enumerate(replies):
                if reply.metadata.src_node_id == stash["node"]:
                    replies[i].content["arrays"] = stash["content"]["arrays"]
        return replies

    run(key_files, "FedAvg", K, tamper=remember, checkpoint_path=ckpt)
    strategy, _, _ = run(
        key_files, "FedAvg", K + 1, tamper=replay, checkpoint_path=ckpt, resume=True
    )
    reasons = [why for node, why in strategy.excluded[K + 1] if node == stash["node"]]
    assert reasons and "a replay" in reasons[0]
    assert strategy.excluded.get(K, []) == []  # restored history: nothing excluded back then


_WRITER = """
import sys
from cifer_flwr.strategies._checkpoint import Checkpoint, write_checkpoint
path = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    i += 1
    write_checkpoint(path, Checkpoint({"round": i}, bytes([i % 256]) * 8_000_000, b""))
"""


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_sigkill_during_checkpoint_writes_leaves_a_valid_file(tmp_path):
    """SIGKILL a process that keeps rewriting a checkpoint: the file always reads back."""
    ckpt = tmp_path / "run.ckpt"
    leftovers = 0
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(ckpt)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + float(rng.uniform(0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if ckpt.exists():
            state = read_checkpoint(ckpt)  # never a half-written checkpoint
            assert state.model == bytes([state.state["round"] % 256]) * 8_000_000
        leftovers += len(list(tmp_path.glob(f".run.ckpt{CHECKPOINT_TMP_MARK}*")))
        remove_temp_files(ckpt)
        assert not list(tmp_path.glob(f".run.ckpt{CHECKPOINT_TMP_MARK}*"))
    assert ckpt.exists()
    print(f"temp files left by SIGKILL before cleanup: {leftovers} of 5")
