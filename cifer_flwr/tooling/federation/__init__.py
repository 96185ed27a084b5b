"""Local Flower deployments on 127.0.0.1 (SuperLink + SuperNodes, TLS, node auth) and runs.

* :func:`up` / :class:`Federation` start, record, inspect and stop a local federation;
* :func:`run_app` submits a Flower app with ``flwr run`` and waits for it properly (status and
  results file, never exit codes).
"""

from cifer_flwr.tooling.federation.local import (
    DEFAULT_CONNECTION,
    DEFAULT_DIR,
    Federation,
    FederationError,
    ProcessInfo,
    flower_env,
    up,
)

__all__ = [
    "DEFAULT_CONNECTION",
    "DEFAULT_DIR",
    "Federation",
    "FederationError",
    "ProcessInfo",
    "flower_env",
    "up",
]
