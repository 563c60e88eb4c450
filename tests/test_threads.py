"""Sharing the cores: thread counts from affinity, quotas, overrides and the runs alive."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from particlesim import threads
from particlesim.errors import ParticlesimError
from particlesim.threads import ThreadShare, available_cores, fixed_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory for the machine-wide registry."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return tmp_path


def test_available_cores_follows_affinity_and_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert available_cores() == 4
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)  # 150 ms per 100 ms
    assert available_cores() == 2
    monkeypatch.undo()
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None


def test_a_fixed_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert fixed_threads(None) == 3
    assert fixed_threads(1) == 1  # [run] threads over the environment
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert fixed_threads(None) is None


def test_runs_alive_on_the_machine_share_the_cores(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run registered: half the cores each; once it is killed, all of them again."""
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads, "RECOUNT_S", 0.0)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom particlesim.threads import ThreadShare\n"
         "with ThreadShare():\n    print('in', flush=True)\n    time.sleep(120)\n"],
        env={**os.environ, "TMPDIR": str(registry), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    saved = torch.get_num_threads()
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "in"
        with ThreadShare() as share:
            assert share.runs_sharing() == 2
            assert share.update(force=True) == 2 and torch.get_num_threads() == 2
            other.kill()
            other.wait()
            assert share.update(force=True) == 4 and torch.get_num_threads() == 4
            left = list((registry / f"particlesim-{os.getuid()}" / "cpu").iterdir())
            assert [p.name for p in left] == [str(os.getpid())]  # the killed run's file: gone
    finally:
        other.kill()
        other.wait()
    assert torch.get_num_threads() == saved  # restored when the run ends
    assert not left[0].exists()


def test_threads_in_the_scenario_fix_the_count(
    registry: Path, tiny_scenario: Path, tmp_path: Path
) -> None:
    from particlesim import Runner

    seen: list[int] = []
    with Runner.from_scenario(
        tiny_scenario, set=["run.threads=1", "run.steps=3"], out=tmp_path / "o"
    ) as runner:
        runner.run(progress=lambda simulation: seen.append(torch.get_num_threads()))
    assert seen == [1, 1, 1]
    with pytest.raises(ParticlesimError, match=r"run\.threads: must be a positive integer, got 0"):
        Runner.from_scenario(tiny_scenario, set=["run.threads=0"], out=tmp_path / "p")
    with pytest.raises(ParticlesimError, match=r"run\.threads: must be at most 1024, got 4096"):
        Runner.from_scenario(tiny_scenario, set=["run.threads=4096"], out=tmp_path / "q")


def test_a_network_too_small_for_two_threads_takes_one(
    registry: Path, tiny_scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny network (16 x 8 x 3 pairs) runs on one thread even with 4 cores free; a
    network above SMALL_NETWORK_PAIRS gets the cores; ``[run] threads`` still wins."""
    from particlesim import Runner
    from particlesim.threads import SMALL_NETWORK_PAIRS, useful_threads

    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    seen: list[int] = []
    with Runner.from_scenario(tiny_scenario, set=["run.steps=2"], out=tmp_path / "o") as runner:
        assert useful_threads(runner.system) == 1
        runner.run(progress=lambda simulation: seen.append(torch.get_num_threads()))
    assert seen == [1, 1]
    side = int(SMALL_NETWORK_PAIRS**0.5) + 1
    with Runner.from_scenario(
        tiny_scenario,
        set=[f"model.sizes=[0, {side}, {side}, 0]", "run.steps=1"],
        out=tmp_path / "p",
    ) as runner:
        assert useful_threads(runner.system) is None
    seen.clear()
    with Runner.from_scenario(
        tiny_scenario, set=["run.steps=1", "run.threads=2"], out=tmp_path / "q"
    ) as runner:
        runner.run(progress=lambda simulation: seen.append(torch.get_num_threads()))
    assert seen == [2]


def test_experiments_run_built_takes_the_share_as_particlesim_run_does(
    registry: Path, tiny_scenario: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid point run through ``run_built`` holds the machine's share (4 cores, a network
    big enough: 4 threads), ``[run] threads`` wins, and the count is restored after."""
    from particlesim import experiments as harness
    from particlesim.threads import SMALL_NETWORK_PAIRS

    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    side = int(SMALL_NETWORK_PAIRS**0.5) + 1
    saved = torch.get_num_threads()
    for assignments, want in (([], 4), (["run.threads=1"], 1)):
        built = harness.build_point(
            tiny_scenario, [f"model.sizes=[0, {side}, {side}, 0]", "run.steps=2", *assignments]
        ).built
        seen: list[int] = []

        def record(simulation, seen: list[int] = seen) -> None:
            seen.append(torch.get_num_threads())

        result = harness.run_built(built, progress=record)
        assert result.status == "completed" and seen == [want, want]
        assert torch.get_num_threads() == saved
