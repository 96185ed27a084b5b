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

The supervisor is done only when the kernel says it has no child left (``waitpid`` fails
with ECHILD), never from a ``/proc`` snapshot: a subreaper inherits every orphan below it
before the orphan's parent becomes reapable, so "no child" means "no process below".
A ``/proc`` walk can miss live processes: a multi-threaded process whose main thread has
ended (``exit_group`` under way, or a main thread that called ``pthread_exit``) shows ``Z``
while its other threads and its children still run, and those children keep its PID as
their parent until its last thread is gone. Skipping such an entry made the supervisor
see an empty tree and exit a moment before the children were handed to it, so they went
to init instead (docs/design.md §7).

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
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Seconds the supervisor keeps SIGKILLing its tree before it gives up (a process stuck in
#: an uninterruptible sleep); SIGKILLed processes normally go within milliseconds.
_KILL_WAIT = 30.0
_POLL = 0.05


def _parents() -> dict[int, list[int]]:
    """Parent PID -> child PIDs of every process in ``/proc``, zombies included.

    Zombies stay in: a thread-group leader shows ``Z`` while its other threads still run,
    and its children still name it as their parent.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    """Every process below ``root`` (one ``/proc`` pass)."""
    children = _parents()
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _reap(child: subprocess.Popen[bytes]) -> bool:
    """Reap every exited process below us (we are their subreaper), COMMAND included.

    Returns
    -------
    bool
        Whether any process is still below us (False once ``waitpid`` reports ECHILD).

    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def _wait_empty(child: subprocess.Popen[bytes], seconds: float, *, kill: bool) -> bool:
    """Reap until no process is below us or ``seconds`` pass; with ``kill``, SIGKILL them.

    Returns
    -------
    bool
        Whether the tree is empty.

    """
    me = os.getpid()
    deadline = time.monotonic() + seconds
    while _reap(child):
        if time.monotonic() >= deadline:
            return False
        if kill:
            for pid in _tree(me):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(_POLL)
    return True


def _take_down(child: subprocess.Popen[bytes], grace: float) -> None:
    if child.returncode is None:
        child.send_signal(signal.SIGTERM)
    if not _wait_empty(child, grace, kill=False):
        _wait_empty(child, _KILL_WAIT, kill=True)


def main(argv: list[str]) -> int:
    grace = float(argv[0])
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        # only a flag: raising here could escape from anywhere (a second signal arriving
        # while the first one's exception is being handled would skip the take-down)
        stopped.append(signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    child = subprocess.Popen(argv[1:])
    while not stopped:
        _reap(child)
        if child.returncode is not None:
            break
        time.sleep(0.1)
    code = child.returncode if child.returncode is not None else 128 + int(signal.SIGTERM)
    _take_down(child, grace)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
