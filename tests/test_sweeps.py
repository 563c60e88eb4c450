"""Parameter sweeps: expansion, validation, local and Dask executors, reruns, kills.

Most executor tests launch a small stand-in for ``particlesim run`` (written
below: it reads the point's scenario and writes a summary.json after a short
sleep) so that the sweep machinery is tested in seconds; one test runs real
points end to end, and the long stress tests sit behind ``-m slow``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.errors import ScenarioError
from particlesim.io.checkpoint import CHECKPOINT_FILE
from particlesim.scenario import sweeps
from particlesim.scenario.loader import parse_value, read_scenario
from particlesim.scenario.sweep_table import (
    Distribution,
    expand,
    parse_sweep,
    point_id,
    point_scenario,
    toml_literal,
)
from particlesim.scenario.sweeps import PointTask, plan_sweep, run_point

runner = CliRunner()

STUB = '''
"""Stand-in for `particlesim run FILE (--out DIR --overwrite | --resume DIR) --no-progress`."""
import json, os, shutil, sys, time, tomllib
from pathlib import Path

args = sys.argv[1:]
resume = "--resume" in args
scenario = Path(args[0])
out = Path(args[args.index("--resume" if resume else "--out") + 1])
point = out.name
mode = os.environ.get("STUB_MODE_" + point, "")


def note(text):
    fd = os.open(os.environ["STUB_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (text + "\\n").encode())
    os.close(fd)


note(f"start {point} {os.getpid()}" + (" resume" if resume else ""))
note(f"parent {point} {os.getppid()}")
raw = tomllib.loads(scenario.read_text(encoding="utf-8"))
if resume:
    assert (out / "checkpoint.pt").is_file()
    if mode == "bad-checkpoint":
        print("error: checkpoint.pt: not a checkpoint", file=sys.stderr)
        sys.exit(2)
    if mode == "final-checkpoint":  # killed between its last checkpoint and its summary
        print(f"{out}: the run already completed 12 steps; nothing to do")
        sys.exit(0)
elif out.exists():
    assert "--overwrite" in args, "the sweep must pass --overwrite"
    shutil.rmtree(out)
out.mkdir(parents=True, exist_ok=True)
if os.environ.get("STUB_CHECKPOINT"):
    (out / "checkpoint.pt").write_text("state")
    note(f"checkpoint {point} {os.getpid()}")
if mode == "hang" and not resume:  # until the test kills it
    time.sleep(120)
time.sleep(float(os.environ.get("STUB_SLEEP", "0.1")))
if mode == "crash":
    print("error: out of memory", file=sys.stderr)
    sys.exit(2)
lr, seed = raw["integrator"]["lr"], raw["scenario"]["seed"]
summary = {
    "status": "failed" if mode == "fail" else "completed",
    "error": "step 3: the loss is NaN" if mode == "fail" else None,
    "test_accuracy": 1.0 - lr,
    "test_loss": lr * (seed + 1),
    "val_accuracy": None,
    "wall_time_s": 0.1,
    "steps": 12,
    "epochs": 2.0,
    "seed": seed,
}
(out / "summary.json.tmp").write_text(json.dumps(summary))
(out / "summary.json.tmp").replace(out / "summary.json")
note(f"done {point}")
sys.exit(3 if mode == "fail" else 0)
'''

SWEEP = """
[sweep]
seeds = 2
[sweep.grid]
"integrator.lr" = [0.1, 0.2, 0.3]
"""


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points run the stand-in; returns the log file it writes ``start``/``done`` lines to."""
    script = tmp_path / "stub_run.py"
    script.write_text(STUB, encoding="utf-8")
    log = tmp_path / "stub.log"
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setattr(sweeps, "run_command", lambda: (sys.executable, str(script)))
    return log


