"""Milletari's experiments, run through the engine's scenarios: ESP against other activations.

* **toy** (paper "Results I"): binary classification of 2-D points, a linearly
  separable set (``linear_2d``) and a non-linear one (``moons_2d``), with the 2-10-1 and
  2-8-2-1 networks and the activations ESP (β per layer, and β per neuron), ReLU,
  sigmoid, tanh and swish; full-batch Adam on the cross-entropy. Every
  ``hessian_every`` epochs the dense Hessian of the energy over every parameter (β
  included) gives all eigenvalues, hence the indices α (negative) and γ (zero) at two
  relative tolerances. Plots: energy vs epoch, α and γ vs energy, and the final
  eigenvalue distribution of the non-linear 2-8-2-1 network (paper: "ESP is the less
  singular").
* **mnist** (paper "Results II"): ESP against ReLU, tanh and swish in a 784-256-256-10
  MLP on MNIST, 5 epochs of Adam; test accuracy per epoch and, before the first and after
  the last step, α, γ and the extreme eigenvalues from stochastic Lanczos quadrature on
  1000 training images.

Both grids run 5 seeds per setting (``--seeds``): the slides' "ESP is the less singular"
is a comparison of γ between activations, and with 5 seeds a standard deviation says
whether a difference is larger than the seed-to-seed spread. The slides give no training
protocol (optimiser, length, initialisation, zero tolerance); the one used is stated in
``results/README.md``.

Each training run is a scenario (``scenarios/milletari_toy.toml``,
``scenarios/milletari_mnist.toml``) read, overridden (``data.name``, ``model.sizes``,
``model.activation``, ``scenario.seed``, ``run.epochs`` and any ``--set``), validated
and built by :mod:`particlesim.scenario`; the observables are recorded by a
:class:`~particlesim.core.writers.MemoryWriter`. The runs are grids of
:mod:`particlesim.experiments`: each is recorded as it ends, and ``--resume`` goes on with a
killed reproduction. Results go to ``--out`` (default ``results/`` beside this module):
``toy_curves.csv``, ``toy_spectra.csv``, ``mnist.csv``, ``results.md`` (tables and the
paper's statements side by side), ``toy_energy.png``, ``toy_alpha.png``, ``toy_gamma.png``,
``toy_spectrum.png`` and ``mnist_accuracy.png``::

    python -m particlesim_milletari.experiments all --out results
    particlesim milletari toy --quick        # the same, as a particlesim command
"""

from __future__ import annotations

import json
import math
import statistics
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
TOY_SCENARIO = "milletari_toy.toml"
MNIST_SCENARIO = "milletari_mnist.toml"

DATASETS = ("linear_2d", "moons_2d")
DATASET_TITLES = {"linear_2d": "linear", "moons_2d": "non-linear (two moons)"}
ARCHITECTURES = ((2, 10, 1), (2, 8, 2, 1))
ACTIVATIONS = ("esp", "esp_per_neuron", "relu", "sigmoid", "tanh", "swish")
#: MNIST compares ESP with the activations the slides' "less singular" claim is about.
MNIST_ACTIVATIONS = ("esp", "relu", "tanh", "swish")
LABELS = {
    "esp": "ESP (β per layer)",
    "esp_per_neuron": "ESP (β per neuron)",
    "relu": "ReLU",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "swish": "swish",
}
COLORS = {
    "esp": "tab:red",
    "esp_per_neuron": "tab:purple",
    "relu": "tab:blue",
    "sigmoid": "tab:green",
    "tanh": "tab:orange",
    "swish": "tab:gray",
}
#: What the MNIST runs record at the start and after every epoch.
MNIST_OBSERVABLES = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
#: What the MNIST runs measure before the first and after the last step.
MNIST_HESSIAN = (
    "hessian_alpha",
    "hessian_gamma",
    "hessian_min_eigenvalue",
    "hessian_max_eigenvalue",
)
#: Relative zero tolerances at which α and γ are reported (``τ = tol · max|λ|``).
TOLERANCES = (1e-6, 1e-3)
#: Energy reached by "epochs to energy" in the toy table (and where γ is compared).
ENERGY_TARGET = 0.05
#: A run ending above this energy is stuck (ln 2 = 0.693 is a constant 50/50 output).
STUCK_ENERGY = 0.5
#: Floats in the CSV files: 10 significant digits.
FLOAT_FORMAT = ".10g"

#: The paper's statements (slides, Milletari 2018), quoted where the experiments check them.
PAPER = {
    "relu_limit": "“In the noiseless limit lim_{β→∞} ⟨h⟩ = h θ(h) ≡ max{h, 0} ≡ ReLU”",
    "gradient": "“σ(βh) ≃ 1 → g(h) ≃ 0: the back propagated signal is small! On the other "
    "hand, both ESP and ReLu give g(h) ≃ 1”",
    "optima": "“In a non-linear network, one can also have g(h^μ) = 0, we are adding optima.”",
    "singular": "“Eigenvalues distribution: ESP is the less singular” "
    "(non-linear 2-8-2-1; large eigenvalues not shown)",
    "indices": "α: “relative fraction of negative eigenvalues. Measures descent/ascent "
    "directions”; γ: “relative fraction of zero eigenvalues. Measures null directions "
    "(plateaus of the energy manifold)”",
    "mnist": "“Results II: multiclass classification on MNIST” (a figure; no numbers in the "
    "slides); conclusion: “An analysis of ESP shows when and why it leads to more "
    "consistent performances”",
    "title": "“Expected Signal Propagation: providing faster optimisation using Stat. Mech.”",
}

