"""Kernels and the execution paths of a kernel interaction (``particlesim.kernels``).

What is checked, and against what:

* each built-in kernel against its closed form written out here independently, and its
  ``profile_derivative`` against autograd of its ``profile``;
* both paths (materialised reference, chunked) with ``gradcheck`` in float64 w.r.t. every
  input: activations, both position sets, charges (1 and 3 channels), a learnable width
  and a modulation matrix, on small ragged shapes so several uneven chunks run;
* chunked == reference to 1e-10 in float64, forward and every gradient;
* the gradients of a hand-built two-layer particle network against Lange (2015)'s
  equations 6, 9–12, 14–19, 21–23 and 25 evaluated with numpy loops;
* a non-radial kernel (and a radial one with an extra parameter) through the chunked
  path's autograd fallback;
* that the chunked path never builds an ``[M, N]`` tensor.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import KernelInteraction
from particlesim.errors import OptionError, ScenarioError
from particlesim.kernels import ops
from particlesim.kernels.base import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    RadialKernel,
    squared_distance,
    xplor_switch,
    xplor_switch_derivative,
)
from particlesim.kernels.neighbours import (
    NeighbourCache,
    NeighbourList,
    bisection_order,
    build_neighbour_list,
    morton_order,
    neighbour_list_for,
    tile_boxes,
)
from particlesim.kernels.ops import (
    default_chunk_size,
    effective_weight,
    kernel_matmul,
    kernel_matmul_chunked,
    kernel_matmul_reference,
    select_backend,
)

F64 = torch.float64
KERNELS: dict[str, type[RadialKernel]] = {
    "gaussian": GaussianKernel,
    "cauchy": CauchyKernel,
    "exponential": ExponentialKernel,
}


def closed_form(name: str, r: np.ndarray, sigma: float) -> np.ndarray:
    """The kernels as the design card writes them, as functions of the distance ``r``."""
    if name == "gaussian":
        return np.exp(-(r**2) / sigma**2)
    if name == "cauchy":
        return 1.0 / (1.0 + r**2 / sigma**2)
    if name == "exponential":
        return np.exp(-r / sigma)
    raise KeyError(name)


def make_kernel(name: str, channels: int, learnable: bool = True) -> RadialKernel:
    widths = [1.3] if channels == 1 else [0.7, 1.3, 2.1][:channels]
    return KERNELS[name](widths, learnable_width=learnable).to(F64)


def make_inputs(
    B: int,
    N: int,
    M: int,
    D: int,
    channels: int,
    *,
    charge: bool = True,
    modulation: bool = False,
    seed: int = 0,
    dtype: torch.dtype = F64,
) -> dict[str, Tensor | None]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    q_shape = (M,) if channels == 1 else (M, channels)
    return {
        "x": rnd(B, N),
        "target_pos": rnd(M, D, scale=0.8),
        "source_pos": rnd(N, D, scale=0.8),
        "charge": rnd(*q_shape) if charge else None,
        "modulation": rnd(M, N) if modulation else None,
    }


def run_path(path: str, kernel: Kernel, inp: dict[str, Tensor | None], chunk: int) -> Tensor:
    args = (inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"])
    if path == "reference":
        return kernel_matmul_reference(*args, inp["modulation"])
    return kernel_matmul_chunked(*args, inp["modulation"], chunk_size=chunk)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy shared machine OpenMP barriers can stall 100-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def leaves(kernel: Kernel, inp: dict[str, Tensor | None]) -> list[Tensor]:
    tensors = [t for t in inp.values() if t is not None]
    return tensors + [p for p in kernel.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_matches_closed_form(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randn(6, 3, generator=g, dtype=F64)
    source = torch.randn(4, 3, generator=g, dtype=F64)
    source[0] = target[2]  # one coincident pair: r = 0
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # log σ is stored in the default dtype: keep σ = 1.7 exact
    try:
        kernel = KERNELS[name](1.7)
    finally:
        torch.set_default_dtype(default)
    t, s = target.numpy(), source.numpy()
    r = np.sqrt(((t[:, None, :] - s[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(
        kernel(target, source).numpy(), closed_form(name, r, 1.7), rtol=1e-13
    )
    assert kernel(target, source)[2, 0].item() == 1.0


@pytest.mark.parametrize("name", list(KERNELS))
def test_profile_derivative_matches_autograd(name: str) -> None:
    u = torch.cat([torch.logspace(-6, 1, 40, dtype=F64), torch.tensor([0.3, 2.5], dtype=F64)])
    u.requires_grad_()
    cls = KERNELS[name]
    (auto,) = torch.autograd.grad(cls.profile(u).sum(), u)
    torch.testing.assert_close(cls.profile_derivative(u.detach()), auto, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(KERNELS))
def test_multi_width_channels_equal_single_width_kernels(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    target, source = torch.randn(5, 2, generator=g), torch.randn(7, 2, generator=g)
    widths = [0.5, 1.0, 2.5]
    kernel = KERNELS[name](widths)
    assert kernel.channels == 3
    torch.testing.assert_close(kernel.width, torch.tensor(widths))
    k = kernel(target, source)
    assert k.shape == (3, 5, 7)
    for c, w in enumerate(widths):
        torch.testing.assert_close(k[c], KERNELS[name](w)(target, source))


@pytest.mark.parametrize("path", ["reference", "chunked"])
def test_exponential_at_zero_distance_is_finite_with_zero_grad(path: str) -> None:
    kernel = ExponentialKernel(0.8, learnable_width=True).to(F64)
    pos = torch.tensor([[0.3, -0.2]], dtype=F64)
    target, source = pos.clone().requires_grad_(), pos.clone().requires_grad_()
    x = torch.ones(1, 1, dtype=F64, requires_grad=True)
    inp = {"x": x, "target_pos": target, "source_pos": source, "charge": None, "modulation": None}
    y = run_path(path, kernel, inp, chunk=1)
    assert y.item() == 1.0
    grads = torch.autograd.grad(y.sum(), [target, source, kernel.log_width])
    for grad in grads:
        assert torch.isfinite(grad).all()
        assert (grad == 0).all()


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, [1.0, -2.0], [], [[1.0]], "x"])
def test_width_validation(bad: object) -> None:
    with pytest.raises(ValueError, match=r"gaussian.*width must be"):
        GaussianKernel(bad)  # type: ignore[arg-type]


def test_width_storage() -> None:
    learn, fixed = GaussianKernel(2.0, learnable_width=True), GaussianKernel(np.float32(2.0))
    assert isinstance(learn.log_width, nn.Parameter)
    assert "log_width" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    torch.testing.assert_close(fixed.width, torch.tensor([2.0]))


# --------------------------------------------------------------------------- gradcheck


GRADCHECK_CASES = [
    (name, channels, case)
    for name in KERNELS
    for channels in (1, 3)
    for case in ("charge", "modulation", "both")
    if not (case == "both" and channels == 1 and name != "gaussian")
]


@pytest.mark.parametrize("path", ["reference", "chunked"])
@pytest.mark.parametrize(("name", "channels", "case"), GRADCHECK_CASES)
def test_gradcheck(name: str, channels: int, case: str, path: str) -> None:
    kernel = make_kernel(name, channels)
    inp = make_inputs(
        3, 7, 5, 3, channels, charge=case != "modulation", modulation=case != "charge"
    )
    names = [k for k, v in inp.items() if v is not None]

    def fn(*tensors: Tensor) -> Tensor:  # log_width is perturbed in place by gradcheck
        return run_path(path, kernel, dict(inp, **dict(zip(names, tensors, strict=False))), 2)

    assert torch.autograd.gradcheck(fn, (*[inp[k] for k in names], kernel.log_width))


# --------------------------------------------------------------------------- chunked == reference


def compare_paths(
    kernel: Kernel, inp: dict[str, Tensor | None], chunk: int, tol: float = 1e-10
) -> None:
    results = []
    for path in ("reference", "chunked"):
        y = run_path(path, kernel, inp, chunk)
        gen = torch.Generator().manual_seed(7)  # drawn on the CPU, then moved: same on CUDA
        grad_y = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        results.append([y, *torch.autograd.grad(y, leaves(kernel, inp), grad_y)])
    for ref, chk in zip(*results, strict=True):
        assert ref.shape == chk.shape
        torch.testing.assert_close(chk, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("channels", "charge", "modulation", "charge_2d"),
    [
        (1, True, False, False),
        (1, True, False, True),
        (3, True, False, False),
        (1, False, True, False),
        (3, True, True, False),
        (3, False, True, False),
    ],
)
@pytest.mark.parametrize("name", list(KERNELS))
def test_chunked_equals_reference(
    name: str, channels: int, charge: bool, modulation: bool, charge_2d: bool
) -> None:
    kernel = make_kernel(name, channels)
    inp = make_inputs(4, 37, 29, 2, channels, charge=charge, modulation=modulation, seed=3)
    if charge_2d:  # [M, 1] charges for a one-channel kernel are accepted too
        inp["charge"] = inp["charge"].detach()[:, None].requires_grad_()
    compare_paths(kernel, inp, chunk=8)  # chunks of 8, 8, 8, 5


def test_chunked_float32_and_default_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = GaussianKernel([0.8, 1.6], learnable_width=True)
    inp = make_inputs(5, 33, 21, 3, 2, modulation=True, dtype=torch.float32)
    monkeypatch.setattr(ops, "BLOCK_ELEMENTS", 2 * 33 * 4)  # default: 4 rows, 6 chunks
    assert default_chunk_size(33, 2) == 4
    y = kernel_matmul_chunked(
        inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"], inp["modulation"]
    )
    assert y.dtype == torch.float32
    compare_paths(kernel, inp, chunk=4, tol=2e-5)


def test_default_chunk_size_rule() -> None:
    assert default_chunk_size(1024) == 1024
    assert default_chunk_size(1024, 4) == 256
    assert default_chunk_size(10**7) == 1  # never zero rows
    assert default_chunk_size(0) == ops.BLOCK_ELEMENTS


def test_width_gradient_reaches_the_parameter() -> None:
    kernel = make_kernel("cauchy", 3)
    inp = make_inputs(3, 9, 6, 2, 3)
    kernel_matmul_chunked(
        *[inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"]], chunk_size=4
    ).square().sum().backward()
    grad = kernel.log_width.grad
    kernel.log_width.grad = None
    kernel_matmul_reference(
        inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"]
    ).square().sum().backward()
    assert grad is not None and grad.abs().min() > 0
    torch.testing.assert_close(grad, kernel.log_width.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wanted", ["x", "target_pos", "source_pos", "charge", "modulation"])
def test_chunked_computes_only_requested_gradients(
    wanted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = make_kernel("gaussian", 1, learnable=False)
    inp = make_inputs(3, 8, 6, 2, 1, modulation=True)
    for key, t in inp.items():
        t.requires_grad_(key == wanted)  # type: ignore[union-attr]
    calls: list[int] = []

    def derivative(u: Tensor) -> Tensor:
        calls.append(1)
        return GaussianKernel.profile_derivative(u)

    monkeypatch.setattr(kernel, "profile_derivative", derivative)
    chk = run_path("chunked", kernel, inp, 4)
    ref = run_path("reference", kernel, inp, 4)
    (g_chk,) = torch.autograd.grad(chk.sum(), inp[wanted])
    (g_ref,) = torch.autograd.grad(ref.sum(), inp[wanted])
    torch.testing.assert_close(g_chk, g_ref, rtol=1e-10, atol=1e-12)
    # f'(u) is only needed for position (or width) gradients
    assert bool(calls) == (wanted in ("target_pos", "source_pos"))


# --------------------------------------------------------------------------- dispatcher, errors


def test_kernel_matmul_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off CUDA: the matmul path for a radial kernel with the closed form (with a cutoff
    only for small layers); for other kernels reference up to the size limit, chunked above."""
    kernel = make_kernel("gaussian", 1)
    inp = make_inputs(2, 6, 4, 2, 1)
    args = (inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"])

    def chosen(*call: object, **kw: object) -> str:
        name = type(kernel_matmul(*(call or args), **kw).grad_fn).__name__  # type: ignore
        return (
            "chunked"
            if "KernelMatmulChunked" in name or "IndexSelect" in name  # (cutoff: re-sorted)
            else "matmul"
            if "RadialMatmul" in name
            else "reference"
        )

    assert ops.AUTO_REFERENCE_MAX_ELEMENTS == 2**22
    assert chosen() == "matmul"
    assert chosen(backend="reference") == "reference"
    assert chosen(backend="matmul") == "matmul"
    opaque = ExpDotKernel([0.5])  # not radial: no closed form
    other = (inp["x"], opaque, inp["target_pos"], inp["source_pos"], inp["charge"])
    assert chosen(*other) == "reference"
    with pytest.warns(UserWarning, match="the matmul backend needs a radial kernel"):
        assert chosen(*other, backend="matmul") == "reference"
    cut = GaussianKernel(1.3, cutoff=1.5).to(F64)
    with_cutoff = (inp["x"], cut, inp["target_pos"], inp["source_pos"], inp["charge"])
    assert chosen(*with_cutoff) == "matmul"
    monkeypatch.setattr(ops, "AUTO_REFERENCE_MAX_ELEMENTS", 23)  # M·N = 24 > 23
    assert chosen(*other) == "chunked"
    assert chosen(*with_cutoff) == "chunked"  # the neighbour list skips far pairs
    assert chosen() == "matmul"  # memory stays linear: it works in row blocks
    monkeypatch.setattr(ops, "AUTO_REFERENCE_MAX_ELEMENTS", 24)
    assert chosen(*other) == "reference"
    assert chosen(backend="chunked", chunk_size=3) == "chunked"
    torch.testing.assert_close(kernel_matmul(*args, backend="chunked"), kernel_matmul(*args))
    with pytest.raises(ValueError, match="backend must be"):
        kernel_matmul(*args, backend="dense")  # type: ignore[arg-type]


def test_effective_weight_is_eq9() -> None:
    kernel = make_kernel("gaussian", 3)
    inp = make_inputs(1, 5, 4, 2, 3, modulation=True)
    q, mod = inp["charge"].detach(), inp["modulation"].detach()
    rh, rj = inp["target_pos"].detach(), inp["source_pos"].detach()
    k = kernel(rh, rj)
    expected = sum(q[:, c, None] * k[c] for c in range(3))
    torch.testing.assert_close(effective_weight(kernel, rh, rj, q), expected)
    torch.testing.assert_close(effective_weight(kernel, rh, rj, q, mod), mod * expected)
    torch.testing.assert_close(effective_weight(kernel, rh, rj, None, mod), mod * k.sum(0))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"charge": torch.ones(4)}, ValueError, r"charge must be \[4, 3\]"),
        ({"charge": torch.ones(5, 3)}, ValueError, "charge must be"),
        ({"modulation": torch.ones(5, 4)}, ValueError, r"modulation must be \[M, N\] = \[4, 5\]"),
        ({"x": torch.ones(2, 4)}, ValueError, "x must be"),
        ({"source_pos": torch.ones(5, 3)}, ValueError, "share the dimension D"),
        ({"target_pos": torch.ones(4)}, ValueError, "positions must be"),
        ({"x": torch.ones(2, 5, dtype=F64)}, TypeError, "one dtype"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be"),
    ],
)
def test_input_errors(change: dict, error: type[Exception], match: str) -> None:
    kernel = GaussianKernel([1.0, 2.0, 3.0])
    kw = {
        "x": torch.ones(2, 5),
        "target_pos": torch.ones(4, 2),
        "source_pos": torch.ones(5, 2),
        "charge": torch.ones(4, 3),
        "modulation": None,
        "chunk_size": 2,
    }
    kw.update(change)
    with pytest.raises(error, match=match):
        kernel_matmul_chunked(kernel=kernel, **kw)
    if "chunk_size" not in change:
        kw.pop("chunk_size")
        with pytest.raises(error, match=match):
            kernel_matmul_reference(kernel=kernel, **kw)


