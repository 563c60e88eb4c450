"""Wołczyk et al.'s Table 1, run through the engine's scenarios: train, split greedily, score.

For each input mode (concatenation, mixing, sequential: ``scenarios/wolczyk_concat.toml``,
``wolczyk_mix.toml``, ``wolczyk_sequential.toml``), each network (``regular``:
``model.spatial = false``; ``spatial``: the transport and density costs on) and
each seed, one run:

1. reads the scenario and overrides ``scenario.seed``, the run length and any
   ``--set``; validates and builds it (:mod:`particlesim.scenario`) and trains it;
2. splits the trained network greedily into one sub-network per task over the
   penalised layers (:func:`particlesim_wolczyk.split.greedy_split`; the earlier
   layers are shared);
3. scores, on the test set, the full network and each sub-network on its own
   task with the other task's neurons disabled
   (:func:`particlesim_wolczyk.split.evaluate_split`): full accuracy, split
   accuracy and the drop, each averaged over the two tasks.

The paper gives no training length; every run here takes the same number of
Adam steps of batch 256 (``--steps``, default :data:`DEFAULT_STEPS`), the same
for every mode (a sequential epoch holds both data sets, twice as many
examples). The runs are a grid of :mod:`particlesim.experiments`: each finished run is
recorded at once, and ``--resume`` goes on with a killed reproduction. Results go to
``--out`` (default ``results/`` beside this module): ``table1.csv`` (one row per run),
``table1.md`` (mean ± std over seeds, the
paper's numbers beside ours, and whether each lies within the paper's spread),
``split_<mode>_<network>.png`` (the split layers' neurons at their positions,
coloured by task, for seed 0: the paper's Figures 1–2) and ``run_info.json``::

    python -m particlesim_wolczyk.experiments table1 --out results
    particlesim wolczyk table1 --quick        # the same, as a particlesim command

``--transport-normalize connections`` uses the transport cost as the authors'
published code computes it (mean over connections) instead of the paper's
``1/N_l``; its results go to files suffixed ``_connections``. ``--report-only``
rewrites the tables and plots from the CSV files already in ``--out``.

``split --run DIR`` splits the network of a finished ``particlesim run`` (its
``scenario.toml`` and ``checkpoint.pt``) and writes ``split.json`` and
``split.png`` into it.

``forces`` measures, for the concatenation scenario's spatial network, each
weight's data gradient against its transport gradient at initialisation and the
first 300 steps of training under both normalisations (``forces.md``): the
evidence for how the paper's cost, as written, behaves at α = 1.

**The authors' choices.** The authors' published code (github.com/gmum/SpatialNetworks,
``src/``) decides several things the paper leaves open, differently from this
reproduction's defaults. Each is an option, so that its effect can be measured alone:

* the transport cost's *normalisation*: the mean over a layer's connections
  (``--transport-normalize connections``; the paper writes ``1/N_l``);
* the transport cost's *weight norm*: ``a²·d`` by default there (``--norm l2`` in
  ``inputs/subparsers.py``) where the paper writes ``|a|·d``
  (``--transport-norm l2``; model option ``transport_norm``);
* how the split *disables* a neuron: there its incoming weights are zeroed and its
  bias kept (``options/split/backward/greedy.py``), so a disabled sigmoid unit
  still outputs ``sigmoid(b)``; here it outputs 0. Every run is split both ways:
  ``split_accuracy``/``accuracy_drop`` (outputs 0) and ``split_accuracy_bias``/
  ``accuracy_drop_bias`` (bias kept), each drop measured per run against that run's
  full accuracy, and split accuracy and drop summarised over seeds each on its own;
* the *data loss*: one cross-entropy mean over every labelled (example, head) pair
  (``nn/loss.py``) where the engine sums each head's mean (``--data-loss pooled``;
  the loss ``pooled_head_cross_entropy``);
* the *sequential* mode: one training phase over both tasks' examples pooled and
  shuffled (its ``DatasetRandomSampler``), as here; an epoch of it is one pass over
  the pooled set, twice the pairs of the other modes, so a length in epochs
  (``--epochs``, the authors' way: 50 in ``hyperparameters.json``) gives the
  sequential runs twice the steps, where ``--steps`` gives every mode the same.

``ablation`` trains the grid that separates them: for each length of
``Settings.ablation_epochs`` (default 15 and 50 epochs), mode, network and seed, the
variants of :data:`VARIANTS` (ours; ``w2``: the weight norm alone; ``pooled``: the
loss alone; ``authors``: both), every run with the per-connection normalisation and
split both ways; ``ablation.md`` then shows each choice alone (the disabling read
from the ``ours`` runs) and all of them together (``authors`` runs, bias kept)
beside the paper. The regular network has no transport cost, so it trains only
``ours`` and ``pooled``. Results: ``ablation.csv``, ``ablation.md``,
``run_info_ablation.json``::

    python -m particlesim_wolczyk.experiments ablation --out results/ablation
    python -m particlesim_wolczyk.experiments ablation --modes concat --epochs 15 --resume
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from particlesim import experiments as harness
from particlesim.cli.common import Resume, command_entry_points, fail
from particlesim.errors import ParticlesimError, printable
from particlesim.experiments import Point, read_csv, write_csv

HERE = Path(__file__).resolve().parent
#: Where the scenario files live in a source checkout (``<repo>/scenarios``).
SCENARIOS = HERE.parents[1] / "scenarios"
RESULTS = HERE / "results"

MODES = {
    "concat": "wolczyk_concat.toml",
    "mix": "wolczyk_mix.toml",
    "sequential": "wolczyk_sequential.toml",
}
MODE_TITLES = {"concat": "Concatenation", "mix": "Mixing", "sequential": "Sequential"}
NETWORKS = ("regular", "spatial")
NETWORK_TITLES = {"regular": "Regular", "spatial": "Spatial"}
TASK_NAMES = ("MNIST", "Fashion-MNIST")
#: Adam steps per run (batch 256): 10 epochs of the 60 000 training pairs.
DEFAULT_STEPS = 2350

#: Paper Table 1, ``(mean, std)`` over 3 runs; the paper leaves the "Full network" row empty.
PAPER_TABLE1: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "split_accuracy": {
        "concat": {"regular": (0.80, 0.13), "spatial": (0.92, 0.04)},
        "mix": {"regular": (0.70, 0.17), "spatial": (0.89, 0.03)},
        "sequential": {"regular": (0.33, 0.20), "spatial": (0.84, 0.08)},
    },
    "accuracy_drop": {
        "concat": {"regular": (0.11, 0.15), "spatial": (0.00, 0.00)},
        "mix": {"regular": (0.19, 0.20), "spatial": (0.00, 0.00)},
        "sequential": {"regular": (0.60, 0.20), "spatial": (0.07, 0.07)},
    },
}
ROWS = {
    "full_accuracy": "Full network",
    "split_accuracy": "Split network",
    "accuracy_drop": "Acc. drop",
}


@dataclass
class Settings:
    """What to run: modes, networks, seeds, run length, and where scenarios and results are."""

    out: Path = RESULTS
    scenarios: Path = SCENARIOS
    modes: tuple[str, ...] = tuple(MODES)
    networks: tuple[str, ...] = NETWORKS
    seeds: int = 3
    #: Adam steps per run; ``None`` trains ``epochs`` epochs of each mode's own set instead.
    steps: int | None = DEFAULT_STEPS
    epochs: float | None = None
    transport_normalize: str = "neurons"
    #: How a weight enters the transport cost: ``"l1"`` (the paper, ``|a|·d``) or ``"l2"``
    #: (the authors' code's default, ``a²·d``).
    transport_norm: str = "l1"
    #: ``"per_head"`` (the engine's loss: each head's mean, summed) or ``"pooled"`` (the
    #: authors' code: one mean over every labelled example-head pair).
    data_loss: str = "per_head"
    #: ``"fixed"`` (one pairing of the two tasks for the whole run) or ``"fresh"`` (every
    #: training batch paired anew; the authors' code re-pairs every epoch). Concatenation
    #: and mixing only: the sequential mode pairs nothing.
    pairing: str = "fixed"
    #: Training lengths of the ablation grid, in epochs of each mode's own training set.
    ablation_epochs: tuple[float, ...] = (15.0, 50.0)
    #: Training variants of the ablation grid (keys of :data:`VARIANTS`).
    variants: tuple[str, ...] = ("ours", "w2", "pooled", "authors")
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    jobs: int = 1
    figures: bool = True
    #: Rewrite the tables and plots from the CSV files already in ``out``; train nothing.
    report_only: bool = False
    #: Keep the runs already recorded in ``out`` (a killed reproduction goes on).
    resume: bool = False
    log: Callable[[str], None] = print

    @property
    def suffix(self) -> str:
        """``""`` for the paper's transport cost, ``"_connections"`` for the code's."""
        return "" if self.transport_normalize == "neurons" else f"_{self.transport_normalize}"


# --------------------------------------------------------------------------- one run


def _silent(message: str) -> None:
    del message


def prepare(
    settings: Settings, mode: str, network: str, seed: int, extra_writers: Sequence[Any] = ()
) -> Any:
    """Read, override, validate and build one scenario; the ``Built`` run, not yet trained."""
    if settings.steps is not None:
        length = f"run.steps={int(settings.steps)}"
    else:
        length = f"run.epochs={float(settings.epochs or 1.0)!r}"
    assignments = [
        f"model.spatial={'true' if network == 'spatial' else 'false'}",
        f'model.transport_normalize="{settings.transport_normalize}"',
        f'model.transport_norm="{settings.transport_norm}"',
        f"scenario.seed={seed}",
        length,
        f'scenario.device="{settings.device}"',
        *settings.overrides,
    ]
    if settings.pairing != "fixed" and mode != "sequential":
        assignments.append(f'data.pairing="{settings.pairing}"')
    path = settings.scenarios / MODES[mode]
    clear = ("run.epochs", "run.steps")
    built = harness.build_point(path, assignments, clear=clear, extra_writers=extra_writers).built
    if settings.data_loss == "pooled":
        from particlesim_wolczyk.losses import PooledHeadCrossEntropy
        from particlesim_wolczyk.split import task_heads

        # the heads come from the data set's own loss, so any tasks work
        built.simulation.loss = PooledHeadCrossEntropy(heads=task_heads(built.simulation.loss))
    return built


def train(settings: Settings, mode: str, network: str, seed: int) -> tuple[Any, float]:
    """Train one scenario; return the ``Built`` run and its training seconds."""
    built = prepare(settings, mode, network, seed)
    start = time.perf_counter()
    result = harness.run_built(built)
    if result.status != "completed":
        raise ParticlesimError(f"{MODES[mode]}: the run ended {result.status}")
    return built, time.perf_counter() - start


def run_one(settings: Settings, mode: str, network: str, seed: int) -> dict[str, Any]:
    """Train, split and score one (mode, network, seed); the CSV row (and a figure for seed 0)."""
    import torch

    from particlesim_wolczyk.costs import DensityCost, TransportCost
    from particlesim_wolczyk.split import (
        evaluate_split,
        greedy_split,
        plot_split,
        split_summary,
        task_heads,
    )

    if settings.jobs > 1:
        torch.set_num_threads(1)
    built, seconds = train(settings, mode, network, seed)
    simulation, system = built.simulation, built.system
    layers = built.plan.model.penalised_layers()
    split = greedy_split(system, task_heads(simulation.loss), layers)
    data = built.data
    report = evaluate_split(
        system, split, data.test_x, data.test_y, batch_size=simulation.eval_batch_size
    )
    kept = evaluate_split(  # the authors' disabling: incoming weights cut, bias kept
        system,
        split,
        data.test_x,
        data.test_y,
        batch_size=simulation.eval_batch_size,
        disable="incoming",
    )
    costs = {}
    with torch.no_grad():
        costs["transport"] = float(TransportCost(layers=layers).energy(system))
        costs["density"] = float(DensityCost(layers=layers).energy(system))
    if settings.figures and seed == 0:
        fig = plot_split(
            system,
            split,
            task_names=TASK_NAMES,
            title=f"{MODE_TITLES[mode]}, {NETWORK_TITLES[network]} (seed 0): split "
            f"{report.mean_split:.3f}, full {report.mean_full:.3f}",
        )
        fig.savefig(settings.out / f"split_{mode}_{network}{settings.suffix}.png", dpi=100)
    steps = simulation.total_steps
    return {
        "mode": mode,
        "network": network,
        "seed": seed,
        "transport_normalize": settings.transport_normalize,
        "transport_norm": settings.transport_norm,
        "data_loss": settings.data_loss,
        "pairing": settings.pairing if mode != "sequential" else "",
        "steps": steps,
        "epochs": round(steps / simulation.steps_per_epoch, 2),
        "train_examples": int(data.train_x.shape[0]),
        **split_summary(report, ("mnist", "fashion_mnist")),
        "split_accuracy_bias": kept.mean_split,
        "accuracy_drop_bias": kept.mean_drop,
        "split_accuracy_bias_mnist": kept.split[0],
        "split_accuracy_bias_fashion_mnist": kept.split[1],
        "transport_cost": costs["transport"],
        "density_cost": costs["density"],
        "train_seconds": round(seconds, 1),
    }


def table1_points(settings: Settings) -> list[Point]:
    """Every (mode, network, seed) of Table 1, seeds fastest; the run's settings in each id."""
    context = {
        "scenarios": str(settings.scenarios),
        "steps": settings.steps,
        "epochs": settings.epochs,
        "transport_normalize": settings.transport_normalize,
        "overrides": settings.overrides,
        "device": settings.device,
        **_choices(settings),
    }
    axes = {"mode": settings.modes, "network": settings.networks, "seed": range(settings.seeds)}
    return harness.grid(axes, context=context)


