"""The memory preflight: estimates within 2x of the measured peak, and refusals in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from particlesim.cli.app import app

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

from particlesim.runner import load_plan
from particlesim.scenario.builder import build
plan, _ = load_plan(sys.argv[1], set=sys.argv[2:])
estimate = build(plan, log=lambda m: None, preflight=True).memory
plan, _ = load_plan(sys.argv[1], set=sys.argv[2:])
import gc; gc.collect()
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
except OSError:
    print(json.dumps({"skip": "cannot reset the peak RSS here"}))
    sys.exit(0)
before = status("VmRSS:")
built = build(plan, log=lambda m: None, preflight=False)
built.simulation.run()
print(json.dumps({"estimate": estimate.total, "measured": status("VmHWM:") - before}))
"""


@pytest.mark.parametrize(
    "model",
    [
        'model={name="mlp", sizes=[0, 4096, 4096, 0]}',
        'model={name="mlp", sizes=[0, 8192, 2048, 0]}',
        'model={name="particle_network", sizes=[0, 2048, 2048, 0], dim=2}',
    ],
    ids=["mlp-4096", "mlp-8192", "particles-2048"],
)
def test_the_estimate_is_within_twice_the_measured_peak(tiny_scenario: Path, model: str) -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tiny_scenario), model, "run.steps=2",
         "run.threads=1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads(done.stdout.splitlines()[-1])
    if "skip" in sizes:
        pytest.skip(sizes["skip"])
    estimate, measured = sizes["estimate"], sizes["measured"]
    assert measured > 20 * 2**20, sizes  # large enough to measure above the noise
    assert measured / 2 <= estimate <= 2 * measured, sizes


def test_a_network_that_cannot_fit_is_refused_in_one_line(tiny_scenario: Path) -> None:
    big = 'model={name="mlp", sizes=[0, 200000, 200000, 0]}'  # 160 GB of weights
    result = CliRunner().invoke(app, ["validate", str(tiny_scenario), "--build", "--set", big])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "model: the network needs ~" in errors[0] and "(parameters 160 GB" in errors[0]
    assert "GB available" in errors[0]


def test_validate_build_prints_the_estimate(tiny_scenario: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tiny_scenario), "--build"])
    assert result.exit_code == 0, result.output
    memory = [line for line in result.stdout.splitlines() if line.startswith("memory: ~")]
    assert memory and "to train (parameters" in memory[0] and "available" in memory[0]
