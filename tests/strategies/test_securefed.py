"""SecureFed: minimum cohort, clipping, distributed noise and the aggregation check."""

import copy
import logging

import numpy as np
import pytest

from cifer_flwr import strategies
from cifer_flwr.exceptions import ConfigError
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

NODES = (1, 2, 3, 4)
COMMON = {"min_train_nodes": 4, "min_available_nodes": 4, "min_evaluate_nodes": 4}


def run(key_files, tamper=None, rounds=2, examples=lambda node: 100, **kwargs):
    priv, pub = key_files
    seen = {}
    app = make_client_app(seen, encrypted=True, examples=examples)
    grid = InProcessGrid(app, node_configs(priv, nodes=NODES), tamper)
    strategy = strategies.SecureFed(public_key=pub, examples_per_client=100, **COMMON, **kwargs)
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=rounds)
    return strategy, grid, seen, result


def error_reasons(grid):
    return [r.error.reason for r in grid.replies if r.has_error()]


def test_clean_run_matches_plain_weighted_mean_and_logs_features(key_files, caplog):
    with caplog.at_level(logging.INFO, logger="cifer_flwr"):
        strategy, grid, seen, _ = run(key_files, min_cohort=3)
    assert error_reasons(grid) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    for feature in ("minimum cohort: 3", "L2 clipping", "DP noise", "aggregation check"):
        assert feature in text
    prev = seen[("train", 1, 1)]["w"]
    expected = np.mean([0.8 * prev + 0.05 * n for n in NODES], axis=0)
    np.testing.assert_allclose(seen[("train", 2, 1)]["w"], expected, atol=1e-5)


def test_fewer_than_min_cohort_releases_nothing(key_files, caplog):
    def fail_two(call, replies):
        if call == 1:
            for reply in replies[:2]:
                reply.content["arrays"] = replies[2].content["arrays"].__class__()
        return replies

    with caplog.at_level(logging.WARNING, logger="cifer_flwr"):
        strategy, grid, seen, result = run(key_files, tamper=fail_two, rounds=1, min_cohort=3)
    assert any("fewer than the 3 required" in r.getMessage() for r in caplog.records)
    # nothing released: no aggregate in the result, clients still evaluate the initial model
    assert len(result.arrays) == 0
    np.testing.assert_allclose(seen[("evaluate", 1, 1)]["w"], seen[("train", 1, 1)]["w"], atol=1e-6)


def test_update_above_clip_norm_is_clipped(key_files):
    clip = 0.5
    strategy, grid, seen, _ = run(key_files, rounds=1, min_cohort=3, clip_norm=clip)
    norms = [
        r.content["cifer"]["update-norm"]
        for r in grid.replies
        if "cifer" in r.content.config_records
    ]
    assert len(norms) == 4 and min(norms) > clip  # every raw update was larger than the bound
    before = seen[("train", 1, 1)]
    after = seen[("evaluate", 1, 1)]
    delta = np.sqrt(sum(np.sum((after[k].astype(float) - before[k]) ** 2) for k in before))
    assert delta <= clip + 1e-4
    assert delta > 0.9 * clip  # all updates point the same way: the mean keeps the bound


def test_distributed_noise_has_the_promised_scale(key_files):
    sigma, clip = 1.0, 0.5
    strategy, grid, seen, _ = run(
        key_files, rounds=1, min_cohort=3, clip_norm=clip, noise_multiplier=sigma
    )
    _, _, seen_clean, _ = run(key_files, rounds=1, min_cohort=3, clip_norm=clip)
    noise = np.concatenate(
        [
            (seen[("evaluate", 1, 1)][k] - seen_clean[("evaluate", 1, 1)][k]).ravel()
            for k in ("w", "b")
        ]
    )
    # mean of 4 clients, each adding std sigma*C/sqrt(4): std of the mean is sigma*C/(4*sqrt(4))*2
    expected = sigma * clip / np.sqrt(4) / np.sqrt(4)
    assert 0.7 * expected < noise.std() < 1.3 * expected


def test_replayed_update_is_detected_by_key_holders(key_files):
    stash = {}

    def replay(call, replies):
        if call == 1:  # round 1 train: remember node 2's reply
            stash["old"] = copy.deepcopy(replies[1].content["arrays"])
        if call == 3:  # round 2 train: the relay swaps in the old ciphertext
            replies[1].content["arrays"] = stash["old"]
        return replies

    _, grid, _, _ = run(key_files, tamper=replay, rounds=2, min_cohort=3)
    reasons = error_reasons(grid)
    assert reasons and all("replayed" in r for r in reasons)


def test_duplicated_reply_is_detected_by_key_holders(key_files):
    def duplicate(call, replies):
        if call == 1:
            replies[3] = copy.deepcopy(replies[0])
        return replies

    _, grid, _, _ = run(key_files, tamper=duplicate, rounds=1, min_cohort=3)
    reasons = error_reasons(grid)
    assert reasons and all("more than once" in r for r in reasons)


def test_invalid_settings_are_refused(key_files):
    _, pub = key_files
    with pytest.raises(ConfigError, match="min_cohort"):
        strategies.SecureFed(public_key=pub, min_cohort=1)
    with pytest.raises(ConfigError, match="clip_norm"):
        strategies.SecureFed(public_key=pub, noise_multiplier=1.0)
