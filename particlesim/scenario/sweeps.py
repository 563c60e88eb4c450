"""Parameter sweeps: plan the points of a scenario's ``[sweep]`` table and run them all.

The table itself (grid, random draws, seeds), its expansion into points with
stable ids and each point's scenario are :mod:`particlesim.scenario.sweep_table`;
here every point is validated by the builder before anything runs, and then run.
Every point runs in its own process as
``python -m particlesim run <point.toml> --out DIR/points/<id>``, which keeps
points isolated from one another and lets a killed point be retried.

Output layout of a sweep directory ``DIR``::

    DIR/sweep.json              the points (id, index, overrides) and the base scenario
    DIR/scenarios/<id>.toml     each point's complete scenario
    DIR/points/<id>/            each point's run directory (summary.json, trajectory, metrics)
    DIR/logs/<id>.log           each point's console output, every attempt
    DIR/locks/<id>.lock         held while the point runs (see below)
    DIR/summary.csv, .nc        one row per point: overrides, status, accuracies, losses, time

Executors: local worker threads (one subprocess per point) or Dask distributed
(``dask.distributed.Client``), which places one task per point on its workers.
A lock per point (``flock``, inherited by the point's process) makes sure that a
point never runs twice at once, even when the worker that launched it was
killed and its task rescheduled elsewhere: the new attempt waits for the old
process, then finds its summary.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from particlesim.errors import ParticlesimError, ScenarioError
from particlesim.scenario.sweep_table import (
    SweepPoint,
    SweepSpec,
    expand,
    is_int,
    is_number,
    parse_sweep,
    point_scenario,
    toml_literal,
)

if TYPE_CHECKING:
    import xarray as xr

MANIFEST = "sweep.json"
#: The checkpoint a run leaves in its directory (``particlesim.io.checkpoint.CHECKPOINT_FILE``,
#: repeated here so that Dask workers need not import torch to look for it).
CHECKPOINT_FILE = "checkpoint.pt"
#: How long to wait for a Dask scheduler given by address.
CONNECT_TIMEOUT_S = 10.0
#: Numbers copied from each point's summary.json into the summary table.
SUMMARY_NUMBERS = (
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "train_accuracy",
    "train_loss",
    "wall_time_s",
    "steps",
    "epochs",
)


class SweepError(ParticlesimError):
    """A sweep could not be set up or run (output folder, executor, scheduler)."""


# -- planning ----------------------------------------------------------------------------


@dataclass
class SweepPlan:
    """A validated sweep: the base scenario, its points and each point's scenario."""

    source: str
    base_dir: Path
    spec: SweepSpec
    points: list[SweepPoint]
    scenarios: dict[str, dict[str, Any]]
    #: Each point's ``scenario.seed`` after validation (the base seed where not swept).
    seeds: dict[str, int] = field(default_factory=dict)


def plan_sweep(
    raw: Mapping[str, Any],
    registries: Mapping[str, Any],
    *,
    source: str = "",
    base_dir: Path | None = None,
) -> SweepPlan:
    """Expand the sweep of a parsed scenario and validate every point before anything runs.

    An invalid point is a :class:`ScenarioError` naming the point (index and
    overrides) and the key path inside it.
    """
    # Here, not at the top: the builder imports torch, which Dask workers never need.
    from particlesim.scenario.builder import validate

    if "sweep" not in raw:
        raise ScenarioError(
            "no [sweep] table; add one (see `particlesim sweep --help`) or use "
            "`particlesim run` for a single run",
            source=source,
        )
    base_dir = base_dir or Path.cwd()
    spec = parse_sweep(raw["sweep"], source=source)
    points = expand(spec)
    scenarios: dict[str, dict[str, Any]] = {}
    seeds: dict[str, int] = {}
    for point in points:
        scenario = point_scenario(raw, point, base_dir=base_dir, source=source)
        try:
            plan = validate(scenario, registries, source=source, base_dir=base_dir)
        except ScenarioError as exc:
            where = f"{exc.path}: " if exc.path else ""
            raise ScenarioError(
                f"{where}{exc.detail}",
                path=f"sweep point {point.index} ({point.label()})",
                source=source,
            ) from None
        scenarios[point.point_id] = scenario
        seeds[point.point_id] = plan.seed
    return SweepPlan(source, base_dir, spec, points, scenarios, seeds)


