"""The one results schema (``cifer.results/1``) and its one writer.

Every ServerApp of the harness, the examples' (:func:`cifer_flwr.experiments.apps.run_strategy`)
and the generic app's (:func:`cifer_flwr.experiments.experiment.run_on_grid`), writes its
results through a :class:`ResultsWriter`: the same top-level keys (:data:`RESULT_KEYS`) and
per-round rows with the same keys (:data:`ROUND_KEYS`), rewritten atomically after every
round (a killed run keeps its completed rounds) and reported as one log line per round on
Flower's logger, so ``flwr log RUN_ID`` shows the progress (round, accuracy, loss, bytes,
seconds). The README's "Results" section documents every field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any, Final

from flwr.common.logger import log as flwr_log

from cifer_flwr.crypto.container import remove_temp_files, write_file_atomic
from cifer_flwr.exceptions import CiferError

__all__ = [
    "RESULTS_FORMAT",
    "RESULT_KEYS",
    "ROUND_KEYS",
    "ResultsWriter",
    "format_round",
    "round_row",
    "write_json_atomic",
    "write_results",
]

#: ``format`` field of every results file.
RESULTS_FORMAT: Final = "cifer.results/1"

#: Top-level keys of a results file, in order (README "Results" describes each).
RESULT_KEYS: Final = (
    "format",
    "app",
    "run-id",
    "status",
    "error",
    "strategy",
    "strategy-class",
    "topology",
    "encrypted",
    "preset",
    "key-fingerprint",
    "task",
    "nodes",
    "num-rounds",
    "config",
    "run-config",
    "resume",
    "resumed-after-round",
    "checkpoint-path",
    "save-path",
    "total-s",
    "rounds",
)

#: Keys of every per-round row -> the value of a key a topology does not measure.
ROUND_DEFAULTS: Final[Mapping[str, Any]] = {
    "round": None,
    "accuracy": None,
    "loss": None,
    "train-loss": None,
    "round-s": None,
    "train-s": None,
    "evaluate-s": None,
    "bytes-sent": 0,
    "bytes-received": 0,
    "train-bytes-sent": None,
    "train-bytes-received": None,
    "aggregate-s": None,
    "client-encrypt-s": None,
    "client-decrypt-s": None,
    "client-crypto-s": None,
    "train-replies": None,
    "errors": [],
    "excluded": [],
    "integrity-events": [],
    "train-metrics": {},
    "evaluate-metrics": {},
    "consensus-distance": None,
    "peers": None,
    "dropped": [],
}
#: Keys of every per-round row, in order.
ROUND_KEYS: Final = tuple(ROUND_DEFAULTS)


class _SchemaError(CiferError):
    """A results document or row with keys outside the schema (a bug in the harness)."""


def round_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """A per-round row with every key of :data:`ROUND_KEYS` (missing ones get defaults).

    Raises
    ------
    CiferError
        For a key outside the schema, or a row without an integer ``round``.

    """
    extra = sorted(set(values) - set(ROUND_KEYS))
    if extra or not isinstance(values.get("round"), int):
        raise _SchemaError(
            f"results row with keys {extra} outside {RESULTS_FORMAT} or round "
            f"{values.get('round')!r}; expected the keys of ROUND_KEYS and an integer round."
        )
    defaults = {
        k: (v.copy() if isinstance(v, list | dict) else v) for k, v in ROUND_DEFAULTS.items()
    }
    return {**defaults, **values}


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + ``os.replace``); no temp file is left behind.

    Temp files a killed writer left next to ``path`` (``.NAME.*``, see
    :func:`~cifer_flwr.crypto.container.write_file_atomic`) are removed first.
    """
    remove_temp_files(path)
    return write_file_atomic(path, json.dumps(data, indent=2).encode("utf-8"))


def write_results(path: Path, document: Mapping[str, Any]) -> Path:
    """The one results writer: check ``document`` against the schema, write it atomically.

    Raises
    ------
    CiferError
        When the top-level keys are not :data:`RESULT_KEYS` or a row's keys are not
        :data:`ROUND_KEYS`.

    """
    if tuple(document) != RESULT_KEYS or document.get("format") != RESULTS_FORMAT:
        raise _SchemaError(
            f"results document with keys {sorted(set(document) ^ set(RESULT_KEYS))} differing "
            f"from {RESULTS_FORMAT}; build it with ResultsWriter."
        )
    for row in document["rounds"]:
        if tuple(row) != ROUND_KEYS:
            raise _SchemaError(f"results row keys differ from {RESULTS_FORMAT}; use round_row.")
    return write_json_atomic(path, document)


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} MB"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_round(row: Mapping[str, Any], num_rounds: int) -> str:
    """The progress line of one round: round, accuracy, loss, bytes and seconds."""
    return (
        f"[cifer] round {row['round']}/{num_rounds}: accuracy {_num(row.get('accuracy'), '.4f')}, "
        f"loss {_num(row.get('loss'), '.4f')}, sent {_mb(row.get('bytes-sent'))}, "
        f"received {_mb(row.get('bytes-received'))}, {_num(row.get('round-s'), '.2f')} s"
    )


