"""Masking on a real deployment: TLS, node authentication, signed advertisements (§4.9).

``cifer demo --masking``'s code path: packed keys, an Ed25519 identity per SuperNode and a
roster, the PyTorch example masked and encrypted, then Flower's plaintext FedAvg on the same
federation; every process started is stopped by PID.
"""

from __future__ import annotations

import pytest

from cifer_flwr.tooling.demo import run_demo
from cifer_flwr.tooling.federation import Federation

pytest.importorskip("torch")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(1800)  # two runs of 2 rounds; a loaded 2-core machine took 15 minutes
def test_masked_demo_on_a_tls_deployment_matches_plaintext(tmp_path):
    report = run_demo(tmp_path / "demo", nodes=3, rounds=2, masking=True, timeout=900)
    assert report.masking and report.stopped >= 4  # SuperLink + 3 SuperNodes
    rows = report.encrypted["rounds"]
    assert [r["released"] for r in rows] == [True, True]
    for row in rows:
        info = row["masking"]
        assert info["authenticated"] is True, info  # every advertisement signed, roster checked
        assert info["guarantee"] == "active server (roster)"
        assert info["cohort"] == 3 and info["dropped"] == 0
        assert not row["excluded"]
    # the masks cancel exactly: accuracy as Flower's plaintext FedAvg (packed quantization only)
    enc, plain = report.final_encrypted["accuracy"], report.final_plaintext["accuracy"]
    assert abs(enc - plain) <= 0.03, (enc, plain)
    assert not report.secret_hits and report.scanned > 0
    fed = Federation.load(tmp_path / "demo" / "federation")
    assert len(fed.processes) >= 4 and not any(fed.alive().values())  # stopped by PID
