"""``cifer securetrain`` on hostile files: every one ends in one clean line and exit code 2.

Each hostile file is built for real (h5py, torch, numpy, zipfile, csv, a re-signed cifer
container) the way an attacker would, then handed to the CLI. Bombs run in a subprocess under
``RLIMIT_AS`` = 3 GiB: reading them (4 GiB each) would fail with ``MemoryError``, so exit
code 2 with the limit message proves they were refused before being read. Garbage ciphertexts
also run in a subprocess, where a crash is observed rather than fatal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.constants import KIND_ENCRYPTED_DATASET, KIND_ENCRYPTED_MODEL
from cifer_flwr.crypto import container
from cifer_flwr.crypto.keys import write_key_pair
from cifer_flwr.securetrain import (
    LogisticModel,
    encrypt_dataset,
    encrypt_model,
    formats,
    limits,
    save_encrypted,
)

MEMORY_LIMIT = 3 << 30


def clean_error(args: list[str], *needles: str) -> str:
    """Run ``cifer ARGS`` in-process; assert exit 2 and one ``error:`` line naming the problem."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def run_isolated(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cifer ARGS`` in a subprocess limited to :data:`MEMORY_LIMIT` of address space."""
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
        "from cifer_flwr.cli import app\n"
        "sys.argv = ['cifer', *sys.argv[1:]]\n"
        "app()\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def assert_isolated_clean(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- .pt models


@pytest.mark.parametrize(
    ("state", "needles"),
    [
        ({"weight": torch.zeros(1, 3), "bias": 3}, ["'bias'", "int"]),
        ({"weight": "abc", "bias": torch.zeros(1)}, ["'weight'", "str"]),
        ({"weight": {"x": torch.zeros(1, 3)}, "bias": torch.zeros(1)}, ["'weight'", "dict"]),
        ({"weight": [1.0, 2.0], "bias": torch.zeros(1)}, ["'weight'", "list"]),
        ({"weight": torch.zeros(1, 3, dtype=torch.int64), "bias": torch.zeros(1)}, ["int64"]),
        ({"weight": torch.zeros(1, 3), "bias": torch.zeros(1, dtype=torch.bool)}, ["'bias'"]),
        (
            {"weight": torch.zeros(2, 3, 4), "bias": torch.zeros(1)},
            ["(2, 3, 4)", "one linear layer"],
        ),
        ({"weight": torch.zeros(1, 3), "bias": torch.zeros(2)}, ["one linear layer"]),
        ({"weight": torch.full((1, 3), math.nan), "bias": torch.zeros(1)}, ["NaN"]),
        ({1: torch.zeros(1, 3), "bias": torch.zeros(1)}, ["key 1"]),
        ({"fc.weight": torch.zeros(1, 3)}, ["keys weight, bias"]),
        ([torch.zeros(1, 3)], ["state dict", "list"]),
    ],
    ids=[
        "int",
        "str",
        "nested-dict",
        "list",
        "int-tensor",
        "bool-tensor",
        "rank3",
        "two-biases",
        "nan",
        "int-key",
        "missing-bias",
        "not-a-dict",
    ],
)
def test_pt_with_wrong_values(tmp_path, monkeypatch, state, needles):
    # `evaluate` reads logistic models only; `encrypt-model` would store a readable
    # non-linear state dict encrypted (test_tensors.py), but refuses the same hostile entries.
    monkeypatch.chdir(tmp_path)
    torch.save(state, "model.pt")
    clean_error(["securetrain", "evaluate", "--model", "model.pt", "--dataset", "x.npz"], *needles)
    assert not Path("keys").exists()


def test_pt_that_is_not_a_zip_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("legacy.pt").write_bytes(b"\x80\x02}q\x00." + bytes(100))
    clean_error(["securetrain", "evaluate", "--model", "legacy.pt", "--dataset", "x.npz"], "zip")


