"""`cifer run` on real local deployments (SuperLink + SuperNodes on 127.0.0.1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifer_flwr import crypto, protocol
from cifer_flwr.tooling.federation.processes import is_alive
from tests.e2e.test_simulation import plaintext_oracle

pytestmark = pytest.mark.e2e
CIFER = [sys.executable, "-m", "cifer_flwr.cli"]
SMALL = ["task=digits-sklearn", "federation.tls=false"]


def cifer(args, cwd, timeout=900):
    Path(cwd).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [*CIFER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("metrics.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_processes_gone(run_dir: Path):
    state = json.loads((run_dir / "federation" / "federation.json").read_text())
    pids = [p["pid"] for p in state["processes"]]
    assert pids and not [pid for pid in pids if is_alive(pid)]


def test_centralized_fedyogi_writes_config_metrics_plot_and_model(tmp_path):
    res = cifer(
        [
            "run",
            "strategy=fedyogi",
            "topology=centralized",
            "num_rounds=2",  # round 2 applies round 1's FedYogi moments
            "federation.nodes=2",
            *SMALL,
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "outputs")
    for name in (
        "config.yaml",
        ".hydra/config.yaml",
        "metrics.json",
        "metrics.png",
        "final_model.enc",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # one results document: metrics.json names results.json, no second copy (issue 22)
    assert (run_dir / "metrics.json").is_symlink() and (run_dir / "results.json").is_file()
    rows = metrics["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    assert metrics["encrypted"] and metrics["strategy"] == "fedyogi"
    assert all(r["bytes-sent"] > 0 and r["errors"] == [] for r in rows)
    assert rows[-1]["accuracy"] > 0.8
    # one line per round on stdout as the run goes (issue 22), not only in run.log
    for r in (1, 2):
        assert f"[cifer] round {r}/2: replies 2 accepted, 0 excluded, accuracy " in res.stdout
    # the saved model is encrypted; the key holder materializes the pending FedYogi step
    key = crypto.load_private_key(run_dir / "keys" / "private.key")
    parts = crypto.bundle_from_bytes((run_dir / "final_model.enc").read_bytes(), key)
    model, state = protocol.materialize(parts, key)
    assert state is not None and model["coef"].shape == (10, 64)
    assert_processes_gone(run_dir)


def test_p2p_ring_reaches_centralized_accuracy(tmp_path, key_files):
    """The centralized accuracy is the same experiment's FedAvg run in process, in the clear:
    encrypted FedAvg on a deployment matches it per round (tests/e2e/test_simulation.py,
    tests/e2e/test_deployment.py), so no second deployment is needed for it."""
    common = ["num_rounds=3", "federation.nodes=3", *SMALL]
    p2p = cifer(["run", "topology=p2p", "topology.graph=ring", *common], tmp_path / "p")
    assert p2p.returncode == 0, p2p.stdout[-3000:] + p2p.stderr[-3000:]
    p_dir = only_run_dir(tmp_path / "p")
    p_rows = json.loads((p_dir / "metrics.json").read_text())["rounds"]
    central = plaintext_oracle(["strategy=fedavg", *common], key_files)
    assert len(central) == len(p_rows) == 3
    assert p_rows[-1]["accuracy"] >= central[-1] - 0.05, (p_rows[-1], central)
    dist = [r["consensus-distance"] for r in p_rows[1:]]
    assert dist[-1] < dist[0], dist
    assert all(r["dropped"] == [] for r in p_rows)
    assert not (p_dir / "final_model.enc").exists()  # no global model in p2p
    assert_processes_gone(p_dir)


def test_two_run_sweep_and_report(tmp_path):
    res = cifer(
        ["run", "-m", "strategy=fedavg,fedyogi", "num_rounds=2", "federation.nodes=2", *SMALL],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweep_dirs = list((tmp_path / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 1
    assert len(list(sweep_dirs[0].rglob("metrics.json"))) == 2
    rep = cifer(["report", str(sweep_dirs[0])], tmp_path)
    assert rep.returncode == 0, rep.stderr
    table = (sweep_dirs[0] / "report.md").read_text()
    assert "| fedavg |" in table and "| fedyogi |" in table
    assert (sweep_dirs[0] / "report.png").stat().st_size > 10_000
