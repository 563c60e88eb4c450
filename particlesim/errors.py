"""Exception hierarchy: every error a user can cause is a :class:`ParticlesimError`.

The CLI prints ``str(error)`` as one line and exits non-zero; nothing below it
should need a traceback to be understood. Messages name *where* (scenario key
path, file, plugin), *what* was wrong and *what was expected*.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ParticlesimError(Exception):
    """Base class of every error particlesim raises on purpose."""


class ScenarioError(ParticlesimError):
    """A scenario file (or ``--set`` override) is invalid.

    ``path`` is the dotted key path (``"integrator.lr"``, ``"groups[1].size"``)
    and ``source`` the file, when known.
    """

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path = printable(path)
        self.source = source
        self.detail = message = printable(message)
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class PluginError(ParticlesimError):
    """A plugin could not be loaded, or registered something inconsistent."""


class RegistryError(ParticlesimError):
    """An unknown or duplicate name in one of the registries."""


class DataError(ParticlesimError):
    """A data set could not be found, read or verified."""


class DeviceError(ParticlesimError):
    """The requested device (``cuda``) is not available."""


class DivergenceError(ParticlesimError):
    """NaN or Inf appeared in the loss, a gradient or a particle field."""


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so an error stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'x', 'y'?)"`` for near spellings, else ``""``."""
    found = difflib.get_close_matches(word, sorted(choices), n=n, cutoff=0.6)
    if not found:
        return ""
    return " (did you mean " + ", ".join(repr(f) for f in found) + "?)"


class OptionError(ParticlesimError, ValueError):
    """An option of a component (kernel, model, dataset, …) is out of range.

    Components raise it from their constructor with the option's own key
    (``"sizes[1]"``); the scenario builder prefixes the section's key path, so
    the user reads ``model.sizes[1]: must be a positive integer, got 0``.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}")


class TrajectoryError(ParticlesimError):
    """A trajectory file could not be written or read (not HDF5/H5MD, truncated, unknown group).

    Messages start with the file's path, so the CLI's one line says which file.
    """


class AnalysisError(ParticlesimError):
    """An analysis request that the trajectory cannot answer (unknown group, metric, option…)."""


class CheckpointError(ParticlesimError):
    """A checkpoint could not be written, read, or does not fit the run it should continue."""
