"""Relative error and wire size of candidate 4096-ring presets on a 1000-client sum.

For candidate parameter sets this measures the relative error of a weighted sum of 1000
client updates (a shared model plus 10 % client drift, weights n_i / N) and the wire size
per fp32 value. Usage: python benchmarks/presets.py [--clients 1000] [--values 8192]
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
    print(f"{'coeff_mod_bit_sizes':>20} {'scale':>6} {'expansion':>9} {'rel_error':>10}  <=1e-6")
    for coeffs, scale in CANDIDATES:
        params = crypto.CkksParams(f"{coeffs}", 4096, coeffs, scale)
        key = crypto.generate_key(params)
        encs = [
            crypto.encrypt(u, key, weight=float(w)) for u, w in zip(updates, weights, strict=True)
        ]
        size = len(crypto.to_bytes(encs[0])) / (args.values * 4)
        got = crypto.decrypt(crypto.aggregate(encs), key)["weights"]
        err = float(np.abs(got - exact).max() / np.abs(exact).max())
        ok = "yes" if err <= 1e-6 else "no"
        print(f"{coeffs!s:>20} {scale:>6} {size:>9.2f} {err:>10.2e}  {ok}")
