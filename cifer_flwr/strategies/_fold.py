"""The fold: running sums of one train round's valid model replies (docs/design.md §6).

One interface, :class:`RoundFold`, with two implementations chosen per round by the
strategy's :class:`FoldPolicy` (a constructor argument, ``fold=``):

* :class:`InProcessFold` adds each model to its group's running sum in this process;
* :class:`WorkerFold` sends each model's ciphertexts to the crypto workers, which validate
  and add them while the next reply is pulled (docs/design.md §6.1); the sums stay there
  and only their headers are kept here.

Replies are added by *group* (same metric schema and the strategy's fold key): a later
selection can keep or drop whole groups without the models (memory does not grow with
the cohort). Each added reply becomes a *member*: its message (metrics and small
records, its ``ArrayRecord`` dropped) and its parts, the model only when the round keeps
models.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from flwr.app import Message

from cifer_flwr import crypto
from cifer_flwr.constants import PART_MODEL
from cifer_flwr.exceptions import CiferError, ConfigError, UnsupportedOperationError, WorkerError

__all__ = [
    "FOLD_MODES",
    "Accepted",
    "FoldMode",
    "FoldPolicy",
    "InProcessFold",
    "Parts",
    "RoundFold",
    "WorkerFold",
    "node_of",
]

Parts = dict[str, crypto.AnyEncrypted]
Accepted = list[tuple[Message, Parts]]
#: ``auto``: crypto workers for a round of at least ``crypto.workers.PARALLEL_MIN_CHUNKS``
#: ciphertexts when two or more worker processes are available (``$CIFER_WORKERS``, else
#: the CPUs), in-process otherwise; ``in-process``: never workers; ``workers``: always.
FoldMode = Literal["auto", "in-process", "workers"]
FOLD_MODES: tuple[str, ...] = get_args(FoldMode)
#: Called with a reply and the reason it is refused (a CiferError) or the bug it hit.
Reject = Callable[[Message, Exception], None]


def node_of(msg: Message) -> int:
    """The node id a reply came from."""
    return int(msg.metadata.src_node_id)


@dataclass(frozen=True)
class FoldPolicy:
    """Where a strategy adds the replies' ciphertexts; fixed at construction.

    Parameters
    ----------
    mode : {"auto", "in-process", "workers"}
        See :data:`FoldMode`; default ``"auto"``.

    Raises
    ------
    ConfigError
        For an unknown mode, or ``"workers"`` with a Paillier key or fewer than two
        worker processes available.

    """

    mode: FoldMode = "auto"

    def check(self, key: crypto.AnyKey) -> None:
        """Refuse a mode this key or machine cannot honour (called at construction)."""
        if self.mode not in FOLD_MODES:
            raise ConfigError(f"fold={self.mode!r}; expected one of {list(FOLD_MODES)}.")
        if self.mode != "workers":
            return
        if not isinstance(key, crypto.Key):
            raise ConfigError(
                f"fold='workers' needs a CKKS or packed key; the {key.params.name!r} key is "
                "summed in-process (use fold='auto' or 'in-process')."
            )
        if crypto.default_processes() < 2:
            raise ConfigError(
                "fold='workers' needs at least 2 worker processes ($CIFER_WORKERS, else the "
                "CPUs this process may use); use fold='auto' or 'in-process'."
            )

    def workers(
        self, key: crypto.AnyKey, num_chunks: int, keep_models: bool
    ) -> crypto.CryptoWorkers | None:
        """The pool for a round summing ``num_chunks`` ciphertexts, or ``None`` (in-process).

        A round that keeps every model (``keep_models``) is always summed in-process.
        """
        if self.mode == "in-process" or keep_models or not isinstance(key, crypto.Key):
            return None
        if self.mode == "workers":
            from cifer_flwr.crypto import workers

            num_chunks = max(num_chunks, workers.PARALLEL_MIN_CHUNKS)
        return crypto.shared_workers(key, num_chunks)

    def fold(
        self,
        key: crypto.AnyKey,
        num_chunks: int,
        *,
        keep_models: bool,
        arrayrecord_key: str,
        reject: Reject,
    ) -> RoundFold:
        """A new round's fold (its running sums start empty)."""
        pool = self.workers(key, num_chunks, keep_models)
        if pool is None:
            return InProcessFold(keep_models, arrayrecord_key, reject)
        assert isinstance(key, crypto.Key)
        return WorkerFold(pool, key, arrayrecord_key, reject)


