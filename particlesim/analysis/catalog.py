"""Names, one-line descriptions and options of the metrics (no heavy imports).

The command line's help reads this without importing xarray;
:mod:`particlesim.analysis.metrics` builds the registry from it.
"""

from __future__ import annotations

from typing import Any

_BINS: dict[str, Any] = {"bins": 50, "range": None, "density": False}
_GRAPH: dict[str, Any] = {"threshold": None, "top_k": None, "top_fraction": None}

#: metric name -> (what it measures, {option: default})
METRIC_INFO: dict[str, tuple[str, dict[str, Any]]] = {
    "centroid": ("centre of each group's positions (time, spatial)", {}),
    "radius_of_gyration": ("spread of each group's positions about its centroid (time)", {}),
    "msd": (
        "mean squared displacement of each group from a reference frame (time), "
        "or lag-averaged (lag)",
        {"reference": 0, "lag": False, "max_lag": None},
    ),
    "pair_distances": (
        "histogram of distances between the particles of each group (time, distance)",
        dict(_BINS),
    ),
    "charge_histogram": ("histogram of each group's charges (time, charge_bin)", dict(_BINS)),
    "connection_length": (
        "weight-averaged distance of each interaction's connections (time)",
        {},
    ),
    "weight_distance_correlation": (
        "correlation of |weight| with distance per interaction (time)",
        {"method": "pearson"},
    ),
    "modularity": (
        "modularity of the best partition of the |weight| graph, and its community count (time)",
        {**_GRAPH, "method": "louvain", "seed": 0, "resolution": 1.0},
    ),
    "clustering": ("weighted average clustering of the |weight| graph (time)", dict(_GRAPH)),
    "small_worldness": (
        "small-world index (C/C_null)(E/E_null) of the binarised |weight| graph, random "
        "G(n, m) nulls (time)",
        {**_GRAPH, "top_fraction": 0.1, "nulls": 20, "seed": 0},
    ),
}
