"""Cifer's quick start, as the README's "Coming from Cifer" section writes it, on real processes.

The test writes what a Cifer user has (two clients' own CSV files, an initial ``.npz``
logistic model, a CKKS key pair as ``cifer keygen --name fed`` makes it, the README's JSON client
config for each client) and then executes the README's Python block unchanged except for the
port: a Server and two CiferClients, two encrypted rounds, and the decryption of the global
model with the private key. The decrypted model must classify the data, and every process
started must be stopped (by PID).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.apps.data import Partition, load_file_dataset
from cifer_flwr.exceptions import KeyMismatchError
from cifer_flwr.experiments.tasks.sklearn_logreg import SklearnLogReg
from cifer_flwr.protocol import decrypt_global_model
from cifer_flwr.tooling.federation import processes
from cifer_flwr.tooling.federation.local import free_port

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## Coming from Cifer") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    np.savetxt(path, np.c_[x, y], delimiter=",", header=header, comments="", fmt="%.17g")


def test_cifer_quick_start_from_the_readme(tmp_path, monkeypatch, capfd):
    from sklearn.datasets import load_breast_cancer

    monkeypatch.chdir(tmp_path)
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    for i, part in enumerate(np.array_split(np.arange(len(y)), 2)):
        _write_csv(tmp_path / "data" / f"client{i}.csv", x[part], y[part])
    _write_csv(tmp_path / "data" / "server.csv", x, y)
    np.savez(tmp_path / "model.npz", coef=np.zeros((1, 30)), intercept=np.zeros(1))
    crypto.write_key_pair(crypto.generate_key("default"), tmp_path / "keys" / "fed")

    (config,) = _blocks("json")
    (script,) = _blocks("python")
    port = str(free_port())
    assert config.count("9092") == 1 and script.count("9092") == 1
    for i in range(2):
        text = config.replace("9092", port).replace("client0.csv", f"client{i}.csv")
        assert json.loads(text)["dataset_path"] == f"data/client{i}.csv"
        (tmp_path / f"client{i}.json").write_text(text)

    tied_before = set(processes._TIED)
    ns: dict = {}
    try:
        exec(compile(script.replace("9092", port), "README.md", "exec"), ns)
    finally:
        for client in ns.get("clients", []):
            client.stop()
    started = set(processes._TIED) - tied_before
    started |= {p.pid for p in ns["server"].federation.processes}
    started |= {c.pid for c in ns["clients"]}
    assert len(started) >= 3  # the SuperLink and two SuperNodes (their helpers follow them)
    assert not [pid for pid in started if processes.is_alive(pid)]

    result = ns["result"]
    assert result.encrypted and result.model_path.is_file()
    # the quick start shows each round on stdout as it ends (issue 22)
    printed = capfd.readouterr().out
    for r in (1, 2):
        assert f"[cifer] round {r}/2: replies 2 accepted, 0 excluded, accuracy " in printed
    rows = result.results["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["errors"] == [] and r["excluded"] == [] for r in rows)
    assert result.results["strategy-class"].startswith("cifer_flwr.strategies")
    # the decrypted global model classifies *raw* rows (the federation's scaling is folded
    # in, docs/design.md §4.10; the server only ever held ciphertexts)
    assert (tmp_path / ".cifer/fedlearn/server/global-model.scaling.enc").is_file()
    model = ns["model"]
    assert set(model) == {"coef", "intercept"} and np.any(model["coef"] != 0)
    data = load_file_dataset(tmp_path / "data" / "server.csv", standardize=False)
    _, accuracy = SklearnLogReg().evaluate(
        model, Partition(data.x_train, data.y_train, data.x_test, data.y_test)
    )
    assert accuracy > 0.85, accuracy
    # a wrong key cannot open it
    wrong, _ = crypto.write_key_pair(crypto.generate_key("default"), tmp_path / "keys" / "other")
    with pytest.raises(KeyMismatchError):
        decrypt_global_model(result.model_path, wrong)
