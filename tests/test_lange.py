"""The Lange particle-network plugin: initialisation rules, paths, scenarios."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from particlesim_lange import ParticleNetwork, channel_widths, default_spread
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.errors import OptionError
from particlesim.plugins.manager import PluginManager

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


def build(registries, **options):
    model = ParticleNetwork(**{"sizes": [20, 12, 6, 4], **options})
    return model.build(
        registries=registries,
        input_size=model.sizes[0],
        num_classes=model.sizes[-1],
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )


@pytest.mark.parametrize("dim", [1, 3, 8, 16])
def test_default_spread_keeps_mean_kernel_constant(dim: int) -> None:
    s = default_spread(dim)
    assert (1 + 4 * s * s) ** (-dim / 2) == pytest.approx(5**-1.5)  # E[k] analytically
    g = torch.Generator().manual_seed(dim)
    a = torch.randn(4000, dim, generator=g, dtype=torch.float64) * s
    b = torch.randn(4000, dim, generator=g, dtype=torch.float64) * s
    mean_k = torch.exp(-((a - b) ** 2).sum(1)).mean()
    assert float(mean_k) == pytest.approx(5**-1.5, rel=0.1)  # and by sampling
    assert default_spread(3, width=2.0) == pytest.approx(2.0)


def test_normalized_charges_give_unit_norm_rows(registries) -> None:
    system = build(registries, sizes=[200, 300, 4])
    weight = system.effective_weights()["input->hidden1"]
    # ||W_h|| = |ε_h| with ε ~ N(0, 1): mean square 1
    assert float(weight.detach().pow(2).sum(1).mean()) == pytest.approx(1.0, abs=0.2)
    normal = build(registries, sizes=[200, 300, 4], charge_init="normal")
    charge = normal.groups["hidden1"].charge
    assert float(charge.detach().pow(2).mean()) == pytest.approx(1 / 200, rel=0.2)


def test_structure_and_parameter_count(registries) -> None:
    system = build(registries, dim=3)
    assert list(system.groups) == ["input", "hidden1", "hidden2", "output"]
    assert system.input_scaling and system.groups["input"].has("charge")
    assert not system.groups["input"].has("bias") and system.groups["output"].has("bias")
    # positions (N·D) + charges (N) for every group, biases for non-input groups
    expected = sum(n * 3 + n for n in (20, 12, 6, 4)) + (12 + 6 + 4)
    assert system.count_parameters() == expected
    no_scaling = build(registries, input_scaling=False, bias=False)
    assert not no_scaling.groups["input"].has("charge")
    assert no_scaling.count_parameters() == 20 * 3 + sum(n * 4 for n in (12, 6, 4))


def test_multi_charge_widths(registries) -> None:
    assert channel_widths(1.0, 1) == [1.0]
    assert channel_widths(1.0, 2) == pytest.approx([2**-0.5, 2**0.5])
    system = build(registries, charge_channels=3)
    kernel = system.interactions[0].kernel
    assert kernel.channels == 3 and system.groups["hidden1"].charge.shape == (12, 3)
    assert kernel.width.tolist() == pytest.approx([0.5, 1.0, 2.0])


def test_chunked_network_equals_reference(registries) -> None:
    reference = build(registries, backend="reference", learnable_width=True)
    chunked = build(registries, backend="chunked", learnable_width=True)
    chunked.load_state_dict(reference.state_dict())
    x = torch.rand(7, 20, dtype=torch.float64)
    out_ref, out_chunk = reference(x), chunked(x)
    assert torch.allclose(out_ref, out_chunk, atol=1e-12, rtol=0)
    out_ref.square().sum().backward()
    out_chunk.square().sum().backward()
    for (name, p_ref), p_chunk in zip(
        reference.named_parameters(), chunked.parameters(), strict=True
    ):
        assert torch.allclose(p_ref.grad, p_chunk.grad, atol=1e-10, rtol=0), name


def test_cutoff_option_truncates_every_kernel(registries, monkeypatch) -> None:
    """``cutoff`` reaches every kernel; the chunked network (neighbour lists) equals the
    reference network with the same truncated kernels, values and gradients."""
    from particlesim.kernels import ops

    monkeypatch.setattr(ops, "CHUNKED_CUTOFF_TILES", (4, 4))  # tiny layers: blocks to skip
    options = {"cutoff": 1.2, "position_spread": 1.5, "learnable_width": True}
    reference = build(registries, backend="reference", **options)
    chunked = build(registries, backend="chunked", **options)
    chunked.load_state_dict(reference.state_dict())
    assert all(i.kernel.cutoff == 1.2 for i in chunked.interactions)
    x = torch.rand(7, 20, dtype=torch.float64)
    out_ref, out_chunk = reference(x), chunked(x)
    torch.testing.assert_close(out_chunk, out_ref, atol=1e-12, rtol=0)
    out_ref.square().sum().backward()
    out_chunk.square().sum().backward()
    for (name, p_ref), p_chunk in zip(
        reference.named_parameters(), chunked.parameters(), strict=True
    ):
        torch.testing.assert_close(p_chunk.grad, p_ref.grad, atol=1e-10, rtol=0, msg=name)
    assert all(i.neighbours.builds == 1 for i in chunked.interactions)
    weight = reference.effective_weights()["input->hidden1"].detach()
    assert (weight == 0).any()  # some pairs lie beyond the cutoff
    with pytest.raises(OptionError, match="cutoff: must be a positive distance, got -1"):
        ParticleNetwork(sizes=[4, 2], cutoff=-1.0)


@pytest.mark.parametrize("name", ["mnist_particle.toml", "mnist_mlp.toml"])
def test_shipped_scenarios_validate(name: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(ROOT / "scenarios" / name)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_mnist_particle_scenario_reaches_95_percent_in_5_minutes(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "scenarios" / "mnist_particle.toml"),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
    )
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95
    assert elapsed < 300
    assert math.isclose(summary["epochs"], 10)


def test_particlesim_reproduce_lange_quick(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from particlesim.cli.app import app

    result = CliRunner().invoke(app, ["reproduce", "lange", "--quick", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "README.md").read_text()
    assert "## Lange (2015): particle networks on MNIST and Fashion-MNIST" in page
    assert "| MNIST: PN vs MLP of ≈ equal parameters | PN learns more from its parameters |" in page
    claims = json.loads((tmp_path / "lange.json").read_text())["claims"]
    assert [c["verdict"] for c in claims[2:]] == ["not measured", "not measured"]  # quick: MNIST
