"""``cifer bench ...``: measurements, never assertions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from cifer_flwr.cli._common import console, fail, status
from cifer_flwr.exceptions import CiferError
from cifer_flwr.tooling.bench import (
    ROUND_VARIANTS,
    Progress,
    bench_crypto,
    bench_masking,
    bench_round,
)

app = typer.Typer(
    pretty_exceptions_show_locals=False, help="Measure encryption cost.", no_args_is_help=True
)


def _measure(as_json: bool, run: Callable[[Progress], dict[str, Any]]) -> dict[str, Any] | None:
    """Run a benchmark with progress lines; with ``--json`` print it and return None."""
    try:
        with status(quiet=as_json, pipe_lines=True) as progress:
            result = run(progress)
    except CiferError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(result))
        return None
    return result


@app.command("crypto")
def crypto_cmd(
    params: Annotated[int, typer.Option(min=1, help="Model parameters (fp32).")] = 1_000_000,
    clients: Annotated[int, typer.Option(min=1, help="Clients whose updates are summed.")] = 10,
    preset: Annotated[str, typer.Option(help="Preset to measure.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object only.")] = False,
) -> None:
    """Measure a preset against NVIDIA FLARE's parameters and plaintext numpy, in one run.

    Example: cifer bench crypto --params 1000000 --clients 10 --json
    """
    result = _measure(as_json, lambda say: bench_crypto(params, clients, preset, progress=say))
    if result is None:
        return
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


@app.command("round")
def round_cmd(
    clients: Annotated[int, typer.Option(min=2, help="Clients in the round.")] = 100,
    params: Annotated[int, typer.Option(min=1, help="Model parameters (fp32).")] = 1_000_000,
    variants: Annotated[
        str, typer.Option(help="Comma-separated: plaintext and/or preset names.")
    ] = ",".join(ROUND_VARIANTS),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    masking: Annotated[
        bool,
        typer.Option(
            "--masking", help="Compare packed with packed + secure aggregation (§4.9) instead."
        ),
    ] = False,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="--masking: share of clients that drop.")
    ] = 0.1,
) -> None:
    """One FedAvg round side by side: Flower's plaintext FedAvg and the encrypted presets.

    Each variant's ServerApp runs in its own process (real peak RSS) and pulls the
    replies one by one. Example: cifer bench round --clients 100 --params 1000000 --json.
    With --masking: packed beside packed + masking, with --dropout of the clients vanishing
    after they shared their keys (cifer bench round --masking --clients 10 --json).
    """
    if masking:
        _masking_round(clients, params, dropout, as_json)
        return
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    result = _measure(as_json, lambda say: bench_round(clients, params, chosen, progress=say))
    if result is None:
        return
    table = Table(title=f"one round: {clients} clients x {params:,} fp32 parameters")
    table.add_column("metric")
    names = list(result["variants"])
    for name in names:
        table.add_column(name, justify="right")
    for k in (
        "upload_x",
        "download_x",
        "client_encrypt_s",
        "client_decrypt_s",
        "server_s",
        "server_peak_rss_mb",
        "max_abs_error",
    ):
        row = []
        for name in names:
            fig = result["variants"][name]
            value = fig.get(k)
            row.append(
                "missing"
                if "missing" in fig
                else ("{:.2e}" if k == "max_abs_error" else "{:.3f}").format(value)
            )
        table.add_row(k, *row)
    console.print(table)
    for name in names:
        if "missing" in result["variants"][name]:
            console.print(f"{name}: {result['variants'][name]['missing']}")


def _masking_round(clients: int, params: int, dropout: float, as_json: bool) -> None:
    result = _measure(as_json, lambda say: bench_masking(clients, params, dropout, progress=say))
    if result is None:
        return
    table = Table(
        title=f"one masked round: {clients} clients x {params:,} parameters, "
        f"{result['dropouts']} dropped after sharing"
    )
    table.add_column("metric")
    names = list(result["variants"])
    for name in names:
        table.add_column(name, justify="right")
    keys = list(result["variants"][names[-1]])
    for k in keys:
        row = []
        for name in names:
            value = result["variants"][name].get(k)
            fmt = "{:.2e}" if k == "max_abs_error" else "{:.3f}"
            row.append("" if value is None else fmt.format(value))
        table.add_row(k, *row)
    console.print(table)
