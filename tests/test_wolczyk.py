"""Wołczyk's spatial networks: costs, model, multi-task data, greedy split, experiments."""

from __future__ import annotations

import csv
import doctest
import itertools
import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import particlesim_wolczyk.costs as costs_module
import particlesim_wolczyk.losses as losses_module
import particlesim_wolczyk.split as split_module
import pytest
import torch
import typer
from conftest import make_tiny_idx
from particlesim_wolczyk import experiments
from particlesim_wolczyk.costs import DensityCost, TransportCost, distance
from particlesim_wolczyk.model import SpatialMLP
from particlesim_wolczyk.split import (
    SHARED,
    evaluate_split,
    greedy_split,
    plot_split,
    split_summary,
    task_heads,
)
from typer.testing import CliRunner

from particlesim.analysis.pruning import silenced
from particlesim.cli.app import app
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction
from particlesim.core.losses import CrossEntropy, MultiHeadCrossEntropy
from particlesim.core.system import System
from particlesim.data import sources
from particlesim.data.idx import write_idx
from particlesim.data.multitask import NO_LABEL, MultiTask
from particlesim.errors import AnalysisError, DataError, OptionError, ParticlesimError
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = [0, 6, 5, 7, 8, 0]  # input, hidden1..hidden4, output: 𝓛 = hidden3, hidden4, output


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


@pytest.fixture(scope="session")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny 3-class IDX sets of 16 features with different sizes (96/30 and 72/24)."""
    root = tmp_path_factory.mktemp("two_tasks")
    first = make_tiny_idx(root / "first", n_train=96, n_test=30, seed=1)
    second = make_tiny_idx(root / "second", n_train=72, n_test=24, seed=2)
    return first, second


def tiny_tasks(two_tasks: tuple[Path, Path]) -> list[dict[str, str]]:
    return [{"name": "idx", "data_dir": str(folder)} for folder in two_tasks]


def tiny_scenario(two_tasks: tuple[Path, Path], data: str, *, steps: int, batch: int) -> str:
    """A spatial MLP on the two tiny tasks; ``data``: the ``[data]`` table's mode lines."""
    tasks = ", ".join(f'{{ name = "idx", data_dir = "{p}" }}' for p in two_tasks)
    return f"""
[scenario]
seed = 1
device = "cpu"
[data]
name = "multitask"
{data}
tasks = [{tasks}]
[model]
name = "spatial_mlp"
sizes = {TINY_SIZES}
[integrator]
name = "adam"
lr = 0.005
[run]
steps = {steps}
batch_size = {batch}
"""


def build_tiny(registries, sizes=(16, 6, 5, 7, 8, 6), dtype=torch.float64, **options) -> System:
    model = SpatialMLP(sizes=list(sizes), **options)
    return model.build(
        registries=registries,
        input_size=sizes[0],
        num_classes=sizes[-1],
        generator=torch.Generator().manual_seed(0),
        dtype=dtype,
    )


def chain(positions: list[torch.Tensor], dtype=torch.float64) -> System:
    """Groups ``g0 → g1 → …`` at the given positions, coupled by dense interactions."""
    generator = torch.Generator().manual_seed(5)
    groups = [ParticleGroup(f"g{i}", {"position": p.to(dtype)}) for i, p in enumerate(positions)]
    links = [DenseInteraction(a, b, generator=generator) for a, b in itertools.pairwise(groups)]
    return System(groups, links).to(dtype)


# --------------------------------------------------------------------------- costs


def test_transport_closed_form_and_normalisations() -> None:
    net = chain([torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 3.0], [4.0, 0.0]])])
    with torch.no_grad():
        net.interactions[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    # distances: row 0 (0,3): 3, √10; row 1 (4,0): 4, 3
    total = 1 * 3 + 2 * math.sqrt(10) + 0.5 * 4 + 3 * 3
    energy = TransportCost(layers=["g1"]).energy(net)
    assert energy.item() == pytest.approx(total / 2)  # 1/N_l
    per_connection = TransportCost(layers=["g1"], normalize="connections").energy(net)
    assert per_connection.item() == pytest.approx(total / 4)
    # averaged over 𝓛: the input layer has no incoming connection and adds 0
    both = TransportCost(layers=["g0", "g1"]).energy(net)
    assert both.item() == pytest.approx(total / 2 / 2)
    assert TransportCost(layers=["g1"], coefficient=2.5)(net).item() == pytest.approx(
        2.5 * total / 2
    )
    # the authors' code's default norm prices a² instead of |a|
    squared = 1 * 3 + 4 * math.sqrt(10) + 0.25 * 4 + 9 * 3
    l2 = TransportCost(layers=["g1"], normalize="connections", weight_norm="l2")
    assert l2.energy(net).item() == pytest.approx(squared / 4)
    net.zero_grad()
    l2.energy(net).backward()  # ∂(a²d/4)/∂a = a·d/2: proportional to the weight, not its sign
    expected = torch.tensor([[3.0, -2 * math.sqrt(10)], [2.0, 9.0]], dtype=torch.float64) / 2
    assert torch.allclose(net.interactions[0].weight.grad, expected)


def test_density_closed_form() -> None:
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    net = chain([torch.zeros(1, 2), points])
    d = [5.0, 1.0, math.sqrt(9 + 9)]  # pairs (0,1), (0,2), (1,2)
    expected = (3 + 2 * sum(math.exp(-x) for x in d)) / 9  # ordered pairs, diagonal included
    assert DensityCost(layers=["g1"]).energy(net).item() == pytest.approx(expected)
    both = DensityCost(layers=["g0", "g1"]).energy(net)  # one particle: V = 1
    assert both.item() == pytest.approx((1 + expected) / 2)


def test_default_layers_start_at_the_third_hidden_layer(registries) -> None:
    net = build_tiny(registries)
    assert list(net.groups) == ["input", "hidden1", "hidden2", "hidden3", "hidden4", "output"]
    transport, density = net.potentials
    assert (transport.coefficient, density.coefficient) == (1.0, 3.0)
    explicit = TransportCost(layers=["hidden3", "hidden4", "output"])
    assert transport.energy(net).item() == pytest.approx(explicit.energy(net).item())
    manual = sum(
        DensityCost(layers=[g]).energy(net).item() for g in ("hidden3", "hidden4", "output")
    )
    assert density.energy(net).item() == pytest.approx(manual / 3)


def test_costs_send_gradients_to_positions_and_weights(registries) -> None:
    net = build_tiny(registries)
    transport, density = net.potentials
    transport(net).backward()
    groups = net.groups
    # T(hidden3) reads hidden2's positions: every group from hidden2 on feels the transport cost
    for name in ("hidden2", "hidden3", "hidden4", "output"):
        assert groups[name].position.grad is not None
        assert groups[name].position.grad.abs().sum() > 0, name
    for name in ("input", "hidden1"):
        assert groups[name].position.grad is None
    weights = {f"{i.source}->{i.target}": i.weight for i in net.interactions}
    for name in ("hidden2->hidden3", "hidden3->hidden4", "hidden4->output"):
        assert weights[name].grad is not None and (weights[name].grad != 0).all(), name
    assert weights["input->hidden1"].grad is None
    net.zero_grad()
    density(net).backward()
    for name in ("hidden3", "hidden4", "output"):
        assert groups[name].position.grad.abs().sum() > 0, name
    assert all(i.weight.grad is None for i in net.interactions)  # density: positions only
    assert groups["hidden2"].position.grad is None


class Energy(torch.nn.Module):
    """``potential.energy(system)`` as a module, so torch.func can substitute its tensors."""

    def __init__(self, system: System, potential: torch.nn.Module) -> None:
        super().__init__()
        self.system = system
        self.potential = potential

    def forward(self) -> torch.Tensor:
        return self.potential.energy(self.system)


@pytest.mark.parametrize(
    ("normalize", "weight_norm"), [("neurons", "l1"), ("connections", "l1"), ("neurons", "l2")]
)
def test_costs_gradcheck_float64(normalize: str, weight_norm: str) -> None:
    g = torch.Generator().manual_seed(3)
    net = chain([torch.randn(4, 2, generator=g), torch.randn(3, 2, generator=g)])
    cost = TransportCost(layers=["g1"], normalize=normalize, weight_norm=weight_norm)
    transport = Energy(net, cost)
    density = Energy(net, DensityCost(layers=["g0", "g1"]))
    names = ["system.groups.g0.position", "system.groups.g1.position"]
    weight = "system.interactions.0.weight"
    start = dict(transport.named_parameters())
    inputs = tuple(start[n].detach().clone().requires_grad_() for n in [*names, weight])

    def transport_energy(source, target, w):
        return torch.func.functional_call(
            transport, {names[0]: source, names[1]: target, weight: w}, ()
        )

    def density_energy(source, target):
        return torch.func.functional_call(density, {names[0]: source, names[1]: target}, ())

    assert torch.autograd.gradcheck(transport_energy, inputs)
    assert torch.autograd.gradcheck(density_energy, inputs[:2])
    # coincident particles: a finite energy and gradient 0 for the pair, never NaN
    same = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    torch.exp(-distance(same, same)).sum().backward()
    assert torch.equal(same.grad, torch.zeros(2, 2, dtype=torch.float64))


def test_penalties_decrease_when_optimised_alone(registries) -> None:
    for which in ("transport", "density", "both"):
        net = build_tiny(registries, dtype=torch.float32)
        chosen = [p for p in net.potentials if which in (p.name, "both")]

        def energy(net=net, chosen=chosen) -> torch.Tensor:
            return sum(p(net) for p in chosen)

        start = energy().item()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(40):
            optimizer.zero_grad()
            energy().backward()
            optimizer.step()
        assert energy().item() < 0.75 * start, which


def test_cost_option_errors(registries) -> None:
    with pytest.raises(OptionError, match="layers: must name at least one group"):
        TransportCost(layers=[])
    with pytest.raises(OptionError, match=r"layers: names a group twice: \['a', 'a'\]"):
        DensityCost(layers=["a", "a"])
    with pytest.raises(OptionError, match="normalize: must be one of 'neurons', 'connections'"):
        TransportCost(normalize="mean")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="weight_norm: must be one of 'l1', 'l2', got 'L3'"):
        TransportCost(weight_norm="L3")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="coefficient: must be >= 0, got -1"):
        DensityCost(coefficient=-1)
    net = chain([torch.zeros(2, 2), torch.ones(3, 2)])
    with pytest.raises(OptionError, match="layers: the system has no third hidden layer"):
        TransportCost().energy(net)
    with pytest.raises(OptionError, match="layers: no group 'hidden9' in the system; groups: g0"):
        DensityCost(layers=["hidden9"]).energy(net)


