"""``cifer demo``: encrypted vs plaintext federated learning on a real local deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from cifer_flwr.cli._common import console, err_console, fail, interactive, status
from cifer_flwr.exceptions import CiferError
from cifer_flwr.extras import check

#: What the demo's Flower apps import: the PyTorch quickstart on scikit-learn's digits.
DEMO_MODULES = ("torch", "sklearn")


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value / 1024:,.0f}"


def _print_line(line: str) -> None:
    print(line, flush=True)


def _print_step(message: str) -> None:
    print(f"[cifer] {message}", flush=True)


def _rel(path: Path | None) -> str:
    """``path`` relative to the working directory when it lies below it."""
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{1000 * value:.1f} ms"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def demo(
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes.")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds per run.")] = 3,
    strategy: Annotated[
        str, typer.Option(help="fedavg|fedprox|fedyogi|fedadam|fedadagrad|fedavgm|securefed")
    ] = "fedavg",
    directory: Annotated[
        Path, typer.Option("--dir", help="Working directory (keys, logs, results, model).")
    ] = Path(".cifer/demo"),
    timeout: Annotated[float, typer.Option(help="Timeout of each run, seconds.")] = 600,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    masking: Annotated[
        bool,
        typer.Option(
            "--masking",
            help="Secure aggregation too: packed keys, signed masks, roster (§4.9).",
        ),
    ] = False,
) -> None:
    """Encrypted FL end to end: keys, a TLS federation, encrypted vs plaintext run, decryption.

    Starts a SuperLink (TLS, node auth) and N SuperNodes on 127.0.0.1, runs the PyTorch
    quickstart encrypted and then plaintext, stops everything, decrypts the final model with
    the private key and evaluates it. Example: cifer demo
    """
    from cifer_flwr.tooling.demo import run_demo
    from cifer_flwr.tooling.federation.processes import Terminated, terminate_as_interrupt

    try:
        check(DEMO_MODULES, purpose="the demo runs examples/quickstart-pytorch on digits")
        # SIGTERM / SIGHUP tear down like Ctrl-C: the runs, the federation, their descendants
        with terminate_as_interrupt(), status(quiet=as_json) as spinner:
            # in a pipe (no spinner) every step and round is one flushed stdout line
            say = spinner if as_json or interactive() else _print_step
            report = run_demo(
                directory,
                nodes=nodes,
                rounds=rounds,
                strategy=strategy,
                timeout=timeout,
                progress=say,
                on_round=None if as_json else _print_line,
                masking=masking,
            )
    except CiferError as exc:
        raise fail(exc) from exc
    except Terminated as exc:
        err_console.print(f"stopped ({exc}); every process the demo started was stopped")
        raise typer.Exit(code=128 + exc.signum) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    enc_rows, pla_rows = report.encrypted["rounds"], report.plaintext["rounds"]
    console.print(
        f"keys        {_rel(report.directory / 'keys' / 'demo')}  fingerprint "
        f"{report.fingerprint[:12]}  (server side got public.key only)",
        highlight=False,
    )
    console.print(
        f"federation  SuperLink + {report.nodes} SuperNodes on 127.0.0.1, TLS + node auth, "
        f"up in {report.federation_s:.1f} s",
        highlight=False,
    )
    if report.masking:
        console.print(
            f"masking     on: packed sums, {report.nodes} signed identities in "
            f"{_rel(report.directory / 'keys' / 'roster.json')}; one reply alone decrypts to "
            "noise (docs/design.md §4.9)",
            highlight=False,
        )
    console.print(
        f"runs        quickstart-pytorch, {report.strategy}, {len(enc_rows)} rounds: encrypted "
        f"{report.encrypted_run_s:.0f} s, plaintext {report.plaintext_run_s:.0f} s",
        highlight=False,
    )
    table = Table(
        title="per round: encrypted (enc) vs plaintext (plain)", box=box.SIMPLE, pad_edge=False
    )
    for col in ("round", "acc enc", "acc plain", "s enc", "s plain", "KiB enc", "KiB plain"):
        table.add_column(col, justify="right")
    plain = {r["round"]: r for r in pla_rows}
    for r in enc_rows:
        p = plain.get(r["round"], {})
        table.add_row(
            str(r["round"]),
            _pct(r["accuracy"]),
            _pct(p.get("accuracy")),
            _s(r["round-s"]),
            _s(p.get("round-s")),
            _kb(r["bytes-sent"] + r["bytes-received"]),
            _kb(p.get("bytes-sent", 0) + p.get("bytes-received", 0)),
        )
    console.print(table)
    console.print(
        "            acc: federated evaluation on the SuperNodes' test splits; s: round wall "
        "time; KiB: model payload sent + received per round",
        highlight=False,
    )
    enc_b = _mean([{"b": r["bytes-sent"] + r["bytes-received"]} for r in enc_rows], "b") or 0
    pla_b = _mean([{"b": r["bytes-sent"] + r["bytes-received"]} for r in pla_rows], "b") or 1
    enc_t, pla_t = _mean(enc_rows, "round-s") or 0, _mean(pla_rows, "round-s") or 1
    console.print(
        f"overhead    bytes/round x{enc_b / pla_b:.1f}; round time {enc_t:.1f} s vs "
        f"{pla_t:.1f} s; CKKS per round: server add {_ms(_mean(enc_rows, 'aggregate-s'))}, "
        f"client encrypt {_ms(_mean(enc_rows, 'client-encrypt-s'))} + decrypt "
        f"{_ms(_mean(enc_rows, 'client-decrypt-s'))}",
        highlight=False,
    )
    fe, fp = report.final_encrypted, report.final_plaintext
    console.print(
        f"final model {_rel(report.model_file)} ({report.model_bytes / 1024:,.0f} KiB, encrypted)\n"
        f"            decrypted with private.key: accuracy {_pct(fe['accuracy'])} on "
        f"{int(fe['num-examples'])} held-out digits (plaintext run's model: "
        f"{_pct(fp['accuracy'])})",
        highlight=False,
    )
    if report.secret_hits:
        console.print(
            f"[bold red]secret key material found in: {', '.join(map(str, report.secret_hits))}",
        )
    else:
        console.print(
            f"server side no secret key in the SuperLink's files, logs, results or the saved "
            f"model ({report.scanned} files scanned)",
            highlight=False,
        )
    console.print(
        f"teardown    SuperLink and {report.stopped - 1} SuperNodes stopped (with their helper "
        f"processes); total {report.total_s:.0f} s; details in "
        f"{_rel(report.directory / 'demo.json')}",
        highlight=False,
    )
