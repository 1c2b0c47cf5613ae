"""Plugin registries: collectors and outputs by name, imported on first use.

``ingress.collect.COLLECTORS`` and ``ingress.outputs.OUTPUTS`` are
:class:`Registry` instances; each plugin is one registration line there::

    COLLECTORS.register("disk", "ingress.collect.disk:DiskCollector")

The registry is the only list of names: configuration checks names against it,
the generated docs walk it, the agent builds from it. A plugin module is
imported the first time its name is looked up, so declaring an output (the
Kafka one, say) costs nothing until a configuration uses it, and the Kafka
client library is imported later still, when the output starts.

Plugins outside the package: ``INGRESS_PLUGINS`` names modules (dotted import
paths, comma separated) imported before the first lookup; each registers
itself with one line, as the built-in plugins do. Only module names are
accepted, and they are imported from ``sys.path`` like any other Python code:
whoever sets the variable could as well set ``PYTHONPATH``. See
docs/contributing-plugins.md.
"""
from __future__ import annotations

import importlib
import os
import re
from typing import Any, Generic, Iterator, Mapping, TypeVar

from ingress.errors import ConfigError

__all__ = ["Registry", "load_external", "PLUGINS_ENV"]

PLUGINS_ENV = "INGRESS_PLUGINS"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded_env: str | None = None

T = TypeVar("T")


def load_external() -> None:
    """Import the modules ``INGRESS_PLUGINS`` names (once per distinct value).

    Raises
    ------
    ConfigError
        A name is not a module path, or its module cannot be imported; one line
        naming it.
    """
    global _loaded_env
    value = os.environ.get(PLUGINS_ENV, "")
    if value == _loaded_env:
        return
    _loaded_env = value  # set first: a plugin module may look the registries up while importing
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        if not _MODULE.fullmatch(name):
            raise ConfigError(f"{PLUGINS_ENV}: {name!r} is not a module name (dotted Python identifiers)")
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure of foreign code is one line
            raise ConfigError(f"{PLUGINS_ENV}: cannot import plugin module {name!r}: "
                              f"{type(e).__name__}: {e}") from None


class Registry(Mapping[str, T], Generic[T]):
    """Plugins of one kind by name, in registration order, imported on first lookup."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._where: dict[str, Any] = {}  # name -> "module:attribute" or the object
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str | T) -> None:
        """Add plugin ``name``: ``"module:attribute"`` (imported on first use) or the object.

        Raises
        ------
        ValueError
            ``name`` is taken, or is not lower-case letters, digits and ``_``.
        """
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"{self.kind} name {name!r}: use lower-case letters, digits and '_'")
        if name in self._where:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._where[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a plugin for a while)."""
        self._where.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered name, without importing any plugin."""
        load_external()
        return tuple(self._where)

    def __getitem__(self, name: str) -> T:
        got = self._loaded.get(name)
        if got is not None:
            return got
        load_external()
        target = self._where[name]  # KeyError for an unknown name
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        self._loaded[name] = target
        return target

    def __contains__(self, name: object) -> bool:
        load_external()
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
