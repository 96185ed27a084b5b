"""Paillier vs CKKS in the federated strategies: bytes and seconds per round, accuracy.

Usage: python benchmarks/paillier_rounds.py [--rounds 3] [--nodes 4] [--strategy fedavg]
       [--presets none,default,paillier]

Runs ``task=digits-sklearn`` in process (the generic ServerApp logic on an in-process Grid
that sends every message through Flower's wire format and the real ``ckks_mod``), once per
preset with a fresh key pair of that preset (2048-bit for ``paillier``), and prints per
preset the mean bytes sent + received per round, the mean seconds per round, the clients'
mean encrypt/decrypt seconds and the final accuracy (one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cifer_flwr import crypto
from cifer_flwr.experiments.config import compose

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.strategies.harness import run_generic_app


def run(preset: str, rounds: int, nodes: int, strategy: str, workdir: Path) -> dict[str, object]:
    enc = "encryption=none" if preset == "none" else f"encryption.preset={preset}"
    exp = compose(
        f"task=digits-sklearn num_rounds={rounds} federation.nodes={nodes} seed=1 "
        f"strategy={strategy} {enc}".split()
    )
    priv = pub = None
    if preset != "none":
        priv, pub = crypto.generate_key_pair(preset, workdir / preset, force=True)
    t0 = time.perf_counter()
    res, _ = run_generic_app(exp, priv, pub)
    wall = time.perf_counter() - t0
    rows = res["rounds"]

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else 0.0

    return {
        "bytes_per_round": mean("bytes-sent") + mean("bytes-received"),
        "bytes_sent_per_round": mean("bytes-sent"),
        "bytes_received_per_round": mean("bytes-received"),
        "seconds_per_round": wall / rounds,
        "client_encrypt_s": mean("client-encrypt-s"),
        "client_decrypt_s": mean("client-decrypt-s"),
        "aggregate_s": mean("aggregate-s"),
        "accuracy": rows[-1].get("accuracy"),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--presets", default="none,default,paillier")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.presets.split(","):
            out[p] = run(p, args.rounds, args.nodes, args.strategy, Path(tmp))
            print(p, out[p], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))
