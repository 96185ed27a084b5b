"""Flower's simulation runtime (Ray) on 127.0.0.1: one SuperLink with ``--simulation``.

In Flower 1.41 a simulation is a SuperLink started with ``--simulation``; ``flwr run APP
CONN`` makes it start one ``flwr-simulation`` process per run, which starts Ray
(``ray.init``: a GCS server, a raylet, worker processes) and runs the ServerApp and N
*virtual* SuperNodes (ClientApps in Ray actors). The number of virtual SuperNodes and the
Ray resources are the federation's *simulation config* (``flwr federation
simulation-config``), set here right after the SuperLink is up.

Two things differ from a deployment (docs/design.md §7):

* **Ray binds non-loopback addresses by default** (its node IP is the host's outbound
  address, its servers listen on all interfaces). ``ray.init(_node_ip_address="127.0.0.1")``
  does not help in Ray 2.55: Ray turns ``127.0.0.1`` back into the outbound address. What
  works is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's "no cluster" mode: the node IP is
  the loopback address, every Ray server listens on 127.0.0.1 only), which
  :func:`ray_loopback_env` sets for the SuperLink and everything below it. The tests also
  run inside a loopback-only network namespace (``unshare -rn``, ``ip link set lo up``).
* **Virtual SuperNodes have no node config of their own**: Flower gives each one exactly
  ``partition-id`` and ``num-partitions``. The CKKS private key path therefore reaches the
  ClientApps through the environment variable ``CIFER_PRIVATE_KEY``
  (:data:`cifer_flwr.constants.ENV_PRIVATE_KEY`), which the one key loader
  (:func:`cifer_flwr.mods.private_key_for`) reads when node config has no ``private-key``.
  The ServerApp still gets only the public key path (run config ``public-key``) and the
  encrypted strategies refuse a secret key; but in a simulation the ServerApp and the
  ClientApps run on one machine under one SuperLink, so a simulation checks the protocol
  and the accuracy, not the trust boundary (that is what a deployment is for).

The federation is a :class:`~cifer_flwr.tooling.federation.local.Federation` (state file,
``flwr`` connection, :meth:`~Federation.stop` by PID with all descendants, Ray's included),
so :func:`~cifer_flwr.tooling.federation.runs.run_app` runs apps on it unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cifer_flwr.constants import ENV_PRIVATE_KEY
from cifer_flwr.extras import check
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import (
    STATE_FILE,
    Federation,
    FederationError,
    ProcessInfo,
    flower_env,
    flower_executable,
    free_port,
    write_connection,
)

__all__ = [
    "FLOWER_FEDERATION",
    "PRELOAD_DIR",
    "RAY_LOOPBACK_ENV",
    "SIMULATION_CONNECTION",
    "SIMULATION_PURPOSE",
    "ray_loopback_env",
    "require_ray",
    "simulation",
    "simulation_env",
    "up_simulation",
]

#: ``flwr`` connection name written to ``DIRECTORY/flwr-home/config.toml``.
SIMULATION_CONNECTION = "cifer-simulation"
#: The one federation of a SuperLink without accounts (Flower's NOOP federation).
FLOWER_FEDERATION = "@none/default"
#: Environment that keeps Ray on the loopback interface (see the module docstring).
RAY_LOOPBACK_ENV: dict[str, str] = {
    # Ray's single-machine mode: node IP = loopback, servers listen on 127.0.0.1 only
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # no usage report to Ray's servers
    "RAY_USAGE_STATS_ENABLED": "0",
}
#: What needs Ray, for the missing-extra message.
SIMULATION_PURPOSE = "federation=simulation runs in Flower's simulation engine, on Ray"
_HOST = "127.0.0.1"
#: Directory put first on ``PYTHONPATH``: its ``sitecustomize`` loads TenSEAL before
#: TensorFlow, which Flower's simulation runtime imports before the app (TenSEAL segfaults
#: when TensorFlow came first).
PRELOAD_DIR = Path(__file__).resolve().parent / "_preload"


def require_ray() -> None:
    """Fail in one line, before anything starts, when Ray (the ``simulation`` extra) is missing.

    Raises
    ------
    MissingExtraError
        Naming ``pip install "cifer-flwr[simulation]"``.

    """
    check(["ray"], purpose=SIMULATION_PURPOSE)


def ray_loopback_env(tmp_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Environment variables that pin Ray to 127.0.0.1 (and, optionally, its temp directory).

    Parameters
    ----------
    tmp_dir : str or path, optional
        Ray's session directory root (``RAY_TMPDIR``); keep it short: Ray puts Unix
        sockets below it (107-byte path limit). Default: Ray's own (``/tmp/ray``).

    """
    env = dict(RAY_LOOPBACK_ENV)
    if tmp_dir is not None:
        env["RAY_TMPDIR"] = str(tmp_dir)
    return env


