"""Importing TensorFlow before TenSEAL crashes SEAL; cifer refuses with an explanation."""

import subprocess
import sys

import pytest


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_crypto_after_tensorflow_is_refused_with_a_reason():
    pytest.importorskip("tensorflow")
    code = "import tensorflow\nfrom cifer_flwr import crypto\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "must be imported before tensorflow/keras" in res.stderr


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_crypto_before_tensorflow_works():
    pytest.importorskip("tensorflow")
    code = (
        "from cifer_flwr import crypto\nimport tensorflow\nimport numpy as np\n"
        "k = crypto.generate_key()\n"
        "print(crypto.decrypt(crypto.encrypt({'a': np.ones(2)}, k), k)['a'].sum())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert abs(float(res.stdout.strip().splitlines()[-1]) - 2.0) < 1e-6
