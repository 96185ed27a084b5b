"""Architecture rules of docs/design.md §2-3, checked on the source tree.

:data:`ALLOWED` is the table of edges between the packages of ``cifer_flwr`` (and the
examples): an import of another package that the table does not list fails, wherever it
sits in a file (top level or inside a function). :data:`PRIVATE_IMPORTS` lists, with a
reason, the only private names (``_name``, or any name of a private module) imported from
another module's file (another package's for a private module).
"""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifer_flwr"
EXAMPLES = ROOT / "examples"
HAZMAT = {"tenseal", "phe"}

#: Helpers every layer may use: errors, constants, optional-package imports, Flower types.
BASE = frozenset({"constants", "exceptions", "extras", "flower_types"})
#: The library: what a Flower user imports (docs/design.md §3).
LIBRARY = frozenset(
    {
        "crypto",
        "protocol",
        "masking",
        "statistics",
        "scaling",
        "mods",
        "strategies",
        "securetrain",
        "apps",
    }
)

#: Package (a directory or a top-level module of cifer_flwr, or ``examples``) -> the packages
#: it may import besides itself. The order is the layering: crypto <- protocol / masking <-
#: statistics <- mods / strategies / securetrain <- scaling / apps (the library; apps: the
#: examples' helpers) <- homocryption (Cifer's API over crypto) <- experiments (the harness)
#: <- tooling (deployments, demo, bench, ``cifer run``'s launcher) <- fedlearn (Cifer's
#: FedLearn API: it starts SuperLink and SuperNodes and runs the harness's tasks, a Python
#: twin of ``cifer federation`` + ``cifer run``) and cli. The examples import the library
#: only. Nothing imports the examples.
ALLOWED: dict[str, frozenset[str]] = {
    "__init__": frozenset(),
    "constants": frozenset(),
    "exceptions": frozenset(),
    "flower_types": frozenset(),
    "extras": frozenset({"exceptions"}),
    "crypto": BASE,
    "protocol": BASE | {"crypto"},
    "masking": BASE | {"crypto"},
    "statistics": BASE | {"crypto", "protocol"},
    "mods": BASE | {"crypto", "protocol", "masking"},
    "strategies": BASE | {"crypto", "protocol", "masking"},
    "securetrain": BASE | {"crypto", "protocol"},
    # the statistics round on Flower (§4.10): the key holders load their key as ckks_mod does
    "scaling": BASE | {"crypto", "statistics", "mods"},
    # the examples' helpers (run config -> strategy, metered run and results file, datasets,
    # model files), which the harness builds on
    "apps": BASE | {"crypto", "mods", "strategies", "securetrain"},
    "homocryption": BASE | {"crypto"},
    "experiments": BASE | LIBRARY,
    "tooling": BASE | LIBRARY | {"experiments"},
    "fedlearn": BASE | LIBRARY | {"experiments", "tooling"},
    "cli": BASE | LIBRARY | {"homocryption", "experiments", "tooling"},
    # the examples: the library's public API only (apps holds their helpers)
    "examples": BASE | LIBRARY | {"__init__"},
    # the notebooks (examples/notebooks/*.ipynb, their code cells): the library, and cifer's
    # runner of Flower's simulation (a loopback-only network namespace, the run's outcome),
    # as `cifer` itself starts it; nothing of the harness
    "notebooks": BASE | LIBRARY | {"__init__", "tooling"},
}

#: (importing file, module, name) -> why a private name crosses a module boundary (none
#: today: give such a name a public name and a docstring instead).
PRIVATE_IMPORTS: dict[tuple[str, str, str], str] = {}


#: crypto's per-scheme modules: code above crypto uses the package's scheme interface
#: (``cifer_flwr.crypto``: ``SchemeKey``, ``load_key``, ``encrypt``, ...) instead, except
#: the files listed here with the reason.
SCHEME_MODULES = frozenset({"ckks", "paillier", "keys"})
SCHEME_IMPORTS: dict[str, str] = {
    "cifer_flwr/homocryption.py": (
        "Cifer's HomoCryption API exposes each scheme's own element-wise operations "
        "(CKKS vectors, Paillier plaintext products)"
    ),
    "cifer_flwr/securetrain/workflow.py": (
        "securetrain's training keys are CKKS by construction (encrypted linear algebra) and "
        "load through the CKKS loader"
    ),
    "cifer_flwr/cli/keys.py": (
        "`cifer keygen --scheme paillier` and `cifer keys info` show each scheme's own fields"
    ),
    "cifer_flwr/tooling/bench.py": "`cifer bench` measures each scheme's own primitives",
}


