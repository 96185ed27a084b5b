"""Paillier presets on a 100k-parameter update: CPU and wall seconds, bytes, error.

Usage: python benchmarks/paillier.py [--params 100000] [--clients 3]
       [--presets paillier,paillier-3072]

CPU seconds (``time.process_time``) are reported next to wall seconds because this machine is
shared: the big-integer work is single-threaded, so CPU time is what an idle core would take.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from cifer_flwr.crypto import paillier


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run(preset: str, params: int, clients: int) -> dict[str, float | str]:
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, params).astype(np.float32) for _ in range(clients)]
    weights = rng.uniform(1, 2, clients)
    weights /= weights.sum()
    key = paillier.generate_key(preset)
    public = key.public()
    enc_w = enc_c = 0.0
    blobs = []
    for u, w in zip(updates, weights, strict=True):
        enc, ew, ec = timed(lambda u=u, w=w: paillier.encrypt({"w": u}, key, weight=float(w)))
        enc_w, enc_c = enc_w + ew, enc_c + ec
        blobs.append(paillier.to_bytes(enc))
    sample = params // 20  # the server encrypts only the initial model: measure 5 %
    _, _pw, pc = timed(lambda: paillier.encrypt({"w": updates[0][:sample]}, public))
    loaded, _dw, dc = timed(lambda: [paillier.from_bytes(b, public) for b in blobs])
    total, aw, ac = timed(lambda: paillier.aggregate(loaded, public))
    plain, xw, xc = timed(lambda: paillier.decrypt(total, key))
    exact = sum(w * u.astype(np.float64) for u, w in zip(updates, weights, strict=True))
    return {
        "preset": preset,
        "gmpy2": paillier.HAVE_GMPY2,
        "values_per_ciphertext": key.params.slots,
        "upload_x": len(blobs[0]) / (params * 4),
        "download_x": len(paillier.to_bytes(total)) / (params * 4),
        "encrypt_private_cpu_s": enc_c / clients,
        "encrypt_private_wall_s": enc_w / clients,
        "encrypt_public_cpu_s": pc * params / sample,
        "deserialize_cpu_s": dc / clients,
        "aggregate_cpu_s": ac,
        "aggregate_wall_s": aw,
        "decrypt_cpu_s": xc,
        "decrypt_wall_s": xw,
        "max_abs_error": float(np.abs(plain["w"] - exact).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--presets", default="paillier,paillier-3072")
    args = ap.parse_args()
    print("load average:", os.getloadavg())
    for preset in args.presets.split(","):
        print(json.dumps(run(preset, args.params, args.clients)))


if __name__ == "__main__":
    main()
