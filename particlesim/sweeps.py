"""Parameter sweeps: expand a scenario's ``[sweep]`` table into points and run them all.

A sweep varies any scenario key (the same key paths as ``--set``) over a grid,
random draws and seeds::

    [sweep]
    seeds = [0, 1, 2]                  # or an int n meaning 0..n-1; sets scenario.seed
    seed = 0                           # seed of the random draws below
    [sweep.grid]                       # cartesian product
    "integrator.lr" = [0.01, 0.001]
    [sweep.random]                     # `samples` draws, each combined with every grid point
    samples = 8
    "model.sizes[1]" = { int_uniform = [16, 256] }

Points are ``grid × random samples × seeds``. A point's id is a hash of its
overrides, so it does not depend on the order of the points and a rerun finds
the points that finished. Every point runs in its own process as
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
import copy
import hashlib
import itertools
import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from particlesim.errors import ParticlesimError, ScenarioError, close_matches

if TYPE_CHECKING:
    import xarray as xr

SWEEP_KEYS = ("seeds", "seed", "grid", "random")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
#: A sweep larger than this is almost surely a typo (and would not fit in memory).
MAX_POINTS = 100_000
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


# -- the [sweep] table -------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """One random axis: ``kind`` (uniform, log_uniform, int_uniform, choice) and its arguments.

    Draws use Python's :class:`random.Random` through ``random()`` only, whose
    stream is the same in every Python version, so a sweep seed gives the same
    points everywhere.
    """

    kind: str
    args: tuple[Any, ...]

    def draw(self, rng: random.Random) -> Any:
        u = rng.random()
        if self.kind == "uniform":
            low, high = self.args
            return low + (high - low) * u
        if self.kind == "log_uniform":
            low, high = self.args
            return math.exp(math.log(low) + (math.log(high) - math.log(low)) * u)
        if self.kind == "int_uniform":
            low, high = self.args
            return min(high, low + math.floor(u * (high - low + 1)))
        return self.args[min(len(self.args) - 1, math.floor(u * len(self.args)))]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed ``[sweep]`` table (see the module docstring)."""

    seeds: tuple[int, ...] | None = None
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    random: dict[str, Distribution] = field(default_factory=dict)
    samples: int = 0
    seed: int = 0

    @property
    def size(self) -> int:
        """How many points the sweep has (before merging equal random draws)."""
        count = math.prod(len(values) for values in self.grid.values())
        return count * (self.samples or 1) * len(self.seeds or (None,))


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its position in the expansion, stable id and overrides."""

    index: int
    point_id: str
    overrides: dict[str, Any]

    def label(self) -> str:
        """``integrator.lr=0.01, scenario.seed=1``: the overrides in one line."""
        return ", ".join(f"{path}={_toml_literal(value)}" for path, value in self.overrides.items())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite float, or an integer that a float holds exactly (|n| <= 2**53)."""
    if _is_int(value):
        return abs(value) <= 2**53
    return isinstance(value, float) and math.isfinite(value)


def _kind(value: Any) -> str:
    from particlesim.scenario.options import type_name

    return type_name(value)


def _check_key_path(path: str, where: str, source: str) -> None:
    from particlesim.scenario.loader import split_path

    try:
        parts = split_path(path)
    except (ScenarioError, ValueError):  # ValueError: an index of thousands of digits
        raise ScenarioError(
            f"malformed key path {path!r} (expected e.g. integrator.lr or groups[1].size)",
            path=where,
            source=source,
        ) from None
    if parts[0] in ("sweep", "plugins") or isinstance(parts[0], int):
        raise ScenarioError(
            f"{path!r} cannot be swept (plugins load once per sweep; a sweep cannot sweep itself)",
            path=where,
            source=source,
        )


