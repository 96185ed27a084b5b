"""One encrypted FedAvg round of a 25M-parameter model on a real local deployment.

Usage: python benchmarks/deploy_25m.py [--params 25000000] [--presets default,packed]
       [--nodes 3] [--timeout 5400] [--out DIR]

For each preset: a fresh key pair, a SuperLink and ``--nodes`` SuperNodes on 127.0.0.1
(cifer_flwr.tooling.federation.up, TLS), and a minimal Flower app written to a temporary
directory (a numpy "model" of ``--params`` float32 values in five arrays, no downloads): the
ServerApp runs cifer's encrypted FedAvg for one round (train + federated evaluate), the
ClientApp (with ``ckks_mod``) adds a node-specific offset to the model it decrypted. Reported
per preset: the round's wall time, the bytes the ServerApp sent and received, the peak RSS of
the ServerApp (its own ``ru_maxrss``) and, sampled from /proc every 0.5 s, of the SuperLink,
the SuperNodes, the ClientApp processes and cifer's crypto worker processes (attributed to the
app that started them; also summed with it at each sampling instant); and the largest error
of the decrypted model vs numpy's FedAvg. Prints one JSON object. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

from cifer_flwr import crypto
from cifer_flwr.tooling.federation import processes as procs
from cifer_flwr.tooling.federation import up
from cifer_flwr.tooling.federation.runs import run_app

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "cifer-deploy-bench"
version = "1.0.0"
description = "25M-parameter encrypted round (cifer-flwr benchmark)"
license = "Apache-2.0"
dependencies = ["cifer-flwr", "flwr>=1.41.0,<1.43"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "cifer"

[tool.flwr.app.components]
serverapp = "deploy_bench_app:server"
clientapp = "deploy_bench_app:client"

[tool.flwr.app.config]
public-key = ""
results-path = ""
params = 25000000
nodes = 3
round-timeout = 5400.0
"""

APP = textwrap.dedent(
    '''
    """Minimal ServerApp/ClientApp of benchmarks/deploy_25m.py (a numpy model, no data)."""

    import json
    import resource
    import time

    import cifer_flwr  # before anything that could import tensorflow
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from cifer_flwr import crypto, strategies
    from cifer_flwr.mods import ckks_mod

    LAYERS = 5


    def initial(params):
        rng = np.random.default_rng(0)
        sizes = [params // LAYERS] * (LAYERS - 1) + [params - (params // LAYERS) * (LAYERS - 1)]
        return {f"layer{i}": rng.uniform(-0.5, 0.5, n).astype(np.float32)
                for i, n in enumerate(sizes)}


    server = ServerApp()


    @server.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = context.run_config
        params, nodes = int(cfg["params"]), int(cfg["nodes"])
        out = {"run-id": context.run_id, "status": "running", "rounds": []}
        t0 = time.time()
        try:
            strategy = strategies.FedAvg(
                public_key=str(cfg["public-key"]),
                fraction_train=1.0,
                fraction_evaluate=1.0,
                min_train_nodes=nodes,
                min_evaluate_nodes=nodes,
                min_available_nodes=nodes,
                examples_per_client=100.0,
            )
            arrays = ArrayRecord({k: Array(v) for k, v in initial(params).items()})
            result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1,
                                    timeout=float(cfg["round-timeout"]))
            stats = strategy.round_stats.get(1, {})
            out.update(
                status="ok",
                released=bool(stats.get("released")),
                round_stats=stats,
                excluded=strategy.excluded.get(1, []),
                global_bytes=result.arrays.count_bytes(),
                evaluate=dict(result.evaluate_metrics_clientapp.get(1, {})),
            )
        except Exception as exc:
            out.update(status="error", error=f"{type(exc).__name__}: {exc}")
        out["serverapp_s"] = time.time() - t0
        out["cifer_flwr"] = cifer_flwr.__file__
        out["serverapp_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(str(cfg["results-path"]), "w") as f:
            json.dump(out, f)


    client = ClientApp(mods=[ckks_mod])


    @client.train()
    def train(msg: Message, context: Context) -> Message:
        node = int(context.node_config["partition-id"]) + 1
        received = msg.content["arrays"]
        arrays = ArrayRecord(
            {k: Array((a.numpy() + np.float32(0.01 * node)).astype(np.float32))
             for k, a in received.items()}
        )
        metrics = MetricRecord({"num-examples": 100 * node,
                                "client-peak-rss-mb": resource.getrusage(
                                    resource.RUSAGE_SELF).ru_maxrss / 1024})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        nodes = int(context.run_config["nodes"])
        params = int(context.run_config["params"])
        ref = initial(params)
        # numpy FedAvg of the clients' models: x0 + sum(n_i * 0.01 i) / sum(n_i), n_i = 100 i
        shift = sum(100 * i * 0.01 * i for i in range(1, nodes + 1)) / sum(
            100 * i for i in range(1, nodes + 1))
        err = max(float(np.abs(a.numpy().astype(np.float64) - (ref[k].astype(np.float64) + shift))
                        .max()) for k, a in msg.content["arrays"].items())
        metrics = MetricRecord({"num-examples": 1, "max-abs-error": err,
                                "client-peak-rss-mb": resource.getrusage(
                                    resource.RUSAGE_SELF).ru_maxrss / 1024})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)
    '''
)