# --------------------------------------------------------------------------- Lange (2015)


def _paper_gradients(
    x: np.ndarray, z: np.ndarray, q: dict[str, np.ndarray], r: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Gradients of a 2-layer PN (input i → hidden h (tanh) → output k), Lange's equations.

    Written pair by pair with the Gaussian kernel of eq. 10 and its derivatives eqs. 15, 25.
    Note: eq. 14 (and Δ in Algorithm 2) leave out the charge ``q_h`` that eq. 9 puts in front
    of the sum; the exact derivative of eq. 9 has it, and that is what is written here.
    """
    qi, qh, qk, ri, rh, rk = q["i"], q["h"], q["k"], r["i"], r["h"], r["k"]
    n_in, H, K = len(qi), len(qh), len(qk)

    def k(a: np.ndarray, b: np.ndarray) -> float:  # eq. 10
        return float(np.exp(-np.sum((a - b) ** 2)))

    def dk_da(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # eq. 15: ∂k(a, b)/∂a
        return -2.0 * k(a, b) * (a - b)

    def dk_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # eq. 25 / eq. 16: ∂k(a, b)/∂b
        return -2.0 * k(b, a) * (b - a)

    b_i = qi * x  # eq. 11, [n, n_in]
    a_h = np.stack(
        [qh[h] * sum(k(rh[h], ri[i]) * b_i[:, i] for i in range(n_in)) for h in range(H)], 1
    )
    b_h = np.tanh(a_h)  # eq. 9 then θ
    a_k = np.stack(
        [qk[o] * sum(k(rk[o], rh[h]) * b_h[:, h] for h in range(H)) for o in range(K)], 1
    )
    delta_k = a_k - z  # eq. 6 (linear output, L = ½ Σ (a_k − z_k)²)
    delta_h = (1 - b_h**2) * np.stack(  # eq. 17
        [sum(delta_k[:, o] * qk[o] * k(rh[h], rk[o]) for o in range(K)) for h in range(H)], 1
    )
    delta_i = np.stack(  # eq. 17 for the input layer, whose a_i = b_i (θ' = 1)
        [sum(delta_h[:, h] * qh[h] * k(ri[i], rh[h]) for h in range(H)) for i in range(n_in)], 1
    )
    out = {
        "q_k": (delta_k * a_k / qk).sum(0),  # eq. 18
        "q_k_eq12": np.array(  # eq. 12 × δ: the same without dividing by q
            [
                sum((delta_k[:, o] * k(rk[o], rh[h]) * b_h[:, h]).sum() for h in range(H))
                for o in range(K)
            ]
        ),
        "q_h": (delta_h * a_h / qh).sum(0),  # eq. 18
        "q_i": (delta_i * x).sum(0),  # eq. 19
    }
    # eq. 21 for the output layer (it has no layer above)
    out["r_k"] = np.stack(
        [
            sum((delta_k[:, o] * b_h[:, h]).sum() * qk[o] * dk_da(rk[o], rh[h]) for h in range(H))
            for o in range(K)
        ]
    )
    # eq. 20 = eq. 21 (as target of the input layer) + eq. 22 (as source of the output layer)
    out["r_h"] = np.stack(
        [
            sum(
                (delta_h[:, h] * b_i[:, i]).sum() * qh[h] * dk_da(rh[h], ri[i]) for i in range(n_in)
            )
            + sum((delta_k[:, o] * b_h[:, h]).sum() * qk[o] * dk_db(rk[o], rh[h]) for o in range(K))
            for h in range(H)
        ]
    )
    # eq. 23: the input layer only appears as a source (eq. 16 / 25)
    out["r_i"] = np.stack(
        [
            sum((delta_h[:, h] * b_i[:, i]).sum() * qh[h] * dk_db(rh[h], ri[i]) for h in range(H))
            for i in range(n_in)
        ]
    )
    out["loss"] = np.array(0.5 * (delta_k**2).sum())
    return out


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_two_layer_gradients_match_lange_equations(backend: str) -> None:
    rng = np.random.default_rng(11)
    n, n_in, H, K, D = 4, 6, 5, 3, 3
    x, z = rng.normal(size=(n, n_in)), rng.normal(size=(n, K))
    q = {"i": rng.normal(size=n_in), "h": rng.normal(size=H), "k": rng.normal(size=K)}
    r = {key: 0.6 * rng.normal(size=(size, D)) for key, size in (("i", n_in), ("h", H), ("k", K))}
    paper = _paper_gradients(x, z, q, r)
    np.testing.assert_allclose(paper["q_k"], paper["q_k_eq12"], rtol=1e-10)

    tq = {key: torch.tensor(v, requires_grad=True) for key, v in q.items()}
    tr = {key: torch.tensor(v, requires_grad=True) for key, v in r.items()}
    kernel = GaussianKernel(1.0).to(F64)  # σ = 1: eq. 10
    b_i = torch.tensor(x) * tq["i"]  # eq. 11
    a_h = kernel_matmul(b_i, kernel, tr["h"], tr["i"], tq["h"], backend=backend, chunk_size=2)
    a_k = kernel_matmul(
        torch.tanh(a_h), kernel, tr["k"], tr["h"], tq["k"], backend=backend, chunk_size=2
    )
    loss = 0.5 * (a_k - torch.tensor(z)).square().sum()
    names = ["q_i", "q_h", "q_k", "r_i", "r_h", "r_k"]
    inputs = [tq["i"], tq["h"], tq["k"], tr["i"], tr["h"], tr["k"]]
    grads = torch.autograd.grad(loss, inputs)
    np.testing.assert_allclose(loss.item(), paper["loss"], rtol=1e-12)
    for key, grad in zip(names, grads, strict=True):
        np.testing.assert_allclose(grad.numpy(), paper[key], rtol=1e-9, atol=1e-12, err_msg=key)


# --------------------------------------------------------------------------- autograd fallback


class ExpDotKernel(Kernel):
    """Non-radial test kernel ``k_c = exp(s_c · r_h·r_j)``; learnable scales ``s_c``."""

    name = "exp_dot"

    def __init__(self, scales: list[float]) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scales, dtype=F64))
        self.channels = len(scales)

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        k = torch.exp(self.scale[:, None, None] * (target @ source.T))
        return k[0] if self.channels == 1 else k


class AmplitudeGaussian(GaussianKernel):
    """A radial kernel the closed form cannot cover: ``forward`` adds a learnable amplitude."""

    name = "amplitude_gaussian"

    def __init__(self) -> None:
        super().__init__(0.9, learnable_width=True)
        self.amplitude = nn.Parameter(torch.tensor(1.7))

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        return self.amplitude * super().forward(target, source)


@pytest.mark.parametrize("scales", [[0.3], [0.25, -0.4]])
def test_non_radial_kernel_autograd_fallback(scales: list[float]) -> None:
    kernel = ExpDotKernel(scales)
    assert not ops._uses_closed_form(kernel)
    C = len(scales)
    for case in ({"charge": True, "modulation": False}, {"charge": False, "modulation": True}):
        inp = make_inputs(3, 7, 5, 3, C, seed=5, **case)
        names = [k for k, v in inp.items() if v is not None]

        def fn(*tensors: Tensor, names: list[str] = names, inp: dict = inp) -> Tensor:
            return run_path(
                "chunked", kernel, dict(inp, **dict(zip(names, tensors, strict=False))), 2
            )

        assert torch.autograd.gradcheck(fn, (*[inp[k] for k in names], kernel.scale))
        compare_paths(kernel, inp, chunk=2)


def test_radial_kernel_with_extra_parameter_falls_back() -> None:
    kernel = AmplitudeGaussian().to(F64)
    assert not ops._uses_closed_form(kernel)
    assert ops._uses_closed_form(GaussianKernel(1.0, learnable_width=True))
    inp = make_inputs(3, 11, 9, 2, 1, seed=6)
    compare_paths(kernel, inp, chunk=4)  # includes d/d amplitude and d/d log σ


# --------------------------------------------------------------------------- memory


def test_chunked_never_builds_an_m_by_n_block(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    M = N = 2048
    chunk = 64
    kernel = GaussianKernel(0.5, learnable_width=True)
    inp = make_inputs(4, N, M, 2, 1, dtype=torch.float32, seed=8)
    shapes: list[tuple[int, ...]] = []

    def record(fn):
        def wrapped(u: Tensor) -> Tensor:
            shapes.append(tuple(u.shape))
            return fn(u)

        return wrapped

    monkeypatch.setattr(kernel, "profile", record(GaussianKernel.profile))
    monkeypatch.setattr(kernel, "profile_derivative", record(GaussianKernel.profile_derivative))
    y = run_path("chunked", kernel, inp, chunk)
    torch.autograd.grad(y.square().sum(), leaves(kernel, inp))
    assert len(shapes) == 3 * M // chunk  # profile in forward and backward, f' in backward
    assert max(s[-2] for s in shapes) == chunk
    assert all(math.prod(s) <= chunk * N for s in shapes)


def test_chunked_allocates_no_tensor_of_m_by_n_elements(one_thread: None) -> None:
    dispatch = pytest.importorskip("torch.utils._python_dispatch")

    class LargestOutput(dispatch.TorchDispatchMode):
        """Records the largest tensor any aten op returns while active."""

        def __init__(self) -> None:
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    M, N, chunk = 384, 320, 16
    kernel = CauchyKernel([0.5, 1.0], learnable_width=True)
    inp = make_inputs(4, N, M, 3, 2, modulation=True, dtype=torch.float32, seed=9)
    inp["modulation"] = None  # a full [M, N] input would be the largest tensor
    largest = {}
    for path in ("chunked", "reference"):
        with LargestOutput() as probe:
            y = run_path(path, kernel, inp, chunk)
            torch.autograd.grad(y.square().sum(), leaves(kernel, inp))
        largest[path] = probe.largest
    assert largest["reference"] >= M * N  # the probe sees a materialised W
    assert largest["chunked"] <= 2 * chunk * N  # one [C, chunk, N] block at most


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_on_cuda_equals_reference() -> None:
    kernel = make_kernel("exponential", 3).cuda()
    inp = {
        k: None if v is None else v.detach().cuda().requires_grad_()
        for k, v in make_inputs(4, 300, 200, 3, 3, modulation=True).items()
    }
    compare_paths(kernel, inp, chunk=64)


# --------------------------------------------------------------------------- cutoff


def xplor_closed_form(r: np.ndarray, r_on: float, r_cut: float) -> np.ndarray:
    """The XPLOR switch written out by distance (CHARMM / HOOMD-blue's definition)."""
    inside = (
        (r_cut**2 - r**2) ** 2 * (r_cut**2 + 2 * r**2 - 3 * r_on**2) / (r_cut**2 - r_on**2) ** 3
    )
    return np.where(r <= r_on, 1.0, np.where(r >= r_cut, 0.0, inside))


def test_xplor_switch_values_and_smoothness() -> None:
    r_on, r_cut = 1.5, 2.5
    r = torch.linspace(0.0, 3.0, 301, dtype=F64)
    s = xplor_switch(r * r, r_on, r_cut)
    np.testing.assert_allclose(s.numpy(), xplor_closed_form(r.numpy(), r_on, r_cut), atol=1e-14)
    assert s[r <= r_on].eq(1).all() and s[r >= r_cut].eq(0).all()
    # C¹: dS/d(r²) matches autograd and vanishes at both ends of the switching region
    r2 = (r * r).requires_grad_()
    (auto,) = torch.autograd.grad(xplor_switch(r2, r_on, r_cut).sum(), r2)
    closed = xplor_switch_derivative(r2.detach(), r_on, r_cut)
    torch.testing.assert_close(closed, auto, rtol=1e-12, atol=1e-14)
    ends = torch.tensor([r_on**2, r_cut**2], dtype=F64)
    assert xplor_switch_derivative(ends, r_on, r_cut).abs().max() == 0


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_with_cutoff_is_profile_times_switch(name: str) -> None:
    g = torch.Generator().manual_seed(4)
    target, source = 1.5 * torch.randn(9, 2, generator=g, dtype=F64), torch.zeros(1, 2, dtype=F64)
    kernel = KERNELS[name](1.3, cutoff=2.0, switch_width=0.5).to(F64)
    plain = KERNELS[name](1.3).to(F64)
    r = target.norm(dim=1).numpy()
    expected = plain(target, source)[:, 0].numpy() * xplor_closed_form(r, 1.5, 2.0)
    np.testing.assert_allclose(kernel(target, source)[:, 0].numpy(), expected, atol=1e-14)
    assert (kernel(target, source)[:, 0][torch.tensor(r >= 2.0)] == 0).all()
    assert kernel.cutoff == 2.0 and kernel.switch_on == 1.5
    assert "cutoff=2, switch_width=0.5" in repr(kernel)
    assert KERNELS[name](1.0, cutoff=5.0).switch_on == pytest.approx(4.0)  # default: last fifth


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"cutoff": 0.0}, "cutoff must be a positive finite distance, got 0.0"),
        ({"cutoff": -1.0}, "cutoff must be a positive finite distance"),
        ({"cutoff": math.inf}, "cutoff must be a positive finite distance"),
        ({"cutoff": "far"}, "cutoff must be a positive finite distance, got 'far'"),
        ({"cutoff": 2.0, "switch_width": 3.0}, r"switch_width must be in \(0, cutoff = 2\]"),
        ({"cutoff": 2.0, "switch_width": 0.0}, "switch_width must be in"),
        ({"switch_width": 0.5}, "switch_width needs a cutoff"),
    ],
)
def test_cutoff_validation(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=rf"kernel 'gaussian': {match}"):
        GaussianKernel(1.0, **options)