# -- running one point -------------------------------------------------------------------


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs to run one point (picklable, for Dask)."""

    point_id: str
    scenario_file: str
    out_dir: str
    log_file: str
    lock_file: str
    command: tuple[str, ...]
    retries: int = 1
    threads: int | None = None


@dataclass(frozen=True)
class PointResult:
    """How a point ended: ``completed``, ``failed`` or ``interrupted``.

    ``attempts`` counts the processes this task started (0 when an earlier
    attempt had finished the point already); ``host`` is where it ran.
    """

    point_id: str
    status: str
    attempts: int
    seconds: float
    error: str | None = None
    host: str = ""


#: Set when the sweep is interrupted, so local workers start no new processes.
STOP = threading.Event()


def read_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """A point's summary.json, or None when it is missing or unreadable (a killed run)."""
    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def is_finished(out_dir: str | Path) -> bool:
    """Whether the point in ``out_dir`` completed (its summary.json says so)."""
    summary = read_summary(out_dir)
    return summary is not None and summary.get("status") == "completed"


def run_command() -> tuple[str, ...]:
    """The command that runs one point, followed by ``FILE --out DIR --overwrite --no-progress``."""
    return (sys.executable, "-m", "particlesim", "run")


@contextlib.contextmanager
def _point_lock(path: str) -> Iterator[int | None]:
    """Hold an exclusive ``flock`` on ``path``; yields the descriptor to hand to children.

    A child that inherits the descriptor keeps the lock after its launcher dies,
    so a rescheduled attempt waits for it instead of running beside it.
    """
    try:
        import fcntl
    except ImportError:  # no flock: points are still isolated by the executor
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _last_error(log_file: str) -> str | None:
    """The last ``error: …`` line of a point's log (what ``particlesim run`` reported)."""
    try:
        lines = Path(log_file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return None


def _summary_stamp(out_dir: str) -> tuple[int, int, int] | None:
    """What tells one ``summary.json`` from the next: inode, mtime and size.

    A run writes its summary to a new file and renames it over the old one, so the inode
    changes even where the file system keeps whole-second times.
    """
    try:
        stat = (Path(out_dir) / "summary.json").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def run_point(task: PointTask) -> PointResult:
    """Run one point to completion, retrying a killed or crashed process ``task.retries`` times.

    An attempt continues the point's run from its checkpoint (``particlesim run
    --resume``) when the run left one, so a killed point loses at most the steps
    since its last checkpoint; otherwise (or when resuming fails) the point
    starts again from scratch. A point whose run ends with an error of its own
    (a diverged or invalid run, which would fail again) is not retried. Runs on
    a local worker thread or a Dask worker alike.
    """
    start = time.perf_counter()
    host = socket.gethostname()
    attempts = 0
    allowed = task.retries + 1
    resume_failed = False
    error: str | None = None
    with _point_lock(task.lock_file) as lock_fd:
        while True:
            if is_finished(task.out_dir):  # done by an earlier (perhaps orphaned) attempt
                return PointResult(
                    task.point_id, "completed", attempts, time.perf_counter() - start, None, host
                )
            if attempts >= allowed:
                return PointResult(
                    task.point_id, "failed", attempts, time.perf_counter() - start, error, host
                )
            if STOP.is_set():
                return PointResult(
                    task.point_id, "interrupted", attempts, time.perf_counter() - start, None, host
                )
            attempts += 1
            resume = not resume_failed and (Path(task.out_dir) / CHECKPOINT_FILE).is_file()
            where = ["--resume", task.out_dir] if resume else ["--out", task.out_dir, "--overwrite"]
            command = [*task.command, task.scenario_file, *where, "--no-progress"]
            before = _summary_stamp(task.out_dir)
            env = dict(os.environ)
            if task.threads is not None and "OMP_NUM_THREADS" not in env:
                env["OMP_NUM_THREADS"] = str(task.threads)
            Path(task.log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(task.log_file, "a", encoding="utf-8") as log:
                log.write(
                    f"== attempt {attempts} on {host} at {time.strftime('%Y-%m-%dT%H:%M:%S')}: "
                    f"{' '.join(command)}\n"
                )
                log.flush()
                try:
                    process = subprocess.run(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        pass_fds=() if lock_fd is None else (lock_fd,),
                        check=False,
                    )
                except OSError as exc:
                    return PointResult(
                        task.point_id,
                        "failed",
                        attempts,
                        time.perf_counter() - start,
                        f"cannot start {command[0]}: {exc}",
                        host,
                    )
                log.write(f"== attempt {attempts} exited with status {process.returncode}\n")
            code = process.returncode
            # a summary.json left by an earlier run says nothing about this attempt
            summary = read_summary(task.out_dir) if _summary_stamp(task.out_dir) != before else None
            if summary is not None and summary.get("status") == "completed":
                continue  # reported at the top of the loop
            if code == 130 and STOP.is_set():
                return PointResult(
                    task.point_id, "interrupted", attempts, time.perf_counter() - start, None, host
                )
            if resume and code >= 0 and code != 130 and summary is None:
                # an unreadable checkpoint, or one written at the very end of a run that
                # was killed before its summary ("nothing to do"): start afresh, at no cost
                resume_failed, allowed = True, allowed + 1
                error = f"resume failed: {_last_error(task.log_file) or f'exit status {code}'}"
                continue
            if code > 0 and code != 130 and summary is not None:
                # The run ended with an error of its own (diverged, invalid): retrying repeats it.
                error = summary.get("error") or _last_error(task.log_file) or f"exit status {code}"
                return PointResult(
                    task.point_id, "failed", attempts, time.perf_counter() - start, error, host
                )
            error = (
                f"killed by signal {-code}"
                if code < 0
                else _last_error(task.log_file) or f"exit status {code} without a summary"
            )


# -- executors ---------------------------------------------------------------------------


def run_local(
    tasks: Sequence[PointTask],
    workers: int,
    on_result: Callable[[PointResult], None] = lambda result: None,
) -> list[PointResult]:
    """Run ``tasks`` on ``workers`` threads, each launching one point process at a time."""
    STOP.clear()
    results = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="point")
    try:
        futures = [pool.submit(run_point, task) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            results.append(future.result())
            on_result(results[-1])
    except BaseException:
        STOP.set()  # running points finish (or get the same Ctrl-C); no new one starts
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _import_dask() -> Any:
    try:
        import dask.distributed
    except ImportError as exc:
        raise SweepError(
            f"the Dask executor needs dask.distributed ({exc}); "
            "install it with: pip install 'particlesim[sweep]'"
        ) from None
    return dask.distributed


def run_dask(
    tasks: Sequence[PointTask],
    *,
    scheduler: str | None = None,
    workers: int = 2,
    on_result: Callable[[PointResult], None] = lambda result: None,
    on_client: Callable[[Any], None] = lambda client: None,
) -> list[PointResult]:
    """Run ``tasks`` on a Dask cluster: one task per point, gathered as they complete.

    ``scheduler`` is a scheduler address (``tcp://host:8786``); without one a
    ``LocalCluster`` of ``workers`` single-threaded worker processes is started
    and closed again. A worker that dies is replaced by Dask and its task
    rescheduled; the point's lock keeps the rescheduled attempt from running
    beside a process the dead worker left behind. ``on_client`` receives the
    client once connected (used to watch or test the cluster).
    """
    distributed = _import_dask()
    import uuid

    cluster = None
    try:
        if scheduler:
            try:
                client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError) as exc:
                raise SweepError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        else:
            try:
                cluster = distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=40,  # logging.ERROR: a replaced worker is expected, not news
                )
            except (OSError, RuntimeError, TimeoutError) as exc:
                raise SweepError(f"cannot start a Dask LocalCluster: {exc}") from None
            client = distributed.Client(cluster)
        with client:
            on_client(client)
            batch = uuid.uuid4().hex[:8]
            futures = {
                client.submit(
                    run_point, task, key=f"particlesim-point-{task.point_id}-{batch}"
                ): task.point_id
                for task in tasks
            }
            results = []
            for future in distributed.as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # e.g. KilledWorker after too many worker deaths
                    error = f"{type(exc).__name__}: {exc}"
                    result = PointResult(futures[future], "failed", 0, 0.0, error)
                results.append(result)
                on_result(result)
            return results
    finally:
        if cluster is not None:
            cluster.close()


