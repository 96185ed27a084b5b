"""Hostile ciphertexts, headers, records, bundles and key files (docs/design.md §5).

Every object here is built for real (TenSEAL/SEAL bytes rewritten the way an attacker would)
and must raise the right CiferError subclass. Anything that could crash the interpreter
(the inputs that segfaulted TenSEAL before validation) runs in a subprocess whose clean exit
is asserted.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from cifer_flwr import crypto
from cifer_flwr.constants import KIND_ENCRYPTED_BUNDLE, KIND_KEY
from cifer_flwr.crypto import container
from cifer_flwr.crypto._protobuf import encode_varint, fields, length_delimited, payload, varint
from cifer_flwr.crypto.keys import fingerprint_of
from cifer_flwr.crypto.validation import max_raw_ciphertext_bytes
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    KeyFileError,
    KeyMismatchError,
    LayoutMismatchError,
)

ROOT = Path(__file__).resolve().parents[2]
SEAL_HEADER = struct.Struct("<HBBBBHQ")


# ----------------------------------------------------------------------------- builders


def vector_message(size: int, scale: float, seal: bytes | None) -> bytes:
    """A TenSEAL CKKSVectorProto: sizes (packed), ciphertexts, scale."""
    out = length_delimited(1, encode_varint(size))
    if seal is not None:
        out += length_delimited(2, seal)
    return out + encode_varint(3 << 3 | 1) + struct.pack("<d", scale)


def split_vector(blob: bytes) -> tuple[int, bytes, float]:
    parts = {number: raw for number, _, raw in fields(blob)}
    size, _ = varint(payload(parts[1]), 0)
    (scale,) = struct.unpack("<d", parts[3][1:])
    return size, payload(parts[2]), scale


def uncompressed_seal(ct, coefficients: list[int]) -> bytes:
    """SEAL ``Ciphertext::save`` output with compression mode none and given coefficients."""
    members = struct.pack("<4Q", *ct.parms_id()) + bytes([1])
    members += struct.pack(
        "<QQQdQ", ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size(), ct.scale, 1
    )
    dyn = struct.pack("<Q", len(coefficients)) + struct.pack(
        f"<{len(coefficients)}Q", *coefficients
    )
    members += SEAL_HEADER.pack(0xA15E, 16, 4, 3, 0, 0, 16 + len(dyn)) + dyn
    return SEAL_HEADER.pack(0xA15E, 16, 4, 3, 0, 0, 16 + len(members)) + members


def fresh_chunk(key: crypto.Key, value: float = 1.0) -> bytes:
    return crypto.encrypt({"w": np.full(key.params.slots, value)}, key).serialized_chunks()[0]


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a segfault there cannot kill the test run)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ------------------------------------------------------------------- the 13-byte vector


def full_chunk(key: crypto.Key, value: float = 1.0) -> bytes:
    """A full (not seeded) ciphertext: a sum, or a public-key encryption."""
    enc = crypto.encrypt({"w": np.full(key.params.slots, value)}, key.public())
    return enc.serialized_chunks()[0]


def test_max_ciphertext_bytes_bounds_real_ciphertexts(key):
    for preset in ("default", "nvflare", "packed"):
        k = key if preset == "default" else crypto.generate_key(preset)
        sizes = [len(full_chunk(k, v)) for v in (0.0, 1.0, 123.456)]
        assert max(sizes) <= crypto.max_ciphertext_bytes(k.params)
        assert crypto.max_ciphertext_bytes(k.params) < 1.2 * max(sizes)
        # a key holder's (seeded) ciphertexts are about half as large, within the bound too
        seeded = [len(fresh_chunk(k, v)) for v in (0.0, 1.0, 123.456)]
        assert max(seeded) < 0.55 * min(sizes)


def test_empty_vector_message_is_13_bytes_and_refused(key, public_key):
    empty = vector_message(2048, 2.0**38, None)
    assert len(empty) == 13
    with pytest.raises(CiphertextFormatError, match="holds no SEAL ciphertext"):
        crypto.load_vector(empty, public_key)


def test_empty_vector_no_longer_crashes_aggregate_or_securetrain():
    # Before validation these bytes parsed (vec.size() == 2048) and then segfaulted
    # crypto.aggregate and the securetrain trainer.
    result = run_isolated(
        """
        import numpy as np
        from cifer_flwr import crypto
        from cifer_flwr.crypto.linalg import Ciphertext
        from cifer_flwr.exceptions import CiphertextFormatError
        from tests.crypto.test_validation import vector_message
        key = crypto.generate_key("default")
        pub = key.public()
        enc = crypto.encrypt({"w": np.ones(2048)}, key)
        bad = vector_message(2048, 2.0**38, None)
        for attempt in (
            lambda: crypto.aggregate(
                [enc, crypto.ckks.from_header_and_chunks(enc.header(), [bad], pub)]
            ),
            lambda: Ciphertext.from_bytes(bad, pub, 0),
        ):
            try:
                attempt()
            except CiphertextFormatError as exc:
                print("refused:", exc)
            else:
                raise SystemExit("accepted a ciphertext without SEAL data")
        print("OK")
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("refused:") == 2 and "OK" in result.stdout


