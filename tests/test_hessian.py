"""Hessian of the energy: dense eigenvalues, Lanczos/SLQ, indices α and γ, observables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import pytest
import torch
from tiny import tiny_splits
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core import hessian as hessian_module
from particlesim.core.group import ParticleGroup
from particlesim.core.hessian import (
    HessianAlpha,
    HessianDensity,
    HessianGamma,
    HessianSpectrum,
    dense_spectrum,
    energy_function,
    gauss_quadrature,
    hessian_spectrum,
    lanczos,
    lanczos_spectrum,
    select_parameters,
)
from particlesim.core.integrators import SGD
from particlesim.core.interactions import DenseInteraction
from particlesim.core.losses import BinaryCrossEntropy, MeanSquaredError
from particlesim.core.model import MLP
from particlesim.core.potentials import Potential
from particlesim.core.simulation import Simulation
from particlesim.core.system import System
from particlesim.core.writers import MemoryWriter
from particlesim.errors import OptionError
from particlesim.plugins.manager import PluginManager

runner = CliRunner()


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


def known_matrix(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """``Q diag(λ) Qᵀ`` with a random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


class Quadratic(Potential):
    """``E = ½ wᵀ A w`` over the flattened weight of the first interaction."""

    name = "quadratic"

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)

    def energy(self, system: System) -> torch.Tensor:
        w = system.interactions[0].weight.reshape(-1)
        return 0.5 * w @ self.matrix.to(w.dtype) @ w


def linear_system(inputs: int = 4, outputs: int = 2, potentials=()) -> System:
    g = torch.Generator().manual_seed(0)
    options = {"generator": g, "charge_channels": 0, "frozen": ["position"], "dtype": torch.float64}
    a = ParticleGroup.create("a", inputs, 1, **options)
    b = ParticleGroup.create("b", outputs, 1, **options)
    return System([a, b], [DenseInteraction(a, b, generator=g)], potentials=potentials)


def small_mlp(registries, sizes=(2, 8, 2, 1), activation="esp") -> System:
    return MLP(sizes=list(sizes), activation=activation).build(
        registries=registries,
        input_size=sizes[0],
        num_classes=sizes[-1],
        generator=torch.Generator().manual_seed(3),
        dtype=torch.float32,
    )


def plane_batch(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).float()


# --------------------------------------------------------------------------- closed forms


