"""BIMT's layout and wiring cost: coordinates as in the authors' code, the cost in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
from particlesim.errors import OptionError, ParticlesimError
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


# --------------------------------------------------------------------------- results


def test_the_independence_data_set_follows_its_formula() -> None:
    from particlesim_bimt.datasets import SymbolicFormula

    data = SymbolicFormula(formula="independence", n_train=100, n_test=50).load(
        seed=7, log=lambda _: None
    )
    assert data.train_x.shape == (100, 4) and data.test_x.shape == (50, 4)
    assert data.train_y.shape == (100, 2) and data.num_classes == 2
    assert data.loss == "mse" and data.loss_options == {"scale": 0.5}  # torch.mean over outputs
    x = data.train_x.double()
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.abs().max()) > 0.9
    x1, x2, x3, x4 = x.unbind(1)
    expected = torch.stack([(x1 + x3) ** 3, x2**2 + torch.sin(math.pi * x4)], 1)
    assert torch.allclose(data.train_y.double(), expected, atol=1e-5)
    again = SymbolicFormula(n_train=100, n_test=50).load(seed=0, log=lambda _: None)
    assert torch.equal(again.train_x, data.train_x)  # data_seed, not the run's seed
    with pytest.raises(OptionError, match=r"^formula: must be one of independence, "):
        SymbolicFormula(formula="indep")


def test_the_moons_have_two_classes_on_their_arcs() -> None:
    from particlesim_bimt.datasets import MoonsSklearn

    data = MoonsSklearn(n_train=201, noise=0.0).load(seed=0, log=lambda _: None)
    assert data.train_y.dtype == torch.int64 and data.loss == "cross_entropy"
    assert int((data.train_y == 0).sum()) == 100 and int((data.train_y == 1).sum()) == 101
    upper = data.train_x[data.train_y == 0].double()
    lower = data.train_x[data.train_y == 1].double() - torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(upper.norm(dim=1), torch.ones(100, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(lower.norm(dim=1), torch.ones(101, dtype=torch.float64), atol=1e-6)


def handmade(cross: float = 0.02) -> object:
    """4 inputs → 4 → 2: output 0 reads inputs 0 and 2 through hidden slot 0, output 1
    inputs 1 and 3 through slot 2; one weak connection (``cross`` of the largest weight)
    joins hidden slot 0 to input 3. The slots hold permuted neurons (as after swaps)."""
    from particlesim_bimt.analysis import Network

    first = torch.zeros(4, 4, dtype=torch.float64)
    # input slot s holds feature ids[0][s] = [2, 0, 3, 1][s]: features 0, 2 in slots 1, 0
    first[0, 1], first[0, 0] = 1.0, -0.5
    first[2, 3], first[2, 2] = 0.8, 0.6  # features 1 and 3
    first[0, 2] = cross  # hidden slot 0 <- feature 3: the leak
    second = torch.zeros(2, 4, dtype=torch.float64)
    second[1, 0], second[0, 2] = 2.0, -1.0  # output slot 1 holds output 0 (ids [1, 0])
    ids = [[2, 0, 3, 1], [0, 1, 2, 3], [1, 0]]
    return Network.from_weights([first.numpy(), second.numpy()], ids=ids)


def test_the_module_split_is_measured_on_original_inputs_and_outputs() -> None:
    from particlesim_bimt.analysis import (
        connection_count,
        hidden_used,
        mean_length,
        modularity,
        module_inputs,
        split_threshold,
        splits,
    )

    network = handmade(cross=0.02)
    modules = {0: (0, 2), 1: (1, 3)}
    assert module_inputs(network, 0.05) == {0: frozenset({0, 2}), 1: frozenset({1, 3})}
    assert splits(network, modules, 0.05) and not splits(network, modules, 0.01)
    assert module_inputs(network, 0.0) == {0: frozenset({0, 1, 2, 3}), 1: frozenset({0, 1, 2, 3})}
    assert split_threshold(network, modules) == pytest.approx(0.02)  # the leak, relative
    assert split_threshold(handmade(cross=0.0), modules) == 0.0  # disconnected as made
    # too high a threshold cuts a module's own input (0.5 of 1.0): no longer the split
    assert not splits(network, modules, 0.55)
    assert split_threshold(network, {0: (0, 1), 1: (2, 3)}) != split_threshold(network, modules)
    assert math.isnan(split_threshold(network, {0: (0, 1), 1: (2, 3)}))
    assert connection_count(network, 0.05) == 6 and connection_count(network, 0.0) == 7
    assert hidden_used(network, 0.05) == 2  # hidden slots 0 and 2; 1 and 3 are idle
    assert modularity(network, 0.05) > 0.4  # two disjoint modules of three edges each
    # input slot s at x = (s + ½)/4, hidden slots likewise, outputs at ¼ and ¾
    assert 0 < mean_length(network, 0.05) < 0.5


def test_a_network_file_round_trips_without_pickle(tmp_path) -> None:
    from particlesim_bimt.analysis import Network, module_inputs

    network = handmade()
    again = Network.load(network.save(tmp_path / "n.npz"))
    assert again.names == network.names
    assert all((a == b).all() for a, b in zip(again.weights, network.weights, strict=True))
    assert module_inputs(again, 0.05) == module_inputs(network, 0.05)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ParticlesimError, match=r"bad.npz: not a network file"):
        Network.load(tmp_path / "bad.npz")


def test_the_picture_draws_one_segment_per_kept_connection() -> None:
    from matplotlib.collections import LineCollection
    from particlesim_bimt.analysis import Network
    from particlesim_bimt.pictures import draw_network

    network = handmade()
    fig = draw_network(network, input_labels=["a", "b", "c", "d"], output_labels=["p", "q"])
    (ax,) = fig.axes
    edges = {c.get_gid(): c for c in ax.collections if isinstance(c, LineCollection)}
    assert {k: len(c.get_segments()) for k, c in edges.items()} == {
        "edges:input->hidden1": 5,
        "edges:hidden1->output": 2,
    }
    assert len(draw_network(network, threshold=0.05).axes[0].collections[0].get_segments()) == 4
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["a", "b", "c", "d", "p", "q"]
    # the strongest connection is the widest and most opaque, blue; a negative one red
    widths = edges["edges:hidden1->output"].get_linewidths()
    assert sorted(widths) == pytest.approx([1.0, 2.0])
    # a grid layout (MNIST's) is drawn in 3-D, on given axes too
    grid = Network(
        names=("input", "output"),
        positions=(
            torch.tensor([[0.25, 0.25, 0], [0.75, 0.25, 0], [0.25, 0.75, 0], [0.75, 0.75, 0]])
            .double()
            .numpy(),
            torch.tensor([[0.5, 0.5, 0.5]]).double().numpy(),
        ),
        ids=(torch.arange(4).numpy(), torch.arange(1).numpy()),
        weights=(torch.tensor([[1.0, -1.0, 0.0, 0.5]]).double().numpy(),),
    )
    from matplotlib.figure import Figure

    two = Figure()
    left, right = (
        two.add_subplot(1, 2, 1, projection="3d"),
        two.add_subplot(1, 2, 2, projection="3d"),
    )
    assert draw_network(grid, ax=right) is two and len(two.axes) == 2 and not left.collections
    assert [c.get_gid() for c in right.collections if c.get_gid()] == ["edges:input->output"]
    with pytest.raises(Exception, match="needs a 2-D axes"):
        draw_network(network, ax=right)


def test_the_experiments_quick_mode_runs_end_to_end(tmp_path) -> None:
    """``particlesim reproduce bimt --quick``: the experiment's ``--quick`` grid (every task,
    every measurement, every picture) through the harness, then the claims."""
    from particlesim_bimt import experiments

    from particlesim.experiments import read_csv

    result = CliRunner().invoke(app, ["reproduce", "bimt", "--quick", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "bimt"
    rows = read_csv(out / "runs.csv")
    assert [(r["task"], r["arm"], r["l1_scale"]) for r in rows] == [
        ("independence", "bimt", 1.0),
        ("independence", "l1", 0.25),  # the L1 prices matched on accuracy
        ("two_moons", "bimt", 1.0),
        ("two_moons", "l1", 1.0),
        ("mnist", "bimt", 1.0),
        ("mnist", "l1", 0.5),
    ]
    for row in rows:
        assert math.isfinite(row["test_loss"]) and math.isfinite(row["modularity"])
        assert 0 < row["connections"] <= row["weights"] and row["hidden_used"] >= 0
        picture = experiments.picture_name(row["task"], row["arm"], row["l1_scale"])
        assert (out / picture).stat().st_size > 0
        assert (row["swaps"] > 0) == (row["arm"] == "bimt")  # L1 has no swaps
    assert [r["steps"] for r in rows] == [30, 30, 30, 30, 20, 20]
    assert rows[0]["split"] in (0, 1) and rows[2]["split"] == ""  # only the independence task
    assert 0 <= rows[4]["test_accuracy"] <= 1
    readme = (out / "README.md").read_text()
    assert "| arm | seeds | test loss |" in readme and "![two_moons l1](two_moons_l1.png)" in readme
    assert "Quick mode" in readme and "| claim | the paper | BIMT vs L1 | verdict | why |" in readme
    page = (tmp_path / "README.md").read_text()
    assert "## BIMT (Liu, Gan & Tegmark 2023)" in page
    assert "| independence: modularity Q, BIMT vs L1 ×0.25 | BIMT higher |" in page


def test_the_l1_arm_prices_every_weight_alike_and_drops_the_swaps() -> None:
    from particlesim_bimt import experiments

    raw = experiments.scenario_for(experiments.TASKS["two_moons"], "l1", 3, 100, 2.0)
    (potential,) = raw["potentials"]
    assert potential["a"] == 0.0 and potential["l0"] == pytest.approx(2 * 0.5291666, rel=1e-5)
    assert "moves" not in raw and raw["scenario"]["seed"] == 3
    assert potential["coefficient_schedule"] == [[50, 0.01]]  # the jump stays at half the run
    bimt = experiments.scenario_for(experiments.TASKS["independence"], "bimt", 0, 1000, 1.0)
    assert bimt["potentials"][0]["a"] == 1.0 and bimt["moves"][0]["every"] == 200
    assert bimt["potentials"][0]["coefficient_schedule"] == [[250, 0.01], [750, 0.001]]
    assert bimt["potentials"][1]["l0"] == 0.1  # the biases' cost is not a weight's


def test_the_mnist_cost_averages_per_layer_and_its_swaps_stay_exact() -> None:
    """``reduction = "mean"`` (the MNIST notebook's get_cc), ``weights = false`` (biases only)
    and the mean price per unit |W| that the L1 baseline pays."""
    from particlesim.core.moves import swap_energy_changes

    system = build([9, 4, 3], layout="grid", l0=0.5)
    mean = ConnectionCost(a=2.0, l0=0.5, bias=True, reduction="mean", groups=["hidden1"])
    first = system.interactions[0]
    source, target = system.groups["input"], system.groups["hidden1"]
    d = torch.cdist(target.position[:, :2], source.position[:, :2], p=1.0)
    expected = (first.weight.abs() * (2.0 * d + 0.5)).mean() + 0.5 * target.bias.abs().mean()
    assert float(mean.energy(system).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert mean.mean_length_cost(system) == pytest.approx(float((2.0 * d + 0.5).mean()))
    system.potentials.append(mean)
    for group in ("input", "hidden1"):
        fast = mean.swap_energy_changes(system, group, 1)
        mean.swap_energy_changes = None  # the engine's fallback: swap, measure, undo
        slow = swap_energy_changes(system, group, 1)
        del mean.swap_energy_changes
        torch.testing.assert_close(fast * mean.coefficient, slow, rtol=1e-10, atol=1e-12)
    biases = ConnectionCost(l0=0.1, bias=True, weights=False)
    expected = 0.1 * sum(
        float(g.bias.detach().abs().sum()) for g in system.groups.values() if g.has("bias")
    )
    assert float(biases.energy(system).detach()) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(biases.mean_length_cost(system))
    with pytest.raises(OptionError, match=r"^reduction: must be 'sum' or 'mean', got 'max'"):
        ConnectionCost(reduction="max")


@pytest.mark.parametrize("name", ["bimt_independence", "bimt_two_moons", "bimt_mnist"])
def test_the_scenarios_validate(name: str) -> None:
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / f"{name}.toml"
    result = CliRunner().invoke(app, ["validate", str(scenario)])
    assert result.exit_code == 0, result.output


def test_a_cost_on_an_unknown_group_is_refused_in_one_line(tiny_scenario) -> None:
    text = tiny_scenario.read_text().replace(
        'name = "particle_network"\nsizes = [0, 8, 0]\ndim = 2',
        'name = "bimt_mlp"\nsizes = [0, 8, 0]',
    )
    text += '\n[[potentials]]\nname = "connection_cost"\ngroups = ["hiden1"]\n'
    tiny_scenario.write_text(text)
    result = CliRunner().invoke(app, ["validate", "--build", str(tiny_scenario)])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "potentials[0].groups: unknown group 'hiden1' (did you mean 'hidden1'?); "
            "groups: input, hidden1, output"
        )
    )


def test_the_readme_example_runs_verbatim(tmp_path, monkeypatch) -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    start = text.index("### BIMT: wiring cost and neuron swaps")
    code = re.compile(r"```python\n(.*?)```", re.S).search(text, start).group(1)
    (tmp_path / "scenarios").symlink_to(root / "scenarios")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    network = namespace["network"]
    assert [w.shape for w in network.weights] == [(20, 4), (20, 20), (2, 20)]
    assert (tmp_path / "independence.png").stat().st_size > 0
