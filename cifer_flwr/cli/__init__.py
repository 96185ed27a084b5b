"""The ``cifer`` command line: it parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer

from cifer_flwr.cli import bench, demo, federation, flower_local, keys, run, securetrain

app = typer.Typer(
    pretty_exceptions_show_locals=False,
    name="cifer",
    help="CKKS-encrypted federated learning for Flower.",
    no_args_is_help=True,
    add_completion=False,
)
keys.register(app)
app.add_typer(bench.app, name="bench")
app.add_typer(securetrain.app, name="securetrain")
run.register(app)
app.add_typer(federation.app, name="federation")
app.command("runs")(federation.runs_cmd)
app.add_typer(flower_local.app, name="flower-local")
app.command("demo")(demo.demo)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
