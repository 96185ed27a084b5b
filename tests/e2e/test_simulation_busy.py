"""`cifer run federation=simulation` finishes beside CPU hogs (issue 22).

On a busy 2-core machine a 3-node simulation once finished no round in 550 s: Flower's
SuperLink restarted ``flwr-simulation`` every 30 s because it had not sent its first
heartbeat yet (it spent ~20 s of CPU importing TensorFlow first), and each restart added
load. Here CPU-bound processes (twice the CPU count, at most 4, normal priority) run beside
the simulation; the run must finish its round and the SuperLink must never have revoked a
task token (no restart). Before the fix this failed on this machine. Ray runs in a
loopback-only network namespace, as in ``test_simulation.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cifer_flwr.tooling.federation.runs import TOKEN_REVOKED
from tests.e2e.test_simulation import loopback_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOGS = min(4, 2 * (os.cpu_count() or 1))
CIFER = [sys.executable, "-m", "cifer_flwr.cli"]


def test_simulation_finishes_beside_cpu_hogs(tmp_path):
    pytest.importorskip("ray", reason='Ray missing: pip install "cifer-flwr[simulation]"')
    prefix, how = loopback_namespace()
    print(f"simulation network: {how}; {HOGS} CPU hogs")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    args = [
        *prefix,
        *CIFER,
        "run",
        "federation=simulation",
        "federation.nodes=3",
        "federation.timeout=600",
        "num_rounds=1",
        "task=digits-sklearn",
        "hydra.run.dir=out",
    ]
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(HOGS):
            hogs.append(subprocess.Popen([sys.executable, "-c", "while 1: pass"]))
        res = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        for hog in hogs:
            os.kill(hog.pid, signal.SIGKILL)
            hog.wait()
    output = res.stdout + res.stderr
    superlink_log = (tmp_path / "out" / "federation" / "logs" / "superlink.log").read_text()
    assert TOKEN_REVOKED not in superlink_log, "Flower restarted flwr-simulation"
    run_log = tmp_path / "out" / "run.log"
    tail = run_log.read_text()[-2000:] if run_log.is_file() else "(no run.log)"
    assert res.returncode == 0, (output[-3000:], tail, superlink_log[-3000:])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["encrypted"] and metrics["nodes"] == 3
    assert [r["round"] for r in metrics["rounds"]] == [1]
    assert metrics["rounds"][0]["errors"] == []
    assert metrics["rounds"][0]["accuracy"] > 0.5
