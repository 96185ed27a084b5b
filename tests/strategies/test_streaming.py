"""Streamed aggregation (docs/design.md §6): replies are pulled one by one and folded.

Oracles: Flower's plaintext FedAvg on the same ClientApp (the batch aggregation), and a
count of the reply ``ArrayRecord`` s still alive whenever the server pulls the next reply.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from cifer_flwr import crypto, strategies
from cifer_flwr.strategies import stream_replies
from tests.strategies.harness import (
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
)

NODES = tuple(range(1, 7))
ROUNDS = 2


class OneByOneGrid(InProcessGrid):
    """Flower's push/pull API only; each pull hands out at most one reply.

    At every pull it counts the reply ArrayRecords it handed out earlier that are still
    alive: what the server holds between replies.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handed: list[weakref.ref] = []
        self.alive_at_pull: list[int] = []
        self.pull_interval = 0.0

    count_alive = True

    def pull_messages(self, message_ids):
        if self.count_alive:
            gc.collect()
            self.alive_at_pull.append(sum(1 for ref in self.handed if ref() is not None))
        wanted = set(message_ids)
        for reply in self._outbox:
            if reply.metadata.reply_to_message_id in wanted:
                self._outbox.remove(reply)
                for record in reply.content.array_records.values():
                    self.handed.append(weakref.ref(record))
                return [reply]
        return []

    def send_and_receive(self, messages, *, timeout=None):
        return list(stream_replies(self, messages, timeout))


def _grid(key_files, encrypted: bool, seen: dict) -> OneByOneGrid:
    priv, _ = key_files
    return OneByOneGrid(make_client_app(seen, encrypted=encrypted), node_configs(priv, NODES))


def _common() -> dict:
    n = len(NODES)
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n,
        "min_evaluate_nodes": n,
        "min_available_nodes": n,
    }


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_streamed_sum_equals_flower_fedavg_and_holds_one_reply_at_a_time(key_files):
    plain_seen: dict = {}
    plain = FlowerFedAvg(**_common())
    plain.start(
        grid=_grid(key_files, False, plain_seen), initial_arrays=plain_initial(), num_rounds=ROUNDS
    )

    enc_seen: dict = {}
    grid = _grid(key_files, True, enc_seen)
    ours = strategies.FedAvg(public_key=key_files[1], examples_per_client=35.0, **_common())
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)

    # what every key holder decrypted equals what Flower's batch FedAvg sent
    assert set(enc_seen) == set(plain_seen)
    gap = max(
        float(np.abs(enc_seen[k][n] - plain_seen[k][n]).max())
        for k in plain_seen
        for n in plain_seen[k]
    )
    assert gap <= 1e-5
    assert all(ours.round_stats[r]["valid-replies"] == len(NODES) for r in (1, 2))
    # the server pulled one reply at a time and never held two replies' ciphertexts
    train_pulls = len(NODES) * ROUNDS
    assert len(grid.handed) >= train_pulls
    assert max(grid.alive_at_pull) <= 1, grid.alive_at_pull


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_the_live_reply_count_sees_a_batch_aggregation(key_files):
    """Control: handing all replies at once (Flower's send_and_receive) keeps them alive."""
    grid = _grid(key_files, True, {})
    ours = strategies.FedAvg(public_key=key_files[1], examples_per_client=35.0, **_common())
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=1)  # sets up the layout
    messages = list(ours.configure_train(2, ours.global_model.record(), _config(), grid))
    ids = grid.push_messages(messages)
    replies = []
    while len(replies) < len(messages):
        replies += grid.pull_messages(ids)
    gc.collect()
    assert sum(1 for ref in grid.handed[-len(NODES) :] if ref() is not None) == len(NODES)
    arrays, _ = ours.aggregate_train(2, replies)
    assert arrays is not None and ours.round_stats[2]["valid-replies"] == len(NODES)


def _config():
    from flwr.app import ConfigRecord

    return ConfigRecord()


class FakeClock:
    """Stands in for the ``time`` module of the pull loop: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


def test_a_reply_that_never_comes_ends_at_the_timeout(key_files, monkeypatch):
    from cifer_flwr.strategies import _pull

    clock = FakeClock()
    monkeypatch.setattr(_pull, "time", clock)
    grid = _grid(key_files, True, {})
    grid.tamper = lambda call, replies: replies[1:]  # the first node never replies
    grid.pull_interval, grid.count_alive = 5.0, False
    ours = strategies.FedAvg(public_key=key_files[1], examples_per_client=35.0, **_common())
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=1, timeout=30.0)
    assert ours.round_stats[1]["valid-replies"] == len(NODES) - 1
    assert ours.round_stats[1]["released"] == 1.0
    assert clock.now >= 1000.0 + 30.0  # it waited out the timeout (train phase)


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_fedopt_streams_by_state_digest_and_keeps_the_majority(key_files):
    """Replies trained from another state are summed apart and dropped as a group."""
    seen: dict = {}
    grid = _grid(key_files, True, seen)
    ours = strategies.FedYogi(public_key=key_files[1], examples_per_client=35.0, **_common())
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)
    assert all(ours.round_stats[r]["valid-replies"] == len(NODES) for r in (1, 2))
    assert max(grid.alive_at_pull) <= 1


def test_stream_replies_refuses_an_empty_batch(key_files):
    from cifer_flwr.exceptions import ConfigError

    with pytest.raises(ConfigError, match="batch must be >= 1"):
        stream_replies(_grid(key_files, True, {}), [], 1.0, batch=0)


def test_packed_clipped_counts_are_summed_over_the_round(tmp_path):
    """Each key holder reports how many values it clipped; the round reports their sum."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from cifer_flwr.constants import METRIC_CLIPPED
    from cifer_flwr.mods import ckks_mod

    priv, pub = crypto.write_key_pair(crypto.generate_key("packed"), tmp_path / "keys")
    app = ClientApp(mods=[ckks_mod])
    out_of_range = {"w": 2, "b": 0}  # values per node far beyond the packed range of 3 clients

    @app.train()
    def train(msg: Message, context):
        x = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        y = {k: v.copy() for k, v in x.items()}
        y["w"].flat[: out_of_range["w"] * int(context.node_id)] = 1e6
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: ArrayRecord([v])["0"] for k, v in y.items()}),
                    "metrics": MetricRecord({"num-examples": 10}),
                }
            ),
            reply_to=msg,
        )

    grid = OneByOneGrid(app, node_configs(priv, (1, 2, 3)))
    common = {**_common(), "fraction_evaluate": 0.0, "min_train_nodes": 3}
    common.update(min_available_nodes=3, min_evaluate_nodes=0)
    ours = strategies.FedAvg(public_key=pub, examples_per_client=10.0, **common)
    result = ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=1)
    # nodes 1, 2, 3 clip 2, 4, 6 values: Flower's weighted mean would say 4
    assert result.train_metrics_clientapp[1][METRIC_CLIPPED] == 12
