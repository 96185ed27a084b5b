import struct

import numpy as np
import pytest
from flwr.app import ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from cifer_flwr import crypto
from cifer_flwr.crypto import ckks, paillier
from cifer_flwr.crypto import records as records_module
from cifer_flwr.crypto.records import (
    PACK_BYTES,
    PACK_MAGIC,
    pack_ciphertexts,
    unpack_ciphertexts,
)
from cifer_flwr.exceptions import CiphertextFormatError, ConfigError, LayoutMismatchError


def test_array_record_round_trip(key, public_key):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(5000)}
    record = crypto.to_array_record(crypto.encrypt(arrays, key, meta={"round": 3}))
    assert crypto.is_encrypted_record(record)
    back = crypto.from_array_record(record, public_key)
    assert back.meta == {"round": 3}
    out = crypto.decrypt(back, key)
    np.testing.assert_allclose(out["a"], arrays["a"], atol=1e-6)
    assert out["a"].dtype == np.float32


def test_numpy_on_a_ciphertext_array_raises(key):
    record = crypto.to_array_record(crypto.encrypt({"w": np.ones(3)}, key))
    for arr in record.values():
        with pytest.raises(TypeError):
            arr.numpy()


def test_plain_record_is_not_mistaken_for_encrypted(public_key):
    plain = ArrayRecord([np.ones(3)])
    assert not crypto.is_encrypted_record(plain)
    with pytest.raises(CiphertextFormatError, match="ckks_mod"):
        crypto.from_array_record(plain, public_key)


# ----------------------------------------------------------------------------- packs
SMALL = {"w": np.linspace(-1, 1, 5000).astype(np.float32)}  # 3 ciphertexts of 2048 slots


def _u32(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


def test_ciphertexts_travel_in_packs_of_at_most_pack_bytes(key, public_key):
    enc = crypto.encrypt({"w": np.linspace(-1, 1, 300_000).astype(np.float32)}, key)
    blobs = enc.serialized_chunks()
    record = crypto.to_array_record(enc)
    packs = [a for n, a in record.items() if ".ct." in n]
    assert 1 < len(packs) < len(blobs)  # 147 ciphertexts -> 2 packs
    assert all(len(a.data) <= PACK_BYTES for a in packs)
    assert sum(a.shape[0] for a in packs) == len(blobs)
    assert crypto.record_ciphertexts(record) == blobs
    out = crypto.decrypt(crypto.from_array_record(record, public_key), key)
    np.testing.assert_allclose(out["w"], crypto.decrypt(enc, key)["w"], atol=0)


@pytest.mark.parametrize("pack_bytes", [1, 70_000, PACK_BYTES])
def test_any_pack_size_round_trips(key, public_key, pack_bytes):
    record = crypto.bundle_to_record({"model": crypto.encrypt(SMALL, key)}, pack_bytes=pack_bytes)
    n_packs = sum(".ct." in name for name in record)
    assert n_packs == {1: 3, 70_000: 2, PACK_BYTES: 1}[pack_bytes]
    out = crypto.decrypt(crypto.from_array_record(record, public_key), key)
    np.testing.assert_allclose(out["w"], SMALL["w"], atol=1e-6)


def test_paillier_records_are_packed_too():
    params = paillier.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")
    pk = paillier.generate_key(params, insecure=True)
    arrays = {"w": np.linspace(-1, 1, 400).astype(np.float32)}  # 15 ciphertexts of 256 bytes
    enc = crypto.encrypt(arrays, pk)
    record = crypto.bundle_to_record({"model": enc}, pack_bytes=2000)
    assert sum(".ct." in name for name in record) > 1
    back = crypto.from_array_record(record, pk)
    np.testing.assert_allclose(crypto.decrypt(back, pk)["w"], arrays["w"], atol=1e-3)


def test_pack_round_trip_and_hostile_framings():
    blobs = [b"a" * 5, b"bb", b"c" * 9]
    pack = pack_ciphertexts(blobs)
    assert unpack_ciphertexts(pack, max_items=3, max_item_bytes=9) == blobs
    lengths = _u32(5, 2, 9)
    body = b"a" * 5 + b"bb" + b"c" * 9
    cases = {
        "magic": b"XXXX" + _u32(3) + lengths + body,
        "too short": PACK_MAGIC + b"\x00",
        "zero count": PACK_MAGIC + _u32(0),
        "count above the header": PACK_MAGIC + _u32(4) + _u32(5, 2, 9, 1) + body + b"d",
        "lengths overrun": PACK_MAGIC + _u32(3) + _u32(5, 2, 10) + body,
        "trailing bytes": pack + b"\x00",
        "empty item": PACK_MAGIC + _u32(3) + _u32(5, 0, 9) + b"a" * 5 + b"c" * 9,
        "item above the preset's largest": PACK_MAGIC + _u32(1) + _u32(16) + b"x" * 16,
        "truncated length table": PACK_MAGIC + _u32(1000) + lengths,
        "overlap (lengths longer than the payload)": PACK_MAGIC + _u32(2) + _u32(9, 9) + b"z" * 9,
    }
    for name, data in cases.items():
        with pytest.raises(CiphertextFormatError):
            unpack_ciphertexts(data, max_items=3, max_item_bytes=9, what=name)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 63), st.integers(1, 4))
def test_mutated_packs_raise_only_ciphertext_format_errors(noise, pos, items):
    pack = bytearray(pack_ciphertexts([b"x" * 7, b"y" * 3]))
    pack[pos % len(pack) : pos % len(pack) + len(noise)] = noise
    try:
        out = unpack_ciphertexts(bytes(pack), max_items=items, max_item_bytes=8)
    except CiphertextFormatError:
        return
    assert 1 <= len(out) <= items and all(1 <= len(b) <= 8 for b in out)