def _choices(settings: Settings) -> dict[str, str]:
    """The authors' choices that differ from the defaults (they enter the points' ids only
    then, so the ids of grids run before the choices existed stay valid)."""
    chosen = {}
    if settings.transport_norm != "l1":
        chosen["transport_norm"] = settings.transport_norm
    if settings.data_loss != "per_head":
        chosen["data_loss"] = settings.data_loss
    if settings.pairing != "fixed":
        chosen["pairing"] = settings.pairing
    return chosen


def _table1_point(settings: Settings, point: Point) -> dict[str, Any]:
    return run_one(settings, point["mode"], point["network"], point["seed"])


def run_table1(settings: Settings) -> list[dict[str, Any]]:
    """Every run of Table 1, each recorded in ``table1<suffix>.csv`` as it ends; the rows."""

    def done(point: Point, row: dict[str, Any]) -> None:
        settings.log(
            f"table1: {row['mode']:<10} {row['network']:<7} seed {row['seed']} full "
            f"{row['full_accuracy']:.3f} split {row['split_accuracy']:.3f} drop "
            f"{row['accuracy_drop']:+.3f} ({row['train_seconds']:.0f} s)"
        )

    with contextlib.ExitStack() as stack:
        pool = None
        if settings.jobs > 1:
            context = multiprocessing.get_context("spawn")  # no forked torch thread pools
            pool = ProcessPoolExecutor(max_workers=settings.jobs, mp_context=context)
            stack.enter_context(pool)
        return harness.run_grid(
            table1_points(settings),
            partial(_table1_point, replace(settings, log=_silent)),
            settings.out / f"table1{settings.suffix}.csv",
            resume=settings.resume,
            executor=pool,
            on_point=done,
            log=settings.log,
        )


