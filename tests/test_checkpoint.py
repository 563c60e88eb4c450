"""Checkpoints, exact resume (also after ``kill -9``), and the divergence guard."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from tiny import tiny_splits
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core import (
    SGD,
    Adam,
    FunctionObservable,
    KernelInteraction,
    OverdampedLangevin,
    ParticleGroup,
    Simulation,
    System,
)
from particlesim.core.simulation import Backoff
from particlesim.data.datasets import DataSplits
from particlesim.errors import CheckpointError, DivergenceError, ScenarioError
from particlesim.io.checkpoint import (
    CheckpointWriter,
    load_checkpoint,
    read_checkpoint,
    run_lock,
    save_checkpoint,
    scenario_fingerprint,
)
from particlesim.io.h5md import TrajectoryWriter, _lookup3, clear_status_flags
from particlesim.io.metrics import MetricsWriter
from particlesim.kernels import GaussianKernel

runner = CliRunner()


# --------------------------------------------------------------------------- helpers


def tiny_system(seed: int = 1) -> System:
    """input (6, frozen positions) → hidden (5, 2 charge channels, bias) → output (3); D = 2."""
    g = torch.Generator().manual_seed(seed)
    groups = [
        ParticleGroup.create("input", 6, 2, generator=g, frozen=["position"]),
        ParticleGroup.create("hidden", 5, 2, generator=g, bias=True, charge_channels=2),
        ParticleGroup.create("output", 3, 2, generator=g, bias=True),
    ]
    interactions = [
        KernelInteraction(groups[0], groups[1], kernel=GaussianKernel(width=[1.0, 2.0])),
        KernelInteraction(groups[1], groups[2], kernel=GaussianKernel()),
    ]
    return System(groups, interactions)


def online_splits() -> DataSplits:
    """tiny_splits plus a sampler: every step draws a fresh batch from the data generator."""
    base = tiny_splits()

    def sampler(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, base.train_x.shape[0], (size,), generator=generator)
        noise = torch.randn(size, base.train_x.shape[1], generator=generator) * 0.05
        return base.train_x[rows] + noise, base.train_y[rows]

    base.sampler = sampler
    return base


def jitter(simulation: Simulation) -> float:
    """Draws from every process RNG (torch, numpy, random): exact only if all are restored."""
    return float(torch.rand(())) + float(np.random.rand()) + random.random()


def make_simulation(*, writers: list[Any], steps: int = 20) -> Simulation:
    return Simulation(
        tiny_system(),
        OverdampedLangevin(lr=0.05, temperature=1e-4),  # uses the noise generator
        online_splits(),  # uses the data generator
        steps=steps,
        batch_size=16,
        writers=writers,
        observables=[FunctionObservable("jitter", jitter)],
        record_initial=True,
    )


def file_writers(checkpoint_every: int = 5) -> list[Any]:
    return [
        TrajectoryWriter(
            trigger=1,
            observables=["loss", "lr", "jitter"],
            observables_every=1,
            connectivity_every=3,
        ),
        MetricsWriter(trigger=2, observables=["step", "loss", "train_loss", "jitter"]),
        CheckpointWriter(trigger=checkpoint_every),
    ]


def seed_process_rngs() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a trajectory outside /parameters, read whole."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith("parameters"):
                out[name] = obj[()]

        file.visititems(visit)
    return out


def assert_same_trajectory(a: Path, b: Path) -> int:
    """Bit-identical datasets (NaN = NaN); returns how many were compared."""
    first, second = datasets(a), datasets(b)
    assert sorted(first) == sorted(second)
    for name in first:
        x, y = first[name], second[name]
        assert x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    return len(first)


def metrics_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]


def final_parameters(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["simulation"]["system"]


# --------------------------------------------------------------------------- the file


def test_checkpoint_holds_plain_data_and_loads_with_weights_only(tmp_path: Path) -> None:
    sim = make_simulation(writers=file_writers())
    sim.run(out_dir=tmp_path)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no pickled objects
    assert raw["format"] == "particlesim-checkpoint" and raw["version"] == 1
    state = raw["simulation"]
    assert state["step"] == 20 and state["time"] == pytest.approx(20 * 0.05)
    assert set(raw["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert set(state["generators"]) == {"noise", "data"}
    assert state["integrator"]["step_scale"] == 1.0
    assert [w["name"] for w in state["writers"]] == ["trajectory", "metrics", "checkpoint"]
    clocks = state["writers"][0]["state"]["clocks"]
    assert {c["label"]: c["frames"] for c in clocks} == {
        "particles": 21,  # frames 0..20 (observables share the particle clock)
        "epoch": 6,  # 48 rows / 16 = 3 steps an epoch; steps 3, 6, ..., 18
        "connectivity": 7,  # steps 0, 3, ..., 18
    }
    assert state["writers"][1]["state"]["rows"] == 11  # steps 0, 2, ..., 20
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o044  # readable like any output
    for name, tensor in state["system"].items():
        assert torch.equal(tensor, sim.system.state_dict()[name])


def test_periodic_and_final_checkpoints(tmp_path: Path) -> None:
    writer = CheckpointWriter(trigger=6)
    sim = Simulation(
        tiny_system(), Adam(lr=0.05), tiny_splits(), steps=20, batch_size=16, writers=[writer]
    )
    sim.run(out_dir=tmp_path)
    assert writer.saved_steps == [6, 12, 18, 20]  # every 6 steps, then at the clean stop
    epoch_writer = CheckpointWriter()  # default: every epoch (3 steps)
    sim = Simulation(
        tiny_system(), Adam(lr=0.05), tiny_splits(), steps=7, batch_size=16, writers=[epoch_writer]
    )
    sim.run(out_dir=tmp_path)
    assert epoch_writer.saved_steps == [3, 6, 7]


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = Simulation(tiny_system(), Adam(), tiny_splits(), steps=2, batch_size=16)
    path = save_checkpoint(tmp_path / "checkpoint.pt", sim)
    before = path.read_bytes()

    def broken_save(payload: Any, file: Any) -> None:
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint: disk full"):
        save_checkpoint(path, sim)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


class Payload:
    """Not a plain container: a checkpoint holding it must not load (it could run code)."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such checkpoint file"),
        (b"not a zip file at all", "not a readable particlesim checkpoint"),
        (Payload(), "holds a pickled test_checkpoint.Payload object, which only an unsafe"),
        ({"format": "something else"}, "not a particlesim checkpoint"),
        ({"format": "particlesim-checkpoint", "version": 99}, "checkpoint version 99"),
        ({"format": "particlesim-checkpoint", "version": 1, "simulation": 1}, "damaged"),
    ],
)
def test_unreadable_checkpoints_are_one_line_errors(
    tmp_path: Path, content: Any, message: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as caught:
        read_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_of_another_network_or_data_is_refused(tmp_path: Path) -> None:
    sim = Simulation(tiny_system(), Adam(), tiny_splits(), steps=2, batch_size=16)
    path = save_checkpoint(tmp_path / "checkpoint.pt", sim, extra={"fingerprint": "abc"})
    with pytest.raises(CheckpointError, match="belongs to another scenario"):
        load_checkpoint(path, sim, fingerprint="def")
    other = Simulation(tiny_system(), Adam(), tiny_splits(n=60), steps=2, batch_size=16)
    with pytest.raises(CheckpointError, match="48 training rows in batches of 16, this run has 60"):
        load_checkpoint(path, other)
    g = torch.Generator().manual_seed(0)
    groups = [ParticleGroup.create(n, k, 2, generator=g) for n, k in (("input", 6), ("out", 3))]
    small = System(groups, [KernelInteraction(groups[0], groups[1], kernel=GaussianKernel())])
    with pytest.raises(CheckpointError, match="the network does not match"):
        load_checkpoint(path, Simulation(small, Adam(), tiny_splits(), steps=2, batch_size=16))


def test_fingerprint_ignores_run_length_and_device_only() -> None:
    resolved = {"scenario": {"seed": 1, "device": "cpu"}, "run": {"epochs": 2.0, "steps": None}}
    longer = {"scenario": {"seed": 1, "device": "cuda"}, "run": {"epochs": 9.0, "steps": None}}
    other_seed = {"scenario": {"seed": 2, "device": "cpu"}, "run": {"epochs": 2.0, "steps": None}}
    assert scenario_fingerprint(resolved) == scenario_fingerprint(longer)
    assert scenario_fingerprint(resolved) != scenario_fingerprint(other_seed)


# --------------------------------------------------------------------------- exact resume


def test_resume_after_a_crash_is_bit_identical(tmp_path: Path) -> None:
    """Crash at step 13 (checkpoint at 10), resume: equal to a run that never stopped."""
    seed_process_rngs()
    reference = tmp_path / "reference"
    make_simulation(writers=file_writers()).run(out_dir=reference)

    seed_process_rngs()
    crashed = tmp_path / "crashed"

    def crash(simulation: Simulation) -> None:
        if simulation.step == 13:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        make_simulation(writers=file_writers()).run(out_dir=crashed, progress=crash)
    assert read_checkpoint(crashed / "checkpoint.pt")["simulation"]["step"] == 10
    with h5py.File(crashed / "trajectory.h5", "r") as file:  # frames past the checkpoint
        assert file["particles/hidden/position/value"].shape[0] == 14

    resumed = make_simulation(writers=file_writers())
    load_checkpoint(crashed / "checkpoint.pt", resumed)
    assert resumed.step == 10
    result = resumed.run(out_dir=crashed)
    assert result.status == "completed" and result.step == 20
    assert assert_same_trajectory(reference / "trajectory.h5", crashed / "trajectory.h5") >= 12
    assert metrics_rows(reference / "metrics.jsonl") == metrics_rows(crashed / "metrics.jsonl")
    want, got = (
        final_parameters(reference / "checkpoint.pt"),
        final_parameters(crashed / "checkpoint.pt"),
    )
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    a = read_checkpoint(reference / "checkpoint.pt")["simulation"]
    b = read_checkpoint(crashed / "checkpoint.pt")["simulation"]
    for key in ("step", "time", "running_count", "last_loss"):
        assert a[key] == b[key], key
    assert torch.equal(a["generators"]["noise"], b["generators"]["noise"])
    assert torch.equal(a["generators"]["data"], b["generators"]["data"])


def test_resume_refuses_a_trajectory_shorter_than_the_checkpoint(tmp_path: Path) -> None:
    make_simulation(writers=file_writers(), steps=6).run(out_dir=tmp_path)
    with h5py.File(tmp_path / "trajectory.h5", "a") as file:
        file["particles/hidden/position/value"].resize(3, axis=0)
    resumed = make_simulation(writers=file_writers(), steps=9)
    load_checkpoint(tmp_path / "checkpoint.pt", resumed)
    with pytest.raises(Exception, match="the particles series has 3 frames, but the checkpoint"):
        resumed.run(out_dir=tmp_path)


def test_resume_with_clocks_that_record_nothing(tmp_path: Path) -> None:
    def writers() -> list[Any]:
        only_particles = TrajectoryWriter(trigger=2, observables=[], epoch_observables=[])
        return [only_particles, CheckpointWriter(trigger=4)]

    first = Simulation(
        tiny_system(), Adam(lr=0.05), tiny_splits(), steps=4, batch_size=16, writers=writers()
    )
    first.run(out_dir=tmp_path)
    second = Simulation(
        tiny_system(), Adam(lr=0.05), tiny_splits(), steps=8, batch_size=16, writers=writers()
    )
    load_checkpoint(tmp_path / "checkpoint.pt", second)
    assert second.run(out_dir=tmp_path).status == "completed"
    with h5py.File(tmp_path / "trajectory.h5", "r") as file:
        assert file["particles/hidden/charge/step"][()].tolist() == [0, 2, 4, 6, 8]
        assert "observables" not in file


def test_superblock_checksum_and_clearing_the_write_flags(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w", libver=("v110", "latest")) as file:
        file["x"] = np.arange(3)
    head = path.read_bytes()[:48]
    end = 12 + 4 * head[9]
    assert int.from_bytes(head[end : end + 4], "little") == _lookup3(head[:end])
    assert clear_status_flags(path) is False  # closed cleanly: nothing to clear
    flagged = bytearray(head[:end])
    flagged[11] = 0b101  # "open for writing" + "SWMR writing", as a killed writer leaves it
    path.write_bytes(
        bytes(flagged) + _lookup3(bytes(flagged)).to_bytes(4, "little") + path.read_bytes()[48:]
    )
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r+")
    assert clear_status_flags(path) is True
    with h5py.File(path, "r+") as file:
        assert file["x"][()].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- stopping


def test_a_signal_stops_at_the_next_step_boundary_with_a_checkpoint(tmp_path: Path) -> None:
    system = tiny_system()
    sent = []

    def interrupt_mid_step(module: Any, inputs: Any, output: Any) -> None:
        if not sent and sim.step == 4:  # inside step 5's forward pass
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    system.register_forward_hook(interrupt_mid_step)
    writer = CheckpointWriter(trigger=None)
    sim = Simulation(
        system, Adam(lr=0.05), tiny_splits(), steps=20, batch_size=16, writers=[writer]
    )
    previous = signal.getsignal(signal.SIGINT)
    result = sim.run(out_dir=tmp_path)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored
    assert result.status == "interrupted" and result.step == 5  # step 5 was finished
    assert writer.saved_steps == [5]
    saved = read_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["extra"]["status"] == "interrupted" and saved["simulation"]["step"] == 5


# --------------------------------------------------------------------------- the guard


def poison(parameter: torch.Tensor, when: Any) -> None:
    """Make ``parameter``'s gradient NaN whenever ``when()`` is true."""
    parameter.register_hook(lambda grad: grad * float("nan") if when() else grad)


def test_non_finite_gradient_names_step_group_and_field() -> None:
    system = tiny_system()
    sim = Simulation(system, Adam(lr=0.05), tiny_splits(), steps=20, batch_size=16)
    poison(system.groups["hidden"].position, lambda: sim.step == 6)
    with pytest.raises(
        DivergenceError, match=r"^step 7: non-finite gradient in group 'hidden' field 'position'$"
    ):
        sim.run()
    assert sim.step == 6
    good = sim.last_good_state
    assert good is not None and good["step"] == 6
    for name, tensor in sim.system.state_dict().items():  # checked before the update: intact
        assert torch.equal(good["system"][name], tensor)
        assert torch.isfinite(tensor).all()


def test_non_finite_parameters_after_the_update_are_undone() -> None:
    system = tiny_system()
    sim = Simulation(system, SGD(lr=2.0), tiny_splits(), steps=20, batch_size=16)
    bias = system.groups["output"].bias  # a finite gradient whose update overflows float32
    bias.register_hook(lambda grad: torch.full_like(grad, 3e38) if sim.step == 4 else grad)
    before: dict[str, torch.Tensor] = {}

    def remember(simulation: Simulation) -> None:
        if simulation.step == 4:
            before.update({k: v.clone() for k, v in simulation.system.state_dict().items()})

    with pytest.raises(
        DivergenceError,
        match=r"^step 5: non-finite value in group 'output' field 'bias' after the update$",
    ):
        sim.run(progress=remember)
    for name, tensor in sim.system.state_dict().items():  # restored to before step 5
        assert torch.equal(tensor, before[name]), name
    assert sim.last_good_state is not None and sim.last_good_state["step"] == 4


def test_nan_loss_at_the_first_step_blames_the_initial_state() -> None:
    """No update has happened yet, so the message does not point at the step size."""
    system = tiny_system()
    with torch.no_grad():
        system.groups["hidden"].charge.fill_(float("nan"))
    sim = Simulation(system, Adam(), tiny_splits(), steps=3, batch_size=16)
    with pytest.raises(
        DivergenceError,
        match=r"^step 1: the loss is nan before any update: the network's initial output is "
        r"not finite \(check its kernels, activations, initial spreads and the data\)$",
    ):
        sim.run()


def test_nan_loss_after_updates_points_at_the_step_size() -> None:
    system = tiny_system()
    sim = Simulation(system, Adam(), tiny_splits(), steps=6, batch_size=16)

    def poison(simulation: Simulation) -> None:
        if simulation.step == 3:
            with torch.no_grad():
                simulation.system.groups["hidden"].charge.fill_(float("nan"))

    with pytest.raises(DivergenceError, match=r"^step 4: the loss became nan; lower the step"):
        sim.run(progress=poison)


def test_backoff_retries_with_a_smaller_step_size() -> None:
    system = tiny_system()
    notices: list[str] = []
    integrator = SGD(lr=0.4)
    sim = Simulation(
        system,
        integrator,
        tiny_splits(),
        steps=12,
        batch_size=16,
        backoff=Backoff(factor=0.5, retries=3),
        log=notices.append,
    )
    poison(system.groups["hidden"].charge, lambda: sim.step == 5 and integrator.step_scale > 0.3)
    result = sim.run()
    assert result.status == "completed" and result.step == 12
    assert integrator.step_scale == 0.25  # two back-offs: 0.4 → 0.2 → 0.1
    assert integrator.step_size(7) == pytest.approx(0.1)
    assert len(notices) == 2 and "step 6: non-finite gradient in group 'hidden'" in notices[0]
    assert "retrying (2/3)" in notices[1]
    assert sim.time == pytest.approx(5 * 0.4 + 7 * 0.1)


def test_backoff_gives_up_after_its_retries() -> None:
    system = tiny_system()
    sim = Simulation(
        system,
        SGD(lr=0.4),
        tiny_splits(),
        steps=12,
        batch_size=16,
        backoff=Backoff(factor=0.5, retries=2),
    )
    poison(system.groups["hidden"].charge, lambda: sim.step == 5)
    with pytest.raises(DivergenceError, match="after 2 step-size back-offs"):
        sim.run()
    assert sim.integrator.step_scale == 0.25


def test_backoff_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"backoff.factor: must be in \(0, 1\), got 2"):
        Backoff(factor=2)
    with pytest.raises(ValueError, match=r"backoff.retries: must be a positive integer, got 0"):
        Backoff(retries=0)


def test_gradient_clipping_bounds_the_update() -> None:
    """SGD with clip c moves the parameters by exactly lr·c when ‖g‖ > c."""
    clipped = Simulation(
        tiny_system(), SGD(lr=0.5), tiny_splits(), steps=1, batch_size=16, clip_grad_norm=1e-3
    )
    before = torch.cat([p.detach().flatten().clone() for p in clipped.integrator.parameters])
    clipped.run()
    after = torch.cat([p.detach().flatten() for p in clipped.integrator.parameters])
    assert float(torch.linalg.vector_norm(after - before)) == pytest.approx(0.5e-3, rel=1e-4)
    free = Simulation(tiny_system(), SGD(lr=0.5), tiny_splits(), steps=1, batch_size=16)
    free.run()
    moved = torch.cat([p.detach().flatten() for p in free.integrator.parameters]) - before
    assert float(torch.linalg.vector_norm(moved)) > 0.01  # the clip mattered


# --------------------------------------------------------------------------- the CLI


def checkpointed_scenario(tiny_scenario: Path, body: str = "") -> Path:
    text = tiny_scenario.read_text().replace("epochs = 2\n", "steps = 24\ncheckpoint_every = 5\n")
    text += (
        textwrap.dedent("""
        [[writers]]
        name = "trajectory"
        every = 1
        observables_every = 1
        connectivity_every = 4
    """)
        + body
    )
    tiny_scenario.write_text(text)
    return tiny_scenario


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.output


def test_cli_resume_cases(tiny_scenario: Path, tmp_path: Path) -> None:
    scenario = checkpointed_scenario(tiny_scenario)
    out = tmp_path / "out"
    assert invoke("run", scenario, "--out", out, "--no-progress").exit_code == 0
    # a finished run: nothing to do, files untouched
    before = (out / "trajectory.h5").read_bytes()
    done = invoke("run", "--resume", out, "--no-progress")
    assert done.exit_code == 0 and "already completed 24 steps; nothing to do" in done.stdout
    assert (out / "trajectory.h5").read_bytes() == before
    # extend it: continues from step 24 and appends
    more = invoke("run", "--resume", out, "--set", "run.steps=30", "--no-progress")
    assert more.exit_code == 0, more.output
    assert "resumed at step 24: 30 steps" in more.stderr
    with h5py.File(out / "trajectory.h5", "r") as file:
        assert file["particles/hidden1/position/step"][()].tolist() == list(range(31))
    # errors
    assert_one_line_error(
        invoke("run", scenario, "--out", out), f"continue that run with --resume {out}"
    )
    assert_one_line_error(
        invoke("run", scenario, "--resume", out, "--set", "integrator.lr=0.1"),
        "belongs to another scenario (integrator.lr changed)",
    )
    assert_one_line_error(
        invoke("run", "--resume", out, "--set", "integrator.lr=0.1", "--set", "scenario.seed=9"),
        "belongs to another scenario (integrator.lr, scenario.seed changed)",
    )
    assert_one_line_error(
        invoke("run", "--resume", out, "--out", tmp_path / "elsewhere"), "differ; a resumed run"
    )
    assert_one_line_error(invoke("run", "--resume", tmp_path / "nothing"), "no such run directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        invoke("run", scenario, "--resume", tmp_path / "empty"), "holds no checkpoint.pt"
    )
    assert_one_line_error(invoke("run"), "give a scenario FILE to run, or --resume DIR")
    with run_lock(out):
        assert_one_line_error(
            invoke("run", "--resume", out, "--set", "run.steps=40"),
            f"in use by another particlesim process (pid {os.getpid()})",
        )


def test_resume_from_the_run_directory_finds_relative_plugins(
    tiny_scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's scenario.toml names plugin files absolutely, so ``--resume DIR`` alone works."""
    (tmp_path / "counter.py").write_text(
        "from particlesim import hookimpl\n\n"
        "@hookimpl\n"
        "def particlesim_step_end(simulation, step):\n"
        "    pass\n"
    )
    scenario = checkpointed_scenario(tiny_scenario)
    scenario.write_text('plugins = ["counter.py"]\n' + scenario.read_text())
    out = tmp_path / "runs" / "out"
    assert invoke("run", scenario, "--out", out, "--no-progress").exit_code == 0
    assert f'"{tmp_path / "counter.py"}"' in (out / "scenario.toml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    more = invoke("run", "--resume", out, "--set", "run.steps=30", "--no-progress")
    assert more.exit_code == 0, more.output
    assert "resumed at step 24" in more.stderr and "plugin: loaded counter" in more.stderr


def test_a_crafted_scenario_in_a_checkpoint_still_gives_one_line(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    from particlesim.io.checkpoint import atomic_save

    scenario = checkpointed_scenario(tiny_scenario)
    out = tmp_path / "out"
    assert invoke("run", scenario, "--out", out, "--no-progress").exit_code == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    payload["extra"]["fingerprint"] = "another"
    payload["extra"]["scenario_toml"] = "a = " + "[" * 3000 + "]" * 3000
    atomic_save(payload, out / "checkpoint.pt")
    assert_one_line_error(
        invoke("run", scenario, "--resume", out, "--set", "run.steps=30"),
        "belongs to another scenario (its settings differ beyond run length and device)",
    )


def test_scenario_differences_names_key_paths() -> None:
    from particlesim.io.checkpoint import scenario_differences

    saved = {"run": {"epochs": 1, "seed": None}, "groups": [{"size": 4}, {"size": 5}], "x": (1, 2)}
    assert scenario_differences(saved, {**saved, "run": {"epochs": 7}, "x": [1, 2]}) == []
    changed = {**saved, "groups": [{"size": 4}, {"size": 6}], "extra": {"a": 1}}
    assert scenario_differences(saved, changed) == ["groups[1].size", "extra"]
    assert scenario_differences({"k": [1]}, {"k": [1, 2]}) == ["k"]
    many = {f"k{i}": i for i in range(9)}
    assert len(scenario_differences(many, {}, most=3)) == 3


def test_cli_divergence_saves_the_last_good_state(tiny_scenario: Path, tmp_path: Path) -> None:
    # A stiff L2 potential: the first step throws every position to ~1e36, the second
    # step's gradient 2·c·x overflows.
    with tiny_scenario.open("a") as file:
        file.write('\n[[potentials]]\nname = "l2"\ncoefficient = 1e37\n')
    out = tmp_path / "out"
    result = invoke(
        "run", tiny_scenario, "--out", out, "--set", "integrator.name=sgd", "--no-progress"
    )
    # (the reference path sees a finite loss and a non-finite gradient; the matmul path's
    # |a|² + |b|² − 2a·b is inf − inf there, a NaN loss: both are the step-2 divergence)
    assert_one_line_error(result, "step 2: ", code=3)
    assert (
        "non-finite gradient in group 'input' field" in result.stderr
        or "the loss became nan; lower the step size" in result.stderr
    )
    assert "the last good state (step 1) is in" in result.stderr
    saved = read_checkpoint(out / "diverged.pt")
    assert saved["simulation"]["step"] == 1 and saved["extra"]["status"] == "diverged"
    assert all(torch.isfinite(t).all() for t in saved["simulation"]["system"].values())
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_cli_step_size_overflow_is_a_divergence(tiny_scenario: Path, tmp_path: Path) -> None:
    """Adam's step size / bias correction overflows float32: exit 3, not an internal error."""
    out = tmp_path / "out"
    result = invoke(
        "run", tiny_scenario, "--out", out, "--set", "integrator.name=adam",
        "--set", "integrator.lr=1e38", "--no-progress",
    )  # fmt: skip
    assert_one_line_error(result, "step 1: the update overflowed (", code=3)
    assert "lower the step size (integrator.lr)" in result.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "run.checkpoint_every=-1",
            'run.checkpoint_every: expected a positive integer (steps) or "epoch", or 0 / false',
        ),
        ('run.checkpoint_every="hourly"', "run.checkpoint_every: expected a positive integer"),
        ("run.checkpoint_every=true", "run.checkpoint_every: expected a positive integer"),
        ("run.clip_grad_norm=0", "run.clip_grad_norm: must be a positive finite number"),
        ("run.backoff={factor=2}", "run.backoff.factor: must be in (0, 1), got 2"),
        ("run.backoff={tries=2}", "run.backoff.tries: unknown key"),
    ],
)
def test_scenario_guard_options_are_checked(tiny_scenario: Path, assignment: str, message: str):
    assert_one_line_error(invoke("validate", tiny_scenario, "--set", assignment), message)


def test_scenario_guard_options_reach_the_simulation(tiny_scenario: Path) -> None:
    from particlesim.cli.common import prepare
    from particlesim.scenario.builder import build

    plan, manager = prepare(
        tiny_scenario,
        ["run.clip_grad_norm=2.5", "run.backoff={retries=5}", "run.checkpoint_every=0"],
        None,
    )
    assert plan.resolved["run"]["backoff"] == {"factor": 0.5, "retries": 5}
    sim = build(plan, hooks=manager, log=lambda m: None).simulation
    assert sim.clip_grad_norm == 2.5 and sim.backoff == Backoff(0.5, 5)
    with pytest.raises(ScenarioError):
        prepare(tiny_scenario, ["run.backoff=3"], None)


# --------------------------------------------------------------------------- kill -9

SLOW_PLUGIN = """
import time
from particlesim import hookimpl

@hookimpl
def particlesim_step_end(simulation, step):
    time.sleep({delay})
"""


def _cli_child(args: list[str]) -> None:
    """A forked child: run the CLI (the imports are inherited, so it starts at once).

    One intra-op thread: a child forked after the parent ran an OpenMP parallel region
    deadlocks in its first parallel region otherwise (GNU libgomp's fork limitation).
    """
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, args)
    os._exit(result.exit_code)


