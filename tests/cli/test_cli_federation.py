"""`cifer federation` / `cifer runs` details from issue 22 (no federation is started)."""

from __future__ import annotations

import inspect
import io
import json

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.cli.federation import runs_table, show_runs, up_cmd
from cifer_flwr.experiments.config import FederationConfig
from cifer_flwr.tooling.federation import Federation
from cifer_flwr.tooling.federation.runs import RunInfo

runner = CliRunner()


def test_tls_with_simulation_is_refused_not_ignored(tmp_path):
    res = runner.invoke(
        app, ["federation", "up", "--simulation", "--tls", "--dir", str(tmp_path / "f")]
    )
    assert res.exit_code == 2, res.output
    assert "--tls" in res.output and "--simulation" in res.output
    assert not (tmp_path / "f").exists()  # nothing started, nothing written


def test_federation_up_starts_as_many_nodes_as_cifer_run_and_the_readme():
    default = inspect.signature(up_cmd).parameters["nodes"].default
    assert default == FederationConfig().nodes == 3


def test_runs_table_never_cuts_run_ids_or_status_at_80_columns():
    runs = [
        RunInfo(
            run_id=12345678901234567890 + i,
            app="cifer/quickstart-pytorch-with-a-long-name 1.0.0",
            status="finished:completed" if i else "finished:failed",
            pending_at="2026-12-07 03:00:00Z",
            running_at="2026-12-07 03:00:01Z",
            finished_at="2026-12-07 03:01:40Z",
            elapsed=99.0,
        )
        for i in range(2)
    ]
    out = io.StringIO()
    Console(file=out, width=80, soft_wrap=True).print(runs_table(runs, [runs[0]]))
    text = out.getvalue()
    for r in runs:
        assert str(r.run_id) in text and r.status in text, text
    assert "…" not in text


def test_federation_down_removes_the_ray_session_directory(tmp_path):
    """Ray's session root of a detached simulation is the federation's to remove (issue 22)."""
    scratch = tmp_path / "cifer-ray-x"
    (scratch / "session_latest").mkdir(parents=True)
    fed = Federation(directory=tmp_path / "fed", address="127.0.0.1:1", scratch_dirs=[str(scratch)])
    fed.save()
    res = runner.invoke(app, ["federation", "down", "--dir", str(tmp_path / "fed")])
    assert res.exit_code == 0, res.output
    assert not scratch.exists()
    assert Federation.load(tmp_path / "fed").scratch_dirs == []


def _run(status: str, details: str = "") -> RunInfo:
    return RunInfo(
        run_id=7 if status.endswith("failed") else 8, app="a", status=status, details=details
    )


def test_show_runs_exits_1_with_the_reason_of_a_failed_run(capsys):
    """`cifer runs` and `cifer flower-local runs` share it: flwr run's exit code says nothing."""
    runs = [_run("finished:completed"), _run("finished:failed", "ValueError: public-key")]
    with pytest.raises(typer.Exit) as ended:
        show_runs(runs, as_json=True, empty="none", follow="F")
    assert ended.value.exit_code == 1
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == [r.status for r in runs]
    with pytest.raises(typer.Exit) as ended:
        show_runs(runs, as_json=False, empty="none", follow="flwr log RUN_ID x")
    assert ended.value.exit_code == 1
    out = capsys.readouterr().out
    assert "run 7: ValueError: public-key" in out and "follow one   flwr log RUN_ID x" in out
    show_runs([_run("finished:completed"), _run("running")], as_json=False, empty="-", follow="F")
    show_runs([], as_json=False, empty="no runs here yet", follow="F")
    assert "no runs here yet" in capsys.readouterr().out
