"""The experiment harness: a grid of settings × seeds run through the runner into a results table.

A paper's reproduction is a set of runs that differ in a few named settings (the model, the
data fraction, the number of particles …) and the seed, each run measured the same way, the
measurements gathered into a CSV table and summarised, mean ± spread over seeds, in Markdown
beside the paper's own numbers. This module is that frame, so that a plugin's
``experiments.py`` keeps only what is its paper's: its settings, its per-run measurement, its
findings and its plots.

* :func:`grid` expands named axes into :class:`Point`\\ s (last axis fastest) with stable ids:
  a hash of the point's values and of the ``context`` (the settings every point shares, such
  as the run length), so that a point run under other settings is another point.
* :func:`run_grid` calls ``run_point(point)`` for every point, in order or on an
  :class:`~concurrent.futures.Executor`, and records each finished point at once: one line in
  a journal (``<table>.points.jsonl``: the point's id, values and rows as CSV text), flushed to
  disk, and its rows in the CSV file(s). Run again with ``resume=True``, it skips the points
  the journal holds, so a killed grid goes on where it stopped; the CSV files always hold
  the finished points of this grid in grid order, which is the file a single uninterrupted
  run writes.
* :func:`write_csv` / :func:`read_csv` write rows (columns: the union of the rows' keys in
  first-seen order) and read them back typed (integers, floats, text).
* :class:`Stats` (mean, sample standard deviation, n; standard error and a Student-t
  confidence interval), :func:`describe` and :func:`summarize` (grouped over rows).
* :func:`cell`, :func:`markdown_table` and :func:`comparison_table` (ours, then the paper's
  numbers beside them), :func:`within_spread` (do two means agree within their spreads).
* :func:`build_point` builds one run of a scenario in memory through
  :class:`particlesim.Runner`, as grid points do: keys cleared, ``--set`` assignments applied,
  the scenario's writers dropped (a grid needs only the final network) or filtered.

It knows no paper, and it lives beside :mod:`particlesim.runner`, one floor above it: a grid
is many runs as the runner makes one, and neither is analysis (:mod:`particlesim.analysis`
reads trajectories with xarray and never imports torch). Core does not import it. Example::

    from particlesim.experiments import grid, run_grid, summarize, comparison_table

    points = grid({"model": ["a", "b"], "seed": range(3)}, context={"steps": 100})
    rows = run_grid(points, lambda p: {**p.values, "accuracy": train(p)}, out / "runs.csv")
    summary = summarize(rows, ("model",), "accuracy")
"""

from __future__ import annotations

import concurrent.futures
import copy
import csv
import hashlib
import io
import json
import math
import os
import re
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from particlesim.errors import ParticlesimError

if TYPE_CHECKING:
    from particlesim.runner import Runner

__all__ = [
    "Point",
    "Stats",
    "build_point",
    "cell",
    "comparison_table",
    "describe",
    "grid",
    "markdown_table",
    "numbers",
    "parse_value",
    "point_id",
    "read_csv",
    "run_built",
    "run_grid",
    "summarize",
    "t_critical",
    "within_spread",
    "write_csv",
    "write_json",
]

Row = dict[str, Any]


def _quiet(message: str) -> None:
    """The default ``log``: say nothing."""


# --------------------------------------------------------------------------- the grid