def parse_sweep(table: Any, *, source: str = "") -> SweepSpec:
    """Check the shape of a ``[sweep]`` table and return it parsed (nothing is expanded).

    Every error is a :class:`ScenarioError` naming the key path inside ``sweep``.
    """
    if not isinstance(table, Mapping):
        raise ScenarioError(
            f"expected a table [sweep], got {_kind(table)}", path="sweep", source=source
        )
    for key in table:
        if key not in SWEEP_KEYS:
            raise ScenarioError(
                f"unknown key{close_matches(key, SWEEP_KEYS)}; [sweep] takes "
                f"{', '.join(SWEEP_KEYS)} (key paths go in [sweep.grid] or [sweep.random])",
                path=f"sweep.{key}",
                source=source,
            )

    seeds: tuple[int, ...] | None = None
    if "seeds" in table:
        value = table["seeds"]
        if _is_int(value):
            if not 1 <= value <= MAX_POINTS:
                raise ScenarioError(
                    f"expected a count from 1 to {MAX_POINTS} or a list of seeds, got {value}",
                    path="sweep.seeds",
                    source=source,
                )
            seeds = tuple(range(value))
        elif isinstance(value, list) and value and all(_is_int(s) and s >= 0 for s in value):
            if len(set(value)) != len(value):
                raise ScenarioError(f"repeated seed in {value}", path="sweep.seeds", source=source)
            seeds = tuple(value)
        else:
            raise ScenarioError(
                f"expected a count n (seeds 0..n-1) or a non-empty list of integers >= 0, "
                f"got {_kind(value)}",
                path="sweep.seeds",
                source=source,
            )

    seed = table.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ScenarioError(
            f"expected an integer >= 0, got {_kind(seed)}",
            path="sweep.seed",
            source=source,
        )

    grid_table = table.get("grid", {})
    if not isinstance(grid_table, Mapping):
        raise ScenarioError(
            f"expected a table [sweep.grid] of key path = [values], got {_kind(grid_table)}",
            path="sweep.grid",
            source=source,
        )
    grid: dict[str, tuple[Any, ...]] = {}
    for path, values in grid_table.items():
        where = f'sweep.grid."{path}"'
        _check_key_path(path, where, source)
        if not isinstance(values, list) or not values:
            raise ScenarioError(
                f"expected a non-empty list of values, got {_kind(values)}",
                path=where,
                source=source,
            )
        literals = [_toml_literal(v) for v in values]
        if len(set(literals)) != len(literals):
            raise ScenarioError(f"repeated value in {values!r}", path=where, source=source)
        grid[path] = tuple(values)

    random_table = table.get("random", {})
    if not isinstance(random_table, Mapping):
        raise ScenarioError(
            f"expected a table [sweep.random], got {_kind(random_table)}",
            path="sweep.random",
            source=source,
        )
    samples = random_table.get("samples", 0)
    axes = {k: v for k, v in random_table.items() if k != "samples"}
    if not _is_int(samples) or samples < 0 or samples > MAX_POINTS:
        raise ScenarioError(
            f"expected an integer from 1 to {MAX_POINTS}, got {_kind(samples)}",
            path="sweep.random.samples",
            source=source,
        )
    if axes and not samples:
        raise ScenarioError(
            "missing 'samples' (how many random points to draw)",
            path="sweep.random.samples",
            source=source,
        )
    if samples and not axes:
        raise ScenarioError(
            f'samples = {samples} but nothing to draw; add e.g. "integrator.lr" = '
            "{ log_uniform = [1e-4, 1e-1] }",
            path="sweep.random",
            source=source,
        )
    distributions = {}
    for path, spec in axes.items():
        where = f'sweep.random."{path}"'
        _check_key_path(path, where, source)
        if path in grid:
            raise ScenarioError(
                "is swept both in [sweep.grid] and [sweep.random]", path=where, source=source
            )
        distributions[path] = _parse_distribution(spec, where, source)

    swept = [*grid, *distributions]
    if seeds is not None and any(_is_seed_path(p) for p in swept):
        raise ScenarioError(
            "scenario.seed is swept by sweep.seeds; remove it from the grid or random table",
            path="sweep.seeds",
            source=source,
        )
    if seeds is None and not swept:
        raise ScenarioError(
            "nothing to sweep: add seeds, a [sweep.grid] or a [sweep.random] table",
            path="sweep",
            source=source,
        )
    spec = SweepSpec(seeds=seeds, grid=grid, random=distributions, samples=samples, seed=seed)
    if spec.size > MAX_POINTS:
        raise ScenarioError(
            f"{spec.size:,} points is more than {MAX_POINTS:,}; split the sweep",
            path="sweep",
            source=source,
        )
    return spec


def _is_seed_path(path: str) -> bool:
    from particlesim.scenario.loader import split_path

    return split_path(path) == ["scenario", "seed"]


