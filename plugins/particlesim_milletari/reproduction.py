"""``particlesim reproduce milletari``: the slides' findings, rebuilt by the plugin's grids.

The full reproduction runs :func:`particlesim_milletari.experiments.run` (``"all"``) with
the plugin's default settings, which are the reproduction's: the 2-D problems (the linear
and the two-moons data, the slides' 2-10-1 and 2-8-2-1 networks, ESP with one β per layer
and per neuron, ReLU, sigmoid, tanh and swish, 1500 epochs of full-batch Adam, 5 seeds) and
MNIST (784-256-256-10, ESP, ReLU, tanh and swish, 5 epochs of Adam, 5 seeds). Both grids
resume point by point (``toy.points.jsonl``, ``mnist.points.jsonl`` in ``out``).

The slides state their findings in words and figures, without numbers, so each
:class:`~particlesim.reproduce.Claim` holds the slides' statement in the *paper* column and
ours (mean ± standard deviation over seeds) beside it:

* **"ESP is the less singular"**, per network (the four 2-D cells and MNIST): one row for
  ESP (β per layer), whose γ must be the smallest, and one per other activation, whose γ
  must lie above ESP's. γ and α are the Hessian's fractions of zero and negative
  eigenvalues at the relative tolerance 1e-3 (``τ = 1e-3·max|λ|``). On the 2-D problems
  they are read where each run's energy first falls below
  :data:`~particlesim_milletari.experiments.ENERGY_TARGET`: the cross-entropy of separable
  data falls towards 0 and takes every curvature with it, so γ grows along training for
  every activation and only equal energies compare. On MNIST they are the Lanczos estimates
  after the last step (the training losses are alike).
* **"providing faster optimisation"**, per 2-D cell: the epochs ESP needs to reach the
  energy target against the fastest other activation.
* **"one can also have g(h) = 0, we are adding optima"**: runs that end stuck at a constant
  output (final energy above 0.5, near ln 2), ReLU against the smooth activations.
* **MNIST** ("more consistent performances"): ESP's test accuracy against ReLU's.

Each comparison of two activations is judged on their values over seeds by
:func:`particlesim.reproduce.direction`: Welch's 95 % interval of the difference of the
means is *reproduced* when it lies on the slides' side of 0, *not reproduced* when it lies
on the other side and *within spread* when it holds 0 (the seeds cannot tell the order);
a side with fewer than two seeds is *not measured*.

The slides give neither the optimiser, the training length, the initialisation nor the
tolerance behind "zero eigenvalue"; the choices are the plugin's (``results/README.md``).

``quick`` checks the mechanics in seconds: 100 points and 150 epochs on the 2-D problems,
the four compared activations; 2 % of MNIST, a 784-32-10 network, one epoch, a small
Lanczos probe; 2 seeds, the fewest a comparison can judge. Its numbers say nothing about
the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from particlesim import experiments as harness
from particlesim.reproduce import Claim, Report, Verdict, direction, one_thread
from particlesim_milletari import experiments

#: The activations the claims compare with ESP (β per layer), when they were run.
COMPARED = ("tanh", "relu", "swish", "sigmoid")
#: The slides' cell for the eigenvalue distribution: the non-linear data, 2-8-2-1.
SLIDES_CELL = ("moons_2d", "2-8-2-1")
QUICK_ACTIVATIONS = ("esp", "tanh", "relu", "swish")
QUICK_SEEDS = 2
QUICK_TOY = ["data.n_train=100", "data.n_test=100", "run.batch_size=100"]
QUICK_MNIST = ["data.train_fraction=0.02", "model.sizes=[784, 32, 10]", "run.batch_size=64"]
#: Lanczos probe of the quick MNIST runs: images and Lanczos steps.
QUICK_LANCZOS = {"samples": 200, "lanczos_steps": 12, "probes": 1}

NOTES = (
    "The slides state these findings in words and figures, without numbers: the paper "
    "column quotes them. γ and α are the fractions of Hessian eigenvalues within ±τ and "
    "below −τ, τ = 1e-3·max|λ|, over every parameter (β included for ESP): dense on the 2-D "
    "problems, where they are read at the first recorded epoch with energy below "
    f"{experiments.ENERGY_TARGET:g} (equal energies: γ grows along training for every "
    "activation as the separable data's cross-entropy falls), and by stochastic Lanczos "
    "quadrature on 1000 images for MNIST, after the last step. The slides give no "
    "optimiser, training length, initialisation or zero tolerance; "
    "`plugins/particlesim_milletari/results/README.md` says which were chosen and why, and "
    "shows α and γ against the energy along training (`toy_alpha.png`, `toy_gamma.png`)."
)


def lanczos_overrides(scenario: Path, options: Mapping[str, Any]) -> list[str]:
    """``--set`` assignments giving every Lanczos observable of ``scenario`` the ``options``.

    The observables are found by their ``method`` in the file, so the assignments follow
    the scenario's order of ``[[observables]]``.
    """
    from particlesim.scenario.loader import read_scenario

    observables = read_scenario(scenario).get("observables", [])
    return [
        f"observables[{i}].{key}={value}"
        for i, table in enumerate(observables)
        if isinstance(table, dict) and table.get("method") == "lanczos"
        for key, value in options.items()
    ]


def reproduction_settings(
    out: Path, *, quick: bool, log: Callable[[str], None] = print
) -> experiments.Settings:
    """The grids of the reproduction (module docstring), writing into ``out``, resuming."""
    settings = experiments.Settings(out=out, resume=True, log=log)
    if quick:
        settings.activations = settings.mnist_activations = QUICK_ACTIVATIONS
        settings.seeds = settings.mnist_seeds = QUICK_SEEDS
        settings.toy_epochs, settings.hessian_every = 150, 25
        settings.toy_overrides = list(QUICK_TOY)
        settings.mnist_epochs = 1
        settings.mnist_overrides = [
            *QUICK_MNIST,
            *lanczos_overrides(settings.scenarios / experiments.MNIST_SCENARIO, QUICK_LANCZOS),
        ]
    return settings


# --------------------------------------------------------------------------- claims


def _label(activation: str) -> str:
    return experiments.LABELS.get(activation, activation)


def _finite(values: Sequence[float]) -> harness.Stats:
    return harness.describe(harness.numbers(values))


def _indices(gamma: harness.Stats, alpha: harness.Stats, runs: int) -> str:
    """``"γ 0.440 ± 0.110, α 0.000 ± 0.000 (3 of 5 seeds)"`` (``–`` when no seed counts)."""
    reached = gamma.n
    if gamma.n == 0:
        return f"– (0 of {runs} seeds reach it)"
    plural = "s" * (runs != 1)
    seeds = f"{runs} seed{plural}" if reached == runs else f"{reached} of {runs} seeds reach it"
    return f"γ {harness.cell(gamma, '.3f')}, α {harness.cell(alpha, '.3f')} ({seeds})"


def _difference(
    ours: Sequence[float], other: Sequence[float], expected: Literal["higher", "lower"]
) -> tuple[Verdict, str]:
    """The verdict and why of "ours is ``expected`` than other" over seeds
    (:func:`particlesim.reproduce.direction`: Welch's 95 % interval of the difference)."""
    _, outcome, why = direction(ours, other, expected)
    return outcome, why


def singular_claims(
    network: str,
    gamma: Mapping[str, Sequence[float]],
    alpha: Mapping[str, Sequence[float]],
    runs: Mapping[str, int],
    *,
    paper_cell: bool,
    where: str,
) -> list[Claim]:
    """ "ESP is the less singular" on one network: ESP's row, then one row per other activation.

    ``gamma``/``alpha``: the values over seeds per activation (of the seeds that measured
    one); ``runs``: seeds run per activation; ``where``: at which point of training γ is
    read (for the quantity's text); ``paper_cell``: the slides show this network (else the
    row extends the statement to it). ESP's row compares it with the activation of smallest
    mean γ; each other row compares that activation with ESP.
    """
    if "esp" not in gamma:
        return []
    stats = {a: harness.describe(v) for a, v in gamma.items()}
    others = [a for a in COMPARED if a in gamma]
    source = "slides' figure" if paper_cell else "stated for the slides' 2-8-2-1 two moons"
    measured = [a for a in others if stats[a].n]
    smallest = min(measured, key=lambda a: stats[a].mean) if measured else None
    if smallest is None:
        outcome: Verdict = "not measured"
        why = "no other activation measured"
    else:
        outcome, why = _difference(gamma["esp"], gamma[smallest], "lower")
        why = f"against the smallest other, {_label(smallest)}: {why}"

    def ours(activation: str) -> str:
        return _indices(stats[activation], harness.describe(alpha[activation]), runs[activation])

    claims = [
        Claim(
            quantity=f"{network}: γ {where}, {_label('esp')}",
            paper=f"least singular: the smallest γ ({source})",
            ours=ours("esp"),
            verdict=outcome,
            why=why,
        )
    ]
    for activation in others:
        outcome, why = _difference(gamma[activation], gamma["esp"], "higher")
        claims.append(
            Claim(
                quantity=f"{network}: γ {where}, {_label(activation)}",
                paper="more singular than ESP: γ above ESP's",
                ours=ours(activation),
                verdict=outcome,
                why=f"{_label(activation)} − ESP: {why}",
            )
        )
    return claims


def _cell_title(dataset: str, architecture: str) -> str:
    return f"{experiments.DATASET_TITLES.get(dataset, dataset)} {architecture}"


def toy_claims(curves: Sequence[dict[str, Any]]) -> list[Claim]:
    """The 2-D claims: "less singular" per cell, "faster optimisation" per cell, stuck runs."""
    summary = experiments.toy_summary(curves)
    cells = list(dict.fromkeys(key[:2] for key in summary))
    target = f"{experiments.ENERGY_TARGET:g}"
    claims: list[Claim] = []
    for cell in cells:
        entries = {key[2]: value for key, value in summary.items() if key[:2] == cell}
        gamma = {a: harness.numbers(v["gamma_at_target"]) for a, v in entries.items()}
        alpha = {a: harness.numbers(v["alpha_at_target"]) for a, v in entries.items()}
        runs = {a: len(v["gamma_at_target"]) for a, v in entries.items()}
        claims += singular_claims(
            _cell_title(*cell), gamma, alpha, runs,
            paper_cell=cell == SLIDES_CELL, where=f"at energy {target}",
        )  # fmt: skip
    epochs = sorted({float(r["epoch"]) for r in curves})
    every = epochs[1] - epochs[0] if len(epochs) > 1 else math.nan
    for cell in cells:
        entries = {key[2]: value for key, value in summary.items() if key[:2] == cell}
        if "esp" in entries:
            claims.append(speed_claim(_cell_title(*cell), entries, every))
    optima = optima_claim(summary)
    if optima is not None:
        claims.append(optima)
    return claims


def speed_claim(
    network: str, entries: Mapping[str, Mapping[str, list[float]]], every: float
) -> Claim:
    """ "Faster optimisation": ESP's epochs to the energy target against the fastest other.

    ``every``: the epochs between recorded energies (the resolution of the count).
    """
    target = f"{experiments.ENERGY_TARGET:g}"

    def epochs(activation: str) -> tuple[harness.Stats, int]:
        values = entries[activation]["epochs_to_target"]
        return _finite(values), len(values)

    def text(activation: str) -> str:
        stats, runs = epochs(activation)
        if stats.n == 0:
            return f"{_label(activation)} never (0 of {runs} seeds)"
        missed = f", {runs - stats.n} of {runs} seeds never" if stats.n < runs else ""
        return f"{_label(activation)} {harness.cell(stats, '.0f')}{missed}"

    esp, _ = epochs("esp")
    # a candidate for the fastest reaches the target in most of its seeds
    others = [a for a in COMPARED if a in entries and 2 * epochs(a)[0].n > epochs(a)[1]]
    quantity = f"{network}: epochs to energy {target}, {_label('esp')}"
    paper = "“providing faster optimisation”: the fewest epochs"
    if esp.n == 0 or not others:
        return Claim(
            quantity, paper, text("esp"), "not measured", "ESP or every other activation never"
        )
    fastest = min(others, key=lambda a: epochs(a)[0].mean)
    finite = {a: harness.numbers(entries[a]["epochs_to_target"]) for a in ("esp", fastest)}
    outcome, why = _difference(finite["esp"], finite[fastest], "lower")
    return Claim(
        quantity,
        paper,
        f"{text('esp')}; fastest other: {text(fastest)}",
        outcome,
        f"ESP − {_label(fastest)}: {why} (seeds that reach it; energy every {every:g} "
        "epochs; activations most of whose seeds never do are left out)",
    )


def optima_claim(summary: Mapping[tuple, Mapping[str, list[float]]]) -> Claim | None:
    """ "We are adding optima": ReLU runs stuck at a constant output, against ESP's."""
    stuck: dict[str, list[float]] = {}
    for (_, _, activation), entry in summary.items():
        stuck.setdefault(activation, []).extend(entry["stuck"])
    if "relu" not in stuck or "esp" not in stuck:
        return None

    def share(activation: str) -> str:
        values = stuck[activation]
        return f"{_label(activation)} {int(sum(values))} of {len(values)}"

    smooth = [a for a in stuck if a != "relu"]
    relu, esp = sum(stuck["relu"]), sum(stuck["esp"])
    outcome: Verdict = "reproduced" if relu > 0 and esp == 0 else "not reproduced"
    return Claim(
        "2-D runs stuck at a constant output (energy > "
        f"{experiments.STUCK_ENERGY:g}: g(h) = 0 for every example)",
        "“one can also have g(h^μ) = 0, we are adding optima” (ReLU; not ESP)",
        "; ".join(share(a) for a in ("relu", *smooth)),
        outcome,
        "ReLU gets stuck, ESP never"
        if outcome == "reproduced"
        else ("no ReLU run got stuck" if relu == 0 else "ESP runs got stuck too"),
    )


def mnist_claims(mnist: Sequence[dict[str, Any]]) -> list[Claim]:
    """MNIST: "less singular" on the final Lanczos γ, and ESP's test accuracy against ReLU's."""
    if not mnist:
        return []
    last = max(float(r["epoch"]) for r in mnist)
    final = [r for r in mnist if float(r["epoch"]) == last]
    activations = list(dict.fromkeys(r["activation"] for r in final))

    def stats(activation: str, key: str) -> harness.Stats:
        return _finite([r[key] for r in final if r["activation"] == activation])

    def values(activation: str, key: str) -> list[float]:
        return harness.numbers([r[key] for r in final if r["activation"] == activation])

    gamma = {a: values(a, "hessian_gamma") for a in activations}
    alpha = {a: values(a, "hessian_alpha") for a in activations}
    runs = {a: sum(r["activation"] == a for r in final) for a in activations}
    sizes = final[0].get("sizes", "MLP")
    claims = singular_claims(
        f"MNIST {sizes}", gamma, alpha, runs, paper_cell=False,
        where=f"after {last:g} epoch{'s' * (last != 1)}",
    )  # fmt: skip
    if "esp" in activations and "relu" in activations:
        esp, relu = stats("esp", "test_accuracy"), stats("relu", "test_accuracy")
        outcome, why = _difference(
            values("esp", "test_accuracy"), values("relu", "test_accuracy"), "higher"
        )
        steadier = "smaller" if esp.std < relu.std else "not smaller"
        claims.append(
            Claim(
                f"MNIST {sizes}: test accuracy after {last:g} epoch{'s' * (last != 1)}, "
                "ESP against ReLU",
                "a figure (no number); “ESP … leads to more consistent performances”",
                f"ESP {harness.cell(esp, '.4f')}, ReLU {harness.cell(relu, '.4f')} "
                f"({esp.n} and {relu.n} seeds)",
                outcome,
                f"ESP − ReLU: {why}; ESP's spread over seeds {steadier} than ReLU's",
            )
        )
    return claims


def settings_text(info: Mapping[str, Any], quick: bool) -> str:
    """The report's settings paragraph, from ``run_info.json``."""
    parts = []
    toy = info.get("toy")
    if toy:
        parts.append(
            f"2-D: {' and '.join(toy['datasets'])}, networks {', '.join(toy['architectures'])}, "
            f"{', '.join(map(_label, toy['activations']))}; {toy['epochs']} epochs of "
            f"full-batch Adam (lr 0.01), {'100' if quick else '500'} points, dense Hessian "
            f"every {toy['hessian_every']} epochs; {toy['seeds']} seed(s) per setting "
            f"({toy.get('run_seconds', toy['wall_seconds']):.0f} s of runs)"
        )
    mnist = info.get("mnist")
    if mnist:
        network = "784-32-10 on 2 % of the images" if quick else "784-256-256-10"
        parts.append(
            f"MNIST: {network}, {', '.join(map(_label, mnist['activations']))}; "
            f"{mnist['epochs']} epoch(s) of Adam (lr 1e-3), Lanczos Hessian "
            f"({experiments.probes_text(info)}) "
            f"{'before the first and ' if mnist.get('hessian_at_start', True) else ''}"
            f"after the last step; {mnist['seeds']} seed(s) "
            f"({mnist.get('run_seconds', mnist['wall_seconds']):.0f} s of runs)"
        )
    return ". ".join(parts)


def figures_in(out: Path) -> list[str]:
    """The plugin's figures that the run wrote into ``out``, the paper's first."""
    names = ("toy_gamma.png", "toy_alpha.png", "toy_spectrum.png", "toy_energy.png",
             "mnist_accuracy.png")  # fmt: skip
    return [name for name in names if (out / name).is_file()]


def report_from(out: Path, *, quick: bool, title: str, name: str) -> Report:
    """The :class:`Report` of the result files in ``out`` (the CSV tables, ``run_info.json``)."""
    import json

    curves = harness.read_csv(out / "toy_curves.csv") if (out / "toy_curves.csv").is_file() else []
    mnist = harness.read_csv(out / "mnist.csv") if (out / "mnist.csv").is_file() else []
    info_path = out / "run_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    compute = [info[g]["run_seconds"] for g in ("toy", "mnist") if "run_seconds" in info.get(g, {})]
    return Report(
        paper=name,
        title=title,
        claims=[*toy_claims(curves), *mnist_claims(mnist)],
        compute_seconds=sum(compute) if compute else None,
        command=f"particlesim reproduce {name}" + (" --quick" if quick else ""),
        settings=settings_text(info, quick),
        figures=figures_in(out),
        notes=NOTES,
    )


class MilletariReproduction:
    """Milletari et al.'s ESP: "ESP is the less singular", faster, no added optima, MNIST."""

    name = "milletari"
    title = (
        "Milletari, Chotibut & Trevisanutto (2018), Expected Signal Propagation: "
        "Hessian indices α, γ of ESP against ReLU, tanh, swish, sigmoid"
    )

    def run(self, out: Path, *, quick: bool, log: Callable[[str], None] = print) -> Report:
        """Run both grids (resuming; into ``out`` when ``quick``, else into the plugin's
        ``results/``), write tables and figures, map to claims."""
        # the full grids live beside the plugin (their finished points are kept and reused)
        folder = out if quick else experiments.RESULTS
        settings = reproduction_settings(folder, quick=quick, log=log)
        with one_thread(quick):
            experiments.run("all", settings)
        report = report_from(folder, quick=quick, title=self.title, name=self.name)
        if not quick:  # outside the results folder the page links them by full path
            report.figures = [str(folder / figure) for figure in report.figures]
        return report
