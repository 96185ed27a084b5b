"""Architecture rules of docs/design.md §2-3, checked on the source tree."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifer_flwr"
HAZMAT = {"tenseal", "phe"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_crypto_imports_tenseal_or_phe():
    files = list(PACKAGE.rglob("*.py"))
    assert len(files) > 5
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in files
        if "crypto" not in p.relative_to(PACKAGE).parts and imported_modules(p) & HAZMAT
    ]
    assert offenders == []


def test_no_pickle_anywhere_in_the_package():
    for p in PACKAGE.rglob("*.py"):
        mods = imported_modules(p)
        assert not mods & {"pickle", "cloudpickle", "dill", "joblib"}, p
        assert "allow_pickle=True" not in p.read_text(), p


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


LIBRARY = ["crypto", "strategies", "securetrain", "protocol.py", "mods.py", "exceptions.py"]
UPPER = ("cifer_flwr.experiments", "cifer_flwr.tooling", "cifer_flwr.cli")


def test_library_imports_neither_harness_nor_tooling():
    files = [p for name in LIBRARY for p in (PACKAGE / name).rglob("*.py")]
    files += [PACKAGE / name for name in LIBRARY if name.endswith(".py")]
    assert len(files) > 20
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imported_names(p) if n.startswith(UPPER))
        for p in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_harness_does_not_import_the_cli():
    for p in (PACKAGE / "experiments").rglob("*.py"):
        assert not [n for n in imported_names(p) if n.startswith("cifer_flwr.cli")], p


def test_top_level_links_show_the_specified_layout():
    root = PACKAGE.parent
    for name in ("conf", "strategies"):
        link = root / name
        assert link.is_symlink(), name
        assert link.resolve().is_relative_to(PACKAGE), name
    assert (root / "strategies" / "fedavg.py").is_file()
    assert (root / "conf" / "config.yaml").is_file()
