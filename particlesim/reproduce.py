"""Every paper's results rebuilt by one command: ``particlesim reproduce [PAPER ...] [--quick]``.

A plugin registers a *reproduction* (hook ``particlesim_register_reproductions``): an object
with a ``name`` (the paper's short name), a ``title`` and ``run(out, quick=, log=)`` that runs
the plugin's experiments through the engine's harness (:mod:`particlesim.experiments`),
writing what it makes (tables, figures) under ``out``, and returns a :class:`Report`: one
:class:`Claim` per row of the paper's results, the paper's number beside ours with its
spread and a verdict.

:func:`reproduce` runs the chosen papers one after the other, records each finished report
as JSON in the results folder (``<results>/<paper>.json``), and writes one Markdown page
(``docs/reproductions.md`` by default): per paper, the settings, the command and the time
it took, the claims table and the figures. A rerun skips the papers already finished (an
interrupted ``reproduce`` goes on where it stopped; the plugins' own grids also resume
point by point), unless ``fresh``. ``quick`` runs each plugin's tiny settings (seconds; the
default test run uses it to check the mechanics) into a separate results folder, so quick
and full reports never mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from particlesim.errors import ParticlesimError
from particlesim.experiments import markdown_table

__all__ = [
    "VERDICTS",
    "Claim",
    "Report",
    "ReproductionError",
    "direction",
    "one_thread",
    "reproduce",
    "verdict",
    "write_markdown",
]

Verdict = Literal["reproduced", "within spread", "not reproduced", "not measured"]
VERDICTS: tuple[str, ...] = ("reproduced", "within spread", "not reproduced", "not measured")
#: Report files older than this format are rerun.
REPORT_VERSION = 1


class ReproductionError(ParticlesimError):
    """A paper name that is not registered, or a reproduction that returned no report."""


@dataclass
class Claim:
    """One row of a paper's results: what is compared, the paper's value and ours.

    ``paper`` and ``ours`` are display text (``"0.84"``, ``"0.65 ± 0.04 (3 seeds)"``);
    ``verdict`` one of :data:`VERDICTS`; ``why`` one line saying what the verdict rests on
    (the spread compared, or the reason a result differs).
    """

    quantity: str
    paper: str
    ours: str
    verdict: Verdict
    why: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


@dataclass
class Report:
    """What one paper's reproduction found (see the module docstring)."""

    paper: str
    title: str
    claims: list[Claim]
    command: str
    settings: str = ""
    figures: list[str] = field(default_factory=list)
    notes: str = ""
    seconds: float = 0.0
    quick: bool = False
    #: Seconds of training behind the results, where the plugin knows them (its grid's
    #: points may have run before this rebuild, which then reuses them).
    compute_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": REPORT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        values = {k: v for k, v in data.items() if k != "version"}
        values["claims"] = [Claim(**claim) for claim in values["claims"]]
        return cls(**values)


def verdict(
    ours: float,
    ours_spread: float,
    paper: float,
    paper_spread: float = 0.0,
    *,
    tolerance: float = 0.0,
    better: Literal["higher", "lower", "either"] = "either",
) -> Verdict:
    """The verdict on one number.

    ``reproduced``: ours is within ``tolerance`` of the paper's, or better than it in the
    direction ``better``; ``within spread``: the two differ by no more than the larger of
    the two spreads (standard deviations over seeds, or the paper's error bar);
    ``not reproduced`` otherwise. NaN: ``not measured``.
    """
    if ours != ours or paper != paper:  # NaN
        return "not measured"
    gap = ours - paper
    if abs(gap) <= tolerance or (better == "higher" and gap > 0) or (better == "lower" and gap < 0):
        return "reproduced"
    if abs(gap) <= max(ours_spread, paper_spread):
        return "within spread"
    return "not reproduced"


def direction(
    ours: Sequence[float],
    baseline: Sequence[float],
    expected: Literal["higher", "lower"],
    *,
    level: float = 0.95,
) -> tuple[str, Verdict, str]:
    """A qualitative claim ("A is higher than B") checked on two samples (runs over seeds).

    Welch's difference of means with its ``level`` confidence interval (Student t at the
    Welch–Satterthwaite degrees of freedom, rounded down): ``reproduced`` when the interval
    lies on the expected side of 0, ``not reproduced`` when it lies on the other side,
    ``within spread`` when it contains 0 (the data cannot tell), ``not measured`` with fewer
    than two values on either side. Returns ``(ours text, verdict, why)``.
    """
    import math

    from particlesim.experiments import describe, t_critical

    a, b = describe(ours), describe(baseline)
    text = f"{a.mean:.3g} ± {a.std:.2g} vs {b.mean:.3g} ± {b.std:.2g} (n = {a.n}, {b.n})"
    if a.n < 2 or b.n < 2:
        return text, "not measured", "fewer than two runs on one side"
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    gap = a.mean - b.mean
    spread = math.sqrt(va + vb)
    if spread == 0:
        low = high = gap
    else:
        df = (va + vb) ** 2 / ((va**2 / (a.n - 1) if va else 0) + (vb**2 / (b.n - 1) if vb else 0))
        half = t_critical(level, max(1, int(df))) * spread
        low, high = gap - half, gap + half
    sign = 1 if expected == "higher" else -1
    why = f"difference {gap:+.3g}, {level:.0%} interval [{low:+.3g}, {high:+.3g}]"
    if sign * low > 0 and sign * high > 0:
        return text, "reproduced", why
    if sign * low < 0 and sign * high < 0:
        return text, "not reproduced", why
    return text, "within spread", why + " contains 0"


