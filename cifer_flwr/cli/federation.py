"""``cifer federation up|down|status|bundle``: a local Flower deployment, or bundles per host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cifer_flwr.cli._common import console, fail, status
from cifer_flwr.exceptions import CiferError

if TYPE_CHECKING:
    from rich.table import Table

    from cifer_flwr.tooling.federation.runs import RunInfo

app = typer.Typer(
    pretty_exceptions_show_locals=False,
    help="Start, inspect and stop a local Flower deployment (SuperLink + SuperNodes), or "
    "write per-host bundles for one across machines (bundle).",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Federation directory (state, logs, certificates).")
]


@app.command("up")
def up_cmd(
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes.")] = 3,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="Serve the SuperLink over TLS (own CA); the default without --simulation.",
        ),
    ] = None,
    auth: Annotated[
        bool, typer.Option(help="SuperNode authentication (registered P-384 keys; needs TLS).")
    ] = False,
    keys: Annotated[
        str | None,
        typer.Option(help="CKKS key pair NAME under --keys-dir (made when missing)."),
    ] = None,
    keys_dir: Annotated[Path, typer.Option(help="Parent directory of key pairs.")] = Path("keys"),
    directory: DirOption = Path(".cifer/federation"),
    simulation: Annotated[
        bool,
        typer.Option(
            "--simulation",
            help="Flower's simulation runtime instead (Ray on 127.0.0.1): N virtual SuperNodes, "
            "connection cifer-simulation, no TLS (needs the simulation extra).",
        ),
    ] = False,
) -> None:
    """Start a SuperLink and N SuperNodes on 127.0.0.1 and write a flwr connection.

    Node i gets --node-config "partition-id=i num-partitions=N private-key=KEYS/NAME/private.key".
    Example: cifer federation up --nodes 3 --tls --auth --keys demo
    With --simulation: one simulation SuperLink, N virtual SuperNodes (key via CIFER_PRIVATE_KEY).
    """
    from cifer_flwr import crypto
    from cifer_flwr.tooling.federation import up
    from cifer_flwr.tooling.federation.simulation import require_ray, up_simulation

    try:
        if simulation:  # before any key pair (docs/design.md §7.1)
            if tls:
                raise CiferError(
                    "--tls with --simulation: the virtual SuperNodes run inside the "
                    "SuperLink's process tree, there is no network to encrypt, so TLS would "
                    "be ignored; drop --tls (or drop --simulation for a TLS deployment)."
                )
            if auth:
                raise CiferError(
                    "--simulation has no SuperNodes to authenticate (virtual SuperNodes run "
                    "inside the SuperLink's process tree); drop --auth."
                )
            require_ray()
        tls = True if tls is None else tls
        private = public = None
        if keys:
            kdir = crypto.key_directory(keys_dir, keys)
            private, public = kdir / crypto.PRIVATE_KEY_FILE, kdir / crypto.PUBLIC_KEY_FILE
            if not private.is_file():
                key = crypto.generate_key("default")
                crypto.write_key_pair(key, kdir)
                console.print(f"generated key pair {kdir} (fingerprint {key.short_fingerprint})")
        with status() as say:
            # detached: the federation outlives this command until `cifer federation down`
            if simulation:
                say(f"starting a simulation SuperLink with {nodes} virtual SuperNodes")
                fed = up_simulation(
                    directory, nodes=nodes, private_key=private, public_key=public, detached=True
                )
            else:
                say(f"starting a SuperLink and {nodes} SuperNodes")
                fed = up(
                    directory,
                    nodes=nodes,
                    tls=tls,
                    auth=auth,
                    private_key=private,
                    public_key=public,
                    detached=True,
                )
    except CiferError as exc:
        raise fail(exc) from exc
    mode = ("TLS" if tls else "insecure") + (", node auth" if auth else "")
    if simulation:
        mode = f"simulation, {nodes} virtual SuperNodes, Ray on 127.0.0.1"
    console.print(f"SuperLink   {fed.address} ({mode})", highlight=False)
    for p in fed.processes:
        console.print(f"  {p.role:<14} pid {p.pid:<8} log {p.log}", highlight=False)
    console.print(f"connection  {fed.connection} in {fed.flwr_home}/config.toml", highlight=False)
    run_cfg = f" --run-config 'public-key=\"{fed.public_key}\"'" if fed.public_key else ""
    console.print(
        f"run an app  FLWR_HOME={fed.flwr_home} flwr run examples/quickstart-pytorch "
        f"{fed.connection}{run_cfg}",
        highlight=False,
    )
    console.print(f"stop        cifer federation down --dir {directory}", highlight=False)


@app.command("bundle")
def bundle_cmd(
    superlink_address: Annotated[
        str,
        typer.Option(
            help="IP address or host name the SuperNodes reach the SuperLink at (the "
            "certificate's SAN), e.g. 10.0.0.1."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="New or empty directory for the bundles.")],
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes (hosts).")] = 2,
    port: Annotated[int, typer.Option(help="The SuperLink's port.")] = 9092,
    valid_days: Annotated[
        int, typer.Option(help="Days the CA and SuperLink certificates are valid.")
    ] = 365,
    keys: Annotated[
        str, typer.Option(help="CKKS key pair NAME under --keys-dir (made when missing).")
    ] = "federation",
    keys_dir: Annotated[Path, typer.Option(help="Parent directory of key pairs.")] = Path("keys"),
    preset: Annotated[
        str, typer.Option(help="Parameter preset when the key pair is made.")
    ] = "default",
) -> None:
    """Write what each host of a federation across machines needs: one bundle per host.

    OUT/superlink: CA and SuperLink certificate for the address, the SuperNodes' auth public
    keys, the CKKS public key, start.sh (flower-superlink, TLS, node auth) and flwr.sh (the
    flwr CLI with connection 'cifer'). OUT/supernode-I: the CA, its own auth key pair, the
    CKKS private key and start.sh (flower-supernode). Secrets are 0600.
    Example: cifer federation bundle --superlink-address 10.0.0.1 --nodes 2 --out bundles
    """
    from cifer_flwr import crypto
    from cifer_flwr.tooling.federation.bundle import BUNDLE_CONNECTION, make_bundles

    try:
        kdir = crypto.key_directory(keys_dir, keys)
        private, public = kdir / crypto.PRIVATE_KEY_FILE, kdir / crypto.PUBLIC_KEY_FILE
        if not private.is_file():
            private, public = crypto.generate_key_pair(preset, kdir)
            console.print(f"generated key pair {kdir}", highlight=False)
        made = make_bundles(
            out,
            superlink_address=superlink_address,
            nodes=nodes,
            private_key=private,
            public_key=public,
            port=port,
            valid_days=valid_days,
        )
    except CiferError as exc:
        raise fail(exc) from exc
    console.print(
        f"bundles for SuperLink {made.address} (key pair {made.fingerprint}) in {out}:",
        highlight=False,
    )
    console.print(f"  {made.superlink}  -> the SuperLink host", highlight=False)
    for node in made.supernodes:
        console.print(f"  {node}  -> its own SuperNode host", highlight=False)
    console.print(
        "copy each directory to its host (secret files stay 0600), then\n"
        "  SuperLink host:  ./start.sh   and, once it runs,\n"
        + "".join(
            f"                   ./flwr.sh supernode register supernodes/{n.name}.pub "
            f"{BUNDLE_CONNECTION}\n"
            for n in made.supernodes
        )
        + "  each SuperNode:  ./start.sh\n"
        f"  the run:         ./flwr.sh run APP {BUNDLE_CONNECTION} --run-config "
        f'"public-key=\\"$PWD/{crypto.PUBLIC_KEY_FILE}\\""   (in the SuperLink bundle)',
        highlight=False,
        markup=False,
    )


@app.command("down")
def down_cmd(directory: DirOption = Path(".cifer/federation")) -> None:
    """Stop exactly the processes `up` started (PIDs from the state file), and their children.

    Idempotent: when nothing is up (no federation in DIR, or every process already stopped)
    it says so and exits 0, like a second `down`. Exit 2 only when a process survives.
    """
    from cifer_flwr.tooling.federation import Federation
    from cifer_flwr.tooling.federation.local import STATE_FILE

    if not (directory / STATE_FILE).is_file():
        console.print(
            f"nothing is up in {directory} (no {STATE_FILE}: no federation was started there)",
            highlight=False,
        )
        return
    try:
        fed = Federation.load(directory)
        stopped = fed.stop()
    except CiferError as exc:
        raise fail(exc) from exc
    if not stopped:
        console.print(
            f"nothing is up in {directory} (its {len(fed.processes)} processes had already "
            "stopped)",
            highlight=False,
        )
    for p in stopped:
        console.print(f"stopped {p.role} (pid {p.pid})", highlight=False)


@app.command("status")
def status_cmd(
    directory: DirOption = Path(".cifer/federation"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the federation's address, processes (running or not) and health."""
    from cifer_flwr.tooling.federation import Federation

    try:
        info = Federation.load(directory).status()
    except CiferError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(info, indent=2))
        return
    mode = ("TLS" if info["tls"] else "insecure") + (", node auth" if info["auth"] else "")
    console.print(
        f"SuperLink {info['address']} ({mode}) healthy={info['healthy']}", highlight=False
    )
    for p in info["processes"]:
        state = "running" if p["running"] else "stopped"
        console.print(f"  {p['role']:<14} pid {p['pid']:<8} {state:<8} {p['log']}", highlight=False)


