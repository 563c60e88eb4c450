"""Every hook's docstring example, run the way its docstring says a user runs it.

For each hookspec, its ``.. code-block:: python`` example is written verbatim to
``my_plugin.py``, its ``.. code-block:: toml`` lines are added to a small scenario
beside it, and ``particlesim run --set run.steps=25`` must exit 0; then what the
docstring says the plugin registers is looked for where the docstring says it shows
up (the run's ``scenario.toml``, ``metrics.jsonl``, ``summary.json``, checkpoint,
standard output). An example that drifts from the code fails here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from conftest import make_tiny_idx
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.plugins import hookspecs

HOOK_NAMES = sorted(
    name
    for name, value in vars(hookspecs).items()
    if name.startswith("particlesim_") and hasattr(value, "particlesim_spec")
)
#: Hooks whose example is a console session rather than scenario lines.
CONSOLE_HOOKS = ("particlesim_add_commands", "particlesim_register_reproductions")
SCENARIO_HOOKS = [name for name in HOOK_NAMES if name not in CONSOLE_HOOKS]

ROOT = Path(__file__).resolve().parents[1]


def base_scenario(data_dir: Path) -> dict[str, Any]:
    """The scenario each example's lines are added to: a small particle network, tiny data."""
    return {
        "scenario": {"name": "example", "seed": 3, "device": "cpu"},
        "data": {"name": "idx", "data_dir": str(data_dir)},
        "model": {"name": "particle_network", "sizes": [0, 8, 0], "dim": 2},
        "integrator": {"name": "adam", "lr": 0.05},
        "run": {"batch_size": 16},
    }


