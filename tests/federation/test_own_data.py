"""Your own data and model: loaders vs numpy, partitions, model files, Hydra launch in-process.

Every file is written by the test. The in-process run drives the generic ClientApp (the one
``cifer run`` uses) through an in-process Grid over Flower's wire format, encrypted.
"""

from __future__ import annotations

import sys
import textwrap
import zipfile

import numpy as np
import pytest

from cifer_flwr.apps.data import (
    DATASETS,
    load_dataset,
    load_file_dataset,
    load_partition,
    node_partition,
)
from cifer_flwr.apps.model_files import read_model_arrays
from cifer_flwr.exceptions import CiferError, ConfigError, DatasetError, ModelFormatError
from cifer_flwr.experiments.tasks import get_task
from cifer_flwr.experiments.tasks.model_files import FileArraysTask


def _table(n=60, d=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.arange(n) % classes
    return x, y


def _rows(ds):
    """All examples of a dataset (train + test), sorted, with their labels."""
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
    y = np.concatenate([ds.y_train, ds.y_test])
    table = np.c_[x, y]
    return table[np.lexsort(table.T[::-1])]


def _expected(x, y):
    table = np.c_[x, y]
    return table[np.lexsort(table.T[::-1])]


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz"])
def test_loaders_round_trip_against_numpy(tmp_path, fmt):
    x, y = _table()
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        header = "a,b,label,c,d"  # the label column is found by name, wherever it is
        np.savetxt(
            path,
            np.c_[x[:, :2], y, x[:, 2:]],
            delimiter=",",
            header=header,
            comments="",
            fmt="%.17g",
        )
    elif fmt == "npy":
        np.save(path, np.c_[x, y])
    else:
        np.savez(path, x=x, y=y)
    ds = load_file_dataset(path, standardize=False)
    assert ds.num_classes == 3 and ds.num_features == 4
    assert len(ds.y_test) == 12  # 20 % of each class held out (stratified)
    np.testing.assert_allclose(_rows(ds), _expected(x.astype(np.float32), y), rtol=1e-6)
    # load_dataset takes the path wherever a dataset name goes
    assert load_dataset(str(path)).name == str(path.resolve())


def test_npz_with_its_own_test_split(tmp_path):
    x, y = _table()
    np.savez(tmp_path / "d.npz", x=x[:40], y=y[:40], x_test=x[40:], y_test=y[40:])
    ds = load_file_dataset(tmp_path / "d.npz", standardize=False)
    np.testing.assert_allclose(ds.x_test, x[40:].astype(np.float32))
    # standardized with the training split's statistics, like the built-in datasets
    st = load_file_dataset(tmp_path / "d.npz")
    np.testing.assert_allclose(st.x_train.mean(axis=0), 0, atol=1e-5)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("a,b,label\n1,2,0\n3,x,1\n"), "text, not a number"),
        (lambda p: p.write_text("a,b,label\n1,2,0\n3,nan,1\n1,2,0\n3,4,1\n"), "NaN"),
        (lambda p: p.write_text("a,b,label\n1,2,0.5\n3,4,1\n1,2,0\n3,4,1\n"), "integers"),
        (lambda p: p.write_text("a,b,label\n1,2,-1\n3,4,1\n1,2,0\n3,4,1\n"), "0 .. K-1"),
        (lambda p: p.write_text("a,b,label\n1,2\n"), "columns"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "UTF-8"),
    ],
)
def test_hostile_csv_is_refused_with_the_reason(tmp_path, write, message):
    path = tmp_path / "bad.csv"
    write(path)
    with pytest.raises(DatasetError, match=message):
        load_file_dataset(path)


