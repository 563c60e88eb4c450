"""Analysis: measures against closed forms, graph metrics, plots, animations and the CLI."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import typer
import xarray as xr
from PIL import Image
from synthetic import group_ds, make_tree, write_h5md
from typer.testing import CliRunner

from particlesim.analysis import (
    METRICS,
    AnalysisError,
    best_partition_modularity,
    centroid,
    charge_histogram,
    clustering,
    compute_metrics,
    connection_length,
    mean_squared_displacement,
    modularity,
    pair_distance_histogram,
    plots,
    radius_of_gyration,
    weight_distance_correlation,
    weight_graph,
)
from particlesim.analysis.tree import combine
from particlesim.cli import analysis_commands
from particlesim.errors import ParticlesimError

HAVE_READER = importlib.util.find_spec("particlesim.io.trajectory") is not None
needs_reader = pytest.mark.skipif(
    not HAVE_READER,
    reason="particlesim.io.trajectory (open_trajectory) has not landed yet",
)


# --- single-group measures -----------------------------------------------------------------


def test_centroid_of_translated_square() -> None:
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    shift = np.arange(3)[:, None, None] * np.array([1.0, -0.5])
    ds = group_ds(square + shift)
    c = centroid(ds)
    assert c.dims == ("time", "spatial")
    np.testing.assert_allclose(c.values, [[1.0, 1.0], [2.0, 0.5], [3.0, 0.0]])
    assert list(c["step"].values) == [0, 10, 20]
    frozen = centroid(group_ds(square))
    assert frozen.dims == ("spatial",)
    np.testing.assert_allclose(frozen.values, [1.0, 1.0])


def test_radius_of_gyration_of_sphere_is_radius() -> None:
    rng = np.random.default_rng(1)
    u = rng.normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    radius = 2.5
    sphere = np.concatenate([u, -u]) * radius  # centroid exactly at the centre
    frames = np.stack([sphere + np.array([1.0, 2.0, 3.0]), 2 * sphere])
    rg = radius_of_gyration(group_ds(frames))
    assert rg.dims == ("time",)
    np.testing.assert_allclose(rg.values, [radius, 2 * radius])
    assert radius_of_gyration(group_ds(sphere)).ndim == 0


def test_msd_of_uniform_translation() -> None:
    rng = np.random.default_rng(2)
    start = rng.normal(size=(7, 2))
    v = np.array([0.3, -0.4])  # |v| = 0.5 per unit time
    steps = np.arange(6) * 10
    ds = group_ds(start + (steps * 0.1)[:, None, None] * v, steps=steps)
    t = ds["time"].values
    msd = mean_squared_displacement(ds)
    assert msd.dims == ("time",)
    np.testing.assert_allclose(msd.values, (0.5 * t) ** 2)
    np.testing.assert_allclose(
        mean_squared_displacement(ds, reference=-1).values, (0.5 * (t - t[-1])) ** 2
    )
    lagged = mean_squared_displacement(ds, lag=True)
    assert lagged.dims == ("lag",)
    np.testing.assert_allclose(lagged["lag_time"].values, t)
    np.testing.assert_allclose(lagged.values, (0.5 * lagged["lag_time"].values) ** 2)
    assert list(lagged["lag_step"].values) == list(steps)
    assert mean_squared_displacement(ds, lag=True, max_lag=2).sizes["lag"] == 3
    assert float(mean_squared_displacement(group_ds(start))) == 0.0
    with pytest.raises(AnalysisError, match="reference frame 6 out of range for 6 frames"):
        mean_squared_displacement(ds, reference=6)


def test_msd_lag_average_of_random_walk_frames() -> None:
    pos = np.array([[[0.0]], [[1.0]], [[3.0]]])  # one particle on a line
    lagged = mean_squared_displacement(group_ds(pos), lag=True)
    # lag 1: (1² + 2²)/2; lag 2: 3²
    np.testing.assert_allclose(lagged.values, [0.0, 2.5, 9.0])


def test_pair_distance_histogram_of_a_3_4_5_triangle() -> None:
    tri = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    h = pair_distance_histogram(group_ds(np.stack([tri, 2 * tri])), bins=6, range=(0, 12))
    assert h.dims == ("time", "distance")
    np.testing.assert_allclose(h["distance"].values, np.arange(6) * 2 + 1)
    assert h.values.tolist() == [[0, 1, 2, 0, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert h.attrs["n_pairs"] == 3
    dens = pair_distance_histogram(group_ds(tri), bins=6, range=(0, 6), density=True)
    np.testing.assert_allclose(dens.values, [0, 0, 0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(float((dens * dens.attrs["bin_width"]).sum()), 1.0)
    default = pair_distance_histogram(group_ds(tri), bins=5)  # range (0, largest = 5)
    assert default.values.tolist() == [0, 0, 0, 1, 2]


def test_pair_distance_histogram_between_groups_broadcasts_frozen() -> None:
    moving = group_ds(np.array([[[0.0, 0.0]], [[0.0, 1.0]]]))
    frozen = group_ds(np.array([[3.0, 0.0], [0.0, 4.0]]))
    h = pair_distance_histogram(moving, frozen, bins=5, range=(0, 5))
    assert h.dims == ("time", "distance") and h.attrs["n_pairs"] == 2
    # frame 0: 3 and 4; frame 1: sqrt(10) ≈ 3.16 and 3
    assert h.values.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 2, 0]]


def test_connection_length_known_weights() -> None:
    source = group_ds(np.array([[0.0, 0.0], [1.0, 0.0]]))  # frozen
    target = group_ds(np.array([[[0.0, 3.0]], [[0.0, 0.0]]]))
    w = xr.DataArray(
        np.array([[[1.0, -3.0]], [[2.0, 2.0]]]),
        dims=("time", "target", "source"),
        coords={"time": target["time"], "step": target["step"]},
    )
    length = connection_length(w, source, target)
    assert length.dims == ("time",)
    expected0 = (1 * 3 + 3 * math.sqrt(10)) / 4
    expected1 = (2 * 0 + 2 * 1) / 4
    np.testing.assert_allclose(length.values, [expected0, expected1])
    zero = connection_length(w * 0, source, target)
    assert np.isnan(zero.values).all()  # no weight, no length: NaN, not a made-up 0


def test_connection_length_inner_joins_time() -> None:
    source = group_ds(np.zeros((3, 1, 2)))
    target = group_ds(np.ones((3, 1, 2)))
    w = xr.Dataset(
        {"weight": (("time", "target", "source"), np.ones((1, 1, 1)))},
        coords={"time": [1.0], "step": ("time", [10])},
    )
    length = connection_length(w, source, target)
    assert list(length["step"].values) == [10]
    np.testing.assert_allclose(length.values, [math.sqrt(2)])


def test_connection_length_without_common_steps_is_an_error() -> None:
    source = group_ds(np.zeros((3, 1, 2)))
    target = group_ds(np.ones((3, 1, 2)))
    w = xr.Dataset(
        {"weight": (("time", "target", "source"), np.ones((1, 1, 1)))},
        coords={"time": [1.0], "step": ("time", [469])},  # positions are at steps 0, 1, 2
    )
    with pytest.raises(ParticlesimError, match="never recorded at the same step"):
        connection_length(w, source, target)


def test_weight_distance_correlation_sign() -> None:
    source = group_ds(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [5.0, 0.0]]))
    target = group_ds(np.array([[[0.0, 1.0], [0.5, 2.0]]]))
    d = np.linalg.norm(
        target["position"].values[0][:, None] - source["position"].values[None], axis=-1
    )
    far = xr.DataArray(d[None], dims=("time", "target", "source"))
    near = xr.DataArray(-1 / d[None], dims=("time", "target", "source"))  # sign is ignored
    assert weight_distance_correlation(far, source, target).item() == pytest.approx(1.0)
    assert weight_distance_correlation(near, source, target).item() < -0.5
    rho = weight_distance_correlation(near, source, target, method="spearman")
    assert rho.item() == pytest.approx(-1.0)
    with pytest.raises(AnalysisError, match="method must be 'pearson' or 'spearman'"):
        weight_distance_correlation(far, source, target, method="kendall")
    bad = xr.DataArray(np.ones((1, 3, 4)), dims=("time", "target", "source"))
    with pytest.raises(AnalysisError, match="does not match the groups' particle counts"):
        connection_length(bad, source, target)


def test_charge_histogram_counts() -> None:
    q = np.array([[-1.0, -1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    ds = group_ds(np.zeros((2, 4, 2)), q)
    h = charge_histogram(ds, bins=4, range=(-2, 2))
    assert h.dims == ("time", "charge_bin")
    np.testing.assert_allclose(h["charge_bin"].values, [-1.5, -0.5, 0.5, 1.5])
    assert h.values.tolist() == [[0, 2, 1, 1], [0, 0, 4, 0]]  # 2.0 is in the closed last bin
    auto = charge_histogram(ds, bins=3)  # edges from min -1 to max 2: width 1
    assert auto.values.tolist() == [[2, 1, 1], [0, 4, 0]]
    multi = charge_histogram(group_ds(np.zeros((2, 4, 2)), np.stack([q, -q], axis=-1)), bins=4)
    assert multi.dims == ("time", "channel", "charge_bin")
    assert multi.sum("charge_bin").values.tolist() == [[4, 4], [4, 4]]


# --- graph measures ------------------------------------------------------------------------


def two_cliques(size: int = 5) -> tuple[nx.Graph, list[set[int]]]:
    graph = nx.disjoint_union(nx.complete_graph(size), nx.complete_graph(size))
    nx.set_edge_attributes(graph, 1.0, "weight")
    graph.add_edge(0, size, weight=0.1)  # a weak bridge
    return graph, [set(range(size)), set(range(size, 2 * size))]


def test_modularity_of_two_cliques() -> None:
    graph, halves = two_cliques()
    q = modularity(graph, halves)
    assert q == pytest.approx(nx.community.modularity(graph, halves, weight="weight"))
    assert q > 0.45  # close to the ideal 1/2
    best, partition = best_partition_modularity(graph)
    assert sorted(map(sorted, partition)) == sorted(map(sorted, halves))
    assert best == pytest.approx(q)
    _, partition = best_partition_modularity(graph, method="greedy")
    assert sorted(map(sorted, partition)) == sorted(map(sorted, halves))
    assert clustering(nx.complete_graph(4)) == pytest.approx(1.0)
    assert math.isnan(modularity(nx.empty_graph(3), [{0, 1, 2}]))
    with pytest.raises(AnalysisError, match="'louvain' or 'greedy'"):
        best_partition_modularity(graph, method="spectral")


def test_clustering_matrix_form_equals_networkx(monkeypatch: pytest.MonkeyPatch) -> None:
    from particlesim.analysis import graph as graph_module

    rng = np.random.default_rng(4)
    graph = nx.gnp_random_graph(60, 0.2, seed=2)
    for u, v in graph.edges:
        graph[u][v]["weight"] = float(rng.uniform(0.05, 3.0))
    graph.add_edge(7, 7, weight=9.0)  # a self-loop: ignored, but it sets the largest weight
    graph.add_edge("leaf", 0, weight=1.0)  # degree 1
    graph.add_node("isolated")
    expected = nx.average_clustering(graph, weight="weight")
    assert expected > 0.01  # there are triangles
    assert clustering(graph) == pytest.approx(expected, rel=1e-12)
    assert graph_module._dense_average_clustering(graph) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(graph_module, "DENSE_CLUSTERING_MAX_NODES", 0)  # networkx's own loops
    assert clustering(graph) == pytest.approx(expected, rel=1e-12)
    assert clustering(nx.empty_graph(3)) == 0.0
    assert math.isnan(clustering(nx.Graph()))


def test_clustering_of_a_dense_layered_network_takes_the_matrix_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """784-256-256-10 with every weight non-zero: ~270k edges, where networkx's per-node loops
    take minutes; the matrix form takes seconds."""
    from particlesim.analysis import graph as graph_module

    def networkx_loops(*args, **kwargs):
        raise AssertionError("a dense graph went to networkx's per-node loops")

    monkeypatch.setattr(graph_module.nx, "average_clustering", networkx_loops)
    rng = np.random.default_rng(0)
    sizes = {"input": 784, "hidden1": 256, "hidden2": 256, "output": 10}
    nodes: dict[str, xr.Dataset] = {
        f"/particles/{name}": group_ds(rng.normal(size=(n, 3))) for name, n in sizes.items()
    }
    for s, t in itertools.pairwise(sizes):
        nodes[f"/connectivity/{s}_to_{t}"] = xr.Dataset(
            {"weight": (("target", "source"), rng.normal(size=(sizes[t], sizes[s])))},
            attrs={"source": s, "target": t},
        )
    graph = weight_graph(xr.DataTree.from_dict(nodes))
    assert graph.number_of_edges() == 784 * 256 + 256 * 256 + 256 * 10
    assert clustering(graph) == 0.0  # successive layers only: no triangles


def block_tree() -> xr.DataTree:
    """input(4) -> hidden(4) with block-diagonal weights: two separate modules."""
    w = np.zeros((2, 4, 4))
    w[:, :2, :2] = 1.0
    w[:, 2:, 2:] = -2.0
    w[1, 0, 3] = 0.01  # a weak cross link at the last frame
    nodes = {
        "/particles/input": group_ds(np.arange(8.0).reshape(4, 2)),
        "/particles/hidden": group_ds(np.arange(16.0).reshape(2, 4, 2), np.ones((2, 4))),
        "/connectivity/input_to_hidden": xr.Dataset(
            {"weight": (("time", "target", "source"), w)},
            coords={"time": [0.0, 1.0], "step": ("time", [0, 10])},
            attrs={"source": "input", "target": "hidden"},
        ),
    }
    return xr.DataTree.from_dict(nodes)


def test_weight_graph_from_tree() -> None:
    tree = block_tree()
    graph = weight_graph(tree, frame=0)
    assert graph.number_of_nodes() == 8 and graph.number_of_edges() == 8
    assert graph[("hidden", 2)][("input", 3)]["weight"] == 2.0
    assert graph.graph["step"] == 0
    last = weight_graph(tree)  # frame -1
    assert last.number_of_edges() == 9 and last.graph["step"] == 10
    assert weight_graph(tree, threshold=0.5).number_of_edges() == 8
    top1 = weight_graph(tree, top_k=1)
    assert max(top1.degree(("hidden", h)) for h in range(4)) <= 2  # ties at the cut stay
    q, partition = best_partition_modularity(last)
    assert len(partition) == 2 and q > 0.4
    assert clustering(last) == 0.0  # bipartite: no triangles
    with pytest.raises(AnalysisError, match="frame 5 out of range for 2 frames"):
        weight_graph(tree, frame=5)
    with pytest.raises(AnalysisError, match="no connectivity"):
        weight_graph(make_tree(connectivity=False))
    # the strongest fraction of all non-zero weights, every interaction together
    weights = sorted((w for *_, w in last.edges(data="weight")), reverse=True)
    top = weight_graph(tree, top_fraction=3 / 9)
    kept = sorted((w for *_, w in top.edges(data="weight")), reverse=True)
    assert kept == [w for w in weights if w >= weights[2]]  # ties at the cut stay
    with pytest.raises(AnalysisError, match=r"top_fraction must be in \(0, 1\], got 0"):
        weight_graph(tree, top_fraction=0)


def test_small_worldness_of_a_ring_lattice_and_of_a_random_graph() -> None:
    """A Watts–Strogatz graph with a few shortcuts is small-world (σ ≫ 1); a G(n, m) graph
    is its own null (σ ≈ 1); the index reads the graph binarised (weights ignored)."""
    from particlesim.analysis.graph import small_worldness

    lattice = nx.watts_strogatz_graph(100, 6, 0.05, seed=1)
    nx.set_edge_attributes(lattice, 0.3, "weight")
    sigma = small_worldness(lattice, nulls=10, seed=0)
    assert sigma > 3
    random_graph = nx.gnm_random_graph(100, 300, seed=2)
    assert small_worldness(random_graph, nulls=10, seed=0) == pytest.approx(1.0, abs=0.35)
    assert small_worldness(lattice, nulls=10, seed=0) == sigma  # seeded nulls: repeatable
    assert math.isnan(small_worldness(nx.empty_graph(5)))
    with pytest.raises(AnalysisError, match="nulls must be a positive integer"):
        small_worldness(lattice, nulls=0)
    tree = block_tree()
    ds = METRICS["small_worldness"](tree, nulls="3")
    assert list(ds.data_vars) == ["small_worldness"] and ds["small_worldness"].dims == ("time",)


# --- the metric registry -------------------------------------------------------------------


def test_every_metric_runs_and_names_its_variables() -> None:
    tree = make_tree(channels=2)
    expected = {
        "centroid": {"centroid_input", "centroid_hidden1", "centroid_output"},
        "radius_of_gyration": {f"radius_of_gyration_{g}" for g in ("input", "hidden1", "output")},
        "msd": {"msd_input", "msd_hidden1", "msd_output"},
        "pair_distances": {f"pair_distances_{g}" for g in ("input", "hidden1", "output")},
        "charge_histogram": {"charge_histogram_hidden1", "charge_histogram_output"},
        "connection_length": {
            "connection_length_input_to_hidden1",
            "connection_length_hidden1_to_output",
        },
        "weight_distance_correlation": {
            "weight_distance_correlation_input_to_hidden1",
            "weight_distance_correlation_hidden1_to_output",
        },
        "modularity": {"modularity", "modularity_communities"},
        "clustering": {"clustering"},
        "small_worldness": {"small_worldness"},
    }
    assert set(METRICS) == set(expected)
    for name, metric in METRICS.items():
        ds = metric(tree)
        assert set(ds.data_vars) == expected[name], name
    # histograms of several groups share their bins
    pd = METRICS["pair_distances"](tree, bins=10)
    assert pd["pair_distances_hidden1"].dims == ("time", "distance")
    assert pd["pair_distances_output"].dims == ("time", "distance")
    ch = METRICS["charge_histogram"](tree)["charge_histogram_output"]
    assert ch.dims == ("time", "channel", "charge_bin")
    np.testing.assert_allclose(
        METRICS["centroid"](tree)["centroid_hidden1"].values,
        tree["particles/hidden1"].to_dataset()["position"].mean("particle").values,
    )


def test_metric_options_and_groups() -> None:
    tree = make_tree()
    ds = METRICS["msd"](tree, groups=["hidden1"], lag="true")
    assert list(ds.data_vars) == ["msd_hidden1"] and ds["msd_hidden1"].dims == ("lag",)
    assert METRICS["pair_distances"](tree, bins="7").sizes["distance"] == 7
    only = METRICS["connection_length"](tree, groups=["output"])
    assert list(only.data_vars) == ["connection_length_hidden1_to_output"]
    with pytest.raises(AnalysisError, match="has no option 'bin'; its options: bins, range"):
        METRICS["pair_distances"](tree, bin=3)
    with pytest.raises(AnalysisError, match=r"unknown group 'hiden1' \(did you mean 'hidden1'\?\)"):
        METRICS["centroid"](tree, groups=["hiden1"])
    with pytest.raises(AnalysisError, match="option 'bins': expected int, got 'many'"):
        METRICS["pair_distances"](tree, bins="many")
    with pytest.raises(AnalysisError, match="nothing to measure in groups input: no charge"):
        METRICS["charge_histogram"](tree, groups=["input"])
    for name in ("connection_length", "modularity", "clustering"):
        with pytest.raises(
            AnalysisError,
            match="nothing to measure: no connectivity recorded \\(set the trajectory writer's "
            "connectivity_every",
        ):
            METRICS[name](make_tree(connectivity=False))
    with pytest.raises(AnalysisError, match="unknown metric 'radius'"):
        compute_metrics(tree, ["radius"])
    with pytest.raises(AnalysisError, match="option 'method' is not accepted by centroid"):
        compute_metrics(tree, ["centroid"], options={"method": "x"})


def test_combine_keeps_different_axes_apart() -> None:
    a = xr.DataArray([1.0, 2.0], dims="time", coords={"time": [0.0, 1.0], "step": ("time", [0, 1])})
    b = xr.DataArray([3.0], dims="time", coords={"time": [5.0], "step": ("time", [50])})
    e = a.rename(time="time_1", step="step_1")
    ds = combine({"a": a, "b": b, "c": a * 2, "d": b * 2, "e": e})
    assert ds["a"].dims == ("time",) and ds["c"].dims == ("time",)
    assert ds["b"].dims == ("time_1",) and list(ds["step_1"].values) == [50]
    assert ds["d"].dims == ("time_1",)  # equal axes share one dim
    assert ds["e"].dims == ("time_1_1",)  # no clash with an input's own time_1
    assert not ds["a"].isnull().any()


# --- plots and animations ------------------------------------------------------------------


def assert_picture(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 20, "a (nearly) blank image"


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_plot_positions(tmp_path: Path, dim: int) -> None:
    fig = plots.plot_positions(make_tree(dim=dim, channels=2), frame=1)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["input", "hidden1", "output"]
    assert len(bars) == 2  # the input grid records no charges: grey, no colour bar
    assert fig.get_suptitle() == "synthetic · step 10"
    if dim == 2:
        assert panels[1].get_xlabel() == "x0"
    else:  # D > 2: the group's own principal axes
        assert panels[1].get_xlabel().startswith("PC1 (")
    if dim == 3:
        fig3 = plots.plot_positions(make_tree(dim=3), projection="3d")
        assert [ax.name for ax in fig3.axes if ax.get_label() != "<colorbar>"] == ["3d"] * 3
    fig.savefig(tmp_path / "pos.png")
    assert_picture(tmp_path / "pos.png")


def test_plot_observables_and_summary(tmp_path: Path) -> None:
    tree = make_tree()
    fig = plots.plot_observables(tree)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "test_accuracy"]
    loss_line = fig.axes[0].get_lines()[0]
    assert list(loss_line.get_xdata()) == [0, 10, 20, 30]
    assert list(fig.axes[1].get_lines()[0].get_xdata()) == [0, 20]  # its own period
    assert fig.axes[0].get_ylabel() == "nat"
    fig.savefig(tmp_path / "obs.png")
    assert_picture(tmp_path / "obs.png")
    plots.plot_summary(tree).savefig(tmp_path / "both.png")
    assert_picture(tmp_path / "both.png", (800, 300))
    with pytest.raises(AnalysisError, match="unknown observable 'los' \\(did you mean 'loss'"):
        plots.plot_observables(tree, ["los"])
    with pytest.raises(AnalysisError, match="frame 9 out of range: the trajectory has 4 frames"):
        plots.plot_positions(tree, frame=9)
    with pytest.raises(AnalysisError, match="projection '3d' needs D >= 3"):
        plots.plot_positions(tree, projection="3d")


def test_animate_gif(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = plots.animate(
        make_tree(n_frames=5), tmp_path / "a.gif", fps=5, progress=lambda i, n: calls.append((i, n))
    )
    with Image.open(out) as gif:
        assert gif.n_frames == 5
    assert calls == [(i, 5) for i in range(5)]
    plots.animate(
        make_tree(n_frames=5, dim=3), tmp_path / "b.gif", frames=slice(None, None, 2), progress=True
    )
    with Image.open(tmp_path / "b.gif") as gif:
        assert gif.n_frames == 3


def test_animation_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(AnalysisError, match=r"needs ffmpeg, which is not on PATH; .* \.gif"):
        plots.animate(make_tree(), tmp_path / "a.mp4")
    with pytest.raises(AnalysisError, match=r"unsupported animation format '\.avi'"):
        plots.animate(make_tree(), tmp_path / "a.avi")
    assert not (tmp_path / "a.mp4").exists()


def test_figures_do_not_touch_pyplot() -> None:
    import sys

    plots.plot_positions(make_tree())
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


# --- the command line ----------------------------------------------------------------------

runner = CliRunner()


def cli_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    analysis_commands.register(app)
    analysis_commands.register(app)  # idempotent
    return app


def invoke(*args: object):
    return runner.invoke(cli_app(), [str(a) for a in args])


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.fixture
def fake_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file the CLI reads through a stand-in reader that returns make_tree()."""
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    tree = make_tree(channels=2)

    def reader(p: Path) -> xr.DataTree:
        if p.name == "broken.h5":
            from particlesim.errors import ParticlesimError

            raise ParticlesimError(f"{p}: not an H5MD file (no /h5md group)")
        return tree

    monkeypatch.setattr(analysis_commands, "_reader", lambda: reader)
    return path


