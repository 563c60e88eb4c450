"""Synthetic trajectories in the reader's layout, shared by the analysis and picture tests.

``make_tree`` builds the :class:`xarray.DataTree` that ``open_trajectory`` would return for a
small run (a frozen input grid, moving hidden and output groups, observables on two clocks,
weights); ``write_h5md`` writes such a tree as an H5MD 1.1 file in DESIGN.md's layout.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import xarray as xr


def group_ds(
    position: np.ndarray,
    charge: np.ndarray | None = None,
    *,
    steps: np.ndarray | None = None,
    dt: float = 0.1,
) -> xr.Dataset:
    """A group Dataset; ``position`` [T, N, D] moves, [N, D] is frozen."""
    n = position.shape[-2]
    coords: dict[str, object] = {"particle": np.arange(n)}
    data: dict[str, object] = {}
    moving = position.ndim == 3 or (charge is not None and charge.ndim >= 2)
    if moving:
        n_frames = position.shape[0] if position.ndim == 3 else charge.shape[0]
        steps = np.arange(n_frames) * 10 if steps is None else steps
        coords.update(time=steps * dt, step=("time", steps))
    pdims = ("time", "particle", "spatial") if position.ndim == 3 else ("particle", "spatial")
    data["position"] = (pdims, position)
    if charge is not None:
        cdims = {1: ("particle",), 2: ("time", "particle"), 3: ("time", "particle", "channel")}
        data["charge"] = (cdims[charge.ndim], charge)
    d = position.shape[-1]
    return xr.Dataset(data, coords=coords, attrs={"dimension": d, "boundary": ["none"] * d})


def make_tree(
    n_frames: int = 4,
    dim: int = 2,
    sizes: dict[str, int] | None = None,
    channels: int = 1,
    seed: int = 0,
    connectivity: bool = True,
    ids: bool = False,
    epoch_clock: bool = False,
) -> xr.DataTree:
    """A small random trajectory: frozen input grid, moving hidden/output, observables, weights.

    ``ids`` adds an integer ``id`` field (time, particle) to the moving groups, as neuron
    swaps record; ``epoch_clock`` puts the accuracy on the per-epoch clock (``time_epoch``,
    ``step_epoch``) as the trajectory writer names it.
    """
    rng = np.random.default_rng(seed)
    sizes = sizes or {"input": 6, "hidden1": 5, "output": 3}
    steps = np.arange(n_frames) * 10
    time = steps * 0.1
    nodes: dict[str, xr.Dataset] = {
        "/": xr.Dataset(
            attrs={
                "h5md_version": [1, 1],
                "creator": "particlesim",
                "scenario_toml": '[scenario]\nname = "synthetic"\n',
                "seed": 3,
                "data_source": "idx from data_dir /tmp/x",
                "versions": '{"particlesim": "0.1.0"}',
                "plugins": "[]",
            }
        )
    }
    names = list(sizes)
    for i, (name, n) in enumerate(sizes.items()):
        if i == 0:
            nodes[f"/particles/{name}"] = group_ds(rng.normal(size=(n, dim)))
            continue
        pos = rng.normal(size=(n_frames, n, dim)).cumsum(0)
        shape = (n_frames, n, channels) if channels > 1 and i == len(sizes) - 1 else (n_frames, n)
        ds = group_ds(pos, rng.normal(size=shape), steps=steps)
        if ids:
            order = np.stack([rng.permutation(n) for _ in range(n_frames)])
            ds["id"] = (("time", "particle"), order.astype(np.int64))
        nodes[f"/particles/{name}"] = ds
    clock = "epoch" if epoch_clock else "1"
    nodes["/observables"] = xr.Dataset(
        {
            "loss": ("time", np.linspace(2.0, 0.5, n_frames), {"unit": "nat"}),
            "test_accuracy": (f"time_{clock}", np.linspace(0.3, 0.9, len(steps[::2]))),
        },
        coords={
            "time": time,
            "step": ("time", steps),
            f"time_{clock}": time[::2],
            f"step_{clock}": (f"time_{clock}", steps[::2]),
        },
    )
    if connectivity:
        for s, t in itertools.pairwise(names):
            nodes[f"/connectivity/{s}_to_{t}"] = xr.Dataset(
                {
                    "weight": (
                        ("time", "target", "source"),
                        rng.normal(size=(n_frames, sizes[t], sizes[s])),
                    )
                },
                coords={"time": time, "step": ("time", steps)},
                attrs={"source": s, "target": t},
            )
    return xr.DataTree.from_dict(nodes)


def write_h5md(path: Path, tree: xr.DataTree) -> Path:
    """Write ``tree`` as an H5MD 1.1 file in the layout of DESIGN.md (a reader test fixture)."""
    import h5py

    def series(parent: h5py.Group, name: str, da: xr.DataArray) -> None:
        if "time" not in da.dims:  # a time-independent element is a plain dataset
            parent.create_dataset(name, data=da.values)
            return
        element = parent.create_group(name)
        element.create_dataset("step", data=da["step"].values)
        element.create_dataset("time", data=da["time"].values)
        element.create_dataset("value", data=da.transpose("time", ...).values)

    with h5py.File(path, "w") as f:
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1])
        h5md.create_group("author").attrs["name"] = "test"
        creator = h5md.create_group("creator")
        creator.attrs["name"] = "particlesim"
        creator.attrs["version"] = "0.1.0"
        params = f.create_group("parameters")
        for key in ("scenario_toml", "seed", "data_source", "versions", "plugins"):
            params.attrs[key] = tree.attrs[key]
        for name, node in tree["particles"].children.items():
            ds = node.to_dataset()
            g = f.create_group(f"particles/{name}")
            box = g.create_group("box")
            box.attrs["dimension"] = ds.sizes["spatial"]
            box.attrs["boundary"] = ["none"] * ds.sizes["spatial"]
            for var in ds.data_vars:
                series(g, str(var), ds[var])
        obs = tree["observables"].to_dataset()
        for var in obs.data_vars:
            da = obs[var]
            dim = da.dims[0]
            suffix = str(dim).removeprefix("time")
            da = da.rename({dim: "time", f"step{suffix}": "step"}) if suffix else da
            series(f.require_group("observables"), str(var), da)
        for name, node in tree["connectivity"].children.items():
            ds = node.to_dataset()
            g = f.create_group(f"connectivity/{name}")
            g.attrs["source"], g.attrs["target"] = ds.attrs["source"], ds.attrs["target"]
            series(g, "weight", ds["weight"])
    return path


#: The trajectory writer's table that the real-run fixtures append to the tiny scenario.
TRAJECTORY_WRITER = '\n[[writers]]\nname = "trajectory"\nevery = 3\nconnectivity_every = "epoch"\n'


def run_tiny(folder: Path, scenario_text: str, *overrides: str) -> Path:
    """Run ``scenario_text`` (+ a trajectory writer) in ``folder``; the trajectory's path.

    ``overrides`` are ``--set`` values (``"model.dim=3"``). The tiny scenario's run has
    12 steps, frames every 3 steps (5 frames) and weights at the end of each epoch.
    """
    from typer.testing import CliRunner

    from particlesim.cli.app import app

    folder.mkdir(parents=True, exist_ok=True)
    scenario = folder / "scenario.toml"
    scenario.write_text(scenario_text + TRAJECTORY_WRITER, encoding="utf-8")
    args = ["run", str(scenario), "--out", str(folder / "run")]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder / "run" / "trajectory.h5"