def _with_pack(record: ArrayRecord, name: str, data: bytes | None) -> ArrayRecord:
    items = dict(record.items())
    if data is None:
        del items[name]
    else:
        a = items.get(name) or items["cifer.model.ct.000000"]
        items[name] = type(a)(dtype=a.dtype, shape=a.shape, stype=a.stype, data=data)
    return ArrayRecord(items)


def test_hostile_packs_never_reach_tenseal(key, public_key, monkeypatch):
    enc = crypto.encrypt(SMALL, key)
    record = crypto.to_array_record(enc)
    blobs = enc.serialized_chunks()
    limit = crypto.max_ciphertext_bytes(key.params)
    cases = [
        (pack_ciphertexts(blobs + blobs[:1]), "cifer.model.ct.000000", "1..3"),
        (pack_ciphertexts(blobs[:2]), "cifer.model.ct.000000", "packs hold 2"),
        (pack_ciphertexts(blobs[:1]), "cifer.model.ct.000001", "drop the extra packs"),
        (pack_ciphertexts([b"\x00" * (limit + 1)]), "cifer.model.ct.000000", "largest"),
        (pack_ciphertexts(blobs) + b"\x00", "cifer.model.ct.000000", "trailing"),
        (blobs[0], "cifer.model.ct.000000", "expected a cifer ciphertext pack"),
    ]
    seen: list[int] = []
    monkeypatch.setattr(ckks, "load_vector", lambda *a, **k: seen.append(1))
    for data, name, message in cases:
        hostile = _with_pack(record, name, data)
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.frame_record(hostile, public_key)  # what a server checks before hashing
        with pytest.raises(CiphertextFormatError, match=message):
            crypto.bundle_from_record(hostile, public_key)
    assert seen == []  # nothing was handed to TenSEAL
    with pytest.raises(LayoutMismatchError):
        crypto.bundle_from_record(_with_pack(record, "cifer.model.ct.000000", None), public_key)


def test_a_record_header_must_state_its_ciphertext_count(key, public_key):
    import json

    record = crypto.to_array_record(crypto.encrypt(SMALL, key))
    head = json.loads(bytes(record["cifer.model.header"].data))
    del head["num_chunks"]
    data = json.dumps(head).encode()
    a = record["cifer.model.header"]
    items = dict(record.items())
    items["cifer.model.header"] = type(a)(
        dtype=a.dtype, shape=(len(data),), stype=a.stype, data=data
    )
    with pytest.raises(CiphertextFormatError, match="num_chunks"):
        crypto.bundle_from_record(ArrayRecord(items), public_key)


# ----------------------------------------------------------------------------- framing
def test_frame_record_locates_every_ciphertext_as_views_into_the_packs(key, public_key):
    model, state = crypto.encrypt(SMALL, key), crypto.encrypt({"s": np.ones(10)}, key)
    record = crypto.bundle_to_record({"model": model, "state": state}, pack_bytes=70_000)
    framed = crypto.frame_record(record, public_key)
    assert list(framed.parts) == ["model", "state"]
    packs = {name: arr.data for name, arr in record.items() if ".ct." in name}
    for part, enc in (("model", model), ("state", state)):
        chunks = framed.parts[part].chunks
        assert framed.parts[part].header == enc.header()
        assert [bytes(v) for v in chunks] == enc.serialized_chunks()
        # no copy: each view is read-only and its buffer is one of the record's packs
        assert all(v.readonly and any(v.obj is data for data in packs.values()) for v in chunks)
    every = model.serialized_chunks() + state.serialized_chunks()
    assert [bytes(v) for v in framed.ciphertexts()] == every
    assert sorted(map(bytes, framed.ciphertexts())) == sorted(crypto.record_ciphertexts(record))


def test_bundle_from_framed_is_bundle_from_record(key, public_key):
    record = crypto.bundle_to_record({"model": crypto.encrypt(SMALL, key)}, pack_bytes=1)
    framed = crypto.frame_record(record, public_key)
    parts = crypto.bundle_from_framed(framed, public_key)
    again = crypto.bundle_from_framed(framed, public_key)  # the framing is not consumed
    whole = crypto.bundle_from_record(record, public_key)
    assert list(parts) == list(whole) == ["model"]
    for got in (parts["model"], again["model"]):
        assert got.serialized_chunks() == whole["model"].serialized_chunks()
        np.testing.assert_allclose(crypto.decrypt(got, key)["w"], SMALL["w"], atol=1e-6)


def test_a_framing_is_parsed_only_with_the_parameters_it_was_checked_for(key, public_key):
    params = paillier.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")
    other = paillier.generate_key(params, insecure=True)
    framed = crypto.frame_record(crypto.to_array_record(crypto.encrypt(SMALL, key)), public_key)
    with pytest.raises(ConfigError, match="framed for another key"):
        crypto.bundle_from_framed(framed, other)


def test_record_part_names_reads_the_header_keys_only(key, monkeypatch):
    enc = crypto.encrypt({"s": np.ones(10)}, key)
    record = crypto.bundle_to_record({"model": enc, "state": enc})
    monkeypatch.setattr(records_module, "_decode_json", None)  # nothing is decoded
    assert crypto.record_part_names(record) == {"model", "state"}
    assert crypto.record_part_names(ArrayRecord([np.ones(3)])) == set()
