"""An interactive trajectory viewer: one self-contained HTML file, opened offline in a browser.

:func:`write_view` draws the same :class:`~particlesim.analysis.scene.Scene` as the static
figures, with plotly.js (embedded from the ``plotly`` package, so the page loads no script
from anywhere):

- a frame slider and a play/pause button;
- one panel per group (D = 1 on a line, D = 2 as is, D > 2 on the group's principal axes),
  coloured by charge or a chosen per-particle field, each with its colour bar; hovering a
  particle shows its group, index, charge (and ``id`` where neurons are relabelled) and its
  position (its coordinates for D ≤ 3, its principal coordinates for D > 3);
- the network view (groups as layers, the strongest ``|W|`` of each interaction at the
  connectivity frame nearest the current step), when connectivity was recorded;
- the loss and accuracy curves (else the first scalar observables) with a line at the
  current step.

**Bounded size.** The page holds at most :data:`MAX_FRAMES` frames (``max_frames``), fewer
when the groups are large, so that frames × particles stays at most :data:`POINT_BUDGET`;
they are spread evenly over the run, the first and the last always kept, and the page says
how many of how many it shows. Curves hold at most :data:`CURVE_POINTS` points each (a
min/max envelope beyond). Numbers are written with three significant digits of their largest
magnitude. For the main scenario (1,306 particles, 236 frames) that is 100 frames in
10.7 MB, 4.8 MB of it plotly.js.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from particlesim.analysis.scene import (
    NETWORK_EDGES,
    ColourScale,
    Edges,
    GroupScene,
    Scene,
    format_epoch,
    series,
    spread_frames,
)
from particlesim.analysis.tree import AnalysisError, observables, step_coord, time_dim

#: Frames a page holds at most (``max_frames``).
MAX_FRAMES = 100
#: Frames × particles a page holds at most (fewer frames for large groups).
POINT_BUDGET = 300_000
#: Points of one observable's curve at most (a min/max envelope beyond).
CURVE_POINTS = 2_000
#: Pixel heights of a row of group panels, of the network view and of the curves.
GROUP_ROW_PX = 380
NETWORK_PX = 420
CURVES_PX = 280
TOP_PX = 70
BOTTOM_PX = 90
GROUP_COLUMNS = 4
#: The id of the plot's element in the page (tests and scripts find the figure by it).
DIV_ID = "particlesim-view"
GREY = "rgb(140,140,140)"
#: matplotlib's coolwarm (the figures' diverging map), red for positive values.
COOLWARM = [
    [0.0, "rgb(59,76,192)"],
    [0.125, "rgb(98,130,234)"],
    [0.25, "rgb(141,176,254)"],
    [0.375, "rgb(185,208,249)"],
    [0.5, "rgb(221,220,220)"],
    [0.625, "rgb(245,196,172)"],
    [0.75, "rgb(244,152,122)"],
    [0.875, "rgb(221,95,75)"],
    [1.0, "rgb(180,4,38)"],
]
#: Colours of the curves (matplotlib's first four).
CURVE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
POSITIVE = "178,24,43"
NEGATIVE = "33,102,172"
#: Edge strength levels (|W| / max |W| of the interaction): upper bounds, widths, opacities.
LEVELS = ((1 / 3, 0.6, 0.25), (2 / 3, 1.2, 0.5), (1.0, 2.0, 0.85))


def _json(values: np.ndarray) -> list[Any]:
    """``values`` as a JSON-ready list, NaN and Inf as ``None`` (JSON has no such numbers)."""
    values = np.asarray(values, dtype=np.float64)
    out = values.tolist()
    finite = np.isfinite(values)
    if finite.all():
        return out
    if values.ndim == 1:
        return [v if ok else None for v, ok in zip(out, finite, strict=True)]
    return [_json(row) for row in values]


def _rounded(values: np.ndarray) -> np.ndarray:
    """``values`` with 3 significant digits of their largest magnitude (a smaller page)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    digits = 2 - math.floor(math.log10(top)) if top > 0 else 3
    return np.round(values, max(0, min(12, digits)))