def point_id(values: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> str:
    """A stable 12-hex-digit id of a point's values and its context (independent of key order).

    Values are read as JSON (tuples as lists; anything else JSON cannot hold, such as a
    path, by its ``str``).
    """
    canonical = json.dumps(
        {"values": dict(values), "context": dict(context or {})},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class Point:
    """One run of a grid: its values (axis → value) and its stable id.

    ``point["seed"]`` reads one value.
    """

    id: str
    values: Mapping[str, Any]

    def __getitem__(self, axis: str) -> Any:
        return self.values[axis]

    def label(self) -> str:
        """``"model=a seed=0"``: the values in one line, for logs and errors."""
        return " ".join(f"{axis}={value}" for axis, value in self.values.items())


def grid(
    axes: Mapping[str, Iterable[Any]], *, context: Mapping[str, Any] | None = None
) -> list[Point]:
    """Every combination of the axes' values, the last axis fastest (``itertools.product``).

    Seeds are an axis like any other (``{"model": models, "seed": range(3)}``), so a grid
    decides whether they vary fastest or slowest. ``context`` holds what every point shares
    and what changes its result (run length, overrides, device): it enters each id, so a
    journal written under other settings is never mistaken for this grid's. Points with equal
    values (an axis listing a value twice) are merged. Grids concatenate (``[*a, *b]``) as
    long as their points differ.
    """
    import itertools

    names = list(axes)
    points: list[Point] = []
    seen: set[str] = set()
    for combination in itertools.product(*(list(axes[name]) for name in names)):
        values = dict(zip(names, combination, strict=True))
        pid = point_id(values, context)
        if pid not in seen:
            seen.add(pid)
            points.append(Point(pid, values))
    return points


# --------------------------------------------------------------------------- CSV


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.IGNORECASE
)


def parse_value(text: str) -> Any:
    """A CSV cell read back: an ``int``, a ``float`` (``nan`` and ``inf`` included), else text.

    Only plain decimal numbers convert (``"1_000"`` and ``" 5"`` stay text); an empty cell
    stays ``""``.
    """
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _text(value: Any, float_format: str | None) -> str:
    """A value as :mod:`csv` writes it (``str``; ``None`` empty), floats in ``float_format``."""
    if float_format is not None and isinstance(value, float):
        return format(value, float_format)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _texts(rows: Iterable[Mapping[str, Any]], float_format: str | None) -> list[dict[str, str]]:
    return [{key: _text(value, float_format) for key, value in row.items()} for row in rows]


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The union of the rows' keys, in the order they are first seen."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _csv_text(rows: Sequence[Mapping[str, str]], columns: Sequence[str], header: bool) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, float_format: str | None = None
) -> Path:
    """Rows as CSV: the union of their keys as header (first-seen order), missing cells empty.

    ``float_format`` (``".10g"``) formats the floats; by default they are written exactly
    (``repr``), so that :func:`read_csv` gives the same numbers back. The file is replaced
    atomically.
    """
    path = Path(path)
    _write_atomic(path, _csv_text(_texts(rows, float_format), _columns(rows), header=True))
    return path


def read_csv(path: str | Path, *, typed: bool = True) -> list[Row]:
    """Rows of a CSV file; ``typed``: numbers parsed back (:func:`parse_value`), else text."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if typed:
        return [{key: parse_value(value) for key, value in row.items()} for row in rows]
    return rows


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON with a final newline (a results folder's ``run_info.json``)."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- running a grid


def _as_rows(result: Any, what: str) -> list[Row]:
    if result is None:
        return []
    if isinstance(result, Mapping):
        return [dict(result)]
    if (
        isinstance(result, Sequence)
        and not isinstance(result, str)
        and all(isinstance(row, Mapping) for row in result)
    ):
        return [dict(row) for row in result]
    raise ParticlesimError(f"{what}: expected a row (a dict) or a list of rows, got {result!r}")


class _Table:
    """One CSV file of a grid, kept equal to its finished points' rows in grid order."""

    def __init__(self, path: Path, float_format: str | None) -> None:
        self.path = path
        self.float_format = float_format
        self.columns: list[str] | None = None  # as in the file; None: no file yet
        self.last = -1  # grid position of the last point in the file

    def write(self, texts: Sequence[Sequence[dict[str, str]]]) -> None:
        """Rewrite the file from every finished point's rows (in grid order)."""
        rows = [row for point_rows in texts for row in point_rows]
        if not rows:
            self.path.unlink(missing_ok=True)
            self.columns = None
            return
        self.columns = _columns(rows)
        _write_atomic(self.path, _csv_text(rows, self.columns, header=True))

    def append(self, position: int, rows: Sequence[dict[str, str]]) -> bool:
        """Append one point's rows when the file's order and columns allow; whether it did."""
        if not rows:
            return True
        if self.columns is None or position < self.last or set(_columns(rows)) - set(self.columns):
            return False
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text(rows, self.columns, header=False))
            handle.flush()
            os.fsync(handle.fileno())
        return True


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The finished points of a journal (id → entry); a line cut short by a kill is dropped.

    The file is cut back to its last complete line, so that new lines append cleanly.
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if complete != data:
        _write_atomic(path, complete.decode("utf-8"))
    entries: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
            entries[str(entry["id"])] = entry
        except (ValueError, KeyError, TypeError):
            raise ParticlesimError(
                f"{path}:{number}: not a line of a grid journal; start anew (without resume) "
                "or give another output folder"
            ) from None
    return entries


