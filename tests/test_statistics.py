"""Federated feature statistics (docs/design.md §4.10): numpy as the oracle, hostile replies.

The round runs through the in-process Grid double (Flower's wire format both ways) with a
ClientApp that answers like the real ones (``answer_statistics`` behind ``ckks_mod``).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from cifer_flwr import crypto
from cifer_flwr import statistics as fstats
from cifer_flwr.exceptions import CiferError, RunFailedError
from cifer_flwr.mods import ckks_mod
from cifer_flwr.scaling import (
    STATS_RECORD,
    answer_statistics,
    exchange_statistics,
    stored_statistics,
)
from tests.strategies.harness import InProcessGrid

F = 5


def _rows(node: int) -> np.ndarray:
    """Rows of very different magnitudes per feature; one constant feature."""
    rng = np.random.default_rng(node)
    x = rng.normal(0, 1, (20 + 7 * node, F)) * [3e3, 1e-3, 1.0, 0.0, 250.0]
    return x + np.array([1e4, 0.05, -2.0, 7.25, 0.0])


def _app(encrypted: bool) -> ClientApp:
    app = ClientApp(mods=[ckks_mod] if encrypted else None)

    @app.query("cifer_stats")
    def stats(msg: Message, context: Context) -> Message:
        return answer_statistics(msg, context, _rows(context.node_id), encrypted=encrypted)

    return app


def _grid(key_files, encrypted: bool, nodes=(1, 2, 3), tamper=None) -> InProcessGrid:
    priv, _ = key_files
    configs = {n: {"private-key": str(priv)} for n in nodes}
    return InProcessGrid(_app(encrypted), configs, tamper)


def _oracle(nodes) -> tuple[np.ndarray, np.ndarray]:
    union = np.concatenate([_rows(n) for n in nodes])
    std = union.std(axis=0)
    std[std == 0] = 1.0
    return union.mean(axis=0), std


@pytest.mark.parametrize("preset", ["default", "packed", "none"])
def test_every_key_holder_gets_numpys_mean_and_std_of_the_union(key_files, tmp_path, preset):
    if preset == "packed":
        key = crypto.generate_key("packed")
        key_files = crypto.write_key_pair(key, tmp_path / "packed")
    grid = _grid(key_files, encrypted=preset != "none")
    save = tmp_path / "model.enc"
    done = exchange_statistics(
        grid,
        num_features=F,
        public_key=None if preset == "none" else str(key_files[1]),
        min_nodes=3,
        timeout=30,
        save_path=save,
    )
    assert done.contributors == done.ready == [1, 2, 3] and done.excluded == []
    mean, std = _oracle((1, 2, 3))
    for context in grid.contexts.values():
        stats = stored_statistics(context)
        assert stats is not None and stats.count == sum(len(_rows(n)) for n in (1, 2, 3))
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.std, std, rtol=1e-7)
    # the server saw only ciphertexts: every sums reply is an encrypted record
    if preset != "none":
        for reply in grid.replies[:3]:
            assert crypto.is_encrypted_record(reply.content.array_records[STATS_RECORD])
        # the saved total opens to the same scaling, for the private key only
        private = crypto.load_private_key(key_files[0])
        np.testing.assert_allclose(fstats.decrypt_scaling(done.path, private).std, std, rtol=1e-7)
        with pytest.raises(CiferError):
            fstats.decrypt_scaling(done.path, private.public())
    else:  # the plaintext baseline's server saw the sums: it writes the scaling beside
        assert done.path == fstats.plain_scaling_path(save)
        saved = fstats.read_plain_scaling(save)
        assert saved is not None and saved.count == stats.count
        np.testing.assert_allclose(saved.mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(saved.std, std, rtol=1e-7)


def _replace_sums(node: int, make) -> object:
    """A tamper hook: node ``node``'s sums reply (first push) becomes ``make(reply)``."""

    def tamper(call: int, replies: list[Message]) -> list[Message]:
        if call != 1:
            return replies
        return [make(r) if r.metadata.src_node_id == node else r for r in replies]

    return tamper


def _with_record(reply: Message, record: ArrayRecord, **extra) -> Message:
    reply.content[STATS_RECORD] = record
    for name, value in extra.items():
        reply.content[name] = value
    return reply


def _sums_of(key: crypto.AnyKey, features: int = F, scale: float = 1.0) -> crypto.AnyEncrypted:
    x = np.ones((4, features)) * scale
    return fstats.encrypt_sums(x, key, fstats.divisor_for(4))


