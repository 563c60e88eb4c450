"""Shader's two experiments, run through the engine's scenarios: generalisation and pruning.

* **generalisation** (paper Fig. 2): train on 10 training-data fractions from
  0.015 to 0.15 (4 seeds each; the seed also draws the subset) and report test
  accuracy of the positional, vanilla and vanilla + L2 networks. The paper
  gives no training length; every run takes the same 1000 Adam steps (batch
  256), enough to converge at every fraction (see ``results/README.md``);
* **pruning** (paper Fig. 3): train on 25 % of the data for 30 epochs (5 seeds), remove
  whole hidden neurons with the smallest mean squared weight at 10 proportions
  from 0.05 to 0.5 (:mod:`particlesim.analysis.pruning`) and report test accuracy of the
  smaller network; a proportion that empties a layer is evaluated by holding
  the selected neurons at zero, which is what the removal computes when no
  layer empties (the paper's reference code zeroes them the same way).
  The paper's claim is an ordering (the positional network survives pruning
  better), so at each proportion the difference of the two means gets a 95 %
  confidence interval (Welch's, :func:`pruning_significance`): the difference is
  *significant* where the interval excludes 0. Five seeds, not the generalisation
  sweep's four, because the pruned accuracies spread widely (std up to 0.13) and
  an interval of four seeds is ~1.5× wider than of five at the same spread.

Each training run is a scenario (``scenarios/shader_positional.toml``,
``shader_vanilla.toml``, ``shader_vanilla_l2.toml``) read, overridden
(``data.train_fraction``, ``scenario.seed``, ``run.steps`` or ``run.epochs``
and any ``--set``), validated and built by :mod:`particlesim.scenario`. The runs are grids
of :mod:`particlesim.experiments`: each finished run is recorded at once, and ``--resume``
goes on with a killed reproduction. Results go to ``--out`` (default: ``results/`` beside
this module): ``generalisation.csv`` and
``pruning.csv`` (one row per run and proportion), ``results.md`` (tables, the
paper's numbers side by side, the paper's findings checked), ``generalisation.png``,
``pruning.png`` and ``positions.gif`` (neurons moving during one positional run)::

    python -m particlesim_shader.experiments all --out results
    particlesim shader all --quick          # the same, as a particlesim command
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from particlesim import experiments as harness
from particlesim.cli.common import Resume, command_entry_points, fail
from particlesim.errors import ParticlesimError, printable
from particlesim.experiments import Point, read_csv

HERE = Path(__file__).resolve().parent
#: Where the scenario files live in a source checkout (``<repo>/scenarios``).
SCENARIOS = HERE.parents[1] / "scenarios"
RESULTS = HERE / "results"

MODELS = {
    "positional": "shader_positional.toml",
    "vanilla": "shader_vanilla.toml",
    "vanilla_l2": "shader_vanilla_l2.toml",
}
LABELS = {"positional": "positional", "vanilla": "vanilla", "vanilla_l2": "vanilla + L2"}
COLORS = {"positional": "tab:orange", "vanilla": "tab:blue", "vanilla_l2": "tab:green"}

FRACTIONS = [round(0.015 * i, 3) for i in range(1, 11)]
PROPORTIONS = [round(0.05 * i, 2) for i in range(1, 11)]
PRUNING_FRACTION = 0.25
#: How neurons are ranked for pruning (options of ``particlesim.analysis.pruning.select_neurons``).
#: The first is the paper's words (mean squared weight, here of the effective weights),
#: the second the paper's reference code (free weights, sum divided by twice the layer size).
SCORINGS: dict[str, dict[str, str]] = {
    "mean_effective": {"weights": "effective", "normalize": "connections", "scope": "global"},
    "reference_code": {"weights": "raw", "normalize": "group", "scope": "global"},
    "layer_normalized": {"weights": "effective", "normalize": "group", "scope": "global"},
    "per_layer": {"weights": "effective", "normalize": "connections", "scope": "group"},
}
SCORING_TITLES = {
    "mean_effective": "mean squared effective weight, ranked across layers",
    "reference_code": "reference code: Σ free w² / (2·layer size), across layers",
    "layer_normalized": "Σ effective w² / (2·layer size), across layers",
    "per_layer": "mean squared effective weight, each layer pruned equally",
}

#: Paper Fig. 2, test accuracy per fraction (means of the trials in the reference
#: repository's result files, which the figure plots).
PAPER_GENERALISATION = {
    "vanilla": [0.8758, 0.9047, 0.9203, 0.9293, 0.9353, 0.9397, 0.9463, 0.9478, 0.9491, 0.9516],
    "positional": [0.8506, 0.8933, 0.9012, 0.9213, 0.9222, 0.9294, 0.9351, 0.9420, 0.9411, 0.9429],
}
#: Paper Fig. 3, test accuracy per pruned proportion (read off the figure's vector source).
PAPER_PRUNING = {
    "vanilla": [0.939, 0.886, 0.841, 0.771, 0.576, 0.435, 0.444, 0.179, 0.164, 0.098],
    "positional": [0.954, 0.952, 0.944, 0.898, 0.768, 0.671, 0.539, 0.332, 0.149, 0.102],
}

PAPER_MODELS = ("positional", "vanilla")

Experiment = Literal["generalisation", "pruning", "all", "report"]


@dataclass
class Settings:
    """What to run: sweeps, lengths, seeds and where the scenarios and results are."""

    out: Path = RESULTS
    scenarios: Path = SCENARIOS
    models: tuple[str, ...] = tuple(MODELS)
    fractions: list[float] = field(default_factory=lambda: list(FRACTIONS))
    proportions: list[float] = field(default_factory=lambda: list(PROPORTIONS))
    seeds: int = 4
    #: Seeds of the pruning experiment (its confidence intervals need more than the sweep's).
    pruning_seeds: int = 5
    #: Adam steps per generalisation run (the same budget at every fraction);
    #: ``None`` trains ``generalisation_epochs`` epochs instead.
    generalisation_steps: int | None = 1000
    generalisation_epochs: float = 10
    pruning_epochs: float = 30
    pruning_fraction: float = PRUNING_FRACTION
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    animate: bool = True
    #: Keep the runs already recorded in ``out`` (a killed reproduction goes on).
    resume: bool = False
    log: Callable[[str], None] = print


# --------------------------------------------------------------------------- training


def check_fraction(value: float, what: str = "training-data fraction") -> float:
    """``value`` if it lies in (0, 1], else a :class:`ParticlesimError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ParticlesimError(f"{what} must be in (0, 1], got {value!r}")
    return float(value)


def train(
    settings: Settings,
    model: str,
    *,
    fraction: float,
    seed: int,
    epochs: float | None = None,
    steps: int | None = None,
    out_dir: Path | None = None,
    trajectory_frames: int = 0,
) -> tuple[Any, float]:
    """Train one scenario for ``epochs`` or ``steps``; return the ``Built`` run and its seconds.

    ``trajectory_frames > 0`` keeps the scenario's trajectory writer, set to
    record about that many frames into ``out_dir``; otherwise every writer is
    dropped (a sweep needs only the final network).
    """
    from particlesim.core.triggers import Periodic

    check_fraction(fraction)
    path = settings.scenarios / MODELS[model]
    if (epochs is None) == (steps is None):
        raise ParticlesimError("give a run length in either epochs or steps")
    length = f"run.steps={int(steps)}" if steps is not None else f"run.epochs={float(epochs)!r}"
    assignments = [
        f"data.train_fraction={fraction!r}",
        f"scenario.seed={seed}",
        length,
        f'scenario.device="{settings.device}"',
        *settings.overrides,
    ]
    built = harness.build_point(
        path,
        assignments,
        clear=("run.epochs", "run.steps"),
        keep_writers=("trajectory",) if trajectory_frames else (),
    ).built
    simulation = built.simulation
    for writer in simulation.writers:  # about trajectory_frames frames over the run
        writer.trigger = Periodic(max(1, simulation.total_steps // trajectory_frames))
    start = time.perf_counter()
    result = harness.run_built(built, out_dir=out_dir)
    if result.status != "completed":
        raise ParticlesimError(f"{path.name}: the run ended {result.status}")
    return built, time.perf_counter() - start


def run_length(built: Any) -> dict[str, Any]:
    """``steps`` and ``epochs`` a finished run trained for."""
    simulation = built.simulation
    return {
        "steps": simulation.total_steps,
        "epochs": round(simulation.total_steps / simulation.steps_per_epoch, 2),
    }


def describe_length(rows: Sequence[dict[str, Any]]) -> str:
    """``"1000 steps per run"`` or ``"30 epochs"``: the runs' common length."""
    steps = {int(r["steps"]) for r in rows}
    epochs = {float(r["epochs"]) for r in rows}
    if len(epochs) == 1:
        return f"{epochs.pop():g} epochs ({steps.pop()} steps) per run"
    if len(steps) == 1:
        return f"{steps.pop()} steps per run"
    return "varying run lengths"


def accuracy_on_test(system: Any, built: Any) -> float:
    """Accuracy of ``system`` (the trained one or a pruned copy) on the whole test split."""
    import torch

    data, device, dtype = built.data, built.device, built.simulation.dtype
    batch = built.simulation.eval_batch_size
    correct = 0
    system.eval()
    with torch.no_grad():
        for start in range(0, data.test_x.shape[0], batch):
            x = data.test_x[start : start + batch].to(device, dtype)
            y = data.test_y[start : start + batch].to(device)
            correct += int((system(x).argmax(-1) == y).sum())
    return correct / max(int(data.test_x.shape[0]), 1)


# --------------------------------------------------------------------------- experiments


def _context(settings: Settings, **length: Any) -> dict[str, Any]:
    """What every run of a grid shares and its results depend on (it enters the points' ids)."""
    return {
        "scenarios": str(settings.scenarios),
        **length,
        "overrides": settings.overrides,
        "device": settings.device,
    }


def run_generalisation(settings: Settings) -> list[dict[str, Any]]:
    """Test accuracy of every model at every fraction and seed (paper Fig. 2).

    Each run is recorded in ``generalisation.csv`` as it ends.
    """
    fractions = [check_fraction(f) for f in settings.fractions]
    steps = settings.generalisation_steps
    epochs = None if steps else settings.generalisation_epochs
    axes = {"seed": range(settings.seeds), "train_fraction": fractions, "model": settings.models}
    points = harness.grid(axes, context=_context(settings, steps=steps, epochs=epochs))

    def run_point(point: Point) -> dict[str, Any]:
        model, fraction, seed = point["model"], point["train_fraction"], point["seed"]
        built, seconds = train(
            settings, model, fraction=fraction, seed=seed, steps=steps, epochs=epochs
        )
        accuracy = accuracy_on_test(built.system, built)
        settings.log(
            f"generalisation: {model:<10} fraction {fraction:<5g} seed {seed} "
            f"accuracy {accuracy:.4f} ({seconds:.1f} s)"
        )
        return {
            "model": model,
            "train_fraction": fraction,
            "seed": seed,
            **run_length(built),
            "train_examples": int(built.data.train_x.shape[0]),
            "test_accuracy": accuracy,
            "train_seconds": round(seconds, 2),
        }

    return harness.run_grid(
        points,
        run_point,
        settings.out / "generalisation.csv",
        resume=settings.resume,
        log=settings.log,
    )


def prune_and_score(built: Any, proportion: float, scoring: str) -> dict[str, Any]:
    """Remove ``proportion`` of the hidden neurons ranked by ``scoring``; the pruned accuracy.

    When the selection empties a layer, no smaller network exists; the
    accuracy is then that of the trained network with the selected neurons
    held at zero (:func:`~particlesim.analysis.pruning.silenced`), which is
    what a removal computes whenever one exists.
    """
    from particlesim.analysis.pruning import remove_neurons, select_neurons, silenced

    system = built.system
    selection = select_neurons(system, proportion=proportion, allow_empty=True, **SCORINGS[scoring])
    emptied = [g for g, idx in selection.items() if idx.numel() == system.groups[g].size]
    if emptied:
        with silenced(system, selection, allow_empty=True):
            accuracy = accuracy_on_test(system, built)
        hidden_left = None
    else:
        pruned = remove_neurons(system, selection)
        accuracy = accuracy_on_test(pruned, built)
        hidden_left = [pruned.groups[g].size for g in list(pruned.groups)[1:-1]]
    return {
        "neurons_removed": sum(int(idx.numel()) for idx in selection.values()),
        "emptied_groups": " ".join(emptied),
        "hidden_sizes_after": " ".join(map(str, hidden_left)) if hidden_left else "",
        "test_accuracy": accuracy,
    }


def run_pruning(settings: Settings) -> list[dict[str, Any]]:
    """Test accuracy after whole-neuron pruning at every proportion (paper Fig. 3).

    Each trained network's rows (every scoring and proportion) are recorded in
    ``pruning.csv`` as its run ends.
    """
    fraction = check_fraction(settings.pruning_fraction)
    proportions = [check_fraction(p, "pruning proportion") for p in settings.proportions]
    context = _context(
        settings, fraction=fraction, epochs=settings.pruning_epochs, proportions=proportions
    )
    points = harness.grid(
        {"seed": range(settings.pruning_seeds), "model": settings.models}, context=context
    )

    def run_point(point: Point) -> list[dict[str, Any]]:
        model, seed = point["model"], point["seed"]
        animate = settings.animate and seed == 0 and model == "positional"
        with tempfile.TemporaryDirectory(prefix="shader_run_") as run_dir:
            built, seconds = train(
                settings, model, fraction=fraction, seed=seed, epochs=settings.pruning_epochs,
                out_dir=Path(run_dir), trajectory_frames=60 if animate else 0,
            )  # fmt: skip
            if animate:
                trajectory = Path(run_dir) / "trajectory.h5"
                write_animation(trajectory, settings.out / "positions.gif", settings)
        base = {
            "model": model,
            "train_fraction": fraction,
            "seed": seed,
            **run_length(built),
            "train_seconds": round(seconds, 2),
        }
        unpruned = accuracy_on_test(built.system, built)
        rows = []
        for scoring in SCORINGS:
            rows.append(
                {**base, "scoring": scoring, "prune_proportion": 0.0, "neurons_removed": 0,
                 "emptied_groups": "", "hidden_sizes_after": "", "test_accuracy": unpruned}
            )  # fmt: skip
            for proportion in proportions:
                rows.append(
                    {**base, "scoring": scoring, "prune_proportion": proportion,
                     **prune_and_score(built, proportion, scoring)}
                )  # fmt: skip
        line = ", ".join(
            f"{r['prune_proportion']:g}: {r['test_accuracy']:.3f}"
            for r in rows[: len(proportions) + 1]
        )
        first = next(iter(SCORINGS))
        settings.log(f"pruning: {model:<10} seed {seed} ({seconds:.1f} s) {first} {line}")
        return rows

    return harness.run_grid(
        points, run_point, settings.out / "pruning.csv", resume=settings.resume, log=settings.log
    )


# --------------------------------------------------------------------------- reporting


def summarize(
    rows: Sequence[dict[str, Any]], key: str, where: dict[str, Any] | None = None
) -> dict[str, dict[float, harness.Stats]]:
    """``{model: {key value: (mean, std, n)}}`` of test accuracy over seeds, ``x`` ascending."""
    flat = harness.summarize(
        rows, lambda row: (row["model"], float(row[key])), "test_accuracy", where=where
    )
    summary: dict[str, dict[float, harness.Stats]] = {}
    for (model, x), stats in flat.items():
        summary.setdefault(model, {})[x] = stats
    return {model: dict(sorted(values.items())) for model, values in summary.items()}


def _paper_summary(paper: dict[str, list[float]], grid: list[float]) -> dict[str, dict]:
    """The paper's curves in the shape :func:`summarize` returns (std 0, one trial)."""
    return {
        model: {x: harness.Stats(v, 0.0, 1) for x, v in zip(grid, values, strict=True)}
        for model, values in paper.items()
    }


def _gaps(summary: dict[str, dict[float, tuple]], other: str = "vanilla") -> dict[float, float]:
    """Mean positional accuracy minus mean ``other`` accuracy, per x both have."""
    if "positional" not in summary or other not in summary:
        return {}
    xs = sorted(set(summary["positional"]) & set(summary[other]))
    return {x: summary["positional"][x][0] - summary[other][x][0] for x in xs}


def generalisation_findings(summary: dict[str, dict[float, tuple]]) -> list[str]:
    """The paper's generalisation finding (positional below vanilla), here and in the paper."""

    def sentence(who: str, gaps: dict[float, float]) -> str:
        values = list(gaps.values())
        small = values[: max(1, len(values) // 2)]
        return (
            f"{who}: positional is below vanilla at {sum(g < 0 for g in values)} of "
            f"{len(values)} fractions; mean gap {statistics.fmean(values):+.4f} over all, "
            f"{statistics.fmean(small):+.4f} over the {len(small)} smallest."
        )

    gaps = _gaps(summary)
    if not gaps:
        return []
    paper = _gaps(_paper_summary(PAPER_GENERALISATION, FRACTIONS))
    return [sentence("Paper", paper), "", sentence("Here", gaps)]


def pruning_findings(summary: dict[str, dict[float, tuple]], scoring: str) -> list[str]:
    """The paper's pruning finding (positional above vanilla), here and in the paper."""

    def sentence(who: str, gaps: dict[float, float]) -> str:
        best = max(gaps, key=gaps.get)
        return (
            f"{who}: positional is above vanilla at {sum(g > 0 for g in gaps.values())} of "
            f"{len(gaps)} proportions; largest gap {gaps[best]:+.3f} at {best:g}."
        )

    gaps = {x: g for x, g in _gaps(summary).items() if x > 0}
    if not gaps:
        return []
    lines = [
        sentence("Paper", _gaps(_paper_summary(PAPER_PRUNING, PROPORTIONS))),
        "",
        sentence(f"Here (`{scoring}`)", gaps),
    ]
    l2 = {x: g for x, g in _gaps(summary, "vanilla_l2").items() if x > 0}
    if l2:
        lines += ["", sentence("Here, against vanilla + L2", l2).replace("above vanilla", "above")]
    return lines


#: Confidence level of the pruning differences' intervals.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Gap:
    """Positional minus vanilla mean accuracy at one pruned proportion, with its interval.

    ``low``/``high``: the Welch confidence interval of the difference of the two means
    (NaN with fewer than two seeds of either); ``significant``: the interval excludes 0.
    """

    proportion: float
    positional: harness.Stats
    vanilla: harness.Stats
    low: float
    high: float

    @property
    def mean(self) -> float:
        return self.positional.mean - self.vanilla.mean

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0  # False for NaN

    @property
    def paper(self) -> float:
        """The paper's difference at this proportion (NaN where it gives none)."""
        for x, pos, van in zip(
            PROPORTIONS, PAPER_PRUNING["positional"], PAPER_PRUNING["vanilla"], strict=True
        ):
            if math.isclose(x, self.proportion, abs_tol=1e-9):
                return pos - van
        return math.nan


def welch_interval(
    a: harness.Stats, b: harness.Stats, level: float = CONFIDENCE
) -> tuple[float, float]:
    """Welch's confidence interval of ``a.mean - b.mean`` (unequal variances).

    The degrees of freedom (Welch–Satterthwaite) are rounded down to an integer, which
    widens the interval slightly (:func:`~particlesim.experiments.t_critical` takes
    integers). Two samples without spread give a zero-width interval; fewer than two
    values in either, NaN.
    """
    if a.n < 2 or b.n < 2:
        return (math.nan, math.nan)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    gap = a.mean - b.mean
    if va + vb == 0:
        return (gap, gap)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = harness.t_critical(level, max(1, math.floor(df))) * math.sqrt(va + vb)
    return (gap - half, gap + half)


def pruning_significance(
    rows: Sequence[dict[str, Any]], scoring: str, other: str = "vanilla"
) -> list[Gap]:
    """Per pruned proportion (> 0): positional minus ``other``, its interval, significance.

    Seeds are independent runs of each network (the same seed draws the same data subset
    for both, but the networks share nothing else), so the two samples are compared
    unpaired.
    """
    summary = summarize(rows, "prune_proportion", {"scoring": scoring})
    if "positional" not in summary or other not in summary:
        return []
    gaps = []
    for x in sorted(set(summary["positional"]) & set(summary[other])):
        if x <= 0:
            continue
        a, b = summary["positional"][x], summary[other][x]
        gaps.append(Gap(x, a, b, *welch_interval(a, b)))
    return gaps


def significance_lines(gaps: Sequence[Gap]) -> list[str]:
    """A Markdown table of the gaps and one sentence naming the significant proportions."""
    if not gaps:
        return []
    level = f"{CONFIDENCE:.0%}"
    rows = [
        [
            f"{g.proportion:g}",
            f"{g.mean:+.4f}",
            f"{g.low:+.4f} … {g.high:+.4f}" if not math.isnan(g.low) else "–",
            "yes" if g.significant else "no",
            f"{g.paper:+.3f}" if not math.isnan(g.paper) else "–",
        ]
        for g in gaps
    ]
    header = ["pruned", "positional − vanilla", f"{level} interval", "significant", "paper"]
    ahead = [f"{g.proportion:g}" for g in gaps if g.significant and g.mean > 0]
    behind = [f"{g.proportion:g}" for g in gaps if g.significant and g.mean < 0]
    seeds = min(min(g.positional.n, g.vanilla.n) for g in gaps)
    sentence = (
        f"With {seeds} seeds, positional is significantly above vanilla ({level} Welch "
        f"interval of the difference excludes 0) at {', '.join(ahead) or 'no proportion'}"
        + (f", significantly below at {', '.join(behind)}" if behind else "")
        + "."
    )
    return [*harness.markdown_table(header, rows), "", sentence]


def _table(
    index: str,
    xs: list[float],
    summary: dict[str, dict[float, harness.Stats]],
    paper: dict[str, list[float]],
    paper_x: list[float],
) -> list[str]:
    """Mean ± std of each model per ``x``, the paper's positional and vanilla curves beside."""
    ours = {LABELS[m]: summary[m] for m in MODELS if m in summary}
    theirs = {m: dict(zip(paper_x, paper[m], strict=True)) for m in PAPER_MODELS}
    return harness.comparison_table(index, xs, ours, theirs, fmt=".4f", paper_fmt=".3f")


def markdown(
    generalisation: Sequence[dict[str, Any]] | None,
    pruning: Sequence[dict[str, Any]] | None,
) -> str:
    """``results.md``: tables (mean ± std over seeds) with the paper's numbers beside them."""
    lines = ["# Shader, positional neuron layers: reproduction", ""]
    lines += [
        "Generated by `python -m particlesim_shader.experiments`: accuracy on the whole test split",
        "(the 10 000 MNIST test images for the shipped scenarios), mean ± standard deviation",
        "over seeds. See README.md for the setup and the choices made.",
        "",
    ]
    if generalisation:
        summary = summarize(generalisation, "train_fraction")
        seeds = len({r["seed"] for r in generalisation})
        xs = sorted({float(r["train_fraction"]) for r in generalisation})
        lines += [
            f"## Generalisation ({describe_length(generalisation)}, {seeds} seed(s) per point)",
            "",
            *_table("fraction", xs, summary, PAPER_GENERALISATION, FRACTIONS),
            "",
            *generalisation_findings(summary),
            "",
        ]
    if pruning:
        seeds = len({r["seed"] for r in pruning})
        fraction = pruning[0]["train_fraction"]
        for scoring in SCORINGS:
            summary = summarize(pruning, "prune_proportion", {"scoring": scoring})
            if not summary:
                continue
            xs = sorted({float(r["prune_proportion"]) for r in pruning})
            lines += [
                f"## Pruning by {SCORING_TITLES[scoring]}",
                "",
                f"Scoring `{scoring}`; data fraction {fraction:g}, {describe_length(pruning)}, "
                f"{seeds} seed(s).",
                "",
                *_table("pruned", xs, summary, PAPER_PRUNING, PROPORTIONS),
            ]
            emptied = sorted(
                {
                    (r["model"], float(r["prune_proportion"]))
                    for r in pruning
                    if r["scoring"] == scoring and r.get("emptied_groups")
                }
            )
            lines += [""]
            if emptied:
                lines += [
                    "Selections that empty a layer (evaluated with the neurons held at zero): "
                    + ", ".join(f"{LABELS[m]} at {p:g}" for m, p in emptied)
                    + ".",
                    "",
                ]
            lines += [*pruning_findings(summary, scoring), ""]
            significance = significance_lines(pruning_significance(pruning, scoring))
            if significance:
                lines += [*significance, ""]
    return "\n".join(lines).rstrip() + "\n"


def plot(
    summary: dict[str, dict[float, tuple]],
    paper: dict[str, list[float]],
    paper_x: list[float],
    ax: Any,
    xlabel: str,
    title: str,
) -> None:
    """Mean ± std bands per model, the paper's curves dashed."""
    for model in MODELS:
        if model not in summary:
            continue
        xs = sorted(summary[model])
        mean = [summary[model][x][0] for x in xs]
        std = [summary[model][x][1] for x in xs]
        ax.plot(xs, mean, "o-", color=COLORS[model], label=LABELS[model], markersize=3)
        ax.fill_between(
            xs,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=COLORS[model],
            alpha=0.2,
        )
    for model, values in paper.items():
        ax.plot(paper_x, values, "--", color=COLORS[model], label=f"paper {LABELS[model]}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_plots(
    generalisation: Sequence[dict[str, Any]] | None,
    pruning: Sequence[dict[str, Any]] | None,
    out: Path,
) -> list[Path]:
    """``generalisation.png`` and ``pruning.png`` (one panel per scoring)."""
    from particlesim.analysis.plots import new_figure

    written = []
    if generalisation:
        fig = new_figure(figsize=(6.4, 4.4), layout="constrained")
        plot(
            summarize(generalisation, "train_fraction"),
            PAPER_GENERALISATION,
            FRACTIONS,
            fig.subplots(),
            "training-data fraction",
            "Generalisation: mean ± std over seeds (paper dashed)",
        )
        fig.savefig(out / "generalisation.png", dpi=110)
        written.append(out / "generalisation.png")
    if pruning:
        fig = new_figure(figsize=(11.5, 8.8), layout="constrained")
        axes = fig.subplots(2, math.ceil(len(SCORINGS) / 2), sharey=True, squeeze=False)
        for ax, scoring in zip(axes.flat, SCORINGS, strict=False):
            plot(
                summarize(pruning, "prune_proportion", {"scoring": scoring}),
                PAPER_PRUNING,
                PROPORTIONS,
                ax,
                "pruned proportion of hidden neurons",
                SCORING_TITLES[scoring],
            )
        fig.savefig(out / "pruning.png", dpi=110)
        written.append(out / "pruning.png")
        if any(pruning_significance(pruning, scoring) for scoring in INTERVAL_SCORINGS):
            written.append(plot_intervals(pruning, out / "pruning_intervals.png"))
    return written


#: The scorings whose pruning curves get confidence intervals (the paper's words, its code).
INTERVAL_SCORINGS = ("mean_effective", "reference_code")


def plot_intervals(pruning: Sequence[dict[str, Any]], path: Path) -> Path:
    """``pruning_intervals.png``: the pruning curves with confidence bands, and their gap.

    Top row: positional and vanilla mean accuracy per proportion with the
    :data:`CONFIDENCE` Student-t interval of each mean (the paper's curves dashed).
    Bottom row: positional minus vanilla with its Welch interval (bars), filled where the
    interval excludes 0, and the paper's difference (diamonds). One column per scoring
    of :data:`INTERVAL_SCORINGS`.
    """
    from particlesim.analysis.plots import new_figure

    fig = new_figure(figsize=(11.0, 7.6), layout="constrained")
    axes = fig.subplots(2, len(INTERVAL_SCORINGS), sharex=True, squeeze=False)
    level = f"{CONFIDENCE:.0%}"
    for column, scoring in enumerate(INTERVAL_SCORINGS):
        summary = summarize(pruning, "prune_proportion", {"scoring": scoring})
        top, bottom = axes[0][column], axes[1][column]
        for model in PAPER_MODELS:
            if model not in summary:
                continue
            xs = sorted(summary[model])
            stats = [summary[model][x] for x in xs]
            bands = [s.interval(CONFIDENCE) for s in stats]
            top.plot(xs, [s.mean for s in stats], "o-", color=COLORS[model], markersize=3,
                     label=f"{LABELS[model]} ({level} interval)")  # fmt: skip
            top.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands],
                             color=COLORS[model], alpha=0.2)  # fmt: skip
            top.plot(PROPORTIONS, PAPER_PRUNING[model], "--", color=COLORS[model],
                     label=f"paper {LABELS[model]}")  # fmt: skip
        top.set_title(SCORING_TITLES[scoring], fontsize=10)
        top.set_ylabel("test accuracy")
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        gaps = pruning_significance(pruning, scoring)
        for gap in gaps:
            face = "black" if gap.significant else "white"
            spread = None if math.isnan(gap.low) else [[gap.mean - gap.low], [gap.high - gap.mean]]
            bottom.errorbar([gap.proportion], [gap.mean], yerr=spread, color="black", capsize=3,
                            fmt="o", markerfacecolor=face)  # fmt: skip
        bottom.plot([g.proportion for g in gaps], [g.paper for g in gaps], "D",
                    color="tab:red", markersize=4, label="paper")  # fmt: skip
        bottom.axhline(0.0, color="gray", linewidth=0.8)
        bottom.set_title("filled: the interval excludes 0 (significant)", fontsize=9)
        bottom.set_xlabel("pruned proportion of hidden neurons")
        bottom.set_ylabel(f"positional − vanilla ({level} interval)")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def write_animation(trajectory: Path, out_path: Path, settings: Settings) -> Path | None:
    """Animate every group's positions over the run (input grid and output ring frozen)."""
    from particlesim.analysis.plots import animate
    from particlesim.io.trajectory import open_trajectory

    tree = open_trajectory(trajectory)
    animate(tree, out_path, fps=8, progress=False, dpi=80)
    settings.log(f"animation: {out_path} ({out_path.stat().st_size / 1e6:.2f} MB)")
    return out_path


def run(what: Experiment, settings: Settings) -> dict[str, Path]:
    """Run the chosen experiment(s) and write every result file into ``settings.out``."""
    if settings.seeds < 1:
        raise ParticlesimError(f"--seeds must be a positive integer, got {settings.seeds}")
    if settings.pruning_seeds < 1:
        raise ParticlesimError(
            f"--pruning-seeds must be a positive integer, got {settings.pruning_seeds}"
        )
    for model in settings.models:
        if model not in MODELS:
            raise ParticlesimError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    settings.out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    start = time.perf_counter()
    generalisation = pruning = None
    if what in ("generalisation", "all"):
        generalisation = run_generalisation(settings)
        written["generalisation.csv"] = settings.out / "generalisation.csv"
    elif (settings.out / "generalisation.csv").exists():
        generalisation = read_csv(settings.out / "generalisation.csv")
    if what in ("pruning", "all"):
        pruning = run_pruning(settings)
        written["pruning.csv"] = settings.out / "pruning.csv"
        if (settings.out / "positions.gif").exists():
            written["positions.gif"] = settings.out / "positions.gif"
    elif (settings.out / "pruning.csv").exists():
        pruning = read_csv(settings.out / "pruning.csv")
    if not generalisation and not pruning:
        raise ParticlesimError(
            f"no results in {settings.out}: run generalisation, pruning or all first"
        )
    (settings.out / "results.md").write_text(markdown(generalisation, pruning), encoding="utf-8")
    written["results.md"] = settings.out / "results.md"
    for path in write_plots(generalisation, pruning, settings.out):
        written[path.name] = path
    elapsed = time.perf_counter() - start
    if what == "report":  # the runs' own record stays as it was
        settings.log(f"report: {', '.join(sorted(written))} in {settings.out}")
        return written
    harness.write_json(
        settings.out / "run_info.json",
        {
            "experiment": what,
            "wall_seconds": round(elapsed, 1),
            "seeds": settings.seeds,
            "pruning_seeds": settings.pruning_seeds,
            "generalisation_steps": settings.generalisation_steps,
            "generalisation_epochs": settings.generalisation_epochs,
            "pruning_epochs": settings.pruning_epochs,
            "fractions": settings.fractions,
            "proportions": settings.proportions,
            "overrides": settings.overrides,
            "device": settings.device,
        },
    )
    settings.log(f"done in {elapsed:.0f} s: {', '.join(sorted(written))} in {settings.out}")
    return written


# --------------------------------------------------------------------------- command line


def command(
    what: Annotated[
        str,
        typer.Argument(
            help="generalisation, pruning, all, or report (tables and plots from the CSVs).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output directory.")] = RESULTS,
    epochs: Annotated[
        float | None,
        typer.Option(help="Epochs per run of both experiments (default: 30 for pruning)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Steps per generalisation run, unless --epochs (default 1000)."),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="Seeds per point of both experiments (default: 4, pruning 5)."),
    ] = None,
    pruning_seeds: Annotated[
        int | None, typer.Option(help="Seeds of the pruning experiment (default 5).")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="3 fractions, 3 proportions, 1 seed, 5 steps / 1 epoch, no animation."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of every scenario: data.data_dir=DIR"),
    ] = None,
    scenarios: Annotated[Path, typer.Option(help="Folder of the shader_*.toml files.")] = SCENARIOS,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    animate: Annotated[
        bool, typer.Option(help="Animate one positional run (default: on unless --quick).")
    ] = True,
    fraction: Annotated[
        float, typer.Option(help="Training-data fraction of the pruning experiment.")
    ] = PRUNING_FRACTION,
    resume: Resume = False,
) -> None:
    """Reproduce Shader's generalisation and pruning experiments; write tables and plots."""
    if what not in ("generalisation", "pruning", "all", "report"):
        typer.echo(
            f"error: unknown experiment {printable(what)!r}; "
            "use generalisation, pruning, all or report",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings(
        out=out,
        scenarios=scenarios,
        overrides=list(set_ or []),
        device=device,
        pruning_fraction=fraction,
        animate=animate and not quick,
        resume=resume,
        log=lambda message: typer.echo(message, err=True),
    )
    if quick:
        settings.fractions = [FRACTIONS[0], FRACTIONS[4], FRACTIONS[-1]]
        settings.proportions = [0.1, 0.3, 0.5]
        settings.seeds = settings.pruning_seeds = 1
        settings.generalisation_steps = 5
        settings.pruning_epochs = 1
    if steps is not None:
        settings.generalisation_steps = steps
    if epochs is not None:
        settings.generalisation_epochs = settings.pruning_epochs = epochs
        settings.generalisation_steps = None
    if seeds is not None:
        settings.seeds = settings.pruning_seeds = seeds
    if pruning_seeds is not None:
        settings.pruning_seeds = pruning_seeds
    try:
        check_fraction(fraction, "--fraction")
        if epochs is not None and not epochs > 0:
            raise ParticlesimError(f"--epochs must be > 0, got {epochs}")
        if steps is not None and steps < 1:
            raise ParticlesimError(f"--steps must be a positive integer, got {steps}")
        run(what, settings)  # type: ignore[arg-type]
    except ParticlesimError as exc:
        raise fail(str(exc)) from None


#: ``register_command(app)`` adds ``particlesim shader``; ``main()`` runs it alone
#: (``python -m particlesim_shader.experiments``).
register_command, main = command_entry_points("shader", command)


if __name__ == "__main__":
    main()