@pytest.mark.parametrize(
    "module", [costs_module, split_module, losses_module], ids=lambda m: m.__name__
)
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- model


def test_plugin_registers_model_costs_and_dataset(registries) -> None:
    assert registries["model"].entry("spatial_mlp").plugin == "wolczyk"
    assert registries["potential"].entry("transport").plugin == "wolczyk"
    assert registries["potential"].entry("density").plugin == "wolczyk"
    assert registries["dataset"].entry("multitask").plugin == "particlesim"


def test_spatial_and_regular_models(registries) -> None:
    spatial = build_tiny(registries)
    regular = build_tiny(registries, spatial=False)
    sizes = [g.size for g in spatial.groups.values()]
    assert sizes == [16, 6, 5, 7, 8, 6]
    for group in spatial.groups.values():
        assert not group.is_frozen("position") and group.dim == 2
    for group in regular.groups.values():
        assert group.is_frozen("position")
    assert len(regular.potentials) == 0 and len(spatial.potentials) == 2
    assert spatial.potentials[0].weight_norm == "l1"
    assert build_tiny(registries, transport_norm="l2").potentials[0].weight_norm == "l2"
    # the same seed: identical positions, weights and biases in both
    same, twin = spatial.state_dict(), regular.state_dict()
    assert set(same) == set(twin)
    for key, value in same.items():
        assert torch.equal(value, twin[key]), key
    # positions ~ N(0, 1), weights like nn.Linear's
    big = build_tiny(registries, sizes=(64, 400, 300, 300, 300, 6))
    positions = torch.cat([g.position.detach() for g in big.groups.values()])
    assert abs(positions.mean().item()) < 0.05 and abs(positions.std().item() - 1) < 0.05
    bound = 1 / math.sqrt(64)
    assert big.interactions[0].weight.abs().max().item() <= bound
    assert isinstance(big.activations["hidden1"], torch.nn.Module)
    x = torch.rand(3, 16, dtype=torch.float64)
    out = spatial.activities(x)
    assert bool(((out["hidden2"] > 0) & (out["hidden2"] < 1)).all())  # sigmoid


def test_model_option_errors() -> None:
    cases = [
        ({"sizes": [0, 4, 0], "spatial": True}, "layers: 3 layers have no third hidden layer"),
        ({"sizes": [0, -1, 0]}, r"sizes\[1\]: must be a positive integer, got -1"),
        ({"alpha": -0.5}, "alpha: must be >= 0, got -0.5"),
        ({"position_spread": 0.0}, "position_spread: must be > 0, got 0.0"),
        ({"layers": ["hidden7"]}, "layers: no layer 'hidden7'; layers of these sizes: input"),
        ({"transport_normalize": "sum"}, "transport_normalize: must be one of 'neurons'"),
        ({"transport_norm": "l0"}, "transport_norm: must be one of 'l1', 'l2', got 'l0'"),
    ]
    for options, message in cases:
        with pytest.raises(OptionError, match=message):
            SpatialMLP(**options)
    SpatialMLP(sizes=[0, 4, 0], spatial=False)  # a regular network needs no 𝓛
    assert SpatialMLP(sizes=[0, 4, 0], layers=["output"]).penalised_layers() == ["output"]
    assert SpatialMLP().penalised_layers() == ["hidden3", "hidden4", "output"]


# --------------------------------------------------------------------------- multi-task data


def labels_by_example(data) -> dict[tuple[float, ...], int]:
    """``{training example: its label}`` of a single-task split."""
    return {tuple(x.tolist()): int(y) for x, y in zip(data.train_x, data.train_y, strict=True)}


