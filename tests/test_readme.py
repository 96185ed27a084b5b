"""The README runs as written.

* its strategy snippet runs;
* every shell command it shows (fenced blocks and inline ``cifer ...`` spans) needs only the
  optional packages that the README's install line, the command's own ``pip install``, or its
  section's ``pip install`` bring (extras resolved through ``pyproject.toml``);
* a missing optional package is one line naming the extra, exit code 2, before anything
  starts: proved in subprocesses whose imports of that package fail (a meta-path finder);
* with every package *outside* the README's extras blocked, the cheap README commands work.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from cifer_flwr import crypto, extras, protocol
from tests.strategies.harness import InProcessGrid, node_configs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS_DEPS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]


def snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Use the strategies") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_use_the_strategies_snippet_runs(key_files, tmp_path, capsys):
    priv, pub = key_files
    ns: dict = {}
    exec(compile(snippet(), "README.md", "exec"), ns)
    grid = InProcessGrid(ns["client"], node_configs(priv, nodes=(1, 2)))
    save = tmp_path / "global.enc"
    context = Context(1, 0, {}, RecordDict(), {"public-key": str(pub), "save-path": str(save)})
    ns["main"](grid, context)
    assert "final model is encrypted: True" in capsys.readouterr().out
    key = crypto.load_private_key(priv)
    model, _ = protocol.materialize(crypto.bundle_from_bytes(save.read_bytes(), key), key)
    np.testing.assert_allclose(model["0"], np.full((3, 2), 0.2), atol=1e-6)


# ------------------------------------------------------------------ README commands

#: Distribution (as written in pyproject's extras) -> the optional modules it makes importable.
DIST_MODULES = {
    "torch": {"torch"},
    "tensorflow-cpu": {"tensorflow", "keras"},
    "h5py": {"h5py"},
    "scikit-learn": {"sklearn"},
    "phe": {"phe"},
    "gmpy2": {"gmpy2"},
    "flwr[simulation]": {"ray"},
    "matplotlib": {"matplotlib"},
    "pytest": {"pytest"},
    "pytest-timeout": {"pytest_timeout"},
    "hypothesis": {"hypothesis"},
    "ruff": {"ruff"},
    "mypy": {"mypy"},
    "cryptography": {"cryptography"},
    "nbclient": {"nbclient"},
    "nbformat": {"nbformat"},
    "ipykernel": {"ipykernel"},
}
OPTIONAL = set(extras.EXTRAS)
#: What `python -m pytest` imports beyond the core: the `test` extra's promise.
TEST_SUITE = {"torch", "tensorflow", "keras", "h5py", "sklearn", "phe", "matplotlib", "pytest"}
PROGRAMS = ("cifer", "flwr", "python", "python3.11", "pip")


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;]", requirement, maxsplit=1)[0]


def modules_of_extras(names: set[str]) -> set[str]:
    """Optional modules the extras install, following ``cifer-flwr[...]`` self-references."""
    found: set[str] = set()
    todo, seen = list(names), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in EXTRAS_DEPS[extra]:
            inner = re.fullmatch(r"cifer-flwr\[(.+)\]", req)
            if inner:
                todo += inner.group(1).split(",")
            else:
                found |= DIST_MODULES[dist_name(req)]
    return found


def pip_extras(argv: list[str]) -> set[str]:
    """Extras a ``pip install`` command installs from this project (``".[a,b]"``)."""
    out: set[str] = set()
    for arg in argv[2:]:
        m = re.fullmatch(r"(?:\.|cifer-flwr)\[([\w,-]+)\]", arg)
        if m:
            out |= set(m.group(1).split(","))
    return out


def split_chain(line: str, inline: bool) -> list[list[str]]:
    """``a && b`` -> [[a...], [b...]] without leading ``VAR=value`` assignments."""
    words = line.split() if inline else shlex.split(line, comments=True)
    chains, cur = [], []
    for w in [*words, "&&"]:
        if w in ("&&", ";", "||"):
            while cur and re.fullmatch(r"[A-Z_]+=\S*", cur[0]):
                cur.pop(0)
            if cur and cur[0] in PROGRAMS:
                chains.append(cur)
            cur = []
        else:
            cur.append(w)
    return chains


def readme_commands() -> list[tuple[str, list[str], set[str], bool]]:
    """(section, argv, extras available to it, inline?) for every shell command in the README.

    Inline spans in prose (``inline``) may only name a command; fenced blocks are run as is.
    """
    text = README.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    first_install = next(
        pip_extras(argv)
        for section in sections
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        for argv in split_chain(line, False)
        if argv[:2] == ["pip", "install"] and pip_extras(argv)
    )
    out = []
    for i, section in enumerate(sections):
        title = section.splitlines()[0].strip()
        lines: list[tuple[str, bool]] = []
        for lang, block in re.findall(r"```(\w*)\n(.*?)```", section, re.S):
            if lang not in ("", "bash"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if re.match(r"\s*([A-Z_]+=\S+\s+)*(cifer|flwr|python|pip)\b", line):
                    lines.append((line, False))
        prose = re.sub(r"```.*?```", "", section, flags=re.S)
        prose = re.sub(r"^\|.*$", "", prose, flags=re.M)  # tables name commands shown elsewhere
        for span in re.findall(r"`([^`]+)`", prose):
            span = " ".join(span.split())
            if re.match(r"(cifer [a-z]|flwr (run|log) |python )", span):
                lines.append((span, True))
        chains = [(argv, inline) for line, inline in lines for argv in split_chain(line, inline)]
        # the top section's install lines cover only their own command chain
        section_extras = (
            set()
            if i == 0
            else {
                e for argv, _ in chains if argv[:2] == ["pip", "install"] for e in pip_extras(argv)
            }
        )
        for line, inline in lines:
            chain = split_chain(line, inline)
            line_extras = {e for a in chain if a[:2] == ["pip", "install"] for e in pip_extras(a)}
            for argv in chain:
                if argv[0] != "pip":
                    out.append((title, argv, first_install | section_extras | line_extras, inline))
    return out


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def app_modules(app: str) -> set[str]:
    """What a Flower app's own pyproject says it needs (``cifer-flwr[torch,sklearn]``)."""
    deps = tomllib.loads((ROOT / app / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {
        e for d in deps for e in (re.findall(r"cifer-flwr\[([\w,]+)\]", d) or [""])[0].split(",")
    }
    return modules_of_extras(names - {""})


def conf_default(group: str) -> str:
    conf = ROOT / "cifer_flwr" / "experiments" / "conf" / "config.yaml"
    return re.search(rf"^\s*- {group}: (\S+)", conf.read_text(), re.M).group(1)


#: task config -> what its ClientApps import (the framework; bundled datasets need sklearn).
TASK_MODULES = {
    "digits-torch": {"torch", "sklearn"},
    "digits-tensorflow": {"tensorflow", "keras", "sklearn"},
    "digits-sklearn": {"sklearn"},
    "breast-cancer-sklearn": {"sklearn"},
}
#: securetrain model formats -> what reading / writing them imports.
MODEL_FORMATS = {".h5": {"h5py", "keras"}, ".pt": {"torch"}, ".npz": set()}


def needs(argv: list[str]) -> set[str]:
    """The optional modules a README command imports (its documented outputs included)."""
    prog = argv[0]
    if prog.startswith("python"):
        if argv[1:3] == ["-m", "venv"]:
            return set()
        if argv[1:3] == ["-m", "pytest"]:
            return TEST_SUITE
        # python -m MODULE: a module of this repository, read as its file
        module_file = argv[2].replace(".", "/") + ".py" if argv[1] == "-m" else ""
        script = ROOT / (module_file or argv[1])
        tree = ast.parse(script.read_text())
        mods = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        mods |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
        }
        return mods & OPTIONAL
    if prog == "flwr":
        if argv[1] == "log" or argv[2].startswith("-"):  # following a run; flags in prose
            return set()
        assert argv[1] == "run", argv
        return app_modules(argv[2])
    assert prog == "cifer", argv
    sub = argv[1]
    if sub in ("keygen", "keys", "federation", "runs", "bench", "flower-local"):
        return set()
    if sub == "demo":  # runs examples/quickstart-pytorch
        return app_modules("examples/quickstart-pytorch")
    if sub == "report":
        return {"matplotlib"}
    if sub == "run":
        task = next((a.split("=", 1)[1] for a in argv if a.startswith("task=")), None)
        fed = next((a.split("=", 1)[1] for a in argv if a.startswith("federation=")), "local")
        mods = set().union(*(TASK_MODULES[t] for t in (task or conf_default("task")).split(",")))
        return mods | ({"ray"} if "simulation" in fed else set())  # metrics.png: optional
    if sub == "securetrain":
        files = [a for a in argv if re.search(r"\.(h5|pt|npz)$", a)]
        return set().union(*(MODEL_FORMATS[Path(f).suffix] for f in files)) if files else set()
    raise AssertionError(f"README command not mapped to its imports: {' '.join(argv)}")


COMMANDS = readme_commands()


def test_readme_commands_are_found():
    subs = {argv[1] for _, argv, _, _ in COMMANDS if argv[0] == "cifer"}
    assert {"demo", "run", "report", "keygen", "keys", "federation", "securetrain"} <= subs
    assert {"runs"} <= subs
    assert any(argv[:2] == ["flwr", "log"] for _, argv, _, _ in COMMANDS)  # following a run
    assert len(COMMANDS) > 20


def test_extras_table_matches_pyproject():
    """cifer_flwr.extras names, for each optional module, an extra that really installs it."""
    for module, extra in extras.EXTRAS.items():
        assert module in modules_of_extras({extra}), (module, extra)
    listed = {dist_name(r) for deps in EXTRAS_DEPS.values() for r in deps}
    assert {d for d in listed if not d.startswith("cifer-flwr")} <= set(
        DIST_MODULES
    )  # a new dependency needs a mapping


@pytest.mark.parametrize(
    ("section", "argv", "available", "inline"),
    COMMANDS,
    ids=[f"{s[:12]}:{' '.join(a[:3])}" for s, a, _, _ in COMMANDS],
)
def test_readme_install_covers_the_command(section, argv, available, inline):
    missing = needs(argv) - modules_of_extras(available)
    assert not missing, (
        f"README section {section!r}: `{' '.join(argv)}` imports {sorted(missing)}, which "
        f"the extras {sorted(available)} do not install; name the extra in that section"
    )


# ------------------------------------------------------------------ blocked imports

BLOCK = textwrap.dedent(
    """
    import os, sys
    BLOCKED = set(filter(None, os.environ.get("CIFER_TEST_BLOCK", "").split(",")))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    """
)
BLOCKER = BLOCK + 'sys.argv = ["cifer", *sys.argv[1:]]\nfrom cifer_flwr.cli import main\nmain()\n'


def cifer_blocked(args: list[str], blocked: set[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CIFER_TEST_BLOCK": ",".join(sorted(blocked)),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def metrics_dir(root: Path) -> Path:
    run = root / "0"
    run.mkdir(parents=True)
    rows = [{"round": r, "accuracy": 0.5 + r / 10, "loss": 1.0 / r} for r in (1, 2)]
    (run / "metrics.json").write_text(json.dumps({"strategy": "fedavg", "rounds": rows}))
    return root


def assert_one_line(res: subprocess.CompletedProcess, extra: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert extras.install_command([extra]) in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "blocked", "extra"),
    [
        (["report", "multirun"], {"matplotlib"}, "plot"),
        (["demo", "--dir", "demo"], {"torch"}, "torch"),
        (["demo", "--dir", "demo"], {"sklearn"}, "sklearn"),
        (["run", "task=digits-tensorflow", "num_rounds=1"], {"tensorflow", "keras"}, "tensorflow"),
        (["run", "federation=simulation", "num_rounds=1"], {"ray"}, "simulation"),
    ],
    ids=["report-plot", "demo-torch", "demo-sklearn", "run-tensorflow", "run-simulation"],
)
def test_missing_extra_is_one_line_before_anything_starts(tmp_path, args, blocked, extra):
    metrics_dir(tmp_path / "multirun")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cifer_blocked(args, blocked, tmp_path)
    assert_one_line(res, extra)
    # nothing was started or written: no keys, no federation, no outputs, no report
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "multirun" / "report.md").exists()


def test_run_without_matplotlib_writes_results_and_notes_the_plot(tmp_path):
    """`cifer run`'s results do not depend on the plot extra: a one-line note instead."""
    code = BLOCK + textwrap.dedent(
        """
        from cifer_flwr.experiments.report import plot_or_note
        notes = []
        rows = [{"round": 1, "accuracy": 0.5, "loss": 1.0}]
        out = plot_or_note({"r": {"rounds": rows}}, "metrics.png", notes.append)
        assert out is None, out
        print(notes[0])
        """
    )
    env = {**os.environ, "CIFER_TEST_BLOCK": "matplotlib", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("skipped metrics.png: matplotlib is not installed")
    assert extras.install_command(["plot"]) in res.stdout
    assert not (tmp_path / "metrics.png").exists()


@pytest.mark.slow  # several seconds: outside the quick loop, in the full suite
def test_cheap_readme_commands_work_with_only_the_readme_extras(tmp_path):
    """keygen, keys inspect, report, federation down: run with every other extra blocked."""
    cheap = [
        (argv, available)
        for _, argv, available, inline in COMMANDS
        if argv[0] == "cifer"
        and not inline
        and (argv[1] in ("keygen", "keys", "report") or argv[1:3] == ["federation", "down"])
    ]
    assert {a[1] for a, _ in cheap} >= {"keygen", "keys", "report", "federation"}
    metrics_dir(tmp_path / "multirun" / "DATE" / "TIME")
    for argv, available in cheap:
        blocked = OPTIONAL - modules_of_extras(available)
        assert "tensorflow" in blocked  # the README's extras do not install everything
        res = cifer_blocked(argv[1:], blocked, tmp_path)
        assert res.returncode == 0, (argv, res.stderr)
        assert "Traceback" not in res.stderr
    assert (tmp_path / "multirun" / "DATE" / "TIME" / "report.png").stat().st_size > 1000


def test_readme_commands_write_no_files_into_the_repository_root():
    """Issue 22: results.json, results.ckpt and model.enc landed next to README.md."""
    docs = [README, *sorted((ROOT / "examples").glob("*/README.md"))]
    found = []
    pattern = r'(results-path|save-path)=\\"\$PWD/([^"\\]+)'
    for doc in docs:
        for key, value in re.findall(pattern, doc.read_text()):
            found.append((doc.name, key, value))
            # under the federation's directory (ignored by git), never the clone's root
            assert value.startswith((".cifer/federation/", ".cifer/simulation/")), (doc, key, value)
    assert len(found) >= 6, found


def test_the_transport_is_described_as_flower_runs_it():
    """Issue 22: Flower 1.41/1.42 serve the Fleet API over HTTP ('Starting the SuperLink Fleet
    HTTP API'); the README and the Cifer-config messages said gRPC."""
    from cifer_flwr.exceptions import ConfigError
    from cifer_flwr.fedlearn.config import ClientConfig

    assert "gRPC" not in README.read_text()
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_mapping({"ip_address": "wss://localhost", "port": 8765}, what="Client")
    assert "gRPC" not in str(info.value) and "Fleet API over HTTP" in str(info.value)


def test_coming_from_cifer_names_the_right_package_and_fixes_the_seed_samples():
    """Issue 22: the seed's `pip install cifer` is another package; three samples are broken."""
    text = README.read_text()
    section = text[text.index("## Coming from Cifer") :]
    section = section[: section.index("\n## ", 5)]
    assert "`pip install cifer` installs an unrelated package" in " ".join(section.split())
    for broken in ("Method A", "relinearize()", "prj1_alice_public.key"):
        assert broken in section, broken
    assert "different JSON formats" in section
    # the key files the tool writes are the ones every securetrain command uses
    commands = [line for line in text.splitlines() if line.startswith("cifer securetrain")]
    assert commands and not [c for c in commands if re.search(r"keys/\w+_(public|private)", c)]
    assert "keys/alice/public.key" in text
