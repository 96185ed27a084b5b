"""Generic ServerApp: composes ``conf/`` with the run config's Hydra overrides and runs it."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cifer_flwr.config import compose
from cifer_flwr.experiment import (
    RC_OVERRIDES,
    RC_PUBLIC_KEY,
    RC_RESULTS,
    RC_SAVE,
    run_on_grid,
    write_results,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment; write results JSON to run config ``results-path``.

    The ServerApp receives only the public key path (``public-key``); it never sees a
    private key or a plaintext model.
    """
    cfg = context.run_config
    results_path = str(cfg.get(RC_RESULTS) or "")
    try:
        exp = compose(str(cfg.get(RC_OVERRIDES, "")))
        results = run_on_grid(
            grid,
            exp,
            public_key=str(cfg[RC_PUBLIC_KEY]) if cfg.get(RC_PUBLIC_KEY) else None,
            save_path=str(cfg[RC_SAVE]) if cfg.get(RC_SAVE) else None,
        )
    except Exception as exc:
        if results_path:
            write_results(
                results_path, {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            )
        raise
    if results_path:
        write_results(results_path, results)
