"""The one results schema (``cifer.results/1``) and its one writer.

Every ServerApp, the examples' (:func:`cifer_flwr.apps.run.run_strategy`) and the harness's
generic app's (:func:`cifer_flwr.experiments.experiment.run_on_grid`), writes its
results through a :class:`ResultsWriter`: the same top-level keys (:data:`RESULT_KEYS`) and
per-round rows with the same keys (:data:`ROUND_KEYS`), rewritten atomically after every
round (a killed run keeps its completed rounds) and reported as one log line per round on
Flower's logger, so ``flwr log RUN_ID`` shows the progress (round, accuracy, loss, bytes,
seconds). The README's "Results" section documents every field.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any, Final

from cifer_flwr.crypto.container import remove_temp_files, write_file_atomic
from cifer_flwr.exceptions import CiferError

#: Flower's logger: ``flwr log RUN_ID`` shows what goes there from the ServerApp.
flwr_log = logging.getLogger("flwr").log

__all__ = [
    "RESULTS_FORMAT",
    "RESULT_KEYS",
    "ROUND_KEYS",
    "ResultsWriter",
    "format_round",
    "round_row",
    "run_failure",
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
    "accepted": None,
    "released": None,
    "errors": [],
    "excluded": [],
    "integrity-events": [],
    "masking": None,
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


#: A run whose last this-many rounds (all of them, when fewer) released nothing failed.
FAILED_TAIL: Final = 2


def _rounds_text(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"round {numbers[0]}"
    return f"rounds {numbers[0]}-{numbers[-1]}"


def _is_key_refusal(reason: str) -> bool:
    text = reason.lower()
    return "key mismatch" in text or "fingerprint" in text


_KEY_FIX = (
    "check that the ServerApp's public-key and the SuperNodes' private-key are one key pair "
    "(`cifer keys inspect FILE` prints a key's fingerprint)"
)


def _failure_cause(failed: list[Mapping[str, Any]]) -> str:
    """Why the ``failed`` rounds released nothing, from their client errors and exclusions."""
    errors = [e for r in failed for e in (r.get("errors") or []) if e.get("phase") == "train"]
    excluded = [e for r in failed for e in (r.get("excluded") or [])]
    replies = sum(int(r.get("train-replies") or 0) for r in failed)
    accepted = sum(int(r.get("accepted") or 0) for r in failed)
    refusals = [e for e in errors if _is_key_refusal(str(e.get("reason", "")))]
    if errors and len(errors) >= replies:
        first = refusals[0] if refusals else errors[0]
        reason = str(first.get("reason", "")).rstrip(". ")
        who = (
            "every client refused the server's key"
            if len(refusals) == len(errors)
            else "every client replied with an error"
        )
        fix = _KEY_FIX if refusals else "the results' 'errors' of each round say why"
        return f"{who} (node {first.get('node')}: {reason}); {fix}"
    if refusals:
        first = refusals[0]
        return (
            f"{len(refusals)} of {replies} client replies refused the server's key (node "
            f"{first.get('node')}: {str(first.get('reason', '')).rstrip('. ')}), and the "
            f"{accepted} valid updates left are fewer than the strategy's minimum per round; "
            f"{_KEY_FIX}"
        )
    if excluded:
        first = excluded[0]
        return (
            f"the server excluded {len(excluded)} replies (node {first.get('node')}: "
            f"{str(first.get('reason')).rstrip('. ')}) and {len(errors)} clients replied "
            "with an error; the results' 'excluded' and 'errors' of each round say why"
        )
    if replies == 0:
        return (
            "no client replied in time; check that the SuperNodes are up and connected "
            "(`cifer federation status`) and raise the round timeout if they are slow"
        )
    return (
        f"{accepted} valid updates in {len(failed)} rounds, fewer than the strategy's "
        "minimum per round; lower min_replies / min_cohort or add clients"
    )


def run_failure(rows: Iterable[Mapping[str, Any]], num_rounds: int) -> str | None:
    """Why a finished run failed, or ``None`` when it released an aggregate as it should.

    A run failed when none of its rounds released an aggregate, or when its last
    :data:`FAILED_TAIL` rounds released nothing (the final model is then an older one).
    Rows without ``released`` (plaintext Flower strategies, p2p, older files) are not judged.
    The text names the rounds and the cause (e.g. every client refused the key).
    """
    judged = [r for r in rows if r.get("released") is not None]
    if not judged:
        return None
    failed = [r for r in judged if not r["released"]]
    if len(failed) == len(judged):
        return (
            f"no round released an aggregate ({len(failed)} of {len(judged)} rounds released "
            f"nothing; expected at least one aggregate): {_failure_cause(failed)}."
        )
    tail: list[Mapping[str, Any]] = []
    for row in reversed(judged):
        if row["released"]:
            break
        tail.insert(0, row)
    if len(tail) >= min(FAILED_TAIL, num_rounds) and tail:
        numbers = [int(r["round"]) for r in tail]
        last_ok = numbers[0] - 1
        return (
            f"{_rounds_text(numbers)} released nothing (the last {len(tail)} of {num_rounds}; "
            f"expected an aggregate every round), so the final model is the one of round "
            f"{last_ok}: {_failure_cause(tail)}."
        )
    return None


def format_round(row: Mapping[str, Any], num_rounds: int) -> str:
    """The progress line of one round: replies, accuracy, loss, bytes and seconds.

    ``replies 3 accepted, 1 excluded`` counts the train replies the strategy aggregated
    and those it refused or that were errors (``replies 3`` when the strategy does not say
    which it aggregated: Flower's plaintext ones, p2p); ``released nothing`` marks a round
    whose aggregate was withheld.
    """
    accepted, received = row.get("accepted"), row.get("train-replies")
    if accepted is not None:
        refused = max(0, int(received or 0) - int(accepted))
        replies = f"replies {accepted} accepted, {refused} excluded"
    else:
        replies = f"replies {_num(row.get('train-replies'), 'd')}"
    if row.get("released") is False:
        replies += ", released nothing"
    return (
        f"[cifer] round {row['round']}/{num_rounds}: {replies}, "
        f"accuracy {_num(row.get('accuracy'), '.4f')}, loss {_num(row.get('loss'), '.4f')}, "
        f"sent {_mb(row.get('bytes-sent'))}, received {_mb(row.get('bytes-received'))}, "
        f"{_num(row.get('round-s'), '.2f')} s"
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
