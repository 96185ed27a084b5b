"""SecureFed: minimum cohort, clipping, noise, the aggregation check and clean-cohort recovery."""

import copy
import itertools
import logging
import math
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import CFG_CLIP_NORM, CFG_COHORT, CFG_SLOT, CHECK_FAILED
from cifer_flwr.crypto.records import pack_ciphertexts, unpack_ciphertexts
from cifer_flwr.exceptions import ConfigError
from tests.strategies.harness import (
    INITIAL,
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
)

NODES = (1, 2, 3, 4)
SIX = (1, 2, 3, 4, 5, 6)
COMMON = {"min_train_nodes": 4, "min_available_nodes": 4, "min_evaluate_nodes": 4}
ATTACKER = 6


def run(
    key_files,
    tamper=None,
    rounds=2,
    examples=lambda node: 100,
    nodes=NODES,
    wrap=None,
    initial=None,
    **kwargs,
):
    priv, pub = key_files
    seen = {}
    app = make_client_app(seen, encrypted=True, examples=examples)
    if wrap is not None:
        app = wrap(app)
    grid = InProcessGrid(app, node_configs(priv, nodes=nodes), tamper)
    common = {
        "min_train_nodes": len(nodes),
        "min_available_nodes": len(nodes),
        "min_evaluate_nodes": len(nodes),
    }
    strategy = strategies.SecureFed(public_key=pub, examples_per_client=100, **{**common, **kwargs})
    result = strategy.start(grid=grid, initial_arrays=initial or plain_initial(), num_rounds=rounds)
    return strategy, grid, seen, result


def error_reasons(grid):
    return [r.error.reason for r in grid.replies if r.has_error()]


def all_excluded(strategy):
    return [why for per_round in strategy.excluded.values() for _, why in per_round]


def is_train(msg):
    return msg.metadata.message_type.startswith("train")


# ----------------------------------------------------------------------------- attacks
def forged_key_app(key, other_key, attacker=ATTACKER):
    """The attacker encrypts its model part under ANOTHER key (fingerprint copied).

    The plaintext is what an honest client would send, integrity values included; the
    check part is the honest one. Nothing public tells the ciphertexts apart.
    """

    def wrap(inner):
        def app(msg, context):
            reply = inner(msg, context)
            if context.node_id != attacker or reply.has_error() or not is_train(msg):
                return reply
            parts = crypto.bundle_from_record(reply.content["arrays"], key)
            model = parts["model"]
            chunks = crypto.decrypt_chunks(model, key)
            arrays = crypto.decode(model.layout, [c / model.weight for c in chunks])
            fill = np.stack([c[-model.layout.reserved :] for c in chunks])
            forged = crypto.encrypt(
                arrays,
                other_key,
                weight=model.weight,
                reserved=model.layout.reserved,
                fill=fill,
                meta=model.meta,
            )
            forged = replace(forged, fingerprint=key.fingerprint)
            reply.content["arrays"] = crypto.bundle_to_record(
                {"model": forged, "check": parts["check"]}
            )
            return reply

        return app

    return wrap


def no_clipping_app(attacker=ATTACKER):
    """The attacker's ClientApp drops the clipping bound before ckks_mod sees it."""

    def wrap(inner):
        def app(msg, context):
            if context.node_id == attacker and is_train(msg):
                config = msg.content["config"]
                if CFG_CLIP_NORM in config:
                    del config[CFG_CLIP_NORM]
            return inner(msg, context)

        return app

    return wrap


def swap_arrays(a: ArrayRecord, key_a: str, b: ArrayRecord, key_b: str) -> None:
    a_arr, b_arr = a[key_a], b[key_b]
    a[key_a], b[key_b] = b_arr, a_arr


def swap_ciphertexts(a: ArrayRecord, i: int, b: ArrayRecord, j: int, pack: str) -> None:
    """Swap ciphertext ``i`` of pack ``pack`` of ``a`` with ciphertext ``j`` of ``b``'s."""
    items = []
    for rec in (a, b):
        data = rec[pack].data
        items.append(unpack_ciphertexts(data, max_items=len(data), max_item_bytes=len(data)))
    items[0][i], items[1][j] = items[1][j], items[0][i]
    for rec, blobs in zip((a, b), items, strict=True):
        arr = rec[pack]
        rec[pack] = Array(
            dtype=arr.dtype, shape=arr.shape, stype=arr.stype, data=pack_ciphertexts(blobs)
        )


