"""kill -9 anywhere: in the middle of a checkpoint write, of a trajectory frame, or at a
random moment. Afterwards every file the run left is readable, and the run resumed from
its checkpoint (or run again, where it was killed before its first one) is bit-identical
to the uninterrupted run: trajectory, per-epoch metrics and final parameters, over four
epochs of 6 steps.

The run is a forked child of the test process (it starts at once, with the imports
inherited). For the two precise cases the child's own code stops it (``SIGSTOP``) at the
chosen instant: after half a checkpoint's bytes reached the temporary file, or between
two datasets of one trajectory frame; the test then kills it. The default run has one
kill of each kind; the slow suite twenty.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch
from test_checkpoint import (
    assert_same_trajectory,
    checkpointed_scenario,
    final_parameters,
    invoke,
    metrics_rows,
)
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.io.checkpoint import read_checkpoint


def _stop_here() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def _child(args: list[str], where: str, count: int) -> None:
    """Run the CLI, stopping itself at the ``count``-th checkpoint write or frame dataset."""
    import particlesim.io.checkpoint as checkpoint_module
    import particlesim.io.h5md as h5md_module

    torch.set_num_threads(1)  # a forked child's first OpenMP region deadlocks otherwise
    calls = {"n": 0}
    if where == "checkpoint":
        save = torch.save

        def half_then_stop(payload: Any, file: Any, *a: Any, **k: Any) -> None:
            calls["n"] += 1
            if calls["n"] < count:
                return save(payload, file, *a, **k)
            buffer = io.BytesIO()
            save(payload, buffer, *a, **k)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            _stop_here()

        checkpoint_module.torch.save = half_then_stop  # type: ignore[assignment]
    elif where == "frame":
        append = h5md_module.append_row

        def append_then_stop(*a: Any, **k: Any) -> None:
            calls["n"] += 1
            append(*a, **k)
            if calls["n"] == count:
                _stop_here()

        h5md_module.append_row = append_then_stop  # type: ignore[assignment]
    result = CliRunner().invoke(app, args)
    os._exit(result.exit_code)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def kill_run(scenario: Path, out: Path, where: str, count: int, delay: float = 0.0) -> None:
    """Start the run and kill -9 it where asked (``random``: after ``delay`` seconds)."""
    args = ["run", str(scenario), "--out", str(out), "--no-progress"]
    child = multiprocessing.get_context("fork").Process(target=_child, args=(args, where, count))
    child.start()
    try:
        deadline = time.monotonic() + 120
        if where == "random":
            child.join(delay)
        else:
            while child.is_alive() and _state(child.pid) not in ("T", "t"):
                assert time.monotonic() < deadline, f"the run never reached {where} {count}"
                time.sleep(0.005)
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL, f"the run ended before {where} {count}"


def assert_readable(out: Path) -> None:
    """What a kill leaves is readable: the checkpoint whole, the trajectory by `inspect`."""
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        read_checkpoint(checkpoint)  # whole: the half-written one is a temporary beside it
    trajectory = out / "trajectory.h5"
    if trajectory.exists() and trajectory.stat().st_size:
        shown = invoke("inspect", trajectory)
        assert shown.exit_code == 0, shown.output
        with h5py.File(trajectory, "r", swmr=True) as file:
            assert "particles" in file or "h5md" in file


def finish(scenario: Path, out: Path) -> None:
    """Resume from the checkpoint; with none yet, run again into the same directory."""
    if (out / "checkpoint.pt").exists():
        result = invoke("run", "--resume", out, "--no-progress")
    else:
        result = invoke("run", scenario, "--out", out, "--overwrite", "--no-progress")
    assert result.exit_code == 0, result.output
    assert not list(out.glob(".checkpoint.pt.*.tmp")), "a half-written checkpoint stayed"


def assert_same_run(reference: Path, out: Path) -> None:
    assert assert_same_trajectory(reference / "trajectory.h5", out / "trajectory.h5") >= 12
    rows = metrics_rows(reference / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1.0, 2.0, 3.0, 4.0]  # every epoch's metrics
    assert rows == metrics_rows(out / "metrics.jsonl")
    want, got = (
        final_parameters(reference / "checkpoint.pt"),
        final_parameters(out / "checkpoint.pt"),
    )
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.fixture
def reference(tiny_scenario: Path, tmp_path: Path) -> tuple[Path, Path, float]:
    """The scenario, its uninterrupted run and how long that run took (s)."""
    scenario = checkpointed_scenario(tiny_scenario)
    out = tmp_path / "reference"
    start = time.perf_counter()
    assert invoke("run", scenario, "--out", out, "--no-progress").exit_code == 0
    return scenario, out, time.perf_counter() - start


def kill_check_resume(
    reference: tuple[Path, Path, float], tmp_path: Path, where: str, count: int, at: float = 0.0
) -> None:
    """Kill where asked (``random``: at fraction ``at`` of the reference run's time)."""
    scenario, reference_out, duration = reference
    out = tmp_path / f"killed-{where}-{count}"
    kill_run(scenario, out, where, count, at * duration)
    assert_readable(out)
    finish(scenario, out)
    assert_same_run(reference_out, out)


@pytest.mark.parametrize(
    ("where", "count"), [("checkpoint", 2), ("frame", 75)], ids=["checkpoint", "frame"]
)
def test_a_kill_mid_write_leaves_readable_files_and_an_identical_resume(
    reference: tuple[Path, Path, float], tmp_path: Path, where: str, count: int
) -> None:
    kill_check_resume(reference, tmp_path, where, count)


#: The slow suite's twenty kills: every periodic checkpoint write, frames spread over the
#: run (by dataset append, ~14 a frame and 348 in all, so most fall mid-frame), random
#: moments (as fractions of the uninterrupted run's time, start-up included).
TWENTY_KILLS = (
    [("checkpoint", k, 0.0) for k in (1, 2, 3, 4)]
    + [("frame", n, 0.0) for n in random.Random(20).sample(range(5, 340), 8)]
    + [
        ("random", i, at)
        for i, at in enumerate(random.Random(7).uniform(0.05, 0.9) for _ in range(8))
    ]
)


@pytest.mark.slow
@pytest.mark.parametrize(("where", "count", "at"), TWENTY_KILLS)
def test_twenty_kills_leave_readable_files_and_identical_resumes(
    reference: tuple[Path, Path, float], tmp_path: Path, where: str, count: int, at: float
) -> None:
    kill_check_resume(reference, tmp_path, where, count, at)
