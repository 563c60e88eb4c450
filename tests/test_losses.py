"""Data losses, online data sets and batch-size schedules in the simulation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from particlesim.core.integrators import SGD
from particlesim.core.losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    MeanSquaredError,
    MultiHeadCrossEntropy,
)
from particlesim.core.model import MLP
from particlesim.core.simulation import Simulation
from particlesim.errors import OptionError, ScenarioError
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import parse_scenario
from tests.tiny import tiny_splits


def test_cross_entropy_matches_torch_and_counts_hits() -> None:
    outputs = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    loss = CrossEntropy()
    torch.testing.assert_close(loss(outputs, targets), F.cross_entropy(outputs, targets))
    torch.testing.assert_close(
        loss(outputs, targets, reduction="sum"), F.cross_entropy(outputs, targets, reduction="sum")
    )
    assert float(loss.correct(outputs, targets)) == 2.0


def test_mse_is_scaled_squared_error_and_has_no_accuracy() -> None:
    outputs = torch.tensor([[1.0], [3.0]])
    targets = torch.tensor([0.0, 1.0])
    assert float(MeanSquaredError()(outputs, targets)) == pytest.approx((1 + 4) / 2)
    assert float(MeanSquaredError(scale=0.5)(outputs, targets, "sum")) == pytest.approx(2.5)
    assert MeanSquaredError().correct(outputs, targets) is None
    with pytest.raises(OptionError, match=r"must be > 0, got 0.0"):
        MeanSquaredError(scale=0.0)


def test_mse_one_hot_encodes_class_indices() -> None:
    """Integer labels against K outputs: squared error to the one-hot code, argmax accuracy."""
    outputs = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.1, 0.4]])
    labels = torch.tensor([0, 1])
    expected = ((outputs - F.one_hot(labels, 3).float()) ** 2).sum(1).mean()
    torch.testing.assert_close(MeanSquaredError()(outputs, labels), expected)
    assert float(MeanSquaredError().correct(outputs, labels)) == 1.0
    real = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(MeanSquaredError()(outputs, real), expected)  # the same code
    assert MeanSquaredError().correct(outputs, real) is None
    with pytest.raises(
        OptionError, match=r"mse compares outputs \[B, 3\] with targets .* \(2, 2\)"
    ):
        MeanSquaredError()(outputs, torch.zeros(2, 2))


def test_binary_cross_entropy_reads_one_logit() -> None:
    outputs = torch.tensor([[2.0], [-1.0], [0.5]])
    targets = torch.tensor([1.0, 1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(outputs[:, 0], targets)
    torch.testing.assert_close(BinaryCrossEntropy()(outputs, targets), expected)
    assert float(BinaryCrossEntropy().correct(outputs, targets)) == 1.0
    with pytest.raises(OptionError, match="one output per example, got 2"):
        BinaryCrossEntropy()(torch.zeros(3, 2), targets)


def test_multi_head_cross_entropy_sums_heads_and_skips_missing_labels() -> None:
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(4, 5, generator=g)
    targets = torch.tensor([[0, 1], [2, -1], [-1, 0], [1, 1]])
    loss = MultiHeadCrossEntropy(heads=[3, 2])
    head_a = F.cross_entropy(outputs[[0, 1, 3], :3], targets[[0, 1, 3], 0])
    head_b = F.cross_entropy(outputs[[0, 2, 3], 3:], targets[[0, 2, 3], 1])
    torch.testing.assert_close(loss(outputs, targets), head_a + head_b)
    hits_a = outputs[:, :3].argmax(-1) == targets[:, 0]
    hits_b = outputs[:, 3:].argmax(-1) == targets[:, 1]
    per_row = [
        (float(hits_a[0]) + float(hits_b[0])) / 2,
        float(hits_a[1]),
        float(hits_b[2]),
        (float(hits_a[3]) + float(hits_b[3])) / 2,
    ]
    assert float(loss.correct(outputs, targets)) == pytest.approx(sum(per_row))
    with pytest.raises(OptionError, match=r"heads \[3, 2\] need 5 outputs, the network has 4"):
        loss(torch.zeros(4, 4), targets)
    with pytest.raises(OptionError, match="at least 2 classes"):
        MultiHeadCrossEntropy(heads=[10, 1])


def _regression_splits(sampler=None):
    base = tiny_splits()
    x = base.train_x
    y = x.sum(-1)  # a real target
    return dataclasses.replace(
        base,
        train_y=y,
        test_y=base.test_x.sum(-1),
        num_classes=1,
        loss="mse",
        sampler=sampler,
    )


def test_simulation_trains_a_regression_with_nan_accuracy() -> None:
    data = _regression_splits()
    system = MLP(sizes=[6, 8, 1]).build(
        registries=PluginManager().load().registries,
        input_size=6,
        num_classes=1,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float32,
    )
    simulation = Simulation(
        system, SGD(lr=0.05), data, steps=40, batch_size=16, loss=MeanSquaredError()
    )
    before, accuracy = simulation.evaluate("test")
    simulation.run()
    after, _ = simulation.evaluate("test")
    assert math.isnan(accuracy)
    assert after < 0.5 * before


def test_online_sampler_draws_fresh_batches_and_follows_the_batch_schedule() -> None:
    seen: list[int] = []

    def sampler(batch_size: int, generator: torch.Generator):
        seen.append(batch_size)
        x = torch.rand(batch_size, 6, generator=generator)
        return x, x.sum(-1)

    data = _regression_splits(sampler)
    system = MLP(sizes=[6, 4, 1]).build(
        registries=PluginManager().load().registries,
        input_size=6,
        num_classes=1,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float32,
    )
    simulation = Simulation(
        system,
        SGD(lr=0.01),
        data,
        steps=6,
        batch_size=4,
        batch_schedule=[(3, 32)],
        loss=MeanSquaredError(),
    )
    simulation.run()
    assert seen == [4, 4, 4, 32, 32, 32]
    assert simulation.measure(["batch_size"]) == {"batch_size": 32.0}


def test_batch_schedule_needs_online_data() -> None:
    system = MLP(sizes=[6, 4, 3]).build(
        registries=PluginManager().load().registries,
        input_size=6,
        num_classes=3,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float32,
    )
    with pytest.raises(OptionError, match="needs an online data set"):
        Simulation(system, SGD(), tiny_splits(), steps=2, batch_schedule=[(1, 8)])


def test_scenario_loss_section_and_batch_schedule_are_validated(tiny_data) -> None:
    registries = PluginManager().load().registries
    text = f"""