# --------------------------------------------------------------------------- ablation

#: Training variants of the ablation: ``(transport_norm, data_loss)``. How neurons are
#: disabled in the split needs no training of its own: every run is split both ways.
VARIANTS: dict[str, tuple[str, str]] = {
    "ours": ("l1", "per_head"),
    "w2": ("l2", "per_head"),
    "pooled": ("l1", "pooled"),
    "authors": ("l2", "pooled"),
}
#: The ablation's columns: each of the authors' choices alone, then all of them together;
#: ``(title, training variant, split columns' suffix)``.
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("ours (L1 transport, per-head loss, outputs 0)", "ours", ""),
    ("transport w²·d (L2)", "w2", ""),
    ("split keeps the bias", "ours", "_bias"),
    ("one pooled cross-entropy", "pooled", ""),
    ("all (the authors' code)", "authors", "_bias"),
)


def ablation_points(settings: Settings) -> list[Point]:
    """Every (epochs, mode, network, variant, seed) of the ablation, seeds fastest.

    The regular network has no transport cost, so its ``w2`` and ``authors`` runs would
    repeat ``ours`` and ``pooled``: they are left out, and its columns read those runs.
    """
    context = {
        "scenarios": str(settings.scenarios),
        "overrides": settings.overrides,
        "device": settings.device,
        **({"pairing": settings.pairing} if settings.pairing != "fixed" else {}),
    }
    axes = {
        "epochs": settings.ablation_epochs,
        "mode": settings.modes,
        "network": settings.networks,
        "variant": settings.variants,
        "seed": range(settings.seeds),
    }
    points = harness.grid(axes, context=context)
    return [p for p in points if p["network"] == "spatial" or VARIANTS[p["variant"]][0] == "l1"]


def _ablation_point(settings: Settings, point: Point) -> dict[str, Any]:
    norm, loss = VARIANTS[point["variant"]]
    variant = replace(
        settings,
        steps=None,
        epochs=float(point["epochs"]),
        transport_normalize="connections",
        transport_norm=norm,
        data_loss=loss,
        figures=False,
    )
    row = run_one(variant, point["mode"], point["network"], point["seed"])
    return {"variant": point["variant"], "epochs_setting": point["epochs"], **row}


