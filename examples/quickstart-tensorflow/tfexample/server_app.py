"""ServerApp: an encrypted strategy from cifer_flwr; the server holds the public key only."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.experiments.apps import make_strategy, run_strategy
from tfexample import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # cifer_flwr.strategies.<Strategy>(public_key=..., save_path=...), or Flower's own class
    # when run config says encryption = false
    strategy = make_strategy(context.run_config)
    # run config model-path: your own initial weights (.keras / .h5), checked
    model = task.initial_model(context.run_config)
    # plaintext initial weights: the strategy encrypts them with the public key before round 1
    run_strategy(
        strategy, grid, context, ArrayRecord(model.get_weights()), app_name="quickstart-tensorflow"
    )
