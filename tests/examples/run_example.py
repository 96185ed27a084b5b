"""Run one example's ServerApp + ClientApp in process (InProcessGrid), print its results JSON.

Usage: python -m tests.examples.run_example EXAMPLE_DIR PRIVATE_KEY PUBLIC_KEY OUT_JSON KEY=VALUE...

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


if __name__ == "__main__":
    main()