@dataclass
class FoldGroup:
    """Replies that may be added together: their running sum and light members.

    With crypto workers the sum lives in the workers; ``total`` then holds the header
    only (layout, summed weight and count, no ciphertexts, docs/design.md §6.1).
    """

    total: crypto.AnyEncrypted | None = None
    members: Accepted = field(default_factory=list)


class RoundFold(ABC):
    """Running sums of one round's model replies, by group.

    Parameters
    ----------
    keep_models : bool
        Keep every member's model part (for a selection that needs them).
    arrayrecord_key : str
        The reply's ``ArrayRecord`` name (dropped from a member once its model is added).
    reject : callable
        ``reject(msg, exc)`` excludes a reply whose model could not be added.

    """

    #: Parse replies with deferred SEAL loads (the workers load and validate them).
    defer: bool = False

    def __init__(self, keep_models: bool, arrayrecord_key: str, reject: Reject) -> None:
        self.keep_models = keep_models
        self.arrayrecord_key = arrayrecord_key
        self.reject = reject
        self.groups: dict[Hashable, FoldGroup] = {}
        self.order: dict[int, int] = {}
        #: seconds spent adding (the round's ``aggregate-s`` statistic counts them)
        self.add_s = 0.0

    @abstractmethod
    def add(self, key: Hashable, msg: Message, parts: Parts) -> None:
        """Add a checked reply's model to the running sum of group ``key``.

        Raises
        ------
        CiferError
            When the model cannot be added (the reply is refused; sums unchanged).
        WorkerError
            When a crypto worker died: the round's sums are lost.

        """

    @abstractmethod
    def flush(self) -> None:
        """Settle what is still being added (end of the replies)."""

    @abstractmethod
    def group_sum(self, key: Hashable, group: FoldGroup) -> crypto.AnyEncrypted:
        """The running sum of a whole group."""

    def members(self) -> Accepted:
        """Every member, in the order the replies were added."""
        return sorted(
            (item for group in self.groups.values() for item in group.members),
            key=lambda item: self.order[node_of(item[0])],
        )

    def total(self, accepted: Accepted) -> crypto.AnyEncrypted | None:
        """Sum of the running sums of the groups whose members were all kept.

        Raises
        ------
        UnsupportedOperationError
            When ``accepted`` keeps part of a group and the round did not keep models.

        """
        kept = {node_of(msg): parts for msg, parts in accepted}
        sums: list[crypto.AnyEncrypted] = []
        for key, group in self.groups.items():
            nodes = [node_of(msg) for msg, _ in group.members]
            chosen = [n for n in nodes if n in kept]
            if not chosen or group.total is None:
                continue
            if len(chosen) == len(nodes):
                sums.append(self.group_sum(key, group))
            elif self.keep_models:
                sums.append(crypto.aggregate([kept[n][PART_MODEL] for n in chosen]))
            else:
                raise UnsupportedOperationError(
                    f"_select_replies kept {len(chosen)} of the {len(nodes)} replies folded "
                    "into one running sum; it can only keep or drop whole groups (same "
                    "metric schema and _fold_key). Return the selection key from _fold_key, "
                    "or return True from _keeps_models."
                )
        if not sums:
            return None
        return sums[0] if len(sums) == 1 else crypto.aggregate(sums)

    def _member(self, key: Hashable, group: FoldGroup, msg: Message, parts: Parts) -> None:
        """Record an added reply: keep its metrics and config (small), drop its arrays."""
        self.groups[key] = group
        del msg.content[self.arrayrecord_key]
        kept = parts if self.keep_models else {k: v for k, v in parts.items() if k != PART_MODEL}
        group.members.append((msg, kept))
        self.order[node_of(msg)] = len(self.order)


