"""TopoLoss on MNIST: accuracy and smoothness against τ, and robustness to weight pruning.

The paper's claims (Deb et al. 2025, "TopoNets"): a topographic loss costs little accuracy,
makes each layer's sheet smooth, and makes the network robust to removing its smallest
weights. Each grid point trains ``scenarios/topoloss_mnist.toml`` (the 784-256-256-10 MLP
with the potential on both hidden layers) at one τ and seed, then measures

* ``accuracy``: MNIST test accuracy;
* ``smoothness``: the mean over the two hidden layers of ``1 − E_layer`` (the mean cosine
  similarity of each unit's weights with their blurred sheet; 1 is perfectly smooth),
  measured at factor 3 for every τ, τ = 0 included;
* ``pruned_accuracy``: test accuracy after zeroing, in every layer, the 80 % of weights
  smallest in magnitude (the paper's robustness test), and ``pruned_drop`` the loss.

Usage::

    python -m particlesim_topoloss.experiments [--epochs 5] [--seeds 0 1 2] [--resume]

writes ``results/runs.csv`` (one row per run) and ``results/README.md`` (mean ± std over
seeds) beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from particlesim.experiments import build_point, cell, grid, markdown_table, run_grid, summarize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCENARIO = ROOT / "scenarios" / "topoloss_mnist.toml"
TAUS = (0.0, 1.0, 5.0, 20.0)

#: What the default grid (5 epochs, seeds 0–2) showed; the table above it is regenerated.
FINDINGS = """\
What the default grid shows (5 epochs, seeds 0–2): the loss does what it is built for —
the sheets go from a cosine of 0.11 with their blurred selves (no loss) to 0.975 at τ = 1
and 0.998 at τ = 20 — at a small cost in accuracy (0.978 → 0.977 → 0.975 → 0.962). The
paper's robustness claim does not carry over to this setting: zeroing the 80 % smallest
weights of every layer leaves the plain network at 0.87, but the topographic ones at
0.18 (τ = 1), 0.30 (τ = 5) and 0.71 (τ = 20). A possible reason, not tested here: smooth
sheets spread a unit's input over many similar small weights, which magnitude pruning
removes together. The paper's
evidence is on convolutional ImageNet models, not on a dense MNIST network, and its
pruning may differ in detail. Longer training and other pruning rules are open.
"""
PRUNED = 0.8


def _smoothness(system: Any) -> float:
    from particlesim_topoloss import smoothness_loss

    values = []
    for interaction in system.interactions[:2]:  # the two hidden layers
        with torch.no_grad():
            values.append(1.0 - float(smoothness_loss(interaction.weight, 3.0, 3.0)))
    return sum(values) / len(values)


def _prune(system: Any, fraction: float) -> None:
    """Zero the ``fraction`` of each dense weight smallest in magnitude, in place."""
    with torch.no_grad():
        for interaction in system.interactions:
            weight = interaction.weight
            threshold = weight.abs().flatten().kthvalue(int(fraction * weight.numel())).values
            weight[weight.abs() <= threshold] = 0.0


#: A tiny run for checking the mechanics (``--quick``): 1 % of MNIST, 500 test images and
#: 64-unit hidden layers (8 × 8 sheets).
QUICK = (
    "data.train_fraction=0.01",
    "data.limit_test=500",
    "model.sizes=[784, 64, 64, 10]",
)


def run_point(point: Any, epochs: float, quick: bool = False) -> dict[str, Any]:
    tau, seed = point.values["tau"], point.values["seed"]
    assignments = [f"scenario.seed={seed}", f"run.epochs={epochs}", "scenario.device=cpu"]
    if quick:
        assignments += QUICK
    assignments.append(f"potentials[0].coefficient={1.0 if tau > 0 else 0.0}")
    assignments.append(f"potentials[0].tau={tau}")
    with build_point(SCENARIO, assignments) as runner:
        runner.run()
        simulation = runner.simulation
        _, accuracy = simulation.evaluate("test")
        smoothness = _smoothness(runner.system)
        _prune(runner.system, PRUNED)
        _, pruned = simulation.evaluate("test", fresh=True)
    return {
        "tau": tau,
        "seed": seed,
        "accuracy": accuracy,
        "smoothness": smoothness,
        "pruned_accuracy": pruned,
        "pruned_drop": accuracy - pruned,
    }


def claims(rows: list[dict[str, Any]], taus: list[float]) -> list[Any]:
    """The paper's three claims (Deb et al. 2025), each τ > 0 against τ = 0 over seeds."""
    from particlesim.reproduce import Claim, direction

    by_tau = {tau: [r for r in rows if r["tau"] == tau] for tau in taus}
    plain = by_tau.get(0.0, [])
    found = []
    for tau in [t for t in taus if t > 0]:
        runs = by_tau[tau]
        for column, quantity, expected, paper in (
            ("smoothness", "sheet smoothness (1 − E)", "higher", "smoother with the loss"),
            ("pruned_accuracy", f"accuracy, {PRUNED:.0%} smallest weights removed", "higher",
             "more robust with the loss"),
        ):  # fmt: skip
            text, verdict, why = direction(
                [r[column] for r in runs],
                [r[column] for r in plain],
                expected,  # type: ignore[arg-type]
            )
            found.append(Claim(f"{quantity}, τ = {tau:g} vs 0", paper, text, verdict, why))
        text, _, why = direction(
            [r["accuracy"] for r in runs], [r["accuracy"] for r in plain], "lower"
        )
        gap = sum(r["accuracy"] for r in plain) / max(1, len(plain)) - sum(
            r["accuracy"] for r in runs
        ) / max(1, len(runs))
        found.append(
            Claim(
                f"test accuracy, τ = {tau:g} vs 0",
                "little cost (≲ 1 point)",
                text,
                "reproduced" if gap <= 0.01 else "not reproduced",
                f"cost {gap:+.3f} (tolerance 0.01); {why}",
            )
        )
    return found


