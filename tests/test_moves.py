"""Monte Carlo moves: BIMT's neuron swaps keep the function, follow the greedy rule at T = 0,
sample exp(−U/T) at T > 0, commute with training, resume, and refuse bad input."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import h5py
import pytest
import torch
from particlesim_bimt import BIMTNetwork, ConnectionCost
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core.integrators import SGD, Adam
from particlesim.core.moves import (
    Move,
    NeuronSwap,
    add_identity,
    permute_neurons,
    swap_energy_changes,
)
from particlesim.core.simulation import Simulation
from particlesim.data.datasets import DataSplits
from particlesim.plugins.manager import PluginManager

REGISTRIES = PluginManager().load().registries


def bimt(sizes: list[int], dtype: torch.dtype = torch.float64, seed: int = 0, a: float = 1.0):
    system = BIMTNetwork(sizes=sizes, l0=0.2).build(
        registries=REGISTRIES,
        input_size=sizes[0],
        num_classes=sizes[-1],
        generator=torch.Generator().manual_seed(seed),
        dtype=dtype,
    )
    system.potentials.append(ConnectionCost(a=a, l0=0.2))
    return system


def energy(system) -> float:
    return float(system.potential_energy().detach())


def test_swaps_in_every_group_keep_the_function_to_float32_rounding() -> None:
    system = bimt([6, 8, 7, 4], dtype=torch.float32)
    x = torch.randn(11, 6)
    before = system(x)
    generator = torch.Generator().manual_seed(5)
    move = NeuronSwap(top_k=8, temperature=10.0)  # hot: most proposals are taken
    move.setup(system)
    for step in range(5):
        attempted, accepted = move.attempt(system, step=step, generator=generator)
        assert attempted == 6 + 8 + 7 + 4 and accepted > 0  # top_k caps at each group's size
    ids = {name: group.id.tolist() for name, group in system.groups.items()}
    assert all(sorted(v) == list(range(len(v))) for v in ids.values())
    assert ids["input"] != list(range(6)) and ids["output"] != list(range(4))  # relabelled
    torch.testing.assert_close(system(x), before, rtol=1e-5, atol=1e-6)


def test_the_fast_energy_changes_equal_swapping_and_measuring() -> None:
    system = bimt([5, 6, 4, 3], a=2.0)
    cost = system.potentials[0]
    for name in system.groups:
        for slot in (0, system.groups[name].size - 1):
            fast = cost.swap_energy_changes(system, name, slot)
            cost.swap_energy_changes = None  # the engine's fallback: swap, measure, undo
            slow = swap_energy_changes(system, name, slot)
            del cost.swap_energy_changes
            torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_at_zero_temperature_each_top_slot_takes_its_best_swap() -> None:
    system = bimt([4, 7, 3])
    move = NeuronSwap(groups=["hidden1"], top_k=1)
    move.setup(system)
    slot = int(torch.argmax(move.scores(system, "hidden1")))
    # every arrangement reachable by swapping `slot`, measured by brute force
    options = []
    for k in range(7):
        order = torch.arange(7)
        order[slot], order[k] = k, slot
        permute_neurons(system, "hidden1", order)
        options.append(energy(system))
        permute_neurons(system, "hidden1", order)
    attempted, accepted = move.attempt(system, step=0, generator=torch.Generator())
    assert (attempted, accepted) == (1, int(min(options) < options[slot]))
    assert energy(system) == pytest.approx(min(options), rel=1e-12)


def test_the_greedy_rule_never_raises_the_cost_and_stops_at_a_local_minimum() -> None:
    system = bimt([5, 9, 9, 3], seed=2)
    move = NeuronSwap(top_k=9)
    move.setup(system)
    energies = [energy(system)]
    for step in range(6):
        move.attempt(system, step=step, generator=torch.Generator())
        energies.append(energy(system))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(energies))
    assert energies[-1] < energies[0] and energies[-1] == energies[-2]


def test_metropolis_samples_the_boltzmann_distribution_of_arrangements() -> None:
    """Detailed balance on a small layer: the 3! = 6 arrangements of 3 hidden neurons
    visited with frequencies exp(−U/T)/Z (total variation below 0.03 over 6000 samples)."""
    system = bimt([3, 3, 2], seed=1)
    move = NeuronSwap(groups=["hidden1"], top_k=3, temperature=0.0)
    move.setup(system)
    arrangements = list(itertools.permutations(range(3)))
    U = {}
    for arrangement in arrangements:
        order = system.groups["hidden1"].id.argsort()[list(arrangement)]
        permute_neurons(system, "hidden1", order)  # now id == arrangement
        assert tuple(system.groups["hidden1"].id.tolist()) == arrangement
        U[arrangement] = energy(system)
    spread = max(U.values()) - min(U.values())
    assert spread > 0.05  # the arrangements differ
    temperature = spread / 2
    move.temperature = temperature
    weights = {a: math.exp(-(u - min(U.values())) / temperature) for a, u in U.items()}
    Z = sum(weights.values())
    generator = torch.Generator().manual_seed(0)
    seen: Counter[tuple[int, ...]] = Counter()
    samples = 6000
    for step in range(samples):
        move.attempt(system, step=step, generator=generator)
        seen[tuple(system.groups["hidden1"].id.tolist())] += 1
    tv = 0.5 * sum(abs(seen[a] / samples - weights[a] / Z) for a in arrangements)
    assert tv < 0.03, (tv, seen, weights)


def test_near_zero_temperature_metropolis_accepts_no_uphill_swap() -> None:
    system = bimt([4, 8, 3], seed=3)
    move = NeuronSwap(top_k=8, temperature=1e-12)
    move.setup(system)
    generator = torch.Generator().manual_seed(0)
    last = energy(system)
    for step in range(30):
        move.attempt(system, step=step, generator=generator)
        assert energy(system) <= last + 1e-12
        last = energy(system)


def test_a_temperature_schedule_sets_the_temperature_from_each_step_on() -> None:
    move = NeuronSwap(temperature=1.0, temperature_schedule=[[100, 0.5], [10, 0.1]])
    assert [move.temperature_at(s) for s in (0, 9, 10, 99, 100, 10**6)] == [
        1.0, 1.0, 0.1, 0.1, 0.5, 0.5,
    ]  # fmt: skip


class FixedShuffle(Move):
    """Applies one fixed permutation to a group's neurons, with or without the optimiser."""

    name = "fixed_shuffle"

    def __init__(self, order: torch.Tensor, *, with_optimizer: bool = True, every: int = 3):
        super().__init__(every=every)
        self.order, self.with_optimizer = order, with_optimizer

    def setup(self, system) -> None:
        add_identity(system, "hidden1")

    def attempt(self, system, *, step, generator, optimizer=None):
        permute_neurons(
            system, "hidden1", self.order, optimizer=optimizer if self.with_optimizer else None
        )
        return 1, 1