def run_grid(
    points: Sequence[Point],
    run_point: Callable[[Point], Any],
    tables: str | Path | Mapping[str, str | Path],
    *,
    resume: bool = True,
    journal: str | Path | None = None,
    float_format: str | None = None,
    executor: concurrent.futures.Executor | None = None,
    on_point: Callable[[Point, Any], None] | None = None,
    log: Callable[[str], None] = _quiet,
) -> Any:
    """Run every point, recording each at once; skip those already finished when resuming.

    Args:
        points: the grid (:func:`grid`; several grids concatenated), in the order the rows
            are to appear.
        run_point: one run: given a point, returns its rows. With one table (``tables`` a
            path), a row (dict) or a list of rows; with several (``tables`` a mapping of
            names to paths), a mapping of table names to rows (a name left out: no rows).
            With a process ``executor`` it must pickle (a module-level function or a
            :func:`functools.partial` of one).
        tables: the CSV file, or ``{name: CSV file}``.
        resume: keep the points the journal holds and run only the others; ``False`` removes
            the journal and the tables first and runs every point.
        journal: where finished points are recorded (default: beside the first table,
            ``<stem>.points.jsonl``). One JSON line per point: its id, values and rows, as
            the CSV text they are written as; it is the record the tables are made from.
        float_format: format of floats in the tables (default: exact, ``repr``).
        executor: runs the points concurrently (``ProcessPoolExecutor``…); each is recorded
            as it finishes. After a failure no new point starts; those running finish and
            are recorded, then the first error is raised.
        on_point: called in this process with each point that ran and what ``run_point``
            returned (to log it).
        log: receives one line when points are skipped.

    Returns:
        The rows of every point in grid order (a list; with several tables a dict of
        lists): as ``run_point`` returned them for the points that ran, read back typed
        (:func:`parse_value`) for those skipped.

    Each finished point's journal line is flushed to disk before its rows reach the
    tables, so a kill at any moment loses at most the points still running. The tables are
    appended to while points finish in grid order and their columns stay the same, and
    rewritten (atomically) otherwise, so that they always list the finished points' rows in
    grid order under the union of their keys: the file one uninterrupted run writes. Rows of
    journal points that are not in ``points`` (other settings, other values) stay in the
    journal and out of the tables.
    """
    multiple = isinstance(tables, Mapping)
    paths = {k: Path(v) for k, v in tables.items()} if multiple else {"": Path(tables)}
    if not paths:
        raise ParticlesimError("run_grid: no table to write")
    first = next(iter(paths.values()))
    journal_path = Path(journal) if journal is not None else first.with_suffix(".points.jsonl")
    position = {}
    for i, point in enumerate(points):
        if point.id in position:
            raise ParticlesimError(f"run_grid: two points have the id {point.id} ({point.label()})")
        position[point.id] = i
    files = {name: _Table(path, float_format) for name, path in paths.items()}

    if not resume:
        journal_path.unlink(missing_ok=True)
        for table in files.values():
            table.path.unlink(missing_ok=True)
    journaled = _read_journal(journal_path)
    texts: dict[str, dict[str, list[dict[str, str]]]] = {}  # point id → table → text rows
    typed: dict[str, dict[str, list[Row]]] = {}
    for pid, entry in journaled.items():
        if pid in position:
            saved = entry.get("rows", {})
            texts[pid] = {name: [dict(r) for r in saved.get(name, [])] for name in files}
            typed[pid] = {
                name: [{k: parse_value(v) for k, v in r.items()} for r in texts[pid][name]]
                for name in files
            }
    pending = [p for p in points if p.id not in texts]
    if texts:
        other = len(journaled) - len(texts)
        log(
            f"resume: {len(texts)} of {len(points)} points already in {journal_path.name}, "
            f"{len(pending)} to run"
            + (f" ({other} finished under other settings left out)" if other else "")
        )
    ordered = sorted(texts, key=position.__getitem__)
    for name, table in files.items():
        table.write([texts[pid][name] for pid in ordered])
        table.last = position[ordered[-1]] if ordered else -1

    def record(point: Point, result: Any) -> None:
        if multiple:
            if not isinstance(result, Mapping) or set(result) - set(files):
                raise ParticlesimError(
                    f"run_grid: point {point.label()}: expected a mapping of "
                    f"{', '.join(files)} to rows, got {result!r}"
                )
            produced = {name: _as_rows(result.get(name), point.label()) for name in files}
        else:
            produced = {"": _as_rows(result, point.label())}
        point_texts = {name: _texts(rows, float_format) for name, rows in produced.items()}
        line = {"id": point.id, "values": dict(point.values), "rows": point_texts}
        with journal_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        texts[point.id], typed[point.id] = point_texts, produced
        ordered.append(point.id)
        ordered.sort(key=position.__getitem__)
        here = position[point.id]
        for name, table in files.items():
            if not table.append(here, point_texts[name]):
                table.write([texts[pid][name] for pid in ordered])
            table.last = max(table.last, here)
        if on_point is not None:
            on_point(point, result)

    if executor is None:
        for point in pending:
            record(point, run_point(point))
    else:
        futures = {executor.submit(run_point, point): point for point in pending}
        error: BaseException | None = None
        for future in concurrent.futures.as_completed(futures):
            try:
                result = future.result()
            except concurrent.futures.CancelledError:
                continue
            except BaseException as exc:  # raised below, once the running points are recorded
                if error is None:
                    error = exc
                    for other in futures:
                        other.cancel()
                continue
            record(futures[future], result)
        if error is not None:
            raise error

    rows = {name: [row for p in points for row in typed[p.id][name]] for name in files}
    return rows if multiple else rows[""]


