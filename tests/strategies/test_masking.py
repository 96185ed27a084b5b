"""Secure aggregation inside the packed sums (docs/design.md §4.9), from both sides.

Oracles: Flower's own plaintext strategies, the exact weighted mean of the survivors'
updates, and a key holder opening other clients' replies (``protocol.open_reply``).
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flwr_strategy

from cifer_flwr import crypto, masking, protocol, strategies
from cifer_flwr.constants import MASK_RECORD, METRIC_MASKED
from cifer_flwr.exceptions import MaskingError
from tests.strategies.harness import (
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
    wire,
)

NODES = (1, 2, 3, 4, 5, 6)
#: the test clients report 10 * node examples: their mean makes the weights sum to ~1
EXAMPLES = 35.0
COMMON = {"min_train_nodes": 6, "min_available_nodes": 6, "min_evaluate_nodes": 6}
#: packed: each summand's rounding is off by < one step (2^-21), the mean by < K steps / W
TOL = 1e-5
#: push calls of one masked round: advertise, share, train, unmask, evaluate
ADVERTISE, SHARE, TRAIN, UNMASK = 1, 2, 3, 4


def run(strategy, priv, rounds=1, tamper=None, nodes=NODES, configs=None, initial=None):
    seen: dict = {}
    grid = InProcessGrid(
        make_client_app(seen, encrypted=True), configs or node_configs(priv, nodes=nodes), tamper
    )
    initial = plain_initial() if initial is None else initial
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
    return seen, grid, result


def drop(call: int, node: int):
    """A tamper hook: node ``node``'s reply to push number ``call`` never arrives."""

    def tamper(calls, replies):
        if calls != call:
            return replies
        return [r for r in replies if r.metadata.src_node_id != node]

    return tamper


def capture(call: int, into: list):
    """A tamper hook that keeps a copy of every reply to push number ``call`` (as sent)."""

    def tamper(calls, replies):
        if calls == call:
            into.extend(wire(r) for r in replies)
        return replies

    return tamper


def survivors_mean(seen, survivors):
    """The exact weighted mean of the survivors' round-1 updates (y = 0.8 x + 0.05 n)."""
    x0 = seen[("train", 1, survivors[0])]
    weights = {n: 10.0 * n for n in survivors}
    total = sum(weights.values())
    return {k: sum(weights[n] * (0.8 * x0[k] + 0.05 * n) for n in survivors) / total for k in x0}


def gap(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("FedAvg", {}),
        ("FedProx", {"proximal_mu": 0.1}),
        ("FedAdam", {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
        ("FedAvgM", {"server_learning_rate": 0.8, "server_momentum": 0.9}),
    ],
)
def test_masked_strategies_match_flower_plaintext(name, kwargs, packed_key_files):
    priv, pub = packed_key_files
    seen_plain: dict = {}
    grid = InProcessGrid(make_client_app(seen_plain, encrypted=False), node_configs(priv, NODES))
    getattr(flwr_strategy, name)(**COMMON, **kwargs).start(
        grid=grid, initial_arrays=plain_initial(), num_rounds=3
    )
    ours = getattr(strategies, name)(
        public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON, **kwargs
    )
    seen, grid, result = run(ours, priv, rounds=3)
    assert set(seen) == set(seen_plain)
    worst = max(gap(seen[k], seen_plain[k]) for k in seen_plain)
    assert 0 < worst <= TOL, worst
    assert sum(len(v) for v in ours.excluded.values()) == 0
    for rnd in (1, 2, 3):
        assert result.train_metrics_clientapp[rnd][METRIC_MASKED] == 1
        assert ours.round_stats[rnd]["mask-cohort"] == len(NODES)
    # every train message carried the masking payload; the user's ClientApp never saw it
    assert all(MASK_RECORD in m.content.config_records for m in grid.pushed[TRAIN - 1])


def test_colluding_key_holder_sees_noise_in_every_masked_reply(packed_key_files):
    """The server plus one key holder (who has private.key) open every other reply."""
    priv, pub = packed_key_files
    key = crypto.load_private_key(priv)
    masked = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)
    # 24 000 values: the correlation of independent vectors then has std 0.0065
    big = ArrayRecord({"w": Array(np.random.default_rng(1).normal(0, 0.3, (24, 1000)))})
    uploads: list = []
    seen, grid, _ = run(masked, priv, tamper=capture(TRAIN, uploads), initial=big)
    x0 = seen[("train", 1, 1)]
    half_range = key.params.plain_modulus // 2 * key.params.precision
    assert len(uploads) == len(NODES)
    for reply in uploads:
        node = reply.metadata.src_node_id
        opened = protocol.open_reply(reply.content["arrays"], key)
        weight = 10.0 * node / (len(NODES) * EXAMPLES)
        update = {k: 0.8 * x0[k] + 0.05 * node for k in x0}
        values = np.concatenate([(opened[k] * weight).ravel() for k in opened])
        truth = np.concatenate([update[k].ravel() for k in update])
        assert abs(np.corrcoef(values, truth)[0, 1]) < 0.05
        # uniform over the whole packed range: std / range ~ 1/sqrt(12) = 0.289
        assert 0.2 < values.std() / (2 * half_range) < 0.4
    # the same run without masking: one reply opens to the client's update (the weakness
    # masking removes)
    plain = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, **COMMON)
    uploads = []
    seen, grid, _ = run(plain, priv, tamper=capture(1, uploads), initial=big)
    reply = uploads[0]
    node = reply.metadata.src_node_id
    opened = protocol.open_reply(reply.content["arrays"], key)
    assert gap(opened, {k: 0.8 * x0[k] + 0.05 * node for k in x0}) < 1e-4


