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


def test_sigmoid_poly_is_the_first_order_taylor_polynomial():
    """``1/2 + x/4``: exact value and slope at 0, within 0.02 of the sigmoid on [-1, 1]."""
    x = np.linspace(-1, 1, 41)
    assert np.abs(sigmoid_poly(x) - 1 / (1 + np.exp(-x))).max() < 0.02
    assert sigmoid_poly(0.0) == 0.5
    assert (sigmoid_poly(1e-6) - sigmoid_poly(-1e-6)) / 2e-6 == pytest.approx(0.25)


def test_training_converges_from_any_start_where_the_cubic_diverged(cancer):
    """Issue 19: Kim et al.'s cubic ran away past ~6 iterations (0.37 at 20 from zero).

    The quadratic loss converges with the default step: 60 iterations agree with 30 and with
    the least-squares classifier it minimises (the oracle: numpy's lstsq on ``Z beta = 2``).
    """
    m30 = train_plaintext(cancer, iterations=30)
    m60 = train_plaintext(cancer, iterations=60)
    assert evaluate(m60, cancer)["accuracy"] >= 0.95
    assert np.abs(m60.decision_function(cancer.X)).max() < 20
    z = np.where(cancer.y[:, None] == 1, 1.0, -1.0) * np.c_[np.ones(len(cancer.y)), cancer.X]
    target = np.linalg.lstsq(z, np.full(len(cancer.y), 2.0), rcond=None)[0]
    lsq = LogisticModel.from_vector(target)
    agree = np.mean(m60.predict(cancer.X) == lsq.predict(cancer.X))
    assert agree >= 0.97
    assert np.mean(m30.predict(cancer.X) == m60.predict(cancer.X)) >= 0.97
    big = LogisticModel(np.full(30, 50.0), 300.0)  # scores in the thousands
    assert evaluate(train_plaintext(cancer, iterations=30, init=big), cancer)["accuracy"] >= 0.9


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
    assert depth_for(3) == 6
    assert iterations_for_depth(6) == 3
    assert params_for_iterations(1).poly_modulus_degree == 8192
    p3 = params_for_iterations(3)
    assert p3.poly_modulus_degree == 16384
    assert p3.depth >= 6
    assert p3.security_bits >= 128
    most = max_iterations()
    assert most >= 3
    with pytest.raises(UnsupportedOperationError, match=f"At most {most} iterations"):
        params_for_iterations(most + 1)
    assert period_for(569, 8192) == 1024
    assert period_for(20000, 8192) == 8192