[data]
name = "idx"
data_dir = "{tiny_data}"
[model]
name = "mlp"
sizes = [16, 4, 3]
[loss]
name = "mse"
scale = -1.0
"""
    with pytest.raises(ScenarioError, match=r"loss\.scale: must be > 0"):
        validate(parse_scenario(text, source="s.toml"), registries, source="s.toml")
    bad_schedule = text.replace("scale = -1.0", "scale = 1.0") + "[run]\nbatch_schedule = [[5]]\n"
    with pytest.raises(ScenarioError, match=r"run\.batch_schedule\[0\]: expected \[step"):
        validate(parse_scenario(bad_schedule, source="s.toml"), registries, source="s.toml")
    fixed = text.replace('name = "mse"\nscale = -1.0', 'name = "cross_entropy"')
    plan = validate(parse_scenario(fixed, source="s.toml"), registries, source="s.toml")
    built = build(plan, device="cpu", log=lambda _: None)
    assert isinstance(built.simulation.loss, CrossEntropy)
    scheduled = fixed + "[run]\nbatch_schedule = [[5, 8]]\n"  # idx is a fixed set: at validation
    with pytest.raises(
        ScenarioError, match=r"run\.batch_schedule: needs an online .* data set 'idx' is a fixed"
    ):
        validate(parse_scenario(scheduled, source="s.toml"), registries, source="s.toml")