@pytest.mark.parametrize(
    ("call", "node", "in_sum"),
    [
        (ADVERTISE, 4, False),  # vanished after sampling
        (SHARE, 4, False),  # advertised, never shared
        (TRAIN, 4, False),  # shared, never uploaded: its masks go through its key shares
        (UNMASK, 4, True),  # uploaded, then vanished before revealing shares
    ],
)
def test_dropout_at_each_stage_releases_the_exact_sum_of_survivors(
    call, node, in_sum, packed_key_files
):
    priv, pub = packed_key_files
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)
    seen, _, result = run(ours, priv, tamper=drop(call, node))
    survivors = [n for n in NODES if in_sum or n != node]
    assert result.train_metrics_clientapp[1]["cifer-released"] == 1
    assert result.train_metrics_clientapp[1]["cifer-valid-replies"] == (
        len(NODES) if call == UNMASK else len(NODES) - 1
    )
    assert gap(seen[("evaluate", 1, 1)], survivors_mean(seen, survivors)) <= TOL
    # a masking stage records who vanished; a missing train reply is simply absent (as in
    # Flower), and the unmask stage counts it among the dropped
    assert [n for n, _ in ours.excluded[1]] == ([] if call == TRAIN else [node])
    assert ours.round_stats[1]["mask-dropped"] == (1 if call == TRAIN else 0)


def test_a_reply_to_another_nodes_masking_message_is_refused(packed_key_files):
    """Node 3 answers node 2's advertise message instead of its own: it is refused (and,
    with no reply of its own, dropped at that stage); the round sums the others exactly."""
    priv, pub = packed_key_files
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)

    def tamper(calls, replies):
        if calls != ADVERTISE:
            return replies
        to_two = next(
            r.metadata.reply_to_message_id for r in replies if r.metadata.src_node_id == 2
        )
        forged = wire(next(r for r in replies if r.metadata.src_node_id == 3))
        forged.metadata.__dict__["_reply_to_message_id"] = to_two
        # first in the outbox, so it is pulled before node 2's own reply to that message
        return [forged] + [r for r in replies if r.metadata.src_node_id != 3]

    seen, _, result = run(ours, priv, tamper=tamper)
    reasons = [why for n, why in ours.excluded[1] if n == 3]
    assert any("reply_to_message_id" in why for why in reasons), ours.excluded[1]
    assert [n for n, _ in ours.excluded[1]] == [3, 3]  # the forged reply, then no reply
    assert result.train_metrics_clientapp[1]["cifer-released"] == 1
    survivors = [n for n in NODES if n != 3]
    assert gap(seen[("evaluate", 1, 1)], survivors_mean(seen, survivors)) <= TOL


def test_below_the_threshold_nothing_is_released(packed_key_files):
    """Two of six upload nothing: 4 share holders remain, the threshold is 5."""
    priv, pub = packed_key_files
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)

    def tamper(calls, replies):
        if calls != TRAIN:
            return replies
        return [r for r in replies if r.metadata.src_node_id not in (2, 5)]

    seen, _, result = run(ours, priv, tamper=tamper)
    assert result.train_metrics_clientapp[1]["cifer-released"] == 0
    assert ("evaluate", 1, 1) in seen  # evaluation ran on the previous (initial) model
    assert gap(seen[("evaluate", 1, 1)], seen[("train", 1, 1)]) == 0


