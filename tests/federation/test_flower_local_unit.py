"""Flower's local connection helpers without Flower: a stand-in process, real /proc lookups.

The e2e test (tests/e2e/test_flower_local.py) runs the real `flwr run .`; here a process that
looks like Flower's managed SuperLink (program name and ``--log-file``) checks how it is
found, what environment it is said to lack, and that `cifer flower-local down` stops it and
its child and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.constants import ENV_PRIVATE_KEY
from cifer_flwr.tooling.federation import FederationError, processes
from cifer_flwr.tooling.federation.flower_local import (
    DISABLE_INSTALL_ENV,
    FlowerLocal,
    flower_local_env,
    local_superlink_pids,
)
from cifer_flwr.tooling.federation.simulation import PRELOAD_DIR

STAND_IN = """import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
signal.signal(signal.SIGTERM, lambda *_: (child.terminate(), sys.exit(0)))
time.sleep(120)
"""


def start_stand_in(tmp_path: Path, home: Path, env: dict[str, str]) -> subprocess.Popen:
    program = tmp_path / "flower-superlink"
    program.write_text(STAND_IN)
    log = home / "local-superlink" / "superlink.log"
    proc = subprocess.Popen(
        [sys.executable, str(program), "--insecure", "--simulation", "--log-file", str(log)],
        env=env,
    )
    deadline = time.monotonic() + 20
    while len(processes.descendants([proc.pid])) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def test_environment_for_the_local_superlink(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    key = tmp_path / "private.key"
    key.write_bytes(b"x")
    env = flower_local_env(key)
    assert env[DISABLE_INSTALL_ENV] == "1"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PRELOAD_DIR), "/somewhere"]
    assert env[ENV_PRIVATE_KEY] == str(key.resolve())
    with pytest.raises(FederationError, match="cifer keygen"):
        flower_local_env(tmp_path / "missing.key")


def test_env_command_prints_exports_that_a_shell_reads(tmp_path):
    key = tmp_path / "my keys" / "private.key"
    key.parent.mkdir()
    key.write_bytes(b"x")
    res = CliRunner().invoke(
        app, ["flower-local", "env", "--private-key", str(key), "--flwr-home", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    shell = subprocess.run(
        [
            "sh",
            "-c",
            res.stdout + f'\nprintf "%s|%s" "${ENV_PRIVATE_KEY}" "${DISABLE_INSTALL_ENV}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == f"{key.resolve()}|1"


def test_superlink_is_found_by_its_log_file_and_stopped_with_its_children(tmp_path):
    home = tmp_path / "flwr-home"
    other_home = tmp_path / "other-home"
    env = {k: v for k, v in os.environ.items() if k != DISABLE_INSTALL_ENV}
    other_home.mkdir()
    ours = start_stand_in(tmp_path, home, env)
    other = start_stand_in(other_home, other_home, env)
    try:
        assert local_superlink_pids(home) == [ours.pid]
        assert local_superlink_pids(tmp_path / "nowhere") == []
        local = FlowerLocal.at(home)
        assert local.alive() == {"superlink": True}
        # started without the environment: every variable it lacks is named
        lacks = local.missing_env()[ours.pid]
        assert DISABLE_INSTALL_ENV in lacks and "PYTHONPATH" in lacks
        child = processes.descendants([ours.pid])
        assert child
        res = CliRunner().invoke(app, ["flower-local", "down", "--flwr-home", str(home)])
        assert res.exit_code == 0, res.output
        assert f"pid {ours.pid}" in res.output
        assert ours.wait(timeout=10) is not None
        time.sleep(0.3)
        assert not [p for p in child if processes.is_alive(p)]
        assert other.poll() is None  # another FLWR_HOME's SuperLink: untouched
        res = CliRunner().invoke(app, ["flower-local", "down", "--flwr-home", str(home)])
        assert res.exit_code == 0 and "not running" in res.output
        res = CliRunner().invoke(app, ["flower-local", "runs", "--flwr-home", str(home)])
        assert res.exit_code == 2 and "not running" in res.output
    finally:
        for proc in (ours, other):
            if proc.poll() is None:
                processes.stop_pids([proc.pid])


def test_superlink_started_with_the_environment_lacks_nothing(tmp_path):
    home = tmp_path / "flwr-home"
    env = {**os.environ, **flower_local_env()}
    proc = start_stand_in(tmp_path, home, env)
    try:
        assert FlowerLocal.at(home).missing_env() == {}
    finally:
        processes.stop_pids([proc.pid])
