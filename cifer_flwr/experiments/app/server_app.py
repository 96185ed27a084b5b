"""Generic ServerApp: composes ``conf/`` with the run config's Hydra overrides and runs it."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.apps.results import ResultsWriter
from cifer_flwr.apps.run import previous_rows
from cifer_flwr.apps.runconfig import checkpoint_path, path_option, resume_requested
from cifer_flwr.experiments.config import compose
from cifer_flwr.experiments.experiment import (
    RC_OVERRIDES,
    RC_PUBLIC_KEY,
    RC_RESULTS,
    RC_SAVE,
    run_on_grid,
)

#: ``app`` field of the results this app writes.
APP_NAME = "cifer_flwr/experiments/app"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment; write results JSON to run config ``results-path`` every round.

    The results follow the one schema (``cifer.results/1``,
    :mod:`cifer_flwr.apps.results`), as the examples'; each round is logged as one
    line (``flwr log RUN_ID`` shows it). An invalid Hydra override fails before the first
    round, with status ``error`` in the results. The ServerApp receives only the public key
    path (``public-key``); it never sees a private key or a plaintext model. Encrypted
    centralized runs checkpoint after every round next to the results file (or to
    ``checkpoint-path``); ``resume = true`` (or the Hydra override ``resume=true``)
    continues a killed run from that checkpoint, keeping the killed run's rows of the
    restored rounds.
    """
    cfg = context.run_config
    writer = ResultsWriter(
        path_option(cfg, RC_RESULTS), app=APP_NAME, run_id=context.run_id, run_config=cfg
    )
    try:
        exp = compose(str(cfg.get(RC_OVERRIDES, "")))  # the one validation path
        resume = resume_requested(cfg) or exp.resume
        ckpt = checkpoint_path(cfg)
        run_on_grid(
            grid,
            exp,
            public_key=str(cfg[RC_PUBLIC_KEY]) if cfg.get(RC_PUBLIC_KEY) else None,
            save_path=str(cfg[RC_SAVE]) if cfg.get(RC_SAVE) else None,
            checkpoint_path=str(ckpt) if ckpt is not None else None,
            resume=resume,
            restored_rows=previous_rows(writer.path) if resume else [],
            writer=writer,
        )
    except Exception as exc:
        writer.fail(exc)  # keeps the rows of the rounds that completed
        raise
