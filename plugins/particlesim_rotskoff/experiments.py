"""Rotskoff & Vanden-Eijnden's error scaling, run through the engine's scenarios.

**scaling** (slides "Error scaling", "Healing of errors by training"): mean-field networks
``f_n(x) = (1/n) Σ c_i σ(a_i·x + b_i)`` of ``n`` = 16 … 1024 particles learn the spherical
3-spin function. For each ``n`` and seed the experiment measures, on held-out points,

* at initialisation: ``‖f_n(0) - f_0(0)‖``, the distance from the mean-field limit, which is
  ``f_0(0) = 0`` because the initial charges have mean 0 (``init_seeds`` networks per
  ``n``: building one costs nothing);
* after training: ``‖f_n - f‖`` (and the loss ``ℓ = ½‖f_n - f‖²``), where the trained
  mean-field limit is the target ``f`` itself (Prop. 1),

with ``‖g‖ = (E_x g(x)²)^{1/2}`` over the test points, and fits ``log error`` against
``log n`` (``numpy.polyfit``) on the root-mean-square over seeds. The paper: slope ``-1/2``
at initialisation (central limit theorem of i.i.d. particles), ``-1`` after training at low
temperature (Prop. 2) and at finite temperature ``(βn)^{-1}`` (Prop. 3). Two conditions,
one scenario each:

* ``low_temperature`` (``scenarios/rotskoff_3spin.toml``): SGD on ``L = n·ℓ`` with fresh
  points every step and a fivefold batch-size quench at 3/4 of the run;
* ``finite_temperature`` (``scenarios/rotskoff_3spin_langevin.toml``): the same plus
  Langevin noise at temperature ``(βn)^{-1}`` and a Gaussian reference measure.

A last run trains the largest network again for twice as many steps (``length_check``):
if its error drops, the trained errors are still limited by the training time, not by
``n``, and the fitted slopes are shallower than the converged ones.

Each run is a scenario read, overridden (``model.particles`` and ``integrator.particles``
together, ``scenario.seed``, ``run.steps`` with the quench moved in proportion, any
``--set``), validated and built by :mod:`particlesim.scenario`. The runs are a grid of
:mod:`particlesim.experiments`: each is recorded as it ends, and ``--resume`` goes on with a
killed reproduction. Results go to ``--out`` (default ``results/`` beside this module):
``scaling.csv`` (one row per run), ``particles.csv`` (``c``, ``|a|``, ``b`` of every particle
of one run before and after training), ``slice.csv`` (``f`` and ``f_n`` on the slides' 2-D
slice), ``results.md`` (tables, fitted slopes, the paper's statements side by side),
``README.md`` (what was run, training lengths) and ``scaling.png``, ``particles.png``,
``slice.png``::

    python -m particlesim_rotskoff.experiments scaling --out results
    particlesim rotskoff scaling --quick

The scenarios use d = 5, where the mean-field descent gets far within a few thousand steps
on a CPU core. The paper's dimension is ``--dim 25``; there the descent is much slower (the
slides' runs reach time 2·10⁶), and the grid of the reproduction
(:mod:`particlesim_rotskoff.reproduction`) keeps the d = 5 grid's sizes, seeds and length
(time 4000), about 5 minutes of an idle CPU core::

    particlesim rotskoff scaling --dim 25 --steps 4000 --condition low_temperature \\
        --out results/d25 --resume

A longer session extends it with more ``--seeds`` or ``--sizes`` (the finished points are
kept with ``--resume``) or with ``--steps`` (a new grid: the length is part of each point's
id).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from particlesim import experiments as harness
from particlesim.cli.common import Resume, command_entry_points, fail
from particlesim.errors import ParticlesimError, printable
from particlesim.experiments import Point
from particlesim.experiments import read_csv as read_csv  # the reader of scaling.csv

HERE = Path(__file__).resolve().parent
#: Where the scenario files live in a source checkout (``<repo>/scenarios``).
SCENARIOS = HERE.parents[1] / "scenarios"
RESULTS = HERE / "results"

CONDITIONS = {
    "low_temperature": "rotskoff_3spin.toml",
    "finite_temperature": "rotskoff_3spin_langevin.toml",
}
LABELS = {
    "init": "initialisation: ‖f_n − f_0‖ (f_0 = 0)",
    "low_temperature": "trained, low temperature: ‖f_n − f‖",
    "finite_temperature": "trained, finite temperature: ‖f_n − f‖",
}
COLORS = {"init": "tab:gray", "low_temperature": "tab:blue", "finite_temperature": "tab:red"}
SIZES = [16, 32, 64, 128, 256, 512, 1024]

#: The paper's statements, quoted beside the measured slopes.
PAPER = {
    "init": (
        -0.5,
        "ξ = 1/2 initially: CLT scaling of iid initial conditions (slide 'Error scaling')",
    ),
    "low_temperature": (
        -1.0,
        "ξ = 1 after optimization (Prop. 2)",
    ),
    "finite_temperature": (
        -1.0,
        "n (f_n − f) → Gaussian with mean β^-1 ε*, variance β^-1 (Prop. 3, CLT at finite T)",
    ),
}
#: The loss ``ℓ = ½‖f_n − f‖²``, over seeds ``½·RMS²``, falls with twice the fitted slope of
#: the error's RMS (and every bound on it doubles): how the figure's reading is derived.
LOSS_SLOPE_FACTOR = 2.0

#: The 3-spin figure's statement: its "error" is the loss (the slides "measure the
#: approximation error via the loss function ℓ(f, f_n) = ½∫|f − f_n|²"), trained with
#: batches and a quench, as the low-temperature condition is.
FIGURE = (
    -1.0,
    "'Dashed line are ∝ n^-1' (3-spin figure, 'Error scaling'); the slides measure the "
    "approximation error via the loss ℓ(f, f_n) = ½∫|f − f_n|²",
)


@dataclass
class Settings:
    """What to run: sizes, seeds, lengths, and where the scenarios and results are."""

    out: Path = RESULTS
    scenarios: Path = SCENARIOS
    conditions: tuple[str, ...] = tuple(CONDITIONS)
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    #: Trained networks per size and condition.
    seeds: int = 3
    #: Networks per size measured at initialisation only (seeds 0 … init_seeds - 1).
    init_seeds: int = 16
    #: Steps per run; ``None``: the scenario's own ``run.steps``.
    steps: int | None = None
    #: Size whose particles are recorded before and after training (the nearest run).
    snapshot_size: int = 256
    #: Train the largest size once more for twice the steps (is the error time-limited?).
    length_check: bool = True
    overrides: list[str] = field(default_factory=list)
    #: Keep the runs already recorded in ``out`` (a killed reproduction goes on).
    resume: bool = False
    log: Callable[[str], None] = print


# --------------------------------------------------------------------------- runs


def scenario_table(
    settings: Settings, condition: str, particles: int, seed: int
) -> tuple[dict[str, Any], Path]:
    """The scenario of one run with its overrides applied (writers dropped), and its path.

    ``settings.steps`` moves the scenario's ``batch_schedule`` in proportion, so the
    quench stays at the same fraction of the run.
    """
    from particlesim.scenario.loader import apply_override, read_scenario

    path = settings.scenarios / CONDITIONS[condition]
    raw = read_scenario(path)
    run_table = raw.setdefault("run", {})
    if settings.steps is not None:
        old = run_table.get("steps")
        schedule = run_table.get("batch_schedule")
        if isinstance(old, int) and old > 0 and isinstance(schedule, list):
            run_table["batch_schedule"] = [
                [max(1, round(entry[0] * settings.steps / old)), *entry[1:]]
                for entry in schedule
                if isinstance(entry, list) and entry
            ]
        run_table.pop("epochs", None)
        run_table["steps"] = settings.steps
    for assignment in (
        f"model.particles={particles}",
        f"integrator.particles={particles}",
        f"scenario.seed={seed}",
        *settings.overrides,
    ):
        apply_override(raw, assignment)
    raw["writers"] = []
    return raw, path


def build_run(settings: Settings, condition: str, particles: int, seed: int) -> Any:
    """Validate and build one run (a :class:`~particlesim.scenario.builder.Built`)."""
    from particlesim.runner import Runner

    raw, path = scenario_table(settings, condition, particles, seed)
    if raw.get("model", {}).get("name") != "mean_field":
        raise ParticlesimError(f"{path.name}: the experiment needs the model 'mean_field'")
    return Runner.in_memory(raw, base_dir=path.parent).built


def network_values(built: Any, x: Any) -> Any:
    """``f_n(x)`` ``[B]`` in float64 for points ``x [B, d]``."""
    import torch

    simulation = built.simulation
    with torch.no_grad():
        return simulation.system(x.to(simulation.device, simulation.dtype))[:, 0].double().cpu()


def field_errors(built: Any) -> dict[str, float]:
    """On the test points: ``norm = ‖f_n‖``, ``error = ‖f_n - f‖``, ``loss = ½‖f_n - f‖²``."""
    f_n = network_values(built, built.data.test_x)
    diff = f_n - built.data.test_y.double()
    return {
        "norm": float(f_n.pow(2).mean().sqrt()),
        "error": float(diff.pow(2).mean().sqrt()),
        "loss": float(0.5 * diff.pow(2).mean()),
    }


def particle_rows(built: Any, condition: str, seed: int, stage: str) -> list[dict[str, Any]]:
    """``c_i``, ``|a_i|`` and ``b_i`` of every particle (the empirical distribution ρ_n)."""
    group = built.system.groups["particles"]
    charge = group.charge.detach().double().reshape(group.size, -1)[:, 0].tolist()
    norm = group.position.detach().double().norm(dim=1).tolist()
    bias = group.bias.detach().double().tolist() if group.has("bias") else [0.0] * group.size
    return [
        {
            "condition": condition,
            "particles": group.size,
            "seed": seed,
            "stage": stage,
            "index": i,
            "c": c,
            "a_norm": a,
            "b": b,
        }
        for i, (c, a, b) in enumerate(zip(charge, norm, bias, strict=True))
    ]


def slice_rows(built: Any, points: int = 181) -> list[dict[str, Any]]:
    """``f`` and ``f_n`` on the slides' slice ``x_0 = √d cos θ``, ``x_1 = √d sin θ``."""
    import torch

    from particlesim_rotskoff.spin import slice_points

    dataset = built.plan.dataset
    theta = torch.linspace(0.0, 2 * math.pi, points, dtype=torch.float64)
    x = slice_points(dataset.dim, theta)
    target = dataset(x)
    values = network_values(built, x)
    return [
        {"theta": float(t), "f": float(f), "f_n": float(g)}
        for t, f, g in zip(theta, target, values, strict=True)
    ]