@pytest.mark.parametrize("mode", ["concatenate", "mix", "sequential"])
def test_multitask_shapes_and_targets(mode: str, two_tasks: tuple[Path, Path]) -> None:
    lines: list[str] = []
    data = MultiTask(mode=mode, tasks=tiny_tasks(two_tasks)).load(seed=0, log=lines.append)
    parts = [
        MultiTask(mode=mode, tasks=tiny_tasks(two_tasks)).tasks[i].load(seed=0, log=lines.append)
        for i in range(2)
    ]
    assert data.loss == "multi_head_cross_entropy" and data.loss_options == {"heads": [3, 3]}
    assert data.num_classes == 6 and data.train_y.shape[1] == 2
    if mode == "sequential":
        assert data.train_x.shape == (96 + 72, 16) and data.test_x.shape == (30 + 24, 16)
        assert data.input_shape == (4, 4)
        labelled = (data.train_y >= 0).sum(1)
        assert bool((labelled == 1).all())  # exactly one head labelled per example
        assert int((data.train_y[:, 0] >= 0).sum()) == 96
        assert int((data.train_y[:, 1] == NO_LABEL).sum()) == 96
        # each row is one task's example with its own label
        first = labels_by_example(parts[0])
        for x, y in zip(data.train_x[:20], data.train_y[:20], strict=True):
            if y[0] >= 0:
                assert first[tuple(x.tolist())] == int(y[0])
        # pooled and shuffled: the first rows hold both tasks
        assert 0 < int((data.test_y[:20, 0] >= 0).sum()) < 20
    else:
        assert data.train_x.shape[0] == 72 and data.test_x.shape[0] == 24  # min(n_1, n_2) pairs
        assert bool((data.train_y >= 0).all())
        features = 32 if mode == "concatenate" else 16
        assert data.train_x.shape[1] == features
        assert data.input_shape == ((32,) if mode == "concatenate" else (4, 4))
        rows, other = labels_by_example(parts[0]), labels_by_example(parts[1])
        if mode == "concatenate":
            for x, y in zip(data.train_x, data.train_y, strict=True):
                assert rows[tuple(x[:16].tolist())] == int(y[0])
                assert other[tuple(x[16:].tolist())] == int(y[1])
        else:  # the sum of one example of each: its labels are the two examples' labels
            a, b = parts[0].train_x, parts[1].train_x
            for x, y in zip(data.train_x[:10], data.train_y[:10], strict=True):
                residual = torch.cdist((x - a).double(), b.double())  # [n_a, n_b]
                i, j = divmod(int(residual.argmin()), b.shape[0])
                assert float(residual[i, j]) < 1e-5
                assert (int(parts[0].train_y[i]), int(parts[1].train_y[j])) == tuple(y.tolist())
        # each task's example appears at most once (a permutation, not a resample)
        assert len({tuple(x.tolist()) for x in data.train_x}) == data.train_x.shape[0]
    assert any(line.startswith(f"data: multitask {mode}") for line in lines)
    # the same pair_seed, the same composition; another seed, another pairing
    again = MultiTask(mode=mode, tasks=tiny_tasks(two_tasks)).load(seed=5, log=lines.append)
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.train_y, data.train_y)
    other_pairs = MultiTask(mode=mode, tasks=tiny_tasks(two_tasks), pair_seed=1).load(
        seed=0, log=lines.append
    )
    assert not torch.equal(other_pairs.train_x, data.train_x)


def test_multitask_subsets_and_loss(two_tasks: tuple[Path, Path]) -> None:
    data = MultiTask(tasks=tiny_tasks(two_tasks), train_fraction=0.5, limit_test=10).load(
        seed=0, log=lambda line: None
    )
    assert data.train_x.shape == (36, 32) and data.test_x.shape == (10, 32)
    loss = MultiHeadCrossEntropy(**data.loss_options)
    logits = torch.zeros(10, 6)
    assert float(loss(logits, data.test_y)) == pytest.approx(2 * math.log(3))


def test_multitask_errors(two_tasks: tuple[Path, Path], tmp_path: Path) -> None:
    tasks = tiny_tasks(two_tasks)
    cases = [
        ({"mode": "stack"}, "mode: must be one of 'concatenate', 'mix', 'sequential'"),
        ({"tasks": ["mnist"]}, "tasks: needs at least two data sets, got 1"),
        ({"tasks": ["mnist", "fashion"]}, "tasks\\[1\\].name: unknown dataset 'fashion'"),
        ({"tasks": [{"data_dir": "x"}, "mnist"]}, "tasks\\[0\\].name: missing"),
        ({"tasks": ["mnist", "multitask"]}, "tasks\\[1\\].name: a task cannot itself be"),
        ({"tasks": [tasks[0], {**tasks[1], "train_fraction": 0}]},
         r"tasks\[1\].train_fraction: must be in \(0, 1\], got 0"),
        ({"tasks": [tasks[0], {**tasks[1], "colour": 1}]},
         r"tasks\[1\].colour: unknown key for data set 'idx'"),
        ({"train_fraction": 1.5}, r"train_fraction: must be in \(0, 1\], got 1.5"),
        ({"train_fraction": 0.0}, r"train_fraction: must be in \(0, 1\], got 0.0"),
        ({"limit_test": 0}, "limit_test: must be a positive integer or nothing, got 0"),
        ({"pair_seed": -2}, "pair_seed: must be an integer >= 0"),
    ]  # fmt: skip
    for options, message in cases:
        with pytest.raises(OptionError, match=message):
            MultiTask(**options)
    wide = make_tiny_idx(tmp_path / "wide", n_train=10, n_test=5)  # then 5×5 images
    write_idx(wide / "train-images-idx3-ubyte.gz", np.zeros((10, 5, 5), np.uint8))
    write_idx(wide / "t10k-images-idx3-ubyte.gz", np.zeros((5, 5, 5), np.uint8))
    for mode in ("mix", "sequential"):
        task = MultiTask(mode=mode, tasks=[tasks[0], {"name": "idx", "data_dir": str(wide)}])
        with pytest.raises(DataError, match=f"multitask mode '{mode}' needs tasks with the same"):
            task.load(seed=0, log=lambda line: None)
    concat = MultiTask(tasks=[tasks[0], {"name": "idx", "data_dir": str(wide)}])
    assert concat.load(seed=0, log=lambda line: None).train_x.shape == (10, 16 + 25)


@pytest.mark.parametrize("mode", ["concatenate", "mix"])
def test_fresh_pairing_draws_every_training_batch_anew(
    mode: str, two_tasks: tuple[Path, Path]
) -> None:
    """``pairing = "fresh"``: a sampler pairs independent draws of each task per batch
    (labels follow their examples), from the run's generator (same generator state, same
    batch); the fixed splits (test pairs) are the fixed pairing's."""
    lines: list[str] = []
    fixed = MultiTask(mode=mode, tasks=tiny_tasks(two_tasks)).load(seed=0, log=lines.append)
    fresh = MultiTask(mode=mode, tasks=tiny_tasks(two_tasks), pairing="fresh").load(
        seed=0, log=lines.append
    )
    assert fixed.sampler is None and fresh.sampler is not None
    assert torch.equal(fresh.test_x, fixed.test_x) and torch.equal(fresh.test_y, fixed.test_y)
    assert lines[-1].endswith("every training batch paired anew")
    x, y = fresh.sampler(500, torch.Generator().manual_seed(3))
    assert x.shape == (500, fixed.train_x.shape[1]) and y.shape == (500, 2)
    again, _ = fresh.sampler(500, torch.Generator().manual_seed(3))
    assert torch.equal(x, again)
    parts = [MultiTask(tasks=tiny_tasks(two_tasks)).tasks[i].load(seed=0, log=lines.append)
             for i in range(2)]  # fmt: skip
    first, second = labels_by_example(parts[0]), labels_by_example(parts[1])
    if mode == "concatenate":
        pairs = {(tuple(r[:16].tolist()), tuple(r[16:].tolist())) for r in x}
        for row, labels in zip(x[:50], y[:50], strict=True):
            assert first[tuple(row[:16].tolist())] == int(labels[0])
            assert second[tuple(row[16:].tolist())] == int(labels[1])
        # the first task's examples meet many partners: not the fixed 72 pairs
        assert len(pairs) > 150
        used = {tuple(r[:16].tolist()) for r in x}
        assert len(used) > 72  # all 96 examples of the first task can be drawn
    else:
        a, b = parts[0].train_x, parts[1].train_x
        for row, labels in zip(x[:10], y[:10], strict=True):
            residual = torch.cdist((row - a).double(), b.double())
            i, j = divmod(int(residual.argmin()), b.shape[0])
            assert float(residual[i, j]) < 1e-5
            assert (int(parts[0].train_y[i]), int(parts[1].train_y[j])) == tuple(labels.tolist())
    with pytest.raises(OptionError, match="pairing: 'fresh' pairs examples of the tasks anew"):
        MultiTask(mode="sequential", pairing="fresh")
    with pytest.raises(OptionError, match="pairing: must be one of 'fixed', 'fresh'"):
        MultiTask(pairing="epoch")


