"""Particle networks against MLPs on MNIST and Fashion-MNIST (Lange 2015, section 3).

Lange's experiment section names the data (MNIST digits, no augmentation) but gives no
numbers; what the paper argues is that a particle network, whose weights are a kernel of
distance between charged particles, learns the task with parameters linear in the widths.
Each grid point trains one network through the engine (``scenarios/mnist_particle.toml``,
the default particle network: 784-256-256-10, D = 8; ``scenarios/mnist_mlp.toml`` for the
MLPs) on one data set and seed:

* ``pn``: the particle network;
* ``mlp_width``: the MLP of the same widths (784-256-256-10; ~35× the parameters);
* ``mlp_params``: an MLP with about the particle network's parameters (784-15-10).

The claims checked: the particle network beats the MLP of equal parameters, and stays
within a few points of the MLP of equal widths, on each data set (test accuracy over
seeds). Fashion-MNIST needs its IDX files (``data_dir`` or the cache; the default run
looks beside the repository in ``../shared/data/fashion-mnist``); without them its rows
are "not measured".

Usage::

    python -m particlesim_lange.experiments [--epochs 10] [--seeds 0 1 2] [--quick]

writes ``results/runs.csv`` and ``results/README.md`` beside this file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from particlesim.experiments import build_point, cell, grid, markdown_table, run_grid, summarize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PARTICLE = ROOT / "scenarios" / "mnist_particle.toml"
MLP = ROOT / "scenarios" / "mnist_mlp.toml"
#: Where Fashion-MNIST's IDX files are looked for first (a checkout beside the data).
FASHION_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"

NETWORKS: dict[str, tuple[Path, tuple[str, ...], str]] = {
    "pn": (PARTICLE, (), "PN 784-256-256-10, D = 8"),
    "mlp_width": (MLP, (), "MLP 784-256-256-10 (equal widths)"),
    "mlp_params": (
        MLP,
        ("model.sizes=[784, 15, 10]", "integrator.lr=0.01", "integrator.lr_final=0.0005"),
        "MLP 784-15-10 (≈ PN parameters)",
    ),
}
DATASETS = ("mnist", "fashion_mnist")
#: A tiny run for checking the mechanics (with 2 % of the training set): 1000 test images.
QUICK = ("data.limit_test=1000",)


def fashion_available() -> bool:
    """Whether Fashion-MNIST can be loaded without a download."""
    from particlesim.data.sources import dataset_spec, resolve_dataset

    try:
        resolve_dataset(dataset_spec("fashion_mnist"), data_dir=FASHION_DIR, download=False)
    except Exception:
        return False
    return True


def run_point(point: Any, epochs: float, quick: bool) -> dict[str, Any]:
    data, network, seed = point.values["data"], point.values["network"], point.values["seed"]
    scenario, overrides, _ = NETWORKS[network]
    assignments = [
        f"scenario.seed={seed}",
        f"run.epochs={epochs}",
        "scenario.device=cpu",
        f"data.name='{data}'",
        *overrides,
    ]
    if data == "fashion_mnist":
        assignments.append(f"data.data_dir='{FASHION_DIR}'")
    if quick:
        assignments += [*QUICK, "data.train_fraction=0.02"]
    start = time.perf_counter()
    with build_point(scenario, assignments) as runner:
        runner.run()
        _, accuracy = runner.simulation.evaluate("test")
        parameters = runner.system.count_parameters()
    return {
        "data": data,
        "network": network,
        "seed": seed,
        "test_accuracy": accuracy,
        "parameters": parameters,
        "seconds": time.perf_counter() - start,
    }


def claims(rows: list[dict[str, Any]]) -> list[Any]:
    """Per data set: PN above the equal-parameter MLP, and within 3 points of the MLP of
    equal widths (test accuracy, mean over seeds)."""
    from particlesim.experiments import describe
    from particlesim.reproduce import Claim, direction

    found = []
    for data in DATASETS:
        runs = {n: [r["test_accuracy"] for r in rows if (r["data"], r["network"]) == (data, n)]
                for n in NETWORKS}  # fmt: skip
        label = "MNIST" if data == "mnist" else "Fashion-MNIST"
        text, verdict, why = direction(runs["pn"], runs["mlp_params"], "higher")
        found.append(
            Claim(
                f"{label}: PN vs MLP of ≈ equal parameters",
                "PN learns more from its parameters",
                text,
                verdict,
                why,
            )
        )
        pn, wide = describe(runs["pn"]), describe(runs["mlp_width"])
        if pn.n == 0 or wide.n == 0:
            found.append(
                Claim(f"{label}: PN vs MLP of equal widths", "comparable", "–", "not measured",
                      "no runs (data not available)")
            )  # fmt: skip
            continue
        gap = wide.mean - pn.mean
        found.append(
            Claim(
                f"{label}: PN vs MLP of equal widths",
                "comparable (within 3 points)",
                f"{pn.mean:.4f} ± {pn.std:.4f} vs {wide.mean:.4f} ± {wide.std:.4f}",
                "reproduced" if gap <= 0.03 else "not reproduced",
                f"the wide MLP is {gap:+.4f} ahead (tolerance 0.03)",
            )
        )
    return found


class LangeReproduction:
    """``particlesim reproduce lange``: the particle network against MLPs on two data sets."""

    name = "lange"
    title = "Lange (2015): particle networks on MNIST and Fashion-MNIST"

    def run(self, out: Path, *, quick: bool, log: Any) -> Any:
        from particlesim.experiments import read_csv
        from particlesim.reproduce import Report

        folder = out if quick else HERE / "results"
        argv = ["--out", str(folder)]
        if quick:
            argv += ["--quick", "--epochs", "1", "--seeds", "0", "1"]
        main(argv, log=log)
        rows = read_csv(folder / "runs.csv")
        return Report(
            paper=self.name,
            title=self.title,
            claims=claims(rows),
            command="python -m particlesim_lange.experiments" + (" --quick" if quick else ""),
            settings="tiny (quick)" if quick else "10 epochs, seeds 0–2, Adam (the scenarios')",
            compute_seconds=sum(r["seconds"] for r in rows),
            notes="The paper gives no numbers for its MNIST experiment; the claims are its "
            "argument (a kernel of distance learns with parameters linear in the widths).",
        )


def main(argv: list[str] | None = None, log: Any = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="2 % of the data: seconds")
    parser.add_argument("--fresh", action="store_true", help="rerun finished points")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = ["mnist"] if args.quick else list(DATASETS)
    if "fashion_mnist" in datasets and not fashion_available():
        log(f"Fashion-MNIST not found in {FASHION_DIR} (or the cache): its rows are skipped")
        datasets.remove("fashion_mnist")
    points = grid(
        {"data": datasets, "network": list(NETWORKS), "seed": args.seeds},
        context={"epochs": args.epochs, **({"quick": True} if args.quick else {})},
    )
    rows = run_grid(
        points,
        lambda point: run_point(point, args.epochs, args.quick),
        args.out / "runs.csv",
        resume=not args.fresh,
        log=log,
        on_point=lambda point, row: log(
            f"{point.values}: {row['test_accuracy']:.4f} ({row['seconds']:.0f} s)"
        ),
    )
    stats = {c: summarize(rows, ("data", "network"), c) for c in ("test_accuracy", "seconds")}
    parameters = {(r["data"], r["network"]): r["parameters"] for r in rows}
    table = markdown_table(
        ["data", "network", "parameters", "test accuracy", "s per run"],
        [
            [data, NETWORKS[n][2], f"{parameters.get((data, n), 0):,}",
             cell(stats["test_accuracy"].get((data, n))),
             cell(stats["seconds"].get((data, n)), ".0f")]
            for data in datasets
            for n in NETWORKS
        ],
    )  # fmt: skip
    text = [
        "# Particle networks vs MLPs (`python -m particlesim_lange.experiments`)",
        "",
        f"{args.epochs:g} epochs, seeds {args.seeds}, mean ± std; {len(rows)} runs taking "
        f"{sum(r['seconds'] for r in rows):.0f} s here on 2 shared cores, so 's per run' is "
        "not a speed measurement (a rerun skips finished points).",
        "",
        *table,
        "",
    ]
    (args.out / "README.md").write_text("\n".join(text), encoding="utf-8")
    log("\n".join(text))


if __name__ == "__main__":
    main()