# ----------------------------------------------------------------------------- oracles
def honest_step(x, node, clip=None):
    y = {k: (0.8 * v + 0.05 * node).astype(v.dtype) for k, v in x.items()}
    if clip:
        y, _ = protocol.clip_update(y, x, clip)
    return y


def mean_of(models):
    return {k: np.mean([m[k].astype(np.float64) for m in models], axis=0) for k in models[0]}


def close(a, b, atol=1e-5):
    return all(np.abs(a[k].astype(np.float64) - b[k]).max() <= atol for k in a)


def matching_subsets(base, target, candidates, min_size, clip=None):
    """Subsets of ``candidates`` whose honest updates average to ``target``."""
    steps = {n: honest_step(base, n, clip) for n in candidates}
    return [
        set(sub)
        for size in range(min_size, len(candidates) + 1)
        for sub in itertools.combinations(sorted(candidates), size)
        if close(target, mean_of([steps[n] for n in sub]))
    ]


# ----------------------------------------------------------------------------- honest runs
def test_clean_run_matches_plain_weighted_mean_and_logs_features(key_files, caplog):
    with caplog.at_level(logging.INFO, logger="cifer_flwr"):
        strategy, grid, seen, _ = run(key_files, min_cohort=3)
    assert error_reasons(grid) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    for feature in (
        "minimum cohort: 3",
        "L2 clipping",
        "DP noise",
        "aggregation check",
        "clean-cohort recovery",
    ):
        assert feature in text
    prev = seen[("train", 1, 1)]["w"]
    expected = np.mean([0.8 * prev + 0.05 * n for n in NODES], axis=0)
    np.testing.assert_allclose(seen[("train", 2, 1)]["w"], expected, atol=1e-5)
    assert strategy.integrity_events == [] and strategy.banned == set()


def test_honest_securefed_equals_flower_plaintext_fedavg(key_files):
    priv, pub = key_files
    rounds = 4  # node_configs' three nodes
    common = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
    plain_seen, enc_seen = {}, {}
    plain_grid = InProcessGrid(make_client_app(plain_seen, encrypted=False), node_configs(priv))
    flwr_strategy.FedAvg(**common).start(
        grid=plain_grid, initial_arrays=plain_initial(), num_rounds=rounds
    )
    grid = InProcessGrid(make_client_app(enc_seen, encrypted=True), node_configs(priv))
    ours = strategies.SecureFed(public_key=pub, min_cohort=3, **common)
    ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=rounds)
    assert set(enc_seen) == set(plain_seen)
    for key_ in plain_seen:
        for k in plain_seen[key_]:
            assert np.abs(enc_seen[key_][k] - plain_seen[key_][k]).max() <= 1e-5, key_
    assert error_reasons(grid) == [] and all_excluded(ours) == []
    assert np.abs(enc_seen[("evaluate", rounds, 1)]["w"] - INITIAL["w"]).max() > 0.01


def test_fewer_than_min_cohort_releases_nothing(key_files, caplog):
    def fail_two(call, replies):
        if call == 1:
            for reply in replies[:2]:
                reply.content["arrays"] = replies[2].content["arrays"].__class__()
        return replies

    with caplog.at_level(logging.WARNING, logger="cifer_flwr"):
        strategy, grid, seen, result = run(key_files, tamper=fail_two, rounds=1, min_cohort=3)
    assert any("fewer than the 3 required" in r.getMessage() for r in caplog.records)
    # nothing released: clients still evaluate the initial model
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
    assert error_reasons(grid) == []  # honest clipped updates pass the key holders' norm check


