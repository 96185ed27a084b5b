"""``use_secure``: the Server serves TLS with the user's certificate, a CiferClient verifies it.

No run: the SuperLink starts with the given certificate and key, a SuperNode configured with
the CA certificate (Cifer's ``certfile``) comes online, and both are stopped by PID.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifer_flwr import fedlearn as fl
from cifer_flwr.tooling.federation.certs import make_tls_files
from cifer_flwr.tooling.federation.local import free_port
from cifer_flwr.tooling.federation.processes import is_alive

pytestmark = pytest.mark.e2e


def test_secure_server_and_client(tmp_path):
    tls = make_tls_files(tmp_path / "certs")
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(int))
    np.savez(tmp_path / "model.npz", coef=np.zeros((1, 3)), intercept=np.zeros(1))
    port = free_port()
    config = {
        "ip_address": "127.0.0.1",
        "port": port,
        "n_round_clients": 1,
        "use_homomorphic": False,
        "use_secure": True,
        "certfile": str(tls.ca_cert),
        "keyfile": None,
        "dataset_path": "data.npz",
        "model_path": "model.npz",
    }
    (tmp_path / "client.json").write_text(json.dumps(config))
    server = fl.Server(
        port=port,
        n_round_clients=1,
        use_secure=True,
        certfile=str(tls.server_cert),
        keyfile=str(tls.server_key),
        ca_certfile=str(tls.ca_cert),
        directory=tmp_path / "server",
    )
    client = fl.CiferClient(config_path=tmp_path / "client.json", directory=tmp_path / "client")
    pids: list[int] = []
    with server:
        fed = server.federation
        assert fed is not None and fed.tls
        args = fed.processes[0].args
        assert args[args.index("--ssl-certfile") + 1] == str(tls.server_cert)
        assert "--insecure" not in args
        with client:
            assert client.process is not None
            node_args = client.process.args
            assert node_args[node_args.index("--root-certificates") + 1] == str(tls.ca_cert)
            fed.wait_nodes_online(1, timeout=60)
            pids = [p.pid for p in fed.processes] + [client.process.pid]
    assert pids and not [pid for pid in pids if is_alive(pid)]
