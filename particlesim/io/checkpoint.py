"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is one ``torch.save`` file of plain containers and tensors, read
back with ``torch.load(weights_only=True)`` (no pickled objects, so a
checkpoint from elsewhere cannot run code)::

    format            "particlesim-checkpoint"
    version           CHECKPOINT_VERSION
    versions          particlesim, torch, python that wrote it
    simulation        Simulation.state_dict(): system tensors, integrator (optimiser,
                      step-size scale, noise generator), step, time, epoch running sums,
                      data generators, data-loader position, wall time, each writer's
                      progress (trajectory frames per clock, metrics rows and bytes)
    rng               process RNGs: torch CPU, CUDA (every device), numpy, Python random
    extra             what the caller adds: scenario TOML text and fingerprint, status

It is written to a temporary file in the same directory, flushed and
``fsync``-ed, then renamed over the old one (``os.replace``), so a run killed
at any moment leaves either the previous checkpoint or the new one, never a
half-written file.

**Exact resume.** On the CPU, a run continued from a checkpoint produces
bit-identical parameters and trajectory frames to one that was never stopped
(the test suite kills a run with ``SIGKILL`` and compares). Across devices,
library versions or world sizes the continuation is correct but only equal up
to floating-point summation order.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import random
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from particlesim.core.triggers import OnEpoch, Trigger, as_trigger
from particlesim.core.writers import Writer
from particlesim.errors import CheckpointError

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation

FORMAT = "particlesim-checkpoint"
#: Layout version of the checkpoint file (bumped when it changes incompatibly).
CHECKPOINT_VERSION = 1
#: File name of the periodic and final checkpoint inside a run directory.
CHECKPOINT_FILE = "checkpoint.pt"
#: File name of the last good state saved when a run diverges.
DIVERGED_FILE = "diverged.pt"
#: Lock file of a run directory (held while a process writes into it).
LOCK_FILE = ".particlesim.lock"
#: Keys of the resolved scenario that a resumed run may change (they do not alter the path
#: of the run up to the checkpoint).
RESUMABLE_CHANGES = (
    ("run", "epochs"),
    ("run", "steps"),
    ("run", "checkpoint_every"),
    ("run", "threads"),
    ("scenario", "device"),
)


# --------------------------------------------------------------------------- RNG states


def rng_states() -> dict[str, Any]:
    """The process-wide RNG states as tensors and lists (``weights_only``-loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states` (CUDA states for as many devices as both runs have)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for device, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


# --------------------------------------------------------------------------- fingerprint


def _resumable_view(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved scenario as plain JSON values, without what a resume may change."""
    clean = json.loads(json.dumps(resolved, sort_keys=True, default=str))
    for section, key in RESUMABLE_CHANGES:
        if isinstance(clean.get(section), dict):
            clean[section].pop(key, None)
    return clean


