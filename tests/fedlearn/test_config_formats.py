"""The client and the server read different JSON formats, and say so (issue 22)."""

from __future__ import annotations

import json

import pytest

from cifer_flwr import fedlearn as fl
from cifer_flwr.exceptions import ConfigError

CLIENT = {
    "ip_address": "127.0.0.1",
    "port": 9092,
    "n_round_clients": 2,
    "use_homomorphic": True,
    "use_secure": False,
    "certfile": None,
    "keyfile": None,
    "dataset_path": "data/client0.csv",
    "model_path": "model.npz",
    "private_key": "keys/fed/private.key",
}


def test_a_client_config_given_to_the_server_names_the_two_formats(tmp_path):
    (tmp_path / "client0.json").write_text(json.dumps(CLIENT))
    with pytest.raises(ConfigError) as info:
        fl.Server(config_path=tmp_path / "client0.json")
    text = str(info.value)
    # every client-only key named, and what the server expects instead
    for key in ("use_homomorphic", "dataset_path", "model_path", "private_key"):
        assert key in text, text
    assert "client config" in text and "server config" in text
    assert "public_key" in text and "num_rounds" in text


def test_a_server_config_given_to_a_client_names_the_two_formats(tmp_path):
    server = {"port": 9092, "n_round_clients": 2, "num_rounds": 3, "public_key": "p.key"}
    (tmp_path / "server.json").write_text(json.dumps(server))
    with pytest.raises(ConfigError) as info:
        fl.CiferClient(config_path=tmp_path / "server.json")
    text = str(info.value)
    assert "num_rounds" in text and "public_key" in text
    assert "server config" in text and "client config" in text
