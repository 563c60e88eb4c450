"""Recurrent interactions and seRNN: the recurrence against torch.nn.RNN, the maze task, the
communicability cost against the demo's formula and finite differences, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from particlesim_sernn import (
    Communicability,
    Maze,
    RecurrentL1,
    SeRNNModel,
    choices_only_accuracy,
    communicability,
    diagonal_share,
    grid_coordinates,
    maze_problems,
)
from scipy.linalg import expm
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction, KernelInteraction
from particlesim.core.system import System
from particlesim.errors import OptionError
from particlesim.kernels import GaussianKernel
from particlesim.plugins.manager import PluginManager

REGISTRIES = PluginManager().load().registries
F64 = torch.float64


def groups(sizes=(3, 5, 2), dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ("input", "hidden", "output")
    return [
        ParticleGroup(
            name,
            {
                "position": torch.randn(n, dim, generator=g, dtype=F64),
                "charge": torch.randn(n, generator=g, dtype=F64),
                **({"bias": torch.randn(n, generator=g, dtype=F64)} if name != "input" else {}),
            },
        )
        for name, n in zip(names, sizes, strict=True)
    ]


def test_a_dense_recurrent_system_is_torch_rnn() -> None:
    inputs, hidden, output = groups()
    g = torch.Generator().manual_seed(1)
    feed, loop, read = (
        DenseInteraction(inputs, hidden, generator=g),
        DenseInteraction(hidden, hidden, generator=g),
        DenseInteraction(hidden, output, generator=g),
    )
    system = System(
        [inputs, hidden, output],
        [feed, loop, read],
        activations={"hidden": torch.nn.ReLU()},
    )
    assert system.recurrent
    rnn = torch.nn.RNN(3, 5, nonlinearity="relu", batch_first=True, dtype=F64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(feed.weight)
        rnn.weight_hh_l0.copy_(loop.weight)
        rnn.bias_ih_l0.copy_(hidden.bias)
        rnn.bias_hh_l0.zero_()
    x = torch.randn(4, 7, 3, dtype=F64)
    sequence, last = rnn(x)
    expected = last[0] @ read.weight.T + output.bias
    torch.testing.assert_close(system(x), expected)
    torch.testing.assert_close(system.activities(x)["hidden"], sequence[:, -1])


def test_a_kernel_of_distance_can_be_the_recurrent_weight() -> None:
    """Effective W_rec = q_h k(r_h, r_j) within the group, gradients to positions and charges
    checked against finite differences."""
    inputs, hidden, output = groups(sizes=(2, 4, 2))
    g = torch.Generator().manual_seed(2)
    loop = KernelInteraction(hidden, hidden, kernel=GaussianKernel(1.0))
    system = System(
        [inputs, hidden, output],
        [
            DenseInteraction(inputs, hidden, generator=g),
            loop,
            DenseInteraction(hidden, output, generator=g),
        ],
        activations={"hidden": torch.nn.Tanh()},
    ).to(F64)
    x = torch.randn(3, 5, 2, dtype=F64)
    w = loop.effective_weight(hidden, hidden)
    h = torch.zeros(3, 4, dtype=F64)
    for t in range(5):
        h = torch.tanh(x[:, t] @ system.interactions[0].weight.T + h @ w.T + hidden.bias)
    torch.testing.assert_close(system.activities(x)["hidden"], h)

    def through(position: torch.Tensor, charge: torch.Tensor) -> torch.Tensor:
        fields = {"groups.hidden.position": position, "groups.hidden.charge": charge}
        return torch.func.functional_call(system, fields, (x,))

    pos = hidden.position.detach().clone().requires_grad_()
    charge = hidden.charge.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(through, (pos, charge))


def test_a_recurrent_input_group_and_a_backward_link_are_one_line_errors() -> None:
    inputs, hidden, output = groups()
    with pytest.raises(OptionError, match=r"interactions\[0\]: the input group 'input' cannot "):
        System([inputs, hidden, output], [DenseInteraction(inputs, inputs)])
    with pytest.raises(OptionError, match="'output' -> 'hidden' does not point forward"):
        System(
            [inputs, hidden, output],
            [
                DenseInteraction(inputs, hidden),
                DenseInteraction(output, hidden),
                DenseInteraction(hidden, output),
            ],
        )
    system = System(
        [inputs, hidden, output],
        [DenseInteraction(inputs, hidden), DenseInteraction(hidden, hidden),
         DenseInteraction(hidden, output)],
    ).to(F64)  # fmt: skip
    with pytest.raises(OptionError, match=r"reads sequences \[batch, time, features\], but the"):
        system(torch.zeros(2, 3, dtype=F64))


def test_the_maze_is_the_demos_task() -> None:
    goal, choices, answer = maze_problems()
    assert goal.sum(1).tolist() == [1.0] * 8 and choices.sum(1).tolist() == [2.0] * 8
    # each answer is one of its problem's two open steps
    assert all(choices[i, 4 + answer[i]] == 1 for i in range(8))
    assert choices_only_accuracy() == 0.625
    splits = Maze(n_train=64, n_test=32).load(seed=0, log=lambda m: None)
    assert splits.train_x.shape == (64, 50, 8) and splits.input_shape == (50, 8)
    x = splits.train_x
    assert (x[:, :20, 4:] == 0).all() and (x[:, :20, :4].sum(-1) == 1).all()  # goal period
    assert (x[:, 20:30] == 0).all()  # delay
    assert (x[:, 30:, :4] == 0).all() and (x[:, 30:, 4:].sum(-1) == 2).all()  # choices
    assert splits.num_classes == 4 and set(splits.train_y.tolist()) <= {0, 1, 2, 3}
    again = Maze(n_train=64, n_test=32).load(seed=5, log=lambda m: None)
    assert torch.equal(again.train_x, x)  # the data seed, not the run's seed, draws it
    with pytest.raises(OptionError, match="delay_steps: must be an integer >= 0, got -1"):
        Maze(delay_steps=-1)


def test_the_grid_follows_numpy_meshgrid_order() -> None:
    points = grid_coordinates([5, 5, 4])
    x, y, z = np.meshgrid(np.arange(5), np.arange(5), np.arange(4))
    expected = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    assert np.array_equal(points.numpy(), expected)


def demo_cost(weight: np.ndarray, coordinates: np.ndarray) -> float:
    """The demo's ``SE1_sWc`` in its own (Keras) convention: ``U = Wᵀ`` is [source, target]."""
    u = np.abs(weight.T)
    step = np.diag(u.sum(axis=1) ** -0.5)
    comms = expm(step @ u @ step)
    np.fill_diagonal(comms, 0.0)
    d = np.sqrt(((coordinates[:, None] - coordinates[None]) ** 2).sum(-1))
    return float((u * comms * d).sum())


