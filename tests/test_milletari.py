"""Milletari's ESP activation, the 2-D data sets, the scenarios and the experiments."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import pytest
import torch
import typer
from particlesim_milletari import experiments
from particlesim_milletari.activations import ESP, ESP_RELU_GAP, ActivationBeta, ESPPerNeuron
from particlesim_milletari.datasets import Circles, LinearPlane, Moons
from torch.nn import functional as F
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core.model import MLP
from particlesim.errors import OptionError, ParticlesimError
from particlesim.plugins.manager import PluginManager

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


# --------------------------------------------------------------------------- the activation


def test_esp_is_registered_and_is_swish_at_beta_one(registries) -> None:
    assert registries["activation"].get("esp") is ESP
    assert registries["activation"].get("esp_per_neuron") is ESPPerNeuron
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    esp = ESP(size=1).double()
    torch.testing.assert_close(esp(x[:, None])[:, 0], F.silu(x))
    assert isinstance(esp.beta, torch.nn.Parameter) and esp.beta.shape == ()
    assert registries["activation"].entry("esp").plugin == "milletari"
    assert registries["observable"].entry("activation_beta").plugin == "milletari"


def test_esp_docstring_example() -> None:
    import doctest

    import particlesim_milletari.activations as activations_module

    result = doctest.testmod(activations_module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("beta", [1.0, 10.0, 100.0, 1e4, 1e6])
def test_esp_tends_to_relu_as_beta_grows(beta: float) -> None:
    """``sup |a·σ(βa) - max(a, 0)| = W(1/e)/β`` (reached at ``a = -(1 + W(1/e))/β``)."""
    esp = ESP(beta=beta, learnable=False).double()
    x = torch.cat(
        [
            torch.linspace(-5, 5, 100_001, dtype=torch.float64),
            torch.linspace(-20 / beta, 20 / beta, 100_001, dtype=torch.float64),
        ]
    )
    gap = (esp(x) - torch.relu(x)).abs().max().item()
    assert gap <= ESP_RELU_GAP / beta * (1 + 1e-9)
    assert gap == pytest.approx(ESP_RELU_GAP / beta, rel=1e-3)  # the grid hits the maximum
    where = -(1 + ESP_RELU_GAP) / beta
    assert float(esp(torch.tensor(where, dtype=torch.float64))) == pytest.approx(
        -ESP_RELU_GAP / beta, rel=1e-12
    )
    assert pytest.approx(max(u / (1 + math.exp(u)) for u in [1.27846454276])) == ESP_RELU_GAP


def test_esp_gradients_by_gradcheck_and_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for esp in (ESP(size=4, beta=0.7), ESPPerNeuron(size=4, beta=1.3)):
        module = esp.double()
        with torch.no_grad():
            module.beta.add_(0.1 * torch.randn(module.beta.shape, generator=g, dtype=torch.float64))
        beta = module.beta.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: a * torch.sigmoid(b * a), (x, beta))
        assert torch.autograd.gradcheck(module, (x,))
        # ∂θ/∂β = a² σ(βa)(1 - σ(βa)),  ∂θ/∂a = σ(βa)(1 + βa(1 - σ(βa)))
        module.zero_grad()
        out = module(x)
        (grad_x,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
        out.sum().backward()
        s = torch.sigmoid(module.beta.detach() * x.detach())
        expected = (x.detach() ** 2 * s * (1 - s)).sum(0)
        torch.testing.assert_close(
            module.beta.grad, expected if module.per_neuron else expected.sum()
        )
        torch.testing.assert_close(grad_x, s * (1 + module.beta.detach() * x.detach() * (1 - s)))


def test_bad_esp_options_are_clear_errors() -> None:
    with pytest.raises(OptionError, match="beta: must be a finite number > 0, got 0"):
        ESP(beta=0)
    with pytest.raises(OptionError, match="beta: must be a finite number > 0, got inf"):
        ESP(beta=math.inf)
    with pytest.raises(OptionError, match="size: a per-neuron β needs the group size, got None"):
        ESPPerNeuron()


def test_per_neuron_beta_is_a_learnable_group_field_recorded_in_trajectories(
    registries, tiny_data: Path, tmp_path: Path
) -> None:
    system = MLP(sizes=[2, 5, 3, 1], activation="esp_per_neuron").build(
        registries=registries,
        input_size=2,
        num_classes=1,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float32,
    )
    hidden = system.groups["hidden1"]
    assert hidden.has("beta") and hidden.beta is system.activations["hidden1"].beta
    assert hidden.beta.shape == (5,) and "beta" in hidden.learnable_fields()
    names = [name for name, _ in system.named_parameters()]
    assert names.count("groups.hidden1.beta") == 1 and "activations.hidden1.beta" not in names
    assert system.count_parameters() == 2 * 5 + 5 + 5 * 3 + 3 + 3 * 1 + 1 + 5 + 3
    # a training run moves β and records it with the other fields
    scenario = tmp_path / "esp.toml"
    scenario.write_text(
        f"""