def stub_events(log: Path, kinds: tuple[str, ...] = ("start", "done")) -> list[list[str]]:
    """The stand-in's log lines of these kinds (``start``, ``done``, ``parent``, ``checkpoint``)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split() for line in lines if line.split()[0] in kinds]


@pytest.fixture(scope="module")
def registries():
    from particlesim.plugins.manager import PluginManager

    return PluginManager().load().registries


def sweep_file(tiny_scenario: Path, sweep: str = SWEEP) -> Path:
    path = tiny_scenario.with_name("sweep.toml")
    path.write_text(tiny_scenario.read_text() + textwrap.dedent(sweep), encoding="utf-8")
    return path


def make_plan(path: Path, registries) -> sweeps.SweepPlan:
    return plan_sweep(read_scenario(path), registries, source=str(path), base_dir=path.parent)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# -- expansion ---------------------------------------------------------------------------


def test_grid_times_seeds_expansion_is_ordered_and_ids_are_stable() -> None:
    spec = parse_sweep(
        {"seeds": [5, 7], "grid": {"integrator.lr": [0.1, 0.01], "run.batch_size": [8, 16, 32]}}
    )
    points = expand(spec)
    assert spec.size == len(points) == 12
    assert [p.index for p in points] == list(range(12))
    assert points[0].overrides == {"integrator.lr": 0.1, "run.batch_size": 8, "scenario.seed": 5}
    assert points[1].overrides == {"integrator.lr": 0.1, "run.batch_size": 8, "scenario.seed": 7}
    assert points[2].overrides["run.batch_size"] == 16
    assert points[-1].overrides == {
        "integrator.lr": 0.01,
        "run.batch_size": 32,
        "scenario.seed": 7,
    }
    assert len({p.point_id for p in points}) == 12
    assert all(len(p.point_id) == 12 and int(p.point_id, 16) >= 0 for p in points)
    # the id depends on the set of overrides, not on the order of the keys or the points
    reordered = expand(
        parse_sweep(
            {"seeds": [7, 5], "grid": {"run.batch_size": [32, 16, 8], "integrator.lr": [0.01, 0.1]}}
        )
    )
    assert {p.point_id: p.overrides for p in reordered} == {p.point_id: p.overrides for p in points}
    assert point_id({"a.b": 1, "c.d": "x"}) == point_id({"c.d": "x", "a.b": 1})
    assert point_id({"a.b": 1}) != point_id({"a.b": 1.0}) != point_id({"a.b": "1"})
    assert points[0].label() == "integrator.lr=0.1, run.batch_size=8, scenario.seed=5"


def test_seeds_count_means_zero_to_n_minus_one() -> None:
    points = expand(parse_sweep({"seeds": 3}))
    assert [p.overrides for p in points] == [{"scenario.seed": s} for s in range(3)]


def test_random_draws_are_reproducible_from_the_sweep_seed() -> None:
    table = {
        "seed": 11,
        "random": {
            "samples": 50,
            "integrator.lr": {"log_uniform": [1e-4, 1e-1]},
            "model.dim": {"int_uniform": [1, 4]},
            "integrator.name": {"choice": ["adam", "sgd"]},
            "run.epochs": {"uniform": [0.5, 2.5]},
        },
    }
    first, again = expand(parse_sweep(table)), expand(parse_sweep(table))
    assert [p.overrides for p in first] == [p.overrides for p in again]
    other = expand(parse_sweep({**table, "seed": 12}))
    assert [p.overrides for p in other] != [p.overrides for p in first]
    assert len(first) == 50
    for p in first:
        assert 1e-4 <= p.overrides["integrator.lr"] <= 1e-1
        assert p.overrides["model.dim"] in {1, 2, 3, 4}
        assert isinstance(p.overrides["model.dim"], int)
        assert p.overrides["integrator.name"] in {"adam", "sgd"}
        assert 0.5 <= p.overrides["run.epochs"] <= 2.5
    assert {p.overrides["model.dim"] for p in first} == {1, 2, 3, 4}
    # the first draw in closed form: one rng.random() per axis, in table order
    u = random.Random(11).random()
    assert first[0].overrides["integrator.lr"] == pytest.approx(
        math.exp(math.log(1e-4) + (math.log(1e-1) - math.log(1e-4)) * u), rel=1e-12
    )
    assert Distribution("uniform", (2.0, 4.0)).draw(random.Random(0)) == pytest.approx(
        2.0 + 2.0 * random.Random(0).random()
    )


def test_random_samples_combine_with_grid_and_seeds_and_equal_draws_merge() -> None:
    spec = parse_sweep(
        {
            "seeds": 2,
            "grid": {"run.batch_size": [8, 16]},
            "random": {"samples": 3, "integrator.lr": {"uniform": [0.0, 1.0]}},
        }
    )
    points = expand(spec)
    assert len(points) == spec.size == 12
    lrs = {p.overrides["integrator.lr"] for p in points}
    assert len(lrs) == 3  # a sample is shared by every grid point and seed
    merged = expand(parse_sweep({"random": {"samples": 20, "model.dim": {"choice": [2, 3]}}}))
    assert sorted(p.overrides["model.dim"] for p in merged) == [2, 3]


@pytest.mark.parametrize(
    "value",
    [
        0.001,
        1e-300,
        -2.5,
        7,
        True,
        'a "quoted" \\ string ∂ é\x7f\n',
        [1, 2.5, "x", [True]],
        {"name": "gaussian", "sigma": 0.5, "odd key": [1]},
        float("inf"),
    ],
)
def test_values_reach_the_scenario_exactly(value) -> None:
    assert parse_value(toml_literal(value)) == value


def test_point_scenario_applies_overrides_and_fixes_relative_paths(tmp_path: Path) -> None:
    raw = {
        "data": {"name": "idx", "data_dir": "data"},
        "model": {"name": "mlp", "sizes": [0, 8, 0]},
        "plugins": ["my_kernel.py", "/abs/other.py"],
        "sweep": {"seeds": 2},
    }
    point = expand(parse_sweep({"seeds": 2, "grid": {"model.sizes[1]": [4]}}))[1]
    scenario = point_scenario(raw, point, base_dir=tmp_path)
    assert "sweep" not in scenario and "sweep" in raw
    assert scenario["model"]["sizes"] == [0, 4, 0] and raw["model"]["sizes"] == [0, 8, 0]
    assert scenario["scenario"] == {"seed": 1}
    assert scenario["data"]["data_dir"] == str(tmp_path / "data")
    assert scenario["plugins"] == [str(tmp_path / "my_kernel.py"), "/abs/other.py"]
    bad = expand(parse_sweep({"grid": {"model.sizes[5]": [4]}}))[0]
    with pytest.raises(ScenarioError, match=r"sweep point 0 \(model.sizes\[5\]=4\): model.sizes"):
        point_scenario(raw, bad, base_dir=tmp_path, source="s.toml")


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        ([1], "sweep", "expected a table [sweep], got [1] (an array)"),
        ({"seed": 1, "grids": {}}, "sweep.grids", "unknown key (did you mean 'grid'?)"),
        ({"seeds": 0}, "sweep.seeds", "expected a count from 1 to"),
        ({"seeds": [1, 1]}, "sweep.seeds", "repeated seed in [1, 1]"),
        ({"seeds": [-1]}, "sweep.seeds", "non-empty list of integers >= 0"),
        ({"seeds": "3"}, "sweep.seeds", "got '3' (a string)"),
        ({"seeds": 2, "seed": -4}, "sweep.seed", "expected an integer >= 0"),
        ({"grid": [1]}, "sweep.grid", "expected a table [sweep.grid]"),
        ({"grid": {"integrator.lr": 0.1}}, 'sweep.grid."integrator.lr"', "non-empty list"),
        ({"grid": {"integrator.lr": []}}, 'sweep.grid."integrator.lr"', "non-empty list"),
        ({"grid": {"a.b": [1, 1]}}, 'sweep.grid."a.b"', "repeated value in [1, 1]"),
        ({"grid": {"a..b": [1]}}, 'sweep.grid."a..b"', "malformed key path 'a..b'"),
        ({"grid": {"plugins": [["x.py"]]}}, 'sweep.grid."plugins"', "cannot be swept"),
        ({"grid": {"sweep.seeds": [1]}}, 'sweep.grid."sweep.seeds"', "cannot be swept"),
        (
            {"seeds": 2, "grid": {"scenario.seed": [1, 2]}},
            "sweep.seeds",
            "scenario.seed is swept by sweep.seeds",
        ),
        ({}, "sweep", "nothing to sweep"),
        ({"random": {"a.b": {"uniform": [0, 1]}}}, "sweep.random.samples", "missing 'samples'"),
        ({"random": {"samples": 2}}, "sweep.random", "nothing to draw"),
        ({"random": {"samples": -1, "a.b": {}}}, "sweep.random.samples", "expected an integer"),
        (
            {"random": {"samples": 2, "a.b": {"normal": [0, 1]}}},
            'sweep.random."a.b".normal',
            "unknown distribution 'normal'",
        ),
        (
            {"random": {"samples": 2, "a.b": [0, 1]}},
            'sweep.random."a.b"',
            "expected one of { uniform",
        ),
        (
            {"random": {"samples": 2, "a.b": {"uniform": [2, 1]}}},
            'sweep.random."a.b".uniform',
            "low 2 is greater than high 1",
        ),
        (
            {"random": {"samples": 2, "a.b": {"log_uniform": [0, 1]}}},
            'sweep.random."a.b".log_uniform',
            "low must be > 0",
        ),
        (
            {"random": {"samples": 2, "a.b": {"int_uniform": [0.5, 3]}}},
            'sweep.random."a.b".int_uniform',
            "two integers",
        ),
        (
            {"random": {"samples": 2, "a.b": {"uniform": [0, "nan"]}}},
            'sweep.random."a.b".uniform',
            "two finite numbers",
        ),
        (
            {"random": {"samples": 2, "a.b": {"choice": []}}},
            'sweep.random."a.b".choice',
            "non-empty list",
        ),
        (
            {"grid": {"a.b": [1, 2]}, "random": {"samples": 2, "a.b": {"choice": [3]}}},
            'sweep.random."a.b"',
            "both in [sweep.grid] and [sweep.random]",
        ),
        ({"seeds": 1000, "grid": {"a.b": list(range(1000))}}, "sweep", "more than 100,000"),
    ],
)
def test_sweep_table_errors_name_the_key_path(table, path: str, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_sweep(table, source="s.toml")
    assert caught.value.path == path
    assert message in caught.value.detail
    assert str(caught.value).startswith(f"s.toml: {path}: ")


_VALUES = st.recursive(
    st.one_of(
        st.integers(),
        st.floats(allow_subnormal=False),
        st.text(max_size=8),
        st.booleans(),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["integrator.lr", "a.b[1]", "x", "seed", "samples", "plugins", "a..b"])
_AXES = st.dictionaries(_KEYS | st.text(max_size=6), _VALUES, max_size=3)
_DISTRIBUTIONS = st.dictionaries(
    st.sampled_from(["uniform", "log_uniform", "int_uniform", "choice", "normal"]),
    st.lists(st.integers(-(2**60), 2**60) | st.floats(allow_subnormal=False), max_size=3),
    max_size=2,
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        _VALUES,
        st.fixed_dictionaries(
            {},
            optional={
                "seeds": _VALUES | st.integers(-3, 5),
                "seed": _VALUES,
                "grid": _AXES | _VALUES,
                "random": st.dictionaries(_KEYS, _DISTRIBUTIONS | _VALUES, max_size=3) | _VALUES,
                "extra": _VALUES,
            },
        ),
    )
)
def test_any_sweep_table_parses_or_fails_in_one_line(table) -> None:
    try:
        spec = parse_sweep(table, source="f.toml")
    except ScenarioError as exc:
        assert str(exc).startswith("f.toml: sweep") and "\n" not in str(exc)
        return
    if spec.size <= 1000:
        points = expand(spec)
        assert 1 <= len(points) <= spec.size
        assert len({p.point_id for p in points}) == len(points)
        for point in points:  # every value reaches the point's scenario unchanged
            for value in point.overrides.values():
                text = toml_literal(value)
                assert toml_literal(parse_value(text)) == text


def test_every_point_is_validated_before_anything_runs(tiny_scenario: Path, registries) -> None:
    path = sweep_file(
        tiny_scenario,
        """
        [sweep]
        seeds = 2
        [sweep.grid]
        "run.batch_size" = [16, 0]
        """,
    )
    with pytest.raises(ScenarioError) as caught:
        make_plan(path, registries)
    assert str(caught.value) == (
        f"{path}: sweep point 2 (run.batch_size=0, scenario.seed=0): "
        "run.batch_size: must be a positive integer, got 0"
    )
    plan = make_plan(sweep_file(tiny_scenario), registries)
    assert len(plan.points) == 6
    assert plan.seeds == {p.point_id: p.overrides["scenario.seed"] for p in plan.points}
    lrs = [plan.scenarios[p.point_id]["integrator"]["lr"] for p in plan.points]
    assert lrs == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]


def test_validate_and_run_accept_a_sweep_file(tiny_scenario: Path, tmp_path: Path) -> None:
    path = sweep_file(tiny_scenario)
    result = invoke("validate", path)
    assert result.exit_code == 0, result.output
    assert "is valid" in result.stdout
    assert f"sweep: 6 points; `particlesim sweep {path} --dry-run` checks every one" in (
        result.stdout
    )
    result = invoke("run", path, "--out", tmp_path / "base")
    assert result.exit_code == 0, result.output
    assert f"`particlesim sweep {path}` runs its 6 sweep points" in result.stderr
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 3  # the base point
    bad = sweep_file(tiny_scenario, "[sweep]\nseeds = -2\n")
    result = invoke("validate", bad)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {bad}: sweep.seeds: expected a count from 1 to 100000 or a list of seeds, got -2"
    )


# -- the command line --------------------------------------------------------------------


def test_dry_run_lists_points_and_writes_nothing(tiny_scenario: Path, tmp_path: Path) -> None:
    path = sweep_file(tiny_scenario)
    result = invoke("sweep", path, "--dry-run", "--out", tmp_path / "never", "-s", "sweep.seeds=1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[0] == "0" and lines[0].endswith("integrator.lr=0.1, scenario.seed=0")
    assert "3 points = grid 3 × 1 seeds" in result.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--retries", "-1"], "--retries must be >= 0, got -1"),
        (["--scheduler", "tcp://x:1", "--dask-local"], "give either --scheduler"),
        (["--set", "sweep.grid.x=1"], 'sweep.grid."x": expected a non-empty list'),
    ],
)
def test_sweep_option_errors(tiny_scenario: Path, args: list[str], message: str) -> None:
    result = invoke("sweep", sweep_file(tiny_scenario), *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_sweep_refuses_a_file_without_sweep_and_a_foreign_directory(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    result = invoke("sweep", tiny_scenario, "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tiny_scenario}: no [sweep] table")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = invoke("sweep", sweep_file(tiny_scenario), "--out", foreign)
    assert result.exit_code == 2
    assert "is not empty and holds no sweep.json" in result.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_sweep_cli_runs_every_point_then_skips_them_on_rerun(
    tiny_scenario: Path, tmp_path: Path, stub: Path
) -> None:
    out = tmp_path / "sweep"
    result = invoke("sweep", sweep_file(tiny_scenario), "--workers", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "0 finished already, 6 to run on 2 local workers" in result.stderr
    assert result.stderr.count(" completed in ") == 6
    assert "throughput: 6 points run in" in result.stdout
    assert "summary: 6/6 points completed" in result.stdout
    starts = [e for e in stub_events(stub) if e[0] == "start"]
    assert len(starts) == 6 and len({e[1] for e in starts}) == 6
    manifest = json.loads((out / "sweep.json").read_text())
    ids = [p["id"] for p in manifest["points"]]
    for pid in ids:
        point = tomllib.loads((out / "scenarios" / f"{pid}.toml").read_text())
        assert "sweep" not in point and point["data"]["data_dir"]
        assert "attempt 1" in (out / "logs" / f"{pid}.log").read_text()
    # summary.csv and summary.nc hold the same table, one row per point
    table = sweeps.read_summary_table(out / "summary.nc")
    frame = pd.read_csv(out / "summary.csv")
    assert list(table["point"].values) == ids == list(frame["point"])
    assert list(table["integrator.lr"].values) == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    assert list(table["seed"].values) == [0, 1, 0, 1, 0, 1]
    assert list(table["status"].values) == ["completed"] * 6
    assert table["test_accuracy"].values.tolist() == pytest.approx([0.9, 0.9, 0.8, 0.8, 0.7, 0.7])
    assert table["test_loss"].values.tolist() == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.3, 0.6])
    assert frame["test_loss"].tolist() == pytest.approx(table["test_loss"].values.tolist())
    assert frame["integrator.lr"].tolist() == table["integrator.lr"].values.tolist()
    assert math.isnan(float(table["val_accuracy"][0]))
    # a rerun starts nothing: same summaries, untouched
    stamps = {pid: (out / "points" / pid / "summary.json").stat().st_mtime_ns for pid in ids}
    again = invoke("sweep", sweep_file(tiny_scenario), "--workers", "2", "--out", out)
    assert again.exit_code == 0, again.output
    assert "6 finished already, 0 to run" in again.stderr
    assert "throughput: 0 points run" in again.stdout
    assert len(stub_events(stub)) == 12  # 6 starts + 6 dones, all from the first sweep
    assert stamps == {
        pid: (out / "points" / pid / "summary.json").stat().st_mtime_ns for pid in ids
    }
    # a widened grid runs only the new points
    result = invoke(
        "sweep",
        sweep_file(tiny_scenario, SWEEP.replace("0.3]", "0.3, 0.4]")),
        "--workers",
        "2",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "6 finished already, 2 to run" in result.stderr
    assert len(sweeps.read_summary_table(out / "summary.nc")["point"]) == 8


def test_killed_point_is_retried_and_every_point_finishes_once(
    tiny_scenario: Path, tmp_path: Path, stub: Path, registries, monkeypatch
) -> None:
    monkeypatch.setenv("STUB_CHECKPOINT", "1")  # so the killed point resumes
    plan = make_plan(sweep_file(tiny_scenario), registries)
    out = tmp_path / "sweep"
    sweeps.prepare_directory(plan, out)
    tasks = sweeps.point_tasks(plan, out, retries=1)
    # The third point to start (two workers) waits after its checkpoint until it is killed.
    target = tasks[2].point_id
    monkeypatch.setenv(f"STUB_MODE_{target}", "hang")
    killed: list[str] = []

    def kill_the_third_point() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # kill it once it has a checkpoint, so its retry resumes
            checkpointed = [e for e in stub_events(stub, ("checkpoint",)) if e[1] == target]
            if checkpointed:
                os.kill(int(checkpointed[0][2]), signal.SIGKILL)
                killed.append(target)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_third_point)
    killer.start()
    results = sweeps.run_local(tasks, workers=2)
    killer.join()
    assert len(killed) == 1
    by_point = {r.point_id: r for r in results}
    assert len(results) == len(by_point) == 6
    assert all(r.status == "completed" for r in results)
    assert by_point[killed[0]].attempts == 2
    assert sorted(r.attempts for r in results) == [1, 1, 1, 1, 1, 2]
    events = stub_events(stub)
    done = [e[1] for e in events if e[0] == "done"]
    assert sorted(done) == sorted(p.point_id for p in plan.points)  # each exactly once
    log = (out / "logs" / f"{killed[0]}.log").read_text()
    assert "attempt 1 exited with status -9" in log and "attempt 2 exited with status 0" in log
    assert f"--resume {out.resolve() / 'points' / killed[0]} --no-progress" in log
    assert [e for e in events if e[0] == "start" and e[1] == killed[0]][1][3] == "resume"
    table = sweeps.summary_dataset(plan, out)
    assert list(table["status"].values) == ["completed"] * 6


def test_a_failed_run_is_not_retried_but_a_crash_is(
    tiny_scenario: Path, tmp_path: Path, stub: Path, registries, monkeypatch
) -> None:
    plan = make_plan(sweep_file(tiny_scenario), registries)
    failing, crashing = plan.points[1].point_id, plan.points[4].point_id
    monkeypatch.setenv(f"STUB_MODE_{failing}", "fail")
    monkeypatch.setenv(f"STUB_MODE_{crashing}", "crash")
    out = tmp_path / "sweep"
    result = invoke(
        "sweep", sweep_file(tiny_scenario), "--workers", "2", "--out", out, "--retries", "2"
    )
    assert result.exit_code == 1, result.output
    assert f"{failing} failed in" in result.stderr
    assert "step 3: the loss is NaN" in result.stderr
    assert f"{crashing} failed in" in result.stderr and "(3 attempts)" in result.stderr
    assert "out of memory" in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: 2 of 6 points did not complete (")
    )
    starts = [e[1] for e in stub_events(stub) if e[0] == "start"]
    assert starts.count(failing) == 1 and starts.count(crashing) == 3
    table = sweeps.read_summary_table(out / "summary.nc")
    status = dict(zip(table["point"].values, table["status"].values, strict=True))
    assert status[failing] == "failed" and status[crashing] == "pending"
    assert sum(s == "completed" for s in status.values()) == 4


def test_run_point_waits_for_a_running_attempt_instead_of_starting_another(
    tmp_path: Path, stub: Path, monkeypatch
) -> None:
    """The lock is inherited by the point's process: while it lives, nobody else runs the point."""
    import fcntl
    import subprocess

    scenario = tmp_path / "p.toml"
    scenario.write_text("[scenario]\nseed = 0\n[integrator]\nlr = 0.5\n")
    task = PointTask(
        point_id="abc",
        scenario_file=str(scenario),
        out_dir=str(tmp_path / "points" / "abc"),
        log_file=str(tmp_path / "abc.log"),
        lock_file=str(tmp_path / "abc.lock"),
        command=sweeps.run_command(),
    )
    monkeypatch.setenv("STUB_SLEEP", "1.0")
    fd = os.open(task.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    orphan = subprocess.Popen(
        [*task.command, task.scenario_file, "--out", task.out_dir], pass_fds=(fd,)
    )
    os.close(fd)  # the launcher is gone; its child still holds the lock
    result = run_point(task)
    orphan.wait()
    assert result.status == "completed" and result.attempts == 0
    assert [e[0] for e in stub_events(stub)] == ["start", "done"]


def test_a_point_resumes_from_its_checkpoint_or_starts_afresh(
    tmp_path: Path, stub: Path, monkeypatch
) -> None:
    """A checkpoint left by a killed sweep is resumed; one that cannot be resumed is redone."""
    scenario = tmp_path / "p.toml"
    scenario.write_text("[scenario]\nseed = 1\n[integrator]\nlr = 0.5\n")
    out = tmp_path / "points"

    def task(point: str) -> PointTask:
        (out / point).mkdir(parents=True)
        (out / point / "checkpoint.pt").write_text("state")
        # an earlier sweep was interrupted here: its summary says so
        (out / point / "summary.json").write_text('{"status": "interrupted", "error": null}')
        return PointTask(
            point_id=point,
            scenario_file=str(scenario),
            out_dir=str(out / point),
            log_file=str(tmp_path / f"{point}.log"),
            lock_file=str(tmp_path / f"{point}.lock"),
            command=sweeps.run_command(),
            retries=0,
        )

    result = run_point(task("good"))
    assert (result.status, result.attempts) == ("completed", 1)
    assert stub_events(stub)[0][3] == "resume"
    assert sweeps.read_summary(out / "good")["test_loss"] == pytest.approx(1.0)
    monkeypatch.setenv("STUB_MODE_bad", "bad-checkpoint")
    result = run_point(task("bad"))
    assert (result.status, result.attempts) == ("completed", 2)  # the failed resume is free
    log = (tmp_path / "bad.log").read_text()
    assert "error: checkpoint.pt: not a checkpoint" in log
    assert "attempt 2 on" in log and f"--out {out / 'bad'} --overwrite" in log
    monkeypatch.setenv("STUB_MODE_final", "final-checkpoint")
    result = run_point(task("final"))
    assert (result.status, result.attempts) == ("completed", 2)
    assert "attempt 1 exited with status 0" in (tmp_path / "final.log").read_text()
    assert sweeps.CHECKPOINT_FILE == CHECKPOINT_FILE  # the name `particlesim run` writes


# -- Dask --------------------------------------------------------------------------------


def test_dask_local_cluster_of_two_workers(tiny_scenario: Path, tmp_path: Path, stub: Path) -> None:
    """`--dask-local -w 2`: one Dask task per point, spread over two worker processes."""
    pytest.importorskip("dask.distributed")
    out = tmp_path / "sweep"
    path = sweep_file(tiny_scenario, SWEEP.replace("seeds = 2", "seeds = 1"))
    result = invoke("sweep", path, "--dask-local", "--workers", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 to run on 2 Dask LocalCluster workers" in result.stderr
    assert "summary: 3/3 points completed" in result.stdout
    parents = {int(e[2]) for e in stub_events(stub, ("parent",))}
    assert len(parents) == 2 and os.getpid() not in parents  # two worker processes
    table = sweeps.read_summary_table(out / "summary.nc")
    assert table["test_accuracy"].values.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_missing_dask_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(sweeps.SweepError, match=r"pip install 'particlesim\[sweep\]'$"):
        sweeps.run_dask([], workers=1)


def test_unreachable_scheduler_is_one_line(
    tiny_scenario: Path, tmp_path: Path, stub, monkeypatch
) -> None:
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(sweeps, "CONNECT_TIMEOUT_S", 1.0)
    result = invoke(
        "sweep",
        sweep_file(tiny_scenario),
        "--scheduler",
        "tcp://127.0.0.1:1",
        "--out",
        tmp_path / "s",
    )
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    )


# -- real runs ---------------------------------------------------------------------------


def test_a_real_point_end_to_end(tiny_scenario: Path, tmp_path: Path) -> None:
    """A real `python -m particlesim run` process per point, then the rerun skips it."""
    path = sweep_file(tiny_scenario, '[sweep.grid]\n"integrator.lr" = [0.05]\n')
    out = tmp_path / "sweep"
    result = invoke("sweep", path, "--workers", "2", "--out", out)
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert result.exit_code == 0, result.output + logs
    assert "-m particlesim run" in logs and "--overwrite --no-progress" in logs
    table = sweeps.read_summary_table(out / "summary.nc")
    (pid,) = table["point"].values
    assert table["status"].values.tolist() == ["completed"]
    run_dir = out / "points" / pid
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(float(table["test_accuracy"][0]))
    assert summary["seed"] == 3 == int(table["seed"][0]) and summary["steps"] == 12
    assert tomllib.loads((run_dir / "scenario.toml").read_text())["integrator"]["lr"] == 0.05
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # one row per epoch
    again = invoke("sweep", path, "--out", out)
    assert again.exit_code == 0 and "1 finished already, 0 to run" in again.stderr


# -- stress (slow) -----------------------------------------------------------------------

STRESS = """
[sweep]
seeds = 4
[sweep.grid]
"integrator.lr" = [0.01, 0.02, 0.05, 0.1, 0.2]
"""


@pytest.mark.slow
def test_stress_dask_worker_killed_mid_sweep(
    tiny_scenario: Path, tmp_path: Path, stub: Path, registries, monkeypatch
) -> None:
    """20 points on 2 Dask workers; one worker is killed mid-sweep: every point finishes once."""
    pytest.importorskip("dask.distributed")
    monkeypatch.setenv("STUB_SLEEP", "1.0")
    plan = make_plan(sweep_file(tiny_scenario, STRESS), registries)
    assert len(plan.points) == 20
    out = tmp_path / "sweep"
    sweeps.prepare_directory(plan, out)
    killed: list[int] = []

    def kill_one_worker(client) -> None:
        pids = list(client.run(os.getpid).values())

        def later() -> None:
            while sum(e[0] == "done" for e in stub_events(stub)) < 5:
                time.sleep(0.02)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        threading.Thread(target=later, daemon=True).start()

    results = sweeps.run_dask(
        sweeps.point_tasks(plan, out, retries=1), workers=2, on_client=kill_one_worker
    )
    assert killed
    assert sorted(r.point_id for r in results) == sorted(p.point_id for p in plan.points)
    assert all(r.status == "completed" for r in results), results
    done = [e[1] for e in stub_events(stub) if e[0] == "done"]
    assert sorted(done) == sorted(p.point_id for p in plan.points)  # exactly once each
    # the point the dead worker was running: its process finished it, the rescheduled
    # task waited for that process (the lock) and started none of its own
    assert [r.attempts for r in results].count(0) == 1, results
    table = sweeps.summary_dataset(plan, out)
    assert list(table["status"].values) == ["completed"] * 20


@pytest.mark.slow
def test_stress_real_runs_with_a_killed_point(tiny_scenario: Path, tmp_path: Path) -> None:
    """20 real runs on 2 local workers; one running point is killed and redone; nothing lost."""
    out = tmp_path / "sweep"
    path = sweep_file(tiny_scenario, STRESS)
    killed: list[str] = []

    def kill_a_running_point() -> None:
        import subprocess

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            finished = len(list(out.glob("points/*/summary.json")))
            newest = subprocess.run(  # the point started last: still importing, far from done
                ["pgrep", "-n", "-f", "--", f"--out {out}/points/"], capture_output=True, text=True
            ).stdout.strip()
            if finished >= 3 and newest:
                try:
                    argv = Path(f"/proc/{newest}/cmdline").read_bytes().split(b"\0")
                    point_dir = Path(argv[argv.index(b"--out") + 1].decode())
                except (OSError, ValueError, IndexError):  # it exited meanwhile
                    continue
                if not (point_dir / "summary.json").exists():
                    os.kill(int(newest), signal.SIGKILL)
                    killed.append(point_dir.name)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_running_point, daemon=True)
    killer.start()
    result = invoke("sweep", path, "--workers", "2", "--out", out)
    killer.join(timeout=1)
    assert result.exit_code == 0, result.output
    assert killed
    assert f"{killed[0]} completed in" in result.stderr and "(2 attempts)" in result.stderr
    table = sweeps.read_summary_table(out / "summary.nc")
    assert len(table["point"]) == 20 and list(table["status"].values) == ["completed"] * 20
    logs = {p.stem: p.read_text() for p in (out / "logs").glob("*.log")}
    assert len(logs) == 20 and "attempt 1 exited with status -9" in logs[killed[0]]
    assert sum("exited with status -9" in log for log in logs.values()) == 1
    assert all(log.count("exited with status 0") == 1 for log in logs.values())


