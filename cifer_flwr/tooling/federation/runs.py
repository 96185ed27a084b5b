"""Submit a Flower app to a deployment and wait for it properly.

Flower 1.41's CLI exit codes do not tell whether a run worked (``flwr run --format json``
exits 0 on failure), and a run below ``min_available_nodes`` waits forever. So:

1. ``flwr run APP CONN --run-config FILE --format json`` and read ``"success"`` / ``run-id``;
2. ``flwr log RUN_ID CONN --stream`` under an outer timeout (``flwr stop`` when it fires),
   saving the log;
3. ``flwr ls CONN --run-id RUN_ID --format json`` for the final status
   (``finished:completed|failed|stopped``) and its ``status-details`` (a failed ServerApp's
   exception, which is otherwise only in ``flwr log``);
4. the results file the ServerApp wrote (run config ``results-path``), because a run can
   "complete" while every client failed.

:func:`list_runs` (``cifer runs``) reads every run of a federation from ``flwr ls``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import Federation, FederationError, flower_executable

__all__ = [
    "FLOWER_START_WINDOW_S",
    "TOKEN_REVOKED",
    "RestartWatch",
    "RunInfo",
    "RunOutcome",
    "TaskRestartedError",
    "list_runs",
    "round_line",
    "run_app",
    "server_app_error",
    "to_toml",
]

RunConfigValue = bool | int | float | str
#: Seconds one ``flwr ls`` may take (a fresh ``flwr`` process; slow on a busy machine).
STATUS_TIMEOUT_S = 60.0


@dataclass
class RunOutcome:
    """What came of one ``flwr run``.

    Attributes
    ----------
    run_id : int
        Flower's run id.
    status : str
        Final status from ``flwr ls`` (``finished:completed`` when it worked).
    results : dict or None
        The results JSON the ServerApp wrote (``None`` when it wrote none).
    log_path : Path
        The run's log (``flwr log --stream``).
    seconds : float
        Wall time from submission to the final status.
    errors : list of str
        What went wrong: no results, a failed ServerApp (its exception line), or client error
        replies per round (a run whose clients all fail still ends ``finished:completed``).
    details : str
        Flower's ``status-details`` (a failed ServerApp's exception), empty when none.

    """

    run_id: int
    status: str
    results: dict[str, Any] | None
    log_path: Path
    seconds: float
    errors: list[str] = field(default_factory=list)
    details: str = ""

    @property
    def clean(self) -> bool:
        """:attr:`completed` and no client sent an error reply."""
        return self.completed and not self.errors

    @property
    def completed(self) -> bool:
        """Whether Flower reports ``finished:completed`` and the ServerApp wrote results."""
        return (
            self.status == "finished:completed"
            and self.results is not None
            and self.results.get("status") == "ok"
        )


def _toml_value(value: RunConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def to_toml(config: Mapping[str, RunConfigValue]) -> str:
    """Serialize flat run config overrides as TOML (``key = value`` lines)."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in config.items())


