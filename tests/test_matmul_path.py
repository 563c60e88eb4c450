"""The matmul path (``backend="matmul"``, the CPU default for radial kernels): gradients
against finite differences, results against the reference path, translation, memory in
blocks, and its errors."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from particlesim.kernels import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    RadialKernel,
    kernel_matmul,
    scalar_math,
)
from particlesim.kernels import matmul as matmul_path
from particlesim.kernels.base import KernelError
from particlesim.kernels.matmul import kernel_matmul_matmul
from particlesim.kernels.ops import kernel_matmul_reference, select_backend

F64 = torch.float64


class StudentTKernel(RadialKernel):
    """A kernel as a plugin writes one: ``(1 + u/3)^-2`` and its derivative."""

    name = "student_t"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return (1.0 + u / 3.0).pow(-2.0)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -(2.0 / 3.0) * (1.0 + u / 3.0).pow(-3.0)


class StudentTFromValueKernel(StudentTKernel):
    """The same kernel with its derivative from the kernel's value (no second power)."""

    name = "student_t_from_value"

    @staticmethod
    def profile_derivative_from_value(u: Tensor, value: Tensor) -> Tensor:
        return value / (1.0 + u / 3.0) * (-2.0 / 3.0)


class StudentTScalarKernel(StudentTFromValueKernel):
    """The same kernel also as functions of one number: the fused loops compile it in."""

    name = "student_t_scalar"

    @staticmethod
    def scalar_profile(u: float) -> float:
        return scalar_math.pow(1.0 + u / 3.0, -2.0)

    @staticmethod
    def scalar_profile_derivative(u: float, value: float) -> float:
        return value / (1.0 + u / 3.0) * (-2.0 / 3.0)


class RisingKernel(RadialKernel):
    """``f = exp(u)``, ``f' = f``: a derivative that returns the saved kernel itself."""

    name = "rising"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return torch.exp(u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return torch.exp(u)

    @staticmethod
    def profile_derivative_from_value(u: Tensor, value: Tensor) -> Tensor:
        return value


class NoDerivativeKernel(RadialKernel):
    """A radial kernel built in a notebook without ``profile_derivative``."""

    name = "no_derivative"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return 1.0 / (1.0 + u)


FAMILIES = [
    GaussianKernel,
    CauchyKernel,
    ExponentialKernel,
    StudentTKernel,
    StudentTFromValueKernel,
]


def make(
    family: type[RadialKernel],
    channels: int,
    *,
    charge: bool = True,
    modulation: bool = False,
    cutoff: bool = False,
    learnable: bool = False,
    shape: tuple[int, int, int, int] = (5, 7, 6, 3),
    dtype: torch.dtype = F64,
    spread: float = 1.0,
    seed: int = 0,
) -> tuple[RadialKernel, dict[str, Tensor | None]]:
    B, N, M, D = shape
    g = torch.Generator().manual_seed(seed)
    widths = 1.3 if channels == 1 else [0.6 * (c + 1) for c in range(channels)]
    kernel = family(widths, learnable_width=learnable, cutoff=2.5 * spread if cutoff else None)
    kernel = kernel.to(dtype)

    def leaf(*size: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*size, generator=g, dtype=dtype) * scale).requires_grad_()

    inputs = {
        "x": leaf(B, N),
        "target_pos": leaf(M, D, scale=spread),
        "source_pos": leaf(N, D, scale=spread),
        "charge": (leaf(M) if channels == 1 else leaf(M, channels)) if charge else None,
        "modulation": leaf(M, N) if modulation else None,
    }
    return kernel, inputs


def call(path, kernel: RadialKernel, inputs: dict[str, Tensor | None]) -> Tensor:
    return path(
        inputs["x"],
        kernel,
        inputs["target_pos"],
        inputs["source_pos"],
        inputs["charge"],
        inputs["modulation"],
    )


