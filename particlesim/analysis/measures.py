"""Structural measures of particle groups and interactions, on xarray objects.

Every function takes the Datasets (or DataArrays) of a trajectory tree and
returns a DataArray with named dims. Positions are in the model's length unit
(dimensionless); distances are Euclidean in R^D. A frozen field (no ``time``
dim) gives a result without ``time``; where several inputs carry ``time``
they are inner-joined on their ``step`` coordinate, so weights recorded
every epoch meet the positions recorded at the same steps. A field on a
secondary clock (``time_<k>``, ``step_<k>``) is read as if on ``time``.

**Bounded memory.** Values are read a slice of frames at a time
(:mod:`particlesim.analysis.stream`: at most ``PARTICLESIM_SLICE_BYTES``,
default 64 MiB as float64, and at least one frame), so a measure over a
trajectory of any length holds a few slices, the ``time``/``step``
coordinates and its result, never the whole ``[T, N, D]`` history.

No torch here: this module reads files written by any version of the engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from particlesim.analysis.stream import blockwise, frames_per_slice, slices
from particlesim.analysis.tree import AnalysisError

#: What the measures take: a trajectory tree's Dataset or one of its DataArrays, or, for
#: positions and weights, a plain array (dims by :data:`NUMPY_DIMS`).
ArrayLike = xr.Dataset | xr.DataArray | np.ndarray

#: Dims given to a plain array by field and number of axes: one frame, or frames first.
NUMPY_DIMS: dict[str, dict[int, tuple[str, ...]]] = {
    "position": {2: ("particle", "spatial"), 3: ("time", "particle", "spatial")},
    "weight": {2: ("target", "source"), 3: ("time", "target", "source")},
}

# rows of a distance matrix computed at once: bounds memory to ~CHUNK * M floats
_CHUNK_ELEMENTS = 2_000_000


def _field(obj: ArrayLike, name: str) -> xr.DataArray:
    """Variable ``name`` of a Dataset (or the DataArray itself), its clock called ``time``;
    a plain array of positions or weights gets its dims from :data:`NUMPY_DIMS`."""
    if not isinstance(obj, xr.Dataset | xr.DataArray):
        if not hasattr(obj, "__array__") and not isinstance(obj, list | tuple):
            raise AnalysisError(
                f"{name}: expected an xarray Dataset or DataArray, got {type(obj).__name__}"
            )
        array = np.asarray(obj)
        dims = NUMPY_DIMS.get(name, {}).get(array.ndim)
        if dims is None:
            known = NUMPY_DIMS.get(name)
            want = (
                " or ".join(f"[{', '.join(d)}]" for d in known.values())
                if known
                else "an xarray Dataset or DataArray (a plain array: positions or weights only)"
            )
            raise AnalysisError(f"{name}: expected {want}, got an array of shape {array.shape}")
        return xr.DataArray(array, dims=dims)
    if isinstance(obj, xr.Dataset):
        if name not in obj.data_vars:
            have = ", ".join(map(str, obj.data_vars)) or "none"
            raise AnalysisError(f"no {name!r} variable here (variables: {have})")
        obj = obj[name]
    return _on_time(obj)


def _on_time(da: xr.DataArray) -> xr.DataArray:
    """Rename a secondary clock ``time_<k>`` (with ``step_<k>``) to ``time`` (and ``step``)."""
    if "time" in da.dims:
        return da
    for dim in map(str, da.dims):
        if dim.startswith("time_"):
            step = "step" + dim.removeprefix("time")
            renames = {dim: "time", **({step: "step"} if step in da.coords else {})}
            return da.drop_vars([c for c in ("time", "step") if c in da.coords]).rename(renames)
    return da


def _positions(obj: ArrayLike) -> xr.DataArray:
    pos = _field(obj, "position")
    missing = {"particle", "spatial"} - set(map(str, pos.dims))
    if missing:
        raise AnalysisError(f"positions need dims (time, particle, spatial), got {tuple(pos.dims)}")
    return pos


def _time_coords(da: xr.DataArray) -> dict[str, xr.DataArray]:
    """Coordinates that live on ``time`` alone (``time`` itself, ``step``)."""
    return {str(k): v for k, v in da.coords.items() if v.dims == ("time",)}


@dataclass
class _Frames:
    """Arrays aligned on ``time``, read a slice of frames at a time as numpy ``[t, *core]``.

    Arrays without ``time`` (frozen fields) are read once and repeated (broadcast
    views) over the frames of the others; dtypes are kept (callers cast one frame
    at a time). ``coords`` are the output's time coords (``time``, ``step``), or
    ``None`` when no array has ``time`` (then there is one frame).
    """

    arrays: list[xr.DataArray]
    core: Sequence[Sequence[str]]
    n_frames: int
    coords: dict[str, xr.DataArray] | None

    def blocks(self) -> Iterator[list[np.ndarray]]:
        """Stacks ``[t, *core]`` of the arrays for consecutive slices of frames."""
        frozen = {
            i: np.asarray(a.transpose(*dims).values)
            for i, (a, dims) in enumerate(zip(self.arrays, self.core, strict=True))
            if "time" not in a.dims
        }
        per = frames_per_slice(*self.arrays)
        for part in slices(self.n_frames, per):
            count = part.stop - part.start
            stacks = []
            for i, (a, dims) in enumerate(zip(self.arrays, self.core, strict=True)):
                if i in frozen:
                    stacks.append(np.broadcast_to(frozen[i], (count, *frozen[i].shape)))
                else:
                    stacks.append(np.asarray(a.isel(time=part).transpose("time", *dims).values))
            yield stacks

    def each(self) -> Iterator[list[np.ndarray]]:
        """One frame at a time: the arrays' values ``[*core]`` at that frame."""
        for stacks in self.blocks():
            for t in range(stacks[0].shape[0]):
                yield [stack[t] for stack in stacks]


