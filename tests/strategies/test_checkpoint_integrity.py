"""Edited checkpoints are refused (issue 18, item 7, checkpoint half; docs/design.md §6).

Before: a hand-edited checkpoint was resumed: a rewound ``round`` trained again, ``round``
99 or 10**400 trained nothing and reported success, an edited ``min_replies`` was ignored,
and ``-Infinity`` / 10**400 in a field raised ``OverflowError`` out of ``start()``.

Now the header carries an HMAC-SHA256 under the run's checkpoint key (``NAME.key`` beside
it, 0600, or ``$CIFER_CHECKPOINT_KEY``): an edit without the key fails the integrity check;
an edit *with* the key (the fuzzer's attacker) still meets the range and settings checks.
"""

from __future__ import annotations

import os
import shutil

import pytest

from cifer_flwr import strategies
from cifer_flwr.crypto import container
from cifer_flwr.exceptions import CiferError, CiphertextFormatError, ConfigError
from cifer_flwr.strategies import _checkpoint
from cifer_flwr.strategies._checkpoint import (
    ENV_CHECKPOINT_KEY,
    checkpoint_key_path,
    read_checkpoint,
)
from tests.strategies.harness import (
    InProcessGrid,
    make_client_app,
    node_configs,
    plain_initial,
    run_encrypted,
)

NODES = (1, 2, 3)
COMMON = {"min_train_nodes": 3, "min_available_nodes": 3, "min_evaluate_nodes": 3}
ROUNDS = 3


