"""Navigating a trajectory's :class:`xarray.DataTree` and combining per-node results.

The tree layout is the one :func:`particlesim.io.trajectory.open_trajectory`
returns (DESIGN.md, "Trajectory files"):

- ``/particles/<group>``: dims ``(time, particle, spatial)`` (+ ``channel``),
  coords ``time`` (float), ``step`` (int, along ``time``), ``particle``;
  variables ``position``, ``charge``, maybe ``bias``. A frozen field has no
  ``time`` dim.
- ``/observables``: one variable per observable on ``time`` or ``time_<k>``.
- ``/connectivity/<source>_to_<target>``: ``weight (time, target, source)``,
  attrs ``source`` and ``target``.

Root attrs hold the run's parameters (``scenario_toml``, ``seed``,
``data_source``, ``versions``, ``plugins``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import xarray as xr

from particlesim.errors import AnalysisError, close_matches


def group_names(tree: xr.DataTree) -> list[str]:
    """Names of the particle groups (layers), in file order."""
    if "particles" not in tree.children:
        return []
    return list(tree["particles"].children)


def group(tree: xr.DataTree, name: str) -> xr.Dataset:
    """The Dataset of particle group ``name``; an :class:`AnalysisError` lists the groups there."""
    names = group_names(tree)
    if name not in names:
        raise AnalysisError(unknown("group", name, names))
    return tree[f"particles/{name}"].to_dataset()


def groups(tree: xr.DataTree, names: Iterable[str] | None = None) -> dict[str, xr.Dataset]:
    """``{name: Dataset}`` for the chosen groups (all when ``names`` is None), checked."""
    chosen = group_names(tree) if names is None else list(names)
    return {name: group(tree, name) for name in chosen}


def interaction_names(tree: xr.DataTree) -> list[str]:
    """Names of the recorded interactions (``/connectivity`` children), in file order."""
    if "connectivity" not in tree.children:
        return []
    return list(tree["connectivity"].children)


def interactions(tree: xr.DataTree, groups: Iterable[str] | None = None) -> dict[str, xr.Dataset]:
    """``{name: Dataset}`` of recorded interactions, those touching ``groups`` when given.

    Each Dataset holds ``weight (time, target, source)`` and attrs ``source``
    and ``target`` naming the two particle groups.
    """
    wanted = None if groups is None else set(groups)
    out = {}
    for name in interaction_names(tree):
        ds = tree[f"connectivity/{name}"].to_dataset()
        source, target = endpoints(ds, name)
        if wanted is None or source in wanted or target in wanted:
            out[name] = ds
    return out


def endpoints(ds: xr.Dataset, name: str = "") -> tuple[str, str]:
    """``(source, target)`` group names of an interaction node (attrs, else the node name)."""
    source, target = ds.attrs.get("source"), ds.attrs.get("target")
    if (source is None or target is None) and "_to_" in name:
        source, target = name.split("_to_", 1)
    if source is None or target is None:
        raise AnalysisError(f"interaction {name!r} names no source and target group")
    return str(source), str(target)


def observables(tree: xr.DataTree) -> xr.Dataset:
    """The ``/observables`` Dataset (empty when the file recorded none)."""
    if "observables" not in tree.children:
        return xr.Dataset()
    return tree["observables"].to_dataset()


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """One-line message for an unknown name: suggestions, then every known name."""
    known = list(known)
    listing = ", ".join(known) if known else "none"
    return f"unknown {kind} {name!r}{close_matches(name, known)}; known {kind}s: {listing}"


def check_groups(tree: xr.DataTree, names: Iterable[str] | None) -> list[str] | None:
    """Validate ``names`` against the file's groups; ``None`` (all groups) passes through."""
    if names is None:
        return None
    names = list(names)
    existing = group_names(tree)
    for name in names:
        if name not in existing:
            raise AnalysisError(unknown("group", name, existing))
    return names


def time_dim(da: xr.DataArray) -> str | None:
    """The time-like dim of ``da`` (``time`` or ``time_<k>``), or ``None`` for a frozen field."""
    for dim in da.dims:
        if dim == "time" or str(dim).startswith("time_"):
            return str(dim)
    return None


def step_coord(da: xr.DataArray | xr.Dataset, dim: str) -> np.ndarray:
    """Steps along time-like ``dim``: coord ``step`` (``step_<k>`` for ``time_<k>``), else index."""
    name = "step" + dim.removeprefix("time")
    if name in da.coords:
        return np.asarray(da.coords[name].values)
    return np.arange(da.sizes[dim])


def combine(results: Mapping[str, xr.DataArray]) -> xr.Dataset:
    """Gather named results into one Dataset without silently aligning different axes.

    Results computed on different nodes may share a dim name but not its
    coordinate (positions sampled every 3 steps, weights every epoch; two
    histograms with different bin edges). Outer-joining them would pad with
    NaN, so, as the observables do with ``time_<k>``, the first axis seen
    keeps the name and each different one becomes ``<dim>_1``, ``<dim>_2``, …
    with its coordinates along it renamed alike (``step`` → ``step_1``).
    Results on equal axes share one dim.
    """
    taken: dict[str, tuple[int, np.ndarray | None]] = {}  # output dim -> (size, coordinate)
    out: dict[str, xr.DataArray] = {}
    for name, da in results.items():
        renames: dict[str, str] = {}
        for dim in map(str, da.dims):
            axis = (da.sizes[dim], np.asarray(da.coords[dim].values) if dim in da.coords else None)
            for k in itertools.count():
                new = dim if k == 0 else f"{dim}_{k}"
                if new not in taken:
                    taken[new] = axis
                    break
                if _same_axis(taken[new], axis):
                    break
            if new != dim:
                renames[dim] = new
        for coord in map(str, da.coords):
            dims = da.coords[coord].dims
            if coord not in renames and len(dims) == 1 and dims[0] in renames:
                renames[coord] = renames[dims[0]].replace(str(dims[0]), coord, 1)
        if renames:
            da = da.to_dataset(name=name).rename(renames)[name]
        out[name] = da.rename(name)
    return xr.Dataset(out)


def _same_axis(a: tuple[int, np.ndarray | None], b: tuple[int, np.ndarray | None]) -> bool:
    if a[0] != b[0] or (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or bool(np.array_equal(a[1], b[1]))
