"""The package stays clean under the linters configured in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cmd",
    [
        [sys.executable, "-m", "ruff", "check", "cifer_flwr", "tests", "benchmarks"],
        [sys.executable, "-m", "ruff", "format", "--check", "cifer_flwr", "tests", "benchmarks"],
        # a cold mypy run takes 25-30 s on 2 cores (no cache in a fresh clone)
        pytest.param([sys.executable, "-m", "mypy"], marks=pytest.mark.slow),
    ],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_linters_are_clean(cmd):
    if shutil.which(cmd[2]) is None and not (Path(sys.executable).parent / cmd[2]).exists():
        pytest.fail(f"{cmd[2]} is not installed; install the [dev] extra")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    line = next(x for x in ci.splitlines() if x.startswith("TEST_COMMAND="))
    command = line.split("=", 1)[1].strip("'\"")
    assert command in readme
