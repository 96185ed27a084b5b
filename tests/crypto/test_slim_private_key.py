"""securetrain's private key file omits the evaluation keys (``Key.slim``, issue 19 item 3).

The key holder only encrypts and decrypts; the relinearization and Galois keys, nearly all of a
training key's public material, go to ``public.key`` only.
"""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.constants import KIND_KEY
from cifer_flwr.crypto import container
from cifer_flwr.crypto.keys import load_private_key, load_public_key, parse_key, write_key_pair
from cifer_flwr.crypto.linalg import generate_training_key, has_training_keys
from cifer_flwr.exceptions import KeyFileError, KeyMismatchError, KeyTypeError


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    key = generate_training_key(crypto.for_depth(2, scale_bits=30), max_period=64)
    return key, write_key_pair(key, tmp_path_factory.mktemp("slim") / "train")


def test_the_private_file_is_small_and_still_decrypts_what_the_public_key_encrypts(pair):
    key, (priv, pub) = pair
    full = len(key.public_bytes) + len(key._private_bytes or b"")  # what the file held before
    assert priv.stat().st_size < full / 3  # the evaluation keys are not in it
    private, public = load_private_key(priv), load_public_key(pub)
    assert private.fingerprint == public.fingerprint == key.fingerprint
    assert has_training_keys(public) and not has_training_keys(private.public())
    x = {"w": np.linspace(-1, 1, 7)}
    for enc in (crypto.encrypt(x, public), crypto.encrypt(x, private)):
        assert enc.fingerprint == public.fingerprint
        np.testing.assert_allclose(crypto.decrypt(enc, private)["w"], x["w"], atol=1e-4)
    # a public key derived from the slim file lacks the evaluation keys: never written
    with pytest.raises(KeyTypeError, match=r"public\.key written with it"):
        private.public().to_bytes()
    # a loaded slim private key written again stays a loadable slim private key
    assert parse_key(private.to_bytes(), "rewritten").fingerprint == key.fingerprint


def _altered(priv, **changes) -> bytes:
    header, blobs = container.unpack(priv.read_bytes(), kind=KIND_KEY)
    header = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
    return container.pack(KIND_KEY, {**header, **changes}, blobs)


def test_the_fingerprint_a_slim_file_claims_is_checked_at_first_use(pair):
    """It cannot be recomputed without the evaluation keys: a ciphertext of the real public
    key is then refused by name, never decrypted with a wrong claim."""
    key, (priv, pub) = pair
    forged = parse_key(_altered(priv, fingerprint="0" * 32), "forged")
    enc = crypto.encrypt({"w": np.ones(3)}, load_public_key(pub))
    with pytest.raises(KeyMismatchError):
        crypto.decrypt(enc, forged)
    with pytest.raises(KeyFileError, match="malformed key fingerprint"):
        parse_key(_altered(priv, fingerprint="not hex"), "forged")


@pytest.mark.parametrize("field", ["public_digest", "private"])
def test_an_altered_slim_header_is_refused(pair, field):
    key, (priv, _) = pair
    header, blobs = container.unpack(priv.read_bytes(), kind=KIND_KEY)
    assert "public_digest" in header
    header = dict(header)
    header.pop("kind", None)
    header.pop("blobs_sha256", None)
    if field == "private":
        header["private"] = False
        blobs = blobs[:1]
    else:
        header[field] = "0" * 32
    with pytest.raises(KeyFileError):
        parse_key(container.pack(KIND_KEY, header, blobs), "altered")
