"""Fused Triton path against the reference path: forward and every gradient.

Without CUDA the kernels run through Triton's interpreter (NumPy on CPU tensors), which must
be requested before Triton decorates the kernels; the fused module builds them lazily on its
first call, so setting ``TRITON_INTERPRET`` at the top of this file is early enough (no other
module compiles them). Small tiles (16) and small ragged shapes keep the interpreter quick.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys

import pytest

from particlesim.kernels import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    kernel_matmul,
    kernel_matmul_reference,
)
from particlesim.kernels.base import RadialKernel

pytest.importorskip("triton", reason="triton is not installed: the fused path cannot run")

from particlesim.kernels.fused import fused_available, kernel_matmul_fused

if not fused_available():
    pytest.skip(
        "fused path unavailable: no CUDA and TRITON_INTERPRET is off", allow_module_level=True
    )

DEVICE = "cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu"
BLOCKS = (16, 16, 16)
KERNELS = (GaussianKernel, CauchyKernel, ExponentialKernel)


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol: float = 1e-4) -> None:
    """Max-abs error within ``rtol`` of the expected tensor's scale (plus a tiny floor)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale + 1e-6, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _problem(
    kernel_cls: type[RadialKernel],
    B: int,
    N: int,
    M: int,
    D: int,
    C: int,
    *,
    with_charge: bool = True,
    with_mod: bool = False,
    seed: int = 0,
) -> tuple[RadialKernel, dict[str, torch.Tensor | None]]:
    """A learnable-width kernel and leaf tensors; one source coincides with one target."""
    gen = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(DEVICE).requires_grad_(True)

    widths = 1.3 if C == 1 else [1.3, 0.6, 2.0][:C]
    kernel = kernel_cls(width=widths, learnable_width=True).to(DEVICE)
    tensors: dict[str, torch.Tensor | None] = {
        "x": leaf(B, N),
        "target_pos": leaf(M, D),
        "source_pos": leaf(N, D),
        "charge": (leaf(M) if C == 1 else leaf(M, C)) if with_charge else None,
        "modulation": leaf(M, N) if with_mod else None,
    }
    with torch.no_grad():  # a coincident pair: u = 0 (exponential's masked root)
        tensors["source_pos"][0] = tensors["target_pos"][0]
    return kernel, tensors


def _compare(kernel: RadialKernel, tensors: dict[str, torch.Tensor | None]) -> None:
    """Fused forward and all gradients equal the reference path's within float32 tolerance."""
    args = [tensors[k] for k in ("x", "target_pos", "source_pos", "charge", "modulation")]
    names = [k for k, t in tensors.items() if t is not None] + ["log_width"]
    leaves = [t for t in args if t is not None] + [kernel.log_width]
    y = kernel_matmul_fused(args[0], kernel, *args[1:], blocks=BLOCKS)
    y_ref = kernel_matmul_reference(args[0], kernel, *args[1:])
    _close(y, y_ref, "y")
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = torch.autograd.grad(y, leaves, grad_y)
    grads_ref = torch.autograd.grad(y_ref, leaves, grad_y)
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        assert g.shape == g_ref.shape, name
        _close(g, g_ref, f"grad {name}")