def test_hessian_of_a_known_quadratic_gives_its_eigenvalues_and_indices() -> None:
    eigenvalues = [-3.0, -1.0, 0.0, 0.0, 0.0, 2.0, 5.0, 7.0]
    matrix = known_matrix(eigenvalues)
    system = linear_system(4, 2, potentials=[Quadratic(matrix)])
    # zero inputs: the data loss is constant, so H is exactly A
    energy = energy_function(system, MeanSquaredError(), torch.zeros(3, 4), torch.zeros(3, 2))
    assert energy.names == ["interactions.0.weight"] and energy.size == 8
    torch.testing.assert_close(energy.dense(), matrix, atol=1e-12, rtol=0)
    spectrum = hessian_spectrum(energy, method="dense")
    torch.testing.assert_close(
        spectrum.eigenvalues(), torch.tensor(eigenvalues, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert spectrum.alpha == pytest.approx(2 / 8)
    assert spectrum.gamma == pytest.approx(3 / 8)
    assert (spectrum.min, spectrum.max) == (pytest.approx(-3.0), pytest.approx(7.0))
    assert spectrum.density(bins=3).tolist() == pytest.approx([1 / 8, 5 / 8, 2 / 8])
    # without the potential the Hessian is zero: every direction is flat
    flat = hessian_spectrum(
        energy_function(
            system,
            MeanSquaredError(),
            torch.zeros(3, 4),
            torch.zeros(3, 2),
            include_potentials=False,
        )
    )
    assert (flat.alpha, flat.gamma, flat.scale) == (0.0, 1.0, 0.0)


def test_tolerance_is_relative_to_the_largest_eigenvalue() -> None:
    spectrum = dense_spectrum(torch.diag(torch.tensor([-1e-4, -1e-8, 1e-9, 1.0])), tol=1e-6)
    assert (spectrum.alpha, spectrum.gamma) == (0.25, 0.5)
    assert spectrum.threshold == pytest.approx(1e-6)
    loose = dense_spectrum(torch.diag(torch.tensor([-1e-4, -1e-8, 1e-9, 1.0])), tol=1e-3)
    assert (loose.alpha, loose.gamma) == (0.0, 0.75)
    scaled = dense_spectrum(1e6 * torch.diag(torch.tensor([-1e-4, -1e-8, 1e-9, 1.0])), tol=1e-6)
    assert (scaled.alpha, scaled.gamma) == (0.25, 0.5)


def test_mean_squared_error_of_a_linear_unit_has_hessian_two_xtx_over_b() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    energy = energy_function(linear_system(3, 1), MeanSquaredError(), x, y)
    torch.testing.assert_close(energy.dense(), 2 * x.T @ x / 7, atol=1e-12, rtol=0)


@pytest.mark.parametrize("activation", ["esp", "esp_per_neuron"])
def test_dense_hessian_matches_finite_differences_and_hvp(registries, activation: str) -> None:
    x, y = plane_batch(64)
    energy = energy_function(
        small_mlp(registries, activation=activation), BinaryCrossEntropy(), x, y
    )
    betas = [n for n in energy.names if n.endswith("beta")]
    assert betas == (
        ["activations.hidden1.beta", "activations.hidden2.beta"]
        if activation == "esp"
        else ["groups.hidden1.beta", "groups.hidden2.beta"]  # shared with the activation
    )
    dense = energy.dense()
    torch.testing.assert_close(dense, dense.T)
    h = 1e-6
    columns = []
    for i in range(energy.size):
        step = torch.zeros_like(energy.theta)
        step[i] = h
        columns.append(
            (energy.gradient(energy.theta + step) - energy.gradient(energy.theta - step)) / (2 * h)
        )
    torch.testing.assert_close(dense, torch.stack(columns, 1), atol=1e-6, rtol=1e-5)
    v = torch.randn(energy.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(energy.hvp(v), dense @ v, atol=1e-10, rtol=1e-8)
    # the caller's float32 system is untouched
    assert next(energy.module.system.parameters()).dtype == torch.float64


def test_parameter_selection_by_glob_patterns(registries) -> None:
    system = small_mlp(registries, activation="esp")
    named = dict(system.named_parameters())
    assert select_parameters(named, ["activations.*"]) == [
        "activations.hidden1.beta",
        "activations.hidden2.beta",
    ]
    x, y = plane_batch(32)
    full = energy_function(system, BinaryCrossEntropy(), x, y)
    part = energy_function(system, BinaryCrossEntropy(), x, y, parameters=["interactions.2.*"])
    assert part.size == 2
    index = [full.names.index("interactions.2.weight")]
    start = sum(math.prod(s) for s in full.shapes[: index[0]])
    torch.testing.assert_close(part.dense(), full.dense()[start : start + 2, start : start + 2])
    with pytest.raises(
        OptionError,
        match=r"'nothing\.\*' matches no learnable parameter; names: .*interactions\.0\.weight",
    ):
        select_parameters(named, ["nothing.*"])


# --------------------------------------------------------------------------- Lanczos / SLQ


def test_lanczos_stops_on_an_invariant_subspace_with_exact_quadrature() -> None:
    diagonal = torch.tensor([1.0] * 4 + [3.0] * 3 + [-2.0] * 3, dtype=torch.float64)
    start = torch.ones(10, dtype=torch.float64)
    a, b = lanczos(lambda v: diagonal * v, start, steps=10)
    assert a.numel() == 3 and b.numel() == 2  # three distinct eigenvalues
    nodes, weights = gauss_quadrature(a, b)
    torch.testing.assert_close(nodes, torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64))


def test_slq_agrees_with_dense_on_a_small_network(registries) -> None:
    x, y = plane_batch(200)
    # m = P steps: exact quadrature per probe, α unbiased (std ≈ 0.015 here with 12 probes)
    small = energy_function(small_mlp(registries, sizes=(2, 6, 1)), BinaryCrossEntropy(), x, y)
    exact = hessian_spectrum(small, method="dense")
    full = hessian_spectrum(small, method="lanczos", lanczos_steps=small.size, probes=12, seed=1)
    assert full.min == pytest.approx(exact.min, rel=1e-8, abs=1e-10)
    assert full.max == pytest.approx(exact.max, rel=1e-8)
    assert full.alpha == pytest.approx(exact.alpha, abs=0.06)
    assert full.energy == pytest.approx(exact.energy)
    # m < P steps on a larger network: the extremes still agree
    energy = energy_function(small_mlp(registries), BinaryCrossEntropy(), x, y)
    dense = hessian_spectrum(energy, method="dense")
    short = hessian_spectrum(energy, method="lanczos", lanczos_steps=20, probes=4)
    assert short.nodes.shape == (4, 20)
    assert float(short.weights.sum()) == pytest.approx(1.0)
    assert short.max == pytest.approx(dense.max, rel=1e-3)  # extreme Ritz values converge first
    assert short.min == pytest.approx(dense.min, rel=1e-3)
    assert short.min >= dense.min - 1e-12  # Ritz values lie inside the spectrum
    grid = torch.linspace(dense.min - 1, dense.max + 1, 4001)
    mass = torch.trapezoid(short.smoothed_density(grid, width=0.01), grid)
    assert float(mass) == pytest.approx(1.0, abs=1e-6)


def test_lanczos_spectrum_of_a_known_matrix_pads_early_stops() -> None:
    matrix = known_matrix([-1.0, -1.0, 2.0, 2.0, 2.0, 4.0])
    spectrum = lanczos_spectrum(lambda v: matrix @ v, 6, steps=6, probes=3)
    assert spectrum.nodes.shape == (3, 6)
    assert torch.isnan(spectrum.nodes[:, 3:]).all() and (spectrum.weights[:, 3:] == 0).all()
    torch.testing.assert_close(
        spectrum.nodes[:, :3], torch.tensor([[-1.0, 2.0, 4.0]] * 3, dtype=torch.float64)
    )
    values = spectrum.eigenvalues()
    assert values[:9].tolist() == pytest.approx([-1.0] * 3 + [2.0] * 3 + [4.0] * 3)
    assert torch.isnan(values[9:]).all()


# --------------------------------------------------------------------------- errors


def test_dense_on_a_large_system_says_so_and_suggests_lanczos(registries) -> None:
    x, y = plane_batch(16)
    energy = energy_function(
        small_mlp(registries, sizes=(2, 40, 40, 1)), BinaryCrossEntropy(), x, y
    )
    with pytest.raises(OptionError) as info:
        hessian_spectrum(energy, method="dense", max_parameters=1000)
    message = str(info.value)
    assert message.startswith("method: the dense Hessian of 1803 parameters is a [1803, 1803]")
    assert "more than max_parameters = 1000" in message and 'use method = "lanczos"' in message
    assert "\n" not in message
    lanczos_result = hessian_spectrum(energy, method="lanczos", lanczos_steps=5, probes=1)
    assert lanczos_result.parameters == 1803


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        ({"tol": 0.0}, "tol", "must be a number in (0, 1)"),
        ({"tol": -1e-6}, "tol", "must be a number in (0, 1)"),
        ({"tol": 1.0}, "tol", "must be a number in (0, 1)"),
        ({"method": "exact"}, "method", "expected 'dense' or 'lanczos'"),
        ({"samples": 0}, "samples", "must be a positive integer"),
        ({"lanczos_steps": 0}, "lanczos_steps", "must be a positive integer"),
        ({"probes": -2}, "probes", "must be a positive integer"),
        ({"max_parameters": 0}, "max_parameters", "must be a positive integer"),
        ({"parameters": []}, "parameters", "give at least one pattern"),
        ({"split": "training"}, "split", "expected 'train', 'val' or 'test'"),
    ],
)
def test_bad_hessian_options_are_clear_errors(options, key, text) -> None:
    with pytest.raises(OptionError) as info:
        HessianAlpha(**options)
    assert info.value.key == key and text in str(info.value)