@pytest.fixture(params=["kept", "blocks"])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both regimes: the kernel kept for backward, or recomputed in blocks of 2 rows."""
    if request.param == "blocks":
        monkeypatch.setattr(matmul_path, "SAVED_MAX_ELEMENTS", 0)
        monkeypatch.setattr(matmul_path, "BLOCK_ELEMENTS", 1)  # one row per block
    return request.param


@pytest.mark.parametrize("channels", [1, 3])
def test_a_derivative_returning_the_saved_kernel_itself_leaves_it_intact(
    blocks: str, channels: int
) -> None:
    """The backward scales ``f'`` in place: a ``profile_derivative_from_value`` that returns
    its ``value`` argument (``f' = f``) must not overwrite the kernel saved for later uses."""
    kernel, inputs = make(RisingKernel, channels, spread=0.3, learnable=True)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors: Tensor) -> Tensor:
        given = dict(zip(names, tensors[: len(names)], strict=True))
        return call(kernel_matmul_matmul, kernel, {**inputs, **given})

    assert torch.autograd.gradcheck(f, (*[inputs[n] for n in names], kernel.log_width))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("channels", "charge", "modulation", "cutoff", "learnable"),
    [
        (1, True, False, False, False),
        (1, True, False, False, True),
        (1, False, True, True, False),
        (3, True, False, False, True),
        (3, True, True, True, True),
        (3, False, False, False, False),
    ],
)
def test_gradcheck_every_family(
    blocks: str, family, channels, charge, modulation, cutoff, learnable
) -> None:
    kernel, inputs = make(
        family, channels, charge=charge, modulation=modulation, cutoff=cutoff, learnable=learnable
    )
    names = [k for k, v in inputs.items() if v is not None]
    extra = [kernel.log_width] if learnable else []

    def f(*tensors: Tensor) -> Tensor:
        given = dict(zip(names, tensors[: len(names)], strict=True))
        return call(kernel_matmul_matmul, kernel, {**inputs, **given})

    assert torch.autograd.gradcheck(f, (*[inputs[n] for n in names], *extra))


def test_agrees_with_the_reference_path_in_float32_on_random_layers(blocks: str) -> None:
    """Random shapes, families, channel counts, cutoffs and modulation at realistic spreads:
    outputs and every gradient within 1e-5 relative (to each tensor's largest entry); 1e-4
    for the exponential, whose derivative ``−e^{−√u}/(2√u)`` amplifies the float32
    rounding of near-coincident pairs on every path (the chunked path differs from the
    reference path by as much)."""
    rng = random.Random(5)
    for trial in range(24):
        family = rng.choice(FAMILIES)
        channels = rng.choice([1, 1, 2, 3])
        shape = (rng.randint(1, 9), rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 4))
        kernel, inputs = make(
            family,
            channels,
            charge=rng.random() < 0.8,
            modulation=rng.random() < 0.3,
            cutoff=rng.random() < 0.3,
            learnable=rng.random() < 0.3,
            shape=shape,
            dtype=torch.float32,
            spread=rng.choice([0.5, 1.0, 2.0]),
            seed=trial,
        )
        leaves = [v for v in inputs.values() if v is not None]
        if kernel.log_width.requires_grad:
            leaves.append(kernel.log_width)
        gy = torch.randn(shape[0], shape[2], generator=torch.Generator().manual_seed(trial))
        tolerance = 1e-4 if family is ExponentialKernel else 1e-5
        assert_matches_reference(kernel, inputs, leaves, gy, tolerance, (trial, family, shape))


def assert_matches_reference(
    kernel: RadialKernel,
    inputs: dict[str, Tensor | None],
    leaves: list[Tensor],
    gy: Tensor,
    tolerance: float = 1e-5,
    label: object = None,
) -> None:
    """The matmul path's output and its gradients for ``leaves`` (from ``gy``) against the
    reference path's, within ``tolerance`` relative to each tensor's largest entry."""
    got = call(kernel_matmul_matmul, kernel, inputs)
    want = call(kernel_matmul_reference, kernel, inputs)
    for a, b in zip(
        [got, *torch.autograd.grad(got, leaves, gy)],
        [want, *torch.autograd.grad(want, leaves, gy)],
        strict=True,
    ):
        assert a.shape == b.shape, label
        scale = b.detach().abs().max().clamp_min(1e-30)
        assert ((a.detach() - b.detach()).abs().max() / scale) <= tolerance, label


