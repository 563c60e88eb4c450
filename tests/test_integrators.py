"""Integrators: Langevin's stationary law, the mean-field options (n, β, reference measure)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from particlesim.core.integrators import SGD, OverdampedLangevin
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
