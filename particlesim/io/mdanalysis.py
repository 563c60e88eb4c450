"""Export particle groups of a trajectory to MDAnalysis, so its analyses run on neurons.

:func:`to_universe` gives an :class:`MDAnalysis.Universe` (the optional extra
``pip install 'particlesim[mdanalysis]'``) whose atoms are the particles of one group (or of
several groups recorded at the same steps), with its trajectory in memory:

==================  ==============================================================
MDAnalysis          particlesim
==================  ==============================================================
atom                one particle; atoms in group order, then particle order
``name``, ``type``  the group's name (``u.select_atoms("name hidden1")``)
``resname``,        the group's name: one residue and one segment per group
``segid``
``id``              the particle's index in its group (its H5MD row)
``charge``          its charge at ``charge_frame`` (default the last frame; the first
                    channel of a multi-channel charge; 0 for a group without charges)
``mass``            1 (so a centre of mass is the centroid)
positions           the particle's position: D = 3 as is; D < 3 padded with zeros to
                    3-D; D > 3 refused unless ``reduce`` says how to project it
frame ``i``         the ``i``-th recorded frame; ``ts.time`` is its H5MD time and
                    ``ts.data["step"]`` its step (frames need not be evenly spaced)
``dt``              the time between the first two frames
box                 none (``dimensions`` is ``None``): positions are not periodic
==================  ==============================================================

**Units.** particlesim's lengths and times have no physical unit. MDAnalysis reads lengths
in Å and times in ps; one particlesim length is written as 1 Å and one unit of H5MD time as
1 ps, with no conversion, so an RMSD of 0.5 means half a particlesim length.

**D > 3.** MDAnalysis positions are 3-D. ``reduce="pca"`` projects each group on its first
three principal axes, fitted over the run's frames (as the figures do, so frames stay
comparable; distances shrink to those within the 3-D subspace); ``reduce="first"`` keeps
x0, x1, x2. Without ``reduce`` a group with D > 3 is refused with a message saying so.

MDAnalysis's own H5MD reader (2.11) opens particlesim files only with
``convert_units=False`` (they carry no ``unit`` attributes) and sees the first particle
group only, without charges; this export gives any group with its charges.

The positions are loaded into memory (frames × particles × 3 float32); ``frames`` picks
fewer frames for a long run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from particlesim.errors import ParticlesimError

if TYPE_CHECKING:
    import MDAnalysis

Reduce = Literal["pca", "first"]
REDUCTIONS = ("pca", "first")


class ExportError(ParticlesimError):
    """A trajectory cannot be exported as asked (missing package, group, positions, D > 3)."""


def _mdanalysis() -> Any:
    try:
        import MDAnalysis
    except ImportError:
        raise ExportError(
            "exporting to MDAnalysis needs the MDAnalysis package: "
            "pip install 'particlesim[mdanalysis]'"
        ) from None
    return MDAnalysis


@functools.cache
def _reader_class() -> type:
    """MDAnalysis's MemoryReader that also gives each frame its recorded time and step."""
    from MDAnalysis.coordinates.memory import MemoryReader

    class SteppedMemoryReader(MemoryReader):
        """MemoryReader whose frames carry the trajectory's own ``time`` and ``step``."""

        format = "PARTICLESIM_MEMORY"  # its own name: MemoryReader stays "MEMORY"

        def __init__(
            self,
            coordinate_array: np.ndarray,
            *,
            steps: Sequence[int] | None = None,
            times: Sequence[float] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(coordinate_array, steps=steps, times=times, **kwargs)
            self._steps = None if steps is None else np.asarray(steps, dtype=np.int64)
            self._times = None if times is None else np.asarray(times, dtype=np.float64)
            self._read_frame(self.ts.frame)  # the first frame, with its time and step

        def _read_next_timestep(self, ts: Any = None) -> Any:
            ts = super()._read_next_timestep(ts)
            steps, times = getattr(self, "_steps", None), getattr(self, "_times", None)
            if times is not None:
                ts.time = float(times[ts.frame])
            if steps is not None:
                ts.data["step"] = int(steps[ts.frame])
            return ts

    # found again by pickle (multiprocessing analyses) through the module's __getattr__
    SteppedMemoryReader.__module__ = __name__
    SteppedMemoryReader.__qualname__ = "SteppedMemoryReader"
    return SteppedMemoryReader


def __getattr__(name: str) -> Any:
    if name == "SteppedMemoryReader":  # defined on first use: MDAnalysis is optional
        _mdanalysis()
        return _reader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open(trajectory: str | os.PathLike[str] | xr.DataTree) -> xr.DataTree:
    if isinstance(trajectory, xr.DataTree):
        return trajectory
    from particlesim.io.trajectory import open_trajectory

    return open_trajectory(trajectory)


def to_universe(
    trajectory: str | os.PathLike[str] | xr.DataTree,
    groups: str | Sequence[str],
    *,
    reduce: Reduce | None = None,
    frames: Sequence[int] | slice | None = None,
    charge_frame: int = -1,
) -> MDAnalysis.Universe:
    """An MDAnalysis Universe of one or more particle groups (see the module for the mapping).

    Args:
        trajectory: a trajectory file (H5MD) or the tree :func:`open_trajectory` gave.
        groups: the group, or groups recorded at the same steps, whose particles are atoms.
        reduce: how a group with D > 3 becomes 3-D: ``"pca"`` (its first three principal
            axes over the run) or ``"first"`` (x0, x1, x2); ``None`` refuses it.
        frames: the frames to load (indices or a slice of the recorded frames); default all.
        charge_frame: the frame whose charges become the atoms' charges (-1: the last).

    Example:
        >>> from particlesim.io import to_universe  # doctest: +SKIP
        >>> from MDAnalysis.analysis.rms import RMSF  # doctest: +SKIP
        >>> u = to_universe("runs/tiny/trajectory.h5", "hidden1")  # doctest: +SKIP
        >>> RMSF(u.atoms).run().results.rmsf  # doctest: +SKIP
    """
    from particlesim.analysis.scene import GroupScene, spread_frames
    from particlesim.analysis.stream import read_rows
    from particlesim.analysis.tree import AnalysisError, group_names

    mda = _mdanalysis()
    if reduce is not None and reduce not in REDUCTIONS:
        raise ExportError(f"unknown reduce {reduce!r}; use one of: {', '.join(REDUCTIONS)}")
    tree = _open(trajectory)
    names = [groups] if isinstance(groups, str) else list(groups)
    if not names:
        raise ExportError("no group to export; name one of: " + ", ".join(group_names(tree)))
    from particlesim.analysis.tree import group as read_group

    try:
        datasets = {name: read_group(tree, name) for name in names}
    except AnalysisError as exc:
        raise ExportError(str(exc)) from None
    for name, ds in datasets.items():
        if "position" not in ds.data_vars:
            held = ", ".join(map(str, ds.data_vars)) or "nothing"
            raise ExportError(f"group {name!r} records no positions (it holds {held})")
        dim = int(ds.sizes.get("spatial", 1))
        if dim > 3 and reduce is None:
            raise ExportError(
                f"group {name!r} lives in D = {dim}, but MDAnalysis positions are 3-D; pass "
                "reduce='pca' (its first three principal axes over the run) or reduce='first' "
                "(x0, x1, x2)"
            )
    moving = {n: ds for n, ds in datasets.items() if "time" in ds["position"].dims}
    axis = next(iter(moving.values())) if moving else None
    for name, ds in moving.items():
        assert axis is not None
        if not np.array_equal(ds["step"].values, axis["step"].values):
            first = next(iter(moving))
            raise ExportError(
                f"groups {first!r} and {name!r} were recorded at different steps; "
                "export them one at a time"
            )
    total = 1 if axis is None else int(axis.sizes["time"])
    if total == 0:
        raise ExportError(f"group {names[0]!r} has no recorded frame")
    rows = np.arange(total)
    if frames is not None:
        try:
            rows = rows[frames] if isinstance(frames, slice) else rows[np.asarray(frames, int)]
        except IndexError:
            raise ExportError(f"frames out of range: the trajectory has {total} frames") from None
        rows = np.atleast_1d(rows)
        if not len(rows):
            raise ExportError("no frames selected")
    if not -total <= charge_frame < total:
        raise ExportError(
            f"charge_frame {charge_frame} out of range: the trajectory has {total} frames"
        )

    charge_step = (
        int(axis["step"].values[charge_frame])
        if axis is not None and "step" in axis.coords
        else None
    )
    blocks: list[np.ndarray] = []
    charges: list[np.ndarray] = []
    for name, ds in datasets.items():
        n = int(ds.sizes.get("particle", 0))
        dim = int(ds.sizes.get("spatial", 1))
        scene = GroupScene(name, ds, "pca" if dim >= 2 else "1d")
        if dim > 3 and reduce == "pca":
            scene.fit(np.asarray(spread_frames(total, 512)), None)
        coords = np.zeros((len(rows), n, 3), dtype=np.float32)
        wanted = rows if name in moving else np.zeros(len(rows), dtype=np.int64)
        for i, points in enumerate(read_rows(ds["position"], wanted, ("particle", "spatial"))):
            points = np.asarray(points, dtype=np.float64)
            if dim > 3 and reduce == "pca":
                points = (points - scene.mean) @ scene.basis[:, :3]
            coords[i, :, : min(dim, 3)] = points[:, :3]
        blocks.append(coords)
        charges.append(_charges(ds, n, charge_step, charge_frame))

    steps = (
        np.asarray(axis["step"].values, dtype=np.int64)[rows]
        if axis is not None and "step" in axis.coords
        else rows.astype(np.int64)
    )
    times = (
        np.asarray(axis["time"].values, dtype=np.float64)[rows]
        if axis is not None
        else np.zeros(len(rows))
    )
    sizes = [b.shape[1] for b in blocks]
    n_atoms = sum(sizes)
    universe = mda.Universe.empty(
        n_atoms,
        n_residues=len(names),
        n_segments=len(names),
        atom_resindex=np.repeat(np.arange(len(names)), sizes),
        residue_segindex=np.arange(len(names)),
        trajectory=False,
    )
    labels = np.repeat(np.asarray(names, dtype=object), sizes)
    universe.add_TopologyAttr("names", labels)
    universe.add_TopologyAttr("types", labels)
    universe.add_TopologyAttr("ids", np.concatenate([np.arange(s) for s in sizes]))
    universe.add_TopologyAttr("charges", np.concatenate(charges) if charges else np.zeros(0))
    universe.add_TopologyAttr("masses", np.ones(n_atoms))
    universe.add_TopologyAttr("resnames", names)
    universe.add_TopologyAttr("resids", np.arange(1, len(names) + 1))
    universe.add_TopologyAttr("segids", names)
    dt = float(times[1] - times[0]) if len(times) > 1 else 1.0
    universe.load_new(
        np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0, 3), np.float32),
        format=_reader_class(),
        order="fac",
        dt=dt,
        steps=steps,
        times=times,
    )
    return universe


def _charges(ds: xr.Dataset, n: int, step: int | None, frame: int) -> np.ndarray:
    """Charges ``[N]`` of a group at ``step`` (its nearest record; else row ``frame``).

    The first channel of a multi-channel charge; zeros for a group without charges.
    """
    if "charge" not in ds.data_vars:
        return np.zeros(n)
    q = ds["charge"]
    if "channel" in q.dims:
        q = q.isel(channel=0)
    if "time" in q.dims and q.sizes["time"]:
        if step is not None and "step" in q.coords:
            row = int(np.abs(np.asarray(q["step"].values) - step).argmin())
        else:
            row = min(frame % q.sizes["time"], q.sizes["time"] - 1)
        q = q.isel(time=row)
    return np.asarray(q.transpose("particle").values, dtype=np.float64)


__all__ = ["REDUCTIONS", "ExportError", "to_universe"]
