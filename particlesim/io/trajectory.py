"""Read H5MD trajectories as lazy :class:`xarray.DataTree` objects (no torch needed).

:func:`open_trajectory` mirrors the file (see :mod:`particlesim.io.h5md` for the
H5MD side)::

    /                          attrs h5md_version [1, 1], creator, creator_version, author,
                               and /parameters: scenario_toml, scenario_name, seed,
                               data_source, versions (JSON), plugins (JSON), trajectory_writer
    /particles/<group>         dims (time, particle, spatial[, channel])
                               coords time (float64, H5MD time), step (int64, along time),
                               particle (0..N-1)
                               vars position (time, particle, spatial),
                                    charge (time, particle) or (time, particle, channel),
                                    bias (time, particle), … ;
                                    a frozen field has no time dim: position (particle, spatial)
                               attrs dimension (D), boundary (["none"] * D)
    /observables               one variable per observable, on time or time_<label>
                               (coords time/step, time_<label>/step_<label>); attr unit
                               (H5MD's) and units (the same, as CF and xarray's plots name it)
    /connectivity/<src>_to_<dst>   weight (time, target, source); attrs source, target, kind

**Time dims.** Each distinct H5MD ``step`` dataset (elements sampled together
share one through hard links) becomes one time dim of its node. The one with
the most frames is ``time`` (ties: most elements, then file order); any other
is ``time_<label>`` with coords ``time_<label>`` and ``step_<label>``, where
``<label>`` is the ``particlesim_series`` attribute of its ``step`` dataset
(``epoch`` for the per-epoch observables) or, in files from other programs,
the name of the first field or observable on it (``time_velocity``). A
clock has ``min(len(step), len(time), len(value) …)`` frames over every series
on it in the whole file, so the groups sampled together share one time axis
(``open_group`` counts the other nodes' series too) and a file being written
(or cut short by ``kill -9``) reads consistently. The writer appends a frame's
values and ``time`` before its ``step``, so rows beyond ``step`` are read
silently (any number while the file is flagged open for writing, one in a
closed file); any other difference is a :class:`TrajectoryWarning` naming each
series and its length.

**Other axes.** ``position`` (and ``velocity``, ``force``, ``image`` when they
have D components) use ``spatial``; multi-channel ``charge`` uses ``channel``;
any other trailing axis of a field or observable ``x`` is ``x_dim_<i>``.
An observable named like a coordinate (``time``, ``step``) is stored as
``<name>_observable``.

**Lazy, bounded.** Opening reads only metadata and the ``step``/``time``
datasets (the coordinates: 16 bytes a frame of each clock, in memory); every
value is an :class:`H5Array` that opens the file (with SWMR, so a file still
being written can be read) for the duration of one read and holds no handle,
so Datasets pickle and work with dask (``xr.open_dataset(…, chunks={})``
reads in the file's chunks). A read allocates what it returns and no more: a
selection by index reads those rows, not the span between them. The analysis
reads values a slice of frames at a time (:mod:`particlesim.analysis.stream`).

Files from other H5MD writers are read as far as they follow the standard;
what particlesim would have written but is missing is listed in the root
attr ``missing`` and, for foreign creators, a :class:`TrajectoryWarning`.

**Untrusted files.** A trajectory may come from anywhere, so the reader only
reads what is inside the file and refuses, with one :class:`TrajectoryError`
line, what would reach outside it or exhaust the machine: external links,
virtual datasets and external raw storage (which could point at any file),
paths that are not regular files (a FIFO would block, a device never ends),
``step`` datasets that are not 1-D integers, and any read larger than the
machine's memory (a 12-byte header can declare a terabyte dataset; set
``PARTICLESIM_MAX_READ_BYTES`` to lower the limit). Declared lengths are
checked against what the file holds (:func:`check_allocated`: the chunks a
chunked dataset has allocated, the bytes a contiguous one stores), before
``step`` and ``time`` are read and for the frames each value is read for: a
dataset resized to 10^9 frames and never written is refused, naming it, where
HDF5 would have read gigabytes of fill values. What is left out is never
silent: a dangling soft link, an element whose values are not numbers
(strings, compound records, variable-length data), one without ``step`` or
``value``, a link cycle or a group nested deeper than :data:`MAX_DEPTH` is a
:class:`TrajectoryWarning` naming its HDF5 path (once per open); elements and
groups left out are also listed in the root attr ``skipped``.
"""

from __future__ import annotations

import contextvars
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from particlesim.errors import TrajectoryError, close_matches

__all__ = [
    "H5Array",
    "TrajectoryWarning",
    "check_allocated",
    "check_file",
    "drop",
    "left_open_for_writing",
    "open_group",
    "open_trajectory",
]

