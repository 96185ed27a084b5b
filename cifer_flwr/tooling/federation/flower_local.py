"""Flower's own ``local`` connection (``flwr run .``) with cifer-flwr apps.

``flwr run APP`` without a connection uses Flower's default connection ``local``
(``address = ":local:"`` in ``$FLWR_HOME/config.toml``): the ``flwr`` CLI starts, once and
in the background, a *managed* simulation SuperLink (Flower 1.41 and 1.42:
``flower-superlink --insecure --simulation --isolation subprocess`` on 127.0.0.1, HTTP API
on port 39091, Control API on 39093, log in ``$FLWR_HOME/local-superlink/superlink.log``,
runs kept in ``state.db`` next to it) and later calls reuse it. Three things stop a
cifer-flwr app there unless that SuperLink starts with the right environment (it copies the
``flwr`` CLI's environment):

* **Runtime dependency installation.** The SuperLink installs each app's ``pyproject.toml``
  dependencies with ``uv sync`` before it runs the app; ``cifer-flwr`` is not on the package
  index, so that fails (exit code 608 in ``flwr log``). Flower's documented switch
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` ("Install Flower App dependencies at
  runtime") runs the app in the environment Flower is installed in instead, the one
  cifer-flwr is installed in.
* **TenSEAL before TensorFlow.** Flower's simulation runtime imports TensorFlow (when
  installed) before the app; the start-up hook in
  :data:`~cifer_flwr.tooling.federation.simulation.PRELOAD_DIR` goes first on ``PYTHONPATH``.
* **Ray on loopback and the private key.** As for ``cifer federation up --simulation``
  (:mod:`.simulation`): ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and ``CIFER_PRIVATE_KEY``
  for the virtual SuperNodes, which have no node config of their own.

:func:`flower_local_env` is that environment (``cifer flower-local env`` prints it as
``export`` lines). Flower's ``flwr run`` exits 0 although the run fails later, so
:func:`list_runs` on a :class:`FlowerLocal` (``cifer flower-local runs``) reads each run's
final status from the SuperLink, and :func:`~cifer_flwr.tooling.federation.runs.run_app`
runs an app on it and waits for its status and results. :meth:`FlowerLocal.stop`
(``cifer flower-local down``) stops the managed SuperLink of one ``FLWR_HOME`` and every
process below it, found by its log file path.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from cifer_flwr.constants import ENV_PRIVATE_KEY
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import (
    Federation,
    FederationError,
    ProcessInfo,
    flower_env,
)
from cifer_flwr.tooling.federation.simulation import PRELOAD_DIR, ray_loopback_env

__all__ = [
    "DISABLE_INSTALL_ENV",
    "FLOWER_LOCAL_CONNECTION",
    "FlowerLocal",
    "default_flwr_home",
    "flower_local_env",
    "local_superlink_pids",
]

#: Flower's default connection name (``flwr run .`` without a connection).
FLOWER_LOCAL_CONNECTION = "local"
#: Flower's switch that turns the SuperLink's runtime dependency installation off.
DISABLE_INSTALL_ENV = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
_HOST = "127.0.0.1"


def default_flwr_home() -> Path:
    """``$FLWR_HOME``, else ``~/.flwr`` (as Flower's CLI resolves it)."""
    home = os.environ.get("FLWR_HOME")
    return Path(home) if home else Path.home() / ".flwr"


def flower_local_env(private_key: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """What to add to the environment before the first ``flwr run`` on the ``local`` connection.

    Parameters
    ----------
    private_key : str or path, optional
        The CKKS private key the virtual SuperNodes (ClientApps) use, made absolute.

    Returns
    -------
    dict of str to str
        ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, Ray's loopback settings,
        ``PYTHONPATH`` with the TenSEAL-before-TensorFlow hook first (the current
        ``PYTHONPATH`` after it) and, when given, ``CIFER_PRIVATE_KEY``.

    Raises
    ------
    FederationError
        When ``private_key`` is given but is not a file.

    """
    env = {DISABLE_INSTALL_ENV: "1", **ray_loopback_env()}
    current = os.environ.get("PYTHONPATH", "")
    parts = [str(PRELOAD_DIR)] + [
        p for p in current.split(os.pathsep) if p and p != str(PRELOAD_DIR)
    ]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if private_key is not None:
        path = Path(private_key).expanduser().resolve()
        if not path.is_file():
            raise FederationError(
                f"private key {str(private_key)!r} is not a file; make a key pair with "
                "`cifer keygen --name NAME` and pass --keys keys/NAME."
            )
        env[ENV_PRIVATE_KEY] = str(path)
    return env


def _log_file(flwr_home: Path) -> str:
    """The ``--log-file`` Flower gives the managed SuperLink of ``flwr_home``."""
    return str(flwr_home / "local-superlink" / "superlink.log")


def local_superlink_pids(flwr_home: str | os.PathLike[str]) -> list[int]:
    """PIDs of the managed local SuperLink(s) Flower's CLI started for ``flwr_home``.

    Found through ``/proc``: a ``flower-superlink`` process whose ``--log-file`` is
    ``FLWR_HOME/local-superlink/superlink.log`` (so another ``FLWR_HOME``'s SuperLink, or
    a SuperLink that cifer started, is never matched).
    """
    log = Path(_log_file(Path(flwr_home).resolve()))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = processes.cmdline(pid)
        if not any(Path(a).name == "flower-superlink" for a in args[:3]):
            continue
        given = [b for a, b in itertools.pairwise(args) if a == "--log-file"]
        if given and _resolve_in(pid, given[-1]) == log:
            found.append(pid)
    return sorted(found)


def _resolve_in(pid: int, path: str) -> Path | None:
    """``path`` as process ``pid`` sees it (relative to its working directory)."""
    try:
        base = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        base = None
    if not Path(path).is_absolute() and base is None:
        return None
    return ((base or Path("/")) / path).resolve()


def superlink_environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if item)
    return {p[0]: p[1] for p in pairs if len(p) == 2}


@dataclass
class FlowerLocal(Federation):
    """Flower's managed local SuperLink of one ``FLWR_HOME``, as a :class:`Federation`.

    :func:`~cifer_flwr.tooling.federation.runs.list_runs` and
    :func:`~cifer_flwr.tooling.federation.runs.run_app` work on it unchanged; ``flwr``
    calls run with ``FLWR_HOME`` = :attr:`home` and :func:`flower_local_env`, so a SuperLink
    that such a call starts gets the environment cifer-flwr apps need.

    Attributes
    ----------
    home : Path
        ``FLWR_HOME`` (default ``$FLWR_HOME`` or ``~/.flwr``).
    key : str or None
        CKKS private key path for the ClientApps (``CIFER_PRIVATE_KEY``).

    """

    home: Path = field(default_factory=default_flwr_home)
    key: str | None = None

    @classmethod
    def at(
        cls,
        flwr_home: str | os.PathLike[str] | None = None,
        private_key: str | os.PathLike[str] | None = None,
        directory: str | os.PathLike[str] = ".cifer/flower-local",
    ) -> FlowerLocal:
        """The local connection of ``flwr_home``; ``directory`` holds run logs and results."""
        port = os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")
        home = Path(flwr_home) if flwr_home is not None else default_flwr_home()
        return cls(
            directory=Path(directory).resolve(),
            address=f"{_HOST}:{port}",
            connection=FLOWER_LOCAL_CONNECTION,
            home=home.expanduser().resolve(),
            key=str(Path(private_key).resolve()) if private_key else None,
        )

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of Flower's CLI (its ``config.toml`` holds the ``local`` connection)."""
        return self.home

    def save(self) -> None:
        """Nothing to record: Flower's CLI owns this SuperLink."""

    def env(self) -> dict[str, str]:
        """Environment for ``flwr`` calls: :func:`flower_env` and :func:`flower_local_env`."""
        env = flower_env(self.flwr_home)
        env.update(flower_local_env(self.key))
        return env

    def alive(self) -> dict[str, bool]:
        """``{"superlink": running}`` for the managed SuperLink of :attr:`home`."""
        return {"superlink": bool(local_superlink_pids(self.flwr_home))}

    def missing_env(self) -> dict[int, list[str]]:
        """Per running managed SuperLink: the variables of :func:`flower_local_env` it lacks.

        A SuperLink that ``flwr`` started before the environment was set keeps running
        without it (and fails cifer-flwr apps); stop it with :meth:`stop` first.
        """
        want = flower_local_env()
        want.pop("PYTHONPATH")
        out: dict[int, list[str]] = {}
        for pid in local_superlink_pids(self.flwr_home):
            have = superlink_environ(pid)
            if not have:  # unreadable: nothing to say
                continue
            lacks = [k for k, v in want.items() if have.get(k) != v]
            if str(PRELOAD_DIR) not in have.get("PYTHONPATH", "").split(os.pathsep):
                lacks.append("PYTHONPATH")
            if lacks:
                out[pid] = lacks
        return out

    def stop(self, *, grace: float = 8.0) -> list[ProcessInfo]:
        """Stop the managed SuperLink(s) of :attr:`home` and every process below them.

        Returns
        -------
        list of ProcessInfo
            The SuperLinks that were running (role ``superlink``).

        Raises
        ------
        FederationError
            When a process survives SIGKILL.

        """
        pids = local_superlink_pids(self.flwr_home)
        found = [
            ProcessInfo("superlink", pid, processes.cmdline(pid), _log_file(self.flwr_home))
            for pid in pids
        ]
        left = processes.stop_pids(pids, grace=grace) if pids else []
        if left:
            raise FederationError(f"processes {left} survived SIGKILL.")
        return found
