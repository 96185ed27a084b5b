"""A local Flower deployment on 127.0.0.1: one SuperLink and N SuperNodes.

TLS and SuperNode authentication are optional.

Everything lives in one directory (default ``.cifer/federation``)::

    federation.json        state: address, connection, PIDs, options (the "pid file")
    flwr-home/config.toml  the ``flwr`` CLI connection (use FLWR_HOME=... flwr run APP NAME)
    tls/                   ca.crt, server.crt, server.key (0600)          [--tls]
    auth/                  node-I (0600), node-I.pub                      [--auth]
    home/<role>/           FLWR_HOME of each process (installed app bundles)
    logs/<role>.log        output of each process

CKKS keys are *not* kept here: SuperNodes get the path of the private key in their node
config, the ServerApp gets the public key path through run config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifer_flwr.constants import ENV_PRIVATE_KEY, NODE_CONFIG_PRIVATE_KEY
from cifer_flwr.exceptions import CiferError
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.certs import TlsFiles, make_node_auth_key, make_tls_files

__all__ = [
    "DEFAULT_CONNECTION",
    "DEFAULT_DIR",
    "STATE_FILE",
    "Federation",
    "FederationError",
    "ProcessInfo",
    "flower_env",
    "flower_executable",
    "free_port",
    "up",
    "write_connection",
]

DEFAULT_DIR = Path(".cifer/federation")
DEFAULT_CONNECTION = "cifer-local"
STATE_FILE = "federation.json"
_HOST = "127.0.0.1"
#: Variables that make Flower's CLI colour its output even in a pipe (set by ipykernel).
_FORCED_COLOR = ("FORCE_COLOR", "CLICOLOR_FORCE")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class FederationError(CiferError):
    """A local federation could not be started, reached or stopped."""


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes and CLI calls started by cifer.

    Telemetry and update checks off, fast SuperExec polling, the interpreter's ``bin``
    first on ``PATH`` (the SuperLink starts ``flower-superexec`` by name), ``FLWR_HOME`` set,
    and ``CIFER_PRIVATE_KEY`` removed (keys reach SuperNodes through node config only).
    ``FORCE_COLOR`` / ``CLICOLOR_FORCE`` are removed too: a Jupyter kernel sets them, and
    Flower's CLI then colours its ``--format json`` output.
    """
    env = dict(os.environ)
    env.pop(ENV_PRIVATE_KEY, None)
    for forced in _FORCED_COLOR:
        env.pop(forced, None)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
        FLWR_HOME=str(flwr_home),
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def flower_executable(name: str) -> str:
    """Path of Flower's executable ``name`` (this environment's first, then ``PATH``).

    Raises
    ------
    FederationError
        When Flower is not installed here.

    """
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FederationError(
            f"'{name}' not found on PATH; install Flower into this environment: "
            "pip install 'flwr>=1.41,<1.43'."
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class ProcessInfo:
    """One process started by the federation tooling."""

    role: str
    pid: int
    args: list[str]
    log: str
    port: int | None = None


@dataclass
class Federation:
    """A running (or stopped) local federation, as recorded in ``federation.json``.

    Attributes
    ----------
    directory : Path
        The federation directory.
    address : str
        ``127.0.0.1:PORT`` of the SuperLink (Fleet, Control and Runtime API).
    connection : str
        Name of the ``flwr`` connection in ``flwr_home/config.toml``.
    tls, auth : bool
        Whether TLS and SuperNode authentication are on.
    ca_cert : str or None
        CA certificate SuperNodes and the CLI verify the SuperLink with.
    private_key, public_key : str or None
        Paths of the CKKS key pair (the SuperNodes get ``private_key``; ``public_key`` is
        what to pass to the ServerApp as run config ``public-key``).
    num_partitions : int
        ``num-partitions`` given to the SuperNodes.
    processes : list of ProcessInfo
        Every process started, SuperLink first.
    detached : bool
        Whether the processes outlive the process that started them (``cifer federation
        up``); otherwise they are tied to it and stopped when it dies (parent-death signal).
    scratch_dirs : list of str
        Temporary directories the federation owns outside ``directory`` (a simulation's Ray
        session root); :meth:`stop` removes them once every process is gone.

    """

    directory: Path
    address: str
    connection: str = DEFAULT_CONNECTION
    tls: bool = False
    auth: bool = False
    ca_cert: str | None = None
    private_key: str | None = None
    public_key: str | None = None
    num_partitions: int = 0
    processes: list[ProcessInfo] = field(default_factory=list)
    detached: bool = False
    scratch_dirs: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ state file
    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME holding the CLI connection (``config.toml``)."""
        return self.directory / "flwr-home"

    @property
    def state_path(self) -> Path:
        """The state ("pid") file."""
        return self.directory / STATE_FILE

    def save(self) -> None:
        """Write ``federation.json``."""
        data = asdict(self)
        data["directory"] = str(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str] = DEFAULT_DIR) -> Federation:
        """Read ``federation.json`` from ``directory``.

        Raises
        ------
        FederationError
            When there is no state file.

        """
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise FederationError(
                f"no federation in {str(directory)!r} ({STATE_FILE} missing); start one with "
                "`cifer federation up --nodes N`."
            )
        data = json.loads(path.read_text())
        data["directory"] = Path(data["directory"])
        data["processes"] = [ProcessInfo(**p) for p in data["processes"]]
        return cls(**data)

    # ------------------------------------------------------------------ helpers
    def env(self) -> dict[str, str]:
        """Environment for ``flwr`` CLI calls against this federation."""
        return flower_env(self.flwr_home)

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` with this federation's FLWR_HOME; output captured."""
        try:
            return subprocess.run(
                [flower_executable("flwr"), *args],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                preexec_fn=processes.cli_preexec(),
            )
        except subprocess.TimeoutExpired as exc:
            raise FederationError(
                f"`flwr {' '.join(args)}` did not answer in {timeout:g} s."
            ) from exc

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` and return the JSON (``success`` is checked).

        Raises
        ------
        FederationError
            When the output is not JSON or ``success`` is false (exit codes are not trusted).

        """
        proc = self.flwr(*args, "--format", "json", timeout=timeout)
        data = parse_json_output(proc.stdout)
        if data is None or not data.get("success", False):
            msg = (data or {}).get("error-message") or (proc.stdout + proc.stderr).strip()
            raise FederationError(f"`flwr {' '.join(args)}` failed: {msg}")
        return data

    def alive(self) -> dict[str, bool]:
        """Role -> whether the process is running."""
        return {p.role: processes.is_alive(p.pid) for p in self.processes}

    def health(self, timeout: float = 2.0) -> bool:
        """Whether the SuperLink answers ``GET /health``."""
        scheme = "https" if self.tls else "http"
        ctx = ssl.create_default_context(cafile=self.ca_cert) if self.tls else None
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.address}/health", timeout=timeout, context=ctx
            ) as resp:
                return int(resp.status) == 200
        except (OSError, ssl.SSLError):
            return False

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls`` as JSON rows (``node-id``, ``status``, ...)."""
        return list(self.flwr_json("supernode", "ls", self.connection).get("nodes", []))

    def wait_nodes_online(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` SuperNodes are online.

        Raises
        ------
        FederationError
            On timeout, naming the logs to read.

        """
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            try:
                online = sum(1 for n in self.nodes() if n.get("status") == "online")
            except FederationError:
                online = 0
            if online >= count:
                return
            time.sleep(0.5)
        raise FederationError(
            f"{online} of {count} SuperNodes came online in {timeout:g} s; see the logs in "
            f"{self.directory / 'logs'}."
        )

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode's auth public key (``flwr supernode register``)."""
        data = self.flwr_json("supernode", "register", str(public_key), self.connection)
        return int(data["node-id"])

    def start_supernode(
        self,
        partition_id: int,
        *,
        num_partitions: int | None = None,
        private_key: str | os.PathLike[str] | None = None,
        role: str | None = None,
        auth_key: str | os.PathLike[str] | None = None,
        register: bool = True,
        node_config: dict[str, str] | None = None,
    ) -> ProcessInfo:
        """Start one SuperNode (and record it in the state file).

        Parameters
        ----------
        partition_id : int
            Node config ``partition-id``.
        num_partitions : int, optional
            Node config ``num-partitions`` (default: the federation's).
        private_key : path, optional
            CKKS private key for node config ``private-key`` (default: the federation's).
        role : str, optional
            Name for logs and the state file (default ``supernode-<partition_id>``).
        auth_key : path, optional
            SuperNode auth private key (with ``auth``); a new key is made when omitted.
        register : bool
            Register the new auth key with the SuperLink first (``False`` starts a node the
            SuperLink must refuse).
        node_config : dict of str to str, optional
            More node config entries (``dataset-path``, ``model-path``, ...).

        """
        role = role or f"supernode-{partition_id}"
        num_partitions = self.num_partitions if num_partitions is None else num_partitions
        key = private_key if private_key is not None else self.private_key
        config = f"partition-id={partition_id} num-partitions={num_partitions}"
        for name, value in (node_config or {}).items():  # e.g. dataset-path (fedlearn), quoted
            config += f" {name}={json.dumps(str(value))}"
        if key:
            config += f' {NODE_CONFIG_PRIVATE_KEY}="{Path(key).resolve()}"'
        port = free_port()
        args = [
            flower_executable("flower-supernode"),
            "--superlink",
            self.address,
            "--host",
            _HOST,
            "--port",
            str(port),
            "--node-config",
            config,
        ]
        if self.tls:
            args += ["--root-certificates", str(self.ca_cert)]
        else:
            args.append("--insecure")
        if self.auth:
            if auth_key is None:
                auth_key, pub = make_node_auth_key(self.directory / "auth", role)
                if register:
                    self.register_node(pub)
            args += ["--auth-supernode-private-key", str(auth_key)]
        log = self.directory / "logs" / f"{role}.log"
        home = self.directory / "home" / role
        home.mkdir(parents=True, exist_ok=True)
        pid = processes.spawn(
            args, log_path=log, env=flower_env(home), cwd=home, tied=not self.detached
        )
        info = ProcessInfo(role, pid, args, str(log), port)
        self.processes.append(info)
        self.save()
        return info

    def stop(self, *, grace: float = 8.0) -> list[ProcessInfo]:
        """Stop every recorded process (SuperNodes first) and their descendants, by PID.

        Returns
        -------
        list of ProcessInfo
            The processes that were still running and got stopped.

        Raises
        ------
        FederationError
            When a process survives SIGKILL.

        """
        ours = [p for p in reversed(self.processes) if _is_ours(p)]
        left = processes.stop_pids([p.pid for p in ours], grace=grace)
        if not left:  # nothing uses them any more (Ray's sockets and session logs)
            for scratch in self.scratch_dirs:
                shutil.rmtree(scratch, ignore_errors=True)
            self.scratch_dirs = []
        self.save()
        if left:
            raise FederationError(f"processes {left} survived SIGKILL.")
        return ours

    def status(self) -> dict[str, Any]:
        """Address, options and per-process state, for ``cifer federation status``."""
        alive = self.alive()
        rows = [
            {
                "role": p.role,
                "pid": p.pid,
                "running": alive[p.role],
                "port": p.port,
                "log": p.log,
            }
            for p in self.processes
        ]
        up_ = bool(self.processes) and alive.get("superlink", False)
        return {
            "directory": str(self.directory),
            "address": self.address,
            "connection": self.connection,
            "flwr-home": str(self.flwr_home),
            "tls": self.tls,
            "auth": self.auth,
            "healthy": up_ and self.health(),
            "public-key": self.public_key,
            "processes": rows,
        }


def parse_json_output(text: str) -> dict[str, Any] | None:
    """The last JSON object printed by a ``flwr ... --format json`` call, if any.

    Terminal colour codes are ignored (Flower colours JSON when colour is forced).
    """
    text = _ANSI.sub("", text)
    start = text.find("{")
    while start != -1:
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value if isinstance(value, dict) else None
    return None


def _is_ours(p: ProcessInfo) -> bool:
    """PID reuse guard: the PID still runs the program we started."""
    if not processes.is_alive(p.pid):
        return False
    current = processes.cmdline(p.pid)
    # a tied process runs under its supervisor: python -I _tie.py GRACE PROGRAM ...
    return not current or any(Path(a).name == Path(p.args[0]).name for a in current[:5])


def write_connection(fed: Federation) -> None:
    """Write the federation's connection into ``FLWR_HOME``'s ``config.toml`` (``flwr`` CLI)."""
    fed.flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{fed.connection}"',
        "",
        f"[superlink.{fed.connection}]",
        f'address = "{fed.address}"',
    ]
    if fed.tls:
        lines.append(f"root-certificates = {json.dumps(str(fed.ca_cert))}")
    else:
        lines.append("insecure = true")
    (fed.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def up(
    directory: str | os.PathLike[str] = DEFAULT_DIR,
    *,
    nodes: int = 2,
    tls: bool = True,
    auth: bool = False,
    private_key: str | os.PathLike[str] | None = None,
    public_key: str | os.PathLike[str] | None = None,
    node_private_keys: dict[int, str | os.PathLike[str]] | None = None,
    connection: str = DEFAULT_CONNECTION,
    timeout: float = 60.0,
    detached: bool = False,
    port: int | None = None,
    tls_files: TlsFiles | None = None,
    node_configs: Mapping[int, Mapping[str, str]] | None = None,
) -> Federation:
    """Start a SuperLink and ``nodes`` SuperNodes on 127.0.0.1 and wait until all are online.

    Parameters
    ----------
    directory : str or path
        Federation directory (state, logs, certificates, FLWR_HOME).
    nodes : int
        Number of SuperNodes; node ``i`` gets ``partition-id=i num-partitions=nodes``.
    tls : bool
        Serve the SuperLink over TLS with a freshly made CA and server certificate.
    auth : bool
        Enable SuperNode authentication (needs ``tls``): one P-384 key per node,
        registered with ``flwr supernode register`` before the node starts.
    private_key, public_key : str or path, optional
        CKKS key pair: SuperNodes get ``private-key=<path>`` in node config; the public key
        path is recorded for the ServerApp's run config.
    node_private_keys : dict, optional
        Per-node override of ``private_key`` (e.g. a wrong key for a test).
    connection : str
        Name of the ``flwr`` connection written to ``DIRECTORY/flwr-home/config.toml``.
    timeout : float
        Seconds to wait for the SuperLink and the nodes.
    detached : bool
        Let the processes outlive the caller (``cifer federation up``; stop them with
        :meth:`Federation.stop` / ``cifer federation down``). By default they are tied to
        the calling process: the kernel sends them SIGTERM when it dies, SIGKILL included,
        and Flower's helpers follow their parents (no orphans). Call from the main thread.
    port : int, optional
        The SuperLink's port (default: a free one); with a port, ``nodes=0`` starts the
        SuperLink alone (SuperNodes join by themselves, as with ``cifer_flwr.fedlearn``).
    tls_files : TlsFiles, optional
        The SuperLink's own CA / certificate / key (default: freshly made ones).
    node_configs : mapping, optional
        More node config per node index (e.g. a masking ``identity-key`` and ``roster``).

    Returns
    -------
    Federation
        The running federation (also written to ``DIRECTORY/federation.json``).

    Raises
    ------
    FederationError
        When a federation already runs there, ``auth`` without ``tls``, or something does
        not come up (everything started is stopped again).

    """
    d = Path(directory).resolve()
    if (d / STATE_FILE).is_file():
        old = Federation.load(d)
        if any(old.alive().values()):
            raise FederationError(
                f"a federation already runs in {d} (PIDs "
                f"{[p.pid for p in old.processes]}); stop it with `cifer federation down`."
            )
    if auth and not tls:
        raise FederationError("SuperNode authentication needs TLS: pass --tls with --auth.")
    if nodes < (0 if port is not None else 1):  # fedlearn.Server: clients join by themselves
        raise FederationError(f"--nodes must be at least 1, got {nodes}.")
    for sub in ("logs", "home", "auth", "tls", "flwr-home"):
        shutil.rmtree(d / sub, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)

    port = free_port() if port is None else port
    fed = Federation(
        directory=d,
        address=f"{_HOST}:{port}",
        connection=connection,
        tls=tls,
        auth=auth,
        private_key=str(Path(private_key).resolve()) if private_key else None,
        public_key=str(Path(public_key).resolve()) if public_key else None,
        num_partitions=nodes,
        detached=detached,
    )
    args = [
        flower_executable("flower-superlink"),
        "--host",
        _HOST,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if tls:
        files = tls_files or make_tls_files(d / "tls")
        fed.ca_cert = str(files.ca_cert)
        args += [
            "--ssl-ca-certfile",
            str(files.ca_cert),
            "--ssl-certfile",
            str(files.server_cert),
            "--ssl-keyfile",
            str(files.server_key),
        ]
    else:
        args.append("--insecure")
    if auth:
        args.append("--enable-supernode-auth")
    write_connection(fed)
    try:
        home = d / "home" / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        log = d / "logs" / "superlink.log"
        pid = processes.spawn(args, log_path=log, env=flower_env(home), cwd=home, tied=not detached)
        fed.processes.append(ProcessInfo("superlink", pid, args, str(log), port))
        fed.save()
        deadline = time.monotonic() + timeout
        while not fed.health():
            if not processes.is_alive(pid):
                raise FederationError(f"the SuperLink exited at start; see {log}.")
            if time.monotonic() > deadline:
                raise FederationError(f"the SuperLink did not answer in {timeout:g} s; see {log}.")
            time.sleep(0.2)
        overrides = node_private_keys or {}
        for i in range(nodes):
            extra = dict((node_configs or {}).get(i, {}))
            fed.start_supernode(i, private_key=overrides.get(i), node_config=extra)
        fed.wait_nodes_online(nodes, timeout=timeout)
    except BaseException:
        with contextlib.suppress(FederationError):
            fed.stop()
        raise
    return fed