#: Attribute of a ``step`` dataset naming its clock (written by :mod:`particlesim.io.h5md`).
SERIES_ATTR = "particlesim_series"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Fields whose last axis is spatial when it has D components (H5MD's standard vectors).
SPATIAL_FIELDS = ("position", "velocity", "force", "image")
#: What a particlesim file holds in /parameters (reported in attr ``missing`` when absent).
PARTICLESIM_PARAMETERS = ("scenario_toml", "seed", "data_source", "versions", "plugins")
#: Deepest group nesting followed below /observables and /parameters.
MAX_DEPTH = 16
#: Environment variable capping the bytes of any single read (default: physical memory).
MAX_READ_ENV = "PARTICLESIM_MAX_READ_BYTES"
#: dtype kinds read as values (bool, integers, floats, complex).
NUMERIC_KINDS = "biufc"


class TrajectoryWarning(UserWarning):
    """A trajectory was read, but lacks what particlesim would have written."""


# --------------------------------------------------------------------------- file checks


def check_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete HDF5 file; return it as a :class:`Path`.

    Raises :class:`TrajectoryError` (one line naming the file) when it does not
    exist, is not HDF5, or is shorter than its superblock's end-of-file address
    (truncated: cut while copying, or a run killed while the file was created).
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TrajectoryError(f"{path}: no such file") from None
    except OSError as exc:
        raise TrajectoryError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise TrajectoryError(f"{path}: is a directory; expected a trajectory file (.h5)")
    if not stat.S_ISREG(info.st_mode):
        raise TrajectoryError(
            f"{path}: not a regular file (a device, pipe or socket); expected a trajectory "
            "file (.h5)"
        )
    size = info.st_size
    with path.open("rb") as handle:
        base = _find_superblock(handle, size)
        if base is None:
            raise TrajectoryError(
                f"{path}: not an HDF5 file (no HDF5 signature); expected an H5MD "
                "trajectory (.h5) written by particlesim"
            )
        handle.seek(base)
        eof = _stored_eof(handle.read(128))
    if eof == -1 or (eof is not None and size < eof):
        expected = "its superblock" if eof == -1 else f"{eof:,} bytes"
        raise TrajectoryError(
            f"{path}: truncated HDF5 file ({size:,} bytes, expected {expected}); it was cut "
            "short (an interrupted copy?) and cannot be read"
        )
    return path


def _find_superblock(handle: Any, size: int) -> int | None:
    """Offset of the HDF5 signature: 0, 512, 1024, … (after a user block), or None."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        handle.seek(offset)
        if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def _stored_eof(head: bytes) -> int | None:
    """Absolute end-of-file address recorded in a superblock (-1: superblock cut; None: unknown)."""
    if len(head) < 12:
        return -1
    version = head[8]
    if version in (0, 1):
        offsets = head[13]
        start = 24 if version == 0 else 28
    elif version in (2, 3):
        offsets = head[9]
        start = 12
    else:
        return None
    if offsets not in (2, 4, 8, 16) or len(head) < start + 3 * offsets:
        return -1
    base = int.from_bytes(head[start : start + offsets], "little")
    eof = head[start + 2 * offsets : start + 3 * offsets]
    if eof == b"\xff" * offsets:
        return None
    return base + int.from_bytes(eof, "little")


def left_open_for_writing(path: str | os.PathLike[str]) -> bool:
    """Whether an HDF5 file's superblock says a writer has it open (a live or killed run).

    Such a file opens only with ``swmr=True`` (plain ``h5py.File(path, "r")`` refuses it)
    until :func:`particlesim.io.h5md.clear_status_flags` (``particlesim recover``,
    ``h5clear -s``) resets the flags. False for a closed file and for anything that is not
    HDF5 with a version 2/3 superblock.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[:8] == HDF5_SIGNATURE and head[8] in (2, 3) and head[11] != 0


def read_limit() -> int:
    """Bytes one read may take: ``PARTICLESIM_MAX_READ_BYTES`` or the physical memory."""
    text = os.environ.get(MAX_READ_ENV)
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: a conservative 16 GiB
        return 16 << 30


def check_read_size(path: Any, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise TrajectoryError when reading ``shape`` of ``dtype`` would exceed :func:`read_limit`."""
    nbytes = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    limit = read_limit()
    if nbytes > limit:
        raise TrajectoryError(
            f"{path}: reading {name} {list(shape)} ({np.dtype(dtype)}) needs "
            f"{nbytes / 2**30:,.1f} GiB, more than the {limit / 2**30:,.1f} GiB of memory "
            f"allowed ({MAX_READ_ENV}); select fewer frames or particles"
        )


# --------------------------------------------------------------------------- notes

#: The notes of the open in progress (message -> None, an ordered set); None: warn at once.
_NOTES: contextvars.ContextVar[dict[str, None] | None] = contextvars.ContextVar(
    "particlesim_trajectory_notes", default=None
)


def _note(message: str) -> None:
    """Report something left out or cut short: a :class:`TrajectoryWarning`, once per open."""
    notes = _NOTES.get()
    if notes is None:
        warnings.warn(message, TrajectoryWarning, stacklevel=3)
    else:
        notes.setdefault(message, None)


@contextmanager
def _noting(*, emit: bool = True) -> Iterator[dict[str, None]]:
    """Collect the notes of one open; warn each distinct one at the end (``emit``) if it worked."""
    notes: dict[str, None] = {}
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)
    if emit:
        for message in notes:
            warnings.warn(message, TrajectoryWarning, stacklevel=4)


# --------------------------------------------------------------------------- storage


def _nbytes(nbytes: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes} bytes"


def check_allocated(path: Any, dataset: h5py.Dataset, rows: int | None = None) -> None:
    """Refuse ``dataset`` when the file does not hold its first ``rows`` rows.

    A 12-byte header can declare any shape: a chunked dataset resized to 10^9
    rows without a write allocates no chunk, and HDF5 (h5py) then reads its
    fill value, 0, for every missing row, so a reader would build gigabytes of
    zeros from a few kB of file. Here the declared rows (default all) are
    checked against what the file stores: a chunked dataset must have
    allocated at least the chunks those rows take (their count, compression
    aside: a compressed chunk is still one chunk), and the chunk of the last
    row that must be there; a contiguous one its full size. The last row may
    be missing: a writer in SWMR mode extends a dataset before the row's chunk
    reaches the file, so a file being written (or left by a killed run) shows
    one such row, which reads as the fill value.

    Raises :class:`TrajectoryError` naming the dataset, its declared shape and
    what the file holds.
    """
    shape = tuple(int(n) for n in dataset.shape or ())
    if not shape:
        return
    rows = shape[0] if rows is None else min(int(rows), shape[0])
    needed = rows - 1  # rows that must be stored: all but a last one being written
    row_size = math.prod(shape[1:])
    if needed <= 0 or row_size == 0:
        return
    dsid = dataset.id
    try:
        layout = dsid.get_create_plist().get_layout()
    except (OSError, RuntimeError, ValueError):
        return  # unknown layout: a read error will name it
    itemsize = dataset.dtype.itemsize
    frame = f"{list(shape[1:])} " if shape[1:] else ""
    declared = (
        f"{dataset.name} declares {rows} frames ({frame}{dataset.dtype}, "
        f"{_nbytes(rows * row_size * itemsize)})"
    )
    if layout == h5py.h5d.CONTIGUOUS:
        stored = dsid.get_storage_size()
        if stored < math.prod(shape) * itemsize:
            raise TrajectoryError(
                f"{path}: {declared}, but the file stores {_nbytes(stored)} of it; it is "
                "damaged or hostile (a declared size that was never written)"
            )
        return
    if layout != h5py.h5d.CHUNKED or dataset.chunks is None:
        return  # compact: the values live in the header, all of them
    chunks = dataset.chunks
    per_row = math.prod(math.ceil(n / c) for n, c in zip(shape[1:], chunks[1:], strict=True))
    wanted = math.ceil(needed / chunks[0]) * per_row
    try:
        held = dsid.get_num_chunks()
        last = dsid.get_chunk_info_by_coord(
            ((needed - 1) // chunks[0] * chunks[0], *(0 for _ in shape[1:]))
        )
    except (AttributeError, OSError, RuntimeError, ValueError):  # HDF5 < 1.10.5
        held = wanted if dsid.get_storage_size() > 0 else 0
        last = None
    if held < wanted or (last is not None and last.byte_offset is None):
        raise TrajectoryError(
            f"{path}: {declared}, but the file holds {held} of the {wanted} chunks they fill; "
            "it is damaged or hostile (a declared length that was never written)"
        )


def _child(path: Any, group: h5py.Group, name: str) -> h5py.Group | h5py.Dataset | None:
    """``group[name]`` without leaving the file.

    External links are an error; a dangling soft link (or a member that cannot be
    opened) is None and a note naming it.
    """
    where = f"{group.name.rstrip('/')}/{name}"
    try:
        link = group.get(name, getlink=True)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        _note(f"{path}: {where} cannot be opened ({exc}); left out")
        return None
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise TrajectoryError(
            f"{path}: {where} is an external link to "
            f"{link.filename}:{link.path}; particlesim reads only self-contained trajectories"
        )
    try:
        obj = group.get(name)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # a broken member
        obj = None
        reason = f"cannot be opened ({exc})"
    else:
        reason = "is not a group or a dataset"
    if obj is None and isinstance(link, h5py.SoftLink):
        reason = f"is a soft link to {link.path}, which is not in the file"
    if isinstance(obj, h5py.Group | h5py.Dataset):
        return obj
    _note(f"{path}: {where} {reason}; left out")
    return None


def _members(path: Any, group: h5py.Group) -> list[tuple[str, h5py.Group | h5py.Dataset]]:
    """The members of ``group`` that resolve inside the file (see :func:`_child`)."""
    members = []
    for name in group:
        obj = _child(path, group, name)
        if obj is not None:
            members.append((name, obj))
    return members


def _check_storage(path: Any, dataset: h5py.Dataset) -> None:
    """Refuse datasets whose values live outside the file (virtual or external storage)."""
    if dataset.is_virtual:
        raise TrajectoryError(
            f"{path}: {dataset.name} is a virtual dataset (its values live in other files); "
            "particlesim reads only self-contained trajectories"
        )
    if dataset.external:
        files = ", ".join(sorted({str(entry[0]) for entry in dataset.external}))
        raise TrajectoryError(
            f"{path}: {dataset.name} keeps its values in external raw storage ({files}); "
            "particlesim reads only self-contained trajectories"
        )


def _open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """Open read-only with SWMR (works for files being written, or left by a killed run)."""
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as first:
        try:
            return h5py.File(path, "r")
        except OSError:
            raise TrajectoryError(f"{path}: cannot open as HDF5: {first}") from None


# --------------------------------------------------------------------------- lazy arrays


class H5Array(BackendArray):
    """A lazy view of the first ``shape[0]`` rows of one HDF5 dataset.

    Each read opens the file (SWMR), reads one selection and closes it again;
    the object holds only the path and the dataset name, so it pickles. A
    selection by a list of indices (``isel(time=[0, 500, 999])``) reads those
    rows only, never the span between them, so a read allocates what it
    returns, and a read larger than :func:`read_limit` is refused.
    """

    def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.name = name
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        # h5py reads one sorted list of indices per selection: xarray picks the axis
        # where a list saves the most and reads the others as spans.
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        # Slices are bounded by this array's shape: the dataset may have grown since.
        bounded: list[Any] = []
        for k, n in zip(key, self.shape, strict=False):
            if isinstance(k, slice):
                bounded.append(slice(*k.indices(n)))
            elif isinstance(k, np.ndarray):  # sorted, unique (xarray's OUTER_1VECTOR)
                bounded.append(np.where(k < 0, k + n, k).astype(np.int64))
            else:
                bounded.append(int(k) + n if k < 0 else int(k))
        bounded_key = tuple(bounded)
        wanted = [
            len(range(k.start, k.stop, k.step)) if isinstance(k, slice) else len(k)
            for k in bounded_key
            if not isinstance(k, int)
        ]
        tail = self.shape[len(bounded_key) :]
        if any(n == 0 for n in wanted):
            return np.zeros((*wanted, *tail), dtype=self.dtype)
        check_read_size(self.path, self.name, (*wanted, *tail), self.dtype)
        try:
            with _open_h5(self.path) as file:
                return np.asarray(file[self.name][bounded_key])
        except (OSError, KeyError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
            raise TrajectoryError(f"{self.path}: cannot read {self.name}: {exc}") from None

    def __repr__(self) -> str:
        return f"H5Array({self.path!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


def _lazy(array: H5Array) -> indexing.LazilyIndexedArray:
    return indexing.LazilyIndexedArray(array)


# --------------------------------------------------------------------------- scanning


@dataclass
class _Clock:
    """The step and time of one H5MD ``step`` dataset (or of a fixed-interval step)."""

    steps: np.ndarray | None  # [T] int64; None for a fixed interval
    times: np.ndarray | None  # [T] float64; None for a fixed interval or no time
    label: str | None = None  # the step dataset's particlesim_series attribute
    step_rule: tuple[int, int] | None = None  # fixed interval: (step, offset)
    time_rule: tuple[float, float] | None = None  # fixed interval: (time, offset)
    time_attrs: dict[str, Any] | None = None
    names: tuple[str, str | None] = ("", None)  # HDF5 paths of step and time
    frames: int | None = None  # frames of every series on it (set by _Scan.settle)

    @property
    def length(self) -> int | None:
        """Frames this clock can describe (``None``: unbounded, a fixed interval)."""
        lengths = [len(a) for a in (self.steps, self.times) if a is not None]
        return min(lengths) if lengths else None

    def arrays(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``(step int64 [frames], time float64 [frames])``; no time at all means time = step."""
        index = np.arange(frames, dtype=np.int64)
        if self.steps is not None:
            steps = np.asarray(self.steps[:frames], dtype=np.int64)
        else:
            assert self.step_rule is not None
            steps = self.step_rule[1] + self.step_rule[0] * index
        if self.times is not None:
            times = np.asarray(self.times[:frames], dtype=np.float64)
        elif self.time_rule is not None:
            times = self.time_rule[1] + self.time_rule[0] * index.astype(np.float64)
        else:
            times = steps.astype(np.float64)
        return steps.astype(np.int64), times


@dataclass
class _Element:
    """One H5MD element: a time-dependent ``{step, time, value}`` group or a plain dataset."""

    name: str
    path: str  # HDF5 path of the value (or time-independent) dataset
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    attrs: dict[str, Any]
    clock: Any = None  # a key into the scan's clocks; None when time-independent


@dataclass
class _Node:
    """What one node of the tree holds, before its Dataset is built."""

    elements: list[_Element]
    axes: Callable[[_Element, tuple[int, ...]], tuple[str, ...]]
    attrs: dict[str, Any]
    rename_clashes: bool = False
    particles: int | None = None
    missing: list[str] = field(default_factory=list)


class _Scan:
    """Reads the structure of one open file (metadata, step and time only)."""

    def __init__(self, file: h5py.File, path: str) -> None:
        self.file = file
        self.path = path
        self.clocks: dict[Any, _Clock] = {}
        self.skipped: list[str] = []
        self.writing = left_open_for_writing(path)  # a live run, or one killed

    def skip(self, name: str, reason: str, where: str | None = None) -> None:
        """Leave ``name`` out: listed in the root attr ``skipped``, a note naming ``where``."""
        self.skipped.append(name)
        _note(f"{self.path}: {where or name} {reason}; left out")

    def element(self, obj: h5py.Group | h5py.Dataset, name: str) -> _Element | None:
        if isinstance(obj, h5py.Dataset):
            _check_storage(self.path, obj)
            if obj.shape is None:
                self.skip(obj.name, "is an empty (null) dataset")
                return None
            if obj.dtype.kind not in NUMERIC_KINDS:
                self.skip(obj.name, f"holds {_kind(obj.dtype)}, not numbers")
                return None
            attrs = _with_units(_attrs(obj.attrs))
            return _Element(name, obj.name, obj.shape, obj.dtype, obj.chunks, attrs)
        value, step = _child(self.path, obj, "value"), _child(self.path, obj, "step")
        if not isinstance(value, h5py.Dataset) or not isinstance(step, h5py.Dataset):
            lacks = " and ".join(
                f"a {part} dataset"
                for part, found in (("value", value), ("step", step))
                if not isinstance(found, h5py.Dataset)
            )
            self.skip(obj.name, f"has no {lacks} (an H5MD element needs step and value)")
            return None
        _check_storage(self.path, value)
        if value.shape is None or value.ndim == 0:
            self.skip(obj.name, "is a scalar, not a series of frames", value.name)
            return None
        if value.dtype.kind not in NUMERIC_KINDS:
            self.skip(obj.name, f"holds {_kind(value.dtype)}, not numbers", value.name)
            return None
        time = _child(self.path, obj, "time")
        time = time if isinstance(time, h5py.Dataset) else None
        key = self.clock(step, time)
        attrs = _with_units({**_attrs(obj.attrs), **_attrs(value.attrs)})
        return _Element(name, value.name, value.shape, value.dtype, value.chunks, attrs, key)

    def clock(self, step: h5py.Dataset, time: h5py.Dataset | None) -> Any:
        """Key of the clock of ``step``/``time`` (hard links to one dataset share a key)."""
        key = (_address(step), None if time is None else _address(time))
        if key in self.clocks:
            return key
        for series, kinds, what in ((step, "iu", "integers"), (time, "iuf", "numbers")):
            if series is None:
                continue
            _check_storage(self.path, series)
            if series.shape is None or series.dtype.kind not in kinds or series.ndim > 1:
                raise TrajectoryError(
                    f"{self.path}: {series.name} holds {series.dtype} values of shape "
                    f"{list(series.shape or ())}, not integers"
                    if what == "integers"
                    else f"{self.path}: {series.name} holds {series.dtype} values of shape "
                    f"{list(series.shape or ())}, not 1-D numbers"
                )
            if series.ndim == 1 and series.shape[0] * series.dtype.itemsize > read_limit():
                raise TrajectoryError(
                    f"{self.path}: {series.name} declares {series.shape[0]} frames, more than "
                    f"the {read_limit():,} bytes one read may take ({MAX_READ_ENV}); raise the "
                    "limit, or the file is damaged or was not written by an H5MD writer"
                )
            check_allocated(self.path, series)  # before reading it whole
        clock = _Clock(
            None,
            None,
            time_attrs=None if time is None else _with_units(_attrs(time.attrs)),
            names=(step.name, None if time is None else time.name),
        )
        if step.ndim == 0:  # H5MD fixed interval: step of frame i = offset + step * i
            clock.step_rule = (int(step[()]), int(step.attrs.get("offset", 0)))
        else:
            clock.steps = np.asarray(step[()], dtype=np.int64)
            label = step.attrs.get(SERIES_ATTR)
            clock.label = None if label is None else str(_plain(label))
        if time is not None and time.ndim == 0:
            clock.time_rule = (float(time[()]), float(time.attrs.get("offset", 0.0)))
        elif time is not None:
            clock.times = np.asarray(time[()], dtype=np.float64)
        self.clocks[key] = clock
        return key

    def settle(self, elements: Iterable[_Element]) -> None:
        """Fix each clock's frames: the fewest rows of its ``step``, ``time`` and values.

        ``elements`` are those of every node read, so that the series sharing
        one clock (hard-linked ``step``) share one time axis everywhere. A
        writer appends a frame's values and ``time`` before its ``step``: in a
        file still flagged open for writing (a live run, read while it appends,
        or a killed one) they may hold more rows than ``step``, in a closed one
        one more (a frame cut by an error). That is read silently; any other
        difference (``step`` longer than a value, or a closed file's series
        apart by more than a frame) is a note naming each series and its length.
        """
        lengths: dict[Any, dict[str, int]] = {}
        for element in elements:
            if element.clock is not None:
                rows = lengths.setdefault(element.clock, {})
                rows[element.path] = int(element.shape[0])
        for key, rows in lengths.items():
            clock = self.clocks[key]
            series = dict(rows)
            step_name, time_name = clock.names
            if clock.steps is not None:
                series = {step_name: len(clock.steps), **series}
            if clock.times is not None and time_name is not None:
                series = {**series, time_name: len(clock.times)}
            frames = min(series.values())
            clock.frames = frames
            in_progress = (clock.steps is None or len(clock.steps) == frames) and (
                self.writing or max(series.values()) - frames <= 1
            )
            if not in_progress:
                reference = series.get(step_name, max(series.values()))
                odd = ", ".join(f"{name} {n}" for name, n in series.items() if n != reference)
                what = f"{step_name} ({reference} frames)" if step_name in series else step_name
                _note(
                    f"{self.path}: the series sampled by {what} differ in length ({odd}); "
                    f"read the first {frames} frames of each"
                )

    # -- nodes -------------------------------------------------------------------------

    def particle_group(self, name: str) -> _Node:
        group = self.file["particles"][name]
        attrs: dict[str, Any] = {}
        missing: list[str] = []
        box = _child(self.path, group, "box")
        if isinstance(box, h5py.Group):
            box_attrs = _attrs(box.attrs)
            try:
                attrs["dimension"] = int(np.asarray(box_attrs.get("dimension", 0)).item())
            except (TypeError, ValueError):  # not one integer: unknown dimension
                attrs["dimension"] = 0
                missing.append("box/dimension")
            boundary = box_attrs.get("boundary")
            attrs["boundary"] = (
                [str(b) for b in np.atleast_1d(boundary)] if boundary is not None else []
            )
            edges = _child(self.path, box, "edges")
            if (
                isinstance(edges, h5py.Dataset)
                and edges.dtype.kind in NUMERIC_KINDS
                and edges.size is not None
                and edges.size <= 64
            ):
                _check_storage(self.path, edges)
                attrs["edges"] = np.asarray(edges[()])
        else:
            missing.append("box")
        elements = []
        for field_name, obj in _members(self.path, group):
            if field_name == "box":
                continue
            element = self.element(obj, field_name)
            if element is not None:
                elements.append(element)
        dim = attrs.get("dimension") or None
        particles = {e.shape[1 if e.clock is not None else 0] for e in elements if _has_rows(e)}
        if len(particles) > 1:
            sizes = ", ".join(f"{e.name} {list(e.shape)}" for e in elements)
            raise TrajectoryError(
                f"{self.path}: particle group {name!r} has fields of different lengths: {sizes}"
            )

        def axes(element: _Element, tail: tuple[int, ...]) -> tuple[str, ...]:
            """``(particle, …)``: spatial for [N, D] vectors, channel for [N, C] charges."""
            if not tail:
                return ()
            rest = [f"{element.name}_dim_{i}" for i in range(len(tail) - 1)]
            if len(tail) == 2 and element.name in SPATIAL_FIELDS and tail[1] == (dim or tail[1]):
                rest = ["spatial"]
            elif len(tail) == 2 and element.name == "charge":
                rest = ["channel"]
            return ("particle", *rest)

        if particles and next(iter(particles)) * 8 > read_limit():
            raise TrajectoryError(
                f"{self.path}: particle group {name!r} declares {next(iter(particles))} "
                f"particles, more than the {read_limit():,} bytes one read may take "
                f"({MAX_READ_ENV}); raise the limit, or the file is damaged or hostile"
            )
        count = particles.pop() if particles else None
        return _Node(elements, axes, attrs, particles=count, missing=missing)

    def observables(self) -> _Node:
        elements: list[_Element] = []
        seen: set[int] = set()

        def walk(group: h5py.Group, prefix: str, depth: int) -> None:
            seen.add(_address(group))
            for name, obj in _members(self.path, group):
                full = f"{prefix}{name}"
                if isinstance(obj, h5py.Group) and "value" not in obj:
                    if depth >= MAX_DEPTH:
                        self.skip(obj.name, f"is nested deeper than {MAX_DEPTH} groups")
                        continue
                    if _address(obj) in seen:
                        self.skip(obj.name, "links back to a group above it (a cycle)")
                        continue
                    walk(obj, f"{full}_", depth + 1)  # H5MD allows /observables/<group>/<name>
                    continue
                element = self.element(obj, full)
                if element is not None:
                    elements.append(element)

        walk(self.file["observables"], "", 0)

        def axes(element: _Element, tail: tuple[int, ...]) -> tuple[str, ...]:
            return tuple(f"{element.name}_dim_{i}" for i in range(len(tail)))

        return _Node(elements, axes, {}, rename_clashes=True)

    def connectivity(self, name: str) -> _Node:
        group = self.file["connectivity"][name]
        attrs = _attrs(group.attrs)
        if "_to_" in name:
            source, target = name.split("_to_", 1)
            attrs.setdefault("source", source)
            attrs.setdefault("target", target)
        weight = _child(self.path, group, "weight")
        elements = []
        if weight is not None:
            element = self.element(weight, "weight")
            if element is not None:
                elements.append(element)
        else:
            _note(f"{self.path}: {group.name} has no weight; it holds no connectivity")

        def axes(element: _Element, tail: tuple[int, ...]) -> tuple[str, ...]:
            if len(tail) == 2:
                return ("target", "source")
            return tuple(f"{element.name}_dim_{i}" for i in range(len(tail)))

        return _Node(elements, axes, attrs)

    def spec(self, key: str) -> _Node:
        """The node at ``key``: ``particles/<g>``, ``observables`` or ``connectivity/<c>``."""
        if key == "observables":
            return self.observables()
        kind, _, name = key.partition("/")
        return self.particle_group(name) if kind == "particles" else self.connectivity(name)

    def build(self, node: _Node) -> xr.Dataset:
        """The lazy Dataset of ``node`` (after :meth:`settle`)."""
        ds = self.dataset(node.elements, node.axes, node.attrs, rename_clashes=node.rename_clashes)
        if node.particles is not None:
            ds = ds.assign_coords(particle=np.arange(node.particles, dtype=np.int64))
        if node.missing:
            ds.attrs["missing"] = node.missing
        return ds

    def dataset(
        self,
        elements: list[_Element],
        axes: Any,
        attrs: dict[str, Any],
        *,
        rename_clashes: bool = False,
    ) -> xr.Dataset:
        """One Dataset: a time dim per clock, lazy variables, step/time coords."""
        order: list[Any] = []
        members: dict[Any, list[_Element]] = {}
        for element in elements:
            if element.clock is not None:
                if element.clock not in members:
                    order.append(element.clock)
                    members[element.clock] = []
                members[element.clock].append(element)
        frames: dict[Any, int] = {}
        for key in order:
            settled = self.clocks[key].frames
            if settled is None:  # not settled: this node's own shortest series
                lengths = [e.shape[0] for e in members[key]]
                clock_length = self.clocks[key].length
                if clock_length is not None:
                    lengths.append(clock_length)
                settled = min(lengths)
            frames[key] = settled
        ranked = sorted(order, key=lambda k: (-frames[k], -len(members[k]), order.index(k)))
        dims: dict[Any, str] = {}
        for i, key in enumerate(ranked):
            if i == 0:
                dims[key] = "time"
                continue
            label = self.clocks[key].label or members[key][0].name
            name = f"time_{label}"
            while name in dims.values():
                name += "_"
            dims[key] = name
        coords: dict[str, Any] = {}
        for key in ranked:
            dim = dims[key]
            steps, times = self.clocks[key].arrays(frames[key])
            coords[dim] = xr.Variable((dim,), times, attrs=self.clocks[key].time_attrs or {})
            coords["step" + dim.removeprefix("time")] = xr.Variable((dim,), steps)
        variables: dict[str, xr.Variable] = {}
        for element in elements:
            if element.clock is None:
                shape, time_dims = element.shape, ()
            else:
                shape = (frames[element.clock], *element.shape[1:])
                time_dims = (dims[element.clock],)
            check_allocated(self.path, self.file[element.path], shape[0] if shape else None)
            tail = shape[len(time_dims) :]
            var_dims = (*time_dims, *axes(element, tail))
            data = _lazy(H5Array(self.path, element.path, shape, element.dtype))
            name = element.name
            element_attrs = dict(element.attrs)
            if rename_clashes and name in coords:
                element_attrs["h5md_name"] = name
                name = f"{name}_observable"
            encoding = {}
            if element.chunks is not None:
                encoding["preferred_chunks"] = dict(zip(var_dims, element.chunks, strict=True))
            variables[name] = xr.Variable(var_dims, data, attrs=element_attrs, encoding=encoding)
        ds = xr.Dataset(variables, coords=coords, attrs=attrs)
        ds.encoding["source"] = self.path
        return ds

    # -- root --------------------------------------------------------------------------

    def root_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        missing: list[str] = []
        h5md = self.file["h5md"]
        version = h5md.attrs.get("version")
        try:
            version = None if version is None else np.asarray(version, dtype=np.int64)
        except (TypeError, ValueError):
            version = None
        if version is None:
            missing.append("h5md/version")
        else:
            attrs["h5md_version"] = np.asarray(version, dtype=np.int64)
        creator = _child(self.path, h5md, "creator")
        creator_attrs = _attrs(creator.attrs) if isinstance(creator, h5py.Group) else {}
        attrs["creator"] = str(creator_attrs.get("name", ""))
        attrs["creator_version"] = str(creator_attrs.get("version", ""))
        if not attrs["creator"]:
            missing.append("h5md/creator")
        author = _child(self.path, h5md, "author")
        author_attrs = _attrs(author.attrs) if isinstance(author, h5py.Group) else {}
        attrs["author"] = str(author_attrs.get("name", ""))
        if "email" in author_attrs:
            attrs["author_email"] = str(author_attrs["email"])
        parameters = _child(self.path, self.file, "parameters")
        if isinstance(parameters, h5py.Group):
            attrs.update(_parameters(self.path, parameters))
        missing += [f"parameters/{k}" for k in PARTICLESIM_PARAMETERS if k not in attrs]
        if self.skipped:
            attrs["skipped"] = list(self.skipped)
        if missing:
            attrs["missing"] = missing
        return attrs


def _kind(dtype: np.dtype) -> str:
    """What a non-numeric dtype holds, in words (``strings (dtype object)``)."""
    if dtype.fields is not None:
        return f"compound records ({', '.join(dtype.names or ())})"
    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU":
        return f"strings (dtype {dtype})"
    if h5py.check_vlen_dtype(dtype) is not None:
        return "variable-length sequences"
    return f"{dtype} values"


def _has_rows(element: _Element) -> bool:
    return len(element.shape) >= (2 if element.clock is not None else 1)


def _address(dataset: h5py.Dataset) -> int:
    """Identity of an HDF5 object: hard links to one dataset share it."""
    return h5py.h5o.get_info(dataset.id).addr


def _plain(value: Any) -> Any:
    """HDF5 attribute value → str / int / float / list / ndarray (bytes decoded)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [_plain(v) for v in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out = {}
    for key in attrs:
        try:
            out[key] = _plain(attrs[key])
        except (OSError, TypeError):  # a datatype h5py cannot read: leave it out
            continue
    return out


def _with_units(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` plus CF's ``units`` beside H5MD's ``unit``, so xarray labels plots with it."""
    if "unit" in attrs and "units" not in attrs:
        attrs["units"] = attrs["unit"]
    return attrs


def _parameters(
    path: Any, group: h5py.Group, prefix: str = "", seen: set[int] | None = None
) -> dict[str, Any]:
    """``/parameters`` attrs and small datasets, flattened (``sub/key`` for subgroups).

    Datasets stored outside the file, of more than 64 Ki elements, or nested deeper
    than :data:`MAX_DEPTH` are left out; link cycles are followed once.
    """
    seen = set() if seen is None else seen
    seen.add(_address(group))
    out = {f"{prefix}{k}": v for k, v in _attrs(group.attrs).items()}
    for key, obj in _members(path, group):
        if isinstance(obj, h5py.Group):
            if prefix.count("/") < MAX_DEPTH and _address(obj) not in seen:
                out.update(_parameters(path, obj, f"{prefix}{key}/", seen))
        elif isinstance(obj, h5py.Dataset) and obj.size is not None and obj.size <= 1 << 16:
            _check_storage(path, obj)
            try:
                out[f"{prefix}{key}"] = _plain(obj[()])
            except (OSError, TypeError, ValueError):  # a datatype h5py cannot read
                continue
    return out


# --------------------------------------------------------------------------- public API


def _nodes(file: h5py.File, path: Any) -> dict[str, list[str]]:
    """Names of the particle groups, the connectivity entries, and whether there are observables.

    A member of ``/particles`` or ``/connectivity`` that is not a group, or one of
    those three that is not a group, is a note naming it (left out).
    """
    found: dict[str, list[str]] = {"particles": [], "connectivity": [], "observables": []}
    for kind in ("particles", "connectivity", "observables"):
        top = _child(path, file, kind)
        if top is None:
            continue
        if not isinstance(top, h5py.Group):
            _note(f"{path}: /{kind} is a dataset, not a group; left out")
            continue
        if kind == "observables":
            found[kind] = ["observables"]
            continue
        for name, obj in _members(path, top):
            if isinstance(obj, h5py.Group):
                found[kind].append(name)
            else:
                _note(f"{path}: {obj.name} is a dataset, not a group; left out")
    return found


def _keys(nodes: dict[str, list[str]]) -> list[str]:
    """Node paths in tree order: particle groups, observables, connectivity."""
    return [
        *(f"particles/{g}" for g in nodes["particles"]),
        *nodes["observables"],
        *(f"connectivity/{c}" for c in nodes["connectivity"]),
    ]


def _open_checked(path: str | os.PathLike[str]) -> tuple[h5py.File, str]:
    checked = check_file(path)
    name = os.fspath(checked.resolve())
    file = _open_h5(name)
    try:
        h5md = _child(path, file, "h5md")
    except TrajectoryError:
        file.close()
        raise
    if not isinstance(h5md, h5py.Group):
        file.close()
        raise TrajectoryError(
            f"{path}: not an H5MD file (no /h5md group); expected a trajectory written by "
            "particlesim or another H5MD writer"
        )
    return file, name


def _fail(path: Any, exc: Exception) -> TrajectoryError:
    return TrajectoryError(f"{path}: cannot read the trajectory: {exc}")


#: What reading a damaged file may raise besides TrajectoryError (turned into one).
_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, MemoryError)


def open_trajectory(path: str | os.PathLike[str]) -> xr.DataTree:
    """Open an H5MD trajectory as a lazy DataTree (layout in the module docstring).

    Reads only metadata and ``step``/``time`` (16 bytes a frame of each clock,
    the coordinates); values load on ``.values`` / ``.load()``. Works on files
    still being written (SWMR) and on files left by a killed run. Raises
    :class:`TrajectoryError` for a missing, non-HDF5, non-H5MD, truncated or
    inconsistent file (a declared length the file does not hold); warns
    (:class:`TrajectoryWarning`, naming the HDF5 path) for what it leaves out or
    cuts short.

    Example:
        >>> tree = open_trajectory("run/trajectory.h5")  # doctest: +SKIP
        >>> tree["particles/hidden"].position.isel(particle=3).values  # [T, D]  # doctest: +SKIP
    """
    file, name = _open_checked(path)
    with file, _noting():
        try:
            scan = _Scan(file, name)
            keys = _keys(_nodes(file, path))
            specs = {key: scan.spec(key) for key in keys}
            scan.settle(e for spec in specs.values() for e in spec.elements)
            datasets: dict[str, xr.Dataset] = {}
            for key in keys:
                parent = key.partition("/")[0]
                if parent != key and parent not in datasets:
                    datasets[parent] = xr.Dataset()
                datasets[key] = scan.build(specs[key])
            attrs = scan.root_attrs()
        except TrajectoryError:
            raise
        except _READ_ERRORS as exc:
            raise _fail(path, exc) from None
    _warn_foreign(path, attrs)
    root = xr.Dataset(attrs=attrs)
    root.encoding["source"] = name
    return xr.DataTree.from_dict({"/": root, **datasets})


def open_group(path: str | os.PathLike[str], group: str) -> xr.Dataset:
    """Open one node as a lazy Dataset.

    ``group`` is a particle group's name (``"hidden1"``) or a node path:
    ``"particles/hidden1"``, ``"observables"``, ``"connectivity/input_to_hidden1"``
    (or just ``"input_to_hidden1"``). An unknown name is a
    :class:`TrajectoryError` listing the nodes that exist. The node's time axes
    are those :func:`open_trajectory` gives it: the other nodes' series on a
    shared clock count toward its frames (nodes that cannot be read are passed
    over for that).
    """
    file, name = _open_checked(path)
    with file, _noting():
        try:
            nodes = _nodes(file, path)
        except _READ_ERRORS as exc:
            raise _fail(path, exc) from None
        key = group.strip("/")
        wanted = None
        if key == "observables" and nodes["observables"]:
            wanted = "observables"
        for kind in ("particles", "connectivity"):
            entry = key.removeprefix(f"{kind}/")
            if entry in nodes[kind] and (entry == key or key.startswith(f"{kind}/")):
                wanted = f"{kind}/{entry}"
                break
        if wanted is not None:
            scan = _Scan(file, name)
            try:
                spec = scan.spec(wanted)
                elements = list(spec.elements)
                clocks = {e.clock for e in elements if e.clock is not None}
                for other in _keys(nodes):
                    if other != wanted:
                        elements += [e for e in _quietly(scan, other) if e.clock in clocks]
                scan.settle(elements)
                return scan.build(spec)
            except TrajectoryError:
                raise
            except _READ_ERRORS as exc:
                raise _fail(path, exc) from None
    known = [
        *nodes["particles"],
        *nodes["observables"],
        *(f"connectivity/{c}" for c in nodes["connectivity"]),
    ]
    listing = ", ".join(known) if known else "none"
    raise TrajectoryError(
        f"{path}: no group {group!r}{close_matches(key, known)}; groups: {listing}"
    )


def _quietly(scan: _Scan, key: str) -> list[_Element]:
    """The time series of node ``key``, read without notes; none if it cannot be read."""
    skipped = list(scan.skipped)
    try:
        with _noting(emit=False):
            elements = scan.spec(key).elements
    except (TrajectoryError, *_READ_ERRORS):
        elements = []
    scan.skipped[:] = skipped
    return [e for e in elements if e.clock is not None]


def _warn_foreign(path: Any, attrs: dict[str, Any]) -> None:
    creator = attrs.get("creator", "")
    if creator != "particlesim":
        missing = ", ".join(attrs.get("missing", [])) or "nothing"
        warnings.warn(
            f"{path}: H5MD file written by {creator or 'an unknown program'!r}, not particlesim; "
            f"read what is standard (missing: {missing})",
            TrajectoryWarning,
            stacklevel=3,
        )


def drop(ds: xr.Dataset, names: str | Iterable[str] | None) -> xr.Dataset:
    """``ds`` without the variables ``names`` (a name, a list or None); unknown names pass."""
    if names is None:
        return ds
    names = [names] if isinstance(names, str) else list(names)
    return ds.drop_vars([n for n in names if n in ds.variables])
