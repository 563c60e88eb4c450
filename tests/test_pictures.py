"""Static pictures: a panel per group, per-group PCA and colour scales, the network view.

The figures' structure is checked (panels, titles, colour limits, projected coordinates,
edges), not their pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
import xarray as xr
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Text
from PIL import Image
from synthetic import group_ds, make_tree
from typer.testing import CliRunner

from particlesim.analysis import plots
from particlesim.analysis.scene import Scene, every_frames, spread_frames, steps_per_epoch
from particlesim.analysis.tree import AnalysisError
from particlesim.cli import analysis_commands

runner = CliRunner()


def panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def scatter(ax) -> PathCollection:
    found = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(found) == 1
    return found[0]


def pooled(tree: xr.DataTree, name: str) -> np.ndarray:
    """All frames' positions of a group, pooled: ``[T * N, D]``."""
    pos = tree[f"particles/{name}"].to_dataset()["position"].values
    return pos.reshape(-1, pos.shape[-1])


# --- positions ----------------------------------------------------------------------------


def test_each_group_is_projected_by_its_own_pca_fitted_over_all_frames() -> None:
    tree = make_tree(n_frames=6, dim=5, seed=1)
    for frame in (0, -1):
        fig = plots.plot_positions(tree, frame=frame)
        by_group = {ax.get_title().split(":")[0]: ax for ax in panels(fig)}
        for name in ("hidden1", "output"):
            points = pooled(tree, name)
            mean = points.mean(axis=0)
            _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
            drawn = tree[f"particles/{name}"].to_dataset()["position"].values[frame]
            expected = (drawn - mean) @ vt[:2].T
            offsets = scatter(by_group[name]).get_offsets()
            # the same axes up to their sign: |coordinates| agree
            np.testing.assert_allclose(np.abs(offsets), np.abs(expected), atol=1e-9)
            share = s**2 / (s**2).sum()
            assert by_group[name].get_xlabel() == f"PC1 ({100 * share[0]:.0f}%)"
            assert "PCA of 5-D" in by_group[name].get_title()
    # one projection for all frames: a particle keeps its coordinates' frame of reference
    scene = Scene(tree)
    group = scene.groups["hidden1"]
    signs = np.sign(group.basis[np.abs(group.basis).argmax(axis=0), [0, 1, 2]])
    assert np.all(signs > 0)


def test_d2_is_drawn_as_is_and_d1_on_a_line() -> None:
    tree = make_tree(dim=2)
    fig = plots.plot_positions(tree, frame=2)
    hidden = next(ax for ax in panels(fig) if ax.get_title().startswith("hidden1"))
    expected = tree["particles/hidden1"].to_dataset()["position"].values[2]
    np.testing.assert_allclose(scatter(hidden).get_offsets(), expected)
    assert (hidden.get_xlabel(), hidden.get_ylabel()) == ("x0", "x1")

    line = make_tree(dim=1)
    fig = plots.plot_positions(line)
    for ax in panels(fig):
        offsets = scatter(ax).get_offsets()
        assert np.all(offsets[:, 1] == 0)  # on a line
        assert ax.get_yticks().size == 0 and "1-D" in ax.get_title()
    name = "hidden1"
    expected = line[f"particles/{name}"].to_dataset()["position"].values[-1, :, 0]
    ax = next(ax for ax in panels(fig) if ax.get_title().startswith(name))
    np.testing.assert_allclose(scatter(ax).get_offsets()[:, 0], expected)


def test_charges_on_a_symmetric_scale_per_group() -> None:
    tree = make_tree(dim=3, channels=2)
    fig = plots.plot_positions(tree, frame=1)
    by_group = {ax.get_title().split(":")[0]: ax for ax in panels(fig)}
    for name in ("hidden1", "output"):
        q = tree[f"particles/{name}"].to_dataset()["charge"]
        if "channel" in q.dims:
            q = q.isel(channel=0)
        top = float(np.abs(q.values).max())  # over every frame, not only the drawn one
        norm = scatter(by_group[name]).norm
        assert (norm.vmin, norm.vmax) == pytest.approx((-top, top))
        np.testing.assert_allclose(scatter(by_group[name]).get_array(), q.values[1])
    assert scatter(by_group["input"]).get_array() is None  # no charges: grey
    labels = sorted(ax.get_ylabel() for ax in colorbars(fig))
    assert labels == ["charge", "charge (channel 0)"]


