"""A session-scoped ``packed`` (BFV) key pair; the pull loop's virtual clock."""

from __future__ import annotations

import pytest

from cifer_flwr import crypto
from cifer_flwr.strategies import _pull
from tests.strategies.harness import VirtualClock


@pytest.fixture(autouse=True)
def virtual_pull_clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """The strategies stream their replies through the production pull loop; a dropped
    reply is waited for until the round's timeout on a virtual clock (no real sleep)."""
    clock = VirtualClock()
    monkeypatch.setattr(_pull, "time", clock)
    return clock


@pytest.fixture(scope="session")
def packed_key_files(tmp_path_factory: pytest.TempPathFactory):
    """(private path, public path) of a fresh ``packed`` key written to disk."""
    key = crypto.generate_key("packed")
    return crypto.write_key_pair(key, tmp_path_factory.mktemp("keys") / "packed")