@pytest.mark.parametrize(
    "hostile",
    ["other-key", "wrong-shape", "garbage", "extra-record", "two-encryptions", "plaintext"],
)
def test_a_hostile_sums_reply_is_excluded_and_the_others_still_scale(
    key_files, key, other_key, hostile
):
    def make(reply: Message) -> Message:
        good = reply.content.array_records[STATS_RECORD]
        if hostile == "other-key":
            return _with_record(reply, crypto.to_array_record(_sums_of(other_key)))
        if hostile == "wrong-shape":
            return _with_record(reply, crypto.to_array_record(_sums_of(key, features=F + 1)))
        if hostile == "garbage":
            bad = ArrayRecord({k: Array(np.frombuffer(b"\x00junk" * 9, np.uint8)) for k in good})
            return _with_record(reply, bad)
        if hostile == "extra-record":
            return _with_record(reply, good, extra=ConfigRecord({"x": 1}))
        if hostile == "two-encryptions":
            both = crypto.aggregate([_sums_of(key), _sums_of(key)])
            return _with_record(reply, crypto.to_array_record(both))
        plain = fstats.encode_sums(4, np.ones(F), np.ones(F), fstats.divisor_for(4))
        return _with_record(reply, ArrayRecord({k: Array(v) for k, v in plain.items()}))

    grid = _grid(key_files, True, nodes=(1, 2, 3, 4), tamper=_replace_sums(2, make))
    done = exchange_statistics(
        grid, num_features=F, public_key=str(key_files[1]), min_nodes=3, timeout=30
    )
    assert done.contributors == [1, 3, 4]
    assert [e["node"] for e in done.excluded] == [2], done.excluded
    mean, std = _oracle((1, 3, 4))  # node 2's rows are not in the statistics
    stats = stored_statistics(grid.contexts[1])
    assert stats is not None
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-7)


def test_too_few_valid_sums_fail_the_run_and_release_nothing(key_files):
    def drop_two(call: int, replies: list[Message]) -> list[Message]:
        return [r for r in replies if r.metadata.src_node_id == 1] if call == 1 else replies

    grid = _grid(key_files, True, tamper=drop_two)
    with pytest.raises(RunFailedError, match="1 of 3 clients sent valid sums"):
        exchange_statistics(
            grid, num_features=F, public_key=str(key_files[1]), min_nodes=2, timeout=30
        )
    assert len(grid.pushed) == 1  # no total was sent
    assert all(stored_statistics(c) is None for c in grid.contexts.values())


def test_key_holders_refuse_a_total_with_out_of_range_limbs(key, key_files):
    """A client that encrypts values it did not encode makes the total undecodable: refused."""

    def inflate(reply: Message) -> Message:
        arrays = fstats.encode_sums(4, np.ones(F), np.ones(F), fstats.divisor_for(3))
        arrays["sum"] = arrays["sum"] + 0.5 / 16  # half a limb: not limb / D
        return _with_record(reply, crypto.to_array_record(crypto.encrypt(arrays, key)))

    grid = _grid(key_files, True, tamper=_replace_sums(3, inflate))
    with pytest.raises(RunFailedError, match="key holders kept"):
        exchange_statistics(
            grid, num_features=F, public_key=str(key_files[1]), min_nodes=3, timeout=30
        )
    assert "not whole limb totals" in str(grid.replies[-1].error.reason)


def test_limbs_round_trip_exactly_and_huge_sums_are_refused():
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, 50) * 10.0 ** rng.integers(-8, 7, 50)
    arrays = fstats.encode_sums(7, values, values**2, 16)
    assert max(float(np.max(np.abs(a))) for a in arrays.values()) <= 32 / 16
    count, sums, _ = fstats.decode_sums(arrays, 16, 1)
    assert count == 7
    expected = np.round(np.ldexp(values, fstats.FRACTION_BITS))
    np.testing.assert_array_equal(np.array(sums, dtype=np.float64), expected)
    with pytest.raises(fstats.StatisticsError, match="rescale"):
        fstats.encode_sums(1, np.array([1e17]), np.array([1.0]), 16)


@pytest.mark.parametrize("layout", ["torch", "keras"])
def test_folding_the_scaling_gives_the_same_outputs_on_raw_rows(layout):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (30, 4)) * [1, 10, 100, 0.1]
    stats = fstats.FeatureStats(30, x.mean(axis=0), x.std(axis=0))
    w = rng.normal(size=(3, 4) if layout == "torch" else (4, 3))
    b = rng.normal(size=3)
    arrays = {"w": w, "b": b, "head": rng.normal(size=(2, 3))}
    folded = fstats.fold_first_layer(arrays, stats)
    assert folded is not None
    z = stats.standardize(x).astype(np.float64)

    def apply(a, rows):
        return rows @ (a["w"].T if layout == "torch" else a["w"]) + a["b"]

    np.testing.assert_allclose(apply(folded, x), apply(arrays, z), rtol=1e-5, atol=1e-5)
    assert folded["head"] is arrays["head"]
    square = {"w": rng.normal(size=(4, 4)), "b": b[:1].repeat(4)}
    assert fstats.fold_first_layer(square, stats) is None  # ambiguous input axis: beside
    conv = {"conv.weight": rng.normal(size=(3, 1, 2, 2)), "conv.bias": b}
    assert fstats.fold_first_layer(conv, stats) is None