def test_colour_by_another_field_and_the_id_field_breaks_nothing() -> None:
    tree = make_tree(ids=True)
    fig = plots.plot_positions(tree)  # id recorded: still coloured by charge
    assert {ax.get_ylabel() for ax in colorbars(fig)} == {"charge"}
    fig = plots.plot_positions(tree, color="id")
    hidden = next(ax for ax in panels(fig) if ax.get_title().startswith("hidden1"))
    norm = scatter(hidden).norm
    assert (norm.vmin, norm.vmax) == (0, 4)  # 5 particles: ids 0…4, a sequential scale
    assert scatter(hidden).get_cmap().name == plots.SEQUENTIAL_CMAP
    np.testing.assert_array_equal(
        scatter(hidden).get_array(), tree["particles/hidden1"].to_dataset()["id"].values[-1]
    )
    with pytest.raises(AnalysisError, match=r"unknown field 'bias'; known fields: charge, id"):
        plots.plot_positions(tree, color="bias")
    fig = plots.plot_positions(tree, color=None)
    assert not colorbars(fig)


def test_title_names_run_step_and_epoch() -> None:
    tree = make_tree(epoch_clock=True)  # epoch ends every 20 steps
    assert steps_per_epoch(tree) == 20
    fig = plots.plot_positions(tree, frame=-1)
    assert fig.get_suptitle() == "synthetic · step 30 · epoch 1.50"
    fig = plots.plot_positions(tree, frame=2)
    assert fig.get_suptitle() == "synthetic · step 20 · epoch 1"


# --- the network view ---------------------------------------------------------------------


def chain_tree() -> xr.DataTree:
    """Groups stored output-first; weights with known strongest entries at steps 0 and 10."""
    steps = np.array([0, 10])
    coords = {"time": steps * 0.1, "step": ("time", steps)}
    w1 = np.zeros((2, 3, 4))  # hidden (3) × input (4)
    w1[1, 2, 0], w1[1, 0, 3], w1[1, 1, 1] = 5.0, -4.0, 0.5
    w2 = np.zeros((2, 2, 3))  # output (2) × hidden (3)
    w2[1, 1, 2] = -3.0
    w2[0, 0, 0] = 9.0  # strongest at step 0 only
    rng = np.random.default_rng(0)
    nodes = {
        "/": xr.Dataset(attrs={"scenario_name": "chain"}),
        "/particles/output": group_ds(
            rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2)), steps=steps
        ),
        "/particles/hidden": group_ds(
            rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 3)), steps=steps
        ),
        "/particles/input": group_ds(rng.normal(size=(4, 2))),
        "/connectivity/input_to_hidden": xr.Dataset(
            {"weight": (("time", "target", "source"), w1)},
            coords=coords,
            attrs={"source": "input", "target": "hidden"},
        ),
        "/connectivity/hidden_to_output": xr.Dataset(
            {"weight": (("time", "target", "source"), w2)},
            coords=coords,
            attrs={"source": "hidden", "target": "output"},
        ),
    }
    return xr.DataTree.from_dict(nodes)


