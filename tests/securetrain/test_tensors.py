"""`encrypt-model` / `decrypt-model` on any model: Keras, PyTorch, .npz, .safetensors (issue 11).

Multi-layer models are not trainable by securetrain, but they are encrypted tensor by tensor
and must come back exactly (within 1e-6), in their own format or another one. Missing
optional packages are one line naming the extra (issue 12).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.exceptions import ModelFormatError
from cifer_flwr.extras import install_command
from cifer_flwr.securetrain.tensors import (
    ModelTensors,
    read_safetensors,
    read_tensors,
    write_safetensors,
    write_tensors,
)

HAS_KERAS = importlib.util.find_spec("keras") is not None


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(app, ["securetrain", *args])
    out = result.output + (result.stderr or "")
    if ok:
        assert result.exit_code == 0, out + repr(result.exception)
    else:
        assert result.exit_code == 2, out + repr(result.exception)
        assert "Traceback" not in out
    return out


def round_trip(model: str, back: str, key_name: str) -> None:
    run("encrypt-model", "--model", model, "--output", f"{key_name}.enc", "--key-name", key_name)
    run(
        "decrypt-model",
        "--input-model",
        f"{key_name}.enc",
        "--private-key",
        f"keys/{key_name}/private.key",
        "--output-model",
        back,
    )


def torch_mlp():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    net.train()
    net(torch.randn(32, 6))  # non-trivial running statistics and an int64 counter
    return net.eval()


def test_pytorch_mlp_round_trips_exactly_and_across_formats(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    net = torch_mlp()
    state = net.state_dict()
    torch.save(state, "mlp.pt")
    out = run("encrypt-model", "--model", "mlp.pt", "--output", "mlp.enc", "--key-name", "bob")
    assert "9 tensors (stored encrypted, not trainable)" in out
    assert b"running_mean" in Path("mlp.enc").read_bytes()  # names are public...
    assert state["0.weight"].numpy().tobytes()[:16] not in Path("mlp.enc").read_bytes()
    for back in ("back.pt", "back.safetensors", "back.npz"):
        run(
            "decrypt-model",
            "--input-model",
            "mlp.enc",
            "--private-key",
            "keys/bob/private.key",
            "--output-model",
            back,
        )
    restored = torch.load("back.pt", weights_only=True)
    assert list(restored) == list(state)
    for name, value in state.items():
        assert restored[name].dtype == value.dtype, name
        np.testing.assert_allclose(restored[name].numpy(), value.numpy(), atol=1e-6, rtol=0)
    fresh = torch_mlp()
    fresh.load_state_dict(restored)
    x = torch.randn(5, 6)
    np.testing.assert_allclose(fresh(x).detach().numpy(), net(x).detach().numpy(), atol=1e-5)
    as_safe = read_safetensors("back.safetensors")
    with np.load("back.npz", allow_pickle=False) as npz:
        for name, value in state.items():
            np.testing.assert_allclose(as_safe[name], value.numpy(), atol=1e-6, rtol=0)
            np.testing.assert_allclose(npz[name], value.numpy(), atol=1e-6, rtol=0)
    # tensors without an architecture cannot become a Keras file
    out = run(
        "decrypt-model",
        "--input-model",
        "mlp.enc",
        "--private-key",
        "keys/bob/private.key",
        "--output-model",
        "back.h5",
        ok=False,
    )
    assert "architecture" in out


def test_npz_and_safetensors_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    arrays = {
        "conv.w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "fc.w": rng.normal(0, 50, size=(10, 36)),
        "fc.b": rng.normal(size=10).astype(np.float16),
        "steps": np.array(12345, dtype=np.int64),
    }
    np.savez("m.npz", **arrays)
    write_safetensors(arrays, "m.safetensors")
    round_trip("m.npz", "back.safetensors", "a")
    round_trip("m.safetensors", "back.npz", "b")
    for got in (read_safetensors("back.safetensors"), dict(np.load("back.npz"))):
        for name, value in arrays.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape
            np.testing.assert_allclose(got[name], value, atol=1e-6, rtol=0)


def test_safetensors_reader_checks_offsets(tmp_path):
    write_safetensors({"a": np.ones(4, np.float32), "b": np.zeros(2)}, tmp_path / "ok.safetensors")
    good = (tmp_path / "ok.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])

    def variant(name: str, change: dict, data: bytes | None = None) -> Path:
        head = json.dumps({**header, **change}).encode()
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(
            struct.pack("<Q", len(head)) + head + (good[8 + n :] if data is None else data)
        )
        return path

    cases = {
        "overlap": (
            {"b": {"dtype": "F64", "shape": [2], "data_offsets": [8, 24]}},
            None,
            "contiguous",
        ),
        "size": ({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, None, "needs"),
        "dtype": ({"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, None, "C64"),
        "truncated": ({}, good[8 + n : -4], "truncated"),
    }
    for name, (change, data, needle) in cases.items():
        with pytest.raises(ModelFormatError, match=needle):
            read_safetensors(variant(name, change, data))
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelFormatError, match="header"):
        read_safetensors(tmp_path / "huge.safetensors")


def test_missing_keras_and_h5py_are_one_line_errors(tmp_path, monkeypatch):
    """`.h5` without TensorFlow/h5py: one line naming the extra, never a traceback."""
    monkeypatch.chdir(tmp_path)
    np.savez("lin.npz", weight=np.ones((1, 3)), bias=np.zeros(1))
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "h5py", None)
    out = run("encrypt-model", "--model", "m.h5", "--output", "m.enc", ok=False)
    assert install_command(["tensorflow"]) in out and "h5py" in out
    assert not Path("keys").exists()
    run(
        "encrypt-model",
        "--model",
        "lin.npz",
        "--output",
        "lin.enc",
        "--key-name",
        "k",
        "--iterations",
        "1",
    )
    out = run(
        "decrypt-model",
        "--input-model",
        "lin.enc",
        "--private-key",
        "keys/k/private.key",
        "--output-model",
        "x.h5",
        ok=False,
    )
    assert install_command(["tensorflow"]) in out and "keras" in out


@pytest.mark.slow  # TensorFlow start-up and four Keras saves: about 20 s on 2 cores
@pytest.mark.skipif(not HAS_KERAS, reason="TensorFlow/Keras absent")
def test_keras_models_round_trip_through_h5_and_keras(tmp_path, monkeypatch):
    from cifer_flwr.securetrain.model import load_keras, save_keras

    monkeypatch.chdir(tmp_path)
    keras = load_keras("test")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.layers[1].set_weights([w + 0.5 for w in model.layers[1].get_weights()])
    save_keras(model, Path("net.h5"))
    save_keras(model, Path("net.keras"))
    round_trip("net.h5", "back.keras", "h")
    round_trip("net.keras", "back.h5", "k")
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    for back in ("back.keras", "back.h5"):
        loaded = keras.models.load_model(back)
        for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
        )
    tensors = read_tensors("net.h5")
    assert tensors.architecture is not None and len(tensors.arrays) == 8
    again = ModelTensors.from_arrays(tensors.to_arrays())
    assert again.architecture == tensors.architecture and list(again.arrays) == list(tensors.arrays)
    write_tensors(again, "direct.keras")
    assert len(keras.models.load_model("direct.keras").weights) == 8
