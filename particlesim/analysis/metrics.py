"""Named metrics over a whole trajectory: the registry behind ``particlesim analyze``.

A metric applies one measure to every relevant node of the tree (each particle
group, or each interaction, or the weight graph) and returns one Dataset whose
variables are named ``<metric>_<group>`` / ``<metric>_<interaction>`` (or just
``<metric>`` for whole-network measures). Axes that differ between nodes keep
apart (``time_<variable>``), see :func:`particlesim.analysis.tree.combine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from particlesim.analysis import measures
from particlesim.analysis.catalog import METRIC_INFO
from particlesim.analysis.tree import (
    AnalysisError,
    check_groups,
    combine,
    endpoints,
    group,
    groups,
    interactions,
)

Compute = Callable[..., dict[str, xr.DataArray]]


@dataclass(frozen=True)
class Metric:
    """A named metric: ``metric(tree, *, groups=None, **options) -> xr.Dataset``.

    ``options`` maps each accepted keyword to its default; a keyword not
    listed is an :class:`AnalysisError` naming those that are. Values are
    coerced to the default's type (so ``"20"`` from the command line is 20).
    """

    name: str
    compute: Compute
    help: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(
        self, tree: xr.DataTree, *, groups: list[str] | None = None, **options: Any
    ) -> xr.Dataset:
        chosen = check_groups(tree, groups)
        values = dict(self.options)
        for key, value in options.items():
            if key not in self.options:
                accepted = ", ".join(self.options) or "none"
                raise AnalysisError(
                    f"metric {self.name!r} has no option {key!r}; its options: {accepted}"
                )
            values[key] = _coerce(self.name, key, value, self.options[key])
        ds = combine(self.results(tree, groups=chosen, **values))
        ds.attrs["metric"] = self.name
        return ds

    def results(
        self, tree: xr.DataTree, *, groups: list[str] | None = None, **options: Any
    ) -> dict[str, xr.DataArray]:
        """The named DataArrays before they are gathered (options already checked)."""
        chosen = check_groups(tree, groups)
        values = {**self.options, **options}
        results = self.compute(tree, chosen, **values)
        if not results:
            where = f" in groups {', '.join(chosen)}" if chosen else ""
            raise AnalysisError(
                f"metric {self.name!r}: nothing to measure{where}: {_missing(self.name)} "
                f"({self.help})"
            )
        return results


#: Metrics measured on the recorded effective weights (``/connectivity``).
WEIGHT_METRICS = (
    "connection_length",
    "weight_distance_correlation",
    "modularity",
    "clustering",
    "small_worldness",
)


def _missing(metric: str) -> str:
    """What a trajectory lacks when ``metric`` finds nothing to measure, and how to record it."""
    if metric in WEIGHT_METRICS:
        return (
            "no connectivity recorded (set the trajectory writer's connectivity_every to "
            "record effective weights)"
        )
    if metric == "charge_histogram":
        return "no charge recorded"
    return "no positions recorded"


def _coerce(metric: str, key: str, value: Any, default: Any) -> Any:
    if value is None or default is None:
        return value
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        return kind(value)
    except (TypeError, ValueError):
        raise AnalysisError(
            f"metric {metric!r} option {key!r}: expected {kind.__name__}, got {value!r}"
        ) from None


def _per_group(func: Callable[..., xr.DataArray], prefix: str, needs: str = "position") -> Compute:
    def compute(tree: xr.DataTree, chosen: list[str] | None, **options: Any):
        return {
            f"{prefix}_{name}": func(ds, **options)
            for name, ds in groups(tree, chosen).items()
            if needs in ds.data_vars
        }

    return compute


def _shared_bins(func: Callable[..., xr.DataArray], prefix: str, needs: str) -> Compute:
    """Per group, on bin edges shared by all groups when no ``range`` is given."""

    def compute(tree: xr.DataTree, chosen: list[str] | None, **options: Any):
        found = {n: ds for n, ds in groups(tree, chosen).items() if needs in ds.data_vars}
        if found and options.get("range") is None:
            if needs == "charge":
                ranges = [measures.charge_range(ds) for ds in found.values()]
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
                if hi <= lo:
                    lo, hi = lo - 0.5, hi + 0.5
            else:
                lo, hi = 0.0, max(measures.max_pair_distance(ds) for ds in found.values())
                hi = hi if hi > 0 else 1.0
            options["range"] = (lo, hi)
        return {f"{prefix}_{name}": func(ds, **options) for name, ds in found.items()}

    return compute


def _per_interaction(func: Callable[..., xr.DataArray], prefix: str) -> Compute:
    def compute(tree: xr.DataTree, chosen: list[str] | None, **options: Any):
        out = {}
        for name, ds in interactions(tree, chosen).items():
            source, target = endpoints(ds, name)
            out[f"{prefix}_{name}"] = func(ds, group(tree, source), group(tree, target), **options)
        return out

    return compute


def _graph_frames(tree: xr.DataTree, chosen: list[str] | None) -> xr.DataArray | None:
    """The shared frame axis of the interactions (a ``time`` DataArray with ``step``)."""
    found = interactions(tree, chosen)
    times = [ds["weight"]["time"] for ds in found.values() if "time" in ds["weight"].dims]
    if not times:
        return None
    for other in times[1:]:
        if other.shape != times[0].shape or not np.array_equal(other.values, times[0].values):
            raise AnalysisError(
                "interactions were recorded at different times; choose one with --group"
            )
    return times[0]


def _graph_metric(kind: str) -> Compute:
    def compute(
        tree: xr.DataTree,
        chosen: list[str] | None,
        *,
        threshold: float | None = None,
        top_k: int | None = None,
        top_fraction: float | None = None,
        **options: Any,
    ):
        from particlesim.analysis import graph as g

        if not interactions(tree, chosen):
            return {}
        axis = _graph_frames(tree, chosen)
        frames = [-1] if axis is None else list(range(axis.sizes["time"]))
        values, sizes = [], []
        for frame in frames:
            graph = g.weight_graph(
                tree, frame, groups=chosen, threshold=threshold, top_k=top_k,
                top_fraction=top_fraction,
            )  # fmt: skip
            if kind == "modularity":
                q, partition = g.best_partition_modularity(graph, **options)
                values.append(q)
                sizes.append(len(partition))
            elif kind == "small_worldness":
                values.append(g.small_worldness(graph, **options))
            else:
                values.append(g.clustering(graph))
        dims: tuple[str, ...] = ()
        coords: dict[str, Any] = {}
        if axis is not None:
            dims = ("time",)
            coords = {k: v for k, v in axis.coords.items() if v.dims == ("time",)}
        else:
            values, sizes = values[0], sizes[0] if sizes else None
        out = {
            kind: xr.DataArray(
                np.asarray(values, dtype=np.float64),
                dims=dims,
                coords=coords,
                attrs={"long_name": f"{kind} of the |weight| graph"},
            )
        }
        if kind == "modularity":
            out["modularity_communities"] = xr.DataArray(
                np.asarray(sizes, dtype=np.int64),
                dims=dims,
                coords=coords,
                attrs={"long_name": "number of communities of the best partition"},
            )
        return out

    return compute


_COMPUTE: dict[str, Compute] = {
    "centroid": _per_group(measures.centroid, "centroid"),
    "radius_of_gyration": _per_group(measures.radius_of_gyration, "radius_of_gyration"),
    "msd": _per_group(measures.mean_squared_displacement, "msd"),
    "pair_distances": _shared_bins(measures.pair_distance_histogram, "pair_distances", "position"),
    "charge_histogram": _shared_bins(measures.charge_histogram, "charge_histogram", "charge"),
    "connection_length": _per_interaction(measures.connection_length, "connection_length"),
    "weight_distance_correlation": _per_interaction(
        measures.weight_distance_correlation, "weight_distance_correlation"
    ),
    "modularity": _graph_metric("modularity"),
    "clustering": _graph_metric("clustering"),
    "small_worldness": _graph_metric("small_worldness"),
}

#: metric name -> :class:`Metric`; descriptions and options come from :mod:`.catalog`.
METRICS: dict[str, Metric] = {
    name: Metric(name, _COMPUTE[name], help_text, dict(options))
    for name, (help_text, options) in METRIC_INFO.items()
}


def compute_metrics(
    tree: xr.DataTree,
    names: list[str],
    *,
    groups: list[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Several metrics in one Dataset; ``options`` go to every metric that accepts them.

    An option that none of the named metrics accepts is an error.
    """
    from particlesim.analysis.tree import unknown

    for name in names:
        if name not in METRICS:
            raise AnalysisError(unknown("metric", name, METRICS))
    options = dict(options or {})
    unused = [k for k in options if not any(k in METRICS[n].options for n in names)]
    if unused:
        accepted = sorted({k for n in names for k in METRICS[n].options})
        raise AnalysisError(
            f"option {unused[0]!r} is not accepted by {', '.join(names)}; "
            f"options: {', '.join(accepted) or 'none'}"
        )
    results: dict[str, xr.DataArray] = {}
    for name in names:
        metric = METRICS[name]
        mine = {k: v for k, v in options.items() if k in metric.options}
        mine = {k: _coerce(name, k, v, metric.options[k]) for k, v in mine.items()}
        results.update(metric.results(tree, groups=groups, **mine))
    out = combine(results)
    out.attrs["metrics"] = ", ".join(names)
    return out