@dataclass(frozen=True)
class RunInfo:
    """One run of a federation as Flower records it (a row of ``flwr ls --format json``).

    Attributes
    ----------
    run_id : int
        Flower's run id (``flwr log RUN_ID CONNECTION --stream`` follows it).
    app : str
        The app (FAB) id, ``publisher/name``, and its version.
    status : str
        ``pending``, ``starting``, ``running`` or ``finished:completed|failed|stopped``.
    details : str
        Flower's ``status-details``: a failed ServerApp's exception; empty when none.
    pending_at, running_at, finished_at : str
        Times Flower recorded (UTC, ``YYYY-MM-DD HH:MM:SSZ``), empty until reached.
    elapsed : float
        Seconds the run has been running (Flower's ``elapsed``).

    """

    run_id: int
    app: str
    status: str
    details: str = ""
    pending_at: str = ""
    running_at: str = ""
    finished_at: str = ""
    elapsed: float = 0.0

    @classmethod
    def from_flwr(cls, row: Mapping[str, Any]) -> RunInfo:
        """Parse one entry of ``flwr ls --format json``'s ``runs``."""
        app = str(row.get("fab-id") or row.get("fab-name") or "")
        if row.get("fab-version"):
            app += f" {row['fab-version']}"
        return cls(
            run_id=int(row["run-id"]),
            app=app,
            status=str(row.get("status", "unknown")),
            details=str(row.get("status-details") or ""),
            pending_at=str(row.get("pending-at") or ""),
            running_at=str(row.get("running-at") or ""),
            finished_at=str(row.get("finished-at") or ""),
            elapsed=float(row.get("elapsed") or 0.0),
        )

    @property
    def succeeded(self) -> bool:
        """Whether Flower says the run finished and completed (not failed or stopped)."""
        return self.status == "finished:completed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly row (``cifer runs --json``)."""
        return {
            "run-id": str(self.run_id),
            "app": self.app,
            "status": self.status,
            "details": self.details,
            "pending-at": self.pending_at,
            "running-at": self.running_at,
            "finished-at": self.finished_at,
            "elapsed-s": self.elapsed,
        }


def list_runs(fed: Federation, run_id: int | None = None) -> list[RunInfo]:
    """Every run of ``fed`` (or the one ``run_id``), oldest first, read from ``flwr ls``.

    Raises
    ------
    FederationError
        When the SuperLink does not answer (the federation is down) or refuses.

    """
    args = ["ls", fed.connection] + (["--run-id", str(run_id)] if run_id is not None else [])
    data = fed.flwr_json(*args, timeout=STATUS_TIMEOUT_S)
    runs = [RunInfo.from_flwr(r) for r in data.get("runs", [])]
    return sorted(runs, key=lambda r: (r.pending_at, r.run_id))


def _status(fed: Federation, run_id: int) -> RunInfo | None:
    try:
        runs = list_runs(fed, run_id)
    except FederationError:
        return None
    return runs[0] if runs else None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: Start of the per-round progress line the ServerApps log (results.format_round).
ROUND_MARK = "[cifer] round "


def round_line(raw: str) -> str | None:
    """The ``[cifer] round ...`` progress line inside one line of ``flwr log``, else ``None``."""
    text = _ANSI.sub("", raw)
    at = text.find(ROUND_MARK)
    if at < 0:
        return None
    return "".join(ch for ch in text[at:] if ch.isprintable()).strip()


def _copy_log(source: IO[bytes], out: IO[bytes], on_round: Callable[[str], None] | None) -> None:
    """Copy ``flwr log --stream`` into the log file; hand each round line to ``on_round``."""
    for raw in iter(source.readline, b""):
        out.write(raw)
        out.flush()
        if on_round is not None:
            line = round_line(raw.decode("utf-8", errors="replace"))
            if line is not None:
                on_round(line)


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def server_app_error(log_text: str) -> str | None:
    """The exception line (``module.SomeError: message``) of a failed ServerApp in its log.

    ``flwr log --stream`` prints the ServerApp's traceback; the last line of it is what a
    user needs (e.g. ``ConfigError: run config 'public-key' must be an absolute path``).
    """
    found = None
    for raw in _ANSI.sub("", log_text).splitlines():
        m = _EXCEPTION_LINE.match(raw.strip())
        if m:
            found = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return found


#: What the SuperLink logs when a ServerApp / simulation process calls with a task token
#: it has taken back (the task missed Flower's heartbeat window and was restarted).
TOKEN_REVOKED = "Runtime task-token authentication failed"
#: Seconds Flower gives a claimed task until its first heartbeat (flwr 1.41/1.42:
#: ``HEARTBEAT_DEFAULT_INTERVAL``, not configurable).
FLOWER_START_WINDOW_S = 30


class TaskRestartedError(FederationError):
    """Flower restarted the run's ServerApp / simulation process: the machine is too busy."""