def _frames(*arrays: xr.DataArray, core: Sequence[Sequence[str]]) -> _Frames:
    """The arrays inner-joined on ``step`` (else ``time``), to be read by :class:`_Frames`.

    Nothing is read here but the coordinates; the join selects the common frames
    lazily (a trajectory's variables then read only those rows).
    """
    timed = [i for i, a in enumerate(arrays) if "time" in a.dims]
    arrays = list(arrays)
    if len(timed) > 1:
        # Match frames by their integer step when every array has one (float times
        # from different clocks need not agree to the last bit), else by time.
        key = "step" if all("step" in arrays[i].coords for i in timed) else "time"
        others = {str(d) for i in timed for d in arrays[i].dims} - {"time"}
        keyed = [arrays[i] if key == "time" else arrays[i].swap_dims(time="step") for i in timed]
        aligned = xr.align(*keyed, join="inner", exclude=others)
        if aligned[0].sizes[key] == 0 and all(arrays[i].sizes["time"] for i in timed):
            names = ", ".join(str(arrays[i].name) for i in timed)
            raise AnalysisError(
                f"{names} were never recorded at the same {key}; record them at common "
                "steps (e.g. a trajectory writer's connectivity_every a multiple of every)"
            )
        for i, a in zip(timed, aligned, strict=True):
            arrays[i] = a if key == "time" else a.swap_dims(step="time")
    coords = _time_coords(arrays[timed[0]]) if timed else None
    n_frames = arrays[timed[0]].sizes["time"] if timed else 1
    return _Frames(arrays, core, n_frames, coords)


