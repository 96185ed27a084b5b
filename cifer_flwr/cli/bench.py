"""``cifer bench ...``: measurements, never assertions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cifer_flwr.cli._common import console, fail, status
from cifer_flwr.exceptions import CiferError
from cifer_flwr.tooling.bench import bench_crypto

app = typer.Typer(
    pretty_exceptions_show_locals=False, help="Measure encryption cost.", no_args_is_help=True
)


@app.command("crypto")
def crypto_cmd(
    params: Annotated[int, typer.Option(min=1, help="Model parameters (fp32).")] = 1_000_000,
    clients: Annotated[int, typer.Option(min=1, help="Clients whose updates are summed.")] = 10,
    preset: Annotated[str, typer.Option(help="Preset to measure.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line.")] = False,
) -> None:
    """Measure a preset against NVIDIA FLARE's parameters and plaintext numpy, in one run.

    Example: cifer bench crypto --params 1000000 --clients 10 --json
    """
    try:
        with status(quiet=False) as progress:
            result = bench_crypto(params, clients, preset, progress=progress)
    except CiferError as exc:
        raise fail(exc) from exc
    base = result["baseline"]
    table = Table(
        title=f"{params:,} fp32 parameters, {clients} clients "
        "(encrypt/serialize/deserialize: per client)"
    )
    table.add_column("metric")
    table.add_column(preset, justify="right")
    table.add_column(base, justify="right")
    for k in (
        "expansion",
        "encrypt_s",
        "serialize_s",
        "deserialize_s",
        "aggregate_s",
        "decrypt_s",
        "rel_error",
    ):
        fmt = "{:.2e}" if k == "rel_error" else "{:.3f}"
        table.add_row(k, fmt.format(result[k]), fmt.format(result[f"{k}_{base}"]))
    table.add_row("plaintext numpy sum (s)", f"{result['plain_aggregate_s']:.4f}", "")
    console.print(table)
    if as_json:
        print(json.dumps(result))
