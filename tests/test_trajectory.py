"""H5MD trajectories: the writer's layout, exact round trips, SWMR, kill -9, the xarray engine."""

from __future__ import annotations

import inspect
import os
import pickle
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from tiny import tiny_splits

from particlesim.core import (
    Adam,
    KernelInteraction,
    MemoryWriter,
    OnEpoch,
    ParticleGroup,
    Simulation,
    System,
    Writer,
)
from particlesim.errors import OptionError, ScenarioError, TrajectoryError
from particlesim.io.h5md import (
    SERIES_ATTR,
    TrajectoryWriter,
    value_chunks,
    write_synthetic,
)
from particlesim.io.trajectory import (
    SERIES_ATTR as READER_SERIES_ATTR,
)
from particlesim.io.trajectory import (
    H5Array,
    TrajectoryWarning,
    open_group,
    open_trajectory,
)
from particlesim.kernels import GaussianKernel
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import read_scenario

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def tiny_system(seed: int = 1) -> System:
    """input (6, frozen position) → hidden (5, 2 charge channels, bias) → output (3, bias); D=2."""
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


class Recorder(Writer):
    """Captures every field and effective weight at its trigger (the reference for round trips)."""

    name = "recorder"

    def __init__(self, trigger: Any) -> None:
        super().__init__(trigger=trigger, observables=[])
        self.frames: list[dict[str, Any]] = []

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        system = simulation.system
        fields = {
            (g, f): group.field(f).detach().clone().numpy()
            for g, group in system.groups.items()
            for f in group.field_names()
        }
        with torch.no_grad():
            weights = {
                f"{i.source}_to_{i.target}": i.effective_weight(
                    system.groups[i.source], system.groups[i.target]
                ).numpy()
                for i in system.interactions
            }
        self.frames.append(
            {"step": step, "time": simulation.time, "fields": fields, "weights": weights}
        )


