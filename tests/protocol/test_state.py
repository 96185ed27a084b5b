"""FedOpt state encoding of protocol.py: pack/unpack and layout renaming are inverse pairs."""

import numpy as np
import pytest

from cifer_flwr import crypto, protocol
from cifer_flwr.crypto.encoding import flatten
from cifer_flwr.exceptions import ConfigError

MODEL = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}


def test_pack_unpack_round_trip_keeps_v_through_its_square_root():
    m = {k: a * 0.5 for k, a in MODEL.items()}
    v = {k: np.full(a.shape, 1e-6) for k, a in MODEL.items()}
    x2, m2, v2 = protocol.unpack_state(protocol.pack_state(MODEL, m, v))
    for k in MODEL:
        np.testing.assert_array_equal(x2[k], MODEL[k])
        np.testing.assert_array_equal(m2[k], m[k])
        np.testing.assert_allclose(v2[k], v[k], rtol=1e-12)


def test_state_layout_and_model_layout_are_inverse_and_match_pack_state():
    model, _ = flatten(MODEL)
    state = protocol.state_layout(model)
    assert protocol.model_layout(state) == model
    packed_x, _ = flatten(protocol.pack_state(MODEL, None, None))
    assert state == packed_x
    full, _ = flatten(protocol.pack_state(MODEL, MODEL, MODEL))
    assert full.names == protocol.state_names(model.names, moments=True)
    assert protocol.model_layout(full) == model


@pytest.mark.parametrize(
    "spec",
    [
        3,
        {"kind": "yogi"},
        {"kind": "sgd", "eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
        {"kind": "adam", "eta": -1.0, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
        {"kind": "adam", "eta": 0.1, "beta_1": 1.5, "beta_2": 0.99, "tau": 1e-3},
        {"kind": "adam", "eta": "0.1", "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    ],
)
def test_optimizer_settings_from_another_party_are_checked(spec):
    with pytest.raises(ConfigError):
        protocol.OptimizerSpec.from_dict(spec)


def test_optimizer_settings_round_trip():
    spec = protocol.OptimizerSpec("yogi", 0.01, 0.9, 0.99, 1e-3)
    assert protocol.OptimizerSpec.from_dict(spec.to_dict()) == spec


def test_a_pending_aggregate_that_does_not_match_the_state_is_refused(key):
    state = crypto.with_meta(
        crypto.encrypt(protocol.pack_state(MODEL, None, None), key),
        fedopt=protocol.OptimizerSpec("adam", 0.1, 0.9, 0.99, 1e-3).to_dict(),
    )
    other = crypto.with_meta(crypto.encrypt({"w": np.zeros(4)}, key), round=1)
    with pytest.raises(ConfigError, match="do not match"):
        protocol.materialize({"state": state, "model": other}, key)
