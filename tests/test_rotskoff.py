"""Rotskoff & Vanden-Eijnden: mean-field interactions, the 3-spin target, the experiment."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import typer
from particlesim_rotskoff import experiments
from particlesim_rotskoff.model import MeanField
from particlesim_rotskoff.spin import (
    Spherical3Spin,
    slice_points,
    sphere_points,
    sphere_variance,
    spin_coefficients,
    symmetrize,
    three_spin,
)
from typer.testing import CliRunner

from particlesim.core.group import ParticleGroup
from particlesim.core.integrators import OverdampedLangevin
from particlesim.core.mean_field import (
    DotProductKernel,
    EffectiveNoise,
    MeanFieldInteraction,
    MeanFieldUnits,
    mean_field_output,
)
from particlesim.core.simulation import Simulation
from particlesim.core.writers import MemoryWriter
from particlesim.errors import OptionError, ScenarioError
from particlesim.kernels.base import GaussianKernel
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import read_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


def mean_field_system(registries, particles: int = 5, dim: int = 3, seed: int = 0, **options):
    return MeanField(particles=particles, **options).build(
        registries=registries,
        input_size=dim,
        num_classes=1,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )


# --------------------------------------------------------------------------- engine parts


def test_docstring_examples_run() -> None:
    import doctest

    import particlesim.core.mean_field as module

    result = doctest.testmod(module)
    assert result.attempted >= 4 and result.failed == 0


def test_dot_product_kernel_is_the_inner_product() -> None:
    u, a = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(DotProductKernel()(u, a), u @ a.T)


def test_system_computes_the_mean_field_sum(registries) -> None:
    system = mean_field_system(registries, particles=7, dim=4)
    particles = system.groups["particles"]
    x = torch.randn(10, 4, dtype=torch.float64)
    expected = mean_field_output(x, particles.position, particles.charge, particles.bias)
    by_hand = (torch.sigmoid(x @ particles.position.T + particles.bias) * particles.charge).sum(
        -1
    ) / 7
    assert torch.allclose(system(x)[:, 0], expected, atol=1e-14)
    assert torch.allclose(expected, by_hand, atol=1e-14)
    assert sorted(particles.learnable_fields()) == ["bias", "charge", "position"]
    assert system.groups["input"].is_frozen("position")


def test_mean_field_output_has_the_right_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: mean_field_output(x, a, c, b), (a, b, c))


def test_interactions_have_the_right_gradients() -> None:
    g = torch.Generator().manual_seed(2)
    inputs = ParticleGroup(
        "input", {"position": torch.eye(3, dtype=torch.float64)}, frozen=["position"]
    )
    output = ParticleGroup("output", {"position": torch.zeros(1, 3, dtype=torch.float64)})
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def network(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        fields = {"position": a, "charge": c}
        particles = ParticleGroup("particles", fields, frozen=list(fields))
        # the group copies its fields (as buffers here): put the differentiable tensors back
        particles.position, particles.charge = a, c
        units = MeanFieldUnits(inputs, particles, kernel=DotProductKernel())
        phi = torch.tanh(units(x, inputs, particles))
        return MeanFieldInteraction(particles, output)(phi, particles, output)

    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(network, (a, c))
    expected = (torch.tanh(x @ a.T) @ c / 4)[:, None]
    assert torch.allclose(network(a, c), expected)


def test_the_one_over_n_scaling(registries) -> None:
    # Copying every particle (n → 2n) leaves f_n unchanged; so does the mean over groups.
    system = mean_field_system(registries, particles=6, dim=3)
    doubled = mean_field_system(registries, particles=12, dim=3)
    with torch.no_grad():
        for field in ("position", "bias", "charge"):
            value = system.groups["particles"].field(field)
            doubled.groups["particles"].field(field).copy_(torch.cat([value, value]))
    x = torch.randn(8, 3, dtype=torch.float64)
    assert torch.allclose(system(x), doubled(x), atol=1e-14)
    weight = system.effective_weights()["particles->output"]
    assert torch.allclose(weight, system.groups["particles"].charge[None, :] / 6)


def test_gradient_of_n_times_the_loss_is_the_particle_interaction(registries) -> None:
    # Slides: dC_i/dt = F(Y_i) - (1/n) Σ_j C_j K(Y_i, Y_j) is -∂(nℓ)/∂c_i, with
    # F(y) = E[f φ(·, y)] and K(y, z) = E[φ(·, y) φ(·, z)] over the data.
    n = 5
    system = mean_field_system(registries, particles=n, dim=3)
    x = torch.randn(40, 3, dtype=torch.float64)
    f = torch.sin(x).sum(-1)
    loss = 0.5 * (f - system(x)[:, 0]).pow(2).mean()
    (n * loss).backward()
    particles = system.groups["particles"]
    with torch.no_grad():
        phi = torch.sigmoid(x @ particles.position.T + particles.bias)
        one_body = (f[:, None] * phi).mean(0)
        two_body = (phi.T @ phi) / x.shape[0]
        drift = one_body - two_body @ particles.charge / n
    assert torch.allclose(-particles.charge.grad, drift, atol=1e-12)


def test_radial_kernel_units(registries) -> None:
    system = mean_field_system(
        registries, particles=4, dim=2, kernel="gaussian", activation="identity", bias=False
    )
    particles = system.groups["particles"]
    x = torch.randn(3, 2, dtype=torch.float64)
    expected = torch.exp(-torch.cdist(x, particles.position).pow(2)) @ particles.charge / 4
    assert torch.allclose(system(x)[:, 0], expected, atol=1e-14)
    assert isinstance(system.interactions[0].kernel, GaussianKernel)


def test_mean_field_interaction_errors() -> None:
    no_charge = ParticleGroup("particles", {"position": torch.zeros(3, 2)})
    with_charge = ParticleGroup(
        "particles", {"position": torch.zeros(3, 2), "charge": torch.ones(3)}
    )
    two = ParticleGroup("output", {"position": torch.zeros(2, 2)})
    with pytest.raises(OptionError, match="group 'particles' has no charge field"):
        MeanFieldInteraction(no_charge, two)
    with pytest.raises(OptionError, match="'output' has 2 particle\\(s\\) but the charges"):
        MeanFieldInteraction(with_charge, two)
    wide = ParticleGroup("input", {"position": torch.zeros(3, 5)})
    with pytest.raises(OptionError, match="live in different dimensions"):
        MeanFieldUnits(wide, with_charge, kernel=DotProductKernel())


def test_model_rejects_bad_options() -> None:
    with pytest.raises(OptionError, match="particles: must be a positive integer, got 0"):
        MeanField(particles=0)
    with pytest.raises(OptionError, match=r"charge_std: must be >= 0 and finite, got -1\.0"):
        MeanField(charge_std=-1.0)


def test_initial_network_fluctuates_like_n_to_the_minus_one_half(registries) -> None:
    # i.i.d. particles with mean-zero charges: E_x f_n(x)² averaged over draws ∝ 1/n.
    x = sphere_points(400, 4, torch.Generator().manual_seed(0))

    def mean_square(n: int) -> float:
        return (
            sum(
                float(mean_field_system(registries, n, 4, seed)(x).detach().pow(2).mean())
                for seed in range(60)
            )
            / 60
        )

    ratio = mean_square(16) / mean_square(256)
    assert ratio == pytest.approx(16, rel=0.35)


# --------------------------------------------------------------------------- 3-spin target


def test_three_spin_is_odd_and_depends_on_the_symmetrised_tensor() -> None:
    a = spin_coefficients(6, seed=3)
    x = sphere_points(50, 6, torch.Generator().manual_seed(0))
    f = three_spin(x, a)
    assert torch.allclose(three_spin(-x, a), -f, atol=1e-12)
    assert torch.allclose(three_spin(x, symmetrize(a)), f, atol=1e-12)
    assert torch.allclose(three_spin(x, a.permute(2, 0, 1)), f, atol=1e-12)
    by_hand = (
        sum(
            a[p, q, r] * x[:, p] * x[:, q] * x[:, r]
            for p in range(6)
            for q in range(6)
            for r in range(6)
        )
        / 6
    )
    assert torch.allclose(f, by_hand, atol=1e-10)


def test_points_lie_on_the_sphere_of_radius_root_d() -> None:
    x = sphere_points(100, 7, torch.Generator().manual_seed(0))
    assert torch.allclose(x.norm(dim=1), torch.full((100,), math.sqrt(7), dtype=torch.float64))
    theta = torch.tensor([0.0, math.pi / 2], dtype=torch.float64)
    s = slice_points(5, theta, i=1, j=3)
    assert torch.allclose(s[0], torch.tensor([0, math.sqrt(5), 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(
        s[1], torch.tensor([0, 0, 0, math.sqrt(5), 0], dtype=torch.float64), atol=1e-12
    )
    with pytest.raises(OptionError, match="needs two different coordinates"):
        slice_points(5, theta, i=2, j=2)


def test_variance_over_the_sphere_matches_the_closed_form() -> None:
    # Monte Carlo with 200 000 points: relative standard error about 0.5 %; tolerance 3 %.
    a = spin_coefficients(6, seed=11)
    f = three_spin(sphere_points(200_000, 6, torch.Generator().manual_seed(5)), a)
    assert float(f.mean()) == pytest.approx(0.0, abs=0.03 * float(f.std()))
    assert float(f.var()) == pytest.approx(sphere_variance(a), rel=0.03)


def test_expected_variance_over_coefficients_is_d() -> None:
    # E_a f(x)² = |x|⁶ / d² = d at every point; the closed form averages to d.
    # 400 draws: relative standard error about 1.5 %; tolerance 6 %.
    d = 5
    variances = [sphere_variance(spin_coefficients(d, seed)) for seed in range(400)]
    assert sum(variances) / len(variances) == pytest.approx(d, rel=0.06)


def test_dataset_online_and_fixed() -> None:
    online = Spherical3Spin(dim=4, n_test=30, epoch_size=20).load(seed=0, log=lambda m: None)
    assert online.sampler is not None and online.num_classes == 1
    assert online.loss == "mse" and online.loss_options == {"scale": 0.5}
    generator = torch.Generator().manual_seed(0)
    x1, y1 = online.sampler(8, generator)
    x2, _ = online.sampler(8, generator)
    assert x1.shape == (8, 4) and not torch.equal(x1, x2)
    assert torch.allclose(y1.double(), three_spin(x1.double(), spin_coefficients(4, 0)), atol=1e-4)
    assert online.train_x.shape == (20, 4) and online.test_x.shape == (30, 4)
    fixed = Spherical3Spin(dim=4, train_size=12).load(seed=0, log=lambda m: None)
    assert fixed.sampler is None and fixed.train_x.shape == (12, 4)
    again = Spherical3Spin(dim=4, train_size=12).load(seed=0, log=lambda m: None)
    assert torch.equal(fixed.test_x, again.test_x)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dim": 0}, "dim: must be >= 1, got 0"),
        ({"train_size": 0}, "train_size: must be a positive integer, got 0"),
        ({"n_test": -1}, "n_test: must be >= 0, got -1"),
        ({"dim": 500}, "dim: the 500³ coefficients would not fit"),
        ({"data_seed": -3}, "data_seed: must be >= 0 or -1"),
    ],
)
def test_dataset_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", "\\(").replace(")", "\\)")):
        Spherical3Spin(**options)


# --------------------------------------------------------------------------- simulations


def test_batch_larger_than_the_training_set_in_a_scenario(registries) -> None:
    raw = read_scenario(SCENARIOS / "rotskoff_3spin.toml")
    raw["data"]["train_size"] = 30
    raw["run"] = {"steps": 2, "batch_size": 40}
    raw["writers"] = []
    plan = validate(raw, registries, source="s.toml")
    with pytest.raises(ScenarioError) as info:
        build(plan, log=lambda m: None)
    assert str(info.value).startswith(
        "s.toml: run.batch_size: 40 is larger than the training set (30 rows of "
        "'spherical_3spin (synthetic: d = 5"
    )
    assert str(info.value).endswith(
        "use a batch of at most 30 (all of it: full-batch gradient descent)"
    )
    raw["run"] = {"steps": 2, "batch_size": 30}  # the whole set: full-batch gradient descent
    build(validate(raw, registries, source="s.toml"), log=lambda m: None).simulation.run()
    raw["run"] = {"steps": 2}  # the default batch (128) quietly means the whole set
    build(validate(raw, registries, source="s.toml"), log=lambda m: None)
    del raw["data"]["train_size"]  # online data: any batch size
    raw["run"] = {"steps": 2, "batch_size": 400}
    build(validate(raw, registries, source="s.toml"), log=lambda m: None)


def test_effective_noise_follows_step_size_and_batch_schedule(registries) -> None:
    data = Spherical3Spin(dim=3, epoch_size=10, n_test=5).load(seed=0, log=lambda m: None)
    system = mean_field_system(registries, particles=4, dim=3).float()
    writer = MemoryWriter(trigger=1, observables=["effective_noise", "batch_size"])
    simulation = Simulation(
        system,
        OverdampedLangevin(lr=0.2, particles=4),
        data,
        steps=4,
        batch_size=5,
        batch_schedule=[(2, 50)],
        loss=registries["loss"].get("mse")(scale=0.5),
        observables=[EffectiveNoise()],
        writers=[writer],
    )
    simulation.run()
    noise = [frame["effective_noise"] for frame in writer.rows]
    assert noise == pytest.approx([0.04, 0.04, 0.004, 0.004])
    assert "effective_noise" in registries["observable"]


@pytest.mark.parametrize("name", ["rotskoff_3spin.toml", "rotskoff_3spin_langevin.toml"])
def test_scenarios_build_and_train(name: str, registries) -> None:
    raw = read_scenario(SCENARIOS / name)
    raw["model"]["particles"] = raw["integrator"]["particles"] = 32
    raw["run"] = {"steps": 60, "batch_size": 50, "batch_schedule": [[40, 200]]}
    raw["writers"] = []
    plan = validate(raw, registries, source=name)
    built = build(plan, log=lambda m: None)
    before, _ = built.simulation.evaluate("test")
    built.simulation.run()
    after, _ = built.simulation.evaluate("test")
    assert after < 0.8 * before
    assert built.simulation.batch_size_at(59) == 200


# --------------------------------------------------------------------------- experiment


def test_fit_slope_recovers_a_power_law() -> None:
    sizes = [16, 32, 64, 128, 256]
    fit = experiments.fit_slope(sizes, [3.0 * n**-0.5 for n in sizes])
    assert fit["slope"] == pytest.approx(-0.5) and fit["stderr"] == pytest.approx(0, abs=1e-9)
    assert math.exp(fit["intercept"]) == pytest.approx(3.0)


def test_summarize_takes_the_root_mean_square_over_seeds() -> None:
    rows = [
        {"kind": "init", "particles": 16, "seed": 0, "norm": 3.0, "error": 9.0},
        {"kind": "init", "particles": 16, "seed": 1, "norm": 4.0, "error": 9.0},
        {"kind": "low_temperature", "particles": 16, "seed": 0, "norm": 9.0, "error": 2.0},
    ]
    summary = experiments.summarize(rows)
    assert summary["init"][16] == (pytest.approx(math.sqrt(12.5)), 2)
    assert summary["low_temperature"][16] == (2.0, 1)


def cli() -> typer.Typer:
    app = typer.Typer()
    experiments.register_command(app)
    app.command("other")(lambda: None)  # keep "rotskoff" a sub-command
    return app


def test_quick_experiment_writes_tables_and_plots(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli(),
        ["rotskoff", "scaling", "--out", str(tmp_path), "--sizes", "16,32", "--seeds", "1",
         "--init-seeds", "2", "--steps", "3", "--condition", "low_temperature"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("scaling.csv", "particles.csv", "slice.csv", "results.md", "README.md",
                 "scaling.png", "particles.png", "slice.png", "run_info.json"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "scaling.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["kind"], r["particles"]) for r in rows] == [
        ("init", "16"), ("init", "16"), ("init", "32"), ("init", "32"),
        ("low_temperature", "16"), ("low_temperature", "32"),
        ("low_temperature_twice_as_long", "32"),
    ]  # fmt: skip
    assert rows[-2]["steps"] == "3" and rows[-1]["steps"] == "6"
    results = (tmp_path / "results.md").read_text()
    assert "ξ = 1/2 initially" in results and "| 16 |" in results
    assert "* Training length: n = 32 (low_temperature, seed 0)" in results
    readme = (tmp_path / "README.md").read_text()
    assert "3 steps of Δt = 1" in readme
    # the figure's reading is generated from the rows (a rebuild loses no text)
    assert '## Which "error" the paper\'s figure shows' in readme
    assert "over n = 16…32" in readme and "| low temperature | " in readme


def test_quick_experiment_resumes_from_its_journal(tmp_path: Path) -> None:
    arguments = ["rotskoff", "scaling", "--out", str(tmp_path), "--sizes", "16,32", "--seeds", "1",
                 "--init-seeds", "2", "--steps", "3", "--condition", "low_temperature"]  # fmt: skip
    result = CliRunner().invoke(cli(), arguments)
    assert result.exit_code == 0, result.output
    tables = {name: (tmp_path / name).read_bytes() for name in ("scaling.csv", "particles.csv")}
    (tmp_path / "scaling.csv").unlink()
    result = CliRunner().invoke(cli(), [*arguments, "--resume"])
    assert result.exit_code == 0, result.output
    assert "resume: 7 of 7 points already in scaling.points.jsonl, 0 to run" in result.output
    assert "seed=0: error" not in result.output  # nothing trained again
    assert {name: (tmp_path / name).read_bytes() for name in tables} == tables
    result = CliRunner().invoke(cli(), [*arguments[:-1], "finite_temperature", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resume:" not in result.output  # another condition: other points


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit"], "error: unknown experiment 'fit'; use scaling"),
        (["scaling", "--sizes", "16,x"], "error: --sizes must be comma-separated integers"),
        (["scaling", "--steps", "0"], "error: --steps must be a positive integer, got 0"),
        (["scaling", "--condition", "hot"], "error: unknown condition 'hot'"),
        (["scaling", "--seeds", "4", "--init-seeds", "2"], "--init-seeds >= --seeds"),
        (["scaling", "--dim", "0"], "error: --dim must be a positive integer, got 0"),
    ],
)
def test_experiment_errors_are_one_line(arguments: list[str], message: str, tmp_path) -> None:
    result = CliRunner().invoke(cli(), ["rotskoff", *arguments, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_full_scaling_experiment_heals_the_error(tmp_path: Path) -> None:
    """The real run (about 20 min on one CPU core): slopes near the paper's."""
    settings = experiments.Settings(out=tmp_path, log=lambda m: None)
    experiments.run(settings)
    rows = experiments.read_csv(tmp_path / "scaling.csv")
    fits = experiments.slopes(experiments.summarize(rows))
    assert fits["init"]["slope"] == pytest.approx(-0.5, abs=0.15)
    for condition in experiments.CONDITIONS:
        assert fits[condition]["slope"] < -0.4