Experiment = Literal["toy", "mnist", "all", "report"]


@dataclass
class Settings:
    """What to run: the grids, lengths, seeds, and where the scenarios and results are."""

    out: Path = RESULTS
    scenarios: Path = SCENARIOS
    datasets: tuple[str, ...] = DATASETS
    architectures: tuple[tuple[int, ...], ...] = ARCHITECTURES
    activations: tuple[str, ...] = ACTIVATIONS
    #: 5 seeds per setting: enough for a standard deviation to say which γ is smaller.
    seeds: int = 5
    toy_epochs: int = 1500
    hessian_every: int = 25
    mnist_activations: tuple[str, ...] = MNIST_ACTIVATIONS
    mnist_seeds: int = 5
    mnist_epochs: float = 5
    #: Probe the MNIST Hessian before the first step too (the "init" columns); with 8
    #: Lanczos probes each probe costs ~100 s of one CPU thread.
    mnist_hessian_at_start: bool = False
    toy_overrides: list[str] = field(default_factory=list)
    mnist_overrides: list[str] = field(default_factory=list)
    device: str = "cpu"
    #: Keep the runs already recorded in ``out`` (a killed reproduction goes on).
    resume: bool = False
    log: Callable[[str], None] = print


# --------------------------------------------------------------------------- training


def build_run(path: Path, assignments: Sequence[str], *writers: Any) -> Any:
    """Read a scenario, apply ``key=value`` overrides, replace its writers by ``writers``, build.

    The ``writers`` (:class:`~particlesim.core.writers.MemoryWriter`) record the run in memory.
    """
    return harness.build_point(path, assignments, extra_writers=writers).built


def spectrum_indices(eigenvalues: Sequence[float], tol: float) -> tuple[float, float]:
    """``(α, γ)`` of a list of eigenvalues at relative tolerance ``tol`` (engine definition)."""
    import torch

    from particlesim.core.hessian import HessianSpectrum

    nodes = torch.tensor([list(eigenvalues)], dtype=torch.float64)
    weights = torch.full_like(nodes, 1.0 / nodes.numel())
    spectrum = HessianSpectrum("dense", nodes.numel(), nodes, weights, tol)
    return spectrum.alpha, spectrum.gamma