def run_tiny(
    out: Path,
    *,
    epochs: float = 2,
    writer: TrajectoryWriter | None = None,
    extra: list[Writer] = (),  # type: ignore[assignment]
    record_initial: bool = True,
) -> tuple[Simulation, Path]:
    writer = writer or TrajectoryWriter(trigger=2, observables_every=1, connectivity_every=3)
    sim = Simulation(
        tiny_system(),
        Adam(lr=0.05),
        tiny_splits(),
        epochs=epochs,
        batch_size=16,
        writers=[writer, *extra],
        record_initial=record_initial,
    )
    sim.run(out_dir=out)
    return sim, out / writer.file


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run (6 steps) with the writer and reference recorders, shared by several tests."""
    out = tmp_path_factory.mktemp("traj")
    frames, obs, epochs, weights = Recorder(2), MemoryWriter(
        trigger=1, observables=["loss", "lr"]
    ), MemoryWriter(trigger=OnEpoch(), observables=["train_loss", "train_accuracy",
                                                    "test_accuracy"]), Recorder(3)  # fmt: skip
    sim, path = run_tiny(out, extra=[frames, obs, epochs, weights])
    return {"sim": sim, "path": path, "frames": frames, "obs": obs, "epochs": epochs,
            "weights": weights}  # fmt: skip


# --------------------------------------------------------------------------- layout


def test_h5md_layout_attributes_shapes_dtypes_and_hard_links(recorded: dict[str, Any]) -> None:
    sim = recorded["sim"]
    assert sim.steps_per_epoch == 3 and sim.total_steps == 6
    with h5py.File(recorded["path"], "r", swmr=True) as f:
        assert f["h5md"].attrs["version"].tolist() == [1, 1]
        assert f["h5md"].attrs["version"].dtype.kind == "i"
        assert isinstance(f["h5md/author"].attrs["name"], str) and f["h5md/author"].attrs["name"]
        assert f["h5md/creator"].attrs["name"] == "particlesim"
        assert f["h5md/creator"].attrs["version"]
        assert list(f["particles"]) == ["input", "hidden", "output"]  # creation order
        for name in sim.system.groups:
            box = f[f"particles/{name}/box"]
            assert int(box.attrs["dimension"]) == 2
            assert [str(b) for b in box.attrs["boundary"]] == ["none", "none"]
        frame_steps = [0, 2, 4, 6]
        position = f["particles/hidden/position"]
        assert position["step"][()].tolist() == frame_steps
        assert position["step"].dtype == np.int64 and position["time"].dtype == np.float64
        assert position["time"].shape == (4,)
        assert position["value"].shape == (4, 5, 2) and position["value"].dtype == np.float32
        assert position["value"].maxshape == (None, 5, 2)
        assert position["value"].chunks == (64, 5, 2) == value_chunks((5, 2))
        assert f["particles/hidden/charge/value"].shape == (4, 5, 2)  # [T, N, C]
        assert f["particles/hidden/bias/value"].shape == (4, 5)
        assert f["particles/output/charge/value"].shape == (4, 3)  # [T, N]
        # every particle field of every group shares one step/time pair (hard links)
        step_id, time_id = position["step"].id, position["time"].id
        for path in (
            "particles/input/charge",
            "particles/hidden/charge",
            "particles/hidden/bias",
            "particles/output/position",
            "particles/output/charge",
            "particles/output/bias",
        ):
            assert f[path]["step"].id == step_id and f[path]["time"].id == time_id
        assert position["step"].attrs[SERIES_ATTR] == "particles"
        # observables: loss, lr every step; epoch observables on their own shared clock
        loss, lr = f["observables/loss"], f["observables/lr"]
        assert loss["step"].id == lr["step"].id != step_id
        assert loss["step"][()].tolist() == list(range(7))
        assert loss["value"].shape == (7,) and loss["value"].chunks == (1024,)
        epoch_steps = f["observables/train_loss/step"]
        assert epoch_steps[()].tolist() == [3, 6]
        for name in ("train_accuracy", "test_accuracy"):
            assert f[f"observables/{name}/step"].id == epoch_steps.id
        assert epoch_steps.attrs[SERIES_ATTR] == "epoch"
        # connectivity every 3 steps, with frame 0
        weight = f["connectivity/input_to_hidden/weight"]
        assert dict(f["connectivity/input_to_hidden"].attrs) == {
            "source": "input",
            "target": "hidden",
            "kind": "kernel",
        }
        assert weight["step"][()].tolist() == [0, 3, 6]
        assert weight["value"].shape == (3, 5, 6)  # [T, M, N]
        assert f["connectivity/hidden_to_output/weight/step"].id == weight["step"].id
    assert SERIES_ATTR == READER_SERIES_ATTR


def test_frozen_field_is_written_once_as_a_plain_dataset(recorded: dict[str, Any]) -> None:
    sim = recorded["sim"]
    with h5py.File(recorded["path"], "r", swmr=True) as f:
        frozen = f["particles/input/position"]
        assert isinstance(frozen, h5py.Dataset) and frozen.shape == (6, 2)
        np.testing.assert_array_equal(frozen[()], sim.system.groups["input"].position.numpy())
        assert isinstance(f["particles/input/charge"], h5py.Group)  # learnable: time series
    ds = open_trajectory(recorded["path"])["particles/input"].to_dataset()
    assert ds.position.dims == ("particle", "spatial")
    assert ds.charge.dims == ("time", "particle")


def test_round_trip_is_exact(recorded: dict[str, Any]) -> None:
    frames = recorded["frames"].frames
    assert [f["step"] for f in frames] == [0, 2, 4, 6]
    tree = open_trajectory(recorded["path"])
    for name in ("input", "hidden", "output"):
        ds = tree[f"particles/{name}"].to_dataset()
        assert ds.step.values.tolist() == [0, 2, 4, 6]
        np.testing.assert_array_equal(ds.time.values, [f["time"] for f in frames])
        assert ds.particle.values.tolist() == list(range(ds.sizes["particle"]))
        for var in ds.data_vars:
            if "time" not in ds[var].dims:
                continue
            expected = np.stack([f["fields"][(name, var)] for f in frames])
            np.testing.assert_array_equal(ds[var].values, expected)  # bit for bit
    hidden = tree["particles/hidden"].to_dataset()
    assert hidden.position.dims == ("time", "particle", "spatial")
    assert hidden.charge.dims == ("time", "particle", "channel")
    assert hidden.bias.dims == ("time", "particle")
    assert hidden.attrs["dimension"] == 2 and hidden.attrs["boundary"] == ["none", "none"]


def test_observables_with_units_and_an_epoch_clock(recorded: dict[str, Any]) -> None:
    obs = open_trajectory(recorded["path"])["observables"].to_dataset()
    assert obs.loss.dims == ("time",) and obs.train_loss.dims == ("time_epoch",)
    assert obs.step.values.tolist() == list(range(7))
    assert obs.step_epoch.values.tolist() == [3, 6]
    assert obs.loss.attrs["unit"] == "nats" and obs.train_loss.attrs["unit"] == "nats"
    assert "unit" not in obs.lr.attrs
    assert np.isnan(obs.loss.values[0])  # frame 0: no batch seen yet
    rows = recorded["obs"].rows  # a MemoryWriter at steps 0..6 got the same shared values
    assert [r["step"] for r in rows] == list(range(7))
    np.testing.assert_array_equal(obs.loss.values, [r["loss"] for r in rows])
    np.testing.assert_array_equal(obs.lr.values, [r["lr"] for r in rows])
    for name in ("train_loss", "train_accuracy", "test_accuracy"):
        np.testing.assert_array_equal(obs[name].values, [r[name] for r in recorded["epochs"].rows])


def test_units_are_also_cf_units_so_xarray_labels_plots(
    recorded: dict[str, Any], tmp_path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = open_trajectory(recorded["path"])["observables"].to_dataset()
    assert obs.loss.attrs["units"] == "nats" == obs.loss.attrs["unit"]
    assert "units" not in obs.lr.attrs
    line = obs.loss.plot()[0]  # xarray reads "units" (CF), not H5MD's "unit"
    assert line.axes.get_ylabel() == "loss [nats]"
    plt.close(line.figure)
    # a foreign file's units on values and on time carry over too
    path = tmp_path / "units.h5"
    with h5py.File(path, "w") as f:
        f.create_group("h5md").attrs["version"] = [1, 1]
        energy = f.create_group("observables/energy")
        energy["step"], energy["time"], energy["value"] = [0, 5], [0.0, 0.01], [1.0, 2.0]
        energy["value"].attrs["unit"] = "kJ mol-1"
        energy["time"].attrs["unit"] = "ps"
    with pytest.warns(TrajectoryWarning):
        foreign = open_trajectory(path)["observables"].to_dataset()
    assert foreign.energy.attrs["units"] == "kJ mol-1"
    assert foreign.time.attrs["units"] == "ps"


def test_connectivity_weights_equal_effective_weight(recorded: dict[str, Any]) -> None:
    reference = recorded["weights"].frames
    assert [f["step"] for f in reference] == [0, 3, 6]
    tree = open_trajectory(recorded["path"])
    sim = recorded["sim"]
    for interaction in sim.system.interactions:
        name = f"{interaction.source}_to_{interaction.target}"
        ds = tree[f"connectivity/{name}"].to_dataset()
        assert ds.weight.dims == ("time", "target", "source")
        assert ds.attrs["source"] == interaction.source
        assert ds.attrs["target"] == interaction.target
        assert ds.step.values.tolist() == [0, 3, 6]
        expected = np.stack([f["weights"][name] for f in reference])
        np.testing.assert_array_equal(ds.weight.values, expected)
        with torch.no_grad():
            final = interaction.effective_weight(
                sim.system.groups[interaction.source], sim.system.groups[interaction.target]
            )
        np.testing.assert_array_equal(ds.weight.values[-1], final.numpy())


def test_datatree_root_attrs_hold_h5md_and_parameters(recorded: dict[str, Any]) -> None:
    tree = open_trajectory(recorded["path"])
    attrs = tree.attrs
    assert attrs["h5md_version"].tolist() == [1, 1]
    assert attrs["creator"] == "particlesim" and attrs["creator_version"]
    assert attrs["seed"] == 0 and attrs["data_source"] == "tiny test data"
    assert '"h5py"' in attrs["versions"] and attrs["plugins"] == "[]"
    assert attrs["missing"] == ["parameters/scenario_toml"]  # built without a scenario
    assert set(tree.children) == {"particles", "observables", "connectivity"}


def test_wants_asks_for_the_observables_due_at_each_step(tmp_path: Path) -> None:
    writer = TrajectoryWriter(trigger=4, observables=["loss"], observables_every=2)
    sim = Simulation(
        tiny_system(), Adam(lr=0.05), tiny_splits(), epochs=2, batch_size=16, writers=[writer]
    )
    writer.open(sim, tmp_path)  # writes frame 0
    try:
        assert writer.wants(0) is None  # frame 0 is already written
        assert writer.wants(1) is None
        assert writer.wants(2) == ("loss",)
        assert writer.wants(3) == ("train_loss", "train_accuracy", "test_accuracy")  # epoch end
        assert writer.wants(4) == ("loss",)  # particles too, but they need no observables
        assert writer.wants(6) == ("loss", "train_loss", "train_accuracy", "test_accuracy")
    finally:
        writer.close("completed")


def test_record_initial_off_and_no_duplicate_frame_zero(tmp_path: Path) -> None:
    _, path = run_tiny(
        tmp_path / "a",
        writer=TrajectoryWriter(trigger=2, record_initial=False, record_final=False),
        epochs=1,
    )
    assert open_trajectory(path)["particles/hidden"].step.values.tolist() == [2]
    # the simulation also reports step 0: the writer's own frame 0 is not repeated
    _, path = run_tiny(tmp_path / "b", writer=TrajectoryWriter(trigger=1), epochs=1)
    assert open_trajectory(path)["particles/hidden"].step.values.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression(tmp_path: Path, compression: str) -> None:
    writer = TrajectoryWriter(trigger=3, compression=compression)  # type: ignore[arg-type]
    _, path = run_tiny(tmp_path, writer=writer, epochs=1)
    with h5py.File(path, "r", swmr=True) as f:
        assert f["particles/hidden/position/value"].compression == compression
    assert open_trajectory(path)["particles/hidden"].position.shape == (2, 5, 2)


def test_writer_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="observables_every: expected a positive integer"):
        TrajectoryWriter(observables_every="daily")
    with pytest.raises(OptionError, match="'lr' is also in observables"):
        TrajectoryWriter(epoch_observables=["lr"])
    with pytest.raises(OptionError, match="unknown group 'hiden'; groups: input, hidden, output"):
        run_tiny(tmp_path, writer=TrajectoryWriter(groups=["hiden"]))
    assert not (tmp_path / "trajectory.h5").exists()
    with pytest.raises(OptionError, match="no chosen group has a field 'velocity'"):
        run_tiny(tmp_path, writer=TrajectoryWriter(fields=["velocity"]))


def test_groups_and_fields_selection(tmp_path: Path) -> None:
    writer = TrajectoryWriter(trigger=3, groups=["hidden"], fields=["position"], observables=[])
    _, path = run_tiny(tmp_path, writer=writer, epochs=1)
    tree = open_trajectory(path)
    assert list(tree["particles"].children) == ["hidden"]
    assert list(tree["particles/hidden"].data_vars) == ["position"]
    assert list(tree["observables"].data_vars) == ["train_loss", "train_accuracy", "test_accuracy"]
    assert tree["observables"].dims == {"time": 1}  # only the epoch clock: it is "time"


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "trajectory.h5").write_bytes(b"precious")
    with pytest.raises(
        TrajectoryError, match=r"trajectory\.h5: already exists; .*never overwrites"
    ):
        run_tiny(tmp_path)
    assert (tmp_path / "trajectory.h5").read_bytes() == b"precious"


# --------------------------------------------------------------------------- scenario


WRITERS = """
[[writers]]
name = "trajectory"
every = 2
observables = ["loss", "lr", "epoch"]
observables_every = 1
connectivity_every = "epoch"
compression = "gzip"
"""


def test_writer_through_a_scenario(tiny_scenario: Path, tmp_path: Path) -> None:
    tiny_scenario.write_text(tiny_scenario.read_text() + WRITERS, encoding="utf-8")
    registries = PluginManager().load().registries
    plan = validate(read_scenario(tiny_scenario), registries, source=str(tiny_scenario))
    assert plan.resolved["writers"][0]["name"] == "trajectory"
    built = build(plan, device="cpu", log=lambda message: None)
    built.simulation.run(out_dir=tmp_path)
    tree = open_trajectory(tmp_path / "trajectory.h5")
    assert tree.attrs["scenario_toml"] == plan.to_toml()
    assert tomllib.loads(tree.attrs["scenario_toml"])["writers"][0]["compression"] == "gzip"
    assert tree.attrs["seed"] == 3 and tree.attrs["scenario_name"] == "tiny"
    assert "missing" not in tree.attrs
    steps = built.simulation.total_steps
    assert tree["particles/input"].step.values.tolist() == list(range(0, steps + 1, 2))
    assert tree["observables"].epoch.values[-1] == pytest.approx(2.0)
    assert tree["observables"].step_epoch.values.tolist() == [steps // 2, steps]
    assert list(tree["connectivity"].children)  # weights every epoch


def test_scenario_rejects_bad_writer_options(tiny_scenario: Path) -> None:
    text = tiny_scenario.read_text() + '[[writers]]\nname = "trajectory"\ncompression = "zip"\n'
    tiny_scenario.write_text(text, encoding="utf-8")
    registries = PluginManager().load().registries
    with pytest.raises(ScenarioError, match=r"writers\[0\]\.compression: expected one of 'none'"):
        validate(read_scenario(tiny_scenario), registries, source=str(tiny_scenario))


# --------------------------------------------------------------------------- SWMR and kill -9


class Peek(Writer):
    """Opens the trajectory while it is being written (same process, SWMR read)."""

    name = "peek"

    def __init__(self, path: Path) -> None:
        super().__init__(trigger=2, observables=[])
        self.path = path
        self.seen: list[list[int]] = []

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        ds = open_trajectory(self.path)["particles/hidden"].to_dataset()
        assert np.isfinite(ds.position.values).all()
        self.seen.append(ds.step.values.tolist())


def test_swmr_read_while_writing(tmp_path: Path) -> None:
    peek = Peek(tmp_path / "trajectory.h5")
    run_tiny(tmp_path, writer=TrajectoryWriter(trigger=2), extra=[peek])
    assert peek.seen == [[0], [0, 2], [0, 2, 4], [0, 2, 4, 6]]


KILL_SCRIPT = """
import time
import torch
from particlesim.core import Adam, KernelInteraction, ParticleGroup, Simulation
from particlesim.core import System
from particlesim.data.datasets import DataSplits
from particlesim.io.h5md import TrajectoryWriter
from particlesim.kernels import GaussianKernel
{functions}
writer = TrajectoryWriter(trigger=1, observables_every=1, connectivity_every=5)
sim = Simulation(tiny_system(), Adam(lr=0.01), tiny_splits(), steps=10**7, batch_size=16,
                 writers=[writer])
