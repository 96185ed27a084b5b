"""`cifer run` claims its output directory before writing anything (issue 18, item 3).

A second run into a directory another run holds stops at once with a CiferError and leaves
every file as it was; a new run into a finished run's directory keeps that run's key pair.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifer_flwr import crypto
from cifer_flwr.exceptions import OutputPathError
from cifer_flwr.tooling.launch import LOCK_FILE, claim_output_dir

RUN_ARGS = ["task=digits-sklearn", "num_rounds=1", "federation.nodes=2", "federation.tls=false"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): (b"<dir>" if p.is_dir() else p.read_bytes())
        for p in sorted(directory.rglob("*"))
    }


def _cifer_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cifer_flwr.cli", "run", *RUN_ARGS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_a_second_run_into_a_claimed_directory_stops_at_once_and_touches_nothing(tmp_path, key):
    """The first run (here a process holding the run lock) keeps its keys and files."""
    run_dir = tmp_path / "outputs" / "run"
    crypto.write_key_pair(key, run_dir / "keys")
    (run_dir / "config.yaml").write_text("first run\n")
    holder_code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(run_dir / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        before = _snapshot(run_dir)
        res = _cifer_run(tmp_path, f"hydra.run.dir={run_dir}", "resume=false")
        after = _snapshot(run_dir)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "in use by another cifer run" in res.stderr
    assert f"PID {holder.pid}" in res.stderr
    assert after == before  # no .hydra/, no config.yaml, no new keys, no federation/
    assert not (run_dir / ".hydra").exists() and not (run_dir / "federation").exists()


def test_a_new_run_into_a_finished_runs_directory_keeps_its_key_pair(tmp_path, key):
    """Without resume=true a run never regenerates another run's keys (it used force=True)."""
    run_dir = tmp_path / "outputs" / "run"
    crypto.write_key_pair(key, run_dir / "keys")
    before = _snapshot(run_dir)
    res = _cifer_run(tmp_path, f"hydra.run.dir={run_dir}")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "already holds keys/private.key" in res.stderr and "resume=true" in res.stderr
    after = _snapshot(run_dir)
    after.pop(LOCK_FILE, None)  # the (released, emptied) lock is all the refusal leaves
    assert after == before


def test_claim_output_dir_is_exclusive_nested_and_released(tmp_path):
    run_dir = tmp_path / "run"
    with claim_output_dir(run_dir) as claimed:
        assert claimed == run_dir.resolve()
        assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with claim_output_dir(run_dir):  # the same run's own nested claim
            pass
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "from cifer_flwr.tooling.launch import claim_output_dir\n"
                f"with claim_output_dir({str(run_dir)!r}): pass\n",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode != 0
        assert "OutputPathError" in other.stderr and f"PID {os.getpid()}" in other.stderr
    with claim_output_dir(run_dir):  # released on exit
        pass


def test_the_run_lock_is_never_opened_through_a_symlink(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run_dir / LOCK_FILE).symlink_to(victim)
    with (
        pytest.raises(OutputPathError, match="cannot open the run lock"),
        claim_output_dir(run_dir),
    ):
        pass
    assert victim.read_text() == "precious\n"
