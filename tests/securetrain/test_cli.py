"""The ``cifer securetrain`` commands, run exactly as written in issue 6.

Both scenarios run end to end on standardized breast-cancer data; the decrypted model is
compared with the plaintext oracle (same algorithm, same iterations).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifer_flwr.cli import app
from cifer_flwr.securetrain import (
    Dataset,
    LogisticModel,
    evaluate,
    read_model,
    train_plaintext,
    write_model,
)

ENCRYPT_DATASET = (
    "cifer securetrain encrypt-dataset --dataset ./alice/prj1_alice_data.npz "
    "--output ./alice/encrypted_prj1_alice_data.enc"
)
TRAIN = (
    "cifer securetrain train --encrypted-data ./alice/encrypted_prj1_alice_data.enc "
    "--public-key ./keys/prj1_alice_public.key --output-model ./bob/prj1_trained_model.enc"
)
ENCRYPT_MODEL = (
    "cifer securetrain encrypt-model --model ./bob/prj2_model.h5 "
    "--output ./bob/encrypted_prj2_model.enc"
)
DECRYPT_MODEL = (
    "cifer securetrain decrypt-model --input-model ./bob/encrypted_prj2_trained_model.enc "
    "--private-key ./keys/alice_private.key --output-model ./bob/final_model_decrypted.h5"
)
HAS_KERAS = importlib.util.find_spec("keras") is not None


def cifer(command: str, *, ok: bool = True) -> str:
    args = shlex.split(command)
    assert args[0] == "cifer"
    result = CliRunner().invoke(app, args[1:])
    output = result.output
    with contextlib.suppress(ValueError):
        output += result.stderr
    if ok:
        assert result.exit_code == 0, output + repr(result.exception)
    else:
        assert result.exit_code != 0, output
    return " ".join(output.split())


def save_npz(ds: Dataset, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=ds.X, y=ds.y)


def check_against_oracle(decrypted: LogisticModel, oracle: LogisticModel, ds: Dataset) -> None:
    got, want = evaluate(decrypted, ds), evaluate(oracle, ds)
    assert got["accuracy"] >= 0.90
    assert abs(got["accuracy"] - want["accuracy"]) <= 0.03
    np.testing.assert_allclose(decrypted.to_vector(), oracle.to_vector(), atol=1e-3)


@pytest.mark.slow
def test_scenario1_data_privacy_exact_commands(tmp_path, monkeypatch, cancer):
    monkeypatch.chdir(tmp_path)
    save_npz(cancer, "alice/prj1_alice_data.npz")

    out = cifer(ENCRYPT_DATASET)  # Alice
    assert "KEEP keys/private.key" in out and "SHARE keys/public.key" in out
    assert (Path("keys/private.key").stat().st_mode & 0o777) == 0o600
    shutil.copy("keys/public.key", "keys/prj1_alice_public.key")  # Alice -> Bob

    out = cifer(TRAIN)  # Bob: ciphertexts + public key only
    assert "accuracy is available only after decryption" in out

    # Bob -> Alice: the encrypted model; Alice keeps her private key under the name.
    shutil.copy("bob/prj1_trained_model.enc", "bob/encrypted_prj2_trained_model.enc")
    shutil.copy2("keys/private.key", "keys/alice_private.key")
    cifer(DECRYPT_MODEL)

    decrypted = read_model("bob/final_model_decrypted.h5")
    check_against_oracle(decrypted, train_plaintext(cancer, iterations=3), cancer)

    if HAS_KERAS:
        import keras

        keras_model = keras.models.load_model("bob/final_model_decrypted.h5")
        np.testing.assert_allclose(
            keras_model.predict(cancer.X, verbose=0).ravel(),
            decrypted.predict_proba(cancer.X),
            atol=1e-5,
        )

    cifer(
        "cifer securetrain decrypt-model --input-model ./bob/prj1_trained_model.enc "
        "--private-key ./keys/private.key --output-model ./alice/model.pt"
    )
    import torch

    state = torch.load("alice/model.pt", weights_only=True)
    np.testing.assert_allclose(state["weight"].numpy().ravel(), decrypted.weight, atol=1e-6)

    out = cifer(
        "cifer securetrain evaluate --model ./bob/final_model_decrypted.h5 "
        "--dataset ./alice/prj1_alice_data.npz"
    )
    assert "accuracy" in out and "auc" in out

    # Refusals on the real files: existing output, wrong key, public key for decryption.
    assert "--force" in cifer(TRAIN, ok=False)
    out = cifer(DECRYPT_MODEL, ok=False)
    assert "--force" in out
    out = cifer(
        "cifer securetrain decrypt-model --input-model ./bob/prj1_trained_model.enc "
        "--private-key ./keys/public.key --output-model ./alice/m2.npz",
        ok=False,
    )
    assert "public key" in out


@pytest.mark.slow
def test_scenario2_model_privacy_exact_commands(tmp_path, monkeypatch, cancer):
    monkeypatch.chdir(tmp_path)
    bob_model = LogisticModel(np.full(cancer.num_features, 0.02), -0.05)
    write_model(bob_model, "bob/prj2_model.h5")
    save_npz(cancer, "alice/prj2_alice_data.npz")

    out = cifer(ENCRYPT_MODEL)  # Bob
    assert "KEEP keys/private.key" in out
    out = cifer(  # Alice: her plaintext data x Bob's encrypted weights, Bob's public key
        "cifer securetrain train --encrypted-model ./bob/encrypted_prj2_model.enc "
        "--dataset ./alice/prj2_alice_data.npz --public-key ./keys/public.key "
        "--output-model ./bob/encrypted_prj2_trained_model.enc"
    )
    assert "accuracy is available only after decryption" in out
    shutil.copy2("keys/private.key", "keys/alice_private.key")  # Bob's key, issue's file name
    cifer(DECRYPT_MODEL)  # Bob

    decrypted = read_model("bob/final_model_decrypted.h5")
    read_back = read_model("bob/prj2_model.h5")
    oracle = train_plaintext(cancer, iterations=3, init=read_back)
    check_against_oracle(decrypted, oracle, cancer)


def test_every_command_has_help_with_example():
    for command in ("encrypt-dataset", "encrypt-model", "train", "decrypt-model", "evaluate"):
        out = cifer(f"cifer securetrain {command} --help")
        assert "Example" in out, command


@pytest.fixture
def small_project(tmp_path, monkeypatch, small_cancer):
    """A one-iteration key pair (fast) with an encrypted dataset, in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    save_npz(small_cancer, "alice/data.npz")
    cifer(
        "cifer securetrain encrypt-dataset --dataset alice/data.npz --output alice/data.enc "
        "--key-name alice --iterations 1 --quiet"
    )
    return tmp_path


