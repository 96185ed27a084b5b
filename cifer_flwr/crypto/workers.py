"""Worker processes for the per-ciphertext work of large models (docs/design.md §6.1).

TenSEAL holds the GIL while it encrypts, decrypts or parses, so threads do not help; a
:class:`CryptoWorkers` pool runs that work in child processes, each on a contiguous range
of the chunks:

* ``encrypt``: plaintext chunks in, serialized ciphertexts out (seeded for a key holder);
* ``decrypt``: *foreign* ciphertext bytes in, validated in the worker by
  :func:`~cifer_flwr.crypto.validation.load_vector` (the one door, §5), decrypted values out;
* ``stage`` / ``commit`` / ``abort`` / ``total``: the server's validate-and-sum. Every worker
  keeps running sums for its chunk range, per group; a reply is first *staged* (validated
  and added into a pending copy) in every worker, and only when all of them accepted it is
  it *committed*, so a reply with one bad ciphertext changes no sum.

Nothing is pickled: requests and replies are length-prefixed byte frames written into an
anonymous in-memory file each worker shares with its owner (``memfd``, close-on-exec,
passed to its own worker only through ``pass_fds``, never named); the stdin/stdout pipes
carry only the frames' lengths. The key is the exception: it reaches a worker as key-file
bytes through its stdin pipe, written by a helper thread while the worker reads them, so
the key's bytes never sit in the shared buffer or in a named file. A worker exits when its stdin
closes, so it dies with its owner, and :meth:`CryptoWorkers.close` (or garbage
collection, or interpreter exit) stops the pool.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from cifer_flwr.exceptions import (
    CiferError,
    CiphertextFormatError,
    ConfigError,
    LayoutMismatchError,
    NonFiniteError,
    ValueRangeError,
    WorkerError,
)

__all__ = [
    "ENV_WORKERS",
    "PARALLEL_MIN_CHUNKS",
    "CryptoWorkers",
    "chunk_ranges",
    "decode_frame",
    "default_processes",
    "encode_frame",
    "serve",
    "shared_workers",
]

#: Environment variable: number of worker processes (``0`` or ``1`` keeps all work in-process).
ENV_WORKERS = "CIFER_WORKERS"
#: Ciphertexts below which parallel work does not pay for the workers' start-up (~0.6 s).
PARALLEL_MIN_CHUNKS = 1024
#: Chunks per encrypt/decrypt request (about 2 MB of float64 values at 4096 slots).
BATCH_CHUNKS = 64
#: Largest frame part a party of this protocol accepts (a bound, not a quota).
MAX_PART_BYTES = 1 << 31
MAX_PARTS = 1 << 20

_HEAD = struct.Struct("<cI")
_LEN = struct.Struct("<Q")
_OK, _ERR = b"0", b"E"
_KEY, _ENCRYPT, _DECRYPT, _STAGE, _COMMIT, _ABORT, _TOTAL, _RESET = (
    b"K",
    b"N",
    b"D",
    b"S",
    b"C",
    b"A",
    b"T",
    b"R",
)
_ERRORS: dict[str, type[CiferError]] = {
    cls.__name__: cls
    for cls in (CiphertextFormatError, LayoutMismatchError, NonFiniteError, ValueRangeError)
}


# --------------------------------------------------------------------------- frames
def encode_frame(tag: bytes, parts: Sequence[bytes | memoryview]) -> bytes:
    """One frame: a tag byte, the number of parts, their lengths, then the parts.

    Inverse: :func:`decode_frame`.
    """
    return b"".join([_frame_head(tag, [len(p) for p in parts]), *parts])


def _frame_head(tag: bytes, lengths: Sequence[int]) -> bytes:
    """The tag, the number of parts and their lengths: what precedes the parts."""
    if len(tag) != 1:
        raise ConfigError(f"a frame tag is one byte, got {tag!r}.")
    return _HEAD.pack(tag, len(lengths)) + b"".join(_LEN.pack(n) for n in lengths)


def decode_frame(data: bytes | bytearray | memoryview) -> tuple[bytes, list[memoryview]]:
    """Split :func:`encode_frame` output back into its tag and parts (views into ``data``).

    Raises
    ------
    WorkerError
        On a truncated or oversized frame, or trailing bytes.

    """
    pos = 0
    view = memoryview(data)

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise WorkerError(f"truncated worker frame ({len(view)} bytes).")
        pos += n
        return view[pos - n : pos]

    tag, parts = _parse_frame(take)
    if pos != len(view):
        raise WorkerError(f"{len(view) - pos} bytes after a worker frame.")
    return tag, parts


def _parse_frame(take: Any) -> tuple[bytes, list[memoryview]]:
    tag, count = _HEAD.unpack(take(_HEAD.size))
    if count > MAX_PARTS:
        raise WorkerError(f"a worker frame of {count} parts (at most {MAX_PARTS}).")
    lengths = [_LEN.unpack(take(_LEN.size))[0] for _ in range(count)]
    if any(n > MAX_PART_BYTES for n in lengths):
        raise WorkerError(f"a worker frame part of more than {MAX_PART_BYTES} bytes.")
    return tag, [take(n) for n in lengths]


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    """``size`` bytes of ``stream``, or ``None`` at a clean end of file before any byte."""
    data = stream.read(size)
    if not data:
        return None
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            raise WorkerError(f"a worker pipe closed in the middle of a message ({len(data)}).")
        data += more
    return data


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _put(
    fd: int, tag: bytes, parts: Iterable[bytes | memoryview], count: int | None = None
) -> bytes:
    """Write the frame of :func:`encode_frame` into the shared buffer ``fd``, part by part.

    No joined copy of the frame is made; ``parts`` may be a generator when ``count`` says
    how many it yields (one part is then held at a time). Returns the pipe's notice.
    """
    if count is None:
        parts = list(parts)
        count = len(parts)
    head = _HEAD.size + _LEN.size * count
    lengths: list[int] = []
    offset = head
    for part in parts:
        _pwrite_all(fd, part, offset)
        offset += len(part)
        lengths.append(len(part))
    if len(lengths) != count:
        raise WorkerError(f"a frame announced {count} parts and got {len(lengths)}.")
    _pwrite_all(fd, _frame_head(tag, lengths), 0)
    return _LEN.pack(offset)


def _get(fd: int, notice: bytes) -> tuple[bytes, list[memoryview]]:
    """Read the frame a pipe ``notice`` announced from the shared buffer ``fd``.

    One buffer, read in place; the parts are views into it (no copy per part).
    """
    (size,) = _LEN.unpack(notice)
    if size > MAX_PART_BYTES:
        raise WorkerError(f"a worker frame of {size} bytes (at most {MAX_PART_BYTES}).")
    buf = bytearray(size)
    view, done = memoryview(buf), 0
    while done < size:
        got = os.preadv(fd, [view[done:]], done)
        if got <= 0:
            raise WorkerError(f"a worker frame of {size} bytes ends after {done}.")
        done += got
    return decode_frame(view)


def _text(part: bytes | memoryview) -> str:
    return bytes(part).decode("utf-8", "replace")


def _int(part: bytes | memoryview) -> int:
    return int(bytes(part))


def _shared_buffer() -> int:
    """An anonymous in-memory file a worker and its owner share (never named).

    Close-on-exec: only the worker it is passed to (``pass_fds``) gets it, never a child
    the owner spawns otherwise.
    """
    if hasattr(os, "memfd_create"):
        return os.memfd_create("cifer-worker", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as handle:  # unnamed where the OS allows it
        return os.dup(handle.fileno())  # os.dup: not inheritable


def _send_key(stream: IO[bytes] | None, frame: bytes) -> None:
    """Write the key frame to a worker's stdin (a helper thread: the pipe holds 64 KB)."""
    if stream is None:  # pragma: no cover - Popen(stdin=PIPE) always has one
        return
    # the worker reads as we write, so the bytes wait in no buffer longer than the load;
    # a worker that died is noticed by the first collect (_post), not here
    with contextlib.suppress(OSError, ValueError):
        stream.write(_LEN.pack(len(frame)))
        stream.write(frame)
        stream.flush()


