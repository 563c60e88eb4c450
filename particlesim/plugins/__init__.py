"""particlesim's plugin system: pluggy hookspecs, the manager that loads plugins, registries.

Plugin authors need only :data:`hookimpl` (also exported as ``particlesim.hookimpl``)
and the hook names documented in :mod:`particlesim.plugins.hookspecs`. The engine
uses :func:`load_plugins` and the :class:`PluginManager` it returns.
"""

from particlesim.plugins.hookspecs import hookimpl, hookspec
from particlesim.plugins.manager import (
    REGISTRY_KINDS,
    PluginFailure,
    PluginInfo,
    PluginManager,
    PluginWarning,
    describe,
    load_plugins,
)
from particlesim.plugins.registry import Entry, Registry

__all__ = [
    "REGISTRY_KINDS",
    "Entry",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "PluginWarning",
    "Registry",
    "describe",
    "hookimpl",
    "hookspec",
    "load_plugins",
]
