"""``particlesim reproduce shader``: Shader's Figs. 2 and 3, rebuilt by the plugin's own grids.

The full reproduction is ``particlesim shader all`` (:func:`particlesim_shader.experiments.run`
with its default settings) writing into the reproduction's folder and resuming point by
point: generalisation over 10 training-data fractions (4 seeds, 1000 Adam steps per run) and
whole-neuron pruning at 10 proportions (fraction 0.25, 30 epochs, 5 seeds) of the positional,
vanilla and vanilla + L2 networks on MNIST.

Claims, one per point of the paper's figures:

* **generalisation** (Fig. 2): the positional and the vanilla network's test accuracy at each
  fraction beside the paper's (the mean of its trials); *reproduced* within
  :data:`TOLERANCE`. One more row states the figure's finding, positional below vanilla at
  every fraction.
* **pruning** (Fig. 3): the *ordering* at each proportion, the paper's finding, for the two
  scorings that matter (the paper's words, ``mean_effective``, and its reference code's
  rule, ``reference_code``): our positional minus vanilla with its 95 % Welch interval
  (:func:`particlesim_shader.experiments.pruning_significance`). The verdict is
  *reproduced* when the interval lies on the paper's side of 0 (significant, the paper's
  ordering), *within spread* when it holds 0 (no significant difference at our seeds), *not
  reproduced* when it lies on the other side. Where the paper's curves differ by less than
  :data:`TIE` (both networks at chance), the claim is a tie: reproduced when our difference
  lies within :data:`TIE` of the paper's.

``quick`` checks the mechanics in seconds: a generated 10-class set of 4×4 images, a
16-12-10-10 network, 3 fractions, 3 proportions, a few steps, 1 seed (2 for pruning, so that
intervals exist). Its numbers say nothing about the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from particlesim import experiments as harness
from particlesim.reproduce import Claim, Report, one_thread, verdict
from particlesim_shader import experiments
from particlesim_shader.experiments import Gap

#: Accuracies within this of the paper's are the same result (Fig. 2 is read to ±0.002,
#: its points are means of 3 trials whose spread the paper does not give).
TOLERANCE = 0.01
#: A paper difference smaller than this is a tie (both curves at the same level).
TIE = 0.01
QUICK_SIDE = 4
QUICK_CLASSES = 10


def write_quick_set(folder: Path, seed: int = 0, n_train: int = 1200, n_test: int = 200) -> Path:
    """The quick run's learnable 10-class set of 4 × 4 images (written once, kept)."""
    from particlesim.data.idx import write_pixel_pair_set

    return write_pixel_pair_set(
        folder, seed=seed, n_train=n_train, n_test=n_test, side=QUICK_SIDE, classes=QUICK_CLASSES
    )


def reproduction_settings(
    out: Path, *, quick: bool, log: Callable[[str], None] = print
) -> experiments.Settings:
    """``particlesim shader all``'s settings, writing into ``out`` and resuming; or quick ones."""
    settings = experiments.Settings(out=out, resume=True, log=log)
    if quick:
        folder = write_quick_set(out / "quick_data")
        settings.overrides = [
            'data.name="idx"',
            f'data.data_dir="{folder.as_posix()}"',
            "model.sizes=[0, 12, 10, 0]",
            "run.batch_size=16",
        ]
        settings.models = experiments.PAPER_MODELS
        settings.fractions = [experiments.FRACTIONS[0], experiments.FRACTIONS[4], 0.15]
        settings.proportions = [0.1, 0.3, 0.5]
        settings.seeds, settings.pruning_seeds = 1, 2
        settings.generalisation_steps, settings.pruning_epochs = 20, 1
        settings.animate = False
        settings.device = "cpu"
    return settings


def _at(values: dict[float, harness.Stats], x: float) -> harness.Stats:
    """``values[x]`` with ``x`` matched within 1e-9; empty :class:`Stats` when absent."""
    for key, stats in values.items():
        if math.isclose(key, x, rel_tol=0.0, abs_tol=1e-9):
            return stats
    return harness.Stats(math.nan, 0.0, 0)


def _seeds(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}"