def test_cli_refusals(small_project, small_cancer):
    out = cifer(
        "cifer securetrain train --encrypted-data alice/data.enc --public-key "
        "keys/alice/public.key --output-model bob/model.h5",
        ok=False,
    )
    assert ".enc" in out and "decrypt-model" in out
    out = cifer(
        "cifer securetrain train --encrypted-data alice/data.enc --public-key "
        "keys/alice/private.key --output-model bob/model.enc",
        ok=False,
    )
    assert "private key" in out
    out = cifer(
        "cifer securetrain train --encrypted-data alice/data.enc --public-key "
        "keys/alice/public.key --output-model bob/model.enc --iterations 2",
        ok=False,
    )
    assert "at most 1 iterations" in out
    data = Path("alice/data.enc").read_bytes()
    Path("alice/cut.enc").write_bytes(data[: len(data) - 1000])
    out = cifer(
        "cifer securetrain train --encrypted-data alice/cut.enc --public-key "
        "keys/alice/public.key --output-model bob/model.enc",
        ok=False,
    )
    assert "truncated" in out
    np.savez("alice/nan.npz", X=np.array([[np.nan, 1.0], [0.0, 1.0]]), y=np.array([0, 1]))
    out = cifer(
        "cifer securetrain encrypt-dataset --dataset alice/nan.npz --output alice/nan.enc "
        "--key-name nan --iterations 1",
        ok=False,
    )
    assert "NaN" in out
    out = cifer(
        "cifer securetrain encrypt-dataset --dataset alice/data.xlsx --output alice/x.enc",
        ok=False,
    )
    assert "extension" in out
    out = cifer(
        "cifer securetrain encrypt-dataset --dataset alice/data.npz --output alice/data.enc "
        "--key-name again --iterations 1",
        ok=False,
    )
    assert "--force" in out


def test_cli_training_errors_and_wrong_key(small_project, small_cancer):
    cifer(
        "cifer securetrain train --encrypted-data alice/data.enc --public-key "
        "keys/alice/public.key --output-model bob/model.enc --iterations 1 --quiet"
    )
    # Another key pair: decrypting with it names both fingerprints.
    write_model(LogisticModel.zeros(5), "bob/small.npz")
    cifer(
        "cifer securetrain encrypt-model --model bob/small.npz --output bob/small.enc "
        "--key-name bob --iterations 1 --quiet"
    )
    out = cifer(
        "cifer securetrain decrypt-model --input-model bob/model.enc --private-key "
        "keys/bob/private.key --output-model alice/m.npz",
        ok=False,
    )
    from cifer_flwr.crypto.keys import load_key

    assert load_key("keys/alice/public.key").fingerprint in out
    assert load_key("keys/bob/public.key").fingerprint in out
    # Bob's 5-feature model cannot train on Alice's 8 features.
    out = cifer(
        "cifer securetrain train --encrypted-model bob/small.enc --dataset alice/data.npz "
        "--public-key keys/bob/public.key --output-model bob/t.enc --iterations 1",
        ok=False,
    )
    assert "5 features" in out
    cifer(
        "cifer securetrain decrypt-model --input-model bob/model.enc --private-key "
        "keys/alice/private.key --output-model alice/m.npz --quiet"
    )
    out = cifer(
        "cifer securetrain evaluate --model bob/small.npz --dataset alice/data.npz", ok=False
    )
    assert "features" in out
    out = cifer("cifer securetrain evaluate --model alice/m.npz --dataset alice/data.npz --json")
    assert '"accuracy"' in out
