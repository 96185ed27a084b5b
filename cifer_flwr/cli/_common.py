"""Output helpers shared by the CLI modules."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cifer_flwr.exceptions import CiferError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one printable line.

    Messages may quote multi-line library errors or text from a hostile file: terminal escape
    sequences and other control characters are removed, whitespace runs become one space.
    """
    text = _ANSI.sub("", str(exc))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split()) or type(exc).__name__


def fail(exc: BaseException) -> typer.Exit:
    """Print an error the user can act on, on one line, and return the exit to raise.

    A :class:`~cifer_flwr.exceptions.CiferError` exits with code 2, an ``OSError`` (a file
    that cannot be read or written) with code 1. Callers pass only these two: any other
    exception is a bug and keeps its traceback.
    """
    err_console.print("[bold red]error:[/]", end=" ")
    err_console.print(one_line(exc), markup=False, highlight=False)
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