def test_fresh_pairing_trains_and_resumes_exactly(
    registries, two_tasks: tuple[Path, Path], tmp_path: Path
) -> None:
    """A scenario with ``pairing = "fresh"`` trains on sampled batches; interrupted at step
    10 and resumed from its checkpoint, it ends where the uninterrupted run ends."""
    from particlesim.io.checkpoint import load_checkpoint, save_checkpoint

    text = tiny_scenario(two_tasks, 'mode = "concatenate"\npairing = "fresh"', steps=20, batch=16)

    def built():
        return build(validate(parse_scenario(text), registries), log=lambda line: None)

    whole = built()
    whole.simulation.run()

    def stop_at_10(simulation) -> None:
        if simulation.step == 10:
            save_checkpoint(tmp_path / "ckpt.pt", simulation)
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        built().simulation.run(progress=stop_at_10)
    resumed = built()
    load_checkpoint(tmp_path / "ckpt.pt", resumed.simulation)
    assert resumed.simulation.step == 10
    resumed.simulation.run()
    assert not torch.equal(  # and the run learnt something from its sampled batches
        whole.system.groups["hidden3"].position, built().system.groups["hidden3"].position
    )
    for name, value in whole.system.state_dict().items():
        torch.testing.assert_close(resumed.system.state_dict()[name], value, msg=name)


def test_multitask_fashion_mnist_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in list(sources.SYSTEM_DIRS):
        monkeypatch.setitem(sources.SYSTEM_DIRS, name, (tmp_path / "system" / name,))

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    # Fashion-MNIST first, so that the error comes before MNIST is read
    data = MultiTask(tasks=[{"name": "fashion_mnist", "download": False}, "mnist"])
    with pytest.raises(DataError) as info:
        data.load(seed=0, log=lambda line: None)
    message = str(info.value)
    assert message.startswith("Fashion-MNIST data set not found; tried (1) data_dir: not set")
    assert "(4) system location" in message and "\n" not in message
    assert "to fix: set data_dir in [data] or PARTICLESIM_DATA" in message


TASK_PLUGIN = """
from particlesim import hookimpl
from particlesim.data.datasets import IDXFolder


class TinyTask(IDXFolder):
    \"\"\"An IDX folder under another name: a task only this plugin file provides.\"\"\"

    name = "tiny_task"


@hookimpl
def particlesim_register_datasets():
    return [TinyTask]
"""


def multitask_scenario(tasks: str, plugins: str = "") -> str:
    return f"""
{plugins}
[scenario]
seed = 1
device = "cpu"
[data]
name = "multitask"
mode = "concatenate"
tasks = [{tasks}]
[model]
name = "mlp"
sizes = [0, 5, 0]
[run]
steps = 2
batch_size = 16
"""


def test_multitask_tasks_obey_the_scenarios_plugins(
    two_tasks: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task is looked up in the scenario's own plugins: ``-p no:NAME`` and
    ``PARTICLESIM_PLUGINS`` hold for it, and a scenario's plugin file can provide it."""
    (tmp_path / "tiny_task.py").write_text(TASK_PLUGIN, encoding="utf-8")
    first, second = two_tasks
    tasks = (
        f'{{ name = "idx", data_dir = "{first}" }}, {{ name = "tiny_task", data_dir = "{second}" }}'
    )
    scenario = tmp_path / "local.toml"
    scenario.write_text(multitask_scenario(tasks, 'plugins = ["tiny_task.py"]'), encoding="utf-8")
    cli = CliRunner()
    enabled = cli.invoke(app, ["validate", str(scenario), "--build"])
    assert enabled.exit_code == 0, enabled.output
    assert "data: multitask concatenate: 72 training" in enabled.output
    disabled = cli.invoke(app, ["validate", str(scenario), "-p", "no:tiny_task"])
    assert disabled.exit_code != 0
    errors = [line for line in disabled.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and len(disabled.stderr.strip().splitlines()) == 1, disabled.output
    assert errors[0].startswith(
        f"error: {scenario}: data.tasks[1].name: unknown dataset 'tiny_task'"
    ), errors[0]
    # an installed plugin's data set (milletari's moons_2d): found, then not once disabled
    other = tmp_path / "installed.toml"
    tasks = '"mnist", "moons_2d"'
    other.write_text(multitask_scenario(tasks), encoding="utf-8")
    assert cli.invoke(app, ["validate", str(other)]).exit_code == 0
    for args, env in (
        (["-p", "no:milletari"], None),
        ([], "lange,wolczyk"),  # PARTICLESIM_PLUGINS leaves milletari out
    ):
        if env is not None:
            monkeypatch.setenv("PARTICLESIM_PLUGINS", env)
        result = cli.invoke(app, ["validate", str(other), *args])
        assert result.exit_code != 0
        assert f"{other}: data.tasks[1].name: unknown dataset 'moons_2d'" in result.stderr


def test_multitask_uses_the_registries_it_is_given(two_tasks: tuple[Path, Path]) -> None:
    """Direct construction: the given registries, else only the engine's own data sets."""
    without = PluginManager().load(disable=["milletari"]).registries
    with pytest.raises(OptionError, match=r"tasks\[1\].name: unknown dataset 'moons_2d'"):
        MultiTask(tasks=["mnist", "moons_2d"], registries=without)
    with_it = PluginManager().load().registries
    task = MultiTask(tasks=["mnist", "moons_2d"], registries=with_it)
    assert type(task.tasks[1]).__name__ == "Moons"
    with pytest.raises(OptionError, match="pass registries= for a plugin's"):
        MultiTask(tasks=["mnist", "moons_2d"])


# --------------------------------------------------------------------------- greedy split


def hand_made() -> System:
    """in(2) → a(4) → b(4) → out(4), heads [2, 2]; a known backwards assignment."""
    g = torch.Generator().manual_seed(2)
    net = chain([torch.zeros(2, 2), *(torch.randn(4, 2, generator=g) for _ in range(3))])
    with torch.no_grad():
        net.interactions[2].weight.copy_(  # out ← b: b0, b1 → head 0; b2 → head 1; b3 tie → 0
            torch.tensor(
                [[1.0, 0.5, 0.1, 0.0], [0.2, -0.9, 0.0, 0.0], [0.1, 0.0, -2.0, 0.0], [0, 0, 1, 0]]
            )
        )
        net.interactions[1].weight.copy_(  # b ← a: a0 → b2 (task 1), a1 → b0, a2 → b3 (task 0)
            torch.tensor(
                [[0.0, 1.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.2], [3.0, 0.0, 0.0, 0.0], [0, 0, 1, 0]]
            )
        )
    return net


def test_greedy_split_closed_form() -> None:
    net = hand_made()
    split = greedy_split(net, [2, 2], layers=["g2"])
    assert split.layers == ["g2", "g3"]
    assert split.assignment["g3"].tolist() == [0, 0, 1, 1]
    assert split.assignment["g2"].tolist() == [0, 0, 1, 0]
    assert "g1" not in split.assignment  # earlier layers stay shared
    deeper = greedy_split(net, [2, 2], layers=["g1", "g2"])
    # a3 drives b0 (0.1) and b1 (0.2), both task 0; a0 drives b2 (task 1)
    assert deeper.assignment["g1"].tolist() == [1, 0, 0, 0]
    assert deeper.counts() == {"g1": [3, 1], "g2": [3, 1], "g3": [2, 2]}
    assert {k: v.tolist() for k, v in deeper.disabled(1).items()} == {
        "g1": [1, 2, 3],
        "g2": [0, 1, 3],
    }
    assert SHARED == -1


def test_split_assigns_every_neuron(registries) -> None:
    net = build_tiny(registries)
    model = SpatialMLP(sizes=list(TINY_SIZES))
    split = greedy_split(net, [3, 3], model.penalised_layers())
    assert split.layers == ["hidden3", "hidden4", "output"]
    for name in split.layers:
        values = split.assignment[name]
        assert values.shape == (net.groups[name].size,)
        assert set(values.tolist()) <= {0, 1}
    assert sum(split.counts()["hidden4"]) == 8
    everything = greedy_split(net, [3, 3])  # default: every group but the input
    assert everything.layers == ["hidden1", "hidden2", "hidden3", "hidden4", "output"]


def test_evaluate_split_against_silenced_network() -> None:
    net = hand_made()
    split = greedy_split(net, [2, 2], layers=["g1", "g2"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (40, 2), generator=g)
    targets[:10, 1] = NO_LABEL  # some rows unlabelled for task 1 (sequential-style)
    report = evaluate_split(net, split, x, targets, batch_size=7)
    assert report.examples == [40, 30]
    with torch.no_grad():
        full = net(x)
        assert report.full[0] == pytest.approx(
            float((full[:, :2].argmax(1) == targets[:, 0]).double().mean())
        )
        with silenced(net, split.disabled(1)):
            part = net(x[10:])
        assert report.split[1] == pytest.approx(
            float((part[:, 2:].argmax(1) == targets[10:, 1]).double().mean())
        )
    assert report.drop == pytest.approx([report.full[t] - report.split[t] for t in range(2)])
    assert report.mean_drop == pytest.approx(report.mean_full - report.mean_split)
    summary = split_summary(report, ["digits", "clothes"])
    assert summary["split_accuracy_clothes"] == report.split[1]
    assert summary["neurons_g2"] == "3/1"


def test_split_of_separated_network_loses_nothing() -> None:
    """Two disjoint halves (block-diagonal weights): each sub-network equals the whole."""
    g = torch.Generator().manual_seed(1)
    net = chain([torch.zeros(4, 2), torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)])
    with torch.no_grad():
        for link in net.interactions:
            mask = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).double()
            link.weight.copy_(torch.randn(4, 4, generator=g, dtype=torch.float64) * mask)
    from particlesim.core.activations import Sigmoid

    net.activations["g1"] = Sigmoid(size=4)
    split = greedy_split(net, [2, 2], layers=["g1"])
    assert split.assignment["g1"].tolist() == [0, 0, 1, 1]
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (50, 2), generator=g)
    report = evaluate_split(net, split, x, targets)
    assert report.split == pytest.approx(report.full)  # the other half never reaches a head