def test_a_translation_by_100_changes_nothing_beyond_float32_rounding() -> None:
    """Positions are measured from their centre before |a|² + |b|² − 2a·b: no cancellation."""
    kernel, inputs = make(GaussianKernel, 1, shape=(1, 30, 20, 3), dtype=torch.float32)
    eye = torch.eye(30)  # x = I: y = Wᵀ, every weight compared
    moved = {**inputs, "x": eye}
    w = call(kernel_matmul_matmul, kernel, moved)
    shift = torch.tensor([100.0, -100.0, 100.0])
    far = {
        **moved,
        "target_pos": inputs["target_pos"].detach() + shift,
        "source_pos": inputs["source_pos"].detach() + shift,
    }
    torch.testing.assert_close(call(kernel_matmul_matmul, kernel, far), w, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(
        w, call(kernel_matmul_reference, kernel, moved), rtol=1e-5, atol=1e-7
    )


def test_far_pairs_are_exactly_zero_not_subnormal() -> None:
    """exp(−u) below float32's smallest normal number is 0 (subnormals halve CPU matmuls)."""
    kernel = GaussianKernel(0.5)
    target = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    source = torch.tensor([[0.0, 0.0], [0.1, 0.0]])
    w = kernel_matmul_matmul(torch.eye(2), kernel, target, source).T  # [M, N]
    assert float(w[1].abs().max()) == 0.0  # u = 400: exp(−400) underflows to 0
    tiny = torch.finfo(torch.float32).tiny
    assert not bool(((w > 0) & (w < tiny)).any())
    torch.testing.assert_close(w[0], torch.exp(-torch.tensor([0.0, 0.04])))


def test_blocks_keep_memory_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above SAVED_MAX_ELEMENTS the layer is walked in row blocks: the peak of what a step
    creates stays a few blocks, far below one [M, N] array."""
    from particlesim.scenario.preflight import _Tracker

    B, N, M = 4, 512, 512
    kernel, inputs = make(GaussianKernel, 1, shape=(B, N, M, 3), dtype=torch.float32)
    monkeypatch.setattr(matmul_path, "SAVED_MAX_ELEMENTS", 2**14)
    monkeypatch.setattr(matmul_path, "BLOCK_ELEMENTS", 16 * N)  # 16 rows a block
    gy = torch.ones(B, M)
    with _Tracker() as tracker:
        call(kernel_matmul_matmul, kernel, inputs).backward(gy)
    whole = M * N * 4
    assert tracker.peak < whole / 4, (tracker.peak, whole)
    monkeypatch.setattr(matmul_path, "SAVED_MAX_ELEMENTS", 2**22)
    with _Tracker() as kept:  # below the limit the kernel is kept: about one [M, N] array
        call(kernel_matmul_matmul, kernel, inputs).backward(gy)
    assert kept.peak >= whole


@pytest.mark.parametrize("where", ["target_pos", "source_pos"])
def test_positions_that_are_not_finite_are_one_line_naming_layer_and_kernel(where: str) -> None:
    kernel, inputs = make(GaussianKernel, 1, dtype=torch.float32)
    bad = inputs[where].detach().clone()
    bad[2, 1] = float("nan")
    with pytest.raises(KernelError) as info:
        kernel_matmul(
            inputs["x"],
            kernel,
            *(
                (bad, inputs["source_pos"])
                if where == "target_pos"
                else (inputs["target_pos"], bad)
            ),
            inputs["charge"],
            where="interaction hidden1 -> output",
        )
    message = str(info.value)
    assert "\n" not in message
    side = where.split("_")[0]
    assert message.startswith("interaction hidden1 -> output: kernel 'gaussian' (GaussianKernel")
    assert f"{side} position 2 is not finite" in message


def test_a_radial_kernel_without_its_derivative_takes_the_reference_path() -> None:
    _, inputs = make(CauchyKernel, 1, dtype=torch.float32)
    plain = NoDerivativeKernel(1.3)
    args = (inputs["x"], plain, inputs["target_pos"], inputs["source_pos"], inputs["charge"])
    assert select_backend(*args) == "reference"
    with pytest.warns(UserWarning, match="the matmul backend needs a radial kernel"):
        assert select_backend(*args, backend="matmul") == "reference"
    y = kernel_matmul(*args)
    y.sum().backward()  # autograd through the profile: no NotImplementedError
    assert inputs["target_pos"].grad is not None


def test_every_combination_matches_the_chunked_path() -> None:
    """The two closed-form paths agree on every option (float64, tight)."""
    for family, channels, charge, modulation, cutoff in itertools.product(
        FAMILIES, [1, 2], [True, False], [True, False], [True, False]
    ):
        kernel, inputs = make(family, channels, charge=charge, modulation=modulation, cutoff=cutoff)
        got = call(kernel_matmul_matmul, kernel, inputs)
        want = kernel_matmul(
            inputs["x"],
            kernel,
            inputs["target_pos"],
            inputs["source_pos"],
            inputs["charge"],
            inputs["modulation"],
            backend="chunked",
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.fixture(params=["fused loops", "fused loops in threads", "tensor operations"])
def lean_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The common layer's path in both its forms: Numba's fused loops (the default on CPU),
    in the calling thread and with their rows shared out between two threads (at any size),
    and tensor operations (without Numba, and under the memory preflight's fake tensors)."""
    from particlesim.kernels import numba_cpu

    monkeypatch.setattr(matmul_path, "FUSED_CPU", request.param != "tensor operations")
    threads = torch.get_num_threads()
    if request.param == "fused loops in threads":
        monkeypatch.setattr(numba_cpu, "THREADED_MIN_PAIRS", 0)
        torch.set_num_threads(2)
    try:
        yield request.param
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "family", [GaussianKernel, CauchyKernel, StudentTFromValueKernel, StudentTScalarKernel]
)
@pytest.mark.parametrize("charge_shape", ["[M]", "[M, 1]", "none"])
@pytest.mark.parametrize("cache_block", ["whole", "7 rows", "1 row"])
def test_the_lean_path_equals_the_general_one(
    monkeypatch: pytest.MonkeyPatch,
    lean_form: str,
    family: type[RadialKernel],
    charge_shape: str,
    cache_block: str,
) -> None:
    """The common layer (one channel, no cutoff, no modulation, a fixed width) takes a
    path of fewer operations; its output and every gradient are the general path's, with
    the kernel made whole or in cache blocks of source rows (the last one shorter)."""
    rows = {"whole": 30, "7 rows": 7, "1 row": 1}[cache_block]
    monkeypatch.setattr(matmul_path, "CACHE_BLOCK_ELEMENTS", rows * 20)
    kernel, inputs = make(
        family, 1, charge=charge_shape != "none", shape=(6, 30, 20, 3), dtype=torch.float32
    )
    if charge_shape == "[M, 1]":
        inputs["charge"] = inputs["charge"].detach().reshape(-1, 1).requires_grad_()
    leaves = [v for v in inputs.values() if v is not None]
    gy = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    lean = call(kernel_matmul_matmul, kernel, inputs)
    assert type(lean.grad_fn).__name__ == "_LeanRadialMatmulBackward"
    lean_grads = torch.autograd.grad(lean, leaves, gy)
    monkeypatch.setattr(matmul_path, "_lean_fits", lambda *args: False)
    general = call(kernel_matmul_matmul, kernel, inputs)
    assert type(general.grad_fn).__name__ == "_RadialMatmulBackward"
    for a, b in zip(
        [lean, *lean_grads], [general, *torch.autograd.grad(general, leaves, gy)], strict=True
    ):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.detach().abs().max()))


