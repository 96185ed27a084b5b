"""A simulation's task process starts within Flower's heartbeat window, or the run stops.

Flower's SuperLink takes back a claimed task whose process sent no heartbeat within 30 s
and starts another one (issue 22: on a busy machine no round in 550 s, 36 "Runtime
task-token authentication failed" lines, 4 restarts). ``flwr-simulation`` spent ~20 s of
CPU importing TensorFlow before its first heartbeat; the start-up hook of cifer's
simulations defers that import, and :class:`RestartWatch` stops a run at the first restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import Federation, ProcessInfo
from cifer_flwr.tooling.federation.runs import (
    TOKEN_REVOKED,
    RestartWatch,
    TaskRestartedError,
    _wait_watching,
)
from cifer_flwr.tooling.federation.simulation import PRELOAD_DIR

REVOKED_LINE = (
    f"\x1b[91mERROR \x1b[0m:     [/v1/runtime/pull-task-input][ApiError:1008] {TOKEN_REVOKED}.\n"
)


def _fed(tmp_path: Path) -> tuple[Federation, Path]:
    log = tmp_path / "logs" / "superlink.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"an earlier run's restart: {REVOKED_LINE}")
    info = ProcessInfo("superlink", 1, ["flower-superlink"], str(log))
    return Federation(directory=tmp_path, address="127.0.0.1:1", processes=[info]), log


def test_watch_sees_only_revocations_after_it_started(tmp_path):
    fed, log = _fed(tmp_path)
    watch = RestartWatch(fed)
    assert not watch.restarted()  # the earlier line is not this run's
    with open(log, "a") as f:
        f.write('INFO "POST /v1/runtime/send-task-heartbeat HTTP/1.1" 200\n')
        f.write(REVOKED_LINE[:40])  # a line still being written
        f.flush()
        assert not watch.restarted()
        f.write(REVOKED_LINE[40:])
    assert watch.restarted()
    message = str(watch.error(42))
    assert "run 42 was stopped" in message and "30 s" in message
    assert TOKEN_REVOKED in message and str(log) in message
    assert "CPUs" in message and "quieter" in message


def test_wait_stops_at_the_first_restart_not_at_the_timeout(tmp_path):
    fed, log = _fed(tmp_path)
    watch = RestartWatch(fed)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):  # no restart: the timeout as before
            _wait_watching(sleeper, 1.5, watch, 7)
        with open(log, "a") as f:
            f.write(REVOKED_LINE)
        with pytest.raises(TaskRestartedError, match="run 7 was stopped"):
            _wait_watching(sleeper, 600, watch, 7)
        assert sleeper.poll() is None  # it raised while the stream still ran
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_flower_simulation_utilities_load_without_tensorflow_until_used():
    """Flower imports TensorFlow at module level; under the hook only on first use."""
    pytest.importorskip("flwr.simulation")
    script = """
import json, sys, time
t = time.process_time()
import flwr.simulation.app
from flwr.simulation.ray_transport import utils
out = {"tf-after-flower": "tensorflow" in sys.modules, "TF": repr(utils.TF),
       "cpu-s": time.process_time() - t}
try:
    import importlib.machinery as m
    has_tf = m.PathFinder.find_spec("tensorflow") is not None
except Exception:
    has_tf = False
out["has-tf"] = has_tf
if has_tf:
    version = utils.TF.__version__  # first use: the real import
    out["tf-version-matches"] = version == sys.modules["tensorflow"].__version__
    out["tenseal-first"] = list(sys.modules).index("tenseal") < list(sys.modules).index(
        "tensorflow")
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": str(PRELOAD_DIR)}
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)
    assert out["tf-after-flower"] is False
    if out["has-tf"]:
        assert out["TF"] == "<deferred module 'tensorflow'>"
        assert out["tf-version-matches"] and out["tenseal-first"]
    else:
        assert out["TF"] == "None"  # Flower's own fallback, untouched


def test_preload_leaves_processes_without_flower_alone():
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; print(sorted(m for m in sys.modules if "
            "m.startswith(('flwr', 'tensorflow', 'tenseal', 'cifer_flwr'))))",
        ],
        env={**os.environ, "PYTHONPATH": str(PRELOAD_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.e2e
@pytest.mark.slow
def test_a_simulation_that_cannot_start_fails_at_the_first_restart(tmp_path, monkeypatch):
    """flwr-simulation made to start slower than Flower's window: a clear error, no hang.

    A start-up hook in place of cifer's delays only ``flwr-simulation`` (45 s), as a busy
    machine did; Ray never starts. Without the watch the run would wait for its timeout
    while Flower restarted the process every 30 s.
    """
    pytest.importorskip("ray")
    from cifer_flwr.tooling.federation import simulation as sim
    from cifer_flwr.tooling.federation.runs import run_app

    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if sys.argv and sys.argv[0].endswith('flwr-simulation'):\n"
        "    time.sleep(45)\n"
    )
    monkeypatch.setattr(sim, "PRELOAD_DIR", slow)
    app = Path(__file__).resolve().parents[2] / "cifer_flwr" / "experiments" / "app"
    t0 = time.monotonic()
    with sim.simulation(tmp_path / "fed", nodes=2) as fed:
        with pytest.raises(TaskRestartedError) as err:
            run_app(fed, app, {}, timeout=600, results_path=tmp_path / "results.json")
        family = [p.pid for p in fed.processes] + processes.descendants(
            [p.pid for p in fed.processes]
        )
    print(f"stopped after {time.monotonic() - t0:.0f} s: {err.value}")
    assert "Flower restarted its ServerApp/simulation process" in str(err.value)
    assert not [p for p in family if processes.is_alive(p)]