def test_masking_needs_the_packed_preset(key_files, packed_key_files, tmp_path):
    _, ckks_pub = key_files
    with pytest.raises(MaskingError, match="packed"):
        strategies.FedAvg(public_key=ckks_pub, masking=True)
    _, paillier_pub = crypto.generate_key_pair("paillier", tmp_path / "paillier")
    with pytest.raises(MaskingError, match="packed"):
        strategies.FedAvg(public_key=paillier_pub, masking=True)
    with pytest.raises(MaskingError, match="packed"):
        strategies.SecureFed(public_key=ckks_pub, masking=True)


# ------------------------------------------------------------------ the protocol, attacked
def cohort(k, identities=None, roster=None):
    """A server session and ``k`` clients through advertise, share and mask."""
    server = masking.ServerSession(1)
    clients = {}
    for node in range(1, k + 1):
        ident = identities[node] if identities else None
        client, reply = masking.ClientSession.advertise(server.advertise_request(), node, ident, 0)
        clients[node] = client
        server.accept_advert(node, reply)
    return server, clients


def share_all(server, clients, roster=None):
    request = server.share_request()
    for node, client in clients.items():
        server.accept_shares(node, client.share(request, roster))
    server.fix_cohort()
    return {n: c.mask(server.train_payload(n), 16, 1073692673) for n, c in clients.items()}


def test_flower_sized_node_ids_round_trip():
    """Real SuperNodes have unsigned 64-bit ids (a deployment found the signed encoding)."""
    server = masking.ServerSession(3)
    nodes = [2**64 - 1, 2**63 + 5, 17, 2**62]
    clients = {}
    for node in nodes:
        clients[node], reply = masking.ClientSession.advertise(
            server.advertise_request(), node, None, 0
        )
        server.accept_advert(node, reply)
    masks = share_all(server, clients)
    request, alive, _ = server.unmask_request(nodes[:3])
    for node in alive:
        server.accept_unmask(node, clients[node].unmask(request), alive)
    residual = server.residual(alive, 16, 1073692673)
    # the survivors' masks minus the residual cancel exactly (node 2**62 dropped)
    assert ((sum(masks[n] for n in alive) - residual) % 1073692673 == 0).all()


def test_client_never_reveals_both_kinds_and_answers_once():
    server, clients = cohort(6)
    share_all(server, clients)
    both = masking.dumps(
        {
            "v": 1,
            "stage": "unmask",
            "session": masking._b64(server.session),
            "round": 1,
            "survivors": [1, 2, 3, 4, 5, 6],
            "dropped": [6],
        }
    )
    with pytest.raises(MaskingError, match="both surviving and dropped"):
        clients[1].unmask(both)
    request, alive, _ = server.unmask_request([1, 2, 3, 4, 5])
    clients[1].unmask(request)
    with pytest.raises(MaskingError, match="out-of-order or repeated"):
        clients[1].unmask(request)
    # a repeated instance of the same round is refused at its first stage
    with pytest.raises(MaskingError, match="at most once"):
        masking.ClientSession.advertise(server.advertise_request(), 1, None, 1)


def test_split_view_server_cannot_rebuild_both_secrets_of_a_node():
    """The server tells half the cohort node 6 survived and the other half it dropped."""
    server, clients = cohort(6)
    share_all(server, clients)
    says_alive, _, _ = server.unmask_request([1, 2, 3, 4, 5, 6])
    says_dropped, _, _ = server.unmask_request([1, 2, 3, 4, 5])
    for node in (1, 2, 3):
        server.accept_unmask(node, clients[node].unmask(says_alive), [1, 2, 3, 4, 5, 6])
    for node in (4, 5):
        server.accept_unmask(node, clients[node].unmask(says_dropped), [1, 2, 3, 4, 5])
    graph = server.graph()
    points = {n: n for n in range(1, 7)}
    # 3 self-mask shares and 2 key shares of node 6 reached it: both below the threshold 5
    for store, size in ((server.revealed_self, 16), (server.revealed_keys, 32)):
        with pytest.raises(MaskingError, match="fewer than the threshold"):
            server._rebuild(6, store, graph, points, size, "secret", lambda _: True)