def test_network_draws_layers_left_to_right_with_the_strongest_weights() -> None:
    tree = chain_tree()
    scene = Scene(tree, frames=[-1])
    assert scene.layer_order() == ["input", "hidden", "output"]  # the chain, not file order
    kept = {e.interaction: e for e in scene.edges(1, limit=2)}
    e = kept["input_to_hidden"]
    assert e.step == 10 and e.total == 12
    assert list(e.weight) == [5.0, -4.0]  # strongest first, sign kept
    assert list(e.source) == [0, 3] and list(e.target) == [2, 0]

    fig = plots.plot_network(tree, edges=2)
    (ax,) = panels(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input\n4", "hidden\n3", "output\n2"]
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = lines.get_segments()
    assert len(segments) == 4  # 2 per interaction (the second has 1 nonzero + a zero)
    first = segments[0]
    assert (first[0][0], first[1][0]) == (0.0, 1.0)  # input (layer 0) to hidden (layer 1)
    line = scene.groups["hidden"].line(scene.positions("hidden", 1))
    assert first[1][1] == pytest.approx(line[2])  # ends at hidden particle 2
    red = np.asarray(lines.get_colors())[0, :3]
    assert red[0] > red[2]  # W > 0 red
    assert "weights at step 10" in ax.get_title()
    assert fig.get_suptitle() == "chain · step 10"
    # at step 0 the connectivity frame of step 0 is used: its strongest weight is 9
    early = {e.interaction: e for e in Scene(tree, frames=[0]).edges(0, limit=1)}
    assert early["hidden_to_output"].weight[0] == 9.0 and early["hidden_to_output"].step == 0


def test_summary_has_no_empty_slot_and_readable_text(tmp_path: Path) -> None:
    tree = make_tree(n_frames=5, sizes={"input": 6, "h1": 5, "h2": 4, "h3": 4, "output": 3})
    fig = plots.plot_summary(tree, edges=10)
    assert fig.get_layout_engine() is not None  # constrained layout: nothing overlaps
    assert all(ax.get_visible() for ax in fig.axes)
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles[:2] == ["loss", "test_accuracy"]
    assert [t.split(":")[0] for t in titles[2:7]] == ["input", "h1", "h2", "h3", "output"]
    assert titles[7].startswith("network: the 10 strongest |W|")
    assert len(panels(fig)) == 8
    # 5 groups in rows of at most 4: 3 + 2, each row spanning the width
    boxes = [ax.get_position() for ax in panels(fig)[2:7]]
    rows = sorted({round(b.y0, 3) for b in boxes})
    assert len(rows) == 2
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert min(t.get_fontsize() for t in texts) >= 9  # readable at 100 % zoom
    fig.savefig(tmp_path / "all.png", dpi=60)
    with Image.open(tmp_path / "all.png") as image:
        assert image.size[0] > 600


def test_panel_grid_stretches_a_short_last_row() -> None:
    fig = plots.new_figure(figsize=(9, 4))
    axes = plots.panel_grid(fig, 5, 3)
    widths = [round(ax.get_position().width, 3) for ax in axes]
    assert widths[0] == widths[1] == widths[2] and widths[3] == widths[4] > widths[0]
    assert axes[3].get_position().x0 == pytest.approx(axes[0].get_position().x0)
    assert axes[4].get_position().x1 == pytest.approx(axes[2].get_position().x1)


# --- animation ----------------------------------------------------------------------------


def test_every_keeps_the_final_frame(tmp_path: Path) -> None:
    assert every_frames(5, 3) == [0, 3, 4]
    assert every_frames(5, 2) == [0, 2, 4]
    assert spread_frames(10, 4) == [0, 3, 6, 9]
    calls: list[int] = []
    plots.animate(
        make_tree(n_frames=5, dim=4),
        tmp_path / "a.gif",
        every=3,
        progress=lambda i, n: calls.append(n),
        dpi=40,
    )
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3
        # the static figure's layout: 3 group panels in one row
        width, height = plots.GROUP_PANEL
        assert gif.size == (round(3 * width * 40), round((height + 0.4) * 40))
    assert calls == [3, 3, 3]


# --- the command line ---------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    analysis_commands.register(app)
    return app


def use_tree(monkeypatch: pytest.MonkeyPatch, tree: xr.DataTree) -> None:
    monkeypatch.setattr(analysis_commands, "_reader", lambda: lambda path: tree)


def one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_kinds_colours_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    use_tree(monkeypatch, make_tree(ids=True))
    kinds = (["--kind", "network"], ["--color", "id", "--kind", "positions"], ["--color", "none"])
    for args in kinds:
        out = tmp_path / f"{args[1]}.png"
        result = runner.invoke(cli(), ["plot", str(path), "-o", str(out), "--dpi", "40", *args])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 1000
    nested = tmp_path / "new" / "folder" / "p.png"  # a missing folder is made
    result = runner.invoke(cli(), ["plot", str(path), "-o", str(nested), "--kind", "observables"])
    assert result.exit_code == 0, result.output
    assert nested.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(
        runner.invoke(cli(), ["plot", str(path), "-o", str(blocker / "p.png")]), "cannot write"
    )
    one_line_error(
        runner.invoke(cli(), ["plot", str(path), "--color", "bais", "-o", str(nested)]),
        "unknown field 'bais'",
    )
    one_line_error(
        runner.invoke(cli(), ["animate", str(path), "-g", "hiden1", "-o", str(tmp_path / "a.gif")]),
        "unknown group 'hiden1' (did you mean 'hidden1'?)",
    )
    one_line_error(
        runner.invoke(cli(), ["plot", str(path), "--edges", "-1", "-o", str(nested)]),
        "--edges must be >= 0",
    )
    use_tree(monkeypatch, make_tree(dim=1))  # D = 1: on a line, not an error
    line = tmp_path / "line.png"
    result = runner.invoke(cli(), ["plot", str(path), "-o", str(line), "--kind", "positions"])
    assert result.exit_code == 0, result.output


def test_frozen_places_with_relabelled_neurons_still_have_frames() -> None:
    """BIMT's layout: positions frozen, no charges, only ``id`` (and bias) over time."""
    steps = np.array([0, 100, 200])
    rng = np.random.default_rng(0)
    ds = group_ds(rng.normal(size=(4, 3)))
    ds = ds.assign_coords(time=steps * 0.1, step=("time", steps))
    ds["id"] = (("time", "particle"), np.stack([rng.permutation(4) for _ in steps]))
    root = xr.Dataset(attrs={"scenario_name": "bimt"})
    tree = xr.DataTree.from_dict({"/": root, "/particles/hidden": ds})
    scene = Scene(tree)
    assert scene.n_frames == 3 and scene.title(1) == "bimt · step 100"
    fig = plots.plot_positions(tree, frame=1, color="id")
    np.testing.assert_array_equal(scatter(panels(fig)[0]).get_array(), ds["id"].values[1])
    assert "frozen" in panels(fig)[0].get_title()
