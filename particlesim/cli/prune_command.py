"""``particlesim prune RUN_DIR``: remove the weakest hidden neurons of a finished run.

Rebuilds the run's network from ``RUN_DIR/scenario.toml``, loads the trained
tensors from ``RUN_DIR/checkpoint.pt`` (``weights_only``), removes whole hidden
neurons with :func:`particlesim.analysis.pruning.prune_neurons` and reports
the neurons left per group and the test accuracy before and after. ``--save``
writes the smaller network's tensors (a plain ``torch.save`` of tensors and
lists, readable with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from particlesim.cli.common import fail, prepare
from particlesim.errors import ParticlesimError


def accuracy(system: Any, data: Any, device: Any, batch: int = 2000) -> float:
    """Accuracy of ``system`` on the whole test split of ``data`` (nan when it is empty)."""
    import torch

    n = int(data.test_x.shape[0])
    if n == 0:
        return float("nan")
    correct = 0
    system.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            x = data.test_x[start : start + batch].to(device, system.dtype)
            y = data.test_y[start : start + batch].to(device)
            correct += int((system(x).argmax(-1) == y).sum())
    return correct / n


def prune(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (scenario.toml, checkpoint.pt).")
    ],
    proportion: Annotated[
        float | None, typer.Option(help="Share of the hidden neurons to remove, in (0, 1).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Number of neurons to remove.")] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", help="Prune only this group (repeatable; default: hidden)."),
    ] = None,
    weights: Annotated[
        Literal["effective", "raw"], typer.Option(help="Score effective or free weights.")
    ] = "effective",
    normalize: Annotated[
        Literal["connections", "group"],
        typer.Option(help="Divide squared weights by the connections or 2 x the group size."),
    ] = "connections",
    scope: Annotated[
        Literal["global", "group"],
        typer.Option(help="Rank across all pruned groups, or within each group."),
    ] = "global",
    save: Annotated[
        Path | None, typer.Option(help="Write the pruned network's tensors to this file.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
) -> None:
    """Remove whole hidden neurons with the smallest mean squared weight; report accuracy."""
    try:
        _prune(run_dir, proportion, count, group, weights, normalize, scope, save, device)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None


def _prune(run_dir, proportion, count, groups, weights, normalize, scope, save, device) -> None:
    import torch

    from particlesim.analysis.pruning import remove_neurons, select_neurons
    from particlesim.io.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from particlesim.scenario.builder import build

    scenario = run_dir / "scenario.toml"
    if not scenario.is_file():
        raise ParticlesimError(f"{run_dir}: no scenario.toml (not a particlesim run directory)")
    payload = read_checkpoint(run_dir / CHECKPOINT_FILE)
    plan, manager = prepare(scenario, [], [])
    plan.writers.clear()
    built = build(plan, device=device, hooks=manager, log=lambda m: typer.echo(m, err=True))
    system = built.system
    try:
        system.load_state_dict(payload["simulation"]["system"])
    except (KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParticlesimError(
            f"{run_dir / CHECKPOINT_FILE}: does not match the network of scenario.toml ({first})"
        ) from None
    selection = select_neurons(
        system,
        proportion=proportion,
        count=count,
        groups=groups,
        weights=weights,
        normalize=normalize,
        scope=scope,
    )
    pruned = remove_neurons(system, selection)
    before = accuracy(system, built.data, built.device)
    after = accuracy(pruned, built.data, built.device)
    for name, group in system.groups.items():
        left = pruned.groups[name].size
        if left != group.size:
            typer.echo(f"{name}: {group.size} -> {left} neurons")
    typer.echo(
        f"removed {sum(int(i.numel()) for i in selection.values())} neurons; parameters "
        f"{system.count_parameters():,} -> {pruned.count_parameters():,}; "
        f"test accuracy {before:.4f} -> {after:.4f}"
    )
    if save is not None:
        state = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
        torch.save(
            {
                "format": "particlesim-pruned-system",
                "groups": {name: g.size for name, g in pruned.groups.items()},
                "removed": {name: idx.tolist() for name, idx in selection.items()},
                "state": state,
            },
            save,
        )
        typer.echo(f"saved the pruned network to {save}")


def register(app: typer.Typer) -> None:
    """Add ``prune`` to ``app``."""
    app.command("prune")(prune)
