"""Sizes people can send (issue 19, item 3): seeded evaluation keys and seeded ciphertexts.

Oracle: the same key material serialized in full by TenSEAL (what cifer wrote before), and
the same value encrypted under the public key (which cannot be seeded). Seeding stores one of
the two polynomials of every key-switching key and ciphertext as a 64-byte seed, so the
seeded bytes are about half.
"""

from __future__ import annotations

import numpy as np

from cifer_flwr.crypto._protobuf import fields, payload
from cifer_flwr.crypto.linalg import (
    Ciphertext,
    encrypt_constant,
    encrypt_periodic,
    generate_training_key,
)
from cifer_flwr.securetrain.algorithm import params_for_iterations


def _evaluation_key_bytes(public_bytes: bytes) -> int:
    """Bytes of the relinearization (4) and Galois (5) keys in a TenSEAL context."""
    part = next(payload(raw) for number, _, raw in fields(public_bytes) if number == 2)
    return sum(len(raw) for number, _, raw in fields(part) if number in (4, 5))


def test_training_key_is_seeded_and_still_trains(train_key):
    pub = train_key.public()
    ctx = pub.context()
    assert ctx.has_relin_keys() and ctx.has_galois_keys()
    full = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True
    )
    seeded, expanded = _evaluation_key_bytes(pub.public_bytes), _evaluation_key_bytes(full)
    assert seeded < 0.6 * expanded, (seeded, expanded)
    # The seeded keys work: a product (relinearization) and a window sum (rotations).
    x = np.linspace(-2.0, 2.0, 200)
    ct = Ciphertext.from_bytes(encrypt_periodic(x, 256, train_key).to_bytes(), pub, 0)
    total = (ct * ct).window_sum(256).decrypt(train_key)[0]
    assert abs(total - float(np.sum(x * x))) < 1e-2


def test_key_holder_ciphertexts_are_seeded(train_key, train_public):
    seeded = encrypt_constant(0.75, train_key).to_bytes()
    full = encrypt_constant(0.75, train_public).to_bytes()
    assert len(seeded) < 0.6 * len(full), (len(seeded), len(full))
    back = Ciphertext.from_bytes(seeded, train_public, 0)
    assert abs(float(np.mean(back.decrypt(train_key))) - 0.75) < 1e-6
    assert (back * 2.0).level == 1  # arithmetic results serialize in full, as before


def test_default_key_is_a_third_of_the_old_default():
    """The old default (3 iterations at 3 levels each: depth 9, 11 primes, full keys) was
    229 MB for 569 samples; the estimate of today's default must be under a third of it."""
    from cifer_flwr.crypto.linalg import estimate_public_key_bytes
    from cifer_flwr.securetrain.algorithm import DEFAULT_ITERATIONS

    params = params_for_iterations(DEFAULT_ITERATIONS)
    assert estimate_public_key_bytes(params, 1024) < 229e6 / 3
    key = generate_training_key(params_for_iterations(1), max_period=1024)
    assert len(key.public_bytes) <= 1.25 * estimate_public_key_bytes(key.params, 1024)
