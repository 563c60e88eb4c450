"""Figures and animations of a trajectory: observables, each group's particles, the network.

Every figure is a :class:`matplotlib.figure.Figure` drawn on an Agg canvas, never through
``pyplot``, so nothing leaks between calls (no global current figure, no GUI backend needed).
What is drawn comes from a :class:`~particlesim.analysis.scene.Scene`:

- **positions**: one panel per group, D = 1 on a line, D = 2 as is, D > 2 on the group's own
  two principal axes fitted over the run's frames (so frames are comparable); particles
  coloured by charge on a symmetric scale of their group, or by any per-particle field; a
  colour bar per group; the figure titled with the run's name, step and epoch;
- **network**: the groups as layers left to right, each particle at its group's first
  principal coordinate, with the strongest ``|W|`` of each recorded interaction as edges (red
  positive, blue negative, opacity by strength) at the connectivity frame nearest the step;
- **observables**: one panel per observable against the step at which it was recorded.

Panels are laid out in rows that each span the figure's width, so a grid never has an empty
slot; text is 9-13 pt, readable at 100 % zoom at the default resolution.

**Bounded memory.** Nothing here loads a whole history: positions and fields are read a slice
of frames at a time (:mod:`particlesim.analysis.stream`, ``PARTICLESIM_SLICE_BYTES``, default
64 MiB) to fit the projections and colour scales, and one frame at a time to draw; a weight
matrix a block of rows at a time; an observable is read whole when it has at most
:data:`MAX_PLOT_VALUES` values, else a slice at a time and drawn as the min/max envelope of
:data:`MAX_PLOT_VALUES` / 2 buckets. A ``.gif`` is written a frame at a time
(:class:`GifStreamWriter`), an ``.mp4`` through ffmpeg's pipe: the animation holds one image,
not one per frame.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable, Sequence
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import rc_context
from matplotlib.animation import AbstractMovieWriter
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from particlesim.analysis.scene import (
    NETWORK_EDGES,
    PROJECTIONS,
    ColourScale,
    Projection,
    Scene,
    every_frames,
    series,
)
from particlesim.analysis.tree import (
    AnalysisError,
    observables,
    step_coord,
    time_dim,
    unknown,
)

ANIMATION_SUFFIXES = (".gif", ".mp4")
#: Diverging map for symmetric scales (charges), sequential map for the others.
CMAP = "coolwarm"
SEQUENTIAL_CMAP = "viridis"
FROZEN_COLOR = "0.55"
POSITIVE_COLOR = "#b2182b"
NEGATIVE_COLOR = "#2166ac"
#: Values of one observable drawn as they are; a longer one is drawn as a min/max envelope.
MAX_PLOT_VALUES = 2_000_000
#: Panels in one row: observables, groups.
OBSERVABLE_COLUMNS = 5
GROUP_COLUMNS = 4
#: Inches of one panel (width, height): observables, groups, the network's height.
OBSERVABLE_PANEL = (3.4, 2.6)
GROUP_PANEL = (3.9, 3.5)
NETWORK_HEIGHT = 4.4
#: Text sizes (points): readable at 100 % zoom at 100-120 dpi.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
}


def new_figure(**kwargs: Any) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _row_counts(n: int, max_cols: int) -> list[int]:
    """Panels per row for ``n`` panels, at most ``max_cols`` a row, rows as even as can be."""
    if n <= 0:
        return []
    rows = math.ceil(n / max_cols)
    base, extra = divmod(n, rows)
    return [base + 1] * extra + [base] * (rows - extra)


def panel_grid(
    fig: Figure | SubFigure,
    n: int,
    max_cols: int,
    projections: Sequence[str | None] | None = None,
) -> list[Axes]:
    """``n`` axes in rows of at most ``max_cols``, each row spanning the whole width.

    A short last row gets wider panels instead of empty slots (5 panels: 3 + 2).
    """
    counts = _row_counts(n, max_cols)
    if not counts:
        return []
    grid = fig.add_gridspec(len(counts), 1)
    axes: list[Axes] = []
    for r, k in enumerate(counts):
        sub = grid[r].subgridspec(1, k)
        for j in range(k):
            projection = projections[len(axes)] if projections else None
            axes.append(fig.add_subplot(sub[0, j], projection=projection))
    return axes


def _tidy(ax: Axes) -> None:
    """Tick labels at the style's size (stored on the axis, so later draws keep it)."""
    ax.tick_params(labelsize=STYLE["xtick.labelsize"])


