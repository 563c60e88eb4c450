"""Shader's positional neuron layers: distance penalty, model, pruning, experiments."""

from __future__ import annotations

import csv
import doctest
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import typer
from particlesim_shader import experiments
from particlesim_shader.model import PositionalMLP, grid_shape, pixel_grid
from particlesim_shader.potentials import DistanceL2Potential
from torch import nn
from typer.testing import CliRunner

from particlesim.analysis.pruning import (
    neuron_scores,
    prune_neurons,
    remove_neurons,
    select_neurons,
    silenced,
)
from particlesim.cli.app import app
from particlesim.core.activations import Activation, Tanh
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction, ModulatedInteraction
from particlesim.core.potentials import L2Potential
from particlesim.core.system import System
from particlesim.errors import AnalysisError, OptionError, ParticlesimError
from particlesim.kernels.base import CauchyKernel
from particlesim.plugins.manager import PluginManager

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = ['data.name="idx"', "model.sizes=[0, 12, 10, 0]"]


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


def build(registries, sizes=(16, 12, 10, 3), **options) -> System:
    model = PositionalMLP(sizes=list(sizes), **options)
    return model.build(
        registries=registries,
        input_size=sizes[0],
        num_classes=sizes[-1],
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )


def two_layer(dtype=torch.float64) -> System:
    """a (2 particles) -> b (3 particles), modulated, known positions."""
    g = torch.Generator().manual_seed(1)
    a = ParticleGroup("a", {"position": torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=dtype)})
    b = ParticleGroup("b", {"position": torch.randn(3, 2, generator=g, dtype=dtype)})
    link = ModulatedInteraction(a, b, kernel=CauchyKernel(), generator=g)
    return System([a, b], [link]).to(dtype)


# --------------------------------------------------------------------------- distance_l2


def test_distance_l2_matches_closed_form() -> None:
    system = two_layer()
    w = system.interactions[0].weight.detach()
    ra, rb = system.groups["a"].position.detach(), system.groups["b"].position.detach()
    expected = sum(
        float(w[h, j]) ** 2 * float(((rb[h] - ra[j]) ** 2).sum())
        for h in range(3)
        for j in range(2)
    )
    total = DistanceL2Potential().energy(system).detach()
    assert float(total) == pytest.approx(expected, rel=1e-12)
    mean = DistanceL2Potential(reduction="mean", coefficient=0.5)
    assert float(mean.energy(system).detach()) == pytest.approx(expected / 6, rel=1e-12)
    assert float(mean(system).detach()) == pytest.approx(0.5 * expected / 6, rel=1e-12)
    chosen = DistanceL2Potential(interactions=["a->b"])
    assert float(chosen.energy(system).detach()) == pytest.approx(expected, rel=1e-12)


def test_distance_l2_docstring_example() -> None:
    import particlesim_shader.potentials as potentials_module

    result = doctest.testmod(potentials_module)
    assert result.attempted > 0 and result.failed == 0


def test_distance_l2_errors() -> None:
    with pytest.raises(OptionError, match="reduction: expected 'sum' or 'mean', got 'max'"):
        DistanceL2Potential(reduction="max")
    with pytest.raises(
        OptionError, match="no interaction 'x->y' in the system; interactions: a->b"
    ):
        DistanceL2Potential(interactions=["x->y"]).energy(two_layer())


