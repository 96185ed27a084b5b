"""ServerApp: an encrypted strategy from cifer_flwr; the server holds the public key only."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.experiments.apps import make_strategy, run_strategy
from sklearnexample import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # cifer_flwr.strategies.<Strategy>(public_key=..., save_path=...), or Flower's own class
    # when run config says encryption = false
    strategy = make_strategy(context.run_config)
    params = task.initial_params(context.run_config)
    initial = ArrayRecord({k: Array(v) for k, v in params.items()})
    run_strategy(strategy, grid, context, initial, app_name="quickstart-sklearn")
