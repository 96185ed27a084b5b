"""An atomic write that fails names the file asked for, not its temporary name (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifer_flwr.crypto.container import write_file_atomic


@pytest.mark.parametrize("follow", [True, False], ids=["plain", "key-file"])
def test_a_failed_write_names_the_target_not_the_temp_file(follow):
    target = Path("/proc/cifer-test-output.npz")  # no file can be created there, even as root
    with pytest.raises(OSError) as info:
        write_file_atomic(target, b"x", follow_symlinks=follow)
    text = str(info.value)
    assert str(target) in text, text
    assert ".cifer-test-output.npz." not in text, text  # the temporary name stays internal
