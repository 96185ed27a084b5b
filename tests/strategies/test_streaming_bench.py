"""``cifer bench round`` on a tiny round: it runs, and every variant is within its bound."""

from __future__ import annotations

import numpy as np

from cifer_flwr import crypto, protocol
from cifer_flwr.tooling.bench import _client_counts, bench_round

CLIENTS, PARAMS, SEED = 3, 10_000, 0
#: Flower's plaintext FedAvg adds the weighted models in float32: each of its ``CLIENTS``
#: additions and the final rounding is off by at most 2**-24 of |x| <= 1.1.
FP32 = (CLIENTS + 1) * 1.1 * 2.0**-24


def test_tiny_bench_round_is_within_each_presets_bound(tmp_path):
    result = bench_round(
        CLIENTS, PARAMS, ("plaintext", "default", "packed"), seed=SEED, workdir=tmp_path
    )
    figures = result["variants"]
    assert figures["plaintext"]["max_abs_error"] == 0.0
    assert figures["plaintext"]["max_abs_error_vs_numpy"] <= FP32
    # default (CKKS): a 1000-client sum is off by about 1e-7 relative (docs/design.md §3)
    assert figures["default"]["max_abs_error"] <= 1e-6
    # packed: each summand's stochastic rounding is off by < one step, the mean by
    # < clients * step / W, W = sum n_i / divisor (the server guesses 5000 examples)
    params = crypto.get_preset("packed")
    weight = _client_counts(CLIENTS, SEED).sum() / protocol.weight_divisor(CLIENTS, 5000.0)
    bound = CLIENTS * params.precision / weight + FP32
    assert figures["packed"]["max_abs_error"] <= bound
    for name in ("default", "packed"):
        fig = figures[name]
        assert fig["upload_x"] > 1.0 and fig["download_x"] > 1.0
        assert fig["server_peak_rss_mb"] > 0 and np.isfinite(fig["server_s"])
    assert figures["packed"]["upload_x"] < figures["default"]["upload_x"]
