"""What an encrypted strategy's checkpoint holds, and how a run starts from one (§6, resume).

The file format, its MAC and the field checks are :mod:`~cifer_flwr.strategies._checkpoint`'s;
this module maps a strategy's state to a :class:`~._checkpoint.Checkpoint`
(:func:`checkpoint_of`) and back (:func:`restore_run`), and starts a run (:func:`begin_run`): from
the checkpoint when the run resumes, else from ``initial_arrays``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord

from cifer_flwr import crypto
from cifer_flwr.exceptions import CiphertextFormatError, LayoutMismatchError
from cifer_flwr.strategies._checkpoint import (
    Checkpoint,
    RunSettings,
    restore_state,
    result_to_json,
)
from cifer_flwr.strategies._fold import Parts
from cifer_flwr.strategies._replies import DigestMemory, ReplyError

if TYPE_CHECKING:
    from cifer_flwr.strategies._base import EncryptedFedAvgBase

__all__ = ["begin_run", "checkpoint_of", "restore_run", "strategy_id"]

log = logging.getLogger("cifer_flwr.strategies")


def strategy_id(strategy: EncryptedFedAvgBase) -> str:
    """The strategy's class as a checkpoint names it (module and qualified name)."""
    return f"{type(strategy).__module__}.{type(strategy).__qualname__}"


def _settings(strategy: EncryptedFedAvgBase, num_rounds: int | None) -> RunSettings:
    return RunSettings(
        fingerprint=strategy.key.fingerprint,
        preset=strategy.key.params.name,
        strategy=strategy_id(strategy),
        optimizer=strategy._optimizer_json(),
        min_replies=strategy.min_replies,
        masking=strategy.masking,
        num_rounds=num_rounds,
    )


def checkpoint_of(strategy: EncryptedFedAvgBase, server_round: int) -> Checkpoint:
    """The checkpoint of ``strategy`` after ``server_round`` (its run's ledger and global)."""
    ledger = strategy.ledger
    index, digests = strategy.screen.seen.to_blob()
    settings = _settings(strategy, ledger.num_rounds)
    state = {
        "strategy": settings.strategy,
        "fingerprint": settings.fingerprint,
        "preset": settings.preset,
        "optimizer": settings.optimizer,
        "masking": settings.masking,
        "round": server_round,
        "num_rounds": ledger.num_rounds,
        "min_replies": settings.min_replies,
        "examples_per_client": strategy.examples_per_client,
        "layout": strategy.screen.require_layout().to_dict(),
        "excluded": {str(r): [[node, why] for node, why in v] for r, v in ledger.excluded.items()},
        "round_stats": {str(r): dict(v) for r, v in ledger.round_stats.items()},
        "seen": index,
        "result": result_to_json(ledger.result),
        "extra": strategy._checkpoint_extra(),
    }
    return Checkpoint(
        state, strategy.global_model.record(), digests, strategy.checkpoints.run_key()
    )


def restore_run(strategy: EncryptedFedAvgBase, path: Path, num_rounds: int | None = None) -> Parts:
    """Load the checkpoint at ``path`` into ``strategy``; return the global parts.

    :func:`~._checkpoint.read_checkpoint` verifies its MAC;
    :func:`~._checkpoint.restore_state` checks every field's type and range and that the
    settings (key, preset, strategy, optimizer, ``min_replies``, masking) are the run's and
    the round is within ``num_rounds``. The strategy's ledger (rounds done, ``Result``,
    exclusions, statistics) and replay memory are the checkpoint's afterwards.

    Raises
    ------
    KeyMismatchError, ConfigError, CiphertextFormatError, LayoutMismatchError
        A checkpoint of another key or run, or a corrupted one.

    """
    ckpt = strategy.checkpoints.read(path)
    saved = restore_state(ckpt, path, _settings(strategy, num_rounds))
    fix = "the file is corrupted or was edited; start without resume."
    try:
        seen = DigestMemory.from_blob(saved.seen, ckpt.digests)
    except ReplyError as exc:
        raise CiphertextFormatError(f"checkpoint {path}: {exc}; {fix}") from None
    model = ckpt.model
    parts = (
        crypto.bundle_from_record(model, strategy.key)
        if isinstance(model, ArrayRecord)
        else crypto.bundle_from_bytes(model, strategy.key)
    )
    if strategy._model_layout(parts) != saved.layout:
        raise LayoutMismatchError(
            f"checkpoint {path}: the encrypted model's layout does not match the layout "
            f"recorded with it; {fix}"
        )
    try:
        strategy._restore_extra(saved.extra)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CiphertextFormatError(
            f"checkpoint {path}: its extra state is unusable ({type(exc).__name__}: "
            f"{exc!s:.200}); {fix}"
        ) from None
    strategy.layout = saved.layout
    strategy.examples_per_client = saved.examples_per_client
    strategy.screen.seen = seen
    result = saved.result
    if saved.released:
        result.arrays = crypto.bundle_to_record(parts)
    strategy.ledger.resume(result, saved.round, saved.excluded, saved.round_stats)
    return parts


def begin_run(
    strategy: EncryptedFedAvgBase,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float | None,
) -> ArrayRecord:
    """Start a run: the encrypted global model record to give Flower's loop.

    Resumed from the checkpoint when there is one to resume (``initial_arrays`` is then
    ignored), else ``initial_arrays`` encrypted (or taken as they are when encrypted).
    """
    strategy._reset_round_memory()
    strategy.ledger.begin(num_rounds, timeout)
    path = strategy.checkpoints.to_resume()
    if path is None:
        parts = strategy._to_parts(initial_arrays)
        strategy.layout = strategy._model_layout(parts)
    else:
        parts = restore_run(strategy, path, num_rounds)
        log.info(
            "resumed from checkpoint %s after round %d of %d; initial_arrays is ignored",
            path,
            strategy.ledger.done,
            num_rounds,
        )
    strategy.global_model.set(parts)
    return strategy.global_model.record()  # the one copy of the global model (§6.2)