def test_bad_density_bins_and_bad_matrices() -> None:
    with pytest.raises(OptionError, match="bins: must be a positive integer, got 0"):
        HessianDensity(bins=0)
    with pytest.raises(OptionError, match=r"expected a square \[P, P\] matrix, got \[2, 3\]"):
        dense_spectrum(torch.zeros(2, 3))


# --------------------------------------------------------------------------- observables


def simulation_with(observables, *, steps: int = 4) -> tuple[Simulation, MemoryWriter]:
    data = tiny_splits(n=30, features=6, n_test=12)
    g = torch.Generator().manual_seed(0)
    groups = [
        ParticleGroup.create(
            n, s, 1, generator=g, charge_channels=0, bias=i > 0, frozen=["position"]
        )
        for i, (n, s) in enumerate([("input", 6), ("hidden1", 3), ("output", 3)])
    ]
    system = System(
        groups,
        [
            DenseInteraction(groups[0], groups[1], generator=g),
            DenseInteraction(groups[1], groups[2], generator=g),
        ],
    )
    writer = MemoryWriter(trigger=2, observables=[o.name for o in observables])
    simulation = Simulation(
        system,
        SGD(lr=0.1),
        data,
        steps=steps,
        batch_size=10,
        observables=observables,
        writers=[writer],
        record_initial=True,
    )
    return simulation, writer


