"""Measurements behind ``cifer bench``: one run compares a preset, NVIDIA FLARE's set and numpy."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cifer_flwr import crypto
from cifer_flwr.crypto import paillier
from cifer_flwr.exceptions import ConfigError

__all__ = ["ROUND_VARIANTS", "bench_crypto", "bench_round", "client_updates"]

Progress = Callable[[str], None]


def client_updates(
    num_params: int, clients: int, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Make ``clients`` realistic fp32 updates (a shared model plus client drift) and weights.

    Returns
    -------
    updates : list of dict
        One ``{"weights": array}`` per client, values in about [-1.1, 1.1].
    weights : ndarray
        ``n_i / N`` for example counts ``n_i`` drawn from 100..10000.

    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(-1.0, 1.0, num_params)
    updates = [
        {"weights": (base + 0.1 * rng.uniform(-1.0, 1.0, num_params)).astype(np.float32)}
        for _ in range(clients)
    ]
    n = rng.integers(100, 10_000, clients).astype(np.float64)
    return updates, n / n.sum()


def _time(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _bench_preset(
    preset: str, updates: list[dict[str, np.ndarray]], weights: np.ndarray, progress: Progress
) -> dict[str, float]:
    if paillier.is_paillier_preset(preset):  # same fields, crypto/paillier.py
        return paillier.bench_preset(preset, updates, [float(w) for w in weights], progress)
    key = crypto.generate_key(preset)
    server_key = key.public()
    encs, enc_s, blobs, ser_s = [], 0.0, [], 0.0
    for i, (upd, w) in enumerate(zip(updates, weights, strict=True)):
        progress(f"{preset}: encrypting client {i + 1}/{len(updates)}")
        t0 = time.perf_counter()
        enc = crypto.encrypt(upd, key, weight=float(w), summands=len(updates))
        t1 = time.perf_counter()
        blob = crypto.to_bytes(enc)
        enc_s += t1 - t0
        ser_s += time.perf_counter() - t1
        encs.append(enc)
        blobs.append(blob)
    del encs
    progress(f"{preset}: server deserializes and sums {len(blobs)} updates")
    loaded, deser_s = _time(lambda: [crypto.from_bytes(b, server_key) for b in blobs])
    total, agg_s = _time(lambda: crypto.aggregate(loaded))
    progress(f"{preset}: key holder decrypts")
    plain, dec_s = _time(lambda: crypto.decrypt(total, key))
    download = len(crypto.to_bytes(total))
    exact = sum(w * u["weights"].astype(np.float64) for u, w in zip(updates, weights, strict=True))
    err = float(np.abs(plain["weights"].astype(np.float64) - exact).max() / np.abs(exact).max())
    fp32_bytes = updates[0]["weights"].size * 4
    k = len(updates)
    return {
        "expansion": float(np.mean([len(b) for b in blobs]) / fp32_bytes),
        "upload_x": float(np.mean([len(b) for b in blobs]) / fp32_bytes),
        "download_x": download / fp32_bytes,
        "encrypt_s": enc_s / k,
        "serialize_s": ser_s / k,
        "deserialize_s": deser_s / k,
        "aggregate_s": agg_s,
        "decrypt_s": dec_s,
        "rel_error": err,
    }


def bench_crypto(
    num_params: int = 1_000_000,
    clients: int = 10,
    preset: str = "default",
    *,
    baseline: str = "nvflare",
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure one preset, the baseline preset and plaintext numpy on the same updates.

    Per-client times (encrypt, serialize, deserialize) are means over clients; ``aggregate_s``
    is the server's K-client homomorphic sum; ``decrypt_s`` one decryption of the sum;
    ``rel_error`` is ``max|decrypted - exact| / max|exact|`` of the weighted sum.

    Returns
    -------
    dict
        Flat results: the preset's figures, the same with suffix ``_<baseline>``,
        ``plain_aggregate_s`` and the run settings.

    """
    report = progress or (lambda _msg: None)
    for name in (preset, baseline):
        if not paillier.is_paillier_preset(name):
            crypto.get_preset(name)
    updates, weights = client_updates(num_params, clients, seed)
    ours = _bench_preset(preset, updates, weights, report)
    base = _bench_preset(baseline, updates, weights, report)
    arrays = [u["weights"] for u in updates]
    _, plain_s = _time(lambda: sum(w * a for a, w in zip(arrays, weights, strict=True)))
    result: dict[str, Any] = {
        "preset": preset,
        "baseline": baseline,
        "params": num_params,
        "clients": clients,
        **ours,
        **{f"{k}_{baseline}": v for k, v in base.items()},
        "plain_aggregate_s": plain_s,
    }
    result["aggregate_vs_plain"] = ours["aggregate_s"] / max(plain_s, 1e-9)
    return result


