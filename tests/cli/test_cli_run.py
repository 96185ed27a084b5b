"""`cifer run` refuses bad overrides before anything starts."""

import subprocess
import sys

import pytest

from cifer_flwr.tooling.launch import expand_sweep


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["strategy=fedyoga"], "fedyogi"),  # the valid names are listed
        (["topology=p2p", "topology.graph=star"], "expected one of [ring, kregular, complete]"),
        (["-m", "strategy=fedavg,fedyogi", "topology.graph=ring,star"], "star"),
        (["num_rounds=0"], "num_rounds must be >= 1"),
        (["resume=true", "encryption=none"], "resume=true needs encryption"),
        (["resume=true", "topology=p2p"], "resume=true needs topology=centralized"),
        (["resume=maybe"], "resume"),
        (["resume=true"], "hydra.run.dir=<that directory>"),
    ],
)
def test_wrong_override_fails_before_anything_starts(tmp_path, args, expected):
    res = subprocess.run(
        [sys.executable, "-m", "cifer_flwr.cli", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert expected in res.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs, no keys, no federation


def test_expand_sweep():
    combos = expand_sweep(["strategy=fedavg,fedyogi", "encryption=ckks,none", "num_rounds=2"])
    assert len(combos) == 4
    assert ["strategy=fedyogi", "encryption=none", "num_rounds=2"] in combos


def test_resume_without_a_checkpoint_is_refused_before_anything_starts(tmp_path):
    run_dir = tmp_path / "outputs" / "fresh"
    res = subprocess.run(
        [sys.executable, "-m", "cifer_flwr.cli", "run", "resume=true", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "holds no checkpoint" in res.stderr and "hydra.run.dir" in res.stderr
    assert not (run_dir / "keys").exists() and not (run_dir / "federation").exists()


def _cifer_run(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "cifer_flwr.cli", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("path", ["/nonexistent.csv", "data/missing.csv"])
def test_a_missing_dataset_path_fails_before_keys_or_federation(tmp_path, path):
    """Issue 22: it failed after 45 s (keys made, federation up), with a wrong hint."""
    res = _cifer_run(tmp_path, "task=digits-sklearn", f"task.dataset_path={path}")
    assert res.returncode == 2, res.stderr
    assert path in res.stderr and "does not exist" in res.stderr
    # the 'absolute path' advice only where it helps: for a relative path
    assert ("use an absolute path" in res.stderr) == (not path.startswith("/"))
    assert list(tmp_path.iterdir()) == []  # no outputs, no keys, no federation


def test_resuming_a_finished_run_is_refused_before_anything_starts(tmp_path):
    """Issue 22: it started a federation and said 'running 3 rounds'."""
    import json

    from cifer_flwr import crypto

    run_dir = tmp_path / "outputs" / "done"
    crypto.generate_key_pair("default", run_dir / "keys")
    (run_dir / "results.ckpt").write_bytes(b"checkpoint")
    rows = [{"round": r} for r in (1, 2)]
    (run_dir / "results.json").write_text(json.dumps({"status": "ok", "rounds": rows}))
    res = _cifer_run(
        tmp_path, "task=digits-sklearn", "num_rounds=2", "resume=true", f"hydra.run.dir={run_dir}"
    )
    assert res.returncode == 2, res.stderr
    assert "finished" in res.stderr and "nothing to resume" in res.stderr
    assert not (run_dir / "federation").exists()


def test_progress_words_match_the_run():
    """Issue 22: p2p printed '(fedavg, p2p)'; the final accuracy had 16 digits."""
    from pathlib import Path

    from cifer_flwr.experiments.config import compose
    from cifer_flwr.tooling.launch import describe_run, done_line

    assert describe_run(compose(["topology=p2p", "topology.graph=ring"])) == (
        "p2p gossip on a ring graph, no aggregating server"
    )
    assert describe_run(compose(["strategy=fedyogi"])) == "fedyogi, centralized"
    results = {"rounds": [{"round": 3, "accuracy": 0.7381615598885795}]}
    line = done_line(results, Path("outputs/x"))
    assert line == "done: final accuracy 0.7382; outputs in outputs/x"
    assert done_line({"rounds": []}, Path("o")) == "done: no round completed; outputs in o"
