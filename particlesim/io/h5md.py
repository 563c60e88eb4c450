"""H5MD 1.1 trajectory writer: particle fields, observables and effective weights over time.

The file follows H5MD 1.1 (https://www.nongnu.org/h5md/h5md.html), so independent
H5MD readers open it; :func:`particlesim.io.trajectory.open_trajectory` reads it
back as an :class:`xarray.DataTree`::

    /h5md                                  attrs version=[1, 1]
    /h5md/author                           attrs name
    /h5md/creator                          attrs name="particlesim", version
    /particles/<group>/box                 attrs dimension=D, boundary=["none"]*D
    /particles/<group>/position/step       int64   [T]      (hard links: one pair per clock)
    /particles/<group>/position/time       float64 [T]      Σ η, the integrated step size
    /particles/<group>/position/value      [T, N, D]
    /particles/<group>/charge/value        [T, N] or [T, N, C]
    /particles/<group>/<field>/value       [T, N, ...]     bias and any other learnable field
    /particles/<group>/<frozen field>      [N, ...]        time-independent dataset, written once
    /observables/<name>/{step, time}       shared by the observables sampled together
    /observables/<name>/value              [T] or [T, ...], attr unit (when it has one)
    /connectivity/<source>_to_<target>     attrs source, target, kind
    /connectivity/<source>_to_<target>/weight/{step, time, value [T, M, N]}   effective weights
    /parameters                            attrs seed, data_source, scenario_name,
                                           versions (JSON), plugins (JSON), trajectory_writer
                                           (JSON); dataset scenario_toml (string)

**Clocks.** Elements sampled together share one ``step``/``time`` pair: the pair
is created in the first element of its clock and hard-linked into the others
(``file[a].id == file[b].id``). There are up to four clocks: particle frames
(``trigger``), observables (``observables_every``), epoch observables (every
epoch) and connectivity (``connectivity_every``); clocks with equal triggers
are merged. The ``step`` dataset of each clock carries the attribute
``particlesim_series`` (``"particles"``, ``"observables"``, ``"epoch"`` or
``"connectivity"``), which the reader uses to name extra time dims
(``time_epoch``).

**Frozen fields** (a frozen input grid's positions) never change, so they are
written once, as a plain ``[N, ...]`` dataset in place of the
``step``/``time``/``value`` group; H5MD allows this for time-independent data.

**Layout fixed at frame 0.** Every dataset is created in :meth:`open`, then the
file switches to SWMR mode (single writer, multiple readers), so
``particlesim inspect`` and :func:`open_trajectory` can read it while it grows.
Value datasets are chunked ``(64 frames, ≤ 256 particles, rest)`` and resizable
(``maxshape=(None, …)``): appending a frame touches ``⌈N/256⌉`` chunks, and one
particle's full history is ``⌈T/64⌉`` small chunk reads. Scalar series use
chunks of 1024 frames. Compression (``gzip`` level 4 or ``lzf``, with shuffle)
is optional.

**Crash safety.** Within a frame the value rows are written first and the
clock's ``step`` last, and the file is flushed after every frame: a run killed
with ``SIGKILL`` leaves a file that opens (with SWMR) and holds every frame up
to the last flush; readers take ``min(len(step), len(time), len(value))``
frames.

**Resume.** :meth:`TrajectoryWriter.state_dict` records each clock's frame
count; :meth:`TrajectoryWriter.resume` reopens the file (``r+``; the
"open for writing" flags a killed SWMR writer leaves in the superblock are
cleared first, as ``h5clear -s`` does), checks that its layout is the one this
run would create, shrinks every time series of a clock to the checkpoint's
frame count (frames written after the checkpoint are dropped consistently)
and appends from there. Nothing before the checkpoint is rewritten.
"""

from __future__ import annotations

import getpass
import itertools
import json
import math
import os
import platform
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np
import torch

from particlesim.core.triggers import (
    OnEpoch,
    Periodic,
    Trigger,
    as_trigger,
    bind_epoch,
    parse_period,
)
from particlesim.core.writers import Request, Writer
from particlesim.errors import OptionError, TrajectoryError
from particlesim.io.trajectory import left_open_for_writing as left_open_for_writing

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation

#: H5MD version written to ``/h5md`` attr ``version``.
H5MD_VERSION = (1, 1)
#: Frames per chunk of a per-particle value dataset (and of vector observables).
FRAMES_PER_CHUNK = 64
#: Particles per chunk of a per-particle value dataset.
PARTICLES_PER_CHUNK = 256
#: Frames per chunk of ``step``, ``time`` and scalar observables.
SCALAR_FRAMES_PER_CHUNK = 1024
#: Attribute of a clock's ``step`` dataset naming the clock (the reader's ``time_<label>``).
SERIES_ATTR = "particlesim_series"
#: HDF5 format bounds: SWMR needs the 1.10 format; nothing newer is required, so
#: HDF5 ≥ 1.10 readers (h5py, MDAnalysis, VMD's H5MD plugin, …) open the file.
LIBVER = ("v110", "latest")

