"""The experiment harness, particlesim.experiments: grids, resumable runs, CSV, stats, tables."""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_SCENARIO

from particlesim.errors import ParticlesimError
from particlesim.experiments import (
    Point,
    Stats,
    build_point,
    cell,
    comparison_table,
    describe,
    grid,
    markdown_table,
    numbers,
    parse_value,
    point_id,
    read_csv,
    run_grid,
    summarize,
    t_critical,
    within_spread,
    write_csv,
    write_json,
)

# --------------------------------------------------------------------------- grid


def test_grid_expands_axes_last_fastest_with_stable_ids() -> None:
    points = grid({"model": ["a", "b"], "fraction": [0.1, 0.5], "seed": range(3)})
    assert len(points) == 2 * 2 * 3
    assert [tuple(p.values.values()) for p in points[:4]] == [
        ("a", 0.1, 0),
        ("a", 0.1, 1),
        ("a", 0.1, 2),
        ("a", 0.5, 0),
    ]
    assert points[-1].values == {"model": "b", "fraction": 0.5, "seed": 2}
    assert points[4]["fraction"] == 0.5 and points[4].label() == "model=a fraction=0.5 seed=1"
    ids = [p.id for p in points]
    assert len(set(ids)) == len(ids) and all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
    # the same point in another grid (other axis order, other neighbours) has the same id
    again = grid({"seed": [2], "fraction": [0.5], "model": ["b"]})
    assert again[0].id == points[-1].id
    # pinned: a journal written today is still understood tomorrow
    assert point_id({"model": "a", "seed": 0}) == point_id({"seed": 0, "model": "a"})
    canonical = b'{"context":{},"values":{"model":"a","seed":0}}'
    assert point_id({"model": "a", "seed": 0}) == hashlib.sha256(canonical).hexdigest()[:12]
    assert point_id({"sizes": (2, 10, 1)}) == point_id({"sizes": [2, 10, 1]})


def test_grid_context_enters_the_ids_and_duplicates_merge() -> None:
    short = grid({"seed": range(2)}, context={"steps": 10})
    long = grid({"seed": range(2)}, context={"steps": 20})
    assert [p.values for p in short] == [p.values for p in long]
    assert not {p.id for p in short} & {p.id for p in long}
    assert short[0].id == grid({"seed": [0]}, context={"steps": 10})[0].id
    assert [p["n"] for p in grid({"n": [16, 32, 16]})] == [16, 32]
    assert grid({"n": []}) == []


# --------------------------------------------------------------------------- running a grid


class KilledError(Exception):
    """Stands for the process being killed while a point runs."""


def measure(point: Point) -> dict[str, Any]:
    """A deterministic stand-in for a training run."""
    return {
        "model": point["model"],
        "seed": point["seed"],
        "accuracy": 0.5 + 0.1 * point["seed"] + (0.05 if point["model"] == "b" else 0.0),
        "note": f"{point['model']}, seed {point['seed']}",  # a comma: quoted in the CSV
    }


def axes() -> dict[str, Any]:
    return {"model": ["a", "b"], "seed": range(3)}


