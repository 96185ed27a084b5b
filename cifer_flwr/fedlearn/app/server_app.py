"""ServerApp of the fedlearn API.

The strategy specification comes from run config and is built by the one strategy builder;
the initial model comes from the specification's model file. Before the first round the
clients' feature statistics are summed under encryption (docs/design.md §4.10).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.apps.data import cached_dataset
from cifer_flwr.apps.run import run_strategy
from cifer_flwr.apps.runconfig import checkpoint_path
from cifer_flwr.fedlearn.strategy import Strategy
from cifer_flwr.scaling import exchange_statistics

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the specified strategy for ``num-server-rounds`` rounds and write the results."""
    cfg = context.run_config
    spec = Strategy.from_run_config(cfg)
    save = str(cfg.get("save-path", "") or "") or None
    ckpt = checkpoint_path(cfg)
    strategy = spec.build(
        public_key=str(cfg.get("public-key", "") or "") or None,
        save_path=save,
        checkpoint_path=str(ckpt) if ckpt is not None else None,
        min_nodes=int(cfg.get("min-nodes", 2)),
    )
    initial = ArrayRecord({k: Array(v) for k, v in spec.initial_arrays().items()})
    public_key = str(cfg.get("public-key", "") or "") or None
    exchange_statistics(  # every client scales its raw rows alike (docs/design.md §4.10)
        grid,
        num_features=cached_dataset(spec.data_path, spec.seed).num_features,
        public_key=public_key if spec.encryption else None,
        min_nodes=int(cfg.get("min-nodes", 2)),
        save_path=save if spec.encryption else None,
    )
    run_strategy(
        strategy,
        grid,
        context,
        initial,
        train_config=ConfigRecord(dict(spec.train_config())),
        app_name="cifer-fedlearn",
    )
