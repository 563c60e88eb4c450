"""Core engine: layouts, groups, system forward, triggers, schedules, integrators, simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny import tiny_splits

from particlesim.core import (
    SGD,
    Adam,
    At,
    Cosine,
    DenseInteraction,
    KernelInteraction,
    L2Potential,
    MemoryWriter,
    OnEpoch,
    OverdampedLangevin,
    ParticleGroup,
    Periodic,
    Ramp,
    Simulation,
    System,
)
from particlesim.core.activations import Tanh
from particlesim.core.device import resolve_device, resolve_dtype
from particlesim.core.layouts import from_file, grid, ring
from particlesim.core.model import MLP
from particlesim.core.triggers import as_trigger, bind_epoch
from particlesim.errors import DeviceError, DivergenceError, OptionError
from particlesim.kernels import GaussianKernel
from particlesim.plugins.manager import PluginManager


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- layouts and groups ---------------------------------------------------------------------


def test_grid_layout_matches_pixel_order() -> None:
    pos = grid(28 * 28, 2, gen(), spread=1.0, shape=[28, 28])
    assert pos.shape == (784, 2)
    # row-major like a flattened image: pixel (r, c) -> index r*28 + c
    assert torch.allclose(pos[0], torch.tensor([-1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(pos[27], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(pos[28], torch.tensor([-1.0 + 2 / 27, -1.0], dtype=torch.float64))
    with pytest.raises(OptionError, match="holds 12 points, not 10"):
        grid(10, 2, gen(), shape=[3, 4])


def test_ring_layout_radius_and_spacing() -> None:
    pos = ring(10, 3, gen(), spread=2.0)
    assert torch.allclose(pos[:, :2].norm(dim=1), torch.full((10,), 2.0, dtype=torch.float64))
    assert torch.all(pos[:, 2] == 0)
    gaps = (pos[1:] - pos[:-1]).norm(dim=1)
    assert torch.allclose(gaps, gaps[0].expand_as(gaps))
    with pytest.raises(OptionError, match="ring needs dim >= 2"):
        ring(4, 1, gen())


def test_from_file_layout(tmp_path) -> None:
    array = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.save(tmp_path / "p.npy", array)
    assert torch.equal(from_file(6, 2, gen(), path=str(tmp_path / "p.npy")), torch.as_tensor(array))
    with pytest.raises(OptionError, match=r"expected \[5, 2\]"):
        from_file(5, 2, gen(), path=str(tmp_path / "p.npy"))
    with pytest.raises(OptionError, match="not found"):
        from_file(5, 2, gen(), path=str(tmp_path / "missing.npy"))


def test_group_fields_frozen_and_learnable() -> None:
    group = ParticleGroup.create("h", 5, 3, generator=gen(), bias=True, frozen=["position"])
    assert group.is_frozen("position") and not group.is_frozen("charge")
    assert sorted(group.learnable_fields()) == ["bias", "charge"]
    assert "position" in dict(group.named_buffers())
    again = ParticleGroup.create("h", 5, 3, generator=gen(), bias=True, frozen=["position"])
    assert torch.equal(group.position, again.position)  # seeded
    with pytest.raises(OptionError, match="size: must be a positive integer, got 0"):
        ParticleGroup.create("h", 0, 3, generator=gen())
    with pytest.raises(OptionError, match="unknown layout 'spiral'"):
        ParticleGroup.create("h", 3, 3, generator=gen(), layout="spiral")


# -- system ---------------------------------------------------------------------------------


def small_system(dtype=torch.float64, bias: bool = True) -> System:
    g = gen(1)
    groups = [
        ParticleGroup.create("input", 6, 3, generator=g, dtype=dtype),
        ParticleGroup.create("hidden", 4, 3, generator=g, bias=bias, dtype=dtype),
        ParticleGroup.create("output", 3, 3, generator=g, bias=bias, dtype=dtype),
    ]
    interactions = [
        KernelInteraction(groups[0], groups[1], kernel=GaussianKernel()),
        KernelInteraction(groups[1], groups[2], kernel=GaussianKernel()),
    ]
    return System(groups, interactions, activations={"hidden": Tanh()}, input_scaling=True)


def test_system_forward_is_lange_eqs_9_to_11() -> None:
    system = small_system()
    x = torch.rand(5, 6, dtype=torch.float64)
    g = system.groups
    b0 = g["input"].charge * x  # eq. 11
    k1 = torch.exp(-(torch.cdist(g["hidden"].position, g["input"].position) ** 2))  # eq. 10
    a1 = g["hidden"].charge * (b0 @ k1.T) + g["hidden"].bias  # eq. 9
    k2 = torch.exp(-(torch.cdist(g["output"].position, g["hidden"].position) ** 2))
    a2 = g["output"].charge * (torch.tanh(a1) @ k2.T) + g["output"].bias
    assert torch.allclose(system(x), a2, atol=1e-12)


def test_system_gradcheck_float64() -> None:
    system = small_system()
    x = torch.rand(3, 6, dtype=torch.float64)
    params = list(system.parameters())
    names = [n for n, _ in system.named_parameters()]

    def f(*values):
        state = dict(zip(names, values, strict=True))
        return torch.func.functional_call(system, state, (x,))

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in params))


def test_system_rejects_bad_wiring() -> None:
    g = gen()
    a = ParticleGroup.create("a", 3, 2, generator=g)
    b = ParticleGroup.create("b", 3, 2, generator=g)
    c = ParticleGroup.create("c", 3, 2, generator=g)
    with pytest.raises(OptionError, match="does not point forward"):
        System([a, b], [DenseInteraction(b, a)])
    with pytest.raises(OptionError, match="group 'c' has no incoming interaction"):
        System([a, b, c], [DenseInteraction(a, b)])
    with pytest.raises(OptionError, match="duplicate group name 'a'"):
        System([a, a], [])
    d3 = ParticleGroup.create("d", 3, 3, generator=g)
    with pytest.raises(OptionError, match="different dimensions"):
        KernelInteraction(a, d3, kernel=GaussianKernel())
    multi = ParticleGroup.create("m", 3, 2, generator=g, charge_channels=2)
    with pytest.raises(OptionError, match="2 charge channel"):
        KernelInteraction(a, multi, kernel=GaussianKernel())


def test_multi_channel_charges_mix_kernel_widths() -> None:
    g = gen()
    a = ParticleGroup.create("a", 5, 2, generator=g, dtype=torch.float64)
    b = ParticleGroup.create("b", 4, 2, generator=g, charge_channels=2, dtype=torch.float64)
    inter = KernelInteraction(a, b, kernel=GaussianKernel([0.5, 2.0]))
    d2 = torch.cdist(b.position, a.position) ** 2
    expected = b.charge[:, :1] * torch.exp(-d2 / 0.25) + b.charge[:, 1:] * torch.exp(-d2 / 4.0)
    assert torch.allclose(inter.effective_weight(a, b), expected, atol=1e-12)


def test_l2_potential_energy() -> None:
    system = small_system()
    system.potentials.append(L2Potential(coefficient=0.5, fields=["charge"]))
    expected = sum(float(g.charge.detach().pow(2).sum()) for g in system.groups.values())
    assert math.isclose(float(system.potential_energies()["potential/l2"].detach()), expected)
    assert math.isclose(float(system.potential_energy().detach()), 0.5 * expected)
    with pytest.raises(OptionError, match="coefficient: must be >= 0"):
        L2Potential(coefficient=-1)


# -- triggers and schedules -----------------------------------------------------------------


def test_periodic_trigger_is_anchored_to_absolute_step() -> None:
    trigger = Periodic(100)
    assert [s for s in range(1, 501) if trigger(s)] == [100, 200, 300, 400, 500]
    assert next(s for s in range(1235, 2000) if trigger(s)) == 1300
    assert [s for s in range(12) if Periodic(5, phase=2)(s)] == [2, 7]
    assert as_trigger(7) == Periodic(7)
    with pytest.raises(ValueError, match="period must be >= 1"):
        Periodic(0)


def test_at_onepoch_and_composition() -> None:
    assert [s for s in range(10) if At([3, 7])(s)] == [3, 7]
    epoch = bind_epoch(OnEpoch(every=2), steps_per_epoch=5)
    assert [s for s in range(1, 31) if epoch(s)] == [10, 20, 30]
    both = Periodic(2) & At([4, 5])
    assert [s for s in range(10) if both(s)] == [4]
    either = bind_epoch(At([1]) | OnEpoch(), 4)
    assert [s for s in range(1, 10) if either(s)] == [1, 4, 8]
    with pytest.raises(RuntimeError, match="before the simulation bound"):
        OnEpoch()(3)


def test_schedules() -> None:
    cosine = Cosine(1.0, 0.0, 100)
    assert cosine(0) == 1.0 and math.isclose(cosine(50), 0.5) and cosine(100) == 0.0
    assert cosine(1000) == 0.0
    ramp = Ramp(0.0, 2.0, 10)
    assert ramp(5) == 1.0 and ramp(20) == 2.0


# -- integrators ----------------------------------------------------------------------------


def test_adam_matches_torch_optim() -> None:
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(5))
    p2 = torch.nn.Parameter(p1.detach().clone())
    integrator = Adam(lr=0.1)
    integrator.attach([p1], total_steps=10)
    reference = torch.optim.Adam([p2], lr=0.1)
    for step in range(3):
        for p in (p1, p2):
            p.grad = (p.detach() ** 3).clone()
        integrator.step(step)
        reference.step()
    assert torch.equal(p1, p2)


def test_lr_schedule_is_applied() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    integrator = SGD(lr=1.0, lr_schedule="cosine", lr_final=0.0)
    integrator.attach([p], total_steps=4)
    assert [integrator.step_size(s) for s in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(OptionError, match="lr: must be > 0"):
        SGD(lr=0)


def test_langevin_noise_has_variance_2_lr_kt() -> None:
    n = 20000
    p = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    integrator = OverdampedLangevin(lr=0.01, temperature=0.5)
    integrator.attach([p], total_steps=1, generator=gen(4))
    p.grad = torch.zeros_like(p)
    integrator.step(0)
    assert abs(float(p.detach().var()) - 2 * 0.01 * 0.5) < 0.05 * 0.01  # 5% of the variance
    # at zero temperature it is plain gradient descent
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    cold = OverdampedLangevin(lr=0.1, temperature=0.0)
    cold.attach([q], total_steps=1, generator=gen())
    q.grad = torch.full_like(q, 2.0)
    cold.step(0)
    assert torch.allclose(q, torch.full_like(q, 0.8))


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("float64") is torch.float64
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


# -- simulation -----------------------------------------------------------------------------


def mlp_system(seed: int = 0) -> System:
    registries = PluginManager().load(entry_points=False).registries
    return MLP(sizes=[6, 8, 3]).build(
        registries=registries, input_size=6, num_classes=3, generator=gen(seed), dtype=torch.float32
    )


def test_simulation_learns_and_reports_on_schedule() -> None:
    writer = MemoryWriter(trigger=4, observables=["train_loss", "test_accuracy"])
    sim = Simulation(
        mlp_system(),
        Adam(lr=0.05),
        tiny_splits(90, n_test=30),
        epochs=4,
        batch_size=15,
        writers=[writer],
        record_initial=True,
    )
    before = sim.evaluate("test")[1]
    result = sim.run()
    assert result.status == "completed" and result.step == sim.total_steps == 24
    assert [row["step"] for row in writer.rows] == [0, 4, 8, 12, 16, 20, 24]
    assert writer.rows[-1]["test_accuracy"] > max(before, 0.9)


def test_simulation_is_deterministic_per_seed() -> None:
    finals = []
    for _ in range(2):
        sim = Simulation(
            mlp_system(), Adam(lr=0.05), tiny_splits(90, n_test=30), epochs=2, batch_size=16, seed=5
        )
        sim.run()
        finals.append(torch.cat([p.detach().flatten() for p in sim.system.parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_simulation_interrupt_is_clean() -> None:
    writer = MemoryWriter(trigger=1, observables=["loss"])
    sim = Simulation(
        mlp_system(),
        Adam(lr=0.05),
        tiny_splits(90, n_test=30),
        epochs=3,
        batch_size=16,
        writers=[writer],
    )

    def stop(s: Simulation) -> None:
        if s.step == 5:
            raise KeyboardInterrupt

    result = sim.run(progress=stop)
    assert result.status == "interrupted" and result.step == 5
    assert len(writer.rows) == 5


def test_simulation_divergence_names_the_step() -> None:
    system = mlp_system()
    with torch.no_grad():
        system.interactions[0].weight.fill_(float("nan"))
    sim = Simulation(system, Adam(lr=0.05), tiny_splits(90, n_test=30), epochs=1, batch_size=16)
    with pytest.raises(DivergenceError, match="step 1: the loss is nan before any update"):
        sim.run()


def test_simulation_rejects_unknown_observable() -> None:
    writer = MemoryWriter(observables=["energy_of_nothing"])
    with pytest.raises(OptionError, match="unknown observable 'energy_of_nothing'"):
        Simulation(mlp_system(), Adam(), tiny_splits(90, n_test=30), writers=[writer])
