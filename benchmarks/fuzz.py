"""Fuzz every parser of untrusted bytes in cifer_flwr, in crash-isolating worker processes.

Seeds are real objects (a small model encrypted under freshly generated keys, key files,
securetrain ``.enc`` files, Flower replies, plaintext dataset and model files). Mutations are
those of an attacker who knows the formats: besides bit flips, inserts, deletes, truncation and
splicing, the JSON headers are edited (layout, counts, weight, chunks, kind, fingerprint,
parameters) and the container is re-packed with a correct SHA-256 digest; TenSEAL's protobuf
fields (logical size, scale, ciphertext count) and SEAL's own serialization (magic ``0xA15E``,
version, compression mode, size, parms_id, NTT flag, polynomial count, ring degree, modulus
count, scale, coefficients) are rewritten and SEAL objects re-wrapped uncompressed with a
consistent size, so that mutations reach the native parsers instead of stopping at a checksum.

Each input runs in one of a pool of long-lived worker processes (keys loaded once, inputs read
from a pipe). A worker that dies (segfault, abort) or exceeds the per-input timeout marks the
input a crash or a hang; the worker is restarted. After parsing, each target *uses* what it
parsed the way the project does (aggregate, serialize, decrypt, multiply, rotate), because a
ciphertext that parses can still crash SEAL later.

Outcomes per input: ``ok`` (accepted), ``CiferError:<class>`` (refused cleanly), ``OTHER``
(any other exception: a bug), ``crash``, ``hang``. For the ``strategy`` targets (FedAvg, and
FedAdam with its state holders) a refused reply is one the strategy excluded
(``CiferError:excluded``); anything raised out of ``aggregate_train`` is ``OTHER``, and so is a
round that then releases nothing, or releases anything but the honest replies' mean (and, for
FedOpt, the asked clients' state). Every ciphertext a parser accepts must be one SEAL ciphertext
of 2 polynomials at the preset's ring degree and scale (``check_accepted``), else ``OTHER``.
The ``client`` target is the other direction: a key holder opening a hostile server's record.

Usage::

    python benchmarks/fuzz.py --budget 10000 --seed 1 --json
    python benchmarks/fuzz.py --parsers arrays,strategy --budget 500 --corpus-dir tests/fuzz/corpus
    python benchmarks/fuzz.py --replay tests/fuzz/corpus

The SEAL-level mutations need the ``zstd`` command (to decompress SEAL's payload once per
seed); without it they are skipped and the rest still runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Every target, in report order. The plaintext readers get a smaller share of the budget.
PARSERS: tuple[str, ...] = (
    "container",
    "arrays",
    "bundle",
    "record",
    "strategy",
    "strategy_fedopt",
    "client",
    "key",
    "ciphertext",
    "enc_dataset",
    "enc_model",
    "plain_dataset",
    "plain_model",
    "fedlearn_config",
    "checkpoint",
    "masking",
)
SHARE = {p: 1.0 for p in PARSERS} | {
    "plain_dataset": 0.4,
    "plain_model": 0.4,
    "fedlearn_config": 0.6,
    "masking": 0.6,
}
DESCRIPTION = {
    "container": "crypto.container.unpack",
    "arrays": "crypto.from_bytes + aggregate/to_bytes/decrypt",
    "bundle": "crypto.bundle_from_bytes + aggregate/decrypt",
    "record": "crypto.bundle_from_record / from_array_record (ArrayRecord) + aggregate/decrypt",
    "strategy": "FedAvg.aggregate_train with one mutated reply (+2 honest) + decrypt result",
    "strategy_fedopt": "FedAdam.aggregate_train: one mutated reply (+2 honest state holders)",
    "client": "key holder opening the server's record: bundle_from_record + protocol.open_global",
    "key": "crypto.load_key / load_public_key / load_private_key (file) + encrypt/decrypt",
    "ciphertext": "crypto.linalg.Ciphertext.from_bytes + mul/rotate/decrypt",
    "enc_dataset": "securetrain load_encrypted_dataset (.enc) + arithmetic/decrypt",
    "enc_model": "securetrain load_encrypted_model (.enc) + decrypt_model/square",
    "plain_dataset": "securetrain load_dataset (.npz/.npy/.csv)",
    "plain_model": "securetrain read_model (.npz/.pt/.h5)",
    "fedlearn_config": "fedlearn ClientConfig/ServerConfig.from_file (JSON config + its paths)",
    "checkpoint": "strategy resume: read_checkpoint (MAC) + restore_state + _restore, "
    "FedAvg and FedAdam, + decrypt",
    "masking": "masking payloads (docs/design.md §4.9): the key holder's advertise/share/train/"
    "unmask requests, the server's advert/share/unmask replies, then the residual",
}
STATUS_COLUMNS = ("ok", "CiferError", "other", "crash", "hang", "skipped")
CONTAINER_PARSERS = ("container", "arrays", "bundle", "key", "enc_dataset", "enc_model")
STRUCTURED_PARSERS = ("record", "strategy", "strategy_fedopt", "client")
#: The FedOpt state digest every honest client reports (the server only compares them).
FEDOPT_DIGEST = "d1" * 32
SEAL_MAGIC = b"\x5e\xa1"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MEM_MB = 6144
CHECKPOINT_KEY_FILE = "checkpoint.key"
#: The checkpoint seeds' run: the restoring strategies use the same settings.
CHECKPOINT_ROUNDS = 3
#: Files a FedLearn config seed names (created empty next to the config by the target).
FEDLEARN_FILES = ("d.npz", "m.npz", "private.key", "public.key", "cert.pem", "key.pem")

# ============================================================================ materials


@dataclass
class Materials:
    """Key files and seed inputs, on disk so that a run (and the corpus) can be reproduced."""

    root: Path
    seeds: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def fingerprints(self) -> dict[str, str]:
        fps: dict[str, str] = json.loads((self.root / "fingerprints.json").read_text())
        return fps

    def checkpoint_key(self) -> bytes:
        """The checkpoint key the seeds' MACs use (an attacker who read the key file)."""
        return bytes.fromhex((self.root / CHECKPOINT_KEY_FILE).read_text().strip())


def _small_model(rng: Any, scale: float = 0.3) -> dict[str, Any]:
    import numpy as np

    return {
        "w": rng.normal(0, scale, (40, 60)).astype(np.float32),
        "b": np.linspace(-0.5, 0.5, 60).astype(np.float32),
    }


def _reply_seed(arrays: Any, metrics: dict[str, Any], configs: dict[str, Any]) -> bytes:
    """Encode a reply (ArrayRecord entries + metric/config records) as a structured input."""
    entries = [
        [name, a.dtype, a.stype, list(a.shape), base64.b64encode(a.data).decode()]
        for name, a in arrays.items()
    ]
    return _dumps({"arrays": entries, "metrics": metrics, "configs": configs})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


MASKING_MODULUS = 1073692673  # the packed plain modulus
MASKING_STAGES = ("advertise", "advertised", "share", "shared", "train", "unmask", "unmasked")


def _masking_parties(
    session: bytes | None = None,
) -> tuple[Any, dict[int, Any]]:
    """A server session and 4 key holders after advertising (fresh keys each call)."""
    from cifer_flwr import masking

    server = masking.ServerSession(1)
    if session is not None:
        server.session = session
    clients = {}
    for node in (1, 2, 3, 4):
        clients[node], reply = masking.ClientSession.advertise(
            server.advertise_request(), node, None, 0
        )
        server.accept_advert(node, reply)
    return server, clients


def masking_payloads() -> dict[str, bytes]:
    """The payloads of one honest 4-client masked round, one per stage (the seeds)."""
    server, clients = _masking_parties()
    out = {"advertise": server.advertise_request()}
    out["advertised"] = masking_advert_reply(clients[1])
    out["share"] = server.share_request()
    for node, client in clients.items():
        reply = client.share(out["share"], None)
        out.setdefault("shared", reply)
        server.accept_shares(node, reply)
    server.fix_cohort()
    out["train"] = server.train_payload(1)
    for node, client in clients.items():
        client.mask(server.train_payload(node), 8, MASKING_MODULUS)
    out["unmask"], _, _ = server.unmask_request([1, 2, 3, 4])
    out["unmasked"] = clients[2].unmask(out["unmask"])
    return out


def masking_advert_reply(client: Any) -> bytes:
    """The advertise reply a key holder sent (rebuilt from its session)."""
    from cifer_flwr import masking

    ad = client.adverts[client.node]
    return masking.dumps({"v": 1, "stage": "advertised", "advert": ad.to_json()})


def feed_masking(stage: str, payload: bytes) -> None:
    """Replay an honest round up to ``stage`` and hand ``payload`` to that stage's parser.

    The parties take the payload's own session when it has one, so mutations reach the
    checks after the session check. Every refusal must be a CiferError.
    """
    import json as _json

    from cifer_flwr import masking
    from cifer_flwr.exceptions import CiferError

    if stage == "advertise":
        masking.ClientSession.advertise(payload, 9, None, 0)
        return
    if stage == "advertised":
        masking.ServerSession(1).accept_advert(1, payload)
        return
    session = None
    try:
        found = _json.loads(payload).get("session")
        session = masking._unb64(found, "session", 16) if found else None
    except (ValueError, AttributeError, RecursionError, CiferError):
        pass
    server, clients = _masking_parties(session)
    if stage == "share":
        clients[1].share(payload, None)
        return
    request = server.share_request()
    for node, client in clients.items():
        if stage == "shared" and node == 1:
            server.accept_shares(1, payload)
        else:
            server.accept_shares(node, client.share(request, None))
    if stage == "shared":
        return
    server.fix_cohort()
    if stage == "train":
        clients[1].mask(payload, 8, MASKING_MODULUS)
        return
    for node, client in clients.items():
        client.mask(server.train_payload(node), 8, MASKING_MODULUS)
    if stage == "unmask":
        clients[1].unmask(payload)
        return
    server.accept_unmask(2, payload, [1, 2, 3, 4])
    server.residual([1, 2, 3, 4], 8, MASKING_MODULUS)