def test_register_adds_commands_once() -> None:
    app = cli_app()
    names = [c.name for c in app.registered_commands]
    assert names == ["inspect", "analyze", "plot", "animate", "view", "recover"]
    help_text = invoke("analyze", "--help").output
    assert "connection_length" in help_text
    # every metric's options are shown (square brackets would be eaten as rich markup)
    for text in ("max_lag=None", "density=False", "method=pearson", "resolution=1.0"):
        assert text in help_text, text


def test_cli_inspect(fake_file: Path) -> None:
    result = invoke("inspect", fake_file)
    assert result.exit_code == 0, result.output
    for text in (
        "scenario 'synthetic'",
        "hidden1",
        "frozen",
        "0…30",
        "test_accuracy",
        "input_to_hidden1",
        "idx from data_dir",
    ):
        assert text in result.stdout, text
    info = json.loads(invoke("inspect", fake_file, "--json").stdout)
    hidden = next(g for g in info["groups"] if g["name"] == "hidden1")
    assert hidden["particles"] == 5 and hidden["dimension"] == 2 and hidden["frames"] == 4
    assert hidden["steps"] == [0, 30] and hidden["fields"]["charge"]["frozen"] is False
    assert next(g for g in info["groups"] if g["name"] == "input")["fields"]["position"]["frozen"]
    loss = next(o for o in info["observables"] if o["name"] == "loss")
    assert loss["last"] == 0.5 and loss["unit"] == "nat" and loss["frames"] == 4
    acc = next(o for o in info["observables"] if o["name"] == "test_accuracy")
    assert acc["frames"] == 2 and acc["steps"] == [0, 20]
    assert info["connectivity"][0]["shape"] == [4, 5, 6]
    assert info["parameters"]["seed"] == 3
    assert info["parameters"]["versions"] == {"particlesim": "0.1.0"}