def _result(
    values: np.ndarray,
    coords: dict[str, xr.DataArray] | None,
    dims: Sequence[str],
    extra: dict[str, np.ndarray] | None = None,
    attrs: dict[str, str] | None = None,
) -> xr.DataArray:
    """Wrap ``[T, *dims]`` values; drop the leading frame axis when nothing had ``time``."""
    all_coords: dict[str, object] = dict(extra or {})
    if coords is None:
        values = values[0]
        out_dims = tuple(dims)
    else:
        all_coords.update(coords)
        out_dims = ("time", *dims)
    return xr.DataArray(values, dims=out_dims, coords=all_coords, attrs=attrs or {})


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[N, M]`` between rows of ``a [N, D]`` and ``b [M, D]``, chunked."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0] * a.shape[1]))
    for start in range(0, a.shape[0], rows):
        diff = a[start : start + rows, None, :] - b[None, :, :]
        out[start : start + rows] = np.sqrt(np.einsum("nmd,nmd->nm", diff, diff))
    return out


# --- single-group measures ---------------------------------------------------------------


def centroid(ds: ArrayLike) -> xr.DataArray:
    """Centre of a group: ``c(t) = 1/N Σ_i r_i(t)``.

    Args:
        ds: a group Dataset (its ``position``) or the position DataArray
            ``(time, particle, spatial)``.

    Returns:
        ``(time, spatial)`` (``(spatial)`` for frozen positions), in length units.
    """
    out = blockwise(_positions(ds), lambda pos: pos.mean("particle"))
    out.attrs = {"long_name": "centroid of positions"}
    return out.rename("centroid")


def radius_of_gyration(ds: ArrayLike) -> xr.DataArray:
    """Spread of a group: ``R_g(t) = sqrt(1/N Σ_i |r_i(t) - c(t)|²)``.

    Points spread evenly on a sphere of radius R have ``R_g = R``.

    Returns:
        ``(time)`` (a scalar for frozen positions), in length units.
    """

    def spread(pos: xr.DataArray) -> xr.DataArray:
        sq = ((pos - pos.mean("particle")) ** 2).sum("spatial")
        return np.sqrt(sq.mean("particle"))

    out = blockwise(_positions(ds), spread)
    out.attrs = {"long_name": "radius of gyration"}
    return out.rename("radius_of_gyration")


def mean_squared_displacement(
    ds: ArrayLike, *, reference: int = 0, lag: bool = False, max_lag: int | None = None
) -> xr.DataArray:
    """Mean squared displacement of a group's particles.

    With ``lag=False``: ``MSD(t) = 1/N Σ_i |r_i(t) - r_i(t_ref)|²`` relative to
    frame ``reference`` (an index into ``time``, negative counts from the end).
    A group translated uniformly by ``v`` per unit time has ``MSD = (v t)²``.

    With ``lag=True``: the time-origin average
    ``MSD(τ) = 1/(T-τ) Σ_{t0} 1/N Σ_i |r_i(t0+τ) - r_i(t0)|²`` over frame lags
    ``τ = 0 … max_lag`` (default ``T - 1``), dims ``(lag)`` with coord ``lag``
    (frames) and, when frames are evenly spaced, ``lag_time`` and ``lag_step``.

    Frozen positions give 0. Units: length².
    """
    pos = _positions(ds)
    if "time" not in pos.dims:
        out = xr.DataArray(0.0, attrs={"long_name": "mean squared displacement (frozen)"})
        return out.rename("msd")
    n_frames = pos.sizes["time"]
    if not lag:
        if not -n_frames <= reference < n_frames:
            raise AnalysisError(f"reference frame {reference} out of range for {n_frames} frames")
        origin = pos.isel(time=reference, drop=True).load()
        out = blockwise(pos, lambda block: ((block - origin) ** 2).sum("spatial").mean("particle"))
        out.attrs = {"long_name": "mean squared displacement", "reference_frame": reference}
        return out.rename("msd")
    top = n_frames - 1 if max_lag is None else min(int(max_lag), n_frames - 1)
    if top < 0:
        raise AnalysisError(f"max_lag must be >= 0, got {max_lag}")
    msd = _lag_sums(pos.transpose("time", "particle", "spatial"), top)
    msd /= (n_frames - np.arange(top + 1)) * pos.sizes["particle"]
    coords: dict[str, object] = {"lag": np.arange(top + 1)}
    times = np.asarray(pos["time"].values, dtype=np.float64)
    if n_frames > 1 and np.allclose(np.diff(times), times[1] - times[0]):
        coords["lag_time"] = ("lag", np.arange(top + 1) * (times[1] - times[0]))
        if "step" in pos.coords:
            steps = np.asarray(pos["step"].values)
            coords["lag_step"] = ("lag", np.arange(top + 1) * (steps[1] - steps[0]))
    return xr.DataArray(
        msd,
        dims=("lag",),
        coords=coords,
        name="msd",
        attrs={"long_name": "time-origin averaged mean squared displacement"},
    )