class RestartWatch:
    """Watches the SuperLink's log for a restarted task process, from construction on.

    Flower's SuperLink gives the process that runs a ServerApp (``flwr-serverapp``) or a
    simulation (``flwr-simulation``) :data:`FLOWER_START_WINDOW_S` seconds after claiming
    the task to send its first heartbeat; otherwise it takes the claim back, starts another
    process, and answers the first one :data:`TOKEN_REVOKED`. On a busy machine each new
    process is as slow as the last and adds load, so the run never starts (issue 22: no
    round in 550 s, 36 such lines, 4 restarts). The first such line is the signal.
    """

    def __init__(self, fed: Federation) -> None:
        superlink = [p for p in fed.processes if p.role == "superlink"]
        self.log = Path(superlink[0].log) if superlink else None
        self.offset = self.log.stat().st_size if self.log and self.log.is_file() else 0

    def restarted(self) -> bool:
        """Whether the SuperLink revoked a task token since the watch began."""
        if self.log is None or not self.log.is_file():
            return False
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            new = f.read()
        cut = new.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += cut
        return TOKEN_REVOKED.encode() in new[:cut]

    def error(self, run_id: int) -> TaskRestartedError:
        """The error that stops the run: what happened, why, and what to do."""
        cpus = os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        return TaskRestartedError(
            f"run {run_id} was stopped: Flower restarted its ServerApp/simulation process "
            f"because it sent no heartbeat within Flower's fixed {FLOWER_START_WINDOW_S} s "
            f"of being started (the SuperLink logged '{TOKEN_REVOKED}' in {self.log}). "
            f"This machine is too busy for it (load average {load:.1f} on {cpus} CPUs), "
            "and every restart adds load, so the run would not start at all. Run it again "
            "when the machine is quieter, or with fewer SuperNodes."
        )


