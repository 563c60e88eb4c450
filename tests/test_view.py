"""The HTML trajectory viewer: what the page holds, its bounded size, the command, and the page
itself in headless Chromium (Playwright), skipped with a reason where no browser is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import xarray as xr
from plotly.offline import get_plotlyjs
from synthetic import group_ds, make_tree, run_tiny
from typer.testing import CliRunner

from particlesim.analysis import view
from particlesim.analysis.scene import Scene
from particlesim.cli import analysis_commands

runner = CliRunner()


def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    analysis_commands.register(app)
    return app


def trace(figure: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    index = next(i for i, t in enumerate(figure["data"]) if t["name"] == name)
    return index, figure["data"][index]


def frame_change(figure: dict[str, Any], frame: int, index: int) -> dict[str, Any]:
    f = figure["frames"][frame]
    return f["data"][f["traces"].index(index)]


# --- what the page holds ------------------------------------------------------------------


def test_view_holds_frames_panels_hover_network_and_curves() -> None:
    tree = make_tree(n_frames=7, dim=5, ids=True, epoch_clock=True)
    figure = view.build_view(tree, max_frames=4, edges=5)
    assert len(figure["frames"]) == 4
    slider = figure["layout"]["sliders"][0]["steps"]
    assert [s["label"] for s in slider] == [
        "step 0 · epoch 0",
        "step 20 · epoch 1",
        "step 40 · epoch 2",
        "step 60 · epoch 3",  # the last frame is kept
    ]
    assert [f["layout"]["title"]["text"] for f in figure["frames"]][-1] == (
        "synthetic · step 60 · epoch 3 · weights at step 60"
    )
    note = figure["layout"]["annotations"][-1]["text"]
    assert note.startswith("4 of 7 frames, spread evenly with the first and the last")

    scene = Scene(tree, frames=[0, 2, 4, 6])
    index, hidden = trace(figure, "hidden1")
    template = hidden["hovertemplate"]
    for part in ("%{text}", "charge %{marker.color", "id %{customdata[0]", "PC1 %{x"):
        assert part in template, template
    assert hidden["text"][3] == "hidden1 #3"
    scale = scene.groups["hidden1"].colour
    assert (hidden["marker"]["cmin"], hidden["marker"]["cmax"]) == (scale.lo, scale.hi)
    last = frame_change(figure, -1, index)
    page = scene.groups["hidden1"].page(scene.positions("hidden1", 6))
    np.testing.assert_allclose(last["x"], page[:, 0], atol=0.01)  # 3 significant digits
    ids = tree["particles/hidden1"].to_dataset()["id"].values[6]
    assert [row[0] for row in last["customdata"]] == ids.tolist()
    assert frame_change(figure, 0, index)["x"] != last["x"]  # the points move

    edges = [t for t in figure["data"] if t["name"].startswith("edges")]
    assert len(edges) == 6  # 2 signs × 3 strength levels
    drawn = sum(
        frame_change(figure, -1, i)["x"].count(None)
        for i, t in enumerate(figure["data"])
        if t["name"].startswith("edges")
    )
    assert drawn == 10  # the 5 strongest of each of the 2 interactions
    step_lines = [i for i, t in enumerate(figure["data"]) if t["name"] == "current step"]
    assert len(step_lines) == 2  # a loss panel and an accuracy panel
    assert frame_change(figure, 1, step_lines[0])["x"] == [20, 20]
    json.dumps(figure, allow_nan=False)  # plain JSON: no NaN


def test_size_is_bounded_by_the_frame_limit_and_the_point_budget(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = make_tree(n_frames=300, sizes={"input": 4, "hidden": 20, "output": 3})
    figure = view.build_view(tree)
    assert len(figure["frames"]) == view.MAX_FRAMES
    out = view.write_view(tree, tmp_path / "v.html", max_frames=10)
    big = view.write_view(tree, tmp_path / "w.html", max_frames=40)
    plotly_js = len(get_plotlyjs())
    assert out.stat().st_size - plotly_js < 100_000  # 10 frames of 27 particles
    assert out.stat().st_size < big.stat().st_size
    monkeypatch.setattr(view, "POINT_BUDGET", 27 * 10)  # 27 particles: 10 frames
    small = view.build_view(tree)
    assert len(small["frames"]) == 10
    assert small["layout"]["sliders"][0]["steps"][-1]["label"] == "step 2990"
    assert "10 of 300 frames" in small["layout"]["annotations"][-1]["text"]


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    tree = make_tree()
    page = view.write_view(tree, tmp_path / "v.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page)  # nothing fetched: plotly.js is inline
    assert not re.search(r"<link[^>]+href=", page)
    assert page.count("<script>") == 2 and "Plotly.newPlot" in page
    payload = page[page.index("var figure = ") :]
    assert "</" not in payload.split("Plotly.newPlot")[0]
    assert view._script_json({"name": "</script><!--"}) == ('{"name":"\\u003c/script>\\u003c!--"}')


# --- the command --------------------------------------------------------------------------


def one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.output


def no_positions() -> xr.DataTree:
    ds = group_ds(np.zeros((3, 2)), np.ones((2, 3)))
    return xr.DataTree.from_dict({"/particles/hidden": ds.drop_vars("position")})


def test_view_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"")
    trees = {"run.h5": make_tree(), "charges.h5": no_positions()}
    monkeypatch.setattr(analysis_commands, "_reader", lambda: lambda p: trees[p.name])
    result = runner.invoke(cli(), ["view", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "view.html").exists() and "wrote" in result.stdout
    nested = tmp_path / "new" / "dir" / "v.html"
    result = runner.invoke(cli(), ["view", str(path), "-o", str(nested), "--color", "none"])
    assert result.exit_code == 0 and nested.exists()
    (tmp_path / "charges.h5").write_bytes(b"")
    one_line_error(
        runner.invoke(cli(), ["view", str(tmp_path / "charges.h5")]),
        "no particle group records positions, which every picture draws "
        "(the groups hold hidden: charge)",
    )
    one_line_error(
        runner.invoke(cli(), ["view", str(path), "-g", "hiden1"]),
        "unknown group 'hiden1' (did you mean 'hidden1'?)",
    )
    one_line_error(
        runner.invoke(cli(), ["view", str(path), "-o", str(tmp_path / "v.png")]),
        "unsupported viewer format '.png'",
    )
    one_line_error(
        runner.invoke(cli(), ["view", str(path), "--max-frames", "0"]),
        "--max-frames must be a positive integer",
    )
    (tmp_path / "file").write_text("")
    one_line_error(
        runner.invoke(cli(), ["view", str(path), "-o", str(tmp_path / "file" / "v.html")]),
        "cannot write",
    )
    one_line_error(runner.invoke(cli(), ["view", str(tmp_path / "gone.h5")]), "no such file")


# --- in a browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    path = view.find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium found: apt-get install chromium, or set PARTICLESIM_CHROMIUM "
            "to a Chromium or Chrome executable"
        )
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except Exception as exc:  # a browser that cannot start here: a skip, with its reason
            pytest.skip(f"Chromium at {path} did not start: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def real_view(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """The viewer of a real tiny run in D = 3 (5 frames, weights at both epochs' ends)."""
    from conftest import TINY_SCENARIO

    folder = tmp_path_factory.mktemp("view")
    trajectory = run_tiny(folder, TINY_SCENARIO.format(data_dir=tiny_data), "model.dim=3")
    out = folder / "view.html"
    result = runner.invoke(cli(), ["view", str(trajectory), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_viewer_in_chromium(browser, real_view: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1700})
    errors: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def offline(route) -> None:  # the page must need nothing but itself
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            fetched.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(real_view.as_uri())
    page.wait_for_selector('#particlesim-view[data-ready="true"]', timeout=60_000)

    def data(name: str, key: str) -> Any:
        return page.evaluate(
            "([n, k]) => document.getElementById('particlesim-view')"
            ".data.find(t => t.name === n)[k]",
            [name, key],
        )

    def title() -> str:
        return page.evaluate("() => document.getElementById('particlesim-view').layout.title.text")

    def points(subplot: str) -> list[str | None]:
        return page.eval_on_selector_all(
            f".subplot.{subplot} .scatterlayer path.point",
            "els => els.map(e => e.getAttribute('transform'))",
        )

    assert title() == "tiny · step 0 · epoch 0 · weights at step 6"
    first_x, first_dom = data("hidden1", "x"), points("x2y2")
    assert len(first_x) == 8 and len(first_dom) == 8

    # hover over a particle of hidden1: group, index, charge and position
    box = page.locator(".subplot.x2y2 .scatterlayer path.point").first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(".hoverlayer .hovertext", timeout=10_000)
    hover = page.locator(".hoverlayer .hovertext").first.text_content() or ""
    assert re.search(r"hidden1 #\d", hover), hover
    assert "charge" in hover and "position (" in hover, hover

    # the slider's right end: the last frame; the points move in the data and in the SVG
    rail = page.locator(".slider-rail-rect").bounding_box()
    assert rail is not None
    page.mouse.click(rail["x"] + rail["width"] - 1, rail["y"] + rail["height"] / 2)
    page.wait_for_function(
        "() => document.getElementById('particlesim-view').layout.title.text.includes('step 12')",
        timeout=10_000,
    )
    assert data("hidden1", "x") != first_x
    assert points("x2y2") != first_dom
    assert data("current step", "x") == [12, 12]
    assert title() == "tiny · step 12 · epoch 2 · weights at step 12"
    assert any(len(data(n, "x")) for n in ("edges W > 0, level 2", "edges W < 0, level 2"))

    # back to the start, then play: the frames run to the last step
    page.mouse.click(rail["x"] + 1, rail["y"] + rail["height"] / 2)
    page.wait_for_function(
        "() => document.getElementById('particlesim-view').layout.title.text.includes('step 0 ')",
        timeout=10_000,
    )
    assert data("hidden1", "x") == first_x
    page.locator(".updatemenu-button").first.click()
    page.wait_for_function(
        "() => document.getElementById('particlesim-view').layout.title.text.includes('step 12')",
        timeout=15_000,
    )
    assert errors == [] and fetched == []
    page.close()


def test_screenshot_of_the_last_frame(browser, real_view: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = view.screenshot(
        real_view, tmp_path / "view.png", hover="hidden1", width=1000, browser=browser
    )
    with Image.open(out) as image:
        assert image.size[0] == 1000 and image.size[1] > 900  # the whole page
        assert len(image.convert("RGB").getcolors(1_000_000) or []) > 100
