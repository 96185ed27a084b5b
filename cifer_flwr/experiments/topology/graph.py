"""Peer graphs and gossip mixing weights (pure numpy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import ConfigError

__all__ = ["build_graph", "mixing_weights"]


def build_graph(kind: str, n: int, degree: int = 2, seed: int = 0) -> dict[int, list[int]]:
    """Neighbour lists of an undirected graph on peers ``0..n-1``.

    ``ring``: each peer talks to its two neighbours; ``complete``: to everyone;
    ``kregular``: a random connected ``degree``-regular graph (a ring lattice whose
    peers are randomly relabelled).
    """
    if n < 2:
        raise ConfigError(f"a peer graph needs at least 2 peers, got {n}.")
    if kind == "complete":
        return {i: [j for j in range(n) if j != i] for i in range(n)}
    if kind == "ring":
        return {i: sorted({(i - 1) % n, (i + 1) % n}) for i in range(n)}
    if kind == "kregular":
        if degree < 2 or degree % 2 or degree >= n:
            raise ConfigError(f"k-regular degree must be even, >= 2 and < {n}, got {degree}.")
        perm = np.random.default_rng(seed).permutation(n)
        nbrs: dict[int, set[int]] = {i: set() for i in range(n)}
        for pos in range(n):
            for step in range(1, degree // 2 + 1):
                a, b = int(perm[pos]), int(perm[(pos + step) % n])
                nbrs[a].add(b)
                nbrs[b].add(a)
        return {i: sorted(v) for i, v in nbrs.items()}
    raise ConfigError(f"unknown graph {kind!r}; choose ring, kregular or complete.")


def mixing_weights(
    graph: dict[int, list[int]], alive: set[int] | None = None, rule: str = "metropolis"
) -> dict[int, dict[int, float]]:
    """Doubly-stochastic gossip weights ``W[i][j]`` (``W[i][i]`` is the self weight).

    Only peers in ``alive`` take part; a dropped peer is skipped by its neighbours, whose
    weights are recomputed over the remaining graph.
    """
    alive = set(graph) if alive is None else alive
    live = {i: [j for j in graph[i] if j in alive] for i in graph if i in alive}
    weights: dict[int, dict[int, float]] = {}
    for i, nbrs in live.items():
        if rule == "metropolis":
            w = {j: 1.0 / (1 + max(len(nbrs), len(live[j]))) for j in nbrs}
        elif rule == "uniform":
            w = {j: 1.0 / (len(nbrs) + 1) for j in nbrs}
        else:
            raise ConfigError(f"unknown mixing rule {rule!r}; choose metropolis or uniform.")
        w[i] = 1.0 - sum(w.values())
        weights[i] = w
    return weights


def mix(
    own: dict[str, npt.NDArray[np.float64]],
    others: dict[int, dict[str, npt.NDArray[np.float64]]],
    weights: dict[int, float],
    self_index: int,
) -> dict[str, npt.NDArray[np.float64]]:
    """Weighted average ``W[i][i] * own + sum_j W[i][j] * others[j]`` per array."""
    return {
        k: (weights[self_index] * own[k] + sum(weights[j] * others[j][k] for j in others)).astype(
            own[k].dtype
        )
        for k in own
    }