def test_cli_analyze_netcdf_and_csv_round_trip(fake_file: Path, tmp_path: Path) -> None:
    import pandas as pd

    nc = tmp_path / "m.nc"
    result = invoke(
        "analyze",
        fake_file,
        "radius_of_gyration",
        "pair_distances",
        "modularity",
        "-o",
        nc,
        "-O",
        "bins=8",
    )
    assert result.exit_code == 0, result.output
    assert "radius_of_gyration_hidden1" in result.stdout
    expected = compute_metrics(
        make_tree(channels=2),
        ["radius_of_gyration", "pair_distances", "modularity"],
        options={"bins": 8},
    )
    with xr.open_dataset(nc) as back:
        assert set(back.data_vars) == set(expected.data_vars)
        for name in expected.data_vars:
            np.testing.assert_allclose(back[name].values, expected[name].values)
        assert list(back["step"].values) == [0, 10, 20, 30]

    csv = tmp_path / "rg.csv"  # one dim set: a wide table
    result = invoke(
        "analyze",
        fake_file,
        "radius_of_gyration",
        "connection_length",
        "--group",
        "hidden1",
        "--group",
        "output",
        "-o",
        csv,
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(csv)
    assert list(table.columns[:2]) == ["time", "step"]
    rg = compute_metrics(make_tree(channels=2), ["radius_of_gyration"])
    np.testing.assert_allclose(
        table["radius_of_gyration_output"], rg["radius_of_gyration_output"].values
    )

    long = tmp_path / "long.csv"  # different dims: a long table
    assert invoke("analyze", fake_file, "centroid", "msd", "-o", long).exit_code == 0
    import csv as csv_module

    with long.open(newline="") as handle:
        raw = list(csv_module.DictReader(handle))
    # integer columns stay integers where other variables leave them empty ("10", not "10.0")
    assert {row["step"] for row in raw} == {"", "0", "10", "20", "30"}
    assert {row["spatial"] for row in raw} == {"", "0", "1"}
    table = pd.read_csv(long)
    assert {"variable", "time", "step", "spatial", "value"} <= set(table.columns)
    rows = table[(table["variable"] == "msd_hidden1")]
    np.testing.assert_allclose(
        rows["value"], compute_metrics(make_tree(channels=2), ["msd"])["msd_hidden1"].values
    )


def test_cli_plot_and_animate(fake_file: Path, tmp_path: Path) -> None:
    for kind in ("both", "positions", "observables"):
        out = tmp_path / f"{kind}.png"
        result = invoke("plot", fake_file, "--kind", kind, "--frame", "2", "-o", out)
        assert result.exit_code == 0, result.output
        assert_picture(out)
    svg = tmp_path / "p.svg"
    assert invoke("plot", fake_file, "--group", "hidden1", "-o", svg).exit_code == 0
    assert svg.read_text().lstrip().startswith("<?xml")
    gif = tmp_path / "a.gif"
    result = invoke("animate", fake_file, "-o", gif, "--every", "2", "--fps", "4")
    assert result.exit_code == 0, result.output
    with Image.open(gif) as image:
        assert image.n_frames == 3  # frames 0 and 2 of 4, and the last one


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("inspect", "{tmp}/missing.h5"), "missing.h5: no such file"),
        (("inspect", "{tmp}/broken.h5"), "not an H5MD file (no /h5md group)"),
        (
            ("analyze", "{file}", "radius_of_gyrations", "-o", "{tmp}/x.nc"),
            "unknown metric 'radius_of_gyrations' (did you mean 'radius_of_gyration'?); "
            "known metrics: centroid,",
        ),
        (
            ("analyze", "{file}", "centroid", "-o", "{tmp}/x.txt"),
            "unsupported output format '.txt'",
        ),
        (
            ("analyze", "{file}", "centroid", "--group", "hiden1", "-o", "{tmp}/x.nc"),
            "unknown group 'hiden1' (did you mean 'hidden1'?); "
            "known groups: input, hidden1, output",
        ),
        (
            ("analyze", "{file}", "centroid", "-O", "bins", "-o", "{tmp}/x.nc"),
            "--option expects KEY=VALUE",
        ),
        (
            ("analyze", "{file}", "msd", "-O", "bins=3", "-o", "{tmp}/x.nc"),
            "option 'bins' is not accepted by msd",
        ),
        (("plot", "{file}", "-o", "{tmp}/x.jpg"), "unsupported image format '.jpg'"),
        (("plot", "{file}", "--group", "outptu", "-o", "{tmp}/x.png"), "unknown group 'outptu'"),
        (("plot", "{file}", "--frame", "7", "-o", "{tmp}/x.png"), "frame 7 out of range"),
        (
            ("plot", "{file}", "--kind", "histogram", "-o", "{tmp}/x.png"),
            "unknown plot kind 'histogram'",
        ),
        (("plot", "{file}", "--dpi", "0", "-o", "{tmp}/x.png"), "--dpi must be a positive integer"),
        (
            ("plot", "{file}", "--dpi", "1000000", "-o", "{tmp}/x.png"),
            "pixels at --dpi 1000000: ValueError: Image size of",
        ),
        (("animate", "{file}", "-o", "{tmp}/x.webm"), "unsupported animation format '.webm'"),
        (
            ("animate", "{file}", "-o", "{tmp}/x.gif", "--every", "0"),
            "--every must be a positive integer",
        ),
    ],
)
def test_cli_errors(fake_file: Path, tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    (tmp_path / "broken.h5").write_bytes(b"")
    argv = [a.format(file=fake_file, tmp=tmp_path) for a in args]
    assert_one_line_error(invoke(*argv), expected)


def test_cli_mp4_without_ffmpeg(
    fake_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert_one_line_error(
        invoke("animate", fake_file, "-o", tmp_path / "a.mp4"),
        "needs ffmpeg, which is not on PATH; install it or write a .gif instead",
    )


def test_reader_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5")

    def reader(p: Path) -> xr.DataTree:
        raise OSError("Unable to open file (file signature not found)")

    monkeypatch.setattr(analysis_commands, "_reader", lambda: reader)
    assert_one_line_error(
        invoke("inspect", path), "cannot read as a trajectory: Unable to open file"
    )
    assert isinstance(AnalysisError("x"), ParticlesimError)


# --- the real reader -----------------------------------------------------------------------


@needs_reader
def test_real_reader_on_a_synthetic_h5md_file(tmp_path: Path) -> None:
    tree = make_tree()
    path = write_h5md(tmp_path / "synthetic.h5", tree)
    app = cli_app()
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert sorted(g["name"] for g in info["groups"]) == ["hidden1", "input", "output"]
    out = tmp_path / "rg.nc"
    result = runner.invoke(app, ["analyze", str(path), "radius_of_gyration", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as back:
        np.testing.assert_allclose(
            back["radius_of_gyration_hidden1"].values,
            radius_of_gyration(tree["particles/hidden1"].to_dataset()).values,
        )


@needs_reader
def test_reader_error_on_a_non_trajectory(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(b"this is not HDF5")
    result = invoke("inspect", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith("error:")]) == 1


@needs_reader
def test_cli_on_a_real_run(tiny_scenario: Path, tmp_path: Path) -> None:
    import pandas as pd

    from particlesim.cli.app import app as main_app

    text = tiny_scenario.read_text(encoding="utf-8")
    tiny_scenario.write_text(
        text + '\n[[writers]]\nname = "trajectory"\nevery = 3\nconnectivity_every = "epoch"\n',
        encoding="utf-8",
    )
    out = tmp_path / "run"
    result = runner.invoke(main_app, ["run", str(tiny_scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output
    path = out / "trajectory.h5"

    info = json.loads(invoke("inspect", path, "--json").stdout)
    assert info["scenario"] == "tiny" and info["parameters"]["seed"] == 3
    sizes = {g["name"]: g["particles"] for g in info["groups"]}
    assert sizes["hidden1"] == 8
    assert {g["dimension"] for g in info["groups"]} == {2}
    hidden = next(g for g in info["groups"] if g["name"] == "hidden1")
    assert hidden["frames"] == 5 and hidden["steps"] == [0, 12]  # 12 steps, every 3
    assert {o["name"] for o in info["observables"]} >= {"loss", "test_accuracy"}
    assert [c["name"] for c in info["connectivity"]] == ["input_to_hidden1", "hidden1_to_output"]
    table = invoke("inspect", path)
    assert table.exit_code == 0 and "input_to_hidden1" in table.stdout

    nc = tmp_path / "m.nc"
    metrics = ["radius_of_gyration", "connection_length", "weight_distance_correlation"]
    result = invoke("analyze", path, *metrics, "-o", nc)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(nc) as back:
        assert back["radius_of_gyration_hidden1"].dims == ("time",)
        assert back["connection_length_input_to_hidden1"].dims == ("time_1",)  # epoch clock
        assert list(back["step_1"].values) == [6, 12]
        length = back["connection_length_input_to_hidden1"].values
        assert np.all(np.isfinite(length)) and np.all(length > 0)
        assert np.all(np.abs(back["weight_distance_correlation_input_to_hidden1"].values) <= 1)
    csv = tmp_path / "m.csv"
    assert invoke("analyze", path, "centroid", "msd", "-o", csv).exit_code == 0
    assert set(pd.read_csv(csv)["variable"]) >= {"centroid_hidden1", "msd_output"}

    png = tmp_path / "p.png"
    assert invoke("plot", path, "-o", png).exit_code == 0
    assert_picture(png, (800, 300))
    gif = tmp_path / "a.gif"
    result = invoke("animate", path, "-o", gif, "--group", "hidden1", "--group", "output")
    assert result.exit_code == 0, result.output
    with Image.open(gif) as image:
        assert image.n_frames == 5
    assert_one_line_error(invoke("plot", path, "--group", "hiden", "-o", png), "unknown group")


def test_measures_take_plain_arrays_of_positions_and_weights() -> None:
    """numpy ``[target, source]`` weights and ``[particle, spatial]`` positions (or with
    frames first) give the xarray inputs' values; other shapes and fields are one line."""
    from particlesim.analysis import measures

    rng = np.random.default_rng(0)
    w, src, tgt = rng.random((4, 5)), rng.random((5, 2)), rng.random((4, 2))
    as_xr = (
        xr.DataArray(w, dims=("target", "source")),
        xr.DataArray(src, dims=("particle", "spatial")),
        xr.DataArray(tgt, dims=("particle", "spatial")),
    )
    for measure in (measures.weight_distance_correlation, measures.connection_length):
        got = measure(w, src, tgt)
        assert got.dims == () and float(got) == pytest.approx(float(measure(*as_xr)))
        frames = measure(np.stack([w, w[::-1]]), np.stack([src, src]), [tgt, tgt])
        assert frames.dims == ("time",) and float(frames[0]) == pytest.approx(float(got))
    distances = np.linalg.norm(tgt[:, None] - src[None], axis=-1)
    expected = float((w * distances).sum() / w.sum())
    assert float(measures.connection_length(w, src, tgt)) == pytest.approx(expected)
    with pytest.raises(AnalysisError, match=r"weight: expected \[target, source\] or \[time, "):
        measures.connection_length(w[0], src, tgt)
    with pytest.raises(AnalysisError, match="charge: expected an xarray Dataset or DataArray"):
        measures.charge_range(np.ones(3))
    with pytest.raises(AnalysisError, match="position: expected an xarray Dataset or DataArray, "):
        measures.connection_length(w, "positions.h5", tgt)