# --------------------------------------------------------------------------- reproduction


def test_reproduce_quick_writes_the_page_and_the_report(tmp_path: Path) -> None:
    """``particlesim reproduce rotskoff --quick``: the d = 5 slopes with intervals, the JSON."""
    import json

    from particlesim.cli.app import app

    results = tmp_path / "reproductions"
    result = CliRunner().invoke(
        app, ["reproduce", "rotskoff", "--quick", "--results", str(results)]
    )
    assert result.exit_code == 0, result.output
    page = (results / "README.md").read_text()
    assert "## Rotskoff & Vanden-Eijnden (2018), Neural networks as interacting particle" in page
    assert "| d = 5: slope of initialisation: ‖f_n − f_0‖ (f_0 = 0) against n | -0.5 (" in page
    for condition in ("low temperature", "finite temperature"):
        assert f"| d = 5: slope of trained, {condition}: ‖f_n − f‖ against n | -1 (" in page
    assert "| d = 5: slope of trained, low temperature: loss ½‖f_n − f‖² (the figure's" in page
    assert "(n = 16…128, 1 seed) |" in page and "(n = 16…128, 4 seeds) |" in page
    assert "![rotskoff: d5/scaling](rotskoff/d5/scaling.png)" in page
    report = json.loads((results / "rotskoff.json").read_text())
    assert report["quick"] is True and len(report["claims"]) == 4
    assert report["compute_seconds"] > 0  # the trained runs' own seconds
    assert all((results / "rotskoff" / name).is_file() for name in report["figures"])


