"""The shared algorithm: oracle behaviour and parameter planning."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr.exceptions import ConfigError, FeatureMismatchError, UnsupportedOperationError
from cifer_flwr.securetrain import LogisticModel, evaluate, sigmoid_poly, train_plaintext
from cifer_flwr.securetrain.algorithm import (
    depth_for,
    iterations_for_depth,
    max_iterations,
    nesterov_etas,
    params_for_iterations,
    period_for,
)


def test_sigmoid_poly_is_the_least_squares_fit_on_minus8_8():
    x = np.linspace(-8, 8, 161)
    assert np.abs(sigmoid_poly(x) - 1 / (1 + np.exp(-x))).max() < 0.12
    assert sigmoid_poly(0.0) == 0.5


def test_nesterov_etas():
    etas = nesterov_etas(4)
    assert etas[0] == 0.0
    assert all(e < 0 for e in etas[1:])


def test_plaintext_oracle_learns(cancer):
    model = train_plaintext(cancer, iterations=3, learning_rate=0.2)
    assert evaluate(model, cancer)["accuracy"] >= 0.9
    # Continuing from a model is the same as running more iterations only for k=1 steps.
    one = train_plaintext(cancer, iterations=1, learning_rate=0.2)
    assert not np.allclose(one.weight, 0)


def test_oracle_errors(cancer):
    with pytest.raises(ConfigError):
        train_plaintext(cancer, iterations=0)
    with pytest.raises(ConfigError):
        train_plaintext(cancer, learning_rate=-1)
    with pytest.raises(FeatureMismatchError):
        train_plaintext(cancer, init=LogisticModel.zeros(3))


def test_parameter_planning():
    assert depth_for(3) == 9
    assert iterations_for_depth(9) == 3
    assert params_for_iterations(1).poly_modulus_degree == 8192
    p3 = params_for_iterations(3)
    assert p3.poly_modulus_degree == 16384
    assert p3.depth >= 9
    assert p3.security_bits >= 128
    most = max_iterations()
    assert most >= 3
    with pytest.raises(UnsupportedOperationError, match=f"At most {most} iterations"):
        params_for_iterations(most + 1)
    assert period_for(569, 8192) == 1024
    assert period_for(20000, 8192) == 8192