def test_distributed_noise_has_the_promised_scale(key_files):
    sigma, clip = 1.0, 0.5
    strategy, grid, seen, _ = run(
        key_files, rounds=2, min_cohort=3, clip_norm=clip, noise_multiplier=sigma
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
    # the noise is far above clip_norm in norm, yet the norm check's allowance accepts it
    assert error_reasons(grid) == []
    assert ("train", 2, 1) in seen


# ----------------------------------------------------------------------------- replay / duplicate
def test_replayed_update_is_refused(key_files):
    stash = {}

    def replay(call, replies):
        if call == 1:  # round 1 train: remember node 2's reply
            stash["old"] = copy.deepcopy(replies[1].content["arrays"])
        if call == 3:  # round 2 train: the relay swaps in the old ciphertext
            replies[1].content["arrays"] = stash["old"]
        return replies

    strategy, grid, _, _ = run(key_files, tamper=replay, rounds=2, min_cohort=3)
    # the server refuses the exact replay; were it missed, the key holders' round tags would
    refused_by_server = any("replay" in why for why in all_excluded(strategy))
    refused_by_holders = any("replayed" in r for r in error_reasons(grid))
    assert refused_by_server or refused_by_holders


def test_duplicated_reply_is_refused(key_files, caplog):
    def duplicate(call, replies):
        if call == 1:
            replies[3] = copy.deepcopy(replies[0])
        return replies

    caplog.set_level("WARNING", logger="cifer_flwr.strategies")
    strategy, grid, _, _ = run(key_files, tamper=duplicate, rounds=1, min_cohort=3)
    refused_by_server = any(
        word in why
        for why in all_excluded(strategy)
        for word in ("duplicate", "replay", "second reply")
    )
    # the copy answers a message its node already answered: the pull loop drops it
    dropped_by_pull = any("dropped a reply of node" in r.getMessage() for r in caplog.records)
    refused_by_holders = any("more than once" in r for r in error_reasons(grid))
    assert refused_by_server or dropped_by_pull or refused_by_holders
    assert strategy.round_stats[1]["valid-replies"] == 3  # the copy was not summed


def rerandomized(record, public):
    """The same plaintexts under fresh ciphertexts (an added encryption of zero)."""
    parts = crypto.bundle_from_record(record, public)
    out = {}
    for name, enc in parts.items():
        lay = enc.layout
        zero = crypto.encrypt(
            {k: np.zeros(s, d) for k, s, d in zip(lay.names, lay.shapes, lay.dtypes)},
            public,
            reserved=lay.reserved,
        )
        out[name] = replace(crypto.aggregate([enc, zero]), weight=enc.weight, count=1)
    return crypto.bundle_to_record(out)


def test_rerandomized_duplicate_is_refused_by_key_holders(key_files):
    public = crypto.load_public_key(key_files[1])

    def duplicate(call, replies):
        if call == 1:  # node 4 sends node 1's update under fresh ciphertexts
            replies[3].content["arrays"] = rerandomized(replies[0].content["arrays"], public)
        return replies

    strategy, grid, seen, _ = run(key_files, tamper=duplicate, rounds=1, min_cohort=3)
    assert all_excluded(strategy) == []  # nothing the server can see
    reasons = error_reasons(grid)
    assert len(reasons) == 4 and all("more than once" in r for r in reasons)
    assert all(("evaluate", 1, n) not in seen for n in NODES)


# ----------------------------------------------------------------------------- per-chunk check
def contribution(arrays, key, *, slot, cohort, rnd, session, weight=0.25):
    n = crypto.encoding.count_chunks(arrays, key.params.slots, protocol.INTEGRITY_SLOTS)
    fill = protocol.integrity_fill(session, rnd, slot, cohort, n, key.params)
    model = crypto.encrypt(arrays, key, weight=weight, reserved=protocol.INTEGRITY_SLOTS, fill=fill)
    check = crypto.encrypt(protocol.check_arrays(slot, cohort, rnd, weight), key)
    return model, check


def released(contribs, rnd, session, **meta):
    model = crypto.aggregate([m for m, _ in contribs])
    model = replace(model, meta={"round": rnd, "base_round": rnd - 1, "session": session, **meta})
    return {"model": model, "check": crypto.aggregate([c for _, c in contribs])}


BIG = {"w": np.linspace(-1, 1, 5000).reshape(50, 100).astype(np.float32)}  # 3 ciphertexts


def models(n):
    return [{"w": (BIG["w"] + 0.01 * i).astype(np.float32)} for i in range(n)]


def test_per_chunk_check_accepts_honest_aggregates(key, public_key):
    contribs = [
        contribution(m, key, slot=i, cohort=4, rnd=3, session="s1") for i, m in enumerate(models(4))
    ]
    opened = protocol.open_global(released(contribs, 3, "s1"), key)
    np.testing.assert_allclose(
        opened.arrays["w"], np.mean([m["w"] for m in models(4)], 0), atol=1e-6
    )
    assert opened.round == 3 and not opened.groups_tested


@pytest.mark.parametrize(
    "attack",
    ["other-key", "other-round", "other-slot", "other-position", "other-session", "no-integrity"],
)
def test_per_chunk_check_refuses_foreign_ciphertexts(key, other_key, attack):
    ms = models(4)
    contribs = [
        contribution(m, key, slot=i, cohort=4, rnd=3, session="s1") for i, m in enumerate(ms)
    ]
    model, check = contribs[2]
    vectors = list(model.vectors)
    if attack == "other-key":  # honest plaintext, integrity values included, another key
        chunks = crypto.decrypt_chunks(model, key)
        other = crypto.encrypt(
            crypto.decode(model.layout, [c / model.weight for c in chunks]),
            other_key,
            weight=model.weight,
            reserved=model.layout.reserved,
            fill=np.stack([c[-model.layout.reserved :] for c in chunks]),
        )
        vectors[1] = other.vectors[1]
    elif attack == "other-round":
        vectors[1] = contribution(ms[2], key, slot=2, cohort=4, rnd=2, session="s1")[0].vectors[1]
    elif attack == "other-slot":  # the same chunk of another client's reply
        vectors[1] = contribution(ms[3], key, slot=3, cohort=4, rnd=3, session="s1")[0].vectors[1]
    elif attack == "other-position":
        vectors[0], vectors[1] = vectors[1], vectors[0]
    elif attack == "other-session":
        vectors[1] = contribution(ms[2], key, slot=2, cohort=4, rnd=3, session="s0")[0].vectors[1]
    contribs[2] = (replace(model, vectors=tuple(vectors)), check)
    parts = released(contribs, 3, "s1")
    if attack == "no-integrity":  # a model without reserved slots cannot be verified
        plain = crypto.encrypt(BIG, key, weight=1.0)
        parts["model"] = replace(plain, count=4, weight=1.0, meta=parts["model"].meta)
    with pytest.raises(protocol.AggregationCheckError, match=CHECK_FAILED) as info:
        protocol.open_global(parts, key)
    if attack != "no-integrity":
        assert "chunks [1]" in str(info.value) or "chunks [0, 1]" in str(info.value)
    # decrypt-model's path (materialize) refuses as well
    with pytest.raises(protocol.AggregationCheckError):
        protocol.materialize(parts, key)


def test_per_chunk_tolerance_holds_for_a_large_public_key_cohort(key, public_key):
    # 60 contributions encrypted with the PUBLIC key (the noisier encryption): no false refusal
    rng = np.random.default_rng(1)
    arrays = [{"w": rng.normal(0, 1, 3000).astype(np.float32)} for _ in range(60)]
    contribs = [
        contribution(a, public_key, slot=i, cohort=60, rnd=7, session="s", weight=1 / 60)
        for i, a in enumerate(arrays)
    ]
    opened = protocol.open_global(released(contribs, 7, "s"), key)
    np.testing.assert_allclose(opened.arrays["w"], np.mean([a["w"] for a in arrays], 0), atol=1e-5)


def test_norm_check_refuses_an_unclipped_update_and_accepts_clipped_ones(key):
    base = {"w": BIG["w"]}
    clip = 0.5
    honest = [protocol.clip_update(m, base, clip)[0] for m in models(4)]
    prev = protocol.BaseModel(2, base, 1e-9)
    contribs = [
        contribution(m, key, slot=i, cohort=4, rnd=3, session="s") for i, m in enumerate(honest)
    ]
    protocol.open_global(released(contribs, 3, "s", clip_norm=clip), key, previous=prev)
    rogue = {"w": (BIG["w"] + 0.1).astype(np.float32)}  # norm 7.1, not clipped
    contribs[1] = contribution(rogue, key, slot=1, cohort=4, rnd=3, session="s")
    parts = released(contribs, 3, "s", clip_norm=clip)
    with pytest.raises(protocol.AggregationCheckError, match="skipped clipping"):
        protocol.open_global(parts, key, previous=prev)
    # without the base (decrypt-model) the norm cannot be checked, the integrity can
    opened = protocol.open_global(parts, key)
    assert any("norm check skipped" in n for n in opened.notes)


def test_groups_fall_back_to_the_ones_that_verify(key, other_key):
    ms = models(6)
    contribs = [
        contribution(m, key, slot=i, cohort=6, rnd=4, session="s") for i, m in enumerate(ms)
    ]
    bad_model, bad_check = contribs[5]
    forged = crypto.encrypt(ms[5], other_key, weight=bad_model.weight, reserved=4)
    contribs[5] = (replace(forged, fingerprint=key.fingerprint), bad_check)
    parts = released(contribs, 4, "s")
    for g, members in enumerate(([0, 2, 4], [1, 3, 5])):
        sub = released([contribs[i] for i in members], 4, "s")
        parts[protocol.group_part("model", g)] = sub["model"]
        parts[protocol.group_part("check", g)] = sub["check"]
    opened = protocol.open_global(parts, key)  # the full aggregate fails, group 0 passes
    assert opened.groups_tested and opened.failed_groups == (1,)
    np.testing.assert_allclose(
        opened.arrays["w"], np.mean([ms[i]["w"] for i in (0, 2, 4)], 0), atol=1e-6
    )
    del parts[protocol.group_part("model", 0)]
    with pytest.raises(protocol.AggregationCheckError, match="every candidate group failed"):
        protocol.open_global(parts, key)


# ----------------------------------------------------------------------------- in the federation
def test_swapped_chunks_between_two_replies_are_refused(key_files):
    initial = ArrayRecord({"w": ArrayRecord([BIG["w"]])["0"]})

    def swap(call, replies):
        if call == 1:  # chunk 0 of node A's reply <-> chunk 1 of node B's reply (one pack)
            swap_ciphertexts(
                replies[0].content["arrays"],
                0,
                replies[1].content["arrays"],
                1,
                "cifer.model.ct.000000",
            )
        return replies

    strategy, grid, seen, _ = run(key_files, tamper=swap, rounds=2, min_cohort=3, initial=initial)
    reasons = error_reasons(grid)
    assert reasons and all("wrong integrity values" in r for r in reasons)
    assert all(("evaluate", 1, n) not in seen for n in NODES)  # nobody used it
    # with 4 replies there are no two groups of 3: the aggregate is dropped, round 2 trains
    # from the initial model again
    assert any(e["event"] == "dropped" for e in strategy.integrity_events)
    np.testing.assert_allclose(seen[("train", 2, 1)]["w"], BIG["w"], atol=1e-6)


def test_substituted_chunk_is_refused_even_when_rerandomized(key_files, key):
    _, pub_path = key_files
    public = crypto.load_public_key(pub_path)

    def substitute(call, replies):
        if call == 1:  # node A's chunk 0 := node B's chunk 0 plus an encryption of zero
            b = crypto.bundle_from_record(replies[1].content["arrays"], public)["model"]
            zero = crypto.encrypt(
                {k: np.zeros(s, np.float32) for k, s in zip(b.layout.names, b.layout.shapes)},
                public,
                reserved=b.layout.reserved,
            )
            fresh = crypto.aggregate([b, zero])
            blob = crypto.bundle_to_record({"model": fresh})["cifer.model.ct.000000"]
            replies[0].content["arrays"]["cifer.model.ct.000000"] = blob  # the whole pack
        return replies

    strategy, grid, seen, _ = run(key_files, tamper=substitute, rounds=1, min_cohort=3)
    assert all_excluded(strategy) == []  # nothing the server can see
    reasons = error_reasons(grid)
    assert len(reasons) == 4 and all("wrong integrity values" in r for r in reasons)


def test_unclipped_update_is_refused_by_the_norm_check(key_files):
    strategy, grid, seen, _ = run(
        key_files, rounds=1, min_cohort=3, clip_norm=0.5, wrap=no_clipping_app(attacker=4)
    )
    reasons = error_reasons(grid)
    assert len(reasons) == 4 and all("skipped clipping" in r for r in reasons)
    assert all(("evaluate", 1, n) not in seen for n in NODES)


@pytest.mark.parametrize("attack", ["forged-key", "no-clipping"])
def test_one_attacker_is_isolated_and_a_clean_cohort_recovered(key_files, key, other_key, attack):
    rounds, clip = 6, 0.5
    wrap = forged_key_app(key, other_key) if attack == "forged-key" else no_clipping_app()
    strategy, grid, seen, result = run(
        key_files, rounds=rounds, nodes=SIX, min_cohort=3, clip_norm=clip, wrap=wrap
    )
    honest = set(SIX) - {ATTACKER}
    # the key holders refused every poisoned aggregate: nobody ever trained or evaluated on it
    assert error_reasons(grid) and all(CHECK_FAILED in r for r in error_reasons(grid))
    # the attacker was identified and excluded; no honest node was
    assert strategy.banned == {ATTACKER}
    # with federated evaluation on, no round was lost: every round trained from a model that
    # is the mean of >= min_cohort honest updates of the previous one (the oracle)
    x = {k: v.astype(np.float64) for k, v in INITIAL.items()}
    for rnd in range(1, rounds + 1):
        got = seen[("train", rnd, 1)]
        assert close(got, x), rnd
        nxt = seen[("train", rnd + 1, 1)] if rnd < rounds else None
        if nxt is None:
            break
        subsets = matching_subsets(got, nxt, honest, 3, clip)
        assert subsets, f"round {rnd + 1} trained from a model that is no honest mean"
        x = mean_of([honest_step(got, n, clip) for n in subsets[0]])
    # after the exclusion the full honest cohort is used again
    assert matching_subsets(
        seen[("train", rounds - 1, 1)], seen[("train", rounds, 1)], honest, 5, clip
    )
    # the final model (what decrypt-model sees) is the honest oracle's
    final, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    expected = mean_of([honest_step(seen[("train", rounds, 1)], n, clip) for n in honest])
    assert close(final, expected)
    kinds = [e["event"] for e in strategy.integrity_events]
    assert "refused" in kinds and "group-failed" in kinds and "excluded" in kinds


def test_without_evaluation_one_attacker_blocks_only_a_few_rounds(key_files, key, other_key):
    rounds = 10
    strategy, grid, seen, _ = run(
        key_files,
        rounds=rounds,
        nodes=SIX,
        min_cohort=3,
        wrap=forged_key_app(key, other_key),
        fraction_evaluate=0.0,
    )
    assert strategy.banned == {ATTACKER}
    trained = [rnd for rnd in range(1, rounds + 1) if ("train", rnd, 1) in seen]
    lost = rounds - len(trained)
    # docs/design.md §4.4: at most 1 + ceil(log2(2*3 - 1)) = 4 lost rounds for min_cohort=3
    assert 1 <= lost <= 4, trained
    assert trained[-3:] == [rounds - 2, rounds - 1, rounds]  # clean rounds at the end


def test_invalid_settings_are_refused(key_files):
    _, pub = key_files
    with pytest.raises(ConfigError, match="min_cohort"):
        strategies.SecureFed(public_key=pub, min_cohort=1)
    with pytest.raises(ConfigError, match="clip_norm"):
        strategies.SecureFed(public_key=pub, noise_multiplier=1.0)


def test_an_encrypted_initial_model_without_reserved_slots_is_refused(key_files):
    _, pub = key_files
    public = crypto.load_public_key(pub)
    record = crypto.bundle_to_record({"model": crypto.encrypt(INITIAL, public)})
    strategy = strategies.SecureFed(public_key=pub, **COMMON)
    with pytest.raises(ConfigError, match="reserves 0 slots"):
        strategy.start(grid=InProcessGrid(None, {}), initial_arrays=record, num_rounds=1)


def test_reserved_values_are_placed_unweighted_and_read_back(key):
    fill = np.array([[0.5, 1.5, 2.5, 3.5]])
    enc = crypto.encrypt({"w": np.ones(10, np.float32)}, key, weight=0.25, reserved=4, fill=fill)
    chunks = crypto.decrypt_chunks(enc, key)
    np.testing.assert_allclose(chunks[0][-4:], fill[0], atol=1e-6)  # not multiplied by 0.25
    np.testing.assert_allclose(crypto.decrypt(enc, key, divisor=0.25)["w"], 1.0, atol=1e-6)


def test_securefed_resumes_from_its_checkpoint(key_files, key, tmp_path):
    ckpt = tmp_path / "ckpt"
    _, _, _, full = run(key_files, rounds=4, min_cohort=3, clip_norm=0.5)
    run(key_files, rounds=2, min_cohort=3, clip_norm=0.5, checkpoint_path=ckpt)
    strategy, grid, seen, resumed = run(
        key_files, rounds=4, min_cohort=3, clip_norm=0.5, checkpoint_path=ckpt, resume=True
    )
    assert error_reasons(grid) == []  # the key holders accept the restored aggregate
    assert min(k[1] for k in seen) == 3  # rounds 3 and 4 only
    a, _ = protocol.materialize(crypto.bundle_from_record(full.arrays, key), key)
    b, _ = protocol.materialize(crypto.bundle_from_record(resumed.arrays, key), key)
    assert close(a, {k: v.astype(np.float64) for k, v in b.items()})


# ----------------------------------------------------------------------------- slot claims
def slot_claim_app(attacker=ATTACKER):
    """The attacker's ClientApp claims the NEXT client's check slot before ckks_mod runs.

    Its encryption is otherwise honest (integrity values of the claimed slot); issue 18.
    """

    def wrap(inner):
        def app(msg, context):
            if context.node_id == attacker and is_train(msg):
                config = msg.content["config"]
                if CFG_SLOT in config:
                    config[CFG_SLOT] = (int(config[CFG_SLOT]) + 1) % int(config[CFG_COHORT])
            return inner(msg, context)

        return app

    return wrap


def copy_of_victim(public, attacker=ATTACKER, victim=1):
    """Every train round the attacker's reply is a re-encoded copy of the victim's reply."""

    def tamper(call, replies):
        by_node = {r.metadata.src_node_id: r for r in replies}
        a, v = by_node.get(attacker), by_node.get(victim)
        if a is None or v is None or a.has_error() or v.has_error() or not is_train(a):
            return replies
        a.content["arrays"] = rerandomized(v.content["arrays"], public)
        return replies

    return tamper


@pytest.mark.parametrize("attack", ["slot-claim", "copy"])
@pytest.mark.parametrize(("nodes", "min_cohort"), [(NODES, 2), (SIX, 3)])
def test_slot_claim_or_copy_is_excluded_within_the_bound(key_files, key, attack, nodes, min_cohort):
    attacker, rounds = nodes[-1], 6
    public = crypto.load_public_key(key_files[1])
    strategy, grid, seen, result = run(
        key_files,
        rounds=rounds,
        nodes=nodes,
        min_cohort=min_cohort,
        wrap=slot_claim_app(attacker) if attack == "slot-claim" else None,
        tamper=copy_of_victim(public, attacker) if attack == "copy" else None,
    )
    honest = set(nodes) - {attacker}
    # identified and excluded, nobody else
    assert strategy.banned == {attacker}, strategy.integrity_events
    events = strategy.integrity_events
    excluded_at = next(e["round"] for e in events if e["event"] == "excluded")
    failures = sum(1 for e in events if e["event"] == "group-failed")
    # docs/design.md §4.4.3: at most 1 + ceil(log2(2m - 1)) failed groups, one per round
    # (federated evaluation on), so the exclusion comes in train round <= 2 + that
    bound = 1 + math.ceil(math.log2(2 * min_cohort - 1))
    assert 1 <= failures <= bound and excluded_at <= 1 + bound, events
    assert all(e["event"] != "group-failed" or attacker in e["nodes"] for e in events)
    # the run completed every round; each trained from a mean of >= m honest updates
    for rnd in range(1, rounds):
        got, nxt = seen[("train", rnd, 1)], seen[("train", rnd + 1, 1)]
        assert matching_subsets(got, nxt, honest, min_cohort), rnd
    assert all(("evaluate", rnd, 1) in seen for rnd in range(excluded_at, rounds + 1))
    final, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    assert close(final, mean_of([honest_step(seen[("train", rounds, 1)], n) for n in honest]))


def test_a_group_holding_another_groups_slot_fails_only_itself(key):
    """The check binds each sum to the slots the server says it holds (§4.4.2)."""
    ms = models(4)
    contribs = [
        contribution(m, key, slot=i, cohort=4, rnd=2, session="s") for i, m in enumerate(ms)
    ]
    contribs[2] = contribution(ms[2], key, slot=3, cohort=4, rnd=2, session="s")  # claims 3
    parts = released(contribs, 2, "s")
    for g, members in enumerate(([0, 2], [1, 3])):
        sub = released([contribs[i] for i in members], 2, "s")
        sub["model"] = replace(
            sub["model"], meta={**sub["model"].meta, "slots": protocol.slots_mask(members)}
        )
        parts[protocol.group_part("model", g)] = sub["model"]
        parts[protocol.group_part("check", g)] = sub["check"]
    opened = protocol.open_global(parts, key)
    assert opened.failed_groups == (0,)
    np.testing.assert_allclose(opened.arrays["w"], mean_of([ms[1], ms[3]])["w"], atol=1e-6)
    with pytest.raises(protocol.AggregationCheckError, match="expected a hex bitmask"):
        protocol.parse_slots_mask("zz", 4)
    with pytest.raises(protocol.AggregationCheckError, match="beyond the cohort"):
        protocol.parse_slots_mask("10", 4)
