"""Integrators: Langevin's stationary law, the mean-field options (n, β, reference measure)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from particlesim.core.integrators import SGD, SGHMC, OverdampedLangevin, UnderdampedLangevin
from particlesim.errors import OptionError, ScenarioError
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import validate


def stationary_variance(
    integrator: OverdampedLangevin,
    stiffness: float,
    *,
    size: int = 20_000,
    burn_in: int = 300,
    samples: int = 20,
    every: int = 10,
) -> float:
    """Sample variance of ``z`` under the integrator on ``U = ½ k |z|²`` (from ``z = 0``).

    ``size`` independent coordinates; the variance is averaged over ``samples`` snapshots
    ``every`` steps apart after ``burn_in`` steps.
    """
    z = nn.Parameter(torch.zeros(size, dtype=torch.float64))
    integrator.attach([z], total_steps=burn_in + samples * every, generator=torch.Generator())
    integrator.generator.manual_seed(1234)
    values = []
    for step in range(burn_in + samples * every):
        integrator.zero_grad()
        z.grad = stiffness * z.detach().clone()
        integrator.step(step)
        if step >= burn_in and (step - burn_in) % every == 0:
            values.append(float(z.detach().pow(2).mean()))
    return sum(values) / len(values)


def test_langevin_samples_the_gibbs_variance_of_a_quadratic_potential() -> None:
    # Stationary law ∝ exp(-U/kT) with U = ½ k z²: variance kT/k (continuum); Euler–Maruyama
    # with step η has exactly kT / (k (1 - η k / 2)).
    kT, k, eta = 0.3, 2.0, 0.01
    variance = stationary_variance(OverdampedLangevin(lr=eta, temperature=kT), k)
    discrete = kT / (k * (1 - eta * k / 2))
    assert variance == pytest.approx(discrete, rel=0.02)
    assert variance == pytest.approx(kT / k, rel=0.03)


def test_mean_field_temperature_and_force_scaling_give_the_expected_variance() -> None:
    # L = n·U at temperature (βn)^-1: law ∝ exp(-β n² U), variance 1/(β n² k).
    n, beta, k, eta = 4, 2.0, 1.0, 0.005
    integrator = OverdampedLangevin(lr=eta, beta=beta, particles=n)
    assert integrator.temperature == pytest.approx(1 / (beta * n))
    variance = stationary_variance(integrator, k)
    expected = 1 / (beta * n**2 * k)
    assert variance == pytest.approx(expected / (1 - eta * n * k / 2), rel=0.02)


def test_reference_measure_adds_its_gaussian_precision() -> None:
    # m = N(0, s²): law ∝ exp(-U/kT)·m, precision k/kT + 1/s².
    kT, k, s, eta = 0.5, 1.0, 0.5, 0.01
    integrator = OverdampedLangevin(lr=eta, temperature=kT, reference_std=s)
    precision = k / kT + 1 / s**2
    stiffness = k + kT / s**2  # the drift the update applies, for the step-size correction
    expected = 1 / precision / (1 - eta * stiffness / 2)
    assert stationary_variance(integrator, k) == pytest.approx(expected, rel=0.02)


def test_zero_temperature_with_particles_is_gradient_descent_on_n_times_the_loss() -> None:
    n, dt = 8, 0.05
    a = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    b = nn.Parameter(a.detach().clone())
    langevin, sgd = OverdampedLangevin(lr=dt, particles=n), SGD(lr=n * dt)
    langevin.attach([a], total_steps=3)
    sgd.attach([b], total_steps=3)
    for step in range(3):
        for p, integrator in ((a, langevin), (b, sgd)):
            integrator.zero_grad()
            (p**4).sum().backward()
            integrator.step(step)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert langevin.step_size(0) == dt  # Δt stays the time step


def test_beta_schedule_runs_from_beta_to_beta_final() -> None:
    integrator = OverdampedLangevin(
        lr=0.1, beta=1.0, beta_final=4.0, particles=2, temperature_schedule="linear"
    )
    integrator.attach([nn.Parameter(torch.zeros(1))], total_steps=10)
    assert integrator.observables(0)["temperature"] == pytest.approx(0.5)
    assert integrator.observables(10)["temperature"] == pytest.approx(0.125)
    assert integrator.observables(5)["temperature"] == pytest.approx(0.3125)


def test_infinite_beta_is_zero_temperature() -> None:
    assert OverdampedLangevin(beta=math.inf, particles=3).temperature == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, "temperature: must be >= 0, got -1.0"),
        ({"temperature_final": -0.5}, "temperature_final: must be >= 0, got -0.5"),
        ({"beta": -2.0}, "beta: must be > 0 (the temperature is 1/(beta·particles)), got -2.0"),
        ({"beta": 0.0}, "beta: must be > 0"),
        ({"beta_final": -1.0}, "beta_final: must be > 0"),
        ({"beta": 1.0, "temperature": 0.1}, "beta: give either temperature or beta, not both"),
        (
            {"beta_final": 1.0, "temperature_final": 0.1},
            "beta_final: give either temperature_final or beta_final, not both",
        ),
        ({"particles": 0}, "particles: must be a positive integer, got 0"),
        ({"reference_std": 0.0}, "reference_std: must be > 0 and finite, got 0.0"),
    ],
)
def test_langevin_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(OptionError) as info:
        OverdampedLangevin(**options)
    assert message in str(info.value)


def test_negative_temperature_in_a_scenario_names_the_key(tiny_data) -> None:
    raw = {
        "data": {"name": "idx", "data_dir": str(tiny_data)},
        "model": {"name": "mlp", "sizes": [0, 4, 0]},
        "integrator": {"name": "langevin", "temperature": -1.0},
    }
    with pytest.raises(ScenarioError) as info:
        validate(raw, PluginManager().load().registries, source="s.toml")
    assert str(info.value) == "s.toml: integrator.temperature: must be >= 0, got -1.0"


# --------------------------------------------------------------------------- underdamped


def run_dynamics(integrator, force, *, size: int, steps: int, x0: float = 0.0, seed: int = 7):
    """Drive ``integrator`` on ``size`` independent coordinates with ``∇U = force(x)``;
    yields ``(step, x, velocity)`` after each step (velocity lagging by half a kick)."""
    x = nn.Parameter(torch.full((size,), x0, dtype=torch.float64))
    integrator.attach([x], total_steps=steps, generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        integrator.zero_grad()
        x.grad = force(x.detach().clone())
        integrator.step(step)
        yield step, x.detach(), integrator.optimizer.state[x]["velocity"]


def test_baoab_samples_a_harmonic_well_at_its_temperature() -> None:
    """Position variance kT/k and velocity variance kT, within sampling error."""
    kT, k = 0.7, 2.0
    xs, vs = [], []
    integrator = UnderdampedLangevin(lr=0.1, friction=1.0, temperature=kT)
    for step, x, v in run_dynamics(integrator, lambda x: k * x, size=20_000, steps=1_500):
        if step >= 500 and step % 20 == 0:
            xs.append(float(x.pow(2).mean()))
            vs.append(float(v.pow(2).mean()))
    assert sum(xs) / len(xs) == pytest.approx(kT / k, rel=0.02)
    assert sum(vs) / len(vs) == pytest.approx(kT, rel=0.05)  # half-kicked: O(Δt²) off


def test_baoab_configurational_temperature_of_a_quartic_well() -> None:
    """k_B T_conf = <|∇U|²> / <∇²U> = kT for U = x⁴/4 (∇U = x³, ∇²U = 3x²)."""
    kT = 0.5
    num, den = 0.0, 0.0
    integrator = UnderdampedLangevin(lr=0.05, friction=2.0, temperature=kT)
    for step, x, _ in run_dynamics(integrator, lambda x: x.pow(3), size=20_000, steps=2_000):
        if step >= 600 and step % 20 == 0:
            num += float(x.pow(6).mean())
            den += float(3 * x.pow(2).mean())
    assert num / den == pytest.approx(kT, rel=0.03)


def _energy_error(dt: float, steps: int) -> float:
    """Max |H − H0| of a unit harmonic oscillator from x = 1 at rest, γ = 0, T = 0."""
    integrator = UnderdampedLangevin(lr=dt, friction=0.0)
    worst = 0.0
    for _, x, v in run_dynamics(integrator, lambda x: x, size=1, steps=steps, x0=1.0):
        v_sync = v - dt / 2 * x  # the closing half kick with F(x) = −x
        worst = max(worst, abs(float(0.5 * x.pow(2).sum() + 0.5 * v_sync.pow(2).sum()) - 0.5))
    return worst


def test_baoab_without_friction_conserves_energy_to_second_order() -> None:
    """Velocity Verlet: bounded energy error, O(Δt²): halving Δt divides it by ~4."""
    coarse, fine = _energy_error(0.1, 2_000), _energy_error(0.05, 4_000)
    assert coarse < 0.01
    assert 3.5 < coarse / fine < 4.5


def test_sghmc_samples_a_harmonic_well_and_is_momentum_sgd_when_cold() -> None:
    kT, k = 1.0, 1.0
    xs = []
    integrator = SGHMC(lr=0.002, friction=0.1, temperature=kT)
    for step, x, _ in run_dynamics(integrator, lambda x: k * x, size=20_000, steps=4_000):
        if step >= 1_000 and step % 50 == 0:
            xs.append(float(x.pow(2).mean()))
    assert sum(xs) / len(xs) == pytest.approx(kT / k, rel=0.05)
    # temperature 0: v ← 0.9 v − η g, x ← x + v, i.e. heavy-ball SGD
    cold = SGHMC(lr=0.1, friction=0.1)
    trace = [float(x[0]) for _, x, _ in run_dynamics(cold, lambda x: x, size=1, steps=3, x0=1.0)]
    v1 = -0.1
    x1 = 1.0 + v1
    v2 = 0.9 * v1 - 0.1 * x1
    assert trace[:2] == pytest.approx([x1, x1 + v2])


def test_underdamped_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    """Velocities and the lagging half kick are optimiser state: a resumed run is exact."""
    dynamics = run_dynamics(
        UnderdampedLangevin(lr=0.05, temperature=0.3), lambda x: x, size=8, steps=20
    )
    whole = [x.clone() for _, x, _ in dynamics][-1]
    integrator = UnderdampedLangevin(lr=0.05, temperature=0.3)
    x = nn.Parameter(torch.zeros(8, dtype=torch.float64))
    integrator.attach([x], total_steps=20, generator=torch.Generator().manual_seed(7))
    for step in range(20):
        if step == 10:  # save, then continue in a fresh integrator from the saved state
            path = tmp_path / "state.pt"
            torch.save({"integrator": integrator.state_dict(), "x": x.detach().clone()}, path)
            saved = torch.load(path, weights_only=True)
            x = nn.Parameter(saved["x"])
            integrator = UnderdampedLangevin(lr=0.05, temperature=0.3)
            integrator.attach([x], total_steps=20, generator=torch.Generator())
            integrator.load_state_dict(saved["integrator"])
        integrator.zero_grad()
        x.grad = x.detach().clone()
        integrator.step(step)
    assert torch.equal(x.detach(), whole)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("underdamped_langevin", {"friction": -1.0}, "friction: must be a finite number >= 0"),
        ("underdamped_langevin", {"temperature": -0.5}, "temperature: must be a finite number"),
        ("sghmc", {"friction": 0.0}, "friction: must be in (0, 1] (the momentum decay), got 0.0"),
        ("sghmc", {"temperature_final": -1.0}, "temperature_final: must be a finite number >= 0"),
    ],
)
def test_bad_thermostat_options_are_one_line_naming_the_key(
    tiny_data, name: str, options: dict, message: str
) -> None:
    raw = {
        "data": {"name": "idx", "data_dir": str(tiny_data)},
        "model": {"name": "mlp", "sizes": [0, 4, 0]},
        "integrator": {"name": name, **options},
    }
    with pytest.raises(ScenarioError) as info:
        validate(raw, PluginManager().load().registries, source="s.toml")
    assert str(info.value).startswith(f"s.toml: integrator.{message}")


@pytest.mark.parametrize("name", ["underdamped_langevin", "sghmc"])
def test_a_scenario_runs_with_each_thermostat_and_measures_its_kinetic_energy(
    tiny_scenario, tmp_path, name: str
) -> None:
    from particlesim import Runner

    assignments = [f"integrator.name={name}", "integrator.temperature=0.01"]
    assignments += ["integrator.lr=0.01", "run.steps=6"]
    with Runner.from_scenario(tiny_scenario, set=assignments, out=tmp_path / "o") as runner:
        result = runner.run()
    assert result.status == "completed"
    measured = result.simulation.measure(["kinetic_energy", "temperature"])
    assert float(measured["kinetic_energy"]) > 0
    assert float(measured["temperature"]) == pytest.approx(0.01)
