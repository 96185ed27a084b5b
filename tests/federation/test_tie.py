"""The supervisor of tied processes (``_tie.py``) takes its whole tree down (docs/design.md §7).

Each test runs the real supervisor on a small command and checks through ``/proc`` that no
process of the command's tree outlives the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.processes import descendants, is_alive

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl(PR_SET_CHILD_SUBREAPER) is Linux-only"
)

TIE = Path(processes.__file__).with_name("_tie.py")
GRACE = "0.5"

#: A command whose main thread ends while another thread and a child still run: /proc shows
#: it as a zombie (``Z``) and its child still names it as parent, as with a multi-threaded
#: Flower process in the middle of exiting. It ignores SIGTERM: only SIGKILL ends it.
MAIN_THREAD_EXITS = """
import ctypes, json, signal, subprocess, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "60"])
threading.Thread(target=time.sleep, args=(60,)).start()
print(json.dumps(child.pid), flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""

#: A command that leaves a daemon behind in a session of its own (double fork) and exits.
DAEMONIZES = """
import json, subprocess
out = subprocess.run(
    ["setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
    capture_output=True, text=True, check=True,
)
print(json.dumps(int(out.stdout)), flush=True)
"""


def _state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2 :].split()[0]


def _supervise(command: str) -> tuple[subprocess.Popen[str], int]:
    sup = subprocess.Popen(
        [sys.executable, "-I", str(TIE), GRACE, sys.executable, "-c", command],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sup.stdout is not None
    return sup, json.loads(sup.stdout.readline())


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_tree_below_an_exited_main_thread_is_taken_down():
    """The command shows ``Z`` but runs on: the supervisor must not take it for gone."""
    sup, grandchild = _supervise(MAIN_THREAD_EXITS)
    family = [grandchild]
    try:
        family = descendants([sup.pid])
        assert grandchild in family, family
        command = next(p for p in family if p != grandchild)
        deadline = time.monotonic() + 30
        while _state(command) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(command) == "Z"
        assert is_alive(command), "a process with a running thread counts as alive"
        assert is_alive(grandchild)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 128 + signal.SIGTERM
        left = [p for p in family if is_alive(p)]
        assert left == [], f"outlived their supervisor: {left}"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        _kill_leftovers(family)


def test_daemon_of_a_command_that_exited_is_taken_down():
    """A double-forked daemon is re-parented to the supervisor, which stops it."""
    sup, daemon = _supervise(DAEMONIZES)
    try:
        assert sup.wait(timeout=60) == 0  # the command's exit code
        assert not is_alive(daemon), "the daemon outlived its supervisor"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        _kill_leftovers([daemon])
