"""No secret key bytes in a descriptor a crypto worker pool shares or leaks (issue 18, item 4).

Right after a pool of a private key starts (before any request), no memfd or deleted file
open in the owner or in a worker holds the key's bytes; every buffer and pipe the pool made
is close-on-exec, so a child the key holder spawns without ``pass_fds`` (``os.system``,
``subprocess`` with ``close_fds=False``) inherits none of them, in the owner or a worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifer_flwr import crypto

O_CLOEXEC = 0o2000000  # the flags field of /proc/PID/fdinfo is octal


@pytest.fixture(scope="module")
def private_key() -> crypto.Key:
    return crypto.generate_key("default")


def _needles(key: crypto.Key) -> list[bytes]:
    secret = key._private_bytes
    assert secret is not None and len(secret) > 4096
    mid = len(secret) // 2
    return [secret[-256:], secret[mid : mid + 256], key.to_bytes()[-256:]]


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
    return out


def _memory_files(pid: int) -> dict[int, str]:
    """Descriptors of ``pid`` that are anonymous memory or deleted files (readable contents)."""
    return {
        fd: target
        for fd, target in _fds(pid).items()
        if target.startswith("/memfd:") or target.endswith("(deleted)")
    }


def _flags(pid: int, fd: int) -> int:
    for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no flags for fd {fd} of {pid}")


def test_no_key_bytes_in_any_shared_buffer_right_after_the_pool_starts(private_key) -> None:
    needles = _needles(private_key)
    with crypto.CryptoWorkers(private_key, 2) as pool:
        # no request yet: the workers may still be loading the key
        checked = 0
        for pid in (os.getpid(), *pool.pids()):
            for fd, target in _memory_files(pid).items():
                try:
                    with open(f"/proc/{pid}/fd/{fd}", "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                checked += "cifer-worker" in target
                assert not any(n in data for n in needles), (pid, fd, target, len(data))
        assert checked >= 4  # each buffer is seen in the owner and in its worker
        pool.reset()  # the pool works: the key did reach the workers
        for fd in pool._buffers:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            assert not any(n in data for n in needles)


def test_every_buffer_and_pipe_of_the_pool_is_close_on_exec(private_key) -> None:
    with crypto.CryptoWorkers(private_key, 2) as pool:
        pool.reset()
        for fd in pool._buffers:
            assert _flags(os.getpid(), fd) & O_CLOEXEC, fd
        for proc in pool._procs:
            for stream in (proc.stdin, proc.stdout):
                assert stream is not None
                assert _flags(os.getpid(), stream.fileno()) & O_CLOEXEC
        for pid in pool.pids():  # in a worker, only stdin/stdout/stderr are inheritable
            for fd, target in _fds(pid).items():
                if fd > 2:
                    assert _flags(pid, fd) & O_CLOEXEC, (pid, fd, target)


def test_a_child_spawned_without_pass_fds_inherits_no_buffer(tmp_path, private_key) -> None:
    script = tmp_path / "fds.py"
    script.write_text(
        "import os, sys\n"
        "links = []\n"
        "for f in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        links.append(os.readlink(f'/proc/self/fd/{f}'))\n"
        "    except OSError:\n"
        "        pass\n"
        "open(sys.argv[1], 'w').write('\\n'.join(links))\n"
    )
    with crypto.CryptoWorkers(private_key, 2) as pool:
        out_system = tmp_path / "system.txt"
        assert os.system(f"{sys.executable} {script} {out_system}") == 0
        out_popen = tmp_path / "popen.txt"
        subprocess.run([sys.executable, str(script), str(out_popen)], close_fds=False, check=True)
        pool.reset()
        own = {fd for fd, t in _fds(os.getpid()).items() if "cifer-worker" in t}
        assert len(own) == 2  # the buffers exist in the owner...
    for out in (out_system, out_popen):  # ...and are in no child
        assert "cifer-worker" not in out.read_text(), out.read_text()
