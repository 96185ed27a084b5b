"""The one pull loop: push a round's messages and yield the replies as they arrive (§6).

Every place that waits for replies goes through :func:`stream_replies`: the strategies'
rounds (Flower's ``Strategy.start`` is given a :class:`StreamingGrid`, whose
``send_and_receive`` streams), the masking stages and any ``send_and_receive`` of ours (the
harness's metering grid, the benchmark's grid). It follows Flower's
``Grid.send_and_receive`` semantics (``timeout`` counted from the push, ``None`` waits for
every reply), pulling the pending ids ``batch`` at a time so the caller holds only the
replies it has not consumed yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from cifer_flwr import crypto
from cifer_flwr.exceptions import ConfigError

if TYPE_CHECKING:
    from flwr.supercore.run import Run

__all__ = [
    "PULL_BATCH",
    "PULL_BYTES",
    "PULL_INTERVAL",
    "DelegatingGrid",
    "StreamingGrid",
    "pull_batch",
    "stream_replies",
]

log = logging.getLogger("cifer_flwr.strategies")

#: Most reply ids asked for in one ``pull_messages`` call while streaming a round: the
#: replies the ServerApp holds at once, whatever the cohort size (docs/design.md §6).
PULL_BATCH = 2
#: Largest model reply (bound from its layout) pulled together with another: larger ones
#: are pulled one id per call, so only one is held at a time (docs/design.md §6, memory).
PULL_BYTES = 256 * 1024 * 1024
#: Seconds between sweeps of ``pull_messages`` when no reply was ready (Flower's
#: in-memory grid advertises its own ``pull_interval``, which is used instead).
PULL_INTERVAL = 0.2


def stream_replies(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    *,
    batch: int = PULL_BATCH,
    interval: float | None = None,
) -> Iterator[Message]:
    """Push ``messages`` now and return an iterator over their replies as they arrive.

    The streaming form of Flower 1.41's ``Grid.send_and_receive`` (same timeout
    semantics: ``timeout`` seconds after the push, ``None`` waits for every reply): the
    pending reply ids are pulled at most ``batch`` at a time, so the caller holds only
    the replies it has not consumed yet instead of the whole cohort's.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.
    messages : iterable of Message
        The messages to send (pushed before this function returns).
    timeout : float or None
        Seconds to wait for replies, counted from the push.
    batch : int
        Most reply ids per ``pull_messages`` call (>= 1).
    interval : float, optional
        Sleep between sweeps with no reply (default: the grid's ``pull_interval`` or
        :data:`PULL_INTERVAL`).

    Returns
    -------
    Iterator[Message]
        The replies, in arrival order; replies that do not arrive in time are not
        yielded (as with ``send_and_receive``).

    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}.")
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    # each pending id with the node it was sent to: only that node's reply settles it
    pending = {i: int(m.metadata.dst_node_id) for i, m in zip(ids, messages, strict=False)}
    end = None if timeout is None else time.time() + timeout  # from the push, as Flower's
    pause = float(getattr(grid, "pull_interval", PULL_INTERVAL) if interval is None else interval)
    return _pull(grid, pending, end, batch, pause)


def _pull(
    grid: Grid, waiting: dict[str, int], end: float | None, batch: int, pause: float
) -> Iterator[Message]:
    while waiting and (end is None or time.time() < end):
        got_any = False
        snapshot = list(waiting)
        for start in range(0, len(snapshot), batch):
            window = snapshot[start : start + batch]
            for reply in grid.pull_messages(window):
                done = reply.metadata.reply_to_message_id
                sender = int(reply.metadata.src_node_id)
                if waiting.get(done) == sender:
                    del waiting[done]
                    got_any = True
                    yield reply
                elif done in waiting:
                    # claims to answer another node's message: the caller refuses it (its
                    # metadata check); the message's own node may still answer it
                    got_any = True
                    yield reply
                else:  # a second reply to one message, or a reply to no pending one
                    log.warning(
                        "dropped a reply of node %s to message %.40r: no reply to it is "
                        "awaited (a duplicate, or a reply to another push)",
                        sender,
                        done,
                    )
            if end is not None and time.time() >= end:
                return
        if waiting and not got_any:
            time.sleep(pause)


def pull_batch(params: crypto.AnyParams, layout: crypto.Layout | None) -> int:
    """Reply ids per pull: :data:`PULL_BATCH`, or 1 for replies above :data:`PULL_BYTES`.

    A model reply's size is bounded from its layout (chunks x the largest ciphertext).
    """
    if layout is None:
        return PULL_BATCH
    reply = layout.num_chunks(params.slots) * crypto.max_ciphertext_bytes(params)
    return max(1, min(PULL_BATCH, PULL_BYTES // max(1, reply)))


class DelegatingGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` that hands every call to the grid it wraps.

    The base of the grids that change one thing about Flower's: :class:`StreamingGrid`
    (``send_and_receive`` streams) and the harness's metering grid.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.

    """

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """Delegate to the wrapped grid."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate to the wrapped grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self.inner.send_and_receive(messages, timeout=timeout)


class StreamingGrid(DelegatingGrid):
    """``grid`` with a ``send_and_receive`` that streams (:func:`stream_replies`).

    What an encrypted strategy hands to Flower's ``Strategy.start``: Flower's loop passes
    the iterator to ``aggregate_train`` / ``aggregate_evaluate``, which consume the replies
    one at a time as they arrive, so the ServerApp never holds a whole cohort's replies
    (docs/design.md §6). Everything else is the wrapped grid's.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.
    train_batch : callable
        The reply ids to pull per call for train messages (their replies carry models:
        :func:`pull_batch`); the replies of other messages (evaluate, masking stages) are
        small and pulled all at once.

    """

    def __init__(self, grid: Grid, train_batch: Callable[[], int]) -> None:
        super().__init__(grid)
        self.train_batch = train_batch

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push ``messages`` now; return an iterator pulling their replies as they arrive."""
        messages = list(messages)
        if not messages:
            return iter(())
        train = messages[0].metadata.message_type == MessageType.TRAIN
        batch = self.train_batch() if train else len(messages)
        return stream_replies(self.inner, messages, timeout, batch=batch)