# --- observables --------------------------------------------------------------------------


def plot_observables(
    tree: xr.DataTree,
    names: Sequence[str] | None = None,
    *,
    fig: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """One panel per observable, plotted against the step at which it was recorded.

    Each observable uses its own time axis (``step`` or ``step_<k>``), so a loss recorded
    every step and a test accuracy recorded every epoch are both drawn where they were
    measured. Vector observables give one line per component. The y label carries the
    variable's ``unit`` attr. Rows hold at most :data:`OBSERVABLE_COLUMNS` panels and span
    the width (no empty slot).

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
    counts = _row_counts(len(chosen), OBSERVABLE_COLUMNS)
    with rc_context(STYLE):
        if fig is None:
            width, height = OBSERVABLE_PANEL
            fig = new_figure(
                figsize=(width * max(counts), height * len(counts)), layout="constrained"
            )
        axes = panel_grid(fig, len(chosen), OBSERVABLE_COLUMNS)
        for ax, name in zip(axes, chosen, strict=True):
            da = obs[name]
            dim = time_dim(da)
            if dim is None:
                values = np.atleast_1d(np.asarray(da.values, dtype=np.float64)).reshape(1, -1)
                x = np.zeros(1)
            else:
                x, values = series(da, dim, step_coord(obs, dim), MAX_PLOT_VALUES)
            style = "o-" if values.shape[0] <= 30 else "-"
            ax.plot(x, values, style, markersize=3, linewidth=1.2)
            ax.set_title(name)
            ax.set_xlabel("step")
            unit = da.attrs.get("unit") or da.attrs.get("units")
            if unit:
                ax.set_ylabel(str(unit))
            ax.grid(alpha=0.3)
            _tidy(ax)
    return fig


# --- positions ----------------------------------------------------------------------------


def _cmap(scale: ColourScale) -> str:
    return CMAP if scale.symmetric else SEQUENTIAL_CMAP


def _marker_size(n: int, scale: float = 2500.0) -> float:
    """Marker area (pt²) for ``n`` particles in one panel: large for few, small for many."""
    return float(np.clip(scale / max(n, 1), 6, 60))


def _edges(n: int) -> dict[str, Any]:
    """Thin dark outlines for a few markers; none for many (they would hide the colours)."""
    return {"edgecolors": "0.25", "linewidths": 0.3 if n < 100 else 0.0}


def draw_positions(
    fig: Figure | SubFigure, scene: Scene, frame: int
) -> tuple[list[Axes], Callable[[int], None]]:
    """One panel per group at ``frame`` (with its colour bar); return the panels and an updater.

    The updater redraws the points (and colours) at another frame of the scene, for
    animations: limits, projections and colour scales stay as fitted.
    """
    names = list(scene.groups)
    projections = ["3d" if scene.groups[n].mode == "3d" else None for n in names]
    axes = panel_grid(fig, len(names), GROUP_COLUMNS, projections)
    artists: dict[str, Any] = {}
    for ax, name in zip(axes, names, strict=True):
        group = scene.groups[name]
        three = group.mode == "3d"
        page = group.page(scene.positions(name, frame))
        values = scene.colours(name, frame)
        kwargs: dict[str, Any] = {
            "s": _marker_size(group.n),
            **_edges(group.n),
        }
        scale = group.colour
        if values is not None and scale is not None:
            norm = Normalize(scale.lo, scale.hi)
            kwargs.update(c=values, cmap=_cmap(scale), norm=norm)
        else:
            kwargs.update(color=FROZEN_COLOR)
        artists[name] = ax.scatter(*page.T, **kwargs)
        labels, limits = group.labels(), group.limits
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        if three:
            ax.set_zlabel(labels[2])
            ax.set_zlim(*limits[2])
        elif group.mode == "1d":
            ax.set_yticks([])
            ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
        else:
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(group.describe().replace(", ", "\n", 1))  # two short lines
        _tidy(ax)
        if scale is not None:
            fig.colorbar(
                ScalarMappable(norm=Normalize(scale.lo, scale.hi), cmap=_cmap(scale)),
                ax=ax,
                label=scale.label,
                shrink=0.8,
                pad=0.02,
            )

    def update(target: int) -> None:
        for name, artist in artists.items():
            group = scene.groups[name]
            page = group.page(scene.positions(name, target))
            artist.set_offsets(page[:, :2])
            if group.mode == "3d":
                artist.set_3d_properties(page[:, 2], "z")
            values = scene.colours(name, target)
            if values is not None and group.colour is not None:
                artist.set_array(values)

    return axes, update


def plot_positions(
    tree: xr.DataTree,
    frame: int = -1,
    groups: Sequence[str] | None = None,
    projection: Projection = "auto",
    *,
    color: str | None = "charge",
    fig: Figure | SubFigure | None = None,
    scene: Scene | None = None,
) -> Figure | SubFigure:
    """The particles of each group at one frame, each group in its own panel.

    Args:
        frame: index into the time axis of the first moving group (-1: last).
        groups: groups to draw (default: all with positions).
        projection: ``"auto"``: D = 1 on a line, D = 2 as is, D > 2 on the group's two
            principal axes fitted over the run; ``"2d"``/``"3d"`` take the first
            coordinates; ``"pca"`` always projects.
        color: per-particle field to colour by (default ``"charge"``, symmetric scale per
            group; ``None``: grey).
        fig: draw into this Figure or SubFigure instead of a new one.
        scene: a Scene already fitted (the other arguments are then ignored).
    """
    scene = scene or Scene(tree, groups, projection, frames=[frame], colour=color)
    frame = scene.frames[0]
    counts = _row_counts(len(scene.groups), GROUP_COLUMNS)
    with rc_context(STYLE):
        if fig is None:
            width, height = GROUP_PANEL
            fig = new_figure(
                figsize=(width * max(counts), height * len(counts) + 0.4), layout="constrained"
            )
        draw_positions(fig, scene, frame)
        fig.suptitle(scene.title(frame))
    return fig


# --- network ------------------------------------------------------------------------------


def draw_network(ax: Axes, scene: Scene, frame: int, edges: int = NETWORK_EDGES) -> dict[str, Any]:
    """The groups as layers left to right with the strongest weights as edges, into ``ax``.

    Returns what was drawn: ``{"nodes": {group: PathCollection}, "edges": LineCollection,
    "kept": [Edges, …]}``.
    """
    order = scene.layer_order()
    layer = {name: i for i, name in enumerate(order)}
    lines = {name: scene.groups[name].line(scene.positions(name, frame)) for name in order}
    kept = scene.edges(frame, edges)
    segments, colours, widths = [], [], []
    for e in kept:
        if not len(e.weight):
            continue
        strength = np.abs(e.weight) / max(float(np.abs(e.weight).max()), 1e-300)
        x0, x1 = layer[e.source_group], layer[e.target_group]
        y0, y1 = lines[e.source_group][e.source], lines[e.target_group][e.target]
        start = np.column_stack([np.full_like(y0, x0), y0])
        end = np.column_stack([np.full_like(y1, x1), y1])
        segments.extend(np.stack([start, end], axis=1))
        for w, s in zip(e.weight, strength, strict=True):
            colours.append(to_rgba(POSITIVE_COLOR if w > 0 else NEGATIVE_COLOR, 0.08 + 0.8 * s))
            widths.append(0.3 + 1.4 * s)
    collection = LineCollection(segments, colors=colours, linewidths=widths, zorder=1)
    ax.add_collection(collection)
    nodes = {}
    first_scale: ColourScale | None = None
    for name in order:
        group = scene.groups[name]
        y = lines[name]
        values = scene.colours(name, frame)
        kwargs: dict[str, Any] = {
            "s": _marker_size(group.n, 900.0),
            **_edges(group.n),
            "zorder": 2,
        }
        if values is not None and group.colour is not None:
            scale = group.colour
            first_scale = first_scale or scale
            lo = -1.0 if scale.symmetric else 0.0
            kwargs.update(c=scale.unit(values), cmap=_cmap(scale), norm=Normalize(lo, 1.0))
        else:
            kwargs.update(color=FROZEN_COLOR)
        nodes[name] = ax.scatter(np.full(len(y), float(layer[name])), y, **kwargs)
    ax.set_xticks(range(len(order)), [f"{n}\n{scene.groups[n].n}" for n in order])
    ax.set_xlim(-0.4, len(order) - 0.6)
    ax.set_ylim(-1.12, 1.12)
    ax.set_ylabel("first principal coordinate\n(scaled per group)")
    steps = sorted({e.step for e in kept})
    if kept:
        at = ", ".join(map(str, steps))
        title = f"network: the {edges} strongest |W| of each interaction, weights at step {at}"
        ax.legend(
            handles=[
                Line2D([], [], color=POSITIVE_COLOR, label="W > 0"),
                Line2D([], [], color=NEGATIVE_COLOR, label="W < 0"),
            ],
            loc="upper right",
            framealpha=0.8,
        )
    else:
        title = "network: no connectivity recorded between these groups"
    ax.set_title(title)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    _tidy(ax)
    if first_scale is not None:
        symmetric = first_scale.symmetric
        label = (
            f"{first_scale.label} ÷ max |{first_scale.field}| of its group"
            if symmetric
            else f"{first_scale.label}, each group from its min to its max"
        )
        ax.figure.colorbar(
            ScalarMappable(Normalize(-1.0 if symmetric else 0.0, 1.0), _cmap(first_scale)),
            ax=ax,
            label=label,
            shrink=0.85,
            pad=0.01,
        )
    return {"nodes": nodes, "edges": collection, "kept": kept}


def plot_network(
    tree: xr.DataTree,
    frame: int = -1,
    groups: Sequence[str] | None = None,
    *,
    color: str | None = "charge",
    edges: int = NETWORK_EDGES,
    fig: Figure | SubFigure | None = None,
    scene: Scene | None = None,
) -> Figure | SubFigure:
    """The network at one frame: groups as layers (left to right), edges for the strongest |W|.

    Args:
        frame: index into the frame axis (-1: last); the weights are those of the
            connectivity frame nearest its step.
        groups: groups to draw (default: all with positions).
        color: per-particle field colouring the nodes, each group on its own scale.
        edges: how many of the strongest weights of each interaction to draw.
    """
    scene = scene or Scene(tree, groups, "auto", frames=[frame], colour=color)
    frame = scene.frames[0]
    with rc_context(STYLE):
        if fig is None:
            fig = new_figure(
                figsize=(max(8.0, 2.6 * len(scene.groups) + 2.0), NETWORK_HEIGHT + 0.4),
                layout="constrained",
            )
        ax = fig.add_subplot()
        draw_network(ax, scene, frame, edges)
        fig.suptitle(scene.title(frame))
    return fig


# --- everything ---------------------------------------------------------------------------

#: What ``plot_summary`` can draw, top to bottom.
PARTS = ("observables", "positions", "network")


def plot_summary(
    tree: xr.DataTree,
    frame: int = -1,
    groups: Sequence[str] | None = None,
    projection: Projection = "auto",
    *,
    color: str | None = "charge",
    edges: int = NETWORK_EDGES,
    parts: Sequence[str] = PARTS,
    names: Sequence[str] | None = None,
) -> Figure:
    """Observables, each group's positions and the network at ``frame``, one Figure.

    Blocks top to bottom: the observables (``names``, default all), the position panels and
    the network view, each block's rows spanning the width. A block with nothing to show
    (no observables recorded, no connectivity between the drawn groups) is left out rather
    than drawn empty. The figure is titled with the run's name, step and epoch.
    """
    for part in parts:
        if part not in PARTS:
            raise AnalysisError(unknown("part", part, PARTS))
    scene = Scene(tree, groups, projection, frames=[frame], colour=color)
    frame = scene.frames[0]
    blocks: list[tuple[str, float, float]] = []  # (part, width, height) in inches
    if "observables" in parts and (names or len(observables(tree).data_vars)):
        n_obs = len(names) if names else len(observables(tree).data_vars)
        counts = _row_counts(n_obs, OBSERVABLE_COLUMNS)
        blocks.append(("observables", 3.0 * max(counts), OBSERVABLE_PANEL[1] * len(counts)))
    if "positions" in parts:
        counts = _row_counts(len(scene.groups), GROUP_COLUMNS)
        blocks.append(("positions", GROUP_PANEL[0] * max(counts), GROUP_PANEL[1] * len(counts)))
    if "network" in parts and scene.recorded():
        blocks.append(("network", 2.6 * len(scene.groups) + 2.0, NETWORK_HEIGHT))
    if not blocks:
        raise AnalysisError("nothing to draw: no observables, positions or connectivity")
    width = max(8.0, max(b[1] for b in blocks))
    heights = [b[2] for b in blocks]
    with rc_context(STYLE):
        fig = new_figure(figsize=(width, sum(heights) + 0.5), layout="constrained")
        subs = fig.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
        for (part, _, _), sub in zip(blocks, subs, strict=True):
            if part == "observables":
                plot_observables(tree, names, fig=sub)
            elif part == "positions":
                draw_positions(sub, scene, frame)
            else:
                draw_network(sub.add_subplot(), scene, frame, edges)
        title = scene.title(frame) if parts != ("observables",) else scene.run_name
        fig.suptitle(title)
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
    frames: Sequence[int] | slice | Callable[[int], Sequence[int]] | None = None,
    every: int | None = None,
    fps: int = 10,
    progress: bool | Callable[[int, int], None] = True,
    projection: Projection = "auto",
    color: str | None = "charge",
    dpi: int = 90,
) -> Path:
    """Animate the neurons moving (and recharging) over training; write a .gif or .mp4.

    The figure is the one :func:`plot_positions` draws (a panel per group, its colour bar,
    the title with run, step and epoch), updated frame by frame by
    ``matplotlib.animation.FuncAnimation``; limits, colour scales and (for D > 2) the
    projections are fitted once over the run so motion is real motion. ``.gif`` is written
    a frame at a time with Pillow (:class:`GifStreamWriter`); ``.mp4`` needs ``ffmpeg`` on
    PATH. Memory holds one frame of each group and one image, whatever the number of frames.

    Args:
        frames: indices into the frame axis, or a slice; default all.
        every: every ``every``-th frame from the first, and the last one always (instead of
            ``frames``).
        fps: frames per second of the output.
        progress: show a rich progress bar on stderr, or a callable
            ``(frame_index, total)`` forwarded to ``Animation.save``.
        color: per-particle field to colour by (``None``: grey).

    Returns:
        The written path.
    """
    from matplotlib.animation import FFMpegWriter, FuncAnimation

    out_path = Path(out_path)
    kind = check_animation_path(out_path)
    if fps < 1:
        raise AnalysisError(f"fps must be a positive integer, got {fps}")
    if every is not None:
        if frames is not None:
            raise AnalysisError("give frames or every, not both")
        frames = partial(every_frames, every=every)  # of the scene's number of frames
    scene = Scene(tree, groups, projection, frames=frames, colour=color)
    counts = _row_counts(len(scene.groups), GROUP_COLUMNS)
    width, height = GROUP_PANEL
    with rc_context(STYLE):
        fig = new_figure(
            figsize=(width * max(counts), height * len(counts) + 0.4),
            dpi=dpi,
            layout="constrained",
        )
        _, redraw = draw_positions(fig, scene, scene.frames[0])
        title = fig.suptitle(scene.title(scene.frames[0]))
    fig.canvas.draw()  # lay out once; then freeze it, so axes stay put and frames are cheap
    fig.set_layout_engine("none")

    def update(index: int) -> None:
        frame = scene.frames[index]
        redraw(frame)
        title.set_text(scene.title(frame))

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
    "PARTS",
    "PROJECTIONS",
    "GifStreamWriter",
    "animate",
    "check_animation_path",
    "draw_network",
    "draw_positions",
    "new_figure",
    "panel_grid",
    "plot_network",
    "plot_observables",
    "plot_positions",
    "plot_summary",
]