def scaling_rows(exponent: float, noise: float = 0.0) -> list[dict]:
    """Trained rows with ``error = 2·n^exponent`` (× a deterministic wobble), 2 seeds per n."""
    return [
        {"kind": "low_temperature", "particles": n, "seed": seed, "norm": 1.0,
         "error": 2.0 * n**exponent * (1 + noise * math.sin(3 * i + seed))}
        for i, n in enumerate([16, 32, 64, 128, 256, 512])
        for seed in range(2)
    ]  # fmt: skip


def test_slope_claims_carry_a_confidence_interval_and_a_verdict() -> None:
    from particlesim_rotskoff.reproduction import scaling_claims, slope_interval

    def numbers(claim) -> tuple[float, float, float]:
        text = claim.ours.replace("[", "").replace(",", "").replace("]", "")
        slope, low, high = (float(x) for x in text.split()[:3])
        return slope, low, high

    healed, healed_loss = scaling_claims(scaling_rows(-1.0, noise=0.05), dim=25)
    assert healed.quantity == "d = 25: slope of trained, low temperature: ‖f_n − f‖ against n"
    assert healed.verdict == "reproduced" and healed.paper.startswith("-1 (")
    slope, low, high = numbers(healed)
    assert low < slope < high and low < -1 < high
    # the figure's reading, the loss ½‖f_n − f‖²: every number twice the norm's
    assert healed_loss.quantity == (
        "d = 25: slope of trained, low temperature: loss ½‖f_n − f‖² (the figure's reading) "
        "against n"
    )
    assert numbers(healed_loss) == pytest.approx(
        tuple(2 * x for x in (slope, low, high)), abs=0.011
    )
    assert healed_loss.verdict == "not reproduced" and healed_loss.why.startswith("steeper")
    assert "loss ℓ(f, f_n)" in healed_loss.paper
    # the CLT rate: the norm misses Prop. 2, the loss meets the figure's dashed n^-1
    clt, clt_loss = scaling_claims(scaling_rows(-0.5), dim=5)
    assert clt.verdict == "not reproduced" and clt.why.startswith("shallower than -1")
    assert clt_loss.verdict == "reproduced" and clt_loss.ours.startswith("-1.00")
    wide = scaling_claims(scaling_rows(-0.8, noise=0.9), dim=5)[0]  # -0.81 [-1.01, -0.60]
    assert wide.verdict == "within spread"
    fit = {"slope": -1.0, "stderr": 0.1, "intercept": 0.0}
    low, high = slope_interval(fit, sizes=6)
    assert (high - low) / 2 == pytest.approx(2.776 * 0.1, rel=1e-3)  # t(0.975, 4 d.o.f.)
    assert all(math.isnan(x) for x in slope_interval({**fit, "stderr": math.nan}, sizes=3))
