"""Load TenSEAL before TensorFlow in every process of a Flower simulation.

Flower 1.41's simulation runtime imports TensorFlow, when it is installed, before it loads
the app (``flwr.simulation.ray_transport.utils``: ``flwr-simulation`` and every Ray worker),
and TenSEAL segfaults when TensorFlow was loaded first (``cifer_flwr.crypto`` refuses to
load then). This start-up hook (on ``PYTHONPATH`` as ``sitecustomize``) waits for the first
import of ``tensorflow`` or ``keras`` and imports :mod:`cifer_flwr.crypto` just before it;
processes that never import TensorFlow pay nothing (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_TRIGGERS = frozenset({"tensorflow", "keras"})


class CryptoBeforeTensorFlow:
    """Meta-path finder that imports ``cifer_flwr.crypto`` before TensorFlow, once."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        """Never finds anything itself; on the first TensorFlow import, loads TenSEAL first."""
        if fullname in _TRIGGERS:
            uninstall()
            if "tenseal" not in sys.modules:
                with contextlib.suppress(ImportError):  # no TenSEAL: nothing to protect
                    importlib.import_module("cifer_flwr.crypto")
        return None


_FINDER = CryptoBeforeTensorFlow()


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the finder from ``sys.meta_path``."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


if not {"tensorflow", "keras"} & set(sys.modules):
    install()