def build_materials(root: Path) -> Materials:
    """Generate keys and seeds under ``root``, or load them when ``root`` already holds them."""
    mats = Materials(Path(root))
    seed_dir = mats.root / "seeds"
    if (mats.root / "fingerprints.json").is_file() and seed_dir.is_dir():
        for p in sorted(seed_dir.iterdir()):
            parser = p.name.split("__")[0]
            mats.seeds.setdefault(parser, []).append(p.read_bytes())
        missing = sorted(set(PARSERS) - set(mats.seeds))
        if missing:
            raise ValueError(
                f"materials directory {root} has no seeds for {missing} (made by an older "
                "fuzz.py); pass a new --materials directory."
            )
        return mats
    import numpy as np

    from cifer_flwr import crypto, securetrain
    from cifer_flwr.crypto.linalg import encrypt_constant, generate_training_key
    from cifer_flwr.securetrain import encrypted as st_enc
    from cifer_flwr.securetrain.algorithm import params_for_iterations
    from cifer_flwr.securetrain.model import LogisticModel, write_model

    rng = np.random.default_rng(7)
    key = crypto.generate_key("default")
    other = crypto.generate_key("default")
    train = generate_training_key(params_for_iterations(1), max_period=4)
    for name, k in (("agg", key), ("other", other), ("train", train)):
        crypto.write_key_pair(k, mats.keys / name, force=True)
    (mats.root / "fingerprints.json").write_text(
        json.dumps({"agg": key.fingerprint, "other": other.fingerprint, "train": train.fingerprint})
    )
    seeds: dict[str, list[bytes]] = {p: [] for p in PARSERS}
    model = _small_model(rng)
    enc = crypto.encrypt(model, key, weight=0.5)
    enc_pub = crypto.encrypt(_small_model(rng), key.public(), weight=0.25)
    enc_other = crypto.encrypt(model, other, weight=0.5)
    # the forged-key attack: another key's ciphertexts under a header naming ours
    forged = crypto.EncryptedArrays(
        enc_other.layout, enc_other.vectors, key.fingerprint, key.params, 0.5, 1, {}
    )
    tiny = crypto.encrypt({"x": np.arange(5, dtype=np.float64)}, key)
    seeds["arrays"] += [crypto.to_bytes(e) for e in (enc, enc_pub, forged, tiny)]
    seeds["bundle"] += [
        crypto.bundle_to_bytes({"model": enc, "state": enc_pub}),
        crypto.bundle_to_bytes({"model": tiny}),
    ]
    seeds["key"] += [key.to_bytes(), key.public().to_bytes(), other.public().to_bytes()]
    seeds["record"] += [
        _reply_seed(crypto.bundle_to_record({"model": enc}), {}, {}),
        _reply_seed(crypto.bundle_to_record({"model": tiny, "state": tiny}), {}, {}),
        _reply_seed(crypto.bundle_to_record({"model": forged}), {}, {}),
    ]
    # the strategy's third (mutated) reply: weight n / divisor as ckks_mod computes it
    divisor = _strategy_divisor()
    for n in (30, 7):
        rep = crypto.encrypt(_small_model(rng), key, weight=n / divisor)
        seeds["strategy"].append(
            _reply_seed(
                crypto.bundle_to_record({"model": rep}),
                {"metrics": {"num-examples": n, "loss": 0.5}},
                {},
            )
        )
    # what a (hostile) server sends the key holders: FedAvg global, FedOpt state + pending sum
    from cifer_flwr import protocol

    glob = crypto.with_meta(crypto.encrypt(model, key, weight=1.5), round=1)
    spec = protocol.OptimizerSpec("adam", 0.1, 0.9, 0.99, 1e-3)
    state = crypto.with_meta(
        crypto.encrypt(protocol.pack_state(dict(model), None, None), key.public()),
        fedopt=spec.to_dict(),
    )
    seeds["client"] += [
        _reply_seed(crypto.bundle_to_record({"model": glob}), {}, {}),
        _reply_seed(crypto.bundle_to_record({"state": state, "model": glob}), {}, {}),
        _reply_seed(crypto.bundle_to_record({"state": state}), {}, {}),
    ]
    from cifer_flwr.constants import REPLY_RECORD, REPLY_STATE_DIGEST

    digest = {REPLY_RECORD: {REPLY_STATE_DIGEST: FEDOPT_DIGEST}}
    for n, with_state in ((30, False), (7, True)):
        mine = _small_model(rng)
        rep_parts = {"model": crypto.encrypt(mine, key, weight=n / divisor)}
        if with_state:  # an unrequested client that tries to inject the state
            rep_parts["state"] = crypto.encrypt(protocol.pack_state(mine, mine, mine), key)
        seeds["strategy_fedopt"].append(
            _reply_seed(
                crypto.bundle_to_record(rep_parts),
                {"metrics": {"num-examples": n, "loss": 0.5}},
                digest,
            )
        )
    ds = securetrain.Dataset(rng.normal(0, 1, (6, 2)), np.array([0, 1, 0, 1, 1, 0], dtype=np.int64))
    enc_ds = st_enc.encrypt_dataset(ds, train)
    enc_model = st_enc.encrypt_model(LogisticModel(np.array([0.3, -0.2]), 0.1), train)
    seeds["enc_dataset"].append(enc_ds.to_bytes())
    seeds["enc_model"].append(enc_model.to_bytes())
    seeds["ciphertext"] += [
        enc_ds.columns[1][0].to_bytes(),
        encrypt_constant(0.25, train.public()).to_bytes(),
    ]
    seeds["container"] += [
        crypto.to_bytes(tiny),
        crypto.bundle_to_bytes({"model": tiny}),
        key.public().to_bytes(),
        enc_model.to_bytes(),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        securetrain.save_dataset(ds, t / "d.npz")
        table = np.column_stack([ds.X, ds.y])
        np.save(t / "d.npy", table)
        lines = ["f0,f1,label"] + [",".join(f"{v:.6g}" for v in row) for row in table]
        (t / "d.csv").write_text("\n".join(lines) + "\n")
        for ext in (".npz", ".npy", ".csv"):
            seeds["plain_dataset"].append(ext.encode() + b"\0" + (t / f"d{ext}").read_bytes())
        for ext in (".npz", ".pt", ".h5"):
            write_model(LogisticModel(np.array([0.5, -1.0, 2.0]), 0.25), t / f"m{ext}")
            seeds["plain_model"].append(ext.encode() + b"\0" + (t / f"m{ext}").read_bytes())
    seeds["fedlearn_config"] += _fedlearn_seeds()
    seeds["masking"] = [stage.encode() + b"\0" + p for stage, p in masking_payloads().items()]
    ckpt_key = os.urandom(32)
    (mats.root / CHECKPOINT_KEY_FILE).write_text(ckpt_key.hex())
    seeds["checkpoint"] += [
        _checkpoint_seed(key.public(), fedopt, ckpt_key, mats.root) for fedopt in (False, True)
    ]
    seed_dir.mkdir(parents=True, exist_ok=True)
    for parser, items in seeds.items():
        for i, data in enumerate(items):
            (seed_dir / f"{parser}__{i:02d}.bin").write_bytes(data)
    mats.seeds = seeds
    return mats


def _fedlearn_seeds() -> list[bytes]:
    """Cifer's documented client and server JSON configs (paths relative to the file)."""
    client = {
        "ip_address": "127.0.0.1",
        "port": 9092,
        "n_round_clients": 2,
        "use_homomorphic": True,
        "use_secure": False,
        "dataset_path": "d.npz",
        "model_path": "m.npz",
        "private_key": "private.key",
    }
    secure = {**client, "use_secure": True, "certfile": "cert.pem", "keyfile": "key.pem"}
    server = {
        "ip_address": "127.0.0.1",
        "port": 9092,
        "n_round_clients": 2,
        "num_rounds": 3,
        "use_secure": True,
        "certfile": "cert.pem",
        "keyfile": "key.pem",
        "ca_certfile": None,
        "public_key": "public.key",
    }
    return [json.dumps(c, indent=1).encode() for c in (client, secure, server)]


def _checkpoint_seed(pub: Any, fedopt: bool, ckpt_key: bytes, root: Path) -> bytes:
    """A strategy checkpoint after round 2 of 3 (history, an exclusion, replay digests)."""
    import dataclasses

    import numpy as np
    from flwr.app import Array, ArrayRecord, MetricRecord
    from flwr.serverapp.strategy import Result

    from cifer_flwr.strategies._checkpoint import write_checkpoint
    from cifer_flwr.strategies._resume import checkpoint_of

    strategy, _, _ = _new_strategy(pub, fedopt)
    plain = ArrayRecord({k: Array(v) for k, v in _small_model(np.random.default_rng(5)).items()})
    parts = strategy._to_parts(plain)
    strategy.layout = strategy._model_layout(parts)
    strategy.global_model.set(parts)
    strategy.ledger.begin(CHECKPOINT_ROUNDS)
    strategy.ledger.excluded = {2: [(3, "a replay of round 1")]}
    strategy.ledger.round_stats = {1: {"valid": 3.0, "round-s": 0.5}, 2: {"valid": 2.0}}
    strategy.screen.seen.add(1, [bytes([i]) * 32 for i in range(3)])
    strategy.screen.seen.add(2, [bytes([9 - i]) * 32 for i in range(2)])
    result = Result()
    result.train_metrics_clientapp = {1: MetricRecord({"loss": 0.5, "n": 3}), 2: MetricRecord({})}
    result.evaluate_metrics_clientapp = {2: MetricRecord({"accuracy": 0.75})}
    strategy.ledger.result = result
    ckpt = checkpoint_of(strategy, 2)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = Path(tmp) / "seed.ckpt"
        write_checkpoint(path, dataclasses.replace(ckpt, integrity_key=ckpt_key))
        return path.read_bytes()


# ============================================================================ mutations

#: Values an attacker puts into a FedLearn config's path fields.
HOSTILE_PATHS = [
    "x" * 5000,
    "/".join(["d" * 250] * 17),
    "~nosuchuser-cifer/x",
    "~/" + "y" * 300,
    "a\0b",
    "\ud800.npz",
    "../" * 200 + "etc/passwd",
    "/dev/zero",
    "/proc/self/fd/0",
    "loop/x",
    "",
    ".",
    "d.npz/",
    "~",
]
#: Checkpoint state fields whose values are counts / rounds.
CHECKPOINT_INT_FIELDS = ("round", "num_rounds", "min_replies")

INTERESTING_INTS = [0, 1, 2, 3, -1, -2, 7, 255, 256, 2047, 2048, 2049, 4096, 8192, 65535]
INTERESTING_INTS += [2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, 2.0**30, 2.0**38, 2.0**40]
INTERESTING_FLOATS += [2.0**200, float("nan"), float("inf"), float("-inf")]


def _u64(v: int) -> int:
    return v & 0xFFFFFFFFFFFFFFFF


class Mutator:
    """Attacker-style mutations over real seeds; deterministic for a given ``random.Random``."""

    def __init__(self, mats: Materials, rng: random.Random) -> None:
        self.mats = mats
        self.rng = rng
        self.fps = mats.fingerprints()
        self._seal_cache: dict[bytes, bytes | None] = {}
        self.zstd = shutil.which("zstd")

    # ---------------------------------------------------------------- raw bytes
    def raw(self, data: bytes, rounds: int | None = None) -> bytes:
        r = self.rng
        buf = bytearray(data)
        for _ in range(rounds or r.choice((1, 1, 1, 2, 3, 8))):
            op = r.randrange(9)
            n = len(buf)
            if op == 0 and n:  # bit flip
                i = r.randrange(n)
                buf[i] ^= 1 << r.randrange(8)
            elif op == 1 and n:  # interesting byte
                buf[r.randrange(n)] = r.choice((0, 1, 0x7F, 0x80, 0xFF))
            elif op == 2:  # insert
                i = r.randrange(n + 1)
                buf[i:i] = bytes(r.randrange(256) for _ in range(r.choice((1, 2, 4, 8, 64))))
            elif op == 3 and n:  # delete range
                i = r.randrange(n)
                del buf[i : i + r.choice((1, 2, 4, 8, 64, 4096))]
            elif op == 4 and n:  # truncate
                del buf[r.randrange(n) :]
            elif op == 5:  # extend
                buf += bytes(r.randrange(256) for _ in range(r.choice((1, 8, 100))))
            elif op == 6 and n >= 8:  # overwrite a machine word with an interesting integer
                i = r.randrange(n - 7)
                fmt = r.choice(("<Q", ">Q", "<I", ">I"))
                size = struct.calcsize(fmt)
                buf[i : i + size] = struct.pack(fmt, r.choice(INTERESTING_INTS) % (1 << 8 * size))
            elif op == 7 and n > 2:  # duplicate a range
                i = r.randrange(n)
                j = min(n, i + r.choice((4, 64, 1024)))
                k = r.randrange(n)
                buf[k:k] = buf[i:j]
            elif op == 8:  # splice another seed's bytes
                other = self.any_seed_bytes()
                if other:
                    i = r.randrange(len(other))
                    piece = other[i : i + r.choice((16, 256, 4096))]
                    k = r.randrange(n + 1)
                    buf[k : k + len(piece)] = piece
        return bytes(buf)

    def any_seed_bytes(self) -> bytes:
        parser = self.rng.choice([p for p in PARSERS if p not in STRUCTURED_PARSERS])
        return self.rng.choice(self.mats.seeds[parser])

    # ---------------------------------------------------------------- JSON
    def value(self) -> Any:
        r = self.rng
        choice = r.randrange(12)
        if choice < 3:
            return r.choice(INTERESTING_INTS)
        if choice < 5:
            return r.choice(INTERESTING_FLOATS)
        return r.choice(
            [
                None,
                True,
                False,
                "",
                "x" * r.choice((1, 33, 5000)),
                [],
                {},
                [r.choice(INTERESTING_INTS)],
                [[1, 2], [3]],
                {"a": 1},
                self.fps["other"],
                self.fps["agg"][:-1],
                "1e400",
                [1] * 1000,
            ]
        )

    def json_edit(self, obj: Any, depth: int = 0) -> Any:
        """Return a copy of ``obj`` with one (nested) field replaced, deleted or added."""
        r = self.rng
        if isinstance(obj, dict) and obj and (depth < 6):
            key = r.choice(sorted(obj))
            out = dict(obj)
            op = r.randrange(10)
            if op == 0:
                del out[key]
            elif op == 1:
                out[r.choice(("extra", "__proto__", key + "_", ""))] = self.value()
            elif op in (2, 3) or not isinstance(obj[key], (dict, list)) or not obj[key]:
                out[key] = self._field_value(key, obj[key])
            else:
                out[key] = self.json_edit(obj[key], depth + 1)
            return out
        if isinstance(obj, list) and obj and depth < 6:
            out2 = list(obj)
            i = r.randrange(len(out2))
            op = r.randrange(6)
            if op == 0:
                del out2[i]
            elif op == 1:
                out2.insert(i, out2[i])
            elif op == 2:
                out2[i] = self.value()
            else:
                out2[i] = self.json_edit(out2[i], depth + 1)
            return out2
        return self._field_value("", obj)

    def _field_value(self, key: str, old: Any) -> Any:
        r = self.rng
        if key in CHECKPOINT_INT_FIELDS and r.random() < 0.6:
            return r.choice(
                [0, 1, 2, 3, 4, 99, -1, 10**400, -(10**400), 2.0, float("-inf"), "2", True]
            )
        if key == "examples_per_client" and r.random() < 0.6:
            return r.choice([0, -1.0, 10**400, 1e300, float("inf"), float("nan"), "20"])
        if key.endswith(("_path", "_key", "file")) and r.random() < 0.6:
            return r.choice(HOSTILE_PATHS)
        if key == "fingerprint" and r.random() < 0.6:
            return r.choice([self.fps["other"], self.fps["train"], self.fps["agg"].upper(), ""])
        if key == "kind" and r.random() < 0.7:
            return r.choice(
                [
                    "cifer.key",
                    "cifer.encrypted-arrays",
                    "cifer.encrypted-bundle",
                    "cifer.encrypted-dataset",
                    "cifer.encrypted-model",
                    "cifer.bogus",
                ]
            )
        if key == "params" and r.random() < 0.5:
            from cifer_flwr.crypto.params import PRESETS

            return r.choice(list(PRESETS.values())).to_dict()
        if isinstance(old, bool):
            return r.choice([not old, 0, 1, "true", None])
        if isinstance(old, int) and r.random() < 0.7:
            return r.choice([old + 1, old - 1, old * 2, -old, 0, *INTERESTING_INTS])
        if isinstance(old, float) and r.random() < 0.7:
            return r.choice([old * 2, -old, old + 1e-9, *INTERESTING_FLOATS])
        if isinstance(old, list) and old and r.random() < 0.5:
            return r.choice([old[:-1], [*old, old[-1]], old[::-1], [old], old * 3])
        if isinstance(old, str) and r.random() < 0.5:
            return r.choice([old[:-1], old + "x", old.upper(), str(r.choice(INTERESTING_INTS))])
        return self.value()

    def json_bytes(self, data: bytes) -> bytes:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):  # stacked rounds: a 4301-digit int, deep nesting
            return self.raw(data)
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            obj = self.json_edit(obj)
        return json.dumps(obj, sort_keys=self.rng.random() < 0.5).encode()

    # ---------------------------------------------------------------- protobuf / SEAL
    def proto(self, data: bytes, depth: int = 0) -> bytes:
        """Mutate a protobuf message (TenSEAL object) field-wise, recursing into sub-messages."""
        from cifer_flwr.crypto import _protobuf as pb
        from cifer_flwr.exceptions import CiferError

        r = self.rng
        try:
            fields = pb.fields(data)
        except CiferError:
            return self.raw(data)
        if not fields:
            return self.raw(data)
        op = r.randrange(10)
        idx = r.randrange(len(fields))
        number, wire, raw = fields[idx]
        out = [f[2] for f in fields]
        if op == 0:  # drop a field (e.g. the ciphertext data: the 13-byte attack)
            del out[idx]
        elif op == 1:  # duplicate a field (two ciphertexts, two sizes)
            out.insert(idx, raw)
        elif op == 2:  # add an unknown / conflicting field
            num = r.choice((number, 1, 2, 3, 4, 5, 15, 99))
            w = r.choice((0, 1, 2, 5))
            tag = pb.encode_varint(num << 3 | w)
            body = {
                0: pb.encode_varint(r.choice(INTERESTING_INTS) % 2**64),
                1: struct.pack("<d", r.choice(INTERESTING_FLOATS)),
                2: pb.encode_varint(3) + b"abc",
                5: b"\0\0\0\0",
            }[w]
            out.insert(r.randrange(len(out) + 1), tag + body)
        elif 3 <= op < 9 and wire == 1:  # a double (TenSEAL's scale)
            out[idx] = pb.encode_varint(number << 3 | 1) + struct.pack(
                "<d", r.choice(INTERESTING_FLOATS)
            )
        elif 3 <= op < 9 and wire == 0:
            out[idx] = pb.encode_varint(number << 3) + pb.encode_varint(
                r.choice(INTERESTING_INTS) % 2**64
            )
        elif wire == 2 and op < 9:
            inner = pb.payload(raw)
            if inner[:2] == SEAL_MAGIC:
                new = self.seal(inner)
            elif number == 1 and len(inner) < 12:  # TenSEAL's logical size (a varint inside)
                new = pb.encode_varint(r.choice(INTERESTING_INTS) % 2**64)
            elif depth < 4 and r.random() < 0.7:
                new = self.proto(inner, depth + 1)
            else:
                new = self.raw(inner)
            out[idx] = pb.length_delimited(number, new)
        else:
            out = [self.raw(b"".join(out))]
        if r.random() < 0.2:
            r.shuffle(out)
        return b"".join(out)

    def _seal_payload(self, blob: bytes) -> bytes | None:
        """Uncompressed payload of a SEAL object (cached per seed blob), or None."""
        digest = hashlib.sha1(blob).digest()
        if digest in self._seal_cache:
            return self._seal_cache[digest]
        payload: bytes | None = None
        if len(blob) >= 16:
            mode = blob[5]  # magic u16, header size, major, minor, compression mode
            body = blob[16:]
            if mode == 0:
                payload = body
            elif mode == 1:
                try:
                    payload = zlib.decompress(body)
                except zlib.error:
                    payload = None
            elif mode == 2 and self.zstd:
                done = subprocess.run(
                    [self.zstd, "-d", "-c", "-q"], input=body, capture_output=True, check=False
                )
                payload = done.stdout if done.returncode == 0 else None
        self._seal_cache[digest] = payload
        return payload

    def seal(self, blob: bytes) -> bytes:
        """Mutate a serialized SEAL object: header fields, or its payload re-wrapped."""
        r = self.rng
        if len(blob) < 16:
            return self.raw(blob)
        magic, hsize, vmaj, vmin, mode, res, size = struct.unpack("<HBBBBHQ", blob[:16])
        op = r.randrange(10)
        if op == 0:  # header only: the payload stays valid compressed data
            fields = [magic, hsize, vmaj, vmin, mode, res, size]
            i = r.randrange(7)
            width = [16, 8, 8, 8, 8, 16, 64][i]
            fields[i] = r.choice([fields[i] + 1, fields[i] - 1, *INTERESTING_INTS]) % 2**width
            return struct.pack("<HBBBBHQ", *fields) + blob[16:]
        payload = self._seal_payload(blob)
        if payload is None:
            return self.raw(blob)
        if op in (1, 2, 3, 4, 5) and len(payload) > 97:
            payload = self._seal_ciphertext_fields(payload)
        elif op in (6, 7):
            payload = self._coefficients(payload)
        else:
            payload = self.raw(payload)
        mode_out = 0
        if r.random() < 0.08:
            payload = zlib.compress(payload)
            mode_out = 1
        new_size = 16 + len(payload)
        if r.random() < 0.05:
            new_size = r.choice(INTERESTING_INTS) % 2**64
        if r.random() < 0.05:
            mode_out = r.choice((1, 2, 3, 255))
        return struct.pack("<HBBBBHQ", magic, hsize, vmaj, vmin, mode_out, 0, new_size) + payload

    def _seal_ciphertext_fields(self, p: bytes) -> bytes:
        """Edit one member of a SEAL ``Ciphertext`` payload (SEAL 4 layout)."""
        r = self.rng
        buf = bytearray(p)
        which = r.choice(("parms", "ntt", "size", "n", "l", "scale", "corr", "dyn", "count"))
        if which == "parms":
            i = r.randrange(4)
            buf[i * 8 : i * 8 + 8] = struct.pack("<Q", r.choice(INTERESTING_INTS) % 2**64)
        elif which == "ntt":
            buf[32] = r.choice((0, 1, 2, 255))
        elif which in ("size", "n", "l", "corr", "count"):
            off = {"size": 33, "n": 41, "l": 49, "corr": 65, "count": 89}[which]
            (old,) = struct.unpack("<Q", buf[off : off + 8])
            new = r.choice([old + 1, old - 1, old * 2, old // 2, 3, *INTERESTING_INTS])
            buf[off : off + 8] = struct.pack("<Q", _u64(new))
        elif which == "scale":
            buf[57:65] = struct.pack("<d", r.choice(INTERESTING_FLOATS))
        else:  # the nested DynArray's own SEAL header
            i = r.choice((73 + 6, 73 + 8))
            if i == 79:
                buf[i] = r.choice((1, 2, 3, 255))
            else:
                buf[i : i + 8] = struct.pack("<Q", r.choice(INTERESTING_INTS) % 2**64)
        return bytes(buf)

    def _coefficients(self, p: bytes) -> bytes:
        """Rewrite coefficients: out of range of the modulus, zeroed, truncated or extended."""
        r = self.rng
        buf = bytearray(p)
        start = 97 if len(buf) > 97 else 0
        words = (len(buf) - start) // 8
        if words <= 0:
            return self.raw(p)
        op = r.randrange(5)
        if op == 0:
            del buf[start + 8 * r.randrange(words) :]
        elif op == 1:
            buf += bytes(8 * r.choice((1, 4096)))
        elif op == 2:  # zero everything: a transparent ciphertext
            buf[start:] = bytes(len(buf) - start)
        else:
            for _ in range(r.choice((1, 10, 1000))):
                i = start + 8 * r.randrange(words)
                buf[i : i + 8] = struct.pack(
                    "<Q", r.choice((2**64 - 1, 2**63, 2**60, 2**55, 2**50 + 1, r.getrandbits(64)))
                )
        return bytes(buf)

    def blob(self, data: bytes) -> bytes:
        """Mutate a binary blob of any known kind (TenSEAL protobuf, SEAL object, raw)."""
        roll = self.rng.random()
        if data[:2] == SEAL_MAGIC and roll < 0.8:
            return self.seal(data)
        if roll < 0.8:
            return self.proto(data)
        return self.raw(data)

    # ---------------------------------------------------------------- containers
    def container(self, data: bytes) -> bytes:
        """Unpack a real container, edit header/blobs like an attacker, re-pack with its digest."""
        from cifer_flwr.crypto import container as ct
        from cifer_flwr.crypto.keys import fingerprint_of

        r = self.rng
        roll = r.random()
        if roll < 0.15:
            return self.raw(data)
        try:
            header, blobs = ct.unpack(data)
        except Exception:
            return self.raw(data)
        header = dict(header)
        blobs = list(blobs)
        ops = r.choice((1, 1, 1, 2, 3))
        for _ in range(ops):
            op = r.randrange(10)
            if op < 3 and blobs:
                i = r.randrange(len(blobs))
                blobs[i] = self.blob(blobs[i])
            elif op < 6:
                header = self.json_edit(header)
            elif op == 6 and blobs:  # drop / duplicate / reorder blobs
                i = r.randrange(len(blobs))
                choice = r.randrange(3)
                if choice == 0:
                    del blobs[i]
                elif choice == 1:
                    blobs.insert(i, blobs[i])
                else:
                    r.shuffle(blobs)
            elif op == 7:  # splice a blob of another seed (another key, another kind)
                try:
                    _, other = ct.unpack(self.any_container_seed())
                except Exception:
                    other = []
                if other and blobs:
                    blobs[r.randrange(len(blobs))] = r.choice(other)
            elif op == 8:  # splice the header of another seed
                try:
                    other_header, _ = ct.unpack(self.any_container_seed())
                    header = dict(other_header)
                except Exception:
                    pass
            elif blobs:
                blobs[r.randrange(len(blobs))] = self.raw(blobs[r.randrange(len(blobs))])
        if header.get("kind") == "cifer.key" and blobs and r.random() < 0.9:
            header["fingerprint"] = fingerprint_of(blobs[0])  # an attacker recomputes it
        return repack(header, blobs, fix_digest=r.random() < 0.93, rng=r)

    def any_container_seed(self) -> bytes:
        parser = self.rng.choice(CONTAINER_PARSERS)
        return self.rng.choice(self.mats.seeds[parser])

    # ---------------------------------------------------------------- records / replies
    def structured(self, data: bytes, parser: str) -> bytes:
        r = self.rng
        obj = json.loads(data)
        entries: list[list[Any]] = obj["arrays"]
        for _ in range(r.choice((1, 1, 1, 2, 3))):
            op = r.randrange(14)
            if not entries:
                op = 9
            i = r.randrange(len(entries)) if entries else 0
            if op < 4:  # the payload of one Array
                stype, b64 = entries[i][2], entries[i][4]
                raw = base64.b64decode(b64)
                new = self.json_bytes(raw) if stype.startswith("cifer.ckks.header") else None
                if new is None:
                    new = self.blob(raw)
                entries[i][4] = base64.b64encode(new).decode()
                if new is not raw and stype.startswith("cifer.ckks.header") and r.random() < 0.8:
                    entries[i][3] = [len(new)]
            elif op == 4:  # dtype / stype
                j = r.choice((1, 2))
                entries[i][j] = r.choice(
                    [
                        "cifer.ckks.header/1",
                        "cifer.ckks.ciphertext/1",
                        "numpy.ndarray",
                        "float32",
                        "json",
                        "ckks",
                        "",
                        "cifer.ckks.ciphertext/2",
                    ]
                )
            elif op == 5:  # shape
                entries[i][3] = r.choice(
                    [[], [0], [-1], [2**31 - 1], [1] * 40, [2048, 2048], [r.randrange(1, 5000)]]
                )
            elif op == 6:  # key
                name = entries[i][0]
                entries[i][0] = r.choice(
                    [
                        name.replace("model", "state"),
                        name.replace("model", "m0del"),
                        name.replace("cifer.", ""),
                        name.replace("000000", "000001"),
                        name.replace("000000", "-00001"),
                        name + ".header",
                        "cifer.model.ct.999999",
                        "cifer..header",
                        "cifer.a.ct.b.ct.000000",
                        "cifer." + "x" * 300 + ".header",
                        "",
                    ]
                )
            elif op == 7:
                del entries[i]
            elif op == 8:  # duplicate under another index (a duplicate ciphertext)
                dup = list(entries[i])
                dup[0] = dup[0].replace(".ct.0", ".ct.1")
                entries.append(dup)
            elif op == 9:  # splice an entry of another structured seed
                other = json.loads(r.choice(self.mats.seeds[r.choice(STRUCTURED_PARSERS)]))
                if other["arrays"]:
                    entries.append(list(r.choice(other["arrays"])))
            elif op == 10 and parser == "strategy":
                obj["metrics"] = self._metrics(obj.get("metrics", {}))
            elif op == 11 and parser == "strategy":
                obj["configs"] = self._configs(obj.get("configs", {}))
            else:
                name, _dtype, stype, _shape, b64 = entries[i]
                entries[i][4] = base64.b64encode(self.raw(base64.b64decode(b64))).decode()
        # unique keys: a later entry overwrites an earlier one, as a dict would
        obj["arrays"] = list({e[0]: e for e in entries}.values())
        return _dumps(obj)

    def _metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        out = {k: dict(v) for k, v in metrics.items()}
        rec = out.setdefault(r.choice(("metrics", "metrics", "m2")), {})
        value = r.choice(
            [
                -1,
                0,
                1,
                2**31,
                2**63 - 1,
                float("nan"),
                float("inf"),
                float("-inf"),
                -0.0,
                1e308,
                1e-308,
                [30],
                [1.0, 2.0],
                [],
                30.000001,
                31,
                15,
            ]
        )
        if r.random() < 0.2:
            rec.pop("num-examples", None)
        else:
            rec[r.choice(("num-examples", "num-examples", "loss", "x"))] = value
        return out

    def _configs(self, configs: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        out = {k: dict(v) for k, v in configs.items()}
        rec = out.setdefault(r.choice(("cifer-reply", "config", "x")), {})
        rec[r.choice(("state-digest", "cifer-state-digest", "num-examples"))] = r.choice(
            ["", "0" * 64, "abc", 1, 2.5, True]
        )
        return out

    # ---------------------------------------------------------------- entry point
    def mutate(self, parser: str, seed: bytes) -> bytes:
        r = self.rng
        if parser == "fedlearn_config":
            return self.fedlearn(seed)
        if parser == "checkpoint":
            return self.checkpoint(seed)
        if parser == "masking":
            stage, _, body = seed.partition(b"\0")
            return stage + b"\0" + (self.json_bytes(body) if r.random() < 0.7 else self.raw(body))
        if parser in STRUCTURED_PARSERS:
            return self.structured(seed, parser)
        if parser in CONTAINER_PARSERS:
            return self.container(seed)
        if parser == "ciphertext":
            return self.blob(seed) if r.random() < 0.85 else self.raw(seed)
        # plaintext files: "<ext>\0<bytes>"
        ext, _, body = seed.partition(b"\0")
        if r.random() < 0.05:
            ext = r.choice((b".npz", b".npy", b".csv", b".pt", b".h5", b".txt"))
        return ext + b"\0" + self.plain_file(ext.decode(), body)

    def fedlearn(self, data: bytes) -> bytes:
        """A JSON config as a user's hostile file: fields, then text beyond JSON's limits."""
        r = self.rng
        roll = r.random()
        if roll < 0.1:
            return self.raw(data)
        out = self.json_bytes(data) if roll < 0.75 else data
        if r.random() < 0.35:  # what json.dumps cannot write: huge literals, deep nesting
            text = out.decode("utf-8", "replace")
            op = r.randrange(4)
            if op == 0 and "9092" in text:
                text = text.replace("9092", "9" * r.choice((20, 400, 4300, 4301, 6000)), 1)
            elif op == 1:
                depth = r.choice((100, 1000, 10000, 30000))
                text = text.replace('"d.npz"', "[" * depth + "]" * depth, 1)
                if "[" * depth not in text:
                    text = "[" * depth + "]" * depth
            elif op == 2:
                text = text.replace("2,", r.choice(("1e400,", "-Infinity,", "NaN,", "2.5,")), 1)
            else:
                text = text.replace('"m.npz"', '"\\ud800\\u0000"', 1)
            out = text.encode("utf-8", "surrogatepass")
        return out

    def checkpoint(self, data: bytes) -> bytes:
        """Edit a checkpoint's state or blobs; usually re-MAC it with the run's key (an
        attacker who read the key file), so edits reach the range and settings checks."""
        from cifer_flwr.crypto import container as ct
        from cifer_flwr.strategies._checkpoint import _mac

        r = self.rng
        if r.random() < 0.08:
            return self.raw(data)
        try:
            header, blobs = ct.unpack(data)
        except Exception:
            return self.raw(data)
        header = {k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")}
        blobs = list(blobs)
        roll = r.random()
        if roll < 0.75 and isinstance(header.get("state"), dict):
            for _ in range(r.choice((1, 1, 2, 3))):
                header["state"] = self.json_edit(header["state"])
        elif roll < 0.85 and len(blobs) == 2:
            blobs[1] = self.raw(blobs[1])  # the replay digests
        elif roll < 0.95 and blobs:
            blobs[0] = self.container(blobs[0])  # the encrypted model (a bundle container)
        else:
            header = self.json_edit(header)
        if r.random() < 0.8 and isinstance(header.get("state"), dict):
            head = {"state": header["state"], "format": header.get("format")}
            with contextlib.suppress(TypeError, ValueError):
                header["mac"] = _mac(self.mats.checkpoint_key(), head, blobs)
        return ct.pack("cifer.strategy-checkpoint", header, blobs)

    def plain_file(self, ext: str, body: bytes) -> bytes:
        r = self.rng
        if ext in (".npz", ".pt") and r.random() < 0.5:
            return self._zip_members(body)
        if ext == ".npy" and r.random() < 0.5:
            return self._npy_header(body)
        if ext == ".csv" and r.random() < 0.4:
            return self._csv(body)
        return self.raw(body)

    def _zip_members(self, body: bytes) -> bytes:
        import warnings
        import zipfile

        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        r = self.rng
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as zin:
                members = [(i, zin.read(i)) for i in zin.infolist()]
        except Exception:
            return self.raw(body)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for info, data in members:
                if r.random() < 0.6:
                    data = self._npy_header(data) if data[:6] == b"\x93NUMPY" else self.raw(data)
                method = zipfile.ZIP_DEFLATED if r.random() < 0.3 else info.compress_type
                if r.random() < 0.05:  # a compression bomb
                    data = data + bytes(r.choice((1 << 20, 64 << 20)))
                    method = zipfile.ZIP_DEFLATED
                name = info.filename if r.random() < 0.9 else r.choice(("../x.npy", "y.npy"))
                zout.writestr(zipfile.ZipInfo(name), data, compress_type=method)
        return out.getvalue()

    def _npy_header(self, body: bytes) -> bytes:
        r = self.rng
        if body[:6] != b"\x93NUMPY" or len(body) < 10:
            return self.raw(body)
        hlen = struct.unpack("<H", body[8:10])[0]
        head = body[10 : 10 + hlen].decode("latin1")
        rest = body[10 + hlen :]
        edits = [
            ("'descr': '<f8'", r.choice(["'descr': '|O'", "'descr': '<U9'", "'descr': '>i2'",
                                         "'descr': [('a','<f8')]", "'descr': '|V8'"])),
            ("'shape': (", r.choice(["'shape': (100000000000, ", "'shape': (-1, ",
                                     "'shape': (0, ", "'shape': (2**40, "])),
            ("'fortran_order': False", "'fortran_order': True"),
        ]  # fmt: skip
        old, new = r.choice(edits)
        head = head.replace(old, new) if old in head else self.raw(head.encode()).decode("latin1")
        head_b = head.encode("latin1")
        return (
            body[:8]
            + struct.pack("<H", len(head_b))
            + head_b
            + self.raw(rest, 1) * (r.random() < 0.3)
            + rest * (r.random() >= 0.3)
        )

    def _csv(self, body: bytes) -> bytes:
        r = self.rng
        lines = body.split(b"\n")
        i = r.randrange(len(lines))
        lines[i] = r.choice(
            [
                b"nan,1,0",
                b"1e400,2,1",
                b"a,b",
                b'"' + b"x" * 200_000 + b'",1,1',
                b",,,,,,",
                b"1,2,3,4,5,6,7",
                b"\xff\xfe\x00",
                b"1;2;3",
            ]
        )
        return b"\n".join(lines)


def repack(
    header: dict[str, Any], blobs: list[bytes], *, fix_digest: bool, rng: random.Random
) -> bytes:
    """Re-serialize a (mutated) container, recomputing the digest as an attacker would."""
    from cifer_flwr.constants import CONTAINER_MAGIC
    from cifer_flwr.crypto import container as ct

    if fix_digest:
        header = {**header, "blobs_sha256": ct._digest(blobs)}
    try:
        head = json.dumps(header, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError):
        head = b"{}"
    parts = [CONTAINER_MAGIC, struct.pack(">I", len(head)), head, struct.pack(">I", len(blobs))]
    for blob in blobs:
        parts.append(struct.pack(">Q", len(blob)))
        parts.append(blob)
    if rng.random() < 0.03:  # lie about a length or the count
        parts[3] = struct.pack(">I", rng.choice(INTERESTING_INTS) % 2**32)
    return b"".join(parts)


# ============================================================================ worker side


class SkipInputError(Exception):
    """The input cannot be delivered (e.g. not representable on Flower's wire format)."""


class Targets:
    """Everything a worker needs, loaded once: keys, a strategy template, honest replies."""

    def __init__(self, root: Path, scratch: Path) -> None:
        from cifer_flwr import crypto

        keys = root / "keys"
        self.root = root
        self.tmp = scratch
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.priv = crypto.load_private_key(keys / "agg" / "private.key")
        self.pub = self.priv.public()
        self.train_priv = crypto.load_private_key(keys / "train" / "private.key")
        self.train_pub = crypto.load_key(keys / "train" / "public.key")
        self.priv.context()
        self.pub.context()
        self.train_pub.context()
        self.train_priv.context()
        self._strategy: dict[bool, dict[str, Any]] = {}
        self._refs: dict[Any, Any] = {}
        from cifer_flwr.crypto.linalg import encrypt_constant

        self.train_ref = encrypt_constant(0.5, self.train_pub)

    # --------------------------------------------------------------- crypto helpers
    def _use(self, parts: dict[str, Any]) -> None:
        """Exercise parsed encrypted arrays like the server and the key holders do.

        The server adds a reply to honest ciphertexts (both operand orders reach SEAL), the
        result is serialized, and a key holder decrypts it.
        """
        import numpy as np

        from cifer_flwr import crypto

        for enc in parts.values():
            for vec in enc.vectors:
                check_accepted(vec, self.pub.params, "encrypted arrays")
            ref = self._refs.get(enc.layout)
            if ref is None and len(enc.vectors) <= 8:
                lay = enc.layout
                zeros = {
                    n: np.zeros(s, dtype=d)
                    for n, s, d in zip(lay.names, lay.shapes, lay.dtypes, strict=True)
                }
                ref = self._refs[enc.layout] = crypto.encrypt(zeros, self.pub)
            pairs = [[enc, enc]] if ref is None else [[ref, enc], [enc, ref]]
            for items in pairs:
                total = crypto.aggregate(items)
                crypto.to_bytes(total)
                crypto.decrypt(total, self.priv, divisor=max(total.weight, 1e-9))

    def container(self, data: bytes) -> None:
        from cifer_flwr.crypto import container

        container.unpack(data)

    def arrays(self, data: bytes) -> None:
        from cifer_flwr import crypto

        self._use({"model": crypto.from_bytes(data, self.pub)})

    def bundle(self, data: bytes) -> None:
        from cifer_flwr import crypto

        self._use(crypto.bundle_from_bytes(data, self.pub))

    def _record(self, entries: list[list[Any]]) -> Any:
        from flwr.app import Array, ArrayRecord

        try:
            arrays = {
                str(name): Array(
                    dtype=str(dtype),
                    shape=tuple(int(s) for s in shape),
                    stype=str(stype),
                    data=base64.b64decode(b64),
                )
                for name, dtype, stype, shape, b64 in entries
            }
            return ArrayRecord(arrays)
        except Exception as exc:
            raise SkipInputError(f"not a valid Flower Array: {exc!r}") from exc

    def record(self, data: bytes) -> None:
        from cifer_flwr import crypto

        obj = json.loads(data)
        record = _wire_record(self._record(obj["arrays"]))
        parts = crypto.bundle_from_record(record, self.pub)
        if "model" in parts:
            crypto.from_array_record(record, self.pub)
        self._use(parts)

    def client(self, data: bytes) -> None:
        from cifer_flwr import crypto, protocol

        obj = json.loads(data)
        record = _wire_record(self._record(obj["arrays"]))
        parts = crypto.bundle_from_record(record, self.priv)
        for enc in parts.values():
            for vec in enc.vectors:
                check_accepted(vec, self.priv.params, "global model")
        protocol.open_global(parts, self.priv, max_round=5)

    def key(self, data: bytes) -> None:
        import numpy as np

        from cifer_flwr import crypto

        path = self.tmp / "fuzz.key"
        path.write_bytes(data)
        path.chmod(0o600)
        key = crypto.load_key(path)
        key = crypto.load_private_key(path) if key.is_private else crypto.load_public_key(path)
        enc = crypto.encrypt({"x": np.linspace(-1, 1, 8)}, key)
        crypto.to_bytes(crypto.aggregate([enc, enc]))
        if key.is_private:
            crypto.decrypt(enc, key)

    def ciphertext(self, data: bytes) -> None:
        from cifer_flwr.crypto.linalg import Ciphertext

        ct = Ciphertext.from_bytes(data, self.train_pub, 0)
        check_accepted(ct._vec, self.train_pub.params, "ciphertext")
        prod = (self.train_ref + ct) * ct + self.train_ref * ct
        prod.window_sum(4).to_bytes()
        prod.decrypt(self.train_priv)

    def enc_dataset(self, data: bytes) -> None:
        from cifer_flwr.crypto.linalg import sum_all
        from cifer_flwr.securetrain.encrypted import load_encrypted_dataset

        path = self.tmp / "fuzz-data.enc"
        path.write_bytes(data)
        ds = load_encrypted_dataset(path, self.train_pub)
        for col in ds.columns:
            for ct in col:
                check_accepted(ct._vec, self.train_pub.params, "encrypted dataset")
        for col in ds.columns:
            total = sum_all([self.train_ref, *col])
            (total * col[0]).window_sum(4).decrypt(self.train_priv)

    def enc_model(self, data: bytes) -> None:
        from cifer_flwr.securetrain.encrypted import decrypt_model, load_encrypted_model

        path = self.tmp / "fuzz-model.enc"
        path.write_bytes(data)
        model = load_encrypted_model(path, self.train_pub)
        for ct in model.coefficients:
            check_accepted(ct._vec, self.train_pub.params, "encrypted model")
        for ct in model.coefficients:
            (self.train_ref * ct + ct).square().to_bytes()
        decrypt_model(model, self.train_priv)

    def _plain_path(self, data: bytes) -> Path:
        ext, _, body = data.partition(b"\0")
        suffix = ext.decode("ascii", "replace")
        if not suffix.startswith(".") or "/" in suffix or len(suffix) > 8:
            suffix = ".bin"
        path = self.tmp / f"fuzz-plain{suffix}"
        path.write_bytes(body)
        return path

    def plain_dataset(self, data: bytes) -> None:
        from cifer_flwr.securetrain.data import load_dataset, signed_design

        signed_design(load_dataset(self._plain_path(data)))

    def plain_model(self, data: bytes) -> None:
        import numpy as np

        from cifer_flwr.securetrain.model import read_model

        model = read_model(self._plain_path(data))
        model.predict_proba(np.zeros((1, model.num_features)))

    # --------------------------------------------------------------- user files, resume
    def masking(self, data: bytes) -> None:
        """One masking payload at its stage, the parties replayed honestly around it."""
        stage, _, payload = data.partition(b"\0")
        name = stage.decode("ascii", "replace")
        if name not in MASKING_STAGES:
            name = MASKING_STAGES[len(stage) % len(MASKING_STAGES)]
        feed_masking(name, payload)

    def fedlearn_config(self, data: bytes) -> None:
        """A JSON config next to the files it names; both readers (each may refuse)."""
        from cifer_flwr.exceptions import CiferError
        from cifer_flwr.fedlearn.config import ClientConfig, ServerConfig

        base = self.tmp / "fedlearn"
        if not base.is_dir():
            base.mkdir()
            for name in FEDLEARN_FILES:
                (base / name).write_bytes(b"")
            (base / "loop").symlink_to(base / "loop")
        path = base / "config.json"
        path.write_bytes(data)
        refused: CiferError | None = None
        accepted = 0
        for reader in (ClientConfig, ServerConfig):
            try:
                reader.from_file(path)
                accepted += 1
            except CiferError as exc:
                refused = exc
        if not accepted and refused is not None:
            raise refused

    def checkpoint(self, data: bytes) -> None:
        """Resume FedAvg and FedAdam from the checkpoint (its key file beside it); what one
        of them restores is checked and decrypted."""
        from cifer_flwr.exceptions import CiferError
        from cifer_flwr.strategies._checkpoint import checkpoint_key_path
        from cifer_flwr.strategies._resume import restore_run

        path = self.tmp / "fuzz.ckpt"
        path.write_bytes(data)
        key_path = checkpoint_key_path(path)
        if not key_path.is_file():
            key_path.write_text((self.root / CHECKPOINT_KEY_FILE).read_text())
            key_path.chmod(0o600)
        refused: CiferError | None = None
        restored = 0
        for fedopt in (False, True):
            strategy, _, _ = _new_strategy(self.pub, fedopt, checkpoint_path=path, resume=True)
            try:
                parts = restore_run(strategy, path, CHECKPOINT_ROUNDS)
                done = strategy.ledger.done
            except CiferError as exc:
                refused = exc
                continue
            restored += 1
            if not 1 <= done <= CHECKPOINT_ROUNDS:
                raise AcceptedInvalidError(f"checkpoint: restored round {done!r}")
            self._use(parts)
        if not restored and refused is not None:
            raise refused

    # --------------------------------------------------------------- strategy
    def strategy(self, data: bytes) -> str:
        return self._strategy_round(data, fedopt=False)

    def strategy_fedopt(self, data: bytes) -> str:
        return self._strategy_round(data, fedopt=True)

    def _strategy_round(self, data: bytes, *, fedopt: bool) -> str:
        import numpy as np
        from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

        from cifer_flwr import crypto, protocol

        setup = self._strategy_setup(fedopt)
        strategy, grid, initial = _new_strategy(self.pub, fedopt)
        strategy.layout = setup["layout"]
        messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid))
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"fuzz-{i}"
        obj = json.loads(data)
        try:
            content = RecordDict(
                {
                    "arrays": self._record(obj["arrays"]),
                    **{k: MetricRecord(v) for k, v in obj.get("metrics", {}).items()},
                    **{k: ConfigRecord(v) for k, v in obj.get("configs", {}).items()},
                }
            )
        except SkipInputError:
            raise
        except Exception as exc:
            raise SkipInputError(f"not a valid Flower RecordDict: {exc!r}") from exc
        # roles: the mutated reply comes from a node not asked for the FedOpt state (node 3
        # for FedAvg); the two honest replies (n = 10, 20) from the others
        nodes = [m.metadata.dst_node_id for m in messages]
        mutated = _MUTATED_NODE
        if fedopt:
            from cifer_flwr.constants import CFG_RETURN_STATE

            unasked = [
                m.metadata.dst_node_id
                for m in messages
                if not m.content.config_records[strategy.configrecord_key].get(CFG_RETURN_STATE)
            ]
            mutated = unasked[-1] if unasked else nodes[-1]
        honest_nodes = [n for n in nodes if n != mutated]
        bodies = dict(zip(honest_nodes, setup["honest"], strict=False))
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            body = bodies.get(node, content)
            try:
                replies.append(_wire(Message(body, reply_to=msg)))
            except Exception as exc:
                raise SkipInputError(f"not deliverable by Flower: {exc!r}") from exc
        try:
            arrays, _ = strategy.aggregate_train(1, replies)
        except Exception as exc:
            raise StrategyRaisedError(exc) from exc
        decrypted = None
        state = None
        if arrays is not None:
            parts = crypto.bundle_from_record(arrays, self.priv)
            for name, enc in parts.items():
                plain = crypto.decrypt(enc, self.priv, divisor=max(enc.weight, 1e-9))
                decrypted = plain if name == "model" else decrypted
                state = plain if name == "state" else state
        if fedopt and state is not None:
            # oracle: the released state is an asked client's, never an injected one
            x, _, _ = protocol.unpack_state(state)
            for name, want in setup["state_x"].items():
                if not np.allclose(x[name], want, atol=1e-4):
                    return "OTHER:the released FedOpt state is not the asked clients' state"
        excluded = [r for node, r in _excluded(strategy) if node == mutated]
        if not excluded:
            return "ok"
        # oracle: with the mutated reply refused, the round completes with the honest two
        honest_out = [r for node, r in _excluded(strategy) if node in bodies]
        if honest_out:  # e.g. the mutated reply duplicated an honest ciphertext
            return f"CiferError:excluded-with-honest:{honest_out[0]}"[:300]
        if decrypted is None:
            return "OTHER:round released nothing although both honest replies were valid"
        for name, want in setup["expected"].items():
            if not np.allclose(decrypted[name], want, atol=1e-4):
                return "OTHER:the aggregate differs from the mean of the honest replies"
        return f"CiferError:excluded:{excluded[0]}"[:300]

    def _strategy_setup(self, fedopt: bool) -> dict[str, Any]:
        if fedopt not in self._strategy:
            import numpy as np
            from flwr.app import ConfigRecord, MetricRecord, RecordDict

            from cifer_flwr import crypto, protocol
            from cifer_flwr.constants import REPLY_RECORD, REPLY_STATE_DIGEST

            rng = np.random.default_rng(11)
            divisor = _strategy_divisor()
            honest = []
            layout = None
            models = []
            state_x = _small_model(np.random.default_rng(5))
            for n in (10, 20):
                models.append((n, _small_model(rng)))
                enc = crypto.encrypt(models[-1][1], self.priv, weight=n / divisor)
                layout = enc.layout
                content: dict[str, Any] = {
                    "metrics": MetricRecord({"num-examples": n, "loss": 0.1}),
                }
                if fedopt:  # both are asked state holders (STATE_HOLDERS = 2)
                    packed = protocol.pack_state(state_x, state_x, state_x)
                    parts = {"model": enc, "state": crypto.encrypt(packed, self.priv)}
                    content[REPLY_RECORD] = ConfigRecord({REPLY_STATE_DIGEST: FEDOPT_DIGEST})
                else:
                    parts = {"model": enc}
                content["arrays"] = crypto.bundle_to_record(parts)
                honest.append(RecordDict(content))
            expected = {
                name: sum(n * m[name].astype(np.float64) for n, m in models) / 30.0
                for name in models[0][1]
            }
            self._strategy[fedopt] = {
                "honest": honest,
                "layout": layout,
                "expected": expected,
                "state_x": state_x,
            }
        return self._strategy[fedopt]

    def selftest(self, data: bytes) -> None:
        """Misbehave on purpose, to test the harness itself (not a parser)."""
        from cifer_flwr.exceptions import CiphertextFormatError

        if data == b"segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif data == b"abort":
            os.abort()
        elif data == b"hang":
            time.sleep(3600)
        elif data == b"raise":
            raise KeyError("selftest")
        elif data == b"cifer":
            raise CiphertextFormatError("selftest")

    def run(self, parser: str, data: bytes) -> str:
        """Run one input; return its outcome line (temporary paths shown as ``<tmp>``)."""
        return self._run(parser, data).replace(str(self.tmp), "<tmp>")

    def _run(self, parser: str, data: bytes) -> str:
        from cifer_flwr.exceptions import CiferError

        if parser not in (*PARSERS, "selftest"):
            return f"skipped:unknown parser {parser!r}"

        try:
            out = getattr(self, parser)(data)
        except SkipInputError as exc:
            return f"skipped:{exc}"[:300]
        except AcceptedInvalidError as exc:
            return f"OTHER:AcceptedInvalid:{exc}"[:300]
        except StrategyRaisedError as exc:
            inner = exc.args[0]
            return f"OTHER:{type(inner).__name__} raised out of aggregate_train:{inner}"[:300]
        except CiferError as exc:
            return f"CiferError:{type(exc).__name__}:{exc}"[:300]
        except Exception as exc:
            return f"OTHER:{type(exc).__name__}:{exc}"[:300]
        return out if isinstance(out, str) else "ok"


class AcceptedInvalidError(Exception):
    """A parser accepted a ciphertext that breaks what docs/design.md §7 requires of it."""


def check_accepted(vec: Any, params: Any, what: str) -> None:
    """Oracle for an *accepted* TenSEAL vector: one SEAL ciphertext of 2 polynomials at the
    preset's scale and ring degree (issue 9, requirement 1). Raises AcceptedInvalidError."""
    cts = vec.ciphertext()
    if len(cts) != 1:
        raise AcceptedInvalidError(f"{what}: accepted a vector of {len(cts)} SEAL ciphertexts")
    ct = cts[0]
    if ct.size() != 2:
        raise AcceptedInvalidError(f"{what}: accepted a ciphertext of {ct.size()} polynomials")
    if ct.poly_modulus_degree() != params.poly_modulus_degree:
        raise AcceptedInvalidError(f"{what}: accepted ring degree {ct.poly_modulus_degree()}")
    if not math.isclose(ct.scale, 2.0**params.scale_bits, rel_tol=1e-12):
        raise AcceptedInvalidError(f"{what}: accepted scale {ct.scale!r}")
    if not ct.is_ntt_form():
        raise AcceptedInvalidError(f"{what}: accepted a ciphertext not in NTT form")


class StrategyRaisedError(Exception):
    """Anything (even a CiferError) that escaped ``aggregate_train``."""


_MUTATED_NODE = 3


def _excluded(strategy: Any) -> list[tuple[int, str]]:
    excluded = getattr(strategy, "excluded", {}).get(1, [])
    out = []
    for item in excluded:
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            out.append((int(item[0]), str(item[1])))
        elif isinstance(item, dict):
            out.append((int(item.get("node", item.get("node_id", -1)) or -1), str(item)))
    return out


def _wire(msg: Any) -> Any:
    from flwr.common.serde import message_from_proto, message_to_proto

    return message_from_proto(message_to_proto(msg))


def _wire_record(record: Any) -> Any:
    """What the server receives: the record through Flower's own protobuf round trip."""
    from flwr.common.serde import array_record_from_proto, array_record_to_proto

    try:
        return array_record_from_proto(array_record_to_proto(record))
    except Exception as exc:
        raise SkipInputError(f"not deliverable by Flower: {exc!r}") from exc


class _FakeGrid:
    """Just enough of a Flower Grid for ``configure_train`` to sample nodes 1, 2, 3."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _new_strategy(pub: Any, fedopt: bool = False, **kwargs: Any) -> tuple[Any, Any, Any]:
    from flwr.supercore.task_identity import TaskIdentity

    from cifer_flwr import crypto, strategies

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 0
    cls = strategies.FedAdam if fedopt else strategies.FedAvg
    strategy = cls(
        public_key=pub,
        min_train_nodes=3,
        min_available_nodes=3,
        examples_per_client=20.0,
        **kwargs,
    )
    import numpy as np

    initial = crypto.bundle_to_record(
        {"model": crypto.encrypt(_small_model(np.random.default_rng(3)), pub)}
    )
    return strategy, _FakeGrid(), initial


def _strategy_divisor() -> float:
    from cifer_flwr import protocol

    return float(protocol.weight_divisor(3, 20.0))


def worker_main(root: str, scratch: str, out_fd: int, mem_mb: int) -> None:
    """Serve inputs from stdin: ``u32 name length | name | u64 length | data`` frames."""
    import logging
    import resource

    if mem_mb > 0:
        limit = mem_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.CRITICAL)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cifer_flwr.crypto  # noqa: F401  (before any h5py/torch import, see crypto/__init__)

    # the plaintext model readers' libraries are imported before "ready" (the start-up wait
    # is 300 s): a first import under heavy load took over the per-input timeout, a "hang"
    for module in ("h5py", "torch"):
        with contextlib.suppress(ImportError):
            __import__(module)
    targets = Targets(Path(root), Path(scratch))
    out = os.fdopen(out_fd, "wb", buffering=0)
    stdin = sys.stdin.buffer

    def send(text: str) -> None:
        body = text.encode("utf-8", "replace")
        out.write(struct.pack(">I", len(body)) + body)

    send("ready")
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack(">I", head)
        parser = stdin.read(n).decode()
        (size,) = struct.unpack(">Q", stdin.read(8))
        data = stdin.read(size)
        send(targets.run(parser, data))


# ============================================================================ parent side


@dataclass
class Outcome:
    parser: str
    status: str  # ok | CiferError:X | OTHER:... | crash:SIG | hang | skipped:...
    data: bytes

    @property
    def column(self) -> str:
        head = self.status.split(":", 1)[0]
        return {"OTHER": "other"}.get(head, head)


class Worker:
    """One long-lived worker subprocess with a status pipe."""

    def __init__(self, root: Path, mem_mb: int, scratch: Path) -> None:
        self.scratch = scratch
        self.root = root
        self.mem_mb = mem_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.rfd = -1
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (kept open across restarts)
        self.start()

    def start(self) -> None:
        rfd, wfd = os.pipe()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.root)]
        cmd += ["--worker-fd", str(wfd), "--mem-limit-mb", str(self.mem_mb)]
        cmd += ["--worker-scratch", str(self.scratch)]
        self.stderr.seek(0)
        self.stderr.truncate()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            pass_fds=(wfd,),
            start_new_session=True,
            cwd=str(ROOT),
        )
        os.close(wfd)
        self.rfd = rfd
        status = self.read(timeout=300.0)
        if status != "ready":
            self.stderr.seek(0)
            tail = self.stderr.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError(f"fuzz worker did not start ({status}):\n{tail}")

    def read(self, timeout: float) -> str:
        """The next status line, ``crash:<signal>`` if the worker died, ``hang`` on timeout."""
        deadline = time.monotonic() + timeout
        buf = b""
        need = 4
        length: int | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "hang"
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                return "hang"
            chunk = os.read(self.rfd, need - len(buf))
            if not chunk:
                return self._death()
            buf += chunk
            if len(buf) < need:
                continue
            if length is None:
                (length,) = struct.unpack(">I", buf)
                buf, need = b"", length
                if need == 0:
                    return ""
                continue
            return buf.decode("utf-8", "replace")

    def _death(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
        else:
            name = f"exit {code}"
        self.stderr.seek(0)
        tail = self.stderr.read()[-400:].decode("utf-8", "replace").strip().splitlines()
        return f"crash:{name}" + (f":{tail[-1]}" if tail else "")

    def send(self, parser: str, data: bytes) -> bool:
        assert self.proc is not None and self.proc.stdin is not None
        name = parser.encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(name)) + name)
            self.proc.stdin.write(struct.pack(">Q", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        os.close(self.rfd)
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        os.close(self.rfd)
        self.stderr.close()


class Pool:
    """Runs inputs on ``size`` workers; a crash or hang restarts only the affected worker."""

    def __init__(self, root: Path, size: int = 2, *, timeout: float = DEFAULT_TIMEOUT,
                 mem_mb: int = DEFAULT_MEM_MB) -> None:  # fmt: skip
        self.timeout = timeout
        # the workers' temporary files live here; removed by close(), even after crashes
        self.scratch = Path(tempfile.mkdtemp(prefix="cifer-fuzz-"))
        self.workers = [Worker(root, mem_mb, self.scratch / f"w{i}") for i in range(max(1, size))]

    def run(self, items: Iterator[tuple[str, bytes]]) -> Iterator[Outcome]:
        """Yield one :class:`Outcome` per input (order of completion)."""
        busy: dict[int, tuple[Worker, str, bytes, float]] = {}
        idle = list(self.workers)
        exhausted = False
        while True:
            while idle and not exhausted:
                try:
                    parser, data = next(items)
                except StopIteration:
                    exhausted = True
                    break
                w = idle.pop()
                if not w.send(parser, data):
                    yield Outcome(parser, w._death(), data)
                    w.restart()
                    idle.append(w)
                    continue
                busy[w.rfd] = (w, parser, data, time.monotonic() + self.timeout)
            if not busy:
                return
            now = time.monotonic()
            wait = max(0.0, min(d for _, _, _, d in busy.values()) - now)
            ready, _, _ = select.select(list(busy), [], [], wait)
            if not ready:  # the earliest deadline passed: that worker hangs
                fd = min(busy, key=lambda k: busy[k][3])
                ready = [fd] if busy[fd][3] <= time.monotonic() else []
                for fd in ready:
                    w, parser, data, _ = busy.pop(fd)
                    yield Outcome(parser, "hang", data)
                    w.restart()
                    idle.append(w)
                continue
            for fd in ready:
                w, parser, data, deadline = busy.pop(fd)
                status = w.read(max(0.1, deadline - time.monotonic()))
                yield Outcome(parser, status, data)
                if status == "hang" or status.startswith("crash"):
                    w.restart()
                idle.append(w)

    def close(self) -> None:
        for w in self.workers:
            w.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


# ============================================================================ campaign


def schedule(parsers: list[str], budget: int) -> dict[str, int]:
    """Split ``budget`` inputs over ``parsers`` by :data:`SHARE` (each gets at least one)."""
    total = sum(SHARE[p] for p in parsers)
    counts = {p: max(1, int(budget * SHARE[p] / total)) for p in parsers}
    i = 0
    while sum(counts.values()) < budget:
        counts[parsers[i % len(parsers)]] += 1
        i += 1
    return counts


def generate(
    mats: Materials, parsers: list[str], budget: int, seed: int
) -> Iterator[tuple[str, bytes]]:
    """Deterministic stream of ``(parser, input)``, interleaving the parsers."""
    rng = random.Random(seed)
    mut = Mutator(mats, rng)
    counts = schedule(parsers, budget)
    order = [p for p in parsers for _ in range(counts[p])]
    rng.shuffle(order)
    for parser in order:
        seed_bytes = rng.choice(mats.seeds[parser])
        data = seed_bytes
        # mostly one mutation round; sometimes stacked rounds for deeper changes
        for _ in range(rng.choice((1, 1, 1, 1, 2, 3))):
            data = mut.mutate(parser, data)
        yield parser, data


def save_finding(corpus: Path, mats: Materials, out: Outcome) -> Path:
    """Store a crasher/hang/non-CiferError input with its key fingerprints (for replay)."""
    corpus.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(out.parser.encode() + out.data).hexdigest()[:16]
    path = corpus / f"{out.parser}__{out.column}__{digest}.bin"
    path.write_bytes(out.data)
    meta = {"parser": out.parser, "status": out.status, "fingerprints": mats.fingerprints()}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def _rekey_checkpoint(data: bytes, pairs: list[tuple[bytes, bytes]], key: bytes) -> bytes:
    """Swap fingerprints in a checkpoint (state and model) and re-MAC it with ``key``."""
    from cifer_flwr.crypto import container as ct
    from cifer_flwr.strategies._checkpoint import _mac

    try:
        header, blobs = ct.unpack(data)
    except Exception:
        return data
    text = json.dumps({k: v for k, v in header.items() if k not in ("kind", "blobs_sha256")})
    for a, b in pairs:
        text = text.replace(a.decode(), b.decode())
        blobs = [blob.replace(a, b) for blob in blobs]
    header = json.loads(text)
    if isinstance(header.get("state"), dict):
        head = {"state": header["state"], "format": header.get("format")}
        header["mac"] = _mac(key, head, blobs)
    return ct.pack(str(header.pop("kind", "cifer.strategy-checkpoint")), header, blobs)


def rekey(
    data: bytes,
    parser: str,
    old: dict[str, str],
    new: dict[str, str],
    checkpoint_key: bytes | None = None,
) -> bytes:
    """Replace the fingerprints of the keys a corpus input was found with by the current ones.

    Fingerprints are 32 hex digits in JSON headers; the container digest covers only the
    blobs, so replacing them keeps a valid digest valid. Key files carry their own material
    and are left as found.
    """
    if parser in ("key", "fedlearn_config", "masking"):
        return data
    pairs = [(old[r].encode(), new[r].encode()) for r in old if r in new and old[r] != new[r]]
    if parser == "checkpoint" and checkpoint_key is not None:
        return _rekey_checkpoint(data, pairs, checkpoint_key)
    if parser in STRUCTURED_PARSERS:
        obj = json.loads(data)
        for entry in obj["arrays"]:
            raw = base64.b64decode(entry[4])
            for a, b in pairs:
                raw = raw.replace(a, b)
            entry[4] = base64.b64encode(raw).decode()
        return _dumps(obj)
    for a, b in pairs:
        data = data.replace(a, b)
    return data


def corpus_items(corpus: Path, mats: Materials) -> list[tuple[str, bytes, Path]]:
    """Every corpus input, re-keyed to ``mats``."""
    new = mats.fingerprints()
    items = []
    for path in sorted(corpus.glob("*.bin")):
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        parser = meta.get("parser", path.name.split("__")[0])
        data = rekey(
            path.read_bytes(), parser, meta.get("fingerprints", {}), new, mats.checkpoint_key()
        )
        items.append((parser, data, path))
    return items


def tally(outcomes: list[Outcome], parsers: list[str]) -> dict[str, dict[str, int]]:
    table = {p: {"inputs": 0, **{c: 0 for c in STATUS_COLUMNS}} for p in parsers}
    for o in outcomes:
        row = table.setdefault(o.parser, {"inputs": 0, **{c: 0 for c in STATUS_COLUMNS}})
        row["inputs"] += 1
        row[o.column] = row.get(o.column, 0) + 1
    return table


def format_table(table: dict[str, dict[str, int]]) -> str:
    cols = ("inputs", *STATUS_COLUMNS)
    lines = [f"{'parser':<14}" + "".join(f"{c:>11}" for c in cols)]
    total = dict.fromkeys(cols, 0)
    for parser, row in table.items():
        lines.append(f"{parser:<14}" + "".join(f"{row.get(c, 0):>11}" for c in cols))
        for c in cols:
            total[c] += row.get(c, 0)
    lines.append(f"{'TOTAL':<14}" + "".join(f"{total[c]:>11}" for c in cols))
    return "\n".join(lines)


def is_failure(o: Outcome) -> bool:
    return o.column in ("other", "crash", "hang")


def run_campaign(
    mats: Materials,
    parsers: list[str],
    budget: int,
    seed: int,
    *,
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    mem_mb: int = DEFAULT_MEM_MB,
    corpus: Path | None = None,
    progress: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Fuzz ``budget`` inputs; failures are saved to ``corpus`` when given."""
    pool = Pool(mats.root, workers, timeout=timeout, mem_mb=mem_mb)
    outcomes: list[Outcome] = []
    try:
        for i, out in enumerate(pool.run(generate(mats, parsers, budget, seed))):
            outcomes.append(out)
            if corpus is not None and is_failure(out):
                save_finding(corpus, mats, out)
            if progress is not None:
                progress(i, out)
    finally:
        pool.close()
    return outcomes


def replay(
    mats: Materials,
    corpus: Path,
    *,
    workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
    mem_mb: int = DEFAULT_MEM_MB,
) -> list[tuple[Path, Outcome]]:
    """Run every corpus input once; returns ``(file, outcome)`` pairs."""
    items = corpus_items(corpus, mats)
    by_data: dict[tuple[str, bytes], list[Path]] = {}
    for parser, data, path in items:
        by_data.setdefault((parser, data), []).append(path)
    pool = Pool(mats.root, workers, timeout=timeout, mem_mb=mem_mb)
    results: list[tuple[Path, Outcome]] = []
    try:
        for out in pool.run(iter([(p, d) for p, d, _ in items])):
            for path in by_data[(out.parser, out.data)]:
                results.append((path, out))
    finally:
        pool.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=2000, help="number of inputs (all parsers)")
    ap.add_argument("--seed", type=int, default=0, help="mutation RNG seed")
    ap.add_argument("--parsers", default=",".join(PARSERS), help="comma-separated subset")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per input")
    ap.add_argument("--mem-limit-mb", type=int, default=DEFAULT_MEM_MB)
    ap.add_argument("--materials", type=Path, help="keys/seeds directory (created if missing)")
    ap.add_argument("--corpus-dir", type=Path, help="save crashers, hangs and other errors here")
    ap.add_argument("--replay", type=Path, help="run every input of this corpus and exit")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="outcome classes per parser")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.worker_scratch, args.worker_fd, args.mem_limit_mb)
        return 0
    parsers = [p.strip() for p in args.parsers.split(",") if p.strip()]
    unknown = sorted(set(parsers) - set(PARSERS))
    if unknown:
        ap.error(f"unknown parsers {unknown}; choose from {', '.join(PARSERS)}")
    tmp = None
    if args.materials is None:
        tmp = tempfile.TemporaryDirectory(prefix="cifer-fuzz-materials-")
        args.materials = Path(tmp.name)
    try:
        return _campaign_main(args, parsers)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _campaign_main(args: argparse.Namespace, parsers: list[str]) -> int:
    t0 = time.perf_counter()
    mats = build_materials(args.materials)
    if args.replay:
        results = replay(mats, args.replay, workers=args.workers, timeout=args.timeout,
                         mem_mb=args.mem_limit_mb)  # fmt: skip
        bad = [(p, o) for p, o in results if is_failure(o)]
        for path, out in results:
            print(f"{path.name}: {out.status}")
        print(f"{len(results)} corpus inputs, {len(bad)} still failing")
        return 1 if bad else 0
    findings: list[Outcome] = []

    def progress(i: int, out: Outcome) -> None:
        if is_failure(out):
            findings.append(out)
            if not args.json:
                print(f"  [{i}] {out.parser}: {out.status[:160]}", file=sys.stderr)

    outcomes = run_campaign(
        mats,
        parsers,
        args.budget,
        args.seed,
        workers=args.workers,
        timeout=args.timeout,
        mem_mb=args.mem_limit_mb,
        corpus=args.corpus_dir,
        progress=progress,
    )
    table = tally(outcomes, parsers)
    statuses: dict[str, dict[str, int]] = {}
    for o in outcomes:
        label = o.status.split(":", 2)[:2] if o.column == "CiferError" else [o.column]
        row = statuses.setdefault(o.parser, {})
        row[":".join(label)] = row.get(":".join(label), 0) + 1
    elapsed = time.perf_counter() - t0
    distinct: dict[str, int] = {}
    for o in findings:
        sig = f"{o.parser} | {o.status[:120]}"
        distinct[sig] = distinct.get(sig, 0) + 1
    if args.json:
        report = {"seed": args.seed, "budget": args.budget, "seconds": round(elapsed, 1)}
        report |= {"parsers": table, "statuses": statuses, "findings": distinct}
        print(json.dumps(report, indent=1))
    else:
        print(format_table(table))
        print(f"{len(outcomes)} inputs in {elapsed:.0f} s (seed {args.seed})")
        if args.verbose:
            for parser, row in statuses.items():
                print(f"  {parser}: {dict(sorted(row.items(), key=lambda kv: -kv[1]))}")
            messages: dict[str, int] = {}
            for o in outcomes:
                if o.column == "CiferError":
                    sig = f"{o.parser} | {o.status[:100]}"
                    messages[sig] = messages.get(sig, 0) + 1
            print("most frequent refusals:")
            for sig, n in sorted(messages.items(), key=lambda kv: -kv[1])[:40]:
                print(f"  {n:5d}  {sig}")
        for sig, n in sorted(distinct.items(), key=lambda kv: -kv[1]):
            print(f"  {n:5d}  {sig}")
    failures = sum(1 for o in outcomes if is_failure(o))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
