"""`cifer securetrain decrypt-model` on a federated strategy's encrypted global model."""

import numpy as np
import torch
from typer.testing import CliRunner

from cifer_flwr import strategies
from cifer_flwr.cli import app
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

runner = CliRunner()
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}


def decrypt(model, key, out):
    args = ["securetrain", "decrypt-model", "--input-model", str(model)]
    return runner.invoke(app, [*args, "--private-key", str(key), "--output-model", str(out)])


def test_decrypt_model_reads_a_fedyogi_checkpoint(key_files, tmp_path):
    priv, pub = key_files
    seen = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv))
    save = tmp_path / "global.enc"
    strategies.FedYogi(public_key=pub, save_path=save, **COMMON).start(
        grid=grid, initial_arrays=plain_initial(), num_rounds=2
    )
    out = tmp_path / "final.npz"
    res = decrypt(save, priv, out)
    assert res.exit_code == 0, res.output
    with np.load(out, allow_pickle=False) as data:
        # the pending round-2 step is applied: equal to what clients evaluated after round 2
        for k in ("w", "b"):
            np.testing.assert_allclose(data[k], seen[("evaluate", 2, 1)][k], atol=1e-6)
    pt = tmp_path / "final.pt"
    res = decrypt(save, priv, pt)
    assert res.exit_code == 0, res.output
    state = torch.load(pt, weights_only=True)
    assert tuple(state["w"].shape) == (20, 10)
    h5 = decrypt(save, priv, tmp_path / "m.h5")
    assert h5.exit_code != 0 and "architecture" in h5.output
    wrong = decrypt(save, pub, tmp_path / "x.npz")
    assert wrong.exit_code != 0 and "public key" in wrong.output
