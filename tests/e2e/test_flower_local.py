"""`flwr run .` on Flower's own `local` connection, as a user types it (issue 22 item 8).

Flower's CLI starts its managed simulation SuperLink in the background; with the
environment of `cifer flower-local env` it runs the app in this environment (no `uv sync`
of `cifer-flwr`, which is not on the package index). A user's shell session, inside a
loopback-only network namespace when the machine allows one (Flower's SuperLink and Ray
listen on fixed ports; see tests/e2e/test_simulation.py):

1. `eval "$(cifer flower-local env --private-key ...)"`, then `flwr run . --stream` in
   examples/quickstart-sklearn, 2 rounds, encrypted: the results file says ok with every
   round's accuracy, and `cifer flower-local runs` reports `finished:completed`, exit 0;
2. a run with a relative `public-key`: `flwr run` exits 0 anyway, `cifer flower-local runs`
   exits 1 and names the ServerApp's error;
3. `cifer flower-local down`: every process the session started is gone.
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
from cifer_flwr.tooling.federation.flower_local import local_superlink_pids
from tests.e2e.test_simulation import (
    ProcessWatch,
    _addr_of,
    _is_loopback,
    listening_sockets,
    loopback_namespace,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quickstart-sklearn"

SESSION = r"""
set -u
eval "$(cifer flower-local env --private-key "$KEY")"
cd "$EXAMPLE"
# Flower gives its local SuperLink 15 s to start, then kills it: on a busy machine, try again
for try in 1 2 3; do flwr ls --format json > "$OUT/warmup-$try.json" 2>&1 && break; done
flwr run . --stream \
  --run-config "public-key=\"$PUB\" num-server-rounds=2 results-path=\"$OUT/good.json\"" \
  > "$OUT/good.log" 2>&1
echo "flwr-run-good $?"
cifer flower-local runs --json > "$OUT/runs-good.json"
echo "runs-good $?"
flwr run . --stream --run-config 'public-key="keys/public.key" num-server-rounds=2' \
  > "$OUT/bad.log" 2>&1
echo "flwr-run-bad $?"
cifer flower-local runs --json > "$OUT/runs-all.json"
echo "runs-all $?"
cifer flower-local runs > "$OUT/runs-all.txt" 2>&1
cifer flower-local down
echo "down $?"
"""


class LocalWatch(ProcessWatch):
    """Also below Flower's local SuperLink of ``home``: `flwr` detaches it from the shell."""

    def __init__(self, root: int, home: Path) -> None:
        super().__init__(root)
        self.home = home

    def run(self) -> None:
        while not self.done.is_set():
            roots = [self.root, *local_superlink_pids(self.home)]
            for pid in roots[1:] + processes.descendants(roots):
                cmd = " ".join(processes.cmdline(pid))[:400]
                if cmd:
                    self.seen.setdefault(pid, cmd)
                for proto, addr in listening_sockets(pid):
                    self.sockets[(pid, proto, addr)] = self.seen.get(pid, "?")
            self.done.wait(0.3)


@pytest.mark.e2e
@pytest.mark.slow
def test_flwr_run_dot_on_the_local_connection(tmp_path, key_files):
    pytest.importorskip("ray", reason='Ray missing: pip install "cifer-flwr[simulation]"')
    pytest.importorskip("sklearn")
    prefix, how = loopback_namespace()
    if not prefix:  # Flower's local SuperLink has fixed ports; never on a shared network
        pytest.skip(f"needs a loopback-only network namespace: {how}")
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KEY": str(key_files[0]),
        "PUB": str(key_files[1]),
        "OUT": str(tmp_path),
        "EXAMPLE": str(EXAMPLE),
    }
    env.pop("CIFER_PRIVATE_KEY", None)
    env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
    proc = subprocess.Popen(
        [*prefix, "sh", "-c", SESSION],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    watch = LocalWatch(proc.pid, home)
    watch.start()
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        watch.done.set()
        watch.join()
        if proc.poll() is None:
            processes.stop_pids([proc.pid])
        # the session's SuperLink is detached from the shell: stop whatever is left by PID
        left = [pid for pid in watch.seen if processes.is_alive(pid)]
        if left:
            processes.stop_pids(left)
    codes = dict(line.rsplit(" ", 1) for line in out.splitlines() if line.count(" ") == 1)
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert proc.returncode == 0, (out, logs)

    # 1. the encrypted run worked, and Flower says so
    assert codes["flwr-run-good"] == "0", logs["good.log"][-3000:]
    results = json.loads((tmp_path / "good.json").read_text())
    assert results["status"] == "ok", results
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(r["errors"] == [] and r["excluded"] == [] for r in results["rounds"])
    assert results["rounds"][-1]["accuracy"] > 0.8
    # no dependency installation attempted (Flower's exit code 608 when uv sync fails)
    assert "Exit Code: 608" not in logs["good.log"] and "uv sync" not in logs["good.log"]
    assert codes["runs-good"] == "0"
    good = json.loads((tmp_path / "runs-good.json").read_text())
    assert [r["status"] for r in good] == ["finished:completed"]

    # 2. a failed run: Flower's exit code says nothing, ours does, with the reason
    assert codes["flwr-run-bad"] == "0"
    assert codes["runs-all"] == "1"
    runs = json.loads((tmp_path / "runs-all.json").read_text())
    assert [r["status"] for r in runs] == ["finished:completed", "finished:failed"]
    assert "public-key" in runs[1]["details"], runs[1]
    text = (tmp_path / "runs-all.txt").read_text()
    assert f"run {runs[1]['run-id']}:" in text and "public-key" in text

    # 3. everything stopped: SuperLink, SuperExec, flwr-simulation and Ray
    assert codes["down"] == "0"
    seen = set(watch.seen.values())
    assert any("flower-superlink" in c and str(home) in c for c in seen), seen
    assert any("flwr-simulation" in c for c in seen), seen
    assert any("raylet" in c or "gcs_server" in c for c in seen), seen
    assert not left, {pid: watch.seen[pid] for pid in left}
    time.sleep(0.5)
    assert not [pid for pid in watch.seen if processes.is_alive(pid)]
    outside = {k: v for k, v in watch.sockets.items() if not _is_loopback(_addr_of(k[2]))}
    assert not outside, outside
