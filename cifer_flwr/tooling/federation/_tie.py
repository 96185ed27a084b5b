"""Run one command and take its whole process tree down with it (a small supervisor).

Usage (what :func:`cifer_flwr.tooling.federation.processes.spawn` does for ``tied`` processes)::

    python -I _tie.py GRACE COMMAND [ARGS...]

Flower's SuperLink and SuperNodes start helpers (``flower-superexec``, ``flwr-serverapp``,
``flwr-clientapp``), some in sessions of their own, which only poll for their parent's PID
and can take many seconds to notice that it is gone. This supervisor marks itself a *child
subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so every process below it stays below it
even when an intermediate parent dies; it runs COMMAND as its child. On SIGTERM / SIGHUP /
SIGINT (the owner's parent-death signal, or :func:`stop_pids`) it forwards SIGTERM to
COMMAND, waits up to GRACE seconds for the tree to exit, then SIGKILLs whatever is left
below it; when COMMAND exits on its own, it does the same and exits with COMMAND's code.

Standard library only and run with ``-I``: no package import, quick to start
(docs/design.md §7: no orphans).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def _tree(root: int) -> list[int]:
    out: list[int] = []
    todo = [root]
    while todo:
        for child in _children(todo.pop()):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _reap(child: subprocess.Popen[bytes]) -> None:
    """Reap every exited process below us (we are their subreaper), COMMAND included."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def _take_down(child: subprocess.Popen[bytes], grace: float) -> None:
    me = os.getpid()
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(child)
        if not _tree(me):
            return
        time.sleep(0.05)
    for _ in range(3):
        below = _tree(me)
        if not below:
            return
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        _reap(child)


class _StopRequestedError(Exception):
    """A stop signal arrived."""


def main(argv: list[str]) -> int:
    grace = float(argv[0])
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def stop(signum: int, frame: object) -> None:
        raise _StopRequestedError

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)
    child = subprocess.Popen(argv[1:])
    code = 1
    try:
        while True:
            _reap(child)
            if child.returncode is not None:
                code = child.returncode
                break
            time.sleep(0.1)
    except _StopRequestedError:
        code = 128 + int(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    _take_down(child, grace)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