def _stop(pid: int) -> None:
    """``SIGSTOP`` ``pid`` and wait until it has stopped, so that its files hold still.

    ``kill`` only queues the signal: a process busy on another core runs on for a moment
    (``/proc/PID/stat`` says ``T`` once it has stopped; without ``/proc``, no wait).
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.001)


def _saved_and_written(out: Path) -> tuple[int, int] | None:
    """The step of the run's checkpoint and of its last trajectory frame; None before both."""
    checkpoint = out / "checkpoint.pt"
    if not checkpoint.exists():
        return None
    try:
        with h5py.File(out / "trajectory.h5", "r", swmr=True) as file:
            steps = file["particles/hidden1/position/step"]
            if len(steps) == 0:
                return None
            last = int(steps[-1])
    except (OSError, KeyError):  # not there yet, or still being created (locked)
        return None
    return read_checkpoint(checkpoint)["simulation"]["step"], last


def kill_and_resume(
    scenario: Path, tmp_path: Path, *, kill_after: int, name: str, fresh_interpreter: bool
) -> Path:
    """Run the CLI in another process, SIGKILL it once a checkpoint at >= ``kill_after``
    exists and a frame past it was written, then resume in-process; returns the run directory.

    ``fresh_interpreter``: a ``python -m particlesim`` subprocess; else a fork of this process.
    """
    out = tmp_path / name
    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW_PLUGIN.format(delay=0.08))
    args = ["run", str(scenario), "--out", str(out), "--no-progress", "-p", str(plugin)]
    if fresh_interpreter:
        child = subprocess.Popen(
            [sys.executable, "-m", "particlesim", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running, pid = (lambda: child.poll() is None), child.pid
    else:
        forked = multiprocessing.get_context("fork").Process(target=_cli_child, args=(args,))
        forked.start()
        running, pid = forked.is_alive, forked.pid
    try:
        deadline = time.monotonic() + 120
        while True:
            assert running(), "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint and later frame within 120 s"
            time.sleep(0.05)
            # Look while the run is stopped: what is seen is what the kill leaves behind.
            _stop(pid)
            found = _saved_and_written(out)
            if found is not None and found[1] > found[0] >= kill_after:
                step = found[0]
                break
            os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGKILL)
        if fresh_interpreter:
            child.wait()
            code = child.returncode
        else:
            forked.join()
            code = forked.exitcode
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    with h5py.File(out / "trajectory.h5", "r", swmr=True) as file:
        assert file["particles/hidden1/position/step"][-1] > step  # frames past the checkpoint
    resumed = invoke("run", "--resume", out, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed at step {step}" in resumed.stderr
    return out


def test_kill_9_then_resume_is_bit_identical(tiny_scenario: Path, tmp_path: Path) -> None:
    scenario = checkpointed_scenario(tiny_scenario)
    reference = tmp_path / "reference"
    assert invoke("run", scenario, "--out", reference, "--no-progress").exit_code == 0
    out = kill_and_resume(scenario, tmp_path, kill_after=5, name="killed", fresh_interpreter=False)
    assert assert_same_trajectory(reference / "trajectory.h5", out / "trajectory.h5") >= 12
    assert metrics_rows(reference / "metrics.jsonl") == metrics_rows(out / "metrics.jsonl")
    want, got = (
        final_parameters(reference / "checkpoint.pt"),
        final_parameters(out / "checkpoint.pt"),
    )
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [5, 10, 15, 20])
def test_kill_9_of_a_fresh_interpreter_at_several_points(
    tiny_scenario: Path, tmp_path: Path, kill_after: int
) -> None:
    scenario = checkpointed_scenario(tiny_scenario)
    reference = tmp_path / "reference"
    assert invoke("run", scenario, "--out", reference, "--no-progress").exit_code == 0
    out = kill_and_resume(
        scenario, tmp_path, kill_after=kill_after, name="killed", fresh_interpreter=True
    )
    assert assert_same_trajectory(reference / "trajectory.h5", out / "trajectory.h5") >= 12
    want, got = (
        final_parameters(reference / "checkpoint.pt"),
        final_parameters(out / "checkpoint.pt"),
    )
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_run_of_epochs_resumes_for_a_number_of_steps(tiny_scenario: Path, tmp_path: Path) -> None:
    """``--set run.steps`` on a scenario that gives epochs replaces them (no conflict)."""
    out = tmp_path / "out"
    assert invoke("run", tiny_scenario, "--out", out, "--no-progress").exit_code == 0
    resumed = invoke("run", "--resume", out, "--set", "run.steps=15", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed at step 12: 15 steps" in resumed.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 15


def test_a_completed_run_ends_its_trajectory_with_the_final_step(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    """Every series gets the final state; an extended run drops that frame (the checkpoint
    does not count it) and matches a run that went the whole way at once."""
    text = tiny_scenario.read_text() + (
        '\n[[writers]]\nname = "trajectory"\nevery = 5\nobservables_every = 5\n'
        "connectivity_every = 5\n"
    )
    tiny_scenario.write_text(text)
    short, whole = tmp_path / "short", tmp_path / "whole"
    assert invoke("run", tiny_scenario, "--out", short, "--no-progress").exit_code == 0
    with h5py.File(short / "trajectory.h5", "r") as file:
        for series in (
            "particles/hidden1/position",
            "observables/loss",
            "connectivity/input_to_hidden1/weight",
        ):
            assert file[f"{series}/step"][()].tolist() == [0, 5, 10, 12], series
        assert file["observables/test_accuracy/step"][()].tolist() == [6, 12]
        final = file["particles/hidden1/position/value"][-1]
    saved = read_checkpoint(short / "checkpoint.pt")
    torch.testing.assert_close(
        torch.from_numpy(final), saved["simulation"]["system"]["groups.hidden1.position"]
    )
    extended = invoke("run", "--resume", short, "--set", "run.steps=20", "--no-progress")
    assert extended.exit_code == 0, extended.output
    args = ("run", tiny_scenario, "--out", whole, "--set", "run.steps=20", "--no-progress")
    assert invoke(*args).exit_code == 0
    with h5py.File(short / "trajectory.h5", "r") as a, h5py.File(whole / "trajectory.h5", "r") as b:
        steps = a["particles/hidden1/position/step"][()].tolist()
        assert steps == b["particles/hidden1/position/step"][()].tolist() == [0, 5, 10, 15, 20]
        np.testing.assert_array_equal(
            a["particles/hidden1/position/value"][()], b["particles/hidden1/position/value"][()]
        )