def _read_key(inp: IO[bytes]) -> _Worker:
    """The worker's first message: its key, as a length-prefixed frame on stdin."""
    notice = _read_exact(inp, _LEN.size)
    if notice is None:
        raise WorkerError("stdin closed before the key arrived.")
    (size,) = _LEN.unpack(notice)
    if size > MAX_PART_BYTES:
        raise WorkerError(f"a key frame of {size} bytes (at most {MAX_PART_BYTES}).")
    data = _read_exact(inp, size)
    if data is None:
        raise WorkerError("stdin closed in the key frame.")
    tag, parts = decode_frame(data)
    if tag != _KEY or len(parts) != 1:
        raise WorkerError(f"the first frame is {tag!r} with {len(parts)} parts, expected the key.")
    return _Worker(bytes(parts[0]))


def chunk_ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into at most ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, count))
    base, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return [r for r in out if r[1] > r[0]]


def default_processes() -> int:
    """Worker processes to use: ``$CIFER_WORKERS``, else the CPUs this process may run on."""
    raw = os.environ.get(ENV_WORKERS, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{ENV_WORKERS}={raw[:20]!r}; expected a whole number of worker processes "
                "(0 or 1: no workers)."
            ) from None
        if value < 0:
            raise ConfigError(f"{ENV_WORKERS}={value}; expected 0 or more.")
        return value
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- the worker
class _Worker:
    """State of one worker process: its key and its running sums (by group id)."""

    def __init__(self, key_bytes: bytes) -> None:
        from cifer_flwr.crypto.keys import parse_key

        self.key = parse_key(key_bytes, "the key given to a crypto worker")
        self.sums: dict[int, list[Any]] = {}
        self.pending: tuple[int, list[Any]] | None = None

    def _load(self, blob: bytes | memoryview, what: str) -> Any:
        from cifer_flwr.crypto.validation import load_chunk

        return load_chunk(blob, self.key, what=what)

    def encrypt(self, parts: list[memoryview]) -> list[bytes]:
        from cifer_flwr.crypto._seal import seeded_bfv_vectors, seeded_vectors

        params = self.key.params
        dtype = np.int64 if params.is_bfv else np.float64
        values = np.frombuffer(parts[0], dtype=dtype).reshape(-1, params.slots)
        chunks = list(values)
        ctx = self.key.encryption_context()
        if self.key.is_private:
            if params.is_bfv:
                return seeded_bfv_vectors(ctx, chunks)  # type: ignore[arg-type]
            return seeded_vectors(ctx, chunks, params)  # type: ignore[arg-type]
        import tenseal as ts

        make = ts.bfv_vector if params.is_bfv else ts.ckks_vector
        return [make(ctx, c.tolist()).serialize() for c in chunks]

    def decrypt(self, parts: list[memoryview]) -> list[bytes]:
        what, first, total = _text(parts[0]), _int(parts[1]), _int(parts[2])
        self.key.require_private("decrypt")
        dtype = np.int64 if self.key.params.is_bfv else np.float64
        out = []
        for i, blob in enumerate(parts[3:]):
            vec = self._load(blob, f"{what}, ciphertext {first + i} of {total}")
            out.append(np.asarray(vec.decrypt(), dtype=dtype).tobytes())
        return [b"".join(out)]

    def stage(self, parts: list[memoryview]) -> list[bytes]:
        if bytes(parts[0]) == b"1":  # the owner's commit of the previous reply rides along
            self.commit()
        group, what, first, total = _int(parts[1]), _text(parts[2]), _int(parts[3]), _int(parts[4])
        self.pending = None
        vecs = [
            self._load(blob, f"{what}, ciphertext {first + i} of {total}")
            for i, blob in enumerate(parts[5:])
        ]
        current = self.sums.get(group)
        if current is not None and len(current) != len(vecs):
            raise LayoutMismatchError(
                f"{what}: {len(vecs)} ciphertexts for a sum of {len(current)}."
            )
        self.pending = (group, vecs)  # validated; added only at commit
        return []

    def commit(self) -> list[bytes]:
        if self.pending is None:
            raise WorkerError("commit without a staged reply.")
        group, vecs = self.pending
        self.pending = None
        current = self.sums.get(group)
        if current is None:
            self.sums[group] = vecs
            return []
        try:  # validated vectors of one key, level and scale: in place, no second copy
            for acc, vec in zip(current, vecs, strict=True):
                acc.add_(vec)
        except Exception as exc:
            del self.sums[group]  # half added: the sum is lost, the owner must fail the round
            raise WorkerError(f"adding a validated reply failed ({exc}); the sum is lost.") from exc
        return []

    def abort(self) -> list[bytes]:
        self.pending = None
        return []

    def total(self, parts: list[memoryview]) -> tuple[Iterator[bytes], int]:
        vecs = self.sums.get(_int(parts[0]))
        if vecs is None:
            raise WorkerError(f"no running sum for group {_int(parts[0])}.")
        return (v.serialize() for v in vecs), len(vecs)  # serialized one at a time

    def reset(self) -> list[bytes]:
        self.sums.clear()
        self.pending = None
        return []

    def handle(
        self, tag: bytes, parts: list[memoryview]
    ) -> list[bytes] | tuple[Iterator[bytes], int]:
        if tag == _ENCRYPT:
            return self.encrypt(parts)
        if tag == _DECRYPT:
            return self.decrypt(parts)
        if tag == _STAGE:
            return self.stage(parts)
        if tag == _COMMIT:
            return self.commit()
        if tag == _ABORT:
            return self.abort()
        if tag == _TOTAL:
            return self.total(parts)
        if tag == _RESET:
            return self.reset()
        raise WorkerError(f"unknown worker request {tag!r}.")


