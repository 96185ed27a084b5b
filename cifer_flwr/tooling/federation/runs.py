"""Submit a Flower app to a deployment and wait for it properly.

Flower 1.41's CLI exit codes do not tell whether a run worked (``flwr run --format json``
exits 0 on failure), and a run below ``min_available_nodes`` waits forever. So:

1. ``flwr run APP CONN --run-config FILE --format json`` and read ``"success"`` / ``run-id``;
2. ``flwr log RUN_ID CONN --stream`` under an outer timeout (``flwr stop`` when it fires),
   saving the log;
3. ``flwr ls CONN --run-id RUN_ID --format json`` for the final status
   (``finished:completed|failed|stopped``);
4. the results file the ServerApp wrote (run config ``results-path``), because a run can
   "complete" while every client failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifer_flwr.tooling.federation.local import Federation, FederationError, _exe

__all__ = ["RunOutcome", "run_app", "to_toml"]

RunConfigValue = bool | int | float | str


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
        What went wrong: no results, a failed ServerApp, or client error replies per round
        (a run whose clients all fail still ends ``finished:completed`` in Flower).

    """

    run_id: int
    status: str
    results: dict[str, Any] | None
    log_path: Path
    seconds: float
    errors: list[str] = field(default_factory=list)

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


def _status(fed: Federation, run_id: int) -> str:
    try:
        data = fed.flwr_json("ls", fed.connection, "--run-id", str(run_id), timeout=30)
    except FederationError:
        return "unknown"
    runs = data.get("runs", [])
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def run_app(
    fed: Federation,
    app: str | os.PathLike[str],
    run_config: Mapping[str, RunConfigValue] | None = None,
    *,
    timeout: float = 600.0,
    results_path: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
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

    Returns
    -------
    RunOutcome
        Run id, final status, results and log path. Check :attr:`RunOutcome.completed`.

    Raises
    ------
    FederationError
        When the submission fails, or the run exceeds ``timeout`` (it is stopped first).

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
    with open(log, "w") as out:
        streamer = subprocess.Popen(
            [_exe("flwr"), "log", str(run_id), fed.connection, "--stream"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=fed.env(),
        )
        try:
            streamer.wait(timeout=remaining)
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

    status = _status(fed, run_id)
    deadline = time.monotonic() + 30
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status(fed, run_id)
    payload = json.loads(results.read_text()) if results.is_file() else None
    if payload is not None and str(payload.get("run-id", run_id)) != str(run_id):
        payload = None  # an earlier run's file: this run wrote nothing
    errors: list[str] = []
    if payload is None:
        errors.append(f"the ServerApp wrote no results to {results}; see {log}.")
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
    return RunOutcome(run_id, status, payload, log, time.monotonic() - t0, errors)
