"""``particlesim reproduce rotskoff``: the error scaling, rebuilt by the plugin's scaling grid.

The paper's claim is an exponent: the distance of a trained mean-field network from its
limit falls as ``n^-1`` in the number of particles (Prop. 2 at low temperature, Prop. 3 at
finite temperature), against ``n^-1/2`` for i.i.d. particles at initialisation. The 3-spin
figure's dashed ``n^-1`` is read as the slides define the approximation error, the loss
``½‖f_n − f‖²``: a claim of its own on the low-temperature runs (see :data:`NOTES`). Each claim
is the slope of ``log error`` against ``log n`` (:func:`~particlesim_rotskoff.experiments.
fit_slope` on the root-mean-square over seeds) with its 95 % confidence interval (Student
t on ``sizes - 2`` degrees of freedom times the slope's standard error), beside the paper's
exponent. A slope is *reproduced* within :data:`TOLERANCE` of the paper's, *within spread*
when the paper's exponent lies inside the interval.

The full reproduction runs two grids of :func:`particlesim_rotskoff.experiments.run`, each
resuming point by point in its own folder of ``out``:

* ``d25/``: the paper's dimension, d = 25 (:func:`paper_dimension_settings`): n = 16 …
  1024, 3 seeds, low temperature, :data:`D25_STEPS` steps of Δt = 1 as at d = 5 (about 5
  minutes of an idle CPU core). The slides' 3-spin runs reach time 2·10⁶ before their
  quench; at d = 25 the descent is slow (the error falls by about a fifth over the first
  6000 steps, from 5.1 to 4.1 at n = 256), so a run of this length measures the unfinished
  descent more than ``n``: the training-length check (the largest network trained twice as
  long) says by how much. Longer runs are a new grid of the same command (``--steps``).
* ``d5/``: the plugin's own grid at d = 5 (the default settings of ``particlesim rotskoff
  scaling``: n = 16 … 1024, 3 seeds, both temperatures, 4000 steps; about 20 minutes),
  where the mean-field descent gets much further in the same time.

``quick`` runs the d = 5 grid only, tiny (n = 16 … 128, one seed, 40 steps), to check the
mechanics in seconds. Its numbers say nothing about the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from particlesim import experiments as harness
from particlesim.reproduce import Claim, Report, one_thread, verdict
from particlesim_rotskoff import experiments

#: A slope within this of the paper's exponent is the paper's exponent.
TOLERANCE = 0.1
#: Level of the slopes' confidence intervals.
LEVEL = 0.95
#: The d = 25 grid: the d = 5 grid's sizes, seeds and length (time 4000); about 5 minutes
#: of one idle CPU core (20 ms per step of all seven sizes together).
D25_STEPS = 4000
D25_SIZES = [16, 32, 64, 128, 256, 512, 1024]
D25_SEEDS = 3
QUICK_SIZES = [16, 32, 64, 128]
QUICK_STEPS = 40

NOTES = (
    "Error = root-mean-square over seeds of the L² distance, on 2000 held-out points, "
    "between the network and its mean-field limit: ‖f_n‖ at initialisation (the limit is 0), "
    "‖f_n − f‖ after training (the limit is the target). Two claims are read from the "
    "trained low-temperature runs, because the slides make two: Prop. 2's ξ = 1 is about "
    "f_n − f itself (the norm, judged against n^-1), while the 3-spin figure's 'error' is "
    "the loss — the slides 'measure the approximation error via the loss function' "
    "ℓ = ½‖f_n − f‖² — whose slope is exactly twice the norm's (the mean of ½·error² over "
    "seeds is ½·RMS²), judged against the figure's n^-1 dashed line. The two cannot both "
    "hold (a norm falling as n^-1 gives a loss falling as n^-2); the figure's reading is "
    "the norm falling as n^-1/2, the CLT rate. Per-size errors, the held-out loss and the "
    "particles' distribution are in each folder's `results.md`."
)


def paper_dimension_settings(
    out: Path, *, log: Callable[[str], None] = print
) -> experiments.Settings:
    """The d = 25 grid (module docstring), writing into ``out``, resuming.

    The dimension is an override (``data.dim=25``), as ``particlesim rotskoff scaling --dim
    25 --steps 4000 --condition low_temperature`` gives it, so the command and the
    reproduction share their finished points.
    """
    return experiments.Settings(
        out=out,
        conditions=("low_temperature",),
        sizes=list(D25_SIZES),
        seeds=D25_SEEDS,
        steps=D25_STEPS,
        overrides=["data.dim=25"],
        resume=True,
        log=log,
    )


def reproduction_grids(
    out: Path, *, quick: bool, log: Callable[[str], None] = print
) -> dict[str, experiments.Settings]:
    """The grids of the reproduction by dimension label (``"d25"``, ``"d5"``), in ``out``."""
    if quick:
        settings = experiments.Settings(
            out=out / "d5", sizes=list(QUICK_SIZES), seeds=1, init_seeds=4,
            steps=QUICK_STEPS, snapshot_size=64, length_check=False, resume=True, log=log,
        )  # fmt: skip
        return {"d5": settings}
    return {  # the plugin's own layout: results/d25/ beside the d = 5 files in results/
        "d25": paper_dimension_settings(out / "d25", log=log),
        "d5": experiments.Settings(out=out, resume=True, log=log),
    }


# --------------------------------------------------------------------------- claims


def slope_interval(fit: Mapping[str, float], sizes: int) -> tuple[float, float]:
    """``(low, high)`` of the slope's confidence interval at :data:`LEVEL` (NaN when the fit
    has no standard error: fewer than 4 sizes)."""
    stderr = fit["stderr"]
    if sizes < 3 or math.isnan(stderr):
        return (math.nan, math.nan)
    half = harness.t_critical(LEVEL, sizes - 2) * stderr
    return (fit["slope"] - half, fit["slope"] + half)


def _slope_text(fit: Mapping[str, float], interval: tuple[float, float]) -> str:
    if math.isnan(fit["slope"]):
        return "–"
    if math.isnan(interval[0]):
        return f"{fit['slope']:.2f}"
    return f"{fit['slope']:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def length_check_text(rows: Sequence[dict[str, Any]], condition: str) -> str:
    """``"; twice as long at n = 1024: ×0.64"``: the training-length check, when it ran."""
    check = next((r for r in rows if r["kind"] == f"{condition}_twice_as_long"), None)
    if check is None:
        return ""
    first = next(
        (r for r in rows if r["kind"] == condition and r["particles"] == check["particles"]
         and r["seed"] == check["seed"]),
        None,
    )  # fmt: skip
    if first is None:
        return ""
    ratio = float(check["error"]) / float(first["error"])
    return f"; n = {check['particles']} trained twice as long: error ×{ratio:.2f}" + (
        " (still falling)" if ratio < 0.99 else " (no longer falling)"
    )


#: What the figure's claim fits: the low-temperature runs' loss.
FIGURE_LABEL = "trained, low temperature: loss ½‖f_n − f‖² (the figure's reading)"


def scaling_claims(rows: Sequence[dict[str, Any]], dim: int) -> list[Claim]:
    """One claim per fitted slope of one grid (initialisation, then each temperature), and
    the 3-spin figure's: the low-temperature loss (twice the error's slope, see NOTES)."""
    summary = experiments.summarize(rows)
    fits = experiments.slopes(summary)
    # (runs, the paper's exponent and statement, what is fitted, factor on the error's slope)
    readings = []
    for kind in [k for k in ("init", *experiments.CONDITIONS) if k in summary]:
        readings.append((kind, experiments.PAPER[kind], experiments.LABELS[kind], 1.0))
        if kind == "low_temperature":  # ℓ = ½·RMS²: every slope and bound doubles
            factor = experiments.LOSS_SLOPE_FACTOR
            readings.append((kind, experiments.FIGURE, FIGURE_LABEL, factor))
    claims = []
    for kind, (expected, statement), label, factor in readings:
        per_n = summary[kind]
        low, high = slope_interval(fits[kind], len(per_n))
        fit = {**fits[kind], "slope": factor * fits[kind]["slope"]}
        interval = (factor * low, factor * high)
        half = (interval[1] - interval[0]) / 2
        outcome = verdict(fit["slope"], half, expected, tolerance=TOLERANCE)
        sizes = list(per_n)
        seeds = sorted({count for _, count in per_n.values()})
        ours = (
            f"{_slope_text(fit, interval)} (n = {sizes[0]}…{sizes[-1]}, "
            f"{'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])})"
        )
        if outcome == "reproduced":
            why = f"within {TOLERANCE:g} of the paper's exponent"
        elif outcome == "within spread":
            why = f"the paper's exponent lies inside the {LEVEL:.0%} interval"
        elif outcome == "not measured":
            why = "too few sizes to fit"
        else:
            side = "shallower" if fit["slope"] > expected else "steeper"
            why = f"{side} than {expected:g}, outside the {LEVEL:.0%} interval"
        if kind != "init":
            why += length_check_text(rows, kind)
        claims.append(
            Claim(
                quantity=f"d = {dim}: slope of {label} against n",
                paper=f"{expected:g} ({statement})",
                ours=ours,
                verdict=outcome,
                why=why,
            )
        )
    return claims


def settings_text(lengths: Mapping[str, Mapping[str, Any]], settings: experiments.Settings) -> str:
    """One grid's settings: sizes, seeds, and each temperature's training length."""
    runs = "; ".join(
        f"{condition}: {experiments.describe_length(dict(info))}"
        for condition, info in lengths.items()
    )
    sizes = settings.sizes
    return (
        f"n = {sizes[0]}…{sizes[-1]} ({len(sizes)} sizes), {settings.seeds} trained seed(s) "
        f"per size, {settings.init_seeds} at initialisation; {runs}"
    )


def report_from(
    out: Path, grids: Mapping[str, experiments.Settings], *, quick: bool, title: str, name: str
) -> Report:
    """The :class:`Report` of the grids' result files in ``out`` (``<label>/scaling.csv``,
    ``<label>/run_info.json``); a grid without results is left out."""
    import json

    claims: list[Claim] = []
    texts: list[str] = []
    figures: list[str] = []
    compute = 0.0
    for settings in grids.values():
        folder = settings.out
        if not (folder / "scaling.csv").is_file():
            continue
        rows = harness.read_csv(folder / "scaling.csv")
        info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
        lengths = info.get("lengths", {})
        dim = int(next(iter(lengths.values()))["dim"]) if lengths else 0
        claims += scaling_claims(rows, dim)
        seconds = float(info.get("run_seconds", experiments.run_seconds(rows)))
        compute += seconds
        texts.append(f"d = {dim}: {settings_text(lengths, settings)} ({seconds:.0f} s of runs)")
        figures += [
            str(path.relative_to(out))
            for path in (folder / n for n in ("scaling.png", "slice.png", "particles.png"))
            if path.is_file()
        ]
    return Report(
        paper=name,
        title=title,
        claims=claims,
        command=f"particlesim reproduce {name}" + (" --quick" if quick else ""),
        settings=". ".join(texts),
        figures=figures,
        notes=NOTES,
        compute_seconds=compute if claims else None,
    )


class RotskoffReproduction:
    """Rotskoff & Vanden-Eijnden's error scaling: n^-1/2 at initialisation, n^-1 trained."""

    name = "rotskoff"
    title = (
        "Rotskoff & Vanden-Eijnden (2018), Neural networks as interacting particle systems: "
        "error scaling n^-1 of trained mean-field networks (spherical 3-spin)"
    )

    def run(self, out: Path, *, quick: bool, log: Callable[[str], None] = print) -> Report:
        """Run the grids into ``out`` (resuming), write tables and figures, map to claims."""
        # the full grids live beside the plugin (their finished points are kept and reused)
        folder = out if quick else experiments.RESULTS
        grids = reproduction_grids(folder, quick=quick, log=log)
        with one_thread(quick):
            for settings in grids.values():
                experiments.run(settings)
        report = report_from(folder, grids, quick=quick, title=self.title, name=self.name)
        if not quick:  # outside the results folder the page links them by full path
            report.figures = [str(folder / figure) for figure in report.figures]
        return report