[scenario]
seed = 0
device = "cpu"
[data]
name = "idx"
data_dir = "{tiny_data}"
[model]
name = "mlp"
sizes = [0, 6, 0]
activation = "esp_per_neuron"
[integrator]
name = "adam"
lr = 0.05
[run]
steps = 8
batch_size = 16
[[observables]]
name = "activation_beta"
[[writers]]
name = "trajectory"
every = 4
observables = ["activation_beta"]
observables_every = 4
epoch_observables = []
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(scenario), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with h5py.File(out / "trajectory.h5") as file:
        beta = file["particles/hidden1/beta/value"][:]
        mean = file["observables/activation_beta/value"][:]
        steps = file["particles/hidden1/beta/step"][:]
    assert beta.shape == (3, 6) and list(steps) == [0, 4, 8]
    assert (beta[0] == 1.0).all() and not (beta[-1] == 1.0).all()
    assert mean == pytest.approx(beta.mean(axis=1), rel=1e-6)


def test_esp_works_in_kernel_interactions(registries) -> None:
    """The activation registry serves every model: here Lange's kernel particle network."""
    model = registries["model"].get("particle_network")(sizes=[6, 5, 3], activation="esp", dim=2)
    system = model.build(
        registries=registries,
        input_size=6,
        num_classes=3,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    x = torch.randn(4, 6, dtype=torch.float64)
    system(x).pow(2).sum().backward()
    beta = system.activations["hidden1"].beta
    assert beta.grad is not None and beta.grad.abs() > 0


def test_activation_beta_without_esp_is_a_clear_error(registries) -> None:
    system = MLP(sizes=[2, 3, 1], activation="relu").build(
        registries=registries,
        input_size=2,
        num_classes=1,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float32,
    )

    class Holder:
        pass

    holder = Holder()
    holder.system = system
    with pytest.raises(
        OptionError, match="group None has no activation with a β; groups with one: none"
    ):
        ActivationBeta().compute(holder)
    with pytest.raises(OptionError, match="group 'hidden1' has no activation"):
        ActivationBeta(group="hidden1").compute(holder)


# --------------------------------------------------------------------------- data sets


def test_linear_plane_is_separable_with_its_margin_and_reproducible() -> None:
    data = LinearPlane(n_train=300, n_test=100, margin=0.1).load(seed=5, log=lambda m: None)
    assert data.train_x.shape == (300, 2) and data.test_x.shape == (100, 2)
    assert data.num_classes == 1 and data.loss == "binary_cross_entropy"
    assert set(data.train_y.tolist()) == {0.0, 1.0}
    dataset = LinearPlane(margin=0.1)
    dataset.load(seed=0, log=lambda m: None)
    projection = data.train_x.double() @ dataset.normal
    assert projection.abs().min() >= 0.1 - 1e-6
    assert ((projection > 0).float() == data.train_y).all()  # the data seed fixed the line
    again = LinearPlane(n_train=300, n_test=100).load(seed=9, log=lambda m: None)
    torch.testing.assert_close(again.train_x, data.train_x)
    other = LinearPlane(n_train=300, n_test=100, data_seed=-1).load(seed=9, log=lambda m: None)
    assert not torch.equal(other.train_x, data.train_x)


def test_moons_and_circles_have_their_shapes() -> None:
    moons = Moons(n_train=400, noise=0.0).load(seed=0, log=lambda m: None)
    upper = moons.train_x[moons.train_y == 0].double() + torch.tensor(
        [0.5, 0.25], dtype=torch.float64
    )
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert moons.train_y.mean() == 0.5
    # not linearly separable: the best least-squares linear classifier makes errors
    features = torch.cat([moons.train_x.double(), torch.ones(400, 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(features, moons.train_y.double() * 2 - 1).solution
    assert ((features @ w > 0).double() == moons.train_y.double()).double().mean() < 0.95
    circles = Circles(n_train=200, noise=0.0, factor=0.3).load(seed=0, log=lambda m: None)
    radius = circles.train_x.norm(dim=1)
    torch.testing.assert_close(radius, torch.where(circles.train_y > 0, 0.3, 1.0))
    messages = []
    Moons().load(seed=0, log=messages.append)
    assert messages == [
        "data: moons_2d (synthetic: 500 train / 0 val / 500 test points, noise 0.1, data_seed 0)"
    ]


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        (Moons, {"n_train": 0}, "n_train: must be an integer >= 1, got 0"),
        (Moons, {"n_test": -1}, "n_test: must be an integer >= 0, got -1"),
        (Moons, {"noise": -0.1}, "noise: must be a finite number >= 0, got -0.1"),
        (Moons, {"data_seed": -2}, "data_seed: must be an integer >= 0 (or -1), got -2"),
        (LinearPlane, {"margin": 0.5}, "margin: must be in [0, 0.5), got 0.5"),
        (Circles, {"factor": 1.0}, "factor: must be in (0, 1), got 1.0"),
    ],
)
def test_bad_data_options_are_clear_errors(factory, options, message) -> None:
    with pytest.raises(OptionError) as info:
        factory(**options)
    assert str(info.value) == message


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", ["milletari_toy.toml", "milletari_mnist.toml"])
def test_scenarios_validate(name: str) -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "scenarios" / name)])
    assert result.exit_code == 0, result.output