class InProcessFold(RoundFold):
    """Adds each model to its group's running sum in this process."""

    def add(self, key: Hashable, msg: Message, parts: Parts) -> None:
        """Add now (see :meth:`RoundFold.add`)."""
        model = parts[PART_MODEL]
        group = self.groups.get(key, FoldGroup())
        t0 = time.perf_counter()
        try:
            if group.total is None:
                group.total = model
            else:
                try:
                    group.total = crypto.aggregate([group.total, model])
                except Exception:
                    if len(group.members) == 1 and not _addable(group.total):
                        # the group's first reply is the one that cannot be added
                        first, _ = group.members.pop()
                        self.order.pop(node_of(first), None)
                        # not a CiferError: logged as an internal error, as a bug would be
                        self.reject(
                            first, RuntimeError("its ciphertexts cannot be added to another update")
                        )
                        group.total = model
                    else:
                        raise
        finally:
            self.add_s += time.perf_counter() - t0
        self._member(key, group, msg, parts)

    def flush(self) -> None:
        """Nothing is pending: each model was added by :meth:`add`."""

    def group_sum(self, key: Hashable, group: FoldGroup) -> crypto.AnyEncrypted:
        """The group's running sum (held here)."""
        assert group.total is not None
        return group.total


class WorkerFold(RoundFold):
    """Validates and adds each model in the crypto workers (docs/design.md §6.1).

    A reply is *staged* (the workers validate and add it into a pending copy of its
    group's sum) and returns at once; it is committed, or refused with the workers'
    reason, when the next reply is added or at :meth:`flush`.
    """

    defer = True

    def __init__(
        self, pool: crypto.CryptoWorkers, key: crypto.Key, arrayrecord_key: str, reject: Reject
    ) -> None:
        super().__init__(False, arrayrecord_key, reject)
        self.pool = pool
        self.key = key
        self.staged: tuple[Hashable, Message, Parts] | None = None
        pool.reset()  # this round's running sums start empty

    def add(self, key: Hashable, msg: Message, parts: Parts) -> None:
        """Stage in the workers (see :meth:`RoundFold.add`)."""
        blobs = crypto.deferred_blobs(parts[PART_MODEL])
        if blobs is None:  # parsed already (not deferred): nothing for the workers to load
            raise CiferError("the reply's model was parsed before the workers saw it.")
        self.flush()
        t0 = time.perf_counter()
        self.pool.stage(key, blobs, what=f"node {node_of(msg)}'s part 'model'")
        self.add_s += time.perf_counter() - t0
        self.staged = (key, msg, parts)

    def flush(self) -> None:
        """Commit the staged reply, or refuse it with the workers' reason."""
        if self.staged is None:
            return
        key, msg, parts = self.staged
        self.staged = None
        t0 = time.perf_counter()
        try:
            self.pool.commit()
        except WorkerError:
            raise  # the running sums are lost: the round fails
        except CiferError as exc:
            self.reject(msg, exc)
            return
        finally:
            self.add_s += time.perf_counter() - t0
        model = parts[PART_MODEL]
        assert isinstance(model, crypto.EncryptedArrays)  # deferred: a CKKS/packed part
        group = self.groups.get(key, FoldGroup())
        head = replace(model, vectors=(), meta={})  # the sum itself is in the workers
        if group.total is not None:
            head = replace(
                head, weight=group.total.weight + model.weight, count=group.total.count + 1
            )
        group.total = head
        self._member(key, group, msg, {**parts, PART_MODEL: head})

    def group_sum(self, key: Hashable, group: FoldGroup) -> crypto.AnyEncrypted:
        """The workers' running sum under the group's header (no SEAL load here)."""
        head = group.total
        assert isinstance(head, crypto.EncryptedArrays)
        # the workers validated every summand: their sum's bytes are ours
        return crypto.with_wire(head, self.pool.total(key), self.key)


def _addable(enc: crypto.AnyEncrypted) -> bool:
    try:
        crypto.aggregate([enc, enc])
    except Exception:
        return False
    return True