class TopoLossReproduction:
    """``particlesim reproduce topoloss``: the τ grid and the paper's three claims."""

    name = "topoloss"
    title = "TopoLoss (Deb et al. 2025): topographic sheets on MNIST"

    def run(self, out: Path, *, quick: bool, log: Any) -> Any:
        from particlesim.experiments import read_csv
        from particlesim.reproduce import Report

        folder = out if quick else HERE / "results"  # the full grid's journal is the plugin's
        argv = ["--out", str(folder), "--resume"]
        argv += (
            ["--quick", "--epochs", "1", "--seeds", "0", "1", "--taus", "0", "5"] if quick else []
        )
        main(argv, log=log)
        rows = read_csv(folder / "runs.csv")
        taus = sorted({float(r["tau"]) for r in rows})
        return Report(
            paper=self.name,
            title=self.title,
            claims=claims(rows, taus),
            command="python -m particlesim_topoloss.experiments" + (" --quick" if quick else ""),
            settings=("784-256-256-10 MLP, 5 epochs, seeds 0–2" if not quick else "tiny (quick)"),
            notes="" if quick else FINDINGS,
        )


def main(argv: list[str] | None = None, log: Any = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny data and network: seconds")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    points = grid(
        {"tau": args.taus, "seed": args.seeds},
        context={"epochs": args.epochs, **({"quick": True} if args.quick else {})},
    )
    rows = run_grid(
        points,
        lambda point: run_point(point, args.epochs, args.quick),
        args.out / "runs.csv",
        resume=args.resume,
        log=log,
    )
    columns = ("accuracy", "smoothness", "pruned_accuracy", "pruned_drop")
    stats = {c: summarize(rows, ("tau",), c) for c in columns}
    table = markdown_table(
        ["τ", "test accuracy", "smoothness (1 − E)", f"accuracy, {PRUNED:.0%} pruned", "drop"],
        [[f"{tau:g}", *(cell(stats[c].get((tau,))) for c in columns)] for tau in args.taus],
    )
    text = [
        "# TopoLoss on MNIST (`python -m particlesim_topoloss.experiments`)",
        "",
        f"784-256-256-10 ReLU MLP, Adam 1e-3 (cosine), batch 128, {args.epochs:g} epochs; the "
        "potential on both hidden layers (16 × 16 sheets, factor 3); mean ± std over seeds "
        f"{args.seeds}. Smoothness is measured at factor 3 for every τ. Pruning zeroes the "
        f"{PRUNED:.0%} smallest-magnitude weights of every layer.",
        "",
        *table,
        "",
        FINDINGS,
    ]
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    log("\n".join(text))


if __name__ == "__main__":
    main()
