"""Shared fixtures: one small session-scoped key pair per preset, made once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from cifer_flwr import crypto


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