def test_roster_refuses_unsigned_unknown_and_substituted_advertisements(tmp_path):
    ids = {}
    publics = []
    for node in range(1, 5):
        priv, pub = masking.write_identity(tmp_path / f"n{node}", f"hospital-{node}")
        ids[node] = masking.load_identity(priv)
        publics.append(pub)
    roster = masking.load_roster(masking.write_roster(tmp_path / "roster.json", publics[:3]))
    # node 4 signs, but is not on the roster
    server, clients = cohort(4, ids)
    with pytest.raises(MaskingError, match="unknown identity"):
        clients[1].share(server.share_request(), roster)
    # an unsigned advertisement among signed ones
    server, clients = cohort(3, ids)
    unsigned_client, reply = masking.ClientSession.advertise(server.advertise_request(), 9, None, 0)
    server.accept_advert(9, reply)
    with pytest.raises(MaskingError, match="unsigned"):
        clients[1].share(server.share_request(), roster)
    # the server swaps a client's keys for its own (signature no longer verifies)
    server, clients = cohort(3, ids)
    forged = masking.Advert(
        2, b"\x09" * 32, b"\x09" * 32, "hospital-2", server.adverts[2].signature
    )
    server.adverts[2] = forged
    with pytest.raises(MaskingError, match="signature"):
        clients[1].share(server.share_request(), roster)
    server.adverts[1] = forged.__class__(1, b"\x07" * 32, b"\x07" * 32, "hospital-1", None)
    with pytest.raises(MaskingError, match="unchanged"):
        clients[1].share(server.share_request(), roster)
    # all three signed roster members: the round goes through, and is exact
    server, clients = cohort(3, ids)
    share_all(server, clients, roster)


def test_masked_round_with_identities_and_roster(packed_key_files, tmp_path):
    priv, pub = packed_key_files
    publics, configs = [], node_configs(priv, nodes=NODES)
    for node in NODES:
        ident, public = masking.write_identity(tmp_path / f"n{node}", f"site-{node}")
        publics.append(public)
        configs[node]["identity-key"] = str(ident)
    roster = masking.write_roster(tmp_path / "roster.json", publics, min_cohort=5)
    for node in NODES:
        configs[node]["roster"] = str(roster)
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)
    seen, _, result = run(ours, priv, configs=configs)
    assert result.train_metrics_clientapp[1]["cifer-released"] == 1
    assert ours._masking is not None and ours._masking.authenticated[1] is True
    assert gap(seen[("evaluate", 1, 1)], survivors_mean(seen, list(NODES))) <= TOL
    # a node that drops its identity is unsigned: every roster holder refuses the cohort
    del configs[3]["identity-key"]
    del configs[3]["roster"]
    ours = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, masking=True, **COMMON)
    _, grid, result = run(ours, priv, configs=configs)
    assert result.train_metrics_clientapp[1]["cifer-released"] == 0
    assert sum("unsigned" in r.error.reason for r in grid.replies if r.has_error()) == 5


def test_one_wrong_share_is_outvoted_and_two_fail_closed():
    """A holder reveals a wrong share: the rebuild leaves it out (its commitment fails)."""
    server, clients = cohort(6)
    share_all(server, clients)
    request, alive, _ = server.unmask_request([1, 2, 3, 4, 5, 6])
    for node in alive:
        server.accept_unmask(node, clients[node].unmask(request), alive)
    expected = server.residual(alive, 16, 1073692673)
    server.revealed_self[3][1] = (7).to_bytes(66, "big")  # node 1 lies about node 3's seed
    assert (server.residual(alive, 16, 1073692673) == expected).all()
    server.revealed_self[3][2] = (8).to_bytes(66, "big")  # a second liar: nothing released
    with pytest.raises(MaskingError, match="do not rebuild the committed value"):
        server.residual(alive, 16, 1073692673)


def test_a_forged_share_does_not_stop_the_round():
    """Node 2's share to node 1 is forged: node 1 still masks; node 2's seed comes from the rest."""
    server, clients = cohort(6)
    request = server.share_request()
    for node, client in clients.items():
        server.accept_shares(node, client.share(request, None))
    server.fix_cohort()
    sealed = server.sealed[2][1]
    server.sealed[2][1] = sealed[:-4] + "AAA="  # fails authentication at node 1
    masks = {n: c.mask(server.train_payload(n), 16, 1073692673) for n, c in clients.items()}
    assert clients[1].unopened == [2] and 2 not in clients[1].held
    request, alive, _ = server.unmask_request([1, 2, 3, 4, 5, 6])
    for node in alive:
        server.accept_unmask(node, clients[node].unmask(request), alive)
    residual = server.residual(alive, 16, 1073692673)
    assert ((sum(masks[n] for n in alive) - residual) % 1073692673 == 0).all()


def test_a_roster_node_never_uploads_an_unmasked_update(packed_key_files, tmp_path):
    """An active server that simply turns masking off is refused by every roster holder."""
    priv, pub = packed_key_files
    configs = node_configs(priv, nodes=NODES)
    publics = []
    for node in NODES:
        ident, public = masking.write_identity(tmp_path / f"n{node}", f"site-{node}")
        publics.append(public)
        configs[node]["identity-key"] = str(ident)
    roster = masking.write_roster(tmp_path / "roster.json", publics)
    for node in NODES:
        configs[node]["roster"] = str(roster)
    unmasked = strategies.FedAvg(public_key=pub, examples_per_client=EXAMPLES, **COMMON)
    _, grid, result = run(unmasked, priv, configs=configs)
    assert result.train_metrics_clientapp[1]["cifer-released"] == 0
    reasons = [r.error.reason for r in grid.replies if r.has_error()]
    assert len(reasons) == len(NODES) and all("only masked updates" in r for r in reasons)


