"""Pictures of a network as the BIMT paper draws them: neurons at their places, edges by |W|.

The authors' notebooks (github KindXiaoming/BIMT: ``BioMLP.plot`` in
``symbolic_formulas_3.1.ipynb``, the plotting cell of ``two_moon_3.2.ipynb`` and the 3-D
plot of ``mnist_3.5.ipynb``) draw every neuron at its coordinates, layer above layer, and
every connection as a line whose width is ``|W|`` over its layer's largest ``|W|``, blue
for a positive weight and red for a negative one. :func:`draw_network` does the same,
with the opacity also proportional to ``|W|`` (so thousands of weak MNIST connections
fade instead of covering the picture) and an optional threshold below which a connection
is not drawn at all. A line layout (every layer on a line, BIMT's ``layout = "line"``) is
drawn in the plane (position along the line, layer axis up); any other layout (MNIST's
grids and output ring) in 3-D.

Figures are made on an Agg canvas without pyplot (as :mod:`particlesim.analysis.plots`),
so that nothing leaks between calls. Each layer's connections are one line collection with
``gid = "edges:<source>-><target>"``: one segment per drawn connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from particlesim.errors import ParticlesimError
from particlesim_bimt.analysis import Network, kept

__all__ = ["draw_network", "is_line_layout", "save_figure"]

POSITIVE = (0.0, 0.2, 0.9)
NEGATIVE = (0.9, 0.1, 0.1)


def is_line_layout(network: Network) -> bool:
    """Whether every layer lies on a line (only the first in-plane coordinate varies)."""
    return all(np.ptp(p[:, 1:-1], axis=0).max(initial=0.0) == 0 for p in network.positions)


def _new_figure(three_d: bool, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d" if three_d else None)
    return fig, ax


def _edge_style(weight: np.ndarray, ratio: np.ndarray, linewidth: float) -> tuple[Any, Any]:
    """RGBA colours (blue/red, alpha ∝ |W|) and widths (∝ |W|) of the drawn connections."""
    colours = np.where((weight > 0)[:, None], POSITIVE, NEGATIVE)
    rgba = np.concatenate([colours, np.clip(ratio, 0.05, 1.0)[:, None]], 1)
    return rgba, linewidth * ratio


def draw_network(
    network: Network,
    ax: Axes | None = None,
    *,
    threshold: float = 0.0,
    max_edges: int | None = None,
    linewidth: float = 2.0,
    input_labels: Sequence[str] | None = None,
    output_labels: Sequence[str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (4.0, 4.0),
) -> Figure:
    """Draw ``network``: neurons at their places, connections by ``|W|`` and sign.

    Args:
        network: the layers (:func:`particlesim_bimt.analysis.network_of`).
        ax: where to draw (a 3-D axes for a layout that is not a line layout); default a
            new figure with one axes.
        threshold: connections with ``|W| < threshold · max |W|`` of their layer are left
            out (:func:`particlesim_bimt.analysis.kept`).
        max_edges: draw at most this many of each layer's connections, the strongest
            (an untrained MNIST network has 78400 in its first layer; faint ones are
            invisible anyway).
        linewidth: the width of a layer's strongest connection.
        input_labels, output_labels: names of the input features and outputs by their
            original index (the ``id`` field), written beside the slot each sits in.
        title: the axes' title.
        figsize: the size of a new figure (inches).

    Returns:
        The figure drawn on.
    """
    three_d = not is_line_layout(network)
    if ax is None:
        fig, ax = _new_figure(three_d, figsize)
    else:
        if three_d != (getattr(ax, "name", "") == "3d"):
            raise ParticlesimError(
                f"draw_network: this network needs a {'3-D' if three_d else '2-D'} axes"
            )
        fig = ax.get_figure(root=True)

    def place(points: np.ndarray) -> np.ndarray:
        """The drawn coordinates: (along the line, layer axis) or (x, y, layer axis)."""
        return points[:, [0, 1, -1]] if three_d else points[:, [0, -1]]

    masks = kept(network, threshold)
    for layer, mask in enumerate(masks):
        weight = network.weights[layer]
        magnitude = np.abs(weight)
        largest = magnitude.max() if magnitude.size else 0.0
        rows, cols = np.nonzero(mask)
        if max_edges is not None and rows.size > max_edges:
            strongest = np.argsort(magnitude[rows, cols])[-max_edges:]
            rows, cols = rows[strongest], cols[strongest]
        ratio = magnitude[rows, cols] / largest if largest > 0 else np.zeros(rows.size)
        start = place(network.positions[layer + 1])[rows]
        end = place(network.positions[layer])[cols]
        segments = np.stack([start, end], 1)
        colours, widths = _edge_style(weight[rows, cols], ratio, linewidth)
        gid = f"edges:{network.names[layer]}->{network.names[layer + 1]}"
        if three_d:
            from mpl_toolkits.mplot3d.art3d import Line3DCollection

            lines: Any = Line3DCollection(segments, colors=colours, linewidths=widths)
        else:
            lines = LineCollection(segments, colors=colours, linewidths=widths)
        lines.set_gid(gid)
        ax.add_collection(lines)

    largest_layer = max(len(ids) for ids in network.ids)
    for points in network.positions:
        where = place(points)
        many = len(points) > 200
        size = 2.0 if many else max(6.0, 400.0 / largest_layer)
        colour = "0.6" if many else "black"
        if three_d:
            ax.scatter(*where.T, s=size, c=colour, depthshade=False)
        else:
            ax.scatter(*where.T, s=size, c=colour, zorder=3)

    gap = _layer_gap(network)
    for labels, layer, offset in ((input_labels, 0, -0.45), (output_labels, -1, 0.45)):
        if labels is None:
            continue
        where, ids = place(network.positions[layer]), network.ids[layer]
        for slot, original in enumerate(ids):
            if int(original) >= len(labels):
                continue
            text = labels[int(original)]
            if three_d:
                ax.text(*where[slot, :2], where[slot, 2] + offset * gap, text, fontsize=8)
            else:
                ax.text(
                    where[slot, 0],
                    where[slot, 1] + offset * gap,
                    text,
                    fontsize=9,
                    ha="center",
                    va="top" if offset < 0 else "bottom",
                )

    if three_d:
        ax.set_box_aspect((1, 1, 1.6))
        ax.view_init(elev=20, azim=-60)
        everything = np.concatenate([place(p) for p in network.positions])
        ax.set_xlim(everything[:, 0].min() - 0.05, everything[:, 0].max() + 0.05)
        ax.set_ylim(everything[:, 1].min() - 0.05, everything[:, 1].max() + 0.05)
        ax.set_zlim(everything[:, 2].min() - 0.1, everything[:, 2].max() + 0.1)
    else:
        everything = np.concatenate([place(p) for p in network.positions])
        ax.set_xlim(everything[:, 0].min() - 0.05, everything[:, 0].max() + 0.05)
        ax.set_ylim(everything[:, 1].min() - 0.7 * gap, everything[:, 1].max() + 0.7 * gap)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _layer_gap(network: Network) -> float:
    """The distance between consecutive layers along the layer axis (1 for one layer)."""
    levels = sorted({float(p[:, -1].mean()) for p in network.positions})
    return float(np.diff(levels).min()) if len(levels) > 1 else 1.0


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` as an image (the suffix picks the format) and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