def scenario_fingerprint(resolved: dict[str, Any]) -> str:
    """SHA-256 of a resolved scenario, ignoring what a resume may change (run length, device).

    Two scenarios with the same fingerprint take the same path up to any step,
    so a checkpoint of one continues the other.
    """
    text = json.dumps(_resumable_view(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scenario_differences(
    saved: dict[str, Any], current: dict[str, Any], most: int = 5
) -> list[str]:
    """Key paths where two resolved scenarios differ, beyond what a resume may change.

    Both sides are compared as their TOML would read back (``None`` values dropped, tuples
    as lists), so a scenario read from a run directory's ``scenario.toml`` matches the plan
    it was written from. At most ``most`` paths, in document order.
    """
    from particlesim.scenario.options import without_none

    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(found) >= most or a == b:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in [*a, *(k for k in b if k not in a)]:
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        else:
            found.append(path or "(the whole scenario)")

    walk(without_none(_resumable_view(saved)), without_none(_resumable_view(current)), "")
    return found


# --------------------------------------------------------------------------- files


def atomic_save(payload: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is a normal file
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)
    return path


def checkpoint_payload(
    simulation: Simulation,
    *,
    state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes (``state``: a saved state instead of the current)."""
    from particlesim import __version__

    return {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "versions": {
            "particlesim": str(__version__),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "simulation": simulation.state_dict() if state is None else state,
        "rng": rng_states(),
        "extra": dict(extra or {}),
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    simulation: Simulation,
    *,
    state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``simulation`` (or of a saved ``state``) atomically to ``path``.

    Example:
        >>> save_checkpoint("run/checkpoint.pt", simulation)  # doctest: +SKIP
        >>> load_checkpoint("run/checkpoint.pt", simulation)["simulation"]["step"]  # doctest: +SKIP
        120
    """
    payload = checkpoint_payload(simulation, state=state, extra=extra)
    try:
        return atomic_save(payload, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the checkpoint: {exc}") from None


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint file (``weights_only=True``); raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if isinstance(exc, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"{path}: holds a pickled {found.group(1)} object, which only an unsafe load "
                "could read (it could run code); not a particlesim checkpoint"
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable particlesim checkpoint ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a particlesim checkpoint (no {FORMAT!r} marker)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r}; this particlesim reads "
            f"version {CHECKPOINT_VERSION}"
        )
    for key in ("simulation", "rng", "extra"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: damaged checkpoint (no {key!r} table)")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    simulation: Simulation | None = None,
    *,
    fingerprint: str | None = None,
    resolved: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint and (when given) restore ``simulation`` and the process RNGs.

    ``fingerprint`` (a :func:`scenario_fingerprint`) must match the one saved
    in the checkpoint: a checkpoint of another scenario is a clear error, which names
    the differing keys when ``resolved`` (the current resolved scenario) is given.
    Returns the payload.
    """
    payload = read_checkpoint(path)
    saved = payload["extra"].get("fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        differ = " (its settings differ beyond run length and device)"
        saved_toml = payload["extra"].get("scenario_toml")
        if resolved is not None and isinstance(saved_toml, str):
            import tomllib

            try:
                keys = scenario_differences(tomllib.loads(saved_toml), resolved)
            except (tomllib.TOMLDecodeError, RecursionError):  # a damaged or crafted file
                keys = []
            if keys:
                differ = f" ({', '.join(keys)} changed)"
        raise CheckpointError(
            f"{path}: the checkpoint belongs to another scenario{differ}; "
            "resume with the scenario it was made from (the run directory's scenario.toml)"
        )
    if simulation is not None:
        try:
            simulation.load_state_dict(payload["simulation"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if restore_rng:
            try:
                set_rng_states(payload["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: damaged RNG states ({exc})") from None
    return payload


@contextmanager
def run_lock(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on a run directory while writing into it.

    A second process (a resume started while the run still lives) gets a
    :class:`CheckpointError` naming the holder's pid. The lock is an
    ``flock``, which the system releases when its holder dies, even by
    ``SIGKILL``, so a killed run never leaves a stale lock. Where ``fcntl`` is
    missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(directory)
        return
    path = Path(directory) / LOCK_FILE
    handle = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            raise CheckpointError(
                f"{directory}: in use by another particlesim process"
                f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


# --------------------------------------------------------------------------- the writer


def remove_partial_saves(path: Path) -> list[Path]:
    """Delete what a writer killed mid-save left beside ``path``: :func:`atomic_save`'s
    temporaries (``.NAME.*.tmp``), never renamed over ``path`` and so never read.

    Call it only while holding the run directory's lock, so no live writer owns them.
    """
    removed = []
    for partial in path.parent.glob(f".{path.name}.*.tmp"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


class CheckpointWriter(Writer):
    """Save ``<out>/checkpoint.pt`` when ``trigger`` fires and at every clean stop.

    It reports after every other writer (``order = 100``), so the frame counts
    it records include the current step. At a clean stop (completed, or
    interrupted at a step boundary) it saves once more; a run that failed keeps
    its last periodic checkpoint.

    Args:
        trigger: when to save: an ``int`` step period, ``"epoch"`` (the default) or a
            :class:`Trigger`; ``None``: only at a clean stop.
        file: file name in the run directory (an absolute path is kept).
        extra: saved beside the state (scenario TOML, fingerprint…).
    """

    name = "checkpoint"
    order = 100

    def __init__(
        self,
        *,
        trigger: Trigger | int | str | None = "epoch",
        file: str = CHECKPOINT_FILE,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            trigger=OnEpoch() if trigger is None else as_trigger(trigger),
            observables=[],
        )
        self.periodic = trigger is not None
        self.file = file
        self.extra = dict(extra or {})
        self.path: Path | None = None
        self.saved_steps: list[int] = []
        self._simulation: Simulation | None = None

    def open(self, simulation: Simulation, out_dir: Path | None) -> None:
        self.path = Path(self.file) if out_dir is None else Path(out_dir) / self.file
        self._simulation = simulation
        remove_partial_saves(self.path)

    def wants(self, step: int) -> tuple[str, ...] | None:
        return () if self.periodic and step > 0 and self.trigger(step) else None

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        self.save(simulation, "running")

    def save(self, simulation: Simulation, status: str) -> Path:
        """Write the checkpoint now (``status`` is recorded: running, completed, interrupted)."""
        assert self.path is not None, "CheckpointWriter.open() was not called"
        path = save_checkpoint(
            self.path, simulation, extra={**self.extra, "status": status, "step": simulation.step}
        )
        self.saved_steps.append(simulation.step)
        return path

    def close(self, status: str) -> None:
        simulation = self._simulation
        if (
            simulation is not None
            and status in ("completed", "interrupted")
            and simulation.at_step_boundary
        ):
            self.save(simulation, status)
        self._simulation = None