def test_hostile_npz_and_npy_are_refused(tmp_path):
    x, y = _table()
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 3, dtype=object), y=y[:3])
    with pytest.raises(DatasetError, match="dtype object"):
        load_file_dataset(tmp_path / "obj.npz")
    np.savez(tmp_path / "keys.npz", a=x, b=y)
    with pytest.raises(DatasetError, match="expected x/y"):
        load_file_dataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "half.npz", x=x, y=y, x_test=x)
    with pytest.raises(DatasetError, match="without its pair"):
        load_file_dataset(tmp_path / "half.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:10])
    with pytest.raises(DatasetError, match="10 labels for 60"):
        load_file_dataset(tmp_path / "short.npz")
    # a zip bomb: a member that declares 2 GiB is refused before it is inflated
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as zf:
        zf.writestr("x.npy", b"")
        zf.infolist()[0].file_size = 2 << 30
    with pytest.raises(DatasetError):
        load_file_dataset(tmp_path / "bomb.npz")
    with pytest.raises(DatasetError, match="suffix"):
        load_file_dataset(tmp_path / "data.parquet")
    with pytest.raises(DatasetError, match="does not exist"):
        load_file_dataset(tmp_path / "missing.csv")


def test_partition_sizes_and_own_node_data(tmp_path):
    x, y = _table(n=103)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"))
    parts = [load_partition(ds, i, 4) for i in range(4)]
    sizes = [len(p.y_train) for p in parts]
    assert sum(sizes) == len(ds.y_train) and max(sizes) - min(sizes) <= 1
    seen = np.concatenate([p.x_train for p in parts])
    assert len(np.unique(seen, axis=0)) == len(ds.y_train)  # disjoint, complete
    # the Dirichlet partitioner works on files too
    skewed = [load_partition(ds, i, 2, partitioner="dirichlet", alpha=0.5) for i in range(2)]
    assert sum(len(p.y_train) for p in skewed) == len(ds.y_train)
    # a node's own file (node config dataset-path) is used whole; run config dataset: shared
    own = node_partition({}, {"dataset-path": str(tmp_path / "d.npz"), "partition-id": 1})
    assert len(own.y_train) + len(own.y_test) == 103
    shared = node_partition(
        {"dataset": str(tmp_path / "d.npz")}, {"partition-id": 1, "num-partitions": 4}
    )
    assert len(shared.y_train) == sizes[1] or abs(len(shared.y_train) - sizes[1]) <= 1


def test_npz_model_is_a_builtin_family_checked_against_the_data(tmp_path):
    coef = np.arange(12.0).reshape(3, 4)
    np.savez(tmp_path / "m.npz", coef=coef, intercept=np.ones(3))
    task = get_task("torch", "ignored", model_path=str(tmp_path / "m.npz"))
    assert isinstance(task, FileArraysTask)
    got = task.init_arrays(4, 3, 0)
    np.testing.assert_array_equal(got["coef"], coef)
    np.testing.assert_array_equal(got["intercept"], np.ones(3))
    with pytest.raises(ModelFormatError, match="shape"):
        task.init_arrays(5, 3, 0)  # 5 features: the file's (3, 4) coef does not fit
    with pytest.raises(ModelFormatError, match="shape"):
        task.init_arrays(4, 2, 0)  # 2 classes need one row
    np.savez(tmp_path / "bin.npz", coef=coef[:1], intercept=np.zeros(1))  # binary
    got = get_task("", "", model_path=str(tmp_path / "bin.npz")).init_arrays(4, 2, 0)
    np.testing.assert_array_equal(got["coef"], coef[:1])
    np.savez(tmp_path / "odd.npz", w=coef)
    with pytest.raises(ModelFormatError, match="not a built-in model"):
        get_task("", "", model_path=str(tmp_path / "odd.npz"))
    np.savez(tmp_path / "int.npz", coef=np.ones((1, 4), np.int64), intercept=np.zeros(1))
    with pytest.raises(ModelFormatError, match="float"):
        read_model_arrays(tmp_path / "int.npz")


def test_torch_state_dict_with_its_module(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = torch.nn.Linear(4, 6)
                    self.head = torch.nn.Linear(6, 3)

                def forward(self, x):
                    return self.head(torch.tanh(self.body(x)))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    from mynets.models import Net  # type: ignore[import-not-found]

    torch.manual_seed(3)
    net = Net()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    task = get_task("", "", model_path=str(tmp_path / "net.pt"), model_class="mynets.models:Net")
    arrays = task.init_arrays(4, 3, 0)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(arrays[name], value.numpy())
    x, y = _table(n=60, d=4, classes=3)
    from cifer_flwr.apps.data import Partition
    from cifer_flwr.experiments.tasks import TrainSettings

    data = Partition(x.astype(np.float32), y, x.astype(np.float32), y)
    trained, loss = task.train(arrays, data, TrainSettings(epochs=2, learning_rate=0.1))
    assert set(trained) == set(arrays) and np.isfinite(loss)
    assert any(not np.array_equal(trained[k], arrays[k]) for k in arrays)
    with pytest.raises(ModelFormatError, match=r"3 classes|outputs shape"):
        task.init_arrays(4, 5, 0)
    with pytest.raises(ConfigError, match="import path"):
        get_task("", "", model_path=str(tmp_path / "net.pt"))
    with pytest.raises(ConfigError, match="cannot import"):
        get_task(
            "", "", model_path=str(tmp_path / "net.pt"), model_class="nope.mod:Net"
        ).init_arrays(4, 3, 0)
    # a pickled module (not a state dict) never gets unpickled
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(ModelFormatError, match="weights_only"):
        read_model_arrays(tmp_path / "whole.pt")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CiferError):
        read_model_arrays(tmp_path / "legacy.pt")


@pytest.mark.slow
def test_keras_model_file(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)]
    )
    model.save(tmp_path / "m.keras")
    task = get_task("", "", model_path=str(tmp_path / "m.keras"))
    arrays = task.init_arrays(4, 3, 0)
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_array_equal(arrays[f"layer{i}"], w)
    x, y = _table(n=60, d=4, classes=3)
    from cifer_flwr.apps.data import Partition
    from cifer_flwr.experiments.tasks import TrainSettings

    data = Partition(x.astype(np.float32), y, x.astype(np.float32), y)
    trained, loss = task.train(arrays, data, TrainSettings(epochs=1))
    assert np.isfinite(loss) and set(trained) == set(arrays)
    assert 0.0 <= task.evaluate(trained, data)[1] <= 1.0
    with pytest.raises(ModelFormatError, match="features"):
        task.init_arrays(7, 3, 0)