def test_observables_share_one_computation_per_step(monkeypatch) -> None:
    calls = []
    original = hessian_module.hessian_spectrum

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hessian_module, "hessian_spectrum", counting)
    observables = [HessianAlpha(), HessianGamma(), HessianDensity(bins=5), HessianAlpha(tol=1e-3)]
    observables[-1].name = "hessian_alpha_loose"
    simulation, writer = simulation_with(observables)
    simulation.run()
    assert [row["step"] for row in writer.rows] == [0, 2, 4]
    assert len(calls) == 3 * 2  # per frame: the default options once, tol 1e-3 once
    for row in writer.rows:
        assert 0 <= row["hessian_alpha"] <= 1 and 0 <= row["hessian_gamma"] <= 1
        assert sum(row["hessian_density"]) == pytest.approx(1.0)
        assert row["hessian_alpha_loose"] <= row["hessian_alpha"]
    # the values are those of the system at that step
    simulation.step = 99
    x, y = simulation.data.train_x, simulation.data.train_y
    direct = hessian_spectrum(energy_function(simulation.system, simulation.loss, x, y))
    assert writer.rows[-1]["hessian_alpha"] == pytest.approx(direct.alpha)


def test_empty_split_is_a_clear_error() -> None:
    simulation, _ = simulation_with([HessianAlpha(split="val")])
    with pytest.raises(
        OptionError, match="hessian_alpha: the val split is empty; choose another split"
    ):
        simulation.measure(["hessian_alpha"])


TOY = """
[scenario]
name = "hessian_tiny"
seed = 1
device = "cpu"

[data]
name = "idx"
data_dir = "{data_dir}"

[model]
name = "mlp"
sizes = [0, 4, 0]
activation = "esp"

[integrator]
name = "sgd"
lr = 0.1

[run]
steps = 6
batch_size = 32
record_initial = true

[[observables]]
name = "hessian_alpha"
samples = 40
max_parameters = {max_parameters}

[[observables]]
name = "hessian_gamma"
samples = 40

[[observables]]
name = "hessian_spectrum"
samples = 40

[[observables]]
name = "hessian_density"
samples = 40
bins = 11

[[observables]]
name = "hessian_max_eigenvalue"
method = "lanczos"
samples = 40
lanczos_steps = 10
probes = 2

[[observables]]
name = "activation_beta"

[[writers]]
name = "metrics"
every = 3
observables = ["hessian_alpha", "hessian_gamma", "hessian_max_eigenvalue", "activation_beta"]

[[writers]]
name = "trajectory"
every = 3
observables = ["hessian_alpha", "hessian_spectrum", "hessian_density"]
observables_every = 3
epoch_observables = []
"""


