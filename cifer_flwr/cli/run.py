"""``cifer run`` and ``cifer report``: Hydra-configured experiments and their comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cifer_flwr.cli._common import console, err_console, fail
from cifer_flwr.exceptions import CiferError


def run(
    ctx: typer.Context,
    multirun: Annotated[
        bool, typer.Option("--multirun", "-m", help="Sweep: run every combination.")
    ] = False,
) -> None:
    """Run an experiment composed from conf/ with Hydra overrides on a local deployment.

    Examples: cifer run strategy=fedyogi topology=centralized num_rounds=3 |
    cifer run topology=p2p topology.graph=ring num_rounds=5 |
    cifer run -m strategy=fedavg,fedyogi encryption=ckks,none num_rounds=2
    """
    from cifer_flwr.experiments.launch import hydra_entry
    from cifer_flwr.tooling.federation.processes import Terminated, terminate_as_interrupt

    try:
        # SIGTERM / SIGHUP tear down like Ctrl-C: the run, the federation, their descendants
        with terminate_as_interrupt():
            hydra_entry(list(ctx.args), multirun)
    except CiferError as exc:
        raise fail(exc) from exc
    except Terminated as exc:
        err_console.print(f"stopped ({exc}); every process the run started was stopped")
        raise typer.Exit(code=128 + exc.signum) from None


def report(
    directory: Annotated[Path, typer.Argument(help="A `cifer run -m` output directory.")],
) -> None:
    """Compare the runs under DIRECTORY: writes report.md (table) and report.png (curves).

    Example: cifer report multirun/2026-11-21/10-00-00
    """
    from cifer_flwr.experiments.report import report as write_report

    try:
        md, png = write_report(directory)
    except FileNotFoundError as exc:
        raise fail(exc) from exc
    console.print(md.read_text(), highlight=False)
    console.print(f"wrote {md} and {png}")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``report`` to the root app."""
    app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        run
    )
    app.command("report")(report)