# ------------------------------------------------------------------ SecureFed under masking
def test_masked_securefed_matches_flower_and_its_groups_unmask(packed_key_files):
    """Masks cancel inside SecureFed's candidate groups, fixed before sharing (§4.9)."""
    priv, pub = packed_key_files
    seen_plain: dict = {}
    grid = InProcessGrid(make_client_app(seen_plain, encrypted=False), node_configs(priv, NODES))
    flwr_strategy.FedAvg(**COMMON).start(grid=grid, initial_arrays=plain_initial(), num_rounds=3)
    ours = strategies.SecureFed(
        public_key=pub, examples_per_client=EXAMPLES, min_cohort=3, masking=True, **COMMON
    )
    seen, grid, result = run(ours, priv, rounds=3)
    assert not [r.error.reason for r in grid.replies if r.has_error()]
    assert 0 < max(gap(seen[k], seen_plain[k]) for k in seen_plain) <= TOL
    # every release carries two unmasked candidate groups of 3 that key holders accept
    key = crypto.load_private_key(priv)
    parts = crypto.bundle_from_record(result.arrays, key)
    groups = sorted(p for p in parts if p.startswith("model_g"))
    assert groups == ["model_g0", "model_g1"]
    opened = protocol.open_global(parts, key)
    assert opened.groups_tested == 0 or not opened.failed_groups
    sums = [crypto.decrypt(parts[g], key, divisor=parts[g].weight) for g in groups]
    full = crypto.decrypt(parts["model"], key, divisor=parts["model"].weight)
    for name in full:  # each group's mean is a mean of real updates, near the full mean
        assert all(np.abs(s[name] - full[name]).max() < 0.2 for s in sums)
    assert ours._masking is not None and ours.round_stats[3]["mask-cohort"] == len(NODES)


def test_masked_securefed_still_excludes_a_slot_claimer(packed_key_files):
    """Clean-cohort recovery works under masking: the attacker is found and excluded."""
    from cifer_flwr.constants import CFG_COHORT, CFG_SLOT

    priv, pub = packed_key_files
    attacker = NODES[-1]
    seen: dict = {}
    inner = make_client_app(seen, encrypted=True)

    def app(msg, context):
        config = msg.content.config_records.get("config")
        if context.node_id == attacker and config is not None and CFG_SLOT in config:
            config[CFG_SLOT] = (int(config[CFG_SLOT]) + 1) % int(config[CFG_COHORT])
        return inner(msg, context)

    grid = InProcessGrid(app, node_configs(priv, nodes=NODES))
    ours = strategies.SecureFed(
        public_key=pub, examples_per_client=EXAMPLES, min_cohort=3, masking=True, **COMMON
    )
    result = ours.start(grid=grid, initial_arrays=plain_initial(), num_rounds=6)
    assert ours.banned == {attacker}, ours.integrity_events
    assert result.train_metrics_clientapp[6]["cifer-released"] == 1


def test_resume_restarts_the_masking_of_the_next_round(packed_key_files, tmp_path):
    """A resumed run (a new Flower run: fresh client state) masks its rounds from scratch."""
    priv, pub = packed_key_files
    ckpt = tmp_path / "run.ckpt"
    seen_plain: dict = {}
    grid = InProcessGrid(make_client_app(seen_plain, encrypted=False), node_configs(priv, NODES))
    flwr_strategy.FedAvg(**COMMON).start(grid=grid, initial_arrays=plain_initial(), num_rounds=3)
    first = strategies.FedAvg(
        public_key=pub, examples_per_client=EXAMPLES, masking=True, checkpoint_path=ckpt, **COMMON
    )
    run(first, priv, rounds=2)  # "crashes" after round 2: only the checkpoint survives
    resumed = strategies.FedAvg(
        public_key=pub,
        examples_per_client=EXAMPLES,
        masking=True,
        checkpoint_path=ckpt,
        resume=True,
        **COMMON,
    )
    seen, _, result = run(resumed, priv, rounds=3)
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert resumed.round_stats[3]["mask-cohort"] == len(NODES)
    assert gap(seen[("evaluate", 3, 1)], seen_plain[("evaluate", 3, 1)]) <= TOL