def runs_table(runs: list[RunInfo], failed: list[RunInfo]) -> Table:
    """The table of ``cifer runs``: run ids and statuses are never cut, other columns wrap.

    On a narrow terminal (80 columns) the app name and times fold onto more lines instead
    of a run id or status being cut with an ellipsis (issue 22).
    """
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE, pad_edge=False)
    whole = {"run id": max(len(str(r.run_id)) for r in runs), "status": 0}
    whole["status"] = max(len(r.status) for r in runs)
    for col in ("run id", "app", "status", "started (UTC)", "finished (UTC)", "s"):
        if col in whole:  # never cut: the id is what `flwr log` needs
            table.add_column(col, no_wrap=True, min_width=max(whole[col], len(col)))
        else:
            table.add_column(col, justify="right" if col == "s" else "left", overflow="fold")
    for r in runs:
        table.add_row(
            str(r.run_id),
            r.app,
            r.status,
            r.running_at or r.pending_at,
            r.finished_at or "-",
            f"{r.elapsed:.0f}",
            style="red" if r in failed else None,
        )
    return table


def runs_cmd(
    directory: DirOption = Path(".cifer/federation"),
    run_id: Annotated[int | None, typer.Option(help="Show only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the runs of a local federation with their final status, as Flower records it.

    Status, details (a failed ServerApp's exception) and times come from the SuperLink
    (`flwr ls`), so a run's outcome never depends on `flwr run`'s exit code. Exit 0 when
    every listed run completed or is still going, 1 when one failed or was stopped.
    Example: cifer runs --dir .cifer/federation
    """
    from cifer_flwr.tooling.federation import Federation, FederationError
    from cifer_flwr.tooling.federation.runs import list_runs

    try:
        fed = Federation.load(directory)
        if not fed.alive().get("superlink", False):
            raise FederationError(
                f"the SuperLink of {directory} is not running, and Flower keeps its runs in the "
                "SuperLink's memory; start a federation with `cifer federation up` and run apps "
                "on it."
            )
        runs = list_runs(fed, run_id)
    except CiferError as exc:
        raise fail(exc) from exc
    show_runs(
        runs,
        as_json=as_json,
        empty=f"no runs on the federation in {directory} yet",
        follow=f"FLWR_HOME={fed.flwr_home} flwr log RUN_ID {fed.connection} --stream",
    )


def show_runs(runs: list[RunInfo], *, as_json: bool, empty: str, follow: str) -> None:
    """Print ``runs`` (a table and each failed run's reason, or JSON) and exit 1 if one failed.

    A run failed when it finished without succeeding (Flower's ``finished:failed`` or
    ``finished:stopped``); ``empty`` is printed when there are none, ``follow`` says how
    to follow one run.
    """
    failed = [r for r in runs if r.status.startswith("finished") and not r.succeeded]
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        raise typer.Exit(code=1 if failed else 0)
    if not runs:
        console.print(empty, highlight=False)
        return
    console.print(runs_table(runs, failed))
    for r in failed:
        console.print(f"run {r.run_id}: {r.details or r.status}", markup=False, highlight=False)
    console.print(f"follow one   {follow}", highlight=False)
    if failed:
        raise typer.Exit(code=1)