# -- the sweep directory -----------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare_directory(plan: SweepPlan, out_dir: Path) -> None:
    """Create (or reopen) a sweep directory: manifest and one scenario file per point.

    A folder that exists, is not empty and has no ``sweep.json`` is refused, so a
    sweep never writes into an unrelated directory.
    """
    import tomli_w

    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists():
        raise SweepError(
            f"output directory {out_dir} is not empty and holds no {MANIFEST}; "
            "choose another with --out"
        )
    for sub in ("scenarios", "points", "logs", "locks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    manifest = {
        "scenario": plan.source,
        "points": [
            {"id": p.point_id, "index": p.index, "overrides": p.overrides} for p in plan.points
        ],
    }
    _write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    for point in plan.points:
        file = out_dir / "scenarios" / f"{point.point_id}.toml"
        text = f"# sweep point {point.index} of {plan.source}: {point.label()}\n" + tomli_w.dumps(
            plan.scenarios[point.point_id]
        )
        if not file.exists() or file.read_text(encoding="utf-8") != text:
            _write_atomic(file, text)


def point_tasks(
    plan: SweepPlan,
    out_dir: Path,
    *,
    retries: int = 1,
    threads: int | None = None,
    command: Sequence[str] | None = None,
) -> list[PointTask]:
    """One task per point of ``plan`` (finished or not), with absolute paths."""
    out_dir = out_dir.resolve()
    command = tuple(command or run_command())
    return [
        PointTask(
            point_id=p.point_id,
            scenario_file=str(out_dir / "scenarios" / f"{p.point_id}.toml"),
            out_dir=str(out_dir / "points" / p.point_id),
            log_file=str(out_dir / "logs" / f"{p.point_id}.log"),
            lock_file=str(out_dir / "locks" / f"{p.point_id}.lock"),
            command=command,
            retries=retries,
            threads=threads,
        )
        for p in plan.points
    ]


