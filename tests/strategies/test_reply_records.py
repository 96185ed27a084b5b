"""Records and metadata of a reply that another party controls (issue 18, items 5 and 7).

Only the ``cifer`` ConfigRecord the client mod adds may travel in a reply (bounded); any
other ConfigRecord is dropped before the strategy keeps the reply, MetricRecords are
bounded in total, and a reply whose run id, group id, message type or ``reply_to`` differ
from the message the server sent is excluded with a reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from cifer_flwr import strategies
from cifer_flwr.strategies._replies import MAX_METRIC_VALUES
from tests.strategies.harness import InProcessGrid, make_client_app, node_configs, plain_initial

COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
ATTACKER = 3


def _run(key_files, tamper, name="FedAvg", rounds=1, **kwargs):
    """Run ``name`` with a train-metrics function that records what it was given."""
    priv, pub = key_files
    given: list = []

    def train_aggr(contents, weighted_by):
        given.extend(contents)
        return MetricRecord({"n": len(contents)})

    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv), tamper)
    strategy = getattr(strategies, name)(
        public_key=pub, train_metrics_aggr_fn=train_aggr, **COMMON, **kwargs
    )
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=rounds)
    return strategy, given, result


def _reasons(strategy, node=ATTACKER):
    return [why for per in strategy.excluded.values() for n, why in per if n == node]


def _on_attacker(edit, phase="train"):
    def tamper(call, replies):
        for reply in replies:
            if (
                reply.metadata.src_node_id == ATTACKER
                and not reply.has_error()
                and reply.metadata.message_type.startswith(phase)
            ):
                edit(reply)
        return replies

    return tamper


# ----------------------------------------------------------------------------- records
def test_a_foreign_config_record_in_a_reply_is_dropped_before_it_is_kept(key_files):
    junk = "x" * (8 * 1024 * 1024)  # an 8 MiB string (the case was 200 MB)

    def add_junk(reply):
        reply.content["junk"] = ConfigRecord({"blob": junk})

    strategy, given, _ = _run(key_files, _on_attacker(add_junk))
    assert len(given) == 3  # the reply itself is aggregated (its model is valid) ...
    assert all(list(c.config_records) in ([], ["cifer"]) for c in given)  # ... not the junk
    assert not _reasons(strategy)


def test_metric_records_are_bounded_in_total(key_files):
    def many_lists(reply):
        metrics = reply.content["metrics"]
        for i in range(3):  # each list within the per-list bound, together beyond the total
            metrics[f"l{i}"] = [0.5] * (MAX_METRIC_VALUES // 2)

    strategy, given, _ = _run(key_files, _on_attacker(many_lists))
    reasons = _reasons(strategy)
    assert len(given) == 2 and reasons and f"{MAX_METRIC_VALUES}" in reasons[0]


def test_evaluate_replies_lose_foreign_config_records(key_files):
    priv, pub = key_files
    given: list = []

    def eval_aggr(contents, weighted_by):
        given.extend(contents)
        return MetricRecord({"n": len(contents)})

    def add_junk(reply):
        reply.content["junk"] = ConfigRecord({"blob": "z" * 100_000})

    grid = InProcessGrid(
        make_client_app({}, encrypted=True), node_configs(priv), _on_attacker(add_junk, "evaluate")
    )
    strategy = strategies.FedAvg(public_key=pub, evaluate_metrics_aggr_fn=eval_aggr, **COMMON)
    strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=1)
    assert len(given) == 3 and all(list(c.config_records) == [] for c in given)


# ----------------------------------------------------------------------------- metadata
@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("_run_id", 999, "run id 999"),
        ("_group_id", "7", "group id '7'"),
        ("_message_type", "query", "message type 'query'"),
        ("_reply_to_message_id", "node 1's", "reply_to_message_id 'm"),
    ],
)
@pytest.mark.parametrize("name", ["FedAvg", "FedAdam", "SecureFed"])
def test_reply_with_foreign_metadata_is_excluded(key_files, name, field, value, words, caplog):
    def rewrite(call, replies):
        ids = {r.metadata.src_node_id: r.metadata.reply_to_message_id for r in replies}
        for reply in replies:
            if reply.metadata.src_node_id == ATTACKER and reply.metadata.message_type == "train":
                # a reply to node 1's message (an id the server did push) from the attacker
                reply.metadata.__dict__[field] = ids[1] if value == "node 1's" else value
        return replies

    kwargs = {"min_cohort": 2} if name == "SecureFed" else {}
    caplog.set_level("WARNING", logger="cifer_flwr.strategies")
    strategy, given, _ = _run(key_files, rewrite, name=name, **kwargs)
    reasons = _reasons(strategy)
    if field == "_reply_to_message_id" and not reasons:
        # node 1's own reply settled its message first: the pull loop drops the spoof
        dropped = [r.getMessage() for r in caplog.records if "dropped a reply" in r.getMessage()]
        assert any(f"node {ATTACKER}" in m for m in dropped), (strategy.excluded, dropped)
    else:
        assert reasons and words in reasons[0], strategy.excluded
    assert len(given) == 2  # the two honest replies only


def test_honest_replies_keep_their_metadata_and_pass(key_files):
    strategy, given, result = _run(key_files, None, rounds=2)
    assert len(given) == 6 and not any(strategy.excluded.values())
    assert np.isfinite(result.train_metrics_clientapp[2]["n"])
