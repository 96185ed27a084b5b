"""Server-side machinery shared by the encrypted strategies (one class per public file).

The mixins sit before Flower's class in the MRO, so every Flower code path that would touch
plaintext (``Array.numpy()``) is replaced; sampling, metrics and the round loop are Flower's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlwrFedAvg
from flwr.serverapp.strategy import Result

from cifer_flwr import crypto, protocol
from cifer_flwr.constants import (
    CFG_RETURN_STATE,
    CFG_WEIGHT_DIVISOR,
    CFG_WEIGHTED_BY,
    PART_MODEL,
    PART_STATE,
    REPLY_RECORD,
    REPLY_STATE_DIGEST,
)
from cifer_flwr.crypto.container import write_file_atomic
from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
    UnsupportedOperationError,
)

__all__ = ["EncryptedFedAvgBase", "EncryptedFedOptBase", "load_server_key"]

log = logging.getLogger("cifer_flwr.strategies")
Parts = dict[str, crypto.EncryptedArrays]


def load_server_key(public_key: str | os.PathLike[str] | crypto.Key) -> crypto.Key:
    """Load the server's key; anything that holds a secret key is refused.

    Raises
    ------
    KeyTypeError
        When the file or object contains a secret key.

    """
    if isinstance(public_key, crypto.Key):
        public_key.require_public("a strategy (server side)")
        return public_key
    return crypto.load_public_key(public_key, holder="a strategy (server side)")


class EncryptedFedAvgBase:
    """Encrypted FedAvg round logic: weights sent in config, additive aggregation only."""

    # provided by Flower's FedAvg
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str
    train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
    _check_and_log_replies: Callable[..., tuple[list[Message], list[Message]]]

    def _init_encryption(
        self,
        public_key: str | os.PathLike[str] | crypto.Key,
        save_path: str | os.PathLike[str] | None,
        examples_per_client: float,
    ) -> None:
        self.key = load_server_key(public_key)
        self.save_path = Path(save_path) if save_path is not None else None
        if not examples_per_client > 0:
            raise ConfigError(f"examples_per_client must be > 0, got {examples_per_client}.")
        self.examples_per_client = float(examples_per_client)
        self.layout: crypto.Layout | None = None
        self.excluded: dict[int, list[tuple[int, str]]] = {}
        self.round_stats: dict[int, dict[str, float]] = {}
        self._min_replies = 1

    # ------------------------------------------------------------------ helpers
    def _summary_encryption(self) -> None:
        p = self.key.params
        log.info(
            "\t├──> CKKS encryption: preset %s (N=%d, %d-bit security), key fingerprint %s",
            p.name,
            p.poly_modulus_degree,
            p.security_bits,
            self.key.short_fingerprint,
        )
        log.info("\t│\t└── server holds ciphertexts and the public key only")

    def _encrypt_initial(self, arrays: Mapping[str, Any]) -> Parts:
        return {PART_MODEL: crypto.encrypt(arrays, self.key)}

    def _model_layout(self, parts: Mapping[str, crypto.EncryptedArrays]) -> crypto.Layout:
        return parts[PART_MODEL].layout

    def _to_parts(self, arrays: ArrayRecord) -> Parts:
        if crypto.is_encrypted_record(arrays):
            return crypto.bundle_from_record(arrays, self.key)
        plain = {name: arr.numpy() for name, arr in arrays.items()}
        return self._encrypt_initial(plain)

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        """Per-message config entries (subclasses add theirs)."""
        return {}

    def _save(self, parts: Parts, server_round: int) -> None:
        if self.save_path is None:
            return
        write_file_atomic(self.save_path, crypto.bundle_to_bytes(parts))
        log.info("saved encrypted global model of round %d to %s", server_round, self.save_path)

    # ------------------------------------------------------------------ Flower API
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run the federated loop on ciphertexts.

        ``initial_arrays`` may be plaintext (encrypted here with the public key before
        round 1) or an encrypted record. The returned ``Result.arrays`` is encrypted.

        Raises
        ------
        UnsupportedOperationError
            When ``evaluate_fn`` is given: server-side evaluation would need the plaintext
            model. Use federated evaluation (clients decrypt) instead.

        """
        if evaluate_fn is not None:
            raise UnsupportedOperationError(
                "server-side evaluate_fn needs the plaintext global model, which the server "
                "never holds under encryption; drop evaluate_fn and rely on federated "
                "evaluation (fraction_evaluate > 0), where the clients decrypt."
            )
        parts = self._to_parts(initial_arrays)
        self.layout = self._model_layout(parts)
        record = crypto.bundle_to_record(parts)
        return super().start(  # type: ignore[misc, no-any-return]
            grid=grid,
            initial_arrays=record,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
        )

    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc, no-any-return]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as Flower does and add the encryption settings to each config."""
        config[CFG_WEIGHTED_BY] = self.weighted_by_key
        messages = list(self._base_configure_train(server_round, arrays, config, grid))
        cohort = len(messages)
        if cohort == 0:
            return []
        divisor = protocol.weight_divisor(cohort, self.examples_per_client)
        out = []
        for index, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            cfg = ConfigRecord(dict(msg.content.config_records[self.configrecord_key]))
            cfg[CFG_WEIGHT_DIVISOR] = divisor
            cfg.update(self._extra_config(index, node, cohort, server_round))
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
            out.append(
                Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
            )
        self.round_stats[server_round] = {
            "bytes-sent": float(arrays.count_bytes() * cohort),
            "weight-divisor": divisor,
        }
        return out

    def _parse_reply(self, msg: Message, server_round: int) -> Parts:
        content = msg.content
        if self.arrayrecord_key not in content.array_records:
            raise CiphertextFormatError(f"reply has no ArrayRecord '{self.arrayrecord_key}'.")
        parts = crypto.bundle_from_record(content.array_records[self.arrayrecord_key], self.key)
        model = parts.get(PART_MODEL)
        if model is None:
            raise CiphertextFormatError(f"reply has parts {sorted(parts)}, no 'model'.")
        if self.layout is not None and model.layout != self.layout:
            raise LayoutMismatchError(
                f"reply layout {list(model.layout.names)} / {list(model.layout.shapes)} does "
                f"not match the global model's {list(self.layout.names)} / "
                f"{list(self.layout.shapes)}."
            )
        n = None
        for record in content.metric_records.values():
            if self.weighted_by_key in record:
                n = float(record[self.weighted_by_key])  # type: ignore[arg-type]
        if n is None or n <= 0:
            raise CiferError(f"reply lacks a positive metric '{self.weighted_by_key}'.")
        expected = n / self.round_stats[server_round]["weight-divisor"]
        if abs(model.weight - expected) > 1e-9 * max(1.0, expected):
            raise CiferError(
                f"reply is weighted {model.weight:.6g} but reports {n:g} examples "
                f"(expected weight {expected:.6g})."
            )
        return parts

    def _accept_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> list[tuple[Message, Parts]]:
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        excluded = self.excluded.setdefault(server_round, [])
        for msg in errors:
            excluded.append((msg.metadata.src_node_id, f"error reply: {msg.error.reason}"))
        accepted = []
        for msg in valid:
            try:
                accepted.append((msg, self._parse_reply(msg, server_round)))
            except CiferError as exc:
                node = msg.metadata.src_node_id
                log.warning("round %d: excluded node %d: %s", server_round, node, exc)
                excluded.append((node, str(exc)))
        return accepted

    def _next_global(
        self,
        server_round: int,
        accepted: list[tuple[Message, Parts]],
        aggregate: crypto.EncryptedArrays,
    ) -> Parts | None:
        return {PART_MODEL: aggregate}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the valid encrypted updates; exclude malformed or wrong-key ones with a reason."""
        replies = list(replies)
        stats = self.round_stats.setdefault(server_round, {})
        stats["bytes-received"] = float(
            sum(
                r.content.array_records[k].count_bytes()
                for r in replies
                if not r.has_error()
                for k in r.content.array_records
            )
        )
        accepted = self._accept_replies(server_round, replies)
        if len(accepted) < self._min_replies:
            log.warning(
                "round %d: %d valid encrypted updates, fewer than the %d required; "
                "nothing is aggregated or released this round.",
                server_round,
                len(accepted),
                self._min_replies,
            )
            return None, None
        t0 = time.perf_counter()
        total = crypto.aggregate([parts[PART_MODEL] for _, parts in accepted])
        total = crypto.with_meta(total, round=server_round)
        new_parts = self._next_global(server_round, accepted, total)
        stats["aggregate-s"] = time.perf_counter() - t0
        self.examples_per_client = total.weight * stats["weight-divisor"] / len(accepted)
        metrics = self.train_metrics_aggr_fn(
            [msg.content for msg, _ in accepted], self.weighted_by_key
        )
        metrics["cifer-aggregate-s"] = stats["aggregate-s"]
        metrics["cifer-excluded"] = len(self.excluded.get(server_round, []))
        if new_parts is None:
            return None, metrics
        self._save(new_parts, server_round)
        return crypto.bundle_to_record(new_parts), metrics


