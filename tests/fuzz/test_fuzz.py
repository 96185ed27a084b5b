"""Fuzzing every parser of untrusted bytes (benchmarks/fuzz.py), in crash-isolating workers.

* the corpus of every crasher found so far replays without a crash, a hang or a
  non-CiferError exception;
* a small fixed-seed budget over all parsers gives 0 crashes, 0 hangs, 0 other exceptions;
* the harness itself detects a segfault, an abort, a hang and a stray exception, and the
  structure-aware mutations get past the container digest (so they reach SEAL).

Long runs: ``python benchmarks/fuzz.py --budget 10000 --json``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
BUDGET = 500
SEED = 20261123


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("cifer_bench_fuzz", ROOT / "benchmarks/fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.fixture(scope="module")
def materials(tmp_path_factory):
    return fuzz.build_materials(tmp_path_factory.mktemp("fuzz-materials"))


def _failures(outcomes):
    return [(o.parser, o.status) for o in outcomes if fuzz.is_failure(o)]


def test_corpus_replays_without_crash_hang_or_stray_exception(materials):
    files = sorted(CORPUS.glob("*.bin"))
    assert files, "the crasher corpus is empty; it should hold the crashers found so far"
    results = fuzz.replay(materials, CORPUS, workers=2)
    assert len(results) == len(files)
    bad = [(path.name, out.status) for path, out in results if fuzz.is_failure(out)]
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_fixed_budget_over_all_parsers(materials):
    outcomes = fuzz.run_campaign(materials, list(fuzz.PARSERS), BUDGET, SEED, workers=2)
    table = fuzz.tally(outcomes, list(fuzz.PARSERS))
    assert sum(row["inputs"] for row in table.values()) == BUDGET
    assert all(table[p]["inputs"] > 0 for p in fuzz.PARSERS)
    failures = _failures(outcomes)
    detail = "\n".join(sorted({f"{p}: {s[:150]}" for p, s in failures}))
    assert not failures, fuzz.format_table(table) + "\n" + detail


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_harness_reports_crash_hang_and_stray_exception_then_continues(materials):
    pool = fuzz.Pool(materials.root, 1, timeout=3.0)
    try:
        inputs = [b"segv", b"abort", b"hang", b"raise", b"cifer", b"ok"]
        got = [o.status for o in pool.run(iter([("selftest", d) for d in inputs]))]
    finally:
        pool.close()
    assert got[0].startswith("crash:SIGSEGV")
    assert got[1].startswith("crash:SIGABRT")
    assert got[2] == "hang"
    assert got[3].startswith("OTHER:KeyError")
    assert got[4].startswith("CiferError:CiphertextFormatError")
    assert got[5] == "ok"  # the restarted worker still serves inputs


def test_mutations_are_deterministic_and_reach_past_the_digest(materials):
    from cifer_flwr.crypto import container
    from cifer_flwr.exceptions import CiferError

    first = list(fuzz.generate(materials, ["arrays", "key", "enc_model"], 120, seed=5))
    again = list(fuzz.generate(materials, ["arrays", "key", "enc_model"], 120, seed=5))
    assert first == again
    seeds = {s for items in materials.seeds.values() for s in items}
    assert sum(data in seeds for _, data in first) < 12  # nearly every input is mutated
    unpacked = 0
    for _, data in first:
        try:
            container.unpack(data)
            unpacked += 1
        except CiferError:
            pass
    # an attacker recomputes the SHA-256: most inputs reach the ciphertext/key parsers
    assert unpacked > len(first) // 2


def test_seal_level_mutation_rewraps_a_parsable_object(materials):
    """The SEAL re-wrapper itself is exact: an unmodified payload re-wrapped still decrypts."""
    import numpy as np

    from cifer_flwr import crypto
    from cifer_flwr.crypto import _protobuf as pb

    mut = fuzz.Mutator(materials, random.Random(1))
    if mut.zstd is None:
        pytest.skip("the zstd command is needed for SEAL-level mutations")
    key = crypto.load_private_key(materials.keys / "agg" / "private.key")
    enc = crypto.encrypt({"x": np.arange(4.0)}, key)
    blob = enc.serialized_chunks()[0]
    fields = pb.fields(blob)
    seal = pb.payload(next(raw for n, _, raw in fields if n == 2))
    payload = mut._seal_payload(seal)
    assert payload is not None and len(payload) > len(seal)  # decompressed
    # magic, header size, version | compression mode 0 (none) | reserved | total size
    head = seal[:5] + b"\0" + b"\0\0" + (16 + len(payload)).to_bytes(8, "little")
    rebuilt = b"".join(pb.length_delimited(2, head + payload) if n == 2 else raw
                       for n, _, raw in fields)  # fmt: skip
    enc2 = crypto.from_bytes(
        crypto.container.pack("cifer.encrypted-arrays", enc.header(), [rebuilt]),
        key,
    )
    np.testing.assert_allclose(crypto.decrypt(enc2, key)["x"], np.arange(4.0), atol=1e-4)


def test_rekey_moves_a_corpus_input_to_new_keys(materials):
    fps = materials.fingerprints()
    old = {"agg": "a" * 32, "train": "b" * 32}
    data = b'{"fingerprint": "' + b"a" * 32 + b'", "x": "' + b"b" * 32 + b'"}'
    out = fuzz.rekey(data, "arrays", old, fps)
    assert fps["agg"].encode() in out and fps["train"].encode() in out
    assert fuzz.rekey(data, "key", old, fps) == data


class _FakeSeal:
    def __init__(self, size=2, n=4096, scale=2.0**38, ntt=True):
        self._size, self._n, self.scale, self._ntt = size, n, scale, ntt

    def size(self):
        return self._size

    def poly_modulus_degree(self):
        return self._n

    def is_ntt_form(self):
        return self._ntt


class _FakeVector:
    def __init__(self, *cts):
        self.cts = list(cts)

    def ciphertext(self):
        return self.cts


@pytest.mark.parametrize(
    ("vector", "problem"),
    [
        (_FakeVector(_FakeSeal()), None),
        (_FakeVector(), "0 SEAL ciphertexts"),
        (_FakeVector(_FakeSeal(), _FakeSeal()), "2 SEAL ciphertexts"),
        (_FakeVector(_FakeSeal(size=3)), "3 polynomials"),
        (_FakeVector(_FakeSeal(n=8192)), "ring degree 8192"),
        (_FakeVector(_FakeSeal(scale=2.0**30)), "scale 1073741824.0"),
        (_FakeVector(_FakeSeal(scale=float("nan"))), "scale nan"),
        (_FakeVector(_FakeSeal(ntt=False)), "not in NTT form"),
    ],
)
def test_oracle_on_accepted_ciphertexts(vector, problem):
    from cifer_flwr.crypto import get_preset

    params = get_preset("default")
    if problem is None:
        fuzz.check_accepted(vector, params, "x")
    else:
        with pytest.raises(fuzz.AcceptedInvalidError, match=problem):
            fuzz.check_accepted(vector, params, "x")


def test_checkpoint_mutations_reach_past_the_mac(materials):
    """The attacker of the ``checkpoint`` target holds the run's checkpoint key (issue 18):
    most mutated checkpoints verify, so the range and settings checks are what refuse them."""
    from cifer_flwr.exceptions import CiferError
    from cifer_flwr.strategies import _checkpoint

    items = list(fuzz.generate(materials, ["checkpoint"], 60, seed=11))
    verified = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.ckpt"
        key_path = _checkpoint.checkpoint_key_path(path)
        key_path.write_text(materials.checkpoint_key().hex())
        key_path.chmod(0o600)
        for _, data in items:
            path.write_bytes(data)
            try:
                _checkpoint.read_checkpoint(path)
                verified += 1
            except CiferError:
                pass
    assert verified > len(items) // 2


@pytest.mark.parametrize(
    "text",
    [
        b'{"dataset_path": "' + b"x" * 5000 + b'"}',
        b'{"model_path": "~nosuchuser-cifer/x"}',
        b'{"private_key": "a\\u0000b"}',
        b'{"port": ' + b"9" * 4301 + b"}",
        b"[" * 30000 + b"]" * 30000,
    ],
    ids=["long-path", "nosuchuser", "nul", "4301-digits", "nesting"],
)
def test_fedlearn_config_target_refuses_the_issue_18_inputs(materials, text):
    targets = fuzz.Targets(materials.root, materials.root / "scratch-cfg")
    assert targets.run("fedlearn_config", text).startswith("CiferError:ConfigError")