def serve(buffer_fd: int) -> None:
    """Entry point of a worker process: answer requests until stdin closes.

    Frames travel through the shared buffer ``buffer_fd`` (one request or reply at a
    time); stdin and stdout carry only their 8-byte lengths, so a closed stdin (the owner
    is gone) ends the worker. The key comes first, whole, on stdin (never through the
    shared buffer); the answer to it is the first reply. Anything a library prints goes to
    stderr. Not for direct use: :class:`CryptoWorkers` starts workers.
    """
    os.set_inheritable(buffer_fd, False)  # nothing this worker might spawn gets the buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    worker: _Worker | None = None
    try:
        worker = _read_key(inp)
        loaded = _put(buffer_fd, _OK, [])
    except WorkerError:
        return
    except Exception as exc:  # reported to the owner, who raises it
        message = str(exc)[:2000].encode("utf-8", "replace")
        loaded = _put(buffer_fd, _ERR, [type(exc).__name__.encode(), message])
    try:
        out.write(loaded)
        out.flush()
    except (BrokenPipeError, OSError):
        return
    while True:
        try:
            notice = _read_exact(inp, _LEN.size)
            if notice is None:
                return
            tag, parts = _get(buffer_fd, notice)
        except (WorkerError, OSError):
            return
        result: list[bytes] | tuple[Iterator[bytes], int]
        try:
            if worker is None:
                raise WorkerError("a crypto worker got work without a key that loaded.")
            result = worker.handle(tag, parts)
            del parts
            if isinstance(result, tuple):
                notice = _put(buffer_fd, _OK, result[0], result[1])
            else:
                notice = _put(buffer_fd, _OK, result)
        except Exception as exc:  # reported to the owner, who raises it
            message = str(exc)[:2000].encode("utf-8", "replace")
            notice = _put(buffer_fd, _ERR, [type(exc).__name__.encode(), message])
        try:
            out.write(notice)
            out.flush()
        except (BrokenPipeError, OSError):
            return


