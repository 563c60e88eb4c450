"""Fused Triton path against the float64 reference: forward and every gradient.

Without CUDA the kernels run through Triton's interpreter (NumPy on CPU tensors), which must
be requested before Triton decorates the kernels; the fused module builds them lazily on its
first call, so setting ``TRITON_INTERPRET`` at the top of this file is early enough (no other
module compiles them). Small tiles (16) and small ragged shapes keep the interpreter quick;
the ``gpu`` tests at the end run the compiled, autotuned kernels on larger shapes.
"""

from __future__ import annotations

import copy
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
    NeighbourCache,
    build_neighbour_list,
    kernel_matmul,
    kernel_matmul_reference,
)
from particlesim.kernels.base import RadialKernel

pytest.importorskip("triton", reason="triton is not installed: the fused path cannot run")

from particlesim.kernels import fused
from particlesim.kernels.fused import fused_available, kernel_matmul_fused

if not fused_available():
    pytest.skip(
        "fused path unavailable: no CUDA and TRITON_INTERPRET is off", allow_module_level=True
    )

INTERPRETED = bool(os.environ.get("TRITON_INTERPRET")) and os.environ["TRITON_INTERPRET"] != "0"
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
BLOCKS = (16, 16, 16)
KERNELS = {"gaussian": GaussianKernel, "cauchy": CauchyKernel, "exponential": ExponentialKernel}
F64 = torch.float64
ARGS = ("x", "target_pos", "source_pos", "charge", "modulation")


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol: float) -> None:
    """Max-abs error within ``rtol`` of the expected tensor's scale (plus a tiny floor)."""
    err = (actual.double() - expected.double()).abs().max().item()
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
    cutoff: float | None = None,
    length: float = 0.0,
    seed: int = 0,
    device: str = DEVICE,
) -> tuple[RadialKernel, dict[str, torch.Tensor | None]]:
    """A learnable-width float32 kernel and leaf tensors; one source coincides with a target.

    ``length > 0`` strings the particles out along the first axis over that distance, so
    that a neighbour list with ``cutoff`` skips some tiles.
    """
    gen = torch.Generator().manual_seed(seed)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen)).to(device).requires_grad_(True)

    widths = 1.3 if C == 1 else [1.3, 0.6, 2.0][:C]
    kernel = kernel_cls(width=widths, learnable_width=True, cutoff=cutoff).to(device)
    tensors: dict[str, torch.Tensor | None] = {
        "x": leaf(B, N),
        "target_pos": leaf(M, D, scale=0.6 if length else 1.0),
        "source_pos": leaf(N, D, scale=0.6 if length else 1.0),
        "charge": (leaf(M) if C == 1 else leaf(M, C)) if with_charge else None,
        "modulation": leaf(M, N) if with_mod else None,
    }
    with torch.no_grad():
        if length:
            tensors["target_pos"][:, 0] = length * torch.rand(M, generator=gen).to(device)
            tensors["source_pos"][:, 0] = length * torch.rand(N, generator=gen).to(device)
        tensors["source_pos"][0] = tensors["target_pos"][0]  # u = 0: exponential's masked root
    return kernel, tensors


def _compare(
    kernel: RadialKernel,
    tensors: dict[str, torch.Tensor | None],
    *,
    rtol: float = 1e-4,
    grad_rtol: float | None = None,
    **options: object,
) -> None:
    """Fused forward and all gradients equal the float64 reference path's."""
    args = [tensors[k] for k in ARGS]
    names = [k for k in ARGS if tensors[k] is not None] + ["log_width"]
    leaves = [t for t in args if t is not None] + [kernel.log_width]
    kernel64 = copy.deepcopy(kernel).double()
    args64 = [None if t is None else t.detach().double().requires_grad_() for t in args]
    leaves64 = [t for t in args64 if t is not None] + [kernel64.log_width]

    y = kernel_matmul_fused(args[0], kernel, *args[1:], **options)
    y_ref = kernel_matmul_reference(args64[0], kernel64, *args64[1:])
    assert y.dtype == args[0].dtype and y.shape == y_ref.shape
    _close(y, y_ref, "y", rtol)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    grads = torch.autograd.grad(y, leaves, grad_y)
    grads_ref = torch.autograd.grad(y_ref, leaves64, grad_y.double())  # the same numbers
    for name, leaf, g, g_ref in zip(names, leaves, grads, grads_ref, strict=True):
        assert g.shape == g_ref.shape and g.dtype == leaf.dtype, name
        _close(g, g_ref, f"grad {name}", grad_rtol or rtol)