def scaling_points(settings: Settings) -> list[Point]:
    """The runs, in the order of ``scaling.csv``: ``init_seeds`` networks per size measured at
    initialisation, ``seeds`` trained networks per condition and size, the length check."""
    context = {
        "scenarios": str(settings.scenarios),
        "steps": settings.steps,
        "overrides": settings.overrides,
        "init_condition": settings.conditions[0],
        "snapshot": snapshot_size(settings),
    }
    sizes = settings.sizes
    init = {"kind": ["init"], "particles": sizes, "seed": range(settings.init_seeds)}
    trained = {"kind": settings.conditions, "particles": sizes, "seed": range(settings.seeds)}
    check = {"kind": [f"{settings.conditions[0]}_twice_as_long"], "particles": [max(sizes)]}
    return [
        *harness.grid(init, context=context),
        *harness.grid(trained, context=context),
        *(harness.grid({**check, "seed": [0]}, context=context) if settings.length_check else []),
    ]


def snapshot_size(settings: Settings) -> int:
    """The size whose particles (seed 0) are recorded: the nearest to ``snapshot_size``."""
    return min(settings.sizes, key=lambda n: (abs(n - settings.snapshot_size), n))


def run_scaling(
    settings: Settings,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Every run of the experiment: scaling rows, particle rows, slice rows, run lengths.

    Each run is recorded in ``scaling.csv`` (and ``particles.csv``, ``slice.csv``) as it
    ends; the run lengths are read from each condition's first network, built untrained.
    """
    snapshot = snapshot_size(settings)
    lengths = {
        c: describe_run(build_run(settings, c, settings.sizes[0], 0)) for c in settings.conditions
    }

    def run_point(point: Point) -> dict[str, list[dict[str, Any]]]:
        kind, n, seed = point["kind"], point["particles"], point["seed"]
        if kind == "init":
            errors = field_errors(build_run(settings, settings.conditions[0], n, seed))
            return {"scaling": [{"kind": "init", "particles": n, "seed": seed, **errors}]}
        if kind.endswith("_twice_as_long"):
            condition = kind.removesuffix("_twice_as_long")
            steps = 2 * int(lengths[condition]["steps"])
            return {"scaling": [length_check(settings, condition, n, steps)]}
        built = build_run(settings, kind, n, seed)
        simulation = built.simulation
        keep = n == snapshot and seed == 0
        particles = particle_rows(built, kind, seed, "init") if keep else []
        result = harness.run_built(built)
        if result.status != "completed":
            raise ParticlesimError(f"{kind} n={n}: the run ended {result.status}")
        errors = field_errors(built)
        if keep:
            particles += particle_rows(built, kind, seed, "trained")
        slices = [{"condition": kind, **r} for r in slice_rows(built)] if keep else []
        settings.log(
            f"{kind} n={n} seed={seed}: error {errors['error']:.4g} ({result.wall_time:.1f} s)"
        )
        row = {"kind": kind, "particles": n, "seed": seed, **errors, "steps": simulation.step,
               "time": round(simulation.time, 6), "wall_s": round(result.wall_time, 2)}  # fmt: skip
        return {"scaling": [row], "particles": particles, "slice": slices}

    def done(point: Point, result: Any) -> None:
        if point["kind"] == "init" and point["seed"] == settings.init_seeds - 1:
            settings.log(f"init n={point['particles']}: {settings.init_seeds} networks measured")

    tables = {name: settings.out / f"{name}.csv" for name in ("scaling", "particles", "slice")}
    results = harness.run_grid(
        scaling_points(settings),
        run_point,
        tables,
        resume=settings.resume,
        on_point=done,
        log=settings.log,
    )
    rows = results["scaling"]
    for check in [r for r in rows if str(r["kind"]).endswith("_twice_as_long")]:
        condition = str(check["kind"]).removesuffix("_twice_as_long")
        first = next(
            r for r in rows if r["kind"] == condition and r["particles"] == check["particles"]
            and r["seed"] == 0
        )  # fmt: skip
        settings.log(
            f"length check {condition} n={check['particles']}: error {first['error']:.4g} after "
            f"{first['steps']} steps, {check['error']:.4g} after {check['steps']} "
            f"({check['wall_s']:.1f} s)"
        )
    return rows, results["particles"], results["slice"], lengths


def length_check(settings: Settings, condition: str, n: int, steps: int) -> dict[str, Any]:
    """Train size ``n`` (seed 0) for ``steps``, twice the others' length; its row."""
    longer = dataclasses.replace(settings, steps=steps)
    built = build_run(longer, condition, n, 0)
    result = harness.run_built(built)
    errors = field_errors(built)
    return {"kind": f"{condition}_twice_as_long", "particles": n, "seed": 0, **errors,
            "steps": built.simulation.step, "time": round(built.simulation.time, 6),
            "wall_s": round(result.wall_time, 2)}  # fmt: skip


def describe_run(built: Any) -> dict[str, Any]:
    """Training length and noise of a run: steps, Δt, total time, batches, temperature."""
    resolved = built.plan.resolved
    simulation = built.simulation
    integrator = resolved["integrator"]
    return {
        "steps": simulation.total_steps,
        "dt": integrator["lr"],
        "total_time": round(simulation.total_steps * float(integrator["lr"]), 6),
        "batch_size": resolved["run"]["batch_size"],
        "batch_schedule": resolved["run"]["batch_schedule"] or [],
        "beta": integrator.get("beta"),
        "temperature": integrator.get("temperature"),
        "reference_std": integrator.get("reference_std"),
        "dim": resolved["data"]["dim"],
        "activation": resolved["model"]["activation"],
    }


# --------------------------------------------------------------------------- analysis


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[int, tuple[float, int]]]:
    """``{kind: {n: (root-mean-square over seeds, seeds)}}`` of the error that kind scales.

    At initialisation the error is ``‖f_n‖`` (the distance from ``f_0 = 0``); after
    training it is ``‖f_n - f‖``.
    """
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if row["kind"] not in LABELS:
            continue
        key = "norm" if row["kind"] == "init" else "error"
        values.setdefault(row["kind"], {}).setdefault(int(row["particles"]), []).append(
            float(row[key])
        )
    return {
        kind: {
            n: (math.sqrt(sum(v * v for v in vs) / len(vs)), len(vs))
            for n, vs in sorted(per_n.items())
        }
        for kind, per_n in values.items()
    }


