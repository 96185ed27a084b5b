"""``encryption=paillier`` through Hydra, the generic apps and the real client mod (§4.8)."""

from __future__ import annotations

import pytest

from cifer_flwr import crypto
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import compose
from tests.strategies.harness import run_generic_app

COMMON = "task=digits-sklearn num_rounds=3 federation.nodes=3 seed=1"


def _run(overrides: str, priv: str | None, pub: str | None) -> dict:
    return run_generic_app(compose(overrides.split()), priv, pub)[0]


@pytest.mark.slow
def test_paillier_run_reaches_the_plaintext_accuracy(tmp_path):
    # the real 2048-bit preset, generated the way `cifer run` generates it (launch.py)
    priv, pub = crypto.generate_key_pair("paillier", tmp_path / "keys")
    assert isinstance(crypto.load_public_key(pub), crypto.PaillierKey)
    enc = _run(f"encryption=paillier {COMMON}", str(priv), str(pub))
    plain = _run(f"encryption=none {COMMON}", None, None)
    assert enc["preset"] == "paillier" and enc["encrypted"]
    acc_enc, acc_plain = enc["rounds"][-1]["accuracy"], plain["rounds"][-1]["accuracy"]
    assert acc_plain > 0.85
    assert abs(acc_enc - acc_plain) <= 0.01, (acc_enc, acc_plain)
    assert enc["rounds"][-1]["client-encrypt-s"] > 0


def test_paillier_preset_is_valid_and_securefed_is_refused():
    exp = compose(f"encryption=paillier strategy=fedadam {COMMON}".split())
    assert exp.encryption.preset == "paillier"
    compose(f"encryption.preset=paillier-3072 {COMMON}".split())
    with pytest.raises(ConfigError, match="securefed needs a CKKS or packed key"):
        compose(f"encryption=paillier strategy=securefed {COMMON}".split())
