"""Wall time of encrypted vs plaintext runs in Flower's simulation runtime (Ray), one run each.

Usage: python benchmarks/simulation.py [--nodes 20] [--rounds 2] [--task digits-sklearn]
       [--strategies fedavg,securefed] [--num-cpus N] [--out DIR]

For each strategy, the generic app runs encrypted (CKKS) and the plaintext baseline
(``encryption=none``; SecureFed has no plaintext form, its baseline is Flower's FedAvg) on a
fresh simulation SuperLink on 127.0.0.1 (``cifer_flwr.tooling.federation.simulation``).
Printed per run: seconds to start the SuperLink, seconds of the run (``flwr run`` submission to
final status: Ray start-up, ClientApp workers, every round), the ServerApp's own seconds, the
seconds of each round (the first includes starting Ray's workers), accuracy per round.
Figures depend on the machine and its load; say which when quoting them.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from cifer_flwr import crypto
from cifer_flwr.tooling.federation.runs import run_app
from cifer_flwr.tooling.federation.simulation import simulation
from cifer_flwr.tooling.launch import APP_DIR


def one_run(
    out: Path, overrides: str, nodes: int, keys: tuple[Path, Path] | None, num_cpus: int | None
) -> dict:
    t0 = time.perf_counter()
    private, public = keys if keys else (None, None)
    with simulation(
        out / "federation", nodes=nodes, private_key=private, public_key=public, num_cpus=num_cpus
    ) as fed:
        started = time.perf_counter()
        config = {"hydra-overrides": overrides}
        if public is not None:
            config["public-key"] = str(public)
        outcome = run_app(fed, APP_DIR, config, timeout=900, results_path=out / "results.json")
        ran = time.perf_counter()
    rows = (outcome.results or {}).get("rounds", [])
    return {
        "overrides": overrides,
        "status": outcome.status,
        "errors": outcome.errors,
        "up-s": round(started - t0, 2),
        "run-s": round(ran - started, 2),
        "serverapp-s": round(float((outcome.results or {}).get("total-s", 0.0)), 2),
        "round-s": [round(float(r.get("round-s", 0.0)), 2) for r in rows],
        "total-s": round(time.perf_counter() - t0, 2),
        "accuracy": [r.get("accuracy") for r in rows],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--task", default="digits-sklearn")
    ap.add_argument("--strategies", default="fedavg,securefed")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cifer-sim-bench-"))
    key = crypto.generate_key("default")
    keys = crypto.write_key_pair(key, out / "keys", force=True)
    common = (
        f"federation=simulation federation.nodes={args.nodes} num_rounds={args.rounds} "
        f"task={args.task}"
    )
    results = []
    plans = []
    for name in args.strategies.split(","):
        plans.append((name, "ckks"))
        baseline = "fedavg" if name == "securefed" else name  # SecureFed has no plaintext form
        if (baseline, "none") not in plans:
            plans.append((baseline, "none"))
    for strategy, enc in plans:
        tag = f"{strategy}-{enc}"
        overrides = f"{common} strategy={strategy} encryption={enc}"
        print(f"running {tag} ...", flush=True)
        row = one_run(
            out / tag, overrides, args.nodes, keys if enc == "ckks" else None, args.num_cpus
        )
        results.append({"run": tag, **row})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results, indent=2))