def test_split_errors(registries) -> None:
    net = hand_made()
    with pytest.raises(AnalysisError, match=r"needs a network with task heads .* 'cross_entropy'"):
        task_heads(CrossEntropy())
    with pytest.raises(AnalysisError, match="at least two task heads, got heads \\[4\\]"):
        greedy_split(net, [4])
    with pytest.raises(AnalysisError, match="heads \\[2, 3\\] need 5 outputs but group 'g3' has 4"):
        greedy_split(net, [2, 3])
    with pytest.raises(AnalysisError, match="unknown group 'h'; groups: g0, g1, g2, g3"):
        greedy_split(net, [2, 2], layers=["h"])
    with pytest.raises(AnalysisError, match="cannot split the input group 'g0'"):
        greedy_split(net, [2, 2], layers=["g0"])
    with pytest.raises(AnalysisError, match="group 'g1' drives none of the later split groups"):
        greedy_split(net, [2, 2], layers=["g1"])
    split = greedy_split(net, [2, 2])
    with pytest.raises(AnalysisError, match="the split has 2 tasks but the targets have 3"):
        evaluate_split(net, split, torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.long))
    assert task_heads(MultiHeadCrossEntropy(heads=[10, 10])) == [10, 10]


def test_plot_split(registries, tmp_path: Path) -> None:
    net = build_tiny(registries)
    split = greedy_split(net, [3, 3], ["hidden3", "hidden4", "output"])
    fig = plot_split(net, split, task_names=["A", "B"], title="tiny", min_input_weight=0.0)
    assert len(fig.axes) == 4
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    counts = split.counts()["hidden3"]
    assert labels == [f"A ({counts[0]})", f"B ({counts[1]})"]
    fig.savefig(tmp_path / "split.png")
    assert (tmp_path / "split.png").stat().st_size > 1000
    hidden = plot_split(net, split, min_input_weight=1e9)  # nothing passes the filter
    assert hidden.axes[0].get_title().startswith("hidden3 (0 of 7 shown)")
    with pytest.raises(AnalysisError, match="1 task names for a split into 2 tasks"):
        plot_split(net, split, task_names=["A"])


# --------------------------------------------------------------------------- scenarios, runs


@pytest.mark.parametrize("name", ["concat", "mix", "sequential"])
def test_shipped_scenarios_validate(name: str, registries) -> None:
    path = ROOT / "scenarios" / f"wolczyk_{name}.toml"
    runner = CliRunner()
    for extra in ([], ["--set", "model.spatial=false"]):
        result = runner.invoke(app, ["validate", str(path), *extra])
        assert result.exit_code == 0, result.output
        assert "model 'spatial_mlp', data 'multitask', integrator 'adam'" in result.output
    text = path.read_text()
    for needle in ("alpha = 1.0", "beta = 3.0", "lr = 0.005", "batch_size = 256", "sigmoid"):
        assert needle in text


def test_scenario_trains_and_records_costs(registries, two_tasks: tuple[Path, Path]) -> None:
    text = tiny_scenario(two_tasks, 'mode = "sequential"', steps=30, batch=32)
    plan = validate(parse_scenario(text), registries)
    built = build(plan, log=lambda line: None)
    assert isinstance(built.simulation.loss, MultiHeadCrossEntropy)
    assert built.simulation.loss.heads == [3, 3]
    start = {k: v.item() for k, v in built.system.potential_energies().items()}
    assert set(start) == {"potential/transport", "potential/density"}
    positions = built.system.groups["hidden3"].position.detach().clone()
    built.simulation.run()
    assert not torch.equal(positions, built.system.groups["hidden3"].position.detach())
    loss, accuracy = built.simulation.evaluate("test")
    assert math.isfinite(loss) and 0.0 <= accuracy <= 1.0


def quick_args(two_tasks: tuple[Path, Path], out: Path) -> list[str]:
    tasks = ", ".join(f'{{ name = "idx", data_dir = "{p}" }}' for p in two_tasks)
    sets = [f"data.tasks=[{tasks}]", f"model.sizes={TINY_SIZES}", "run.batch_size=32"]
    return ["table1", "--quick", "--out", str(out), "--device", "cpu"] + [
        a for s in sets for a in ("--set", s)
    ]


