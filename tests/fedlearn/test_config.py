"""Cifer's JSON configs as hostile input, and the strategy specifications (no processes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import fedlearn as fl
from cifer_flwr import strategies
from cifer_flwr.exceptions import ConfigError, ModelFormatError
from cifer_flwr.fedlearn.config import MAX_CONFIG_BYTES, ClientConfig, ServerConfig
from cifer_flwr.fedlearn.strategy import Strategy


@pytest.fixture
def files(tmp_path, key_files):
    x = np.random.default_rng(0).normal(size=(40, 3))
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(int))
    np.savez(tmp_path / "model.npz", coef=np.zeros((1, 3)), intercept=np.zeros(1))
    priv, pub = key_files
    return tmp_path, priv, pub


def _client(tmp_path, priv, **changes):
    config = {
        "ip_address": "127.0.0.1",
        "port": 9092,
        "n_round_clients": 2,
        "use_homomorphic": True,
        "use_secure": False,
        "certfile": None,
        "keyfile": None,
        "dataset_path": "data.npz",
        "model_path": "model.npz",
        "private_key": str(priv),
    }
    config.update(changes)
    path = tmp_path / "client.json"
    path.write_text(json.dumps(config))
    return path


def test_cifer_client_config_is_read(files):
    tmp_path, priv, _ = files
    cfg = ClientConfig.from_file(_client(tmp_path, priv))
    assert cfg.address == "127.0.0.1:9092" and cfg.use_homomorphic and not cfg.use_secure
    assert cfg.dataset_path == (tmp_path / "data.npz").resolve()  # relative to the JSON file
    client = fl.CiferClient(config_path=_client(tmp_path, priv), directory=tmp_path / "c")
    assert client.node_config()["dataset-path"] == str(tmp_path / "data.npz")
    assert client.pid is None and not client.running()
    # keyword arguments override the file's keys
    assert fl.CiferClient(config_path=_client(tmp_path, priv), port=9100).config.address.endswith(
        ":9100"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ip_addres": "127.0.0.1"}, "unknown key 'ip_addres'"),
        ({"port": "9092"}, "key 'port' is \"9092\" \\(str\\); expected int"),
        ({"port": True}, "key 'port' is true"),
        ({"use_secure": "yes"}, "key 'use_secure'"),
        ({"n_round_clients": 0}, "n_round_clients must be >= 1"),
        ({"port": 70000}, "outside 1..65535"),
        ({"ip_address": "wss://localhost"}, 'wss:// scheme.*"ip_address": "localhost".*use_secure'),
        ({"ip_address": "ws://10.0.0.5:8765"}, '"ip_address": "10.0.0.5"'),
        ({"use_secure": True}, "certfile.*CA certificate"),
        ({"use_secure": True, "certfile": "nope.pem"}, "does not exist"),
        ({"private_key": None}, "key 'private_key' is null"),
        ({"dataset_path": "missing.csv"}, "dataset_path"),
    ],
)
def test_hostile_client_config_names_the_key(files, changes, message):
    tmp_path, priv, _ = files
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_file(_client(tmp_path, priv, **changes))


def test_use_homomorphic_needs_a_private_key(files):
    tmp_path, _, _ = files
    data = json.loads(_client(tmp_path, "x").read_text())
    del data["private_key"]
    with pytest.raises(ConfigError, match="cifer keygen"):
        ClientConfig.from_mapping(data, base=tmp_path)
    data["use_homomorphic"] = False
    assert ClientConfig.from_mapping(data, base=tmp_path).private_key is None


def test_config_file_must_be_a_small_json_object(tmp_path):
    for content, message in (
        ("[1, 2]", "holds a list"),
        ("{not json", "is not JSON"),
        (" " * (MAX_CONFIG_BYTES + 1), "at most"),
    ):
        (tmp_path / "c.json").write_text(content)
        with pytest.raises(ConfigError, match=message):
            ClientConfig.from_file(tmp_path / "c.json")


def test_server_config(tmp_path):
    assert ServerConfig.from_mapping({"port": 9100}).port == 9100
    with pytest.raises(ConfigError, match="loopback"):
        ServerConfig.from_mapping({"ip_address": "0.0.0.0"})
    with pytest.raises(ConfigError, match="wss://"):
        ServerConfig.from_mapping({"ip_address": "wss://localhost"})
    with pytest.raises(ConfigError, match="keyfile"):
        (tmp_path / "cert.pem").write_text("x")
        ServerConfig.from_mapping({"use_secure": True, "certfile": "cert.pem"}, base=tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'rounds'"):
        fl.Server(rounds=3)


@pytest.mark.parametrize(
    ("cls", "encrypted_class", "plain_class"),
    [
        (fl.strategy.FedAvg, strategies.FedAvg, flwr_strategy.FedAvg),
        (fl.strategy.FedProx, strategies.FedProx, flwr_strategy.FedProx),
        (fl.strategy.FedYogi, strategies.FedYogi, flwr_strategy.FedYogi),
    ],
)
def test_strategies_come_from_the_one_builder(files, cls, encrypted_class, plain_class):
    tmp_path, _, pub = files
    spec = cls(data_path=tmp_path / "data.npz", model_path=tmp_path / "model.npz")
    assert type(spec.build(public_key=pub)) is encrypted_class
    plain = cls(tmp_path / "data.npz", tmp_path / "model.npz", encryption=False)
    assert type(plain.build(public_key=None)) is plain_class
    # what the ServerApp rebuilds from run config is the same specification
    again = Strategy.from_run_config(spec.to_run_config())
    assert type(again) is cls and again.to_run_config() == spec.to_run_config()
    arrays = spec.initial_arrays()
    assert arrays["coef"].shape == (1, 3)


def test_strategy_options_that_cannot_apply(files):
    tmp_path, _, _ = files
    d, m = tmp_path / "data.npz", tmp_path / "model.npz"
    with pytest.raises(ConfigError, match="no plaintext baseline"):
        fl.strategy.SecureFed(d, m, encryption=False)
    with pytest.raises(ConfigError, match="proximal"):
        fl.strategy.FedAvg(d, m, proximal_mu=0.1)  # FedAvg takes no proximal term
    with pytest.raises(ConfigError, match="model_path"):
        fl.strategy.FedAvg(d, tmp_path / "nope.npz")
    with pytest.raises(ConfigError, match="public key"):
        fl.strategy.FedAvg(d, m).build(public_key=None)
    with pytest.raises(ConfigError, match="not a fedlearn strategy"):
        Strategy.from_run_config({"fedlearn-strategy": "{}"})
    np.savez(tmp_path / "wide.npz", coef=np.zeros((1, 5)), intercept=np.zeros(1))
    with pytest.raises(ModelFormatError, match="shape"):
        fl.strategy.FedAvg(d, tmp_path / "wide.npz").initial_arrays()
    # the server refuses an encrypted strategy without a public key before starting anything
    server = fl.Server(port=9, directory=tmp_path / "server")
    with pytest.raises(ConfigError, match="public_key"):
        server.run(fl.strategy.FedAvg(d, m))
    assert server.federation is None
