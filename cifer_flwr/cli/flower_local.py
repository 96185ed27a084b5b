"""``cifer flower-local env|runs|down``: Flower's own ``local`` connection (``flwr run .``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from cifer_flwr.cli._common import console, err_console, fail
from cifer_flwr.exceptions import CiferError

app = typer.Typer(
    pretty_exceptions_show_locals=False,
    help=(
        "Flower's own `local` connection (`flwr run .`): the environment its SuperLink "
        "needs for cifer-flwr apps, its runs with their real status, stopping it."
    ),
    no_args_is_help=True,
)

HomeOption = Annotated[
    Path | None,
    typer.Option("--flwr-home", help="FLWR_HOME of Flower's CLI (default: $FLWR_HOME or ~/.flwr)."),
]


@app.command("env")
def env_cmd(
    private_key: Annotated[
        Path | None,
        typer.Option(help="CKKS private key the ClientApps use (keys/NAME/private.key)."),
    ] = None,
    flwr_home: HomeOption = None,
) -> None:
    """Print `export` lines for `flwr run` on the `local` connection.

    Use: eval "$(cifer flower-local env --private-key keys/NAME/private.key)".

    They turn Flower's runtime dependency installation off (cifer-flwr is not on the
    package index), keep Ray on 127.0.0.1, load TenSEAL before TensorFlow and give the
    virtual SuperNodes the private key. Flower's local SuperLink takes them when `flwr`
    starts it: one already running without them is named on stderr (stop it with
    `cifer flower-local down`).
    """
    from cifer_flwr.tooling.federation.flower_local import FlowerLocal, flower_local_env

    try:
        env = flower_local_env(private_key)
        stale = FlowerLocal.at(flwr_home).missing_env()
    except CiferError as exc:
        raise fail(exc) from exc
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    for pid, lacks in stale.items():
        err_console.print(
            f"note: Flower's local SuperLink (pid {pid}) runs without {', '.join(lacks)}; "
            "stop it with `cifer flower-local down` so that the next `flwr run` starts it "
            "with this environment.",
            markup=False,
            highlight=False,
        )


@app.command("runs")
def runs_cmd(
    run_id: Annotated[int | None, typer.Option(help="Show only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    flwr_home: HomeOption = None,
) -> None:
    """List the runs of Flower's local SuperLink with the status Flower recorded.

    `flwr run` exits 0 even when the run fails; this exits 1 when a listed run failed or
    was stopped, and prints each failed run's reason. Example: cifer flower-local runs
    """
    from cifer_flwr.cli.federation import show_runs
    from cifer_flwr.tooling.federation import FederationError
    from cifer_flwr.tooling.federation.flower_local import FlowerLocal
    from cifer_flwr.tooling.federation.runs import list_runs

    local = FlowerLocal.at(flwr_home)
    try:
        if not local.alive()["superlink"]:  # `flwr ls` would start one just to list nothing
            raise FederationError(
                f"Flower's local SuperLink of FLWR_HOME={local.flwr_home} is not running; "
                "`flwr run .` starts it."
            )
        runs = list_runs(local, run_id)
    except CiferError as exc:
        raise fail(exc) from exc
    show_runs(
        runs,
        as_json=as_json,
        empty="no runs on Flower's local SuperLink yet",
        follow="flwr log RUN_ID local --stream",
    )


@app.command("down")
def down_cmd(flwr_home: HomeOption = None) -> None:
    """Stop Flower's local SuperLink and everything below it (simulation, Ray), by PID.

    Flower's CLI starts it in the background at the first `flwr run` on the `local`
    connection and leaves it running; its runs stay in FLWR_HOME/local-superlink/state.db.
    """
    from cifer_flwr.tooling.federation.flower_local import FlowerLocal

    local = FlowerLocal.at(flwr_home)
    try:
        stopped = local.stop()
    except CiferError as exc:
        raise fail(exc) from exc
    if not stopped:
        console.print(
            f"Flower's local SuperLink of FLWR_HOME={local.flwr_home} is not running",
            highlight=False,
        )
        return
    pids = ", ".join(str(p.pid) for p in stopped)
    console.print(
        f"stopped Flower's local SuperLink (pid {pids}) and its processes", highlight=False
    )
