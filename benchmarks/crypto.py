"""Wire size, speed and precision of presets vs NVIDIA FLARE's parameters vs numpy, one run.

Usage: python benchmarks/crypto.py [--params 1000000] [--clients 10] [--preset default]
(the same measurement as ``cifer bench crypto``). ``--preset default,packed`` measures several
presets in turn and prints one JSON object keyed by preset; every result carries ``upload_x``
and ``download_x`` (bytes a client sends / receives per fp32 byte: seeded upload, full sum).
"""

import argparse
import json

from cifer_flwr.tooling.bench import bench_crypto

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--preset", default="default", help="a preset or a comma-separated list")
    args = ap.parse_args()
    presets = [p.strip() for p in args.preset.split(",") if p.strip()]
    results = {p: bench_crypto(args.params, args.clients, p, progress=print) for p in presets}
    print(json.dumps(results[presets[0]] if len(presets) == 1 else results, indent=2))