def spread_inputs(
    B: int,
    N: int,
    M: int,
    D: int,
    channels: int,
    *,
    charge: bool = True,
    modulation: bool = False,
    length: float = 8.0,
    seed: int = 0,
) -> dict[str, Tensor | None]:
    """Like :func:`make_inputs`, with positions strung out along the first axis.

    Over ``length`` (a few cutoffs) blocks of spatially sorted particles are compact, so a
    neighbour list skips some block pairs while others straddle the switching region.
    """
    inp = make_inputs(B, N, M, D, channels, charge=charge, modulation=modulation, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    for key, size in (("target_pos", M), ("source_pos", N)):
        pos = 0.5 * torch.randn(size, D, generator=g, dtype=F64)
        pos[:, 0] = length * torch.rand(size, generator=g, dtype=F64)
        inp[key] = pos.requires_grad_()
    return inp


@pytest.fixture
def small_cutoff_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 sources, so tiny test layers have several blocks to skip."""
    monkeypatch.setattr(ops, "CHUNKED_CUTOFF_TILES", (4, 4))


CUTOFF_CASES = [
    ("gaussian", 1, 1, "charge"),
    ("cauchy", 2, 3, "both"),
    ("exponential", 3, 1, "modulation"),
    ("gaussian", 7, 1, "both"),
]


@pytest.mark.parametrize("path", ["reference", "chunked"])
@pytest.mark.parametrize(("name", "D", "channels", "case"), CUTOFF_CASES)
def test_gradcheck_with_cutoff(
    name: str, D: int, channels: int, case: str, path: str, small_cutoff_tiles: None
) -> None:
    kernel = KERNELS[name]([1.3, 0.7, 2.1][:channels], learnable_width=True, cutoff=2.0).to(F64)
    inp = spread_inputs(
        3, 11, 9, D, channels, charge=case != "modulation", modulation=case != "charge", seed=D
    )
    names = [k for k, v in inp.items() if v is not None]

    def fn(*tensors: Tensor) -> Tensor:
        return run_path(path, kernel, dict(inp, **dict(zip(names, tensors, strict=False))), 4)

    assert torch.autograd.gradcheck(
        fn, (*[inp[k] for k in names], kernel.log_width), fast_mode=path == "chunked"
    )


@pytest.mark.parametrize(("name", "D", "channels", "case"), CUTOFF_CASES)
def test_chunked_with_cutoff_equals_reference_and_skips(
    name: str,
    D: int,
    channels: int,
    case: str,
    small_cutoff_tiles: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """float64, forward and every gradient; fewer kernel values than M·N are evaluated."""
    kernel = KERNELS[name]([1.3, 0.7, 2.1][:channels], learnable_width=True, cutoff=2.0).to(F64)
    M, N = 29, 37
    inp = spread_inputs(
        4,
        N,
        M,
        D,
        channels,
        charge=case != "modulation",
        modulation=case != "charge",
        length=16.0,
        seed=D,
    )
    evaluated: list[int] = []

    def profile(u: Tensor) -> Tensor:
        evaluated.append(u[0].numel() if u.ndim == 3 else u.numel())
        return type(kernel).profile(u)

    compare_paths(kernel, inp, chunk=4)
    monkeypatch.setattr(kernel, "profile", profile)
    with torch.no_grad():
        run_path("chunked", kernel, inp, 4)
    assert 0 < sum(evaluated) < 0.8 * M * N
    r = torch.cdist(inp["target_pos"].detach(), inp["source_pos"].detach())
    assert ((r > kernel.switch_on) & (r < 2.0)).any()  # some pairs inside the switching region
    nl = build_neighbour_list(inp["target_pos"], inp["source_pos"], 2.0, tile_m=4, tile_n=4)
    assert nl.pair_fraction < 0.8
    listed = sum(
        (e - s) * (cols.stop - cols.start if isinstance(cols, slice) else cols.numel())
        for s, e, cols in nl.row_blocks()
    )
    assert sum(evaluated) == listed  # exactly the listed blocks


def test_chunked_cutoff_blocks_of_runs_add_up(
    small_cutoff_tiles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several slice blocks per target tile (one per run of source tiles) give the same
    numbers as one gathered block: results of blocks sharing rows add up."""
    inp = make_inputs(3, 37, 29, 2, 1, modulation=True, seed=4)
    g = torch.Generator().manual_seed(4)
    for key, size in (("target_pos", 29), ("source_pos", 37)):  # a square: Z-order runs break
        inp[key] = (6.0 * torch.rand(size, 2, generator=g, dtype=F64)).requires_grad_()
    nl = build_neighbour_list(inp["target_pos"], inp["source_pos"], 2.0, tile_m=4, tile_n=4)
    gathered, runs = nl.row_blocks(), nl.row_blocks(max_runs=1000)

    def columns(blocks: list) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for s, _, cols in blocks:
            idx = range(cols.start, cols.stop) if isinstance(cols, slice) else cols.tolist()
            out.setdefault(s, []).extend(idx)
        return {s: sorted(v) for s, v in out.items()}

    assert columns(gathered) == columns(runs)
    assert len(runs) > len(gathered) and all(isinstance(c, slice) for _, _, c in runs)
    original = NeighbourList.row_blocks
    monkeypatch.setattr(NeighbourList, "row_blocks", lambda self: original(self, max_runs=1000))
    kernel = CauchyKernel(1.1, learnable_width=True, cutoff=2.0).to(F64)
    compare_paths(kernel, inp, chunk=4)


def test_chunked_with_cutoff_float32_default_tiles() -> None:
    """The default tiles of 64 on a layer wide enough to skip; float32 like training."""
    kernel = GaussianKernel(0.8, learnable_width=True, cutoff=1.5)
    inp = spread_inputs(8, 300, 260, 2, 1, length=20.0, seed=5)
    inp = {k: None if v is None else v.detach().float().requires_grad_() for k, v in inp.items()}
    compare_paths(kernel, inp, chunk=64, tol=2e-5)
    nl = build_neighbour_list(inp["target_pos"], inp["source_pos"], 1.5, tile_m=64, tile_n=64)
    assert nl.pair_fraction < 0.7


class ShiftedGaussian(Kernel):
    """A non-radial kernel with a cutoff of its own, for the autograd fallback with skipping."""

    name = "shifted_gaussian"
    cutoff = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor([0.1, -0.2], dtype=F64))

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        r2 = squared_distance(target + self.shift, source)
        return torch.exp(-r2) * xplor_switch(squared_distance(target, source), 1.5, 2.0)