def run_ablation(settings: Settings) -> list[dict[str, Any]]:
    """Every run of the ablation, each recorded in ``ablation.csv`` as it ends; the rows."""

    def done(point: Point, row: dict[str, Any]) -> None:
        settings.log(
            f"ablation: {row['epochs_setting']:g} epochs {row['mode']:<10} {row['network']:<7} "
            f"{row['variant']:<7} seed {row['seed']} full {row['full_accuracy']:.3f} split "
            f"{row['split_accuracy']:.3f} / {row['split_accuracy_bias']:.3f} (bias kept) "
            f"({row['train_seconds']:.0f} s)"
        )

    with contextlib.ExitStack() as stack:
        pool = None
        if settings.jobs > 1:
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=settings.jobs, mp_context=context)
            stack.enter_context(pool)
        return harness.run_grid(
            ablation_points(settings),
            partial(_ablation_point, replace(settings, log=_silent)),
            settings.out / "ablation.csv",
            resume=settings.resume,
            executor=pool,
            on_point=done,
            log=settings.log,
        )


#: The regular network has no transport cost: its ``w2`` and ``authors`` columns are the
#: runs of the variants that differ from them only there.
REGULAR_TWINS = {"w2": "ours", "authors": "pooled"}


def choice_rows(
    rows: Sequence[dict[str, Any]], epochs: float, mode: str, network: str, variant: str
) -> list[dict[str, Any]]:
    """The ablation runs behind one cell (the regular network reads :data:`REGULAR_TWINS`)."""
    if network == "regular":
        variant = REGULAR_TWINS.get(variant, variant)
    return [
        r
        for r in rows
        if float(r["epochs_setting"]) == epochs
        and (r["mode"], r["network"], r["variant"]) == (mode, network, variant)
    ]


def ablation_summary(
    rows: Sequence[dict[str, Any]],
) -> dict[tuple[float, str, str, str], dict[str, harness.Stats]]:
    """``{(epochs, mode, network, choice title): {quantity: Stats}}`` over seeds.

    Quantities: ``full_accuracy``, ``split_accuracy``, ``accuracy_drop`` (the latter two
    under the choice's disabling). The regular network's ``w2`` and ``authors`` columns
    read its ``ours`` and ``pooled`` runs (no transport cost to change).
    """
    out: dict[tuple[float, str, str, str], dict[str, harness.Stats]] = {}
    keys = {(float(r["epochs_setting"]), r["mode"], r["network"]) for r in rows}
    for epochs, mode, network in keys:
        for title, variant, suffix in CHOICES:
            chosen = choice_rows(rows, epochs, mode, network, variant)
            if chosen:
                out[(epochs, mode, network, title)] = {
                    "full_accuracy": harness.describe(r["full_accuracy"] for r in chosen),
                    "split_accuracy": harness.describe(
                        r[f"split_accuracy{suffix}"] for r in chosen
                    ),
                    "accuracy_drop": harness.describe(r[f"accuracy_drop{suffix}"] for r in chosen),
                }
    return out


