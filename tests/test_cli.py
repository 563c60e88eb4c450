"""The command line through typer's CliRunner: runs, errors, plugins, the README example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from particlesim.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_one_line_error(result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.output


def test_run_end_to_end(tiny_scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("run", tiny_scenario, "--out", out, "--set", "run.epochs=6")
    assert result.exit_code == 0, result.output
    assert "completed: test accuracy" in result.stdout
    assert "data: idx from data_dir" in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert rows[-1]["test_accuracy"] > 0.8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["parameters"] > 0
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert "idx from data_dir" in summary["data_source"]
    resolved = (out / "scenario.toml").read_text()
    assert "epochs = 6.0" in resolved and 'kernel = "gaussian"' in resolved
    # the resolved scenario runs again and gives the same numbers
    again = invoke("run", out / "scenario.toml", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    summary2 = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary2["test_accuracy"] == summary["test_accuracy"]


def test_validate(tiny_scenario: Path) -> None:
    result = invoke("validate", tiny_scenario)
    assert result.exit_code == 0
    assert (
        "is valid (model 'particle_network', data 'idx', integrator 'adam', 2 epochs)"
        in result.stdout
    )


def test_existing_output_is_not_overwritten(tiny_scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(
        invoke("run", tiny_scenario, "--out", out), "exists and is not empty; use --overwrite"
    )
    assert (out / "keep.txt").read_text() == "precious"
    assert invoke("run", tiny_scenario, "--out", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.kernel=gausian",
            "model.kernel: unknown kernel 'gausian' (did you mean "
            "'gaussian'?); known: cauchy, dot_product, exponential, gaussian",
        ),
        ("model.sizes=[0, -4, 0]", "model.sizes[1]: must be a positive integer, got -4"),
        (
            "model.activation=relux",
            "model.activation: unknown activation 'relux' (did you mean 'relu'",
        ),
        ("integrator.name=adamm", "integrator.name: unknown integrator 'adamm' (did you mean"),
        ("run.batch_size=0", "run.batch_size: must be a positive integer, got 0"),
    ],
)
def test_bad_input_is_one_line(
    tiny_scenario: Path, tmp_path: Path, override: str, expected: str
) -> None:
    out = tmp_path / "out"
    assert_one_line_error(invoke("run", tiny_scenario, "--out", out, "--set", override), expected)
    assert not out.exists()


def test_missing_file_and_syntax_error(tmp_path: Path) -> None:
    assert_one_line_error(invoke("run", tmp_path / "nope.toml"), "nope.toml not found")
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname = "particle_network\n')
    assert_one_line_error(invoke("validate", bad), "invalid TOML: ")
    assert "(at line 2, column" in invoke("validate", bad).stderr


def test_cuda_without_cuda(tiny_scenario: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(
        invoke("run", tiny_scenario, "--device", "cuda", "--out", tmp_path / "o"),
        "scenario.device: device 'cuda' requested but CUDA is not available",
    )
    assert not (tmp_path / "o").exists()


def test_corrupt_idx_file(tiny_data: Path, tiny_scenario: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_data.iterdir():
        data = file.read_bytes()
        (broken / file.name).write_bytes(data)
    (broken / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    result = invoke(
        "run", tiny_scenario, "--set", f'data.data_dir="{broken}"', "--out", tmp_path / "o"
    )
    assert_one_line_error(result, "train-labels-idx1-ubyte.gz")
    assert not (tmp_path / "o").exists()


def test_no_dataset_found_lists_places(tiny_scenario: Path, tmp_path: Path, monkeypatch) -> None:
    from particlesim.data import sources

    monkeypatch.setattr(sources, "SYSTEM_DIRS", {k: () for k in sources.SYSTEM_DIRS})
    env = {
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PARTICLESIM_DATA": str(tmp_path / "empty"),
    }
    result = invoke(
        "run",
        tiny_scenario,
        "--set",
        'data={name="fashion_mnist", download=false}',
        "--out",
        tmp_path / "o",
        env=env,
    )
    assert_one_line_error(result, "fashion")
    message = result.stderr
    assert "PARTICLESIM_DATA" in message and "cache" in message and "to fix" in message


def test_interrupt_saves_what_was_done(tiny_scenario: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "stopper.py"
    plugin.write_text(
        textwrap.dedent("""
        from particlesim import hookimpl

        @hookimpl
        def particlesim_step_end(simulation, step):
            if step == 9:
                raise KeyboardInterrupt
    """)
    )
    out = tmp_path / "out"
    result = invoke("run", tiny_scenario, "-p", plugin, "--out", out, "--set", "run.epochs=4")
    assert result.exit_code == 130, result.output
    assert "plugin: loaded stopper" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 9
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 of 6 steps


def test_console_prints_python_warnings_as_one_line_each(tiny_scenario: Path) -> None:
    """Through the real entry point: no file/line of the warning's origin, no repeats."""
    env = {**os.environ, "PARTICLESIM_PLUGINS": "lange,nosuch"}
    result = subprocess.run(
        [sys.executable, "-m", "particlesim", "validate", str(tiny_scenario), "-p", "no:ghost"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines.count("warning: -p no:ghost: no plugin named 'ghost' was found to disable") == 1
    assert (
        lines.count("warning: PARTICLESIM_PLUGINS names plugin 'nosuch', which is not installed")
        == 1
    )
    assert all(line.startswith("warning: ") for line in lines), result.stderr
    assert "Warning" not in result.stderr and ".py:" not in result.stderr


def test_plugins_command_lists_sources() -> None:
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert re.search(r"^particlesim .*\[built-in\]", result.stdout, re.M)
    assert re.search(r"^lange .*\[entry point particlesim_lange\]", result.stdout, re.M)
    assert "model: particle_network" in result.stdout
    data = json.loads(invoke("plugins", "--json").stdout)
    assert {row["name"] for row in data} >= {"particlesim", "lange"}


def readme_block(after: str, language: str) -> str:
    """The first fenced ``language`` block after the line containing ``after`` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None
    return match.group(1)


def test_readme_kernel_plugin_runs_verbatim(tmp_path: Path) -> None:
    (tmp_path / "my_kernel.py").write_text(readme_block("Save it as `my_kernel.py`", "python"))
    (tmp_path / "quartic.toml").write_text(readme_block("`quartic.toml`", "toml"))
    out = tmp_path / "out"
    result = invoke(
        "run",
        tmp_path / "quartic.toml",
        "--out",
        out,
        "--set",
        "run.epochs=0.1",
        "--set",
        "data.limit_test=1000",
    )
    assert result.exit_code == 0, result.output
    assert "plugin: loaded my_kernel" in result.stderr
    assert "mnist from package copy" in result.stderr or "mnist from" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 47 and summary["test_accuracy"] > 0.45
    # the kernel really is the quartic one, with its closed-form derivative
    import torch

    from particlesim.plugins.manager import PluginManager

    manager = PluginManager().load(files=[tmp_path / "my_kernel.py"], entry_points=False)
    kernel = manager.registries["kernel"].create("quartic", width=1.5)
    r = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[1.5, 0.0]], dtype=torch.float64)
    assert float(kernel.double()(r, s)) == pytest.approx(0.25)
    u = torch.linspace(0, 3, 7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kernel.profile(u).sum(), u)
    assert torch.allclose(grad, kernel.profile_derivative(u.detach()))


def test_installed_plugin_distribution(tmp_path: Path, tiny_scenario: Path) -> None:
    """A throwaway package with an entry point, pip-installed into a folder, used by a scenario."""
    source = tmp_path / "src"
    (source / "throwaway_kernels").mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "throwaway-kernels"
        version = "0.3.1"

        [project.entry-points.particlesim]
        throwaway = "throwaway_kernels"
    """)
    )
    (source / "throwaway_kernels" / "__init__.py").write_text(
        textwrap.dedent("""
        from particlesim import hookimpl
        from particlesim.kernels import RadialKernel

        class TriangleKernel(RadialKernel):
            name = "softbox"

            @staticmethod
            def profile(u):
                return 1.0 / (1.0 + u * u)

            @staticmethod
            def profile_derivative(u):
                return -2.0 * u / (1.0 + u * u) ** 2

        @hookimpl
        def particlesim_register_kernels():
            return [TriangleKernel]
    """)
    )
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), str(ROOT), str(ROOT / "plugins")]),
        "PARTICLESIM_PLUGINS": os.environ["PARTICLESIM_PLUGINS"] + ",throwaway",
    }
    cli = [sys.executable, "-c", "from particlesim.cli.app import main; main()"]
    listing = subprocess.run([*cli, "plugins"], capture_output=True, text=True, env=env)
    assert re.search(
        r"^throwaway 0\.3\.1 +\[entry point throwaway_kernels\]", listing.stdout, re.M
    ), listing.stdout
    out = tmp_path / "out"
    run = subprocess.run(
        [*cli, "run", str(tiny_scenario), "--set", "model.kernel=softbox", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert 'kernel = "softbox"' in (out / "scenario.toml").read_text()


def test_plugins_key_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('plugins = "x.py"\n')
    assert_one_line_error(
        invoke("validate", path), "s.toml: plugins: expected an array of strings, got 'x.py'"
    )


def test_a_broken_command_hook_costs_only_its_own_commands(monkeypatch, capsys) -> None:
    """main() warns about a plugin whose add_commands raises and still runs the app."""
    import types

    from particlesim.cli import app as app_module
    from particlesim.plugins import builtins
    from particlesim.plugins.hookspecs import hookimpl
    from particlesim.plugins.manager import PluginManager

    broken = types.ModuleType("broken_commands")

    @hookimpl
    def particlesim_add_commands(app):
        raise ImportError("no module named 'missing_piece'")

    broken.particlesim_add_commands = particlesim_add_commands
    manager = PluginManager().load(
        builtins=[("particlesim", builtins), ("broken_commands", broken)], entry_points=False
    )
    monkeypatch.setattr(PluginManager, "load", lambda self, *a, **k: manager)
    monkeypatch.setattr(app_module, "app", lambda: print("app ran"))
    app_module.main()
    out, err = capsys.readouterr()
    assert "app ran" in out
    assert (
        "warning: plugin 'broken_commands' could not add its commands: "
        "ImportError: no module named 'missing_piece'" in err
    )


def test_a_run_that_fails_in_its_forward_pass_is_one_line(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    """The summary's evaluation meets the same failure: no second error, no traceback."""
    plugin = tmp_path / "fault.py"
    plugin.write_text(
        textwrap.dedent("""
        from particlesim import hookimpl

        def broken(*args, **kwargs):
            raise RuntimeError("device fault")

        @hookimpl
        def particlesim_step_end(simulation, step):
            if step == 3:
                simulation.system.interactions[0].forward = broken
    """)
    )
    out = tmp_path / "out"
    result = invoke("run", tiny_scenario, "-p", plugin, "--out", out, "--no-progress")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: step 4: RuntimeError: device fault"], result.stderr
    assert "Traceback" not in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 3
    assert summary["error"] == "step 4: RuntimeError: device fault"
    assert summary["test_accuracy"] is None  # not measured: null, JSON has no NaN


def test_strict_plugin_failure_is_reported_once(tiny_scenario: Path) -> None:
    """The console's start-up load and the command's load meet the same failure: one line."""
    env = {**os.environ, "PARTICLESIM_PLUGINS": "lange,nosuch", "PARTICLESIM_STRICT_PLUGINS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "particlesim", "validate", str(tiny_scenario)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: PARTICLESIM_PLUGINS names plugin 'nosuch', but no entry point named 'nosuch' "
        "in group 'particlesim'"
    ]


def test_validate_build_meets_construction_errors(tiny_scenario: Path, tmp_path: Path) -> None:
    """``validate --build`` builds what ``run`` builds: a kernel the model cannot construct."""
    plugin = tmp_path / "fixed.py"
    plugin.write_text(
        textwrap.dedent("""
        import torch
        from particlesim import hookimpl
        from particlesim.kernels import Kernel

        class FixedKernel(Kernel):
            name = "fixed"

            def __init__(self):
                super().__init__()

            def forward(self, target, source):
                return torch.exp(-torch.cdist(target, source) ** 2)

        @hookimpl
        def particlesim_register_kernels():
            return [FixedKernel]
    """)
    )
    ok = invoke("validate", tiny_scenario, "--build")
    assert ok.exit_code == 0, ok.output
    assert re.search(r"^built: [\d,]+ parameters, 12 steps \(6/epoch\) on cpu$", ok.stdout, re.M)
    args = ("validate", tiny_scenario, "-p", plugin, "--set", "model.kernel=fixed")
    assert invoke(*args).exit_code == 0  # the scenario itself is valid
    refused = invoke(*args, "--build")
    assert refused.exit_code == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr
    assert (
        "model.kernel: kernel 'fixed': FixedKernel.__init__() got an unexpected keyword"
        in (errors[0])
    )
    assert errors[0].endswith("(model 'particle_network' of plugin 'lange')")


def test_readme_python_runner_example_runs_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's notebook-style use: build from a scenario, run 100 steps, open as xarray."""
    code = readme_block("### From Python: build, run, open", "python")
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.status == "completed" and result.summary["steps"] == 100
    assert result.summary["test_accuracy"] > 0.5
    assert result.out_dir == Path("runs/notebook")
    assert dict(namespace["hidden"].sizes) == {"time": 6, "particle": 256, "spatial": 8}
    status_line = capsys.readouterr().out.splitlines()[0]
    assert status_line.startswith("completed 0.")
    # the lock was released: the run directory can be resumed by another runner
    from particlesim import Runner

    with Runner.resume("runs/notebook", set=["run.steps=110"]) as again:
        assert again.simulation.step == 100
        assert again.run().summary["steps"] == 110


@pytest.mark.parametrize("second", ["plain", "overwrite", "resume"])
def test_two_runs_into_one_directory_one_runs_the_other_touches_nothing(
    tiny_scenario: Path, tmp_path: Path, second: str
) -> None:
    """Into a live run's directory, with any flags: refused before anything is removed."""
    gate = tmp_path / "gate.py"
    gate.write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path
        from particlesim import hookimpl

        @hookimpl
        def particlesim_step_end(step):
            if step == 8:  # after the first epoch's checkpoint
                Path({str(tmp_path / "started")!r}).touch()
                deadline = time.monotonic() + 60
                while not Path({str(tmp_path / "go")!r}).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        """)
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    command = [sys.executable, "-m", "particlesim", "run", str(tiny_scenario), "--out", str(out)]
    first = subprocess.Popen(
        [*command, "-p", str(gate), "--set", "scenario.seed=11", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        flags = {
            "plain": [*command, "--set", "scenario.seed=22"],
            "overwrite": [*command, "--overwrite", "--set", "scenario.seed=22"],
            "resume": [sys.executable, "-m", "particlesim", "run", "--resume", str(out)],
        }[second]
        late = subprocess.run(
            [*flags, "--no-progress"], env=env, capture_output=True, text=True, timeout=120
        )
        assert late.returncode == 2, late.stderr
        errors = [line for line in late.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, late.stderr
        assert f"in use by another particlesim process (pid {first.pid})" in errors[0]
        after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert after == before  # the live run's files: untouched
    finally:
        (tmp_path / "go").touch()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 11


def test_a_killed_runs_trajectory_is_named_by_inspect_and_recovered(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    """kill -9 mid-run: inspect says so, `particlesim recover` makes the file plainly readable."""
    import h5py

    scenario = tmp_path / "traj.toml"
    scenario.write_text(
        tiny_scenario.read_text() + '\n[[writers]]\nname = "trajectory"\nevery = 2\n'
    )
    gate = tmp_path / "gate.py"
    gate.write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path
        from particlesim import hookimpl

        @hookimpl
        def particlesim_step_end(simulation, step):
            if step == 7:
                for writer in simulation.writers:
                    writer.flush()
                Path({str(tmp_path / "started")!r}).touch()
                time.sleep(300)
        """)
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    command = [sys.executable, "-m", "particlesim", "run", str(scenario), "--out", str(out)]
    writer = subprocess.Popen(
        [*command, "-p", str(gate), "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
    path = out / "trajectory.h5"
    with pytest.raises(OSError):  # the state a killed writer leaves
        h5py.File(path, "r")
    with h5py.File(path, "r", swmr=True) as file:
        frames = {name: len(file[f"particles/{name}/position/step"]) for name in file["particles"]}
    assert min(frames.values()) >= 4  # steps 0, 2, 4, 6

    shown = invoke("inspect", path)
    assert shown.exit_code == 0, shown.output
    state = [line for line in shown.stdout.splitlines() if line.startswith("state:")]
    assert state and state[0].startswith("state: interrupted at step 6 (its writer was killed)"), (
        repr(shown.stdout[-600:])
    )
    assert f"particlesim recover {path}" in shown.stdout

    recovered = invoke("recover", path)
    assert recovered.exit_code == 0, recovered.output
    assert "recovered" in recovered.stdout
    with h5py.File(path, "r") as file:  # plainly readable, every frame kept
        assert {
            name: len(file[f"particles/{name}/position/step"]) for name in file["particles"]
        } == frames
    assert "state:" not in invoke("inspect", path).stdout
    again = invoke("recover", path)
    assert again.exit_code == 0 and "closed cleanly; nothing to recover" in again.stdout
    import xarray as xr

    assert xr.open_dataset(path, engine="particlesim", group="hidden1").sizes["time"] == 4