def test_autograd_fallback_with_cutoff_skips_exactly(small_cutoff_tiles: None) -> None:
    kernel = ShiftedGaussian()
    assert not ops._uses_closed_form(kernel)
    inp = spread_inputs(3, 13, 11, 2, 1, modulation=True, seed=3)
    compare_paths(kernel, inp, chunk=4)
    names = [k for k, v in inp.items() if v is not None]

    def fn(*tensors: Tensor) -> Tensor:
        return run_path("chunked", kernel, dict(inp, **dict(zip(names, tensors, strict=False))), 4)

    assert torch.autograd.gradcheck(fn, (*[inp[k] for k in names], kernel.shift), fast_mode=True)


# --------------------------------------------------------------------------- neighbour lists


@pytest.mark.parametrize("order", ["bisection", "morton"])
@pytest.mark.parametrize("D", [1, 2, 3, 7])
def test_neighbour_list_covers_every_close_pair(D: int, order: str) -> None:
    g = torch.Generator().manual_seed(D)
    target = 3.0 * torch.randn(150, D, generator=g)
    source = 3.0 * torch.randn(170, D, generator=g)
    cutoff, skin = 2.0, 0.5
    nl = build_neighbour_list(target, source, cutoff, skin=skin, tile_m=16, tile_n=8, order=order)
    for order in (nl.target_order, nl.source_order):  # permutations with their inverses
        assert torch.equal(order.sort().values, torch.arange(order.numel()))
    assert torch.equal(nl.target_order[nl.target_rank], torch.arange(150))
    listed = torch.zeros(nl.num_target_tiles, nl.num_source_tiles, dtype=torch.bool)
    listed[nl.pair_target.long(), nl.pair_source.long()] = True
    close = torch.cdist(target[nl.target_order], source[nl.source_order]) <= cutoff + skin
    rows, cols = close.nonzero(as_tuple=True)
    assert listed[rows // 16, cols // 8].all()
    # the three encodings list the same pairs
    by_rows = {
        (t, int(s))
        for t in range(nl.num_target_tiles)
        for s in nl.row_cols[nl.row_ptr[t] : nl.row_ptr[t + 1]]
    }
    by_cols = {
        (int(t), s)
        for s in range(nl.num_source_tiles)
        for t in nl.col_rows[nl.col_ptr[s] : nl.col_ptr[s + 1]]
    }
    pairs = set(zip(nl.pair_target.tolist(), nl.pair_source.tolist(), strict=True))
    assert by_rows == by_cols == pairs
    if D <= 2:
        assert nl.pair_fraction < 0.9  # the spatial sort makes tiles compact enough to skip


def test_morton_order_groups_nearby_points() -> None:
    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)
    points = grid.reshape(-1, 2)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    order = morton_order(points, points.amin(0), points.amax(0))
    lo, hi = tile_boxes(points[order], 4)
    assert ((hi - lo) == 1).all()  # each run of 4 is a 2 x 2 cell: the Z curve