def _lag_sums(pos: xr.DataArray, top: int) -> np.ndarray:
    """``Σ_{t0} Σ_i |r_i(t0+τ) - r_i(t0)|²`` for ``τ = 0 … top``, two slices in memory at a time.

    Frames are read in slices of half the budget; each pair of slices ``A ≤ B``
    adds the lags from a frame of A to a later frame of B (every pair of frames
    once), so the whole history is never in memory; with one slice it reads once.
    """
    n_frames = pos.sizes["time"]
    per = max(1, frames_per_slice(pos) // 2)
    parts = list(slices(n_frames, per))
    sums = np.zeros(top + 1)

    def read(part: slice) -> np.ndarray:
        return np.asarray(pos.isel(time=part).values, dtype=np.float64)

    for i, first in enumerate(parts):
        a = read(first)
        for second in parts[i:]:
            if second.start - (first.stop - 1) > top:
                break
            b = a if second == first else read(second)
            lowest = max(0, second.start - first.stop + 1)
            highest = min(top, second.stop - 1 - first.start)
            for tau in range(lowest, highest + 1):
                start = max(first.start, second.start - tau)  # frames t0 of A with t0+tau in B
                stop = min(first.stop, second.stop - tau)
                d = b[start + tau - second.start : stop + tau - second.start]
                d = d - a[start - first.start : stop - first.start]
                sums[tau] += np.einsum("tnd,tnd->", d, d)
    return sums


def _pair_chunks(a: np.ndarray, b: np.ndarray | None) -> Iterator[np.ndarray]:
    """Flat distances, a few rows at a time: pairs ``i < j`` of ``a`` (``b`` None), else a × b."""
    a = np.asarray(a, dtype=np.float64)
    other = a if b is None else np.asarray(b, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, other.shape[0] * max(1, a.shape[1])))
    for start in range(0, a.shape[0], rows):
        d = _cdist(a[start : start + rows], other)
        if b is None:  # pairs i < j only
            i = np.arange(start, start + d.shape[0])[:, None]
            d = d[np.arange(other.shape[0])[None, :] > i]
        yield d.ravel()


def max_pair_distance(a: ArrayLike, b: ArrayLike | None = None) -> float:
    """Largest pairwise distance in any frame (within ``a``, or between ``a`` and ``b``).

    The default upper edge of :func:`pair_distance_histogram`; a caller
    histogramming several groups on shared bins takes the max over them.
    """
    top = 0.0
    for frame in _pair_frames(a, b).each():
        for chunk in _pair_chunks(frame[0], frame[1] if len(frame) > 1 else None):
            top = max(top, float(chunk.max(initial=0)))
    return top


def _pair_frames(a: ArrayLike, b: ArrayLike | None) -> _Frames:
    pa = _positions(a)
    if b is None:
        return _frames(pa, core=[("particle", "spatial")])
    pb = _positions(b).rename(particle="particle_b")
    return _frames(pa, pb, core=[("particle", "spatial"), ("particle_b", "spatial")])


