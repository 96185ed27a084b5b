"""The server keeps one serialized copy of the global model and streams it to files (issue 10).

docs/design.md §6 (memory): the global model is kept as the record sent to clients, built
pack by pack; the saved model and the checkpoint are written from that record in pieces.
These tests prove the bytes are exactly those of the former in-memory writers, so results
and files are unchanged; speed and memory are measured by benchmarks, not here.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cifer_flwr import crypto, protocol, strategies
from cifer_flwr.constants import KIND_STRATEGY_CHECKPOINT
from cifer_flwr.crypto import container
from cifer_flwr.crypto import paillier as pl
from cifer_flwr.crypto.records import _groups, record_bundle_stream
from cifer_flwr.exceptions import CiphertextFormatError
from cifer_flwr.strategies._checkpoint import (
    ENV_CHECKPOINT_KEY,
    Checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from cifer_flwr.strategies._memory import release_large_buffers
from cifer_flwr.strategies._pull import PULL_BATCH, PULL_BYTES
from tests.strategies.harness import run_encrypted

NODES = (1, 2, 3)
#: A small Paillier key (tests only: security is not the point here).
PAILLIER_TEST = pl.PaillierParams("paillier-test", 1024, 24, 12, 4.0, "tests only (insecure)")
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
ARRAYS = {
    "a": np.linspace(-1, 1, 5000, dtype=np.float32),
    "b": np.arange(21, dtype=np.float32).reshape(3, 7) / 10,
}


def _parts(key):
    return {
        "model": crypto.encrypt(ARRAYS, key, weight=0.5),
        "state": crypto.with_meta(crypto.encrypt(ARRAYS, key), round=3),
    }


@pytest.mark.parametrize("pack_bytes", [1, 100_000, crypto.records.PACK_BYTES])
def test_record_stream_is_byte_identical_to_bundle_to_bytes(key, public_key, pack_bytes):
    """Server-made (SEAL objects) and key-holder (seeded) parts, any pack size."""
    for enc_key in (public_key, key):
        parts = _parts(enc_key)
        record = crypto.bundle_to_record(parts, pack_bytes=pack_bytes)
        stream = record_bundle_stream(record)
        data = b"".join(stream.pieces())
        assert data == crypto.bundle_to_bytes(parts)
        assert stream.size == len(data)
        assert b"".join(stream.pieces()) == data  # the pieces can be read again
        back = crypto.bundle_from_bytes(data, public_key)
        got = crypto.decrypt(back["model"], key, divisor=0.5)
        assert all(np.allclose(got[k], ARRAYS[k], atol=1e-5) for k in ARRAYS)


def test_record_stream_of_packed_and_paillier_parts(packed_key_files):
    packed = crypto.load_public_key(packed_key_files[1])
    paillier = pl.generate_key(PAILLIER_TEST, insecure=True).public()
    for k in (packed, paillier):
        parts = {"model": crypto.encrypt({"w": ARRAYS["b"]}, k)}
        record = crypto.bundle_to_record(parts, pack_bytes=64)
        assert b"".join(record_bundle_stream(record).pieces()) == crypto.bundle_to_bytes(parts)


def test_record_stream_refuses_a_record_missing_ciphertexts(public_key):
    record = crypto.bundle_to_record(_parts(public_key), pack_bytes=100_000)
    del record["cifer.model.ct.000001"]
    with pytest.raises(CiphertextFormatError, match="packs numbered"):
        record_bundle_stream(record)


def test_packs_are_serialized_one_at_a_time():
    """bundle_to_record's grouping pulls only what the current pack needs."""
    pulled = []

    def blobs():
        for i in range(10):
            pulled.append(i)
            yield bytes(100)

    groups = _groups(blobs(), 250)  # two 100-byte ciphertexts per pack
    assert next(groups) == [bytes(100)] * 2
    assert len(pulled) == 3  # the third told that the first pack was full
    assert sum(len(g) for g in groups) == 8


def test_nested_streamed_container_equals_pack():
    inner_blobs = [b"x" * 10, memoryview(b"yz"), b""]
    inner = container.pack("inner", {"n": 1}, inner_blobs)
    streamed = container.streamed_pack("inner", {"n": 1}, inner_blobs)
    assert streamed.size == len(inner) and b"".join(streamed.pieces()) == inner
    outer = container.pack("outer", {"s": [1, 2]}, [inner, b"digests"])
    assert b"".join(container.iter_pack("outer", {"s": [1, 2]}, [streamed, b"digests"])) == outer
    header, blobs = container.unpack(outer, kind="outer")
    assert blobs == [inner, b"digests"]


def test_checkpoint_from_a_record_is_the_same_file(tmp_path, public_key, monkeypatch):
    # one MAC key for both files (by default each checkpoint gets its own random key file)
    monkeypatch.setenv(ENV_CHECKPOINT_KEY, "the same secret for both checkpoints")
    parts = _parts(public_key)
    record = crypto.bundle_to_record(parts)
    digests = bytes(range(64))
    state = {"round": 3, "layout": {"names": ["a"]}}
    write_checkpoint(tmp_path / "a", Checkpoint(state, crypto.bundle_to_bytes(parts), digests))
    write_checkpoint(tmp_path / "b", Checkpoint(state, record, digests))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    back = read_checkpoint(tmp_path / "b")
    assert back.model == crypto.bundle_to_bytes(parts) and back.digests == digests
    header, _ = container.read_file(tmp_path / "b", kind=KIND_STRATEGY_CHECKPOINT)
    assert header["state"] == state


def test_the_strategy_keeps_only_the_record_and_saves_it(tmp_path, key_files, key):
    """The saved model and checkpoint come from the record the clients received."""
    save, ckpt = tmp_path / "global.cifer", tmp_path / "run.ckpt"
    strategy, _, result = run_encrypted(
        key_files, "FedAvg", 2, NODES, COMMON, save_path=save, checkpoint_path=ckpt
    )
    record = strategy.global_model.record()
    assert strategy.global_model.parts is None  # no SEAL objects of the model kept
    assert strategy.global_model.record() is record  # built once
    saved = save.read_bytes()
    assert saved == b"".join(record_bundle_stream(record).pieces())
    assert read_checkpoint(ckpt).model == saved
    from_file = protocol.decrypt_global_model(save, key)
    opened = protocol.materialize(crypto.bundle_from_record(result.arrays, key), key)[0]
    assert set(from_file) == set(opened)
    assert all(np.array_equal(from_file[k], opened[k]) for k in opened)


def test_large_replies_are_pulled_one_at_a_time(key_files):
    strategy = strategies.FedAvg(public_key=key_files[1], **COMMON)
    assert strategy._pull_batch() == PULL_BATCH  # no layout yet
    slots = strategy.key.params.slots
    small = crypto.Layout(("w",), ((10 * slots,),), ("float32",))
    strategy.layout = small
    assert strategy._pull_batch() == PULL_BATCH
    per_chunk = crypto.max_ciphertext_bytes(strategy.key.params)
    chunks = PULL_BYTES // per_chunk + 1
    strategy.layout = crypto.Layout(("w",), ((chunks * slots,),), ("float32",))
    assert strategy._pull_batch() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_release_large_buffers_is_set_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert release_large_buffers() is True
    assert release_large_buffers() is True  # idempotent