@contextlib.contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """Run torch on one CPU thread inside the block (when ``active``), then restore the count.

    A reproduction's quick networks are tiny: on a loaded machine a pool of threads waits
    for the busiest core and costs more than it gains.
    """
    import torch

    threads = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _report_path(results: Path, paper: str) -> Path:
    return results / f"{paper}.json"


def _load_report(path: Path, quick: bool) -> Report | None:
    """A finished report of the same kind (quick or full), or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != REPORT_VERSION or bool(data.get("quick")) != quick:
            return None
        return Report.from_json(data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _save_report(path: Path, report: Report) -> None:
    """Write atomically: an interrupted save leaves the previous file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    os.replace(temporary, path)


def reproduce(
    reproductions: Mapping[str, Any],
    papers: Sequence[str] = (),
    *,
    results: Path,
    markdown: Path | None,
    quick: bool = False,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> list[Report]:
    """Run the chosen papers' reproductions (all, in registry order, when ``papers`` is
    empty), skipping those already finished; write the Markdown page; return the reports.

    Args:
        reproductions: paper name → registered reproduction (``run(out, quick=, log=)``).
        papers: which to run; an unknown name is a :class:`ReproductionError` listing the
            known ones.
        results: the folder of the reports and of what each reproduction writes
            (``<results>/<paper>/``).
        markdown: the page to write (None: none); its figure links are relative to it.
        quick: tiny settings, for checking the mechanics.
        fresh: rerun papers that have a finished report.
    """
    known = list(reproductions)
    unknown = [p for p in papers if p not in reproductions]
    if unknown:
        raise ReproductionError(
            f"unknown paper {unknown[0]!r}; known: {', '.join(known) or 'none'}"
        )
    chosen = list(dict.fromkeys(papers)) or known
    reports: list[Report] = []
    for name in chosen:
        path = _report_path(results, name)
        report = None if fresh else _load_report(path, quick)
        if report is not None:
            log(f"{name}: finished before ({report.seconds:.0f} s), kept")
        else:
            log(f"{name}: running{' (quick)' if quick else ''}")
            start = time.perf_counter()
            report = reproductions[name].run(results / name, quick=quick, log=log)
            if not isinstance(report, Report):
                raise ReproductionError(
                    f"reproduction {name!r} returned {type(report).__name__}, not a Report"
                )
            report.seconds = time.perf_counter() - start
            report.quick = quick
            _save_report(path, report)
            log(f"{name}: done in {report.seconds:.0f} s")
        reports.append(report)
    if markdown is not None:
        # every finished report of this kind on the page, the chosen ones just refreshed
        shown = {r.paper: r for r in reports}
        for name in known:
            if name not in shown:
                found = _load_report(_report_path(results, name), quick)
                if found is not None:
                    shown[name] = found
        write_markdown(
            [shown[n] for n in known if n in shown], markdown, results=results, quick=quick
        )
    return reports


def write_markdown(reports: Sequence[Report], path: Path, *, results: Path, quick: bool) -> Path:
    """The reproductions page: a summary of verdicts, then one section per paper."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {v: sum(c.verdict == v for r in reports for c in r.claims) for v in VERDICTS}
    lines = [
        "# Reproductions",
        "",
        "Rebuilt by `particlesim reproduce"
        + (" --quick" if quick else "")
        + "` (one paper: `particlesim reproduce NAME`); each plugin's experiments run through "
        "the engine's harness, and a rerun keeps the papers already finished (`--fresh` "
        "reruns them).",
        "",
    ]
    if quick:
        lines += [
            "**Quick mode**: tiny data and few steps, to check the mechanics. These numbers "
            "say nothing about the papers.",
            "",
        ]
    lines += [
        "Verdicts: "
        + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
        + f" (over {sum(counts.values())} rows of {len(reports)} papers).",
        "",
    ]
    for report in reports:
        lines += [
            f"## {report.title}",
            "",
            f"`{report.command}` — this rebuild {report.seconds:.0f} s (finished grid points "
            "are reused)"
            + (
                f", {report.compute_seconds:.0f} s of training in all"
                if report.compute_seconds is not None
                else ""
            )
            + (f". {report.settings}" if report.settings else ""),
            "",
            *markdown_table(
                ["quantity", "paper", "ours", "verdict", "why"],
                [[c.quantity, c.paper, c.ours, f"**{c.verdict}**", c.why] for c in report.claims],
            ),
            "",
        ]
        if report.notes:
            lines += [report.notes, ""]
        for figure in report.figures:
            target = Path(figure)
            # the figure's own path names it (two "scaling" figures: d5/…, d25/…)
            label = "/".join(target.with_suffix("").parts[-2:])
            if not target.is_absolute():
                label = target.with_suffix("").as_posix()
                target = results / report.paper / target
            link = os.path.relpath(target, path.parent)
            lines += [f"![{report.paper}: {label}]({link})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