def ablation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """``ablation.md``: per length and mode, each choice's full, split and drop beside the paper."""
    summary = ablation_summary(rows)
    seeds = len({r["seed"] for r in rows})
    lines = [
        "# Wołczyk et al.: the authors' choices, one at a time and together",
        "",
        "Generated by `python -m particlesim_wolczyk.experiments ablation`. Each column changes",
        "one choice of this reproduction to the authors' published code's (see the module",
        "docstring of `particlesim_wolczyk.experiments`): the transport cost's weight norm",
        "(w²·d), the split's disabled neurons keeping their bias, the data loss as one",
        "cross-entropy mean; the last column takes all of them. Every run: the transport cost",
        "per connection (as the authors' code), Adam lr 0.005, batch 256, the length in epochs",
        "of each mode's own training set (a sequential epoch is one pass over both tasks'",
        f"pooled, shuffled examples). Test accuracy averaged over the two tasks, mean ± std over "
        f"{seeds} seed(s).",
        "",
    ]
    lengths = sorted({float(r["epochs_setting"]) for r in rows})
    for epochs in lengths:
        for mode in MODES:
            present = [
                (title, network)
                for title, _, _ in CHOICES
                for network in NETWORKS
                if (epochs, mode, network, title) in summary
            ]
            if not present:
                continue
            steps = sorted(
                {int(r["steps"]) for r in rows
                 if float(r["epochs_setting"]) == epochs and r["mode"] == mode}
            )  # fmt: skip
            lines += [
                f"## {MODE_TITLES[mode]}, {epochs:g} epochs ({'/'.join(map(str, steps))} steps)",
                "",
            ]
            header = ["choice"]
            networks = [n for n in NETWORKS if any(n == p[1] for p in present)]
            for network in networks:
                header += [
                    f"{NETWORK_TITLES[network]} full",
                    f"{NETWORK_TITLES[network]} split",
                    f"{NETWORK_TITLES[network]} drop",
                ]
            table = []
            for title, _, _ in CHOICES:
                cells = [title]
                for network in networks:
                    stats = summary.get((epochs, mode, network, title), {})
                    cells += [
                        harness.cell(stats.get(q), ".2f")
                        for q in ("full_accuracy", "split_accuracy", "accuracy_drop")
                    ]
                table.append(cells)
            paper = ["paper"]
            for network in networks:
                paper += [
                    "–",
                    "{:.2f} ± {:.2f}".format(*PAPER_TABLE1["split_accuracy"][mode][network]),
                    "{:.2f} ± {:.2f}".format(*PAPER_TABLE1["accuracy_drop"][mode][network]),
                ]
            table.append(paper)
            lines += [*harness.markdown_table(header, table), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_ablation(settings: Settings) -> dict[str, Path]:
    """Run (or, with ``report_only``, read) the ablation; write its CSV, Markdown and info."""
    check_settings(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    csv_path = settings.out / "ablation.csv"
    if settings.report_only:
        if not csv_path.is_file():
            raise ParticlesimError(f"--report-only: no {csv_path} to report from")
        rows: list[dict[str, Any]] = read_csv(csv_path)
    else:
        rows = run_ablation(settings)
    md = settings.out / "ablation.md"
    md.write_text(ablation_markdown(rows), encoding="utf-8")
    written = {csv_path.name: csv_path, md.name: md}
    if not settings.report_only:
        info = harness.write_json(
            settings.out / "run_info_ablation.json",
            {
                "experiment": "ablation",
                "wall_seconds": round(time.perf_counter() - start, 1),
                "seeds": settings.seeds,
                "epochs": list(settings.ablation_epochs),
                "modes": list(settings.modes),
                "networks": list(settings.networks),
                "variants": list(settings.variants),
                "overrides": settings.overrides,
                "device": settings.device,
                "jobs": settings.jobs,
            },
        )
        written[info.name] = info
    return written


# --------------------------------------------------------------------------- forces

#: Steps at which :func:`run_forces` records the early training of the spatial network.
FORCE_STEPS = (0, 10, 25, 50, 100, 300)


def _penalised_links(system: Any, layers: Sequence[str]) -> list[Any]:
    return [i for i in system.interactions if i.target in layers]


def _weight_state(system: Any, layers: Sequence[str]) -> dict[str, float]:
    """Mean ``|w|`` and the fraction of ``|w| < 0.01`` of each interaction into 𝓛."""
    out = {}
    for link in _penalised_links(system, layers):
        weight = link.weight.detach().abs()
        name = f"{link.source}->{link.target}"
        out[f"mean_abs_weight {name}"] = float(weight.mean())
        out[f"fraction_below_0.01 {name}"] = float((weight < 0.01).double().mean())
    return out


def _force_recorder(normalize: str, rows: list[dict[str, Any]]) -> Any:
    """A writer that appends the state of the weights into 𝓛 to ``rows`` at ``FORCE_STEPS``."""
    import torch

    from particlesim.core.triggers import At
    from particlesim.core.writers import Writer

    class ForceRecorder(Writer):
        name = "force_recorder"

        def __init__(self) -> None:
            super().__init__(trigger=At([s for s in FORCE_STEPS if s > 0]))
            self.layers: list[str] = []

        def report(self, simulation: Any, step: int, values: dict[str, Any]) -> None:
            system = simulation.system
            with torch.no_grad():
                energy = float(system.potentials[0].energy(system))
            rows.append(
                {"transport_normalize": normalize, "step": step,
                 "data_loss": float(simulation.last_loss), "transport_energy": energy,
                 **_weight_state(system, self.layers)}
            )  # fmt: skip

    return ForceRecorder()


def run_forces(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Data gradient against transport gradient per weight, and the first steps of training.

    For the concatenation scenario's spatial network (seed 0) under each transport
    normalisation: at initialisation, the per-weight ``|∂L/∂w|`` of one training
    batch of 256 beside the transport cost's ``|∂(αT)/∂w|``, for every interaction
    into 𝓛; then the data loss, the transport energy and the weights into 𝓛 at
    :data:`FORCE_STEPS` of training.
    """
    import torch

    gradient_rows: list[dict[str, Any]] = []
    step_rows: list[dict[str, Any]] = []
    for normalize in ("neurons", "connections"):
        variant = replace(settings, transport_normalize=normalize, steps=max(FORCE_STEPS))

        recorder = _force_recorder(normalize, step_rows)
        built = prepare(variant, "concat", "spatial", 0, extra_writers=[recorder])
        system, simulation = built.system, built.simulation
        layers = recorder.layers = built.plan.model.penalised_layers()
        transport = system.potentials[0]
        x = simulation.train_x[:256]
        y = simulation.train_y[:256]
        system.zero_grad()
        simulation.loss(system(x), y).backward()
        data = {
            id(p): p.grad.detach().abs().clone() for p in system.parameters() if p.grad is not None
        }
        system.zero_grad()
        transport(system).backward()
        for link in _penalised_links(system, layers):
            data_grad = data[id(link.weight)]
            cost_grad = link.weight.grad.detach().abs()
            gradient_rows.append(
                {"transport_normalize": normalize, "interaction": f"{link.source}->{link.target}",
                 "data_gradient_median": float(data_grad.median()),
                 "data_gradient_p90": float(data_grad.quantile(0.9)),
                 "transport_gradient_median": float(cost_grad.median()),
                 "fraction_data_below_transport": float((data_grad < cost_grad).double().mean())}
            )  # fmt: skip
        system.zero_grad()
        with torch.no_grad():
            simulation.last_loss = float(simulation.loss(system(x), y))
        recorder.report(simulation, 0, {})
        harness.run_built(built)
        settings.log(
            f"forces: {normalize}: loss {step_rows[-1]['data_loss']:.3f} after "
            f"{max(FORCE_STEPS)} steps"
        )
    return gradient_rows, step_rows


def forces_markdown(gradients: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]]) -> str:
    """``forces.md``: why the paper's transport cost, as written, stops training."""
    lines = [
        "# Data gradient against transport gradient (concatenation, spatial, seed 0)",
        "",
        "Generated by `python -m particlesim_wolczyk.experiments forces`. Per weight of every",
        "interaction into the penalised layers, at initialisation: the cross-entropy gradient",
        "of one batch of 256 against the transport cost's gradient (α = 1).",
        "",
        "| transport cost | interaction | median data | p90 data | median transport |"
        " data < transport |",
        "|---|---|---|---|---|---|",
    ]
    for row in gradients:
        lines.append(
            f"| {row['transport_normalize']} | {row['interaction']} | "
            f"{float(row['data_gradient_median']):.2e} | {float(row['data_gradient_p90']):.2e} | "
            f"{float(row['transport_gradient_median']):.2e} | "
            f"{float(row['fraction_data_below_transport']):.1%} |"
        )
    links = [k.split(" ", 1)[1] for k in steps[0] if k.startswith("mean_abs_weight ")]
    lines += [
        "",
        "Early training (Adam, lr 0.005, batch 256): data loss (chance: 2 ln 10 = 4.605),",
        "transport energy, mean |w| and fraction of |w| < 0.01 per interaction into 𝓛.",
        "",
        "| transport cost | step | data loss | transport | "
        + " | ".join(f"{link}: mean abs w, below 0.01" for link in links)
        + " |",
        "|---" * (4 + len(links)) + "|",
    ]
    for row in steps:
        cells = [
            f"{float(row[f'mean_abs_weight {link}']):.4f}, "
            f"{float(row[f'fraction_below_0.01 {link}']):.0%}"
            for link in links
        ]
        lines.append(
            f"| {row['transport_normalize']} | {row['step']} | {float(row['data_loss']):.3f} | "
            f"{float(row['transport_energy']):.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def write_forces(settings: Settings) -> dict[str, Path]:
    """Run :func:`run_forces`; write two CSV files and ``forces.md`` into ``settings.out``."""
    settings.out.mkdir(parents=True, exist_ok=True)
    gradients, steps = run_forces(settings)
    paths = {
        "forces_gradients.csv": settings.out / "forces_gradients.csv",
        "forces_steps.csv": settings.out / "forces_steps.csv",
        "forces.md": settings.out / "forces.md",
    }
    write_csv(gradients, paths["forces_gradients.csv"])
    write_csv(steps, paths["forces_steps.csv"])
    paths["forces.md"].write_text(forces_markdown(gradients, steps), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- a finished run


def split_run(run_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Split the network of a finished ``particlesim run`` directory and score the split.

    Rebuilds the run from its ``scenario.toml`` (loading its data), restores the
    trained state from its ``checkpoint.pt`` (``weights_only``), splits the layers
    the model penalises (every layer but the input for a model that names none)
    and scores the split on the test set. Writes ``split.json`` and ``split.png``
    into ``out`` (default: the run directory) and returns the summary.
    """
    from particlesim.io.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from particlesim.runner import Runner
    from particlesim.scenario.loader import read_scenario
    from particlesim_wolczyk.split import (
        evaluate_split,
        greedy_split,
        plot_split,
        split_summary,
        task_heads,
    )

    scenario = run_dir / "scenario.toml"
    if not scenario.is_file():
        raise ParticlesimError(f"{run_dir}: not a run directory (no scenario.toml)")
    raw = read_scenario(scenario)
    raw["writers"] = []
    payload = read_checkpoint(run_dir / CHECKPOINT_FILE)
    runner = Runner.in_memory(raw, base_dir=run_dir)
    built, plan = runner.built, runner.plan
    built.simulation.load_state_dict(payload["simulation"])
    system, simulation = built.system, built.simulation
    penalised = getattr(plan.model, "penalised_layers", None)
    layers = penalised() if callable(penalised) else None
    split = greedy_split(system, task_heads(simulation.loss), layers)
    report = evaluate_split(
        system, split, built.data.test_x, built.data.test_y, batch_size=simulation.eval_batch_size
    )
    summary = {
        "run": str(run_dir),
        "step": simulation.step,
        "layers": split.layers,
        **split_summary(report),
    }
    out = run_dir if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    title = (
        f"{run_dir.name}: split {report.mean_split:.3f}, full {report.mean_full:.3f}, "
        f"drop {report.mean_drop:+.3f}"
    )
    plot_split(system, split, title=title).savefig(out / "split.png", dpi=100)
    return summary


# --------------------------------------------------------------------------- reporting


def summarize(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], harness.Stats]:
    """``{(quantity, mode, network): (mean, std, n)}`` over seeds."""
    return {
        (quantity, *key): stats
        for quantity in ROWS
        for key, stats in harness.summarize(rows, ("mode", "network"), quantity).items()
    }


def within_spread(ours: harness.Stats, paper: tuple[float, float]) -> bool:
    """Whether our mean lies within the paper's mean ± std (or the paper's within ours)."""
    return harness.within_spread(ours, paper, slack=0.005)


def markdown(
    rows: Sequence[dict[str, Any]], settings: Settings, borrowed: Sequence[dict[str, Any]] = ()
) -> str:
    """``table1.md``: our Table 1 beside the paper's, and the spread check.

    ``borrowed`` rows (the regular network's, from ``table1.csv``) join a variant's
    table: the regular network has no transport cost, so the variant leaves it unchanged.
    """
    rows = [*rows, *borrowed]
    summary = summarize(rows)
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    networks = [n for n in NETWORKS if any(r["network"] == n for r in rows)]
    seeds = len({r["seed"] for r in rows})
    steps = sorted({int(r["steps"]) for r in rows})
    normalize = settings.transport_normalize
    cost = (
        "the paper's T(l), divided by N_l"
        if normalize == "neurons"
        else "the authors' code: mean |a|·d over each layer's connections"
    )
    lines = [
        "# Wołczyk et al., spatial networks: Table 1 reproduced",
        "",
        "Generated by `python -m particlesim_wolczyk.experiments table1`. Test accuracy on",
        "the 10 000 test pairs (concatenation, mixing) or the 20 000 pooled test images",
        "(sequential), averaged over the two tasks; mean ± standard deviation over",
        f"{seeds} seed(s). Each run: {', '.join(map(str, steps))} Adam steps (lr 0.005,"
        " batch 256).",
        f"Transport cost: {cost}. See README.md for the setup.",
        "",
    ]
    if borrowed:
        lines += ["The Regular columns are the runs of `table1.csv` (no transport cost).", ""]
    cells = [(m, n) for m in modes for n in networks]
    table = []
    for q, title in ROWS.items():
        table.append(
            [f"{title} (ours)", *(harness.cell(summary.get((q, *c)), ".2f") for c in cells)]
        )
        if q in PAPER_TABLE1:
            paper = [harness.Stats(*PAPER_TABLE1[q][m][n], n=3) for m, n in cells]
            table.append([f"{title} (paper)", *(harness.cell(p, ".2f") for p in paper)])
            check = [
                "yes" if within_spread(summary[(q, *c)], (p.mean, p.std)) else "no"
                for c, p in zip(cells, paper, strict=True)
                if (q, *c) in summary
            ]
            table.append([f"{title}: within spread?", *check])
    header = ["", *(f"{MODE_TITLES[m]} {NETWORK_TITLES[n]}" for m, n in cells)]
    lines += harness.markdown_table(header, table)
    lines += ["", "Per task (mean over seeds): full → split accuracy.", ""]
    per_task = []
    for m, n in cells:
        chosen = [r for r in rows if r["mode"] == m and r["network"] == n]
        if not chosen:
            continue
        accuracies = [
            f"{statistics.fmean(float(r[f'full_accuracy_{task}']) for r in chosen):.3f} → "
            f"{statistics.fmean(float(r[f'split_accuracy_{task}']) for r in chosen):.3f}"
            for task in ("mnist", "fashion_mnist")
        ]
        counts = "; ".join(
            ", ".join(str(r[k]) for k in r if k.startswith("neurons_hidden")) for r in chosen
        )
        per_task.append([MODE_TITLES[m], NETWORK_TITLES[n], *accuracies, counts])
    header = ["mode", "network", "MNIST", "Fashion-MNIST", "neurons per task (h3, h4)"]
    lines += harness.markdown_table(header, per_task)
    return "\n".join(lines).rstrip() + "\n"


def plot_table(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Split accuracy and drop per mode, ours (bars ± std) beside the paper's (markers)."""
    from particlesim.analysis.plots import new_figure

    summary = summarize(rows)
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig = new_figure(figsize=(9.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = {"regular": "tab:blue", "spatial": "tab:orange"}
    for ax, quantity in zip(axes, ("split_accuracy", "accuracy_drop"), strict=True):
        for k, network in enumerate(NETWORKS):
            xs = [i + (k - 0.5) * 0.38 for i in range(len(modes))]
            stats = [summary.get((quantity, m, network)) for m in modes]
            if all(s is None for s in stats):
                continue
            means = [s[0] if s else math.nan for s in stats]
            stds = [s[1] if s else 0.0 for s in stats]
            ax.bar(xs, means, width=0.36, yerr=stds, color=colors[network], alpha=0.75,
                   label=f"{NETWORK_TITLES[network]} (ours)", capsize=3)  # fmt: skip
            paper = [PAPER_TABLE1[quantity][m][network] for m in modes]
            ax.errorbar(xs, [p[0] for p in paper], yerr=[p[1] for p in paper], fmt="D",
                        color="black", markersize=4, capsize=2,
                        label="paper" if k == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(modes)), [MODE_TITLES[m] for m in modes])
        ax.set_ylabel(ROWS[quantity].lower())
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def run(settings: Settings) -> dict[str, Path]:
    """Run Table 1 and write every result file into ``settings.out``."""
    check_settings(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    suffix = settings.suffix
    if settings.report_only:
        existing = settings.out / f"table1{suffix}.csv"
        if not existing.is_file():
            raise ParticlesimError(f"--report-only: no {existing} to report from")
        rows: list[dict[str, Any]] = read_csv(existing)
    else:
        rows = run_table1(settings)
    written = {}
    paths = {
        "csv": settings.out / f"table1{suffix}.csv",
        "md": settings.out / f"table1{suffix}.md",
    }
    borrowed = []
    main_table = settings.out / "table1.csv"
    if suffix and "regular" not in settings.networks and main_table.exists():
        borrowed = [
            r
            for r in read_csv(main_table)
            if r["network"] == "regular" and r["mode"] in settings.modes
        ]
    paths["md"].write_text(markdown(rows, settings, borrowed), encoding="utf-8")
    written.update({p.name: p for p in paths.values()})
    if settings.figures:
        png = plot_table([*rows, *borrowed], settings.out / f"table1{suffix}.png")
        written[png.name] = png
        for path in sorted(settings.out.glob("split_*.png")):
            if path.stem.endswith("_connections") == bool(suffix):
                written[path.name] = path
    elapsed = time.perf_counter() - start
    if settings.report_only:
        settings.log(f"rewrote {', '.join(sorted(written))} in {settings.out}")
        return written
    info = harness.write_json(
        settings.out / f"run_info{suffix}.json",
        {
            "experiment": "table1",
            "wall_seconds": round(elapsed, 1),
            # the runs' own training time, also of those a resumed grid kept
            "run_seconds": round(sum(float(r["train_seconds"]) for r in rows), 1),
            "seeds": settings.seeds,
            "steps": settings.steps,
            "epochs": settings.epochs,
            "modes": list(settings.modes),
            "networks": list(settings.networks),
            "transport_normalize": settings.transport_normalize,
            **_choices(settings),
            "overrides": settings.overrides,
            "device": settings.device,
            "jobs": settings.jobs,
        },
    )
    written[info.name] = info
    settings.log(f"done in {elapsed:.0f} s: {', '.join(sorted(written))} in {settings.out}")
    return written


def check_settings(settings: Settings) -> None:
    """Refuse unknown modes/networks and non-positive counts, each in one line."""
    for mode in settings.modes:
        if mode not in MODES:
            raise ParticlesimError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    for network in settings.networks:
        if network not in NETWORKS:
            raise ParticlesimError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
    if settings.seeds < 1:
        raise ParticlesimError(f"--seeds must be a positive integer, got {settings.seeds}")
    if settings.steps is not None and settings.steps < 1:
        raise ParticlesimError(f"--steps must be a positive integer, got {settings.steps}")
    if settings.epochs is not None and not settings.epochs > 0:
        raise ParticlesimError(f"--epochs must be > 0, got {settings.epochs}")
    if settings.jobs < 1:
        raise ParticlesimError(f"--jobs must be a positive integer, got {settings.jobs}")
    if settings.transport_normalize not in ("neurons", "connections"):
        raise ParticlesimError(
            "--transport-normalize must be 'neurons' or 'connections', got "
            f"{settings.transport_normalize!r}"
        )
    if settings.transport_norm not in ("l1", "l2"):
        raise ParticlesimError(
            f"--transport-norm must be 'l1' or 'l2', got {settings.transport_norm!r}"
        )
    if settings.data_loss not in ("per_head", "pooled"):
        raise ParticlesimError(
            f"--data-loss must be 'per_head' or 'pooled', got {settings.data_loss!r}"
        )
    if settings.pairing not in ("fixed", "fresh"):
        raise ParticlesimError(f"--pairing must be 'fixed' or 'fresh', got {settings.pairing!r}")
    for variant in settings.variants:
        if variant not in VARIANTS:
            raise ParticlesimError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    for epochs in settings.ablation_epochs:
        if not epochs > 0:
            raise ParticlesimError(f"--epochs must be > 0, got {epochs}")


# --------------------------------------------------------------------------- command line


def command(
    what: Annotated[
        str,
        typer.Argument(
            help="table1 (the paper's Table 1), forces (why the paper's cost stops "
            "training) or split (split the network of a finished run: --run DIR).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output directory.")] = RESULTS,
    steps: Annotated[
        int | None, typer.Option(help=f"Adam steps per run (default {DEFAULT_STEPS}).")
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help="Epochs per run instead of --steps (ablation: this length only)."),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Seeds per cell (default 3, as the paper).")
    ] = None,
    modes: Annotated[
        str, typer.Option(help="Comma-separated input modes: concat, mix, sequential.")
    ] = ",".join(MODES),
    networks: Annotated[
        str, typer.Option(help="Comma-separated networks: regular, spatial.")
    ] = ",".join(NETWORKS),
    transport_normalize: Annotated[
        str, typer.Option(help="neurons (the paper's T(l)) or connections (the authors' code).")
    ] = "neurons",
    transport_norm: Annotated[
        str, typer.Option(help="l1 (the paper's |w|·d) or l2 (w²·d, the authors' code).")
    ] = "l1",
    data_loss: Annotated[
        str,
        typer.Option(
            help="per_head (each head's mean, summed) or pooled (one mean, the authors' code)."
        ),
    ] = "per_head",
    variants: Annotated[
        str, typer.Option(help="ablation: comma-separated variants: ours, w2, pooled, authors.")
    ] = ",".join(VARIANTS),
    pairing: Annotated[
        str,
        typer.Option(
            help="fixed (one pairing of the tasks per run) or fresh (every training batch "
            "paired anew, as the authors' per-epoch re-pairing); concatenation and mixing."
        ),
    ] = "fixed",
    report_only: Annotated[
        bool,
        typer.Option(
            help="table1, ablation: rewrite tables and plots from the CSV; train nothing."
        ),
    ] = False,
    quick: Annotated[
        bool, typer.Option(help="1 seed (unless --seeds), 5 steps (ablation: 1 epoch), no figures.")
    ] = False,
    jobs: Annotated[int, typer.Option(help="Runs in parallel (one CPU thread each).")] = 1,
    resume: Resume = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of every scenario: data.limit_test=100"),
    ] = None,
    scenarios: Annotated[
        Path, typer.Option(help="Folder of the wolczyk_*.toml files.")
    ] = SCENARIOS,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    run_dir: Annotated[
        Path | None,
        typer.Option("--run", help="split: a `particlesim run` output directory."),
    ] = None,
) -> None:
    """Reproduce Wołczyk et al.'s Table 1, its ablation and diagnostics, or split a run."""
    if what not in ("table1", "ablation", "forces", "split"):
        typer.echo(
            f"error: unknown experiment {printable(what)!r}; use table1, ablation, forces or split",
            err=True,
        )
        raise typer.Exit(2)
    if what == "split":
        if run_dir is None:
            typer.echo("error: split needs --run DIR (a `particlesim run` directory)", err=True)
            raise typer.Exit(2)
        try:
            summary = split_run(run_dir, None if out == RESULTS else out)
        except ParticlesimError as exc:
            raise fail(str(exc)) from None
        typer.echo(
            f"split {', '.join(summary['layers'])}: full {summary['full_accuracy']:.4f}, "
            f"split {summary['split_accuracy']:.4f}, drop {summary['accuracy_drop']:+.4f}"
        )
        return
    settings = Settings(
        out=out,
        scenarios=scenarios,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
        networks=tuple(n.strip() for n in networks.split(",") if n.strip()),
        transport_normalize=transport_normalize,
        transport_norm=transport_norm,
        data_loss=data_loss,
        pairing=pairing,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
        overrides=list(set_ or []),
        device=device,
        jobs=jobs,
        report_only=report_only,
        resume=resume,
        log=lambda message: typer.echo(message, err=True),
    )
    if quick:
        settings.seeds, settings.steps, settings.figures = 1, 5, False
        settings.ablation_epochs = (1.0,)
    if seeds is not None:
        settings.seeds = seeds
    if steps is not None:
        settings.steps = steps
    if epochs is not None:
        settings.steps, settings.epochs = None, epochs
        settings.ablation_epochs = (epochs,)
    try:
        if what == "forces":
            check_settings(settings)
            written = write_forces(settings)
            settings.log(f"done: {', '.join(sorted(written))} in {settings.out}")
        elif what == "ablation":
            written = write_ablation(settings)
            settings.log(f"done: {', '.join(sorted(written))} in {settings.out}")
        else:
            run(settings)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None


#: ``register_command(app)`` adds ``particlesim wolczyk``; ``main()`` runs it alone
#: (``python -m particlesim_wolczyk.experiments``).
register_command, main = command_entry_points("wolczyk", command)


if __name__ == "__main__":
    main()
