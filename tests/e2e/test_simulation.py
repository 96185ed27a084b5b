"""Encrypted FL in Flower's simulation runtime (Ray): `cifer run federation=simulation`.

20 virtual SuperNodes, encrypted FedAvg and SecureFed for 2 rounds on digits-sklearn, against
the oracle: the same experiment with Flower's own plaintext FedAvg (generic app, in process).
The run goes inside a loopback-only network namespace when this machine allows one
(``unshare -n`` as root, ``unshare -rn`` otherwise, then ``ip link set lo up``); otherwise
Ray is only pinned to 127.0.0.1 (docs/design.md §7). Either way, every TCP/UDP socket any
process of the run listens on is checked to be on loopback, and every process the run
started (SuperLink, flwr-simulation, Ray's GCS server, raylet, workers) must be gone after.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cifer_flwr.exceptions import ConfigError, MissingExtraError
from cifer_flwr.experiments.config import compose, overrides_to_string
from cifer_flwr.extras import install_command
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.launch import run_experiment, validate_sweep

NODES = 20
ROUNDS = 2
COMMON = [
    "federation=simulation",
    f"federation.nodes={NODES}",
    f"num_rounds={ROUNDS}",
    "task=digits-sklearn",
]
CIFER = [sys.executable, "-m", "cifer_flwr.cli"]


# ----------------------------------------------------------------------------- namespace
def loopback_namespace() -> tuple[list[str], str]:
    """(command prefix, description): run a command in a loopback-only network namespace.

    An empty prefix when this machine allows no namespace (then Ray is only pinned).
    """
    if not (shutil.which("unshare") and shutil.which("ip")):
        return [], "no unshare/ip here: Ray pinned to 127.0.0.1 without a namespace"
    tries = ([["-n"]] if os.geteuid() == 0 else []) + [["-rn"]]
    why = ""
    for flags in tries:
        probe = subprocess.run(
            ["unshare", *flags, "sh", "-c", "ip link set lo up && ip -o addr show"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        addrs = [line.split()[1] for line in probe.stdout.splitlines() if line.strip()]
        if probe.returncode == 0 and addrs and set(addrs) == {"lo"}:
            prefix = ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
            return prefix, f"loopback-only namespace (unshare {' '.join(flags)})"
        lines = (probe.stderr or probe.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit code {probe.returncode}"
    return [], f"unshare refused ({why}): Ray pinned to 127.0.0.1 without a namespace"


# ----------------------------------------------------------------------------- sockets
def _address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def _is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets(pid: int) -> list[tuple[str, str]]:
    """(protocol, local address) of every listening TCP / bound UDP socket ``pid`` holds."""
    try:
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
        }
    except OSError:  # gone meanwhile
        return []
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            listening = cols[3] == "0A" if proto.startswith("tcp") else cols[3] == "07"
            if listening and cols[9] in inodes:
                host, port = cols[1].split(":")
                found.append((proto, f"{_address(host)}:{int(port, 16)}"))
    return found


class ProcessWatch(threading.Thread):
    """Polls the process tree below ``root``: every PID and command, every listening socket."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.seen: dict[int, str] = {}
        self.sockets: dict[tuple[int, str, str], str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in processes.descendants([self.root]):
                cmd = " ".join(processes.cmdline(pid))[:400]
                if cmd:
                    self.seen.setdefault(pid, cmd)
                for proto, addr in listening_sockets(pid):
                    self.sockets[(pid, proto, addr)] = self.seen.get(pid, "?")
            self.done.wait(0.3)


# ----------------------------------------------------------------------------- oracle
def plaintext_oracle(overrides: list[str], key_files) -> list[float]:
    """Per-round accuracy of the experiment ``overrides`` with Flower's plaintext FedAvg, in
    process: the generic app's ClientApp on an InProcessGrid of ``federation.nodes`` nodes."""
    from cifer_flwr.experiments.app.client_app import app as client_app
    from cifer_flwr.experiments.experiment import run_on_grid
    from tests.strategies.harness import InProcessGrid

    exp = compose([*overrides, "encryption=none"])
    nodes = exp.federation.nodes
    grid = InProcessGrid(
        client_app,
        {
            n + 1: {"partition-id": n, "num-partitions": nodes, "private-key": str(key_files[0])}
            for n in range(nodes)
        },
    )
    for ctx in grid.contexts.values():
        ctx.run_config = {"hydra-overrides": overrides_to_string(exp)}
    res = run_on_grid(grid, exp)
    return [row["accuracy"] for row in res["rounds"]]


# ----------------------------------------------------------------------------- tests
@pytest.mark.e2e
@pytest.mark.slow
def test_encrypted_fedavg_and_securefed_in_simulation_match_plaintext(tmp_path, key_files):
    pytest.importorskip("ray", reason='Ray missing: pip install "cifer-flwr[simulation]"')
    prefix, how = loopback_namespace()
    print(f"simulation network: {how}")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    args = [*prefix, *CIFER, "run", "-m", "strategy=fedavg,securefed", *COMMON]
    with open(tmp_path / "cifer.log", "w") as out:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        watch = ProcessWatch(proc.pid)
        watch.start()
        try:
            rc = proc.wait(timeout=600)
        finally:
            watch.done.set()
            watch.join()
            if proc.poll() is None:
                processes.stop_pids([proc.pid])
    output = (tmp_path / "cifer.log").read_text()
    assert rc == 0, output[-4000:]

    # every process the run started is gone; Ray's were among them (the watch saw them)
    ray = [cmd for cmd in watch.seen.values() if "raylet" in cmd or "gcs_server" in cmd]
    assert ray, f"no Ray process seen: {sorted(set(watch.seen.values()))[:20]}"
    assert any("flwr-simulation" in cmd for cmd in watch.seen.values())
    time.sleep(0.5)
    left = {pid: cmd for pid, cmd in watch.seen.items() if processes.is_alive(pid)}
    assert not left, left
    # Ray's session files went to a private temp directory, removed afterwards
    ray_dirs = {m for cmd in ray for m in re.findall(r"/[^ =]*/cifer-ray-[^/ ]+", cmd)}
    assert ray_dirs, ray
    assert not [d for d in ray_dirs if Path(d).exists()], ray_dirs
    # Ray and Flower listened on loopback only
    assert watch.sockets, "no listening socket seen"
    outside = {k: v for k, v in watch.sockets.items() if not _is_loopback(_addr_of(k[2]))}
    assert not outside, outside

    oracle = {"fedavg": plaintext_oracle([*COMMON, "strategy=fedavg"], key_files)}
    oracle["securefed"] = oracle["fedavg"]  # SecureFed without clipping/noise = FedAvg
    runs = sorted((tmp_path / "multirun").rglob("metrics.json"))
    assert len(runs) == 2, runs
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["encrypted"] and metrics["nodes"] == NODES
        rows = metrics["rounds"]
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        assert all(r["errors"] == [] and r["bytes-sent"] > 0 for r in rows)
        got = [r["accuracy"] for r in rows]
        want = oracle[metrics["strategy"]]
        assert got == pytest.approx(want, abs=0.005), (metrics["strategy"], got, want)
        assert got[-1] > 0.85
        # the state file lists what was started; none of it runs
        state = json.loads((path.parent / "federation" / "federation.json").read_text())
        assert state["num_partitions"] == NODES
        assert not [p["pid"] for p in state["processes"] if processes.is_alive(p["pid"])]


def _addr_of(hostport: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(hostport.rsplit(":", 1)[0])


def test_missing_ray_is_one_line_before_any_key_or_process(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `[simulation]` was not installed
    exp = compose(COMMON)
    with pytest.raises(MissingExtraError) as err:
        run_experiment(exp, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert install_command(["simulation"]) in message
    assert not (tmp_path / "keys").exists() and not (tmp_path / "federation").exists()
    with pytest.raises(MissingExtraError):  # `cifer run` validates every run before starting
        validate_sweep([*COMMON, "strategy=fedavg,fedyogi"], multirun=True)


@pytest.mark.parametrize("option", ["federation.tls=true", "federation.auth=true"])
def test_simulation_refuses_tls_and_auth_before_anything_starts(tmp_path, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")) as err:
        validate_sweep([*COMMON, option], multirun=False)
    assert "federation=local" in str(err.value)  # the fix
