"""One key loader for every scheme (issue 19, item 5).

``cifer securetrain decrypt-model`` and ``cifer keys inspect`` open CKKS, ``packed`` (BFV)
and Paillier key files through ``crypto.load_private_key`` / ``crypto.load_key``. Before,
decrypt-model used the CKKS-only loader and a Paillier key failed with
``KeyFileError ... found 'cifer.paillier-key'``. Oracle: the arrays that were encrypted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cifer_flwr import crypto
from cifer_flwr.cli import app

SCHEMES = {"ckks": "default", "packed": "packed", "paillier": "paillier"}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_decrypt_model_and_inspect_take_every_scheme(tmp_path, scheme):
    if scheme == "paillier":
        pytest.importorskip("phe")
    priv, pub = crypto.generate_key_pair(SCHEMES[scheme], tmp_path / "keys")
    arrays = {
        "weight": np.linspace(-1.5, 1.5, 12).reshape(3, 4).astype(np.float32),
        "bias": np.array([0.25, -0.5, 0.75], dtype=np.float32),
    }
    enc = crypto.encrypt(arrays, crypto.load_public_key(pub))
    model = tmp_path / "model.enc"
    model.write_bytes(crypto.to_bytes(enc))
    runner = CliRunner()
    out = tmp_path / "model.npz"
    res = runner.invoke(
        app,
        [
            "securetrain",
            "decrypt-model",
            "--input-model",
            str(model),
            "--private-key",
            str(priv),
            "--output-model",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    with np.load(out, allow_pickle=False) as back:
        for name, value in arrays.items():
            np.testing.assert_allclose(back[name], value, atol=1e-3)
    for path, kind in ((priv, "private"), (pub, "public")):
        res = runner.invoke(app, ["keys", "inspect", str(path), "--json"])
        assert res.exit_code == 0, res.output
        info = json.loads(res.output.strip().splitlines()[-1])
        assert info["type"] == kind
        assert info["scheme"] == {"ckks": "ckks", "packed": "bfv", "paillier": "paillier"}[scheme]
        assert info["fingerprint"] == crypto.load_key(path).fingerprint
