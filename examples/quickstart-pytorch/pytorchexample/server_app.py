"""ServerApp: an encrypted strategy from cifer_flwr; the server holds the public key only."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.experiments.apps import make_strategy, run_strategy
from pytorchexample import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # e.g. cifer_flwr.strategies.FedAvg(public_key=".../public.key", save_path=...),
    # or flwr.serverapp.strategy.FedAvg when run config says encryption = false
    strategy = make_strategy(context.run_config)
    # run config model-path: your own initial Net weights (.pt state dict), checked
    model = task.initial_model(context.run_config)
    # plaintext initial weights: the strategy encrypts them with the public key before round 1
    run_strategy(
        strategy,
        grid,
        context,
        ArrayRecord(model.state_dict()),
        app_name="quickstart-pytorch",
    )
