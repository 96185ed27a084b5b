"""One results schema (cifer.results/1) and writer for the examples and the generic app;
one progress line per round on Flower's logger; the public decrypt_global_model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.apps.results import (
    RESULT_KEYS,
    RESULTS_FORMAT,
    ROUND_KEYS,
    ResultsWriter,
    format_round,
    round_row,
    write_results,
)
from cifer_flwr.apps.run import run_strategy
from cifer_flwr.apps.runconfig import make_strategy
from cifer_flwr.exceptions import CiferError, KeyMismatchError, KeyTypeError
from cifer_flwr.experiments.app import server_app
from cifer_flwr.experiments.app.client_app import app as generic_client_app
from cifer_flwr.experiments.config import compose
from tests.strategies.harness import (
    INITIAL,
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
)

ROUNDS = 2


def _context(run_config: dict) -> Context:
    return Context(run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def _example_run(tmp_path, key_files, *, encrypted: bool) -> dict:
    """The examples' path: apps.make_strategy + apps.run_strategy (as server_app.py does)."""
    priv, pub = key_files
    results = tmp_path / f"example-{encrypted}.json"
    cfg = {
        "num-server-rounds": ROUNDS,
        "results-path": str(results),
        "encryption": encrypted,
        "strategy": "fedavgm",
        "server-momentum": 0.5,
        "min-nodes": 3,
        **({"public-key": str(pub)} if encrypted else {}),
    }
    client = make_client_app({}, encrypted=encrypted)
    grid = InProcessGrid(client, node_configs(priv))
    run_strategy(make_strategy(cfg), grid, _context(cfg), plain_initial(), app_name="example")
    return json.loads(results.read_text())


def _generic_run(tmp_path, key_files, overrides: str) -> dict:
    """The generic app's path: its ServerApp main on an in-process grid of its ClientApps."""
    priv, pub = key_files
    results = tmp_path / "generic.json"
    run_config = {
        "hydra-overrides": overrides,
        "results-path": str(results),
        "public-key": str(pub),
    }
    grid = InProcessGrid(
        generic_client_app,
        {
            n + 1: {"partition-id": n, "num-partitions": 3, "private-key": str(priv)}
            for n in range(3)
        },
    )
    for ctx in grid.contexts.values():
        ctx.run_config = run_config
    server_app.main(grid, _context(run_config))
    return json.loads(results.read_text())


def _check_schema(doc: dict) -> None:
    assert tuple(doc) == RESULT_KEYS
    assert doc["format"] == RESULTS_FORMAT and doc["status"] == "ok"
    assert [r["round"] for r in doc["rounds"]] == list(range(1, ROUNDS + 1))
    for row in doc["rounds"]:
        assert tuple(row) == ROUND_KEYS


def _progress_lines(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flwr" and r.getMessage().startswith("[cifer] round ")
    ]


def test_examples_and_generic_app_write_one_schema_and_log_each_round(tmp_path, key_files, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    example = _example_run(tmp_path, key_files, encrypted=True)
    example_lines = _progress_lines(caplog)
    caplog.clear()
    generic = _generic_run(
        tmp_path,
        key_files,
        f"task=digits-sklearn strategy=fedavgm num_rounds={ROUNDS} federation.nodes=3",
    )
    generic_lines = _progress_lines(caplog)
    for doc in (example, generic):
        _check_schema(doc)
        assert doc["strategy"] == "fedavgm" and doc["encrypted"] and doc["run-id"] == 5
        assert doc["strategy-class"] == "cifer_flwr.strategies.fedavgm.FedAvgM"
        assert doc["key-fingerprint"] and doc["preset"] and doc["num-rounds"] == ROUNDS
        assert doc["topology"] == "centralized" and doc["nodes"] == 3
        assert all(r["bytes-sent"] > 0 and r["round-s"] > 0 for r in doc["rounds"])
    assert example["app"] == "example" and example["config"] is None
    assert generic["app"] == server_app.APP_NAME
    assert compose(generic["config"]) == compose(generic["run-config"]["hydra-overrides"])
    assert generic["task"] == "digits-sklearn"
    assert generic["rounds"][-1]["accuracy"] > 0.8
    # one line per round, on Flower's logger (what `flwr log RUN_ID` shows)
    for lines, doc in ((example_lines, example), (generic_lines, generic)):
        assert lines == [format_round(r, ROUNDS) for r in doc["rounds"]]
    assert generic_lines[0].startswith(
        f"[cifer] round 1/{ROUNDS}: replies 3 accepted, 0 excluded, accuracy 0."
    )
    assert all(r["released"] is True and r["accepted"] == 3 for r in generic["rounds"])
    assert " MB, " in generic_lines[0] and generic_lines[0].endswith(" s")


def test_plaintext_baseline_and_p2p_rows_have_the_same_keys(tmp_path, key_files, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    plain = _example_run(tmp_path, key_files, encrypted=False)
    _check_schema(plain)
    assert plain["strategy-class"] == "flwr.serverapp.strategy.fedavgm.FedAvgM"
    assert not plain["encrypted"] and plain["key-fingerprint"] is None
    caplog.clear()
    p2p = _generic_run(
        tmp_path,
        key_files,
        f"task=digits-sklearn topology=p2p encryption=none num_rounds={ROUNDS} federation.nodes=3",
    )
    _check_schema(p2p)
    assert p2p["topology"] == "p2p" and p2p["rounds"][-1]["consensus-distance"] is not None
    assert len(_progress_lines(caplog)) == ROUNDS


def test_a_failing_generic_run_writes_an_error_document(tmp_path, key_files):
    with pytest.raises(CiferError):
        _generic_run(tmp_path, key_files, "strategy=fedavgm strategy.server_momentum=1.5")
    doc = json.loads((tmp_path / "generic.json").read_text())
    assert tuple(doc) == RESULT_KEYS and doc["status"] == "error"
    assert "server_momentum" in doc["error"] and doc["rounds"] == []


def test_the_writer_refuses_documents_outside_the_schema(tmp_path):
    writer = ResultsWriter(tmp_path / "r.json", app="x")
    with pytest.raises(CiferError, match="not a top-level key"):
        writer.update(accuracy=1.0)
    with pytest.raises(CiferError, match="outside"):
        round_row({"round": 1, "acc": 0.5})
    with pytest.raises(CiferError, match="differing"):
        write_results(tmp_path / "r.json", {"format": RESULTS_FORMAT, "rounds": []})
    writer.write("ok", [{"round": 1, "accuracy": 0.5}])
    doc = json.loads((tmp_path / "r.json").read_text())
    assert tuple(doc["rounds"][0]) == ROUND_KEYS and doc["rounds"][0]["accuracy"] == 0.5


# ------------------------------------------------------------------ decrypt_global_model
def test_decrypt_global_model_round_trip(tmp_path, key, key_files, public_key):
    priv, _ = key_files
    enc = crypto.encrypt(INITIAL, public_key)
    data = crypto.bundle_to_bytes({"model": enc})
    path = tmp_path / "model.enc"
    path.write_bytes(data)
    for model in (path, str(path), data):
        for private in (priv, key):
            out = protocol.decrypt_global_model(model, private)
            assert set(out) == set(INITIAL)
            for name, value in INITIAL.items():
                np.testing.assert_allclose(out[name], value, atol=1e-4)
    with pytest.raises(KeyTypeError):
        protocol.decrypt_global_model(data, public_key)


def test_decrypt_global_model_applies_the_deferred_step(tmp_path, key, key_files, other_key):
    """FedAvgM saves (x, m) and the pending aggregate: the result is the stepped model."""
    priv, pub = key_files
    save = tmp_path / "final.enc"
    strategy = strategies.FedAvgM(
        public_key=pub, save_path=save, server_momentum=0.5, min_available_nodes=3
    )
    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv))
    result = strategy.start(grid=grid, initial_arrays=plain_initial(), num_rounds=2)
    expected, _ = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)
    got = protocol.decrypt_global_model(save, priv)
    assert set(got) == set(INITIAL)
    for name in got:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6)
        assert not np.allclose(got[name], INITIAL[name], atol=1e-3)  # it trained
    with pytest.raises(KeyMismatchError):
        protocol.decrypt_global_model(save, other_key)