def test_pt_archive_over_the_limit_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(1, 4096), "bias": torch.zeros(1)}, "model.pt")
    monkeypatch.setattr("cifer_flwr.securetrain.model.MAX_MODEL_BYTES", 4096)

    def no_load(*_a: Any, **_k: Any) -> None:
        raise AssertionError("torch.load must not run")

    monkeypatch.setattr(torch, "load", no_load)
    clean_error(
        ["securetrain", "encrypt-model", "--model", "model.pt", "--output", "m.enc"],
        "over the limit",
    )


# ----------------------------------------------------------------------------- .h5 models


def _h5_model(path: Path, kernel: Any = None, bias: Any = None, **kernel_kw: Any) -> None:
    with h5py.File(path, "w") as fh:
        group = fh.create_group("model_weights/dense/sequential/dense")
        if kernel is not None or kernel_kw:
            group.create_dataset("kernel", data=kernel, **kernel_kw)
        group.create_dataset("bias", data=np.zeros(1, np.float32) if bias is None else bias)


@pytest.mark.parametrize(
    ("kernel", "bias", "needles"),
    [
        (np.bytes_(b"\x00" * 12), None, ["kernel", "|S12"]),
        ("a string kernel", None, ["kernel", "object"]),
        (np.ones((3, 1), np.int32), None, ["kernel", "int32"]),
        (np.ones((3, 1), np.float32), np.array([b"x"]), ["bias", "|S1"]),
        (np.ones((2, 3, 1), np.float32), None, ["kernel", "(2, 3, 1)"]),
        (np.float32(1.0), None, ["kernel", "shape ()"]),
        (np.ones((3, 2), np.float32), None, ["one linear layer"]),
        (np.ones((3, 1), np.complex64), None, ["complex64"]),
        (np.array([[1.0], [np.inf]], np.float32), None, ["NaN or infinite"]),
    ],
    ids=["bytes", "str", "int", "bytes-bias", "rank3", "scalar", "two-units", "complex", "inf"],
)
def test_h5_with_wrong_dtypes_and_ranks(tmp_path, monkeypatch, kernel, bias, needles):
    monkeypatch.chdir(tmp_path)
    _h5_model(tmp_path / "model.h5", kernel, bias)
    clean_error(["securetrain", "evaluate", "--model", "model.h5", "--dataset", "x.npz"], *needles)


def test_h5_external_storage_cannot_read_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    secret = np.arange(1, 4, dtype=np.float32)
    secret.tofile("secret.bin")
    _h5_model(
        tmp_path / "model.h5",
        shape=(3, 1),
        dtype=np.float32,
        external=[("secret.bin", 0, secret.nbytes)],
    )
    with h5py.File("model.h5") as fh:  # the attack works with plain h5py
        np.testing.assert_array_equal(
            fh["model_weights/dense/sequential/dense/kernel"][()].ravel(), secret
        )
    clean_error(
        ["securetrain", "encrypt-model", "--model", "model.h5", "--output", "m.enc"],
        "external storage",
    )


def test_h5_external_and_soft_links_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("other.h5", "w") as fh:
        fh.create_dataset("kernel", data=np.ones((3, 1), np.float32))
    with h5py.File("elink.h5", "w") as fh:
        fh["dense/kernel"] = h5py.ExternalLink("other.h5", "/kernel")
        fh.create_dataset("dense/bias", data=np.zeros(1, np.float32))
    clean_error(
        ["securetrain", "encrypt-model", "--model", "elink.h5", "--output", "m.enc"],
        "ExternalLink",
        "dense/kernel",
    )
    with h5py.File("soft.h5", "w") as fh:
        fh.create_dataset("hidden/w", data=np.ones((3, 1), np.float32))
        fh["dense/kernel"] = h5py.SoftLink("/hidden/w")
        fh.create_dataset("dense/bias", data=np.zeros(1, np.float32))
    clean_error(
        ["securetrain", "encrypt-model", "--model", "soft.h5", "--output", "m.enc"], "SoftLink"
    )


