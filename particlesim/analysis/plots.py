"""Figures and animations of a trajectory: observables, particle positions, neurons moving.

Every figure is a :class:`matplotlib.figure.Figure` drawn on an Agg canvas,
never through ``pyplot``, so nothing leaks between calls (no global current
figure, no GUI backend needed). Positions are drawn in the shared space of
all groups: each group with its own marker, every particle coloured by its
charge (first channel) on one symmetric colour scale, frozen fields included.

**Bounded memory.** Nothing here loads a whole history: positions and
charges are read a slice of frames at a time (:mod:`particlesim.analysis.stream`,
``PARTICLESIM_SLICE_BYTES``, default 64 MiB) to fit the axis limits, the colour
scale and the PCA projection (a running mean and D × D scatter matrix), and one
frame at a time to draw; an observable is read whole when it has at most
:data:`MAX_PLOT_VALUES` values, else a slice at a time and drawn as the min/max
envelope of :data:`MAX_PLOT_VALUES` / 2 buckets. A ``.gif`` is written a frame
at a time (:class:`GifStreamWriter`), an ``.mp4`` through ffmpeg's pipe: the
animation holds one image, not one per frame.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from matplotlib.animation import AbstractMovieWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure

from particlesim.analysis.stream import frames_per_slice, read_rows, slices
from particlesim.analysis.tree import (
    AnalysisError,
    check_groups,
    groups,
    observables,
    step_coord,
    time_dim,
    unknown,
)

Projection = Literal["auto", "2d", "3d", "pca"]
PROJECTIONS = ("auto", "2d", "3d", "pca")
ANIMATION_SUFFIXES = (".gif", ".mp4")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CMAP = "coolwarm"
FROZEN_COLOR = "0.55"
#: Values of one observable drawn as they are; a longer one is drawn as a min/max envelope.
MAX_PLOT_VALUES = 2_000_000


def new_figure(**kwargs: Any) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


# --- observables --------------------------------------------------------------------------


def plot_observables(
    tree: xr.DataTree,
    names: Sequence[str] | None = None,
    *,
    fig: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """One panel per observable, plotted against the step at which it was recorded.

    Each observable uses its own time axis (``step`` or ``step_<k>``), so a
    loss recorded every step and a test accuracy recorded every epoch are
    both drawn where they were measured. Vector observables give one line per
    component. The y label carries the variable's ``unit`` attr.

    Args:
        names: observables to draw (default: all recorded).
        fig: draw into this Figure or SubFigure instead of a new one.
    """
    obs = observables(tree)
    available = [str(v) for v in obs.data_vars]
    if not available:
        raise AnalysisError("the trajectory recorded no observables")
    chosen = list(names) if names else available
    for name in chosen:
        if name not in available:
            raise AnalysisError(unknown("observable", name, available))
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    if fig is None:
        fig = new_figure(figsize=(4.2 * ncols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(chosen) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, chosen, strict=False):
        da = obs[name]
        dim = time_dim(da)
        if dim is None:
            values = np.atleast_1d(np.asarray(da.values, dtype=np.float64)).reshape(1, -1)
            x = np.zeros(1)
        else:
            x, values = _series(da, dim, step_coord(obs, dim))
        style = "o-" if values.shape[0] <= 30 else "-"
        ax.plot(x, values, style, markersize=3, linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        unit = da.attrs.get("unit") or da.attrs.get("units")
        if unit:
            ax.set_ylabel(str(unit))
        ax.grid(alpha=0.3)
    return fig


def _series(da: xr.DataArray, dim: str, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x [k], values [k, C])`` of an observable over ``dim``, at most MAX_PLOT_VALUES values.

    Up to :data:`MAX_PLOT_VALUES` values it is the observable itself; beyond, the
    frames are cut into buckets and each gives two points, its smallest value at
    its first step and its largest at its last (per component), read a slice at
    a time: a spike stays visible, memory stays bounded.
    """
    da = da.transpose(dim, ...)
    n = da.sizes[dim]
    width = max(1, math.prod(int(v) for d, v in da.sizes.items() if d != dim))
    if n * width <= MAX_PLOT_VALUES:
        values = np.asarray(da.values, dtype=np.float64)
        return steps, values.reshape(values.shape[0], -1)
    size = math.ceil(n / max(1, MAX_PLOT_VALUES // (2 * width)))  # frames of a bucket
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


# --- positions ----------------------------------------------------------------------------


class _Scene:
    """The groups to draw, their frame axis and the projection of R^D onto the page.

    Frames index the time axis of the first chosen group that moves; other
    moving groups are read at the nearest recorded step; frozen fields are
    drawn at every frame. For ``pca`` the two principal axes are fitted once
    to the positions pooled over every group and every drawn frame, so an
    animation keeps one projection. Passes over the drawn frames (the PCA fit,
    the colour scale, the axis limits) read a slice of frames at a time.
    """

    def __init__(
        self,
        tree: xr.DataTree,
        names: Iterable[str] | None,
        projection: str,
        frames: Sequence[int] | slice | None = None,
    ) -> None:
        chosen = check_groups(tree, names)
        self.groups = {
            name: ds for name, ds in groups(tree, chosen).items() if "position" in ds.data_vars
        }
        if not self.groups:
            raise AnalysisError("no particle group with positions to draw")
        if projection not in PROJECTIONS:
            raise AnalysisError(
                f"unknown projection {projection!r}; known projections: {', '.join(PROJECTIONS)}"
            )
        dims = {int(ds.sizes["spatial"]) for ds in self.groups.values()}
        if len(dims) != 1:
            raise AnalysisError(f"groups live in spaces of different dimension: {sorted(dims)}")
        self.dim = dims.pop()
        self.axis = next(
            (
                ds["time"]
                for ds in self.groups.values()
                if any("time" in ds[v].dims for v in ("position", "charge") if v in ds)
            ),
            None,
        )
        self.n_frames = 1 if self.axis is None else int(self.axis.sizes["time"])
        mode = projection
        if mode == "auto":
            mode = {1: "1d", 2: "2d", 3: "3d"}.get(self.dim, "pca")
        if mode in ("2d", "pca") and self.dim < 2:
            raise AnalysisError(f"projection {projection!r} needs D >= 2, positions have D = 1")
        if mode == "3d" and self.dim < 3:
            raise AnalysisError(f"projection '3d' needs D >= 3, positions have D = {self.dim}")
        self.mode = mode
        self.frames = self._check_frames(frames)
        self._rows: dict[tuple[str, str], np.ndarray | None] = {}
        self.mean = np.zeros(self.dim)
        self.basis: np.ndarray | None = None
        self.explained: np.ndarray | None = None
        if mode == "pca":
            self._fit_pca()

    def _fit_pca(self) -> None:
        """Principal axes of the positions of every group at every drawn frame, streamed.

        A running mean and D × D scatter matrix (Chan et al.'s pairwise update)
        stand in for the pooled points; the axes are its leading eigenvectors,
        each signed so that its largest component is positive.
        """
        count, mean, scatter = 0, np.zeros(self.dim), np.zeros((self.dim, self.dim))
        for name in self.groups:
            for points in self.each(name, "position"):
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
        basis = vectors[:, :2]
        signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
        self.basis = basis * np.where(signs == 0, 1.0, signs)
        self.explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)

    def _check_frames(self, frames: Sequence[int] | slice | None) -> list[int]:
        if frames is None:
            return list(range(self.n_frames))
        if isinstance(frames, slice):
            frames = list(range(self.n_frames)[frames])
        out = []
        for f in frames:
            if not -self.n_frames <= f < self.n_frames:
                raise AnalysisError(
                    f"frame {f} out of range: the trajectory has {self.n_frames} frames "
                    f"(0…{self.n_frames - 1}, or -1 for the last)"
                )
            out.append(f % self.n_frames)
        if not out:
            raise AnalysisError("no frames selected")
        return out

    def _field(self, name: str, var: str) -> xr.DataArray:
        da = self.groups[name][var]
        return da.isel(channel=0) if "channel" in da.dims else da

    def _row_of(self, name: str, var: str) -> np.ndarray | None:
        """Row of ``var`` of group ``name`` at each frame of the axis (None: no time)."""
        key = (name, var)
        if key not in self._rows:
            da = self._field(name, var)
            if "time" not in da.dims or self.axis is None:
                self._rows[key] = None
            elif "step" in da.coords and "step" in self.axis.coords:  # the nearest step
                index = da.swap_dims(time="step").indexes["step"]
                self._rows[key] = index.get_indexer(self.axis["step"].values, method="nearest")
            else:
                index = da.indexes["time"]
                self._rows[key] = index.get_indexer(self.axis.values, method="nearest")
        return self._rows[key]

    def _order(self, var: str) -> tuple[str, ...]:
        return ("particle", "spatial") if var == "position" else ("particle",)

    def _read(self, name: str, var: str, frame: int) -> np.ndarray:
        da, rows = self._field(name, var), self._row_of(name, var)
        if rows is not None:
            da = da.isel(time=int(rows[frame]))
        return np.asarray(da.transpose(*self._order(var)).values, dtype=np.float64)

    def each(self, name: str, var: str) -> Iterator[np.ndarray]:
        """``var`` of group ``name`` at each drawn frame, read a slice of frames at a time."""
        rows = self._row_of(name, var)
        wanted = np.zeros(len(self.frames), dtype=np.int64)
        if rows is not None:
            wanted = rows[np.asarray(self.frames, dtype=np.int64)]
        for values in read_rows(self._field(name, var), wanted, self._order(var)):
            yield np.asarray(values, dtype=np.float64)

    def positions(self, name: str, frame: int) -> np.ndarray:
        return self._read(name, "position", frame)

    def charges(self, name: str, frame: int) -> np.ndarray | None:
        if "charge" not in self.groups[name].data_vars:
            return None
        return self._read(name, "charge", frame)

    def multichannel(self) -> bool:
        return any(
            "charge" in ds.data_vars and "channel" in ds["charge"].dims
            for ds in self.groups.values()
        )

    def project(self, name: str, points: np.ndarray) -> np.ndarray:
        """Page coordinates ``[N, 2]`` (``[N, 3]`` in 3d)."""
        if self.mode == "1d":
            level = list(self.groups).index(name)
            return np.column_stack([points[:, 0], np.full(len(points), float(level))])
        if self.mode == "2d":
            return points[:, :2]
        if self.mode == "3d":
            return points[:, :3]
        return (points - self.mean) @ self.basis

    def labels(self) -> list[str]:
        if self.mode == "1d":
            return ["x0", "group"]
        if self.mode == "pca":
            return [f"PC{i + 1} ({100 * e:.0f}%)" for i, e in enumerate(self.explained)]
        return [f"x{i}" for i in range(3 if self.mode == "3d" else 2)]

    def title(self, frame: int) -> str:
        if self.axis is None:
            return "positions"
        t = float(self.axis.values[frame])
        if "step" in self.axis.coords:
            return f"step {int(self.axis['step'].values[frame])} (t = {t:g})"
        return f"t = {t:g}"

    def charge_norm(self) -> Normalize | None:
        top = 0.0
        found = False
        for name in self.groups:
            if "charge" not in self.groups[name].data_vars:
                continue
            for q in self.each(name, "charge"):
                if q.size:
                    found = True
                    top = max(top, float(np.nanmax(np.abs(q))))
        if not found:
            return None
        top = top if top > 0 else 1.0
        return Normalize(-top, top)

    def limits(self) -> list[tuple[float, float]]:
        lo = hi = None
        width = 3 if self.mode == "3d" else 2
        for name in self.groups:
            for points in self.each(name, "position"):
                if not len(points):
                    continue
                pts = self.project(name, points)
                low, high = pts.min(axis=0), pts.max(axis=0)
                lo = low if lo is None else np.minimum(lo, low)
                hi = high if hi is None else np.maximum(hi, high)
        if lo is None or hi is None:  # no particle anywhere: numpy's own error
            lo = hi = np.empty((0, width)).min(axis=0)
        pad = np.maximum(0.05 * (hi - lo), 0.05)
        if self.mode == "1d":
            return [(lo[0] - pad[0], hi[0] + pad[0]), (-0.5, len(self.groups) - 0.5)]
        lo, hi = lo - pad, hi + pad
        if self.mode in ("2d", "pca"):  # equal aspect: one span for both axes
            centre, half = (lo + hi) / 2, (hi - lo).max() / 2
            lo, hi = centre - half, centre + half
        return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _draw(
    fig: Figure | SubFigure, scene: _Scene, frame: int
) -> tuple[Any, dict[str, Any], Callable[[int], None]]:
    """Draw frame ``frame`` into ``fig``; return the axis, the artists and an updater."""
    three = scene.mode == "3d"
    ax = fig.add_subplot(projection="3d" if three else None)
    norm = scene.charge_norm()
    artists: dict[str, Any] = {}
    for i, name in enumerate(scene.groups):
        pts = scene.project(name, scene.positions(name, frame))
        q = scene.charges(name, frame)
        n = len(pts)
        kwargs: dict[str, Any] = {
            "s": float(np.clip(3000 / max(n, 1), 4, 40)),
            "marker": MARKERS[i % len(MARKERS)],
            "label": f"{name} ({n})",
            "edgecolors": "0.2",
            "linewidths": 0.3,
        }
        if q is not None:
            kwargs.update(c=q, cmap=CMAP, norm=norm)
        else:
            kwargs.update(color=FROZEN_COLOR)
        artists[name] = ax.scatter(*pts.T, **kwargs)
    labels = scene.labels()
    limits = scene.limits()
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    if three:
        ax.set_zlabel(labels[2])
        ax.set_zlim(*limits[2])
    elif scene.mode == "1d":
        ax.set_yticks(range(len(scene.groups)), list(scene.groups))
    else:
        ax.set_aspect("equal", adjustable="box")
    legend = ax.legend(loc="upper right", fontsize=8, markerscale=0.8, framealpha=0.7)
    for handle in legend.legend_handles:  # markers name the group; colour is per particle
        handle.set_facecolor(FROZEN_COLOR)
    if norm is not None:
        label = "charge (channel 0)" if scene.multichannel() else "charge"
        fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), ax=ax, label=label, shrink=0.85)
    ax.set_title(scene.title(frame))

    def update(index: int) -> None:
        f = scene.frames[index]
        for name, artist in artists.items():
            pts = scene.project(name, scene.positions(name, f))
            artist.set_offsets(pts[:, :2])
            if three:
                artist.set_3d_properties(pts[:, 2], "z")
            q = scene.charges(name, f)
            if q is not None:
                artist.set_array(q)
        ax.set_title(scene.title(f))

    return ax, artists, update