# --------------------------------------------------------------------------- one round
#: Variants of :func:`bench_round`: Flower's plaintext FedAvg, then encrypted presets.
ROUND_VARIANTS = ("plaintext", "default", "packed", "nvflare")
_WEIGHTED_BY = "num-examples"
_ARRAYS = "arrays"


def _client_counts(clients: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 10_000, clients)


def _client_update(num_params: int, node: int, seed: int) -> np.ndarray:
    """Client ``node``'s fp32 model (shared base plus drift, values in about [-1.1, 1.1])."""
    base = np.random.default_rng(seed).uniform(-1.0, 1.0, num_params)
    drift = np.random.default_rng([seed, node]).uniform(-1.0, 1.0, num_params)
    return (base + 0.1 * drift).astype(np.float32)


def _fedavg_oracle(num_params: int, clients: int, seed: int) -> np.ndarray:
    """Example-weighted mean of the clients' models in float64 (numpy, no Flower)."""
    counts = _client_counts(clients, seed)
    acc = np.zeros(num_params)
    for node in range(1, clients + 1):
        acc += float(counts[node - 1]) * _client_update(num_params, node, seed)
    return acc / float(counts.sum())


class _FileGrid:
    """The ServerApp's side of :func:`bench_round`: replies come from files, one by one.

    ``push_messages`` writes the first train message (all carry the same global model)
    and each node's config, tells the parent on stdout, and returns when the parent
    says ``GO`` on stdin (every reply file is then written); ``pull_messages`` reads the
    reply files asked for and deletes them, so the process holds only what it pulled.
    """

    pull_interval = 0.01

    def __init__(self, workdir: Path, clients: int) -> None:
        self.workdir = workdir
        self.nodes = list(range(1, clients + 1))
        self.go: float | None = None
        self.pushes = 0

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Any) -> list[str]:
        from flwr.common.serde import message_to_proto

        messages = list(messages)
        self.pushes += 1
        if not messages:
            return []
        first = messages[0]
        configs = {}
        for msg in messages:
            cfg = msg.content.config_records.get("config")
            configs[str(msg.metadata.dst_node_id)] = {} if cfg is None else dict(cfg)
        (self.workdir / "configs.json").write_text(json.dumps(configs))
        (self.workdir / "ins.pb").write_bytes(message_to_proto(first).SerializeToString())
        print("PUSHED", flush=True)
        line = sys.stdin.readline().strip()
        if line != "GO":
            raise ConfigError(f"bench server expected GO on stdin, got {line[:40]!r}.")
        self.go = time.perf_counter()
        return [f"m{msg.metadata.dst_node_id}" for msg in messages]

    def pull_messages(self, message_ids: Any) -> list[Any]:
        from flwr.common.serde import message_from_proto
        from flwr.proto.message_pb2 import Message as MessageProto

        out = []
        for mid in message_ids:
            path = self.workdir / f"reply_{mid}.pb"
            if not path.exists():
                continue
            proto = MessageProto()
            proto.ParseFromString(path.read_bytes())
            path.unlink()
            out.append(message_from_proto(proto))
        return out

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        from cifer_flwr.strategies import stream_replies

        return list(stream_replies(self, messages, timeout))  # type: ignore[arg-type]