Compression = Literal["none", "gzip", "lzf"]


def value_chunks(tail: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape of a resizable ``[T, *tail]`` value dataset.

    ``[T]`` → ``(1024,)``; ``[T, N, ...]`` → ``(64, min(N, 256), ...)``: appending a
    frame writes ``⌈N/256⌉`` chunks and reading one particle's history reads
    ``⌈T/64⌉`` chunks of a few hundred kB.
    """
    if not tail:
        return (SCALAR_FRAMES_PER_CHUNK,)
    return (
        FRAMES_PER_CHUNK,
        max(1, min(tail[0], PARTICLES_PER_CHUNK)),
        *(max(1, n) for n in tail[1:]),
    )


def connectivity_chunks(tail: tuple[int, int]) -> tuple[int, int, int]:
    """Chunk shape of a ``[T, M, N]`` weight dataset: one frame, ≤ 256 × 1024 weights."""
    return (1, max(1, min(tail[0], 256)), max(1, min(tail[1], 1024)))


def compression_options(compression: Compression) -> dict[str, Any]:
    """``create_dataset`` keywords for ``"none"``, ``"gzip"`` (level 4) or ``"lzf"``."""
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    return {}


def chunk_cache(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> dict[str, int]:
    """A per-dataset chunk cache that holds every chunk one frame touches (no evictions)."""
    per_frame = math.prod(math.ceil(n / c) for n, c in zip(shape[1:], chunks[1:], strict=True))
    nbytes = per_frame * math.prod(chunks) * itemsize
    return {"rdcc_nbytes": max(1 << 20, 2 * nbytes), "rdcc_nslots": max(521, 20 * per_frame + 1)}


def write_h5md_header(file: h5py.File, *, creator_version: str, author: str | None = None) -> None:
    """``/h5md`` with ``version=[1, 1]``, ``author/name`` and ``creator/{name, version}``."""
    h5md = file.create_group("h5md")
    h5md.attrs["version"] = np.array(H5MD_VERSION, dtype=np.int32)
    h5md.create_group("author").attrs["name"] = author or _user_name()
    creator = h5md.create_group("creator")
    creator.attrs["name"] = "particlesim"
    creator.attrs["version"] = creator_version


def write_box(group: h5py.Group, dim: int) -> None:
    """``<group>/box`` with attrs ``dimension = D`` and ``boundary = ["none"] * D`` (open space)."""
    box = group.create_group("box")
    box.attrs["dimension"] = np.int32(dim)
    box.attrs.create("boundary", ["none"] * dim, dtype=h5py.string_dtype())


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    """The stored dtype of a field: float16/32/64 and integers as they are, others float32."""
    if (
        tensor.dtype in (torch.float16, torch.float32, torch.float64)
        or not tensor.is_floating_point()
    ):
        return np.dtype(str(tensor.dtype).removeprefix("torch."))
    return np.dtype(np.float32)


def _to_numpy(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy().astype(dtype, copy=False)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------- clocks


@dataclass
class _Element:
    """One time-dependent H5MD element: where it lives and how to read its current value."""

    path: str
    read: Callable[[Simulation, dict[str, Any]], np.ndarray]
    value: h5py.Dataset | None = None
    tail: tuple[int, ...] = ()  # shape of one frame
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float64))


def append_row(dataset: h5py.Dataset, n: int, data: Any, dtype: np.dtype) -> None:
    """Grow ``dataset`` to ``n + 1`` rows and write ``data`` (one frame) as row ``n``.

    Uses h5py's low-level API (``set_extent`` + one hyperslab write), about ten
    times cheaper per call than ``resize`` + ``__setitem__``.
    """
    row = np.asarray(data, dtype=dtype)  # (not ascontiguousarray: it makes 0-d arrays 1-d)
    if not row.flags.c_contiguous:
        row = row.copy(order="C")
    dsid = dataset.id
    dsid.set_extent((n + 1, *row.shape))
    file_space = dsid.get_space()
    file_space.select_hyperslab((n, *(0 for _ in row.shape)), (1, *row.shape))
    memory_space = h5py.h5s.create_simple((1, *row.shape))
    dsid.write(memory_space, file_space, row.reshape(1, *row.shape))


@dataclass
class _Clock:
    """A sampling clock: the ``step``/``time`` pair shared by the elements sampled together."""

    label: str
    trigger: Trigger
    initial: bool  # records frame 0 at open time
    elements: list[_Element] = field(default_factory=list)
    observables: list[str] = field(default_factory=list)
    step: h5py.Dataset | None = None
    time: h5py.Dataset | None = None
    frames: int = 0
    last_step: int = -1
    #: ``(frames, last_step)`` before a final frame was appended at the end of the run; what a
    #: checkpoint keeps, so that an extended run drops that frame and continues on the trigger.
    before_final: tuple[int, int] | None = None

    def checkpointed(self) -> dict[str, int]:
        """``frames`` and ``last_step`` as a checkpoint keeps them (a final frame not counted)."""
        frames, last_step = self.before_final or (self.frames, self.last_step)
        return {"frames": frames, "last_step": last_step}

    def due(self, step: int) -> bool:
        """Due at ``step``: the trigger fires, the step is new, and frame 0 only when initial."""
        if not self.elements or step <= self.last_step or (step == 0 and not self.initial):
            return False
        return self.trigger(step)


# --------------------------------------------------------------------------- the writer


class TrajectoryWriter(Writer):
    """Write the run as an H5MD 1.1 trajectory (``<out>/trajectory.h5``), readable while it grows.

    Records, each on its own clock (see the module docstring for the layout):

    * every learnable field of every particle group (``position [T, N, D]``,
      ``charge [T, N(, C)]``, ``bias [T, N]``, …) when ``trigger`` fires; frozen
      fields once, as time-independent datasets;
    * cheap observables (default ``loss``, ``lr``) every ``observables_every``
      steps;
    * expensive ``epoch_observables`` (default ``train_loss``,
      ``train_accuracy``, ``test_accuracy``) at the end of every epoch;
    * optionally every interaction's effective weight ``[M, N]`` every
      ``connectivity_every`` steps.

    With ``record_initial`` (default) frame 0 (particles, observables,
    connectivity; not the epoch observables) is written when the file is
    opened, before the first step, because where the particles start matters.
    With ``record_final`` (default) a completed run also ends every series with
    its final step when no trigger fired there (the state the run ended in); a
    checkpoint does not count that frame, so a run extended with ``--resume``
    drops it and continues as if it had never stopped.
    The file is flushed after every frame and never overwritten: an existing
    file is a :class:`~particlesim.errors.TrajectoryError`.

    Args:
        trigger: particle frames; an ``int`` is a step period (default every 10
            steps; a scenario's ``every`` defaults to ``"epoch"``).
        file: file name inside the run directory (an absolute path is kept).
        groups: particle groups to record (default all).
        fields: fields to record (default all; names missing from a group are skipped).
        observables: observables recorded every ``observables_every`` steps.
        observables_every: a step period or ``"epoch"``.
        epoch_observables: observables recorded at the end of every epoch.
        connectivity_every: a step period or ``"epoch"`` for effective weights (``None``: off).
        compression: ``"none"``, ``"gzip"`` or ``"lzf"`` for the value datasets.
        record_initial: write frame 0 when the run starts at step 0.
        record_final: end each series with the final step of a completed run.

    Example:
        >>> writer = TrajectoryWriter(trigger=100, observables=["loss"], connectivity_every="epoch")
        >>> writer.observables
        ('loss', 'train_loss', 'train_accuracy', 'test_accuracy')
    """

    name = "trajectory"
    default_observables = ("loss", "lr")
    default_epoch_observables = ("train_loss", "train_accuracy", "test_accuracy")

    def __init__(
        self,
        *,
        trigger: Trigger | int | None = None,
        file: str = "trajectory.h5",
        groups: list[str] | None = None,
        fields: list[str] | None = None,
        observables: list[str] | None = None,
        observables_every: int | str = 10,
        epoch_observables: list[str] | None = None,
        connectivity_every: int | str | None = None,
        compression: Compression = "none",
        record_initial: bool = True,
        record_final: bool = True,
    ) -> None:
        super().__init__(trigger=Periodic(10) if trigger is None else as_trigger(trigger))
        if not file:
            raise OptionError("file", "must be a file name, got an empty string")
        if compression not in ("none", "gzip", "lzf"):
            raise OptionError(
                "compression", f"expected one of 'none', 'gzip', 'lzf', got {compression!r}"
            )
        self.file = file
        self.groups = None if groups is None else list(groups)
        self.fields = None if fields is None else list(fields)
        self.step_observables = tuple(
            dict.fromkeys(self.default_observables if observables is None else observables)
        )
        self.epoch_observables = tuple(
            dict.fromkeys(
                self.default_epoch_observables if epoch_observables is None else epoch_observables
            )
        )
        twice = [n for n in self.epoch_observables if n in self.step_observables]
        if twice:
            raise OptionError(
                "epoch_observables",
                f"{twice[0]!r} is also in observables; record each observable on one clock",
            )
        self.observables_trigger = _period("observables_every", observables_every)
        self.connectivity_trigger = (
            None
            if connectivity_every is None
            else _period("connectivity_every", connectivity_every)
        )
        self.compression: Compression = compression
        self.record_initial = record_initial
        self.record_final = record_final
        #: Every observable this writer needs (the simulation checks the names).
        self.observables = self.step_observables + self.epoch_observables
        self.observables_defaulted = observables is None
        self.path: Path | None = None
        self._file: h5py.File | None = None
        self._clocks: list[_Clock] = []
        self._finalizer: weakref.finalize | None = None
        self._binding = False  # True while resume() binds to an existing file's datasets
        self._simulation: weakref.ref[Simulation] | None = None  # for the final frame

    # -- the writer contract -----------------------------------------------------------

    def is_due(self, step: int) -> bool:
        return any(clock.due(step) for clock in self._clocks)

    def wants(self, step: int) -> tuple[str, ...] | None:
        """``None`` when no clock is due at ``step``; else the observables of the due clocks."""
        due = [clock for clock in self._clocks if clock.due(step)]
        if not due:
            return None
        return tuple(dict.fromkeys(name for clock in due for name in clock.observables))

    def describe_next(self, simulation: Simulation) -> Request:
        step = simulation.step
        for ahead in range(0, simulation.total_steps - step + 1):
            wanted = self.wants(step + ahead)
            if wanted is not None:
                return Request(ahead, wanted)
        return Request(simulation.total_steps - step + 1, ())

    def include_defaults(self, names: tuple[str, ...]) -> None:
        """The system's own observables join the step clock when no list was given."""
        if self.observables_defaulted:
            extra = tuple(n for n in names if n not in self.observables)
            self.step_observables = (*self.step_observables, *extra)
            self.observables = self.step_observables + self.epoch_observables

    def open(self, simulation: Simulation, out_dir: Path | None) -> None:
        """Create the file and every dataset (layout fixed), switch to SWMR, write frame 0."""
        path = Path(self.file) if out_dir is None else Path(out_dir) / self.file
        if path.exists():
            raise TrajectoryError(
                f"{path}: already exists; the trajectory writer never overwrites a file "
                "(remove it, choose another 'file', or run with --overwrite)"
            )
        self._check_selection(simulation)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clocks = self._plan_clocks(simulation)
        self._simulation = weakref.ref(simulation)
        try:
            file = h5py.File(path, "w-", libver=LIBVER, track_order=True)
        except OSError as exc:
            raise TrajectoryError(f"{path}: cannot create the trajectory file: {exc}") from None
        self._file = file
        self._finalizer = weakref.finalize(self, _close_file, file)
        try:
            self._create_layout(simulation, file)
            file.swmr_mode = True
        except BaseException:
            self.close("failed")
            path.unlink(missing_ok=True)  # no frame was written: leave no half-made file
            raise
        if simulation.step == 0:
            initial = [clock for clock in self._clocks if clock.initial and clock.due(0)]
            if initial:
                self._write(simulation, 0, initial, None)

    def state_dict(self) -> dict[str, Any]:
        """The file and each clock's frame count and last step (what a checkpoint keeps)."""
        return {
            "file": None if self.path is None else str(self.path),
            "clocks": [{"label": c.label, **c.checkpointed()} for c in self._clocks],
        }

    def resume(self, simulation: Simulation, out_dir: Path | None, state: dict[str, Any]) -> None:
        """Reopen the trajectory of a checkpointed run, trim it to ``state``, append from there.

        Raises :class:`TrajectoryError` when the file is missing, has fewer frames than
        the checkpoint recorded, or was laid out differently from this run.
        """
        path = Path(self.file) if out_dir is None else Path(out_dir) / self.file
        if not path.is_file():
            raise TrajectoryError(
                f"{path}: missing; the checkpoint expects the trajectory of the run it continues"
            )
        self._check_selection(simulation)
        self.path = path
        self._clocks = self._plan_clocks(simulation)
        self._simulation = weakref.ref(simulation)
        try:
            clear_status_flags(path)
            file = h5py.File(path, "r+", libver=LIBVER)
        except OSError as exc:
            raise TrajectoryError(f"{path}: cannot reopen the trajectory: {exc}") from None
        self._file = file
        self._finalizer = weakref.finalize(self, _close_file, file)
        self._binding = True
        try:
            self._create_layout(simulation, file)
            self._trim(state)
            file.flush()
            file.swmr_mode = True
        except TrajectoryError:
            self.close("failed")
            raise
        except (KeyError, ValueError, TypeError, OSError) as exc:
            self.close("failed")
            raise TrajectoryError(
                f"{path}: does not have the layout of the run being resumed: {exc}"
            ) from None
        finally:
            self._binding = False

    def _trim(self, state: dict[str, Any]) -> None:
        """Shrink every time series to the checkpoint's frame count (clock by clock)."""
        saved = list(state.get("clocks", []))
        labels = [clock.label for clock in self._clocks]
        if [c.get("label") for c in saved] != labels:
            raise TrajectoryError(
                f"{self.path}: the checkpoint's clocks {[c.get('label') for c in saved]} "
                f"differ from this run's {labels}"
            )
        for clock, entry in zip(self._clocks, saved, strict=True):
            frames, last_step = int(entry["frames"]), int(entry["last_step"])
            if clock.step is None or clock.time is None:  # a clock with nothing to record
                continue
            series = [clock.step, clock.time, *(e.value for e in clock.elements)]
            have = min(int(d.shape[0]) for d in series if d is not None)
            if have < frames:
                raise TrajectoryError(
                    f"{self.path}: the {clock.label} series has {have} frames, but the "
                    f"checkpoint recorded {frames}; the file does not belong to this checkpoint"
                )
            if frames and int(clock.step[frames - 1]) != last_step:
                raise TrajectoryError(
                    f"{self.path}: frame {frames - 1} of the {clock.label} series is step "
                    f"{int(clock.step[frames - 1])}, the checkpoint says {last_step}"
                )
            for dataset in series:
                assert dataset is not None
                if dataset.shape[0] != frames:
                    dataset.resize(frames, axis=0)
            clock.frames = frames
            clock.last_step = last_step

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        due = [clock for clock in self._clocks if clock.due(step)]
        if due:
            self._write(simulation, step, due, values)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self, status: str) -> None:
        """End a completed run's series with its final step (``record_final``), close the file."""
        simulation = None if self._simulation is None else self._simulation()
        final = status == "completed" and self.record_final and self._file is not None
        try:
            if final and simulation is not None:
                self._write_final(simulation)
        finally:
            if self._finalizer is not None:
                self._finalizer()  # flushes and closes the file, once
                self._finalizer = None
            self._file = None

    def _write_final(self, simulation: Simulation) -> None:
        """One frame at the final step on every clock that did not fire there."""
        step = simulation.step
        late = [c for c in self._clocks if c.elements and c.last_step < step]
        for clock in late:  # first: a checkpoint taken after this never counts the frame
            clock.before_final = (clock.frames, clock.last_step)
        if late:
            self._write(simulation, step, late, None)

    # -- layout ------------------------------------------------------------------------

    def _check_selection(self, simulation: Simulation) -> None:
        """Chosen groups, fields and observables must exist (checked before any file is made)."""
        system = simulation.system
        names = list(system.groups)
        chosen = names if self.groups is None else self.groups
        for name in chosen:
            if name not in names:
                raise OptionError(
                    "groups",
                    f"writer 'trajectory': unknown group {name!r}; groups: {', '.join(names)}",
                )
        if self.fields is not None:
            present = {f for g in chosen for f in system.groups[g].field_names()}
            for name in self.fields:
                if name not in present:
                    raise OptionError(
                        "fields",
                        f"writer 'trajectory': no chosen group has a field {name!r}; "
                        f"fields: {', '.join(sorted(present))}",
                    )
        for name in self.observables:
            if name not in simulation.observables:
                known = ", ".join(sorted(simulation.observables))
                raise OptionError(
                    "observables",
                    f"writer 'trajectory': unknown observable {name!r}; known: {known}",
                )

    def _plan_clocks(self, simulation: Simulation) -> list[_Clock]:
        """The clocks of this run, equal triggers merged (they then share ``step``/``time``)."""
        per_epoch = simulation.steps_per_epoch
        clocks: list[_Clock] = []

        def clock(label: str, trigger: Trigger, initial: bool) -> _Clock:
            trigger = bind_epoch(trigger, per_epoch)
            initial = initial and trigger(0)  # frame 0 only where the trigger fires at 0
            for existing in clocks:
                if existing.trigger == trigger and existing.initial == initial:
                    return existing
            clocks.append(_Clock(label, trigger, initial))
            return clocks[-1]

        self._particle_clock = clock("particles", self.trigger, self.record_initial)
        self._observable_clock = clock("observables", self.observables_trigger, self.record_initial)
        self._epoch_clock = clock("epoch", OnEpoch(), False)
        self._connectivity_clock = (
            None
            if self.connectivity_trigger is None
            else clock("connectivity", self.connectivity_trigger, self.record_initial)
        )
        self._observable_clock.observables.extend(self.step_observables)
        self._epoch_clock.observables.extend(self.epoch_observables)
        return clocks

    def _element(
        self,
        clock: _Clock,
        parent: h5py.Group,
        name: str,
        tail: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        read: Callable[[Simulation, dict[str, Any]], np.ndarray],
    ) -> h5py.Group:
        """Create ``parent/name/{step, time, value [0, *tail]}``; step/time shared per clock.

        While resuming, bind to the existing datasets instead (``tail=None``: the file's).
        """
        if self._binding:
            return self._bind_element(clock, parent, name, tail, dtype, chunks, read)
        assert tail is not None
        group = parent.create_group(name, track_order=True)
        if clock.step is None:
            clock.step = group.create_dataset(
                "step", shape=(0,), maxshape=(None,), dtype=np.int64,
                chunks=(SCALAR_FRAMES_PER_CHUNK,),
            )  # fmt: skip
            clock.step.attrs[SERIES_ATTR] = clock.label
            clock.time = group.create_dataset(
                "time", shape=(0,), maxshape=(None,), dtype=np.float64,
                chunks=(SCALAR_FRAMES_PER_CHUNK,),
            )  # fmt: skip
        else:
            group["step"] = clock.step  # hard links: one step/time pair per clock
            group["time"] = clock.time
        value = group.create_dataset(
            "value",
            shape=(0, *tail),
            maxshape=(None, *tail),
            dtype=dtype,
            chunks=chunks,
            **compression_options(self.compression),
            **chunk_cache((0, *tail), chunks, dtype.itemsize),
        )
        clock.elements.append(_Element(group.name, read, value, tuple(tail), dtype))
        return group

    def _bind_element(
        self,
        clock: _Clock,
        parent: h5py.Group,
        name: str,
        tail: tuple[int, ...] | None,
        dtype: np.dtype,
        chunks: tuple[int, ...],
        read: Callable[[Simulation, dict[str, Any]], np.ndarray],
    ) -> h5py.Group:
        """Attach an element to the existing ``parent/name/{step, time, value}`` datasets."""
        group = parent[name]
        step, time = group["step"], group["time"]
        if clock.step is None:
            clock.step, clock.time = step, time
        elif _address(step) != _address(clock.step):
            raise TrajectoryError(
                f"{self.path}: {group.name}/step is not the {clock.label} clock's step "
                "(the file was written with other writer options)"
            )
        found = group["value"]
        if tail is None:
            tail = tuple(found.shape[1:])
        if tuple(found.shape[1:]) != tuple(tail) or found.dtype != dtype:
            raise TrajectoryError(
                f"{self.path}: {found.name} holds {list(found.shape[1:])} {found.dtype} "
                f"frames, this run writes {list(tail)} {dtype}"
            )
        cache = chunk_cache((0, *tail), found.chunks or chunks, dtype.itemsize)
        access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        access.set_chunk_cache(cache["rdcc_nslots"], cache["rdcc_nbytes"], 0.75)
        value = h5py.Dataset(h5py.h5d.open(group.id, b"value", access))
        clock.elements.append(_Element(group.name, read, value, tuple(tail), dtype))
        return group

    def _node(self, parent: h5py.Group, name: str) -> h5py.Group:
        """``parent/name``: created, or (while resuming) the existing group."""
        if self._binding:
            return parent[name]
        return parent.create_group(name, track_order=True)

    def _create_layout(self, simulation: Simulation, file: h5py.File) -> None:
        from particlesim import __version__

        if not self._binding:
            write_h5md_header(file, creator_version=__version__)
            self._write_parameters(simulation, file, __version__)
        system = simulation.system
        chosen = list(system.groups) if self.groups is None else self.groups
        particles = self._node(file, "particles")
        for name in chosen:
            group = system.groups[name]
            node = self._node(particles, name)
            if not self._binding:
                write_box(node, group.dim)
            for field_name in group.field_names():
                if self.fields is not None and field_name not in self.fields:
                    continue
                tensor = group.field(field_name)
                dtype = _numpy_dtype(tensor)
                if not group.is_evolving(field_name):
                    if not self._binding:
                        node.create_dataset(field_name, data=_to_numpy(tensor, dtype))
                    continue
                tail = tuple(tensor.shape)
                self._element(
                    self._particle_clock, node, field_name, tail, dtype, value_chunks(tail),
                    _field_reader(group, field_name, dtype),
                )  # fmt: skip
        self._create_observables(simulation, file)
        if self._connectivity_clock is not None and len(system.interactions):
            self._create_connectivity(simulation, file)

    def _create_observables(self, simulation: Simulation, file: h5py.File) -> None:
        names = [*self.step_observables, *self.epoch_observables]
        if not names:
            return
        group = self._node(file, "observables")
        for clock, chosen in (
            (self._observable_clock, self.step_observables),
            (self._epoch_clock, self.epoch_observables),
        ):
            for name in chosen:
                observable = simulation.observables[name]
                tail: tuple[int, ...] | None = ()
                if observable.category != "scalar":
                    # the shape of a vector observable is known only by computing it once
                    # (or, while resuming, from the file)
                    tail = None if self._binding else np.shape(simulation.measure([name])[name])
                element = self._element(
                    clock, group, name, tail, np.dtype(np.float64), value_chunks(tail or ()),
                    _observable_reader(name),
                )  # fmt: skip
                if self._binding:
                    continue
                if observable.unit:
                    element["value"].attrs["unit"] = observable.unit
                if observable.description:
                    element.attrs["description"] = observable.description

    def _create_connectivity(self, simulation: Simulation, file: h5py.File) -> None:
        system = simulation.system
        connectivity = self._node(file, "connectivity")
        assert self._connectivity_clock is not None
        used: set[str] = set()
        for interaction in system.interactions:
            if not getattr(interaction, "has_effective_weight", True):
                continue  # e.g. a plugin's plain module: no weight matrix to record
            source = system.groups[interaction.source]
            target = system.groups[interaction.target]
            name = base = f"{interaction.source}_to_{interaction.target}"
            suffix = 2
            while name in used:
                name, suffix = f"{base}_{suffix}", suffix + 1
            used.add(name)
            node = self._node(connectivity, name)
            if not self._binding:
                node.attrs["source"] = interaction.source
                node.attrs["target"] = interaction.target
                node.attrs["kind"] = type(interaction).name or type(interaction).__name__
            with torch.no_grad():
                weight = interaction.effective_weight(source, target)
            dtype = _numpy_dtype(weight)
            tail = (int(weight.shape[0]), int(weight.shape[1]))
            self._element(
                self._connectivity_clock, node, "weight", tail, dtype, connectivity_chunks(tail),
                _weight_reader(interaction, source, target, dtype),
            )  # fmt: skip

    def _write_parameters(self, simulation: Simulation, file: h5py.File, version: str) -> None:
        """``/parameters``: scenario TOML (string dataset), seed, data source, versions, plugins."""
        parameters = file.create_group("parameters", track_order=True)
        metadata = dict(simulation.metadata)
        toml_text = metadata.pop("scenario_toml", None)
        if toml_text is not None:
            parameters.create_dataset("scenario_toml", data=toml_text, dtype=h5py.string_dtype())
        versions = dict(metadata.pop("versions", None) or {})
        versions.setdefault("particlesim", version)
        versions.setdefault("torch", torch.__version__)
        versions.setdefault("python", platform.python_version())
        versions.update({"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version})
        metadata["versions"] = versions
        metadata.setdefault("plugins", [])
        for key, value in metadata.items():
            if isinstance(value, bool | int | float | str):
                parameters.attrs[key] = value
            else:  # dicts, lists, None: JSON text
                parameters.attrs[key] = _json(value)
        parameters.attrs["trajectory_writer"] = _json(
            {
                "trigger": repr(self._particle_clock.trigger),
                "observables": list(self.step_observables),
                "observables_every": repr(self._observable_clock.trigger),
                "epoch_observables": list(self.epoch_observables),
                "connectivity_every": None
                if self._connectivity_clock is None
                else repr(self._connectivity_clock.trigger),
                "compression": self.compression,
                "record_initial": self.record_initial,
            }
        )

    # -- frames ------------------------------------------------------------------------

    def _write(
        self,
        simulation: Simulation,
        step: int,
        clocks: list[_Clock],
        values: dict[str, Any] | None,
    ) -> None:
        """Append one frame to each clock (values first, ``step`` last), then flush."""
        if self._file is None:
            raise TrajectoryError(f"{self.path}: the trajectory writer is not open")
        if values is None:  # frame 0 at open time: measure what the clocks record
            values = simulation.measure(
                list(dict.fromkeys(n for clock in clocks for n in clock.observables))
            )
        for clock in clocks:
            n = clock.frames
            for element in clock.elements:
                data = element.read(simulation, values)
                if data.shape != element.tail:
                    raise TrajectoryError(
                        f"{self.path}: step {step}: {element.path} has shape {list(data.shape)}, "
                        f"but the file was laid out for {list(element.tail)} at frame 0"
                    )
                assert element.value is not None
                append_row(element.value, n, data, element.dtype)
            assert clock.step is not None and clock.time is not None
            append_row(clock.time, n, np.float64(simulation.time), np.dtype(np.float64))
            append_row(clock.step, n, np.int64(step), np.dtype(np.int64))
            clock.frames = n + 1
            clock.last_step = step
        self._file.flush()


def _address(dataset: h5py.Dataset) -> int:
    """Identity of an HDF5 object: hard links to one dataset share it."""
    return h5py.h5o.get_info(dataset.id).addr


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: HDF5's metadata checksum (``H5_checksum_lookup3``)."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & mask
    i = 0
    while length > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & mask
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & mask
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & mask
        a = (a - c) & mask ^ rot(c, 4)
        c = (c + b) & mask
        b = (b - a) & mask ^ rot(a, 6)
        a = (a + c) & mask
        c = (c - b) & mask ^ rot(b, 8)
        b = (b + a) & mask
        a = (a - c) & mask ^ rot(c, 16)
        c = (c + b) & mask
        b = (b - a) & mask ^ rot(a, 19)
        a = (a + c) & mask
        c = (c - b) & mask ^ rot(b, 4)
        b = (b + a) & mask
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i : i + length].ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c = (c ^ b) - rot(b, 14) & mask
    a = (a ^ c) - rot(c, 11) & mask
    b = (b ^ a) - rot(a, 25) & mask
    c = (c ^ b) - rot(b, 16) & mask
    a = (a ^ c) - rot(c, 4) & mask
    b = (b ^ a) - rot(a, 14) & mask
    c = (c ^ b) - rot(b, 24) & mask
    return c


def clear_status_flags(path: str | os.PathLike[str]) -> bool:
    """Clear the "open for (SWMR) writing" flags a killed writer left; True if any were set.

    HDF5 refuses to reopen such a file for writing (h5py#1807; ``h5clear -s``
    fixes it). This does the same for superblock versions 2 and 3: it sets the
    consistency-flags byte to 0 and rewrites the superblock checksum. The
    checksum is verified first, so a file that is not what it seems is left
    alone. Only call it when no process is writing the file (the CLI holds a
    lock on the run directory).
    """
    with open(path, "r+b") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
            return False
        size_of_offsets = head[9]
        if size_of_offsets not in (2, 4, 8, 16):
            return False
        end = 12 + 4 * size_of_offsets
        handle.seek(0)
        block = handle.read(end + 4)
        if len(block) < end + 4 or block[11] == 0:
            return False
        if int.from_bytes(block[end:], "little") != _lookup3(block[:end]):
            return False
        cleared = bytearray(block[:end])
        cleared[11] = 0
        handle.seek(0)
        handle.write(bytes(cleared) + _lookup3(bytes(cleared)).to_bytes(4, "little"))
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _period(key: str, value: int | str) -> Trigger:
    """``int`` → :class:`Periodic`, ``"epoch"`` → :class:`OnEpoch` (:func:`parse_period`)."""
    trigger = parse_period(value, key)
    assert trigger is not None
    return trigger


def _field_reader(group: Any, name: str, dtype: np.dtype) -> Callable[..., np.ndarray]:
    def read(simulation: Simulation, values: dict[str, Any]) -> np.ndarray:
        return _to_numpy(group.field(name), dtype)

    return read


def _observable_reader(name: str) -> Callable[..., np.ndarray]:
    def read(simulation: Simulation, values: dict[str, Any]) -> np.ndarray:
        value = values[name]
        return np.asarray(np.nan if value is None else value, dtype=np.float64)

    return read


def _weight_reader(interaction: Any, source: Any, target: Any, dtype: np.dtype) -> Callable:
    def read(simulation: Simulation, values: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            return _to_numpy(interaction.effective_weight(source, target), dtype)

    return read


def _close_file(file: h5py.File) -> None:
    """Flush and close (also run by ``weakref.finalize`` at exit if :meth:`close` was not)."""
    if file.id.valid:
        file.flush()
        file.close()


def write_synthetic(
    path: str | Path,
    *,
    frames: int,
    particles: int,
    dim: int = 3,
    group: str = "hidden",
    fill: bool = True,
    block: int = 1024,
    seed: int = 0,
) -> Path:
    """A trajectory in the writer's layout holding float32 random-walk positions (for benchmarks).

    Writes ``/particles/<group>/position/{step, time, value [frames, particles, dim]}``
    (plus ``/h5md`` and ``box``) in blocks of ``block`` frames, with the writer's
    chunk shape. ``fill=False`` writes zeros instead, as gzip chunks written
    directly (every chunk allocated, a few bytes each: a file of any declared size
    in a moment and a few MB), for tests of lazy opening and of bounded memory.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w-", libver=LIBVER, track_order=True) as file:
        from particlesim import __version__

        write_h5md_header(file, creator_version=__version__, author="synthetic")
        node = file.create_group("particles", track_order=True).create_group(group)
        write_box(node, dim)
        element = node.create_group("position")
        steps = np.arange(frames, dtype=np.int64)
        step = element.create_dataset(
            "step", data=steps, maxshape=(None,), chunks=(SCALAR_FRAMES_PER_CHUNK,)
        )
        step.attrs[SERIES_ATTR] = "particles"
        element.create_dataset(
            "time", data=steps * 0.01, maxshape=(None,), chunks=(SCALAR_FRAMES_PER_CHUNK,)
        )
        tail = (particles, dim)
        chunks = value_chunks(tail)
        value = element.create_dataset(
            "value",
            shape=(frames, *tail),
            maxshape=(None, *tail),
            dtype=np.float32,
            chunks=chunks,
            **({} if fill else {"compression": "gzip"}),
        )
        if not fill:
            zeros = zlib.compress(bytes(math.prod(chunks) * 4))
            starts = [range(0, n, c) for n, c in zip(value.shape, chunks, strict=True)]
            for offset in itertools.product(*starts):
                value.id.write_direct_chunk(offset, zeros)
        else:
            current = rng.standard_normal(tail).astype(np.float32)
            for start in range(0, frames, block):
                count = min(block, frames - start)
                walk = rng.standard_normal((count, *tail), dtype=np.float32) * 0.01
                values = current + np.cumsum(walk, axis=0)
                value[start : start + count] = values
                current = values[-1]
    return path
