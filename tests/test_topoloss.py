"""TopoLoss: the cortical sheet, agreement with the authors' package, the potential in a run."""

from __future__ import annotations

import pytest
import torch
from particlesim_topoloss import TopoLossPotential, sheet_shape, smoothness_loss
from torch import nn
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.core import KernelInteraction, ParticleGroup, System
from particlesim.errors import OptionError, ParticlesimError
from particlesim.kernels import GaussianKernel


@pytest.mark.parametrize(
    ("units", "shape"),
    [(100, (10, 10)), (12, (3, 4)), (7, (1, 7)), (256, (16, 16)), (10, (2, 5)), (1, (1, 1))],
)
def test_sheet_shape_is_the_largest_divisor_below_the_root(units: int, shape) -> None:
    assert sheet_shape(units) == shape


def test_a_smooth_sheet_costs_nothing_and_a_rough_one_does() -> None:
    rows = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    smooth = torch.stack([torch.ones(4, 4), 1 + 0.01 * rows], -1).reshape(16, 2)
    assert float(smoothness_loss(smooth, 2.0, 2.0)) < 1e-4
    rough = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(smoothness_loss(rough, 2.0, 2.0)) > 0.1


CASES = [
    (64, 9, 2.0, 2.0, 1.0),
    (100, 17, 3.0, 3.0, 0.3),
    (12, 5, 1.5, 2.0, 1.0),
    (30, 8, 2.5, 2.5, 2.0),  # 5 × 6 sheet, a non-integer factor
    (49, 4, 3.5, 1.7, 1.0),
]


@pytest.mark.parametrize(("units", "inputs", "factor_h", "factor_w", "tau"), CASES)
def test_value_and_gradient_agree_with_the_authors_package_on_linear_and_conv_weights(
    units: int, inputs: int, factor_h: float, factor_w: float, tau: float
) -> None:
    topoloss = pytest.importorskip("topoloss")  # the test extra installs topoloss==0.0.2
    torch.manual_seed(units)
    for layer in (nn.Linear(inputs, units), nn.Conv2d(3, units, kernel_size=2)):
        model = nn.Sequential(layer)
        reference = topoloss.TopoLoss(
            losses=[
                topoloss.LaplacianPyramid(
                    layer_name="0", factor_h=factor_h, factor_w=factor_w, scale=tau
                )
            ]
        ).compute(model)
        (want,) = torch.autograd.grad(reference, layer.weight)
        ours = tau * smoothness_loss(layer.weight, factor_h, factor_w)
        (got,) = torch.autograd.grad(ours, layer.weight)
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def particle_system() -> System:
    g = torch.Generator().manual_seed(0)
    groups = [
        ParticleGroup.create("input", 20, 2, generator=g),
        ParticleGroup.create("hidden", 16, 2, generator=g, bias=True),
        ParticleGroup.create("output", 6, 2, generator=g, bias=True),
    ]
    kernel = GaussianKernel()
    return System(
        groups,
        [
            KernelInteraction(groups[0], groups[1], kernel=kernel),
            KernelInteraction(groups[1], groups[2], kernel=kernel),
        ],
    )


def test_the_potential_averages_tau_times_each_layer_and_moves_particles() -> None:
    system = particle_system()
    potential = TopoLossPotential(tau=0.5, factor=2.0)
    weights = [
        i.effective_weight(system.groups[i.source], system.groups[i.target])
        for i in system.interactions
    ]
    expected = sum(0.5 * smoothness_loss(w, 2.0, 2.0) for w in weights) / 2
    energy = potential.energy(system)
    torch.testing.assert_close(energy, expected)
    energy.backward()
    assert float(system.groups["hidden"].position.grad.abs().sum()) > 0  # through W = q k(r)
    only = TopoLossPotential(factor=2.0, interactions=["input->hidden"]).energy(system)
    torch.testing.assert_close(only, smoothness_loss(weights[0], 2.0, 2.0).detach())


def test_bad_options_and_layers_too_small_for_the_factor_are_one_line() -> None:
    with pytest.raises(OptionError, match=r"tau: must be a finite number >= 0, got -1\.0"):
        TopoLossPotential(tau=-1.0)
    with pytest.raises(OptionError, match=r"factor: must be a finite number > 0, got 0\.0"):
        TopoLossPotential(factor=0.0)
    system = particle_system()  # output: 6 units, a 2 × 3 sheet
    with pytest.raises(ParticlesimError) as info:
        TopoLossPotential(factor=2.5).energy(system)
    assert str(info.value) == (
        "potential 'topoloss': interaction hidden -> output has 6 outputs, a 2 × 3 sheet; "
        "shrinking it by factor_h = 2.5, factor_w = 2.5 leaves 0 × 1 cells (use factors up "
        "to 2 and 3)"
    )
    with pytest.raises(ParticlesimError, match="no interaction 'a -> b'; interactions: input"):
        TopoLossPotential(interactions=["a -> b"]).energy(system)


def test_a_scenario_trains_with_the_potential(tiny_scenario, tmp_path) -> None:
    """A layer too small for the factor is refused before training; a chosen layer trains."""
    text = tiny_scenario.read_text().replace("sizes = [0, 8, 0]", "sizes = [0, 16, 0]")
    text += '\n[[potentials]]\nname = "topoloss"\ntau = 1.0\nfactor = 2.0\n'
    tiny_scenario.write_text(text)
    args = ["run", str(tiny_scenario), "--set", "run.steps=4", "--out", str(tmp_path / "x")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interaction hidden1 -> output has 3 outputs" in errors[0]
    assert not (tmp_path / "x").exists()  # nothing was written
    tiny_scenario.write_text(
        text + 'interactions = ["input -> hidden1"]\n'
        '\n[[writers]]\nname = "metrics"\nevery = 1\nobservables = ["potential/topoloss"]\n'
    )
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app, ["run", str(tiny_scenario), "--set", "run.steps=4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert rows and '"potential/topoloss": ' in rows[-1]


def test_the_experiment_command_writes_its_table(tmp_path) -> None:
    """A short grid through the harness: one row per run, pruning measured afresh."""
    from particlesim_topoloss import experiments

    from particlesim.experiments import read_csv

    experiments.main(
        ["--epochs", "0.02", "--seeds", "0", "--taus", "0", "5", "--out", str(tmp_path)]
    )
    rows = read_csv(tmp_path / "runs.csv")
    assert [row["tau"] for row in rows] == [0.0, 5.0]
    for row in rows:
        assert 0 < row["accuracy"] <= 1 and 0 <= row["pruned_accuracy"] <= 1
        assert row["pruned_drop"] == pytest.approx(row["accuracy"] - row["pruned_accuracy"])
        assert row["pruned_drop"] != 0  # the pruned network was measured, not the cache
    assert rows[1]["smoothness"] > rows[0]["smoothness"]  # the loss smooths the sheets
    assert "| τ | test accuracy |" in (tmp_path / "README.md").read_text()


def test_particlesim_reproduce_topoloss_quick(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from particlesim.cli.app import app

    result = CliRunner().invoke(
        app, ["reproduce", "topoloss", "--quick", "--results", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "README.md").read_text()
    assert "## TopoLoss (Deb et al. 2025)" in page
    assert "| sheet smoothness (1 − E), τ = 5 vs 0 | smoother with the loss |" in page
    report = json.loads((tmp_path / "topoloss.json").read_text())
    assert len(report["claims"]) == 3  # three claims for τ = 5 (the quick grid: τ 0 and 5)