def test_h5_virtual_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("source.h5", "w") as fh:
        fh.create_dataset("data", data=np.ones((3, 1), np.float32))
    layout = h5py.VirtualLayout(shape=(3, 1), dtype=np.float32)
    layout[:] = h5py.VirtualSource("source.h5", "data", shape=(3, 1))
    with h5py.File("virtual.h5", "w") as fh:
        fh.create_virtual_dataset("dense/kernel", layout)
        fh.create_dataset("dense/bias", data=np.zeros(1, np.float32))
    clean_error(
        ["securetrain", "encrypt-model", "--model", "virtual.h5", "--output", "m.enc"], "virtual"
    )


def test_h5_bomb_is_refused_before_reading(tmp_path):
    """A 4 kB .h5 whose gzip-chunked kernel expands to 4 GiB of zeros."""
    with h5py.File(tmp_path / "bomb.h5", "w") as fh:
        group = fh.create_group("model_weights/dense")
        group.create_dataset(
            "kernel", shape=(1 << 30, 1), dtype="f4", chunks=(1 << 20, 1), compression="gzip"
        )
        group.create_dataset("bias", data=np.zeros(1, np.float32))
    assert (tmp_path / "bomb.h5").stat().st_size < 16_000
    result = run_isolated(
        ["securetrain", "encrypt-model", "--model", "bomb.h5", "--output", "m.enc"], tmp_path
    )
    assert_isolated_clean(result, "over the limit", "refused before reading", "kernel")


# ---------------------------------------------------------------------- .npz / .npy / .csv


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def _zip_bomb(path: Path, member: str, shape: tuple[int, ...]) -> int:
    """Write a real deflate zip bomb: one ``.npy`` member of zeros; return its expanded size.

    Built like a bomb is built: one full-flushed deflate block of 16 MiB of zeros repeated
    (deflate blocks after a full flush are independent), valid CRC and sizes, no zip64.
    """
    header = _npy_header(shape)
    data_size = math.prod(shape) * 8
    total = len(header) + data_size
    assert total < 1 << 32
    block = 16 << 20
    zeros = bytes(block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH) == unit
    repeats, rest = divmod(data_size - 2 * block, block)
    tail = comp.compress(bytes(rest)) + comp.flush()
    stream = head + unit * (repeats + 2) + tail
    crc = zlib.crc32(header)
    for _ in range(repeats + 2):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    name = member.encode()
    local = struct.pack(
        "<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0x21, crc, len(stream), total, len(name), 0
    )
    central = struct.pack(
        "<4s4B4HL2L5H2L",
        b"PK\x01\x02",
        20,
        3,
        20,
        0,
        0,
        8,
        0,
        0x21,
        crc,
        len(stream),
        total,
        len(name),
        0,
        0,
        0,
        0,
        0o644 << 16,
        0,
    )
    offset = len(local) + len(name) + len(stream)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), offset, 0)
    path.write_bytes(local + name + stream + central + name + end)
    return total