def charge_range(ds: ArrayLike) -> tuple[float, float]:
    """Smallest and largest finite charge in any frame and channel (``(0, 1)`` if none)."""
    q = _field(ds, "charge")
    lo, hi = np.inf, -np.inf
    for (block,) in _frames(q, core=[[d for d in q.dims if d != "time"]]).blocks():
        values = np.asarray(block, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if hi >= lo else (0.0, 1.0)


def pair_distance_histogram(
    a: ArrayLike,
    b: ArrayLike | None = None,
    *,
    bins: int = 50,
    range: tuple[float, float] | None = None,
    density: bool = False,
) -> xr.DataArray:
    """Histogram of pairwise distances, per frame (the unnormalised g(r)).

    Within one group (``b`` None) it counts the ``N(N-1)/2`` pairs ``i < j``
    (no self pairs); between two groups all ``N·M`` pairs. The bin edges are
    shared by every frame: ``range`` (default ``(0, largest distance in any
    frame)``) cut into ``bins`` equal bins.

    Args:
        density: ``False`` gives counts; ``True`` the probability density
            ``count / (n_pairs · bin_width)``, which integrates to 1 over ``range``.

    Returns:
        ``(time, distance)`` with ``distance`` the bin centres (length units)
        and attrs ``bin_width`` and ``n_pairs``.
    """
    if bins < 1:
        raise AnalysisError(f"bins must be a positive integer, got {bins}")
    frames = _pair_frames(a, b)
    if range is None:
        top = max_pair_distance(a, b)
        range = (0.0, top if top > 0 else 1.0)
    lo, hi = float(range[0]), float(range[1])
    if not hi > lo:
        raise AnalysisError(f"range must be (low, high) with high > low, got {range}")
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros((frames.n_frames, bins), dtype=np.int64)
    sizes = [frames.arrays[0].sizes["particle"]]
    if b is not None:
        sizes.append(frames.arrays[1].sizes["particle_b"])
    for t, frame in enumerate(frames.each()):
        for chunk in _pair_chunks(frame[0], frame[1] if b is not None else None):
            counts[t] += np.histogram(chunk, bins=edges)[0]
    coords = frames.coords
    n_pairs = sizes[0] * (sizes[0] - 1) // 2 if b is None else sizes[0] * sizes[1]
    width = edges[1] - edges[0]
    values = counts / (n_pairs * width) if density and n_pairs else counts.astype(np.int64)
    return _result(
        values,
        coords,
        ("distance",),
        extra={"distance": 0.5 * (edges[:-1] + edges[1:])},
        attrs={
            "long_name": "pair distance " + ("density" if density else "counts"),
            "bin_width": float(width),
            "n_pairs": int(n_pairs),
        },
    ).rename("pair_distances")


def charge_histogram(
    ds: ArrayLike,
    *,
    bins: int = 50,
    range: tuple[float, float] | None = None,
    density: bool = False,
) -> xr.DataArray:
    """Histogram of a group's charges, per frame (and per channel, when there are several).

    The bin edges are shared by all frames and channels: ``range`` (default
    the smallest to largest charge anywhere) cut into ``bins`` equal bins.

    Returns:
        ``(time, charge_bin)``, or ``(time, channel, charge_bin)`` for
        multi-charge particles; ``charge_bin`` holds the bin centres; counts
        (or a probability density with ``density=True``).
    """
    if bins < 1:
        raise AnalysisError(f"bins must be a positive integer, got {bins}")
    q = _field(ds, "charge")
    if range is None:
        lo, hi = charge_range(q)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = float(range[0]), float(range[1])
        if not hi > lo:
            raise AnalysisError(f"range must be (low, high) with high > low, got {range}")
    edges = np.linspace(lo, hi, bins + 1)
    width = edges[1] - edges[0]

    def hist(x: np.ndarray) -> np.ndarray:
        counts = np.histogram(x, bins=edges)[0]
        return counts / (x.size * width) if density else counts

    def histograms(block: xr.DataArray) -> xr.DataArray:
        return xr.apply_ufunc(
            hist,
            block,
            input_core_dims=[["particle"]],
            output_core_dims=[["charge_bin"]],
            vectorize=True,
            output_dtypes=[np.float64 if density else np.int64],
            dask_gufunc_kwargs={"output_sizes": {"charge_bin": bins}},
        )

    out = blockwise(q, histograms)
    out = out.assign_coords(charge_bin=0.5 * (edges[:-1] + edges[1:]))
    order = [d for d in ("time", "channel") if d in out.dims]
    out = out.transpose(*order, ..., "charge_bin")
    out.attrs = {
        "long_name": "charge " + ("density" if density else "counts"),
        "bin_width": float(width),
    }
    return out.rename("charge_histogram")


# --- interaction measures ----------------------------------------------------------------


def _weight_distance_frames(
    weight: ArrayLike, source_positions: ArrayLike, target_positions: ArrayLike
) -> _Frames:
    """Frames of ``w [H, J]``, source ``[J, D]`` and target ``[H, D]``, with time coords."""
    w = _field(weight, "weight")
    if {"target", "source"} - set(map(str, w.dims)):
        raise AnalysisError(f"weights need dims (time, target, source), got {tuple(w.dims)}")
    src = _positions(source_positions).rename(particle="source")
    tgt = _positions(target_positions).rename(particle="target")
    if src.sizes["source"] != w.sizes["source"] or tgt.sizes["target"] != w.sizes["target"]:
        raise AnalysisError(
            f"weight shape (target {w.sizes['target']}, source {w.sizes['source']}) does not "
            f"match the groups' particle counts ({tgt.sizes['target']}, {src.sizes['source']})"
        )
    return _frames(
        w, src, tgt, core=[("target", "source"), ("source", "spatial"), ("target", "spatial")]
    )


def connection_length(
    weight: ArrayLike, source_positions: ArrayLike, target_positions: ArrayLike
) -> xr.DataArray:
    """Weight-averaged length of an interaction's connections.

    ``L(t) = Σ_hj |w_hj| d_hj / Σ_hj |w_hj|`` with ``d_hj = |r_h - r_j|`` the
    distance from source particle j to target particle h. It is the transport
    cost ``Σ|w|·d`` per unit weight: it falls when strong connections become
    short (neurons that talk move together). NaN when all weights are 0.

    Args:
        weight: the interaction's Dataset or its ``weight (time, target, source)``.
        source_positions, target_positions: the two groups' Datasets or positions.

    Returns:
        ``(time)``, in length units.
    """
    frames = _weight_distance_frames(weight, source_positions, target_positions)
    values = np.empty(frames.n_frames)
    for t, (w, src, tgt) in enumerate(frames.each()):
        strength = np.abs(np.asarray(w, dtype=np.float64))
        total = strength.sum()
        values[t] = (strength * _cdist(tgt, src)).sum() / total if total > 0 else np.nan
    return _result(values, frames.coords, (), attrs={"long_name": "connection length"}).rename(
        "connection_length"
    )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman wants."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def weight_distance_correlation(
    weight: ArrayLike,
    source_positions: ArrayLike,
    target_positions: ArrayLike,
    *,
    method: Literal["pearson", "spearman"] = "pearson",
) -> xr.DataArray:
    """Correlation of connection strength ``|w_hj|`` with distance ``d_hj``, per frame.

    Pearson's r over all ``H·J`` pairs, or Spearman's ρ (Pearson of average
    ranks). Negative means strong connections are short, as a distance-based
    kernel or a transport-cost potential drives them. NaN when either is constant.

    Returns:
        ``(time)``, dimensionless in [-1, 1].
    """
    if method not in ("pearson", "spearman"):
        raise AnalysisError(f"method must be 'pearson' or 'spearman', got {method!r}")
    frames = _weight_distance_frames(weight, source_positions, target_positions)
    values = np.empty(frames.n_frames)
    for t, (w, src, tgt) in enumerate(frames.each()):
        x = np.abs(np.asarray(w, dtype=np.float64)).ravel()
        y = _cdist(tgt, src).ravel()
        if method == "spearman":
            x, y = _ranks(x), _ranks(y)
        values[t] = _pearson(x, y)
    return _result(
        values,
        frames.coords,
        (),
        attrs={"long_name": f"{method} correlation of |weight| with distance", "method": method},
    ).rename("weight_distance_correlation")
