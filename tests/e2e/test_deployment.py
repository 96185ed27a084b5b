"""The PyTorch example on a real deployment: SuperLink + SuperNodes, TLS, node authentication.

One federation (module fixture) serves every test; its teardown stops every process by PID.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from cifer_flwr import crypto, statistics
from cifer_flwr.tooling.demo import evaluate_with_example, find_example
from cifer_flwr.tooling.federation import Federation, up
from cifer_flwr.tooling.federation.audit import find_secret_key
from cifer_flwr.tooling.federation.processes import descendants, is_alive
from cifer_flwr.tooling.federation.runs import run_app
from tests.examples.test_examples import run_example

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

ROUNDS = 2  # round 2 starts from round 1's aggregate (and FedYogi's moments): enough here
EXAMPLE = find_example("quickstart-pytorch")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = crypto.write_key_pair(crypto.generate_key("default"), d / "fed")
    wrong, _ = crypto.write_key_pair(crypto.generate_key("default"), d / "other")
    return priv, pub, wrong


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, keys):
    priv, pub, _ = keys
    fed = up(
        tmp_path_factory.mktemp("fed") / "federation",
        nodes=2,
        tls=True,
        auth=True,
        private_key=priv,
        public_key=pub,
    )
    try:
        yield fed
    finally:
        fed.stop()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _run(fed: Federation, name: str, **config):
    out = fed.directory.parent / name
    lines: list[str] = []
    outcome = run_app(
        fed,
        EXAMPLE,
        {"num-server-rounds": ROUNDS, **config},
        timeout=400,
        results_path=out.with_suffix(".json"),
        on_round=lines.append,
    )
    assert outcome.status == "finished:completed", (outcome.status, outcome.log_path)
    assert outcome.completed, outcome.errors
    # one progress line per round reached the caller while the run went on (issue 22)
    n = len(outcome.results["rounds"])
    assert [line.split(":")[0] for line in lines] == [
        f"[cifer] round {r}/{n}" for r in range(1, n + 1)
    ], lines
    assert all(" accepted, " in line or "replies " in line for line in lines), lines
    return outcome.results


def test_tls_and_auth_are_on(deployment):
    assert deployment.tls and deployment.auth
    assert deployment.address.startswith("127.0.0.1:")
    args = deployment.processes[0].args
    assert "--enable-supernode-auth" in args and "--ssl-certfile" in args
    assert "--insecure" not in args
    assert all(p.role != "superlink" or "--insecure" not in p.args for p in deployment.processes)


def test_unregistered_supernode_is_refused(deployment):
    node = deployment.start_supernode(0, role="unregistered", register=False)
    deadline = time.monotonic() + 60
    while is_alive(node.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not is_alive(node.pid), "a SuperNode with an unregistered key kept running"
    log = Path(node.log).read_text()
    assert "Failed to activate SuperNode" in log or "305" in log, log[-2000:]
    online = [n for n in deployment.nodes() if n.get("status") == "online"]
    assert len(online) == 2


# The plaintext oracle: Flower's strategy on this deployment (FedAvg), or the example's own
# ServerApp and ClientApp in process (FedYogi, tests/examples/run_example.py): the same
# partitions and seeds give the same per-round accuracy and bytes as a deployment run, in
# seconds instead of a minute, and the deployment's plaintext path is the same for both.
@pytest.mark.parametrize(
    ("strategy", "plain_on"),
    [("fedavg", "deployment"), ("fedyogi", "in-process")],
    ids=["fedavg", "fedyogi"],
)
def test_encrypted_run_matches_plaintext(deployment, keys, strategy, plain_on, tmp_path):
    priv, pub, _ = keys
    model = deployment.directory.parent / f"{strategy}.enc"
    enc = _run(
        deployment,
        f"{strategy}-enc",
        strategy=strategy,
        encryption=True,
        **{"public-key": str(pub), "save-path": str(model)},
    )
    if plain_on == "deployment":
        plain_model = deployment.directory.parent / f"{strategy}-plain.npz"
        plain = _run(
            deployment,
            f"{strategy}-plain",
            strategy=strategy,
            encryption=False,
            **{"save-path": str(plain_model)},
        )
    else:  # results outside the deployment's directory: not one of its runs
        plain_model = tmp_path / f"{strategy}-plain.npz"
        plain = run_example(
            EXAMPLE.name,
            (priv, pub),
            tmp_path,
            strategy=strategy,
            encryption=False,
            **{"num-server-rounds": ROUNDS, "save-path": str(plain_model)},
        )
    assert enc["encrypted"] and not plain["encrypted"]
    assert enc["strategy-class"].startswith("cifer_flwr.strategies")
    assert plain["strategy-class"].startswith("flwr.serverapp.strategy")
    for rows in (enc["rounds"], plain["rounds"]):
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        assert all(r["errors"] == [] and r["excluded"] == [] for r in rows)
        assert all(r["train-replies"] == 2 for r in rows)
    # ciphertexts are bigger than the plaintext model, and the server only ever added them
    assert enc["rounds"][0]["bytes-sent"] > 2 * plain["rounds"][0]["bytes-sent"]
    assert all(r["aggregate-s"] is not None for r in enc["rounds"])

    run_config = enc["run-config"]
    # the nodes scaled their raw rows with the federation's statistics (§4.10); the CNN's
    # first layer (a convolution) cannot absorb them, so the scaling comes beside the model
    arrays, scaling = statistics.decrypt_model_and_scaling(model, priv)
    assert scaling is not None and scaling.num_features == 64
    decrypted = evaluate_with_example(EXAMPLE, arrays, run_config, scaling)
    plain_scaling = statistics.read_plain_scaling(plain_model)
    baseline = evaluate_with_example(EXAMPLE, _load_npz(plain_model), run_config, plain_scaling)
    assert abs(decrypted["accuracy"] - baseline["accuracy"]) <= 0.02, (decrypted, baseline)
    assert decrypted["accuracy"] > 0.5
    # on raw held-out rows, within 1 point of the run's own evaluation on standardised rows
    assert abs(decrypted["accuracy"] - enc["rounds"][-1]["accuracy"]) <= 0.01, decrypted
    # per-round federated accuracy agrees too
    for e, p in zip(enc["rounds"], plain["rounds"], strict=True):
        assert abs(e["accuracy"] - p["accuracy"]) <= 0.02

    # nothing the server side can read holds the secret key
    fed = deployment.directory
    server_side = [
        fed / "home" / "superlink",
        fed / "logs" / "superlink.log",
        fed / "flwr-home",
        fed.parent / f"{strategy}-enc.json",
        fed.parent / f"{strategy}-enc.log",
        model,
        statistics.scaling_path(model),
    ]
    hits, scanned = find_secret_key(server_side, priv)
    assert scanned >= 5 and hits == []
    # the scan does find the key where it is (the check is not vacuous)
    assert find_secret_key([priv], priv)[0] == [priv]


def test_wrong_private_key_is_excluded_and_run_completes(deployment, keys):
    _, pub, wrong = keys
    deployment.start_supernode(1, role="wrong-key", private_key=wrong)
    deployment.wait_nodes_online(3, timeout=60)
    res = _run(
        deployment,
        "wrong-key",
        strategy="fedavg",
        encryption=True,
        **{"num-server-rounds": 2, "public-key": str(pub)},
    )
    for row in res["rounds"]:
        reasons = [e["reason"] for e in row["excluded"]]
        assert len(reasons) == 1, row
        assert "key" in reasons[0].lower() and "fingerprint" in reasons[0].lower(), reasons
        assert row["train-replies"] == 3
        assert row["accuracy"] is not None
    assert res["rounds"][-1]["accuracy"] > 0.5


def test_another_key_pairs_public_key_fails_the_run_naming_the_cause(deployment, keys):
    """The server's key is another pair's: the statistics round before round 1 finds every
    node's sums (all but one, after the wrong-key test added the node holding that pair's
    private key) under another key, releases nothing and fails the run naming the cause."""
    _, _, wrong = keys
    lines: list[str] = []
    bad = run_app(
        deployment,
        EXAMPLE,
        {
            "num-server-rounds": 2,
            "encryption": True,
            "public-key": str(wrong.parent / crypto.PUBLIC_KEY_FILE),  # not the nodes' pair
        },
        timeout=300,
        results_path=deployment.directory.parent / "foreign-key.json",
        on_round=lines.append,
    )
    assert bad.status == "finished:failed" and not bad.completed
    assert "feature statistics" in bad.errors[0], bad.errors
    assert "fewer than the minimum 2" in bad.errors[0], bad.errors
    assert "key fingerprint" in bad.errors[0], bad.errors  # the cause: another key pair
    assert lines == []  # no round started


def test_failed_server_app_is_reported_and_cifer_runs_lists_the_runs(deployment, keys):
    """A ServerApp failure reaches the user as its exception line; `cifer runs` reads Flower."""
    import json
    import subprocess
    import sys

    # the completed runs of this module's earlier tests (their results files name the run
    # ids); run one only when this test runs alone
    def completed_ids():
        files = deployment.directory.parent.glob("*.json")
        found = [json.loads(f.read_text()) for f in files]
        return {str(r["run-id"]) for r in found if r.get("status") == "ok" and "run-id" in r}

    if not completed_ids():
        _run(
            deployment, "listed-ok", strategy="fedavg", encryption=False, **{"num-server-rounds": 1}
        )
    ok_ids = completed_ids()
    bad = run_app(
        deployment,
        EXAMPLE,
        {"num-server-rounds": 1, "public-key": "keys/demo/public.key"},  # relative: refused
        timeout=300,
        results_path=deployment.directory.parent / "relative-key.json",
    )
    assert bad.status == "finished:failed" and not bad.completed
    assert "must be an absolute path" in bad.errors[0], bad.errors
    assert "wrote no results" not in bad.errors[0]
    assert f"flwr log {bad.run_id} {deployment.connection} --stream" in bad.errors[0]

    cifer = [sys.executable, "-m", "cifer_flwr.cli", "runs", "--dir", str(deployment.directory)]
    res = subprocess.run([*cifer, "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # one listed run failed
    rows = {r["run-id"]: r for r in json.loads(res.stdout)}
    assert rows[str(bad.run_id)]["status"] == "finished:failed"
    assert "absolute path" in rows[str(bad.run_id)]["details"]
    assert rows[str(bad.run_id)]["app"].startswith("cifer/quickstart-pytorch")
    assert rows[str(bad.run_id)]["finished-at"]
    assert ok_ids and {rows[i]["status"] for i in ok_ids} == {"finished:completed"}
    one = subprocess.run([*cifer, "--run-id", str(bad.run_id)], capture_output=True, text=True)
    assert one.returncode == 1 and str(bad.run_id) in one.stdout and "absolute path" in one.stdout
    assert "Traceback" not in one.stderr


def test_teardown_stops_every_process(deployment):
    pids = [p.pid for p in deployment.processes]
    family = pids + descendants(pids)
    assert any(is_alive(p) for p in pids)
    deployment.stop()
    assert [p for p in family if is_alive(p)] == []
    assert not any(deployment.alive().values())