def test_toy_scenario_runs_and_records_indices(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "run",
            str(ROOT / "scenarios" / "milletari_toy.toml"),
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "run.epochs=50",
            "--set",
            "data.n_train=100",
            "--set",
            "run.batch_size=100",
            "--set",
            "model.sizes=[2, 8, 2, 1]",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 25, 50]
    assert rows[-1]["hessian_energy"] < rows[0]["hessian_energy"]
    for row in rows:
        assert (row["hessian_alpha"] * 47) == pytest.approx(round(row["hessian_alpha"] * 47))
        assert row["hessian_min_eigenvalue"] <= row["hessian_max_eigenvalue"]
    with h5py.File(out / "trajectory.h5") as file:
        assert file["observables/hessian_spectrum/value"].shape == (3, 47)


# --------------------------------------------------------------------------- experiments


def test_toy_and_mnist_experiments_write_tables_and_plots(tiny_data: Path, tmp_path: Path) -> None:
    settings = experiments.Settings(
        out=tmp_path / "results",
        datasets=("linear_2d", "moons_2d"),
        architectures=((2, 4, 1),),
        activations=("esp", "relu"),
        seeds=2,
        toy_epochs=20,
        hessian_every=10,
        toy_overrides=["data.n_train=60", "data.n_test=30", "run.batch_size=60"],
        mnist_seeds=1,
        mnist_epochs=1,
        mnist_hessian_at_start=True,  # the "init" columns too (off by default)
        mnist_overrides=[
            'data.name="idx"',
            f'data.data_dir="{tiny_data}"',
            "model.sizes=[0, 6, 0]",
            "run.batch_size=32",
        ],
        log=lambda message: None,
    )
    written = experiments.run("all", settings)
    for name in (
        "toy_curves.csv",
        "toy_spectra.csv",
        "mnist.csv",
        "results.md",
        "toy_energy.png",
        "toy_alpha.png",
        "toy_gamma.png",
        "toy_spectrum.png",
        "mnist_accuracy.png",
        "run_info.json",
    ):
        assert written[name].exists() and written[name].stat().st_size > 0, name
    curves = experiments.read_csv(settings.out / "toy_curves.csv")
    assert len(curves) == 2 * 2 * 2 * 3  # data sets × activations × seeds × frames (0, 10, 20)
    esp = [r for r in curves if r["activation"] == "esp"]
    assert all(r["parameters"] == 2 * 4 + 4 + 4 + 1 + 1 for r in esp) and all(
        r["beta"] > 0 for r in esp
    )
    with (settings.out / "toy_spectra.csv").open() as handle:
        spectra = list(csv.DictReader(handle))
    final = [
        float(r["eigenvalue"])
        for r in spectra
        if r["moment"] == "final"
        and r["activation"] == "esp"
        and r["seed"] == "0"
        and r["dataset"] == "moons_2d"
    ]
    last = next(
        r
        for r in reversed(curves)
        if (r["activation"], r["seed"], r["dataset"]) == ("esp", 0, "moons_2d")
    )
    assert experiments.spectrum_indices(final, 1e-6) == pytest.approx(
        (last["alpha_1e-06"], last["gamma_1e-06"])
    )
    mnist = experiments.read_csv(settings.out / "mnist.csv")
    assert [r["epoch"] for r in mnist if r["activation"] == "esp"] == [0.0, 1.0]
    assert all(0 <= r["hessian_alpha"] <= 1 for r in mnist)
    text = (settings.out / "results.md").read_text()
    assert "ESP is the less singular" in text and "| ESP (β per layer) |" in text
    assert "## MNIST (16-6-3 MLP, 1 epochs of Adam)" in text
    info = json.loads((settings.out / "run_info.json").read_text())
    assert info["toy"]["epochs"] == 20 and info["mnist"]["epochs"] == 1
    assert info["mnist"]["lanczos_probes"] == 8 and info["mnist"]["hessian_at_start"] is True
    assert "(30 Lanczos steps, 8 Rademacher probes)" in text


