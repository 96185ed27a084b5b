"""The released global model: the one serialized copy a strategy keeps (docs/design.md §6.2).

:class:`GlobalModel` is the collaborator that holds the current global model, turns the
parts a round released into the record sent to clients (once, then the SEAL objects are
dropped) and writes it to ``save_path`` atomically, streamed pack by pack.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ArrayRecord

from cifer_flwr import crypto
from cifer_flwr.crypto import records as crypto_records
from cifer_flwr.crypto.container import write_file_atomic
from cifer_flwr.exceptions import ConfigError
from cifer_flwr.strategies._fold import Parts

__all__ = ["GlobalModel"]

log = logging.getLogger("cifer_flwr.strategies")


class GlobalModel:
    """The current encrypted global model.

    Parameters
    ----------
    save_path : path, optional
        Where :meth:`save` writes it (nothing is written when ``None``).

    """

    def __init__(self, save_path: Path | None) -> None:
        self.save_path = save_path
        self.parts: Parts | None = None
        self.arrays: ArrayRecord | None = None

    @property
    def is_set(self) -> bool:
        """Whether a global model was set (``start`` sets the first)."""
        return self.parts is not None or self.arrays is not None

    def clear(self) -> None:
        """Forget the global model (a new run)."""
        self.parts, self.arrays = None, None

    def set(self, parts: Parts) -> None:
        """Make ``parts`` the global model (serialized on first use: :meth:`record`)."""
        self.parts, self.arrays = parts, None

    def record(self) -> ArrayRecord:
        """The global model as the record sent to clients: the one copy kept.

        Built once from the parts given to :meth:`set`, pack by pack; the parts (SEAL
        objects of the size of the model) are then dropped, and saving and checkpoints
        stream from this record.

        Raises
        ------
        ConfigError
            Before a global model was set.

        """
        if self.arrays is None:
            if self.parts is None:
                raise ConfigError("no global model yet; call start() first.")
            self.arrays = crypto.bundle_to_record(self.parts)
            self.parts = None
        return self.arrays

    def save(self, server_round: int) -> None:
        """Write the global model to ``save_path`` atomically (``bundle_to_bytes``' bytes)."""
        if self.save_path is None:
            return
        stream = crypto_records.record_bundle_stream(self.record())
        write_file_atomic(self.save_path, stream.pieces())
        log.info("saved encrypted global model of round %d to %s", server_round, self.save_path)