def _coordinate(values: list[Any]) -> Any:
    """A column for one swept key: numbers, booleans or strings as they are; else TOML text."""
    import numpy as np

    if all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    if all(is_int(v) for v in values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.float64)
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.array([toml_literal(v) for v in values], dtype=object)


def summary_dataset(plan: SweepPlan, out_dir: Path) -> xr.Dataset:
    """One row per point: coordinates = swept key paths and seed; variables = results.

    Points that have not completed have their status (``failed``, ``interrupted``,
    ``pending``) and NaN numbers.
    """
    import numpy as np
    import xarray as xr

    summaries = [read_summary(out_dir / "points" / p.point_id) for p in plan.points]
    paths = [*plan.spec.grid, *plan.spec.random]
    coords: dict[str, Any] = {
        "point": np.array([p.point_id for p in plan.points], dtype=object),
        "index": ("point", np.array([p.index for p in plan.points], dtype=np.int64)),
        "seed": (
            "point",
            np.array(
                [plan.seeds.get(p.point_id, -1) for p in plan.points],
                dtype=np.int64,
            ),
        ),
    }
    for path in paths:
        coords[path] = ("point", _coordinate([p.overrides[path] for p in plan.points]))
    data: dict[str, Any] = {
        "status": (
            "point",
            np.array([(s or {}).get("status") or "pending" for s in summaries], dtype=object),
        ),
        "error": (
            "point",
            np.array([(s or {}).get("error") or "" for s in summaries], dtype=object),
        ),
    }
    for name in SUMMARY_NUMBERS:
        column = []
        for summary in summaries:
            value = (summary or {}).get(name)
            column.append(float(value) if is_number(value) else math.nan)
        data[name] = ("point", np.array(column, dtype=np.float64))
    return xr.Dataset(
        data,
        coords=coords,
        attrs={
            "scenario": plan.source,
            "swept": json.dumps(paths),
            "points": len(plan.points),
            "completed": sum(1 for s in summaries if (s or {}).get("status") == "completed"),
        },
    )


def write_summary(dataset: xr.Dataset, out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.nc`` (h5netcdf) atomically; return their paths."""
    csv_path, nc_path = out_dir / "summary.csv", out_dir / "summary.nc"
    frame = dataset.reset_coords().to_dataframe()
    coordinates = [name for name in dataset.coords if name != "point"]
    frame = frame[[*coordinates, *(c for c in frame.columns if c not in coordinates)]]
    _write_atomic(csv_path, frame.to_csv())
    tmp = nc_path.with_name(f".{nc_path.name}.{os.getpid()}.tmp")
    dataset.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, nc_path)
    return csv_path, nc_path


def read_summary_table(path: str | Path) -> xr.Dataset:
    """Read a sweep's ``summary.nc`` back into memory."""
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as dataset:
        return dataset.load()