def test_npz_zip_bomb_is_never_inflated(tmp_path):
    np.savez(tmp_path / "small.npz", y=np.array([0, 1]))
    with zipfile.ZipFile(tmp_path / "small.npz") as src:
        labels = src.read("y.npy")
    expanded = _zip_bomb(tmp_path / "bomb.npz", "X.npy", ((1 << 32) // 8 - 4096,))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "a") as zf:
        zf.writestr("y.npy", labels)
    assert expanded > 4_000_000_000
    assert (tmp_path / "bomb.npz").stat().st_size < 8_000_000
    with zipfile.ZipFile(tmp_path / "bomb.npz") as zf:  # a valid archive: zip tools accept it
        assert zf.getinfo("X.npy").file_size == expanded
    result = run_isolated(
        ["securetrain", "encrypt-dataset", "--dataset", "bomb.npz", "--output", "d.enc"],
        tmp_path,
    )
    assert_isolated_clean(result, "'X.npy'", "zip bomb", "over the limit")
    assert not (tmp_path / "keys").exists()


def test_npz_header_larger_than_its_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile("lie.npz", "w") as zf:
        zf.writestr("X.npy", _npy_header((1 << 24, 64)) + bytes(64))
        zf.writestr("y.npy", _npy_header((2,), "<i8") + bytes(16))
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "lie.npz", "--output", "d.enc"],
        "over the limit",
    )
    with zipfile.ZipFile("short.npz", "w") as zf:
        zf.writestr("X.npy", _npy_header((4, 2)) + bytes(16))
        zf.writestr("y.npy", _npy_header((4,), "<i8") + bytes(32))
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "short.npz", "--output", "d.enc"],
        "truncated",
        "[X]",
    )


def test_npz_with_too_many_entries_or_other_compression(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("many.npz", **{f"a{i}": np.zeros(1) for i in range(limits.MAX_NPZ_MEMBERS + 1)})
    clean_error(["securetrain", "evaluate", "--model", "many.npz", "--dataset", "x.npz"], "entries")
    with zipfile.ZipFile("bz.npz", "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("weight.npy", _npy_header((1, 2)) + bytes(16))
        zf.writestr("bias.npy", _npy_header((1,)) + bytes(8))
    clean_error(
        ["securetrain", "evaluate", "--model", "bz.npz", "--dataset", "x.npz"], "compression method"
    )
    np.savez_compressed("c.npz", weight=np.arange(4000.0).reshape(1, -1), bias=np.zeros(1))
    raw = bytearray(Path("c.npz").read_bytes())
    for i in range(200, 260):
        raw[i] ^= 0x5A
    Path("c.npz").write_bytes(bytes(raw))
    clean_error(
        ["securetrain", "evaluate", "--model", "c.npz", "--dataset", "x.npz"],
        "not a readable .npz",
    )
    Path("text.npz").write_text("not a zip")
    clean_error(
        ["securetrain", "evaluate", "--model", "text.npz", "--dataset", "x.npz"],
        "not a readable .npz",
    )


def test_npz_model_with_wrong_dtypes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("m.npz", weight=np.array([["a", "b"]]), bias=np.array([0.0]))
    clean_error(
        ["securetrain", "evaluate", "--model", "m.npz", "--dataset", "x.npz"], "'weight'", "<U1"
    )
    np.savez("o.npz", weight=np.array([[1, None]], dtype=object), bias=np.array([0.0]))
    clean_error(
        ["securetrain", "evaluate", "--model", "o.npz", "--dataset", "x.npz"],
        "object",
        "not accepted",
    )


def test_npy_headers_are_checked_before_reading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("huge.npy").write_bytes(_npy_header((1 << 31, 4)) + bytes(64))
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "huge.npy", "--output", "d.enc"],
        "over the limit",
        "refused before reading",
    )
    Path("short.npy").write_bytes(_npy_header((10, 3)) + bytes(100))
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "short.npy", "--output", "d.enc"],
        "truncated",
    )
    Path("junk.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200)
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "junk.npy", "--output", "d.enc"],
        "not a valid .npy",
    )
    np.save("obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "obj.npy", "--output", "d.enc"], "object"
    )
    assert not Path("keys").exists()


def test_csv_field_over_the_limit_names_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("big.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["a", "b", "y"])
        writer.writerow(["1", "2", "0"])
        writer.writerow(["1", "9" * 200_000, "1"])
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "big.csv", "--output", "d.enc"],
        "line 3",
        str(limits.CSV_FIELD_LIMIT),
    )
    assert csv.field_size_limit() == 131072  # the global limit is restored