def test_bisection_order_tiles_a_grid_into_squares() -> None:
    """A shuffled 16 x 16 grid in tiles of 16: every tile is a 4 x 4 block of the grid."""
    grid = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1)
    points = grid.reshape(-1, 2)[torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    order = bisection_order(points, 16)
    assert torch.equal(order.sort().values, torch.arange(256))
    lo, hi = tile_boxes(points[order], 16)
    assert ((hi - lo) == 3).all()
    assert torch.equal(bisection_order(points.double(), 16), order)  # deterministic


@pytest.mark.parametrize(("P", "tile"), [(1, 4), (4, 4), (5, 4), (67, 16), (300, 64), (1000, 7)])
def test_bisection_order_ragged_sizes(P: int, tile: int) -> None:
    """Any size: a permutation whose runs of ``tile`` are compact (only the last run ragged)."""
    points = torch.rand(P, 3, generator=torch.Generator().manual_seed(P))
    order = bisection_order(points, tile)
    assert torch.equal(order.sort().values, torch.arange(P))
    if tile < P:
        lo, hi = tile_boxes(points[order], tile)
        assert ((hi - lo).prod(1) < 0.9).all()  # no tile spans the whole cube


def test_bisection_order_checks_its_arguments() -> None:
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1)
    order = bisection_order(grid.reshape(-1, 2), 4)  # integer coordinates are fine
    lo, hi = tile_boxes(grid.reshape(-1, 2)[order].double(), 4)
    assert ((hi - lo) == 1).all()
    with pytest.raises(ValueError, match=r"points must be \[P, D\] with D >= 1, got \(5, 0\)"):
        bisection_order(torch.zeros(5, 0), 4)
    with pytest.raises(ValueError, match="tile must be a positive number of points, got 0"):
        bisection_order(torch.zeros(5, 2), 0)


