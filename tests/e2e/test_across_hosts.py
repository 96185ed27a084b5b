"""A federation across hosts: bundles from `cifer federation bundle`, one network namespace each.

The SuperLink and each SuperNode run in a network namespace of their own (a "host" with one
interface), plugged into a bridge in a fourth namespace (the "switch") by veth links; the
addresses (10.220.0.0/24) exist only inside these namespaces. Every process is started with
nothing but its bundle's ``start.sh`` (the flwr CLI through the SuperLink bundle's
``flwr.sh``), with TLS for the bundle's address and SuperNode authentication, as the README's
"Run across machines" says. An encrypted run of the PyTorch example finishes; the processes
are stopped by PID and the namespaces deleted afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifer_flwr import crypto
from cifer_flwr.statistics import decrypt_model_and_scaling
from cifer_flwr.tooling.demo import evaluate_with_example, find_example
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.audit import find_secret_key
from cifer_flwr.tooling.federation.bundle import BUNDLE_CONNECTION, make_bundles
from cifer_flwr.tooling.federation.local import flower_env, parse_json_output
from cifer_flwr.tooling.federation.runs import to_toml

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

SUBNET = "10.220.0"
LINK_IP = f"{SUBNET}.1"
NODES = 2
ROUNDS = 1
EXAMPLE = find_example("quickstart-pytorch")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def lan(hosts: list[str]) -> Iterator[dict[str, str]]:
    """Namespaces ``{host: namespace}`` on one bridged /24 (host i gets .i+1); deleted after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) to make network namespaces")
    tag = f"cfl{os.getpid() % 100000}"
    switch = f"{tag}-sw"
    names = {host: f"{tag}-{i}" for i, host in enumerate(hosts)}
    made: list[str] = []
    try:
        for ns in (switch, *names.values()):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, ns in enumerate(names.values()):
            port = f"p{i}"
            _ip(
                "-n",
                switch,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _in(ns: str, *args: str, cwd: Path, env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        ["ip", "netns", "exec", ns, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _flwr(ns: str, bundle: Path, env: dict[str, str], *args: str, timeout: float = 120):
    """``./flwr.sh ARGS --format json`` on the SuperLink host; the JSON, ``success`` checked."""
    res = _in(
        ns,
        "sh",
        str(bundle / "flwr.sh"),
        *args,
        "--format",
        "json",
        cwd=bundle,
        env=env,
        timeout=timeout,
    )
    data = parse_json_output(res.stdout)
    assert data is not None and data.get("success"), (args, res.stdout[-2000:], res.stderr[-2000:])
    return data


def _wait(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"{what} did not happen in {timeout:g} s")


def test_encrypted_run_across_hosts_from_bundles(tmp_path, key_files):
    private, public = key_files
    bundles = make_bundles(
        tmp_path / "bundles",
        superlink_address=LINK_IP,
        nodes=NODES,
        private_key=private,
        public_key=public,
    )
    link = bundles.superlink
    # what each host gets: the SuperLink never a CKKS secret key or a node's auth key
    hits, scanned = find_secret_key([link], private)
    assert scanned >= 8 and hits == []
    assert not list(link.rglob("auth.key")) and not list(link.rglob(crypto.PRIVATE_KEY_FILE))
    logs = tmp_path / "logs"
    started: list[int] = []
    hosts = ["superlink", *[f"supernode-{i}" for i in range(NODES)]]
    with lan(hosts) as ns:
        try:
            home = tmp_path / "home"
            env = {h: flower_env(home / h) for h in hosts}  # a FLWR_HOME per host
            for h in hosts:
                (home / h).mkdir(parents=True)
            started.append(
                processes.spawn(
                    ["ip", "netns", "exec", ns["superlink"], "sh", str(link / "start.sh")],
                    log_path=logs / "superlink.log",
                    env=env["superlink"],
                    cwd=home / "superlink",
                    tied=True,
                )
            )
            cli_env = env["superlink"]
            _wait(
                "SuperLink up",
                lambda: _in(
                    ns["superlink"],
                    "sh",
                    str(link / "flwr.sh"),
                    "supernode",
                    "ls",
                    BUNDLE_CONNECTION,
                    "--format",
                    "json",
                    cwd=link,
                    env=cli_env,
                ).stdout.count('"success": true'),
            )
            for i in range(NODES):
                pub = f"supernodes/supernode-{i}.pub"
                _flwr(
                    ns["superlink"], link, cli_env, "supernode", "register", pub, BUNDLE_CONNECTION
                )
            for i, node in enumerate(bundles.supernodes):
                started.append(
                    processes.spawn(
                        ["ip", "netns", "exec", ns[f"supernode-{i}"], "sh", str(node / "start.sh")],
                        log_path=logs / f"supernode-{i}.log",
                        env=env[f"supernode-{i}"],
                        cwd=home / f"supernode-{i}",
                        tied=True,
                    )
                )

            def online() -> bool:
                rows = _flwr(ns["superlink"], link, cli_env, "supernode", "ls", BUNDLE_CONNECTION)
                return sum(r.get("status") == "online" for r in rows.get("nodes", [])) == NODES

            _wait("both SuperNodes online", online)

            results, model = tmp_path / "results.json", tmp_path / "model.enc"
            config = tmp_path / "run.toml"
            config.write_text(
                to_toml(
                    {
                        "num-server-rounds": ROUNDS,
                        "public-key": str(link / crypto.PUBLIC_KEY_FILE),
                        "results-path": str(results),
                        "save-path": str(model),
                    }
                )
            )
            run = _flwr(
                ns["superlink"],
                link,
                cli_env,
                "run",
                str(EXAMPLE),
                BUNDLE_CONNECTION,
                "--run-config",
                str(config),
                timeout=180,
            )
            run_id = str(run["run-id"])
            stream = _in(
                ns["superlink"],
                "sh",
                str(link / "flwr.sh"),
                "log",
                run_id,
                BUNDLE_CONNECTION,
                "--stream",
                cwd=link,
                env=cli_env,
                timeout=600,
            )
            status = _flwr(
                ns["superlink"], link, cli_env, "ls", BUNDLE_CONNECTION, "--run-id", run_id
            )
            assert status["runs"][0]["status"] == "finished:completed", (
                status,
                stream.stdout[-3000:],
            )
        finally:
            left = processes.stop_pids(started)
    assert left == [], f"processes {left} survived"

    out = json.loads(results.read_text())
    assert out["status"] == "ok" and out["encrypted"], out
    assert [r["round"] for r in out["rounds"]] == list(range(1, ROUNDS + 1))
    for row in out["rounds"]:
        assert row["train-replies"] == NODES and row["errors"] == [] and row["excluded"] == []
    # the model the server saved is a ciphertext only a SuperNode bundle's key opens
    # (with the federation's feature scaling beside it: the CNN cannot absorb it, §4.10)
    key = bundles.supernodes[0] / crypto.PRIVATE_KEY_FILE
    arrays, scaling = decrypt_model_and_scaling(model, key)
    accuracy = evaluate_with_example(EXAMPLE, arrays, out["run-config"], scaling)["accuracy"]
    print(f"accuracy after {ROUNDS} round(s) across hosts: {accuracy:.3f}")
    assert accuracy > 0.3
    # the SuperNodes reached the SuperLink over the links, from their own addresses, over TLS
    access = (logs / "superlink.log").read_text()
    assert f"Starting the SuperLink Fleet HTTP API on {LINK_IP}:" in access
    for i in range(NODES):
        assert f"{SUBNET}.{i + 2}:" in access, f"no request from supernode-{i}'s address"
    assert "Uvicorn running on https://" in access
    # nothing outlived the test
    assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
        f"cfl{os.getpid() % 100000}-"
    )
