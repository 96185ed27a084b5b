"""cifer_flwr and the examples use Flower's public API only, so a new Flower does not break them.

Public means a name in the ``__all__`` of Flower's public namespaces (the ones Flower's API
reference documents for the Message API). Every other Flower import must be in
:data:`ALLOWED`, with the reason it cannot be avoided; the allow-listed names must still
exist in the installed Flower (so an upgrade that moves one fails here, not in a run).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "cifer_flwr", ROOT / "examples"]

#: Flower's public namespaces; a name imported from them must be in their ``__all__``.
PUBLIC = (
    "flwr.app",
    "flwr.clientapp",
    "flwr.clientapp.mod",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.simulation",
)

#: (module, name) -> why it cannot be avoided. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {
    ("flwr.common.constant", "ErrorCode"): (
        "mods.py replies with Flower's MOD_FAILED_PRECONDITION code, as Flower's own mods "
        "do; Flower exports no public error codes"
    ),
    ("flwr.supercore.run", "Run"): (
        "strategies._pull.DelegatingGrid (the base of StreamingGrid and apps.MeteredGrid) "
        "wraps Flower's Grid, whose public abstract set_run/run are typed with this class; "
        "imported under TYPE_CHECKING only"
    ),
    ("flwr.common.serde", "message_to_proto"): (
        "cifer bench round plays the SuperLink between processes: Flower's own protobuf "
        "serialization is the only faithful wire size (benchmark tooling, not the library)"
    ),
    ("flwr.common.serde", "message_from_proto"): "as message_to_proto (cifer bench round)",
    ("flwr.proto.message_pb2", "Message"): "as message_to_proto (cifer bench round)",
    ("flwr.supercore.task_identity", "TaskIdentity"): (
        "cifer bench round makes Flower Messages outside a Flower process, which needs the "
        "task identity Flower otherwise sets (benchmark tooling)"
    ),
}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def flower_imports(sources: list[Path] = SOURCES) -> list[tuple[str, str, str]]:
    """(file, module, name) of every ``from flwr... import name`` / ``import flwr...``."""
    found = []
    for base in sources:
        for path in sorted(base.rglob("*.py")):
            if "build" in path.parts:
                continue
            tree = _tree(path)
            rel = str(path.relative_to(base.parent))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    if node.module == "flwr" or node.module.startswith("flwr."):
                        found += [(rel, node.module, a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    found += [
                        (rel, a.name, "")
                        for a in node.names
                        if a.name == "flwr" or a.name.startswith("flwr.")
                    ]
    return found


def _public(module: str, name: str) -> bool:
    if module == "flwr" and name in {m.split(".")[1] for m in PUBLIC}:
        return True
    if module not in PUBLIC:
        return not name and module in PUBLIC
    exported = getattr(importlib.import_module(module), "__all__", ())
    return name in exported and not name.startswith("_")


def test_the_package_imports_only_public_or_allow_listed_flower_names():
    imports = flower_imports()
    assert len(imports) > 20  # the scan sees the package and the examples
    private = sorted(
        f"{rel}: from {module} import {name}"
        for rel, module, name in imports
        if not _public(module, name) and (module, name) not in ALLOWED
    )
    assert not private, (
        "Flower names outside its public API (use flwr.app / flwr.clientapp / flwr.serverapp "
        "/ flwr.serverapp.strategy, or allow-list with a reason):\n" + "\n".join(private)
    )


def test_the_allow_list_is_used_and_exists_in_this_flower():
    used = {(m, n) for _, m, n in flower_imports()}
    assert set(ALLOWED) <= used, f"allow-listed but no longer imported: {set(ALLOWED) - used}"
    for module, name in ALLOWED:
        assert hasattr(importlib.import_module(module), name), (module, name)


@pytest.mark.parametrize(
    "source",
    ["from flwr.supercore import log", "from flwr.app.error import Error", "import flwr.common"],
)
def test_a_private_flower_import_is_caught(tmp_path, source):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(source + "\nfrom flwr.app import Message\n")
    found = flower_imports([tmp_path / "pkg"])
    bad = [(m, n) for _, m, n in found if not _public(m, n)]
    assert len(found) == 2 and len(bad) == 1 and bad[0] not in ALLOWED


#: Private attribute of a Flower class -> why our code still touches it (none today; an
#: entry that is no longer used fails, like ALLOWED).
ALLOWED_ATTRIBUTES: dict[str, str] = {}


def _flower_classes() -> list[type]:
    """Flower classes in the MRO of every class of ours that subclasses one (strategies, Grid)."""
    import flwr.serverapp.strategy as flower_strategies
    from flwr.serverapp import Grid

    roots = [getattr(flower_strategies, n) for n in flower_strategies.__all__]
    return [
        k
        for root in [*roots, Grid]
        if isinstance(root, type)
        for k in root.__mro__
        if k.__module__.startswith("flwr.")
    ]


@functools.cache
def flower_private_attributes() -> frozenset[str]:
    """Single-underscore names Flower's strategy / Grid classes define or set on ``self``."""
    names: set[str] = set()
    for cls in _flower_classes():
        names |= {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        names |= {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        }
    return frozenset(names - {"_abc_impl"})


def private_attribute_uses(names: frozenset[str], sources: list[Path] = SOURCES) -> list[str]:
    """Where our code reads, calls, declares or overrides one of ``names``."""
    found = []
    for base in sources:
        for path in sorted(base.rglob("*.py")):
            rel = str(path.relative_to(base.parent))
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.Attribute) and node.attr in names:
                    hit = node.attr
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    hit = node.name if node.name in names else ""
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    hit = node.target.id if node.target.id in names else ""
                else:
                    continue
                if hit:
                    found.append(f"{rel}:{node.lineno}: {hit}")
    return found


def test_no_private_attribute_of_a_flower_class_is_used_or_overridden():
    names = flower_private_attributes()
    assert "_construct_messages" in names  # the scan sees FedAvg's private helpers
    assert set(ALLOWED_ATTRIBUTES) <= names, set(ALLOWED_ATTRIBUTES) - names
    all_uses = private_attribute_uses(names)
    unused = set(ALLOWED_ATTRIBUTES) - {u.split(": ")[1] for u in all_uses}
    assert not unused, f"allowed private attributes no longer used, delete them: {unused}"
    uses = [u for u in all_uses if u.split(": ")[1] not in ALLOWED_ATTRIBUTES]
    assert not uses, (
        "private attributes of Flower's classes (they change without notice between Flower "
        "releases; use the public hooks or our own collaborators):\n" + "\n".join(uses)
    )


def test_a_private_flower_attribute_use_is_caught(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "class S:\n"
        "    def _construct_messages(self):\n"
        "        return self._check_and_log_replies([], is_train=True)\n"
        "    def _ours(self):\n"
        "        return self._own\n"
    )
    uses = private_attribute_uses(flower_private_attributes(), [tmp_path / "pkg"])
    assert uses == ["pkg/bad.py:2: _construct_messages", "pkg/bad.py:3: _check_and_log_replies"]