@pytest.mark.parametrize("D", [2, 3])
def test_bisection_lists_fewer_tile_pairs_than_morton(D: int) -> None:
    """Uniform points, a cutoff holding about 10 % of the pairs: tighter boxes skip more."""
    g = torch.Generator().manual_seed(D)
    target, source = torch.rand(4096, D, generator=g), torch.rand(4096, D, generator=g)
    cutoff = float(torch.quantile(torch.cdist(target[:512], source[:512]).flatten(), 0.1))
    kept = {
        order: build_neighbour_list(
            target, source, cutoff, tile_m=32, tile_n=32, order=order
        ).pair_fraction
        for order in ("bisection", "morton")
    }
    assert 0.1 < kept["bisection"] < 0.85 * kept["morton"], kept


def test_neighbour_cache_rebuilds_only_past_half_the_skin() -> None:
    g = torch.Generator().manual_seed(1)
    target, source = torch.randn(40, 2, generator=g), torch.randn(50, 2, generator=g)
    cache = NeighbourCache(skin=0.4)
    first = cache.get(target, source, 1.0, 8, 8)
    assert cache.get(target + 0.19 / math.sqrt(2), source, 1.0, 8, 8) is first  # 0.19 < 0.2
    assert cache.builds == 1
    moved = source.clone()
    moved[3, 0] += 0.21  # one particle past skin / 2
    assert cache.get(target, moved, 1.0, 8, 8) is not first and cache.builds == 2
    cache.get(target, moved, 1.0, 16, 8)  # other tiles
    cache.get(target[:30], moved, 1.0, 16, 8)  # other shape
    cache.get(target[:30], moved, 1.5, 16, 8)  # other cutoff
    assert cache.builds == 5
    cache.reset()
    cache.get(target[:30], moved, 1.5, 16, 8)
    assert cache.builds == 6
    assert NeighbourCache().get(target, source, 2.0, 8, 8).skin == pytest.approx(0.2)
    with pytest.raises(ValueError, match="skin must be a finite distance >= 0, got -1"):
        NeighbourCache(skin=-1.0)


def test_neighbour_list_argument_errors() -> None:
    rh, rj = torch.randn(5, 2), torch.randn(6, 2)
    with pytest.raises(ValueError, match="tile sizes must be positive"):
        build_neighbour_list(rh, rj, 1.0, tile_m=0)
    with pytest.raises(ValueError, match="need cutoff > 0 and skin >= 0"):
        build_neighbour_list(rh, rj, 1.0, skin=-0.1)
    with pytest.raises(ValueError, match="order must be 'bisection' or 'morton', got 'hilbert'"):
        build_neighbour_list(rh, rj, 1.0, order="hilbert")
    nl = build_neighbour_list(rh, rj, 1.0, tile_m=4, tile_n=4)
    with pytest.raises(ValueError, match=r"built for tiles \(4, 4\) and cutoff 1"):
        neighbour_list_for(nl, rh, rj, 1.0, (8, 8))
    with pytest.raises(ValueError, match="built for 5 targets and 6 sources, got 4 and 6"):
        neighbour_list_for(nl, rh[:4], rj, 1.0, (4, 4))
    with pytest.raises(TypeError, match="neighbours must be a NeighbourCache"):
        neighbour_list_for("list", rh, rj, 1.0, (4, 4))  # type: ignore[arg-type]


def test_interaction_keeps_its_neighbour_list(small_cutoff_tiles: None) -> None:
    g = torch.Generator().manual_seed(2)
    source = ParticleGroup.create("a", 30, 2, generator=g, spread=3.0, dtype=F64)
    target = ParticleGroup.create("b", 20, 2, generator=g, spread=3.0, charge_channels=1, dtype=F64)
    kernel = GaussianKernel(1.0, cutoff=1.5).to(F64)
    link = KernelInteraction(source, target, kernel=kernel, backend="chunked", skin=0.3)
    assert isinstance(link.neighbours, NeighbourCache)
    assert not any("neighbour" in key for key in link.state_dict())  # not saved
    x = torch.randn(4, 30, dtype=F64, generator=g)
    ref = x @ effective_weight(kernel, target.position, source.position, target.charge).T
    torch.testing.assert_close(link(x, source, target), ref)
    link(x, source, target)
    assert link.neighbours.builds == 1
    with torch.no_grad():
        source.position[0] += 1.0
    link(x, source, target)
    assert link.neighbours.builds == 2
    with pytest.raises(OptionError, match="skin: must be a finite distance >= 0"):
        KernelInteraction(source, target, kernel=kernel, skin=-1.0)
    with pytest.raises(OptionError, match="backend: must be one of 'auto'"):
        KernelInteraction(source, target, kernel=kernel, backend="fast")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backends


