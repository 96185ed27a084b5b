"""``cifer federation up|down|status``: a local Flower deployment on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cifer_flwr.cli._common import console, fail, status
from cifer_flwr.exceptions import CiferError

app = typer.Typer(
    pretty_exceptions_show_locals=False,
    help="Start, inspect and stop a local Flower deployment (SuperLink + SuperNodes).",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Federation directory (state, logs, certificates).")
]


@app.command("up")
def up_cmd(
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes.")] = 2,
    tls: Annotated[bool, typer.Option(help="Serve the SuperLink over TLS (own CA).")] = True,
    auth: Annotated[
        bool, typer.Option(help="SuperNode authentication (registered P-384 keys; needs TLS).")
    ] = False,
    keys: Annotated[
        str | None,
        typer.Option(help="CKKS key pair NAME under --keys-dir (made when missing)."),
    ] = None,
    keys_dir: Annotated[Path, typer.Option(help="Parent directory of key pairs.")] = Path("keys"),
    directory: DirOption = Path(".cifer/federation"),
) -> None:
    """Start a SuperLink and N SuperNodes on 127.0.0.1 and write a flwr connection.

    Node i gets --node-config "partition-id=i num-partitions=N private-key=KEYS/NAME/private.key".
    Example: cifer federation up --nodes 3 --tls --auth --keys demo
    """
    from cifer_flwr import crypto
    from cifer_flwr.tooling.federation import up

    try:
        private = public = None
        if keys:
            kdir = crypto.key_directory(keys_dir, keys)
            private, public = kdir / crypto.PRIVATE_KEY_FILE, kdir / crypto.PUBLIC_KEY_FILE
            if not private.is_file():
                key = crypto.generate_key("default")
                crypto.write_key_pair(key, kdir)
                console.print(f"generated key pair {kdir} (fingerprint {key.short_fingerprint})")
        with status() as say:
            say(f"starting a SuperLink and {nodes} SuperNodes")
            # detached: the federation outlives this command until `cifer federation down`
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


@app.command("down")
def down_cmd(directory: DirOption = Path(".cifer/federation")) -> None:
    """Stop exactly the processes `up` started (PIDs from the state file), and their children."""
    from cifer_flwr.tooling.federation import Federation

    try:
        fed = Federation.load(directory)
        stopped = fed.stop()
    except CiferError as exc:
        raise fail(exc) from exc
    if not stopped:
        console.print("nothing was running")
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
