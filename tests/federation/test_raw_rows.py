"""Federated models work on raw rows (issue 19 item 4, docs/design.md §4.10).

Clients hold *raw* digits rows; the ServerApp runs the encrypted statistics round, the
clients scale with the global statistics, and ``cifer securetrain decrypt-model`` folds the
scaling into the decrypted model. Its accuracy on raw held-out rows must be that of the same
federation on rows standardised beforehand by one party holding them all (the reference a
scikit-learn user has), evaluated on standardised held-out rows. Both the FedLearn app
(each client its own file) and the generic ``cifer run`` app (``task.dataset_path``) run
in-process over Flower's wire format.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from cifer_flwr.apps.data import Partition
from cifer_flwr.cli import app as cli
from cifer_flwr.experiments.tasks import get_task
from tests.strategies.harness import InProcessGrid

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    train, test = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    mean, std = train[0].mean(axis=0), train[0].std(axis=0)
    std[std == 0] = 1.0
    return train, test, lambda rows: (rows - mean) / std


def _decrypted(save, priv, out) -> dict[str, np.ndarray]:
    args = ["securetrain", "decrypt-model", "--input-model", str(save), "--private-key"]
    res = CliRunner().invoke(cli, [*args, str(priv), "--output-model", str(out)])
    assert res.exit_code == 0, res.output
    assert "scaling folded in" in " ".join(res.output.split())
    with np.load(out, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _accuracy(arrays, test, scale) -> float:
    x = scale(test[0]).astype(np.float32)
    return get_task("sklearn", "").evaluate(arrays, Partition(x, test[1], x, test[1]))[1]


def test_fedlearn_model_on_raw_rows_matches_the_standardised_run(digits, key_files, tmp_path):
    from cifer_flwr.fedlearn.app import client_app, server_app
    from cifer_flwr.fedlearn.strategy import FedAvg

    priv, pub = key_files
    (x, y), test, standardise = digits
    # non-IID clients: label-skewed shards, so each client's own scaling would differ
    idx = np.argsort(y + np.random.default_rng(1).uniform(0, 4, len(y)), kind="stable")
    shards = np.array_split(idx, 3)
    init = tmp_path / "init.npz"
    np.savez(init, coef=np.zeros((10, 64)), intercept=np.zeros(10))
    accuracy = {}
    for label, scale in (("raw", lambda r: r), ("standardised", standardise)):
        files = []
        for i, shard in enumerate(shards):
            path = tmp_path / f"{label}-{i}.npz"
            rows = scale(x[shard])
            np.savez(path, x=rows, y=y[shard], x_test=rows[:10], y_test=y[shard][:10])
            files.append(path)
        save = tmp_path / f"{label}.enc"
        # the server's data file names the features and classes (one row per class)
        first = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
        shape = tmp_path / f"{label}-shape.npz"
        np.savez(shape, x=scale(x[first]), y=y[first], x_test=scale(x[first]), y_test=y[first])
        spec = FedAvg(data_path=shape, model_path=init, learning_rate=0.1)
        run_config = {
            **spec.to_run_config(),
            "num-server-rounds": 3,
            "min-nodes": 3,
            "save-path": str(save),
            "public-key": str(pub),
        }
        nodes = {
            n + 1: {"private-key": str(priv), "dataset-path": str(f), "model-path": str(init)}
            for n, f in enumerate(files)
        }
        grid = InProcessGrid(client_app.app, nodes)
        for context in grid.contexts.values():
            context.run_config = run_config
        client_app._RUNTIMES.clear()
        server = Context(
            run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
        )
        server_app.main(grid, server)
        assert (tmp_path / f"{label}.scaling.enc").is_file()
        model = _decrypted(save, priv, tmp_path / f"{label}.npz")
        accuracy[label] = _accuracy(model, test, scale)
    client_app._RUNTIMES.clear()
    assert accuracy["standardised"] > 0.9, accuracy
    assert abs(accuracy["raw"] - accuracy["standardised"]) <= 0.01, accuracy


@pytest.mark.slow  # Hydra composition and 2 x 3 rounds: about 6 s on a loaded machine
def test_cifer_run_dataset_path_model_on_raw_rows_matches_the_standardised_run(
    digits, key_files, tmp_path
):
    from cifer_flwr.experiments.app.client_app import app
    from cifer_flwr.experiments.config import compose, overrides_to_string
    from cifer_flwr.experiments.experiment import _RUNTIMES, RC_OVERRIDES, run_on_grid

    priv, pub = key_files
    (x, y), test, standardise = digits
    accuracy = {}
    for label, scale in (("raw", lambda r: r), ("standardised", standardise)):
        data = tmp_path / f"{label}.npz"
        np.savez(data, x=scale(x), y=y, x_test=scale(test[0]), y_test=test[1])
        exp = compose(
            [
                "task=digits-sklearn",
                f"task.dataset_path={data}",
                "federation.nodes=3",
                "num_rounds=3",
                "seed=0",
            ]
        )
        nodes = {
            n: {"private-key": str(priv), "partition-id": n - 1, "num-partitions": 3}
            for n in (1, 2, 3)
        }
        grid = InProcessGrid(app, nodes)
        for context in grid.contexts.values():
            context.run_config[RC_OVERRIDES] = overrides_to_string(exp)
        save = tmp_path / f"{label}.enc"
        _RUNTIMES.clear()
        results = run_on_grid(grid, exp, public_key=str(pub), save_path=str(save), timeout=60)
        assert all(not r["errors"] for r in results["rounds"]), results["rounds"]
        model = _decrypted(save, priv, tmp_path / f"{label}-model.npz")
        accuracy[label] = _accuracy(model, test, scale)
    _RUNTIMES.clear()
    assert accuracy["standardised"] > 0.9, accuracy
    assert abs(accuracy["raw"] - accuracy["standardised"]) <= 0.01, accuracy
