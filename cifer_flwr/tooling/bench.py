"""Measurements behind ``cifer bench``: one run compares a preset, NVIDIA FLARE's set and numpy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cifer_flwr import crypto

__all__ = ["bench_crypto", "client_updates"]

Progress = Callable[[str], None]


def client_updates(
    num_params: int, clients: int, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Make ``clients`` realistic fp32 updates (a shared model plus client drift) and weights.

    Returns
    -------
    updates : list of dict
        One ``{"weights": array}`` per client, values in about [-1.1, 1.1].
    weights : ndarray
        ``n_i / N`` for example counts ``n_i`` drawn from 100..10000.

    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(-1.0, 1.0, num_params)
    updates = [
        {"weights": (base + 0.1 * rng.uniform(-1.0, 1.0, num_params)).astype(np.float32)}
        for _ in range(clients)
    ]
    n = rng.integers(100, 10_000, clients).astype(np.float64)
    return updates, n / n.sum()


def _time(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _bench_preset(
    preset: str, updates: list[dict[str, np.ndarray]], weights: np.ndarray, progress: Progress
) -> dict[str, float]:
    key = crypto.generate_key(preset)
    server_key = key.public()
    encs, enc_s, blobs, ser_s = [], 0.0, [], 0.0
    for i, (upd, w) in enumerate(zip(updates, weights, strict=True)):
        progress(f"{preset}: encrypting client {i + 1}/{len(updates)}")
        t0 = time.perf_counter()
        enc = crypto.encrypt(upd, key, weight=float(w))
        t1 = time.perf_counter()
        blob = crypto.to_bytes(enc)
        enc_s += t1 - t0
        ser_s += time.perf_counter() - t1
        encs.append(enc)
        blobs.append(blob)
    del encs
    progress(f"{preset}: server deserializes and sums {len(blobs)} updates")
    loaded, deser_s = _time(lambda: [crypto.from_bytes(b, server_key) for b in blobs])
    total, agg_s = _time(lambda: crypto.aggregate(loaded))
    progress(f"{preset}: key holder decrypts")
    plain, dec_s = _time(lambda: crypto.decrypt(total, key))
    exact = sum(w * u["weights"].astype(np.float64) for u, w in zip(updates, weights, strict=True))
    err = float(np.abs(plain["weights"].astype(np.float64) - exact).max() / np.abs(exact).max())
    fp32_bytes = updates[0]["weights"].size * 4
    k = len(updates)
    return {
        "expansion": float(np.mean([len(b) for b in blobs]) / fp32_bytes),
        "encrypt_s": enc_s / k,
        "serialize_s": ser_s / k,
        "deserialize_s": deser_s / k,
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "rel_error": err,
    }


def bench_crypto(
    num_params: int = 1_000_000,
    clients: int = 10,
    preset: str = "default",
    *,
    baseline: str = "nvflare",
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure one preset, the baseline preset and plaintext numpy on the same updates.

    Per-client times (encrypt, serialize, deserialize) are means over clients; ``aggregate_s``
    is the server's K-client homomorphic sum; ``decrypt_s`` one decryption of the sum;
    ``rel_error`` is ``max|decrypted - exact| / max|exact|`` of the weighted sum.

    Returns
    -------
    dict
        Flat results: the preset's figures, the same with suffix ``_<baseline>``,
        ``plain_aggregate_s`` and the run settings.

    """
    report = progress or (lambda _msg: None)
    crypto.get_preset(preset)
    crypto.get_preset(baseline)
    updates, weights = client_updates(num_params, clients, seed)
    ours = _bench_preset(preset, updates, weights, report)
    base = _bench_preset(baseline, updates, weights, report)
    arrays = [u["weights"] for u in updates]
    _, plain_s = _time(lambda: sum(w * a for a, w in zip(arrays, weights, strict=True)))
    result: dict[str, Any] = {
        "preset": preset,
        "baseline": baseline,
        "params": num_params,
        "clients": clients,
        **ours,
        **{f"{k}_{baseline}": v for k, v in base.items()},
        "plain_aggregate_s": plain_s,
    }
    result["aggregate_vs_plain"] = ours["aggregate_s"] / max(plain_s, 1e-9)
    return result
