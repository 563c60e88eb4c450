"""The ``[sweep]`` table of a scenario: its shape, its points and each point's scenario.

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
the points that finished.

This module is part of the schema: :func:`particlesim.scenario.builder.validate`
checks a ``[sweep]`` table with :func:`parse_sweep`. Planning and running the
points (which validates each point with the builder) is
:mod:`particlesim.scenario.sweeps`, one floor up.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from particlesim.errors import ScenarioError, close_matches

SWEEP_KEYS = ("seeds", "seed", "grid", "random")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
#: A sweep larger than this is almost surely a typo (and would not fit in memory).
MAX_POINTS = 100_000


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
        return ", ".join(f"{path}={toml_literal(value)}" for path, value in self.overrides.items())


def is_int(value: Any) -> bool:
    """An integer that is not a bool (TOML's integers; ``True`` is not a seed)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite float, or an integer that a float holds exactly (|n| <= 2**53)."""
    if is_int(value):
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
        if is_int(value):
            if not 1 <= value <= MAX_POINTS:
                raise ScenarioError(
                    f"expected a count from 1 to {MAX_POINTS} or a list of seeds, got {value}",
                    path="sweep.seeds",
                    source=source,
                )
            seeds = tuple(range(value))
        elif isinstance(value, list) and value and all(is_int(s) and s >= 0 for s in value):
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
    if not is_int(seed) or seed < 0:
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
        literals = [toml_literal(v) for v in values]
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
    if not is_int(samples) or samples < 0 or samples > MAX_POINTS:
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
    check = (lambda v: is_int(v) and is_number(v)) if kind == "int_uniform" else is_number
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
        sorted((path, toml_literal(value)) for path, value in overrides.items()),
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


def toml_literal(value: Any) -> str:
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
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{toml_literal(str(k))} = {toml_literal(v)}" for k, v in value.items())
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
            apply_override(scenario, f"{path}={toml_literal(value)}")
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