@pytest.mark.parametrize("family", [GaussianKernel, CauchyKernel, StudentTScalarKernel])
def test_the_lean_path_in_cache_blocks_passes_gradcheck(
    monkeypatch: pytest.MonkeyPatch, lean_form: str, family: type[RadialKernel]
) -> None:
    """Float64 gradients of the common layer, its kernel made in blocks of 2 source rows."""
    monkeypatch.setattr(matmul_path, "CACHE_BLOCK_ELEMENTS", 2 * 4)
    kernel, inputs = make(family, 1, charge=True, shape=(3, 5, 4, 2))
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors: Tensor) -> Tensor:
        out = call(
            kernel_matmul_matmul, kernel, {**inputs, **dict(zip(names, tensors, strict=True))}
        )
        assert type(out.grad_fn).__name__ == "_LeanRadialMatmulBackward"
        return out

    assert torch.autograd.gradcheck(f, tuple(inputs[n] for n in names))


@pytest.mark.parametrize("moving", ["target", "source", "both"])
def test_the_lean_path_s_position_gradients_for_either_set_alone(
    monkeypatch: pytest.MonkeyPatch, lean_form: str, moving: str
) -> None:
    """With one particle set frozen (an input layer's fixed positions) the other's gradient
    is still the general path's."""
    kernel, inputs = make(CauchyKernel, 1, shape=(4, 9, 6, 3), dtype=torch.float32)
    if moving != "both":
        frozen = "source_pos" if moving == "target" else "target_pos"
        inputs[frozen] = inputs[frozen].detach()
    leaves = [v for v in inputs.values() if v is not None and v.requires_grad]
    lean = call(kernel_matmul_matmul, kernel, inputs)
    assert type(lean.grad_fn).__name__ == "_LeanRadialMatmulBackward"
    lean_grads = torch.autograd.grad(lean.square().sum(), leaves)
    monkeypatch.setattr(matmul_path, "_lean_fits", lambda *args: False)
    general = call(kernel_matmul_matmul, kernel, inputs)
    general_grads = torch.autograd.grad(general.square().sum(), leaves)
    for a, b in zip(lean_grads, general_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
        assert a.is_contiguous()


@pytest.mark.parametrize("cache_block", ["whole", "blocks"])
@pytest.mark.parametrize(("spread", "width"), [(30.0, 0.1), (300.0, 0.03), (1000.0, 0.01)])
def test_the_gaussian_stays_in_0_1_for_positions_far_apart_in_widths(
    monkeypatch: pytest.MonkeyPatch, lean_form: str, cache_block: str, spread: float, width: float
) -> None:
    """The thin product's rounding of ``−u`` (``ε·|r|²/σ²``) comes out above 0 for some
    pairs of positions hundreds of widths apart; the kernel is clamped to 1 there, as
    every entry of the reference path is at most 1, instead of growing past it (1.13 at
    30 / 0.1) or to infinity (at 1000 / 0.01)."""
    if cache_block == "blocks":
        monkeypatch.setattr(matmul_path, "CACHE_BLOCK_ELEMENTS", 8 * 64)
    positions = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * spread
    kernel = GaussianKernel(width)
    x = torch.eye(64).requires_grad_()
    columns = kernel_matmul_matmul(x, kernel, positions, positions)
    assert type(columns.grad_fn).__name__ == "_LeanRadialMatmulBackward"
    columns = columns.detach()
    assert bool(torch.isfinite(columns).all())
    assert float(columns.min()) >= 0.0 and float(columns.max()) <= 1.0


def test_the_lean_path_refuses_a_derivative_that_changes_the_kernel_in_place(
    lean_form: str,
) -> None:
    """A ``profile_derivative_from_value`` that overwrites ``value`` would change the kernel
    the layer multiplies by (the forward makes the derivative before the product): one
    error naming the kernel instead of a wrong output."""

    class Overwrites(CauchyKernel):
        name = "overwrites"
        scalar_profile = scalar_profile_derivative = None  # the tensor profile, block by block

        @classmethod
        def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
            return value.square_().neg_()

    target = torch.randn(5, 3, requires_grad=True)
    with pytest.raises(
        KernelError,
        match=r"kernel 'overwrites' .*: profile_derivative_from_"
        r"value\(u, value\) changed value in place; it must return a new",
    ):
        kernel_matmul_matmul(torch.randn(2, 6), Overwrites(1.0), target, torch.randn(6, 3))


@pytest.mark.parametrize(("M", "N"), [(0, 4), (3, 0), (0, 0)])
@pytest.mark.parametrize(("channels", "cutoff", "modulation"), [(1, False, False), (3, True, True)])
def test_an_empty_group_gives_the_reference_path_s_result(
    M: int, N: int, channels: int, cutoff: bool, modulation: bool
) -> None:
    """No target or no source particles: ``y`` is the reference path's ``[B, M]`` (zeros
    without sources), and so is the gradient of ``x``; positions and charges, which meet no
    pair, get none (the reference path's zeros). No error from walking no blocks."""
    kernel, inputs = make(
        CauchyKernel, channels, cutoff=cutoff, modulation=modulation, shape=(2, N, M, 3)
    )
    leaves = [v for v in inputs.values() if v is not None]
    got = call(kernel_matmul_matmul, kernel, inputs)
    want = call(kernel_matmul_reference, kernel, inputs)
    assert got.shape == (2, M)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.square().sum(), leaves, allow_unused=True)
    wants = torch.autograd.grad(want.square().sum(), leaves, allow_unused=True)
    for a, b in zip(grads, wants, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b)