@pytest.mark.parametrize("kernel_cls", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("D", [1, 2, 3, 7])
@pytest.mark.parametrize("C", [1, 2])
def test_matches_reference_ragged(kernel_cls: type[RadialKernel], D: int, C: int) -> None:
    """B=5, N=37, M=19: no dimension is a tile multiple; D padded to a power of two."""
    kernel, tensors = _problem(kernel_cls, 5, 37, 19, D, C, seed=D + 10 * C)
    _compare(kernel, tensors)


@pytest.mark.parametrize("kernel_cls", KERNELS, ids=lambda k: k.name)
def test_several_batch_tiles_and_three_channels(kernel_cls: type[RadialKernel]) -> None:
    """B=21 spans two batch tiles (dW's loop over B); C=3 channels."""
    kernel, tensors = _problem(kernel_cls, 21, 18, 33, 2, 3)
    _compare(kernel, tensors)


@pytest.mark.parametrize("with_charge", [True, False], ids=["charge", "no-charge"])
@pytest.mark.parametrize("C", [1, 2])
def test_modulated_and_chargeless(with_charge: bool, C: int) -> None:
    """Modulated interaction ``W = w ⊙ Σ_c q_c k_c``, with and without charges."""
    kernel, tensors = _problem(
        CauchyKernel, 6, 29, 17, 3, C, with_charge=with_charge, with_mod=True
    )
    _compare(kernel, tensors)


def test_fixed_width_and_partial_grads() -> None:
    """A buffer width and inputs that need no gradient are skipped without error."""
    kernel = GaussianKernel(width=0.8).to(DEVICE)
    x = torch.randn(4, 20, device=DEVICE)
    r_h = torch.randn(9, 2, device=DEVICE, requires_grad=True)
    r_j = torch.randn(20, 2, device=DEVICE)
    q = torch.randn(9, device=DEVICE)
    y = kernel_matmul_fused(x, kernel, r_h, r_j, q, blocks=BLOCKS)
    y_ref = kernel_matmul_reference(x, kernel, r_h, r_j, q)
    _close(y, y_ref, "y")
    (g,) = torch.autograd.grad(y.square().sum(), [r_h])
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), [r_h])
    _close(g, g_ref, "grad target_pos")


def test_dispatcher_fused_mode() -> None:
    """``kernel_matmul(mode="fused")`` routes to the fused path (default tiles)."""
    kernel, tensors = _problem(ExponentialKernel, 3, 11, 7, 2, 1)
    args = [tensors[k] for k in ("x", "target_pos", "source_pos", "charge")]
    y = kernel_matmul(args[0], kernel, *args[1:], mode="fused")
    _close(y, kernel_matmul_reference(args[0], kernel, *args[1:]), "y")


class _DotKernel(Kernel):
    """A non-radial kernel, which the fused path must refuse."""

    name = "dot"

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return target @ source.T


class _CustomRadial(GaussianKernel):
    """A subclass may change the profile, so it is not fused either."""

    name = "custom"


@pytest.mark.parametrize("kernel", [_DotKernel(), _CustomRadial()], ids=["dot", "subclass"])
def test_unsupported_kernel(kernel: Kernel) -> None:
    x, r_h, r_j = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(NotImplementedError, match=r"chunked") as info:
        kernel_matmul_fused(x, kernel, r_h, r_j)
    assert type(kernel).__name__ in str(info.value)


def test_input_errors_name_the_argument() -> None:
    kernel = GaussianKernel()
    x, r_h, r_j = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match="source_pos"):
        kernel_matmul_fused(x, kernel, r_h, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"charge.*float32"):
        kernel_matmul_fused(x, kernel, r_h, r_j, torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be float32"):
        kernel_matmul_fused(x.double(), kernel, r_h.double(), r_j.double())
    with pytest.raises(ValueError, match="blocks"):
        kernel_matmul_fused(x, kernel, r_h, r_j, blocks=(16, 24, 16))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="source_pos is on"):
            kernel_matmul_fused(x, kernel, r_h, r_j.cuda())


def test_import_does_not_need_triton() -> None:
    """``import particlesim.kernels`` (and the fused module) never imports Triton."""
    script = (
        "import sys, particlesim.kernels, particlesim.kernels.fused\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel_cls", KERNELS, ids=lambda k: k.name)
def test_cuda_default_tiles_larger(kernel_cls: type[RadialKernel]) -> None:
    """Compiled kernels at default tile sizes on a shape spanning many tiles."""
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set: compiled CUDA kernels are not used")
    kernel, tensors = _problem(kernel_cls, 70, 300, 130, 3, 2, with_mod=True)
    args = [tensors[k] for k in ("x", "target_pos", "source_pos", "charge", "modulation")]
    leaves = [t for t in args if t is not None] + [kernel.log_width]
    y = kernel_matmul_fused(args[0], kernel, *args[1:])
    y_ref = kernel_matmul_reference(args[0], kernel, *args[1:])
    _close(y, y_ref, "y")
    gy = torch.randn_like(y)
    for g, g_ref in zip(
        torch.autograd.grad(y, leaves, gy), torch.autograd.grad(y_ref, leaves, gy), strict=True
    ):
        _close(g, g_ref, "grad", rtol=1e-3)