# --------------------------------------------------------------------------- interpreter

RAGGED_CASES = [  # (kernel, D, C, modulation): every kernel, D, channel count at least once
    ("gaussian", 1, 1, False),
    ("cauchy", 2, 2, False),
    ("exponential", 3, 1, False),
    ("gaussian", 7, 2, True),
    ("exponential", 2, 2, True),
    ("cauchy", 16, 1, False),  # MAX_FUSED_DIM
]


@pytest.mark.parametrize(("name", "D", "C", "with_mod"), RAGGED_CASES)
def test_matches_reference_ragged(name: str, D: int, C: int, with_mod: bool) -> None:
    """B=5, N=37, M=19: no dimension is a tile multiple."""
    kernel, tensors = _problem(KERNELS[name], 5, 37, 19, D, C, with_mod=with_mod, seed=D + C)
    _compare(kernel, tensors, blocks=BLOCKS)


CUTOFF_CASES = [  # (kernel, D, C, modulation, cutoff): D = 16 is farther apart on average
    ("gaussian", 1, 1, False, 1.5),
    ("cauchy", 2, 1, True, 1.5),
    ("exponential", 3, 2, False, 1.5),
    ("gaussian", 7, 1, False, 1.5),
    ("exponential", 16, 1, True, 4.0),
]


@pytest.mark.parametrize(("name", "D", "C", "with_mod", "cutoff"), CUTOFF_CASES)
def test_cutoff_matches_reference_and_skips_tiles(
    name: str, D: int, C: int, with_mod: bool, cutoff: float
) -> None:
    """The sparse kernels visit only listed tiles and still equal the truncated kernel."""
    kernel, tensors = _problem(
        KERNELS[name], 6, 45, 37, D, C, with_mod=with_mod, cutoff=cutoff, length=8 * cutoff, seed=D
    )
    nl = build_neighbour_list(
        tensors["target_pos"], tensors["source_pos"], cutoff, tile_m=16, tile_n=16
    )
    assert 0 < nl.pair_fraction < 1  # some tile pairs are skipped
    r = torch.cdist(tensors["target_pos"].detach(), tensors["source_pos"].detach())
    assert ((r > kernel.switch_on) & (r < cutoff)).any()  # and some pairs are being switched off
    _compare(kernel, tensors, blocks=BLOCKS, neighbours=nl)


def test_cutoff_with_cache_and_default_tiles() -> None:
    """Without ``blocks`` the interpreter's default tiles are the list's; the cache is kept."""
    kernel, tensors = _problem(GaussianKernel, 3, 70, 40, 2, 1, cutoff=1.0, length=10.0)
    cache = NeighbourCache(skin=0.2)
    _compare(kernel, tensors, neighbours=cache)
    _compare(kernel, tensors, neighbours=cache)
    assert cache.builds == 1
    assert (cache.neighbour_list.tile_m, cache.neighbour_list.tile_n) == fused.DEFAULT_BLOCKS[1:]


def test_several_batch_tiles_and_three_channels() -> None:
    """B=21 spans two batch tiles (dW's loop over B); C=3 channels."""
    kernel, tensors = _problem(GaussianKernel, 21, 18, 33, 2, 3)
    _compare(kernel, tensors, blocks=BLOCKS)


@pytest.mark.parametrize("with_charge", [True, False], ids=["charge", "no-charge"])
def test_modulated_and_chargeless(with_charge: bool) -> None:
    """Modulated interaction ``W = w ⊙ Σ_c q_c k_c``, with and without charges."""
    kernel, tensors = _problem(
        CauchyKernel, 6, 29, 17, 3, 2, with_charge=with_charge, with_mod=True
    )
    _compare(kernel, tensors, blocks=BLOCKS)


def test_bfloat16_activations_accumulate_in_float32() -> None:
    """bfloat16 ``x`` (and so ``y``, ``grad_y``, ``grad_x``) with float32 positions/charges."""
    kernel, tensors = _problem(ExponentialKernel, 7, 40, 24, 3, 1, with_mod=True)
    tensors["x"] = tensors["x"].detach().bfloat16().requires_grad_()
    tensors["modulation"] = tensors["modulation"].detach().bfloat16().requires_grad_()
    _compare(kernel, tensors, blocks=BLOCKS, rtol=2e-2)


