"""The TensorFlow and scikit-learn examples run in CI: their real ServerApp and ClientApp code,
in process over Flower's wire format, encrypted vs Flower's plaintext strategy.

The PyTorch example runs on a real deployment in tests/e2e/test_deployment.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifer_flwr.tooling.demo import find_example

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2


def run_example(name: str, key_files, tmp_path: Path, **config: object) -> dict:
    priv, pub = key_files
    out = tmp_path / f"{name}-{config.get('encryption')}-{config.get('strategy')}.json"
    pairs = [f"{k}={json.dumps(v)}" for k, v in {"num-server-rounds": ROUNDS, **config}.items()]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.examples.run_example",
            str(find_example(name)),
            str(priv),
            str(pub),
            str(out),
            *pairs,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def accuracies(results: dict) -> list[float]:
    return [row["accuracy"] for row in results["rounds"]]


@pytest.mark.parametrize(
    ("example", "module", "strategy"),
    [
        ("quickstart-sklearn", "sklearn", "fedavg"),
        ("quickstart-sklearn", "sklearn", "fedyogi"),
        pytest.param(
            "quickstart-tensorflow", "tensorflow", "fedavg", marks=pytest.mark.slow
        ),  # TensorFlow's start-up alone takes several seconds per process
    ],
)
def test_example_encrypted_matches_plaintext(example, module, strategy, key_files, tmp_path):
    pytest.importorskip(module)
    enc = run_example(example, key_files, tmp_path, encryption=True, strategy=strategy)
    plain = run_example(example, key_files, tmp_path, encryption=False, strategy=strategy)
    assert enc["encrypted"] is True and plain["encrypted"] is False
    assert len(enc["rounds"]) == len(plain["rounds"]) == ROUNDS
    acc_enc, acc_plain = accuracies(enc), accuracies(plain)
    # CKKS's ~1e-7 error never changes a prediction on these held-out splits
    assert acc_enc == pytest.approx(acc_plain, abs=0.01), (acc_enc, acc_plain)
    assert acc_enc[-1] > 0.5
    # the ciphertext rounds moved more bytes than the plaintext ones (it really was encrypted)
    assert enc["rounds"][0]["bytes-received"] > plain["rounds"][0]["bytes-received"]