def generalisation_claims(rows: Sequence[dict[str, Any]]) -> list[Claim]:
    """One claim per point of Fig. 2 (fraction × network), then the figure's finding."""
    summary = experiments.summarize(rows, "train_fraction") if rows else {}
    claims = []
    for i, fraction in enumerate(experiments.FRACTIONS):
        for model in experiments.PAPER_MODELS:
            paper = experiments.PAPER_GENERALISATION[model][i]
            stats = _at(summary.get(model, {}), fraction)
            outcome = verdict(stats.mean, stats.std, paper, tolerance=TOLERANCE)
            gap = stats.mean - paper
            why = {
                "reproduced": f"within {TOLERANCE:g} of the paper's ({gap:+.3f})",
                "within spread": f"gap {gap:+.3f}, within our standard deviation",
                "not reproduced": f"gap {gap:+.3f}, beyond {TOLERANCE:g} and our spread",
                "not measured": "no run at this fraction",
            }[outcome]
            claims.append(
                Claim(
                    quantity=f"fraction {fraction:g}: {experiments.LABELS[model]} accuracy",
                    paper=f"{paper:.3f}",
                    ours=f"{harness.cell(stats, '.3f')} ({_seeds(stats.n)})" if stats.n else "–",
                    verdict=outcome,
                    why=why,
                )
            )
    paper_gaps = [
        p - v
        for p, v in zip(
            experiments.PAPER_GENERALISATION["positional"],
            experiments.PAPER_GENERALISATION["vanilla"],
            strict=True,
        )
    ]
    ours = experiments._gaps(summary)
    below = sum(g < 0 for g in ours.values())
    paper_below = sum(g < 0 for g in paper_gaps)
    mean_gap = sum(ours.values()) / len(ours) if ours else math.nan
    claims.append(
        Claim(
            quantity="positional below vanilla (fractions)",
            paper=f"{paper_below} of {len(paper_gaps)}, mean gap "
            f"{sum(paper_gaps) / len(paper_gaps):+.4f}",
            ours=f"{below} of {len(ours)}, mean gap {mean_gap:+.4f}" if ours else "–",
            verdict=verdict(float(below), 0.0, float(len(ours)), tolerance=1.0)
            if ours
            else "not measured",
            why=(
                "positional below vanilla at every fraction but at most one, as in the paper"
                if below >= len(ours) - 1
                else f"positional not below vanilla at {len(ours) - below} fractions"
            )
            if ours
            else "no generalisation run",
        )
    )
    return claims


def _ordering(gap: Gap | None, paper_gap: float) -> tuple[str, str]:
    """The verdict and its reason for one proportion's ordering claim (module docstring)."""
    if gap is None:
        return "not measured", "no pruning run at this proportion"
    interval = not math.isnan(gap.low)
    if abs(paper_gap) < TIE:
        spread = (gap.high - gap.low) / 2 if interval else 0.0
        outcome = verdict(gap.mean, spread, paper_gap, tolerance=TIE)
        return outcome, {
            "reproduced": f"a tie, as in the paper (difference within {TIE:g} of its)",
            "within spread": "the paper's near-tie lies within our interval",
            "not reproduced": "the paper's near-tie lies outside our interval",
        }[outcome]
    better = "higher" if paper_gap > 0 else "lower"
    leader = "positional" if paper_gap > 0 else "vanilla"
    if not interval:  # one seed: the sign alone
        outcome = verdict(gap.mean, 0.0, 0.0, better=better)
        return outcome, f"{leader} ahead as in the paper? one seed gives no interval"
    bound = gap.low if paper_gap > 0 else gap.high
    outcome = verdict(bound, gap.high - gap.low, 0.0, better=better)
    return outcome, {
        "reproduced": f"{leader} significantly ahead, as in the paper (interval excludes 0)",
        "within spread": "no significant difference at our seeds (interval holds 0)",
        "not reproduced": "significantly reversed: the interval lies on the other side of 0",
    }[outcome]