def test_csv_size_text_and_encoding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text("a,b,y\n1,2,0\n3,yes,1\n")
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "t.csv", "--output", "d.enc"],
        "line 3",
        "'b'",
        "text",
    )
    Path("latin.csv").write_bytes(b"a,b,y\n1,2,0\n\xe9,3,1\n")
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "latin.csv", "--output", "d.enc"], "UTF-8"
    )
    Path("ragged.csv").write_text("a,b,y\n1,2,0\n3,1\n")
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "ragged.csv", "--output", "d.enc"],
        "line 3",
        "columns",
    )
    Path("ok.csv").write_text("a,b,y\n" + "1,2,0\n3,4,1\n" * 100)
    monkeypatch.setattr(formats, "MAX_CSV_BYTES", 1000)  # the CSV reader
    clean_error(
        ["securetrain", "encrypt-dataset", "--dataset", "ok.csv", "--output", "d.enc"],
        "over the limit of 1000 bytes",
    )


def test_limits_are_the_documented_ones():
    assert limits.MAX_ARRAY_BYTES == 1 << 30
    assert limits.MAX_CSV_BYTES == 256 << 20
    assert limits.CSV_FIELD_LIMIT == 64 << 10
    assert formats.MAX_CSV_BYTES is limits.MAX_CSV_BYTES


def test_legitimate_files_still_load(tmp_path):
    """The limits do not get in the way of normal files (round trips through the readers)."""
    from cifer_flwr.securetrain import load_dataset, read_model, write_model

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    y[:2] = [0, 1]
    np.savez_compressed(tmp_path / "c.npz", X=x, y=y)
    np.testing.assert_array_equal(load_dataset(tmp_path / "c.npz").X, x)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.column_stack([x, y])))
    np.testing.assert_array_equal(load_dataset(tmp_path / "f.npy").X, x)
    model = LogisticModel(rng.normal(size=3), 0.5)
    for ext in (".npz", ".pt"):
        back = read_model(write_model(model, tmp_path / f"m{ext}"))
        np.testing.assert_allclose(back.to_vector(), model.to_vector(), rtol=1e-6)


# ------------------------------------------------------------------------------ .enc files


@pytest.fixture(scope="module")
def enc_project(tmp_path_factory, small_cancer, train_key):
    root = tmp_path_factory.mktemp("enc")
    priv, pub = write_key_pair(train_key, root / "keys")
    save_encrypted(encrypt_model(LogisticModel(np.arange(2.0), 0.5), train_key), root / "m.enc")
    save_encrypted(encrypt_dataset(small_cancer, train_key), root / "d.enc")
    return root


def _resign(src: Path, dst: Path, kind: str, change: dict[str, Any]) -> None:
    """Edit header fields and re-sign the container, as an attacker can."""
    header, blobs = container.unpack(src.read_bytes(), kind=kind)
    for name in ("kind", "blobs_sha256"):
        header.pop(name)
    for name, value in change.items():
        if value is DELETE:
            header.pop(name)
        else:
            header[name] = value
    dst.write_bytes(container.pack(kind, header, blobs))


