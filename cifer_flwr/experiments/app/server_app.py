"""Generic ServerApp: composes ``conf/`` with the run config's Hydra overrides and runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.experiments.apps import (
    checkpoint_path,
    previous_rows,
    resume_requested,
    write_json_atomic,
)
from cifer_flwr.experiments.config import compose
from cifer_flwr.experiments.experiment import (
    RC_OVERRIDES,
    RC_PUBLIC_KEY,
    RC_RESULTS,
    RC_SAVE,
    run_on_grid,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment; write results JSON to run config ``results-path`` every round.

    The ServerApp receives only the public key path (``public-key``); it never sees a
    private key or a plaintext model. Encrypted centralized runs checkpoint after every
    round next to the results file (or to ``checkpoint-path``); ``resume = true`` (or the
    Hydra override ``resume=true``) continues a killed run from that checkpoint, keeping
    the killed run's rows of the restored rounds.
    """
    cfg = context.run_config
    results_path = str(cfg.get(RC_RESULTS) or "")
    run_id = context.run_id

    last: dict[str, Any] = {}

    def write(results: dict[str, Any]) -> None:
        last.update(results)
        if results_path:
            # the one results writer (atomic, stale temp files removed), as the examples'
            write_json_atomic(Path(results_path), {"run-id": run_id, **results})

    try:
        exp = compose(str(cfg.get(RC_OVERRIDES, "")))
        resume = resume_requested(cfg) or exp.resume
        ckpt = checkpoint_path(cfg)
        restored = previous_rows(Path(results_path)) if resume and results_path else []
        results = run_on_grid(
            grid,
            exp,
            public_key=str(cfg[RC_PUBLIC_KEY]) if cfg.get(RC_PUBLIC_KEY) else None,
            save_path=str(cfg[RC_SAVE]) if cfg.get(RC_SAVE) else None,
            checkpoint_path=str(ckpt) if ckpt is not None else None,
            resume=resume,
            restored_rows=restored,
            on_round=write,
        )
    except Exception as exc:
        # keep the rows of the rounds that completed
        write({**last, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
        raise
    write(results)