def test_select_backend_auto_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off CUDA ``auto`` never picks fused, even where Triton's interpreter could run it."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel = GaussianKernel()
    x, rh, rj = torch.randn(2, 6), torch.randn(4, 2), torch.randn(6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend(kernel, x, rh, rj) == "matmul"
        monkeypatch.setattr(ops, "AUTO_REFERENCE_MAX_ELEMENTS", 23)
        assert select_backend(kernel, x, rh, rj) == "matmul"
        assert select_backend(kernel, x, rh, rj, backend="reference") == "reference"


class _NotFused(GaussianKernel):
    """A subclass may change the profile, so it has no fused version."""

    name = "not_fused"


@pytest.mark.parametrize(
    ("kernel", "dim", "dtype", "reason"),
    [
        (_NotFused(), 2, torch.float32, "exist only for the built-in .* not _NotFused"),
        (GaussianKernel(), 17, torch.float32, "positions have D = 17 dimensions"),
        (GaussianKernel().to(F64), 2, F64, "dtype torch.float64: fused kernels take float32"),
        (GaussianKernel(), 2, torch.float32, "tensors are on cpu; fused kernels need CUDA"),
    ],
)
def test_fused_request_falls_back_with_one_warning(
    kernel: Kernel, dim: int, dtype: torch.dtype, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=g, dtype=dtype)
    rh, rj = (
        torch.randn(4, dim, generator=g, dtype=dtype),
        torch.randn(6, dim, generator=g, dtype=dtype),
    )
    q = torch.randn(4, generator=g, dtype=dtype)
    if importlib.util.find_spec("triton") is None and not isinstance(kernel, _NotFused):
        reason = "Triton is not installed"  # an unsupported kernel is named first
    expected = (
        rf"interaction a -> b: the fused backend cannot run kernel '\w+' here \(.*{reason}.*\); "
        "using the matmul backend instead"
    )
    with pytest.warns(UserWarning, match=expected) as record:
        y = kernel_matmul(x, kernel, rh, rj, q, backend="fused", where="interaction a -> b")
    assert len(record) == 1
    torch.testing.assert_close(y, kernel_matmul_reference(x, kernel, rh, rj, q))


def test_interaction_asking_for_fused_off_cuda_warns_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(3)
    source = ParticleGroup.create("a", 8, 2, generator=g)
    target = ParticleGroup.create("b", 5, 2, generator=g, charge_channels=1)
    link = KernelInteraction(source, target, kernel=GaussianKernel(), backend="fused")
    x = torch.randn(2, 8, generator=g)
    with pytest.warns(UserWarning, match=r"^interaction a -> b: the fused backend cannot run"):
        y = link(x, source, target)
    torch.testing.assert_close(y, x @ link.effective_weight(source, target).T)


def test_inputs_on_different_devices_are_an_error() -> None:
    kernel = GaussianKernel()
    x, rh, rj = torch.randn(2, 5), torch.randn(3, 2), torch.randn(5, 2, device="meta")
    for backend in ("reference", "chunked"):
        with pytest.raises(
            ValueError, match=r"all tensors must be on one device, got .*source_pos on meta"
        ):
            kernel_matmul(x, kernel, rh, rj, backend=backend)


# --------------------------------------------------------------------------- benchmark


def load_benchmark(name: str) -> types.ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clustering_benchmark_compares_equal_numbers(tmp_path: Path) -> None:
    """The analysis benchmark's two methods agree on a graph with triangles."""
    module = load_benchmark("analysis_clustering")
    out = tmp_path / "clustering.json"
    results = module.main(["--sizes", "12", "5", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["edges"] == 12 * 5 + 12 * 3 + 5 * 3
    assert results["clustering"] > 0.1
    assert results["clustering"] == pytest.approx(results["networkx_clustering"], rel=1e-12)
    assert results["speedup"] == pytest.approx(results["networkx_s"] / results["matrix_s"])


def test_particle_layer_benchmark_quick_mode(tmp_path: Path, one_thread: None) -> None:
    """The benchmark's ``--quick`` CPU run completes and writes every section to JSON."""
    module = load_benchmark("particle_layer")
    out = tmp_path / "results.json"
    module.main(["--quick", "--out", str(out)])
    assert torch.tensor([1e-40]).item() != 0  # flush-to-zero is switched back off
    results = json.loads(out.read_text())
    assert results["device"] == "cpu"
    shapes = results["layer"]
    assert shapes and all({"dense", "reference", "chunked"} <= set(row["paths"]) for row in shapes)
    for row in shapes:
        dense = row["paths"]["dense"]
        for path in row["paths"].values():
            if path["ms"] is not None:
                assert path["ratio"] == pytest.approx(path["ms"] / dense["ms"])
    assert {row["fraction"] for row in results["cutoff"]} == {0.01, 0.1, 0.5}
    assert all(row["shape"] == [8, 512, 512] for row in results["cutoff"])
    assert results["epoch"]["particle_s"] > 0 and results["epoch"]["mlp_s"] > 0


def test_cpu_layer_benchmark_counts_operations(tmp_path: Path, one_thread: None) -> None:
    """The CPU benchmark's ``ops`` section counts what each path dispatches per step (the
    particle layer more than ``nn.Linear``, which needs at least its three products) and
    times one small operation in each setting."""
    module = load_benchmark("cpu_layer")
    out = tmp_path / "ops.json"
    results = module.main(["--quick", "--sections", "ops", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    counts = results["ops"]["operations"]
    assert 3 <= counts["dense"] < counts["matmul"]
    assert set(results["ops"]["1t"]) == {"alone", "after x k", "after exp over [N, M]"}
    assert min(results["ops"]["1t"].values()) > 0


def test_cpu_layer_benchmark_compares_another_matmul_module(
    tmp_path: Path, one_thread: None
) -> None:
    """``--versus FILE`` times another version of the matmul path beside this one (here the
    same file: both run, each against ``nn.Linear``); without the file it is not run."""
    module = load_benchmark("cpu_layer")
    this_file = Path(__file__).resolve().parents[1] / "particlesim" / "kernels" / "matmul.py"
    results = module.main(
        ["--quick", "--sections", "versus", "--threads", "1", "--versus", str(this_file)]
    )
    (row,) = results["versus"].values()
    assert row["dense_ms"] > 0 and row["this"] > 0 and row["versus"] > 0
    with pytest.raises(SystemExit, match="needs --versus FILE"):
        module.main(["--quick", "--sections", "versus", "--threads", "1"])


def test_host_overhead_benchmark_restores_the_launcher(tmp_path: Path) -> None:
    """The host-cost benchmark stubs the fused launches only while it measures."""
    pytest.importorskip("triton")
    from particlesim.kernels import fused

    module = load_benchmark("host_overhead")
    before = fused._launch, fused._interpreting, torch.get_num_threads()
    out = tmp_path / "host.json"
    results = module.main(["--calls", "8", "--out", str(out)])
    assert (fused._launch, fused._interpreting, torch.get_num_threads()) == before
    assert json.loads(out.read_text()) == results
    assert results["call_ratio"] == pytest.approx(
        results["fused_call_us"] / results["linear_call_us"]
    )
    assert results["step_ratio"] == pytest.approx(
        results["particle_step_us"] / results["mlp_step_us"]
    )
    assert results["floor_ratio"] == pytest.approx(
        results["floor_call_us"] / results["linear_call_us"]
    )
    assert min(results.values()) > 0


# --------------------------------------------------------------------------- scenarios

SCENARIO = """
[data]
name = "idx"
data_dir = "{data_dir}"

[[groups]]
name = "input"
size = 16
dim = 2
layout = "grid"

[[groups]]
name = "hidden"
size = 6
dim = 2
activation = "tanh"

[[groups]]
name = "output"
size = 3
dim = 2

{interaction}

[[interactions]]
name = "modulated"
source = "hidden"
target = "output"
backend = "chunked"
kernel = {{ name = "cauchy", cutoff = 4.0 }}

[run]
steps = 3
batch_size = 8
"""


def readme_interaction() -> str:
    """The ``[[interactions]]`` example of README.md's backends section, verbatim."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    opening = text.index("```toml\n", text.index("#### Backends")) + len("```toml\n")
    block = text[opening : text.index("```", opening)]
    assert "backend" in block and "cutoff" in block
    return block


def test_readme_backend_example_builds_and_runs(tiny_data: Path) -> None:
    from particlesim.plugins.manager import PluginManager
    from particlesim.scenario.builder import build, validate
    from particlesim.scenario.loader import parse_scenario

    text = SCENARIO.format(data_dir=tiny_data, interaction=readme_interaction())
    registries = PluginManager().load().registries
    plan = validate(parse_scenario(text, source="s.toml"), registries, source="s.toml")
    built = build(plan, device="cpu", log=lambda m: None)
    first, second = built.system.interactions
    assert (first.backend, first.neighbours.skin, first.kernel.cutoff) == ("auto", 0.1, 3.0)
    assert first.kernel.switch_on == pytest.approx(2.4)
    assert second.backend == "chunked" and second.kernel.cutoff == 4.0
    assert built.simulation.run().status == "completed"
    assert second.neighbours.builds >= 1  # the chunked path used the neighbour list

    for old, new, expected in [
        ("cutoff = 3.0", "cutoff = -3.0", "interactions[0].kernel: kernel 'gaussian': cutoff must"),
        ("skin = 0.1", "skin = -0.1", "interactions[0].skin: must be a finite distance >= 0"),
        ('backend = "auto"', 'backend = "fast"', "interactions[0].backend: expected one of 'auto'"),
    ]:
        bad = text.replace(old, new, 1)
        with pytest.raises(ScenarioError, match=re.escape(expected)):
            raw = parse_scenario(bad, source="s.toml")
            build(validate(raw, registries, source="s.toml"), device="cpu", log=lambda m: None)


# --------------------------------------------------------------------------- kernels of users


class Matern32Kernel(RadialKernel):
    """A user's Matérn-3/2 kernel, ``f(u) = (1 + √(3u)) e^{−√(3u)}``, written as a plugin would."""

    name = "matern32"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        s = torch.sqrt(3.0 * u)
        return (1.0 + s) * torch.exp(-s)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -1.5 * torch.exp(-torch.sqrt(3.0 * u))


class MexicanHatKernel(RadialKernel):
    """A user's Mexican-hat kernel, ``f(u) = (1 − u) e^{−u/2}``: negative beyond one width."""

    name = "mexican_hat"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return (1.0 - u) * torch.exp(-0.5 * u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return (0.5 * u - 1.5) * torch.exp(-0.5 * u)


@pytest.mark.parametrize("cls", [Matern32Kernel, MexicanHatKernel])
@pytest.mark.parametrize("options", [{}, {"cutoff": 2.0}, {"width": [0.8, 1.6]}])
def test_user_radial_kernel_paths_agree_and_pass_gradcheck(
    cls: type[RadialKernel], options: dict, small_cutoff_tiles: None
) -> None:
    """A plugin's profile gets the closed-form chunked backward; it must equal the reference."""
    options = {"width": 1.2, **options}
    kernel = cls(learnable_width=True, **options).to(F64)
    assert ops._uses_closed_form(kernel)
    inp = make_inputs(3, 9, 7, 2, kernel.channels, seed=11)
    compare_paths(kernel, inp, chunk=3)  # includes d/d log σ
    names = [k for k, v in inp.items() if v is not None]

    def fn(*tensors: Tensor) -> Tensor:
        return run_path("chunked", kernel, dict(inp, **dict(zip(names, tensors, strict=False))), 3)

    assert torch.autograd.gradcheck(fn, (*[inp[k] for k in names], kernel.log_width))


class _WrongShapeKernel(Kernel):
    """Returns ``k`` transposed (``[N, M]``), or a single column that would only broadcast."""

    name = "wrong_shape"

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        k = torch.exp(-squared_distance(target, source))
        return {"transposed": k.T, "column": k[:, :1], "row": k.sum(0)}[self.mode]


@pytest.mark.parametrize("path", ["reference", "chunked"])
@pytest.mark.parametrize(
    ("mode", "got"), [("transposed", "[5, 4]"), ("column", "[4, 1]"), ("row", "[5]")]
)
def test_kernel_output_of_the_wrong_shape_is_one_error_naming_the_kernel(
    path: str, mode: str, got: str
) -> None:
    from particlesim.errors import ParticlesimError
    from particlesim.kernels import KernelError

    g = torch.Generator().manual_seed(0)
    x, rh, rj = torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g), torch.randn(5, 2)
    with pytest.raises(KernelError) as info:
        kernel_matmul(x, _WrongShapeKernel(mode), rh, rj, torch.ones(4), backend=path)
    assert isinstance(info.value, ParticlesimError) and isinstance(info.value, ValueError)
    assert str(info.value) == (
        f"kernel 'wrong_shape' (_WrongShapeKernel in {Path(__file__).resolve()}) returned shape "
        f"{got} for 4 target and 5 source particles; expected [4, 5] "
        "(forward(target [M, D], source [N, D]) -> [M, N])"
    )


def test_fused_fallback_names_an_unsupported_kernel_before_a_missing_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installing Triton would not help a kernel of one's own: say so first."""
    from particlesim.kernels import fused

    monkeypatch.setattr(fused, "_TRITON_FOUND", False)
    x, rh, rj = torch.ones(1, 3), torch.zeros(2, 2), torch.ones(3, 2)
    assert fused.fused_unsupported(Matern32Kernel(), x, rh, rj) == (
        "fused versions exist only for the built-in gaussian, cauchy and exponential kernels, "
        "not Matern32Kernel"
    )
    assert fused.fused_unsupported(GaussianKernel(), x, rh, rj) == "Triton is not installed"


# --------------------------------------------------------------------------- particlesim.nn


def test_particle_linear_takes_any_leading_dimensions_like_nn_linear() -> None:
    from particlesim.nn import ParticleLinear

    layer = ParticleLinear(6, 4, dim=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    y = layer(x)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y, x @ layer.weight.T + layer.bias)
    torch.testing.assert_close(layer(x[0, 0]), y[0, 0])  # one unbatched sample
    with pytest.raises(ValueError, match=r"^ParticleLinear\(6 -> 4\) expects input of shape "):
        layer(torch.randn(3, 5))


def test_particle_linear_with_a_multi_width_kernel() -> None:
    """``C`` widths give ``[M, C]`` charges and ``W = Σ_c q_c k_c`` (unit-norm rows at start)."""
    from particlesim.nn import ParticleLinear

    kernel = GaussianKernel([0.5, 2.0])
    layer = ParticleLinear(7, 5, dim=2, kernel=kernel, generator=torch.Generator().manual_seed(2))
    assert layer.charge.shape == (5, 2)
    k = kernel(layer.position, layer.source_position)
    expected = torch.einsum("cmn,mc->mn", k, layer.charge)
    torch.testing.assert_close(layer.weight, expected)
    x = torch.randn(3, 7)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.bias)


def test_particle_linear_keeps_its_neighbour_list_between_calls() -> None:
    """With a cutoff kernel the list is built once and reused while the particles stay put."""
    from particlesim.nn import ParticleLinear

    kernel = GaussianKernel(cutoff=1.5)
    layer = ParticleLinear(40, 30, dim=2, kernel=kernel, backend="chunked")
    x = torch.randn(4, 40)
    first = layer(x)
    second = layer(x)
    assert layer.neighbours.builds == 1
    torch.testing.assert_close(second, first)
    torch.testing.assert_close(first, x @ layer.weight.T + layer.bias)
    with torch.no_grad():
        layer.position.add_(1.0)  # far past skin / 2: rebuilt
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)
    assert layer.neighbours.builds == 2


def test_particle_layers_in_a_users_module(tmp_path: Path) -> None:
    """state_dict round trip (weights_only), deepcopy and functional_call keep shared positions."""
    import copy

    from torch.func import functional_call

    from particlesim.nn import ParticleLinear

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(4)
            kernel = MexicanHatKernel(1.5, learnable_width=True)
            self.hidden = ParticleLinear(6, 5, dim=2, kernel=kernel, generator=g)
            self.out = ParticleLinear(5, 3, dim=2, source_position=self.hidden.position)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(torch.tanh(self.hidden(x)))

    net, x = Net(), torch.randn(4, 6)
    names = [name for name, _ in net.named_parameters()]
    assert names == [
        "hidden.source_position",
        "hidden.position",
        "hidden.charge",
        "hidden.bias",
        "hidden.kernel.log_width",
        "out.position",
        "out.charge",
        "out.bias",
    ]
    torch.save(net.state_dict(), tmp_path / "net.pt")
    other = Net()
    other.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    torch.testing.assert_close(other(x), net(x))
    assert other.out.source_position is other.hidden.position
    twin = copy.deepcopy(net).double()
    assert twin.out.source_position is twin.hidden.position
    torch.testing.assert_close(twin(x.double()), net(x).double(), rtol=1e-5, atol=1e-6)
    moved = {
        name: p.detach() + 0.1 * (name == "hidden.position") for name, p in net.named_parameters()
    }
    with torch.no_grad():
        twin.hidden.position.copy_(moved["hidden.position"].double())
    torch.testing.assert_close(  # the shift reaches out.source_position too (tied)
        functional_call(net, moved, (x,)), twin(x.double()).float(), rtol=1e-5, atol=1e-6
    )


def test_particle_mlp_gradcheck_through_the_chunked_path() -> None:
    from particlesim.nn import particle_mlp

    net = particle_mlp(
        [5, 4, 3], dim=2, backend="chunked", generator=torch.Generator().manual_seed(5)
    ).double()
    x = torch.randn(2, 5, dtype=F64, requires_grad=True)
    params = dict(net.named_parameters())

    def fn(x: Tensor, *tensors: Tensor) -> Tensor:
        from torch.func import functional_call

        return functional_call(net, dict(zip(params, tensors, strict=True)), (x,))

    assert torch.autograd.gradcheck(
        fn, (x, *[p.detach().requires_grad_() for p in params.values()])
    )


def test_particle_mlp_gives_each_layer_its_own_kernel() -> None:
    """A kernel passed to particle_mlp is copied: each layer learns its own width."""
    from particlesim.nn import particle_mlp

    kernel = GaussianKernel(width=0.7, learnable_width=True)
    net = particle_mlp([6, 5, 4, 3], dim=2, kernel=kernel)
    kernels = [layer.kernel for layer in net if hasattr(layer, "kernel")]
    assert len(kernels) == 3 and len({id(k) for k in kernels}) == 3
    assert all(k is not kernel for k in kernels)
    widths = [name for name, _ in net.named_parameters() if name.endswith("log_width")]
    assert widths == ["0.kernel.log_width", "2.kernel.log_width", "4.kernel.log_width"]
    torch.testing.assert_close(kernels[2].log_width, kernel.log_width)


def test_particle_linear_fused_fallback_warning_names_the_layer() -> None:
    from particlesim.nn import ParticleLinear

    layer = ParticleLinear(6, 4, dim=2, kernel=Matern32Kernel(), backend="fused")
    with pytest.warns(UserWarning, match=r"^ParticleLinear\(6 -> 4\): the fused backend cannot"):
        layer(torch.randn(2, 6))