def test_experiments_quick_end_to_end(two_tasks: tuple[Path, Path], tmp_path: Path) -> None:
    cli = typer.Typer()
    experiments.register_command(cli)
    cli.command("noop")(lambda: None)  # two commands: the wolczyk command goes by its name
    out = tmp_path / "results"
    result = CliRunner().invoke(cli, ["wolczyk", *quick_args(two_tasks, out), "--seeds", "2"])
    assert result.exit_code == 0, result.output
    with (out / "table1.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 2 * 2  # modes x networks x seeds
    assert {(r["mode"], r["network"]) for r in rows} == {
        (m, n) for m in experiments.MODES for n in experiments.NETWORKS
    }
    assert {int(r["steps"]) for r in rows} == {5}
    for row in rows:
        full, part = float(row["full_accuracy"]), float(row["split_accuracy"])
        assert 0.0 <= part <= 1.0 and 0.0 <= full <= 1.0
        assert float(row["accuracy_drop"]) == pytest.approx(full - part)
        assert row["neurons_output"] == "3/3"
        assert sum(map(int, row["neurons_hidden4"].split("/"))) == 8
    table = (out / "table1.md").read_text()
    assert "| Split network (paper) | 0.80 ± 0.13 | 0.92 ± 0.04 | 0.70 ± 0.17 |" in table
    assert "| Acc. drop (paper) | 0.11 ± 0.15 | 0.00 ± 0.00 |" in table
    assert "| Split network: within spread? |" in table
    assert "5 Adam steps" in table
    assert (out / "run_info.json").stat().st_size > 0


def test_experiments_fresh_pairing(two_tasks: tuple[Path, Path], tmp_path: Path) -> None:
    """``--pairing fresh`` re-pairs concatenation and mixing (the sequential mode pairs
    nothing and runs as before); the rows and run_info say so, and the points' ids differ
    from the fixed pairing's (a resumed fixed grid never takes them)."""
    cli = typer.Typer()
    experiments.register_command(cli)
    cli.command("noop")(lambda: None)
    out = tmp_path / "fresh"
    result = CliRunner().invoke(cli, ["wolczyk", *quick_args(two_tasks, out), "--pairing", "fresh"])
    assert result.exit_code == 0, result.output
    assert "every training batch paired anew" not in result.output  # runs log quietly
    with (out / "table1.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["mode"], r["pairing"]) for r in rows} == {
        ("concat", "fresh"),
        ("mix", "fresh"),
        ("sequential", ""),
    }
    assert json.loads((out / "run_info.json").read_text())["pairing"] == "fresh"
    fixed = experiments.table1_points(experiments.Settings())
    fresh = experiments.table1_points(experiments.Settings(pairing="fresh"))
    assert not {p.id for p in fixed} & {p.id for p in fresh}
    bad = CliRunner().invoke(cli, ["wolczyk", *quick_args(two_tasks, out), "--pairing", "epoch"])
    assert bad.exit_code == 2 and "--pairing must be 'fixed' or 'fresh', got 'epoch'" in bad.output


def test_experiments_figures_and_code_normalisation(
    two_tasks: tuple[Path, Path], tmp_path: Path
) -> None:
    tasks = ", ".join(f'{{ name = "idx", data_dir = "{p}" }}' for p in two_tasks)
    settings = experiments.Settings(
        out=tmp_path,
        modes=("mix",),
        networks=("regular",),
        seeds=1,
        steps=3,
        overrides=[f"data.tasks=[{tasks}]", f"model.sizes={TINY_SIZES}", "run.batch_size=32"],
        device="cpu",
        log=lambda message: None,
    )
    written = experiments.run(settings)
    assert {"table1.csv", "table1.md", "table1.png", "split_mix_regular.png"} <= set(written)
    assert (tmp_path / "split_mix_regular.png").stat().st_size > 1000
    table = (tmp_path / "table1.md").read_text()
    (tmp_path / "table1.md").unlink()
    rewritten = experiments.run(experiments.replace(settings, report_only=True))
    assert rewritten["table1.md"].read_text() == table  # the same table from the CSV alone
    # the authors' normalisation, spatial only: the regular rows come from table1.csv
    variant = experiments.replace(
        settings, networks=("spatial",), transport_normalize="connections"
    )
    written = experiments.run(variant)
    assert {"table1_connections.csv", "table1_connections.md", "table1_connections.png"} <= set(
        written
    )
    assert (tmp_path / "split_mix_spatial_connections.png").stat().st_size > 1000
    rows = experiments.read_csv(tmp_path / "table1_connections.csv")
    assert {(r["network"], r["transport_normalize"]) for r in rows} == {("spatial", "connections")}
    table = written["table1_connections.md"].read_text()
    assert "mean |a|·d over each layer's connections" in table
    assert "The Regular columns are the runs of `table1.csv`" in table
    assert "|  | Mixing Regular | Mixing Spatial |" in table
    nothing = experiments.replace(settings, out=tmp_path / "empty", report_only=True)
    with pytest.raises(ParticlesimError, match=r"--report-only: no .*table1\.csv to report from"):
        experiments.run(nothing)


def test_experiments_forces(two_tasks: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(experiments, "FORCE_STEPS", (0, 5, 20))
    cli = typer.Typer()
    cli.command()(experiments.command)
    args = quick_args(two_tasks, tmp_path)
    result = CliRunner().invoke(cli, ["forces", *args[1:]])
    assert result.exit_code == 0, result.output
    gradients = experiments.read_csv(tmp_path / "forces_gradients.csv")
    assert [(r["transport_normalize"], r["interaction"]) for r in gradients] == [
        (n, link)
        for n in ("neurons", "connections")
        for link in ("hidden2->hidden3", "hidden3->hidden4", "hidden4->output")
    ]
    by_link = {(r["transport_normalize"], r["interaction"]): r for r in gradients}
    for link in ("hidden2->hidden3", "hidden3->hidden4", "hidden4->output"):
        # the same weights; per connection = per neuron / fan-in (6, 5, 7 → 5, 7, 8)
        paper = float(by_link["neurons", link]["transport_gradient_median"])
        code = float(by_link["connections", link]["transport_gradient_median"])
        fan_in = {"hidden2->hidden3": 5, "hidden3->hidden4": 7, "hidden4->output": 8}[link]
        assert code == pytest.approx(paper / fan_in, rel=1e-4)
    steps = experiments.read_csv(tmp_path / "forces_steps.csv")
    assert [(r["transport_normalize"], int(r["step"])) for r in steps] == [
        (n, s) for n in ("neurons", "connections") for s in (0, 5, 20)
    ]
    text = (tmp_path / "forces.md").read_text()
    assert "| neurons | hidden2->hidden3 |" in text and "| connections | 20 |" in text


def test_split_a_finished_run(
    two_tasks: tuple[Path, Path], tmp_path: Path, tiny_scenario: Path
) -> None:
    tasks = ", ".join(f'{{ name = "idx", data_dir = "{p}" }}' for p in two_tasks)
    runner = CliRunner()
    cli = typer.Typer()
    experiments.register_command(cli)
    cli.command("noop")(lambda: None)  # two commands: the wolczyk command goes by its name
    run_dir = tmp_path / "run"
    scenario = ROOT / "scenarios" / "wolczyk_mix.toml"
    sets = [f"data.tasks=[{tasks}]", f"model.sizes={TINY_SIZES}", "run.batch_size=32"]
    sets.append("run.epochs=2")
    args = ["run", str(scenario), "--out", str(run_dir), "--device", "cpu"]
    result = runner.invoke(app, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["wolczyk", "split", "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "split hidden3, hidden4, output: full " in result.output
    summary = json.loads((run_dir / "split.json").read_text())
    assert summary["layers"] == ["hidden3", "hidden4", "output"]
    assert summary["neurons_output"] == "3/3" and summary["step"] == 2 * 3  # 2 epochs of 3 steps
    assert summary["accuracy_drop"] == pytest.approx(
        summary["full_accuracy"] - summary["split_accuracy"]
    )
    assert (run_dir / "split.png").stat().st_size > 1000
    # a network without task heads, and a folder that is no run
    single = tmp_path / "single"
    result = runner.invoke(app, ["run", str(tiny_scenario), "--out", str(single)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["wolczyk", "split", "--run", str(single)])
    assert result.exit_code == 2
    assert "a greedy split needs a network with task heads" in result.output
    assert "scored by 'cross_entropy'" in result.output
    result = runner.invoke(cli, ["wolczyk", "split", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory (no scenario.toml)" in result.output
    result = runner.invoke(cli, ["wolczyk", "split"])
    assert result.exit_code == 2 and "split needs --run DIR" in result.output


def test_experiments_bad_input(two_tasks: tuple[Path, Path], tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.command()(experiments.command)
    runner = CliRunner()
    result = runner.invoke(cli, ["table2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown experiment 'table2'; use table1, ablation, forces or split" in result.output
    for options, message in [
        (["--modes", "concat,stacked"], "unknown mode 'stacked'; known: concat, mix, sequential"),
        (["--networks", "deep"], "unknown network 'deep'; known: regular, spatial"),
        (["--seeds", "0"], "--seeds must be a positive integer, got 0"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--transport-normalize", "sum"], "--transport-normalize must be 'neurons' or"),
        (["--transport-norm", "l3"], "--transport-norm must be 'l1' or 'l2', got 'l3'"),
        (["--data-loss", "mean"], "--data-loss must be 'per_head' or 'pooled', got 'mean'"),
        (["--variants", "ours,paper"], "unknown variant 'paper'; known: ours, w2, pooled"),
    ]:
        result = runner.invoke(cli, ["table1", "--out", str(tmp_path), *options])
        assert result.exit_code == 2, result.output
        assert message in result.output
    args = quick_args(two_tasks, tmp_path)
    result = runner.invoke(cli, [*args, "--set", "data.train_fraction=0"])
    assert result.exit_code == 2
    assert "data.train_fraction: must be in (0, 1], got 0" in result.output
    with pytest.raises(ParticlesimError, match="unknown mode 'x'"):
        experiments.run(experiments.Settings(out=tmp_path, modes=("x",), log=lambda m: None))


@pytest.mark.slow
def test_reproduction_regular_learns_and_paper_cost_stops_training(tmp_path: Path) -> None:
    """Concatenation, seed 0, 940 steps (4 epochs) on the shared MNIST/Fashion-MNIST (~1 min).

    The regular network learns both tasks; the spatial network with the paper's
    transport cost as written (α = 1, divided by N_l) stays at chance, the finding
    that results/README.md explains.
    """
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "fashion-mnist").is_dir():
        pytest.skip("the shared Fashion-MNIST copy is not here")
    tasks = ", ".join(
        f'{{ name = "{name}", data_dir = "{shared / folder}" }}'
        for name, folder in (("mnist", "mnist"), ("fashion_mnist", "fashion-mnist"))
    )
    settings = experiments.Settings(
        out=tmp_path,
        modes=("concat",),
        seeds=1,
        steps=940,
        overrides=[f"data.tasks=[{tasks}]"],
        device="cpu",
        figures=False,
        log=lambda message: None,
    )
    rows = {r["network"]: r for r in experiments.run_table1(settings)}
    assert rows["regular"]["full_accuracy"] > 0.6
    assert 0.0 < rows["regular"]["split_accuracy"] <= rows["regular"]["full_accuracy"] + 0.05
    assert rows["spatial"]["full_accuracy"] < 0.15  # chance: 0.1 per head
    assert rows["spatial"]["transport_cost"] < 1.0  # the weights into 𝓛 have vanished


# --------------------------------------------------------------------------- reproduce


def test_reproduce_quick_writes_the_table1_section(tmp_path: Path) -> None:
    results = tmp_path / "reproductions"
    args = ["reproduce", "wolczyk", "--quick", "--results", str(results)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    page = (results / "README.md").read_text()
    assert "## Wołczyk et al., Biologically-Inspired Spatial Neural Networks: Table 1" in page
    assert "`particlesim reproduce wolczyk --quick`" in page
    claims = [line for line in page.splitlines() if line.startswith("| ") and ": " in line]
    assert len(claims) == 3 * 2 * 2  # modes x networks x (split accuracy, drop)
    assert "| Sequential, Spatial: split accuracy | 0.84 ± 0.08 |" in page
    assert "| Concatenation, Regular: accuracy drop | 0.11 ± 0.15 |" in page
    assert "(2 seeds) | **" in page
    assert "![wolczyk: table1_connections](wolczyk/table1_connections.png)" in page
    report = json.loads((results / "wolczyk.json").read_text())
    assert report["quick"] is True and len(report["claims"]) == 12
    assert report["paper"] == "wolczyk" and report["figures"][0] == "table1_connections.png"
    for figure in report["figures"]:
        assert (results / "wolczyk" / figure).stat().st_size > 1000
    rows = experiments.read_csv(results / "wolczyk" / "table1_connections.csv")
    assert len(rows) == 3 * 2 * 2 and {r["steps"] for r in rows} == {30}
    # a second call keeps the finished report
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "wolczyk: finished before" in result.output


def test_table1_claims_verdicts() -> None:
    from particlesim_wolczyk.reproduction import table1_claims

    def row(mode: str, network: str, seed: int, split: float, drop: float) -> dict:
        tasks = {f"{k}_{t}": 0.9 for k in ("full_accuracy", "split_accuracy")
                 for t in ("mnist", "fashion_mnist")}  # fmt: skip
        return {"mode": mode, "network": network, "seed": seed, "full_accuracy": split + drop,
                "split_accuracy": split, "accuracy_drop": drop, **tasks}  # fmt: skip

    rows = [
        *(row("concat", "spatial", s, 0.95 + 0.01 * s, 0.0) for s in range(3)),  # above
        *(row("mix", "regular", s, 0.60, 0.25) for s in range(2)),  # within the paper's spread
        *(row("sequential", "spatial", s, 0.65 + 0.01 * s, 0.27) for s in range(3)),
    ]
    claims = {c.quantity: c for c in table1_claims(rows)}
    assert len(claims) == 12
    assert claims["Concatenation, Spatial: split accuracy"].verdict == "reproduced"
    assert "direction it claims" in claims["Concatenation, Spatial: split accuracy"].why
    assert claims["Concatenation, Spatial: accuracy drop"].verdict == "reproduced"
    assert claims["Mixing, Regular: split accuracy"].verdict == "within spread"
    assert claims["Mixing, Regular: split accuracy"].ours == "0.60 ± 0.00 (2 seeds)"
    assert claims["Sequential, Spatial: split accuracy"].verdict == "not reproduced"
    assert "MNIST 0.90→0.90" in claims["Sequential, Spatial: split accuracy"].why
    assert claims["Concatenation, Regular: split accuracy"].verdict == "not measured"
    assert claims["Concatenation, Regular: split accuracy"].ours == "–"


def test_split_that_keeps_the_bias_zeroes_incoming_weights(registries) -> None:
    """The authors' disabling: incoming weights zeroed, bias kept, so φ(b) flows on."""
    import copy

    from particlesim_wolczyk.split import inputs_cut

    net = build_tiny(registries)
    split = greedy_split(net, [3, 3], ["hidden3", "hidden4"])
    g = torch.Generator().manual_seed(2)
    x = torch.rand(50, 16, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (50, 2), generator=g)
    report = evaluate_split(net, split, x, targets, disable="incoming")
    checked = 0
    for task in range(2):
        off = split.disabled(task)
        cut = copy.deepcopy(net)
        with torch.no_grad():
            for link in cut.interactions:
                if link.target in off:
                    link.weight[off[link.target]] = 0.0
            logits = cut(x)[:, 3 * task : 3 * task + 3]
        accuracy = float((logits.argmax(1) == targets[:, task]).double().mean())
        assert report.split[task] == pytest.approx(accuracy)
        with inputs_cut(net, off), torch.no_grad():
            activities = net.activities(x)
        for name, disabled in off.items():  # each disabled neuron outputs sigmoid(its bias)
            expected = torch.sigmoid(net.groups[name].bias.detach()[disabled])
            assert torch.allclose(activities[name][:, disabled], expected.expand(50, -1))
            checked += disabled.numel()
    assert checked > 0
    with torch.no_grad():  # the hooks are gone: the network is whole again
        assert not torch.equal(net(x), cut(x))
        zeroed = evaluate_split(net, split, x, targets)  # outputs held at 0 instead
    assert zeroed.full == report.full
    with pytest.raises(AnalysisError, match="disable must be one of 'output', 'incoming'"):
        evaluate_split(net, split, x, targets, disable="bias")


def test_pooled_head_cross_entropy_is_the_authors_mean(registries) -> None:
    from particlesim_wolczyk.losses import PooledHeadCrossEntropy

    assert registries["loss"].entry("pooled_head_cross_entropy").plugin == "wolczyk"
    g = torch.Generator().manual_seed(4)
    outputs = torch.randn(6, 20, generator=g, dtype=torch.float64)
    both = torch.randint(0, 10, (6, 2), generator=g)
    loss, engine = PooledHeadCrossEntropy(heads=[10, 10]), MultiHeadCrossEntropy(heads=[10, 10])
    # concatenation / mixing: one mean over [B, classes, tasks] (the authors' reshape)
    authors = torch.nn.functional.cross_entropy(outputs.reshape(6, 2, 10).transpose(1, 2), both)
    assert loss(outputs, both).item() == pytest.approx(authors.item())
    assert loss(outputs, both).item() == pytest.approx(engine(outputs, both).item() / 2)
    # sequential: each example scored by its own head, one mean over the batch
    task = torch.tensor([0, 0, 0, 0, 1, 1])
    one = torch.full((6, 2), NO_LABEL)
    one[torch.arange(6), task] = both[:, 0]
    own = outputs.reshape(6, 2, 10)[torch.arange(6), task]
    authors = torch.nn.functional.cross_entropy(own, both[:, 0])
    assert loss(outputs, one).item() == pytest.approx(authors.item())
    assert loss(outputs, one).item() != pytest.approx(engine(outputs, one).item() / 2)
    assert loss(outputs, one, reduction="sum").item() == pytest.approx(
        engine(outputs, one, reduction="sum").item()
    )
    assert torch.equal(loss.correct(outputs, one), engine.correct(outputs, one))
    with pytest.raises(OptionError, match=r"heads \[10, 10\] need 20 outputs"):
        loss(outputs[:, :12], both)


def test_the_authors_choices_reach_the_built_run(two_tasks: tuple[Path, Path]) -> None:
    from particlesim_wolczyk.losses import PooledHeadCrossEntropy

    tasks = ", ".join(f'{{ name = "idx", data_dir = "{p}" }}' for p in two_tasks)
    settings = experiments.Settings(
        overrides=[f"data.tasks=[{tasks}]", f"model.sizes={TINY_SIZES}", "run.batch_size=32"],
        device="cpu",
        steps=None,
        epochs=1.0,
        transport_normalize="connections",
        log=lambda message: None,
    )
    ours = experiments.prepare(settings, "concat", "spatial", 0)
    assert type(ours.simulation.loss) is MultiHeadCrossEntropy
    assert ours.system.potentials[0].weight_norm == "l1"
    authors = experiments.replace(settings, transport_norm="l2", data_loss="pooled")
    built = experiments.prepare(authors, "concat", "spatial", 0)
    assert isinstance(built.simulation.loss, PooledHeadCrossEntropy)
    assert built.simulation.loss.heads == [3, 3]
    assert built.system.potentials[0].weight_norm == "l2"
    # the sequential epoch is one pass over both tasks' pooled examples (96 + 72 = 168 rows,
    # batches of 32: 6 steps), twice the paired modes' (min(96, 72) = 72 pairs: 3 steps)
    sequential = experiments.prepare(settings, "sequential", "spatial", 0)
    assert sequential.simulation.total_steps == 6 and ours.simulation.total_steps == 3
    # the choices enter the grid's ids only when they differ from the defaults
    default_ids = [p.id for p in experiments.table1_points(settings)]
    assert default_ids != [p.id for p in experiments.table1_points(authors)]
    assert default_ids == [p.id for p in experiments.table1_points(experiments.replace(settings))]


def test_ablation_quick_end_to_end(two_tasks: tuple[Path, Path], tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.command()(experiments.command)
    out = tmp_path / "ablation"
    args = quick_args(two_tasks, out)
    args[0] = "ablation"
    result = CliRunner().invoke(cli, [*args, "--modes", "concat,sequential"])
    assert result.exit_code == 0, result.output
    rows = experiments.read_csv(out / "ablation.csv")
    # spatial: 4 variants; regular: ours and pooled (no transport cost to vary)
    assert sorted((r["mode"], r["network"], r["variant"]) for r in rows) == sorted(
        (m, n, v)
        for m in ("concat", "sequential")
        for n, variants in (
            ("regular", ("ours", "pooled")),
            ("spatial", tuple(experiments.VARIANTS)),
        )
        for v in variants
    )
    by = {(r["mode"], r["network"], r["variant"]): r for r in rows}
    assert by["concat", "spatial", "authors"]["transport_norm"] == "l2"
    assert by["concat", "spatial", "authors"]["data_loss"] == "pooled"
    assert by["concat", "spatial", "w2"]["data_loss"] == "per_head"
    assert {r["epochs_setting"] for r in rows} == {1.0}
    assert (
        by["sequential", "regular", "ours"]["steps"] == 2 * by["concat", "regular", "ours"]["steps"]
    )
    for row in rows:  # both ways of disabling, each with its own drop
        assert row["accuracy_drop_bias"] == pytest.approx(
            row["full_accuracy"] - row["split_accuracy_bias"]
        )
    table = (out / "ablation.md").read_text()
    assert "## Concatenation, 1 epochs (3 steps)" in table
    assert "## Sequential, 1 epochs (6 steps)" in table
    assert "| all (the authors' code) |" in table and "| split keeps the bias |" in table
    widths = {line.count("|") for line in table.splitlines() if line.startswith("|")}
    assert widths == {8}  # choice + 2 networks x (full, split, drop): no stray pipe in a cell
    assert "| paper | – | 0.80 ± 0.13 | 0.11 ± 0.15 | – | 0.92 ± 0.04 | 0.00 ± 0.00 |" in table
    summary = experiments.ablation_summary(rows)
    ours = summary[1.0, "concat", "regular", "ours (L1 transport, per-head loss, outputs 0)"]
    assert summary[1.0, "concat", "regular", "transport w²·d (L2)"] == ours  # the same runs
    kept = summary[1.0, "concat", "spatial", "split keeps the bias"]["split_accuracy"]
    assert kept.mean == pytest.approx(by["concat", "spatial", "ours"]["split_accuracy_bias"])
    (out / "ablation.md").unlink()
    result = CliRunner().invoke(cli, [*args, "--modes", "concat,sequential", "--report-only"])
    assert result.exit_code == 0, result.output
    assert (out / "ablation.md").read_text() == table


def test_ablation_claims_read_the_authors_column_for_the_sequential_mode() -> None:
    """Per length, network and quantity: the "all of the authors' choices" column (the
    regular network's pooled runs, the spatial network's ``authors`` runs, the split with the
    bias kept), judged against the paper's Table 1 sequential cell."""
    from particlesim_wolczyk.reproduction import ablation_claims

    def row(epochs: float, network: str, variant: str, seed: int, split_bias: float) -> dict:
        keys = ("full_accuracy", "split_accuracy", "split_accuracy_bias")
        tasks = {f"{k}_{t}": 0.9 for k in keys for t in ("mnist", "fashion_mnist")}
        return {"epochs_setting": epochs, "mode": "sequential", "network": network,
                "variant": variant, "seed": seed, "full_accuracy": 0.92,
                "split_accuracy": 0.5, "accuracy_drop": 0.42,
                "split_accuracy_bias": split_bias, "accuracy_drop_bias": 0.92 - split_bias,
                **tasks}  # fmt: skip

    rows = [
        *(row(e, "regular", v, s, 0.33) for e in (15.0, 50.0) for v in ("ours", "pooled")
          for s in range(3)),
        *(row(e, "spatial", v, s, 0.84 if e == 50.0 else 0.70 + 0.01 * s)
          for e in (15.0, 50.0) for v in ("ours", "w2", "pooled", "authors") for s in range(3)),
        row(15.0, "spatial", "authors", 9, 0.1) | {"mode": "concat"},  # another mode: ignored
    ]  # fmt: skip
    claims = {c.quantity: c for c in ablation_claims(rows)}
    assert len(claims) == 2 * 2 * 2
    key = "Sequential, Spatial: split accuracy, all of the authors' choices, {} epochs (ablation)"
    assert claims[key.format(50)].verdict == "reproduced"
    assert claims[key.format(50)].ours == "0.84 ± 0.00 (3 seeds)"
    assert claims[key.format(15)].verdict == "not reproduced"
    assert claims[key.format(15)].paper == "0.84 ± 0.08"
    regular = (
        "Sequential, Regular: split accuracy, all of the authors' choices, 15 epochs (ablation)"
    )
    assert (
        claims[regular].ours.startswith("0.33 ± 0.00") and claims[regular].verdict == "reproduced"
    )
    assert ablation_claims([r for r in rows if r["mode"] == "concat"]) == []
