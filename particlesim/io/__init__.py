"""Input and output: metrics files, trajectories, the xarray backend.

Submodules are imported on use, so that light readers (the xarray backend)
never pull in torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "MetricsWriter": "particlesim.io.metrics",
    "TrajectoryWriter": "particlesim.io.h5md",
    "open_trajectory": "particlesim.io.trajectory",
    "open_group": "particlesim.io.trajectory",
    "to_universe": "particlesim.io.mdanalysis",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'particlesim.io' has no attribute {name!r}")


__all__ = list(_LAZY)