def _parse_distribution(spec: Any, where: str, source: str) -> Distribution:
    expected = (
        "expected one of { uniform = [low, high] }, { log_uniform = [low, high] }, "
        "{ int_uniform = [low, high] }, { choice = [a, b, …] }"
    )
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ScenarioError(f"{expected}, got {_kind(spec)}", path=where, source=source)
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ScenarioError(
            f"unknown distribution {kind!r}{close_matches(kind, DISTRIBUTIONS)}; "
            f"known: {', '.join(DISTRIBUTIONS)}",
            path=f"{where}.{kind}",
            source=source,
        )
    where = f"{where}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ScenarioError(
                f"expected a non-empty list of values, got {_kind(args)}",
                path=where,
                source=source,
            )
        return Distribution(kind, tuple(args))
    check = (lambda v: _is_int(v) and _is_number(v)) if kind == "int_uniform" else _is_number
    what = "integers (|n| <= 2**53)" if kind == "int_uniform" else "finite numbers"
    if not (isinstance(args, list) and len(args) == 2 and all(check(a) for a in args)):
        raise ScenarioError(
            f"expected [low, high] with two {what}, got {args!r}", path=where, source=source
        )
    low, high = args
    if low > high:
        raise ScenarioError(f"low {low} is greater than high {high}", path=where, source=source)
    if kind == "log_uniform" and low <= 0:
        raise ScenarioError(
            f"low must be > 0 for a log scale, got {low}", path=where, source=source
        )
    if kind == "uniform" and not math.isfinite(high - low):
        raise ScenarioError(
            f"the range [{low}, {high}] is too wide to draw from", path=where, source=source
        )
    return Distribution(kind, (low, high))


# -- expansion ---------------------------------------------------------------------------


def point_id(overrides: Mapping[str, Any]) -> str:
    """A stable 12-hex-digit id of a set of overrides (independent of their order)."""
    canonical = json.dumps(
        sorted((path, _toml_literal(value)) for path, value in overrides.items()),
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def expand(spec: SweepSpec) -> list[SweepPoint]:
    """All points of a sweep in a fixed order: grid (last key fastest), then sample, then seed.

    Random samples are drawn from ``random.Random(spec.seed)``, one sample after
    another and within a sample in the order of the table; a sample is shared
    by every grid point and seed. Points with equal overrides (equal random
    draws from a ``choice``) are merged.
    """
    rng = random.Random(spec.seed)
    samples = [
        {path: distribution.draw(rng) for path, distribution in spec.random.items()}
        for _ in range(spec.samples)
    ] or [{}]
    seeds: Sequence[int | None] = spec.seeds or (None,)
    points: list[SweepPoint] = []
    seen: set[str] = set()
    for values in itertools.product(*spec.grid.values()):
        for sample in samples:
            for seed in seeds:
                overrides = {**dict(zip(spec.grid, values, strict=True)), **sample}
                if seed is not None:
                    overrides["scenario.seed"] = seed
                pid = point_id(overrides)
                if pid in seen:
                    continue
                seen.add(pid)
                points.append(SweepPoint(len(points), pid, overrides))
    return points


def _toml_literal(value: Any) -> str:
    """``value`` as TOML inline text (what ``--set key=…`` would take)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_toml_literal(str(k))} = {_toml_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    import tomli_w  # dates and times

    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def point_scenario(
    raw: Mapping[str, Any], point: SweepPoint, *, base_dir: Path, source: str = ""
) -> dict[str, Any]:
    """The base scenario with ``point``'s overrides applied and no ``[sweep]`` table.

    Paths that the base scenario gives relative to its own folder (``data.data_dir``
    and the ``plugins`` files) are made absolute, because the point's file lives
    elsewhere.
    """
    from particlesim.scenario.loader import apply_override

    scenario = copy.deepcopy(dict(raw))
    scenario.pop("sweep", None)
    for path, value in point.overrides.items():
        try:
            apply_override(scenario, f"{path}={_toml_literal(value)}")
        except ScenarioError as exc:
            raise ScenarioError(
                exc.detail.removeprefix("--set ").removeprefix(f"{path}: "),
                path=f"sweep point {point.index} ({point.label()}): {path}",
                source=source,
            ) from None
    data = scenario.get("data")
    data_dir = data.get("data_dir") if isinstance(data, dict) else None
    if isinstance(data_dir, str) and not Path(data_dir).is_absolute():
        data["data_dir"] = str(base_dir / data_dir)
    plugins = scenario.get("plugins")
    if isinstance(plugins, list):
        scenario["plugins"] = [
            str(base_dir / p) if isinstance(p, str) and not Path(p).is_absolute() else p
            for p in plugins
        ]
    return scenario


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
    if all(_is_int(v) for v in values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.float64)
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    return np.array([_toml_literal(v) for v in values], dtype=object)


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
            column.append(float(value) if _is_number(value) else math.nan)
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