@pytest.mark.slow
def test_tfrecord_round_trip(tmp_path):
    tf = pytest.importorskip("tensorflow")
    x, y = _table(n=40)
    with tf.io.TFRecordWriter(str(tmp_path / "d.tfrecord")) as w:
        for row, label in zip(x, y, strict=True):
            feats = {
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    ds = load_file_dataset(tmp_path / "d.tfrecord", standardize=False)
    np.testing.assert_allclose(_rows(ds), _expected(x.astype(np.float32), y), rtol=1e-6)


def test_hydra_launch_on_a_user_csv_matches_the_builtin_dataset(tmp_path, key_files):
    """An encrypted in-process run of the generic app: user CSV vs the built-in dataset."""
    from sklearn.datasets import load_breast_cancer

    from cifer_flwr.experiments.app.client_app import app
    from cifer_flwr.experiments.config import compose, overrides_to_string
    from cifer_flwr.experiments.experiment import _RUNTIMES, RC_OVERRIDES, run_on_grid
    from tests.strategies.harness import InProcessGrid, node_configs

    assert "breast-cancer" in DATASETS
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(7).permutation(len(y))  # other rows in the test split
    x, y = x[order], y[order]
    header = ",".join([f"f{i}" for i in range(30)] + ["diagnosis"])
    csv = tmp_path / "bc.csv"
    np.savetxt(csv, np.c_[x, y], delimiter=",", header=header, comments="", fmt="%.17g")
    priv, pub = key_files
    common = ["task=breast-cancer-sklearn", "federation.nodes=2", "num_rounds=2"]
    accuracy, first_rows = {}, {}
    for label, extra in (("csv", [f"task.dataset_path={csv}"]), ("builtin", [])):
        exp = compose(common + extra)
        grid = InProcessGrid(app, node_configs(priv, nodes=(1, 2)))
        for node, context in grid.contexts.items():
            context.node_config["partition-id"] = node - 1
            context.node_config["num-partitions"] = 2
            context.run_config[RC_OVERRIDES] = overrides_to_string(exp)
        results = run_on_grid(grid, exp, public_key=str(pub), timeout=60)
        rows = results["rounds"]
        assert [r["round"] for r in rows] == [1, 2]
        assert all(not r["errors"] for r in rows), rows
        accuracy[label] = rows[-1]["accuracy"]
        runtimes = [
            rt for rt in _RUNTIMES.values() if rt.exp.task.dataset_path == exp.task.dataset_path
        ]
        first_rows[label] = runtimes[-1].data.x_test[:3].copy()
        _RUNTIMES.clear()
    assert accuracy["csv"] > 0.85
    assert abs(accuracy["csv"] - accuracy["builtin"]) <= 0.02, accuracy
    # the CSV run really read the CSV: its shuffled rows give another test split
    assert not np.array_equal(first_rows["csv"], first_rows["builtin"])


def test_sklearn_example_trains_on_a_csv_from_run_config(tmp_path, monkeypatch):
    from pathlib import Path

    x, y = _table(n=80, d=5, classes=2)
    x[:, 0] += 3 * y  # learnable
    csv = tmp_path / "own.csv"
    np.savetxt(csv, np.c_[x, y], delimiter=",", header="a,b,c,d,e,label", comments="")
    example = Path(__file__).resolve().parents[2] / "examples" / "quickstart-sklearn"
    monkeypatch.syspath_prepend(str(example))
    sys.modules.pop("sklearnexample.task", None)
    from sklearnexample import task  # type: ignore[import-not-found]

    from cifer_flwr.statistics import FeatureStats

    cfg = {"dataset": str(csv), "seed": 42, "lr": 0.05}
    assert task.dataset_shape(cfg) == (5, 2)
    params = task.initial_params(cfg)
    assert params["coef"].shape == (1, 5)
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    raw = [task.load_data(cfg, node) for node in nodes]  # raw rows
    assert sum(len(p.y_train) for p in raw) == 64  # 80 % of 80, split across the 2 nodes
    # the scaling the statistics round gives every node: the union of their training rows
    union = np.concatenate([p.x_train for p in raw]).astype(np.float64)
    scaling = FeatureStats(len(union), union.mean(axis=0), union.std(axis=0))
    part = task.load_data(cfg, nodes[0], scaling)
    np.testing.assert_allclose(part.x_train, scaling.standardize(raw[0].x_train))
    model = task.make_model(cfg)
    task.set_params(model, params, 2)
    task.train(model, part.x_train, part.y_train, 5, 2)
    # evaluated on the raw held-out rows, standardised with the model's scaling
    assert task.evaluate_arrays(task.get_params(model), cfg, scaling)["accuracy"] > 0.8


def test_hydra_task_model_path_gives_the_initial_model(tmp_path):
    from cifer_flwr.experiments.config import compose
    from cifer_flwr.experiments.experiment import initial_arrays

    x, y = _table(n=50, d=6, classes=2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    coef = np.random.default_rng(1).normal(size=(1, 6))
    np.savez(tmp_path / "m.npz", coef=coef, intercept=np.full(1, 0.5))
    exp = compose(
        [
            "task=breast-cancer-sklearn",
            f"task.dataset_path={tmp_path / 'd.npz'}",
            f"task.model_path={tmp_path / 'm.npz'}",
        ]
    )
    arrays = initial_arrays(exp)
    np.testing.assert_array_equal(arrays["coef"], coef)
    np.testing.assert_array_equal(arrays["intercept"], [0.5])
    wrong = compose(["task=breast-cancer-sklearn", f"task.model_path={tmp_path / 'm.npz'}"])
    with pytest.raises(ModelFormatError, match="shape"):
        initial_arrays(wrong)  # the built-in breast cancer has 30 features, the file 6
