"""xarray backend ``engine="particlesim"``: a thin adapter over :mod:`particlesim.io.trajectory`.

    xr.open_dataset("run/trajectory.h5", engine="particlesim", group="hidden1")
    xr.open_dataset("run/trajectory.h5", engine="particlesim", group="observables")
    xr.open_datatree("run/trajectory.h5", engine="particlesim")

``group`` is a particle group's name (``"hidden1"``) or a node path
(``"particles/hidden1"``, ``"observables"``, ``"connectivity/input_to_hidden1"``);
without it, a file with a single particle group opens that group. Registered
in ``pyproject.toml`` under ``[project.entry-points."xarray.backends"]``.
``guess_can_open`` claims only ``.h5``/``.h5md``/``.hdf5`` files whose
``/h5md/creator`` is particlesim; pass ``engine="particlesim"`` anyway.

The reader's checks apply (an inconsistent file is a ``TrajectoryError``
naming the dataset; what is left out a ``TrajectoryWarning`` naming the HDF5
path). Opening holds the coordinates (16 bytes a frame); each selection then
reads just its rows, and ``chunks={}`` streams through dask in the file's
chunks (``preferred_chunks``), so ``ds.position.mean()`` holds a chunk at a time.

This module never imports torch (xarray imports every backend when it lists engines).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar

import h5py
import xarray as xr
from xarray.backends import BackendEntrypoint

from particlesim.errors import TrajectoryError
from particlesim.io.trajectory import check_file, drop, open_group, open_trajectory

SUFFIXES = (".h5", ".h5md", ".hdf5")


def _path(filename_or_obj: Any) -> str:
    try:
        return os.fspath(filename_or_obj)
    except TypeError:
        raise TrajectoryError(
            f"the particlesim engine opens trajectory files by path, got {type(filename_or_obj)}"
        ) from None


class ParticlesimBackendEntrypoint(BackendEntrypoint):
    """Open particlesim's H5MD trajectories with :func:`xarray.open_dataset` / ``open_datatree``."""

    description: ClassVar[str] = "particlesim H5MD trajectories (particle groups, observables)"
    url: ClassVar[str] = "https://www.nongnu.org/h5md/h5md.html"
    open_dataset_parameters: ClassVar[tuple[str, ...]] = (
        "filename_or_obj",
        "drop_variables",
        "group",
    )
    supports_groups: ClassVar[bool] = True

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
    ) -> xr.Dataset:
        """One node of the trajectory as a lazy Dataset (see :func:`open_group`)."""
        path = _path(filename_or_obj)
        if group is None:
            tree = open_trajectory(path)
            names = list(tree["particles"].children) if "particles" in tree.children else []
            if len(names) != 1:
                listing = ", ".join(names) or "none"
                raise TrajectoryError(
                    f"{path}: holds {len(names)} particle groups ({listing}); pass group=<name> "
                    "(a particle group, 'observables' or 'connectivity/<name>')"
                )
            return drop(tree[f"particles/{names[0]}"].to_dataset(), drop_variables)
        return drop(open_group(path, group), drop_variables)

    def open_datatree(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
    ) -> xr.DataTree:
        """The whole file (or the subtree at ``group``) as a lazy DataTree."""
        groups = self.open_groups_as_dict(
            filename_or_obj, drop_variables=drop_variables, group=group
        )
        return xr.DataTree.from_dict(groups)

    def open_groups_as_dict(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
    ) -> dict[str, xr.Dataset]:
        """``{node path: Dataset}`` of every node (under ``group`` when given)."""
        tree = open_trajectory(_path(filename_or_obj))
        if group:
            key = group.strip("/")
            if key in tree.get("particles", xr.DataTree()).children:
                key = f"particles/{key}"
            try:
                tree = tree[key]
            except KeyError:
                raise TrajectoryError(
                    f"{_path(filename_or_obj)}: no group {group!r}; groups: "
                    + ", ".join(node.path for node in tree.subtree if node is not tree)
                ) from None
        return {
            "/" + node.relative_to(tree).removeprefix("."): drop(node.to_dataset(), drop_variables)
            for node in tree.subtree
        }

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True only for ``.h5``/``.h5md``/``.hdf5`` files whose H5MD creator is particlesim."""
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        if not isinstance(path, str) or not path.lower().endswith(SUFFIXES):
            return False
        try:
            check_file(path)
            with h5py.File(path, "r", swmr=True) as file:
                creator = file.get("h5md/creator")
                name = creator.attrs.get("name") if isinstance(creator, h5py.Group) else None
        except (OSError, TrajectoryError, RuntimeError, ValueError):
            return False
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        return name == "particlesim"