# ---------------------------------------------------------------------- protobuf layer


def test_vector_protobuf_structure_is_checked(key, public_key):
    size, seal, scale = split_vector(fresh_chunk(key))
    assert (size, scale) == (2048, 2.0**38)
    assert crypto.load_vector(vector_message(size, scale, seal), public_key).size() == 2048
    cases = {
        "declared size 4096": vector_message(4096, scale, seal),
        "declared size 0": vector_message(0, scale, seal),
        "scale 1073741824.0": vector_message(size, 2.0**30, seal),
        "more than one SEAL ciphertext": vector_message(size, scale, seal)
        + length_delimited(2, seal[:100]),
        "unexpected protobuf field 9": vector_message(size, scale, seal)
        + length_delimited(9, b"x"),
        "declares its scale twice": vector_message(size, scale, seal)
        + encode_varint(3 << 3 | 1)
        + struct.pack("<d", scale),
    }
    for message, blob in cases.items():
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.load_vector(blob, public_key)


def test_truncated_and_extended_bytes(key, public_key):
    blob = fresh_chunk(key)
    for bad in (blob[:-1], blob[:13], blob[: len(blob) // 2], blob + b"\x00", b"", b"\xff" * 40):
        with pytest.raises(CiphertextFormatError):
            crypto.load_vector(bad, public_key)
    # A SEAL blob one byte longer than its header declares, with the protobuf length fixed.
    size, seal, scale = split_vector(blob)
    with pytest.raises(CiphertextFormatError, match=r"declares \d+ bytes"):
        crypto.load_vector(vector_message(size, scale, seal + b"\x00"), public_key)


def test_oversized_vector_is_refused_before_parsing(public_key):
    huge = b"\x00" * (crypto.max_ciphertext_bytes(public_key.params) + 1)
    with pytest.raises(CiphertextFormatError, match="more than the"):
        crypto.load_vector(huge, public_key)


# ------------------------------------------------------------------- SEAL header layer


def test_seal_header_fields_are_checked(key, public_key):
    size, seal, scale = split_vector(fresh_chunk(key))
    magic, hsize, major, minor, compr, reserved, total = SEAL_HEADER.unpack_from(seal)
    assert (magic, hsize, compr, total) == (0xA15E, 16, 2, len(seal))
    cases = {
        "SEAL magic": (0xBEEF, hsize, major, minor, compr, reserved, total),
        "header size": (magic, 32, major, minor, compr, reserved, total),
        "serialization version": (magic, hsize, major, minor + 1, compr, reserved, total),
        "compression mode 1": (magic, hsize, major, minor, 1, reserved, total),
        "compression mode 7": (magic, hsize, major, minor, 7, reserved, total),
        "declares 1000000": (magic, hsize, major, minor, compr, reserved, 1_000_000),
    }
    for message, head in cases.items():
        bad = SEAL_HEADER.pack(*head) + seal[16:]
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.load_vector(vector_message(size, scale, bad), public_key)


def _zstd_frame(content_size: int, rle_blocks: int) -> bytes:
    """A real zstd frame of ``rle_blocks`` RLE blocks of 128 KiB, declaring ``content_size``."""
    fhd = 0b0100_0000  # 2-byte content size, not single segment, no checksum, no dictionary
    wd = 7 << 3  # window 2**17
    frame = struct.pack("<I", 0xFD2FB528) + bytes([fhd, wd]) + struct.pack("<H", content_size - 256)
    for i in range(rle_blocks):
        last = 1 if i == rle_blocks - 1 else 0
        frame += (last | 1 << 1 | (128 * 1024) << 3).to_bytes(3, "little") + b"\x07"
    return frame


def test_decompression_bomb_is_refused_before_inflation(public_key):
    honest = max_raw_ciphertext_bytes(public_key.params)
    for frame, message in (
        # 2 000 RLE blocks: 262 MB once inflated, from 8 kB of input.
        (_zstd_frame(honest, 2000), "decompression bomb refused"),
        # The frame honestly declares its size, which is far above a ciphertext's.
        (
            struct.pack("<I", 0xFD2FB528)
            + bytes([0b1010_0000])
            + struct.pack("<I", 1 << 30)
            + (1 | 1 << 1 | 100 << 3).to_bytes(3, "little")
            + b"\x00",
            "refused before decompression",
        ),
    ):
        seal = SEAL_HEADER.pack(0xA15E, 16, 4, 3, 2, 0, 16 + len(frame)) + frame
        blob = vector_message(2048, 2.0**38, seal)
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.load_vector(blob, public_key)


# ------------------------------------------------ the inflated members, before SEAL reads them


def _rezip(seal: bytes, edit) -> bytes:
    """Inflate a zstd SEAL object, apply ``edit`` to its members, compress it again honestly."""
    import zstandard

    members = bytearray(zstandard.ZstdDecompressor().decompress(seal[16:]))
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(edit(members)))
    return SEAL_HEADER.pack(0xA15E, 16, 4, 3, 2, 0, 16 + len(frame)) + frame


def _put(offset: int, value: int, width: int = 8):
    def edit(members: bytearray) -> bytearray:
        members[offset : offset + width] = value.to_bytes(width, "little")
        return members

    return edit


def test_inflated_members_must_match_the_bytes_present(key, public_key):
    """A zstd frame can be honest while the SEAL object inside lies about its own sizes;
    SEAL would read past its end (an exception that aborted the fuzzer's worker, issue 18).
    Every member is checked on the inflated bytes, before SEAL sees anything."""
    for chunk, seeded in ((fresh_chunk(key), True), (full_chunk(key), False)):
        size, seal, scale = split_vector(chunk)
        count = 4096 if seeded else 8192
        end = 97 + 8 * count  # members before the coefficients: 73 + header 16 + count 8
        cases = {
            "3 polynomials": _put(33, 3),
            "ring degree 8192": _put(41, 8192),
            r"level -1 \(2 primes\)": _put(49, 2),
            "scale 2.0": _put(57, 0x4000000000000000),
            "correction factor 7": _put(65, 7),
            "parms id": _put(0, 12345),
            "not in NTT form": _put(32, 0, 1),
            "inner SEAL header": _put(81, 10**9),  # the coefficient array's declared size
            f"declares {count + 3} coefficients": _put(89, count + 3),
            "bytes of SEAL ciphertext members": lambda m: m[:-800],
            "fewer than a header": lambda m: m[:50],
        }
        if seeded:
            cases["PRNG type 9"] = _put(end + 16, 9, 1)
            # SEAL itself accepts a non-zero reserved field in the PRNG info's header
            cases["inner SEAL header"] = _put(end + 6, 2, 1)
        for message, edit in cases.items():
            bad = vector_message(size, scale, _rezip(seal, edit))
            with pytest.raises(CiphertextFormatError, match=message):
                crypto.load_vector(bad, public_key)
        # the honest object, inflated and compressed again, still loads and decrypts
        same = vector_message(size, scale, _rezip(seal, lambda m: m))
        assert crypto.load_vector(same, public_key).size() == size


def test_zstd_data_that_does_not_inflate_to_its_declared_size(key, public_key):
    import zstandard

    size, seal, scale = split_vector(fresh_chunk(key))
    members = zstandard.ZstdDecompressor().decompress(seal[16:])
    short = members[:-8]
    # one raw block of 8 bytes fewer than the frame declares (single segment, 4-byte size)
    frame = struct.pack("<IBI", 0xFD2FB528, 0b1010_0000, len(members))
    frame += (1 | len(short) << 3).to_bytes(3, "little") + short
    bad = SEAL_HEADER.pack(0xA15E, 16, 4, 3, 2, 0, 16 + len(frame)) + frame
    with pytest.raises(CiphertextFormatError, match="inflate"):
        crypto.load_vector(vector_message(size, scale, bad), public_key)


# ------------------------------------------------------------- after TenSEAL parsed it


def test_wrong_scale_inside_seal_is_refused(key, public_key):
    ctx = ts.context_from(key._private_bytes)
    ctx.global_scale = 2.0**30
    blob = ts.ckks_vector(ctx, [1.0] * 2048).serialize()
    with pytest.raises(CiphertextFormatError, match="scale 1073741824"):
        crypto.load_vector(blob, public_key)  # the protobuf says 2**30
    size, seal, _ = split_vector(blob)
    relabelled = vector_message(size, 2.0**38, seal)  # protobuf rewritten, SEAL still 2**30
    with pytest.raises(CiphertextFormatError, match="SEAL scale 1073741824"):
        crypto.load_vector(relabelled, public_key)


@pytest.fixture(scope="module")
def flare():
    return crypto.generate_key("nvflare")


def test_size_3_ciphertext_is_refused(flare):
    ctx = ts.context_from(flare._private_bytes)
    ctx.global_scale = 2.0**40
    ctx.auto_relin = False
    ctx.auto_rescale = False
    vec = ts.ckks_vector(ctx, [1.0] * 4096)
    product = vec * vec
    assert product.ciphertext()[0].size() == 3
    # Three polynomials do not fit the bytes of a size-2 ciphertext: refused before parsing.
    with pytest.raises(CiphertextFormatError, match="more than the"):
        crypto.load_vector(product.serialize(), flare.public())
    # A size-3 product one level down is small enough to reach SEAL; the check after
    # parsing refuses it (scale relabelled in the protobuf as an attacker would).
    ctx.global_scale = 2.0**25
    ctx.auto_rescale = True
    lower = ts.ckks_vector(ctx, [1.0] * 4096) * 1.0
    ctx.auto_rescale = False
    small = lower * lower
    assert small.ciphertext()[0].size() == 3
    size, seal, _ = split_vector(small.serialize())
    with pytest.raises(CiphertextFormatError, match="3 polynomials, expected 2"):
        crypto.load_vector(vector_message(size, 2.0**40, seal), flare.public())


def test_lower_level_ciphertext_is_refused_and_accepted_where_expected(flare):
    from cifer_flwr.crypto.linalg import Ciphertext

    ctx = ts.context_from(flare._private_bytes)
    ctx.global_scale = 2.0**40
    rescaled = ts.ckks_vector(ctx, [1.0] * 4096) * 2.0
    assert rescaled.ciphertext()[0].coeff_modulus_size() == 1
    blob = rescaled.serialize()
    with pytest.raises(CiphertextFormatError, match=r"level 1 \(1 primes\), expected level 0"):
        crypto.load_vector(blob, flare.public())
    assert crypto.load_vector(blob, flare.public(), level=1).size() == 4096
    ct = Ciphertext.from_bytes(blob, flare, 1)
    np.testing.assert_allclose(ct.decrypt(flare), 2.0, atol=1e-4)
    with pytest.raises(CiphertextFormatError, match="expected level 0"):
        Ciphertext.from_bytes(blob, flare, 0)
    with pytest.raises(CiphertextFormatError, match=r"expected 0\.\.1"):
        Ciphertext.from_bytes(blob, flare, 5)


def test_coefficients_not_reduced_modulo_the_prime(key, public_key):
    size, _, scale = split_vector(fresh_chunk(key))
    ct = crypto.load_vector(fresh_chunk(key), public_key).ciphertext()[0]
    rng = random.Random(7)
    # The data prime has 50 bits, so values below 2**49 are reduced.
    coefficients = [rng.randrange(1, 2**49) for _ in range(2 * 4096)]
    honest = vector_message(size, scale, uncompressed_seal(ct, coefficients))
    assert crypto.load_vector(honest, public_key).size() == 2048  # uncompressed form is fine
    coefficients[4321] = 2**63  # far above the 50-bit prime
    bad = vector_message(size, scale, uncompressed_seal(ct, coefficients))
    with pytest.raises(CiphertextFormatError, match=r"ciphertext data is invalid|not valid"):
        crypto.load_vector(bad, public_key)


def test_transparent_ciphertext_is_refused(key, public_key):
    size, _, scale = split_vector(fresh_chunk(key))
    ct = crypto.load_vector(fresh_chunk(key), public_key).ciphertext()[0]
    zeros = [5] * 4096 + [0] * 4096  # c1 == 0: the "ciphertext" is the plaintext itself
    with pytest.raises(CiphertextFormatError, match=r"transparent|do not parse"):
        crypto.load_vector(vector_message(size, scale, uncompressed_seal(ct, zeros)), public_key)


def test_random_mutations_never_crash():
    result = run_isolated(
        """
        import random
        import numpy as np
        from cifer_flwr import crypto
        from cifer_flwr.exceptions import CiferError
        key = crypto.generate_key("default")
        pub = key.public()
        blob = crypto.encrypt({"w": np.ones(2048)}, key).serialized_chunks()[0]
        rng = random.Random(1)
        refused = accepted = 0
        for i in range(150):
            data = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(64) if i % 2 else rng.randrange(len(data))
                data[pos] = rng.randrange(256)
            try:
                crypto.load_vector(bytes(data), pub).decrypt
                accepted += 1
            except CiferError:
                refused += 1
        print("OK", refused, accepted)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("OK")


# ---------------------------------------------------------------- headers and bundles


def test_header_fields_are_validated(key, public_key):
    enc = crypto.encrypt({"w": np.ones(3000), "b": np.zeros(3, dtype=np.int64)}, key)
    chunks = enc.serialized_chunks()
    good = enc.header()
    crypto.ckks.from_header_and_chunks(good, chunks, public_key)
    edits = [
        ({"weight": float("nan")}, CiphertextFormatError, "weight"),
        ({"weight": -1.0}, CiphertextFormatError, "weight"),
        ({"weight": "1"}, CiphertextFormatError, "weight"),
        ({"weight": True}, CiphertextFormatError, "weight"),
        ({"count": 0}, CiphertextFormatError, "count"),
        ({"count": 1.5}, CiphertextFormatError, "count"),
        ({"count": [1]}, CiphertextFormatError, "count"),
        ({"meta": {"x": [1, 2]}}, CiphertextFormatError, "meta"),
        ({"meta": {"x": {"y": {"z": 1}}}}, CiphertextFormatError, "meta"),
        ({"meta": {"x": "a" * 5000}}, CiphertextFormatError, "meta"),
        ({"meta": "x"}, CiphertextFormatError, "meta"),
        ({"num_chunks": 3}, LayoutMismatchError, "num_chunks"),
        ({"extra": 1}, CiphertextFormatError, "unknown"),
        ({"fingerprint": "ZZ"}, CiphertextFormatError, "fingerprint"),
        ({"fingerprint": 7}, CiphertextFormatError, "fingerprint"),
        ({"params": "default"}, CiphertextFormatError, "params"),
        ({"layout": {"names": ["w"], "shapes": [[3000]]}}, LayoutMismatchError, "exactly"),
    ]
    for change, error, message in edits:
        with pytest.raises(error, match=message):
            crypto.ckks.from_header_and_chunks({**good, **change}, chunks, public_key)
    for layout_change, message in (
        ({"dtypes": ["object", "int64"]}, "dtype"),
        ({"shapes": [[-3000], [3]]}, "shape"),
        ({"shapes": [[True, 3000], [3]]}, "shape"),
        ({"shapes": [["3000"], [3]]}, "shape"),
        ({"names": ["w", "w"]}, "duplicate"),
        ({"names": ["w", 3]}, "name"),
        ({"shapes": [[2**31, 2**31], [3]]}, "values"),
        ({"reserved": -1}, "reserves"),
        ({"reserved": "2"}, "reserves"),
        ({"reserved": 10**6}, "reserves"),
        ({"extra": 1}, "exactly"),
    ):
        header = {**good, "layout": {**good["layout"], **layout_change}}
        with pytest.raises(LayoutMismatchError, match=message):
            crypto.ckks.from_header_and_chunks(header, chunks, public_key)
    with pytest.raises(CiphertextFormatError):
        crypto.ckks.from_header_and_chunks({**good, "count": 1}, chunks[:1], public_key)
    with pytest.raises(CiphertextFormatError, match="object"):
        crypto.ckks.from_header_and_chunks([], chunks, public_key)  # type: ignore[arg-type]


def test_reserved_slots_layout_round_trips(key, public_key):
    enc = crypto.encrypt({"w": np.ones(3000)}, key, reserved=4)
    assert enc.header()["layout"]["reserved"] == 4
    back = crypto.ckks.from_header_and_chunks(enc.header(), enc.serialized_chunks(), public_key)
    assert back.layout == enc.layout


def test_wrong_fingerprint_and_preset(key, public_key, other_key):
    enc = crypto.encrypt({"w": np.ones(10)}, key)
    header = {**enc.header(), "fingerprint": other_key.fingerprint}
    with pytest.raises(KeyMismatchError):
        crypto.ckks.from_header_and_chunks(header, enc.serialized_chunks(), public_key)
    params = {**enc.header()["params"], "name": "x"}
    with pytest.raises(LayoutMismatchError, match="another preset"):
        crypto.ckks.from_header_and_chunks(
            {**enc.header(), "params": params}, enc.serialized_chunks(), public_key
        )
    # Ciphertexts of another key of the same preset parse (only the secret key can tell).
    foreign = crypto.encrypt({"w": np.ones(10)}, other_key).serialized_chunks()
    crypto.ckks.from_header_and_chunks(enc.header(), foreign, public_key)


def _repack_bundle(data: bytes, edit) -> bytes:
    header, blobs = container.unpack(data)
    header.pop("blobs_sha256")
    header.pop("kind")
    header, blobs = edit(header, blobs)
    return container.pack(KIND_ENCRYPTED_BUNDLE, header, blobs)


def test_bundle_header_is_validated(key, public_key):
    a = crypto.encrypt({"w": np.ones(3000)}, key)
    data = crypto.bundle_to_bytes({"model": a, "state": a})
    assert set(crypto.bundle_from_bytes(data, public_key)) == {"model", "state"}

    def rename(name):
        def edit(h, b):
            h["parts"][1]["name"] = name
            return h, b

        return edit

    def chunks(n):
        def edit(h, b):
            h["parts"][0]["chunks"] = n
            return h, b

        return edit

    cases = [
        (rename("model"), "twice"),
        (rename("../x"), "part name"),
        (rename(3), "part name"),
        (chunks(-1), "declares"),
        (chunks("2"), "declares"),
        (chunks(1), "needs 2"),
        (lambda h, b: (h, [*b, b[0]]), "holds 5"),
        (lambda h, b: ({**h, "parts": "x"}, b), "parts"),
        (lambda h, b: ({**h, "extra": 1}, b), "unknown"),
    ]
    for edit, message in cases:
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.bundle_from_bytes(_repack_bundle(data, edit), public_key)


def test_container_limits(key):
    blob = crypto.to_bytes(crypto.encrypt({"w": np.ones(4)}, key))
    magic = blob[:8]
    with pytest.raises(CiphertextFormatError, match="header length"):
        container.unpack(magic + struct.pack(">I", 2**31) + b"{}")
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CiphertextFormatError, match="header"):
        container.unpack(magic + struct.pack(">I", len(deep)) + deep + struct.pack(">I", 0))
    head = json.dumps({"blobs_sha256": "x"}).encode()
    with pytest.raises(CiphertextFormatError, match="blobs declared"):
        container.unpack(magic + struct.pack(">I", len(head)) + head + struct.pack(">I", 2**31))


def test_record_keys_are_validated(key, public_key):
    from flwr.app import Array, ArrayRecord

    enc = crypto.encrypt({"w": np.ones(5000)}, key)
    record = crypto.bundle_to_record({"model": enc}, pack_bytes=1)  # a pack per ciphertext
    assert crypto.from_array_record(record, public_key).layout == enc.layout
    items = dict(record.items())
    chunk = items["cifer.model.ct.000001"]

    def variant(changes: dict, drop: tuple[str, ...] = ()) -> ArrayRecord:
        arrays = {k: v for k, v in items.items() if k not in drop}
        arrays.update(changes)
        return ArrayRecord(arrays)

    plain = Array(np.ones(3))
    cases = [
        (variant({"other": plain}), "unexpected entry"),
        (variant({"cifer.model.ct.7": chunk}), "unexpected entry"),
        (variant({"cifer.model.ct.000009": chunk}), "without gaps"),
        (variant({}, drop=("cifer.model.ct.000001",)), "without gaps"),
        (variant({"cifer.model.ct.000003": chunk}), "needs 3"),
        (variant({"cifer.state.ct.000000": chunk}), "belongs to no header"),
        (variant({"cifer.../x.header": items["cifer.model.header"]}), "part name"),
    ]
    for record_variant, message in cases:
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.bundle_from_record(record_variant, public_key)
    with pytest.raises(ConfigError):
        crypto.bundle_to_record({"a-b": enc})


# ---------------------------------------------------------------------------- key files


def test_world_or_group_readable_private_key_is_refused(key, tmp_path):
    priv, pub = crypto.write_key_pair(key, tmp_path / "k")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(priv, mode)
        with pytest.raises(KeyFileError, match=f"chmod 600 {priv}"):
            crypto.load_private_key(priv)
    os.chmod(priv, 0o600)
    assert crypto.load_private_key(priv).fingerprint == key.fingerprint
    os.chmod(pub, 0o644)
    assert crypto.load_public_key(pub).fingerprint == key.fingerprint


@pytest.mark.parametrize("name", ["../x", "..", "a/b", "/abs", "", ".hidden", "a" * 65, "x\n"])
def test_key_names_must_be_plain(tmp_path, name):
    with pytest.raises(ConfigError, match="plain name"):
        crypto.key_directory(tmp_path, name)


def test_plain_key_names_map_inside_the_directory(tmp_path):
    assert crypto.key_directory(tmp_path, "hospital-fl.v2_1") == tmp_path / "hospital-fl.v2_1"


def _rewrite_key(data: bytes, edit) -> bytes:
    """Edit a key file as an attacker would: fingerprint and checksum recomputed."""
    header, blobs = container.unpack(data)
    header.pop("blobs_sha256")
    header.pop("kind")
    header, blobs = edit(header, blobs)
    if blobs:
        header = {**header, "fingerprint": fingerprint_of(blobs[0])}
    return container.pack(KIND_KEY, header, blobs)


def test_malformed_key_files_give_key_file_errors(key, other_key, tmp_path):
    data = key.to_bytes()
    public = key.public().to_bytes()
    cases = {
        "garbage": b"garbage",
        "truncated": data[:-100],
        "private string": _rewrite_key(data, lambda h, b: ({**h, "private": "yes"}, b)),
        "version": _rewrite_key(data, lambda h, b: ({**h, "format_version": 2}, b)),
        "params": _rewrite_key(data, lambda h, b: ({**h, "params": "default"}, b)),
        "preset": _rewrite_key(
            data, lambda h, b: ({**h, "params": crypto.get_preset("nvflare").to_dict()}, b)
        ),
        "blobs": _rewrite_key(data, lambda h, b: (h, b[:1])),
        "swapped secret": _rewrite_key(data, lambda h, b: (h, [b[0], other_key._private_bytes])),
        "public with secret": _rewrite_key(public, lambda h, b: (h, [key._private_bytes])),
        "altered context": _rewrite_key(
            public,
            lambda h, b: (h, [b[0] + length_delimited(9, b"x")]),
        ),
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.key"
        path.write_bytes(blob)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError):
            crypto.load_key(path)


def test_all_validation_errors_are_cifer_errors():
    assert issubclass(CiphertextFormatError, CiferError)
    assert issubclass(KeyFileError, CiferError)


def test_key_file_decompression_bomb_is_refused(key, tmp_path):
    frame = (
        struct.pack("<I", 0xFD2FB528)
        + bytes([0b1010_0000])
        + struct.pack("<I", 1 << 31)
        + (1 | 1 << 1 | 100 << 3).to_bytes(3, "little")
        + b"\x00"
    )
    bomb = SEAL_HEADER.pack(0xA15E, 16, 4, 3, 2, 0, 16 + len(frame)) + frame

    def swap_public_key(header, blobs):
        rebuilt = b""
        for number, _, raw in fields(blobs[0]):
            if number == 2:
                inner = b"".join(r for n, _, r in fields(payload(raw)) if n != 1)
                raw = length_delimited(2, length_delimited(1, bomb) + inner)
            rebuilt += raw
        return header, [rebuilt]

    path = tmp_path / "public.key"
    path.write_bytes(_rewrite_key(key.public().to_bytes(), swap_public_key))
    with pytest.raises(KeyFileError, match="refused before decompression"):
        crypto.load_key(path)