ROLES = {
    "flower-superlink": "superlink",
    "flower-supernode": "supernode",
    "flwr-serverapp": "serverapp",
    "flwr-clientapp": "clientapp",
    "flower-superexec": "superexec",
}


#: Command-line mark of cifer's crypto worker processes (cifer_flwr/crypto/workers.py): they
#: are counted with the app process that started them (docs/design.md §6).
WORKER_MARK = "cifer_flwr.crypto.workers"


def _status_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in MB (empty when the process is gone)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line[:5]] = int(line.split()[1]) / 1024.0
    except OSError:
        return {}
    return out


def _ppid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2 :].split()[1])


class RssSampler(threading.Thread):
    """Peak RSS per role of the federation's processes and their descendants.

    ``peaks[role]``: the largest ``VmHWM`` of one process of that role. Crypto worker
    processes are attributed to the app that started them (role ``serverapp-workers``,
    ``clientapp-workers``), and ``with_workers[role]`` is the largest sum, at one sampling
    instant (every 0.5 s), of one app process's RSS and its workers' RSS.
    """

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peaks: dict[str, float] = {}
        self.with_workers: dict[str, float] = {}
        self.halt = threading.Event()

    def _sample(self) -> None:
        roles: dict[int, str] = {}
        workers: dict[int, int] = {}  # worker pid -> its app's pid
        for pid in set(self.roots) | set(procs.descendants(self.roots)):
            cmd = " ".join(procs.cmdline(pid))
            if WORKER_MARK in cmd:
                parent = _ppid(pid)
                if parent is not None:
                    workers[pid] = parent
                continue
            role = next((r for k, r in ROLES.items() if k in cmd), None)
            if role:
                roles[pid] = role
        totals: dict[int, float] = {}
        for pid, role in roles.items():
            mem = _status_mb(pid)
            if mem:
                self.peaks[role] = max(self.peaks.get(role, 0.0), mem["VmHWM"])
                totals[pid] = mem["VmRSS"]
        for pid, app in workers.items():
            mem = _status_mb(pid)
            if not mem or app not in roles:
                continue
            role = f"{roles[app]}-workers"
            self.peaks[role] = max(self.peaks.get(role, 0.0), mem["VmHWM"])
            totals[app] = totals.get(app, 0.0) + mem["VmRSS"]
        for pid, total in totals.items():
            role = roles[pid]
            self.with_workers[role] = max(self.with_workers.get(role, 0.0), total)

    def run(self) -> None:
        while not self.halt.is_set():
            self._sample()
            self.halt.wait(0.5)


def run_preset(preset: str, params: int, nodes: int, timeout: float, root: Path) -> dict[str, Any]:
    d = root / preset
    app_dir = d / "app"
    app_dir.mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(PYPROJECT)
    (app_dir / "deploy_bench_app.py").write_text(APP)
    key = crypto.generate_key(preset)
    private, public = crypto.write_key_pair(key, d / "keys")
    fed = up(d / "federation", nodes=nodes, private_key=private, public_key=public)
    sampler = RssSampler([p.pid for p in fed.processes])
    sampler.start()
    try:
        outcome = run_app(
            fed,
            app_dir,
            {
                "public-key": str(public),
                "params": params,
                "nodes": nodes,
                "round-timeout": float(timeout),
            },
            timeout=timeout + 300,
        )
    finally:
        sampler.halt.set()
        sampler.join()
        fed.stop()
    res = outcome.results or {}
    fp32 = 4 * params
    stats = res.get("round_stats", {})
    return {
        "status": outcome.status,
        "completed": outcome.completed,
        "errors": outcome.errors,
        "details": outcome.details,
        "log": str(outcome.log_path),
        "released": res.get("released"),
        "excluded": res.get("excluded"),
        "run_wall_s": outcome.seconds,
        "serverapp_s": res.get("serverapp_s"),
        "bytes_sent_train": stats.get("bytes-sent"),
        "bytes_received_train": stats.get("bytes-received"),
        "upload_x": (stats.get("bytes-received") or 0) / nodes / fp32,
        "download_x": (stats.get("bytes-sent") or 0) / nodes / fp32,
        "global_bytes": res.get("global_bytes"),
        "serverapp_peak_rss_mb": res.get("serverapp_peak_rss_mb"),
        "sampled_peak_rss_mb": sampler.peaks,
        "sampled_peak_rss_with_workers_mb": sampler.with_workers,
        "evaluate_metrics": res.get("evaluate"),
        "error": res.get("error"),
        "cifer_flwr": res.get("cifer_flwr"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=int, default=25_000_000)
    ap.add_argument("--presets", default="default,packed")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5400.0)
    ap.add_argument("--out", default=None, help="keep logs here (default: a temp dir)")
    args = ap.parse_args()
    results: dict[str, Any] = {"params": args.params, "nodes": args.nodes, "presets": {}}
    with tempfile.TemporaryDirectory(prefix="cifer-deploy-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for preset in [p for p in args.presets.split(",") if p]:
            if preset not in crypto.PRESETS:
                results["presets"][preset] = {"missing": f"no preset {preset!r} in this build"}
                continue
            print(f"{preset}: starting", file=sys.stderr, flush=True)
            results["presets"][preset] = run_preset(
                preset, args.params, args.nodes, args.timeout, root
            )
            print(json.dumps(results["presets"][preset]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