def test_all_bfloat16_with_cutoff() -> None:
    """A network cast to bfloat16 as a whole: the kernel is still evaluated in float32."""
    kernel, tensors = _problem(CauchyKernel, 4, 33, 20, 2, 1, cutoff=2.0, length=8.0)
    tensors = {
        k: None if t is None else t.detach().bfloat16().requires_grad_() for k, t in tensors.items()
    }
    _compare(kernel, tensors, blocks=BLOCKS, rtol=3e-2)


def test_tf32_switch_is_accepted() -> None:
    """``allow_tf32`` selects TF32 products (exact under the interpreter, ~1e-3 on a GPU)."""
    kernel, tensors = _problem(GaussianKernel, 4, 20, 18, 2, 1)
    _compare(kernel, tensors, blocks=BLOCKS, allow_tf32=True, rtol=5e-3)


def test_non_contiguous_inputs_are_made_contiguous() -> None:
    kernel, tensors = _problem(GaussianKernel, 4, 20, 18, 3, 1, with_mod=True)
    strided = {
        "x": tensors["x"].detach().T.contiguous().T.requires_grad_(),  # column-major view
        "target_pos": tensors["target_pos"]
        .detach()
        .repeat_interleave(2, 1)[:, ::2]
        .requires_grad_(),
        "source_pos": tensors["source_pos"],
        "charge": tensors["charge"].detach().repeat_interleave(2)[::2].requires_grad_(),
        "modulation": tensors["modulation"].detach().T.contiguous().T.requires_grad_(),
    }
    assert not any(t.is_contiguous() for k, t in strided.items() if k != "source_pos")
    for key in ARGS:
        torch.testing.assert_close(strided[key], tensors[key])
    _compare(kernel, strided, blocks=BLOCKS)


def test_fixed_width_and_partial_grads() -> None:
    """A buffer width and inputs that need no gradient are skipped without error."""
    kernel = GaussianKernel(width=0.8).to(DEVICE)
    x = torch.randn(4, 20, device=DEVICE)
    r_h = torch.randn(9, 2, device=DEVICE, requires_grad=True)
    r_j = torch.randn(20, 2, device=DEVICE)
    q = torch.randn(9, device=DEVICE)
    y = kernel_matmul_fused(x, kernel, r_h, r_j, q, blocks=BLOCKS)
    y_ref = kernel_matmul_reference(x, kernel, r_h, r_j, q)
    _close(y, y_ref, "y", 1e-4)
    (g,) = torch.autograd.grad(y.square().sum(), [r_h])
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), [r_h])
    _close(g, g_ref, "grad target_pos", 1e-4)


def test_dispatcher_fused_backend() -> None:
    """``kernel_matmul(backend="fused")`` routes to the fused path (default tiles)."""
    kernel, tensors = _problem(ExponentialKernel, 3, 11, 7, 2, 1)
    args = [tensors[k] for k in ("x", "target_pos", "source_pos", "charge")]
    y = kernel_matmul(args[0], kernel, *args[1:], backend="fused")
    assert type(y.grad_fn).__name__ == "_KernelMatmulFusedBackward"
    _close(y, kernel_matmul_reference(args[0], kernel, *args[1:]), "y", 1e-4)


# --------------------------------------------------------------------------- errors


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
    with pytest.raises(NotImplementedError, match=r"backend='chunked'") as info:
        kernel_matmul_fused(x, kernel, r_h, r_j)
    assert type(kernel).__name__ in str(info.value)


def test_input_errors_name_the_argument() -> None:
    kernel = GaussianKernel()
    x, r_h, r_j = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match="share the dimension D, got 2 and 3"):
        kernel_matmul_fused(x, kernel, r_h, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"x must be \[B, N\] with N = 5"):
        kernel_matmul_fused(torch.randn(2, 4), kernel, r_h, r_j)
    with pytest.raises(ValueError, match=r"charge must be float32 or bfloat16 .* torch.float64"):
        kernel_matmul_fused(x, kernel, r_h, r_j, torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be float32 or bfloat16"):
        kernel_matmul_fused(x.double(), kernel, r_h.double(), r_j.double())
    with pytest.raises(ValueError, match="x must be float32 or bfloat16"):
        kernel_matmul_fused(x.half(), kernel, r_h, r_j)
    with pytest.raises(ValueError, match="blocks"):
        kernel_matmul_fused(x, kernel, r_h, r_j, blocks=(16, 24, 16))
    with pytest.raises(ValueError, match="source_pos is on meta but x is on cpu"):
        kernel_matmul_fused(x, kernel, r_h, r_j.to("meta"))
    with pytest.raises(ValueError, match="kernel width is on meta but x is on cpu"):
        kernel_matmul_fused(x, GaussianKernel().to("meta"), r_h, r_j)
    with pytest.raises(NotImplementedError, match="D <= 16, got D = 17"):
        kernel_matmul_fused(x, kernel, torch.randn(3, 17), torch.randn(5, 17))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="source_pos is on"):
            kernel_matmul_fused(x, kernel, r_h, r_j.cuda())


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_interpreting", lambda: False)
    x, r_h, r_j = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(RuntimeError, match="needs Triton and CUDA tensors"):
        kernel_matmul_fused(x, GaussianKernel(), r_h, r_j)


