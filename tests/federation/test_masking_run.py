"""``strategy.masking=true`` through Hydra, the generic apps and the real client mod (§4.9)."""

from __future__ import annotations

import pytest

from cifer_flwr import crypto
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.experiments.config import compose
from tests.strategies.harness import run_generic_app

COMMON = "task=digits-sklearn num_rounds=2 federation.nodes=4 seed=1 encryption.preset=packed"


@pytest.mark.slow  # two 2-round runs of 4 nodes: ~10 s idle, 23 s on a loaded machine
def test_masked_cifer_run_matches_the_unmasked_run_and_reports_masking(tmp_path):
    priv, pub = crypto.generate_key_pair("packed", tmp_path / "keys")
    masked = run_generic_app(compose(f"strategy.masking=true {COMMON}".split()), priv, pub)[0]
    plain = run_generic_app(compose(COMMON.split()), priv, pub)[0]
    assert [r["released"] for r in masked["rounds"]] == [True, True]
    for row in masked["rounds"]:
        info = row["masking"]
        assert info["cohort"] == 4 and info["dropped"] == 0 and info["bytes"] > 0
        assert info["authenticated"] is False  # no roster: said in every row
        assert info["guarantee"] == "honest-but-curious server"
        # the masking stages are metered apart: train replies are the 4 uploads only
        assert row["train-replies"] == 4 and row["round-s"] > 0
    assert all(row["masking"] is None for row in plain["rounds"])
    # the masks cancel exactly: the same accuracy as the unmasked packed run
    acc_masked, acc_plain = masked["rounds"][-1]["accuracy"], plain["rounds"][-1]["accuracy"]
    assert acc_plain > 0.8
    assert abs(acc_masked - acc_plain) <= 0.01, (acc_masked, acc_plain)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ("strategy.masking=true task=digits-sklearn", "preset packed"),
        ("strategy.masking=true encryption=none task=digits-sklearn", "preset packed"),
        ("strategy=securefed strategy.masking=true encryption=ckks", "preset packed"),
    ],
)
def test_masking_is_refused_before_anything_starts(overrides, match):
    with pytest.raises(ConfigError, match=match):
        compose(overrides.split())
