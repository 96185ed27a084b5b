"""Crypto worker processes: frames, parallel encrypt/decrypt, validate-and-sum, lifetime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cifer_flwr import crypto
from cifer_flwr.crypto import ckks, workers
from cifer_flwr.exceptions import (
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
    WorkerError,
)

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = 9  # enough for three workers to get a range each


@pytest.fixture(scope="module")
def keys() -> dict[str, crypto.Key]:
    return {"default": crypto.generate_key("default"), "packed": crypto.generate_key("packed")}


def _chunks(key: crypto.Key, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    slots = key.params.slots
    if key.params.is_bfv:
        return [rng.integers(-5000, 5000, slots) for _ in range(count)]
    return [rng.uniform(-1.0, 1.0, slots) for _ in range(count)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


# --------------------------------------------------------------------------- pure helpers
def test_frames_round_trip_and_refuse_truncation() -> None:
    parts = [b"", b"abc", bytes(range(256)) * 10]
    frame = workers.encode_frame(b"S", parts)
    assert workers.decode_frame(frame) == (b"S", parts)
    with pytest.raises(WorkerError, match="truncated"):
        workers.decode_frame(frame[:-1])
    with pytest.raises(WorkerError, match="after a worker frame"):
        workers.decode_frame(frame + b"x")
    with pytest.raises(ConfigError):
        workers.encode_frame(b"ST", parts)


@pytest.mark.parametrize(("count", "parts"), [(1, 4), (7, 2), (8, 2), (10, 3), (3, 5), (0, 2)])
def test_chunk_ranges_cover_everything_once(count: int, parts: int) -> None:
    ranges = workers.chunk_ranges(count, parts)
    covered = [i for a, b in ranges for i in range(a, b)]
    assert covered == list(range(count))
    assert len(ranges) <= parts and all(b > a for a, b in ranges)
    sizes = [b - a for a, b in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_worker_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workers.ENV_WORKERS, "3")
    assert workers.default_processes() == 3
    monkeypatch.setenv(workers.ENV_WORKERS, "many")
    with pytest.raises(ConfigError, match="whole number"):
        workers.default_processes()
    monkeypatch.setenv(workers.ENV_WORKERS, "1")
    assert workers.shared_workers(crypto.generate_key("default"), 10**6) is None


# --------------------------------------------------------------------------- processes
@pytest.mark.parametrize("preset", ["default", "packed"])
def test_parallel_encrypt_and_decrypt_match_in_process(keys, preset: str) -> None:
    key = keys[preset]
    chunks = _chunks(key, CHUNKS)
    with crypto.CryptoWorkers(key, 3) as pool:
        blobs = pool.encrypt(chunks)
        # seeded like the in-process encryption (half a full ciphertext)
        assert len(blobs) == CHUNKS
        full = key.context()
        assert all(len(b) < 0.6 * len(ckks.load_vector(b, key).serialize()) for b in blobs)
        mine = pool.decrypt(blobs, what="test")
    # the worker's ciphertexts pass the validated loader and decrypt in this process too
    here = [np.asarray(crypto.load_chunk(b, key).decrypt()) for b in blobs]
    for got, back, want in zip(mine, here, chunks, strict=True):
        tol = 0 if key.params.is_bfv else 1e-6
        assert np.abs(got - want).max() <= tol
        assert np.abs(back - want).max() <= tol
    assert full is key.context()


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_validate_and_sum_commits_only_accepted_replies(keys) -> None:
    key = keys["packed"]
    pub = key.public()
    replies = [_chunks(key, CHUNKS, seed) for seed in range(3)]
    with crypto.CryptoWorkers(key, 2) as enc:
        blobs = [enc.encrypt(r) for r in replies]
    bad = list(blobs[2])
    bad[7] = bad[7][:-5]  # the second worker's range holds the bad ciphertext
    with crypto.CryptoWorkers(pub, 2) as pool:
        pool.stage("g", blobs[0], what="reply 0")
        pool.commit()
        pool.stage("g", bad, what="reply 2")  # returns at once; the refusal comes at commit
        with pytest.raises(CiphertextFormatError, match="reply 2, ciphertext 7 of 9"):
            pool.commit()
        pool.stage("g", blobs[1], what="reply 1")
        pool.abort()  # staged, then dropped: the sum must not include it
        pool.stage("g", blobs[1], what="reply 1")
        pool.commit()
        with pytest.raises(LayoutMismatchError, match="has 9"):
            pool.stage("g", blobs[0][:4], what="short")
        total = pool.total("g")
        assert pool.groups() == ["g"]
        with pytest.raises(WorkerError, match="without a stage"):
            pool.commit()
    got = [np.asarray(crypto.load_chunk(b, key).decrypt()) for b in total]
    want = [a + b for a, b in zip(replies[0], replies[1], strict=True)]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_a_dead_worker_fails_loudly_and_stops_the_pool(keys) -> None:
    pool = crypto.CryptoWorkers(keys["default"], 2)
    pids = pool.pids()
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerError, match="crypto worker 1"):
        pool.reset()  # a request to every worker
    assert pool.closed
    with pytest.raises(WorkerError, match="stopped"):
        pool.reset()
    assert _wait_gone(pids) == []


def test_close_stops_every_worker(keys) -> None:
    pool = crypto.CryptoWorkers(keys["default"].public(), 2)
    pids = pool.pids()
    assert all(_alive(p) for p in pids)
    pool.close()
    pool.close()  # idempotent
    assert _wait_gone(pids) == []


def test_workers_die_with_a_killed_owner(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from cifer_flwr import crypto\n"
        "pool = crypto.CryptoWorkers(crypto.generate_key('default'), 2)\n"
        "print(' '.join(map(str, pool.pids())), flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        owner.kill()
        owner.wait()
        assert _wait_gone(pids) == [], "a crypto worker outlived its killed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


# --------------------------------------------------------------------------- through ckks
def test_encrypt_and_deferred_decrypt_use_the_workers(keys, monkeypatch) -> None:
    key = keys["default"]
    monkeypatch.setattr(workers, "PARALLEL_MIN_CHUNKS", 1)
    monkeypatch.setenv(workers.ENV_WORKERS, "2")
    calls: list[str] = []
    for name in ("encrypt", "decrypt"):
        original = getattr(crypto.CryptoWorkers, name)

        def spy(self, *a, _name=name, _orig=original, **kw):
            calls.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(crypto.CryptoWorkers, name, spy)
    arrays = {"w": np.random.default_rng(3).normal(size=(3, key.params.slots)).astype(np.float32)}
    enc = crypto.encrypt(arrays, key, weight=2.0)
    record = crypto.to_array_record(enc)
    parsed = crypto.from_array_record(record, key)
    assert crypto.deferred_blobs(parsed) is not None  # private key, large enough: deferred
    out = crypto.decrypt(parsed, key, divisor=2.0)
    assert calls == ["encrypt", "decrypt"]
    assert np.abs(out["w"] - arrays["w"]).max() <= 1e-5
    # a corrupted ciphertext is refused when the workers validate it
    blobs = list(crypto.deferred_blobs(parsed) or ())
    mid = len(blobs[2]) // 2  # inside the compressed SEAL body: the framing stays valid
    blobs[2] = (
        blobs[2][:mid] + bytes(b ^ 0xFF for b in blobs[2][mid : mid + 16]) + blobs[2][mid + 16 :]
    )
    bad = ckks.from_header_and_chunks(parsed.header(), blobs, key, defer=True)
    with pytest.raises(CiphertextFormatError, match="ciphertext 2 of 3"):
        crypto.decrypt(bad, key)
    # and when anything else touches it in this process
    bad = ckks.from_header_and_chunks(parsed.header(), blobs, key, defer=True)
    with pytest.raises(CiphertextFormatError, match="ciphertext 2 of 3"):
        list(bad.vectors)


def test_a_deferred_part_is_validated_before_any_use_in_process(keys) -> None:
    key = keys["default"]
    enc = crypto.encrypt({"w": np.zeros(5)}, key)
    blob = enc.serialized_chunks()[0]
    bad = ckks.from_header_and_chunks(enc.header(), [blob[:-3]], key, defer=True)
    assert crypto.deferred_blobs(bad) == (blob[:-3],)
    with pytest.raises(CiphertextFormatError, match="ciphertext 0 of 1"):
        crypto.decrypt(bad, key)  # one chunk: below the workers' threshold, in-process
    with pytest.raises(CiphertextFormatError, match="ciphertext 0 of 1"):
        crypto.aggregate([bad, bad])
    good = ckks.from_header_and_chunks(enc.header(), [blob], key, defer=True)
    assert np.abs(crypto.decrypt(good, key)["w"]).max() < 1e-6


def test_the_secret_key_does_not_stay_in_the_shared_buffers(keys) -> None:
    key = keys["default"]
    secret = key._private_bytes
    assert secret is not None
    with crypto.CryptoWorkers(key, 2) as pool:
        pool.reset()  # the first request collects the workers' start-up
        for fd in pool._buffers:
            left = os.pread(fd, os.fstat(fd).st_size, 0)
            assert secret[-256:] not in left and len(left) < 1024