class Energy(nn.Module):
    """A potential's energy of a system as a module, for ``torch.func.functional_call``."""

    def __init__(self, system: System, potential: nn.Module) -> None:
        super().__init__()
        self.system = system
        self.potential = potential

    def forward(self) -> torch.Tensor:
        return self.potential.energy(self.system)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_distance_l2_gradcheck(reduction: str) -> None:
    system = two_layer()
    energy = Energy(system, DistanceL2Potential(reduction=reduction))
    names = ("system.interactions.0.weight", "system.groups.b.position")

    def function(weight, target_position, source_position):
        tensors = dict(zip(names, (weight, target_position), strict=True))
        tensors["system.groups.a.position"] = source_position
        return torch.func.functional_call(energy, tensors, ())

    inputs = (
        system.interactions[0].weight.detach().clone().requires_grad_(True),
        system.groups["b"].position.detach().clone().requires_grad_(True),
        system.groups["a"].position.detach().clone().requires_grad_(True),
    )
    assert torch.autograd.gradcheck(function, inputs)
    # closed form: dE/dw = 2·w·d², dE/dr_h = Σ_j 2·w²·(r_h - r_j) (divided by M·N for "mean")
    w, rb, ra = (t.detach() for t in inputs)
    grads = torch.autograd.grad(function(*inputs), inputs[:2])
    scale = 1.0 / w.numel() if reduction == "mean" else 1.0
    d = rb[:, None, :] - ra[None]
    assert torch.allclose(grads[0], scale * 2 * w * d.pow(2).sum(-1), atol=1e-12)
    assert torch.allclose(grads[1], scale * (2 * w.pow(2)[..., None] * d).sum(1), atol=1e-12)