def _splits(n: int = 64) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataSplits(x, y, x[:0], y[:0], x, y, 3, (5,), "test")


def _train(moves: list[Move], steps: int = 12, integrator: str = "adam"):
    system = BIMTNetwork(sizes=[5, 7, 3], l0=0.2).build(
        registries=REGISTRIES,
        input_size=5,
        num_classes=3,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    simulation = Simulation(
        system,
        Adam(lr=0.05) if integrator == "adam" else SGD(lr=0.05, momentum=0.9),
        _splits(),
        steps=steps,
        batch_size=16,
        moves=moves,
    )
    simulation.run()
    return simulation


@pytest.mark.parametrize("integrator", ["adam", "sgd"])
def test_swaps_commute_with_training_when_the_optimiser_state_moves_too(integrator) -> None:
    """With no potential that tells places apart, a run with swaps computes the same function
    as one without (the optimiser's moments travel with their neurons); leaving the moments
    in place, as the authors' code does for AdamW, changes the training."""
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    x = _splits().test_x
    plain = _train([], integrator=integrator).system(x)
    swapped = _train([FixedShuffle(order)], integrator=integrator)
    assert swapped.system.groups["hidden1"].id.tolist() != list(range(7))
    torch.testing.assert_close(swapped.system(x), plain, rtol=1e-9, atol=1e-12)
    stale = _train([FixedShuffle(order, with_optimizer=False)], integrator=integrator).system(x)
    assert (stale - plain).abs().max() > 1e-4


def test_a_resumed_run_continues_the_moves_exactly() -> None:
    def fresh(steps: int) -> Simulation:
        system = bimt([5, 7, 3], seed=0)
        return Simulation(
            system,
            Adam(lr=0.05),
            _splits(),
            steps=steps,
            batch_size=16,
            moves=[NeuronSwap(top_k=7, every=2, temperature=0.05)],
        )

    whole = fresh(10)
    whole.run()
    first = fresh(5)
    first.run()
    state = first.state_dict()
    resumed = fresh(10)
    resumed.load_state_dict(state)
    resumed.run()
    assert resumed.moves[0].state_dict() == whole.moves[0].state_dict()
    assert whole.moves[0].accepted > 0
    for (name, a), (_, b) in zip(
        whole.system.state_dict().items(), resumed.system.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# -- scenarios ----------------------------------------------------------------------------


def _scenario(tiny_scenario: Path, moves: str, model: str = "bimt_mlp") -> Path:
    text = tiny_scenario.read_text().replace(
        'name = "particle_network"\nsizes = [0, 8, 0]\ndim = 2',
        f'name = "{model}"\nsizes = [0, 8, 0]' + ("\ndim = 2" if model != "bimt_mlp" else ""),
    )
    text += '\n[[potentials]]\nname = "connection_cost"\ncoefficient = 0.01\n' + moves
    tiny_scenario.write_text(text)
    return tiny_scenario


def test_a_scenario_records_acceptance_and_each_frames_ids(tiny_scenario, tmp_path) -> None:
    scenario = _scenario(
        tiny_scenario,
        '\n[[moves]]\nname = "neuron_swap"\nevery = 2\ntop_k = 4\ntemperature = 0.01\n'
        '\n[[writers]]\nname = "trajectory"\nevery = 2\n',
    )
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["run", str(scenario), "--set", "run.steps=8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with h5py.File(out / "trajectory.h5") as f:
        ids = f["particles/hidden1/id/value"][()]
        steps = f["particles/hidden1/id/step"][()].tolist()
        acceptance = f["observables/moves/neuron_swap/acceptance/value"][()]
    assert steps == [0, 2, 4, 6, 8] and ids.shape == (5, 8)  # the trajectory records frame 0
    assert all(sorted(row) == list(range(8)) for row in ids.tolist())
    assert math.isnan(acceptance[0])  # frame 0: nothing proposed yet
    assert ((acceptance[1:] > 0) & (acceptance[1:] <= 1)).all()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["simulation"]["system"]["groups.hidden1.id"].tolist() == ids[-1].tolist()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("moves[0].every=0", "moves[0].every: must be a positive integer (steps), got 0"),
        (
            "moves[0].temperature=-1.0",
            "moves[0].temperature: must be a finite number >= 0, got -1.0",
        ),
        (
            "moves[0].temperature_schedule=[[5, -0.5]]",
            "moves[0].temperature_schedule[0]: expected [step >= 0 (an integer), temperature "
            ">= 0], got [5, -0.5]",
        ),
        ("moves[0].top_k=0", "moves[0].top_k: must be a positive integer, got 0"),
        (
            'moves[0].groups=["hidden9"]',
            "moves[0].groups: unknown group 'hidden9'; groups: input, hidden1, output",
        ),
    ],
)
def test_bad_move_options_are_one_line_naming_the_key(
    tiny_scenario, setting: str, expected: str
) -> None:
    scenario = _scenario(tiny_scenario, '\n[[moves]]\nname = "neuron_swap"\n')
    result = CliRunner().invoke(
        app, ["run", str(scenario), "--set", setting, "--set", "run.steps=2"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].endswith(expected)
    assert "Traceback" not in result.output


def test_a_swap_across_a_kernel_interaction_is_refused(tiny_scenario, tmp_path) -> None:
    text = tiny_scenario.read_text() + '\n[[moves]]\nname = "neuron_swap"\n'
    tiny_scenario.write_text(text)
    result = CliRunner().invoke(app, ["run", str(tiny_scenario), "--set", "run.steps=2"])
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.endswith(
        "moves[0].groups: group 'input' is coupled by interaction 0 ('input' -> 'hidden1', kind "
        "'kernel'), whose weights depend on positions: moving neurons between places would "
        "change the network's function (swaps need position-free interactions, e.g. dense)"
    )


def test_the_readme_moves_table_runs_as_shown(tiny_scenario, tmp_path) -> None:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("**Monte Carlo moves.**")
    block = re.compile(r"```toml\n(.*?)```", re.S).search(text, start)
    assert block is not None
    lines = "\n".join(line.strip() for line in block.group(1).splitlines())
    scenario = _scenario(tiny_scenario, "\n" + lines)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["run", str(scenario), "--set", "run.steps=4", "--set", "moves[0].every=2",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["simulation"]["moves"]
    assert saved[0]["name"] == "neuron_swap" and saved[0]["state"]["attempted"] > 0