def pruning_claims(rows: Sequence[dict[str, Any]]) -> list[Claim]:
    """One ordering claim per proportion of Fig. 3, for each scoring of
    :data:`~particlesim_shader.experiments.INTERVAL_SCORINGS`."""
    claims = []
    level = f"{experiments.CONFIDENCE:.0%}"
    for scoring in experiments.INTERVAL_SCORINGS:
        found = {round(g.proportion, 9): g for g in experiments.pruning_significance(rows, scoring)}
        for i, proportion in enumerate(experiments.PROPORTIONS):
            pos = experiments.PAPER_PRUNING["positional"][i]
            van = experiments.PAPER_PRUNING["vanilla"][i]
            gap = found.get(round(proportion, 9))
            outcome, why = _ordering(gap, pos - van)
            if gap is None:
                ours = "–"
            else:
                ours = (
                    f"{gap.mean:+.3f} ({gap.positional.mean:.3f} vs {gap.vanilla.mean:.3f}"
                    + (
                        f"; {level} interval {gap.low:+.3f} … {gap.high:+.3f}"
                        if not math.isnan(gap.low)
                        else ""
                    )
                    + f"; {_seeds(min(gap.positional.n, gap.vanilla.n))})"
                )
            claims.append(
                Claim(
                    quantity=f"pruned {proportion:g} (`{scoring}`): positional − vanilla",
                    paper=f"{pos - van:+.3f} ({pos:.3f} vs {van:.3f})",
                    ours=ours,
                    verdict=outcome,
                    why=why,
                )
            )
    return claims


def settings_text(settings: experiments.Settings, quick: bool) -> str:
    """The report's settings paragraph."""
    data = (
        "a generated 10-class set of 4×4 images, network 16-12-10-10"
        if quick
        else "MNIST, network 784-112-56-50-50-50-10 (swish)"
    )
    return (
        f"{data}; generalisation: {len(settings.fractions)} fractions × "
        f"{_seeds(settings.seeds)}, {settings.generalisation_steps} Adam steps per run; "
        f"pruning: fraction {settings.pruning_fraction:g}, {settings.pruning_epochs:g} "
        f"epoch{'s' * (settings.pruning_epochs != 1)}, {_seeds(settings.pruning_seeds)}, "
        f"{len(settings.proportions)} proportions, "
        f"{experiments.CONFIDENCE:.0%} Welch intervals of the difference"
    )


def notes_text(rows: Sequence[dict[str, Any]]) -> str:
    """Which proportions differ significantly under each scoring, and the plain-L2 control."""
    sentences = []
    for scoring in experiments.INTERVAL_SCORINGS:
        gaps = experiments.pruning_significance(rows, scoring)
        ahead = [f"{g.proportion:g}" for g in gaps if g.significant and g.mean > 0]
        behind = [f"{g.proportion:g}" for g in gaps if g.significant and g.mean < 0]
        sentences.append(
            f"`{scoring}`: positional significantly above vanilla at "
            f"{', '.join(ahead) or 'no proportion'}"
            + (f", below at {', '.join(behind)}" if behind else "")
            + "."
        )
        control = experiments.pruning_significance(rows, scoring, other="vanilla_l2")
        if control:
            above = [f"{g.proportion:g}" for g in control if g.significant and g.mean > 0]
            below = [f"{g.proportion:g}" for g in control if g.significant and g.mean < 0]
            sentences.append(
                "Against vanilla with the positional network's plain L2 (is it just "
                f"regularisation?): significantly above at {', '.join(above) or 'none'}"
                + (f", below at {', '.join(below)}" if below else "")
                + "."
            )
    return (
        " ".join(sentences)
        + " Tables with every interval: results.md in this folder; the setup and choices: "
        "plugins/particlesim_shader/results/README.md."
    )


class ShaderReproduction:
    """Shader's generalisation (Fig. 2) and pruning (Fig. 3) results, point by point."""

    name = "shader"
    title = "Shader, Positional Neuron Layers: generalisation (Fig. 2) and pruning (Fig. 3)"

    def run(self, out: Path, *, quick: bool, log: Callable[[str], None] = print) -> Report:
        """Run both grids into ``out`` (resuming), write tables and figures, map to claims."""
        settings = reproduction_settings(out, quick=quick, log=log)
        with one_thread(quick):
            written = experiments.run("all", settings)
        generalisation = harness.read_csv(out / "generalisation.csv")
        pruning = harness.read_csv(out / "pruning.csv")
        figures = [
            name
            for name in ("generalisation.png", "pruning_intervals.png", "pruning.png")
            if name in written
        ]
        if not quick and (out / "positions.gif").is_file():
            figures.append("positions.gif")
        return Report(
            paper=self.name,
            title=self.title,
            claims=[*generalisation_claims(generalisation), *pruning_claims(pruning)],
            command="particlesim reproduce shader" + (" --quick" if quick else ""),
            settings=settings_text(settings, quick),
            figures=figures,
            notes=notes_text(pruning),
        )
