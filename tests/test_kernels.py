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

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from particlesim.kernels import ops
from particlesim.kernels.base import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    RadialKernel,
)
from particlesim.kernels.ops import (
    default_chunk_size,
    effective_weight,
    kernel_matmul,
    kernel_matmul_chunked,
    kernel_matmul_reference,
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
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
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
    kernel = make_kernel("gaussian", 1)
    inp = make_inputs(2, 6, 4, 2, 1)
    args = (inp["x"], kernel, inp["target_pos"], inp["source_pos"], inp["charge"])

    def chosen(**kw: object) -> str:
        name = type(kernel_matmul(*args, **kw).grad_fn).__name__  # type: ignore[arg-type]
        return "chunked" if "KernelMatmulChunked" in name else "reference"

    assert ops.AUTO_REFERENCE_MAX_ELEMENTS == 2**22
    assert chosen() == "reference"
    monkeypatch.setattr(ops, "AUTO_REFERENCE_MAX_ELEMENTS", 23)  # M·N = 24 > 23
    assert chosen() == "chunked"
    assert chosen(mode="reference") == "reference"
    monkeypatch.setattr(ops, "AUTO_REFERENCE_MAX_ELEMENTS", 24)
    assert chosen() == "reference"
    assert chosen(mode="chunked", chunk_size=3) == "chunked"
    torch.testing.assert_close(kernel_matmul(*args, mode="chunked"), kernel_matmul(*args))
    with pytest.raises(ValueError, match="mode must be"):
        kernel_matmul(*args, mode="dense")  # type: ignore[arg-type]


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


@pytest.mark.parametrize("mode", ["reference", "chunked"])
def test_two_layer_gradients_match_lange_equations(mode: str) -> None:
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
    a_h = kernel_matmul(b_i, kernel, tr["h"], tr["i"], tq["h"], mode=mode, chunk_size=2)
    a_k = kernel_matmul(torch.tanh(a_h), kernel, tr["k"], tr["h"], tq["k"], mode=mode, chunk_size=2)
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
