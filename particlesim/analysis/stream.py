"""Reading a trajectory's values a slice of frames at a time, so that memory stays bounded.

A trajectory's variables are lazy (:func:`particlesim.io.trajectory.open_trajectory`):
asking xarray for ``position.mean("particle")`` would load all ``[T, N, D]``
values at once, gigabytes for a long run. The measures, plots and animations
read them through these helpers instead, at most :func:`slice_bytes` of values
at a time (``PARTICLESIM_SLICE_BYTES``, default 64 MiB, counted as float64),
and never less than one frame. A computation over a slice makes a few
temporaries of the slice's size, so the values take at most a few times the
budget, whatever the number of frames; what stays is the result (per frame:
a few numbers) and the ``time``/``step`` coordinates (16 bytes a frame).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import xarray as xr

#: Environment variable: bytes of values read at once (counted as float64).
SLICE_ENV = "PARTICLESIM_SLICE_BYTES"
#: Default of :func:`slice_bytes`: 64 MiB.
DEFAULT_SLICE_BYTES = 64 << 20


def slice_bytes() -> int:
    """Bytes of values (as float64) one slice may hold: ``PARTICLESIM_SLICE_BYTES`` or 64 MiB."""
    text = os.environ.get(SLICE_ENV)
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            pass
    return DEFAULT_SLICE_BYTES


def frame_bytes(da: xr.DataArray, dim: str = "time") -> int:
    """Bytes of one frame of ``da`` along ``dim``, as float64 (at least its own itemsize)."""
    itemsize = max(8, da.dtype.itemsize)
    return itemsize * math.prod(int(n) for d, n in da.sizes.items() if d != dim)


def frames_per_slice(*arrays: xr.DataArray, dim: str = "time", budget: int | None = None) -> int:
    """Frames of ``arrays`` (read together) that fit in ``budget`` bytes; at least 1."""
    per_frame = sum(frame_bytes(a, dim) for a in arrays if dim in a.dims)
    budget = slice_bytes() if budget is None else budget
    return max(1, budget // max(1, per_frame))


def slices(n_frames: int, per: int) -> Iterator[slice]:
    """``slice(0, per), slice(per, 2 per), …`` covering ``n_frames`` (one empty slice for 0)."""
    if n_frames == 0:
        yield slice(0, 0)
        return
    for start in range(0, n_frames, per):
        yield slice(start, min(start + per, n_frames))


def blockwise(
    da: xr.DataArray,
    func: Callable[[xr.DataArray], xr.DataArray],
    *,
    dim: str = "time",
    budget: int | None = None,
) -> xr.DataArray:
    """``func`` applied to ``da`` a slice of frames at a time, the results joined along ``dim``.

    ``func`` must treat frames independently (a mean over particles, a histogram
    of each frame) and keep ``dim``; each slice is loaded before ``func`` sees it.
    Without ``dim``, ``func`` gets all of ``da`` (a frozen field: one frame).
    """
    if dim not in da.dims:
        return func(da.load())
    per = frames_per_slice(da, dim=dim, budget=budget)
    parts = [func(da.isel({dim: s}).load()) for s in slices(da.sizes[dim], per)]
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim=dim, coords="minimal", compat="override", join="override")


def read_rows(
    da: xr.DataArray,
    rows: Sequence[int] | np.ndarray,
    order: Sequence[str],
    *,
    dim: str = "time",
    budget: int | None = None,
) -> Iterator[np.ndarray]:
    """The frames ``rows`` of ``da`` (indices along ``dim``), one numpy array ``[*order]`` each.

    Reads a slice of rows at a time (only the rows asked for, never the span
    between them); without ``dim`` every row is all of ``da``, read once.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if dim not in da.dims:
        whole = np.asarray(da.transpose(*order).values)
        for _ in rows:
            yield whole
        return
    per = frames_per_slice(da, dim=dim, budget=budget)
    for part in slices(len(rows), per):
        wanted = rows[part]
        if not len(wanted):
            continue
        unique, inverse = np.unique(wanted, return_inverse=True)
        if len(unique) == unique[-1] - unique[0] + 1:  # a run of rows: one slice
            key: slice | np.ndarray = slice(int(unique[0]), int(unique[-1]) + 1)
        else:
            key = unique
        block = np.asarray(da.isel({dim: key}).transpose(dim, *order).values)
        for i in inverse:
            yield block[i]
