"""Analysis of trajectories with xarray: measures, graph metrics, plots and animations.

Functions take the xarray objects that :func:`particlesim.io.trajectory.open_trajectory`
returns and give DataArrays with named dims. This package never imports torch;
its names load on first use (xarray for measures, networkx for graphs,
matplotlib for plots), so importing it, or the CLI's help, stays cheap.

Example:
    >>> import numpy as np, xarray as xr
    >>> from particlesim.analysis import radius_of_gyration
    >>> points = np.array([[[1.0, 0.0], [-1.0, 0.0]]])  # [T, N, D]
    >>> pos = xr.DataArray(points, dims=("time", "particle", "spatial"))
    >>> float(radius_of_gyration(pos)[0])
    1.0
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AnalysisError": "particlesim.analysis.tree",
    "centroid": "particlesim.analysis.measures",
    "charge_histogram": "particlesim.analysis.measures",
    "connection_length": "particlesim.analysis.measures",
    "mean_squared_displacement": "particlesim.analysis.measures",
    "pair_distance_histogram": "particlesim.analysis.measures",
    "radius_of_gyration": "particlesim.analysis.measures",
    "weight_distance_correlation": "particlesim.analysis.measures",
    "METRICS": "particlesim.analysis.metrics",
    "Metric": "particlesim.analysis.metrics",
    "compute_metrics": "particlesim.analysis.metrics",
    "weight_graph": "particlesim.analysis.graph",
    "modularity": "particlesim.analysis.graph",
    "best_partition_modularity": "particlesim.analysis.graph",
    "clustering": "particlesim.analysis.graph",
    "small_worldness": "particlesim.analysis.graph",
    "plot_observables": "particlesim.analysis.plots",
    "plot_positions": "particlesim.analysis.plots",
    "plot_summary": "particlesim.analysis.plots",
    "plot_network": "particlesim.analysis.plots",
    "animate": "particlesim.analysis.plots",
    "Scene": "particlesim.analysis.scene",
    "write_view": "particlesim.analysis.view",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'particlesim.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
