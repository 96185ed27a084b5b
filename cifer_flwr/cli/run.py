"""``cifer run`` and ``cifer report``: Hydra-configured experiments and their comparison."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cifer_flwr.cli._common import console, err_console, fail, progress
from cifer_flwr.exceptions import CiferError
from cifer_flwr.extras import available, check, install_command

if TYPE_CHECKING:
    from cifer_flwr.experiments.config import ExperimentConfig

#: Model family of a task (``experiments.tasks.TASKS``) -> the module its ClientApps import.
FAMILY_MODULES = {"torch": "torch", "tensorflow": "tensorflow", "sklearn": "sklearn"}
#: Extension of a user's model file (``task.model_path``) -> the module that reads it.
MODEL_FILE_MODULES = {".pt": "torch", ".h5": "keras", ".keras": "keras"}
#: Datasets that ship with scikit-learn (read once, then cached as .npz).
SKLEARN_DATASETS = frozenset({"digits", "breast-cancer"})


def requirements(exp: ExperimentConfig) -> list[str]:
    """The optional modules an experiment's Flower apps import (checked before it starts)."""
    from cifer_flwr.experiments.tasks import TASKS

    task = exp.task
    needed = []
    if task.model_path:
        needed += [m for s, m in MODEL_FILE_MODULES.items() if task.model_path.endswith(s)]
    elif task.name in TASKS:
        needed.append(FAMILY_MODULES[TASKS[task.name][0]])
    if task.dataset_path.endswith(".tfrecord"):
        needed.append("tensorflow")
    elif not task.dataset_path and task.dataset in SKLEARN_DATASETS:
        needed.append("sklearn")
    if exp.federation.kind.value == "simulation":
        needed.append("ray")
    return needed


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
    from cifer_flwr.tooling.federation.processes import Terminated, terminate_as_interrupt
    from cifer_flwr.tooling.launch import hydra_entry, validate_sweep

    args = list(ctx.args)
    try:
        # everything is validated, and every package the runs import is found, before a key
        # pair or a process exists
        exps = validate_sweep(args, multirun)
        check({m for e in exps for m in requirements(e)}, purpose="the experiments' tasks")
        if not available("matplotlib"):
            err_console.print(
                "note: matplotlib is not installed: results are written, metrics.png is not; "
                f"for plots: {install_command(['plot'])}",
                markup=False,
                highlight=False,
            )
        # SIGTERM / SIGHUP tear down like Ctrl-C: the run, the federation, their descendants
        with (
            terminate_as_interrupt(),
            progress("experiments", total=len(exps), quiet=len(exps) < 2) as advance,
        ):
            hydra_entry(args, multirun, on_done=lambda _dir, _ok: advance(1))
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
    except (CiferError, FileNotFoundError) as exc:
        raise fail(exc) from exc
    console.print(md.read_text(), highlight=False)
    console.print(f"wrote {md} and {png}")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``report`` to the root app."""
    app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        run
    )
    app.command("report")(report)