def test_torch_compile_runs_the_fused_path_eagerly_inside_a_graph() -> None:
    """``torch.compile`` of code calling the fused path: same numbers, every gradient.

    The fused entry point is opaque to TorchDynamo (a graph break), so the code around it
    compiles and the kernels run as they do in eager mode.
    """
    kernel, tensors = _problem(GaussianKernel, 5, 37, 19, 3, 1)
    leaves = [tensors[k] for k in ("x", "target_pos", "source_pos", "charge")]

    def loss(x, target_pos, source_pos, charge):
        y = kernel_matmul(x, kernel, target_pos, source_pos, charge, backend="fused")
        return torch.tanh(y).square().sum()

    eager = loss(*leaves)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=False)(*leaves)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(
        torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_an_eager_call_never_imports_dynamo() -> None:
    """The torch.compile opacity costs an eager run nothing (Dynamo takes over a second)."""
    script = (
        "import os, sys, torch\n"
        "from particlesim.kernels import GaussianKernel\n"
        "from particlesim.kernels.fused import kernel_matmul_fused\n"
        "x, r_h, r_j = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2)\n"
        "kernel_matmul_fused(x, GaussianKernel(), r_h, r_j)\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)


def test_import_does_not_need_triton() -> None:
    """``import particlesim.kernels`` (and the fused module) never imports Triton."""
    script = (
        "import sys, particlesim.kernels, particlesim.kernels.fused\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_autotune_tables_and_batch_pruning() -> None:
    """Every autotuned tile is a power of two ≥ 16; tiles far taller than B are pruned."""
    for bb, bm, bn, warps, stages in fused._FORWARD_CONFIGS + fused._PARAMS_CONFIGS:
        for b in (bb, bm, bn):
            assert b >= 16 and b & (b - 1) == 0
        assert warps in (4, 8) and stages >= 2
    for bb, warps, _ in fused._SPARSE_FORWARD_CONFIGS + fused._SPARSE_PARAMS_CONFIGS:
        assert bb >= 16 and bb & (bb - 1) == 0 and warps in (4, 8)

    class Config:  # the two attributes the pruner reads from triton.Config
        def __init__(self, bb: int) -> None:
            self.kwargs = {"BLOCK_B": bb}

    configs = [Config(bb) for bb in (16, 32, 64, 128, 256)]
    kept = [c.kwargs["BLOCK_B"] for c in fused._prune_by_batch(configs, {"B": 40})]
    assert kept == [16, 32, 64]
    assert [c.kwargs["BLOCK_B"] for c in fused._prune_by_batch(configs, {"B": 1})] == [16]
    assert len(fused._prune_by_batch(configs, {"B": 4096})) == 5
    assert [c.kwargs["BLOCK_B"] for c in fused._prune_by_batch(configs[3:], {"B": 8})] == [128]


@pytest.mark.skipif(not INTERPRETED, reason="checks the autotuned wiring on the interpreter")
@pytest.mark.parametrize("cutoff", [None, 2.0], ids=["dense", "sparse"])
def test_autotuned_path_on_the_interpreter(monkeypatch: pytest.MonkeyPatch, cutoff) -> None:
    """The GPU's launch path, autotuner included, with a stand-in timer instead of CUDA events.

    Every config the pruner keeps runs (so each tile shape is checked for the right numbers,
    ragged edges included); the accumulators of the atomics are reset between trials, so the
    final gradients are the reference's; the neighbour list takes the GPU's sparse tiles.
    """
    built = fused._build()
    trials: dict[str, list[dict]] = {}

    def stand_in_timer(kernel_call, quantiles):
        kernel_call()
        return [1.0, 1.0, 1.0]  # a tie: the autotuner keeps its first config

    tuned = fused._tuned_kernels(built["raw"], do_bench=stand_in_timer)
    monkeypatch.setitem(built, "tuned", tuned)
    kernel, tensors = _problem(
        CauchyKernel, 40, 150, 130, 3, 2, with_mod=True, cutoff=cutoff,
        length=20.0 if cutoff else 0.0, seed=3,
    )  # fmt: skip
    cache = NeighbourCache()
    _compare(kernel, tensors, neighbours=cache)
    for (name, sparse), tuner in tuned.items():
        if sparse != (cutoff is not None):
            continue
        assert len(tuner.cache) == 1, name  # tuned once for these sizes
        trials[name] = [c.kwargs for c in tuner.configs_timings]
        assert all(c["BLOCK_B"] <= 64 for c in trials[name]), name  # pruned for B = 40
    if cutoff is None:
        assert len(trials["forward"]) == 4 and len(trials["grad_params"]) == 7
    else:
        assert len(trials["forward"]) == 3 and len(trials["grad_params"]) == 4
        nl = cache.neighbour_list  # the GPU's sparse tiles, not the interpreter's
        assert (nl.tile_m, nl.tile_n) == fused.SPARSE_TILES != fused.DEFAULT_BLOCKS[1:]
        assert 0 < nl.pair_fraction < 1


# --------------------------------------------------------------------------- GPU

gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRETED,
    reason="needs CUDA (and TRITON_INTERPRET unset): compiled Triton kernels",
)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("D", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("cutoff", [None, 1.5], ids=["full", "cutoff"])
def test_cuda_autotuned_matches_float64_reference(name: str, D: int, cutoff: float | None) -> None:
    """Compiled, autotuned kernels on ragged shapes spanning many tiles, every gradient."""
    if cutoff is not None and D == 16:
        cutoff = 4.0  # particles in 16-D lie farther apart: keep pairs within the cutoff
    kernel, tensors = _problem(
        KERNELS[name], 70, 300, 130, D, 2, with_mod=D == 3, cutoff=cutoff,
        length=20.0 if cutoff else 0.0, seed=D, device="cuda",
    )  # fmt: skip
    _compare(kernel, tensors, allow_tf32=False, rtol=1e-4, grad_rtol=1e-3)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("cutoff", [None, 2.0], ids=["full", "cutoff"])
def test_cuda_bfloat16_and_tf32(cutoff: float | None) -> None:
    kernel, tensors = _problem(
        GaussianKernel, 257, 1000, 515, 3, 1, cutoff=cutoff, length=30.0, device="cuda"
    )
    _compare(kernel, tensors, allow_tf32=True, rtol=5e-3, grad_rtol=1e-2)
    tensors["x"] = tensors["x"].detach().bfloat16().requires_grad_()
    _compare(kernel, tensors, rtol=2e-2, grad_rtol=3e-2)


@pytest.mark.gpu
@gpu
def test_cuda_memory_is_linear() -> None:
    """A 65536 x 65536 layer (a 16 GiB weight) runs in far less than its weight's memory."""
    B, N, M = 64, 65536, 65536
    kernel = GaussianKernel(1.0, learnable_width=True).cuda()
    x = torch.randn(B, N, device="cuda", requires_grad=True)
    r_h = torch.randn(M, 3, device="cuda", requires_grad=True)
    r_j = torch.randn(N, 3, device="cuda", requires_grad=True)
    q = torch.randn(M, device="cuda", requires_grad=True)

    def step() -> None:
        y = kernel_matmul_fused(x, kernel, r_h, r_j, q)
        torch.autograd.grad(y.sum(), [x, r_h, r_j, q, kernel.log_width])

    step()  # autotuning allocates a cache-flushing buffer of its own: not the layer's memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 256 * 2**20, f"{extra / 2**20:.0f} MiB beyond the inputs"


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills(tmp_path) -> None:
    """Every kernel compiles for an H100 offline (Triton's ptxas), on tensor cores, no spills."""
    import json
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_compile_check.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    command = [sys.executable, str(script), "--quick", "--out", str(out)]
    subprocess.run(command, check=True, env=env, timeout=900)
    rows = json.loads(out.read_text())
    assert {row["kernel"] for row in rows} == {"forward", "grad_x", "grad_params"}
    for row in rows:
        assert row["local_bytes"] == 0, row
        assert row["hgmma"] + row["hmma"] > 0, row  # the products run on tensor cores
        assert row["ex2"] > 0, row  # the Gaussian profile, one exp2 per weight element
