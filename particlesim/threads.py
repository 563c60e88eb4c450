"""Sharing a machine's cores between the particlesim runs on it.

PyTorch starts as many intra-op threads as the machine has cores, in every process. When
several runs share the cores (a sweep's local workers, a busy lab node, CI), their threads'
spinning barriers collapse: three runs of the main scenario on two cores each took 28× as
long as one alone, where sharing predicts 3×. A run therefore takes its thread count from

1. ``[run] threads`` or ``OMP_NUM_THREADS`` when given (then fixed for the run);
2. otherwise the cores this process may use (:func:`available_cores`: its CPU affinity and
   any cgroup CPU quota) divided by the particlesim runs alive on the machine, counted
   through a registry of locked files in the temporary directory
   (``particlesim-<uid>/cpu/<pid>``). The count is taken again every second or so of the
   run, so runs that start or end later move the others' thread counts;
3. and at most one thread for a network too small for more to help
   (:func:`useful_threads`: fewer than :data:`SMALL_NETWORK_PAIRS` coupled pairs).

A killed run's registry file is unlocked by the system, and the next count removes it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ThreadShare", "available_cores", "fixed_threads", "run_sharing", "useful_threads"]

#: Seconds between two counts of the runs sharing the machine.
RECOUNT_S = 1.0

#: Coupled pairs (Σ source × target over the interactions, or weights) below which a
#: second thread does not speed a step up. Measured (2 cores, torch 2.13, fwd + bwd +
#: Adam, batch 16 and 128; 1-thread / 2-thread time): 784-16-10 (12.7k pairs) 1.04-1.06,
#: 64-32-10 (2.4k) 0.97, 16-8-3 0.97-0.98; 784-64-10 (50.8k) 1.22, 784-256-10 1.45.
SMALL_NETWORK_PAIRS = 16_384

#: The process this module was imported in. A child forked from it (multiprocessing's
#: "fork") keeps its parent's OpenMP pool, which must not be resized there: GNU OpenMP can
#: hang. Such a child keeps the thread count it inherited.
_IMPORTED_IN = os.getpid()


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs a cgroup quota allows (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def fixed_threads(configured: int | None) -> int | None:
    """The thread count a user fixed: ``[run] threads``, else ``OMP_NUM_THREADS``; or None."""
    if configured is not None:
        return int(configured)
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return None


def _registry() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"particlesim-{uid}" / "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def useful_threads(system: Any) -> int | None:
    """1 for a network too small for a second thread to help, else None (no cap).

    Its size is the number of coupled pairs: Σ source size × target size over the
    system's interactions (what a kernel evaluates), or its weights where larger.
    """
    sizes = {name: int(group.size) for name, group in getattr(system, "groups", {}).items()}
    pairs = sum(
        sizes.get(i.source, 0) * sizes.get(i.target, 0) for i in getattr(system, "interactions", ())
    )
    try:
        weights = sum(p.numel() for p in system.parameters())
    except AttributeError:
        weights = 0
    return 1 if max(pairs, weights) < SMALL_NETWORK_PAIRS else None


class ThreadShare:
    """Holds this run's place in the machine's registry and sets torch's thread count.

    Use as a context manager around a run and call :meth:`update` often (it is cheap
    between recounts). With a fixed count, or where ``fcntl`` is missing, it sets the count
    once and registers nothing. ``useful`` caps the share (see :func:`useful_threads`).
    """

    def __init__(self, configured: int | None = None, *, useful: int | None = None) -> None:
        self.fixed = fixed_threads(configured)
        self.useful = useful
        self.cores = available_cores()
        self.threads: int | None = None
        self._handle: Any = None
        self._path: Path | None = None
        self._next = 0.0
        self._saved: int | None = None

    def __enter__(self) -> ThreadShare:
        import torch

        self._saved = torch.get_num_threads()
        if self.fixed is None:
            self._register()
        self.update(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._handle is not None:
            self._handle.close()
            self._handle = None
            if self._path is not None:
                self._path.unlink(missing_ok=True)
        if self._saved is not None and self._saved != torch.get_num_threads():
            torch.set_num_threads(self._saved)  # (unchanged in a forked child: equal)

    def _register(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            path = _registry() / str(os.getpid())
            handle = path.open("w")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        self._handle, self._path = handle, path

    def runs_sharing(self) -> int:
        """Live particlesim runs registered on this machine (this one included, at least 1)."""
        if self._handle is None:
            return 1
        import fcntl

        live = 0
        for path in _registry().iterdir():
            if path == self._path:
                live += 1
                continue
            try:
                with path.open("r") as other:
                    try:
                        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        live += 1  # its run holds the lock: alive
                    else:
                        path.unlink(missing_ok=True)  # left by a killed run
            except OSError:
                continue
        return max(1, live)

    def update(self, force: bool = False) -> int:
        """Set torch's intra-op threads to this run's share (recounting at most every second)."""
        import torch

        now = time.monotonic()
        if not force and now < self._next:
            return self.threads or torch.get_num_threads()
        self._next = now + RECOUNT_S
        share = max(1, self.cores // self.runs_sharing())
        wanted = self.fixed or (share if self.useful is None else min(self.useful, share))
        # only when it changes: resizing the OpenMP pool is not free (and a forked child
        # must not touch a pool its parent started)
        if wanted != torch.get_num_threads() and os.getpid() == _IMPORTED_IN:
            torch.set_num_threads(wanted)
        self.threads = wanted
        return wanted


def run_sharing(
    simulation: Any,
    system: Any,
    configured: int | None = None,
    *,
    progress: Any = None,
    out_dir: Any = None,
) -> Any:
    """``simulation.run()`` inside a :class:`ThreadShare`, recounted at every step.

    ``configured``: ``[run] threads`` (``None``: the share); ``system`` sizes the share
    (:func:`useful_threads`); ``progress`` is called after each step as by
    ``Simulation.run``. Returns what ``simulation.run`` returns.
    """
    share = ThreadShare(configured, useful=useful_threads(system))

    def each_step(sim: Any) -> None:
        share.update()  # cheap: recounts the runs sharing the cores about once a second
        if progress is not None:
            progress(sim)

    with share:
        return simulation.run(progress=each_step, out_dir=out_dir)