def test_penalties_decrease_when_optimised_alone(registries) -> None:
    system = build(registries)
    system.potentials.append(DistanceL2Potential(reduction="mean"))
    system.potentials.append(L2Potential(coefficient=0.01, fields=["weight", "bias"]))
    energies = system.potential_energies()
    before = {k: float(v.detach()) for k, v in energies.items()}
    frozen = {n: g.position.clone() for n, g in system.groups.items() if g.is_frozen("position")}
    optimizer = torch.optim.Adam(system.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        system.potential_energy().backward()
        optimizer.step()
    after = {k: float(v.detach()) for k, v in system.potential_energies().items()}
    assert after["potential/distance_l2"] < 0.5 * before["potential/distance_l2"]
    assert after["potential/l2"] < before["potential/l2"]
    for name, position in frozen.items():  # the input grid and output ring never move
        assert torch.equal(system.groups[name].position, position)


# --------------------------------------------------------------------------- model


def test_model_is_registered_by_the_shader_plugin(registries) -> None:
    assert registries["model"].entry("positional_mlp").plugin == "shader"
    assert registries["potential"].entry("distance_l2").plugin == "shader"


def test_layouts_input_grid_and_output_ring(registries) -> None:
    assert grid_shape(784) == [28, 28] and grid_shape(12) == [3, 4]
    grid = pixel_grid([28, 28], 2, 2.0)
    assert grid[0].tolist() == [-2.0, 2.0]  # top-left pixel
    assert grid[27].tolist() == [2.0, 2.0]  # top-right (row-major: x is the column)
    assert grid[783].tolist() == [2.0, -2.0]  # bottom-right
    system = build(registries, sizes=[784, 20, 10], output_radius=5.0)
    assert torch.equal(system.groups["input"].position, grid)
    ring = system.groups["output"].position
    assert torch.allclose(ring.norm(dim=1), torch.full((10,), 5.0, dtype=torch.float64))
    angles = torch.atan2(ring[:, 1], ring[:, 0]) % (2 * math.pi)
    assert torch.allclose(angles, torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10)
    assert float(system.groups["hidden1"].position.detach().std()) == pytest.approx(1.0, abs=0.35)


def test_frozen_and_learnable_positions(registries) -> None:
    system = build(registries, sizes=[16, 12, 10, 3])
    assert system.groups["input"].is_frozen("position")
    assert system.groups["output"].is_frozen("position")
    for name in ("hidden1", "hidden2"):
        assert isinstance(system.groups[name].position, nn.Parameter)
    vanilla = build(registries, sizes=[16, 12, 10, 3], positional=False)
    assert all(g.is_frozen("position") for g in vanilla.groups.values())
    assert all(isinstance(i, DenseInteraction) for i in vanilla.interactions)
    # weights + biases (+ hidden positions for the positional model)
    weights = 16 * 12 + 12 * 10 + 10 * 3 + 12 + 10 + 3
    assert vanilla.count_parameters() == weights
    assert system.count_parameters() == weights + (12 + 10) * 2


def test_effective_weight_is_falloff_times_weight(registries) -> None:
    system = build(registries)
    link = system.interactions[1]
    assert isinstance(link, ModulatedInteraction) and link.kernel.name == "cauchy"
    source, target = system.groups[link.source], system.groups[link.target]
    d2 = ((target.position[:, None] - source.position[None]) ** 2).sum(-1)
    expected = link.weight / (1 + d2)
    assert torch.allclose(link.effective_weight(source, target), expected, atol=1e-14)
    x = torch.rand(5, 16, dtype=torch.float64)
    h1 = nn.functional.silu(x @ system.interactions[0].effective_weight(
        system.groups["input"], system.groups["hidden1"]).T)  # fmt: skip
    assert torch.allclose(system.activities(x)["hidden1"], h1, atol=1e-12)


def test_initial_effective_weights_have_glorot_scale(registries) -> None:
    system = build(registries, sizes=[784, 112, 56, 10])
    for link in system.interactions:
        source, target = system.groups[link.source], system.groups[link.target]
        bound = math.sqrt(6 / (source.size + target.size))
        falloff = link.kernel(target.position, source.position).detach().mean()
        assert float(link.weight.detach().abs().max()) <= bound / float(falloff) + 1e-12
        effective = link.effective_weight(source, target).detach()
        # uniform(±bound)·k/mean(k): mean square ≈ bound²/3 · E[k²]/E[k]² (≥ bound²/3)
        assert float(effective.pow(2).mean()) >= 0.8 * bound**2 / 3


def test_model_option_errors(registries) -> None:
    with pytest.raises(OptionError, match=r"dim: must be >= 2"):
        PositionalMLP(sizes=[4, 3, 2], dim=1)
    with pytest.raises(OptionError, match=r"sizes: needs an input, at least one hidden"):
        PositionalMLP(sizes=[4, 2])
    with pytest.raises(OptionError, match=r"hidden_spread: must be a non-empty list"):
        PositionalMLP(sizes=[4, 3, 2], hidden_spread=[0.0])
    with pytest.raises(OptionError, match=r"input_grid: \[3, 3\] holds 9 pixels, not 16"):
        build(registries, input_grid=[3, 3])


@pytest.mark.parametrize("name", ["positional", "vanilla", "vanilla_l2"])
def test_shipped_scenarios_validate(name: str) -> None:
    path = ROOT / "scenarios" / experiments.MODELS[name]
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "model 'positional_mlp'" in result.output


def test_training_moves_hidden_positions_only(registries, tiny_data: Path) -> None:
    settings = experiments.Settings(
        overrides=[*TINY_SETS, f'data.data_dir="{tiny_data}"', "run.batch_size=16"],
        device="cpu",
        log=lambda m: None,
    )
    built, _ = experiments.train(settings, "positional", fraction=1.0, seed=0, steps=20)
    initial = build(registries, sizes=[16, 12, 10, 3])  # same seed: the same initial layout
    trained = built.system.double()
    for name in ("input", "output"):
        assert torch.allclose(trained.groups[name].position, initial.groups[name].position)
    for name in ("hidden1", "hidden2"):
        moved = (trained.groups[name].position - initial.groups[name].position).detach()
        assert float(moved.abs().max()) > 1e-3
    assert set(trained.potential_energies()) == {"potential/distance_l2", "potential/l2"}


# --------------------------------------------------------------------------- pruning


class PerNeuronSlope(Activation):
    """``θ(a) = sigmoid(s ⊙ a)`` with one learnable slope per neuron (θ(0) = 0.5 ≠ 0)."""

    name = "per_neuron_slope"

    def __init__(self, size: int | None = None) -> None:
        super().__init__(size)
        self.slope = nn.Parameter(torch.linspace(0.5, 1.5, size, dtype=torch.float64))

    def forward(self, a):
        return torch.sigmoid(self.slope * a)


def dense_net(sizes=(5, 6, 4, 3), activation=Tanh) -> System:
    g = torch.Generator().manual_seed(2)
    groups = [
        ParticleGroup(
            name,
            {
                "position": torch.randn(n, 2, generator=g, dtype=torch.float64),
                **({"bias": torch.randn(n, generator=g, dtype=torch.float64)} if i else {}),
            },
        )
        for i, (name, n) in enumerate(zip(["input", "h1", "h2", "output"], sizes, strict=True))
    ]
    links = [DenseInteraction(a, b, generator=g) for a, b in itertools.pairwise(groups)]
    activations = {"h1": activation(size=sizes[1]), "h2": activation(size=sizes[2])}
    return System(groups, links, activations=activations).to(torch.float64)


def test_neuron_scores_closed_form() -> None:
    system = dense_net()
    w_in, w_out = system.interactions[0].weight.detach(), system.interactions[1].weight.detach()
    expected = (w_in.pow(2).sum(1) + w_out.pow(2).sum(0)) / (5 + 4)
    assert torch.allclose(neuron_scores(system, "h1"), expected)
    by_group = neuron_scores(system, "h1", normalize="group")
    assert torch.allclose(by_group, (w_in.pow(2).sum(1) + w_out.pow(2).sum(0)) / (2 * 6))


@pytest.mark.parametrize("activation", [Tanh, PerNeuronSlope])
def test_pruning_removes_exactly_the_requested_neurons(activation) -> None:
    system = dense_net(activation=activation)
    scores = {g: neuron_scores(system, g) for g in ("h1", "h2")}
    pooled = sorted((float(s), g, j) for g in scores for j, s in enumerate(scores[g].tolist()))
    selection = select_neurons(system, proportion=0.3)  # round(0.3 · 10) = 3, lowest scores
    assert sum(len(v) for v in selection.values()) == 3
    expected = {(g, j) for _, g, j in pooled[:3]}
    assert {(g, int(j)) for g, idx in selection.items() for j in idx} == expected
    pruned = prune_neurons(system, proportion=0.3)
    for g in ("h1", "h2"):
        removed = len(selection.get(g, []))
        assert pruned.groups[g].size == system.groups[g].size - removed
        assert pruned.groups[g].bias.shape == (system.groups[g].size - removed,)
    assert pruned.interactions[0].weight.shape == (pruned.groups["h1"].size, 5)
    assert pruned.interactions[1].weight.shape == (
        pruned.groups["h2"].size,
        pruned.groups["h1"].size,
    )
    assert system.groups["h1"].size == 6  # the original is untouched
    x = torch.rand(7, 5, dtype=torch.float64)
    with silenced(system, selection):
        reference = system(x)
    assert torch.allclose(pruned(x), reference, atol=1e-13)
    assert not torch.allclose(system(x), reference)  # the hooks are gone again
    if activation is PerNeuronSlope:
        kept = [j for j in range(6) if j not in selection.get("h1", torch.tensor([])).tolist()]
        assert torch.equal(pruned.activations["h1"].slope, system.activations["h1"].slope[kept])


def test_pruning_a_positional_network_preserves_its_forward_pass(registries) -> None:
    system = build(registries, sizes=[16, 12, 10, 3])
    system.potentials.append(DistanceL2Potential())
    selection = select_neurons(system, count=5, scope="group")
    assert [len(selection[g]) for g in ("hidden1", "hidden2")] == [5, 5]
    pruned = remove_neurons(system, selection)
    assert [pruned.groups[g].size for g in ("hidden1", "hidden2")] == [7, 5]
    kept = [j for j in range(12) if j not in selection["hidden1"].tolist()]
    assert torch.equal(pruned.groups["hidden1"].position, system.groups["hidden1"].position[kept])
    assert isinstance(pruned.groups["hidden1"].position, nn.Parameter)
    assert pruned.groups["input"].is_frozen("position")
    x = torch.rand(4, 16, dtype=torch.float64)
    with silenced(system, selection):
        assert torch.allclose(pruned(x), system(x), atol=1e-13)
    assert float(pruned.potential_energy().detach()) < float(system.potential_energy().detach())
    raw = select_neurons(system, proportion=0.25, weights="raw")
    assert sum(len(v) for v in raw.values()) == round(0.25 * 22)


@pytest.mark.parametrize("proportion", [0.0, 1.0, 1.5, -0.1])
def test_pruning_proportion_outside_open_unit_interval(proportion) -> None:
    with pytest.raises(AnalysisError, match=r"pruning proportion must be in \(0, 1\), got "):
        prune_neurons(dense_net(), proportion=proportion)


def test_pruning_that_would_empty_a_layer() -> None:
    system = dense_net(sizes=(5, 6, 2, 3))
    with torch.no_grad():  # h2's two neurons get the weakest weights of all
        system.interactions[1].weight.mul_(1e-3)
        system.interactions[2].weight.mul_(1e-3)
    message = "pruning proportion 0.25 would remove all 2 neurons of group 'h2'; choose a smaller"
    with pytest.raises(AnalysisError, match=message):
        prune_neurons(system, proportion=0.25)  # round(0.25 · 8) = 2, both in h2
    with pytest.raises(AnalysisError, match="pruning count 2 would remove all 2 neurons of group"):
        prune_neurons(system, count=2, scope="group")
    with pytest.raises(AnalysisError, match="removing every neuron of group 'h2' would empty it"):
        remove_neurons(system, {"h2": [0, 1]})
    selection = select_neurons(system, proportion=0.25, allow_empty=True)
    assert selection["h2"].tolist() == [0, 1]
    with silenced(system, selection, allow_empty=True):  # still computable: outputs held at 0
        out = system(torch.rand(2, 5, dtype=torch.float64))
    assert torch.allclose(out[0], out[1])  # nothing reaches the output but biases


def test_pruning_other_errors() -> None:
    system = dense_net()
    with pytest.raises(AnalysisError, match="cannot prune the output group 'output'"):
        prune_neurons(system, count=1, groups=["output"])
    with pytest.raises(AnalysisError, match="cannot prune the input group 'input'"):
        remove_neurons(system, {"input": [0]})
    with pytest.raises(AnalysisError, match="unknown group 'h9'; groups: input, h1, h2, output"):
        prune_neurons(system, count=1, groups=["h9"])
    with pytest.raises(AnalysisError, match="give exactly one of proportion or count"):
        select_neurons(system)
    with pytest.raises(AnalysisError, match="group 'h1' has 6 neurons; cannot remove index"):
        remove_neurons(system, {"h1": [6]})
    with pytest.raises(AnalysisError, match="weights must be 'effective' or 'raw'"):
        neuron_scores(system, "h1", weights="signed")
    with pytest.raises(AnalysisError, match="normalize must be 'connections' or 'group'"):
        neuron_scores(system, "h1", normalize="fan_in")
    with pytest.raises(AnalysisError, match="scope must be 'global' or 'group', got 'layer'"):
        select_neurons(system, count=1, scope="layer")


# --------------------------------------------------------------------------- experiments


def quick_args(tiny_data: Path, out: Path) -> list[str]:
    sets = [*TINY_SETS, f'data.data_dir="{tiny_data}"', "run.batch_size=1"]  # 0.015 · 96: 1 row
    return ["all", "--quick", "--out", str(out), "--device", "cpu"] + [
        a for s in sets for a in ("--set", s)
    ]


def test_experiments_quick_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    cli = typer.Typer()
    experiments.register_command(cli)
    cli.command("noop")(lambda: None)  # two commands: the shader command goes by its name
    out = tmp_path / "results"
    result = CliRunner().invoke(cli, ["shader", *quick_args(tiny_data, out)])
    assert result.exit_code == 0, result.output
    with (out / "generalisation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3  # 3 fractions x 3 models x 1 seed
    assert {r["model"] for r in rows} == set(experiments.MODELS)
    assert {float(r["train_fraction"]) for r in rows} == {0.015, 0.075, 0.15}
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert {int(r["steps"]) for r in rows} == {5}  # --quick: 5 steps per generalisation run
    with (out / "pruning.csv").open() as handle:
        pruning = list(csv.DictReader(handle))
    assert len(pruning) == 3 * len(experiments.SCORINGS) * 4  # models x scorings x (0 + 3)
    sizes = {  # 22 hidden neurons: round(p · 22) removed, whatever the scoring
        (float(r["prune_proportion"]), int(r["neurons_removed"])) for r in pruning
    }
    assert sizes == {(0.0, 0), (0.1, 2), (0.3, 7), (0.5, 11)}
    table = (out / "results.md").read_text()
    assert "| fraction | positional | vanilla | vanilla + L2 | paper positional |" in table
    assert "| 0.015 |" in table and "0.851 | 0.876 |" in table  # the paper's numbers beside ours
    assert "| 0.3 |" in table and "0.671 | 0.435 |" in table
    for name in ("generalisation.png", "pruning.png", "run_info.json"):
        assert (out / name).stat().st_size > 0
    # `report` rebuilds tables and plots from the CSV files alone, training nothing
    info = (out / "run_info.json").read_text()
    (out / "results.md").unlink()
    result = CliRunner().invoke(cli, ["shader", "report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "results.md").read_text() == table
    assert (out / "run_info.json").read_text() == info


def test_experiments_resume_a_killed_run(tiny_data: Path, tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.command()(experiments.command)
    out = tmp_path / "results"
    args = [*quick_args(tiny_data, out)[1:], "--seeds", "2"]
    result = CliRunner().invoke(cli, ["generalisation", *args])
    assert result.exit_code == 0, result.output

    def table() -> list[dict]:  # timing aside
        rows = experiments.read_csv(out / "generalisation.csv")
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    whole = table()
    journal = out / "generalisation.points.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 3 * 3 * 2  # fractions x models x seeds
    journal.write_text("".join(lines[:7]) + lines[7][:40])  # killed while recording the 8th
    result = CliRunner().invoke(cli, ["generalisation", *args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "resume: 7 of 18 points already in generalisation.points.jsonl, 11 to run" in (
        result.output
    )
    assert result.output.count("generalisation: ") == 11
    assert table() == whole  # as the uninterrupted run's


def test_experiments_bad_input(tiny_data: Path, tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.command()(experiments.command)
    runner = CliRunner()
    result = runner.invoke(cli, ["prune", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown experiment 'prune'; use generalisation, pruning, all or report" in result.output
    result = runner.invoke(cli, ["report", "--out", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no results in" in result.output and "run generalisation, pruning or all first" in (
        result.output
    )
    for bad in ("0", "1.5"):
        result = runner.invoke(cli, ["pruning", "--fraction", bad, "--out", str(tmp_path)])
        assert result.exit_code == 2
        assert f"--fraction must be in (0, 1], got {float(bad)}" in result.output
    args = quick_args(tiny_data, tmp_path)
    result = runner.invoke(cli, [*args, "--set", "data.train_fraction=0"])  # wins over the sweep's
    assert result.exit_code == 2
    assert "data.train_fraction: must be in (0, 1], got 0" in result.output
    with pytest.raises(
        ParticlesimError, match=r"training-data fraction must be in \(0, 1\], got 0"
    ):
        experiments.check_fraction(0)
    settings = experiments.Settings(out=tmp_path, fractions=[0.1, 2.0], log=lambda m: None)
    with pytest.raises(ParticlesimError, match=r"fraction must be in \(0, 1\], got 2.0"):
        experiments.run("generalisation", settings)


def test_scenario_train_fraction_outside_unit_interval() -> None:
    path = ROOT / "scenarios" / "shader_positional.toml"
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "data.train_fraction=1.5"])
    assert result.exit_code == 2
    assert "data.train_fraction: must be in (0, 1], got 1.5" in result.output


@pytest.mark.slow
def test_reproduction_shows_the_papers_findings(tmp_path: Path) -> None:
    """A short reproduction on MNIST: 2 seeds, 2 fractions, 3 proportions (~3 min, idle core)."""
    settings = experiments.Settings(
        out=tmp_path,
        models=("positional", "vanilla"),
        fractions=[0.015, 0.03],
        proportions=[0.1, 0.15, 0.3],
        seeds=2,
        animate=False,
        device="cpu",
        log=lambda m: None,
    )
    experiments.run("all", settings)
    general = experiments.summarize(
        experiments.read_csv(tmp_path / "generalisation.csv"), "train_fraction"
    )
    # positional generalises worse than vanilla at small fractions
    for x in settings.fractions:
        assert general["positional"][x][0] < general["vanilla"][x][0]
    pruning = experiments.summarize(
        experiments.read_csv(tmp_path / "pruning.csv"),
        "prune_proportion",
        {"scoring": "mean_effective"},
    )
    # positional survives pruning better than vanilla
    for x in settings.proportions:
        assert pruning["positional"][x][0] > pruning["vanilla"][x][0]


TINY_POSITIONAL = """
[scenario]
name = "tiny_positional"
seed = 1
device = "cpu"

[data]
name = "idx"
data_dir = "{data_dir}"

[model]
name = "positional_mlp"
sizes = [0, 12, 10, 0]

[[potentials]]
name = "distance_l2"
coefficient = 0.04
reduction = "mean"

[integrator]
name = "adam"
lr = 0.01

[run]
epochs = 2
batch_size = 16
"""


def test_prune_command_on_a_finished_run(tiny_data: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "tiny_positional.toml"
    scenario.write_text(TINY_POSITIONAL.format(data_dir=tiny_data), encoding="utf-8")
    run_dir = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(scenario), "--out", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = tmp_path / "pruned.pt"
    args = ["prune", str(run_dir), "--proportion", "0.5", "--scope", "group", "--save", str(saved)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "hidden1: 12 -> 6 neurons" in result.output
    assert "hidden2: 10 -> 5 neurons" in result.output
    assert "removed 11 neurons" in result.output and "test accuracy" in result.output
    content = torch.load(saved, weights_only=True)
    assert content["groups"] == {"input": 16, "hidden1": 6, "hidden2": 5, "output": 3}
    assert content["state"]["interactions.1.weight"].shape == (5, 6)
    assert sorted(len(v) for v in content["removed"].values()) == [5, 6]


def test_prune_command_errors(tiny_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prune", str(tmp_path), "--count", "1"])
    assert result.exit_code == 2
    assert f"{tmp_path}: no scenario.toml (not a particlesim run directory)" in result.output
    scenario = tmp_path / "tiny_positional.toml"
    scenario.write_text(TINY_POSITIONAL.format(data_dir=tiny_data), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["run", str(scenario), "--out", str(run_dir)]).exit_code == 0
    result = runner.invoke(app, ["prune", str(run_dir), "--proportion", "1.5"])
    assert result.exit_code == 2
    assert "error: pruning proportion must be in (0, 1), got 1.5" in result.output
    result = runner.invoke(app, ["prune", str(run_dir), "--count", "10", "--scope", "group"])
    assert result.exit_code == 2
    assert "pruning count 10 would remove all 10 neurons of group 'hidden2'" in result.output


# --------------------------------------------------------------------------- reproduce


def test_reproduce_quick_writes_the_shader_section(tmp_path: Path) -> None:
    results = tmp_path / "reproductions"
    args = ["reproduce", "shader", "--quick", "--results", str(results)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (results / "README.md").read_text()
    assert (
        "## Shader, Positional Neuron Layers: generalisation (Fig. 2) and pruning (Fig. 3)" in page
    )
    assert "`particlesim reproduce shader --quick`" in page
    rows = [line for line in page.splitlines() if line.startswith(("| fraction", "| pruned"))]
    assert len(rows) == 10 * 2 + 2 * 10  # fractions x networks, scorings x proportions
    assert "| fraction 0.015: positional accuracy | 0.851 |" in page
    assert "| fraction 0.03: vanilla accuracy | 0.905 | – | **not measured** |" in page
    assert "| pruned 0.3 (`mean_effective`): positional − vanilla | +0.236 (0.671 vs 0.435) |" in (
        page
    )
    assert "| positional below vanilla (fractions) | 10 of 10, mean gap -0.0121 |" in page
    assert "95% interval" in page and "2 seeds)" in page  # quick pruning: 2 seeds, intervals
    report = json.loads((results / "shader.json").read_text())
    assert report["quick"] is True and len(report["claims"]) == 41
    assert report["figures"] == ["generalisation.png", "pruning_intervals.png", "pruning.png"]
    for figure in report["figures"]:
        assert (results / "shader" / figure).stat().st_size > 1000
    pruning = experiments.read_csv(results / "shader" / "pruning.csv")
    assert {r["seed"] for r in pruning} == {0, 1}
    assert (
        "| pruned | positional − vanilla | 95% interval | significant | paper |"
        in (results / "shader" / "results.md").read_text()
    )


def test_welch_interval_and_significance() -> None:
    from particlesim.experiments import Stats, describe, t_critical

    a, b = describe([0.9, 0.92, 0.94]), describe([0.5, 0.6, 0.7, 0.8])
    low, high = experiments.welch_interval(a, b)
    va, vb = a.std**2 / 3, b.std**2 / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # 3.1: rounded down to 3
    half = t_critical(0.95, math.floor(df)) * math.sqrt(va + vb)
    assert (low, high) == pytest.approx((0.27 - half, 0.27 + half))
    assert low > 0  # significant
    assert experiments.welch_interval(Stats(0.5, 0.0, 2), Stats(0.4, 0.0, 3)) == (
        pytest.approx(0.1),
        pytest.approx(0.1),
    )
    assert all(math.isnan(v) for v in experiments.welch_interval(Stats(0.5, 0.0, 1), b))
    rows = [
        {"model": m, "seed": s, "scoring": "mean_effective", "prune_proportion": p,
         "test_accuracy": acc + 0.01 * s}
        for s in range(3)
        for p, (pos, van) in {0.1: (0.9, 0.6), 0.45: (0.15, 0.165)}.items()
        for m, acc in (("positional", pos), ("vanilla", van))
    ]  # fmt: skip
    gaps = {g.proportion: g for g in experiments.pruning_significance(rows, "mean_effective")}
    assert gaps[0.1].significant and gaps[0.1].mean == pytest.approx(0.3)
    assert gaps[0.1].paper == pytest.approx(0.952 - 0.886)
    assert not gaps[0.45].significant and gaps[0.45].mean == pytest.approx(-0.015)
    from particlesim_shader.reproduction import pruning_claims

    claims = {c.quantity: c for c in pruning_claims(rows)}
    ahead = claims["pruned 0.1 (`mean_effective`): positional − vanilla"]
    assert ahead.verdict == "reproduced" and "significantly ahead" in ahead.why
    assert claims["pruned 0.2 (`mean_effective`): positional − vanilla"].verdict == "not measured"
    behind = claims["pruned 0.45 (`mean_effective`): positional − vanilla"]  # paper: vanilla
    assert behind.verdict == "within spread" and "interval holds 0" in behind.why
    reversed_rows = [
        {**r, "model": {"positional": "vanilla", "vanilla": "positional"}[r["model"]]} for r in rows
    ]
    claims = {c.quantity: c for c in pruning_claims(reversed_rows)}
    assert claims["pruned 0.1 (`mean_effective`): positional − vanilla"].verdict == (
        "not reproduced"
    )