def fit_slope(sizes: Sequence[float], errors: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``log error = slope·log n + intercept`` (``numpy.polyfit``).

    ``stderr`` is the slope's standard error (NaN with fewer than 4 sizes).
    """
    import numpy as np

    x = np.log(np.asarray(sizes, dtype=float))
    y = np.log(np.asarray(errors, dtype=float))
    if x.size < 2:
        return {"slope": math.nan, "intercept": math.nan, "stderr": math.nan}
    if x.size >= 4:
        coefficients, covariance = np.polyfit(x, y, 1, cov=True)
        stderr = float(math.sqrt(covariance[0, 0]))
    else:
        coefficients, stderr = np.polyfit(x, y, 1), math.nan
    return {"slope": float(coefficients[0]), "intercept": float(coefficients[1]), "stderr": stderr}


def slopes(summary: dict[str, dict[int, tuple[float, int]]]) -> dict[str, dict[str, float]]:
    """The fitted slope of every kind in ``summary``."""
    return {
        kind: fit_slope(list(per_n), [value for value, _ in per_n.values()])
        for kind, per_n in summary.items()
    }


def finding(kind: str, fit: dict[str, float]) -> str:
    """One sentence comparing a fitted slope with the paper's."""
    expected, _ = PAPER[kind]
    slope, stderr = fit["slope"], fit["stderr"]
    if math.isnan(slope):
        return f"{LABELS[kind]}: too few sizes to fit a slope."
    spread = f" ± {stderr:.2f}" if not math.isnan(stderr) else ""
    gap = abs(slope - expected)
    if gap <= 0.1:
        verdict = f"agrees with the paper's {expected:g}"
    elif slope > expected:
        verdict = f"shallower than the paper's {expected:g}"
    else:
        verdict = f"steeper than the paper's {expected:g}"
    return f"{LABELS[kind]}: slope {slope:.2f}{spread}, {verdict}."


# --------------------------------------------------------------------------- files


def markdown(
    rows: Sequence[dict[str, Any]], lengths: dict[str, Any], settings: Settings, wall: float
) -> str:
    """``results.md``: error per ``n``, fitted slopes beside the paper's statements."""
    summary = summarize(rows)
    fits = slopes(summary)
    kinds = [k for k in ("init", *CONDITIONS) if k in summary]
    lines = [
        "# Rotskoff & Vanden-Eijnden: error scaling of mean-field networks",
        "",
        "Produced by `python -m particlesim_rotskoff.experiments scaling` "
        f"({wall:.0f} s wall). Error = root-mean-square over seeds of the L² distance on "
        "held-out points between the network and its mean-field limit: `‖f_n‖` at "
        "initialisation (the limit is `f_0 = 0`), `‖f_n − f‖` after training.",
        "",
        "## Error against the number of particles n",
        "",
    ]

    def error(kind: str, n: int) -> str:
        value = summary[kind].get(n)
        return "–" if value is None else f"{value[0]:.4g} ({value[1]})"

    sizes = sorted({n for k in kinds for n in summary[k]})
    lines += harness.markdown_table(
        ["n", *(f"{LABELS[k]} (seeds)" for k in kinds)],
        [[n, *(error(kind, n) for kind in kinds)] for n in sizes],
    )
    lines += ["", "## Fitted log-log slopes beside the paper", ""]
    slope_rows = []
    for kind in kinds:
        fit = fits[kind]
        expected, statement = PAPER[kind]
        spread = "" if math.isnan(fit["stderr"]) else f" ± {fit['stderr']:.2f}"
        slope_rows.append([LABELS[kind], f"{fit['slope']:.2f}{spread}", f"{expected:g}", statement])
    header = ["quantity", "measured slope ± s.e.", "paper", "the paper's statement"]
    lines += harness.markdown_table(header, slope_rows)
    lines += ["", "## Findings", ""]
    lines += [f"* {finding(kind, fits[kind])}" for kind in kinds]
    checks = [r for r in rows if str(r["kind"]).endswith("_twice_as_long")]
    for check in checks:
        condition = str(check["kind"]).removesuffix("_twice_as_long")
        first = next(
            (r for r in rows if r["kind"] == condition and r["particles"] == check["particles"]
             and r["seed"] == check["seed"]),
            None,
        )  # fmt: skip
        if first is None:
            continue
        change = float(check["error"]) / float(first["error"])
        lines += [
            f"* Training length: n = {check['particles']} ({condition}, seed {check['seed']}) "
            f"reaches ‖f_n − f‖ = {float(first['error']):.4g} after {first['steps']} steps and "
            f"{float(check['error']):.4g} after {check['steps']} (×{change:.2f}): "
            + (
                "the trained errors are still limited by the training time, so the fitted "
                "slopes understate the converged ones."
                if change < 0.9
                else "the error still falls with training time, slowly: the runs sit on a "
                "slow stretch of the descent, not necessarily at its end."
                if change < 0.99
                else "the error no longer falls with training time at this size."
            )
        ]
    losses = _loss_table(rows)
    if losses:
        lines += ["", "## Held-out loss ℓ = ½‖f_n − f‖² (mean over seeds)", "", *losses]
    lines += ["", "## Training", ""]
    for condition, info in lengths.items():
        lines.append(f"* {condition}: {describe_length(info)}")
    return "\n".join(lines).rstrip() + "\n"


def _loss_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    kinds = [k for k in ("init", *CONDITIONS) if any(r["kind"] == k for r in rows)]
    if not kinds:
        return []
    loss = harness.summarize(rows, lambda r: (r["kind"], int(r["particles"])), "loss")

    def mean(kind: str, n: int) -> str:
        stats = loss.get((kind, n))
        return "–" if stats is None else f"{stats.mean:.4g}"

    sizes = sorted({int(r["particles"]) for r in rows})
    return harness.markdown_table(["n", *kinds], [[n, *(mean(k, n) for k in kinds)] for n in sizes])


def describe_length(info: dict[str, Any]) -> str:
    """One line: steps, Δt, total time, batch sizes, temperature, dimension."""
    schedule = ", ".join(f"P = {size} from step {step}" for step, size in info["batch_schedule"])
    temperature = (
        f"β = {info['beta']:g} (temperature (βn)^-1)"
        if info.get("beta") is not None
        else f"temperature {info.get('temperature', 0):g}"
    )
    reference = (
        f", Gaussian reference measure s = {info['reference_std']:g}"
        if info.get("reference_std") is not None
        else ""
    )
    return (
        f"{info['steps']} steps of Δt = {info['dt']:g} (time {info['total_time']:g}), "
        f"online batches P = {info['batch_size']}{'; ' + schedule if schedule else ''}, "
        f"{temperature}{reference}, d = {info['dim']}, h = {info['activation']}"
    )


def run_seconds(rows: Sequence[dict[str, Any]]) -> float:
    """The trained runs' own wall time, summed (``wall_s`` of ``scaling.csv``): what the
    grid cost, also when a resumed call kept runs an earlier call finished."""
    return sum(float(r["wall_s"]) for r in rows if isinstance(r.get("wall_s"), int | float))


def readme(
    lengths: dict[str, Any],
    settings: Settings,
    wall: float,
    trained: float | None = None,
    rows: Sequence[dict[str, Any]] = (),
) -> str:
    """``README.md``: what the folder holds, how it was made, how long the runs trained and,
    from ``rows``, which reading of "error" the paper's figure takes (all of it generated:
    a rebuild of the folder leaves nothing written by hand to lose).

    ``trained``: the trained runs' own seconds (:func:`run_seconds`), when known.
    """
    spent = f"; the trained runs took {trained:.0f} s" if trained is not None else ""
    lines = [
        "# Results: Rotskoff & Vanden-Eijnden, mean-field networks on the spherical 3-spin model",
        "",
        "Written by `python -m particlesim_rotskoff.experiments scaling --out <this folder>` "
        f"in {wall:.0f} s of wall time{spent} (CPU, `OMP_NUM_THREADS=1`).",
        "",
        f"* sizes n = {', '.join(str(n) for n in settings.sizes)}; "
        f"{settings.seeds} trained seed(s) per size and condition; "
        f"{settings.init_seeds} networks per size measured at initialisation",
        f"* scenarios: {', '.join(CONDITIONS[c] for c in settings.conditions)} "
        f"(overrides: {', '.join(settings.overrides) or 'none'})",
        "",
        "## Training lengths",
        "",
    ]
    lines += [f"* {condition}: {describe_length(info)}" for condition, info in lengths.items()]
    lines += [
        "",
        "The paper's 3-spin runs (d = 25) reach time 2·10⁶ before their quench; these runs "
        "are far shorter, so the trained error also holds the mean-field dynamics' own "
        "unfinished descent, which does not depend on n and flattens the slopes (see the "
        "training-length check in `results.md`).",
        "",
        "## Files",
        "",
        "* `results.md`: error per n, fitted slopes beside the paper's statements, findings",
        "* `scaling.csv`: one row per network (`kind` = init, the condition, or "
        "`<condition>_twice_as_long` for the training-length check; `norm` = ‖f_n‖, "
        "`error` = ‖f_n − f‖, `loss` = ½‖f_n − f‖² on the test points)",
        "* `particles.csv`: c, |a|, b of every particle of one run before and after training",
        "* `slice.csv`: f and f_n on the slice x_0 = √d cos θ, x_1 = √d sin θ",
        "* `scaling.png`, `particles.png`, `slice.png`: the plots",
    ]
    lines += _error_reading(rows)
    return "\n".join(lines) + "\n"


def _error_reading(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The README's section on the figure's quantity: the trained runs' slopes read as the
    norm ‖f_n − f‖ (Prop. 2) and as the loss ½‖f_n − f‖² (the figure), side by side."""
    trained = [c for c in CONDITIONS if any(r["kind"] == c for r in rows)]
    if not trained:
        return []
    norms = slopes(summarize(rows))
    table = []
    for condition in trained:
        slope = norms[condition]["slope"]
        loss = LOSS_SLOPE_FACTOR * slope
        table.append([condition.replace("_", " "), f"{slope:.2f}", f"{loss:.2f}"])
    sizes = sorted({int(r["particles"]) for r in rows if r["kind"] in trained})
    return [
        "",
        '## Which "error" the paper\'s figure shows',
        "",
        'The slides\' 3-spin figure is captioned "Error scaling … Dashed line are ∝ n^-1" '
        "without naming the quantity on its axis; the slides define the approximation error "
        'as the loss ("Measure the approximation error via the loss function"), so '
        "`particlesim reproduce rotskoff` judges the figure by the loss and Prop. 2 by the "
        "norm, one row each. Log-log slopes of these runs over n = "
        f"{sizes[0]}…{sizes[-1]} (least squares on the root-mean-square over seeds in "
        "`results.md`; the loss, ½·RMS², twice its slope):",
        "",
        *harness.markdown_table(
            ["trained condition", "norm ‖f_n − f‖ (Prop. 2: −1/2)", "loss ½‖f_n − f‖² (fig.: −1)"],
            table,
        ),
    ]


# --------------------------------------------------------------------------- plots


def write_plots(
    rows: Sequence[dict[str, Any]],
    particles: Sequence[dict[str, Any]],
    slices: Sequence[dict[str, Any]],
    out: Path,
) -> list[Path]:
    """``scaling.png`` (error vs n, fitted lines), ``particles.png`` and ``slice.png``."""
    from particlesim.analysis.plots import new_figure

    written = []
    summary = summarize(rows)
    fits = slopes(summary)
    fig = new_figure(figsize=(6.6, 4.8), layout="constrained")
    ax = fig.subplots()
    for kind in [k for k in ("init", *CONDITIONS) if k in summary]:
        key = "norm" if kind == "init" else "error"
        points = [(r["particles"], r[key]) for r in rows if r["kind"] == kind]
        ax.scatter(*zip(*points, strict=True), s=6, color=COLORS[kind], alpha=0.3)
        sizes = list(summary[kind])
        values = [v for v, _ in summary[kind].values()]
        ax.plot(sizes, values, "o", color=COLORS[kind], markersize=5)
        fit = fits[kind]
        if not math.isnan(fit["slope"]):
            line = [math.exp(fit["intercept"]) * n ** fit["slope"] for n in sizes]
            ax.plot(sizes, line, "-", color=COLORS[kind],
                    label=f"{LABELS[kind]}: slope {fit['slope']:.2f}")  # fmt: skip
            expected = PAPER[kind][0]
            anchor = values[0] / sizes[0] ** expected
            ax.plot(sizes, [anchor * n**expected for n in sizes], ":", color=COLORS[kind],
                    label=f"n^{expected:g} (paper)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("particles n")
    ax.set_ylabel("L² distance from the mean-field limit")
    ax.set_title("Error scaling (dots: seeds; lines: fits; dotted: paper's slope)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.savefig(out / "scaling.png", dpi=110)
    written.append(out / "scaling.png")

    if particles:
        conditions = [c for c in CONDITIONS if any(p["condition"] == c for p in particles)]
        fig = new_figure(figsize=(4.2 * len(conditions), 3.8), layout="constrained")
        axes = fig.subplots(1, len(conditions), squeeze=False)[0]
        for ax, condition in zip(axes, conditions, strict=True):
            for stage, color in (("init", "tab:gray"), ("trained", COLORS[condition])):
                chosen = [
                    p for p in particles if p["condition"] == condition and p["stage"] == stage
                ]
                ax.scatter([p["a_norm"] for p in chosen], [p["c"] for p in chosen], s=6,
                           color=color, alpha=0.6, label=stage)  # fmt: skip
            n = next(p["particles"] for p in particles if p["condition"] == condition)
            ax.set_xlabel("|a_i|")
            ax.set_ylabel("c_i")
            ax.set_title(f"{condition}, n = {n}: particles (|a|, c)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.savefig(out / "particles.png", dpi=110)
        written.append(out / "particles.png")

    if slices:
        fig = new_figure(figsize=(6.6, 4.0), layout="constrained")
        ax = fig.subplots()
        first = slices[0]["condition"]
        target = [(s["theta"], s["f"]) for s in slices if s["condition"] == first]
        ax.plot(*zip(*target, strict=True), color="black", label="target f")
        for condition in CONDITIONS:
            chosen = [(s["theta"], s["f_n"]) for s in slices if s["condition"] == condition]
            if chosen:
                ax.plot(*zip(*chosen, strict=True), "--", color=COLORS[condition],
                        label=f"f_n, {condition}")  # fmt: skip
        ax.set_xlabel("θ  (x_0 = √d cos θ, x_1 = √d sin θ)")
        ax.set_ylabel("f")
        ax.set_title("The 3-spin function and the trained network on a 2-D slice", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out / "slice.png", dpi=110)
        written.append(out / "slice.png")
    return written


# --------------------------------------------------------------------------- driver


def run(settings: Settings) -> dict[str, Path]:
    """Run the scaling experiment and write every result file into ``settings.out``."""
    if settings.seeds < 1 or settings.init_seeds < settings.seeds:
        raise ParticlesimError(
            f"--seeds must be >= 1 and --init-seeds >= --seeds, got {settings.seeds} and "
            f"{settings.init_seeds}"
        )
    if not settings.sizes or any(n < 1 for n in settings.sizes):
        raise ParticlesimError(f"--sizes must be positive integers, got {settings.sizes}")
    for condition in settings.conditions:
        if condition not in CONDITIONS:
            raise ParticlesimError(
                f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}"
            )
    settings.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, particles, slices, lengths = run_scaling(settings)
    wall = time.perf_counter() - start
    files = {"scaling.csv": rows, "particles.csv": particles, "slice.csv": slices}
    written = {name: settings.out / name for name, content in files.items() if content}
    (settings.out / "results.md").write_text(
        markdown(rows, lengths, settings, wall), encoding="utf-8"
    )
    (settings.out / "README.md").write_text(
        readme(lengths, settings, wall, run_seconds(rows), rows), encoding="utf-8"
    )
    written["results.md"] = settings.out / "results.md"
    written["README.md"] = settings.out / "README.md"
    for path in write_plots(rows, particles, slices, settings.out):
        written[path.name] = path
    summary = summarize(rows)
    written["run_info.json"] = harness.write_json(
        settings.out / "run_info.json",
        {
            "wall_seconds": round(wall, 1),
            "run_seconds": round(run_seconds(rows), 1),
            "sizes": settings.sizes,
            "seeds": settings.seeds,
            "init_seeds": settings.init_seeds,
            "conditions": list(settings.conditions),
            "overrides": settings.overrides,
            "lengths": lengths,
            "length_check": settings.length_check,
            "slopes": slopes(summary),
        },
    )
    settings.log(f"done in {wall:.0f} s: {', '.join(sorted(written))} in {settings.out}")
    return written


def parse_sizes(text: str) -> list[int]:
    """``"16,64,256"`` → ``[16, 64, 256]``; anything else is a :class:`ParticlesimError`."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ParticlesimError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise ParticlesimError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def command(
    what: Annotated[str, typer.Argument(help="The experiment: scaling.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Output directory.")] = RESULTS,
    quick: Annotated[
        bool,
        typer.Option(help="Sizes 16 and 64, 1 seed (4 at initialisation), 30 steps, no check."),
    ] = False,
    length_check: Annotated[
        bool, typer.Option(help="Train the largest size again for twice the steps.")
    ] = True,
    steps: Annotated[
        int | None, typer.Option(help="Steps per run (default: the scenario's).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Trained seeds per size (default 3).")] = None,
    init_seeds: Annotated[
        int | None, typer.Option(help="Networks per size at initialisation (default 16).")
    ] = None,
    sizes: Annotated[
        str | None, typer.Option(help="Comma-separated n (default 16,32,…,1024).")
    ] = None,
    dim: Annotated[
        int | None,
        typer.Option(help="Dimension d of the 3-spin data (default: the scenarios' 5; paper 25)."),
    ] = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(help="low_temperature and/or finite_temperature (default both)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of every scenario: data.dim=25"),
    ] = None,
    scenarios: Annotated[
        Path, typer.Option(help="Folder of the rotskoff_*.toml files.")
    ] = SCENARIOS,
    resume: Resume = False,
) -> None:
    """Reproduce Rotskoff & Vanden-Eijnden's error scaling; write tables and plots."""
    if what != "scaling":
        typer.echo(f"error: unknown experiment {printable(what)!r}; use scaling", err=True)
        raise typer.Exit(2)
    settings = Settings(
        out=out,
        scenarios=scenarios,
        overrides=list(set_ or []),
        resume=resume,
        log=lambda message: typer.echo(message, err=True),
    )
    try:
        if quick:
            settings.sizes, settings.seeds, settings.init_seeds = [16, 64], 1, 4
            settings.steps, settings.snapshot_size, settings.length_check = 30, 64, False
        if steps is not None:
            if steps < 1:
                raise ParticlesimError(f"--steps must be a positive integer, got {steps}")
            settings.steps = steps
        if seeds is not None:
            settings.seeds = seeds
        if init_seeds is not None:
            settings.init_seeds = init_seeds
        if sizes is not None:
            settings.sizes = parse_sizes(sizes)
        if condition:
            settings.conditions = tuple(condition)
        if dim is not None:
            if dim < 1:
                raise ParticlesimError(f"--dim must be a positive integer, got {dim}")
            settings.overrides = [f"data.dim={dim}", *settings.overrides]
        if not length_check:
            settings.length_check = False
        run(settings)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None


#: ``register_command(app)`` adds ``particlesim rotskoff``; ``main()`` runs it alone
#: (``python -m particlesim_rotskoff.experiments``).
register_command, main = command_entry_points("rotskoff", command)


if __name__ == "__main__":
    main()