# --------------------------------------------------------------------------- statistics


def t_critical(level: float, df: int) -> float:
    """The two-sided Student-t critical value: ``t`` with ``P(|T| ≤ t) = level``, ``df`` d.o.f.

    Computed from the closed form of the t distribution for integer degrees of freedom
    (Abramowitz & Stegun 26.7.3–4) and bisection; ``df = 1`` gives ``tan(π·level/2)``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")

    def inside(t: float) -> float:  # P(|T| <= t)
        theta = math.atan(t / math.sqrt(df))
        sin, cos2 = math.sin(theta), math.cos(theta) ** 2
        if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos² + 2·4/(3·5) cos⁴ + …))
            term, total = 1.0, 1.0 if df > 1 else 0.0
            for k in range(1, (df - 1) // 2):
                term *= cos2 * (2 * k) / (2 * k + 1)
                total += term
            return 2 / math.pi * (theta + sin * math.cos(theta) * total)
        term, total = 1.0, 1.0  # even: sinθ (1 + ½ cos² + 1·3/(2·4) cos⁴ + …)
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total

    low, high = 0.0, 1.0
    while inside(high) < level:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if inside(middle) < level:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


class Stats(NamedTuple):
    """Mean, sample standard deviation (``n - 1``; 0 for one value) and count of values.

    A tuple, so ``mean, std, n = stats`` works; no values give ``(nan, nan, 0)``.
    """

    mean: float
    std: float
    n: int

    @property
    def sem(self) -> float:
        """The standard error of the mean, ``std / √n`` (NaN for fewer than 2 values)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Student-t confidence interval of the mean (NaN for fewer than 2 values)."""
        if self.n < 2:
            return (math.nan, math.nan)
        half = t_critical(level, self.n - 1) * self.sem
        return (self.mean - half, self.mean + half)


def describe(values: Iterable[float]) -> Stats:
    """:class:`Stats` of ``values`` (converted with ``float``)."""
    data = [float(v) for v in values]
    if not data:
        return Stats(math.nan, math.nan, 0)
    spread = statistics.stdev(data) if len(data) > 1 else 0.0
    return Stats(statistics.fmean(data), spread, len(data))


def numbers(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values`` (empty cells, text, NaN and infinities left out)."""
    return [
        float(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


def summarize(
    rows: Iterable[Mapping[str, Any]],
    by: str | Sequence[str] | Callable[[Mapping[str, Any]], Hashable],
    value: str | Callable[[Mapping[str, Any]], float],
    *,
    where: Mapping[str, Any] | None = None,
) -> dict[Any, Stats]:
    """:class:`Stats` of ``value`` per group of rows (seeds pooled), groups in first-seen order.

    ``by``: a column (the key is its value), columns (a tuple of values) or a function of
    the row; ``value``: a column (read with ``float``) or a function of the row; ``where``:
    only rows with these values.
    """

    def key_of(row: Mapping[str, Any]) -> Any:
        if callable(by):
            return by(row)
        return row[by] if isinstance(by, str) else tuple(row[column] for column in by)

    def value_of(row: Mapping[str, Any]) -> float:
        return value(row) if callable(value) else float(row[value])

    groups: dict[Any, list[float]] = {}
    for row in rows:
        if where and any(row.get(k) != v for k, v in where.items()):
            continue
        groups.setdefault(key_of(row), []).append(value_of(row))
    return {key: describe(values) for key, values in groups.items()}


def within_spread(ours: Stats, paper: Stats | tuple[float, float], slack: float = 0.0) -> bool:
    """Whether two means agree within the larger of the two standard deviations (+ ``slack``)."""
    p_mean, p_std = paper[0], paper[1]
    return abs(ours.mean - p_mean) <= max(p_std, ours.std) + slack


# --------------------------------------------------------------------------- Markdown


def cell(stats: Stats | None, fmt: str = ".4f", spread: str | None = None, empty: str = "–") -> str:
    """``"mean ± std"`` (``fmt``, the spread in ``spread`` or ``fmt``); the mean alone for one
    value; ``empty`` for none."""
    if stats is None or stats.n == 0:
        return empty
    if stats.n == 1:
        return format(stats.mean, fmt)
    return f"{stats.mean:{fmt}} ± {stats.std:{spread or fmt}}"


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines: the header, the ``|---|`` line, one line per row."""

    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]


def _lookup(values: Mapping[Any, Any], x: Any) -> Any:
    """``values[x]``, numbers matched within 1e-9 (a grid's 0.1 is the paper's 0.1)."""
    if x in values:
        return values[x]
    if isinstance(x, int | float):
        for key, value in values.items():
            if isinstance(key, int | float) and math.isclose(key, x, rel_tol=0, abs_tol=1e-9):
                return value
    return None


def comparison_table(
    index: str,
    xs: Iterable[Any],
    ours: Mapping[str, Mapping[Any, Stats]],
    paper: Mapping[str, Mapping[Any, float | Stats]],
    *,
    index_format: str = "g",
    fmt: str = ".4f",
    spread: str | None = None,
    paper_fmt: str = ".3f",
    paper_prefix: str = "paper ",
    empty: str = "–",
) -> list[str]:
    """Our results beside the paper's: one line per ``x``, our columns, then the paper's.

    ``ours`` maps a column title to ``{x: Stats}`` (mean ± std over seeds); ``paper`` maps a
    column name (titled ``paper_prefix + name``) to ``{x: number}`` or ``{x: Stats}`` (the
    paper's mean ± std). Missing values are ``empty``.
    """

    def paper_cell(values: Mapping[Any, Any], x: Any) -> str:
        value = _lookup(values, x)
        if value is None:
            return empty
        if isinstance(value, Stats):
            return cell(value, paper_fmt, empty=empty)
        return format(value, paper_fmt)

    header = [index, *ours, *(f"{paper_prefix}{name}" for name in paper)]
    rows = [
        [
            format(x, index_format),
            *(cell(_lookup(column, x), fmt, spread, empty) for column in ours.values()),
            *(paper_cell(column, x) for column in paper.values()),
        ]
        for x in xs
    ]
    return markdown_table(header, rows)


# --------------------------------------------------------------------------- one run


def build_point(
    scenario: str | Path | Mapping[str, Any],
    set: Sequence[str] = (),
    *,
    clear: Sequence[str] = (),
    keep_writers: Sequence[str] = (),
    extra_writers: Sequence[Any] = (),
    base_dir: str | Path | None = None,
) -> Runner:
    """One grid point's run, validated and built in memory (:meth:`Runner.in_memory`).

    Its ``run()`` raises where the run did not complete (``KeyboardInterrupt`` on Ctrl-C or
    SIGTERM, :class:`~particlesim.errors.ParticlesimError` on a failure or divergence), so
    that :func:`run_grid` never records a half-trained point as finished.

    Args:
        scenario: a scenario file, or a scenario dict (not modified).
        set: ``key=value`` assignments (``--set``), applied in order.
        clear: dotted keys removed before the assignments (``"run.epochs"``: the run length
            is set anew).
        keep_writers: names of the scenario's writers to keep; the others are dropped after
            the assignments (a grid point needs only its final network).
        extra_writers: writer objects added (a ``MemoryWriter`` recording the run).
        base_dir: where the scenario's relative paths start (default: the file's folder).
    """
    from particlesim.runner import Runner
    from particlesim.scenario.loader import apply_override, read_scenario

    if isinstance(scenario, Mapping):
        raw = copy.deepcopy(dict(scenario))
    else:
        raw = read_scenario(scenario)
        base_dir = Path(scenario).parent if base_dir is None else base_dir
    for key in clear:
        *tables, last = key.split(".")
        node: Any = raw
        for part in tables:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for assignment in set:
        apply_override(raw, assignment)
    raw["writers"] = [
        w for w in raw.get("writers", []) if isinstance(w, dict) and w.get("name") in keep_writers
    ]
    runner = Runner.in_memory(raw, base_dir=base_dir, extra_writers=extra_writers)
    runner.strict = True  # an interrupted or failed point must not be recorded as finished
    return runner


def run_built(
    built: Any,
    *,
    out_dir: str | Path | None = None,
    progress: Callable[[Any], None] | None = None,
) -> Any:
    """``built.simulation.run()`` holding this process's share of the machine's cores.

    What ``particlesim run`` does (:func:`~particlesim.threads.run_sharing`: ``[run]
    threads`` or ``OMP_NUM_THREADS`` when given, else the cores divided by the particlesim
    runs alive on the machine, one thread for a tiny network), for an experiment that
    builds its runs itself (:func:`build_point` ``.built``): two experiment commands on one
    machine then share its cores instead of each starting a thread per core (measured on
    2 cores: 4 threads, each run 3–10× slower). Returns the :class:`RunResult`.
    """
    from particlesim.threads import run_sharing

    threads = built.plan.resolved.get("run", {}).get("threads")
    return run_sharing(built.simulation, built.system, threads, progress=progress, out_dir=out_dir)
