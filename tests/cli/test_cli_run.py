"""`cifer run` refuses bad overrides before anything starts."""

import subprocess
import sys

import pytest

from cifer_flwr.launch import expand_sweep


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["strategy=fedyoga"], "Available options in 'strategy'"),
        (["topology=p2p", "topology.graph=star"], "expected one of [ring, kregular, complete]"),
        (["-m", "strategy=fedavg,fedyogi", "topology.graph=ring,star"], "star"),
        (["num_rounds=0"], "num_rounds must be >= 1"),
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