def package_of(path: Path, root: Path = ROOT) -> str:
    """The table's package of a source file under ``root`` (the repository)."""
    if path.is_relative_to(root / "examples"):
        return "notebooks" if path.suffix == ".ipynb" else "examples"
    first = path.relative_to(root / "cifer_flwr").parts[0]
    return first.removesuffix(".py")


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one module (IPython ``!`` / ``%`` lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = [
        line
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if not line.lstrip().startswith(("!", "%"))
    ]
    return "\n".join(lines) + "\n"


@functools.cache
def _tree(path: Path) -> ast.Module:
    text = notebook_code(path) if path.suffix == ".ipynb" else path.read_text()
    return ast.parse(text, filename=str(path))


def cifer_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every absolute import of cifer_flwr in ``path`` (name "" for
    ``import module``); relative imports are refused (none exist, keep it so)."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.split(".")[0] == "cifer_flwr":
                found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "cifer_flwr"]
    return found


def target_package(module: str, name: str) -> str:
    """The table's package an import reaches (``from cifer_flwr import crypto`` -> crypto)."""
    parts = module.split(".")
    if len(parts) > 1:
        return parts[1]
    return name or "__init__"


def sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted(EXAMPLES.rglob("*.py"))
    files += sorted(EXAMPLES.rglob("*.ipynb"))
    return [p for p in files if "build" not in p.parts]


def edge_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        source = package_of(path, root)
        if source not in ALLOWED:
            problems.append(f"{path}: package {source!r} is not in the table (add its row)")
            continue
        for module, name in cifer_imports(path):
            target = target_package(module, name)
            if target == source:
                continue
            if target not in ALLOWED[source]:
                problems.append(f"{path}: {source} -> {target} ({module})")
    return problems


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_import_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        rel = str(path.relative_to(root))
        source = package_of(path, root)
        for module, name in cifer_imports(path):
            private_module = next((i for i, p in enumerate(module.split(".")) if _private(p)), None)
            # a private module is private to the package that holds it
            owner = ".".join(module.split(".")[:private_module]) if private_module else ""
            own_package = (
                owner
                and path.is_relative_to(root / owner.replace(".", "/"))
                and target_package(module, name) == source
            )
            crossing = (private_module is not None and not own_package) or _private(name)
            if crossing and (rel, module, name) not in PRIVATE_IMPORTS:
                problems.append(f"{rel}: from {module} import {name}")
    return problems


def scheme_module_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        rel = str(path.relative_to(root))
        if path.is_relative_to(root / "cifer_flwr" / "crypto") or rel in SCHEME_IMPORTS:
            continue
        for module, name in cifer_imports(path):
            parts = module.split(".")
            inner = parts[2] if parts[:2] == ["cifer_flwr", "crypto"] and len(parts) > 2 else name
            if parts[:2] == ["cifer_flwr", "crypto"] and inner in SCHEME_MODULES:
                problems.append(f"{rel}: {module} import {name}")
    return problems


def test_every_package_edge_is_in_the_table():
    files = sources()
    assert len(files) > 100
    assert edge_problems(files) == []


def test_no_private_name_crosses_a_module_boundary_unless_listed():
    assert private_import_problems(sources()) == []


def test_only_crypto_names_a_scheme_module_unless_listed():
    assert scheme_module_problems(sources()) == []


def test_a_scheme_module_import_is_caught(tmp_path):
    path = tmp_path / "cifer_flwr" / "mods.py"
    path.parent.mkdir()
    path.write_text("from cifer_flwr.crypto import paillier\nfrom cifer_flwr import crypto\n")
    assert scheme_module_problems([path], tmp_path) == [
        "cifer_flwr/mods.py: cifer_flwr.crypto import paillier"
    ]


def test_the_listed_exceptions_are_still_needed():
    used = {(str(p.relative_to(ROOT)), m, n) for p in sources() for m, n in cifer_imports(p)}
    assert set(PRIVATE_IMPORTS) <= used, set(PRIVATE_IMPORTS) - used
    listed = [ROOT / rel for rel in SCHEME_IMPORTS]
    assert all(scheme_module_problems([p], ROOT) == [] for p in listed)  # skipped as listed
    for path in listed:
        names = {m.split(".")[2] if m.count(".") > 1 else n for m, n in cifer_imports(path)}
        assert names & SCHEME_MODULES, f"{path} no longer imports a scheme module"


