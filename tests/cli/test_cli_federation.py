"""`cifer federation` / `cifer runs` details from issue 22 (no federation is started)."""

from __future__ import annotations

import inspect
import io

from rich.console import Console
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.cli.federation import runs_table, up_cmd
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
