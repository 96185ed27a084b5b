"""Start, find and stop the processes of a local federation, strictly by PID.

Flower's SuperLink and SuperNodes start helper processes (``flower-superexec``, then one
process per ServerApp / ClientApp run). Stopping a federation therefore stops the processes
we started *and their descendants*, found through ``/proc`` parent links at stop time, and
the process groups we created (each spawned process leads its own session), and nothing
else: no name matching, no process groups we did not create.

No orphans (docs/design.md §7): a process spawned ``tied`` to its owner gets the Linux
parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so it is stopped when the owner
dies in any way, SIGKILL included; Flower's own helpers watch their parent's PID and follow.
:func:`terminate_as_interrupt` turns SIGTERM / SIGHUP of the owner into the same
``KeyboardInterrupt`` as Ctrl-C, so its ``finally`` teardown runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from cifer_flwr.exceptions import CiferError

__all__ = [
    "TIED_GRACE",
    "TIED_SIGNAL",
    "Terminated",
    "cli_preexec",
    "descendants",
    "is_alive",
    "spawn",
    "stop_pids",
    "stop_tied",
    "terminate_as_interrupt",
]

#: Popen handles of processes this interpreter started, to reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
#: PIDs spawned ``tied`` to this interpreter (stopped by :func:`stop_tied`).
_TIED: list[int] = []
#: Signal a tied process gets when its owner dies (SIGTERM: Flower shuts down its helpers).
TIED_SIGNAL = signal.SIGTERM
#: Seconds the supervisor of a tied process gives its tree after SIGTERM before SIGKILL.
TIED_GRACE = 3.0
_PR_SET_PDEATHSIG = 1
_TIE = Path(__file__).resolve().parent / "_tie.py"


def _prctl() -> Callable[..., int] | None:
    """The C library's ``prctl`` (Linux), loaded in the parent, not in the forked child."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    prctl: Callable[..., int] = fn
    return prctl


def _die_with_owner(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when we die."""
    prctl = _prctl()
    if prctl is None:
        raise CiferError(
            f"tying a child process to its owner needs Linux prctl(PR_SET_PDEATHSIG); this is "
            f"{sys.platform}. Start the federation detached (tied=False) and stop it explicitly."
        )
    owner = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != owner:  # the owner died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


def cli_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` for short-lived CLI children (``flwr run``, ``flwr log --stream``).

    They start no processes of their own, so the kernel's parent-death signal (SIGKILL) is
    enough to take them down with their owner; without it a killed ``cifer run`` would
    leave ``flwr log --stream`` retrying against a SuperLink that is gone (docs/design.md
    §7). The caller waits for the child in the thread that started it, so the signal (sent
    when that *thread* exits) cannot fire early. None where prctl does not exist.
    """
    if _prctl() is None:
        return None
    return _die_with_owner(signal.SIGKILL)


def spawn(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    tied: bool = False,
) -> int:
    """Start ``args`` in its own session, output appended to ``log_path``.

    The own session (and process group) means Ctrl-C in the terminal reaches only the
    caller, which then stops the federation in order (``finally``) instead of leaving
    half-killed processes, and that :func:`stop_pids` can stop the whole group.

    Parameters
    ----------
    args : sequence of str
        Command line.
    log_path : Path
        File that receives stdout and stderr (appended).
    env : mapping
        The child's complete environment.
    cwd : Path, optional
        Working directory of the child.
    tied : bool
        Stop the child and everything it starts when this process dies. The child is a
        small supervisor (``_tie.py``, a child subreaper running ``args``) that gets the
        Linux parent-death signal :data:`TIED_SIGNAL` and then takes the whole tree down
        (SIGTERM, :data:`TIED_GRACE` seconds, SIGKILL): Flower's helpers run in sessions of
        their own and only poll for their parent. Must be called from the main thread: the
        kernel sends the signal when the *thread* that forked the child exits.

    Returns
    -------
    int
        The PID (of the supervisor when ``tied``; the command runs as its child).

    Raises
    ------
    CiferError
        When ``tied`` is asked for outside the main thread or outside Linux.

    """
    preexec = None
    if tied:
        if threading.current_thread() is not threading.main_thread():
            raise CiferError(
                "a tied process must be spawned from the main thread (the parent-death "
                f"signal fires when the spawning thread exits); got thread "
                f"{threading.current_thread().name!r}. Spawn it from the main thread or pass "
                "tied=False and stop it explicitly."
            )
        preexec = _die_with_owner(TIED_SIGNAL)
        args = [sys.executable, "-I", str(_TIE), str(TIED_GRACE), *args]
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
            preexec_fn=preexec,
        )
    _CHILDREN[proc.pid] = proc
    if tied:
        _TIED.append(proc.pid)
    return proc.pid


def _stat(pid: int, task: int | None = None) -> tuple[str, int] | None:
    """``(state, ppid)`` of ``pid`` (or of its thread ``task``) from ``/proc``, or None."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        raw = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def _any_thread_runs(pid: int) -> bool:
    """Whether a thread of process ``pid`` has not exited yet (from ``/proc/PID/task``)."""
    try:
        tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    states = (_stat(pid, task) for task in tasks)
    return any(s is not None and s[0] not in ("Z", "X") for s in states)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone; our own zombies are reaped here).

    A process whose main thread has ended shows ``Z`` while its other threads still run
    (``exit_group`` under way, or a main thread that called ``pthread_exit``); it counts
    as running until its last thread is gone (docs/design.md §7).
    """
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    stat = _stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X") or _any_thread_runs(pid)
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


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal(pids: Iterable[int], sig: signal.Signals, groups: Iterable[int] = ()) -> None:
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


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
    # process groups we created: a spawned process that leads its own group (spawn starts
    # a session); its group holds helpers that were re-parented away from it
    groups = [p for p in pids if p in _CHILDREN and is_alive(p) and _pgid(p) == p]
    _signal(pids, signal.SIGTERM)
    alive = _wait(family, grace / 2)
    if alive:
        _signal(alive, signal.SIGTERM)
        alive = _wait(alive, grace / 2)
    if alive:
        _signal(alive, signal.SIGKILL)
        alive = _wait(alive, 5.0)
    _signal((), signal.SIGKILL, groups)  # stragglers in our groups (no-op when empty)
    for pid in family:
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        if pid in _TIED:
            _TIED.remove(pid)
    return alive


def stop_tied(*, grace: float = 8.0) -> list[int]:
    """Stop every process this interpreter spawned ``tied`` and still runs (newest first).

    The last line of defence of an owner that is being terminated: the owners' own
    ``finally`` blocks normally stopped them already.

    Returns
    -------
    list of int
        PIDs still alive at the end (should be empty).

    """
    pids = [p for p in reversed(_TIED) if is_alive(p)]
    return stop_pids(pids, grace=grace) if pids else []


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised like Ctrl-C so that ``finally`` teardown runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    :class:`Terminated` is a ``KeyboardInterrupt``, so every ``finally`` / ``except
    BaseException`` teardown written for Ctrl-C (stop the run, stop the federation and its
    descendants) runs for a terminating signal as well. On the way out, every process
    spawned ``tied`` that still runs is stopped (:func:`stop_tied`). A second signal during
    the teardown is ignored, so the teardown is not cut short. Outside the main thread
    this is a no-op (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in caught:  # the teardown must not be interrupted in turn
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    except Terminated:
        stop_tied()
        raise
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
