"""The README's strategy snippet runs as written."""

import re
from pathlib import Path

import numpy as np
from flwr.app import Context, RecordDict

from cifer_flwr import crypto, protocol
from tests.strategies.harness import InProcessGrid, node_configs

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Use the strategies") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_use_the_strategies_snippet_runs(key_files, tmp_path, capsys):
    priv, pub = key_files
    ns: dict = {}
    exec(compile(snippet(), "README.md", "exec"), ns)
    grid = InProcessGrid(ns["client"], node_configs(priv, nodes=(1, 2)))
    save = tmp_path / "global.enc"
    context = Context(1, 0, {}, RecordDict(), {"public-key": str(pub), "save-path": str(save)})
    ns["main"](grid, context)
    assert "final model is encrypted: True" in capsys.readouterr().out
    key = crypto.load_private_key(priv)
    model, _ = protocol.materialize(crypto.bundle_from_bytes(save.read_bytes(), key), key)
    np.testing.assert_allclose(model["0"], np.full((3, 2), 0.2), atol=1e-6)
