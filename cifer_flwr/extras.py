"""Optional packages: one import path that names the pip extra when one is missing.

cifer-flwr's core needs only Flower, TenSEAL, numpy, Hydra, typer and rich. Everything else
is an *extra* (``pyproject.toml``, ``[project.optional-dependencies]``). Every optional import
in the package goes through :func:`require` (or :func:`check` before a long operation
starts), so a missing package is one line that says which extra to install, never a
traceback::

    plt = require("matplotlib.pyplot", purpose="`cifer report` draws report.png")

raises :class:`~cifer_flwr.exceptions.MissingExtraError` ``matplotlib is not installed
(`cifer report` draws report.png); install the plot extra: pip install "cifer-flwr[plot]"``.
The command is the one that works for this installation: from a clone (an editable
install, ``pip install -e``) it is ``pip install -e "/path/to/clone[plot]"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from cifer_flwr.exceptions import MissingExtraError

__all__ = ["EXTRAS", "available", "check", "extra_for", "install_command", "require"]

#: Top-level module -> the extra of ``pyproject.toml`` that installs it.
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "h5py": "tensorflow",
    "sklearn": "sklearn",
    "matplotlib": "plot",
    "ray": "simulation",
    "phe": "paillier",
}


def extra_for(module: str) -> str:
    """The extra that installs ``module`` (``"matplotlib.pyplot"`` -> ``"plot"``).

    Raises
    ------
    KeyError
        When ``module`` is not an optional dependency of cifer-flwr (a programming error).

    """
    return EXTRAS[module.split(".")[0]]


@lru_cache(maxsize=1)
def clone_root() -> Path | None:
    """The source checkout cifer_flwr runs from (an editable install), else ``None``.

    A clone has the package next to a ``pyproject.toml`` naming ``cifer-flwr``; an installed
    wheel sits in ``site-packages`` without one.
    """
    root = Path(__file__).resolve().parents[1]
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "cifer-flwr"' in text else None


def install_command(extras: Iterable[str]) -> str:
    """The ``pip install`` command that adds the given extras to *this* installation.

    ``pip install -e "/path/to/clone[a,b]"`` when cifer_flwr runs from a clone (how the
    README installs it: ``pip install -e ".[...]"``), else ``pip install "cifer-flwr[a,b]"``;
    extras sorted, without repeats.
    """
    names = ",".join(sorted(set(extras)))
    root = clone_root()
    if root is not None:
        return f'pip install -e "{root}[{names}]"'
    return f'pip install "cifer-flwr[{names}]"'


def available(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (cheap: no TensorFlow start-up)."""
    top = module.split(".")[0]
    if sys.modules.get(top) is not None:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _purpose(purpose: str) -> str:
    return f" ({purpose})" if purpose else ""


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import the optional ``module``, or fail with the extra to install.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"matplotlib.pyplot"``, ``"h5py"``, ``"sklearn.datasets"``.
    purpose : str
        What needs it, for the message (``"`cifer report` draws report.png"``).

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingExtraError
        When the module is missing or cannot be imported; one line naming the extra.

    """
    extra = extra_for(module)
    try:
        return importlib.import_module(module)
    except MissingExtraError:
        raise
    except ImportError as exc:
        top = module.split(".")[0]
        fix = f"install the {extra} extra: {install_command([extra])}"
        if getattr(exc, "name", None) in (top, module) or not available(top):
            message = f"{top} is not installed{_purpose(purpose)}; {fix}"
        else:  # installed, but one of its own imports fails
            message = f"{top} is installed but cannot be imported ({exc}){_purpose(purpose)}; {fix}"
        raise MissingExtraError(message) from None


def check(modules: Iterable[str], *, purpose: str = "") -> None:
    """Fail before a long operation starts when one of ``modules`` is missing.

    Nothing is imported (:func:`available`), so this is cheap enough to run before every
    command that needs optional packages later, in this process or in a Flower app.

    Raises
    ------
    MissingExtraError
        Naming every missing module and one ``pip install`` command for all their extras.

    """
    missing = sorted({m.split(".")[0] for m in modules if not available(m)})
    if missing:
        extras = [extra_for(m) for m in missing]
        what = ", ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(
            f"{what} {verb} not installed{_purpose(purpose)}; install: {install_command(extras)}"
        )
