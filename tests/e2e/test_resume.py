"""Resume: SIGKILL the ServerApp mid-run, resume from the checkpoint, match an uninterrupted run.

On a real local deployment (SuperLink + 2 SuperNodes on 127.0.0.1) the generic app runs an
encrypted experiment for ``ROUNDS`` rounds. Once round 2 has completed (its results row is
on disk and the checkpoint was rewritten after it), the ServerApp process, found by PID
among the SuperLink's descendants, is SIGKILLed; the run is then resumed with run config
``resume = true`` and finishes. An uninterrupted run of the same experiment is the oracle:

* the final decrypted model agrees within ``MODEL_TOL`` (CKKS is randomized: two runs of the
  same experiment differ by encryption noise, ~1e-8 here, never exactly);
* the per-round results rows agree (accuracy within ``ACC_TOL``, losses within ``LOSS_TOL``)
  and the resumed results hold every round, restored ones included, in the same schema.

Local training is deterministic per node and round (seed = f(seed, partition, round)).
The figures (round times, kill time, max abs difference) are printed (``-s``).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifer_flwr import crypto, strategies
from cifer_flwr.experiments.config import compose, overrides_to_string
from cifer_flwr.protocol import decrypt_global_model
from cifer_flwr.tooling.federation import Federation, up
from cifer_flwr.tooling.federation.processes import cmdline, descendants, is_alive
from cifer_flwr.tooling.federation.runs import RunOutcome, run_app
from cifer_flwr.tooling.launch import APP_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 3  # the resumed run restores rounds 1-2 from the checkpoint and runs round 3
KILL_AFTER = 2
MODEL_TOL = 1e-6
ACC_TOL = 1e-9
LOSS_TOL = 1e-6
SAME_ROUND_NS = 1_000_000_000  # a round's checkpoint and results row: within 1 s

if "checkpoint_path" not in inspect.signature(strategies.FedAvg).parameters:
    pytest.skip("the encrypted strategies have no checkpoint_path yet", allow_module_level=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return crypto.write_key_pair(
        crypto.generate_key("default"), tmp_path_factory.mktemp("keys") / "fed"
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory, keys):
    priv, pub = keys
    federation = up(
        tmp_path_factory.mktemp("fed") / "federation",
        nodes=2,
        tls=False,
        private_key=priv,
        public_key=pub,
    )
    try:
        yield federation
    finally:
        federation.stop()


def _config(strategy: str, out: Path, pub: Path, **extra: Any) -> dict[str, Any]:
    exp = compose(
        [
            f"strategy={strategy}",
            "task=digits-sklearn",
            f"num_rounds={ROUNDS}",
            "federation.nodes=2",
            "federation.tls=false",
        ]
    )
    return {
        "hydra-overrides": overrides_to_string(exp),
        "public-key": str(pub),
        "save-path": str(out.with_suffix(".enc")),
        **extra,
    }


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text()).get("rounds") or [])
    except (OSError, ValueError):
        return []


def _serverapp(fed: Federation) -> int | None:
    superlink = fed.processes[0].pid
    for pid in descendants([superlink]):
        if any(Path(a).name == "flwr-serverapp" for a in cmdline(pid)[:3]):
            return pid
    return None


def _run_and_kill(fed: Federation, config: dict[str, Any], results: Path) -> dict[str, Any]:
    """Run in a thread; SIGKILL the ServerApp once round KILL_AFTER is checkpointed."""
    outcome: list[RunOutcome | BaseException] = []

    def target() -> None:
        try:
            outcome.append(run_app(fed, APP_DIR, config, timeout=300, results_path=results))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    ckpt = results.with_suffix(".ckpt")
    t0 = time.monotonic()
    worker = threading.Thread(target=target)
    worker.start()
    deadline = t0 + 240
    while len(_rows(results)) < KILL_AFTER:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.05)
    rows_at = time.monotonic()
    # the checkpoint of round KILL_AFTER is on disk: a round writes its checkpoint and its
    # results row milliseconds apart, in either order, and rounds are seconds apart (a
    # checkpoint a whole round older than the row is the previous round's)
    while not (
        ckpt.is_file() and ckpt.stat().st_mtime_ns >= results.stat().st_mtime_ns - SAME_ROUND_NS
    ):
        assert time.monotonic() < rows_at + 5, "no checkpoint after the round"
        time.sleep(0.02)
    pid = _serverapp(fed)
    assert pid is not None, "no ServerApp process among the SuperLink's descendants"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic() - t0
    rows = _rows(results)
    while is_alive(pid):
        time.sleep(0.05)
    # Flower keeps the run open until its ServerApp heartbeat times out: stop it now, as an
    # operator would before resuming (the log stream of run_app then ends)
    fed.flwr("stop", str(_run_id(results)), fed.connection, timeout=30)
    worker.join(timeout=120)
    assert not worker.is_alive()
    killed = outcome[0]
    assert isinstance(killed, RunOutcome), killed
    assert not killed.completed
    return {"killed-at-s": killed_at, "rows-at-kill": len(rows), "outcome": killed}


def _run_id(results: Path) -> Any:
    return json.loads(results.read_text()).get("run-id")


@pytest.mark.parametrize("strategy", ["fedavg", "fedyogi"])
def test_killed_serverapp_resumes_to_the_same_model_and_rows(fed, keys, strategy):
    priv, pub = keys
    base = fed.directory.parent
    killed_res = base / f"{strategy}-resumed.json"
    full_res = base / f"{strategy}-full.json"

    killed = _run_and_kill(fed, _config(strategy, killed_res, pub), killed_res)
    partial = json.loads(killed_res.read_text())
    assert partial["status"] == "running"  # per-round file of a killed run
    assert [r["round"] for r in partial["rounds"]] == list(range(1, killed["rows-at-kill"] + 1))
    assert not list(base.glob(f".{killed_res.name}.*"))  # no temp file left

    resumed = run_app(
        fed,
        APP_DIR,
        _config(strategy, killed_res, pub, resume=True),
        timeout=300,
        results_path=killed_res,
    )
    assert resumed.completed, resumed.errors
    full = run_app(
        fed, APP_DIR, _config(strategy, full_res, pub), timeout=300, results_path=full_res
    )
    assert full.completed, full.errors

    r_rows, f_rows = resumed.results["rounds"], full.results["rounds"]
    assert resumed.results["resume"] is True
    after = resumed.results.get("resumed-after-round")
    assert after is not None and KILL_AFTER <= after < ROUNDS, after
    assert (
        [r["round"] for r in r_rows] == [r["round"] for r in f_rows] == list(range(1, ROUNDS + 1))
    )
    assert [sorted(r) for r in r_rows] == [sorted(r) for r in f_rows]  # same schema
    for r, f in zip(r_rows, f_rows, strict=True):
        assert abs(r["accuracy"] - f["accuracy"]) <= ACC_TOL, (r["round"], r, f)
        assert abs(r["loss"] - f["loss"]) <= LOSS_TOL, (r["round"], r["loss"], f["loss"])
        assert abs(r["train-loss"] - f["train-loss"]) <= LOSS_TOL
        assert r["errors"] == [] and r["excluded"] == []
    # the restored rows are the killed run's own rows
    for row in r_rows[:after]:
        assert row == partial["rounds"][row["round"] - 1] or row["round"] > len(partial["rounds"])

    a = decrypt_global_model(killed_res.with_suffix(".enc"), priv)
    b = decrypt_global_model(full_res.with_suffix(".enc"), priv)
    assert sorted(a) == sorted(b)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert diff <= MODEL_TOL, diff
    print(
        f"\n[resume {strategy}] rounds {ROUNDS}, killed ServerApp at "
        f"{killed['killed-at-s']:.1f} s after submission with {killed['rows-at-kill']} rows "
        f"on disk; resumed after round {after}; round-s full "
        f"{[round(x['round-s'] or 0, 2) for x in f_rows]}, resumed "
        f"{[round(x['round-s'] or 0, 2) for x in r_rows]}; killed run "
        f"{killed['outcome'].seconds:.1f} s, resumed run {resumed.seconds:.1f} s, "
        f"full run {full.seconds:.1f} s; "
        f"max |model diff| {diff:.3g}"
    )


def test_cifer_run_resume_of_a_finished_run_is_refused_untouched(tmp_path):
    """`cifer run ... resume=true hydra.run.dir=DIR` on a run that finished every round.

    There is nothing to resume (issue 22): it is refused before anything starts, and the
    run directory (keys, checkpoint, results) stays as the finished run left it. A killed
    run's resume is test_killed_run_resumes_* above.
    """
    import subprocess
    import sys

    run_dir = tmp_path / "outputs" / "run"
    args = [
        "task=digits-sklearn",
        "num_rounds=2",
        "federation.nodes=2",
        "federation.tls=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def cifer(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cifer_flwr.cli", "run", *args, *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    first = cifer()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = json.loads((run_dir / "metrics.json").read_text())
    key_before = (run_dir / "keys" / crypto.PUBLIC_KEY_FILE).read_bytes()
    assert (run_dir / "results.ckpt").is_file()
    checkpoint_before = (run_dir / "results.ckpt").read_bytes()
    again = cifer("resume=true")
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert "finished all its 2 rounds" in again.stderr and "nothing to resume" in again.stderr
    assert (run_dir / "keys" / crypto.PUBLIC_KEY_FILE).read_bytes() == key_before
    assert (run_dir / "results.ckpt").read_bytes() == checkpoint_before
    assert json.loads((run_dir / "metrics.json").read_text()) == before