def _wait_watching(
    proc: subprocess.Popen[bytes], timeout: float, watch: RestartWatch, run_id: int
) -> None:
    """Wait for ``proc`` like ``proc.wait(timeout)``; raise when the watch sees a restart."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if watch.restarted():
                raise watch.error(run_id) from None
            if time.monotonic() >= deadline:
                raise


def run_app(
    fed: Federation,
    app: str | os.PathLike[str],
    run_config: Mapping[str, RunConfigValue] | None = None,
    *,
    timeout: float = 600.0,
    results_path: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    on_round: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run the Flower app in ``app`` on ``fed`` and wait for its final status and results.

    Parameters
    ----------
    fed : Federation
        Where to run (its ``flwr`` connection and FLWR_HOME are used).
    app : str or path
        Directory of the Flower app (the one holding its ``pyproject.toml``).
    run_config : mapping, optional
        Run config overrides (written to a TOML file passed with ``--run-config``).
    timeout : float
        Outer timeout in seconds; when it fires the run is stopped (``flwr stop``).
    results_path : str or path, optional
        Where the ServerApp should write its results JSON (sets run config
        ``results-path``); default: ``DIR/runs/run-<time>.json`` of the federation.
    log_path : str or path, optional
        Where to save the run's log; default: next to the results file (``.log``).
    on_round : callable, optional
        Called with each ``[cifer] round N/M: ...`` progress line as the ServerApp logs it
        (``cifer run``, the demo and the FedLearn API print them on stdout).

    Returns
    -------
    RunOutcome
        Run id, final status, results and log path. Check :attr:`RunOutcome.completed`.

    Raises
    ------
    FederationError
        When the submission fails, or the run exceeds ``timeout`` (it is stopped first).
    TaskRestartedError
        When Flower restarts the run's ServerApp / simulation process because it missed
        Flower's start window (a busy machine; :class:`RestartWatch`): the run is stopped
        at the first restart, within about a minute of submission, not after ``timeout``.

    """
    runs_dir = fed.directory / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(results_path) if results_path else runs_dir / f"run-{stamp}.json"
    results = results.resolve()
    config = dict(run_config or {})
    resume = str(config.get("resume", False)).strip().lower() in ("true", "1", "yes", "on")
    if not resume:  # a resumed run reads the killed run's rows from this file
        results.unlink(missing_ok=True)
    log = Path(log_path) if log_path else results.with_suffix(".log")
    config["results-path"] = str(results)
    t0 = time.monotonic()
    watch = RestartWatch(fed)  # from here on: lines of this run only
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(to_toml(config))
        config_file = f.name
    try:
        data = fed.flwr_json(
            "run",
            str(Path(app).resolve()),
            fed.connection,
            "--run-config",
            config_file,
            timeout=120,
        )
    finally:
        os.unlink(config_file)
    run_id = int(data["run-id"])

    log.parent.mkdir(parents=True, exist_ok=True)
    remaining = max(1.0, timeout - (time.monotonic() - t0))
    with open(log, "wb") as out:
        streamer = subprocess.Popen(
            [flower_executable("flwr"), "log", str(run_id), fed.connection, "--stream"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=fed.env(),
            preexec_fn=processes.cli_preexec(),
        )
        assert streamer.stdout is not None
        copier = threading.Thread(
            target=_copy_log, args=(streamer.stdout, out, on_round), daemon=True
        )
        copier.start()
        try:
            _wait_watching(streamer, remaining, watch, run_id)
        except subprocess.TimeoutExpired:
            streamer.terminate()
            try:
                streamer.wait(timeout=5)
            except subprocess.TimeoutExpired:
                streamer.kill()
                streamer.wait()
            fed.flwr("stop", str(run_id), fed.connection, "--format", "json", timeout=30)
            raise FederationError(
                f"run {run_id} did not finish in {timeout:g} s and was stopped; see {log} and "
                f"the logs in {fed.directory / 'logs'}."
            ) from None
        except BaseException:
            streamer.kill()
            streamer.wait()
            fed.flwr("stop", str(run_id), fed.connection, "--format", "json", timeout=30)
            raise
        finally:  # the stream ended: the copier has the last lines (its pipe is closed)
            copier.join(timeout=10)

    info = _status(fed, run_id)
    # each `flwr ls` is a fresh Python process: on a busy machine one took longer than the
    # 30 s this wait used to allow, and a finished run was reported "unknown" (issue 22)
    deadline = time.monotonic() + 2 * STATUS_TIMEOUT_S
    while (info is None or not info.status.startswith("finished")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
        info = _status(fed, run_id)
    status = info.status if info else "unknown"
    details = info.details if info else ""
    payload = json.loads(results.read_text()) if results.is_file() else None
    if payload is not None and str(payload.get("run-id", run_id)) != str(run_id):
        payload = None  # an earlier run's file: this run wrote nothing
    errors: list[str] = []
    follow = f"flwr log {run_id} {fed.connection} --stream (saved in {log})"
    if status == "finished:failed" and payload is None:
        reason = server_app_error(log.read_text(errors="replace")) if log.is_file() else None
        detail = details.removeprefix("ServerApp failed with exception: ") or reason
        errors.append(f"the ServerApp failed: {detail or 'no reason recorded'}; see {follow}.")
    elif payload is None:
        errors.append(f"the ServerApp wrote no results to {results}; see {follow}.")
    elif payload.get("status") == "running":
        done = len(payload.get("rounds") or [])
        errors.append(
            f"the ServerApp stopped after {done} completed rounds (killed?); resume it with "
            f"run config resume=true; see {log}."
        )
    elif payload.get("status") != "ok":
        errors.append(f"the ServerApp failed: {payload.get('error')}")
    else:
        for row in payload.get("rounds", []):
            if row.get("errors"):
                first = row["errors"][0]
                errors.append(
                    f"round {row['round']}: {len(row['errors'])} client error replies (node "
                    f"{first['node']}, {first['phase']}: {first['reason']})"
                )
    return RunOutcome(run_id, status, payload, log, time.monotonic() - t0, errors, details)
