"""CLI UX: optional packages through cifer_flwr.extras (one line naming the extra), progress
bars only on a terminal, issue 12's defects (keygen, keys inspect, federation down, demo)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cifer_flwr import extras
from cifer_flwr.cli._common import fail, progress
from cifer_flwr.exceptions import CiferError, MissingExtraError

PACKAGE = Path(__file__).resolve().parents[2] / "cifer_flwr"


def bare_optional_imports(path: Path) -> list[str]:
    """``import torch`` / ``from sklearn.x import y`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [
            f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in extras.EXTRAS
        ]
    return found


def test_every_optional_import_goes_through_extras_require():
    offenders = [
        hit
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "extras.py"
        for hit in bare_optional_imports(p)
    ]
    assert offenders == [], "use cifer_flwr.extras.require(module, purpose=...) instead"


def test_the_scan_finds_a_bare_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
        "def f():\n    import matplotlib.pyplot as plt\n"
    )
    assert bare_optional_imports(f) == ["m.py:5 matplotlib.pyplot"]


def test_require_names_the_extra_and_is_an_import_error():
    with pytest.raises(MissingExtraError) as info:
        extras.require("matplotlib.not_a_module_xyz", purpose="a test")
    # installed package, missing submodule: still the extra, with the reason
    assert extras.install_command(["plot"]) in str(info.value)
    assert isinstance(info.value, ImportError) and isinstance(info.value, CiferError)
    assert extras.require("phe").__name__ == "phe"


def test_check_lists_every_missing_module_in_one_command(monkeypatch):
    monkeypatch.setattr(
        extras, "available", lambda m: m.split(".")[0] not in ("torch", "matplotlib")
    )
    with pytest.raises(MissingExtraError) as info:
        extras.check(["torch", "sklearn", "matplotlib.pyplot"], purpose="x")
    msg = str(info.value)
    assert msg.startswith("matplotlib, torch are not installed (x)")
    assert msg.endswith(extras.install_command(["torch", "plot"]))
    extras.check(["sklearn"])  # present: no error


def test_unknown_module_is_a_programming_error():
    with pytest.raises(KeyError):
        extras.require("numpy")


def test_fail_turns_missing_extra_into_exit_2(capsys):
    exit_ = fail(
        MissingExtraError('torch is not installed; install: pip install "cifer-flwr[torch]"')
    )
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2


def test_progress_is_quiet_off_a_terminal(capfd):
    with progress("steps", total=3) as advance:  # pytest's stderr is not a terminal
        for _ in range(3):
            advance()
    with progress("steps", total=None, quiet=True) as advance:
        advance(5)
    assert capfd.readouterr().err == ""


def test_progress_draws_a_bar_on_a_terminal():
    """In a pseudo-terminal the bar is drawn on stderr (and cleared when done)."""
    code = (
        "from cifer_flwr.cli._common import progress\n"
        "import time\n"
        "with progress('encrypting', total=4) as advance:\n"
        "    for _ in range(4):\n"
        "        time.sleep(0.05); advance()\n"
    )
    import pty

    out = []

    def read(fd):
        data = __import__("os").read(fd, 1024)
        out.append(data)
        return data

    argv = [sys.executable, "-c", code]
    status = pty.spawn(argv, read)
    text = b"".join(out).decode(errors="replace")
    assert status == 0, text
    assert "encrypting" in text and "/4" in text


def cli(*args: str):
    from typer.testing import CliRunner

    from cifer_flwr.cli import app

    return CliRunner().invoke(app, list(args))


def test_keygen_refuses_an_existing_name_with_the_cli_flag(tmp_path):
    args = ("keygen", "--name", "k", "--dir", str(tmp_path))
    assert cli(*args).exit_code == 0
    before = (tmp_path / "k" / "public.key").read_bytes()
    res = cli(*args)
    assert res.exit_code == 2
    assert "--force" in res.stderr and "force=True" not in res.stderr
    assert (tmp_path / "k" / "public.key").read_bytes() == before


@pytest.mark.parametrize(
    ("target", "expected"),
    [("dir", "is a directory, not a key file"), ("/dev/null", "is a character device")],
)
def test_keys_inspect_says_what_the_path_is(tmp_path, target, expected):
    res = cli("keys", "inspect", str(tmp_path) if target == "dir" else target)
    assert res.exit_code == 2
    assert expected in res.stderr and "does not exist" not in res.stderr
    assert "public.key or private.key" in res.stderr


def test_federation_down_with_nothing_up_exits_0_either_way(tmp_path):
    """No state file, or a state file whose processes are gone: the same answer, exit 0."""
    from cifer_flwr.tooling.federation import Federation, ProcessInfo

    first = cli("federation", "down", "--dir", str(tmp_path))
    done = subprocess.Popen(["sleep", "0"])  # a PID that no longer runs
    done.wait()
    Federation(
        tmp_path, "127.0.0.1:1", processes=[ProcessInfo("superlink", done.pid, ["x"], "l")]
    ).save()
    second = cli("federation", "down", "--dir", str(tmp_path))
    for res in (first, second):
        assert res.exit_code == 0, res.output
        assert "nothing is up" in res.stdout


def test_demo_refuses_an_unknown_strategy_before_anything_starts(tmp_path):
    res = cli("demo", "--strategy", "fedyoga", "--dir", str(tmp_path / "demo"))
    assert res.exit_code == 2
    assert "fedyoga" in res.stderr and "fedyogi" in res.stderr  # what was found, the choices
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()  # no keys, no federation


def test_a_failed_experiment_is_one_line_and_the_sweep_goes_on(tmp_path):
    """A CiferError inside a Hydra job: no Hydra traceback, every job runs, one error at the end."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cifer_flwr.exceptions import CiferError\n"
        "from cifer_flwr.tooling import launch\n"
        "def fake(exp, out_dir, progress=None):\n"
        "    if exp.seed == 1:\n"
        "        raise CiferError('run 7 ended finished:failed: the ServerApp failed: boom')\n"
        "    return {'rounds': [{'round': 1, 'accuracy': 0.5}]}\n"
        "launch.run_experiment = fake\n"
        "done = []\n"
        "try:\n"
        "    launch.hydra_entry(['seed=0,1,2', 'hydra.sweep.dir=sweep'], True,\n"
        "                       on_done=lambda d, ok: done.append((Path(d).name, ok)))\n"
        "except CiferError as exc:\n"
        "    print('ERROR', exc)\n"
        "print('DONE', sorted(done))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert "DONE [('0', True), ('1', False), ('2', True)]" in res.stdout
    error = next(line for line in res.stdout.splitlines() if line.startswith("ERROR"))
    assert "1 of 3 experiments failed" in error and "the ServerApp failed: boom" in error


def test_a_key_directory_hint_names_the_key_the_command_needs(tmp_path):
    """Issue 22: `decrypt-model --private-key keys/demo` advised passing public.key."""
    assert cli("keygen", "--name", "demo", "--dir", str(tmp_path / "keys")).exit_code == 0
    model = tmp_path / "m.enc"
    model.write_bytes(b"not used: the key is checked first")
    res = cli(
        "securetrain",
        "decrypt-model",
        "--input-model",
        str(model),
        "--private-key",
        str(tmp_path / "keys" / "demo"),
        "--output-model",
        str(tmp_path / "out.npz"),
    )
    assert res.exit_code == 2
    one_line = " ".join(res.stderr.split())
    assert f"pass {tmp_path / 'keys' / 'demo' / 'private.key'}" in one_line, res.stderr
    assert "pass " + str(tmp_path / "keys" / "demo" / "public.key") not in one_line


def test_a_directory_as_input_model_is_named_a_directory(tmp_path):
    """Issue 22: a directory given as --input-model was reported as 'does not exist'."""
    assert cli("keygen", "--name", "demo", "--dir", str(tmp_path / "keys")).exit_code == 0
    (tmp_path / "models").mkdir()
    res = cli(
        "securetrain",
        "decrypt-model",
        "--input-model",
        str(tmp_path / "models"),
        "--private-key",
        str(tmp_path / "keys" / "demo" / "private.key"),
        "--output-model",
        str(tmp_path / "out.npz"),
    )
    assert res.exit_code == 2
    one_line = " ".join(res.stderr.split())
    assert "is a directory" in one_line and "does not exist" not in one_line, res.stderr


@pytest.mark.parametrize("rate", ["-1", "0", "nan"])
def test_a_bad_learning_rate_is_refused_before_the_key_is_loaded(tmp_path, rate):
    """Issue 22: `train --learning-rate -1` was refused only after loading a 228 MB key."""
    res = cli(
        "securetrain",
        "train",
        "--encrypted-data",
        str(tmp_path / "data.enc"),
        "--public-key",
        str(tmp_path / "no-such-public.key"),  # loading it would fail: it must not be tried
        "--output-model",
        str(tmp_path / "out.enc"),
        "--learning-rate",
        rate,
    )
    assert res.exit_code == 2
    assert "--learning-rate must be a positive number" in res.stderr, res.stderr


def test_the_install_hint_fits_a_clone(tmp_path):
    """Issue 22: hints said `pip install "cifer-flwr[EXTRA]"` to people who installed from a
    clone with `pip install -e ".[...]"` (cifer-flwr is not on the package index)."""
    root = Path(extras.__file__).resolve().parents[1]
    assert extras.clone_root() == root  # the tests run from the clone
    assert (
        extras.install_command(["plot", "torch", "plot"]) == f'pip install -e "{root}[plot,torch]"'
    )
    res = cli("securetrain", "encrypt-model", "--help")  # any command: the hint is not printed
    assert res.exit_code == 0
