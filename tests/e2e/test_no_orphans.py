"""No orphans: `cifer run` killed mid-round leaves no process of its own behind.

The test starts the real console script, waits until the federation is running a round
(SuperLink + SuperNodes + the ServerApp and ClientApp processes exist), records every
descendant through /proc, signals `cifer run`, and checks that each is gone within 30 s
and that none was ever orphaned on the way (handed to init because the supervisor above it
had already exited: Flower's helpers then only stop when they notice their parent is gone).
SIGTERM exercises the Ctrl-C teardown; SIGKILL the parent-death-signal supervisors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifer_flwr.tooling.federation.processes import cmdline, descendants, is_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CIFER = shutil.which("cifer") or str(Path(sys.executable).parent / "cifer")
ARGS = [
    "run",
    "task=digits-sklearn",
    "encryption=none",
    "federation.tls=false",
    "federation.nodes=2",
    "num_rounds=200",
]


#: How long the tree may take to go on a loaded machine: the supervisors' grace (3 s), then
#: their SIGKILL. A process still alive after this is an orphan.
ORPHAN_DEADLINE = 30.0


def _parent(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2 :].split()[1])


def _survivors(
    family: list[int], *, within: float, roots: frozenset[int] = frozenset()
) -> tuple[list[int], dict[int, str]]:
    """The processes of ``family`` still alive once ``within`` seconds have passed.

    Also returns the orphans seen meanwhile: processes of ``family`` (other than ``roots``,
    the direct children of the signalled process) whose parent was outside ``family``.
    """
    deadline = time.monotonic() + within
    orphans: dict[int, str] = {}
    left = [p for p in family if is_alive(p)]
    while left:
        for pid in left:
            parent = _parent(pid)
            if pid not in roots and parent is not None and parent not in family:
                orphans.setdefault(pid, f"{_names([pid])[0]} (parent {parent})")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
        left = [p for p in left if is_alive(p)]
    return left, orphans


def _names(pids: list[int]) -> list[str]:
    return [" ".join(cmdline(p))[:120] for p in pids]


def _wait_for_round(proc: subprocess.Popen[bytes], timeout: float = 180.0) -> list[int]:
    """Descendants of ``proc`` once a ServerApp and ClientApps are running a round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "cifer run ended before the round started"
        family = descendants([proc.pid])
        joined = " ".join(" ".join(cmdline(p)) for p in family)
        if "flwr-serverapp" in joined and "flower-supernode" in joined:
            time.sleep(3.0)  # into the round: ClientApps start on the first message
            return descendants([proc.pid])
        time.sleep(0.5)
    raise AssertionError("no ServerApp came up in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_signalled_cifer_run_leaves_no_process(tmp_path, sig):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen(
            [CIFER, *ARGS], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        family = _wait_for_round(proc)
        roles = " ".join(_names(family))
        assert "flower-superlink" in roles and "flower-superexec" in roles, roles
        assert len(family) >= 6, _names(family)
        roots = frozenset(p for p in family if _parent(p) == proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        left, orphans = _survivors(family, within=ORPHAN_DEADLINE, roots=roots)
        assert left == [], _names(left)
        assert orphans == {}, orphans
        if sig == signal.SIGTERM:  # the Ctrl-C teardown ran and said so
            assert proc.returncode == 128 + signal.SIGTERM
            assert "stopping the federation" in (tmp_path / "out.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in descendants([proc.pid]):
            os.kill(p, signal.SIGKILL)


SESSION_TEST = """
import time
from cifer_flwr.tooling.federation import up


def test_holds_a_federation(tmp_path):
    fed = up(tmp_path / "federation", nodes=2, tls=False)
    try:
        print("FEDERATION-UP", flush=True)
        time.sleep(300)
    finally:
        fed.stop()
        print("FEDERATION-STOPPED", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_signalled_pytest_session_stops_its_federation(tmp_path, sig):
    """tests/conftest.py: a SIGTERM'd test session tears down; a SIGKILLed one is tied."""
    test_file = tmp_path / "test_session_federation.py"
    test_file.write_text(SESSION_TEST)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("-s", "-q", "--rootdir", str(tmp_path), str(test_file)),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"FEDERATION-UP" in line:
                break
        else:
            raise AssertionError("the inner session never started its federation")
        family = descendants([proc.pid])
        assert len(family) >= 3, _names(family)
        roots = frozenset(p for p in family if _parent(p) == proc.pid)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
        left, orphans = _survivors(family, within=ORPHAN_DEADLINE, roots=roots)
        assert left == [], _names(left)
        assert orphans == {}, orphans
        if sig == signal.SIGTERM:  # the fixture-style teardown ran, not only the kernel
            assert b"FEDERATION-STOPPED" in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
