"""The notebooks in examples/notebooks/ run, and are kept in git without outputs.

Each notebook is executed by nbclient (tests/notebooks/execute.py) in a fresh kernel, inside
a loopback-only network namespace when the machine allows one (Flower's simulation engine
runs Ray, which binds non-loopback addresses by default; see tests/e2e/test_simulation.py),
with its working files in a temporary directory (``CIFER_NOTEBOOK_WORK``). A cell that
raises fails the test; the notebooks check their own results (``assert``) and the tests read
the executed outputs as well.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cifer_flwr.tooling.federation import processes

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "examples" / "notebooks"
FEDAVG = NOTEBOOKS / "encrypted_fedavg_simulation.ipynb"
SECURETRAIN = NOTEBOOKS / "securetrain_two_parties.ipynb"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tracked_notebooks() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--", "examples/notebooks/*.ipynb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:  # not a git checkout (an unpacked archive): the files present
        return sorted(NOTEBOOKS.glob("*.ipynb"))
    return [ROOT / line for line in out.stdout.splitlines() if line]


def test_notebooks_are_stored_without_outputs():
    found = _tracked_notebooks()
    assert {p.name for p in found} >= {FEDAVG.name, SECURETRAIN.name}, found
    for path in found:
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4, path
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name} cell {i} has outputs"
                assert cell["execution_count"] is None, f"{path.name} cell {i} was executed"
        assert "widgets" not in nb["metadata"], path.name


def _execute(notebook: Path, tmp_path: Path, namespace: bool) -> str:
    """Run ``notebook``; return the text of every output, colour codes removed."""
    prefix: list[str] = []
    if namespace:
        from tests.e2e.test_simulation import loopback_namespace

        prefix, how = loopback_namespace()
        print(f"notebook network: {how}")
    out = tmp_path / "executed.ipynb"
    env = {
        **os.environ,
        "CIFER_NOTEBOOK_WORK": str(tmp_path / "work"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    env.pop("MPLBACKEND", None)  # the kernel's inline backend puts the plot into the notebook
    cmd = [*prefix, sys.executable, "-m", "tests.notebooks.execute", str(notebook), str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        log, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            processes.stop_pids([proc.pid])
    nb = json.loads(out.read_text()) if out.is_file() else {"cells": []}
    texts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            texts.append("".join(o.get("text", "")))
            texts.append("\n".join(o.get("traceback", [])))
            texts.extend(o.get("data", {}).keys())
    text = _ANSI.sub("", "\n".join(texts))
    assert proc.returncode == 0, (log[-3000:], text[-3000:])
    return text


@pytest.mark.slow
@pytest.mark.e2e
def test_encrypted_fedavg_notebook_runs(tmp_path):
    pytest.importorskip("ray", reason='Ray missing: pip install "cifer-flwr[simulation]"')
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    text = _execute(FEDAVG, tmp_path, namespace=True)
    assert "image/png" in text  # the per-round plot
    for name in ("encrypted", "plaintext"):
        assert re.search(rf"{name}: run \d+ finished:completed", text), text
    rounds = re.findall(r"round (\d): accuracy ([\d.]+) encrypted, ([\d.]+) plaintext", text)
    assert [r[0] for r in rounds] == ["1", "2", "3"], text
    assert all(abs(float(e) - float(p)) < 0.005 for _, e, p in rounds), rounds
    diff = float(re.search(r"plaintext model\| = ([\d.e+-]+)", text).group(1))
    assert diff < 1e-3
    assert (tmp_path / "work" / "model.enc").is_file()
    # nothing the notebook's federation started is still running
    state = json.loads((tmp_path / "work" / "simulation" / "federation.json").read_text())
    assert not [p["pid"] for p in state["processes"] if processes.is_alive(p["pid"])]


@pytest.mark.slow
def test_securetrain_notebook_runs(tmp_path):
    pytest.importorskip("sklearn")
    text = _execute(SECURETRAIN, tmp_path, namespace=False)
    acc = re.search(r"encrypted training ([\d.]+), scikit-learn in the clear ([\d.]+)", text)
    assert acc is not None, text
    assert float(acc.group(1)) > 0.85 and float(acc.group(1)) > float(acc.group(2)) - 0.05
    work = tmp_path / "work"
    # only public keys and ciphertexts went to Bob; Alice's private key stayed 0600
    assert (work / "keys" / "alice" / "private.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (work / "bob").iterdir()) == [
        "model_1.enc",
        "model_2.enc",
        "model_3.enc",
    ]
    assert "trained 1 iterations on 398 samples (encrypted data, encrypted weights)" in text
