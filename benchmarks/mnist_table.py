"""Particle networks vs MLPs on MNIST: accuracy, parameters and seconds per epoch over seeds.

Runs each configuration through the same scenario machinery as ``particlesim run``
(one process, data loaded once) and prints a Markdown table; ``--readme`` replaces
the table between the ``<!-- mnist-table -->`` markers in README.md.

    python benchmarks/mnist_table.py --seeds 0 1 2 --epochs 10 --readme
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import apply_override, read_scenario

ROOT = Path(__file__).resolve().parents[1]
PARTICLE = ROOT / "scenarios" / "mnist_particle.toml"
MLP = ROOT / "scenarios" / "mnist_mlp.toml"

#: (label, scenario, overrides). The equal-parameter MLPs have about as many
#: learnable numbers as the particle network of the row above them.
CONFIGS: list[tuple[str, Path, list[str]]] = [
    ("PN 784-256-256-10, D=8 (the default)", PARTICLE, []),
    ("PN 784-256-256-10, D=3", PARTICLE, ["model.dim=3"]),
    ("PN 784-256-256-10, D=12", PARTICLE, ["model.dim=12"]),
    ("MLP 784-256-256-10 (equal units)", MLP, []),
    (
        "MLP 784-15-10 (≈ PN D=8 parameters)",
        MLP,
        ["model.sizes=[784, 15, 10]", "integrator.lr=0.01", "integrator.lr_final=0.0005"],
    ),
    (
        "MLP 784-7-10 (≈ PN D=3 parameters)",
        MLP,
        ["model.sizes=[784, 7, 10]", "integrator.lr=0.01", "integrator.lr_final=0.0005"],
    ),
]


def run_one(
    scenario: Path, overrides: list[str], seed: int, epochs: float, manager: PluginManager
) -> dict:
    raw = read_scenario(scenario)
    for assignment in [*overrides, f"scenario.seed={seed}", f"run.epochs={epochs}"]:
        apply_override(raw, assignment)
    raw.pop("writers", None)
    plan = validate(raw, manager.registries, source=str(scenario))
    built = build(plan, device="cpu", log=lambda message: None)
    start = time.perf_counter()
    built.simulation.run()
    seconds = time.perf_counter() - start
    _, accuracy = built.simulation.evaluate("test")
    return {
        "accuracy": accuracy,
        "parameters": built.system.count_parameters(),
        "s_per_epoch": seconds / epochs,
    }


def table(rows: list[tuple[str, list[dict]]], epochs: float, seeds: list[int]) -> str:
    lines = [
        f"MNIST test accuracy after {epochs:g} epoch{'' if epochs == 1 else 's'}, mean ± std "
        f"over seeds {seeds} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads):",
        "",
        "| model | parameters | test accuracy | per seed | s/epoch |",
        "|---|---:|---:|---|---:|",
    ]
    for label, results in rows:
        accuracies = [r["accuracy"] for r in results]
        spread = f" ± {statistics.stdev(accuracies):.4f}" if len(accuracies) > 1 else ""
        lines.append(
            f"| {label} | {results[0]['parameters']:,} | {statistics.mean(accuracies):.4f}"
            f"{spread} | {', '.join(f'{a:.4f}' for a in accuracies)} | "
            f"{statistics.mean(r['s_per_epoch'] for r in results):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--only", nargs="*", help="substrings of row labels to run")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    manager = PluginManager().load()
    rows = []
    for label, scenario, overrides in CONFIGS:
        if args.only and not any(s in label for s in args.only):
            continue
        results = [run_one(scenario, overrides, seed, args.epochs, manager) for seed in args.seeds]
        rows.append((label, results))
        print(f"{label}: {[round(r['accuracy'], 4) for r in results]}", flush=True)
    text = table(rows, args.epochs, args.seeds)
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        content = readme.read_text()
        start, end = "<!-- mnist-table -->", "<!-- /mnist-table -->"
        head, _, rest = content.partition(start)
        _, _, tail = rest.partition(end)
        readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
