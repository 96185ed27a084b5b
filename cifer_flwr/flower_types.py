"""Types of Flower's ClientApp mods, spelled with Flower's public API only.

Flower declares ``ClientAppCallable`` and ``Mod`` in ``flwr.clientapp.typing``, a module
outside the public ``flwr.clientapp`` namespace (its ``__all__`` is ``ClientApp`` and
``mod``). They are plain ``Callable`` aliases over the public ``Message`` and ``Context``,
so cifer_flwr spells them here instead of importing Flower internals
(``tests/test_flower_api.py`` checks every Flower name the package imports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from flwr.app import Context, Message

__all__ = ["ClientAppCallable", "Mod"]

#: The next step of a ClientApp's mod chain (``call_next(msg, context) -> reply``).
ClientAppCallable: TypeAlias = Callable[[Message, Context], Message]
#: A ClientApp mod: ``mod(msg, context, call_next) -> reply``.
Mod: TypeAlias = Callable[[Message, Context, ClientAppCallable], Message]