DELETE = object()


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"num_features": "8"}, ["'num_features'", "'8'"]),
        ({"num_features": True}, ["'num_features'"]),
        ({"num_features": -1}, ["'num_features'"]),
        ({"num_features": 7}, ["'shape'"]),
        ({"num_samples": 10**15}, ["'num_samples'"]),
        ({"num_samples": 1.5}, ["'num_samples'"]),
        ({"period": 3}, ["'period'", "256"]),
        ({"chunks": 2}, ["'chunks'"]),
        ({"chunks": None}, ["'chunks'"]),
        ({"shape": [200]}, ["'shape'"]),
        ({"meta": ["x"]}, ["'meta'"]),
        ({"params": "default"}, ["'params'"]),
        ({"params": {"name": "x"}}, ["CKKS parameters"]),
        ({"format_version": 2}, ["format version"]),
        ({"format_version": True}, ["format version"]),
        ({"fingerprint": 12}, ["'fingerprint'"]),
        ({"encoding": None}, ["'encoding'"]),
        ({"period": DELETE}, ["no 'period' field"]),
    ],
    ids=lambda v: json.dumps(v, default=str)[:40] if isinstance(v, dict) else None,
)
def test_encrypted_dataset_header_fields_are_validated(enc_project, tmp_path, change, needles):
    bad = tmp_path / "bad.enc"
    _resign(enc_project / "d.enc", bad, KIND_ENCRYPTED_DATASET, change)
    line = clean_error(
        [
            "securetrain",
            "train",
            "--encrypted-data",
            str(bad),
            "--public-key",
            str(enc_project / "keys" / "public.key"),
            "--output-model",
            str(tmp_path / "out.enc"),
            "--iterations",
            "1",
            "--quiet",
        ],
        *needles,
    )
    assert "key mismatch" not in line or "fingerprint" in change


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"levels": [0]}, ["'levels'"]),
        ({"levels": [0, 0, 99]}, ["'levels'", "depth"]),
        ({"levels": "000"}, ["'levels'"]),
        ({"levels": [0, False, 0]}, ["'levels'"]),
        ({"scale": math.nan}, ["'scale'", "nan"]),
        ({"scale": math.inf}, ["'scale'"]),
        ({"scale": "1"}, ["'scale'"]),
        ({"scale": 0}, ["'scale'"]),
        ({"scale": -1.0}, ["'scale'"]),
        ({"num_features": 5}, ["'shape'"]),
        ({"num_features": 10**9}, ["'num_features'"]),
        ({"meta": {"trained_iterations": "x"}}, ["trained_iterations"]),
        ({"meta": {"trained_iterations": -3}}, ["trained_iterations"]),
        ({"model": "mlp"}, ["'model'"]),
        ({"order": None}, ["'order'"]),
        ({"scale": DELETE}, ["no 'scale' field"]),
    ],
    ids=lambda v: json.dumps(v, default=str)[:40] if isinstance(v, dict) else None,
)
def test_encrypted_model_header_fields_are_validated(enc_project, tmp_path, change, needles):
    bad = tmp_path / "bad.enc"
    _resign(enc_project / "m.enc", bad, KIND_ENCRYPTED_MODEL, change)
    clean_error(
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(bad),
            "--private-key",
            str(enc_project / "keys" / "private.key"),
            "--output-model",
            str(tmp_path / "out.npz"),
            "--quiet",
        ],
        *needles,
    )


