"""Data partitioners and the app building blocks (strategy from run config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import strategies
from cifer_flwr.apps.data import (
    load_dataset,
    load_partition,
    partition_dirichlet,
    partition_iid,
)
from cifer_flwr.apps.runconfig import encryption_enabled, make_strategy
from cifer_flwr.exceptions import ConfigError, KeyTypeError


def test_iid_partitions_cover_everything_once():
    parts = partition_iid(101, 4, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(101))
    assert {len(p) for p in parts} <= {25, 26}
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, partition_iid(101, 4, seed=1), strict=True)
    )


def test_dirichlet_is_skewed_and_complete():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_dirichlet(labels, 5, alpha=0.1, seed=0, min_size=10)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    shares = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
    assert max(s.max() for s in shares) > 0.3  # label skew
    with pytest.raises(ConfigError):
        partition_dirichlet(labels, 5, alpha=0)


def test_digits_partition_offline():
    ds = load_dataset("digits", seed=0)
    assert ds.x_train.shape[1] == 64 and ds.num_classes == 10
    assert abs(float(ds.x_train.mean())) < 1e-3
    part = load_partition(ds, 1, 3, partitioner="non-iid", alpha=0.5, seed=0)
    assert len(part.y_train) > 10 and len(part.y_test) > 10
    with pytest.raises(ConfigError, match="partition-id"):
        load_partition(ds, 3, 3)
    with pytest.raises(ConfigError, match="partitioner"):
        load_partition(ds, 0, 3, partitioner="zipf")
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("cifar")


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedyogi", "fedadam", "fedadagrad"])
def test_make_strategy_encrypted_and_plaintext(name, key_files):
    _, pub = key_files
    enc = make_strategy({"strategy": name, "public-key": str(pub), "server-lr": 0.1})
    plain = make_strategy({"strategy": name, "encryption": False, "server-lr": 0.1})
    assert type(enc).__module__.startswith("cifer_flwr.strategies")
    assert type(enc).__name__ == type(plain).__name__
    assert isinstance(plain, getattr(flwr_strategy, type(plain).__name__))
    if name in ("fedyogi", "fedadam", "fedadagrad"):
        assert enc.eta == plain.eta == 0.1


def test_make_strategy_refuses_bad_config(key_files, tmp_path):
    priv, pub = key_files
    with pytest.raises(ConfigError, match="public-key"):
        make_strategy({"strategy": "fedavg"})
    with pytest.raises(ConfigError, match="absolute"):
        make_strategy({"public-key": "keys/x/public.key"})
    with pytest.raises(ConfigError, match="unknown"):
        make_strategy({"strategy": "krum", "public-key": str(pub)})
    with pytest.raises(KeyTypeError):
        make_strategy({"public-key": str(priv)})
    assert isinstance(
        make_strategy({"strategy": "securefed", "public-key": str(pub)}), strategies.SecureFed
    )


def test_encryption_flag():
    assert encryption_enabled({}) and encryption_enabled({"encryption": True})
    assert not encryption_enabled({"encryption": False})
    assert not encryption_enabled({"encryption": "false"})


def test_results_file_is_rewritten_after_every_round(tmp_path):
    """A killed run keeps its completed rounds: the file holds r-1 rows when round r starts."""
    import json

    from flwr.app import Context, RecordDict

    from cifer_flwr.apps.run import run_strategy
    from tests.strategies.harness import InProcessGrid, make_client_app, plain_initial

    results = tmp_path / "run.json"
    seen_rows: list[tuple[str, int]] = []

    def peek(call, replies):
        data = json.loads(results.read_text())
        seen_rows.append((data["status"], len(data["rounds"])))
        return replies

    grid = InProcessGrid(make_client_app({}, encrypted=False), {1: {}, 2: {}}, tamper=peek)
    cfg = {"num-server-rounds": 3, "results-path": str(results), "encryption": False}
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
    strategy = make_strategy({"encryption": False, "min-nodes": 2})
    run_strategy(strategy, grid, context, plain_initial())
    # pushes: train 1, evaluate 1, train 2, ... -> rows on disk before each of them
    assert seen_rows == [("running", n) for n in (0, 0, 1, 1, 2, 2)]
    final = json.loads(results.read_text())
    assert final["status"] == "ok" and final["run-id"] == 7
    assert [r["round"] for r in final["rounds"]] == [1, 2, 3]
    assert final["resumed-after-round"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left


def test_resume_options_and_checkpoint_path(key_files, tmp_path):
    from cifer_flwr.apps.runconfig import checkpoint_path, resume_requested

    _, pub = key_files
    assert checkpoint_path({"results-path": "/r/run.json"}) == Path("/r/run.ckpt")
    assert checkpoint_path({"save-path": "/r/model.enc"}) == Path("/r/model.ckpt")
    explicit = {"results-path": "/r/run.json", "checkpoint-path": "/c/x.ckpt"}
    assert checkpoint_path(explicit) == Path("/c/x.ckpt")
    assert checkpoint_path({}) is None
    with pytest.raises(ConfigError, match="absolute"):
        checkpoint_path({"checkpoint-path": "x.ckpt"})
    assert resume_requested({"resume": "true"}) and not resume_requested({})
    # the plaintext baseline keeps no checkpoint: refused before anything starts
    with pytest.raises(ConfigError, match="plaintext baseline"):
        make_strategy({"encryption": False, "resume": True})
    with pytest.raises(ConfigError, match="checkpoint"):
        make_strategy({"public-key": str(pub), "resume": True})