def test_the_lean_path_skips_the_derivative_where_no_position_needs_a_gradient(
    monkeypatch: pytest.MonkeyPatch,
    lean_form: str,
) -> None:
    """The forward makes the profile's derivative only for the positions' gradients: with
    frozen positions (or in evaluation) it is never called, and the rest still flows."""
    calls: list[int] = []

    class Counted(CauchyKernel):
        scalar_profile = scalar_profile_derivative = None  # the tensor profile, block by block

        @classmethod
        def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
            calls.append(u.numel())
            return super().profile_derivative_from_value(u, value)

    kernel = Counted(1.0)
    x = torch.randn(4, 6, requires_grad=True)
    charge = torch.randn(5, requires_grad=True)
    frozen = torch.randn(5, 3), torch.randn(6, 3)
    y = kernel_matmul_matmul(x, kernel, *frozen, charge)
    assert type(y.grad_fn).__name__ == "_LeanRadialMatmulBackward"
    y.sum().backward()
    assert calls == [] and x.grad is not None and charge.grad is not None
    monkeypatch.setattr(matmul_path, "CACHE_BLOCK_ELEMENTS", 12)  # 2 rows of 5 or 6: 3 blocks
    moving = frozen[0].requires_grad_(), frozen[1]
    kernel_matmul_matmul(x, kernel, *moving, charge).sum().backward()
    assert len(calls) == 3 and sum(calls) == 30 and max(calls) <= 12


