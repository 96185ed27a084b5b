"""Wire size, speed and precision of a preset vs NVIDIA FLARE's parameters vs numpy, one run.

Usage: python benchmarks/crypto.py [--params 1000000] [--clients 10] [--preset default]
(the same measurement as ``cifer bench crypto``).
"""

import argparse
import json

from cifer_flwr.tooling.bench import bench_crypto

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()
    result = bench_crypto(args.params, args.clients, args.preset, progress=print)
    print(json.dumps(result, indent=2))
