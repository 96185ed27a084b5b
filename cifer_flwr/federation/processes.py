"""Start, find and stop the processes of a local federation, strictly by PID.

Flower's SuperLink and SuperNodes start helper processes (``flower-superexec``, then one
process per ServerApp / ClientApp run). Stopping a federation therefore stops the processes
we started *and their descendants*, found through ``/proc`` parent links at stop time, and
nothing else: no name matching, no process groups we did not create.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["descendants", "is_alive", "spawn", "stop_pids"]

#: Popen handles of processes this interpreter started, to reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    args: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path | None = None
) -> int:
    """Start ``args`` detached from the terminal (own session), output appended to ``log_path``.

    The own session means Ctrl-C in the terminal reaches only the caller, which then stops
    the federation in order (``finally``) instead of leaving half-killed processes.

    Returns
    -------
    int
        The PID.

    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of ``pid`` from ``/proc``, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; our own zombies are reaped here)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    stat = _stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def descendants(pids: Iterable[int]) -> list[int]:
    """All live descendants of ``pids`` (children, grandchildren, ...), via ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    out: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _wait(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def stop_pids(pids: Sequence[int], *, grace: float = 8.0) -> list[int]:
    """Stop ``pids`` and their descendants: SIGTERM, wait ``grace`` seconds, then SIGKILL.

    Parameters
    ----------
    pids : sequence of int
        Processes this tool started, stopped in the given order.
    grace : float
        Seconds the processes get to exit after SIGTERM.

    Returns
    -------
    list of int
        PIDs still alive at the end (should be empty).

    """
    family = list(pids) + [p for p in descendants(pids) if p not in pids]
    _signal(pids, signal.SIGTERM)
    alive = _wait(family, grace / 2)
    if alive:
        _signal(alive, signal.SIGTERM)
        alive = _wait(alive, grace / 2)
    if alive:
        _signal(alive, signal.SIGKILL)
        alive = _wait(alive, 5.0)
    for pid in family:
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
    return alive