def test_run_grid_writes_a_row_per_point_and_returns_them(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    seen: list[str] = []
    rows = run_grid(grid(axes()), measure, path, on_point=lambda p, row: seen.append(p.label()))
    assert rows == [measure(p) for p in grid(axes())]
    assert seen == [p.label() for p in grid(axes())]
    assert read_csv(path) == rows
    uninterrupted = tmp_path / "whole.csv"
    write_csv(rows, uninterrupted)
    assert path.read_bytes() == uninterrupted.read_bytes()
    lines = (tmp_path / "runs.points.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [p.id for p in grid(axes())]


def test_a_killed_grid_resumes_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    points = grid(axes(), context={"steps": 5})
    calls: list[str] = []
    kill = [points[3]]

    def run_point(point: Point) -> dict[str, Any]:
        calls.append(point.label())
        if point in kill:
            kill.clear()
            raise KilledError
        return measure(point)

    with pytest.raises(KilledError):
        run_grid(points, run_point, path)
    # the three finished points are on disk, in grid order, readable
    assert read_csv(path) == [measure(p) for p in points[:3]]

    calls.clear()
    messages: list[str] = []
    rows = run_grid(points, run_point, path, log=messages.append)
    assert calls == [p.label() for p in points[3:]]  # only the missing points ran
    assert messages == ["resume: 3 of 6 points already in runs.points.jsonl, 3 to run"]
    assert rows == [measure(p) for p in points]
    whole = write_csv(rows, tmp_path / "whole.csv")
    assert path.read_bytes() == whole.read_bytes()

    calls.clear()
    assert run_grid(points, run_point, path) == rows and calls == []  # all finished: nothing runs
    assert path.read_bytes() == whole.read_bytes()
    assert run_grid(points, run_point, path, resume=False) == rows  # anew: everything runs
    assert len(calls) == 6


def test_resume_drops_a_journal_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    points = grid(axes())
    run_grid(points[:2], measure, path)
    journal = tmp_path / "runs.points.jsonl"
    with journal.open("a", encoding="utf-8") as handle:  # killed while writing the third
        handle.write('{"id": "' + points[2].id + '", "values": {"mod')
    calls: list[str] = []

    def run_point(point: Point) -> dict[str, Any]:
        calls.append(point.label())
        return measure(point)

    rows = run_grid(points, run_point, path)
    assert calls == [p.label() for p in points[2:]]
    assert rows == [measure(p) for p in points]
    assert [json.loads(line)["id"] for line in journal.read_text().splitlines()] == [
        p.id for p in points
    ]
    journal.write_text("not json\n")
    with pytest.raises(ParticlesimError, match=r"points.jsonl:1: not a line of a grid journal"):
        run_grid(points, run_point, path)


def test_resume_under_other_settings_reruns_and_keeps_the_old_points_out(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    run_grid(grid(axes(), context={"steps": 5}), measure, path)
    calls: list[str] = []

    def longer(point: Point) -> dict[str, Any]:
        calls.append(point.label())
        return {**measure(point), "accuracy": 0.9}

    messages: list[str] = []
    rows = run_grid(grid(axes(), context={"steps": 50}), longer, path, log=messages.append)
    assert len(calls) == 6 and {r["accuracy"] for r in rows} == {0.9}
    assert {r["accuracy"] for r in read_csv(path)} == {0.9}
    assert messages == []
    # a subset of the grid: the other points' rows stay in the journal, out of the table
    fewer = grid({"model": ["a"], "seed": range(3)}, context={"steps": 50})
    rows = run_grid(fewer, longer, path, log=messages.append)
    assert len(calls) == 6 and [r["model"] for r in read_csv(path)] == ["a"] * 3
    assert messages == [
        "resume: 3 of 3 points already in runs.points.jsonl, 0 to run "
        "(9 finished under other settings left out)"
    ]


def test_several_tables_rows_per_point_and_new_columns(tmp_path: Path) -> None:
    """Points give several rows, a second table only sometimes, and later rows new columns."""
    tables = {"runs": tmp_path / "runs.csv", "curves": tmp_path / "curves.csv"}
    points = grid({"kind": ["init"], "n": [1, 2]}) + grid({"kind": ["trained"], "n": [1, 2]})

    def run_point(point: Point) -> dict[str, Any]:
        row = {"kind": point["kind"], "n": point["n"], "error": 1.0 / point["n"]}
        if point["kind"] == "init":
            return {"runs": row}
        curve = [{"n": point["n"], "step": s, "loss": 0.5**s} for s in range(3)]
        return {"runs": {**row, "steps": 3, "time": None}, "curves": curve}

    def killing(point: Point) -> dict[str, Any]:
        if point["kind"] == "trained" and point["n"] == 2:
            raise KilledError
        return run_point(point)

    with pytest.raises(KilledError):
        run_grid(points, killing, tables)
    assert not (tmp_path / "curves.csv").read_text().count("\n2,")
    results = run_grid(points, run_point, tables)
    assert [r["kind"] for r in results["runs"]] == ["init", "init", "trained", "trained"]
    assert len(results["curves"]) == 6
    with (tmp_path / "runs.csv").open(newline="") as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["kind", "n", "error", "steps", "time"]  # union, first-seen order
    assert written[1] == ["init", "1", "1.0", "", ""]
    assert written[3] == ["trained", "1", "1.0", "3", ""]
    whole = {name: write_csv(results[name], tmp_path / f"whole_{name}.csv") for name in tables}
    for name, path in tables.items():
        assert path.read_bytes() == whole[name].read_bytes()
    with pytest.raises(ParticlesimError, match="expected a mapping of runs, curves to rows"):
        run_grid(grid({"x": [1]}), lambda p: [{"x": 1}], tables, resume=False)


def test_a_table_without_rows_is_not_written(tmp_path: Path) -> None:
    tables = {"runs": tmp_path / "runs.csv", "extra": tmp_path / "extra.csv"}
    (tmp_path / "extra.csv").write_text("stale\n")
    results = run_grid(grid({"x": [1, 2]}), lambda p: {"runs": {"x": p["x"]}}, tables, resume=False)
    assert results == {"runs": [{"x": 1}, {"x": 2}], "extra": []}
    assert not (tmp_path / "extra.csv").exists()


def test_concurrent_points_are_recorded_as_they_end_and_tabled_in_grid_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.csv"
    points = grid(axes())
    first_may_end = threading.Event()
    ended: list[str] = []

    def run_point(point: Point) -> dict[str, Any]:
        if point is points[0]:  # the first point ends last
            assert first_may_end.wait(10)
        return measure(point)

    def on_point(point: Point, row: dict[str, Any]) -> None:
        ended.append(point.label())
        if len(ended) == len(points) - 1:
            assert read_csv(path) == [measure(p) for p in points[1:]]  # on disk, in grid order
            first_may_end.set()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(points)) as pool:
        rows = run_grid(points, run_point, path, executor=pool, on_point=on_point)
    assert ended[-1] == points[0].label()
    assert rows == [measure(p) for p in points] == read_csv(path)
    assert path.read_bytes() == write_csv(rows, tmp_path / "whole.csv").read_bytes()


def test_a_failing_concurrent_point_leaves_the_others_recorded(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    points = grid(axes())

    def run_point(point: Point) -> dict[str, Any]:
        if point["model"] == "b" and point["seed"] == 1:
            raise KilledError
        return measure(point)

    with (
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
        pytest.raises(KilledError),
    ):
        run_grid(points, run_point, path, executor=pool)
    finished = {(r["model"], r["seed"]) for r in read_csv(path)}
    assert {("a", 0), ("a", 1), ("a", 2), ("b", 0)} <= finished
    assert ("b", 1) not in finished


def test_run_grid_refuses_what_it_cannot_record(tmp_path: Path) -> None:
    point = grid({"x": [1]})[0]
    with pytest.raises(ParticlesimError, match="two points have the id"):
        run_grid([point, point], lambda p: {"x": 1}, tmp_path / "a.csv")
    with pytest.raises(ParticlesimError, match="expected a row"):
        run_grid([point], lambda p: "text", tmp_path / "b.csv")


# --------------------------------------------------------------------------- CSV


def test_csv_round_trip_keeps_numbers_and_types(tmp_path: Path) -> None:
    rows = [
        {"name": "a", "n": 3, "x": 0.1, "tiny": 1e-300, "big": -2.5e17, "text": "1_000"},
        {"name": "b, quoted", "n": -7, "x": math.inf, "nan": math.nan, "none": None},
        {"name": "", "flag": True, "n": 0, "x": 1.0, "list": [1, 2]},
    ]
    path = write_csv(rows, tmp_path / "rows.csv")
    back = read_csv(path)
    assert list(back[0]) == ["name", "n", "x", "tiny", "big", "text", "nan", "none", "flag", "list"]
    assert back[0]["n"] == 3 and isinstance(back[0]["n"], int)
    assert back[0]["x"] == 0.1 and back[0]["tiny"] == 1e-300 and back[0]["big"] == -2.5e17
    assert back[0]["text"] == "1_000"  # only plain decimal numbers convert
    assert back[0]["nan"] == "" and back[1]["none"] == ""  # missing cells and None: empty
    assert back[1]["name"] == "b, quoted" and back[1]["x"] == math.inf
    assert math.isnan(back[1]["nan"])
    assert back[2]["x"] == 1.0 and isinstance(back[2]["x"], float)
    assert back[2]["flag"] == "True" and back[2]["list"] == "[1, 2]" and back[2]["name"] == ""
    assert read_csv(path, typed=False)[0]["n"] == "3"
    formatted = write_csv([{"x": 1 / 3, "n": 2}], tmp_path / "g.csv", float_format=".10g")
    assert formatted.read_text().splitlines() == ["x,n", "0.3333333333,2"]
    assert [parse_value(t) for t in ("12", "-0", "1e-3", "nan", "+inf", ".5", " 5", "2-8")] == [
        12,
        0,
        1e-3,
        pytest.approx(math.nan, nan_ok=True),
        math.inf,
        0.5,
        " 5",
        "2-8",
    ]


def test_write_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "info.json", {"a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'


# --------------------------------------------------------------------------- statistics


def test_describe_against_closed_forms() -> None:
    stats = describe([1, 2, 3, 4])
    assert stats == (2.5, pytest.approx(math.sqrt(5 / 3)), 4)
    mean, std, n = stats
    assert stats.sem == pytest.approx(std / math.sqrt(n)) and mean == 2.5
    assert describe([5.0]) == Stats(5.0, 0.0, 1) and math.isnan(describe([5.0]).sem)
    empty = describe([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.std)
    assert all(math.isnan(v) for v in Stats(5.0, 0.0, 1).interval())


def test_student_t_interval_against_closed_forms() -> None:
    level = 0.95
    # one degree of freedom: Cauchy, t = tan(π·level/2); two: t = level·√(2/(1 − level²))
    assert t_critical(level, 1) == pytest.approx(math.tan(math.pi * level / 2), rel=1e-10)
    assert t_critical(level, 2) == pytest.approx(level * math.sqrt(2 / (1 - level**2)), rel=1e-10)
    assert t_critical(0.5, 2) == pytest.approx(0.5 * math.sqrt(2 / 0.75), rel=1e-10)
    for df, value in ((3, 3.182446305), (4, 2.776445105), (10, 2.228138852), (30, 2.042272456)):
        assert t_critical(level, df) == pytest.approx(value, rel=1e-8)
    assert t_critical(0.99, 5) == pytest.approx(4.032142984, rel=1e-8)
    assert t_critical(level, 4000) == pytest.approx(1.959963985, rel=1e-3)  # → the normal's
    low, high = describe([1.0, 3.0]).interval(level)  # mean 2, std √2, sem 1, df 1
    assert (low, high) == pytest.approx((2 - 12.7062047362, 2 + 12.7062047362))
    with pytest.raises(ValueError):
        t_critical(1.0, 3)
    with pytest.raises(ValueError):
        t_critical(0.9, 0)


def test_summarize_groups_rows_over_seeds() -> None:
    rows = [
        {"model": m, "x": x, "seed": s, "acc": a, "scoring": sc}
        for (m, x, s, a, sc) in [
            ("a", 0.1, 0, 0.5, "p"),
            ("a", 0.1, 1, 0.7, "p"),
            ("b", 0.1, 0, 0.9, "p"),
            ("a", 0.2, 0, 0.8, "p"),
            ("a", 0.1, 0, 0.0, "q"),
        ]
    ]
    by_model = summarize(rows, ("model", "x"), "acc", where={"scoring": "p"})
    assert list(by_model) == [("a", 0.1), ("b", 0.1), ("a", 0.2)]  # first-seen order
    assert by_model["a", 0.1] == (0.6, pytest.approx(math.sqrt(0.02)), 2)
    assert by_model["b", 0.1] == (0.9, 0.0, 1)
    assert summarize(rows, "model", "acc")["a"].n == 4
    squared = summarize(rows, lambda r: r["x"] > 0.15, lambda r: r["acc"] ** 2)
    assert squared[True] == (pytest.approx(0.64), 0.0, 1)
    assert numbers([1, 2.5, "", "x", None, math.nan, math.inf, True]) == [1.0, 2.5]


def test_within_spread() -> None:
    assert within_spread(Stats(0.85, 0.01, 3), (0.80, 0.13))
    assert within_spread(Stats(0.60, 0.25, 3), Stats(0.80, 0.05, 3))  # within our own spread
    assert not within_spread(Stats(0.50, 0.01, 3), (0.80, 0.13))
    assert within_spread(Stats(0.004, 0.0, 1), (0.0, 0.0), slack=0.005)


# --------------------------------------------------------------------------- Markdown


def test_cells_and_markdown_tables() -> None:
    assert cell(Stats(0.91234, 0.01234, 3)) == "0.9123 ± 0.0123"
    assert cell(Stats(0.91234, 0.0, 1)) == "0.9123"
    assert cell(Stats(1234.5, 0.0123, 2), ".4g", ".2g") == "1234 ± 0.012"
    assert cell(None) == "–" and cell(describe([])) == "–" and cell(None, empty="n/a") == "n/a"
    assert markdown_table(["", "a"], [["x", 1], ["y", ""]]) == [
        "|  | a |",
        "|---|---|",
        "| x | 1 |",
        "| y |  |",
    ]


def test_comparison_table_puts_the_paper_beside_ours() -> None:
    ours = {
        "positional": {0.1: Stats(0.81234, 0.01, 2), 0.3: Stats(0.9, 0.0, 1)},
        "vanilla + L2": {0.1: Stats(0.5, 0.1, 4)},
    }
    paper = {
        "positional": {0.1: 0.8506, 0.2: 0.9},
        "vanilla": {0.30000000000000004: Stats(0.88, 0.03, 3)},
    }
    lines = comparison_table("fraction", [0.1, 0.3], ours, paper)
    assert lines == [
        "| fraction | positional | vanilla + L2 | paper positional | paper vanilla |",
        "|---|---|---|---|---|",
        "| 0.1 | 0.8123 ± 0.0100 | 0.5000 ± 0.1000 | 0.851 | – |",
        "| 0.3 | 0.9000 | – | – | 0.880 ± 0.030 |",  # 0.3 matches the paper's 0.1 + 0.2
    ]
    lines = comparison_table(
        "n", [16], {"ours": {16: Stats(1.0, 0.5, 3)}}, {"": {16: -0.5}},
        fmt=".2f", paper_fmt="g", paper_prefix="paper",
    )  # fmt: skip
    assert lines[0] == "| n | ours | paper |" and lines[2] == "| 16 | 1.00 ± 0.50 | -0.5 |"


# --------------------------------------------------------------------------- through the runner

#: The shared tiny scenario, recording metrics and a trajectory every step.
SCENARIO = (
    TINY_SCENARIO
    + """
[[writers]]
name = "metrics"
every = 1

[[writers]]
name = "trajectory"
every = 1
"""
)


def test_build_point_and_a_grid_through_the_runner(tmp_path: Path, tiny_data: Path) -> None:
    scenario = tmp_path / "harness.toml"
    scenario.write_text(SCENARIO.format(data_dir=tiny_data), encoding="utf-8")
    runner = build_point(scenario, ["run.steps=3"], clear=["run.epochs"], keep_writers=["metrics"])
    assert runner.plan.resolved["run"]["steps"] == 3
    assert runner.built.simulation.total_steps == 3
    assert [w["name"] for w in runner.plan.resolved["writers"]] == ["metrics"]
    assert build_point(scenario).plan.resolved["writers"] == []  # a grid point writes nothing
    assert build_point(scenario, clear=["run.nothing", "nothing.at.all"]).built is not None

    def run_point(point: Point) -> dict[str, Any]:
        built = build_point(scenario, [f"scenario.seed={point['seed']}", "run.steps=2"]).built
        result = built.simulation.run()
        _, accuracy = built.simulation.evaluate("test")
        return {"seed": point["seed"], "status": result.status, "test_accuracy": accuracy}

    rows = run_grid(grid({"seed": range(2)}), run_point, tmp_path / "runs.csv")
    assert [(r["seed"], r["status"]) for r in rows] == [(0, "completed"), (1, "completed")]
    assert read_csv(tmp_path / "runs.csv") == rows


def test_a_grid_point_stopped_part_way_is_never_recorded(tmp_path: Path, tiny_data: Path) -> None:
    """Ctrl-C (or SIGTERM) inside a point's run stops the grid; a failed run raises: neither
    is written to the journal as a finished point."""
    scenario = tmp_path / "harness.toml"
    scenario.write_text(SCENARIO.format(data_dir=tiny_data), encoding="utf-8")

    def stop(simulation: Any) -> None:
        if simulation.step == 2:
            raise KeyboardInterrupt

    def run_point(point: Point) -> dict[str, Any]:
        with build_point(scenario, ["run.steps=4"]) as runner:
            runner.run(progress=stop if point["seed"] == 1 else None)
            return {"seed": point["seed"], "step": runner.simulation.step}

    table = tmp_path / "grid.csv"
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid({"seed": [0, 1, 2]}), run_point, table)
    journal = (tmp_path / "grid.points.jsonl").read_text().splitlines()
    assert len(journal) == 1 and '"seed": 0' in journal[0]  # only the finished point
    diverging = build_point(scenario, ["run.steps=4", "integrator.lr=1e38"])
    with diverging, pytest.raises(ParticlesimError, match=r"^the run diverged: step \d"):
        diverging.run()
