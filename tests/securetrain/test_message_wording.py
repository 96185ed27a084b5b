"""Message wording from issue 22: counted as people count, flags that exist."""

from __future__ import annotations

import numpy as np
import pytest

from cifer_flwr.exceptions import DatasetError, OutputPathError
from cifer_flwr.securetrain.data import _features
from cifer_flwr.securetrain.workflow import check_encrypted_output, check_plain_output


def test_a_nan_is_located_by_1_based_row_and_column():
    x = np.ones((3, 4))
    x[1, 2] = np.nan  # the 2nd data row, the 3rd feature column
    with pytest.raises(DatasetError) as info:
        _features(x, "data.npy")
    assert "data row 2, feature column 3 (counting from 1)" in str(info.value)


def test_an_existing_output_names_no_flag_that_does_not_exist(tmp_path):
    """decrypt-model has --output-model, encrypt-dataset --output: name neither wrongly."""
    enc, plain = tmp_path / "m.enc", tmp_path / "m.npz"
    enc.write_bytes(b"x")
    plain.write_bytes(b"x")
    for check, path in ((check_encrypted_output, enc), (check_plain_output, plain)):
        with pytest.raises(OutputPathError) as info:
            check(path)
        text = str(info.value)
        assert "--force" in text and "--output " not in text and "--output path" not in text
