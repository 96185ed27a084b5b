"""A session-scoped ``packed`` (BFV) key pair for the strategy tests."""

from __future__ import annotations

import pytest

from cifer_flwr import crypto


@pytest.fixture(scope="session")
def packed_key_files(tmp_path_factory: pytest.TempPathFactory):
    """(private path, public path) of a fresh ``packed`` key written to disk."""
    key = crypto.generate_key("packed")
    return crypto.write_key_pair(key, tmp_path_factory.mktemp("keys") / "packed")