@pytest.mark.parametrize(
    ("where", "source", "bad"),
    [
        ("fedlearn/x.py", "from cifer_flwr.cli import app\n", "fedlearn -> cli"),
        ("strategies/x.py", "def f():\n    import cifer_flwr.experiments.apps\n", "strategies"),
        ("crypto/x.py", "from cifer_flwr import protocol\n", "crypto -> protocol"),
        ("experiments/x.py", "from cifer_flwr.tooling import launch\n", "experiments -> tool"),
        ("apps/x.py", "from cifer_flwr.experiments.data import load_dataset\n", "apps -> exp"),
        ("newpkg/x.py", "import cifer_flwr.crypto\n", "not in the table"),
    ],
)
def test_a_forbidden_edge_is_caught(tmp_path, where, source, bad):
    path = tmp_path / "cifer_flwr" / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    problems = edge_problems([path], tmp_path)
    assert len(problems) == 1 and bad in problems[0], problems


@pytest.mark.parametrize(
    "source",
    [
        "from cifer_flwr.experiments.apps import make_strategy\n",
        "def main():\n    import cifer_flwr.experiments.data\n",
        "from cifer_flwr.tooling.federation.runs import run_app\n",
        "from cifer_flwr import experiments\n",
    ],
)
def test_an_example_importing_the_harness_is_caught(tmp_path, source):
    path = tmp_path / "examples" / "quickstart-x" / "xexample" / "server_app.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    problems = edge_problems([path], tmp_path)
    assert len(problems) == 1 and "examples -> " in problems[0], problems


def test_a_notebook_importing_the_harness_is_caught(tmp_path):
    cells = [
        {"cell_type": "markdown", "source": ["from cifer_flwr import experiments"]},
        {"cell_type": "code", "source": ["!pip list\n", "from cifer_flwr import crypto\n"]},
        {"cell_type": "code", "source": ["from cifer_flwr.experiments.tasks import get_task"]},
    ]
    path = tmp_path / "examples" / "notebooks" / "x.ipynb"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cells": cells}))
    problems = edge_problems([path], tmp_path)
    assert len(problems) == 1 and "notebooks -> experiments" in problems[0], problems


def test_the_notebooks_are_scanned():
    notebooks = [p for p in sources() if p.suffix == ".ipynb"]
    assert len(notebooks) >= 2
    reached = {target_package(m, n) for p in notebooks for m, n in cifer_imports(p)}
    assert {"crypto", "apps"} <= reached


def test_the_examples_import_the_library_and_its_app_helpers():
    files = sorted(EXAMPLES.rglob("*.py"))
    reached = {target_package(m, n) for p in files for m, n in cifer_imports(p)}
    assert "apps" in reached  # the helpers the examples need are the library's
    assert reached <= ALLOWED["examples"], reached - ALLOWED["examples"]


def test_a_private_import_is_caught(tmp_path):
    pkg = tmp_path / "cifer_flwr" / "securetrain"
    pkg.mkdir(parents=True)
    files = {
        "a.py": "from cifer_flwr.securetrain.model import _check\n",
        "b.py": "from cifer_flwr.strategies._base import Base\n",
        "c.py": "from cifer_flwr.securetrain._inner import ok\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert private_import_problems([pkg / n for n in files], tmp_path) == [
        "cifer_flwr/securetrain/a.py: from cifer_flwr.securetrain.model import _check",
        "cifer_flwr/securetrain/b.py: from cifer_flwr.strategies._base import Base",
    ]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_crypto_imports_tenseal_or_phe():
    files = list(PACKAGE.rglob("*.py")) + list(EXAMPLES.rglob("*.py"))
    assert len(files) > 5
    offenders = [
        str(p.relative_to(ROOT))
        for p in files
        if not p.is_relative_to(PACKAGE / "crypto") and imported_modules(p) & HAZMAT
    ]
    assert offenders == []


def test_no_pickle_anywhere_in_the_package():
    for p in PACKAGE.rglob("*.py"):
        mods = imported_modules(p)
        assert not mods & {"pickle", "cloudpickle", "dill", "joblib"}, p
        assert "allow_pickle=True" not in p.read_text(), p


def test_top_level_links_show_the_specified_layout():
    for name in ("conf", "strategies"):
        link = ROOT / name
        assert link.is_symlink(), name
        assert link.resolve().is_relative_to(PACKAGE), name
    assert (ROOT / "strategies" / "fedavg.py").is_file()
    assert (ROOT / "conf" / "config.yaml").is_file()