def test_hessian_observables_through_a_scenario(tiny_data: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "hessian.toml"
    scenario.write_text(TOY.format(data_dir=tiny_data, max_parameters=2000), encoding="utf-8")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(scenario), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "recorded by no writer" not in result.stderr  # every declared one is listed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    parameters = 16 * 4 + 4 + 4 * 3 + 3 + 1  # weights, biases and ESP's β
    for row in rows:
        assert row["hessian_alpha"] * parameters == pytest.approx(
            round(row["hessian_alpha"] * parameters)
        )
        assert 0 <= row["hessian_gamma"] <= 1 and row["hessian_max_eigenvalue"] > 0
        assert row["activation_beta"] > 0
    with h5py.File(out / "trajectory.h5") as file:
        spectrum = file["observables/hessian_spectrum/value"][:]
        density = file["observables/hessian_density/value"][:]
        alpha = file["observables/hessian_alpha/value"][:]
    assert spectrum.shape == (3, parameters) and density.shape == (3, 11)
    assert (spectrum[:, :-1] <= spectrum[:, 1:]).all()
    assert density.sum(axis=1) == pytest.approx([1.0] * 3)
    assert alpha == pytest.approx(
        (spectrum < -1e-6 * abs(spectrum).max(axis=1, keepdims=True)).mean(axis=1)
    )
    assert rows[-1]["hessian_max_eigenvalue"] <= spectrum[-1].max() * (1 + 1e-9)


def test_a_declared_observable_no_writer_lists_is_warned_about(
    tiny_data: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "hessian.toml"
    text = TOY.format(data_dir=tiny_data, max_parameters=2000)
    scenario.write_text(text + '\n[[observables]]\nname = "hessian_min_eigenvalue"\n')
    result = runner.invoke(
        app, ["run", str(scenario), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "recorded by no writer" in line]
    assert len(warnings) == 1 and "'hessian_min_eigenvalue'" in warnings[0], result.stderr


def test_too_large_dense_hessian_in_a_run_is_one_line(tiny_data: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "hessian.toml"
    scenario.write_text(TOY.format(data_dir=tiny_data, max_parameters=50), encoding="utf-8")
    result = runner.invoke(
        app, ["run", str(scenario), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "hessian_alpha: the dense Hessian of 84 parameters" in errors[0]
    assert 'use method = "lanczos"' in errors[0]
    assert "Traceback" not in result.output


def test_bad_tolerance_in_a_scenario_names_the_key(tiny_data: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "hessian.toml"
    scenario.write_text(
        TOY.format(data_dir=tiny_data, max_parameters=2000).replace(
            'name = "hessian_gamma"\n', 'name = "hessian_gamma"\ntol = -0.1\n'
        ),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["validate", str(scenario)])
    assert result.exit_code != 0
    assert "observables[1].tol: must be a number in (0, 1)" in result.stderr


def test_spectrum_dataclass_on_hand_made_quadrature() -> None:
    nodes = torch.tensor([[-1.6, 0.0, 2.0], [1.0, math.nan, math.nan]], dtype=torch.float64)
    weights = torch.tensor([[0.1, 0.2, 0.2], [0.5, 0.0, 0.0]], dtype=torch.float64)
    spectrum = HessianSpectrum("lanczos", 10, nodes, weights, 1e-6)
    assert (spectrum.alpha, spectrum.gamma, spectrum.min, spectrum.max) == (0.1, 0.2, -1.6, 2.0)
    # bins of λ/max|λ| = -0.8, 0, 1, 0.5 over [-1, 1]: edges -1, -0.6, -0.2, 0.2, 0.6, 1
    assert spectrum.density(bins=5).tolist() == pytest.approx([0.1, 0.0, 0.2, 0.5, 0.2])
