"""Numeric header fields beyond the float range are refused as CiferErrors (issue 18, item 6).

``math.isfinite(10**400)`` raises ``OverflowError``; JSON integers of up to 4 300 digits parse,
so a weight or scale of ``10**400`` (or ``-10**400``) reached it before. One check,
:func:`cifer_flwr.crypto.headers.finite_number`, is used by every such field.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr import securetrain as st
from cifer_flwr.crypto import container, paillier
from cifer_flwr.crypto.headers import finite_number
from cifer_flwr.exceptions import CiphertextFormatError

HUGE = [10**400, -(10**400), float("inf"), float("-inf"), float("nan")]


def _repack(data: bytes, **changes) -> bytes:
    header, blobs = container.unpack(data)
    header = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
    header.update(changes)
    return container.pack(container.unpack(data)[0]["kind"], header, blobs)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (0.5, True), (True, False), ("1", False), (None, False)]
    + [(v, False) for v in HUGE],
)
def test_finite_number(value, ok):
    assert finite_number(value) is ok


@pytest.mark.parametrize("weight", HUGE)
def test_ckks_header_weight(key, weight):
    data = crypto.to_bytes(crypto.encrypt({"w": np.ones(4)}, key))
    with pytest.raises(CiphertextFormatError, match="weight"):
        crypto.from_bytes(_repack(data, weight=weight), key)


@pytest.fixture(scope="module")
def paillier_key():
    return paillier.generate_key("paillier")


@pytest.mark.parametrize("weight", HUGE)
def test_paillier_header_weight(paillier_key, weight):
    data = paillier.to_bytes(paillier.encrypt({"w": np.ones(4)}, paillier_key))
    with pytest.raises(CiphertextFormatError, match="weight"):
        paillier.from_bytes(_repack(data, weight=weight), paillier_key)


@pytest.mark.parametrize("scale", HUGE)
def test_securetrain_model_scale(tmp_path, key, scale):
    path = st.save_encrypted(st.encrypt_model(st.LogisticModel.zeros(3), key), tmp_path / "m.enc")
    path.write_bytes(_repack(path.read_bytes(), scale=scale))
    with pytest.raises(CiphertextFormatError, match="scale"):
        st.load_encrypted_model(path, key)


def test_the_huge_values_really_overflow_math_isfinite():
    with pytest.raises(OverflowError):
        math.isfinite(10**400)