def _children_peak_rss_kb(parent: int) -> int:
    """Sum of the peak RSS (``VmHWM``) of ``parent``'s live children: its crypto workers."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


def _serve(workdir: str) -> None:
    """Entry point of the server subprocess: one round of the configured strategy."""
    import resource

    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from cifer_flwr import strategies

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    wd = Path(workdir)
    settings = json.loads((wd / "settings.json").read_text())
    clients, num_params = int(settings["clients"]), int(settings["params"])
    grid = _FileGrid(wd, clients)
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": clients,
        "min_available_nodes": clients,
    }
    strategy: Any
    if settings["variant"] == "plaintext":
        strategy = FlowerFedAvg(**common)
    else:
        strategy = strategies.FedAvg(
            public_key=settings["public_key"], examples_per_client=5000.0, **common
        )
    ends: list[float] = []
    train = strategy.aggregate_train

    def timed(server_round: int, replies: Any) -> Any:
        out = train(server_round, replies)
        ends.append(time.perf_counter())
        return out

    strategy.aggregate_train = timed
    initial = ArrayRecord({"weights": Array(np.zeros(num_params, dtype=np.float32))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = _children_peak_rss_kb(os.getpid())
    if grid.go is None or not ends:
        raise ConfigError("bench server: the round did not run.")
    arrays = result.arrays
    if settings["variant"] == "plaintext":
        np.save(wd / "global.npy", arrays["weights"].numpy())
    else:
        from flwr.app import Message, RecordDict
        from flwr.common.serde import message_to_proto

        msg = Message(RecordDict({_ARRAYS: arrays}), dst_node_id=1, message_type="evaluate")
        (wd / "global.pb").write_bytes(message_to_proto(msg).SerializeToString())
    report = {
        "server_s": ends[0] - grid.go,
        "server_peak_rss_mb": (peak_kb + workers_kb) / 1024.0,
        "server_workers_rss_mb": workers_kb / 1024.0,
        "download_bytes": arrays.count_bytes(),
        "released": len(arrays) > 0,
    }
    print("RESULT " + json.dumps(report), flush=True)


def _client_app(
    captured: dict[str, np.ndarray], update: Callable[[int], np.ndarray], encrypted: bool
) -> Any:
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from cifer_flwr.mods import ckks_mod

    app = ClientApp(mods=[ckks_mod] if encrypted else None)
    counts: dict[int, int] = {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = int(context.node_id)
        arrays = ArrayRecord({"weights": Array(update(node))})
        content = RecordDict(
            {_ARRAYS: arrays, "metrics": MetricRecord({_WEIGHTED_BY: counts[node]})}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        captured["weights"] = msg.content.array_records[_ARRAYS]["weights"].numpy()
        metrics = MetricRecord({_WEIGHTED_BY: 1})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    app.counts = counts  # type: ignore[attr-defined]
    return app


def _round_variant(
    variant: str, clients: int, num_params: int, seed: int, root: Path, progress: Progress
) -> dict[str, Any]:
    import subprocess

    from flwr.app import Context, Message, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as MessageProto
    from flwr.supercore.task_identity import TaskIdentity

    # messages are made outside a Flower process here, as in an in-process test
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    wd = root / variant
    wd.mkdir()
    settings: dict[str, Any] = {"variant": variant, "clients": clients, "params": num_params}
    key: crypto.Key | None = None
    private = ""
    if variant != "plaintext":
        key = crypto.generate_key(variant)
        private, public = (str(p) for p in crypto.write_key_pair(key, wd / "keys"))
        settings["public_key"] = public
    (wd / "settings.json").write_text(json.dumps(settings))
    server = subprocess.Popen(
        [sys.executable, "-c", f"from cifer_flwr.tooling.bench import _serve; _serve({str(wd)!r})"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        for line in server.stdout:
            if line.strip() == "PUSHED":
                break
        else:
            raise ConfigError(f"bench server for {variant!r} exited before sending the round.")
        progress(f"{variant}: {clients} clients train and reply")
        captured: dict[str, np.ndarray] = {}
        counts = _client_counts(clients, seed)
        app = _client_app(
            captured, lambda node: _client_update(num_params, node, seed), key is not None
        )
        configs = json.loads((wd / "configs.json").read_text())
        ins = MessageProto()
        ins.ParseFromString((wd / "ins.pb").read_bytes())
        template = message_from_proto(ins)
        download = template.content.array_records[_ARRAYS].count_bytes()
        upload, enc_s, app_s = 0, 0.0, 0.0
        for node in range(1, clients + 1):
            app.counts[node] = int(counts[node - 1])
            content = RecordDict(
                {
                    _ARRAYS: template.content.array_records[_ARRAYS],
                    "config": template.content.config_records["config"].__class__(
                        configs[str(node)]
                    ),
                }
            )
            msg = Message(content, dst_node_id=node, message_type=template.metadata.message_type)
            msg.metadata.__dict__["_message_id"] = f"m{node}"
            ctx = Context(
                run_id=1,
                node_id=node,
                node_config={"private-key": private} if private else {},
                state=RecordDict(),
                run_config={},
            )
            t0 = time.perf_counter()
            reply = app(msg, ctx)
            app_s += time.perf_counter() - t0
            if reply.has_error():
                raise ConfigError(f"{variant}: client {node} failed: {reply.error.reason}")
            metrics = next(iter(reply.content.metric_records.values()))
            enc_s += float(metrics.get("cifer-encrypt-s", 0.0))
            upload += reply.content.array_records[_ARRAYS].count_bytes()
            path = wd / f"reply_m{node}.pb"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(message_to_proto(reply).SerializeToString())
            tmp.rename(path)
            del reply, msg, content
        progress(f"{variant}: the server receives, parses and aggregates")
        server.stdin.write("GO\n")
        server.stdin.flush()
        report: dict[str, Any] | None = None
        for line in server.stdout:
            if line.startswith("RESULT "):
                report = json.loads(line[len("RESULT ") :])
        if server.wait() != 0 or report is None:
            raise ConfigError(f"bench server for {variant!r} failed (exit {server.returncode}).")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    fp32 = 4 * num_params
    out: dict[str, Any] = {
        "upload_x": upload / clients / fp32,
        "download_x": report["download_bytes"] / fp32,
        "client_encrypt_s": enc_s / clients,
        "client_decrypt_s": 0.0,
        "server_s": report["server_s"],
        "server_peak_rss_mb": report["server_peak_rss_mb"],
        "server_workers_rss_mb": report["server_workers_rss_mb"],
    }
    if variant == "plaintext":
        out["client_other_s"] = app_s / clients
        out["global"] = np.load(wd / "global.npy")
        return out
    progress(f"{variant}: a key holder decrypts the aggregate")
    glob = MessageProto()
    glob.ParseFromString((wd / "global.pb").read_bytes())
    evaluate = message_from_proto(glob)
    content = RecordDict(
        {
            _ARRAYS: evaluate.content.array_records[_ARRAYS],
            "config": template.content.config_records["config"].__class__({"server-round": 1}),
        }
    )
    msg = Message(content, dst_node_id=1, message_type="evaluate")
    ctx = Context(
        run_id=1, node_id=1, node_config={"private-key": private}, state=RecordDict(), run_config={}
    )
    t0 = time.perf_counter()
    reply = app(msg, ctx)
    out["client_decrypt_s"] = time.perf_counter() - t0
    if reply.has_error() or "weights" not in captured:
        raise ConfigError(f"{variant}: decrypting the aggregate failed: {reply.error.reason}")
    out["client_other_s"] = app_s / clients - out["client_encrypt_s"]
    out["global"] = captured["weights"]
    del download
    return out


def bench_round(
    clients: int = 100,
    num_params: int = 1_000_000,
    variants: tuple[str, ...] = ROUND_VARIANTS,
    *,
    seed: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure one FedAvg round, side by side: Flower's plaintext FedAvg and encrypted presets.

    Each variant runs the real strategy in its own server process (so its peak RSS is
    real), fed by reply files that the real ClientApp with :func:`cifer_flwr.mods.ckks_mod`
    wrote in this process; the server pulls and aggregates them one by one as from a
    SuperLink. A preset this build does not have is reported ``{"missing": reason}``.

    Returns
    -------
    dict
        ``{"clients", "params", "variants": {name: figures}}`` with per variant:
        ``upload_x`` / ``download_x`` (bytes per client / fp32 bytes), ``client_encrypt_s``
        (mean per client), ``client_decrypt_s`` (one key holder opens the aggregate),
        ``server_s`` (receive + parse + aggregate), ``server_peak_rss_mb`` (the server
        process plus its crypto workers, ``server_workers_rss_mb``) and
        ``max_abs_error`` of the new global model vs Flower's plaintext FedAvg (vs the
        numpy FedAvg oracle when ``plaintext`` is not among ``variants``).

    """
    import tempfile

    report = progress or (lambda _msg: None)
    if clients < 2 or num_params < 1:
        raise ConfigError(f"need clients >= 2 and params >= 1, got {clients} and {num_params}.")
    unknown = [v for v in variants if v != "plaintext" and v not in ROUND_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose from {list(ROUND_VARIANTS)}.")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cifer-bench-round-", dir=workdir) as tmp:
        for variant in variants:
            if variant != "plaintext" and variant not in crypto.PRESETS:
                results[variant] = {
                    "missing": f"this build has no preset {variant!r} (presets: "
                    f"{sorted(crypto.PRESETS)})"
                }
                continue
            report(f"{variant}: starting")
            results[variant] = _round_variant(variant, clients, num_params, seed, Path(tmp), report)
    reference = results.get("plaintext", {}).get("global")
    if reference is None:
        reference = _fedavg_oracle(num_params, clients, seed)
    oracle = _fedavg_oracle(num_params, clients, seed)
    for figures in results.values():
        glob = figures.pop("global", None)
        if glob is not None:
            figures["max_abs_error"] = float(np.max(np.abs(glob.astype(np.float64) - reference)))
            figures["max_abs_error_vs_numpy"] = float(
                np.max(np.abs(glob.astype(np.float64) - oracle))
            )
    return {"clients": clients, "params": num_params, "variants": results}