class EncryptedFedOptBase(EncryptedFedAvgBase):
    """FedYogi / FedAdam / FedAdagrad with the deferred key-holder step (DESIGN.md §4.3)."""

    eta: float
    beta_1: float
    beta_2: float
    tau: float
    _opt_kind: protocol.OptKind

    @property
    def optimizer(self) -> protocol.OptimizerSpec:
        """The public optimizer spec key holders apply."""
        return protocol.OptimizerSpec(self._opt_kind, self.eta, self.beta_1, self.beta_2, self.tau)

    def _summary_encryption(self) -> None:
        super()._summary_encryption()
        log.info(
            "\t│\t└── deferred key-holder %s step: state (x, m, v) stays encrypted; one "
            "client returns the refreshed state, all return digests",
            self._opt_kind,
        )

    def _encrypt_initial(self, arrays: Mapping[str, Any]) -> Parts:
        state = crypto.encrypt(protocol.pack_state(dict(arrays), None, None), self.key)
        return {PART_STATE: crypto.with_meta(state, fedopt=self.optimizer.to_dict())}

    def _to_parts(self, arrays: ArrayRecord) -> Parts:
        parts = super()._to_parts(arrays)
        if PART_STATE in parts:
            return parts
        # An encrypted plain model becomes the state ``x`` by renaming its layout: the
        # ciphertexts are already in pack_state's order (x only), nothing is decrypted.
        model = parts[PART_MODEL]
        lay = model.layout
        renamed = crypto.Layout(tuple(f"x/{n}" for n in lay.names), lay.shapes, lay.dtypes)
        state = replace(model, layout=renamed, meta={"fedopt": self.optimizer.to_dict()})
        return {PART_STATE: state}

    def _model_layout(self, parts: Mapping[str, crypto.EncryptedArrays]) -> crypto.Layout:
        state = parts[PART_STATE].layout
        keep = [i for i, n in enumerate(state.names) if n.startswith("x/")]
        return crypto.Layout(
            tuple(state.names[i][2:] for i in keep),
            tuple(state.shapes[i] for i in keep),
            tuple(state.dtypes[i] for i in keep),
        )

    def _base_configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Flower's FedOpt.configure_train reads the plaintext arrays; skip to FedAvg's.
        return FlwrFedAvg.configure_train(self, server_round, arrays, config, grid)  # type: ignore[arg-type]

    def _extra_config(
        self, index: int, node_id: int, cohort: int, server_round: int
    ) -> dict[str, Any]:
        return {CFG_RETURN_STATE: index == 0}

    def _next_global(
        self,
        server_round: int,
        accepted: list[tuple[Message, Parts]],
        aggregate: crypto.EncryptedArrays,
    ) -> Parts | None:
        digests = {}
        state = None
        for msg, parts in accepted:
            info = msg.content.config_records.get(REPLY_RECORD)
            digests[msg.metadata.src_node_id] = (
                None if info is None else info.get(REPLY_STATE_DIGEST)
            )
            if PART_STATE in parts:
                state = parts[PART_STATE]
        if None in digests.values() or len(set(digests.values())) != 1:
            log.error(
                "round %d: key holders disagree on the FedOpt state (digests %s); the refreshed "
                "state is refused and this round's update is dropped.",
                server_round,
                {n: str(d or "missing")[:12] for n, d in digests.items()},
            )
            return None
        if state is None:
            log.error(
                "round %d: the client asked to return the refreshed FedOpt state did not (or was "
                "excluded); this round's update is dropped.",
                server_round,
            )
            return None
        if self._model_layout({PART_STATE: state}) != self.layout:
            log.error("round %d: the refreshed FedOpt state has the wrong layout.", server_round)
            return None
        state = crypto.with_meta(state, fedopt=self.optimizer.to_dict())
        return {PART_STATE: state, PART_MODEL: aggregate}
