"""Hostile FedLearn JSON configs raise ConfigError, never an OS or parser error (issue 18, item 6).

Before: a 5 000-character path raised OSError (ENAMETOOLONG), ``~nosuchuser/x`` RuntimeError,
a NUL byte ValueError, an integer of more than 4 300 digits ValueError and 30 000 nested
arrays RecursionError (all under the 64 KB bound).
"""

from __future__ import annotations

import json

import pytest

from cifer_flwr.exceptions import ConfigError
from cifer_flwr.fedlearn.config import ClientConfig, ServerConfig, read_json_config

HOSTILE_PATHS = [
    ("x" * 5000, "5000 bytes with a 5000-byte component"),
    ("a/" * 2100 + "x", "4201 bytes"),
    ("~nosuchuser-cifer/x", "~USER for a user that does not exist"),
    ("data\x00.npz", "NUL byte"),
    ("data\ud800.npz", "unpaired surrogates"),
]


def _write(tmp_path, config, name="client.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(("value", "message"), HOSTILE_PATHS)
@pytest.mark.parametrize("key", ["dataset_path", "model_path", "private_key", "certfile"])
def test_hostile_client_paths(tmp_path, key, value, message):
    for name in ("d.npz", "m.npz"):
        (tmp_path / name).write_bytes(b"")
    base = {
        "use_homomorphic": False,
        "use_secure": key == "certfile",
        "dataset_path": "d.npz",
        "model_path": "m.npz",
    }
    with pytest.raises(ConfigError, match=message) as info:
        ClientConfig.from_file(_write(tmp_path, {**base, key: value}))
    assert key in str(info.value)
    with pytest.raises(ConfigError, match=message):  # the same through overrides
        ClientConfig.from_file(_write(tmp_path, base), overrides={key: value})


@pytest.mark.parametrize(("value", "message"), HOSTILE_PATHS)
@pytest.mark.parametrize("key", ["public_key", "certfile", "keyfile", "ca_certfile"])
def test_hostile_server_paths(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        config = {"use_secure": key != "public_key", key: value}
        ServerConfig.from_file(_write(tmp_path, config, "s.json"))


def test_a_path_too_long_only_with_its_base_directory(tmp_path):
    """Each part is short enough, but joined with the config's directory it is not."""
    value = "/".join(["d" * 250] * 16)  # 4015 bytes: under PATH_MAX alone
    with pytest.raises(ConfigError, match="dataset_path"):
        ClientConfig.from_file(_write(tmp_path, {"use_homomorphic": False, "dataset_path": value}))


def test_a_symlink_loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    config = {"use_homomorphic": False, "dataset_path": "loop/x.npz"}
    with pytest.raises(ConfigError, match="dataset_path"):
        ClientConfig.from_file(_write(tmp_path, config))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"port": ' + "9" * 4301 + "}", "not JSON a config can hold.*ValueError"),
        ("[" * 30000 + "]" * 30000, "not JSON a config can hold.*RecursionError"),
        ('{"port": ' + "[" * 30000 + "]" * 30000 + "}", "RecursionError"),
    ],
)
def test_json_beyond_the_parser_limits(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    assert len(text) < 64 << 10
    with pytest.raises(ConfigError, match=message):
        read_json_config(path)
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_file(path)
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_file(path)


@pytest.mark.parametrize(("value", "message"), HOSTILE_PATHS)
def test_the_config_file_path_itself(value, message):
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_file(value)
    with pytest.raises(ConfigError, match=message):
        read_json_config(value)


def test_an_ordinary_config_still_reads(tmp_path):
    (tmp_path / "data.npz").write_bytes(b"")
    (tmp_path / "m.npz").write_bytes(b"")
    config = {"use_homomorphic": False, "dataset_path": "data.npz", "model_path": "~/../" + "x"}
    with pytest.raises(ConfigError, match=r"model_path.*does not exist"):
        ClientConfig.from_file(_write(tmp_path, config))
    config["model_path"] = str(tmp_path / "m.npz")
    cfg = ClientConfig.from_file(_write(tmp_path, config))
    assert cfg.dataset_path == (tmp_path / "data.npz").resolve()
