"""Cifer's FedLearn API on Flower: ``from cifer_flwr import fedlearn as fl``.

Cifer's documents::

    from cifer import fedlearn as fl
    client = fl.CiferClient(config_path="client_config.json"); client.run()
    server = fl.Server(); strategy = fl.strategy.FedAvg(data_path=..., model_path=...)
    server.run(strategy)

work the same here, with real Flower processes underneath:

* :class:`CiferClient` validates Cifer's JSON client config (:mod:`.config`) and starts a
  ``flower-supernode`` whose ClientApp trains the client's own data and model, encrypted
  with CKKS by ``ckks_mod`` (``use_homomorphic``);
* :class:`Server` starts a ``flower-superlink`` and :meth:`Server.run` submits the fedlearn
  ServerApp with the strategy; the global model it saves is encrypted under the federation's
  public key;
* :mod:`.strategy` has one class per strategy of :data:`cifer_flwr.strategies.REGISTRY`
  (``FedAvg``, ``FedProx``, ``FedYogi``, ``FedAdam``, ``FedAdagrad``, ``FedAvgM``,
  ``SecureFed``), built from
  ``data_path`` / ``model_path`` through the one strategy builder.

Processes are tied to the Python process that started them (they stop when it dies) and
are stopped by PID (``stop()`` / ``with``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: a ClientApp process imports only what it runs
    from cifer_flwr.fedlearn import strategy
    from cifer_flwr.fedlearn.client import CiferClient
    from cifer_flwr.fedlearn.config import ClientConfig, ServerConfig
    from cifer_flwr.fedlearn.server import FedLearnError, RunResult, Server

__all__ = [
    "CiferClient",
    "ClientConfig",
    "FedLearnError",
    "RunResult",
    "Server",
    "ServerConfig",
    "strategy",
]

_WHERE = {
    "strategy": "cifer_flwr.fedlearn.strategy",
    "CiferClient": "cifer_flwr.fedlearn.client",
    "ClientConfig": "cifer_flwr.fedlearn.config",
    "ServerConfig": "cifer_flwr.fedlearn.config",
    "FedLearnError": "cifer_flwr.fedlearn.server",
    "RunResult": "cifer_flwr.fedlearn.server",
    "Server": "cifer_flwr.fedlearn.server",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cifer_flwr.fedlearn' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    return module if name == "strategy" else getattr(module, name)