def bench_masking(
    clients: int = 10,
    num_params: int = 1_000_000,
    dropout: float = 0.1,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One ``packed`` FedAvg round with and without masking, through the protocol's own steps.

    Every client runs :class:`cifer_flwr.masking.ClientSession` (advertise, share, mask) and
    encrypts seeded with :func:`cifer_flwr.crypto.encrypt`; ``round(dropout * clients)``
    clients vanish after sharing (their masks are removed through their key shares); the
    server sums the survivors, runs :class:`cifer_flwr.masking.ServerSession`'s unmask and
    :func:`cifer_flwr.crypto.subtract_mask`. The same updates go through the unmasked
    ``packed`` path for the side-by-side row. No Flower transport: the masking figures are
    the protocol's own cost (docs/design.md §4.9).

    Returns
    -------
    dict
        ``clients``, ``params``, ``dropouts`` and per variant (``packed``, ``packed+masking``):
        ``client_encrypt_s`` (mean, masking included), ``upload_x`` (bytes / fp32 bytes),
        ``server_s`` (sum of the survivors + unmask), ``max_abs_error`` against the numpy
        weighted mean of the survivors; for masking also ``mask_client_s`` (mean advertise +
        share + mask per client), ``mask_bytes_per_client`` (every masking payload, both
        directions), ``unmask_server_s`` and ``dropouts_recovered``.

    """
    from cifer_flwr import masking

    say = progress or (lambda _msg: None)
    if not 3 <= clients <= masking.MAX_COHORT or not 0 <= dropout < 1:
        raise ConfigError(
            f"bench masking needs 3..{masking.MAX_COHORT} clients and 0 <= dropout < 1, got "
            f"{clients} and {dropout}."
        )
    say(f"packed key, {clients} client updates of {num_params:,} parameters")
    key = crypto.generate_key("packed")
    public = key.public()  # the server parses and sums with the public key only
    counts = _client_counts(clients, seed).astype(np.float64)
    divisor = float(counts.sum())
    nodes = list(range(1, clients + 1))
    dropped = set(nodes[clients - round(dropout * clients) :])
    survivors = [n for n in nodes if n not in dropped]
    oracle = sum(counts[n - 1] * _client_update(num_params, n, seed) for n in survivors)
    oracle = oracle / sum(counts[n - 1] for n in survivors)
    fp32 = 4.0 * num_params
    out: dict[str, Any] = {"clients": clients, "params": num_params, "dropouts": len(dropped)}
    variants: dict[str, dict[str, float]] = {}
    for masked in (False, True):
        name = "packed+masking" if masked else "packed"
        say(f"{name}: clients advertise, share, mask and encrypt")
        server = masking.ServerSession(1)
        sessions: dict[int, masking.ClientSession] = {}
        mask_bytes, mask_s = 0, 0.0
        if masked:
            request = server.advertise_request()
            for n in nodes:
                t0 = time.perf_counter()
                sessions[n], reply = masking.ClientSession.advertise(request, n, None, 0)
                mask_s += time.perf_counter() - t0
                server.accept_advert(n, reply)
                mask_bytes += len(request) + len(reply)
            share = server.share_request()
            for n in nodes:
                t0 = time.perf_counter()
                reply = sessions[n].share(share, None)
                mask_s += time.perf_counter() - t0
                server.accept_shares(n, reply)
                mask_bytes += len(share) + len(reply)
            server.fix_cohort()
        uploads, upload_bytes, enc_s = {}, 0, 0.0
        for n in nodes:
            update = {"weights": _client_update(num_params, n, seed).astype(np.float32)}
            t0 = time.perf_counter()
            mask = None
            if masked:
                payload = server.train_payload(n)
                mask_bytes += len(payload)
                t1 = time.perf_counter()
                chunks = crypto.encoding.count_chunks(update, key.params.slots)
                mask = sessions[n].mask(
                    payload, chunks * key.params.slots, key.params.plain_modulus
                )
                mask_s += time.perf_counter() - t1
            enc = crypto.encrypt(
                update, key, weight=counts[n - 1] / divisor, summands=clients, mask=mask
            )
            wire = crypto.to_bytes(enc)
            enc_s += time.perf_counter() - t0
            upload_bytes += len(wire)
            if n in survivors:
                uploads[n] = wire
        say(
            f"{name}: the server sums {len(survivors)} uploads" + (" and unmasks" if masked else "")
        )
        t0 = time.perf_counter()
        total = crypto.aggregate([crypto.from_bytes(w, public) for w in uploads.values()])
        unmask_s = 0.0
        if masked:
            t1 = time.perf_counter()
            request, alive, _ = server.unmask_request(survivors)
            for n in alive:
                reply = sessions[n].unmask(request)
                mask_bytes += len(request) + len(reply)
                server.accept_unmask(n, reply, alive)
            residual = server.residual(
                alive, len(total.vectors) * key.params.slots, key.params.plain_modulus
            )
            total = crypto.subtract_mask(total, residual)
            unmask_s = time.perf_counter() - t1
        server_s = time.perf_counter() - t0
        mean = crypto.decrypt(total, key, divisor=total.weight)["weights"]
        fig = {
            "client_encrypt_s": enc_s / clients,
            "upload_x": upload_bytes / clients / fp32,
            "server_s": server_s,
            "max_abs_error": float(np.abs(mean - oracle).max()),
        }
        if masked:
            fig |= {
                "mask_client_s": mask_s / clients,
                "mask_bytes_per_client": mask_bytes / clients,
                "unmask_server_s": unmask_s,
                "dropouts_recovered": float(len(dropped)),
            }
        variants[name] = fig
    out["variants"] = variants
    return out
