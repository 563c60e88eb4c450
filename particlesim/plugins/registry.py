"""Named registries that the ``particlesim_register_*`` hooks fill.

Each registry maps a snake_case name to a *factory* (usually a class) and
remembers which plugin supplied it, so that a duplicate name is an error that
names both plugins, and an unknown name lists what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from particlesim.errors import RegistryError, close_matches


@dataclass(frozen=True)
class Entry:
    """One registered name: the factory and the plugin that provided it."""

    name: str
    factory: Callable[..., Any]
    plugin: str


class Registry:
    """A mapping ``name -> factory`` for one kind of extension (``kind``: "kernel", …)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, factory: Callable[..., Any], plugin: str) -> None:
        """Register ``factory`` under ``name``; a name already taken is a :class:`RegistryError`."""
        if not isinstance(name, str) or not name:
            raise RegistryError(
                f"plugin {plugin!r} registered a {self.kind} without a name: {factory!r}"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise RegistryError(
                f"duplicate {self.kind} name {name!r}: registered by plugin {other!r} "
                f"and by plugin {plugin!r}; rename one, or disable one with -p no:{plugin}"
            )
        self._entries[name] = Entry(name, factory, plugin)

    def entry(self, name: str, *, where: str = "") -> Entry:
        """The entry for ``name``; unknown names raise with close matches and the full list."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            prefix = f"{where}: " if where else ""
            raise RegistryError(
                f"{prefix}unknown {self.kind} {name!r}"
                f"{close_matches(str(name), self._entries)}; known: {known}"
            ) from None

    def get(self, name: str, *, where: str = "") -> Callable[..., Any]:
        """The factory registered as ``name`` (see :meth:`entry` for errors)."""
        return self.entry(name, where=where).factory

    def create(self, name: str, /, *args: Any, where: str = "", **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name, where=where)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