def test_the_lean_path_is_the_default_layer_s_and_the_general_one_the_rest() -> None:
    """Which path a call takes: a learnable width, a cutoff, modulation, several channels
    or a profile steep at 0 (the exponential) take the general one."""
    from particlesim.nn import ParticleLinear

    layer = ParticleLinear(7, 5, dim=3, bias=False)
    assert type(layer(torch.randn(2, 7)).grad_fn).__name__ == "_LeanRadialMatmulBackward"
    cases = {
        "learnable": make(GaussianKernel, 1, learnable=True),
        "cutoff": make(GaussianKernel, 1, cutoff=True),
        "modulation": make(GaussianKernel, 1, modulation=True),
        "channels": make(GaussianKernel, 3),
        "steep": make(ExponentialKernel, 1),
    }
    for name, (kernel, inputs) in cases.items():
        name_of = type(call(kernel_matmul_matmul, kernel, inputs).grad_fn).__name__
        assert name_of == "_RadialMatmulBackward", name


def test_a_call_under_fake_tensors_does_not_change_the_path_of_real_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The memory preflight runs the layer on fake tensors first; the profile's steepness
    at 0, kept per kernel class, is still measured on real numbers (a guess made there
    sent every later Gaussian call of the process down the slow exact path)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(matmul_path, "_STEEP", {})
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(4, 6))
        kernel_matmul_matmul(x, GaussianKernel(1.0), torch.randn(5, 3), torch.randn(6, 3))
    assert dict(matmul_path._STEEP) == {GaussianKernel: False}
    kernel, inputs = make(GaussianKernel, 1, dtype=torch.float32)
    out = call(kernel_matmul_matmul, kernel, inputs)
    assert type(out.grad_fn).__name__ == "_LeanRadialMatmulBackward"


