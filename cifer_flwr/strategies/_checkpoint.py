"""The strategy checkpoint file: one atomic cifer container per completed round.

Layout (docs/design.md §6): a cifer container of kind ``cifer.strategy-checkpoint`` whose
JSON header holds the round state (round number, layout, exclusions, statistics, the
metrics history of Flower's ``Result``, the replay-memory index, the optimizer spec) and two
blobs: the encrypted global model (:func:`cifer_flwr.crypto.bundle_to_bytes`) and the
concatenated 32-byte chunk digests. No pickle. The file is written in pieces straight from
the strategy's encrypted global record (:func:`cifer_flwr.crypto.records.record_bundle_stream`),
so a checkpoint never holds a second copy of the model in memory (docs/design.md §6).
Written to a temporary file in the same
directory (name ``.NAME.cifer-tmp-XXXX``), fsynced, then renamed over the checkpoint, and
the directory fsynced: a crash leaves either the previous or the new checkpoint, plus at
worst a temporary file that the next start removes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from cifer_flwr.constants import CHECKPOINT_TMP_MARK, KIND_STRATEGY_CHECKPOINT
from cifer_flwr.crypto import container
from cifer_flwr.crypto.records import record_bundle_stream
from cifer_flwr.exceptions import CiphertextFormatError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "read_checkpoint",
    "remove_temp_files",
    "result_from_json",
    "result_to_json",
    "write_checkpoint",
]

log = logging.getLogger("cifer_flwr.strategies")

#: Version of the checkpoint header; bumped on incompatible changes.
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """What one checkpoint file holds.

    Attributes
    ----------
    state : dict
        JSON round state (see :meth:`EncryptedFedAvgBase._checkpoint_state`).
    model : bytes or ArrayRecord
        The encrypted global model: ``crypto.bundle_to_bytes`` output (as read), or the
        encrypted record (when writing: the same bytes are streamed from its packs).
    digests : bytes
        The replay memory's concatenated chunk digests.

    """

    state: dict[str, Any]
    model: bytes | ArrayRecord
    digests: bytes


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{CHECKPOINT_TMP_MARK}"


def remove_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files a crash during :func:`write_checkpoint` left next to ``path``."""
    return container.remove_temp_files(path, temp_prefix=_temp_prefix(Path(path)))


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename, fsync dir).

    The file is written in pieces; a model given as an ``ArrayRecord`` is never copied
    whole (the bytes equal those of its ``crypto.bundle_to_bytes``).
    """
    target = Path(path)
    model = checkpoint.model
    data = container.iter_pack(
        KIND_STRATEGY_CHECKPOINT,
        {"state": checkpoint.state, "format": CHECKPOINT_FORMAT},
        [
            record_bundle_stream(model) if isinstance(model, ArrayRecord) else model,
            checkpoint.digests,
        ],
    )
    return container.write_file_atomic(target, data, mode=0o600, temp_prefix=_temp_prefix(target))


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    CiphertextFormatError
        When the file is not a checkpoint of this format, or is truncated or corrupted.

    """
    header, blobs = container.read_file(path, kind=KIND_STRATEGY_CHECKPOINT)
    if header.get("format") != CHECKPOINT_FORMAT or len(blobs) != 2:
        raise CiphertextFormatError(
            f"checkpoint {path} has format {header.get('format')!r} with {len(blobs)} blobs; "
            f"this version reads format {CHECKPOINT_FORMAT} with 2. Start without resume."
        )
    state = header.get("state")
    if not isinstance(state, dict):
        raise CiphertextFormatError(f"checkpoint {path} has no state object.")
    return Checkpoint(state, blobs[0], blobs[1])


def _metrics_to_json(history: Mapping[int, MetricRecord]) -> dict[str, dict[str, Any]]:
    return {str(rnd): dict(record.items()) for rnd, record in history.items()}


def _metrics_from_json(data: Any) -> dict[int, MetricRecord]:
    if not isinstance(data, dict):
        raise TypeError(f"metrics history is a {type(data).__name__}, expected an object")
    return {int(rnd): MetricRecord(dict(values)) for rnd, values in data.items()}


def result_to_json(result: Result) -> dict[str, Any]:
    """The metrics history of Flower's ``Result`` (its arrays travel as the model blob)."""
    return {
        "released": len(result.arrays) > 0,
        "train": _metrics_to_json(result.train_metrics_clientapp),
        "evaluate": _metrics_to_json(result.evaluate_metrics_clientapp),
        "serverapp": _metrics_to_json(result.evaluate_metrics_serverapp),
    }


def result_from_json(data: Mapping[str, Any]) -> tuple[Result, bool]:
    """Inverse of :func:`result_to_json`: the ``Result`` (no arrays) and ``released``."""
    result = Result()
    result.train_metrics_clientapp = _metrics_from_json(data["train"])
    result.evaluate_metrics_clientapp = _metrics_from_json(data["evaluate"])
    result.evaluate_metrics_serverapp = _metrics_from_json(data["serverapp"])
    return result, bool(data["released"])
