"""A Grid wrapper that measures what crosses the wire in each exchange."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["Exchange", "MeteredGrid", "message_bytes"]


def message_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (ciphertexts or plaintext tensors)."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


@dataclass
class Exchange:
    """One ``send_and_receive`` call."""

    kind: str
    bytes_sent: int
    bytes_received: int
    seconds: float
    replies: int
    errors: int


class MeteredGrid(Grid):
    """Delegates to ``grid`` and records an :class:`Exchange` per ``send_and_receive``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.exchanges: list[Exchange] = []

    def set_run(self, run: Any) -> None:  # pragma: no cover - delegated
        """Delegate to the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Any:  # pragma: no cover - delegated
        """Delegate to the wrapped grid."""
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        """Delegate to the wrapped grid."""
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        """Delegate to the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        """Delegate to the wrapped grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, wait for replies, and record bytes and seconds."""
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else "none"
        t0 = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.exchanges.append(
            Exchange(
                kind=kind,
                bytes_sent=sum(message_bytes(m) for m in messages),
                bytes_received=sum(message_bytes(r) for r in replies),
                seconds=time.perf_counter() - t0,
                replies=len(replies),
                errors=sum(r.has_error() for r in replies),
            )
        )
        return replies
