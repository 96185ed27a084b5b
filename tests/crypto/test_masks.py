"""Masking primitives: inverse pairs and the properties the protocol relies on (§4.9)."""

import itertools

import numpy as np
import pytest

from cifer_flwr.crypto import masks
from cifer_flwr.exceptions import MaskingError

T = 1073692673  # the packed plain modulus


def test_expand_mask_is_deterministic_uniform_and_in_range():
    seed = bytes(range(16))
    a = masks.expand_mask(seed, 200_000, T)
    assert (a == masks.expand_mask(seed, 200_000, T)).all()
    # masks accumulate: adding the same seed twice is twice the mask
    acc = np.zeros(200_000, np.int64)
    masks.add_mask(acc, seed, 1, T)
    masks.add_mask(acc, seed, 1, T)
    masks.add_mask(acc, bytes(16), -1, T)
    assert (acc == 2 * a - masks.expand_mask(bytes(16), 200_000, T)).all()
    assert a.min() >= 0 and a.max() < T
    # uniform on [0, T): mean T/2 and std T/sqrt(12) within 4 standard errors
    assert abs(a.mean() / T - 0.5) < 4 * (1 / np.sqrt(12)) / np.sqrt(len(a))
    assert abs(a.std() / T - 1 / np.sqrt(12)) < 0.003
    # 16 equal bins: chi-square with 15 degrees of freedom, far below the 1e-6 tail (~50)
    counts = np.bincount((a * 16 // T).astype(np.int64), minlength=16)
    chi2 = float((((counts - len(a) / 16) ** 2) / (len(a) / 16)).sum())
    assert chi2 < 50
    other = masks.expand_mask(bytes(16), 200_000, T)
    assert abs(np.corrcoef(a, other)[0, 1]) < 0.02


def test_expand_mask_rejects_instead_of_reducing():
    # modulus 3 keeps 2 bits: the value 3 must be rejected, never folded onto 0
    a = masks.expand_mask(bytes(16), 60_000, 3)
    counts = np.bincount(a, minlength=3)
    assert set(np.unique(a)) == {0, 1, 2}
    assert counts.max() / counts.min() < 1.05
    with pytest.raises(MaskingError):
        masks.expand_mask(b"short", 10, T)


def test_agree_is_symmetric_and_bound_to_info():
    a, pa = masks.new_exchange_key()
    b, pb = masks.new_exchange_key()
    assert masks.agree(a, pb, b"x") == masks.agree(b, pa, b"x")
    assert masks.agree(a, pb, b"x") != masks.agree(a, pb, b"y")
    with pytest.raises(MaskingError):
        masks.agree(a, bytes(32), b"x")  # a low-order point gives the all-zero secret


def test_shamir_round_trip_any_threshold_subset():
    secret = bytes(range(32))
    shares = masks.split_secret(secret, range(1, 8), 5)
    for subset in itertools.combinations(shares, 5):
        assert masks.combine_shares({x: shares[x] for x in subset}, 5, 32) == secret
    with pytest.raises(MaskingError):
        masks.combine_shares({x: shares[x] for x in list(shares)[:4]}, 5, 32)
    # four shares and a forged fifth rebuild garbage, refused by its width
    forged = {x: shares[x] for x in list(shares)[:4]} | {7: (12345).to_bytes(66, "big")}
    with pytest.raises(MaskingError):
        masks.combine_shares(forged, 5, 32)


def test_seal_open_round_trip_and_binding():
    key = masks.derive_key(b"k" * 32, b"channel", 32)
    sealed = masks.seal(key, b"shares", b"aad")
    assert masks.open_sealed(key, sealed, b"aad") == b"shares"
    with pytest.raises(MaskingError):
        masks.open_sealed(key, sealed, b"other aad")
    with pytest.raises(MaskingError):
        masks.open_sealed(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad")


def test_signatures():
    private, public = masks.new_identity()
    sig = masks.sign(private, b"advert")
    masks.verify(public, b"advert", sig)
    with pytest.raises(MaskingError):
        masks.verify(public, b"advert!", sig)
    with pytest.raises(MaskingError):
        masks.verify(masks.new_identity()[1], b"advert", sig)