# --------------------------------------------------------------------------- the owner
def _stop(procs: list[subprocess.Popen[bytes]], buffers: list[int]) -> None:
    for fd in buffers:
        with contextlib.suppress(OSError):
            os.close(fd)
    for proc in procs:
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CryptoWorkers:
    """A pool of worker processes that encrypt, decrypt and sum ciphertexts of one key.

    Parameters
    ----------
    key : Key
        The key (public for the server's sums, private for a key holder's encryption and
        decryption). It travels to each worker as key-file bytes through its stdin pipe
        (a helper thread writes while the worker reads), never through the shared
        buffers, which are close-on-exec and inherited by their own worker only.
    processes : int, optional
        Number of workers (default :func:`default_processes`; at least 1).

    Notes
    -----
    Methods are not re-entrant (a lock serializes callers). After a worker died every
    method raises :class:`WorkerError`. Use as a context manager or call :meth:`close`.

    """

    def __init__(self, key: Any, processes: int | None = None) -> None:
        from cifer_flwr.crypto.keys import Key

        if not isinstance(key, Key):
            raise ConfigError(
                f"crypto workers take a CKKS/packed Key, got {type(key).__name__} (Paillier "
                "work stays in-process)."
            )
        count = default_processes() if processes is None else int(processes)
        self.key = key
        self.processes = max(1, count)
        self._lock = threading.Lock()
        self._groups: dict[Hashable, tuple[int, int]] = {}
        self._staged: list[int] = []
        self._commit_due: list[int] = []
        self._staged_group: tuple[Hashable, int, int] = (None, 0, 0)
        self._broken: str | None = None
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._buffers: list[int] = []
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._buffers)
        for _ in range(self.processes):
            fd = _shared_buffer()
            self._buffers.append(fd)
            code = f"from cifer_flwr.crypto.workers import serve; serve({fd})"
            self._procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    close_fds=True,
                    pass_fds=(fd,),
                    env=env,
                )
            )
        # the workers import and load the key while the owner goes on; the first request
        # collects their answers (_post). The key goes through each worker's stdin pipe,
        # which the worker drains as the helper thread fills it: its bytes are in no
        # buffer a descriptor could read back, and in the pipe only during the load.
        frame = encode_frame(_KEY, [key.to_bytes()])
        self._key_writers = [
            threading.Thread(
                target=_send_key, args=(proc.stdin, frame), name="cifer-key-writer", daemon=True
            )
            for proc in self._procs
        ]
        del frame
        for thread in self._key_writers:
            thread.start()
        self._starting = list(range(self.processes))

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> CryptoWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether the workers were stopped."""
        return not self._finalizer.alive

    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self._procs]

    def _fail(self, message: str) -> WorkerError:
        self._broken = message
        self.close()
        return WorkerError(message)

    def _send(self, index: int, tag: bytes, parts: Sequence[bytes | memoryview]) -> None:
        stdin = self._procs[index].stdin
        assert stdin is not None
        try:
            stdin.write(_put(self._buffers[index], tag, parts))
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._fail(f"crypto worker {index} is gone ({exc}).") from exc

    def _receive(self, index: int) -> tuple[bytes, list[memoryview]]:
        stdout = self._procs[index].stdout
        assert stdout is not None
        try:
            notice = _read_exact(stdout, _LEN.size)
            if notice is None:
                code = self._procs[index].poll()
                raise self._fail(f"crypto worker {index} exited (status {code}) without replying.")
            return _get(self._buffers[index], notice)
        except (WorkerError, OSError) as exc:
            if self._broken is not None:
                raise
            raise self._fail(f"crypto worker {index} broke its reply: {exc}") from exc

    def _exchange(
        self, requests: dict[int, tuple[bytes, Sequence[bytes | memoryview]]]
    ) -> dict[int, list[memoryview]]:
        """Send one request to each named worker, then collect every reply (:meth:`_collect`)."""
        self._post(requests)
        replies, error = self._collect(list(requests))
        if error is not None:
            raise error
        return replies

    def _post(self, requests: dict[int, tuple[bytes, Sequence[bytes | memoryview]]]) -> None:
        if self._broken is not None:
            raise WorkerError(f"the crypto workers are stopped: {self._broken}")
        if self.closed:
            raise WorkerError("the crypto workers were closed.")
        if self._starting:
            starting, self._starting = self._starting, []
            for thread in self._key_writers:  # stdin is ours again once the key is through
                thread.join()
            _, error = self._collect(starting)
            if error is not None:
                raise self._fail(f"a crypto worker could not load the key: {error}")
        for index, (tag, parts) in requests.items():
            self._send(index, tag, parts)

    def _collect(
        self, indices: Sequence[int]
    ) -> tuple[dict[int, list[memoryview]], CiferError | None]:
        """Read the reply of every worker in ``indices``; the error of the lowest index.

        Every reply is read even after an error, so the protocol stays in step.
        """
        replies: dict[int, list[memoryview]] = {}
        error: CiferError | None = None
        for index in indices:
            status, parts = self._receive(index)
            if status == _OK:
                replies[index] = parts
            elif error is None:
                name = _text(parts[0]) if parts else "?"
                text = _text(parts[1]) if len(parts) > 1 else ""
                cls = _ERRORS.get(name)
                error = cls(text) if cls is not None else WorkerError(f"{name}: {text}")
        return replies, error

    def _map(
        self, tag: bytes, batches: Sequence[Sequence[bytes | memoryview]]
    ) -> Iterator[list[memoryview]]:
        """Run one request per batch over the workers (one in flight each), in order."""
        with self._lock:
            self._settle()
            for start in range(0, len(batches), self.processes):
                wave = batches[start : start + self.processes]
                replies = self._exchange({i: (tag, b) for i, b in enumerate(wave)})
                for i in range(len(wave)):
                    yield replies[i]

    # ----------------------------------------------------------------- encryption
    def encrypt(self, chunks: Sequence[npt.NDArray[Any]]) -> list[bytes]:
        """Encrypt full-slot chunks (float64 for CKKS, int64 for ``packed``) in the workers.

        Returns the serialized ciphertexts in order: seeded for a private key (as
        :func:`~cifer_flwr.crypto.ckks.encrypt` makes them), full for a public key.
        """
        params = self.key.params
        dtype = np.int64 if params.is_bfv else np.float64
        batches = []
        for start in range(0, len(chunks), BATCH_CHUNKS):
            block = np.stack([np.asarray(c, dtype) for c in chunks[start : start + BATCH_CHUNKS]])
            if block.shape[1] != params.slots:
                raise LayoutMismatchError(
                    f"chunks of {block.shape[1]} values; the workers encrypt {params.slots}."
                )
            batches.append([block.tobytes()])
        return [bytes(blob) for reply in self._map(_ENCRYPT, batches) for blob in reply]

    def decrypt(self, blobs: Sequence[bytes], *, what: str) -> list[npt.NDArray[Any]]:
        """Validate and decrypt foreign ciphertexts in the workers.

        Each goes through :func:`~cifer_flwr.crypto.validation.load_chunk` in a worker;
        returns one raw slot vector per ciphertext (float64, or the centered int64 values
        of ``packed``).

        Raises
        ------
        CiphertextFormatError
            For the first ciphertext that fails validation (its index is in the message).

        """
        self.key.require_private("decrypt")
        dtype = np.int64 if self.key.params.is_bfv else np.float64
        total = str(len(blobs)).encode()
        batches = [
            [what.encode(), str(start).encode(), total, *blobs[start : start + BATCH_CHUNKS]]
            for start in range(0, len(blobs), BATCH_CHUNKS)
        ]
        out: list[npt.NDArray[Any]] = []
        for reply in self._map(_DECRYPT, batches):
            out += list(np.frombuffer(reply[0], dtype=dtype).reshape(-1, self.key.params.slots))
        return out

    # ----------------------------------------------------------------- running sums
    def stage(self, group: Hashable, blobs: Sequence[bytes], *, what: str) -> None:
        """Send foreign ciphertexts to be validated and added to a pending copy of a sum.

        Returns at once: each worker validates its chunk range and adds it into a pending
        copy of ``group``'s running sum while the caller goes on. :meth:`commit` waits for
        them and makes the pending sums current, or raises the first refusal after every
        worker dropped its pending copy (no sum changed); :meth:`abort` drops them.
        Staging again first aborts what is still staged.

        Raises
        ------
        LayoutMismatchError
            When ``group`` already sums another number of ciphertexts (nothing sent).

        """
        with self._lock:
            self._drop_staged()
            known = self._groups.get(group)
            if known is not None and known[1] != len(blobs):
                raise LayoutMismatchError(
                    f"{what}: {len(blobs)} ciphertexts; this running sum has {known[1]}."
                )
            gid = known[0] if known is not None else len(self._groups)
            total = str(len(blobs)).encode()
            ranges = chunk_ranges(len(blobs), self.processes)
            due, self._commit_due = set(self._commit_due), []
            rest = due - set(range(len(ranges)))
            if rest:
                self._exchange({i: (_COMMIT, []) for i in sorted(rest)})
            self._post(
                {
                    i: (
                        _STAGE,
                        [
                            b"1" if i in due else b"0",
                            str(gid).encode(),
                            what.encode(),
                            str(a).encode(),
                            total,
                            *blobs[a:b],
                        ],
                    )
                    for i, (a, b) in enumerate(ranges)
                }
            )
            self._staged = list(range(len(ranges)))
            self._staged_group = (group, gid, len(blobs))

    def _drop_staged(self) -> None:
        """Collect a staged reply's results and abort it (lock held)."""
        staged, self._staged = self._staged, []
        if not staged:
            return
        self._collect(staged)
        if self._broken is None:
            self._exchange({i: (_ABORT, []) for i in staged})

    def _settle(self) -> None:
        """Before any request but a stage: drop what is staged, send the commits due (lock held)."""
        self._drop_staged()
        due, self._commit_due = self._commit_due, []
        if due:
            self._exchange({i: (_COMMIT, []) for i in due})

    def commit(self) -> None:
        """Wait for the staged reply; add it to its group's running sum, or raise its refusal.

        Raises
        ------
        CiphertextFormatError, LayoutMismatchError
            For the first ciphertext a worker refused (every worker then aborted).
        WorkerError
            Without a staged reply, or when a worker died.

        """
        with self._lock:
            staged, self._staged = self._staged, []
            if not staged:
                raise WorkerError("commit() without a stage().")
            _, error = self._collect(staged)
            if error is not None:
                if self._broken is None:
                    self._exchange({i: (_ABORT, []) for i in staged})
                raise error
            # sent with the next stage (one round trip less per reply) or before any other
            # request (_settle)
            self._commit_due = staged
            group, gid, count = self._staged_group
            self._groups.setdefault(group, (gid, count))

    def abort(self) -> None:
        """Drop the staged reply (waiting for it); every running sum stays as it was."""
        with self._lock:
            self._drop_staged()

    def groups(self) -> list[Hashable]:
        """Groups that have a running sum, in the order they were first staged."""
        return list(self._groups)

    def total(self, group: Hashable) -> list[bytes]:
        """The running sum of ``group`` as serialized (full) ciphertexts, in chunk order."""
        with self._lock:
            self._settle()
            if group not in self._groups:
                raise WorkerError(f"no running sum for group {group!r}.")
            gid, count = self._groups[group]
            ranges = chunk_ranges(count, self.processes)
            replies = self._exchange({i: (_TOTAL, [str(gid).encode()]) for i in range(len(ranges))})
            return [bytes(blob) for i in range(len(ranges)) for blob in replies[i]]

    def reset(self) -> None:
        """Forget every running sum and what is staged (start of a round)."""
        with self._lock:
            self._drop_staged()
            self._commit_due = []  # forgotten with the sums
            self._exchange({i: (_RESET, []) for i in range(self.processes)})
            self._groups.clear()
            self._staged = []