@pytest.mark.slow
def test_killed_real_point_resumes_from_its_checkpoint(tiny_scenario: Path, tmp_path: Path) -> None:
    """A real point killed after its first checkpoint continues from it; no epoch lost or twice."""
    import subprocess

    path = sweep_file(
        tiny_scenario,
        '[sweep.grid]\n"integrator.lr" = [0.05]\n',
    )
    path.write_text(
        path.read_text().replace("epochs = 2", "epochs = 400\ncheckpoint_every = 100"),
        encoding="utf-8",
    )
    out = tmp_path / "sweep"
    killed: list[str] = []

    def kill_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if list(out.glob("points/*/checkpoint.pt")):
                pid = subprocess.run(
                    ["pgrep", "-n", "-f", "--", f"--out {out}/points/"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                if pid:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_the_first_checkpoint, daemon=True)
    killer.start()
    result = invoke("sweep", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert killed and "(2 attempts)" in result.stderr
    (log_file,) = (out / "logs").glob("*.log")
    log = log_file.read_text()
    assert "attempt 1 exited with status -9" in log
    assert f"--resume {out / 'points' / log_file.stem} --no-progress" in log
    assert "resumed at step " in log
    run_dir = out / "points" / log_file.stem
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [float(e) for e in range(1, 401)]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2400


def test_a_new_summary_is_told_from_the_old_one_with_the_same_time(tmp_path: Path) -> None:
    """File systems with whole-second times: the rename gives the new summary another inode."""
    old = tmp_path / "summary.json"
    old.write_text('{"status": "failed"}')
    before = sweeps._summary_stamp(str(tmp_path))
    new = tmp_path / ".summary.json.partial"
    new.write_text('{"status": "failed"}')  # same size
    times = old.stat()
    os.utime(new, ns=(times.st_atime_ns, times.st_mtime_ns))
    new.replace(old)
    assert old.stat().st_mtime_ns == times.st_mtime_ns and old.stat().st_size == times.st_size
    assert sweeps._summary_stamp(str(tmp_path)) != before
    assert sweeps._summary_stamp(str(tmp_path / "nowhere")) is None