def merge(base: dict[str, Any], lines: dict[str, Any]) -> dict[str, Any]:
    """``lines`` added to ``base`` as a user adds them to their scenario.

    A table that names another registered entry (``[model] name = …``, ``[data]
    name = …``) replaces the base's; one without a name, or with the same, updates it.
    Arrays of tables are appended. ``[[groups]]`` replace the base's ``[model]``.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    if "groups" in lines:
        out.pop("model", None)
    for key, value in lines.items():
        if isinstance(value, dict):
            same = value.get("name", out.get(key, {}).get("name")) == out.get(key, {}).get("name")
            out[key] = {**out.get(key, {}), **value} if same else dict(value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out


def run_example(hook_name: str, tmp_path: Path, data_dir: Path):
    """Write the example plugin and its scenario; run 25 steps; return (result, out_dir)."""
    blocks = hookspecs.example_blocks(hook_name)
    (tmp_path / "my_plugin.py").write_text(blocks["python"], encoding="utf-8")
    lines = tomllib.loads(blocks["toml"])
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(tomli_w.dumps(merge(base_scenario(data_dir), lines)), encoding="utf-8")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(scenario), "--set", "run.steps=25", "--out", str(out)]
    )
    return result, out


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def resolved(out: Path) -> dict[str, Any]:
    return tomllib.loads((out / "scenario.toml").read_text())


def check_kernels(out: Path, stdout: str) -> None:
    assert resolved(out)["model"]["kernel"] == {"name": "quartic", "width": 0.5}
    row = metrics(out)[-1]
    widths = [key for key in row if key.startswith("width/")]
    assert widths == ["width/input->hidden1", "width/hidden1->output"], row
    assert all(row[key] != pytest.approx(0.5) for key in widths)  # learned


def check_interactions(out: Path, stdout: str) -> None:
    state = torch.load(out / "checkpoint.pt", weights_only=True)["simulation"]["system"]
    assert state["interactions.1.module.gain"].item() != pytest.approx(0.5)  # trained


def check_potentials(out: Path, stdout: str) -> None:
    values = [row["potential/harmonic_tether"] for row in metrics(out)]
    assert values and all(v > 0 for v in values)


def check_integrators(out: Path, stdout: str) -> None:
    integrator = resolved(out)["integrator"]
    assert integrator["name"] == "nesterov" and integrator["momentum"] == 0.8
    assert metrics(out)[-1]["lr"] == pytest.approx(0.05)


def check_moves(out: Path, stdout: str) -> None:
    assert resolved(out)["moves"] == [
        {"name": "pair_swap", "group": "hidden1", "every": 5, "temperature": 0.05}
    ]
    assert all(0 <= row["moves/pair_swap/acceptance"] <= 1 for row in metrics(out))
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["simulation"]["moves"]
    assert [entry["name"] for entry in saved] == ["pair_swap"]
    assert saved[0]["state"]["attempted"] == 5  # steps 5, 10, …, 25
    assert 0 < saved[0]["state"]["accepted"] <= 5


def check_observables(out: Path, stdout: str) -> None:
    rows = metrics(out)
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25]
    assert all(0 < row["mean_radius"] < 10 for row in rows)


def check_datasets(out: Path, stdout: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert "two_moons" in summary["data_source"]
    assert summary["test_accuracy"] is not None


def check_writers(out: Path, stdout: str) -> None:
    lines = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == [f"step {s}" for s in (5, 10, 15, 20, 25)]
    assert all(line.split(": ")[1].startswith("train_loss=") for line in lines)


def check_activations(out: Path, stdout: str) -> None:
    assert resolved(out)["model"]["activation"] == "softsign"


def check_losses(out: Path, stdout: str) -> None:
    assert resolved(out)["loss"] == {"name": "huber", "delta": 0.5}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_loss"] > 0 and summary["test_accuracy"] is None


def check_models(out: Path, stdout: str) -> None:
    model = resolved(out)["model"]
    assert model["name"] == "tiny_network" and model["hidden"] == 16


def check_simulation_start(out: Path, stdout: str) -> None:
    assert stdout.splitlines().count("simulation started") == 1


def check_step_end(out: Path, stdout: str) -> None:
    assert [line for line in stdout.splitlines() if line.startswith("finished")] == [
        "finished step 10",
        "finished step 20",
    ]


def check_simulation_finish(out: Path, stdout: str) -> None:
    assert "simulation completed" in stdout.splitlines()


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "particlesim_register_kernels": check_kernels,
    "particlesim_register_interactions": check_interactions,
    "particlesim_register_potentials": check_potentials,
    "particlesim_register_integrators": check_integrators,
    "particlesim_register_moves": check_moves,
    "particlesim_register_observables": check_observables,
    "particlesim_register_datasets": check_datasets,
    "particlesim_register_writers": check_writers,
    "particlesim_register_activations": check_activations,
    "particlesim_register_losses": check_losses,
    "particlesim_register_models": check_models,
    "particlesim_simulation_start": check_simulation_start,
    "particlesim_step_end": check_step_end,
    "particlesim_simulation_finish": check_simulation_finish,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_idx(tmp_path_factory.mktemp("example_data"))


def test_every_hook_has_a_documented_run() -> None:
    assert set(CHECKS) == set(SCENARIO_HOOKS)
    for name in SCENARIO_HOOKS:
        blocks = hookspecs.example_blocks(name)
        assert set(blocks) == {"python", "toml"}, name
        assert 'plugins = ["my_plugin.py"]' in blocks["toml"], name


@pytest.mark.parametrize("hook_name", SCENARIO_HOOKS)
def test_example_runs_through_its_scenario(hook_name: str, tmp_path: Path, data_dir: Path) -> None:
    result, out = run_example(hook_name, tmp_path, data_dir)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    CHECKS[hook_name](out, result.stdout)


def test_command_example_runs_as_its_docstring_shows(tmp_path: Path) -> None:
    blocks = hookspecs.example_blocks("particlesim_add_commands")
    (tmp_path / "my_plugin.py").write_text(blocks["python"], encoding="utf-8")
    command, *expected = blocks["console"].splitlines()
    argv = command.removeprefix("$ ").split()
    assert argv[0] == "particlesim"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    done = subprocess.run(
        [sys.executable, "-m", "particlesim", *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_reproduction_example_runs_as_its_docstring_shows(tmp_path: Path) -> None:
    blocks = hookspecs.example_blocks("particlesim_register_reproductions")
    (tmp_path / "my_plugin.py").write_text(blocks["python"], encoding="utf-8")
    (command,) = blocks["console"].splitlines()
    argv = command.removeprefix("$ ").split()
    assert argv[:2] == ["particlesim", "reproduce"]
    with contextlib.chdir(tmp_path):
        result = CliRunner().invoke(app, argv[1:])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "reproductions-quick" / "README.md").read_text()
    assert "## Coin (1654): heads with probability ½" in page
    assert "| heads rate | 0.5 |" in page and "particlesim reproduce coin" in page
    report = json.loads((tmp_path / "reproductions-quick" / "coin.json").read_text())
    assert report["quick"] is True and report["claims"][0]["verdict"] in (
        "reproduced", "within spread", "not reproduced"
    )  # fmt: skip
    assert (tmp_path / "reproductions-quick" / "coin" / "rates.txt").is_file()


# ------------------------------------------------------------------- broken plugins

BROKEN = {
    "missing method": (
        """
        class Bad:
            name = "bad"

            def __init__(self, *, strength: float = 1.0):
                self.strength = strength
        """,
        "plugin 'my_plugin': particlesim_register_potentials() returned potential 'bad', which "
        "has no energy() or __call__() or forward(); fix it, or disable the plugin with "
        "-p no:my_plugin",
    ),
    "options by position": (
        """
        class Bad:
            name = "bad"

            def __init__(self, strength, /):
                self.strength = strength

            def __call__(self, position):
                return position.sum()
        """,
        "plugin 'my_plugin': particlesim_register_potentials() returned potential 'bad', which "
        "takes 'strength' only by position (options are given as keywords)",
    ),
    "name not snake_case": (
        """
        class Bad:
            name = "BadTether"

            def __call__(self, position):
                return position.sum()
        """,
        "plugin 'my_plugin': particlesim_register_potentials() returned potential name "
        "'BadTether', which is not snake_case",
    ),
    "raises in __init__": (
        """
        class Bad:
            name = "bad"

            def __init__(self):
                raise RuntimeError("no tether today")

            def __call__(self, position):
                return position.sum()
        """,
        "potentials[0]: 'bad' of plugin 'my_plugin' raised RuntimeError: no tether today",
    ),
    "hook returns a class, not a list": (
        """
        class Bad:
            name = "bad"

            def __call__(self, position):
                return position.sum()
        """,
        "plugin 'my_plugin': particlesim_register_potentials() must return a list of potential "
        "factories, got type",
    ),
}


@pytest.mark.parametrize("shape", list(BROKEN))
def test_a_broken_plugin_is_one_line_naming_plugin_and_kind(
    shape: str, tmp_path: Path, data_dir: Path
) -> None:
    body, expected = BROKEN[shape]
    returned = "Bad" if shape == "hook returns a class, not a list" else "[Bad]"
    code = textwrap.dedent(body) + textwrap.dedent(f"""

        @hookimpl
        def particlesim_register_potentials():
            return {returned}
        """)
    (tmp_path / "my_plugin.py").write_text("from particlesim import hookimpl\n" + code)
    scenario = base_scenario(data_dir) | {
        "plugins": ["my_plugin.py"],
        "potentials": [{"name": "bad" if "snake" not in shape else "bad_tether"}],
    }
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(scenario))
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a run directory's earlier content stays
    result = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "scenario.toml"), "--set", "run.steps=3", "--out", str(out)],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert (out / "notes.txt").read_text() == "mine"


def test_an_observable_that_asks_for_what_the_engine_lacks(tmp_path: Path, data_dir: Path) -> None:
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent("""
        from particlesim import hookimpl

        class Odd:
            name = "odd"

            def compute(self, temperature_of_the_room):
                return 1.0

        @hookimpl
        def particlesim_register_observables():
            return [Odd]
        """)
    )
    scenario = base_scenario(data_dir) | {
        "plugins": ["my_plugin.py"],
        "observables": [{"name": "odd"}],
        "writers": [{"name": "metrics", "every": 1, "observables": ["odd"]}],
    }
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(scenario))
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "scenario.toml"), "--set", "run.steps=3", "--out",
              str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert (
        "observable 'odd' asks for 'temperature_of_the_room', which the engine does not give"
        in (errors[0])
    )
    assert "Traceback" not in result.output


def test_unknown_potential_group_names_the_key(tmp_path: Path, data_dir: Path) -> None:
    blocks = hookspecs.example_blocks("particlesim_register_potentials")
    (tmp_path / "my_plugin.py").write_text(blocks["python"])
    scenario = base_scenario(data_dir) | {
        "plugins": ["my_plugin.py"],
        "potentials": [{"name": "harmonic_tether", "groups": ["hiden1"]}],
    }
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(scenario))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "scenario.toml"), "--build"])
    assert result.exit_code == 2, result.output
    assert "potentials[0].groups: unknown group 'hiden1'" in result.stderr


# ------------------------------------------------------------------- options of a name


def test_plugins_options_lists_each_option_with_type_default_and_doc() -> None:
    result = CliRunner().invoke(app, ["plugins", "--options", "gaussian"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kernel 'gaussian' (plugin particlesim): Gaussian")
    width = next(line for line in lines if line.strip().startswith("width "))
    assert "a number or an array of numbers" in width and "= 1.0" in width and "σ" in width
    assert CliRunner().invoke(app, ["plugins", "gaussian"]).stdout == result.stdout


def test_plugins_options_shows_the_engine_keys_of_a_plain_potential(tmp_path: Path) -> None:
    (tmp_path / "my_plugin.py").write_text(
        hookspecs.example_blocks("particlesim_register_potentials")["python"]
    )
    result = CliRunner().invoke(
        app, ["plugins", "harmonic_tether", "-p", str(tmp_path / "my_plugin.py"), "--json"]
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["kind"] == "potential" and entry["plugin"] == "my_plugin"
    options = {o["name"]: o for o in entry["options"]}
    assert options["strength"]["default"] == 1.0 and not options["strength"]["engine"]
    assert options["coefficient"]["engine"] and options["groups"]["engine"]


def test_plugins_options_of_an_unknown_name_is_one_line() -> None:
    result = CliRunner().invoke(app, ["plugins", "--options", "gausian"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no registered entry is called 'gausian' (did you mean 'gaussian'?)"
    )


# ------------------------------------------------------------------- isolation


def test_the_suite_ignores_a_broken_third_party_plugin_installed_beside_it(
    tmp_path: Path,
) -> None:
    """Tests load only the plugins they name, so a broken installed plugin changes nothing."""
    site = tmp_path / "site"
    info = site / "broken_thing-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-thing\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[particlesim]\nbroken_thing = broken_thing\n")
    (site / "broken_thing.py").write_text(
        "from particlesim import hookimpl\n\n"
        "@hookimpl\ndef particlesim_register_kernels():\n"
        "    raise RuntimeError('this plugin is broken')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PARTICLESIM_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), str(ROOT / "plugins")])
    # outside the tests, the broken plugin is loaded and breaks every command
    plugins = subprocess.run(
        [sys.executable, "-m", "particlesim", "plugins"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "this plugin is broken" in plugins.stdout + plugins.stderr
    tests = [
        "tests/test_cli.py::test_run_end_to_end",
        "tests/test_plugin_contract.py::test_example_runs_through_its_scenario",
    ]
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-3000:]
    assert " passed" in suite.stdout.splitlines()[-1]


def test_a_plugin_failing_mid_run_loses_nothing_already_written(
    tmp_path: Path, data_dir: Path
) -> None:
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent("""
        from particlesim import hookimpl

        @hookimpl
        def particlesim_step_end(step):
            if step == 14:
                raise RuntimeError("the plugin broke")
        """)
    )
    scenario = base_scenario(data_dir) | {"plugins": ["my_plugin.py"]}
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(scenario))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "scenario.toml"), "--set", "run.steps=25", "--out", str(out)]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the plugin broke" in errors[0], result.stderr
    assert [row["step"] for row in metrics(out)] == [6, 12]  # the epochs before it, kept
    state = torch.load(out / "checkpoint.pt", weights_only=True)["simulation"]
    assert state["step"] == 12  # the last periodic checkpoint stays
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