def sernn_system(seed: int = 0, grid=(2, 2, 2)):
    return SeRNNModel(units=math.prod(grid), grid=list(grid)).build(
        registries=REGISTRIES,
        input_size=8,
        num_classes=4,
        generator=torch.Generator().manual_seed(seed),
        dtype=F64,
    )


def test_the_cost_equals_the_demos_formula() -> None:
    system = sernn_system(grid=(3, 2, 2))
    weight = system.interactions[1].weight.detach()
    energy = Communicability().energy(system).detach()
    coordinates = system.groups["hidden"].position.numpy()
    assert float(energy) == pytest.approx(demo_cost(weight.numpy(), coordinates), rel=1e-10)
    # the transposed convention ("incoming") is a different number on a non-symmetric W
    assert float(Communicability(strength="incoming").energy(system).detach()) != pytest.approx(
        float(energy), rel=1e-6
    )


def test_the_cost_gradient_through_expm_matches_finite_differences() -> None:
    system = sernn_system(grid=(2, 2, 2), seed=3)
    group = system.groups["hidden"]
    distance = torch.cdist(group.position, group.position)

    def cost(w):
        return (w.abs() * communicability(w) * distance).sum()

    w = system.interactions[1].weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(cost, (w,))
    assert (torch.diagonal(communicability(w)) == 0).all()


@torch.no_grad()
def test_self_connections_are_free_in_the_demo_and_priced_by_self_distance() -> None:
    system = sernn_system(grid=(2, 2, 2), seed=4)
    weight = system.interactions[1].weight
    free = float(Communicability().energy(system))
    priced = float(Communicability(self_distance=0.5).energy(system))
    assert priced - free == pytest.approx(0.5 * float(torch.diagonal(weight).abs().sum()))
    weight.copy_(torch.diag(torch.arange(1.0, 9.0, dtype=F64)))  # only self-connections
    assert float(Communicability().energy(system)) == 0.0
    assert diagonal_share(weight) == 1.0
    assert float(RecurrentL1().energy(system)) == 36.0


def test_a_potential_without_a_recurrent_interaction_is_one_line(tmp_path: Path) -> None:
    from particlesim.core.model import MLP

    system = MLP(sizes=[3, 4, 2]).build(
        registries=REGISTRIES,
        input_size=3,
        num_classes=2,
        generator=torch.Generator(),
        dtype=F64,
    )
    with pytest.raises(OptionError, match="potential 'communicability' found no recurrent"):
        Communicability().energy(system)


