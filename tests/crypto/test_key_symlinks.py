"""Key files are never written through a symbolic link (issue 18, item 8)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from cifer_flwr import crypto
from cifer_flwr.cli import app
from cifer_flwr.crypto import container
from cifer_flwr.exceptions import OutputPathError

runner = CliRunner()


def _tree(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_keygen_refuses_a_symlinked_key_directory(tmp_path):
    """`keys/NAME -> elsewhere`: nothing is written, neither here nor there."""
    keys, victim = tmp_path / "keys", tmp_path / "victim"
    keys.mkdir()
    victim.mkdir()
    (keys / "fed").symlink_to(victim, target_is_directory=True)
    res = runner.invoke(app, ["keygen", "--name", "fed", "--dir", str(keys)])
    assert res.exit_code == 2, res.output
    assert "symbolic link" in res.output and "expected a real directory" in res.output
    assert _tree(victim) == []
    assert (keys / "fed").is_symlink()
    forced = runner.invoke(app, ["keygen", "--name", "fed", "--dir", str(keys), "--force"])
    assert forced.exit_code == 2 and _tree(victim) == []


@pytest.mark.parametrize("name", [crypto.PRIVATE_KEY_FILE, crypto.PUBLIC_KEY_FILE])
def test_keygen_force_refuses_a_symlinked_key_file(tmp_path, name):
    keys, victim = tmp_path / "keys", tmp_path / "victim.txt"
    (keys / "fed").mkdir(parents=True)
    victim.write_text("precious\n")
    (keys / "fed" / name).symlink_to(victim)
    res = runner.invoke(app, ["keygen", "--name", "fed", "--dir", str(keys), "--force"])
    assert res.exit_code == 2, res.output
    assert "symbolic link" in res.output
    assert victim.read_text() == "precious\n"
    assert (keys / "fed" / name).is_symlink()  # the link is left as it was


def test_write_key_pair_refuses_links_even_dangling_ones(tmp_path, key):
    link = tmp_path / "pair"
    link.symlink_to(tmp_path / "not-yet", target_is_directory=True)
    with pytest.raises(OutputPathError, match="symbolic link"):
        crypto.write_key_pair(key, link)
    assert not (tmp_path / "not-yet").exists()
    real = tmp_path / "real"
    crypto.write_key_pair(key, real)  # a real directory still works
    assert sorted(os.listdir(real)) == [crypto.PRIVATE_KEY_FILE, crypto.PUBLIC_KEY_FILE]


def test_the_nofollow_writer_refuses_a_link_swapped_in_after_the_check(tmp_path):
    """The writer itself (not only the up-front check) opens the directory with O_NOFOLLOW."""
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / "dir"
    link.symlink_to(victim, target_is_directory=True)
    with pytest.raises(OutputPathError, match="symbolic link"):
        container.write_file_atomic(link / "private.key", b"secret", follow_symlinks=False)
    (victim / "f").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputPathError, match="symbolic link"):
        container.write_file_atomic(victim / "f", b"secret", follow_symlinks=False)
    assert _tree(victim) == ["f"] and not (tmp_path / "elsewhere").exists()
    out = container.write_file_atomic(victim / "g", b"ok", mode=0o600, follow_symlinks=False)
    assert out.read_bytes() == b"ok" and (out.stat().st_mode & 0o777) == 0o600
    assert _tree(victim) == ["f", "g"]  # no temporary file left behind
