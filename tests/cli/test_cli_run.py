"""`cifer run` refuses bad overrides before anything starts."""

import subprocess
import sys

import pytest

from cifer_flwr.experiments.launch import expand_sweep


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
