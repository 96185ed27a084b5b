"""Dataset files: formats, round trips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr.exceptions import DatasetError
from cifer_flwr.securetrain import Dataset, load_dataset, save_dataset, signed_design
from cifer_flwr.securetrain.data import from_signed_design

X = np.array([[0.5, -1.0], [1.5, 2.0], [-0.5, 0.0], [2.0, 1.0]])
Y = np.array([0, 1, 0, 1])


def test_npz_round_trip(tmp_path):
    ds = Dataset(X, Y)
    back = load_dataset(save_dataset(ds, tmp_path / "d.npz"))
    np.testing.assert_array_equal(back.X, X)
    np.testing.assert_array_equal(back.y, Y)


def test_npz_key_names(tmp_path):
    np.savez(tmp_path / "a.npz", features=X, labels=Y)
    assert load_dataset(tmp_path / "a.npz").num_features == 2
    np.savez(tmp_path / "b.npz", inputs=X, target=Y * 5 + 2)
    ds = load_dataset(tmp_path / "b.npz", features_key="inputs", labels_key="target")
    np.testing.assert_array_equal(ds.y, Y)
    assert ds.classes == (2.0, 7.0)
    with pytest.raises(DatasetError, match="--features-key"):
        load_dataset(tmp_path / "b.npz")


def test_npy_and_csv(tmp_path):
    np.save(tmp_path / "d.npy", np.hstack([X, Y[:, None]]))
    np.testing.assert_array_equal(load_dataset(tmp_path / "d.npy").X, X)
    np.save(tmp_path / "e.npy", np.hstack([Y[:, None], X]))
    np.testing.assert_array_equal(load_dataset(tmp_path / "e.npy", label_column="0").y, Y)
    lines = ["a,label,b"] + [f"{r[0]},{c},{r[1]}" for r, c in zip(X, Y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path / "d.csv", label_column="label")
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, Y)


def test_signed_design_round_trip():
    ds = Dataset(X, Y)
    z = signed_design(ds)
    assert z.shape == (4, 3)
    back = from_signed_design(z)
    np.testing.assert_array_equal(back.X, X)
    np.testing.assert_array_equal(back.y, Y)


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (np.array([[np.nan, 1.0], [1.0, 2.0]]), np.array([0, 1]), "NaN"),
        (np.array([[1.0, 1.0], [1.0, 2.0]]), np.array([1, 1]), "both classes"),
        (np.arange(130.0)[:, None], np.arange(130), "--label-column"),
        (np.array([["a", "1"], ["b", "2"]]), np.array([0, 1]), "text"),
    ],
    ids=["nan", "one-class", "too-many-classes", "strings"],
)
def test_bad_datasets(tmp_path, features, labels, match):
    np.savez(tmp_path / "bad.npz", X=features, y=labels)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path / "bad.npz")


def test_bad_csv_and_extension(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,y\n1,x,0\n2,3,1\n")
    with pytest.raises(DatasetError, match="text"):
        load_dataset(tmp_path / "s.csv")
    (tmp_path / "n.csv").write_text("a,b,y\n1,,0\n2,3,1\n")
    with pytest.raises(DatasetError, match="NaN"):
        load_dataset(tmp_path / "n.csv")
    (tmp_path / "d.parquet").write_bytes(b"x")
    with pytest.raises(DatasetError, match="extension"):
        load_dataset(tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz")