def test_untampered_files_still_work(enc_project, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(enc_project / "m.enc"),
            "--private-key",
            str(enc_project / "keys" / "private.key"),
            "--output-model",
            str(tmp_path / "out.npz"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as npz:
        np.testing.assert_allclose(npz["weight"].ravel(), [0.0, 1.0], atol=1e-4)


def test_truncated_and_corrupted_encrypted_files(enc_project, tmp_path):
    data = (enc_project / "m.enc").read_bytes()
    args = ["--private-key", str(enc_project / "keys" / "private.key"), "--quiet"]
    for cut in (5, 20, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.enc").write_bytes(data[:cut])
        clean_error(
            [
                "securetrain",
                "decrypt-model",
                "--input-model",
                str(tmp_path / "cut.enc"),
                "--output-model",
                str(tmp_path / "o.npz"),
                *args,
            ],
        )
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    (tmp_path / "flip.enc").write_bytes(bytes(flipped))
    clean_error(
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(tmp_path / "flip.enc"),
            "--output-model",
            str(tmp_path / "o.npz"),
            *args,
        ],
        "corrupted",
    )


@pytest.mark.parametrize("garbage", ["random", "empty", "half"])
def test_re_signed_garbage_ciphertexts(enc_project, tmp_path, garbage):
    """Valid header and digest, but blobs that are not ciphertexts (run where a crash shows)."""
    header, blobs = container.unpack((enc_project / "m.enc").read_bytes())
    header = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
    rng = np.random.default_rng(7)
    if garbage == "random":
        blobs[1] = rng.bytes(len(blobs[1]))
    elif garbage == "empty":
        blobs[1] = b""
    else:
        blobs[1] = blobs[1][: len(blobs[1]) // 2]
    (tmp_path / "g.enc").write_bytes(container.pack(KIND_ENCRYPTED_MODEL, header, blobs))
    result = run_isolated(
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            "g.enc",
            "--private-key",
            str(enc_project / "keys" / "private.key"),
            "--output-model",
            "o.npz",
            "--quiet",
        ],
        tmp_path,
    )
    assert_isolated_clean(result, "ciphertext")


def test_h5_with_a_filter_plugin_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _h5_model(
        tmp_path / "model.h5",
        np.ones((3, 1), np.float32),
        compression=32001,
        allow_unknown_filter=True,
    )
    clean_error(
        ["securetrain", "encrypt-model", "--model", "model.h5", "--output", "m.enc"],
        "filter",
        "32001",
    )


def test_multi_line_library_errors_become_one_line(tmp_path, monkeypatch):
    """torch's weights_only refusal spans many lines; the CLI prints it as one."""
    import fractions

    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(1, 3), "bias": fractions.Fraction(1, 3)}, "model.pt")
    line = clean_error(
        ["securetrain", "encrypt-model", "--model", "model.pt", "--output", "m.enc"],
        "not a loadable PyTorch state dict",
        "fractions.Fraction",
    )
    assert "weights_only=False" not in line and "\x1b" not in line


# ---------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", "ABSOLUTE", ""])
def test_key_names_are_plain_names(tmp_path, monkeypatch, name):
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    np.savez("d.npz", X=np.array([[0.0], [1.0]]), y=np.array([0, 1]))
    clean_error(
        [
            "securetrain",
            "encrypt-dataset",
            "--dataset",
            "d.npz",
            "--output",
            "d.enc",
            "--key-name",
            name,
            "--iterations",
            "1",
        ],
        "key name",
    )
    assert list(tmp_path.rglob("*.key")) == []
    assert [p.name for p in tmp_path.iterdir()] == ["work"]
    assert not Path("d.enc").exists()


def test_world_readable_private_key_is_refused(enc_project, tmp_path):
    loose = tmp_path / "private.key"
    loose.write_bytes((enc_project / "keys" / "private.key").read_bytes())
    loose.chmod(0o644)
    clean_error(
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(enc_project / "m.enc"),
            "--private-key",
            str(loose),
            "--output-model",
            str(tmp_path / "out.npz"),
        ],
        "chmod 600",
    )
    assert not (tmp_path / "out.npz").exists()


def test_deeply_nested_enc_header(enc_project, tmp_path):
    """A container whose JSON header nests 100000 arrays (json recursion) is one clean error."""
    from cifer_flwr.constants import CONTAINER_MAGIC

    head = b"[" * 100_000
    (tmp_path / "deep.enc").write_bytes(
        CONTAINER_MAGIC + struct.pack(">I", len(head)) + head + struct.pack(">I", 0)
    )
    clean_error(
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(tmp_path / "deep.enc"),
            "--private-key",
            str(enc_project / "keys" / "private.key"),
            "--output-model",
            str(tmp_path / "out.npz"),
        ],
    )


def test_bugs_are_not_swallowed(tmp_path, monkeypatch):
    """A non-CiferError is a bug: the CLI lets it through (traceback), it is not an 'error:'."""
    monkeypatch.chdir(tmp_path)

    def broken(_path: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("cifer_flwr.securetrain.read_model", broken)
    result = CliRunner().invoke(
        app, ["securetrain", "encrypt-model", "--model", "m.npz", "--output", "m.enc"]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    assert "error:" not in result.stderr
