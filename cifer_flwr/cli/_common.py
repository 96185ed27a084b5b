"""Output helpers shared by the CLI modules."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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


class Advance(Protocol):
    """What :func:`progress` yields: ``advance(steps=1)`` moves the bar ``steps`` forward."""

    def __call__(self, steps: int = 1, /) -> None: ...


def _no_advance(steps: int = 1, /) -> None:
    """:class:`Advance` that draws nothing (``--json``, not a terminal)."""


def interactive() -> bool:
    """Whether progress may be drawn: stderr is a terminal (not a pipe, a file or CI)."""
    return sys.stderr.isatty() and err_console.is_terminal


@contextmanager
def progress(description: str, total: int | None, *, quiet: bool = False) -> Iterator[Advance]:
    """A rich progress bar on stderr for a long operation; yields ``advance(steps=1)``.

    The bar is drawn only on a terminal and not when ``quiet`` (pass ``quiet=as_json``):
    in ``--json`` mode, in a pipe or in CI nothing is printed and ``advance`` does nothing.
    ``total=None`` shows a spinner with the elapsed time instead of a bar.

    Examples
    --------
    >>> with progress("iterations", total=3, quiet=True) as advance:
    ...     for _ in range(3):
    ...         advance(1)

    """
    if quiet or not interactive():
        yield _no_advance
        return
    columns = (
        [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
        if total is None
        else [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(steps: int = 1, /) -> None:
            bar.advance(task, steps)

        yield advance


def _step_line(message: str) -> None:
    """One ``[cifer] step`` line on stderr, flushed (progress where no spinner is drawn)."""
    print(f"[cifer] {message}", file=sys.stderr, flush=True)


@contextmanager
def status(quiet: bool = False, *, pipe_lines: bool = False) -> Iterator[Callable[[str], None]]:
    """Yield a callback that shows the current step with a spinner and elapsed time.

    Drawn only on a terminal (see :func:`interactive`) and not when ``quiet``. With
    ``pipe_lines``, outside a terminal (a pipe, a log file, CI) each step is one flushed
    ``[cifer] step`` line on stderr instead, so long work is not silent; stdout keeps the result.
    """
    if quiet:
        yield lambda _msg: None
        return
    if not interactive():
        yield _step_line if pipe_lines else (lambda _msg: None)
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