sim.run(out_dir={out!r}, progress=lambda s: time.sleep(0.002))
"""


def test_kill_9_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "trajectory.h5"
    functions = inspect.getsource(tiny_splits) + inspect.getsource(tiny_system)
    script = KILL_SCRIPT.format(functions=functions, out=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", script])
    seen = 0
    try:
        deadline = time.monotonic() + 60
        while seen < 3:
            assert process.poll() is None, "the writing process ended early"
            assert time.monotonic() < deadline, "no frames appeared within 60 s"
            time.sleep(0.1)
            if not path.exists():
                continue
            try:  # SWMR read of a file being written
                ds = open_group(path, "hidden")
            except TrajectoryError:  # the file is still being created (locked)
                continue
            seen = ds.sizes["time"]
            if seen:
                assert np.isfinite(ds.position.values).all()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    tree = open_trajectory(path)
    hidden = tree["particles/hidden"].to_dataset().load()
    frames = hidden.sizes["time"]
    assert frames >= seen >= 3
    assert hidden.step.values.tolist() == list(range(frames))  # every frame up to the last flush
    assert np.all(np.diff(hidden.time.values) > 0)
    assert np.isfinite(hidden.position.values).all() and np.isfinite(hidden.charge.values).all()
    for node in tree.subtree:
        node.to_dataset().load()  # every node reads
    with h5py.File(path, "r", swmr=True) as f:  # an independent SWMR reader opens it too
        assert f["particles/hidden/position/step"].shape[0] >= frames


# --------------------------------------------------------------------------- xarray engine


def test_xarray_engine(recorded: dict[str, Any]) -> None:
    path = recorded["path"]
    assert "particlesim" in xr.backends.list_engines()
    ds = xr.open_dataset(path, engine="particlesim", group="hidden")
    reference = open_group(path, "particles/hidden")
    xr.testing.assert_identical(ds, reference)
    assert ds.position.dims == ("time", "particle", "spatial")
    obs = xr.open_dataset(path, engine="particlesim", group="observables", drop_variables="lr")
    assert "lr" not in obs and "loss" in obs
    weights = xr.open_dataset(path, engine="particlesim", group="connectivity/input_to_hidden")
    assert weights.weight.dims == ("time", "target", "source")
    with pytest.raises(TrajectoryError, match=r"holds 3 particle groups \(input, hidden, output\)"):
        xr.open_dataset(path, engine="particlesim")
    tree = xr.open_datatree(path, engine="particlesim")
    xr.testing.assert_identical(tree["particles/hidden"].to_dataset(), reference)
    assert tree.attrs["creator"] == "particlesim"
    entry = xr.backends.list_engines()["particlesim"]
    assert entry.guess_can_open(path)
    assert not entry.guess_can_open(str(path) + ".nc")


def test_backend_module_does_not_import_torch() -> None:
    code = (
        "import sys, xarray\n"
        "import particlesim.io.xarray_backend, particlesim.io.trajectory\n"
        "xarray.backends.list_engines()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- laziness


def test_opening_reads_no_values(recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = h5py.Dataset.__getitem__

    def counting(self: h5py.Dataset, key: Any) -> Any:
        if not self.name.endswith(("/step", "/time")):
            reads.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    tree = open_trajectory(recorded["path"])
    assert reads == []
    position = tree["particles/hidden"].position
    assert isinstance(position.variable._data, xr.core.indexing.LazilyIndexedArray)
    assert position.isel(particle=1).values.shape == (4, 2)
    assert reads == ["/particles/hidden/position/value"]


def test_a_large_file_opens_lazily_and_pickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_synthetic(tmp_path / "big.h5", frames=20_000, particles=1000, fill=False)
    reads: list[str] = []
    original = h5py.Dataset.__getitem__

    def counting(self: h5py.Dataset, key: Any) -> Any:
        if not self.name.endswith(("/step", "/time")):
            reads.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    ds = open_trajectory(path)["particles/hidden"].to_dataset()
    assert reads == []  # opening a 20,000-frame file reads no frame (speed: see benchmarks/)
    assert ds.position.shape == (20_000, 1000, 3)
    assert ds.position.encoding["preferred_chunks"] == {"time": 64, "particle": 256, "spatial": 3}
    array = ds.position.variable._data.array
    assert isinstance(array, H5Array)
    assert array.name == "/particles/hidden/position/value"
    copy = pickle.loads(pickle.dumps(ds))  # no open handle inside: picklable (for dask)
    assert copy.position[5, 7].values.tolist() == [0.0, 0.0, 0.0]
    assert ds.position.isel(time=slice(-2, None), particle=[3, 1]).shape == (2, 2, 3)


# --------------------------------------------------------------------------- bad input


def test_missing_or_not_hdf5(tmp_path: Path) -> None:
    with pytest.raises(TrajectoryError, match=r"nothere\.h5: no such file"):
        open_trajectory(tmp_path / "nothere.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not a trajectory\n" * 100)
    with pytest.raises(TrajectoryError, match=r"notes\.h5: not an HDF5 file \(no HDF5 signature\)"):
        open_trajectory(text)


def test_hdf5_but_not_h5md(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TrajectoryError, match=r"plain\.h5: not an H5MD file \(no /h5md group\)"):
        open_trajectory(path)


def test_truncated_file(recorded: dict[str, Any], tmp_path: Path) -> None:
    data = recorded["path"].read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrajectoryError, match=r"cut\.h5: truncated HDF5 file \(\d[\d,]* bytes"):
        open_trajectory(cut)
    cut.write_bytes(data[:20])
    with pytest.raises(TrajectoryError, match=r"cut\.h5: truncated HDF5 file .*superblock"):
        open_trajectory(cut)


def test_unknown_group_lists_those_that_exist(recorded: dict[str, Any]) -> None:
    message = (
        r"no group 'hiden' \(did you mean 'hidden'\?\); groups: input, hidden, output, "
        r"observables, connectivity/input_to_hidden, connectivity/hidden_to_output"
    )
    with pytest.raises(TrajectoryError, match=message):
        open_group(recorded["path"], "hiden")
    with pytest.raises(TrajectoryError, match="no group 'hiden'"):
        xr.open_dataset(recorded["path"], engine="particlesim", group="hiden")


def test_h5md_file_of_another_program(tmp_path: Path) -> None:
    """Standard H5MD written by hand: fixed-interval steps, no particlesim extras."""
    path = tmp_path / "other.h5"
    positions = np.arange(4 * 3 * 3, dtype=np.float64).reshape(4, 3, 3)
    with h5py.File(path, "w") as f:
        f.create_group("h5md").attrs["version"] = [1, 0]
        f["h5md"].create_group("creator").attrs.update({"name": "othermd", "version": "2"})
        f["h5md"].create_group("author").attrs["name"] = "someone"
        group = f.create_group("particles/all")
        group.create_group("box").attrs.update(
            {"dimension": 3, "boundary": np.array([b"periodic"] * 3)}
        )
        group["box/edges"] = np.ones(3)
        pos = group.create_group("position")
        pos["step"], pos["time"], pos["value"] = (
            np.array([0, 10, 20, 30]),
            np.arange(4.0),
            positions,
        )
        pos["value"].attrs["unit"] = "nm"
        vel = group.create_group("velocity")
        vel["step"] = 5  # fixed interval: 100, 105, …
        vel["step"].attrs["offset"] = 100
        vel["value"] = np.zeros((2, 3, 3))
        energy = f.create_group("observables/energy")
        energy["step"], energy["value"] = np.array([0, 10]), np.array([1.5, 1.25])
    with pytest.warns(TrajectoryWarning, match=r"written by 'othermd', not particlesim"):
        tree = open_trajectory(path)
    ds = tree["particles/all"].to_dataset()
    np.testing.assert_array_equal(ds.position.values, positions)
    assert ds.position.dims == ("time", "particle", "spatial")
    assert ds.position.attrs["unit"] == "nm"
    assert ds.step.values.tolist() == [0, 10, 20, 30]
    assert ds.velocity.dims == ("time_velocity", "particle", "spatial")
    assert ds.step_velocity.values.tolist() == [100, 105]
    assert ds.attrs["boundary"] == ["periodic"] * 3 and ds.attrs["edges"].tolist() == [1.0] * 3
    obs = tree["observables"].to_dataset()
    assert obs.energy.values.tolist() == [1.5, 1.25]
    assert obs.time.values.tolist() == [0.0, 10.0]  # no time dataset: time = step
    assert tree.attrs["creator"] == "othermd" and tree.attrs["h5md_version"].tolist() == [1, 0]
    assert "parameters/scenario_toml" in tree.attrs["missing"]
    entry = xr.backends.list_engines()["particlesim"]
    assert not entry.guess_can_open(path)  # conservative: only particlesim's own files
    assert open_group(path, "all").sizes["particle"] == 3
