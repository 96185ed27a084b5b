"""One hostile client of four against the running strategies (issue 9, requirements 3-5).

Every attack runs twice in-process through real ClientApps (``harness.InProcessGrid``): once
with the attacker's reply tampered with, once with that reply simply dropped (the oracle).
The run must complete every round, the attacker's reply must be in ``strategy.excluded``
with a reason, and the decrypted models (final, and those the honest clients evaluated in
every round) must equal the oracle's within CKKS noise. Attacks on the ciphertext bytes
themselves could crash the native parser, so they run in a subprocess.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.app.error import Error
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import (
    CFG_WEIGHT_DIVISOR,
    METRIC_EXCLUDED,
    METRIC_RELEASED,
    STYPE_CIPHERTEXT,
)
from cifer_flwr.exceptions import ConfigError
from tests.strategies.harness import (
    INITIAL,
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
    run_encrypted,
)

NODES = (1, 2, 3, 4)
ATTACKER = 4
ROUNDS = 3
COMMON = {"min_train_nodes": 4, "min_available_nodes": 4, "min_evaluate_nodes": 4}
ROOT = Path(__file__).resolve().parents[2]
_KEYS: dict[str, crypto.Key] = {}


def _extra_key(preset: str) -> crypto.Key:
    if preset not in _KEYS:
        _KEYS[preset] = crypto.generate_key(preset)
    return _KEYS[preset]


# --------------------------------------------------------------------------- mutations
@dataclass
class Ctx:
    """What a mutation may use: the grid, the round, the key, and a scratch dict."""

    grid: InProcessGrid
    call: int
    round: int
    pub: crypto.Key
    memory: dict[str, Any]

    def sent_to(self, node: int) -> Message:
        return next(m for m in self.grid.pushed[-1] if m.metadata.dst_node_id == node)


Mutation = Callable[[Message, Ctx], Message | None]


def _record(reply: Message) -> ArrayRecord:
    return reply.content["arrays"]


def _first_chunk(record: ArrayRecord) -> str:
    return next(k for k, a in record.items() if a.stype == STYPE_CIPHERTEXT)


def _set_data(record: ArrayRecord, name: str, data: bytes) -> None:
    a = record[name]
    record[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=data)


def _weight(reply: Message, ctx: Ctx) -> float:
    n = float(reply.content["metrics"]["num-examples"])
    return n / float(ctx.sent_to(reply.metadata.src_node_id).content["config"][CFG_WEIGHT_DIVISOR])


def garbage_chunk(reply: Message, ctx: Ctx) -> Message:
    record = _record(reply)
    name = _first_chunk(record)
    rng = np.random.default_rng(ctx.round)
    _set_data(record, name, rng.bytes(len(record[name].data)))
    return reply


def corrupt_seal_body(reply: Message, ctx: Ctx) -> Message:
    # the pack and the vector's framing stay valid; 16 bytes inside the SEAL body flip,
    # so only the SEAL load (in-process or in a crypto worker) can refuse it
    record = _record(reply)
    name = _first_chunk(record)
    blobs = crypto.records.unpack_ciphertexts(
        record[name].data, max_items=10**6, max_item_bytes=10**9
    )
    blob = blobs[0]
    mid = len(blob) // 2
    blobs[0] = blob[:mid] + bytes(b ^ 0xFF for b in blob[mid : mid + 16]) + blob[mid + 16 :]
    _set_data(record, name, crypto.records.pack_ciphertexts(blobs))
    return reply


def vector_13_bytes(reply: Message, ctx: Ctx) -> Message:
    # a TenSEAL CKKSVector message: sizes=[2048] and a scale, but no SEAL ciphertext at all
    scale = float(2**ctx.pub.params.scale_bits)
    blob = b"\x0a\x02\x80\x10" + b"\x19" + np.float64(scale).tobytes()
    assert len(blob) == 13
    _set_data(_record(reply), _first_chunk(_record(reply)), blob)
    return reply


def missing_chunk(reply: Message, ctx: Ctx) -> Message:
    record = _record(reply)
    del record[_first_chunk(record)]
    return reply


def _fresh_record(ctx: Ctx, part: str = "model") -> ArrayRecord:
    zeros = {"z": np.zeros(10)}
    return crypto.bundle_to_record({part: crypto.encrypt(zeros, ctx.pub)})


def extra_chunk(reply: Message, ctx: Ctx) -> Message:
    fresh = _fresh_record(ctx)
    _record(reply)["cifer.model.ct.000001"] = fresh[_first_chunk(fresh)]
    return reply


def extra_part(reply: Message, ctx: Ctx) -> Message:
    for name, arr in _fresh_record(ctx, "extra").items():
        _record(reply)[name] = arr
    return reply


def missing_state_part(reply: Message, ctx: Ctx) -> Message:
    record = _record(reply)
    for name in [k for k in record if k.startswith("cifer.state.")]:
        del record[name]
    return reply


def state_from_unasked(reply: Message, ctx: Ctx) -> Message:
    state = crypto.encrypt(protocol.pack_state(dict(INITIAL), None, None), ctx.pub)
    for name, arr in crypto.bundle_to_record({"state": state}).items():
        _record(reply)[name] = arr
    return reply


def _forged_model(reply: Message, ctx: Ctx, key: crypto.Key) -> Message:
    enc = crypto.encrypt(dict(INITIAL), key, weight=_weight(reply, ctx))
    forged = replace(enc, fingerprint=ctx.pub.fingerprint)  # the header lies
    reply.content["arrays"] = crypto.bundle_to_record({"model": forged})
    return reply


def wrong_key(reply: Message, ctx: Ctx) -> Message:
    enc = crypto.encrypt(dict(INITIAL), _extra_key("default"), weight=_weight(reply, ctx))
    reply.content["arrays"] = crypto.bundle_to_record({"model": enc})
    return reply


def wrong_key_copied_fingerprint(reply: Message, ctx: Ctx) -> Message | None:
    if ctx.round > 1:
        return None  # once: the aggregate it poisons is garbage for everyone afterwards
    return _forged_model(reply, ctx, _extra_key("default"))


def wrong_preset(reply: Message, ctx: Ctx) -> Message:
    return _forged_model(reply, ctx, _extra_key("compact"))


def _metric(setter: Callable[[MetricRecord], None]) -> Mutation:
    def mutate(reply: Message, ctx: Ctx) -> Message:
        setter(reply.content["metrics"])
        return reply

    return mutate


def _raw_set(record: MetricRecord, key: str, value: Any) -> None:
    record.__dict__["_data"][key] = value  # what a hand-made protobuf could carry


def oversized(reply: Message, ctx: Ctx) -> Message:
    record = _record(reply)
    name = _first_chunk(record)
    pad = 2 * crypto.max_ciphertext_bytes(ctx.pub.params)
    _set_data(record, name, record[name].data + bytes(pad))
    ctx.memory.setdefault("oversized", []).append(record.count_bytes())
    return reply


def duplicate(reply: Message, ctx: Ctx) -> Message:
    victim = ctx.memory["replies"][1]
    reply.content["arrays"] = copy.deepcopy(victim.content["arrays"])
    reply.content["metrics"] = copy.deepcopy(victim.content["metrics"])
    return reply


def replay(reply: Message, ctx: Ctx) -> Message | None:
    old = ctx.memory.get("round-1")
    if old is None:  # round 1: the reply goes through (and reaches the server) unchanged
        ctx.memory["round-1"] = copy.deepcopy(reply.content)
        return None
    reply.content["arrays"] = copy.deepcopy(old["arrays"])
    reply.content["metrics"] = copy.deepcopy(old["metrics"])
    return reply


def echo(reply: Message, ctx: Ctx) -> Message:
    sent = ctx.sent_to(reply.metadata.src_node_id)
    reply.content["arrays"] = copy.deepcopy(sent.content["arrays"])
    return reply


def error_reply(reply: Message, ctx: Ctx) -> Message:
    sent = ctx.sent_to(reply.metadata.src_node_id)
    err = Message(Error(code=0, reason="client crashed"), reply_to=sent)
    # answer the message id the node actually received (the harness assigns ids)
    err.metadata.__dict__["_reply_to_message_id"] = reply.metadata.reply_to_message_id
    return err


# --------------------------------------------------------------------------- attack table
def _index(i: int) -> Callable[[Ctx], int]:
    return lambda ctx: ctx.grid.pushed[-1][i].metadata.dst_node_id


@dataclass(frozen=True)
class Attack:
    mutate: Mutation | None  # None: the reply is dropped (the attack is the loss itself)
    expect: str | tuple[str, ...]  # substring(s) of the exclusion reason, any of them
    strategy: str = "FedAvg"
    phase: str = "train"
    who: Callable[[Ctx], int] = lambda ctx: ATTACKER
    isolate: bool = False  # run in a subprocess (the bytes reach the native parser)
    outcome: str = "excluded"  # excluded | dropped | nothing-released | aggregated
    # a copy of this node's reply: the server cannot tell copy from original and refuses
    # whichever reaches it second (the pull loop's order follows Flower's random sampling)
    or_victim: int | None = None


ATTACKS: dict[str, Attack] = {
    "garbage-bytes-in-chunk": Attack(garbage_chunk, "ciphertext", isolate=True),
    "13-byte-vector-message": Attack(vector_13_bytes, "ciphertext", isolate=True),
    "corrupt-seal-body": Attack(corrupt_seal_body, "ciphertext", isolate=True),
    "missing-chunk": Attack(missing_chunk, "ciphertexts"),
    "extra-chunk": Attack(extra_chunk, ("ciphertexts", "before parsing")),
    "extra-part": Attack(extra_part, ("unexpected ['extra']", "before parsing")),
    "missing-part-fedopt-state": Attack(
        missing_state_part, "missing ['state']", strategy="FedYogi", who=_index(0)
    ),
    "wrong-key": Attack(wrong_key, "key mismatch"),
    "wrong-preset-copied-fingerprint": Attack(wrong_preset, "preset"),
    "wrong-key-copied-fingerprint": Attack(wrong_key_copied_fingerprint, "", outcome="aggregated"),
    "metric-count-list": Attack(
        _metric(lambda m: m.__setitem__("num-examples", [40])), "is a list"
    ),
    "metric-count-nan": Attack(
        _metric(lambda m: m.__setitem__("num-examples", float("nan"))), "finite"
    ),
    "metric-count-inf": Attack(
        _metric(lambda m: m.__setitem__("num-examples", float("inf"))), "finite"
    ),
    "metric-count-negative": Attack(
        _metric(lambda m: m.__setitem__("num-examples", -40)), "example count in"
    ),
    "metric-count-huge": Attack(
        _metric(lambda m: m.__setitem__("num-examples", 10**300)), "magnitude"
    ),
    "metric-count-missing": Attack(
        _metric(lambda m: m.__delitem__("num-examples")), "lacks the metric"
    ),
    "metric-count-bool": Attack(_metric(lambda m: _raw_set(m, "num-examples", True)), "type bool"),
    "metric-loss-str": Attack(_metric(lambda m: _raw_set(m, "loss", "low")), "type str"),
    "metric-loss-nan": Attack(_metric(lambda m: m.__setitem__("loss", float("nan"))), "finite"),
    "metric-extra-key": Attack(
        _metric(lambda m: m.__setitem__("accuracy", 0.5)), "differ in names"
    ),
    "oversized-reply": Attack(oversized, "refused before parsing"),
    "duplicate-in-same-round": Attack(duplicate, "a duplicate", or_victim=1),
    "replay-of-earlier-round": Attack(replay, "a replay"),
    "echo-of-global-model": Attack(echo, "an echo"),
    # round 1's FedOpt global is the state alone, so its echo also lacks the model part
    "echo-of-global-fedopt": Attack(
        echo, ("an echo", "missing ['model']"), strategy="FedYogi", who=_index(0)
    ),
    "fedopt-state-from-unasked-client": Attack(
        state_from_unasked, "not asked", strategy="FedYogi", who=_index(2)
    ),
    "fedopt-asked-client-dropped": Attack(
        None, "", strategy="FedYogi", who=_index(0), outcome="dropped"
    ),
    "fedopt-asked-client-error-reply": Attack(
        error_reply, "error reply", strategy="FedYogi", who=_index(1)
    ),
    "evaluate-metric-list": Attack(
        _metric(lambda m: m.__setitem__("mean", [0.1, 0.2])), "differ in names", phase="evaluate"
    ),
    "evaluate-metric-nan": Attack(
        _metric(lambda m: m.__setitem__("mean", float("nan"))), "finite", phase="evaluate"
    ),
    "evaluate-count-list": Attack(
        _metric(lambda m: m.__setitem__("num-examples", [40])), "is a list", phase="evaluate"
    ),
    "evaluate-extra-key": Attack(
        _metric(lambda m: m.__setitem__("other", 1.0)), "differ in names", phase="evaluate"
    ),
}


# --------------------------------------------------------------------------- scenario
def _phase_of(call: int) -> tuple[int, str]:
    return (call + 1) // 2, "train" if call % 2 else "evaluate"


def _run(strategy: Any, priv: str, tamper_factory: Callable[[InProcessGrid], Any]) -> dict:
    seen: dict = {}
    grid = InProcessGrid(make_client_app(seen, encrypted=True), node_configs(priv, nodes=NODES))
    grid.tamper = tamper_factory(grid)
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=ROUNDS)
    return {"seen": seen, "result": result, "grid": grid, "strategy": strategy}


def _models(run: dict, key: crypto.Key) -> dict[str, np.ndarray] | None:
    arrays = run["result"].arrays
    if len(arrays) == 0:
        return None
    return protocol.materialize(crypto.bundle_from_record(arrays, key), key)[0]


def _plain_metrics(history: dict) -> dict[int, dict[str, Any]]:
    """Metrics without timings and the exclusion count (they differ by construction)."""
    return {
        rnd: {
            k: v for k, v in record.items() if not k.endswith("-s") and k not in (METRIC_EXCLUDED,)
        }
        for rnd, record in history.items()
    }


def _metric_diffs(a: dict, b: dict) -> list[str]:
    out = []
    for rnd in sorted(set(a) | set(b)):
        ra, rb = a.get(rnd, {}), b.get(rnd, {})
        if set(ra) != set(rb):
            out.append(f"round {rnd}: keys {sorted(ra)} vs {sorted(rb)}")
            continue
        for k in ra:
            if not math.isclose(float(ra[k]), float(rb[k]), rel_tol=1e-6, abs_tol=1e-6):
                out.append(f"round {rnd}: {k} {ra[k]} vs {rb[k]}")
    return out


def scenario(name: str, priv: str, pub: str) -> dict[str, Any]:
    """Run attack ``name`` and its oracle; return a JSON-ready summary."""
    attack = ATTACKS[name]
    key = crypto.load_private_key(priv)
    pub_key = crypto.load_public_key(pub)
    attacked: dict[int, int] = {}

    def attack_tamper(grid: InProcessGrid):
        memory: dict[str, Any] = {}

        def tamper(call: int, replies: list[Message]) -> list[Message]:
            rnd, phase = _phase_of(call)
            if phase != attack.phase:
                return replies
            ctx = Ctx(grid, call, rnd, pub_key, memory)
            target = attack.who(ctx)
            replies = sorted(replies, key=lambda r: r.metadata.src_node_id)
            memory["replies"] = {r.metadata.src_node_id: r for r in replies}
            out = []
            for reply in replies:
                if reply.metadata.src_node_id != target:
                    out.append(reply)
                    continue
                if attack.mutate is None:
                    attacked[rnd] = target
                    continue
                changed = attack.mutate(reply, ctx)
                if changed is None:
                    out.append(reply)  # this round the attacker behaves
                else:
                    attacked[rnd] = target
                    out.append(changed)
            return out

        return tamper

    def drop_tamper(grid: InProcessGrid):
        def tamper(call: int, replies: list[Message]) -> list[Message]:
            rnd, phase = _phase_of(call)
            if phase != attack.phase or rnd not in attacked:
                return replies
            return [r for r in replies if r.metadata.src_node_id != attacked[rnd]]

        return tamper

    make = getattr(strategies, attack.strategy)
    run = _run(make(public_key=pub_key, **COMMON), priv, attack_tamper)
    if attack.outcome == "dropped":  # the oracle is Flower's own plaintext strategy
        seen: dict = {}
        grid = InProcessGrid(
            make_client_app(seen, encrypted=False), node_configs(priv, nodes=NODES)
        )
        grid.tamper = drop_tamper(grid)
        plain = getattr(flwr_strategy, attack.strategy)(**COMMON)
        oracle = {"seen": seen, "result": plain.start(grid, plain_initial(), ROUNDS)}
    else:
        oracle = _run(make(public_key=pub_key, **COMMON), priv, drop_tamper)
    strategy = run["strategy"]
    reasons = {
        rnd: [why for node, why in strategy.excluded.get(rnd, []) if node == attacked[rnd]]
        for rnd in attacked
    }
    eval_diff = 0.0
    for (phase, rnd, node), arrays in run["seen"].items():
        if phase == "evaluate" and node != attacked.get(rnd):
            other = oracle["seen"][(phase, rnd, node)]
            for k in arrays:
                eval_diff = max(eval_diff, float(np.abs(arrays[k] - other[k]).max()))
    final = _models(run, key)
    if "grid" in oracle:
        final_oracle = _models(oracle, key)
    else:
        final_oracle = {k: a.numpy() for k, a in oracle["result"].arrays.items()}
    model_diff = (
        max(float(np.abs(final[k] - final_oracle[k]).max()) for k in final)
        if final is not None and final_oracle is not None
        else None
    )
    result = run["result"]
    return {
        "attacked": {str(r): n for r, n in attacked.items()},
        "reasons": {str(r): v for r, v in reasons.items()},
        "all_excluded": {str(r): v for r, v in strategy.excluded.items()},
        "released": {
            str(r): m.get(METRIC_RELEASED) for r, m in result.train_metrics_clientapp.items()
        },
        "rounds_done": sorted({r for (phase, r, _) in run["seen"] if phase == "evaluate"}),
        "eval_diff": eval_diff,
        "model_diff": model_diff,
        "train_metric_diffs": _metric_diffs(
            _plain_metrics(result.train_metrics_clientapp),
            _plain_metrics(oracle["result"].train_metrics_clientapp),
        )
        if attack.outcome != "dropped"
        else [],
        "evaluate_metric_diffs": _metric_diffs(
            _plain_metrics(result.evaluate_metrics_clientapp),
            _plain_metrics(oracle["result"].evaluate_metrics_clientapp),
        ),
    }


def _isolated(name: str, priv: str, pub: str) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        "from cifer_flwr.strategies import _pull\n"
        "from tests.strategies.harness import VirtualClock\n"
        "from tests.strategies.test_attacks import scenario\n"
        "_pull.time = VirtualClock()  # as the conftest fixture does in-process\n"
        "print('RESULT=' + json.dumps(scenario(sys.argv[1], sys.argv[2], sys.argv[3])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, name, priv, pub],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (a crash?): {proc.stderr[-3000:]}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(name, key_files):
    priv, pub = (str(p) for p in key_files)
    attack = ATTACKS[name]
    out = _isolated(name, priv, pub) if attack.isolate else scenario(name, priv, pub)
    assert out["rounds_done"] == list(range(1, ROUNDS + 1)), out
    assert out["attacked"], "the attack never happened"
    if attack.outcome == "aggregated":
        # not detectable by the server (it holds only the public key): see the report
        assert out["reasons"]["1"] == [], out
        return
    if attack.outcome == "excluded":
        for rnd, reasons in out["reasons"].items():
            if attack.or_victim is not None:
                victim = attack.or_victim
                reasons = reasons + [r for n, r in out["all_excluded"][rnd] if n == victim]
            assert reasons, f"round {rnd}: attacker not excluded: {out['all_excluded']}"
            expect = (attack.expect,) if isinstance(attack.expect, str) else attack.expect
            assert any(e in r for e in expect for r in reasons), out["reasons"]
            assert not any(r.startswith("internal error") for r in reasons), reasons
    if attack.phase == "train":
        assert all(v == 1 for v in out["released"].values()), out["released"]
    tol = 1e-5 if attack.outcome == "dropped" else 1e-6
    assert out["eval_diff"] <= tol, out
    if out["model_diff"] is not None:
        assert out["model_diff"] <= tol, out
    assert out["train_metric_diffs"] == [], out["train_metric_diffs"]
    assert out["evaluate_metric_diffs"] == [], out["evaluate_metric_diffs"]


# --------------------------------------------------------------------------- beyond the table
def _plain_run(key_files, tamper=None, name="FedAvg", rounds=2, **kwargs):
    return run_encrypted(key_files, name, rounds, NODES, COMMON, tamper, **kwargs)


def _break(nodes):
    def tamper(call, replies):
        if call % 2:
            for reply in replies:
                if reply.metadata.src_node_id in nodes:
                    reply.content["metrics"]["num-examples"] = float("nan")
        return replies

    return tamper


def test_only_one_valid_reply_releases_nothing(key_files, caplog):
    with caplog.at_level(logging.WARNING, logger="cifer_flwr"):
        strategy, seen, result = _plain_run(key_files, _break({2, 3, 4}))
    assert len(result.arrays) == 0  # nothing released, ever
    for rnd in (1, 2):
        assert len(strategy.excluded[rnd]) == 3
        metrics = result.train_metrics_clientapp[rnd]
        assert metrics[METRIC_RELEASED] == 0 and metrics["cifer-valid-replies"] == 1
        assert "loss" not in metrics  # not even the lone client's metrics
        # the clients still evaluate the initial model
        np.testing.assert_allclose(seen[("evaluate", rnd, 1)]["w"], INITIAL["w"], atol=1e-6)
    assert any("fewer than the 2 required" in r.getMessage() for r in caplog.records)


def test_exactly_min_replies_valid_is_released(key_files):
    strategy, seen, result = _plain_run(key_files, _break({3, 4}), rounds=1)
    assert result.train_metrics_clientapp[1][METRIC_RELEASED] == 1
    prev = seen[("train", 1, 1)]["w"]
    expected = (10 * (0.8 * prev + 0.05) + 20 * (0.8 * prev + 0.10)) / 30
    np.testing.assert_allclose(seen[("evaluate", 1, 1)]["w"], expected, atol=1e-6)


def test_min_replies_above_two_is_honoured(key_files):
    strategy, _, result = _plain_run(key_files, _break({4}), rounds=1, min_replies=4)
    assert result.train_metrics_clientapp[1][METRIC_RELEASED] == 0
    assert len(result.arrays) == 0


@pytest.mark.parametrize("bad", [1, 0, True, 2.0])
def test_min_replies_below_two_is_refused(key_files, bad):
    with pytest.raises(ConfigError, match="min_replies"):
        strategies.FedAvg(public_key=key_files[1], min_replies=bad)
    with pytest.raises(ConfigError, match="min_replies"):
        strategies.FedYogi(public_key=key_files[1], min_replies=bad)


def test_oversized_reply_never_reaches_the_parser(key_files, monkeypatch):
    parsed: list[int] = []  # bytes of each reply the server's screen framed (first parse step)
    real = crypto.frame_record

    def spy(record, key, *args, **kwargs):
        parsed.append(record.count_bytes())
        return real(record, key, *args, **kwargs)

    monkeypatch.setattr(crypto, "frame_record", spy)
    pub = crypto.load_public_key(key_files[1])
    memory: dict = {}

    def tamper(call, replies):
        if call % 2:
            ctx = Ctx(grid, call, (call + 1) // 2, pub, memory)
            replies = [
                oversized(r, ctx) if r.metadata.src_node_id == ATTACKER else r for r in replies
            ]
        return replies

    priv, _ = key_files
    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv, nodes=NODES))
    grid.tamper = tamper
    strategy = strategies.FedAvg(public_key=pub, **COMMON)
    strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)
    assert memory["oversized"] and parsed
    assert max(parsed) < min(memory["oversized"])
    for r in (1, 2):
        assert any("before parsing" in why for n, why in strategy.excluded[r] if n == ATTACKER)
        # the honest replies were parsed (through the spy) and aggregated
        assert all(n == ATTACKER for n, _ in strategy.excluded[r]), strategy.excluded[r]
    assert len(parsed) == 2 * (len(NODES) - 1)


def test_a_bug_in_one_reply_check_is_contained(key_files, caplog, monkeypatch):
    real = strategies.FedAvg._parse_reply

    def buggy(self, msg, server_round):
        if msg.metadata.src_node_id == ATTACKER:
            raise RuntimeError("boom")
        return real(self, msg, server_round)

    monkeypatch.setattr(strategies.FedAvg, "_parse_reply", buggy)
    with caplog.at_level(logging.ERROR, logger="cifer_flwr"):
        strategy, _, result = _plain_run(key_files)
    for rnd in (1, 2):
        assert (ATTACKER, "internal error: RuntimeError: boom") in strategy.excluded[rnd]
        assert result.train_metrics_clientapp[rnd][METRIC_RELEASED] == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None


def test_a_failing_metrics_aggregation_fn_does_not_stop_the_round(key_files, caplog):
    def broken(records, key):
        raise ZeroDivisionError("user bug")

    with caplog.at_level(logging.ERROR, logger="cifer_flwr"):
        _, _, result = _plain_run(
            key_files, train_metrics_aggr_fn=broken, evaluate_metrics_aggr_fn=broken
        )
    assert result.train_metrics_clientapp[2][METRIC_RELEASED] == 1
    assert len(result.arrays) > 0 and result.evaluate_metrics_clientapp == {}
    assert any("train_metrics_aggr_fn failed" in r.getMessage() for r in caplog.records)


def test_fedopt_without_a_strict_majority_releases_nothing(key_files, caplog):
    def split(call, replies):
        if call == 3:  # round 2: two digests, two each
            for reply in replies:
                if reply.metadata.src_node_id in (3, 4):
                    reply.content["cifer"]["state-digest"] = "f" * 64
        return replies

    with caplog.at_level(logging.ERROR, logger="cifer_flwr"):
        strategy, seen, result = _plain_run(key_files, split, name="FedYogi", rounds=3)
    assert result.train_metrics_clientapp[2][METRIC_RELEASED] == 0
    assert len(strategy.excluded[2]) == 4
    assert all("strict majority" in why for _, why in strategy.excluded[2])
    # round 3 trains from round 1's release again, and round 3 itself releases
    for k in seen[("train", 2, 1)]:
        np.testing.assert_array_equal(seen[("train", 3, 1)][k], seen[("train", 2, 1)][k])
    assert result.train_metrics_clientapp[3][METRIC_RELEASED] == 1
