"""``CiferClient``: a real Flower SuperNode configured by Cifer's JSON client config."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.fedlearn.config import ClientConfig
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import Federation, ProcessInfo

__all__ = ["CiferClient"]

#: Parent of the default directories of clients' state files, logs and FLWR_HOME.
DEFAULT_DIR = Path(".cifer/fedlearn")


class CiferClient:
    """A federated client: ``flower-supernode`` with this client's data, model and key.

    Parameters
    ----------
    config_path : path-like, optional
        Cifer's JSON client config (see :mod:`cifer_flwr.fedlearn.config`); relative paths
        in it are relative to the file.
    directory : path-like, optional
        Where the SuperNode's state file (``federation.json`` with its PID), log and
        FLWR_HOME live (default ``.cifer/fedlearn/<config file name>``, or
        ``.cifer/fedlearn/client-<partition_id>`` without a file).
    partition_id : int (default: 0)
        ``partition-id`` in node config (a name for this client in logs).
    **options
        The config keys as keyword arguments (``ip_address="127.0.0.1", port=9092,
        dataset_path=..., model_path=..., private_key=...``); they override the file's.

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type, a ``ws://`` address, ``use_secure`` without
        ``certfile``, ``use_homomorphic`` without ``private_key``, missing files.

    Examples
    --------
    >>> client = CiferClient(config_path="client.json")  # doctest: +SKIP
    >>> client.run()  # serves until the SuperLink stops it or Ctrl-C  # doctest: +SKIP

    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        partition_id: int = 0,
        **options: Any,
    ) -> None:
        if config_path is not None:
            self.config = ClientConfig.from_file(config_path, overrides=options)
        else:
            self.config = ClientConfig.from_mapping(options, what="CiferClient")
        default = DEFAULT_DIR / (
            Path(config_path).stem if config_path is not None else f"client-{partition_id}"
        )
        self.directory = Path(directory or default).resolve()
        self.partition_id = int(partition_id)
        self.process: ProcessInfo | None = None
        self._fed: Federation | None = None

    def node_config(self) -> dict[str, str]:
        """Node config entries this client adds (the key goes as ``private-key``, as always)."""
        extra = {
            "dataset-path": str(self.config.dataset_path),
            "model-path": str(self.config.model_path),
        }
        if self.config.model_class:
            extra["model-class"] = self.config.model_class
        return extra

    def start(self) -> ProcessInfo:
        """Start the SuperNode (tied to this process: it dies with it) and return it.

        Raises
        ------
        ConfigError
            When this client already runs.

        """
        if self.process is not None and processes.is_alive(self.process.pid):
            raise ConfigError(f"this client already runs (PID {self.process.pid}).")
        cfg = self.config
        self.directory.mkdir(parents=True, exist_ok=True)
        fed = Federation(
            directory=self.directory,
            address=cfg.address,
            tls=cfg.use_secure,
            ca_cert=str(cfg.certfile) if cfg.certfile else None,
            private_key=str(cfg.private_key) if cfg.private_key else None,
            num_partitions=cfg.n_round_clients,
        )
        self._fed = fed
        self.process = fed.start_supernode(
            self.partition_id,
            role=f"client-{self.partition_id}",
            node_config=self.node_config(),
        )
        return self.process

    @property
    def pid(self) -> int | None:
        """PID of the running SuperNode (``None`` before :meth:`start`)."""
        return None if self.process is None else self.process.pid

    @property
    def log_path(self) -> Path | None:
        """The SuperNode's log file."""
        return None if self.process is None else Path(self.process.log)

    def running(self) -> bool:
        """Whether the SuperNode runs."""
        return self.process is not None and processes.is_alive(self.process.pid)

    def stop(self) -> None:
        """Stop the SuperNode and everything it started, by PID."""
        if self._fed is not None:
            self._fed.stop()

    def run(self, timeout: float | None = None) -> None:
        """Start and serve until the SuperNode exits, ``timeout`` seconds pass, or Ctrl-C."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.running() and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.5)
        finally:
            self.stop()

    def __enter__(self) -> CiferClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
