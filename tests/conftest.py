"""Shared fixtures: one small session-scoped key pair per preset, made once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from cifer_flwr import crypto
from cifer_flwr.tooling.federation import processes


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM'd / SIGHUP'd test session tears down like Ctrl-C (no orphaned federations).

    The signal raises ``KeyboardInterrupt`` in the main thread, so fixture finalizers
    (``fed.stop()``) run; :func:`pytest_unconfigure` then stops any tied process left. Tied
    processes also get the parent-death signal if pytest is SIGKILLed.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise processes.Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop every Flower process this session spawned and that still runs."""
    processes.stop_tied(grace=4.0)


@pytest.fixture(scope="session")
def key() -> crypto.Key:
    return crypto.generate_key("default")


@pytest.fixture(scope="session")
def public_key(key: crypto.Key) -> crypto.Key:
    return key.public()


@pytest.fixture(scope="session")
def other_key() -> crypto.Key:
    return crypto.generate_key("default")


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory, key: crypto.Key):
    """(private path, public path) of ``key`` written to disk."""
    return crypto.write_key_pair(key, tmp_path_factory.mktemp("keys") / "fed")
