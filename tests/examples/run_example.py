"""Run one example's ServerApp + ClientApp in process (InProcessGrid), print its results JSON.

Usage: python -m tests.examples.run_example EXAMPLE_DIR PRIVATE_KEY PUBLIC_KEY OUT_JSON KEY=VALUE...

With run config ``save-path``, the saved final model is then evaluated by the example's own
``task.evaluate_arrays`` on the raw held-out rows, written to ``OUT_JSON`` with suffix
``.final.json``: ``raw`` (encrypted: decrypted with the federation's scaling folded in,
``folded``, or applied to the rows where the first layer cannot absorb it; plaintext: with
the scaling saved beside it) and ``unscaled`` (the weights as trained, on raw rows).

A subprocess per run: TensorFlow must be imported after TenSEAL (docs/design.md §7), and each
example imports its own package (``sklearnexample``, ``tfexample``, ...).
"""

from __future__ import annotations

import importlib
import json
import sys
import tomllib
from pathlib import Path

from cifer_flwr import crypto  # noqa: F401  (TenSEAL before TensorFlow)


def parse(value: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main() -> None:
    example, priv, pub, out, *pairs = sys.argv[1:]
    root = Path(example)
    project = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    sys.path.insert(0, str(root))
    server = importlib.import_module(project["components"]["serverapp"].split(":")[0]).app
    client = importlib.import_module(project["components"]["clientapp"].split(":")[0]).app

    from flwr.app import Context, RecordDict

    from tests.strategies.harness import InProcessGrid

    run_config = dict(project["config"])
    run_config.update({"public-key": pub, "results-path": out})
    run_config.update({k: parse(v) for k, v in (p.split("=", 1) for p in pairs)})
    nodes = int(run_config.get("min-nodes", 2))
    grid = InProcessGrid(
        client,
        {
            n + 1: {"partition-id": n, "num-partitions": nodes, "private-key": priv}
            for n in range(nodes)
        },
    )
    for ctx in grid.contexts.values():
        ctx.run_config = run_config
    server(
        grid,
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config),
    )
    if run_config.get("save-path"):
        final = evaluate_saved(
            importlib.import_module(f"{project['components']['serverapp'].split('.')[0]}.task"),
            Path(str(run_config["save-path"])),
            priv,
            run_config,
        )
        Path(out).with_suffix(".final.json").write_text(json.dumps(final))


def evaluate_saved(task, save: Path, priv: str, run_config: dict) -> dict:
    """The saved model on the raw held-out rows: as the library hands it to a key holder
    (``decrypt_model_and_scaling``) or the plaintext model with the scaling saved beside it."""
    import io

    import numpy as np

    from cifer_flwr import statistics
    from cifer_flwr.protocol import decrypt_global_model

    folded = False
    if save.suffix == ".npz":
        with np.load(io.BytesIO(save.read_bytes()), allow_pickle=False) as data:
            trained = {k: data[k] for k in data.files}
        raw = task.evaluate_arrays(trained, run_config, statistics.read_plain_scaling(save))
    else:
        trained = decrypt_global_model(save, priv)
        arrays, scaling = statistics.decrypt_model_and_scaling(save, priv)
        folded = scaling is None
        raw = task.evaluate_arrays(arrays, run_config, scaling)
    unscaled = task.evaluate_arrays(trained, run_config)
    return {"raw": raw, "unscaled": unscaled, "folded": folded}


if __name__ == "__main__":
    main()