def milletari_cli() -> typer.Typer:
    """A CLI holding the plugin's command, as ``particlesim`` adds it at start-up."""
    cli = typer.Typer()
    experiments.register_command(cli)
    cli.command("noop")(lambda: None)  # two commands: the milletari command goes by its name
    return cli


def test_experiment_command_errors_are_one_line(tmp_path: Path) -> None:
    cli = milletari_cli()
    result = runner.invoke(cli, ["milletari", "bogus", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: unknown experiment 'bogus'; use toy, mnist, all or report" in result.stderr
    result = runner.invoke(cli, ["milletari", "toy", "--out", str(tmp_path), "--epochs", "0"])
    assert result.exit_code == 2
    assert "error: --epochs must be a positive integer, got 0" in result.stderr
    result = runner.invoke(cli, ["milletari", "toy", "--out", str(tmp_path), "--seeds", "0"])
    assert result.exit_code == 2
    assert "error: --seeds must be a positive integer" in result.stderr
    settings = experiments.Settings(out=tmp_path, activations=("softsign",), log=lambda m: None)
    with pytest.raises(ParticlesimError, match="unknown activation 'softsign'; known: esp, "):
        experiments.run("toy", settings)


def test_experiment_command_runs_a_short_toy(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = runner.invoke(
        milletari_cli(),
        ["milletari", "toy", "--out", str(out), "--epochs", "25", "--seeds", "1",
         "--set", "data.n_train=40", "--set", "data.n_test=20", "--set", "run.batch_size=40",
         "--activation", "esp", "--activation", "tanh"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "done in" in result.stderr
    curves = experiments.read_csv(out / "toy_curves.csv")
    assert {r["activation"] for r in curves} == {"esp", "tanh"}
    assert {r["architecture"] for r in curves} == {"2-10-1", "2-8-2-1"}
    assert "ESP is the less singular" in (out / "results.md").read_text()


@pytest.mark.slow
def test_full_reproduction(tmp_path: Path) -> None:
    """The whole reproduction (about 20 minutes on one idle CPU thread)."""
    settings = experiments.Settings(out=tmp_path / "results", log=lambda message: None)
    experiments.run("all", settings)
    mnist = experiments.read_csv(settings.out / "mnist.csv")
    final = [r for r in mnist if r["epoch"] == settings.mnist_epochs]
    for activation in ("esp", "relu"):
        accuracies = [r["test_accuracy"] for r in final if r["activation"] == activation]
        assert min(accuracies) > 0.97
    curves = experiments.read_csv(settings.out / "toy_curves.csv")
    linear = [
        r
        for r in curves
        if r["dataset"] == "linear_2d"
        and r["activation"] == "esp"
        and r["epoch"] == settings.toy_epochs
    ]
    assert all(r["test_accuracy"] > 0.98 for r in linear)


# --------------------------------------------------------------------------- reproduction


def test_reproduce_quick_writes_the_page_and_the_report(tmp_path: Path) -> None:
    """``particlesim reproduce milletari --quick``: every network's claims, figures, the JSON."""
    results = tmp_path / "reproductions"
    result = runner.invoke(app, ["reproduce", "milletari", "--quick", "--results", str(results)])
    assert result.exit_code == 0, result.output
    page = (results / "README.md").read_text()
    assert "## Milletari, Chotibut & Trevisanutto (2018), Expected Signal Propagation" in page
    slides = "non-linear (two moons) 2-8-2-1: γ at energy 0.05, ESP (β per layer)"
    assert f"| {slides} | least singular: the smallest γ (slides' figure) |" in page
    for network in ("linear 2-10-1", "linear 2-8-2-1", "non-linear (two moons) 2-10-1"):
        for activation in ("tanh", "ReLU", "swish"):
            assert f"| {network}: γ at energy 0.05, {activation} | more singular than ESP" in page
    assert "| MNIST 784-32-10: γ after 1 epoch, swish | more singular than ESP" in page
    assert "| MNIST 784-32-10: test accuracy after 1 epoch, ESP against ReLU |" in page
    assert "![milletari: toy_gamma](milletari/toy_gamma.png)" in page
    report = json.loads((results / "milletari.json").read_text())
    assert report["quick"] is True and report["paper"] == "milletari"
    # 4 cells × 4 activations + 4 speeds + stuck runs; MNIST: 4 activations + accuracy
    assert len(report["claims"]) == 16 + 4 + 1 + 5
    assert all((results / "milletari" / name).is_file() for name in report["figures"])
    assert len(report["figures"]) == 5
    assert report["compute_seconds"] > 0  # the runs' own seconds, from run_info.json


def curve(activation: str, seed: int, gamma: float, *, reaches: bool = True) -> list[dict]:
    """Two recorded points of one 2-D run: the start, and epoch 25 at energy 0.01 (or 0.3)."""
    base = {"dataset": "moons_2d", "architecture": "2-8-2-1", "activation": activation,
            "seed": seed, "test_accuracy": 1.0, "beta": "", "alpha_1e-06": 0.2,
            "gamma_1e-06": 0.0}  # fmt: skip
    start = {**base, "epoch": 0, "energy": 0.7, "alpha_0.001": 0.4, "gamma_0.001": 0.0}
    end = {**base, "epoch": 25, "energy": 0.01 if reaches else 0.3, "alpha_0.001": 0.1,
           "gamma_0.001": gamma}  # fmt: skip
    return [start, end]


def test_less_singular_claims_compare_gamma_at_equal_energy() -> None:
    from particlesim_milletari.reproduction import toy_claims

    rows = [
        *curve("esp", 0, 0.20), *curve("esp", 1, 0.22), *curve("esp", 2, 0.21),
        *curve("tanh", 0, 0.10), *curve("tanh", 1, 0.11), *curve("tanh", 2, 0.12),  # below
        *curve("relu", 0, 0.60), *curve("relu", 1, 0.62),
        *curve("relu", 2, 0.0, reaches=False),  # one seed never reaches energy 0.05
        *curve("swish", 0, 0.17), *curve("swish", 1, 0.23), *curve("swish", 2, 0.20),
    ]  # fmt: skip
    claims = {c.quantity.split(", ")[-1]: c for c in toy_claims(rows)[:4]}
    prefix = "non-linear (two moons) 2-8-2-1: γ at energy 0.05"
    assert all(c.quantity.startswith(prefix) for c in claims.values())
    esp = claims["ESP (β per layer)"]
    assert esp.verdict == "not reproduced" and esp.paper.endswith("(slides' figure)")
    assert esp.why.startswith("against the smallest other, tanh: difference +0.1, 95% interval")
    assert claims["tanh"].verdict == "not reproduced"
    assert claims["ReLU"].verdict == "reproduced"
    assert claims["ReLU"].ours == "γ 0.610 ± 0.014, α 0.100 ± 0.000 (2 of 3 seeds reach it)"
    assert claims["swish"].verdict == "within spread"  # 0.200 against 0.210: seeds can't tell
    assert claims["swish"].why.endswith("contains 0")
    better = [*curve("esp", 0, 0.05), *curve("esp", 1, 0.06), *curve("esp", 2, 0.07),
              *curve("tanh", 0, 0.10), *curve("tanh", 1, 0.11)]  # fmt: skip
    esp, tanh = toy_claims(better)[:2]
    assert (esp.verdict, tanh.verdict) == ("reproduced", "reproduced")
    assert esp.why.startswith("against the smallest other, tanh: difference -0.045")
    alone = toy_claims([*curve("esp", 0, 0.05), *curve("tanh", 0, 0.10)])
    assert alone[0].verdict == "not measured"  # one seed: no spread to judge the order by


def test_a_resumed_toy_grid_counts_the_seconds_of_earlier_calls() -> None:
    before = {"wall_seconds": 1204.2, "epochs": 1500, "hessian_every": 25, "overrides": []}
    now = {**before, "wall_seconds": 2.0}
    assert experiments.toy_run_seconds(before, now, resume=True) == 1206.2
    assert experiments.toy_run_seconds({**before, "run_seconds": 2185.7}, now, True) == 2187.7
    assert experiments.toy_run_seconds({**before, "epochs": 300}, now, True) == 2.0  # other runs
    assert experiments.toy_run_seconds(before, now, resume=False) == 2.0  # all ran again
