"""Start-up hook of every process of a Flower simulation started by cifer.

Its directory goes first on ``PYTHONPATH`` of a simulation SuperLink, so Python runs this
module (``sitecustomize``) at start-up in ``flwr-simulation`` and every Ray worker. It does
two things, both about TensorFlow, which Flower 1.41/1.42's simulation runtime imports at
module level (``flwr.simulation.ray_transport.utils``: ``import tensorflow as TF``) only
for its optional ``enable_tf_gpu_growth``:

* **TenSEAL before TensorFlow.** TenSEAL segfaults when TensorFlow was loaded first
  (``cifer_flwr.crypto`` refuses to load then). On the first import of ``tensorflow`` or
  ``keras`` the hook imports :mod:`cifer_flwr.crypto` just before it; processes that never
  import TensorFlow pay nothing.
* **TensorFlow deferred in Flower's simulation utilities.** ``flwr-simulation`` sends its
  first heartbeat only after its imports; the SuperLink gives a claimed task 30 s
  (``HEARTBEAT_DEFAULT_INTERVAL``, not configurable) before it takes the claim back, starts
  another ``flwr-simulation`` and answers the first one "Runtime task-token authentication
  failed". TensorFlow's import alone takes ~20 s of CPU here, so on a busy machine no
  ``flwr-simulation`` ever made it and the restarts piled up (issue 22). While
  ``flwr.simulation.ray_transport.utils`` loads, ``tensorflow`` is hidden; its ``TF`` is then
  a :class:`DeferredModule` that imports TensorFlow on first attribute access (only
  ``enable_tf_gpu_growth`` uses it). An app that uses TensorFlow imports it itself, later.

Standard library only at import time (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence
from importlib.abc import Loader
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any

_TRIGGERS = frozenset({"tensorflow", "keras"})
#: Flower's module that imports TensorFlow at module level for ``enable_tf_gpu_growth``.
FLOWER_TF_USER = "flwr.simulation.ray_transport.utils"


class DeferredModule:
    """Stands for a module that is imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        """Import the module (now) and return its attribute."""
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        """Name the module and say it is not imported yet."""
        return f"<deferred module {self._name!r}>"


class _WithoutTensorFlow(Loader):
    """Loads Flower's simulation utilities with ``tensorflow`` hidden, then defers it."""

    def __init__(self, inner: Loader) -> None:
        self._inner = inner

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hide = "tensorflow" not in sys.modules
        if hide:  # `import tensorflow` raises ModuleNotFoundError, which Flower catches
            sys.modules["tensorflow"] = None  # type: ignore[assignment]
        try:
            self._inner.exec_module(module)
        finally:
            if hide:
                del sys.modules["tensorflow"]
        # installed? (sys.path only: the meta-path finders would run the hook above)
        installed = hide and PathFinder.find_spec("tensorflow") is not None
        if installed and getattr(module, "TF", "absent") is None:
            setattr(module, "TF", DeferredModule("tensorflow"))  # noqa: B010 - not in the stub


class _Finder:
    """Meta-path finder: TenSEAL before TensorFlow; TensorFlow deferred in Flower's utils."""

    def __init__(self) -> None:
        self.crypto_done = bool(_TRIGGERS & set(sys.modules))
        self.flower_done = FLOWER_TF_USER in sys.modules

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """Never finds anything itself; adjusts the two imports above."""
        if fullname in _TRIGGERS and not self.crypto_done:
            self.crypto_done = True
            self._retire()
            if "tenseal" not in sys.modules:
                with contextlib.suppress(ImportError):  # no TenSEAL: nothing to protect
                    importlib.import_module("cifer_flwr.crypto")
        elif fullname == FLOWER_TF_USER and not self.flower_done:
            self.flower_done = True
            self._retire()
            spec = _find_after_self(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _WithoutTensorFlow(spec.loader)
            return spec
        return None

    def _retire(self) -> None:
        if self.crypto_done and self.flower_done:
            uninstall()


def _find_after_self(
    fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    for finder in sys.meta_path:
        if finder is _FINDER or not hasattr(finder, "find_spec"):
            continue
        spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


_FINDER = _Finder()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the finder from ``sys.meta_path``."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


if not (_FINDER.crypto_done and _FINDER.flower_done):
    install()