def tiny_maze(tmp_path: Path, extra: str = "") -> Path:
    scenario = tmp_path / "maze.toml"
    scenario.write_text(
        '[scenario]\nname = "maze"\nseed = 0\ndevice = "cpu"\n\n'
        '[data]\nname = "maze"\nn_train = 256\nn_test = 128\ngoal_steps = 3\ndelay_steps = 2\n'
        "choice_steps = 3\n\n"
        '[model]\nname = "sernn"\nunits = 8\ngrid = [2, 2, 2]\n\n'
        '[[potentials]]\nname = "communicability"\ncoefficient = 0.01\n\n'
        '[integrator]\nname = "adam"\nlr = 0.01\n\n[run]\nepochs = 2\nbatch_size = 64\n' + extra
    )
    return scenario


def test_a_scenario_trains_records_the_recurrent_weight_and_analyses_it(tmp_path) -> None:
    scenario = tiny_maze(
        tmp_path,
        '\n[[writers]]\nname = "trajectory"\nevery = "epoch"\nconnectivity_every = "epoch"\n',
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["test_accuracy"])
    table = tmp_path / "wdc.csv"
    metrics = CliRunner().invoke(
        app,
        ["analyze", str(out / "trajectory.h5"), "weight_distance_correlation", "-o", str(table)],
    )
    assert metrics.exit_code == 0, metrics.output
    rows = [line.split(",") for line in table.read_text().splitlines()]
    column = rows[0].index("weight_distance_correlation_hidden_to_hidden")
    values = [float(row[column]) for row in rows[1:]]
    assert len(values) == 2 and all(-1 <= v <= 1 for v in values)  # one per epoch


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("model.grid=[5, 5]", "model.grid: must be three positive integers, got [5, 5]"),
        (
            "model.grid=[5, 5, 3]",
            "model.units: 8 units do not fill the grid 5 × 5 × 3 (75 points)",
        ),
        ("potentials[0].self_distance=-1.0", "self_distance: must be a finite number >= 0"),
        (
            "potentials[0].strength='both'",
            "potentials[0].strength: expected one of 'outgoing', 'incoming', got 'both'",
        ),
        ("data.choice_steps=0", "data.choice_steps: must be an integer >= 1, got 0"),
    ],
)
def test_bad_options_are_one_line(tmp_path, setting: str, expected: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(tiny_maze(tmp_path)), "--set", setting])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output


def test_the_experiment_runs_its_quick_grid_and_writes_its_table(tmp_path) -> None:
    from particlesim_sernn import experiments

    experiments.main(["--quick", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + 6  # header, 3 strengths of each regulariser
    readme = (tmp_path / "README.md").read_text()
    assert "| communicability | 0.01 |" in readme and "| recurrent_l1 | 0.1 |" in readme


def test_structure_measures_on_a_known_matrix() -> None:
    from particlesim_sernn.experiments import binarised_graph, structure

    # two blocks of 4 strongly coupled units, far apart; weak links across
    weight = np.full((8, 8), 0.01)
    weight[:4, :4] = weight[4:, 4:] = 1.0
    np.fill_diagonal(weight, 2.0)
    positions = np.array([[i, 0, 0] for i in range(4)] + [[i + 10, 0, 0] for i in range(4)], float)
    graph = binarised_graph(weight, top_fraction=0.4)
    assert graph.number_of_edges() == 12  # the two blocks' off-diagonal pairs
    measures = structure(weight, positions)
    assert measures["modularity"] == pytest.approx(0.5)
    assert measures["weight_distance"] < -0.9
    assert measures["diagonal_share"] == pytest.approx(16 / (16 + 24 + 32 * 0.01))


def test_sequences_and_networks_that_do_not_fit_are_one_line(tmp_path) -> None:
    scenario = tiny_maze(tmp_path)
    feed_forward = ["--set", "model={name = 'mlp', sizes = [0, 4, 0]}", "--set", "run.steps=2"]
    result = CliRunner().invoke(app, ["run", str(scenario), *feed_forward])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "potentials[0].groups: potential 'communicability' found no recurrent interaction "
            "(a group coupled to itself) to act on"
        )
    )
    result = CliRunner().invoke(
        app, ["run", str(scenario), *feed_forward, "--set", "potentials=[]"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data: the network is feed-forward and reads [batch, features], but the input "
        "is [64, 8, 8] (sequences?): use a model with a recurrent interaction (a group coupled "
        "to itself)"
    )
    system = sernn_system()
    with pytest.raises(OptionError, match=r"data: the network is recurrent \(group 'hidden' is "):
        system(torch.zeros(2, 8, dtype=F64))


def test_particlesim_reproduce_sernn_quick(tmp_path) -> None:
    result = CliRunner().invoke(app, ["reproduce", "sernn", "--quick", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "README.md").read_text()
    assert "## seRNN (Achterberg et al. 2023)" in page
    assert "| modularity Q (top 10 %): seRNN vs L1 | seRNN higher |" in page
    report = json.loads((tmp_path / "sernn.json").read_text())
    assert len(report["claims"]) == 4 and report["quick"] is True
