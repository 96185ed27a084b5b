"""Relative error and wire size of candidate 4096-ring presets on a 1000-client sum.

For candidate parameter sets this measures the relative error of a weighted sum of 1000
client updates (a shared model plus 10 % client drift, weights n_i / N) and the wire sizes
per fp32 value: ``upload_x`` (one client's seeded ciphertexts) and ``download_x`` (the sum,
full ciphertexts). The ``packed`` preset (BFV, quantized, docs/design.md §4.7) is measured last
with the cohort as its headroom. Usage: python benchmarks/presets.py [--clients 1000]
[--values 8192]
"""

import argparse

import numpy as np

from cifer_flwr import crypto
from cifer_flwr.tooling.bench import client_updates

CANDIDATES = [
    ((40, 60), 34),
    ((45, 60), 36),
    ((49, 60), 36),
    ((50, 59), 38),
    ((55, 54), 40),
    ((60, 49), 40),
]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--values", type=int, default=8192)
    args = ap.parse_args()
    updates, weights = client_updates(args.values, args.clients, seed=1)
    exact = sum(w * u["weights"].astype(np.float64) for u, w in zip(updates, weights, strict=True))
    head = f"{'coeff_mod_bit_sizes':>20} {'scale':>6} {'upload_x':>8} {'download_x':>10}"
    print(f"{head} {'rel_error':>10}  <=1e-6")
    candidates = [crypto.CkksParams(f"{c}", 4096, c, scale) for c, scale in CANDIDATES]
    for params in [*candidates, crypto.get_preset("packed")]:
        key = crypto.generate_key(params)
        encs = [
            crypto.encrypt(u, key, weight=float(w), summands=len(updates))
            for u, w in zip(updates, weights, strict=True)
        ]
        upload = len(crypto.to_bytes(encs[0])) / (args.values * 4)
        total = crypto.aggregate(encs)
        download = len(crypto.to_bytes(total)) / (args.values * 4)
        got = crypto.decrypt(total, key)["weights"]
        err = float(np.abs(got - exact).max() / np.abs(exact).max())
        ok = "yes" if err <= 1e-6 else "no"
        name = params.name if params.is_bfv else str(params.coeff_mod_bit_sizes)
        scale = -params.scale_bits if params.is_bfv else params.scale_bits
        print(f"{name:>20} {scale:>6} {upload:>8.2f} {download:>10.2f} {err:>10.2e}  {ok}")
