"""One FedAvg round side by side: Flower's plaintext FedAvg, encrypted default, packed, nvflare.

Usage: python benchmarks/round.py [--clients 100] [--params 1000000]
       [--variants plaintext,default,packed,nvflare]
(the same measurement as ``cifer bench round --json``; prints one JSON object). Each
variant's ServerApp runs in its own process, pulling and folding the reply files one by
one, so ``server_peak_rss_mb`` is that process's real peak RSS.
"""

import argparse
import json
import sys

from cifer_flwr.tooling.bench import ROUND_VARIANTS, bench_round

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--variants", default=",".join(ROUND_VARIANTS))
    args = ap.parse_args()
    chosen = tuple(v for v in args.variants.split(",") if v)
    result = bench_round(
        args.clients,
        args.params,
        chosen,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(json.dumps(result, indent=2))