def _numbers(values: np.ndarray) -> list[Any]:
    return _json(_rounded(values))


class _Frame:
    """What one frame shows, read once and shared by every trace that draws it."""

    def __init__(self, scene: Scene, frame: int, edges: int) -> None:
        self.scene = scene
        self.frame = frame
        self.limit = edges
        self._positions: dict[str, np.ndarray] = {}
        self._fields: dict[tuple[str, str], np.ndarray | None] = {}
        self._edges: list[Edges] | None = None

    def positions(self, name: str) -> np.ndarray:
        if name not in self._positions:
            self._positions[name] = self.scene.positions(name, self.frame)
        return self._positions[name]

    def field(self, name: str, var: str) -> np.ndarray:
        key = (name, var)
        if key not in self._fields:
            self._fields[key] = next(self.scene.each(name, var, [self.frame]))
        return self._fields[key]  # type: ignore[return-value]

    def colours(self, name: str) -> np.ndarray | None:
        colour = self.scene.colour
        if colour is None or self.scene.groups[name].colour is None:
            return None
        return self.field(name, colour)

    def line(self, name: str) -> np.ndarray:
        return self.scene.groups[name].line(self.positions(name))

    def edges(self) -> list[Edges]:
        if self._edges is None:
            self._edges = self.scene.edges(self.frame, self.limit) if self.limit else []
        return self._edges


Update = Callable[[_Frame], dict[str, Any]]


