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