@pytest.fixture(scope="module")
def finished(key_files, tmp_path_factory):
    """A checkpoint after round 2 of a 3-round FedAvg run (and its key file)."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    run_encrypted(key_files, "FedAvg", 2, NODES, COMMON, checkpoint_path=ckpt)
    return ckpt


@pytest.fixture
def ckpt(finished, tmp_path):
    path = tmp_path / "run.ckpt"
    shutil.copy(finished, path)
    shutil.copy(checkpoint_key_path(finished), checkpoint_key_path(path))
    return path


def _resume(key_files, path, num_rounds=ROUNDS, name="FedAvg", **kwargs):
    """Start a resuming strategy; returns (grid calls before the error or the end, result)."""
    priv, pub = key_files
    grid = InProcessGrid(make_client_app({}, encrypted=True), node_configs(priv, nodes=NODES))
    options = {**COMMON, **kwargs}
    strategy = getattr(strategies, name)(
        public_key=pub, checkpoint_path=path, resume=True, **options
    )
    try:
        return grid, strategy.start(
            grid=grid, initial_arrays=plain_initial(), num_rounds=num_rounds
        )
    except CiferError:
        assert grid.calls == 0  # refused before any round
        raise


def _edit(path, *, remac: bool, **changes):
    """Rewrite state fields as an attacker would: the container digest recomputed; the MAC
    recomputed only with the key (``remac``)."""
    header, blobs = container.read_file(path)
    kind = header.pop("kind")
    header.pop("blobs_sha256")
    state = dict(header["state"])
    state.update(changes)
    header["state"] = state
    if remac:
        key = _checkpoint._read_key_file(path)
        head = {"state": state, "format": header["format"]}
        header["mac"] = _checkpoint._mac(key, head, blobs)
    path.write_bytes(container.pack(kind, header, blobs))


EDITS = [
    {"round": 1},  # rewound: round 2 would train again
    {"round": 99},
    {"round": 10**400},
    {"round": float("-inf")},
    {"min_replies": 3},
    {"examples_per_client": float("-inf")},
    {"examples_per_client": 10**400},
]


@pytest.mark.parametrize("change", EDITS, ids=[str(e)[:30] for e in EDITS])
def test_an_edit_without_the_key_fails_the_integrity_check(key_files, ckpt, change):
    _edit(ckpt, remac=False, **change)
    with pytest.raises(CiphertextFormatError, match="integrity check"):
        _resume(key_files, ckpt)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"round": 99}, CiphertextFormatError, "round is 99; expected an integer in 1..2"),
        ({"round": 10**400}, CiphertextFormatError, "round is 1000"),
        ({"round": float("-inf")}, CiphertextFormatError, "round is -inf"),
        ({"round": 0}, CiphertextFormatError, "round is 0"),
        ({"round": 3, "num_rounds": 10**400}, CiphertextFormatError, "num_rounds is 1000"),
        ({"min_replies": 3}, ConfigError, "min_replies 3, but this run uses 2"),
        ({"masking": True}, ConfigError, "masking True"),
        ({"strategy": "x.FedAdam"}, ConfigError, "strategy 'x.FedAdam'"),
        ({"preset": "packed"}, ConfigError, "preset 'packed'"),
        ({"examples_per_client": float("-inf")}, CiphertextFormatError, "examples_per_client"),
        ({"examples_per_client": 10**400}, CiphertextFormatError, "examples_per_client"),
        ({"excluded": {"7": [[1, "x"]]}}, CiphertextFormatError, "excluded round is 7"),
        ({"excluded": {"1": [[-1, "x"]]}}, CiphertextFormatError, "excluded\\[1\\] node"),
        ({"round_stats": {"1": {"s": 10**400}}}, CiphertextFormatError, "round_stats"),
        ({"seen": [[1, -1]]}, CiphertextFormatError, "seen count is -1"),
        ({"seen": [[1, 10**400]]}, CiphertextFormatError, "seen count"),
        ({"result": {"released": 1}}, CiphertextFormatError, "result"),
        (
            {"layout": {"names": ["w"], "shapes": [[10**400]], "dtypes": ["float32"]}},
            CiphertextFormatError,
            "layout",
        ),
        ({"extra": []}, CiphertextFormatError, "extra"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_an_edit_with_the_key_meets_the_range_and_settings_checks(
    key_files, ckpt, change, error, message
):
    _edit(ckpt, remac=True, **change)
    read_checkpoint(ckpt)  # the MAC verifies: only the checks below refuse it
    with pytest.raises(error, match=message):
        _resume(key_files, ckpt)


def test_a_checkpoint_beyond_the_runs_num_rounds_is_refused(key_files, ckpt):
    """Untouched checkpoint of round 2; a run of 1 round would train nothing and succeed."""
    with pytest.raises(ConfigError, match="holds round 2 of 2, but this run has num_rounds=1"):
        _resume(key_files, ckpt, num_rounds=1)


def test_the_untouched_checkpoint_resumes(key_files, ckpt):
    before = ckpt.with_suffix(".key").name
    key = checkpoint_key_path(ckpt).read_bytes()
    grid, result = _resume(key_files, ckpt)
    assert grid.calls > 0 and set(result.train_metrics_clientapp) == {1, 2, 3}
    assert read_checkpoint(ckpt).state["round"] == ROUNDS
    assert checkpoint_key_path(ckpt).read_bytes() == key, before  # a resumed run keeps its key


def test_the_key_file(key_files, ckpt, tmp_path):
    key_path = checkpoint_key_path(ckpt)
    assert key_path.name == "run.ckpt.key" and (key_path.stat().st_mode & 0o777) == 0o600
    key = key_path.read_bytes()
    os.chmod(key_path, 0o644)
    with pytest.raises(CiphertextFormatError, match="0600"):
        _resume(key_files, ckpt)
    key_path.unlink()
    (tmp_path / "elsewhere").write_bytes(key)
    key_path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CiphertextFormatError, match="symbolic link"):
        _resume(key_files, ckpt)
    key_path.unlink()
    with pytest.raises(CiphertextFormatError, match="no integrity key"):
        _resume(key_files, ckpt)
    key_path.write_text("00" * 32 + "\n")
    os.chmod(key_path, 0o600)
    with pytest.raises(CiphertextFormatError, match="integrity check"):
        _resume(key_files, ckpt)


def test_a_new_run_makes_a_new_key(key_files, tmp_path):
    path = tmp_path / "run.ckpt"
    run_encrypted(key_files, "FedAvg", 1, NODES, COMMON, checkpoint_path=path)
    first = checkpoint_key_path(path).read_bytes()
    run_encrypted(key_files, "FedAvg", 1, NODES, COMMON, checkpoint_path=path)
    assert checkpoint_key_path(path).read_bytes() != first
    read_checkpoint(path)


def test_a_key_from_the_environment_leaves_no_key_file(key_files, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    monkeypatch.setenv(ENV_CHECKPOINT_KEY, "s3cret-from-a-vault-0123456789")
    run_encrypted(key_files, "FedAvg", 1, NODES, COMMON, checkpoint_path=path)
    assert not checkpoint_key_path(path).exists()
    read_checkpoint(path)
    monkeypatch.setenv(ENV_CHECKPOINT_KEY, "another-secret-0123456789abcdef")
    with pytest.raises(CiphertextFormatError, match=f"integrity check.*{ENV_CHECKPOINT_KEY}"):
        read_checkpoint(path)
    monkeypatch.setenv(ENV_CHECKPOINT_KEY, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        read_checkpoint(path)