# ------------------------------------------------------------------ failures are failures
def _foreign_key_run(tmp_path, key_files, other_key, *, generic: bool) -> tuple[dict, Exception]:
    """Every node holds another key pair's private key than the server's public key."""
    foreign, _ = crypto.write_key_pair(other_key, tmp_path / "foreign")
    _, pub = key_files
    with pytest.raises(CiferError) as info:
        if generic:
            _generic_run(
                tmp_path,
                (foreign, pub),
                f"task=digits-sklearn strategy=fedavg num_rounds={ROUNDS} federation.nodes=3",
            )
        else:
            _example_run(tmp_path, (foreign, pub), encrypted=True)
    name = "generic.json" if generic else "example-True.json"
    return json.loads((tmp_path / name).read_text()), info.value


@pytest.mark.parametrize("generic", [False, True], ids=["example", "generic-app"])
def test_a_run_that_released_nothing_is_an_error_naming_the_cause(
    tmp_path, key_files, other_key, generic
):
    doc, exc = _foreign_key_run(tmp_path, key_files, other_key, generic=generic)
    assert doc["status"] == "error"
    assert [r["released"] for r in doc["rounds"]] == [False] * ROUNDS
    assert all(r["accepted"] == 0 for r in doc["rounds"])
    for text in (doc["error"], str(exc)):
        assert "no round released an aggregate" in text
        assert "every client refused" in text and "key" in text.lower()
    assert f"{ROUNDS} of {ROUNDS} rounds" in doc["error"]


def test_a_run_whose_last_rounds_released_nothing_is_an_error():
    from cifer_flwr.apps.results import run_failure

    ok = {"released": True, "train-replies": 3, "accepted": 3, "errors": [], "excluded": []}
    bad = {
        "released": False,
        "train-replies": 3,
        "accepted": 1,
        "errors": [],
        "excluded": [{"node": 2, "reason": "stale round"}, {"node": 3, "reason": "stale round"}],
    }
    rows = [round_row({"round": r, **(ok if r <= 2 else bad)}) for r in range(1, 5)]
    cause = run_failure(rows, 4)
    assert cause is not None and "rounds 3-4 released nothing" in cause
    assert "stale round" in cause
    # some clients refuse the key, the one valid update left is below the minimum
    refused = {
        "released": False,
        "train-replies": 3,
        "accepted": 1,
        "errors": [
            {"node": n, "phase": "train", "reason": "key mismatch: fingerprint a vs b."}
            for n in (1, 2)
        ],
        "excluded": [],
    }
    cause = run_failure([round_row({"round": 1, **refused})], 1)
    assert cause is not None and "2 of 3 client replies refused the server's key" in cause
    assert "1 valid updates left are fewer than" in cause
    assert run_failure(rows[:3], 3) is None  # one failed round at the end is a warning only
    assert run_failure([round_row({"round": 1, **ok})], 1) is None
    # plaintext / p2p rows (no 'released'): no verdict
    assert run_failure([round_row({"round": 1})], 1) is None