def simulation_env(
    flwr_home: Path,
    private_key: str | os.PathLike[str] | None = None,
    ray_tmp_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Environment of a simulation SuperLink: Flower's (:func:`flower_env`), Ray on loopback.

    :data:`PRELOAD_DIR` goes first on ``PYTHONPATH`` (TenSEAL before TensorFlow).

    ``CIFER_PRIVATE_KEY`` is set to ``private_key`` (absolute) when given, and removed
    otherwise: virtual SuperNodes have no node config for it (see the module docstring).
    """
    env = flower_env(flwr_home)
    env.update(ray_loopback_env(ray_tmp_dir))
    # TenSEAL before TensorFlow in flwr-simulation and the Ray workers (docs/design.md §7)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PRELOAD_DIR), env.get("PYTHONPATH", "")) if p
    )
    if private_key is not None:
        env[ENV_PRIVATE_KEY] = str(Path(private_key).resolve())
    return env


def up_simulation(
    directory: str | os.PathLike[str],
    *,
    nodes: int,
    private_key: str | os.PathLike[str] | None = None,
    public_key: str | os.PathLike[str] | None = None,
    num_cpus: int | None = None,
    client_cpus: int = 1,
    ray_tmp_dir: str | os.PathLike[str] | None = None,
    connection: str = SIMULATION_CONNECTION,
    timeout: float = 60.0,
    detached: bool = False,
) -> Federation:
    """Start a simulation SuperLink on 127.0.0.1 with ``nodes`` virtual SuperNodes.

    Parameters
    ----------
    directory : str or path
        Federation directory (state file, logs, FLWR_HOME with the ``flwr`` connection).
    nodes : int
        Number of virtual SuperNodes (``num-supernodes``); node ``i`` gets
        ``partition-id=i num-partitions=nodes``.
    private_key, public_key : str or path, optional
        CKKS key pair: the ClientApps get ``private_key`` through ``CIFER_PRIVATE_KEY``;
        ``public_key`` is recorded for the ServerApp's run config ``public-key``.
    num_cpus : int, optional
        CPUs Ray may use (default: this machine's).
    client_cpus : int
        CPUs per ClientApp; ``num_cpus // client_cpus`` ClientApps run at once.
    ray_tmp_dir : str or path, optional
        ``RAY_TMPDIR`` (short path; the caller removes it). Default: a fresh
        ``/tmp/cifer-ray-*`` directory the federation owns (``scratch_dirs``), removed by
        :meth:`Federation.stop` (``cifer federation down``), not Ray's shared ``/tmp/ray``.
    connection : str
        Name of the ``flwr`` connection.
    timeout : float
        Seconds to wait for the SuperLink.
    detached : bool
        Let the SuperLink outlive the caller; by default it is tied to it (docs/design.md §7).

    Returns
    -------
    Federation
        The running simulation federation (``num_partitions`` = ``nodes``).

    Raises
    ------
    MissingExtraError
        When Ray is not installed (checked before anything starts).
    FederationError
        When a federation already runs in ``directory``, ``nodes`` < 1, or the SuperLink
        does not come up (then it is stopped again).

    """
    require_ray()
    if nodes < 1:
        raise FederationError(f"a simulation needs at least 1 virtual SuperNode, got {nodes}.")
    if client_cpus < 1:
        raise FederationError(f"client_cpus must be at least 1, got {client_cpus}.")
    cpus = num_cpus if num_cpus is not None else max(1, os.cpu_count() or 1)
    if cpus < client_cpus:
        raise FederationError(
            f"num_cpus ({cpus}) must be at least client_cpus ({client_cpus}): no ClientApp "
            "could run."
        )
    d = Path(directory).resolve()
    if (d / STATE_FILE).is_file() and any(Federation.load(d).alive().values()):
        raise FederationError(
            f"a federation already runs in {d}; stop it with `cifer federation down --dir {d}`."
        )
    for sub in ("logs", "home", "flwr-home"):
        shutil.rmtree(d / sub, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scratch: list[str] = []
    if ray_tmp_dir is None:  # Ray's session files go with the federation (issue 22)
        ray_tmp_dir = tempfile.mkdtemp(prefix="cifer-ray-")
        scratch.append(ray_tmp_dir)
    fed = Federation(
        directory=d,
        address=f"{_HOST}:{port}",
        connection=connection,
        private_key=str(Path(private_key).resolve()) if private_key else None,
        public_key=str(Path(public_key).resolve()) if public_key else None,
        num_partitions=nodes,
        detached=detached,
        scratch_dirs=scratch,
    )
    args = [
        flower_executable("flower-superlink"),
        "--insecure",
        "--simulation",
        "--host",
        _HOST,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    write_connection(fed)
    try:
        home = d / "home" / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        log = d / "logs" / "superlink.log"
        env = simulation_env(home, private_key, ray_tmp_dir)
        pid = processes.spawn(args, log_path=log, env=env, cwd=home, tied=not detached)
        fed.processes.append(ProcessInfo("superlink", pid, args, str(log), port))
        fed.save()
        deadline = time.monotonic() + timeout
        while not fed.health():
            if not processes.is_alive(pid):
                raise FederationError(f"the simulation SuperLink exited at start; see {log}.")
            if time.monotonic() > deadline:
                raise FederationError(
                    f"the simulation SuperLink did not answer in {timeout:g} s; see {log}."
                )
            time.sleep(0.2)
        fed.flwr_json(
            "federation",
            "simulation-config",
            FLOWER_FEDERATION,
            connection,
            "--num-supernodes",
            str(nodes),
            "--client-resources-num-cpus",
            str(client_cpus),
            "--init-args-num-cpus",
            str(cpus),
        )
    except BaseException:
        with contextlib.suppress(FederationError):
            fed.stop()
        raise
    return fed


@contextlib.contextmanager
def simulation(
    directory: str | os.PathLike[str],
    *,
    nodes: int,
    private_key: str | os.PathLike[str] | None = None,
    public_key: str | os.PathLike[str] | None = None,
    num_cpus: int | None = None,
    client_cpus: int = 1,
    timeout: float = 60.0,
) -> Iterator[Federation]:
    """A simulation federation for the duration of the block (:func:`up_simulation`).

    Ray gets a private temp directory (removed afterwards); on the way out every process
    started (SuperLink, ``flwr-simulation``, Ray's GCS server, raylet and workers) is
    stopped by PID with its descendants.

    Raises
    ------
    FederationError
        As :func:`up_simulation`, or when a process survives SIGKILL.

    """
    ray_tmp = tempfile.mkdtemp(prefix="cifer-ray-")
    try:
        fed = up_simulation(
            directory,
            nodes=nodes,
            private_key=private_key,
            public_key=public_key,
            num_cpus=num_cpus,
            client_cpus=client_cpus,
            ray_tmp_dir=ray_tmp,
            timeout=timeout,
        )
        try:
            yield fed
        finally:
            fed.stop()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
