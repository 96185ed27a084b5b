"""ServerApp: an encrypted strategy from cifer_flwr; the server holds the public key only."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.apps import encryption_enabled, make_strategy, path_option, run_strategy
from cifer_flwr.scaling import exchange_statistics
from sklearnexample import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # cifer_flwr.strategies.<Strategy>(public_key=..., save_path=...), or Flower's own class
    # when run config says encryption = false
    cfg = context.run_config
    strategy = make_strategy(cfg)
    # before round 1: every node's feature sums, added as ciphertexts; each node standardises
    # its raw rows with the global mean/std, saved (encrypted) beside the model
    exchange_statistics(
        grid,
        num_features=task.dataset_shape(cfg)[0],
        public_key=path_option(cfg, "public-key") if encryption_enabled(cfg) else None,
        min_nodes=int(cfg["min-nodes"]),
        save_path=path_option(cfg, "save-path"),
    )
    params = task.initial_params(cfg)
    initial = ArrayRecord({k: Array(v) for k, v in params.items()})
    run_strategy(strategy, grid, context, initial, app_name="quickstart-sklearn")
