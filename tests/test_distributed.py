"""Several processes training one system (torch.distributed, gloo on the CPU).

The default test forks two ranks from the test process (no interpreter start-up
per rank); the slow one launches the documented command,
``torchrun --nproc_per_node 2 -m particlesim run FILE --distributed``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.io.checkpoint import read_checkpoint

runner = CliRunner()

#: Float tolerance between world sizes: the same sums in another order (float32).
ATOL = 1e-5


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999).

    A port the OS hands out for ``bind(0)`` lies in the ephemeral range, where a rank that
    connects before the store listens can be given that very port as its own source port
    and connect to itself (TCP self-connect), failing the run's start now and then.
    """
    generator = random.Random()
    for _ in range(200):
        port = generator.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def distributed_scenario(tiny_scenario: Path) -> Path:
    """The tiny scenario, 12 steps of uneven batches (96 rows / 15: the last has 6)."""
    text = tiny_scenario.read_text().replace(
        "epochs = 2\nbatch_size = 16\n", "steps = 12\nbatch_size = 15\ncheckpoint_every = 6\n"
    )
    text += '\n[[writers]]\nname = "trajectory"\nevery = 2\nobservables_every = 1\n'
    tiny_scenario.write_text(text)
    return tiny_scenario


def _rank_main(rank: int, world_size: int, port: int, args: list[str], log: str) -> None:
    """One forked rank: the environment torchrun would set, then the CLI."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, args)
    Path(log).write_text(f"exit {result.exit_code}\n{result.output}")
    os._exit(result.exit_code)


def run_ranks(args: list[str], tmp_path: Path, world_size: int = 2) -> list[str]:
    """Fork ``world_size`` ranks running ``particlesim <args> --distributed``; their outputs."""
    context = multiprocessing.get_context("fork")
    port = free_port()
    logs = [str(tmp_path / f"rank{rank}.log") for rank in range(world_size)]
    processes = [
        context.Process(
            target=_rank_main, args=(rank, world_size, port, [*args, "--distributed"], logs[rank])
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    outputs = [Path(log).read_text() if Path(log).exists() else "(no output)" for log in logs]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    report = "\n".join(f"rank {rank}: {text}" for rank, text in enumerate(outputs))
    assert [process.exitcode for process in processes] == [0] * world_size, report
    return outputs


def parameters(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "checkpoint.pt")["simulation"]["system"]


def assert_close_parameters(a: Path, b: Path) -> None:
    first, second = parameters(a), parameters(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=ATOL, rtol=0, msg=name)


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def test_two_ranks_match_one_and_resume_on_one(tiny_scenario: Path, tmp_path: Path) -> None:
    scenario = distributed_scenario(tiny_scenario)
    two, one = tmp_path / "two", tmp_path / "one"
    outputs = run_ranks(["run", str(scenario), "--out", str(two), "--no-progress"], tmp_path)
    assert "x 2 processes" in outputs[0] and "completed:" in outputs[0]
    assert "completed:" not in outputs[1] and "run:" not in outputs[1]  # rank 1 is quiet
    assert invoke("run", scenario, "--out", one, "--no-progress").exit_code == 0

    # same training, up to summation order; rank 0 alone wrote every file
    assert_close_parameters(one, two)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    with h5py.File(one / "trajectory.h5", "r") as a, h5py.File(two / "trajectory.h5", "r") as b:
        steps = b["particles/hidden1/position/step"][()]
        assert steps.tolist() == list(range(0, 13, 2))  # each frame once
        np.testing.assert_allclose(
            a["particles/hidden1/position/value"][()],
            b["particles/hidden1/position/value"][()],
            atol=ATOL,
        )
        np.testing.assert_allclose(
            a["observables/loss/value"][1:], b["observables/loss/value"][1:], atol=ATOL
        )
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 (7 steps)

    # the checkpoint of two ranks continues on one
    longer = tmp_path / "longer"
    assert (
        invoke("run", scenario, "--out", longer, "--set", "run.steps=20", "--no-progress").exit_code
        == 0
    )
    resumed = invoke("run", "--resume", two, "--set", "run.steps=20", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed at step 12: 20 steps" in resumed.stderr
    assert_close_parameters(longer, two)
    with h5py.File(two / "trajectory.h5", "r") as file:
        assert file["particles/hidden1/position/step"][()].tolist() == list(range(0, 21, 2))


class _StopAfterSetupError(Exception):
    """Raised by :class:`_OtherRank` once the setup's agreement is reached."""


class _OtherRank:
    """Rank 1 of 2 without a process group: records what it would tell the others."""

    rank, world_size, local_rank, backend, device, is_main = 1, 2, 1, "gloo", "cpu", False

    def __init__(self) -> None:
        self.votes: list[bool] = []

    def agree(self, ok: bool) -> bool:
        self.votes.append(ok)
        raise _StopAfterSetupError


def test_other_ranks_leave_the_output_directory_to_rank_0(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    """Rank 0 may have made and locked the directory before another rank starts its setup."""
    from particlesim.cli.app import _run
    from particlesim.io.checkpoint import LOCK_FILE

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # as rank 0 leaves it, running
    rank = _OtherRank()
    with contextlib.ExitStack() as stack, pytest.raises(_StopAfterSetupError):
        _run(stack, tiny_scenario, None, "cpu", out, False, None, False, None, rank)
    assert rank.votes == [True]
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # and writes nothing there


def test_distributed_outside_torchrun_is_one_line(tiny_scenario: Path) -> None:
    env = {name: None for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = runner.invoke(app, ["run", str(tiny_scenario), "--distributed"], env=env)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--distributed needs the environment torchrun sets" in errors[0]
    assert "torchrun --nproc_per_node N -m particlesim run FILE --distributed" in errors[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_torchrun_command_from_the_readme(tiny_scenario: Path, tmp_path: Path) -> None:
    scenario = distributed_scenario(tiny_scenario)
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), "-m", "particlesim", "run", str(scenario),
            "--distributed", "--out", str(two), "--no-progress",
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert invoke("run", scenario, "--out", one, "--no-progress").exit_code == 0
    assert_close_parameters(one, two)