class _Page:
    """Panels placed row by row from the top (paper fractions), their axes and traces."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows  # pixel heights
        self.height = TOP_PX + sum(rows) + BOTTOM_PX
        self.layout: dict[str, Any] = {}
        self.data: list[dict[str, Any]] = []
        self.updates: list[Update | None] = []
        self.annotations: list[dict[str, Any]] = []
        self.count = 0

    def domain(self, row: int) -> list[float]:
        """The y domain of row ``row``, leaving room for the x labels and panel titles."""
        top = TOP_PX + sum(self.rows[:row]) + 26
        bottom = TOP_PX + sum(self.rows[: row + 1]) - 56
        return [1 - bottom / self.height, 1 - top / self.height]

    def axes(
        self,
        row: int,
        x0: float,
        x1: float,
        x: dict[str, Any],
        y: dict[str, Any],
        *,
        square: bool = False,
    ) -> tuple[str, str]:
        """New x/y axes over ``[x0, x1]`` of row ``row``; ``("x3", "y3")``."""
        self.count += 1
        suffix = "" if self.count == 1 else str(self.count)
        common = {"showgrid": True, "gridcolor": "#eee", "zeroline": False, "linecolor": "#888"}
        xaxis = {**common, "domain": [x0, x1], "anchor": f"y{suffix}", **x}
        yaxis = {**common, "domain": self.domain(row), "anchor": f"x{suffix}", **y}
        if square:  # equal aspect: the plotting area shrinks, the ranges stay
            xaxis["constrain"] = yaxis["constrain"] = "domain"
            yaxis["scaleanchor"] = f"x{suffix}"
        self.layout[f"xaxis{suffix}"] = xaxis
        self.layout[f"yaxis{suffix}"] = yaxis
        return f"x{suffix}", f"y{suffix}"

    def title(self, text: str, xaxis: str, row: int, *, escape: bool = True) -> None:
        """A bold title above the panel of ``xaxis`` (``text`` is HTML when not ``escape``)."""
        self.annotations.append(
            {
                "text": f"<b>{html.escape(text) if escape else text}</b>",
                "xref": f"{xaxis} domain",
                "yref": "paper",
                "x": 0.5,
                "y": self.domain(row)[1],
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 14},
            }
        )

    def add(self, trace: dict[str, Any], update: Update | None = None) -> None:
        self.data.append(trace)
        self.updates.append(update)


def _frame_limit(particles: int, max_frames: int) -> int:
    """Frames the page may hold: ``max_frames``, fewer when frames × particles would exceed."""
    return max(1, min(max_frames, POINT_BUDGET // max(1, particles)))


def build_view(
    tree: xr.DataTree,
    *,
    groups: Sequence[str] | None = None,
    color: str | None = "charge",
    max_frames: int = MAX_FRAMES,
    edges: int = NETWORK_EDGES,
    name: str | None = None,
) -> dict[str, Any]:
    """The viewer's plotly figure as a dict (``data``, ``layout``, ``frames``), unvalidated.

    Args:
        groups: groups to draw (default: every group with positions).
        color: per-particle field to colour by (default ``"charge"``; ``None``: grey).
        max_frames: most frames the page holds (see the module's note on size).
        edges: strongest weights kept per interaction in the network view (0: no network).
        name: the run's name in the title (default: the scenario's name in the file).
    """
    if max_frames < 1:
        raise AnalysisError(f"max_frames must be a positive integer, got {max_frames}")
    if edges < 0:
        raise AnalysisError(f"edges must be >= 0, got {edges}")
    probe = Scene(tree, groups, "auto", frames=[0], colour=None, name=name, fit=False)
    particles = sum(g.n for g in probe.groups.values())
    limit = _frame_limit(particles, max_frames)
    scene = Scene(
        tree, groups, "auto", frames=partial(spread_frames, limit=limit), colour=color, name=name
    )
    names = list(scene.groups)
    group_rows = [names[i : i + GROUP_COLUMNS] for i in range(0, len(names), GROUP_COLUMNS)]
    network = bool(edges) and bool(scene.recorded())
    curves = _curves(tree)
    heights = [GROUP_ROW_PX] * len(group_rows)
    heights += [NETWORK_PX] * network + [CURVES_PX] * bool(curves)
    page = _Page(heights)

    for r, row_names in enumerate(group_rows):
        width = 1.0 / len(row_names)
        for j, group_name in enumerate(row_names):
            _add_group(page, scene, scene.groups[group_name], r, j * width, (j + 1) * width)
    row = len(group_rows)
    if network:
        _add_network(page, scene, row, edges)
        row += 1
    if curves:
        _add_curves(page, scene, row, curves)

    def title(frame: _Frame) -> str:
        text = scene.title(frame.frame)
        steps = sorted({e.step for e in frame.edges()}) if network else []
        return text + (f" · weights at step {', '.join(map(str, steps))}" if steps else "")

    frames = []
    first_title = ""
    for i, index in enumerate(scene.frames):
        frame = _Frame(scene, index, edges if network else 0)
        traces = [k for k, update in enumerate(page.updates) if update is not None]
        changes = [page.updates[k](frame) for k in traces]  # type: ignore[misc]
        frames.append(
            {
                "name": str(i),
                "data": changes,
                "traces": traces,
                "layout": {"title": {"text": title(frame)}},
            }
        )
        if i == 0:  # the page opens on the first frame
            for k, change in zip(traces, changes, strict=True):
                _merge(page.data[k], change)
            first_title = title(frame)
    shown = len(scene.frames)
    note = f"{shown} of {scene.n_frames} frames" + (
        f", spread evenly with the first and the last (at most {max_frames} frames and "
        f"{POINT_BUDGET:,} frames × particles)"
        if shown < scene.n_frames
        else ""
    )
    if scene.colour:
        note += f"; colour: {scene.colour}, each group on its own scale"
    page.annotations.append(
        {
            "text": note,
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 1 - 50 / page.height,
            "yanchor": "middle",
            "showarrow": False,
            "font": {"size": 12, "color": "#555"},
        }
    )
    layout = {
        **page.layout,
        "height": page.height,
        "margin": {"l": 50, "r": 20, "t": 0, "b": 0},  # rows placed in pixels from the top
        "showlegend": False,
        "hovermode": "closest",
        "plot_bgcolor": "white",
        "font": {"size": 13},
        "title": {
            "text": first_title,
            "x": 0.5,
            "y": 1 - 22 / page.height,
            "yanchor": "middle",
            "font": {"size": 18},
        },
        "annotations": page.annotations,
        "sliders": [_slider(scene, page.height)],
        "updatemenus": [_buttons(page.height)],
    }
    return {"data": page.data, "layout": layout, "frames": frames}


def _slider(scene: Scene, height: int) -> dict[str, Any]:
    """The frame slider: one step per frame, labelled with its step (and epoch)."""
    steps = []
    for i, frame in enumerate(scene.frames):
        label = f"step {scene.step(frame)}"
        epoch = scene.epoch(frame)
        if epoch is not None:
            label += f" · epoch {format_epoch(epoch)}"
        steps.append(
            {
                "method": "animate",
                "label": label,
                "args": [
                    [str(i)],
                    {
                        "mode": "immediate",
                        "frame": {"duration": 0, "redraw": True},
                        "transition": {"duration": 0},
                    },
                ],
            }
        )
    return {
        "active": 0,
        "x": 0.12,
        "len": 0.86,
        "y": (BOTTOM_PX - 4) / height,
        "yanchor": "top",
        "pad": {"t": 0},
        "currentvalue": {"prefix": "", "font": {"size": 14}},
        "steps": steps,
    }


def _buttons(height: int) -> dict[str, Any]:
    """Play (from the current frame, 4 frames a second) and pause."""
    return {
        "type": "buttons",
        "direction": "left",
        "x": 0.0,
        "y": (BOTTOM_PX - 4) / height,
        "xanchor": "left",
        "yanchor": "top",
        "pad": {"t": 22, "r": 10},
        "showactive": False,
        "buttons": [
            {
                "label": "▶ play",
                "method": "animate",
                "args": [
                    None,
                    {
                        "frame": {"duration": 250, "redraw": True},
                        "transition": {"duration": 0},
                        "fromcurrent": True,
                    },
                ],
            },
            {
                "label": "❚❚ pause",
                "method": "animate",
                "args": [
                    [None],
                    {
                        "mode": "immediate",
                        "frame": {"duration": 0, "redraw": False},
                        "transition": {"duration": 0},
                    },
                ],
            },
        ],
    }


def _merge(target: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _colours(scale: ColourScale | None, unit: bool = False) -> dict[str, Any]:
    """Marker colour settings of a scale (``unit``: the network's per-group [-1, 1] or [0, 1])."""
    if scale is None:
        return {"color": GREY}
    lo, hi = (-1.0 if scale.symmetric else 0.0, 1.0) if unit else (scale.lo, scale.hi)
    return {"colorscale": COOLWARM if scale.symmetric else "Viridis", "cmin": lo, "cmax": hi}


def _hover(scene: Scene, group: GroupScene) -> tuple[str, list[str]]:
    """The group's hover template and the per-frame ``customdata`` columns it reads."""
    ds = group.ds
    columns: list[str] = []

    def column(key: str) -> str:
        columns.append(key)
        return f"customdata[{len(columns) - 1}]"

    lines = ["%{text}"]
    if scene.colour is not None and group.colour is not None:
        integer = ds[scene.colour].dtype.kind in "biu"
        lines.append(f"{scene.colour} %{{marker.color:{'.0f' if integer else '.4~g'}}}")
    if scene.colour != "charge" and "charge" in ds.data_vars:
        lines.append(f"charge %{{{column('charge')}:.4~g}}")
    if scene.colour != "id" and "id" in ds.data_vars and "particle" in ds["id"].dims:
        lines.append(f"id %{{{column('id')}:.0f}}")
    if group.dim == 1:
        lines.append("position %{x:.4~g}")
    elif group.dim == 2:
        lines.append("position (%{x:.4~g}, %{y:.4~g})")
    elif group.dim == 3:
        cells = ", ".join(f"%{{{column(f'x{i}')}:.4~g}}" for i in range(3))
        lines.append(f"position ({cells})")
    else:
        lines.append(f"position: PC1 %{{x:.4~g}}, PC2 %{{y:.4~g}} of {group.dim}-D")
    return "<br>".join(lines) + "<extra></extra>", columns


def _add_group(
    page: _Page, scene: Scene, group: GroupScene, row: int, x0: float, x1: float
) -> None:
    """A group's panel: its scatter trace (updated per frame) and colour bar."""
    labels, limits = group.labels(), group.limits
    x: dict[str, Any] = {"range": list(limits[0]), "title": {"text": labels[0]}}
    y: dict[str, Any] = {"range": list(limits[1]), "title": {"text": labels[1]}}
    if group.mode == "1d":
        y.update(showticklabels=False, showgrid=False)
    right = x1 - 0.075
    xa, ya = page.axes(row, x0 + 0.035, right, x, y, square=group.mode != "1d")
    page.title(group.describe(), xa, row)
    template, columns = _hover(scene, group)
    domain = page.domain(row)
    marker: dict[str, Any] = {
        "size": float(np.clip(60 / math.sqrt(max(group.n, 1)), 3, 11)),
        "line": {"width": 0.4 if group.n < 300 else 0, "color": "rgb(60,60,60)"},
        **_colours(group.colour),
    }
    if group.colour is not None:
        marker["colorbar"] = {
            "x": right + 0.008,
            "xanchor": "left",
            "y": (domain[0] + domain[1]) / 2,
            "yanchor": "middle",
            "len": (domain[1] - domain[0]) * 0.95,
            "thickness": 12,
            "title": {"text": group.colour.label, "side": "right"},
        }
    trace = {
        "type": "scatter",
        "mode": "markers",
        "name": group.name,
        "x": [],
        "y": [],
        "xaxis": xa,
        "yaxis": ya,
        "text": [f"{group.name} #{i}" for i in range(group.n)],
        "hovertemplate": template,
        "marker": marker,
    }

    def update(frame: _Frame) -> dict[str, Any]:
        points = frame.positions(group.name)
        xy = group.page(points)
        change: dict[str, Any] = {"x": _numbers(xy[:, 0]), "y": _numbers(xy[:, 1])}
        values = frame.colours(group.name)
        if values is not None:
            change["marker"] = {"color": _numbers(values)}
        if columns:
            cells = [
                _rounded(points[:, int(key[1:])])
                if key.startswith("x")
                else _rounded(frame.field(group.name, key))
                for key in columns
            ]
            change["customdata"] = _json(np.column_stack(cells))
        return change

    page.add(trace, update)


def _add_network(page: _Page, scene: Scene, row: int, limit: int) -> None:
    """The network panel: edge traces by sign and strength, then each group's nodes."""
    order = scene.layer_order()
    layer = {n: i for i, n in enumerate(order)}
    xa, ya = page.axes(
        row,
        0.035,
        0.92,
        {
            "range": [-0.4, len(order) - 0.6],
            "tickvals": list(range(len(order))),
            "ticktext": [f"{n} ({scene.groups[n].n})" for n in order],
            "showgrid": False,
        },
        {"range": [-1.12, 1.12], "title": {"text": "first principal coordinate"}},
    )
    page.title(
        f"network: the {limit} strongest |W| of each interaction (red W > 0, blue W < 0)",
        xa,
        row,
    )
    for level, (top, width, opacity) in enumerate(LEVELS):
        bottom = -1.0 if level == 0 else LEVELS[level - 1][0]
        for sign, rgb in ((1.0, POSITIVE), (-1.0, NEGATIVE)):
            trace = {
                "type": "scatter",
                "mode": "lines",
                "name": f"edges W {'>' if sign > 0 else '<'} 0, level {level}",
                "x": [],
                "y": [],
                "xaxis": xa,
                "yaxis": ya,
                "hoverinfo": "skip",
                "line": {"color": f"rgba({rgb},{opacity})", "width": width},
            }
            page.add(trace, partial(_edge_segments, layer=layer, sign=sign, span=(bottom, top)))
    domain = page.domain(row)
    bar_done = False
    for name in order:
        group = scene.groups[name]
        marker: dict[str, Any] = {
            "size": float(np.clip(40 / math.sqrt(max(group.n, 1)), 3, 10)),
            "line": {"width": 0.3, "color": "rgb(60,60,60)"},
            **_colours(group.colour, unit=True),
        }
        if group.colour is not None and not bar_done:
            bar_done = True
            how = "÷ max |value| of its group" if group.colour.symmetric else "min…max per group"
            marker["colorbar"] = {
                "x": 0.93,
                "xanchor": "left",
                "y": (domain[0] + domain[1]) / 2,
                "yanchor": "middle",
                "len": (domain[1] - domain[0]) * 0.95,
                "thickness": 12,
                "title": {"text": f"{group.colour.field} {how}", "side": "right"},
            }
        trace = {
            "type": "scatter",
            "mode": "markers",
            "name": f"{name} nodes",
            "x": [float(layer[name])] * group.n,
            "y": [],
            "xaxis": xa,
            "yaxis": ya,
            "text": [f"{name} #{i}" for i in range(group.n)],
            "hovertemplate": "%{text}<extra></extra>",
            "marker": marker,
        }
        page.add(trace, partial(_nodes, group=group))


def _nodes(frame: _Frame, group: GroupScene) -> dict[str, Any]:
    change: dict[str, Any] = {"y": _numbers(frame.line(group.name))}
    values = frame.colours(group.name)
    if values is not None and group.colour is not None:
        change["marker"] = {"color": _numbers(group.colour.unit(values))}
    return change


def _edge_segments(
    frame: _Frame, layer: dict[str, int], sign: float, span: tuple[float, float]
) -> dict[str, Any]:
    """Segments (``None``-separated) of the edges of one sign whose strength is in ``span``."""
    xs: list[Any] = []
    ys: list[Any] = []
    for e in frame.edges():
        if not len(e.weight):
            continue
        strength = np.abs(e.weight) / max(float(np.abs(e.weight).max()), 1e-300)
        chosen = (np.sign(e.weight) == sign) & (strength > span[0]) & (strength <= span[1])
        count = int(chosen.sum())
        if not count:
            continue
        x = np.full(3 * count, np.nan)
        y = np.full(3 * count, np.nan)
        x[0::3], x[1::3] = layer[e.source_group], layer[e.target_group]
        y[0::3] = frame.line(e.source_group)[e.source[chosen]]
        y[1::3] = frame.line(e.target_group)[e.target[chosen]]
        xs.extend(_json(x))
        ys.extend(_numbers(y))
    return {"x": xs, "y": ys}


def _add_curves(
    page: _Page, scene: Scene, row: int, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
) -> None:
    """Loss and accuracy panels, each with a dotted line at the current step."""
    width = 1.0 / len(curves)
    for j, (title, lines) in enumerate(curves.items()):
        xa, ya = page.axes(
            row,
            j * width + 0.035,
            (j + 1) * width - 0.03,
            {"title": {"text": "step"}},
            {"title": {"text": title}},
        )
        names = [
            f'<span style="color:{_curve_colour(k)}">{html.escape(label)}</span>'
            for k, label in enumerate(lines)
        ]
        page.title(", ".join(names), xa, row, escape=False)
        lo, hi = math.inf, -math.inf
        for k, (label, (x, y)) in enumerate(lines.items()):
            finite = y[np.isfinite(y)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            page.add(
                {
                    "type": "scatter",
                    "mode": "lines+markers" if len(x) <= 30 else "lines",
                    "name": label,
                    "x": _json(x),
                    "y": _numbers(y),
                    "xaxis": xa,
                    "yaxis": ya,
                    "line": {"color": _curve_colour(k), "width": 1.5},
                    "marker": {"size": 5},
                    "hovertemplate": f"{label}<br>step %{{x}}<br>%{{y:.4~g}}<extra></extra>",
                }
            )
        if not math.isfinite(lo):
            lo, hi = 0.0, 1.0
        page.add(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "current step",
                "x": [],
                "y": [],
                "xaxis": xa,
                "yaxis": ya,
                "hoverinfo": "skip",
                "line": {"color": "rgba(0,0,0,0.6)", "width": 1.5, "dash": "dot"},
            },
            partial(_step_line, lo=lo, hi=hi),
        )


def _curve_colour(k: int) -> str:
    return CURVE_COLOURS[k % len(CURVE_COLOURS)]


def _step_line(frame: _Frame, lo: float, hi: float) -> dict[str, Any]:
    step = frame.scene.step(frame.frame)
    return {"x": [step, step], "y": [lo, hi]}


def _curves(tree: xr.DataTree) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{panel: {observable: (steps, values)}}``: the losses, the accuracies, else the first 3."""
    obs = observables(tree)
    scalar = []
    for var, da in obs.data_vars.items():
        dim = time_dim(da)
        if dim is not None and da.ndim == 1 and da.sizes[dim] > 0 and da.dtype.kind in "biuf":
            scalar.append(str(var))
    panels = {
        "loss": [n for n in scalar if "loss" in n],
        "accuracy": [n for n in scalar if "accuracy" in n],
    }
    panels = {k: v for k, v in panels.items() if v}
    if not panels and scalar:
        panels = {"observables": scalar[:3]}
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for title, names in panels.items():
        out[title] = {}
        for n in names:
            da = obs[n]
            dim = str(time_dim(da))
            x, y = series(da, dim, step_coord(obs, dim), CURVE_POINTS)
            out[title][n] = (np.asarray(x, dtype=np.float64), y[:, 0])
    return out


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body {{ margin: 0; font-family: sans-serif; background: white; }}</style>
<script>{plotly}</script>
</head>
<body>
<div id="{div}" style="width: 100%; height: {height}px;"></div>
<script>
(function () {{
  var figure = {figure};
  var view = document.getElementById("{div}");
  Plotly.newPlot(view, figure.data, figure.layout, {{displaylogo: false, responsive: true}})
    .then(function () {{ return Plotly.addFrames(view, figure.frames); }})
    .then(function () {{ view.dataset.ready = "true"; }});
}})();
</script>
</body>
</html>
"""


def _script_json(value: Any) -> str:
    """Compact JSON that is safe inside ``<script>``: no ``<`` (so no ``</script>``, no
    ``<!--``) and no line separators, each written as its ``\\u`` escape."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)  # ASCII: \\u2028 escaped
    return text.replace("<", "\\u003c")


def write_view(
    tree: xr.DataTree,
    out_path: str | Path,
    *,
    groups: Sequence[str] | None = None,
    color: str | None = "charge",
    max_frames: int = MAX_FRAMES,
    edges: int = NETWORK_EDGES,
    name: str | None = None,
) -> Path:
    """Write the viewer of ``tree`` as one self-contained HTML file (plotly.js embedded).

    See :func:`build_view` for the arguments. The page loads nothing from anywhere: plotly.js
    comes from the installed ``plotly`` package, the figure follows as compact JSON. Once
    drawn, the plot's element (id :data:`DIV_ID`) has ``data-ready="true"``.

    Returns:
        The written path.
    """
    from plotly.offline import get_plotlyjs

    figure = build_view(
        tree, groups=groups, color=color, max_frames=max_frames, edges=edges, name=name
    )
    title = f"particlesim view: {figure['layout']['title']['text']}"
    page = PAGE.format(
        title=html.escape(title),
        plotly=get_plotlyjs(),
        div=DIV_ID,
        height=figure["layout"]["height"],
        figure=_script_json(figure),
    )
    out_path = Path(out_path)
    out_path.write_text(page, encoding="utf-8")
    return out_path


#: Environment variable naming the Chromium (or Chrome) executable for screenshots and tests.
CHROMIUM_ENV = "PARTICLESIM_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


#: Page script: show frame ``frame`` (negative from the end) of the viewer ``id``.
SHOW_FRAME = """([id, frame]) => {
    const view = document.getElementById(id);
    const names = view._transitionData._frames.map((f) => f.name);
    const name = names[(frame + names.length) % names.length];
    return Plotly.animate(view, [name], {mode: "immediate",
        frame: {duration: 0, redraw: true}, transition: {duration: 0}});
}"""
#: Page script: the subplot (``x2y2``) of the trace named ``name``, or null.
SUBPLOT_OF = """([id, name]) => {
    const trace = document.getElementById(id).data.find((t) => t.name === name);
    return trace ? (trace.xaxis || "x") + (trace.yaxis || "y") : null;
}"""


def find_chromium() -> str | None:
    """The browser to drive: ``PARTICLESIM_CHROMIUM``, else a Chromium or Chrome on PATH.

    Debian's ``chromium`` package installs ``/usr/bin/chromium``; Playwright drives it with
    ``chromium.launch(executable_path=...)`` (its own browser downloads are not needed).
    """
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return named if Path(named).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    page_path: str | Path,
    out_path: str | Path,
    *,
    frame: int = -1,
    hover: str | None = None,
    width: int = 1400,
    browser: Any = None,
) -> Path:
    """A PNG of a viewer page at ``frame`` (-1: the last), taken by headless Chromium.

    Needs Playwright (``pip install 'particlesim[browser]'``) and a Chromium
    (:func:`find_chromium`), or an open Playwright ``browser`` to use. ``hover`` names a
    group whose first particle is hovered, so that the picture shows a hover label.
    """
    if browser is not None:
        return _screenshot(browser, Path(page_path), Path(out_path), frame, hover, width)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AnalysisError(
            "a screenshot needs Playwright: pip install 'particlesim[browser]'"
        ) from None
    executable = find_chromium()
    if executable is None:
        raise AnalysisError(
            f"a screenshot needs Chromium: apt-get install chromium, or set {CHROMIUM_ENV}"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            return _screenshot(launched, Path(page_path), Path(out_path), frame, hover, width)
        finally:
            launched.close()


def _screenshot(
    browser: Any, page_path: Path, out_path: Path, frame: int, hover: str | None, width: int
) -> Path:
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(page_path.resolve().as_uri())
        page.wait_for_selector(f'#{DIV_ID}[data-ready="true"]', timeout=120_000)
        page.evaluate(SHOW_FRAME, [DIV_ID, frame])
        page.wait_for_timeout(300)
        if hover is not None:
            subplot = page.evaluate(SUBPLOT_OF, [DIV_ID, hover])
            if subplot is None:
                raise AnalysisError(f"no group {hover!r} in {page_path}")
            box = page.locator(f".subplot.{subplot} .scatterlayer path.point").first.bounding_box()
            if box is not None:
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.wait_for_timeout(300)
        page.screenshot(path=str(out_path), full_page=True)
    finally:
        page.close()
    return out_path


__all__ = [
    "CHROMIUM_ENV",
    "CURVE_POINTS",
    "DIV_ID",
    "MAX_FRAMES",
    "POINT_BUDGET",
    "build_view",
    "find_chromium",
    "screenshot",
    "write_view",
]