def record_loop_calls(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[str]:
    """The names of the fused loops (of ``names``) called from now on, in order."""
    from particlesim.kernels import numba_cpu

    calls: list[str] = []
    for name in names:
        loop = getattr(numba_cpu.loops(), name)
        monkeypatch.setattr(
            numba_cpu.loops(), name, lambda *a, _n=name, _f=loop: (calls.append(_n), _f(*a))[1]
        )
    return calls


def test_the_common_layer_runs_the_fused_loops_on_cpu_and_tensor_operations_without_numba(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CPU with Numba the common layer's kernel and position gradients come from the
    fused loops; where Numba cannot be imported the same call takes the tensor-operation
    form, with the same output and gradients."""
    from particlesim.kernels import numba_cpu

    calls = record_loop_calls(monkeypatch, "gaussian", "distances", "backward")
    results = {}
    for available in (True, False):
        monkeypatch.setattr(numba_cpu, "available", lambda _a=available: _a)
        for family in (GaussianKernel, StudentTFromValueKernel):
            kernel, inputs = make(family, 1, shape=(4, 9, 6, 3), dtype=torch.float32)
            leaves = [v for v in inputs.values() if v is not None]
            out = call(kernel_matmul_matmul, kernel, inputs)
            results[available, family] = [out, *torch.autograd.grad(out.square().sum(), leaves)]
    assert calls == ["gaussian", "backward", "distances", "backward"]
    for family in (GaussianKernel, StudentTFromValueKernel):
        for a, b in zip(results[True, family], results[False, family], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.detach().abs().max()))


def test_the_fused_gaussian_s_exp_is_float32_exact_to_a_few_ulp_and_0_below_2_tiny() -> None:
    """The fused loops' float32 ``exp`` (a polynomial LLVM vectorises) against float64's,
    over the whole range the kernel takes: relative error below 1e-6, exactly 0 where
    ``exp(−u) < 2·tiny`` (no subnormal), and 1 at coincident positions."""
    u = torch.cat([torch.linspace(0.0, 90.0, 200_001), torch.tensor([1e3, 1e30, 1e38])])
    target = u.sqrt().reshape(-1, 1)  # |r_h − r_j|² = u at width 1
    k = kernel_matmul_matmul(torch.ones(1, 1), GaussianKernel(1.0), target, torch.zeros(1, 1))[0]
    want = torch.exp(-target[:, 0].square().double())  # of the float32 u the loop makes
    tiny = torch.finfo(torch.float32).tiny
    normal = want >= 2 * tiny
    assert float(((k.double() - want).abs() / want)[normal].max()) < 1e-6
    assert bool((k[~normal] == 0).all()) and float(k[0]) == 1.0


def test_the_fused_loops_read_positions_of_any_layout() -> None:
    """Positions given as non-contiguous views give the same output and gradients as
    contiguous ones."""
    kernel, inputs = make(CauchyKernel, 1, shape=(3, 8, 5, 3), dtype=torch.float32)
    leaves = [v for v in inputs.values() if v is not None]
    out = call(kernel_matmul_matmul, kernel, inputs)
    grads = torch.autograd.grad(out.sum(), leaves)
    target_t = inputs["target_pos"].detach().T.contiguous().requires_grad_()  # [D, M]
    source_t = inputs["source_pos"].detach().T.contiguous().requires_grad_()
    odd = {**inputs, "target_pos": target_t.T, "source_pos": source_t.T}
    assert not odd["target_pos"].is_contiguous()
    out2 = call(kernel_matmul_matmul, kernel, odd)
    grads2 = torch.autograd.grad(out2.sum(), [inputs["x"], target_t, source_t, inputs["charge"]])
    torch.testing.assert_close(out2, out)
    for a, b in zip([grads2[0], grads2[1].T, grads2[2].T, grads2[3]], grads, strict=True):
        torch.testing.assert_close(a, b)


def test_a_scalar_profile_replaces_the_tensor_profile_in_the_fused_loops(
    monkeypatch: pytest.MonkeyPatch, lean_form: str
) -> None:
    """A kernel that gives ``scalar_profile`` runs it inside the fused loops (its tensor
    ``profile`` is not called on that path), with the tensor form's output and gradients."""
    calls: list[int] = []

    class Counted(StudentTScalarKernel):
        @staticmethod
        def profile(u: Tensor) -> Tensor:
            calls.append(u.numel())
            return StudentTScalarKernel.profile(u)

    kernel, inputs = make(Counted, 1, shape=(4, 9, 6, 3), dtype=torch.float32)
    leaves = [v for v in inputs.values() if v is not None]
    got = call(kernel_matmul_matmul, kernel, inputs)
    got_grads = torch.autograd.grad(got.square().sum(), leaves)
    assert calls == ([] if lean_form != "tensor operations" else [54])
    want = call(kernel_matmul_reference, kernel, inputs)
    for a, b in zip(
        [got, *got_grads], [want, *torch.autograd.grad(want.square().sum(), leaves)], strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.detach().abs().max()))


def test_a_scalar_profile_numba_cannot_compile_is_one_error_naming_the_kernel() -> None:
    """A scalar profile written with something Numba does not know (here a torch function)
    is one line naming the kernel and what to write instead, at the first call."""

    class TorchInside(CauchyKernel):
        name = "torch_inside"

        @staticmethod
        def scalar_profile(u: float) -> float:
            return float(torch.exp(torch.tensor(-u)))

    with pytest.raises(KernelError) as info:
        kernel_matmul_matmul(
            torch.randn(2, 4), TorchInside(1.0), torch.randn(3, 3), torch.randn(4, 3)
        )
    message = str(info.value)
    assert message.startswith("kernel 'torch_inside' (")
    assert (
        "Numba could not compile scalar_profile or scalar_profile_derivative (Unknown "
        "attribute 'exp' of type Module(<module 'torch'" in message
    )
    assert message.endswith(
        "write them with + − × ÷, comparisons and particlesim.kernels.scalar_math's "
        "functions, or leave both out"
    )
    assert "\n" not in message


def test_a_zero_charge_keeps_the_gaussian_s_charge_gradient(lean_form: str) -> None:
    """The fused Gaussian folds the charges into ``W = q ⊙ k`` and reads ``∂L/∂q`` from
    ``W``; a charge of exactly 0 (a pruned neuron) leaves nothing of ``k`` in ``W``, so such
    a call keeps the charges apart: every gradient is still the reference path's."""
    kernel, inputs = make(GaussianKernel, 1, shape=(4, 9, 6, 3), dtype=torch.float32)
    with torch.no_grad():
        inputs["charge"][2] = 0.0
    leaves = [v for v in inputs.values() if v is not None]
    want = call(kernel_matmul_reference, kernel, inputs)
    gy = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    want_grads = torch.autograd.grad(want, leaves, gy)
    assert float(want_grads[3][2].abs()) > 0  # the zero charge's own gradient is not 0
    assert_matches_reference(kernel, inputs, leaves, gy)


@pytest.mark.parametrize("D", [1, 2, 3, 4, 5, 8, 12])
@pytest.mark.parametrize("family", [GaussianKernel, StudentTScalarKernel, StudentTFromValueKernel])
def test_the_fused_loops_take_any_dimension(
    monkeypatch: pytest.MonkeyPatch, lean_form: str, D: int, family: type[RadialKernel]
) -> None:
    """Up to three coordinates the loops take them in one pass (padded with zeros), above in
    passes of four (padded to a multiple of four): output and every gradient are the
    reference path's, and the position gradients keep the positions' shape. (Above
    ``FUSED_MAX_DIMENSIONS`` a layer takes the tensor form; here the loops are made to run.)"""
    monkeypatch.setattr(matmul_path, "FUSED_MAX_DIMENSIONS", 12)
    kernel, inputs = make(family, 1, shape=(3, 11, 7, D), dtype=torch.float32)
    leaves = [v for v in inputs.values() if v is not None]
    gy = torch.randn(3, 7, generator=torch.Generator().manual_seed(2))
    assert_matches_reference(kernel, inputs, leaves, gy)


def test_above_fused_max_dimensions_the_layer_takes_the_tensor_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to ``FUSED_MAX_DIMENSIONS`` the fused loops run; above, the tensor form."""
    calls = record_loop_calls(monkeypatch, "gaussian")
    for D in (matmul_path.FUSED_MAX_DIMENSIONS, matmul_path.FUSED_MAX_DIMENSIONS + 1):
        kernel, inputs = make(GaussianKernel, 1, shape=(2, 5, 4, D), dtype=torch.float32)
        call(kernel_matmul_matmul, kernel, inputs)
    assert calls == ["gaussian"]


def test_loops_that_cannot_load_are_one_warning_and_the_tensor_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Numba installed but the loops' module failing to load (a cache folder that cannot be
    written, say) turns the loops off with one warning naming why; the layer still runs."""
    from particlesim.kernels import numba_cpu

    def broken() -> None:
        raise RuntimeError("cannot cache function 'prepare': no locator available")

    monkeypatch.setattr(numba_cpu, "loops", broken)
    numba_cpu.available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"fused CPU loops are off \(RuntimeError: can"):
            assert not numba_cpu.available()
        kernel, inputs = make(GaussianKernel, 1, shape=(2, 5, 4, 3), dtype=torch.float32)
        out = call(kernel_matmul_matmul, kernel, inputs)
        assert type(out.grad_fn).__name__ == "_LeanRadialMatmulBackward"
    finally:
        numba_cpu.available.cache_clear()