def toy_run(
    settings: Settings, dataset: str, sizes: Sequence[int], activation: str, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train one 2-D network; rows of the curves and the initial/final spectra."""
    from particlesim.core.triggers import At, Or, Periodic
    from particlesim.core.writers import MemoryWriter

    observables = ["epoch", "hessian_energy", "hessian_spectrum", "test_accuracy"]
    if activation.startswith("esp"):
        observables.append("activation_beta")
    writer = MemoryWriter(trigger=Periodic(settings.hessian_every), observables=observables)
    path = settings.scenarios / TOY_SCENARIO
    built = build_run(
        path,
        [
            f'data.name="{dataset}"',
            f"model.sizes={list(sizes)}",
            f'model.activation="{activation}"',
            f"scenario.seed={seed}",
            f"run.epochs={int(settings.toy_epochs)}",
            f'scenario.device="{settings.device}"',
            *settings.toy_overrides,
        ],
        writer,
    )
    writer.trigger = Or([writer.trigger, At([built.simulation.total_steps])])  # and the end
    start = time.perf_counter()
    result = harness.run_built(built)
    seconds = time.perf_counter() - start
    if result.status != "completed":
        raise ParticlesimError(f"{path.name}: the run ended {result.status}")
    architecture = "-".join(map(str, sizes))
    rows = []
    for frame in writer.rows:
        eigenvalues = frame["hessian_spectrum"]
        row: dict[str, Any] = {
            "dataset": dataset,
            "architecture": architecture,
            "activation": activation,
            "seed": seed,
            "epoch": frame["epoch"],
            "energy": frame["hessian_energy"],
            "lambda_min": min(eigenvalues),
            "lambda_max": max(eigenvalues),
            "parameters": len(eigenvalues),
        }
        for tol in TOLERANCES:
            alpha, gamma = spectrum_indices(eigenvalues, tol)
            row[f"alpha_{tol:g}"] = alpha
            row[f"gamma_{tol:g}"] = gamma
        row["beta"] = frame.get("activation_beta", "")
        row["test_accuracy"] = frame["test_accuracy"]
        rows.append(row)
    final = rows[-1]
    settings.log(
        f"toy: {dataset:<9} {architecture:<7} {activation:<14} seed {seed} energy "
        f"{final['energy']:.4f} α {final['alpha_1e-06']:.3f} γ(1e-3) {final['gamma_0.001']:.3f} "
        f"acc {final['test_accuracy']:.3f} ({seconds:.1f} s)"
    )
    spectra = {
        "initial": writer.rows[0]["hessian_spectrum"],
        "final": writer.rows[-1]["hessian_spectrum"],
        "seconds": seconds,
    }
    return rows, spectra


def run_toy(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every data set × architecture × activation × seed; curves and final spectra.

    Each run is recorded in ``toy_curves.csv`` and ``toy_spectra.csv`` as it ends.
    """
    axes = {
        "dataset": settings.datasets,
        "architecture": settings.architectures,
        "activation": settings.activations,
        "seed": range(settings.seeds),
    }
    context = {
        "scenarios": str(settings.scenarios),
        "epochs": settings.toy_epochs,
        "hessian_every": settings.hessian_every,
        "overrides": settings.toy_overrides,
        "device": settings.device,
    }

    def run_point(point: Point) -> dict[str, list[dict[str, Any]]]:
        dataset, activation, seed = point["dataset"], point["activation"], point["seed"]
        rows, spectrum = toy_run(settings, dataset, point["architecture"], activation, seed)
        spectra = [
            {"dataset": dataset, "architecture": rows[0]["architecture"], "activation": activation,
             "seed": seed, "moment": moment, "index": i, "eigenvalue": value}
            for moment in ("initial", "final")
            for i, value in enumerate(spectrum[moment])
        ]  # fmt: skip
        return {"curves": rows, "spectra": spectra}

    out = settings.out
    tables = {"curves": out / "toy_curves.csv", "spectra": out / "toy_spectra.csv"}
    results = harness.run_grid(
        harness.grid(axes, context=context),
        run_point,
        tables,
        resume=settings.resume,
        journal=out / "toy.points.jsonl",
        float_format=FLOAT_FORMAT,
        log=settings.log,
    )
    return results["curves"], results["spectra"]


def mnist_run(settings: Settings, activation: str, seed: int) -> list[dict[str, Any]]:
    """One MNIST network: a row per epoch (and the start); Lanczos α, γ at the start and end."""
    from particlesim.core.triggers import At, OnEpoch, Or
    from particlesim.core.writers import MemoryWriter

    path = settings.scenarios / MNIST_SCENARIO
    observables = list(MNIST_OBSERVABLES)
    if activation.startswith("esp"):
        observables.append("activation_beta")
    epochs = MemoryWriter(trigger=Or([At([0]), OnEpoch()]), observables=observables)
    ends = MemoryWriter(trigger=At([0]), observables=list(MNIST_HESSIAN))
    built = build_run(
        path,
        [
            f'model.activation="{activation}"',
            f"scenario.seed={seed}",
            f"run.epochs={float(settings.mnist_epochs)!r}",
            f'scenario.device="{settings.device}"',
            *settings.mnist_overrides,
        ],
        epochs,
        ends,
    )
    total = built.simulation.total_steps
    ends.trigger = At([0, total] if settings.mnist_hessian_at_start else [total])
    start = time.perf_counter()
    result = harness.run_built(built)
    seconds = time.perf_counter() - start
    if result.status != "completed":
        raise ParticlesimError(f"{path.name}: the run ended {result.status}")
    hessian = {frame["step"]: frame for frame in ends.rows}
    rows = [
        {
            "activation": activation,
            "seed": seed,
            "sizes": "-".join(str(g.size) for g in built.system.groups.values()),
            "parameters": built.system.count_parameters(),
            **{k: v for k, v in frame.items() if k != "step"},
            **{k: hessian.get(frame["step"], {}).get(k, "") for k in MNIST_HESSIAN},
            "step": frame["step"],
            "train_seconds": round(seconds, 1),
        }
        for frame in epochs.rows
    ]
    last = rows[-1]
    settings.log(
        f"mnist: {activation:<5} seed {seed} test accuracy {last['test_accuracy']:.4f} "
        f"α {last['hessian_alpha']:.4f} γ {last['hessian_gamma']:.3f} ({seconds:.0f} s)"
    )
    return rows


def mnist_probes(settings: Settings) -> int:
    """Rademacher probes of the MNIST scenario's Lanczos Hessian (after the overrides)."""
    from particlesim.core.hessian import HessianObservable
    from particlesim.core.signatures import signature_of
    from particlesim.scenario.loader import apply_override, read_scenario

    scenario = read_scenario(settings.scenarios / MNIST_SCENARIO)
    for assignment in settings.mnist_overrides:
        apply_override(scenario, assignment)
    default = signature_of(HessianObservable).parameters["probes"].default
    probes = [
        int(entry.get("probes", default))
        for entry in scenario.get("observables", [])
        if entry.get("name") in MNIST_HESSIAN
    ]
    return max(probes, default=0)


def run_mnist(settings: Settings) -> list[dict[str, Any]]:
    """ESP against the others on MNIST, every activation × seed, each recorded in ``mnist.csv``."""
    axes = {"activation": settings.mnist_activations, "seed": range(settings.mnist_seeds)}
    context = {
        "scenarios": str(settings.scenarios),
        "epochs": settings.mnist_epochs,
        "overrides": settings.mnist_overrides,
        "device": settings.device,
        **({"hessian_at_start": True} if settings.mnist_hessian_at_start else {}),
    }
    return harness.run_grid(
        harness.grid(axes, context=context),
        lambda point: mnist_run(settings, point["activation"], point["seed"]),
        settings.out / "mnist.csv",
        resume=settings.resume,
        float_format=FLOAT_FORMAT,
        log=settings.log,
    )


# --------------------------------------------------------------------------- reporting


def _stats(values: Sequence[Any]) -> str:
    """``"mean ± std"`` of the finite numbers among ``values`` (``–`` for none)."""
    return harness.cell(harness.describe(harness.numbers(values)), ".4g", ".2g")


def _runs(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    runs: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["dataset"], row["architecture"], row["activation"], row["seed"])
        runs.setdefault(key, []).append(row)
    return runs


def epochs_to(curve: Sequence[dict[str, Any]], target: float) -> float:
    """First recorded epoch with energy below ``target`` (``inf`` when never)."""
    return next((float(r["epoch"]) for r in curve if r["energy"] < target), math.inf)


def toy_summary(curves: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per (dataset, architecture, activation), lists over seeds of the final values, the
    epochs to reach ``ENERGY_TARGET``, α and γ (tol 1e-3) where it is first reached, and
    whether the run got stuck (final energy above ``STUCK_ENERGY``)."""
    table: dict[tuple, dict[str, list[float]]] = {}
    loose = f"{TOLERANCES[-1]:g}"
    for (dataset, architecture, activation, _), curve in _runs(curves).items():
        final = curve[-1]
        entry = table.setdefault((dataset, architecture, activation), {})
        for key in (
            "energy",
            "test_accuracy",
            *(f"{i}_{t:g}" for t in TOLERANCES for i in ("alpha", "gamma")),
        ):
            entry.setdefault(key, []).append(float(final[key]))
        entry.setdefault("epochs_to_target", []).append(epochs_to(curve, ENERGY_TARGET))
        reached = next((r for r in curve if r["energy"] < ENERGY_TARGET), None)
        for index in ("alpha", "gamma"):
            value = math.nan if reached is None else float(reached[f"{index}_{loose}"])
            entry.setdefault(f"{index}_at_target", []).append(value)
        entry.setdefault("stuck", []).append(float(final["energy"] > STUCK_ENERGY))
        if final.get("beta", "") != "":
            entry.setdefault("beta", []).append(float(final["beta"]))
    return table


def spectrum_cell(spectra: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The paper's cell for the eigenvalue distribution (non-linear 2-8-2-1) or the closest."""
    cells = sorted({(r["dataset"], r["architecture"]) for r in spectra})
    for preferred in (("moons_2d", "2-8-2-1"), ("moons_2d", None), (None, "2-8-2-1")):
        for cell in cells:
            if all(p is None or p == c for p, c in zip(preferred, cell, strict=True)):
                return cell
    return cells[0]


def singularity(
    spectra: Sequence[dict[str, Any]], dataset: str, architecture: str
) -> dict[str, float]:
    """Mean final γ at tol 1e-3 per activation, from the recorded eigenvalues."""
    per_run: dict[tuple[str, int], list[float]] = {}
    for row in spectra:
        if (
            row["dataset"] == dataset
            and row["architecture"] == architecture
            and row["moment"] == "final"
        ):
            per_run.setdefault((row["activation"], row["seed"]), []).append(
                float(row["eigenvalue"])
            )
    gammas: dict[str, list[float]] = {}
    for (activation, _), values in per_run.items():
        gammas.setdefault(activation, []).append(spectrum_indices(values, TOLERANCES[-1])[1])
    return {a: statistics.fmean(v) for a, v in gammas.items()}


def _ranking(values: dict[str, float], digits: int = 3, *, descending: bool = False) -> str:
    """``"name value, …"`` sorted by value (NaN last, shown as –)."""
    sign = -1.0 if descending else 1.0
    order = sorted(values, key=lambda a: (not math.isfinite(values[a]), sign * values[a]))
    return ", ".join(
        f"{LABELS.get(a, a)} {values[a]:.{digits}f}" if math.isfinite(values[a]) else
        f"{LABELS.get(a, a)} –"
        for a in order
    )  # fmt: skip


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def toy_findings(curves: Sequence[dict[str, Any]], spectra: Sequence[dict[str, Any]]) -> list[str]:
    """The paper's statements on the 2-D problems, checked against these runs."""
    summary = toy_summary(curves)
    cells = sorted({k[:2] for k in summary})
    if not cells:
        return []
    lines = [f"- Paper: {PAPER['title']}."]
    fastest = 0
    for dataset, architecture in cells:
        entries = {k[2]: v for k, v in summary.items() if k[:2] == (dataset, architecture)}
        speeds = {a: statistics.median(v["epochs_to_target"]) for a, v in entries.items()}
        missed = {
            a: sum(not math.isfinite(e) for e in v["epochs_to_target"]) for a, v in entries.items()
        }
        best = min(speeds, key=lambda a: (not math.isfinite(speeds[a]), speeds[a]))
        fastest += best.startswith("esp")
        notes = "".join(
            f"; {LABELS.get(a, a)} missed it in {n} of {len(entries[a]['epochs_to_target'])} seeds"
            for a, n in missed.items()
            if n
        )
        lines.append(
            f"  {DATASET_TITLES.get(dataset, dataset)} {architecture}, epochs to energy "
            f"< {ENERGY_TARGET:g} (median over seeds, – when most never reach it; fastest "
            "first): "
            f"{_ranking(speeds, 0)}{notes}."
        )
    epochs = sorted({float(r["epoch"]) for r in curves})
    spacing = epochs[1] - epochs[0] if len(epochs) > 1 else 0.0
    lines.append(
        f"  Here: an ESP variant is the fastest to energy {ENERGY_TARGET:g} in {fastest} of "
        f"{len(cells)} data set × network cells (ties included; the energy is recorded every "
        f"{spacing:g} epochs)."
    )
    if spectra:
        dataset, architecture = spectrum_cell(spectra)
        entries = {k[2]: v for k, v in summary.items() if k[:2] == (dataset, architecture)}
        matched = {a: _finite_mean(v["gamma_at_target"]) for a, v in entries.items()}
        least = 0
        for cell in cells:
            values = {
                k[2]: _finite_mean(v["gamma_at_target"])
                for k, v in summary.items()
                if k[:2] == cell
            }
            finite = {a: v for a, v in values.items() if math.isfinite(v)}
            least += bool(finite) and min(finite, key=finite.get).startswith("esp")
        lines += [
            f"- Paper: {PAPER['singular']}.",
            f"  Here ({DATASET_TITLES.get(dataset, dataset)} {architecture}), γ at tol "
            f"{TOLERANCES[-1]:g} where the energy first falls below {ENERGY_TARGET:g}, least "
            f"singular first: {_ranking(matched)}; at the end of training (lower, unequal "
            f"energies): {_ranking(singularity(spectra, dataset, architecture))}.",
            f"  Over all {len(cells)} cells an ESP variant has the smallest γ at energy "
            f"{ENERGY_TARGET:g} in {least}. As the cross-entropy of separable data falls to 0 "
            "every curvature falls with it, so γ grows along training for every activation "
            "(toy_gamma.png): only equal energies compare.",
        ]
    stuck = {
        (k[0], k[1], k[2]): (int(sum(v["stuck"])), len(v["stuck"]))
        for k, v in summary.items()
        if sum(v["stuck"])
    }
    lines.append(f"- Paper: {PAPER['optima']}.")
    if stuck:
        lines.append(
            f"  Here: runs that end at energy > {STUCK_ENERGY:g} (≈ ln 2, a constant output: every "
            "unit of a layer off, g(h) = 0 for every example, γ ≈ 1): "
            + "; ".join(
                f"{LABELS.get(a, a)} {DATASET_TITLES.get(d, d)} {n}: {s} of {t} seeds"
                for (d, n, a), (s, t) in stuck.items()
            )
            + "."
        )
    else:
        lines.append(
            f"  Here: no run ends at energy > {STUCK_ENERGY:g} (≈ ln 2, a constant output)."
        )
    lines.append(f"- Paper: {PAPER['indices']}.")
    correlations = []
    for cell in cells:
        points = [r for r in curves if (r["dataset"], r["architecture"]) == cell]
        rho = rank_correlation(
            [float(r["energy"]) for r in points],
            [float(r[f"alpha_{TOLERANCES[-1]:g}"]) for r in points],
        )
        correlations.append(f"{DATASET_TITLES.get(cell[0], cell[0])} {cell[1]} {rho:+.2f}")
    lines.append(
        f"  Here: Spearman rank correlation of the energy and α (tol {TOLERANCES[-1]:g}) over "
        "every recorded point, per cell (positive: fewer descent directions at lower energy; "
        "toy_alpha.png): " + ", ".join(correlations) + "."
    )
    return lines


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (ties share their mean rank)."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for i in order[start : end + 1]:
                result[i] = (start + end) / 2
            start = end + 1
        return result

    if len(x) < 2:
        return math.nan
    try:
        return statistics.correlation(ranks(x), ranks(y))
    except statistics.StatisticsError:  # a constant series
        return math.nan


def probes_text(info: dict[str, Any]) -> str:
    """``"8 Rademacher probes"``: the MNIST grid's probes (1 where run_info has none)."""
    probes = int(info.get("mnist", {}).get("lanczos_probes", 1))
    return f"{probes} Rademacher probe{'s' * (probes != 1)}"


def markdown(
    curves: Sequence[dict[str, Any]] | None,
    spectra: Sequence[dict[str, Any]] | None,
    mnist: Sequence[dict[str, Any]] | None,
    info: dict[str, Any],
) -> str:
    """``results.md``: tables (mean ± std over seeds) with the paper's statements beside them."""
    lines = [
        "# Milletari, expected signal propagation: reproduction",
        "",
        "Generated by `python -m particlesim_milletari.experiments`; see README.md for the",
        "setup and the training lengths. Mean ± standard deviation over seeds.",
        "",
    ]
    if curves:
        seeds = len({r["seed"] for r in curves})
        epochs = max(float(r["epoch"]) for r in curves)
        lines += [
            f"## 2-D binary classification ({epochs:g} epochs of full-batch Adam, {seeds} seed(s))",
            "",
            "Final values unless said otherwise. α and γ are the fractions of Hessian",
            "eigenvalues below −τ and within ±τ, τ = tol·max|λ|, over every parameter (β",
            "included for ESP); the energy is the cross-entropy on the training points where",
            f"the Hessian is taken. “Epochs to {ENERGY_TARGET:g}” is the first recorded epoch "
            "with a lower energy (mean over the seeds that reach it) and “γ at "
            f"{ENERGY_TARGET:g}” is γ (tol 1e-3) there, so that activations compare at equal "
            "energy.",
            "",
        ]
        header = ["data", "network", "activation", "energy", "test acc.", "α (1e-6)", "γ (1e-6)",
                  "α (1e-3)", "γ (1e-3)", f"epochs to {ENERGY_TARGET:g}",
                  f"γ (1e-3) at {ENERGY_TARGET:g}", "β"]  # fmt: skip
        keys = ("energy", "test_accuracy", "alpha_1e-06", "gamma_1e-06", "alpha_0.001",
                "gamma_0.001", "epochs_to_target", "gamma_at_target", "beta")  # fmt: skip
        table = [
            [DATASET_TITLES.get(dataset, dataset), architecture, LABELS.get(activation, activation),
             *(_stats(entry.get(key, [])) for key in keys)]
            for (dataset, architecture, activation), entry in toy_summary(curves).items()
        ]  # fmt: skip
        lines += harness.markdown_table(header, table)
        lines += ["", "### The paper's statements and what these runs show", ""]
        lines += [*toy_findings(curves, spectra or []), ""]
    if mnist:
        final_epoch = max(float(r["epoch"]) for r in mnist)
        final = [r for r in mnist if float(r["epoch"]) == final_epoch]
        initial = [r for r in mnist if float(r["epoch"]) == 0]
        sizes = mnist[0]["sizes"]
        lines += [
            f"## MNIST ({sizes} MLP, {final_epoch:g} epochs of Adam)",
            "",
            "α, γ (tol 1e-3) and the extreme eigenvalues by stochastic Lanczos quadrature on 1000",
            f"training images (30 Lanczos steps, {probes_text(info)}), after the last step; "
            "“init” is before the first step, where measured (`--mnist-hessian-at-start`).",
            "",
        ]
        table = []
        for activation in dict.fromkeys(r["activation"] for r in mnist):
            rows = [r for r in final if r["activation"] == activation]
            first = [r for r in initial if r["activation"] == activation]
            table.append(
                [
                    LABELS.get(activation, activation),
                    *(_stats([r[k] for r in rows]) for k in ("test_accuracy", "train_loss")),
                    *(_stats([r[k] for r in rows]) for k in MNIST_HESSIAN),
                    *(_stats([r[k] for r in first]) for k in MNIST_HESSIAN[:2]),
                    _stats([r.get("activation_beta", "") for r in rows]),
                    _stats([r["train_seconds"] for r in rows]),
                ]
            )
        header = ["activation", "test acc.", "train loss (last epoch)", "α", "γ", "λ_min",
                  "λ_max", "α init", "γ init", "β", "s/run"]  # fmt: skip
        lines += harness.markdown_table(header, table)
        per_epoch: dict[str, dict[float, list[float]]] = {}
        for r in mnist:
            if float(r["epoch"]) > 0:
                per_epoch.setdefault(r["activation"], {}).setdefault(float(r["epoch"]), []).append(
                    float(r["test_accuracy"])
                )
        epochs = sorted({e for v in per_epoch.values() for e in v})
        lines += ["", "Test accuracy per epoch:", ""]
        lines += harness.markdown_table(
            ["activation", *(f"epoch {e:g}" for e in epochs)],
            [
                [LABELS.get(a, a), *(_stats(values.get(e, [])) for e in epochs)]
                for a, values in per_epoch.items()
            ],
        )
        accuracy = {
            a: _finite_mean([r["test_accuracy"] for r in final if r["activation"] == a])
            for a in per_epoch
        }
        gamma = {
            a: _finite_mean([_number(r["hessian_gamma"]) for r in final if r["activation"] == a])
            for a in per_epoch
        }
        lines += [
            "",
            f"- Paper: {PAPER['mnist']}.",
            f"  Here: test accuracy after {final_epoch:g} epoch{'' if final_epoch == 1 else 's'}, "
            "best first: "
            f"{_ranking(accuracy, 4, descending=True)}.",
            f"- Paper (on the 2-D problem): {PAPER['singular']}.",
            f"  Here on MNIST, final γ (tol 1e-3), least singular first: {_ranking(gamma)}.",
            f"- Paper: {PAPER['gradient']}.",
            "",
        ]
    lines += [
        "## Run",
        "",
        "```json",
        json.dumps(info, indent=2),
        "```",
    ]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- plots


def _mean_curve(curves: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    by_epoch: dict[float, list[float]] = {}
    for row in curves:
        by_epoch.setdefault(float(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


def _panels(settings_like: Sequence[tuple[str, str]], fig: Any) -> dict[tuple[str, str], Any]:
    columns = sorted({a for _, a in settings_like}, key=lambda a: (len(a), a))
    rows = sorted({d for d, _ in settings_like})
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    return {(d, a): axes[i][j] for i, d in enumerate(rows) for j, a in enumerate(columns)}


def write_plots(
    curves: Sequence[dict[str, Any]] | None,
    spectra: Sequence[dict[str, Any]] | None,
    mnist: Sequence[dict[str, Any]] | None,
    out: Path,
) -> list[Path]:
    """The toy figures (energy, α, γ, spectrum) and the MNIST accuracy curve."""
    from particlesim.analysis.plots import new_figure

    written: list[Path] = []
    if curves:
        runs = _runs(curves)
        cells = sorted({k[:2] for k in runs})
        for name, key, ylabel, x_energy in (
            ("toy_energy.png", "energy", "energy (cross-entropy)", False),
            ("toy_alpha.png", "alpha_0.001", "α (tol 1e-3)", True),
            ("toy_gamma.png", "gamma_0.001", "γ (tol 1e-3)", True),
        ):
            fig = new_figure(figsize=(11, 8), layout="constrained")
            panels = _panels(cells, fig)
            for (dataset, architecture), ax in panels.items():
                for activation in ACTIVATIONS:
                    cell = [
                        r
                        for k, rs in runs.items()
                        if k[:3] == (dataset, architecture, activation)
                        for r in rs
                    ]
                    if not cell:
                        continue
                    if x_energy:  # every recorded point of every seed
                        ax.scatter(
                            [r["energy"] for r in cell],
                            [r[key] for r in cell],
                            s=5,
                            alpha=0.5,
                            color=COLORS[activation],
                            label=LABELS[activation],
                        )
                    else:
                        epochs, mean = _mean_curve(cell, key)
                        ax.plot(epochs, mean, color=COLORS[activation], label=LABELS[activation])
                if x_energy:
                    ax.set_xscale("log")
                    ax.set_xlabel("energy (cross-entropy)")
                else:
                    ax.set_yscale("log")
                    ax.set_xlabel("epoch")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)}, {architecture}", fontsize=10)
                ax.grid(alpha=0.3)
            next(iter(panels.values())).legend(fontsize=7, markerscale=3)
            fig.savefig(out / name, dpi=100)
            written.append(out / name)
    if spectra:
        written += _spectrum_plot(spectra, out)
    if mnist:
        fig = new_figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        for activation in dict.fromkeys(r["activation"] for r in mnist):
            rows = [r for r in mnist if r["activation"] == activation and float(r["epoch"]) > 0]
            epochs, mean = _mean_curve(rows, "test_accuracy")
            ax.plot(epochs, mean, "o-", color=COLORS.get(activation), label=LABELS.get(activation))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title("MNIST: ESP against other activations", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out / "mnist_accuracy.png", dpi=100)
        written.append(out / "mnist_accuracy.png")
    return written


def _spectrum_plot(spectra: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Final eigenvalues of the non-linear 2-8-2-1 network (or the first cell present)."""
    import numpy as np

    from particlesim.analysis.plots import new_figure

    target = spectrum_cell(spectra)
    final = [
        r for r in spectra if (r["dataset"], r["architecture"]) == target and r["moment"] == "final"
    ]
    per_activation: dict[str, list[np.ndarray]] = {}
    runs: dict[tuple[str, int], list[float]] = {}
    for row in final:
        runs.setdefault((row["activation"], row["seed"]), []).append(float(row["eigenvalue"]))
    for (activation, _), values in runs.items():
        per_activation.setdefault(activation, []).append(np.asarray(values))
    fig = new_figure(figsize=(12, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    window = max(float(np.max(np.abs(v))) for vs in per_activation.values() for v in vs) * 0.05
    bins = np.linspace(-window, window, 61)
    for activation in ACTIVATIONS:
        if activation not in per_activation:
            continue
        values = np.concatenate(per_activation[activation])
        left.hist(
            values[np.abs(values) <= window],
            bins=bins,
            histtype="step",
            density=False,
            color=COLORS[activation],
            label=LABELS[activation],
            weights=np.full(
                int(np.sum(np.abs(values) <= window)), 1.0 / len(per_activation[activation])
            ),
        )
        relative = np.sort(
            np.concatenate(
                [
                    np.abs(v) / max(float(np.max(np.abs(v))), 1e-300)
                    for v in per_activation[activation]
                ]
            )
        )
        right.plot(
            np.maximum(relative, 1e-18),
            np.arange(1, relative.size + 1) / relative.size,
            color=COLORS[activation],
            label=LABELS[activation],
        )
    left.set_xlabel("eigenvalue λ (|λ| ≤ 5 % of the largest |λ|)")
    left.set_ylabel("eigenvalues per network")
    left.set_title(
        f"Final Hessian eigenvalues, {DATASET_TITLES.get(target[0])} {target[1]}", fontsize=10
    )
    right.set_xscale("log")
    right.set_xlabel("|λ| / max|λ|")
    right.set_ylabel("fraction of eigenvalues below")
    right.set_title("Cumulative distribution: higher on the left = more singular", fontsize=10)
    for tol in TOLERANCES:
        right.axvline(tol, color="black", lw=0.6, ls=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out / "toy_spectrum.png", dpi=100)
    return [out / "toy_spectrum.png"]


# --------------------------------------------------------------------------- driver


def toy_run_seconds(
    previous: dict[str, Any] | None, current: dict[str, Any], resume: bool
) -> float:
    """Seconds spent on the runs of the 2-D grid, over every call that ran its points.

    A resumed call runs only the points not yet recorded, so its wall time is not the
    grid's cost: the seconds of the earlier calls (``previous``, the last ``run_info``) are
    added when they ran points of this grid, i.e. when resuming with the same training
    (epochs, Hessian interval, overrides); a grid may have grown in data sets,
    networks, activations or seeds since.
    """
    seconds = float(current["wall_seconds"])
    same = previous is not None and all(
        previous.get(key) == current[key] for key in ("epochs", "hessian_every", "overrides")
    )
    if resume and same:
        seconds += float(previous.get("run_seconds", previous.get("wall_seconds", 0.0)))
    return round(seconds, 1)


def run(what: Experiment, settings: Settings) -> dict[str, Path]:
    """Run the chosen experiment(s) and write every result file into ``settings.out``.

    An experiment not run this time is reported from its CSV files when they exist
    (``"report"`` runs nothing and only rewrites ``results.md`` and the plots).
    """
    if settings.seeds < 1 or settings.mnist_seeds < 1:
        raise ParticlesimError("--seeds must be a positive integer")
    if settings.hessian_every < 1:
        raise ParticlesimError(
            f"hessian_every must be a positive integer, got {settings.hessian_every}"
        )
    for activation in (*settings.activations, *settings.mnist_activations):
        if activation not in LABELS:
            raise ParticlesimError(f"unknown activation {activation!r}; known: {', '.join(LABELS)}")
    settings.out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    start = time.perf_counter()
    curves = spectra = mnist = None
    out = settings.out
    if what in ("toy", "all"):
        toy_start = time.perf_counter()
        curves, spectra = run_toy(settings)
        toy_seconds = time.perf_counter() - toy_start
        written["toy_curves.csv"] = out / "toy_curves.csv"
        written["toy_spectra.csv"] = out / "toy_spectra.csv"
    elif (out / "toy_curves.csv").exists() and (out / "toy_spectra.csv").exists():
        curves, spectra = read_csv(out / "toy_curves.csv"), read_csv(out / "toy_spectra.csv")
    if what in ("mnist", "all"):
        mnist_start = time.perf_counter()
        mnist = run_mnist(settings)
        mnist_seconds = time.perf_counter() - mnist_start
        written["mnist.csv"] = out / "mnist.csv"
    elif (out / "mnist.csv").exists():
        mnist = read_csv(out / "mnist.csv")
    info_path = out / "run_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    if what in ("toy", "all"):
        toy_info = {
            "wall_seconds": round(toy_seconds, 1),
            "datasets": list(settings.datasets),
            "architectures": ["-".join(map(str, a)) for a in settings.architectures],
            "activations": list(settings.activations),
            "seeds": settings.seeds,
            "epochs": settings.toy_epochs,
            "hessian_every": settings.hessian_every,
            "overrides": settings.toy_overrides,
        }
        toy_info["run_seconds"] = toy_run_seconds(info.get("toy"), toy_info, settings.resume)
        info["toy"] = toy_info
    if what in ("mnist", "all"):
        final_epoch = max(float(r["epoch"]) for r in mnist) if mnist else 0.0
        info["mnist"] = {
            "wall_seconds": round(mnist_seconds, 1),
            # the runs' own time, also of those a resumed grid kept from an earlier call
            "run_seconds": round(
                sum(float(r["train_seconds"]) for r in mnist or [] if r["epoch"] == final_epoch),
                1,
            ),
            "activations": list(settings.mnist_activations),
            "seeds": settings.mnist_seeds,
            "epochs": settings.mnist_epochs,
            "lanczos_probes": mnist_probes(settings),
            "hessian_at_start": settings.mnist_hessian_at_start,
            "overrides": settings.mnist_overrides,
        }
    written["run_info.json"] = harness.write_json(info_path, info)
    (out / "results.md").write_text(markdown(curves, spectra, mnist, info), encoding="utf-8")
    written["results.md"] = out / "results.md"
    for path in write_plots(curves, spectra, mnist, out):
        written[path.name] = path
    settings.log(
        f"done in {time.perf_counter() - start:.0f} s: {', '.join(sorted(written))} in {out}"
    )
    return written


# --------------------------------------------------------------------------- command line


def command(
    what: Annotated[
        str,
        typer.Argument(help="toy, mnist, all, or report (from the CSV files).", show_default=False),
    ],
    out: Annotated[Path, typer.Option(help="Output directory.")] = RESULTS,
    seeds: Annotated[
        int | None, typer.Option(help="Seeds per setting, 2-D and MNIST (default 5).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of each 2-D run (default 1500).")
    ] = None,
    mnist_epochs: Annotated[
        float | None, typer.Option(help="Epochs of each MNIST run (default 5).")
    ] = None,
    mnist_hessian_at_start: Annotated[
        bool, typer.Option(help="Probe the MNIST Hessian before the first step too.")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(help="1 seed, 300 epochs (2-D), 1 epoch on 10 % of MNIST."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of the 2-D scenario: integrator.lr=0.02"),
    ] = None,
    mnist_set: Annotated[
        list[str] | None,
        typer.Option(help="Override a key of the MNIST scenario: data.data_dir=DIR"),
    ] = None,
    activation: Annotated[
        list[str] | None,
        typer.Option(help="A 2-D activation to compare (repeat it; default: all six)."),
    ] = None,
    mnist_activation: Annotated[
        list[str] | None,
        typer.Option(help="An MNIST activation (repeat it; default: esp, relu, tanh, swish)."),
    ] = None,
    scenarios: Annotated[
        Path, typer.Option(help="Folder of the milletari_*.toml files.")
    ] = SCENARIOS,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    resume: Resume = False,
) -> None:
    """Reproduce Milletari's ESP experiments (2-D toy problems, MNIST); write tables and plots."""
    if what not in ("toy", "mnist", "all", "report"):
        typer.echo(
            f"error: unknown experiment {printable(what)!r}; use toy, mnist, all or report",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings(
        out=out,
        scenarios=scenarios,
        toy_overrides=list(set_ or []),
        mnist_overrides=list(mnist_set or []),
        mnist_hessian_at_start=mnist_hessian_at_start,
        device=device,
        resume=resume,
        log=lambda message: typer.echo(message, err=True),
    )
    if activation:
        settings.activations = tuple(activation)
    if mnist_activation:
        settings.mnist_activations = tuple(mnist_activation)
    if quick:
        settings.seeds = settings.mnist_seeds = 1
        settings.toy_epochs = 300
        settings.mnist_epochs = 1
        settings.mnist_overrides = ["data.train_fraction=0.1", *settings.mnist_overrides]
    if seeds is not None:
        settings.seeds = settings.mnist_seeds = seeds
    if epochs is not None:
        settings.toy_epochs = epochs
    if mnist_epochs is not None:
        settings.mnist_epochs = mnist_epochs
    try:
        if settings.toy_epochs < 1:
            raise ParticlesimError(
                f"--epochs must be a positive integer, got {settings.toy_epochs}"
            )
        if not settings.mnist_epochs > 0:
            raise ParticlesimError(f"--mnist-epochs must be > 0, got {settings.mnist_epochs}")
        run(what, settings)  # type: ignore[arg-type]
    except ParticlesimError as exc:
        raise fail(str(exc)) from None


#: ``register_command(app)`` adds ``particlesim milletari``; ``main()`` runs it alone
#: (``python -m particlesim_milletari.experiments``).
register_command, main = command_entry_points("milletari", command)


if __name__ == "__main__":
    main()
