"""``Server(...).run(strategy)``: a real SuperLink that runs the fedlearn ServerApp."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cifer_flwr.exceptions import CiferError, ConfigError
from cifer_flwr.fedlearn.config import ServerConfig
from cifer_flwr.fedlearn.strategy import Strategy
from cifer_flwr.tooling.federation.certs import TlsFiles
from cifer_flwr.tooling.federation.local import Federation, up
from cifer_flwr.tooling.federation.runs import RunOutcome, run_app

__all__ = ["APP_DIR", "FedLearnError", "RunResult", "Server"]

#: The fedlearn Flower app (its ``pyproject.toml``).
APP_DIR = Path(__file__).resolve().parent / "app"
#: Default directory of the server's state file, logs, results and model.
DEFAULT_SERVER_DIR = Path(".cifer/fedlearn/server")


def print_line(line: str) -> None:
    """Print one progress line on stdout, flushed (it shows at once in a pipe or a log)."""
    print(line, flush=True)


class FedLearnError(CiferError):
    """A fedlearn run did not complete (the message names the log to read)."""


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Server.run` produced.

    Attributes
    ----------
    model_path : Path
        The global model: encrypted (decrypt it with the private key, e.g. ``cifer
        decrypt-model``) or, without encryption, a plaintext ``.npz``.
    encrypted : bool
        Whether ``model_path`` is encrypted.
    results : dict
        The results JSON the ServerApp wrote (per-round accuracy, bytes, times).
    outcome : RunOutcome
        Flower's run id, status and log.

    """

    model_path: Path
    encrypted: bool
    results: dict[str, Any]
    outcome: RunOutcome


class Server:
    """The federated server: a SuperLink on this machine that runs the rounds.

    Parameters
    ----------
    config_path : path-like, optional
        JSON server config (keys of :data:`~cifer_flwr.fedlearn.config.SERVER_KEYS`).
    directory : path-like, optional
        Where the state file (PIDs), logs, results and the global model go (default
        ``.cifer/fedlearn/server``).
    timeout : float (default: 600)
        Seconds a run may take.
    client_timeout : float (default: 120)
        Seconds to wait for ``n_round_clients`` clients to connect.
    on_round : callable or None (default: print on stdout)
        Called with each round's progress line as the round ends (``[cifer] round 2/3:
        replies 2 accepted, 0 excluded, accuracy ...``); the default prints it, flushed, so
        it shows in a pipe too; ``None`` keeps the run quiet.
    **options
        The config keys as keyword arguments (``port=9092, n_round_clients=2,
        num_rounds=3, public_key="keys/NAME/public.key", use_secure=..., certfile=...,
        keyfile=...``); they override the file's.

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type, a ``ws://`` or non-loopback address, ``use_secure``
        without ``certfile``/``keyfile``.

    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        timeout: float = 600.0,
        client_timeout: float = 120.0,
        on_round: Callable[[str], None] | None = print_line,
        **options: Any,
    ) -> None:
        if config_path is not None:
            self.config = ServerConfig.from_file(config_path, overrides=options)
        else:
            self.config = ServerConfig.from_mapping(options, what="Server")
        self.directory = Path(directory or DEFAULT_SERVER_DIR).resolve()
        self.timeout = float(timeout)
        self.client_timeout = float(client_timeout)
        self.on_round = on_round
        self.federation: Federation | None = None

    def start(self) -> Federation:
        """Start the SuperLink (tied to this process) and return its federation record."""
        cfg = self.config
        tls = None
        if cfg.use_secure:
            assert cfg.certfile and cfg.keyfile and cfg.ca_certfile  # checked by ServerConfig
            tls = TlsFiles(cfg.ca_certfile, cfg.certfile, cfg.keyfile)
        self.federation = up(
            self.directory,
            nodes=0,
            port=cfg.port,
            tls=cfg.use_secure,
            tls_files=tls,
            public_key=cfg.public_key,
        )
        return self.federation

    def stop(self) -> None:
        """Stop the SuperLink and everything it started, by PID."""
        if self.federation is not None:
            self.federation.stop()

    def run(self, strategy: Strategy, *, keep_running: bool = False) -> RunResult:
        """Run ``num_rounds`` rounds of ``strategy`` with ``n_round_clients`` clients.

        The strategy is built once here (the one builder) so that a bad configuration fails
        before anything starts; the SuperLink is started (unless :meth:`start` was called),
        the clients are awaited, the fedlearn app is submitted with ``flwr run``, and the
        SuperLink is stopped at the end unless ``keep_running``.

        Returns
        -------
        RunResult
            The global model's path (encrypted with ``encryption=True``) and the results.

        Raises
        ------
        ConfigError
            For a strategy that cannot be built (e.g. encryption without ``public_key``).
        FedLearnError
            When the clients do not connect in time or the run fails (naming the logs).

        """
        if not isinstance(strategy, Strategy):
            raise ConfigError(
                f"Server.run takes a cifer_flwr.fedlearn.strategy strategy (FedAvg(data_path=..., "
                f"model_path=...)), got {type(strategy).__name__}."
            )
        cfg = self.config
        if strategy.encryption and cfg.public_key is None:
            raise ConfigError(
                "the strategy encrypts but the server has no public_key: run `cifer keygen "
                '--name NAME` and pass public_key="keys/NAME/public.key" (or encryption=False).'
            )
        model = self.directory / ("global-model.enc" if strategy.encryption else "global-model.npz")
        strategy.build(public_key=cfg.public_key, save_path=model, min_nodes=cfg.n_round_clients)
        strategy.initial_arrays()  # the model file fits the data file, checked here first
        started = self.federation is None
        fed = self.start() if started else self.federation
        assert fed is not None
        try:
            try:
                fed.wait_nodes_online(cfg.n_round_clients, timeout=self.client_timeout)
            except CiferError as exc:
                raise FedLearnError(
                    f"{exc} Start {cfg.n_round_clients} clients with CiferClient(config_path=...) "
                    f"pointing at 127.0.0.1:{cfg.port}."
                ) from None
            run_config: dict[str, str | int | float | bool] = {
                **strategy.to_run_config(),
                "num-server-rounds": cfg.num_rounds,
                "min-nodes": cfg.n_round_clients,
                "save-path": str(model),
            }
            if strategy.encryption:
                run_config["public-key"] = str(cfg.public_key)
            outcome = run_app(
                fed,
                APP_DIR,
                run_config,
                timeout=self.timeout,
                results_path=self.directory / "results.json",
                on_round=self.on_round,
            )
        finally:
            if started and not keep_running:
                self.stop()
        if not outcome.clean or outcome.results is None:
            raise FedLearnError(
                f"run {outcome.run_id} ended {outcome.status}: {'; '.join(outcome.errors)} "
                f"(log {outcome.log_path})."
            )
        return RunResult(model, strategy.encryption, outcome.results, outcome)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
