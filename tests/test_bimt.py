"""BIMT's layout and wiring cost: coordinates as in the authors' code, the cost in closed form."""

from __future__ import annotations

import json
import math

import pytest
import torch
from particlesim_bimt import (
    BIMTNetwork,
    ConnectionCost,
    grid_positions,
    line_positions,
    ring_positions,
)
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.errors import OptionError
from particlesim.plugins.manager import PluginManager

REGISTRIES = PluginManager().load().registries


def build(sizes: list[int], **options) -> object:
    return BIMTNetwork(sizes=sizes, **options).build(
        registries=REGISTRIES,
        input_size=sizes[0],
        num_classes=sizes[-1],
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )


def test_layouts_follow_the_code() -> None:
    line = line_positions(4, layer=2, l0=0.2)
    assert line[:, 0].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert torch.allclose(line[:, 2], torch.full((4,), 0.4, dtype=torch.float64))
    grid = grid_positions(9, layer=0, l0=0.5)
    assert sorted(set(grid[:, 0].tolist())) == pytest.approx([1 / 6, 0.5, 5 / 6])
    ring = ring_positions(10, layer=3, l0=0.5)
    radii = ((ring[:, 0] - 0.5) ** 2 + (ring[:, 1] - 0.5) ** 2).sqrt()
    assert torch.allclose(radii, torch.full((10,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="a square number of neurons, got 10"):
        grid_positions(10, 0, 0.5)


def test_the_mnist_variant_lays_out_grids_and_an_output_ring() -> None:
    system = build([16, 9, 4], layout="grid", l0=0.5)
    groups = list(system.groups.values())
    assert groups[0].position.shape == (16, 3) and not groups[0].position.requires_grad
    assert torch.allclose(groups[1].position[:, 2], torch.full((9,), 0.5, dtype=torch.float64))
    radii = ((groups[2].position[:, :2] - 0.5) ** 2).sum(1).sqrt()
    assert torch.allclose(radii, torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(OptionError, match=r"sizes\[1\]: a grid layer needs a square number"):
        build([16, 10, 4], layout="grid")
    with pytest.raises(OptionError, match="l0: must be a finite number > 0"):
        BIMTNetwork(sizes=[2, 2], l0=0.0)


def test_the_cost_is_weight_times_length_plus_l0_in_closed_form() -> None:
    system = build([3, 4, 2], l0=0.2)
    cost = ConnectionCost(a=2.0, l0=0.2, bias=True)
    expected = 0.0
    for interaction in system.interactions:
        source, target = system.groups[interaction.source], system.groups[interaction.target]
        for h in range(target.size):
            for j in range(source.size):
                d = float((target.position[h, :2] - source.position[j, :2]).abs().sum())
                expected += abs(float(interaction.weight[h, j].detach())) * (2.0 * d + 0.2)
    expected += 0.2 * sum(
        float(g.bias.detach().abs().sum()) for g in system.groups.values() if g.has("bias")
    )
    assert float(cost.energy(system).detach()) == pytest.approx(expected, rel=1e-12)
    weight = system.interactions[0].weight
    (grad,) = torch.autograd.grad(cost.energy(system), weight)
    source, target = system.groups["input"], system.groups["hidden1"]
    d = (target.position[:, None, :2] - source.position[None, :, :2]).abs().sum(-1)
    assert torch.allclose(grad, weight.sign() * (2.0 * d + 0.2))
    with pytest.raises(OptionError, match=r"a: must be a finite number >= 0, got -1\.0"):
        ConnectionCost(a=-1.0)


def test_a_scenario_trains_with_the_cost(tiny_scenario, tmp_path) -> None:
    text = tiny_scenario.read_text().replace(
        'name = "particle_network"\nsizes = [0, 8, 0]\ndim = 2',
        'name = "bimt_mlp"\nsizes = [0, 8, 0]\nl0 = 0.2',
    )
    text += '\n[[potentials]]\nname = "connection_cost"\ncoefficient = 0.001\na = 1.0\n'
    tiny_scenario.write_text(text)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["run", str(tiny_scenario), "--set", "run.steps=5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and math.isfinite(summary["test_accuracy"])


def test_a_coefficient_schedule_raises_lambda_during_training(tiny_scenario, tmp_path) -> None:
    """BIMT's λ schedule as any potential's coefficient_schedule: from each step on."""
    from particlesim import Runner

    text = tiny_scenario.read_text().replace(
        'name = "particle_network"\nsizes = [0, 8, 0]\ndim = 2',
        'name = "bimt_mlp"\nsizes = [0, 8, 0]',
    )
    text += (
        '\n[[potentials]]\nname = "connection_cost"\ncoefficient = 0.001\n'
        "coefficient_schedule = [[3, 0.01], [5, 0.1]]\n"
    )
    tiny_scenario.write_text(text)
    seen = []
    with Runner.from_scenario(tiny_scenario, set=["run.steps=7"], out=tmp_path / "o") as runner:
        potential = runner.system.potentials[0]
        runner.run(progress=lambda simulation: seen.append(potential.coefficient))
    # the coefficient of the step just taken: steps 0–2 at 0.001, 3–4 at 0.01, 5–6 at 0.1
    assert seen == [0.001, 0.001, 0.001, 0.01, 0.01, 0.1, 0.1]
    resolved = (tmp_path / "o" / "scenario.toml").read_text()
    assert "coefficient_schedule = [" in resolved  # kept in the run's scenario (resume)
    bad = CliRunner().invoke(
        app,
        ["validate", str(tiny_scenario), "--set", "potentials[0].coefficient_schedule=[[-1, 0.1]]"],
    )
    assert bad.exit_code == 2
    assert bad.stderr.strip().endswith(
        "potentials[0].coefficient_schedule[0]: expected [step >= 0 (an integer), "
        "coefficient >= 0], got [-1.0, 0.1]"
    )