def plot_positions(
    tree: xr.DataTree,
    frame: int = -1,
    groups: Sequence[str] | None = None,
    projection: Projection = "auto",
    *,
    fig: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """Particles of each group at one frame, coloured by charge (first channel).

    Args:
        frame: index into the time axis of the first moving group (-1: last).
        groups: groups to draw (default: all with positions).
        projection: ``"auto"`` picks by D: D = 2 as is, D = 3 on a 3D axis,
            D > 3 projected on the two principal axes (``"pca"``); ``"2d"``
            and ``"3d"`` take the first coordinates. D = 1 draws one row per group.
        fig: draw into this Figure or SubFigure instead of a new one.
    """
    scene = _Scene(tree, groups, projection, frames=[frame])
    if fig is None:
        fig = new_figure(figsize=(6.4, 5.2), layout="constrained")
    _draw(fig, scene, scene.frames[0])
    return fig


def plot_summary(
    tree: xr.DataTree,
    frame: int = -1,
    groups: Sequence[str] | None = None,
    projection: Projection = "auto",
) -> Figure:
    """Observables (left) next to positions at ``frame`` (right), one Figure."""
    n_obs = len(observables(tree).data_vars)
    if n_obs == 0:
        return plot_positions(tree, frame, groups, projection)
    ncols = min(3, n_obs)
    fig = new_figure(
        figsize=(4.2 * ncols + 6.4, max(5.2, 2.9 * math.ceil(n_obs / ncols))),
        layout="constrained",
    )
    left, right = fig.subfigures(1, 2, width_ratios=[4.2 * ncols, 6.4])
    plot_positions(tree, frame, groups, projection, fig=right)
    plot_observables(tree, fig=left)
    return fig


# --- animation ----------------------------------------------------------------------------


class GifStreamWriter(AbstractMovieWriter):
    """Write a ``.gif`` a frame at a time, holding one image.

    matplotlib's ``PillowWriter`` keeps every frame until the end (an RGB image
    each, about 1 MB at the default size), so memory grows with the animation's
    length. Here each frame is reduced to its own 256-colour palette (as Pillow
    does when it saves a GIF) and appended to the file at once, with its palette
    as a local colour table; the file ends with the GIF trailer in ``finish``.
    """

    def setup(self, fig: Figure, outfile: str | Path, dpi: float | None = None) -> None:
        super().setup(fig, outfile, dpi=dpi)
        self._handle = open(outfile, "wb")  # noqa: SIM115 (closed in finish)
        self._count = 0

    def grab_frame(self, **savefig_kwargs: Any) -> None:
        from PIL import GifImagePlugin, Image

        buffer = BytesIO()
        self.fig.savefig(buffer, **{**savefig_kwargs, "format": "rgba", "dpi": self.dpi})
        rgba = Image.frombuffer("RGBA", self.frame_size, buffer.getbuffer(), "raw", "RGBA", 0, 1)
        image = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
        duration = int(1000 / self.fps)
        if self._count == 0:
            header, _ = GifImagePlugin.getheader(image, info={"loop": 0, "duration": duration})
            self._handle.write(b"".join(header))
        for data in GifImagePlugin.getdata(image, duration=duration, include_color_table=True):
            self._handle.write(data)
        self._handle.flush()  # on disk frame by frame, as ffmpeg's pipe would have it
        self._count += 1

    def finish(self) -> None:
        if not self._handle.closed:
            self._handle.write(b";")  # the GIF trailer
            self._handle.close()


def check_animation_path(out_path: str | Path) -> str:
    """The writer for ``out_path``: ``"pillow"`` (.gif) or ``"ffmpeg"`` (.mp4), or an error."""
    suffix = Path(out_path).suffix.lower()
    if suffix == ".gif":
        return "pillow"
    if suffix == ".mp4":
        if shutil.which("ffmpeg") is None:
            raise AnalysisError(
                f"writing {Path(out_path).name} needs ffmpeg, which is not on PATH; "
                "install it or write a .gif instead"
            )
        return "ffmpeg"
    raise AnalysisError(
        f"unsupported animation format {suffix or '(none)'!r} for {out_path}; "
        f"use one of: {', '.join(ANIMATION_SUFFIXES)}"
    )


def animate(
    tree: xr.DataTree,
    out_path: str | Path,
    *,
    groups: Sequence[str] | None = None,
    frames: Sequence[int] | slice | None = None,
    fps: int = 10,
    progress: bool | Callable[[int, int], None] = True,
    projection: Projection = "auto",
    dpi: int = 90,
) -> Path:
    """Animate the neurons moving (and recharging) over training; write a .gif or .mp4.

    One figure is drawn and then updated frame by frame by
    ``matplotlib.animation.FuncAnimation``; axis limits, the colour scale and
    (for D > 3) the PCA projection are fixed over all frames so motion is
    real motion. ``.gif`` is written a frame at a time with Pillow
    (:class:`GifStreamWriter`); ``.mp4`` needs ``ffmpeg`` on PATH. Memory holds
    one frame of each group and one image, whatever the number of frames.

    Args:
        frames: indices into the frame axis, or a slice (``slice(None, None, 5)``:
            every 5th); default all.
        fps: frames per second of the output.
        progress: show a rich progress bar on stderr, or a callable
            ``(frame_index, total)`` forwarded to ``Animation.save``.

    Returns:
        The written path.
    """
    from matplotlib.animation import FFMpegWriter, FuncAnimation

    out_path = Path(out_path)
    kind = check_animation_path(out_path)
    if fps < 1:
        raise AnalysisError(f"fps must be a positive integer, got {fps}")
    scene = _Scene(tree, groups, projection, frames=frames)
    fig = new_figure(figsize=(6.4, 5.2), dpi=dpi, layout="constrained")
    _, _, update = _draw(fig, scene, scene.frames[0])
    fig.canvas.draw()  # lay out once; then freeze it, so axes stay put and frames are cheap
    fig.set_layout_engine("none")
    anim = FuncAnimation(fig, update, frames=len(scene.frames), blit=False, repeat=False)
    writer = GifStreamWriter(fps=fps) if kind == "pillow" else FFMpegWriter(fps=fps)
    if callable(progress):
        anim.save(out_path, writer=writer, dpi=dpi, progress_callback=progress)
    elif progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=sys.stderr)
        with Progress(
            TextColumn(f"[bold]{out_path.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("frames", total=len(scene.frames))
            anim.save(
                out_path,
                writer=writer,
                dpi=dpi,
                progress_callback=lambda i, n: bar.update(task, completed=i + 1, total=n),
            )
    else:
        anim.save(out_path, writer=writer, dpi=dpi)
    return out_path


__all__ = [
    "ANIMATION_SUFFIXES",
    "PROJECTIONS",
    "GifStreamWriter",
    "animate",
    "check_animation_path",
    "new_figure",
    "plot_observables",
    "plot_positions",
    "plot_summary",
]
