"""What a picture of a trajectory shows, apart from how it is drawn: one projection and colour
scale per group, the frame axis with its steps and epochs, the strongest weights.

The static figures (:mod:`particlesim.analysis.plots`), the animations and the HTML viewer
(:mod:`particlesim.analysis.view`) all draw a :class:`Scene`, so they agree on every number.

**One panel per group.** Each particle group gets its own page coordinates:

- ``D = 1``: the coordinate itself, on a line;
- ``D = 2``: the plane as it is;
- ``D > 2``: the group's first two principal axes (PCA), fitted once over the group's frames,
  so that the frames of a run are drawn in one frame of reference and motion is real motion.
  The fit takes every recorded frame, or :data:`FIT_FRAMES` of them evenly spread over the run
  (first and last included) when there are more, plus every frame drawn.

**One colour scale per group**, fixed over the same frames: charges (the first channel of a
multi-channel charge) on a symmetric scale ``[-max|q|, max|q|]``; any other per-particle field
(``bias``, a split assignment, the integer ``id`` of relabelled neurons, …) on the same
symmetric scale when it is a float taking both signs, else from its smallest to its largest
value. Groups without the field are drawn grey.

**The network view** lays the groups out left to right in the order the recorded interactions
chain them (file order where they do not), each particle at its group's first principal
coordinate scaled to ``[-1, 1]`` (the coordinate itself for ``D = 1``), and keeps the strongest
``|W|`` of each interaction at the connectivity frame nearest the drawn step.

Values are read a slice of frames at a time (:mod:`particlesim.analysis.stream`), and a weight
matrix a block of rows at a time, so memory stays bounded whatever the run's length.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from particlesim.analysis.stream import frames_per_slice, read_rows, slice_bytes, slices
from particlesim.analysis.tree import (
    AnalysisError,
    check_groups,
    endpoints,
    group_names,
    groups,
    interactions,
    observables,
    time_dim,
    unknown,
)

Projection = Literal["auto", "2d", "3d", "pca"]
PROJECTIONS = ("auto", "2d", "3d", "pca")
#: At most this many frames of a group fit its PCA and colour scale (evenly spread, + drawn ones).
FIT_FRAMES = 512
#: Default number of strongest weights kept per interaction in the network view.
NETWORK_EDGES = 200
#: Fields that are never a colour (they are the geometry).
NOT_COLOURS = ("position", "velocity", "force", "image")


@dataclass(frozen=True)
class ColourScale:
    """How one group's particles are coloured: ``field`` between ``lo`` and ``hi``.

    ``symmetric`` scales (charges, signed floats) centre on zero and use a diverging map.
    """

    field: str
    label: str
    lo: float
    hi: float
    symmetric: bool

    def unit(self, values: np.ndarray) -> np.ndarray:
        """``values`` mapped to ``[-1, 1]`` (symmetric) or ``[0, 1]`` (sequential), clipped."""
        if self.symmetric:
            return np.clip(values / self.hi, -1.0, 1.0)
        return np.clip((values - self.lo) / (self.hi - self.lo), 0.0, 1.0)


@dataclass(frozen=True)
class Edges:
    """The strongest weights of one interaction at one connectivity frame.

    ``source[k]`` → ``target[k]`` with weight ``weight[k]`` (particle indices of the groups),
    strongest first; ``total`` is the number of weights of the matrix.
    """

    interaction: str
    source_group: str
    target_group: str
    step: int
    source: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    total: int


class GroupScene:
    """One group's page projection, network coordinate and colour scale, fitted over its frames."""

    def __init__(self, name: str, ds: xr.Dataset, projection: str) -> None:
        self.name = name
        self.ds = ds
        self.n = int(ds.sizes.get("particle", 0))
        self.dim = int(ds.sizes.get("spatial", 1))
        self.frozen = "time" not in ds["position"].dims
        mode = projection
        if mode == "auto":
            mode = {1: "1d", 2: "2d"}.get(self.dim, "pca")
        if mode in ("2d", "pca") and self.dim < 2:
            raise AnalysisError(f"projection {projection!r} needs D >= 2; group {name!r} has D = 1")
        if mode == "3d" and self.dim < 3:
            raise AnalysisError(f"projection '3d' needs D >= 3; group {name!r} has D = {self.dim}")
        self.mode = mode
        self.mean = np.zeros(self.dim)
        self.basis = np.eye(self.dim)[:, : min(2, self.dim)]
        self.explained = np.zeros(min(2, self.dim))
        self.limits: list[tuple[float, float]] = []
        self.line_range = (-1.0, 1.0)
        self.colour: ColourScale | None = None

    # --- reading -----------------------------------------------------------------------

    def field(self, var: str) -> xr.DataArray:
        """``var`` of the group, its first channel when it has channels."""
        da = self.ds[var]
        return da.isel(channel=0) if "channel" in da.dims else da

    @staticmethod
    def order(var: str) -> tuple[str, ...]:
        return ("particle", "spatial") if var == "position" else ("particle",)

    def read(self, var: str, rows: Sequence[int] | np.ndarray) -> Iterator[np.ndarray]:
        """``var`` at each of the group's own time ``rows``, read a slice of frames at a time."""
        for values in read_rows(self.field(var), np.asarray(rows, np.int64), self.order(var)):
            yield np.asarray(values, dtype=np.float64)

    # --- geometry ----------------------------------------------------------------------

    def fit(self, rows: np.ndarray, colour: str | None) -> None:
        """Fit the PCA, the page limits, the network coordinate's range and the colour scale."""
        if self.dim >= 2:
            self._fit_pca(rows)
        lo = hi = None
        line_lo, line_hi = math.inf, -math.inf
        for points in self.read("position", rows):
            points = points[np.isfinite(points).all(axis=1)]  # NaN or Inf: left undrawn
            if not len(points):
                continue
            page = self.page(points)
            low, high = page.min(axis=0), page.max(axis=0)
            lo = low if lo is None else np.minimum(lo, low)
            hi = high if hi is None else np.maximum(hi, high)
            line = self._line_raw(points)
            line_lo = min(line_lo, float(line.min()))
            line_hi = max(line_hi, float(line.max()))
        self.limits = _padded(lo, hi, self.mode)
        if math.isfinite(line_lo) and line_hi > line_lo:
            self.line_range = (line_lo, line_hi)
        elif math.isfinite(line_lo):
            self.line_range = (line_lo - 1.0, line_lo + 1.0)
        if colour is not None and colour in self.ds.data_vars:
            self.colour = self._fit_colour(colour, rows)

    def _fit_pca(self, rows: np.ndarray) -> None:
        """Principal axes of the positions at ``rows``, streamed.

        A running mean and D × D scatter matrix (Chan et al.'s pairwise update) stand in for
        the pooled points; the axes are its leading eigenvectors, each signed so that its
        largest component is positive.
        """
        count, mean, scatter = 0, np.zeros(self.dim), np.zeros((self.dim, self.dim))
        for points in self.read("position", rows):
            points = points[np.isfinite(points).all(axis=1)]
            if not len(points):
                continue
            k, m = len(points), points.mean(axis=0)
            centred = points - m
            delta = m - mean
            scatter += centred.T @ centred + np.outer(delta, delta) * count * k / (count + k)
            mean += delta * k / (count + k)
            count += k
        self.mean = mean
        var, vectors = np.linalg.eigh(scatter)
        var, vectors = np.clip(var[::-1], 0, None), vectors[:, ::-1]
        basis = vectors[:, : min(3, self.dim)]
        signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
        self.basis = basis * np.where(signs == 0, 1.0, signs)
        self.explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)

    def page(self, points: np.ndarray) -> np.ndarray:
        """Page coordinates of ``points [N, D]``: ``[N, 2]`` (``[N, 3]`` in 3d)."""
        if self.mode == "1d":
            return np.column_stack([points[:, 0], np.zeros(len(points))])
        if self.mode == "2d":
            return points[:, :2]
        if self.mode == "3d":
            return points[:, :3]
        return (points - self.mean) @ self.basis[:, :2]

    def _line_raw(self, points: np.ndarray) -> np.ndarray:
        if self.dim == 1:
            return points[:, 0]
        return (points - self.mean) @ self.basis[:, 0]

    def line(self, points: np.ndarray) -> np.ndarray:
        """The network view's coordinate of ``points``: first principal coordinate in [-1, 1]."""
        lo, hi = self.line_range
        return (self._line_raw(points) - lo) / (hi - lo) * 2.0 - 1.0

    def labels(self) -> list[str]:
        """Axis labels of the page coordinates."""
        if self.mode == "1d":
            return ["x0", ""]
        if self.mode == "pca":
            return [f"PC{i + 1} ({100 * e:.0f}%)" for i, e in enumerate(self.explained)]
        return [f"x{i}" for i in range(3 if self.mode == "3d" else 2)]

    def describe(self) -> str:
        """``"hidden1: 256 particles, PCA of 8-D"``: the panel's title."""
        how = {"1d": "1-D", "2d": "2-D", "3d": "3-D"}.get(self.mode, f"PCA of {self.dim}-D")
        if self.mode in ("2d", "3d") and self.dim > int(self.mode[0]):
            how = f"x0…x{int(self.mode[0]) - 1} of {self.dim}-D"
        frozen = ", frozen" if self.frozen else ""
        return f"{self.name}: {self.n} particles, {how}{frozen}"

    # --- colour ------------------------------------------------------------------------

    def _fit_colour(self, name: str, rows: np.ndarray) -> ColourScale:
        da = self.field(name)
        lo, hi = math.inf, -math.inf
        for values in self.read(name, rows):
            finite = values[np.isfinite(values)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        channels = "channel" in self.ds[name].dims
        label = f"{name} (channel 0)" if channels else name
        if not math.isfinite(lo):
            lo, hi = -1.0, 1.0
        floating = da.dtype.kind in "fc"
        if name == "charge" or (floating and lo < 0 < hi):
            top = max(abs(lo), abs(hi)) or 1.0
            return ColourScale(name, label, -top, top, True)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        return ColourScale(name, label, lo, hi, False)


def _padded(lo: np.ndarray | None, hi: np.ndarray | None, mode: str) -> list[tuple[float, float]]:
    """Page limits with a 5 % margin; one span for both axes of a plane (equal aspect)."""
    width = 3 if mode == "3d" else 2
    if lo is None or hi is None or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
        return [(-1.0, 1.0)] * width
    pad = np.maximum(0.05 * (hi - lo), 0.05)
    lo, hi = lo - pad, hi + pad
    if mode == "1d":
        return [(float(lo[0]), float(hi[0])), (-1.0, 1.0)]
    if mode in ("2d", "pca"):
        centre, half = (lo + hi) / 2, (hi - lo).max() / 2
        lo, hi = centre - half, centre + half
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


class Scene:
    """The groups of a trajectory to draw, their frames, projections and colour scales.

    Frames index the time axis of the first chosen group that moves (else whose colour field,
    else any field, is recorded over time: frozen places with relabelled neurons still have
    frames); the other groups are read at the nearest recorded step and frozen fields at
    every frame.

    Args:
        tree: an opened trajectory (:func:`particlesim.io.trajectory.open_trajectory`).
        names: groups to draw (default: every group with positions).
        projection: ``"auto"`` (D = 1 on a line, D = 2 as is, D > 2 by PCA), ``"2d"`` or
            ``"3d"`` (the first coordinates), ``"pca"``.
        frames: the frames to draw (indices of the frame axis, negative from the end, a
            slice, or a function of the number of frames giving them); default all.
        colour: the per-particle field to colour by (default ``"charge"``; ``None``: grey).
        name: the run's name for titles (default: the scenario's name in the file).
        fit: fit the projections and colour scales (``False``: only check and count).
    """

    def __init__(
        self,
        tree: xr.DataTree,
        names: Iterable[str] | None = None,
        projection: str = "auto",
        frames: Sequence[int] | slice | Callable[[int], Sequence[int]] | None = None,
        colour: str | None = "charge",
        name: str | None = None,
        fit: bool = True,
    ) -> None:
        if projection not in PROJECTIONS:
            raise AnalysisError(
                f"unknown projection {projection!r}; known projections: {', '.join(PROJECTIONS)}"
            )
        self.tree = tree
        chosen = check_groups(tree, names)
        available = groups(tree, chosen)
        if not available:
            raise AnalysisError("the trajectory has no particle groups (no /particles/<group>)")
        without = [n for n, ds in available.items() if "position" not in ds.data_vars]
        if len(without) == len(available):
            fields = "; ".join(
                f"{n}: {', '.join(map(str, ds.data_vars)) or 'nothing'}"
                for n, ds in available.items()
            )
            raise AnalysisError(
                "no particle group records positions, which every picture draws "
                f"(the groups hold {fields}); record them with the trajectory writer"
            )
        self.skipped = without
        self.groups = {
            n: GroupScene(n, ds, projection) for n, ds in available.items() if n not in without
        }
        self.colour = self._check_colour(colour)
        self.axis = self._frame_axis()
        self.n_frames = 1 if self.axis is None else int(self.axis.sizes["time"])
        self.frames = self._check_frames(frames)
        self.steps = (
            np.asarray(self.axis["step"].values, dtype=np.int64)
            if self.axis is not None and "step" in self.axis.coords
            else np.arange(self.n_frames, dtype=np.int64)
        )
        self._rows: dict[tuple[str, str], np.ndarray | None] = {}
        self._edges: dict[tuple[str, int, int], Edges] = {}
        if fit:
            for group in self.groups.values():
                group.fit(self.fit_rows(group.name), self.colour)
        self.run_name = name or run_name(tree)
        self.per_epoch = steps_per_epoch(tree)

    # --- checks ------------------------------------------------------------------------

    def _frame_axis(self) -> xr.DataArray | None:
        """The time axis of the first group whose positions (else colour field, else any
        field: bias, id, …) change over time; ``None`` when nothing does."""
        wanted = (("position",), (self.colour,) if self.colour else (), None)
        for fields in wanted:
            for g in self.groups.values():
                names = g.ds.data_vars if fields is None else fields
                if any(v in g.ds and "time" in g.ds[v].dims for v in names):
                    return g.ds["time"]
        return None

    def _check_colour(self, colour: str | None) -> str | None:
        if colour is None:
            return None
        fields = sorted(
            {
                str(v)
                for g in self.groups.values()
                for v, da in g.ds.data_vars.items()
                if v not in NOT_COLOURS and _per_particle(da)
            }
        )
        if colour not in fields:
            if colour == "charge":  # the default: groups without charges are simply grey
                return None
            bad = [
                g.name
                for g in self.groups.values()
                if colour in g.ds.data_vars and colour not in NOT_COLOURS
            ]
            if bad:
                dims = tuple(map(str, self.groups[bad[0]].ds[colour].dims))
                raise AnalysisError(
                    f"field {colour!r} of group {bad[0]!r} is not one number per particle "
                    f"(dims {dims}); colour by one of: {', '.join(fields) or 'none'}"
                )
            raise AnalysisError(unknown("field", colour, fields))
        return colour

    def _check_frames(
        self, frames: Sequence[int] | slice | Callable[[int], Sequence[int]] | None
    ) -> list[int]:
        if frames is None:
            return list(range(self.n_frames))
        if callable(frames):
            frames = frames(self.n_frames)
        if isinstance(frames, slice):
            frames = list(range(self.n_frames)[frames])
        out = []
        for f in frames:
            if not -self.n_frames <= f < self.n_frames:
                raise AnalysisError(
                    f"frame {f} out of range: the trajectory has {self.n_frames} frames "
                    f"(0…{self.n_frames - 1}, or -1 for the last)"
                )
            out.append(int(f) % self.n_frames)
        if not out:
            raise AnalysisError("no frames selected")
        return out

    # --- frames and rows ---------------------------------------------------------------

    def rows(self, name: str, var: str) -> np.ndarray | None:
        """Row of ``var`` of group ``name`` at each frame of the axis (None: no time)."""
        key = (name, var)
        if key not in self._rows:
            da = self.groups[name].ds[var]
            if "time" not in da.dims or self.axis is None:
                self._rows[key] = None
            elif "step" in da.coords and "step" in self.axis.coords:  # the nearest step
                index = da.swap_dims(time="step").indexes["step"]
                self._rows[key] = index.get_indexer(self.axis["step"].values, method="nearest")
            else:
                index = da.indexes["time"]
                self._rows[key] = index.get_indexer(self.axis.values, method="nearest")
        return self._rows[key]

    def fit_rows(self, name: str) -> np.ndarray:
        """The group's own time rows that fit its projection and colour scale (see module)."""
        ds = self.groups[name].ds
        total = int(ds.sizes.get("time", 0)) if "time" in ds["position"].dims else 0
        if total == 0 and self.colour in ds.data_vars and "time" in ds[self.colour].dims:
            total = int(ds.sizes["time"])
        if total == 0:
            return np.zeros(1, dtype=np.int64)
        spread = np.unique(np.linspace(0, total - 1, min(total, FIT_FRAMES)).round())
        drawn = self.rows(name, "position")
        if drawn is None and self.colour in ds.data_vars:
            drawn = self.rows(name, self.colour)
        extra = drawn[np.asarray(self.frames)] if drawn is not None else np.zeros(0)
        return np.unique(np.concatenate([spread, extra]).astype(np.int64))

    def each(
        self, name: str, var: str, frames: Sequence[int] | None = None
    ) -> Iterator[np.ndarray]:
        """``var`` of group ``name`` at each of ``frames`` (default: the drawn ones), streamed."""
        frames = self.frames if frames is None else frames
        rows = self.rows(name, var)
        wanted = np.zeros(len(frames), dtype=np.int64)
        if rows is not None:
            wanted = rows[np.asarray(frames, dtype=np.int64)]
        yield from self.groups[name].read(var, wanted)

    def positions(self, name: str, frame: int) -> np.ndarray:
        """Positions ``[N, D]`` of group ``name`` at ``frame``."""
        return next(self.each(name, "position", [frame]))

    def colours(self, name: str, frame: int) -> np.ndarray | None:
        """Values ``[N]`` of the colour field of group ``name`` at ``frame`` (None: grey)."""
        if self.groups[name].colour is None or self.colour is None:
            return None
        return next(self.each(name, self.colour, [frame]))

    def step(self, frame: int) -> int:
        return int(self.steps[frame])

    def epoch(self, frame: int) -> float | None:
        """The epoch at ``frame`` (fractional), when the file's epoch clock tells it."""
        if self.per_epoch is None:
            return None
        return self.step(frame) / self.per_epoch

    def title(self, frame: int) -> str:
        """``"mnist_particle · step 4690 · epoch 10"``."""
        parts = [self.run_name] if self.run_name else []
        if self.axis is not None:
            parts.append(f"step {self.step(frame)}")
            epoch = self.epoch(frame)
            if epoch is not None:
                parts.append(f"epoch {format_epoch(epoch)}")
        return " · ".join(parts) or "positions"

    # --- network -----------------------------------------------------------------------

    def layer_order(self) -> list[str]:
        """The drawn groups left to right: the recorded interactions' chain, else file order."""
        names = list(self.groups)
        incoming: dict[str, set[str]] = {n: set() for n in names}
        for ds_name, ds in interactions(self.tree).items():
            source, target = endpoints(ds, ds_name)
            if source in incoming and target in incoming and source != target:
                incoming[target].add(source)
        order: list[str] = []
        while len(order) < len(names):
            ready = [n for n in names if n not in order and incoming[n] <= set(order)]
            order.append(ready[0] if ready else next(n for n in names if n not in order))
        return order

    def recorded(self) -> list[tuple[str, xr.Dataset, str, str]]:
        """``(name, node, source, target)`` of each recorded interaction between drawn groups."""
        out = []
        for ds_name, ds in interactions(self.tree).items():
            source, target = endpoints(ds, ds_name)
            if source in self.groups and target in self.groups and "weight" in ds:
                weight = ds["weight"]
                if set(map(str, weight.dims)) <= {"time", "target", "source"}:
                    out.append((ds_name, ds, source, target))
        return out

    def edges(self, frame: int, limit: int = NETWORK_EDGES) -> list[Edges]:
        """The ``limit`` strongest ``|W|`` of each interaction between drawn groups.

        Each interaction is read at its connectivity frame nearest the step of ``frame``, a
        block of target rows at a time (and once per connectivity frame: kept for the next
        frames that fall on it).
        """
        if limit < 0:
            raise AnalysisError(f"the number of edges must be >= 0, got {limit}")
        out = []
        for ds_name, ds, source, target in self.recorded():
            weight = ds["weight"]
            expected = (self.groups[target].n, self.groups[source].n)
            shape = (int(weight.sizes.get("target", 0)), int(weight.sizes.get("source", 0)))
            if shape != expected:
                raise AnalysisError(
                    f"interaction {ds_name!r}: weight is {shape[0]} × {shape[1]} but "
                    f"{target!r} × {source!r} have {expected[0]} × {expected[1]} particles"
                )
            step, row = self.step(frame), -1
            if "time" in weight.dims:
                if weight.sizes["time"] == 0:
                    continue
                steps = (
                    np.asarray(ds["step"].values)
                    if "step" in ds.coords
                    else np.arange(weight.sizes["time"])
                )
                row = int(np.abs(steps - step).argmin())
                weight, step = weight.isel(time=row), int(steps[row])
            key = (ds_name, row, limit)
            if key not in self._edges:
                src, tgt, w = _strongest(weight.transpose("target", "source"), limit)
                self._edges[key] = Edges(
                    ds_name, source, target, step, src, tgt, w, shape[0] * shape[1]
                )
            out.append(self._edges[key])
        return out


def _strongest(weight: xr.DataArray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(source, target, w)`` of the ``limit`` largest ``|w|`` of ``weight [M, N]``, by blocks."""
    m, n = int(weight.sizes["target"]), int(weight.sizes["source"])
    if limit == 0 or m * n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    per = max(1, slice_bytes() // max(1, 8 * n))
    best_w = np.zeros(0)
    best_i = np.zeros(0, dtype=np.int64)
    for part in slices(m, per):
        block = np.asarray(weight.isel(target=part).values, dtype=np.float64).ravel()
        block = np.where(np.isfinite(block), block, 0.0)
        index = np.arange(part.start * n, part.start * n + block.size, dtype=np.int64)
        w = np.concatenate([best_w, block])
        i = np.concatenate([best_i, index])
        if w.size > limit:
            keep = np.argpartition(-np.abs(w), limit - 1)[:limit]
            w, i = w[keep], i[keep]
        best_w, best_i = w, i
    order = np.argsort(-np.abs(best_w), kind="stable")
    best_w, best_i = best_w[order], best_i[order]
    return best_i % n, best_i // n, best_w


def _per_particle(da: xr.DataArray) -> bool:
    """One number per particle (per frame): dims ⊆ {time, particle, channel}, numeric."""
    return (
        "particle" in da.dims
        and set(map(str, da.dims)) <= {"time", "particle", "channel"}
        and da.dtype.kind in "biuf"
    )


def run_name(tree: xr.DataTree) -> str:
    """The scenario's name recorded in the file (``scenario_name``, else its TOML), or ``""``."""
    name = tree.attrs.get("scenario_name")
    if isinstance(name, str) and name:
        return name
    text = tree.attrs.get("scenario_toml")
    if isinstance(text, str):
        try:
            found = tomllib.loads(text).get("scenario", {}).get("name")
        except tomllib.TOMLDecodeError:
            found = None
        if isinstance(found, str):
            return found
    return ""


def steps_per_epoch(tree: xr.DataTree) -> int | None:
    """Steps of one epoch, from the per-epoch clock (``step_epoch``: 469, 938, …), if recorded.

    The epoch clock ticks at the end of every epoch; its steps are multiples of one period.
    """
    obs = observables(tree)
    if "step_epoch" not in obs.coords:
        return None
    steps = np.asarray(obs["step_epoch"].values, dtype=np.int64)
    steps = steps[steps > 0]
    if not len(steps):
        return None
    period = int(np.gcd.reduce(steps))
    return period if period > 0 else None


def format_epoch(epoch: float) -> str:
    """``10`` for a whole epoch, else two decimals (``3.41``)."""
    return f"{epoch:.0f}" if abs(epoch - round(epoch)) < 1e-9 else f"{epoch:.2f}"


def every_frames(n_frames: int, every: int) -> list[int]:
    """Every ``every``-th of ``n_frames`` frames from the first, and always the last."""
    if every < 1:
        raise AnalysisError(f"every must be a positive integer, got {every}")
    frames = list(range(0, n_frames, every))
    if n_frames and frames[-1] != n_frames - 1:
        frames.append(n_frames - 1)
    return frames


def spread_frames(n_frames: int, limit: int) -> list[int]:
    """At most ``limit`` of ``n_frames`` frames, evenly spread, the first and the last included."""
    if limit < 1:
        raise AnalysisError(f"the frame limit must be a positive integer, got {limit}")
    if n_frames <= limit:
        return list(range(n_frames))
    if limit == 1:
        return [n_frames - 1]
    return sorted({round(float(x)) for x in np.linspace(0, n_frames - 1, limit)})


def series(
    da: xr.DataArray, dim: str, steps: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(x [k], values [k, C])`` of an observable over ``dim``, at most ``limit`` values.

    Up to ``limit`` values it is the observable itself; beyond, the frames are cut into
    buckets and each gives two points, its smallest value at its first step and its largest
    at its last (per component), read a slice at a time: a spike stays visible, memory stays
    bounded.
    """
    da = da.transpose(dim, ...)
    n = da.sizes[dim]
    width = max(1, math.prod(int(v) for d, v in da.sizes.items() if d != dim))
    if n * width <= limit:
        values = np.asarray(da.values, dtype=np.float64)
        return steps, values.reshape(values.shape[0], -1)
    size = math.ceil(n / max(1, limit // (2 * width)))  # frames of a bucket
    per = max(size, frames_per_slice(da, dim=dim) // size * size)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for part in slices(n, per):
        block = np.asarray(da.isel({dim: part}).values, dtype=np.float64).reshape(-1, width)
        for start in range(0, block.shape[0], size):
            bucket = block[start : start + size]
            first, last = part.start + start, part.start + start + bucket.shape[0] - 1
            xs.append(np.asarray([steps[first], steps[last]]))
            ys.append(np.stack([np.fmin.reduce(bucket, axis=0), np.fmax.reduce(bucket, axis=0)]))
    return np.concatenate(xs), np.concatenate(ys)


__all__ = [
    "FIT_FRAMES",
    "NETWORK_EDGES",
    "PROJECTIONS",
    "ColourScale",
    "Edges",
    "GroupScene",
    "Scene",
    "every_frames",
    "format_epoch",
    "group_names",
    "run_name",
    "series",
    "spread_frames",
    "steps_per_epoch",
    "time_dim",
]