_SHARED: dict[tuple[str, bool], CryptoWorkers] = {}
_SHARED_LOCK = threading.Lock()
#: Most shared pools kept at once (a key holder's private and public pool); older ones stop.
MAX_SHARED_POOLS = 2


def shared_workers(key: Any, num_chunks: int) -> CryptoWorkers | None:
    """A process-wide pool for ``key`` when ``num_chunks`` ciphertexts are worth it, else None.

    ``None`` when the work is smaller than :data:`PARALLEL_MIN_CHUNKS`, when fewer than 2
    workers are available (``$CIFER_WORKERS``), or for a Paillier key. The pool is kept
    for the next call (one per key fingerprint and kind) and stopped at interpreter exit.
    """
    from cifer_flwr.crypto.keys import Key

    if not isinstance(key, Key) or num_chunks < PARALLEL_MIN_CHUNKS:
        return None
    processes = default_processes()
    if processes < 2:
        return None
    slot = (key.fingerprint, key.is_private)
    with _SHARED_LOCK:
        pool = _SHARED.pop(slot, None)
        if pool is None or pool.closed or pool.processes != processes:
            if pool is not None:
                pool.close()
            while len(_SHARED) >= MAX_SHARED_POOLS:
                _SHARED.pop(next(iter(_SHARED))).close()
            pool = CryptoWorkers(key, processes)
        _SHARED[slot] = pool  # most recently used last
        return pool