class ResultsWriter:
    """Builds the results document of one run and writes it after every round.

    Parameters
    ----------
    path : Path or None
        Where the JSON goes (absolute; the ServerApp runs in a SuperLink subprocess);
        ``None`` keeps the document in memory only (:attr:`document`).
    **header
        Initial values of top-level keys (:data:`RESULT_KEYS` except ``format``,
        ``status``, ``rounds``, ``total-s``; unknown keys are an error). The others start
        as ``None`` (``resume`` false, ``resumed-after-round`` 0, ``run-config`` ``{}``).

    """

    def __init__(self, path: Path | None, **header: Any) -> None:
        self.path = path
        self.t0 = time.time()
        self.document: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
        self.document.update(
            {
                "format": RESULTS_FORMAT,
                "status": "running",
                "resume": False,
                "resumed-after-round": 0,
                "run-config": {},
                "rounds": [],
                "total-s": 0.0,
            }
        )
        self.update(**header)
        self._logged: set[int] = set()

    def update(self, **values: Any) -> None:
        """Set top-level keys (``run_id`` or ``run-id`` spellings both accepted)."""
        for name, value in values.items():
            key = name.replace("_", "-")
            if key not in RESULT_KEYS:
                raise _SchemaError(f"{key!r} is not a top-level key of {RESULTS_FORMAT}.")
            if key == "run-config":
                value = {
                    k: v for k, v in dict(value).items() if isinstance(v, bool | int | float | str)
                }
            self.document[key] = value

    def describe_strategy(self, strategy: object) -> None:
        """Record the strategy class, key fingerprint, preset and node minimum of ``strategy``."""
        cls = type(strategy)
        self.update(strategy_class=f"{cls.__module__}.{cls.__name__}")
        key = getattr(strategy, "key", None)
        if key is not None:
            self.update(key_fingerprint=key.fingerprint, preset=key.params.name)
        nodes = getattr(strategy, "min_available_nodes", None)
        if isinstance(nodes, int) and self.document["nodes"] is None:
            self.update(nodes=nodes)

    def write(
        self,
        status: str,
        rounds: Iterable[Mapping[str, Any]],
        *,
        resumed_after: int | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Set status, rows (completed with :func:`round_row`) and time; write; return a copy."""
        self.document["status"] = status
        self.document["rounds"] = [round_row(r) for r in rounds]
        if resumed_after is not None:
            self.document["resumed-after-round"] = resumed_after
        if error is not None:
            self.document["error"] = error
        self.document["total-s"] = time.time() - self.t0
        if self.path is not None:
            write_results(self.path, self.document)
        return dict(self.document)

    def start(self, restored: Iterable[Mapping[str, Any]] = (), resumed_after: int = 0) -> None:
        """Write the first ``running`` document (a resumed run: its restored rows, not logged)."""
        rows = list(restored)
        self._logged.update(int(r["round"]) for r in rows)
        self.write("running", rows, resumed_after=resumed_after)

    def round_completed(
        self, rounds: Iterable[Mapping[str, Any]], *, resumed_after: int | None = None
    ) -> None:
        """Write the rows so far (``running``) and log one line per newly completed round.

        The line goes to Flower's logger (``flwr log`` shows it); see :func:`format_round`.
        """
        doc = self.write("running", rounds, resumed_after=resumed_after)
        total = int(doc["num-rounds"] or 0)
        for row in doc["rounds"]:
            if row["round"] not in self._logged:
                self._logged.add(row["round"])
                flwr_log(INFO, "%s", format_round(row, total))

    def fail(
        self,
        exc: BaseException,
        rounds: Iterable[Mapping[str, Any]] | None = None,
        *,
        resumed_after: int | None = None,
    ) -> dict[str, Any]:
        """Write status ``error`` with the exception and the rows of the completed rounds.

        ``rounds`` defaults to the rows written last.
        """
        rows = self.document["rounds"] if rounds is None else rounds
        message = f"{type(exc).__name__}: {exc}"
        return self.write("error", rows, resumed_after=resumed_after, error=message)
