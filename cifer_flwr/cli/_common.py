"""Output helpers shared by the CLI modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cifer_flwr.exceptions import CiferError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(exc: BaseException) -> typer.Exit:
    """Print an error the user can act on and return the exit to raise."""
    err_console.print("[bold red]error:[/]", end=" ")
    err_console.print(str(exc), markup=False, highlight=False)
    return typer.Exit(code=2 if isinstance(exc, CiferError) else 1)


@contextmanager
def status(quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Yield a callback that shows the current step with a spinner and elapsed time."""
    if quiet:
        yield lambda _msg: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda msg: progress.update(task, description=msg)
