"""Fused Triton path of a kernel interaction: ``y = x @ W.T`` with ``W`` never in memory.

The effective weight of a radial kernel interaction is

    W[h, j] = modulation[h, j] · Sw(r²) · Σ_c charge[h, c] · f(u_c),   u_c = r² / σ_c²,
    r² = |r_h − r_j|²

(``charge=None`` means 1 on every channel, ``modulation=None`` means 1 everywhere, ``Sw`` is
the kernel cutoff's XPLOR switch, 1 without a cutoff). The chunked path of
:mod:`particlesim.kernels.ops` materialises one block of rows of ``W`` at a time; here every
tile of ``W`` lives only in registers:

* forward: one program per ``(B-tile, M-tile)`` loops over the source tiles, builds the
  ``[BLOCK_M, BLOCK_N]`` tile of ``W`` from the positions (one coordinate at a time, so no
  ``[M, N, D]`` intermediate) and accumulates ``W_tile @ x_tileᵀ`` with ``tl.dot`` in
  float32 (``W`` is the register-resident operand, as ``P`` is in flash attention);
* backward, ``∂L/∂x = grad_y @ W``: one program per ``(B-tile, N-tile)`` loops over the
  target tiles, recomputing the tiles of ``W`` (transposed);
* backward, positions, charges, modulation and ``log σ``: one program per
  ``(M-tile, N-tile)`` loops over ``B`` to form ``dW = grad_yᵀ x`` for its tile in registers,
  then applies the closed forms of ``ops._backward_radial`` (``S = dW ⊙ modulation``):

  - ``∂L/∂charge[h, c] = Σ_j S Sw k_c``, ``H_c = S ⊙ Sw ⊙ charge_c ⊙ f'(u_c)``,
  - ``G = Σ_c H_c / σ_c² + S ⊙ (Σ_c charge_c k_c) ⊙ Sw'``,
  - ``∂L/∂r_h = 2 Σ_j G (r_h − r_j)``, ``∂L/∂r_j = −2 Σ_h G (r_h − r_j)``,
  - ``∂L/∂log σ_c = −2 Σ H_c u_c``, ``∂L/∂modulation = dW ⊙ Sw ⊙ Σ_c charge_c k_c``;

  the sums across tiles are reduced with ``tl.atomic_add`` (so they are not bitwise
  deterministic on a GPU). ``dW`` never leaves registers either.

Extra memory is O(B·(N + M)) (the outputs and gradients), independent of ``N·M``.

Cutoffs: with ``kernel.cutoff`` both particle sets are sorted spatially and each program
visits only the tiles its neighbour list names (CSR of source tiles per target tile for the
forward pass, of target tiles per source tile for ``∂L/∂x``, and the flat pair list for the
parameter gradients; see :mod:`particlesim.kernels.neighbours`).

Precision: float32 tensors use IEEE float32 products unless ``allow_tf32`` (default: torch's
``torch.get_float32_matmul_precision() != "highest"``) lets ``tl.dot`` use TF32; bfloat16
activations (``x``, hence ``y`` and ``grad_y``) use bfloat16 products with float32
accumulation; positions, charges and modulation may be float32 or bfloat16 each and the
kernel itself is always evaluated in float32.

Only the three built-in radial kernels (gaussian, cauchy, exponential) are fused, for
``D ≤ 16``; their profile is picked by a ``tl.constexpr`` id. Tile sizes are autotuned on the
GPU (``triton.autotune``, keyed on the sizes) unless ``blocks`` is given. Triton is imported
lazily, on the first call, so ``import particlesim.kernels`` never needs it. On CPU tensors
the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is
imported), which is how the tests exercise them without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from particlesim.kernels.base import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    check_inputs,
)
from particlesim.kernels.neighbours import (
    NeighbourCache,
    NeighbourList,
    neighbour_list_for,
    to_neighbour_order,
)

__all__ = [
    "DEFAULT_BLOCKS",
    "MAX_FUSED_DIM",
    "SPARSE_TILES",
    "fused_available",
    "fused_unsupported",
    "kernel_matmul_fused",
]

#: Kernel class → the constexpr id that selects its profile inside the Triton kernels.
_KERNEL_IDS: dict[type[Kernel], int] = {GaussianKernel: 0, CauchyKernel: 1, ExponentialKernel: 2}

#: Tile sizes ``(BLOCK_B, BLOCK_M, BLOCK_N)`` under Triton's interpreter (where nothing is
#: autotuned); each must be a power of two ≥ 16 (``tl.dot``'s minimum).
DEFAULT_BLOCKS: tuple[int, int, int] = (32, 32, 32)

#: ``(tile_m, tile_n)`` of the neighbour list on the GPU when the kernel has a cutoff (the
#: sparse kernels' ``BLOCK_M, BLOCK_N``; ``BLOCK_B`` is still autotuned).
SPARSE_TILES: tuple[int, int] = (64, 64)

#: Largest position dimension ``D`` with a fused version (coordinates are unrolled).
MAX_FUSED_DIM: int = 16

_LOG2E = 1.4426950408889634

# ``tl`` is bound to ``triton.language`` by :func:`_build` (lazy import); the functions below
# are plain Python until :func:`_build` wraps them with ``triton.jit``.
tl: Any = None
_BUILT: dict[str, Any] = {}


def _interpreting() -> bool:
    """True when Triton's interpreter is requested (``TRITON_INTERPRET`` set and not "0")."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: Whether Triton can be imported, looked up once without importing it (a constant, so code
#: that TorchDynamo traces never sees it change).
_TRITON_FOUND: bool = importlib.util.find_spec("triton") is not None


def fused_available(*tensors: Tensor) -> bool:
    """Whether the fused path can run on ``tensors`` (or on this machine when none are given).

    True when Triton is importable and either every tensor is on a CUDA device (with no
    tensors: CUDA is available) or ``TRITON_INTERPRET=1`` is set (CPU tensors run through
    Triton's NumPy interpreter).
    """
    if not _TRITON_FOUND:
        return False
    if _interpreting():
        return True
    if tensors:
        return all(t.is_cuda for t in tensors)
    return torch.cuda.is_available()


def fused_unsupported(kernel: Kernel, *tensors: Tensor) -> str | None:
    """Why the fused path cannot run ``kernel`` on ``tensors``; None when it can.

    Reasons, in this order: a kernel other than the built-in gaussian, cauchy and exponential
    (subclasses included, since they may change the profile); Triton missing; positions with ``D >``
    :data:`MAX_FUSED_DIM`; a dtype other than float32 / bfloat16; tensors off CUDA without
    ``TRITON_INTERPRET=1``. ``tensors`` are ``x, target_pos, source_pos`` and optionally the
    charge and modulation.
    """
    if type(kernel) not in _KERNEL_IDS:  # first: installing Triton would not help
        return (
            "fused versions exist only for the built-in gaussian, cauchy and exponential "
            f"kernels, not {type(kernel).__name__}"
        )
    if not _TRITON_FOUND:
        return "Triton is not installed"
    if len(tensors) >= 2 and tensors[1].ndim == 2 and tensors[1].shape[1] > MAX_FUSED_DIM:
        return (
            f"positions have D = {tensors[1].shape[1]} dimensions; fused versions exist "
            f"for D <= {MAX_FUSED_DIM}"
        )
    odd = sorted({str(t.dtype) for t in tensors if t.dtype not in (torch.float32, torch.bfloat16)})
    if odd:
        return f"dtype {', '.join(odd)}: fused kernels take float32 or bfloat16"
    if not fused_available(*tensors):
        devices = sorted({str(t.device) for t in tensors})
        return (
            f"tensors are on {', '.join(devices)}; fused kernels need CUDA "
            "(or TRITON_INTERPRET=1 for CPU tensors)"
        )
    return None


# --------------------------------------------------------------------------- Triton kernels
# Plain functions here; ``_build`` turns them into ``triton.jit`` functions. Layouts (all
# contiguous, as the caller holds them, so nothing is copied): x [B, N], y / grad_y [B, M],
# positions r_h [M, D], r_j [N, D], charge [M, C], modulation [M, N], log σ [C]. Products of
# a row index and a row length are formed in int64, so tensors beyond 2^31 elements work.


def _profile(u, KID: tl.constexpr):
    """``f(u)``: 0 gaussian ``exp(-u)``, 1 cauchy ``1/(1+u)``, 2 exponential ``exp(-√u)``."""
    if KID == 0:
        out = tl.exp2(u * -1.4426950408889634)
    elif KID == 1:
        out = 1.0 / (1.0 + u)
    else:
        out = tl.exp2(tl.sqrt(u) * -1.4426950408889634)
    return out


def _profile_derivative(u, k, KID: tl.constexpr):
    """``f'(u)`` from ``k = f(u)``, no second exponential: gaussian ``−k``, cauchy ``−k²``,
    exponential ``−k / (2√u)`` (0 at ``u = 0``, masked root)."""
    if KID == 0:
        out = -k
    elif KID == 1:
        out = -k * k
    else:
        pos = u > 0
        root = tl.sqrt(tl.where(pos, u, 1.0))
        out = tl.where(pos, -k / (2.0 * root), 0.0)
    return out


def _switch(r2, r_cut2, r_on2):
    """XPLOR switch ``Sw(r²)`` (see ``base.xplor_switch``)."""
    s = tl.minimum(tl.maximum(r2, r_on2), r_cut2)
    span = r_cut2 - r_on2
    return (r_cut2 - s) * (r_cut2 - s) * (r_cut2 + 2.0 * s - 3.0 * r_on2) / (span * span * span)


def _switch_derivative(r2, r_cut2, r_on2):
    """``dSw/d(r²)`` (see ``base.xplor_switch_derivative``)."""
    s = tl.minimum(tl.maximum(r2, r_on2), r_cut2)
    span = r_cut2 - r_on2
    return -6.0 * (r_cut2 - s) * (s - r_on2) / (span * span * span)


def _coordinate(r_ptr, d: tl.constexpr, offs, n, D: tl.constexpr):
    """Coordinate ``d`` of the particles ``offs`` (positions stored ``[n, D]``), as float32."""
    return tl.load(r_ptr + offs * D + d, mask=offs < n, other=0.0).to(tl.float32)


def _inv_square_width(logw_ptr, c: tl.constexpr):
    """``1/σ_c² = exp(−2 log σ_c)`` in float32."""
    return tl.exp2(tl.load(logw_ptr + c).to(tl.float32) * -2.8853900817779268)


def _sq_dist(ra_ptr, rb_ptr, offs_a, offs_b, n_a, n_b, D: tl.constexpr):
    """``|r_a − r_b|²`` for a tile → ``[len(offs_a), len(offs_b)]``, one coordinate at a time."""
    diff = (
        _coordinate(ra_ptr, 0, offs_a, n_a, D)[:, None]
        - _coordinate(rb_ptr, 0, offs_b, n_b, D)[None, :]
    )
    r2 = diff * diff
    for d in tl.static_range(1, D):
        diff = (
            _coordinate(ra_ptr, d, offs_a, n_a, D)[:, None]
            - _coordinate(rb_ptr, d, offs_b, n_b, D)[None, :]
        )
        r2 += diff * diff
    return r2


def _weight_tile(
    rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr, offs_m, offs_n, M, N, r_cut2, r_on2,
    D: tl.constexpr, C: tl.constexpr, KID: tl.constexpr, HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr, HAS_CUT: tl.constexpr, TRANS: tl.constexpr,
):  # fmt: skip
    """``W`` for one tile: ``[BLOCK_M, BLOCK_N]``, or ``[BLOCK_N, BLOCK_M]`` when ``TRANS``."""
    if TRANS:
        r2 = _sq_dist(rj_ptr, rh_ptr, offs_n, offs_m, N, M, D)
    else:
        r2 = _sq_dist(rh_ptr, rj_ptr, offs_m, offs_n, M, N, D)
    w = tl.zeros_like(r2)
    for c in tl.static_range(C):
        k = _profile(r2 * _inv_square_width(logw_ptr, c), KID)
        if HAS_Q:
            q = tl.load(q_ptr + offs_m * C + c, mask=offs_m < M, other=0.0).to(tl.float32)
            if TRANS:
                w += k * q[None, :]
            else:
                w += k * q[:, None]
        else:
            w += k
    if HAS_CUT:
        w *= _switch(r2, r_cut2, r_on2)
    if HAS_MOD:
        rows = offs_m.to(tl.int64) * N
        if TRANS:
            ok = (offs_n[:, None] < N) & (offs_m[None, :] < M)
            mod = tl.load(mod_ptr + rows[None, :] + offs_n[:, None], mask=ok, other=0.0)
        else:
            ok = (offs_m[:, None] < M) & (offs_n[None, :] < N)
            mod = tl.load(mod_ptr + rows[:, None] + offs_n[None, :], mask=ok, other=0.0)
        w *= mod.to(tl.float32)
    return w


def _dot(a, b, acc, TF32: tl.constexpr, LOWP: tl.constexpr):
    """``acc + a @ b`` in float32: bfloat16 products when ``LOWP``, else TF32 or IEEE float32."""
    if LOWP:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif TF32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return out


def _dot_emulated(a, b, acc, TF32: tl.constexpr, LOWP: tl.constexpr):
    """:func:`_dot` for Triton's interpreter, whose bfloat16 ``tl.dot`` is unreliable.

    Rounds the operands to bfloat16 and multiplies them in float32: the same numbers as
    bfloat16 products with float32 accumulation (a product of two bfloat16 values is exact
    in float32).
    """
    if LOWP:
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


def _forward_kernel(
    x_ptr, rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr, y_ptr, ptr_ptr, idx_ptr,
    B, M, N, r_cut2, r_on2,
    D: tl.constexpr, C: tl.constexpr, KID: tl.constexpr, HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr, HAS_CUT: tl.constexpr, SPARSE: tl.constexpr, TF32: tl.constexpr,
    LOWP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``yᵀ[m-tile, b-tile] = Σ_n-tiles W[m-tile, n-tile] @ xᵀ[n-tile, b-tile]``."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_b = pid // num_m  # M-tiles vary fastest: programs running together share x's rows
    pid_m = pid % num_m
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b_ok = offs_b < B
    x_rows = offs_b.to(tl.int64) * N
    acc = tl.zeros((BLOCK_M, BLOCK_B), dtype=tl.float32)
    if SPARSE:
        start = tl.load(ptr_ptr + pid_m)
        stop = tl.load(ptr_ptr + pid_m + 1)
    else:
        start = 0
        stop = tl.cdiv(N, BLOCK_N)
    for i in range(start, stop):
        tile = tl.load(idx_ptr + i) if SPARSE else i
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        w = _weight_tile(
            rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr, offs_m, offs_n, M, N, r_cut2, r_on2,
            D, C, KID, HAS_Q, HAS_MOD, HAS_CUT, False,
        )  # fmt: skip
        xt = tl.load(
            x_ptr + x_rows[None, :] + offs_n[:, None],
            mask=b_ok[None, :] & (offs_n[:, None] < N),
            other=0.0,
        )
        acc = _dot(w, xt, acc, TF32, LOWP)
    tl.store(
        y_ptr + offs_b.to(tl.int64)[None, :] * M + offs_m[:, None],
        acc.to(y_ptr.dtype.element_ty),
        mask=b_ok[None, :] & (offs_m[:, None] < M),
    )


def _grad_x_kernel(
    gy_ptr, rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr, gx_ptr, ptr_ptr, idx_ptr,
    B, M, N, r_cut2, r_on2,
    D: tl.constexpr, C: tl.constexpr, KID: tl.constexpr, HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr, HAS_CUT: tl.constexpr, SPARSE: tl.constexpr, TF32: tl.constexpr,
    LOWP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """``grad_xᵀ[n-tile, b-tile] = Σ_m-tiles Wᵀ[n-tile, m-tile] @ grad_yᵀ[m-tile, b-tile]``."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_b = pid // num_n
    pid_n = pid % num_n
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    gy_rows = offs_b.to(tl.int64) * M
    acc = tl.zeros((BLOCK_N, BLOCK_B), dtype=tl.float32)
    if SPARSE:
        start = tl.load(ptr_ptr + pid_n)
        stop = tl.load(ptr_ptr + pid_n + 1)
    else:
        start = 0
        stop = tl.cdiv(M, BLOCK_M)
    for i in range(start, stop):
        tile = tl.load(idx_ptr + i) if SPARSE else i
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        wt = _weight_tile(
            rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr, offs_m, offs_n, M, N, r_cut2, r_on2,
            D, C, KID, HAS_Q, HAS_MOD, HAS_CUT, True,
        )  # fmt: skip
        gyt = tl.load(
            gy_ptr + gy_rows[None, :] + offs_m[:, None],
            mask=b_ok[None, :] & (offs_m[:, None] < M),
            other=0.0,
        )
        acc = _dot(wt, gyt, acc, TF32, LOWP)
    tl.store(
        gx_ptr + offs_b.to(tl.int64)[None, :] * N + offs_n[:, None],
        acc.to(gx_ptr.dtype.element_ty),
        mask=b_ok[None, :] & (offs_n[:, None] < N),
    )


def _grad_params_kernel(
    x_ptr, gy_ptr, rh_ptr, rj_ptr, q_ptr, mod_ptr, logw_ptr,
    grh_ptr, grj_ptr, gq_ptr, gmod_ptr, glogw_ptr, pair_m_ptr, pair_n_ptr,
    B, M, N, r_cut2, r_on2,
    D: tl.constexpr, C: tl.constexpr, KID: tl.constexpr, HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr, HAS_CUT: tl.constexpr, SPARSE: tl.constexpr,
    NEED_Q: tl.constexpr, NEED_MOD: tl.constexpr, NEED_RH: tl.constexpr, NEED_RJ: tl.constexpr,
    NEED_W: tl.constexpr, TF32: tl.constexpr, LOWP: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Position, charge, modulation and ``log σ`` gradients of one ``(m-tile, n-tile)``."""
    pid = tl.program_id(0)
    if SPARSE:
        pid_m = tl.load(pair_m_ptr + pid)
        pid_n = tl.load(pair_n_ptr + pid)
    else:  # grouped order: GROUP_M target tiles share the source tiles they read from L2
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        group_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    mn_ok = m_ok[:, None] & n_ok[None, :]
    # dW = grad_yᵀ x for this tile, accumulated over B in registers. Both operands arrive
    # transposed ([M, B] and [N, B]), so B (the reduction) is contiguous in each: TF32
    # warpgroup MMA reads 32-bit operands only in that (K-major) order.
    dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    m_rows = offs_m.to(tl.int64) * B
    n_rows = offs_n.to(tl.int64) * B
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        b_ok = offs_b < B
        gyt = tl.load(
            gy_ptr + m_rows[:, None] + offs_b[None, :],
            mask=b_ok[None, :] & m_ok[:, None],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + n_rows[None, :] + offs_b[:, None],
            mask=b_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        dw = _dot(gyt, xt, dw, TF32, LOWP)
    mod_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    s = dw * tl.load(mod_ptr + mod_offs, mask=mn_ok, other=0.0).to(tl.float32) if HAS_MOD else dw
    r2 = _sq_dist(rh_ptr, rj_ptr, offs_m, offs_n, M, N, D)
    if HAS_CUT:
        sw = _switch(r2, r_cut2, r_on2)
        s_sw = s * sw
    else:
        s_sw = s
    wk = tl.zeros_like(r2)  # Σ_c charge_c k_c, without the switch
    g = tl.zeros_like(r2)
    for c in tl.static_range(C):
        inv = _inv_square_width(logw_ptr, c)
        u = r2 * inv
        k = _profile(u, KID)
        if HAS_Q:
            q = tl.load(q_ptr + offs_m * C + c, mask=m_ok, other=0.0).to(tl.float32)
            wk += k * q[:, None]
        else:
            wk += k
        if NEED_Q:
            tl.atomic_add(gq_ptr + offs_m * C + c, tl.sum(s_sw * k, axis=1), mask=m_ok)
        if NEED_RH or NEED_RJ or NEED_W:
            h = s_sw * _profile_derivative(u, k, KID)
            if HAS_Q:
                h = h * q[:, None]
            if NEED_W:
                tl.atomic_add(glogw_ptr + c, -2.0 * tl.sum(tl.sum(h * u, axis=1), axis=0))
            g += h * inv
    if NEED_MOD:
        gmod = dw * wk * sw if HAS_CUT else dw * wk
        tl.store(gmod_ptr + mod_offs, gmod.to(gmod_ptr.dtype.element_ty), mask=mn_ok)
    if NEED_RH or NEED_RJ:
        if HAS_CUT:
            g += s * wk * _switch_derivative(r2, r_cut2, r_on2)
        for d in tl.static_range(D):
            diff = (
                _coordinate(rh_ptr, d, offs_m, M, D)[:, None]
                - _coordinate(rj_ptr, d, offs_n, N, D)[None, :]
            )
            t = g * diff
            if NEED_RH:
                tl.atomic_add(grh_ptr + offs_m * D + d, 2.0 * tl.sum(t, axis=1), mask=m_ok)
            if NEED_RJ:
                tl.atomic_add(grj_ptr + offs_n * D + d, -2.0 * tl.sum(t, axis=0), mask=n_ok)


# --------------------------------------------------------------------------- configuration

#: Autotuned tile shapes ``(BLOCK_B, BLOCK_M, BLOCK_N, num_warps, num_stages)`` of the dense
#: forward kernel (its ``∂L/∂x`` twin swaps the roles of M and N). W is recomputed once per
#: B-tile, so larger ``BLOCK_B`` amortise the kernel evaluations over more products.
_FORWARD_CONFIGS = (
    (128, 128, 32, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 128, 16, 8, 3),
    (256, 64, 32, 8, 3),
    (64, 128, 32, 8, 3),
    (128, 64, 32, 4, 3),
    (64, 64, 32, 4, 3),
    (32, 128, 32, 4, 3),
    (16, 64, 64, 4, 3),
)
#: Same for the parameter-gradient kernel: ``BLOCK_B`` is its reduction depth, and its
#: ``[BLOCK_M, BLOCK_N]`` tile carries several float32 temporaries (register pressure).
_PARAMS_CONFIGS = (
    (32, 64, 64, 4, 3),
    (64, 64, 64, 4, 3),
    (32, 128, 64, 8, 3),
    (64, 128, 64, 8, 3),
    (32, 64, 128, 8, 3),
    (32, 128, 128, 8, 3),
    (16, 64, 64, 4, 4),
)
#: With a neighbour list ``BLOCK_M``/``BLOCK_N`` are its tiles; ``(BLOCK_B, warps, stages)``.
_SPARSE_FORWARD_CONFIGS = ((16, 4, 3), (32, 4, 3), (64, 8, 3), (128, 8, 3))
_SPARSE_PARAMS_CONFIGS = ((16, 4, 3), (32, 4, 3), (64, 4, 3), (32, 8, 3))

# Every shape in these tables compiles for sm_90 (H100) at D = 2, 3, 7 and 16 without
# register spills (0 bytes of local memory; benchmarks/fused_compile_check.py). Wider
# BLOCK_N, or BLOCK_B = 256 with BLOCK_M = 128, spill.


def _prune_by_batch(configs: list, named_args: dict, **kwargs: Any) -> list:
    """Drop tiles much taller than the batch (``BLOCK_B > max(16, next_pow2(B))``)."""
    limit = max(16, 1 << max(0, int(named_args["B"]) - 1).bit_length())
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= limit]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_B"])]


def _build() -> dict[str, Any]:
    """Import Triton and JIT-compile the kernels above (once per process).

    Off the interpreter it also wraps each kernel in ``triton.autotune``
    (:func:`_tuned_kernels`, under ``"tuned"``); calls without ``blocks`` then use them.
    """
    if _BUILT:
        return _BUILT
    import triton
    import triton.language

    namespace = globals()
    namespace["tl"] = triton.language
    helpers = (
        "_profile",
        "_profile_derivative",
        "_switch",
        "_switch_derivative",
        "_coordinate",
        "_inv_square_width",
        "_sq_dist",
        "_weight_tile",
        "_dot",
    )
    for name in helpers:
        namespace[name] = triton.jit(namespace[name])
    if _interpreting():
        namespace["_dot"] = triton.jit(_dot_emulated)
    raw = {
        "forward": triton.jit(_forward_kernel),
        "grad_x": triton.jit(_grad_x_kernel),
        "grad_params": triton.jit(_grad_params_kernel),
    }
    _BUILT["raw"] = raw
    _BUILT["cdiv"] = triton.cdiv
    if not _interpreting():
        _BUILT["tuned"] = _tuned_kernels(raw)
    return _BUILT


def _tuned_kernels(raw: dict[str, Any], do_bench: Any = None) -> dict[tuple[str, bool], Any]:
    """``triton.autotune`` wrappers of the raw kernels, keyed ``(name, sparse)``.

    Dense kernels tune every tile size; sparse ones ``BLOCK_B`` and warps (their tiles are
    the neighbour list's). The parameter-gradient kernel accumulates with atomics, so its
    accumulators are reset to zero between trial runs. ``do_bench`` replaces Triton's timer
    (a test runs the whole autotuned path through the interpreter with a stand-in).
    """
    import triton

    key = ["B", "M", "N", "D", "C", "SPARSE", "HAS_MOD"]
    prune = {"early_config_prune": _prune_by_batch}
    resets = ["grh_ptr", "grj_ptr", "gq_ptr", "glogw_ptr"]

    def dense(shapes: tuple, transpose: bool = False) -> list:
        out = []
        for bb, bm, bn, warps, stages in shapes:
            bm, bn = (bn, bm) if transpose else (bm, bn)
            meta = {"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn}
            out.append(triton.Config(meta, num_warps=warps, num_stages=stages))
        return out

    def sparse(shapes: tuple) -> list:
        return [triton.Config({"BLOCK_B": bb}, num_warps=w, num_stages=st) for bb, w, st in shapes]

    def tune(configs: list, name: str, **options: Any) -> Any:
        return triton.autotune(configs, key, do_bench=do_bench, **options)(raw[name])

    return {
        ("forward", False): tune(dense(_FORWARD_CONFIGS), "forward", prune_configs_by=prune),
        ("grad_x", False): tune(dense(_FORWARD_CONFIGS, True), "grad_x", prune_configs_by=prune),
        ("grad_params", False): tune(dense(_PARAMS_CONFIGS), "grad_params", reset_to_zero=resets),
        ("forward", True): tune(sparse(_SPARSE_FORWARD_CONFIGS), "forward", prune_configs_by=prune),
        ("grad_x", True): tune(sparse(_SPARSE_FORWARD_CONFIGS), "grad_x", prune_configs_by=prune),
        ("grad_params", True): tune(
            sparse(_SPARSE_PARAMS_CONFIGS), "grad_params", reset_to_zero=resets
        ),
    }


_PLACEHOLDERS: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _placeholders(device: torch.device) -> tuple[Tensor, Tensor]:
    """Tiny float32 and int32 tensors passed for absent inputs and outputs (never read).

    Kept per device, so a step allocates nothing for them; the autotuner may zero the float
    one between trial runs, which is harmless.
    """
    if device not in _PLACEHOLDERS:
        _PLACEHOLDERS[device] = (
            torch.zeros(1, device=device, dtype=torch.float32),
            torch.zeros(2, device=device, dtype=torch.int32),
        )
    return _PLACEHOLDERS[device]


@dataclass(frozen=True)
class _Config:
    """What the autograd function needs besides tensors."""

    kernel_id: int
    channels: int
    blocks: tuple[int, int, int] | None  # None: autotuned
    tf32: bool
    cutoff: tuple[float, float] | None  # (r_cut², r_on²)


def _launch(
    name: str,
    nl: NeighbourList | None,
    config: _Config,
    grid: Any,
    args: tuple,
    consts: dict[str, Any],
) -> None:
    """Launch kernel ``name``: autotuned on the GPU, fixed tiles given or under the interpreter.

    ``grid(meta) -> tuple`` receives the tile sizes. With a neighbour list ``BLOCK_M`` and
    ``BLOCK_N`` are its tiles.
    """
    built = _build()
    sparse = nl is not None
    fixed: dict[str, int] = {}
    if sparse:
        fixed = {"BLOCK_M": nl.tile_m, "BLOCK_N": nl.tile_n}
    tuned = built.get("tuned")
    if tuned is not None and config.blocks is None:
        tuned[(name, sparse)][lambda meta: grid({**meta, **fixed})](*args, **consts, **fixed)
        return
    bb, bm, bn = config.blocks or DEFAULT_BLOCKS
    meta = {"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn, **fixed}
    built["raw"][name][grid(meta)](*args, **consts, **meta)


class _KernelMatmulFused(torch.autograd.Function):
    """Autograd function of the fused path; see :func:`kernel_matmul_fused`.

    Inputs (in ``needs_input_grad`` order): ``x, target_pos, source_pos, charge, modulation,
    log_width, config, neighbour_list`` (the tensors already in the list's sorted order when
    there is one).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target_pos: Tensor,
        source_pos: Tensor,
        charge: Tensor | None,
        modulation: Tensor | None,
        log_width: Tensor,
        config: _Config,
        nl: NeighbourList | None,
    ) -> Tensor:
        k = _build()
        x = x.contiguous()
        r_h, r_j = target_pos.contiguous(), source_pos.contiguous()  # no copy when contiguous
        # A contiguous [M] charge is the [M, 1] array the kernels read: no reshape needed.
        q = None if charge is None else charge.contiguous()
        mod = None if modulation is None else modulation.contiguous()
        logw = log_width.contiguous()
        dummy, index_dummy = _placeholders(x.device)
        B, N = x.shape
        M, D = r_h.shape
        y = x.new_empty(B, M)
        cut2 = config.cutoff or (0.0, 0.0)
        consts = _flags(config, D, q, mod, nl, x)
        _launch(
            "forward",
            nl,
            config,
            lambda meta: (k["cdiv"](B, meta["BLOCK_B"]) * k["cdiv"](M, meta["BLOCK_M"]),),
            (
                x, r_h, r_j, dummy if q is None else q, dummy if mod is None else mod, logw, y,
                index_dummy if nl is None else nl.row_ptr,
                index_dummy if nl is None else nl.row_cols,
                B, M, N, *cut2,
            ),
            consts,
        )  # fmt: skip
        ctx.save_for_backward(x, r_h, r_j, q, mod, logw)
        ctx.config = config
        ctx.nl = nl
        ctx.consts = consts
        ctx.dtypes = (
            target_pos.dtype,
            source_pos.dtype,
            None if charge is None else charge.dtype,
            log_width.dtype,
        )
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        k = _build()
        x, r_h, r_j, q, mod, logw = ctx.saved_tensors
        config, nl = ctx.config, ctx.nl
        need_x, need_rh, need_rj, need_q, need_mod, need_w, _, _ = ctx.needs_input_grad
        need_q = need_q and q is not None
        need_mod = need_mod and mod is not None
        grad_y = grad_y.to(x.dtype).contiguous()
        B, N = x.shape
        M, D = r_h.shape
        C = config.channels
        cut2 = config.cutoff or (0.0, 0.0)
        dummy, index_dummy = _placeholders(x.device)
        q_arg = dummy if q is None else q
        mod_arg = dummy if mod is None else mod
        consts = ctx.consts

        grad_x = None
        if need_x:
            grad_x = torch.empty_like(x)
            _launch(
                "grad_x",
                nl,
                config,
                lambda meta: (k["cdiv"](B, meta["BLOCK_B"]) * k["cdiv"](N, meta["BLOCK_N"]),),
                (
                    grad_y, r_h, r_j, q_arg, mod_arg, logw, grad_x,
                    index_dummy if nl is None else nl.col_ptr,
                    index_dummy if nl is None else nl.col_rows,
                    B, M, N, *cut2,
                ),
                consts,
            )  # fmt: skip

        # float32 accumulators of the atomics, zeroed in one go: [M, D], [N, D], the charge's
        # shape ([M] or [M, C]) and [C]; each one strided view of the buffer (one op, not two)
        sizes = (M * D * need_rh, N * D * need_rj, M * C * need_q, C * need_w)
        flat = torch.zeros(sum(sizes), device=x.device, dtype=torch.float32)
        starts = (0, sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2])
        grad_rh = flat.as_strided((M, D), (D, 1), starts[0]) if need_rh else None
        grad_rj = flat.as_strided((N, D), (D, 1), starts[1]) if need_rj else None
        grad_q = None
        if need_q:
            grad_q = flat.as_strided(q.shape, q.stride(), starts[2])  # q is contiguous
        grad_logw = flat.as_strided((C,), (1,), starts[3]) if need_w else None
        grad_mod = None
        if need_mod:  # tiles a neighbour list skips get no store: their gradient is 0
            grad_mod = torch.empty_like(mod) if nl is None else torch.zeros_like(mod)
        if need_rh or need_rj or need_q or need_mod or need_w:

            def grid(meta: dict[str, int]) -> tuple[int]:
                if nl is not None:
                    return (nl.num_pairs,)
                return (k["cdiv"](M, meta["BLOCK_M"]) * k["cdiv"](N, meta["BLOCK_N"]),)

            if nl is None or nl.num_pairs > 0:
                _launch(
                    "grad_params",
                    nl,
                    config,
                    grid,
                    (
                        x.t().contiguous(), grad_y.t().contiguous(), r_h, r_j, q_arg, mod_arg, logw,
                        dummy if grad_rh is None else grad_rh,
                        dummy if grad_rj is None else grad_rj,
                        dummy if grad_q is None else grad_q,
                        dummy if grad_mod is None else grad_mod,
                        dummy if grad_logw is None else grad_logw,
                        index_dummy if nl is None else nl.pair_target,
                        index_dummy if nl is None else nl.pair_source,
                        B, M, N, *cut2,
                    ),
                    {
                        **consts, "NEED_Q": need_q, "NEED_MOD": need_mod, "NEED_RH": need_rh,
                        "NEED_RJ": need_rj, "NEED_W": need_w, "GROUP_M": 8,
                    },
                )  # fmt: skip
        rh_dtype, rj_dtype, q_dtype, w_dtype = ctx.dtypes
        return (
            grad_x,
            _as_dtype(grad_rh, rh_dtype),
            _as_dtype(grad_rj, rj_dtype),
            _as_dtype(grad_q, q_dtype),
            grad_mod,
            _as_dtype(grad_logw, w_dtype),
            None,
            None,
        )


def _as_dtype(tensor: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """``tensor`` in ``dtype`` (the float32 accumulators, cast back for bfloat16 leaves)."""
    if tensor is None or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def _flags(
    config: _Config,
    D: int,
    q: Tensor | None,
    mod: Tensor | None,
    nl: NeighbourList | None,
    x: Tensor,
) -> dict[str, Any]:
    """The constexpr flags shared by the three kernels."""
    return {
        "D": D,
        "C": config.channels,
        "KID": config.kernel_id,
        "HAS_Q": q is not None,
        "HAS_MOD": mod is not None,
        "HAS_CUT": config.cutoff is not None,
        "SPARSE": nl is not None,
        "TF32": config.tf32,
        "LOWP": x.dtype == torch.bfloat16,
    }


# --------------------------------------------------------------------------- public entry


def _check_fused_inputs(tensors: dict[str, Tensor | None], kernel: Kernel) -> int:
    """Validate what the fused kernels need; return the kernel's constexpr id.

    Raises:
        NotImplementedError: ``kernel`` is not a built-in radial kernel, or ``D > 16``.
        ValueError: a tensor is on another device, or is neither float32 nor bfloat16.
    """
    kid = _KERNEL_IDS.get(type(kernel))
    if kid is None:
        raise NotImplementedError(
            f"the fused path supports only the built-in radial kernels "
            f"(gaussian, cauchy, exponential), not {type(kernel).__name__} "
            f"(name {getattr(kernel, 'name', '')!r}); use backend='chunked' for it"
        )
    present = {name: t for name, t in tensors.items() if t is not None}
    device = present["x"].device
    for name, t in present.items():
        if t.device != device:
            raise ValueError(
                f"{name} is on {t.device} but x is on {device}: all tensors of the fused path "
                f"must be on one device"
            )
        if t.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"{name} must be float32 or bfloat16 for the fused path, got {t.dtype}"
            )
    if kernel.log_width.device != device:
        raise ValueError(f"kernel width is on {kernel.log_width.device} but x is on {device}")
    pos = present["target_pos"]
    if pos.ndim == 2 and pos.shape[1] > MAX_FUSED_DIM:
        raise NotImplementedError(
            f"the fused path supports positions with D <= {MAX_FUSED_DIM}, got D = "
            f"{pos.shape[1]}; use backend='chunked'"
        )
    return kid


def kernel_matmul_fused(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    blocks: tuple[int, int, int] | None = None,
    allow_tf32: bool | None = None,
    neighbours: NeighbourCache | NeighbourList | None = None,
) -> Tensor:
    """``y = x @ W.T`` (eq. 9) by fused Triton kernels: no tile of ``W`` ever leaves registers.

    Same numbers as :func:`~particlesim.kernels.ops.kernel_matmul_reference` (to float32
    rounding) and the same closed-form gradients as the chunked path, for ``x``, both position
    sets, the charges, the modulation and a learnable ``log σ``. Not twice differentiable.
    Non-contiguous inputs are copied to contiguous ones.

    Args:
        x: ``[B, N]`` source activations, float32 or bfloat16 (then ``y`` is bfloat16 and the
            products are bfloat16 with float32 accumulation).
        kernel: a :class:`GaussianKernel`, :class:`CauchyKernel` or :class:`ExponentialKernel`
            with ``C ≥ 1`` widths and an optional cutoff.
        target_pos: ``[M, D]``; source_pos: ``[N, D]``, ``D ≤ 16`` (float32 or bfloat16).
        charge: ``[M]`` (``C = 1``) or ``[M, C]``, or None (1 on every channel).
        modulation: ``[M, N]`` or None.
        blocks: tile sizes ``(BLOCK_B, BLOCK_M, BLOCK_N)``, powers of two ≥ 16; default:
            autotuned on the GPU, :data:`DEFAULT_BLOCKS` under the interpreter. With a cutoff
            ``BLOCK_M, BLOCK_N`` are also the neighbour list's tiles (default
            :data:`SPARSE_TILES` on the GPU).
        allow_tf32: let ``tl.dot`` use TF32 for float32 inputs (about 1e-3 relative error);
            None follows torch (``torch.get_float32_matmul_precision() != "highest"``).
        neighbours: with a cutoff, a :class:`~particlesim.kernels.neighbours.NeighbourCache`
            kept between calls (None: build a list for this call).

    Returns:
        ``[B, M]`` in ``x``'s dtype.

    Raises:
        NotImplementedError: for any other kernel, or ``D > 16`` (use ``backend="chunked"``).
        ValueError: mixed devices, a dtype other than float32/bfloat16, mismatched ``D``, bad
            shapes or block sizes.
        RuntimeError: Triton is missing, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    entry = _kernel_matmul_fused
    if torch.compiler.is_compiling():
        # Opaque to TorchDynamo: a graph break, the kernels run eagerly. Wrapped here, not at
        # import, because torch.compiler.disable imports Dynamo (over a second), which an
        # eager run never needs; built inside the trace, it adds no guard and no recompile.
        entry = torch.compiler.disable(_kernel_matmul_fused)
    return entry(
        x, kernel, target_pos, source_pos, charge, modulation,
        blocks=blocks, allow_tf32=allow_tf32, neighbours=neighbours,
    )  # fmt: skip


def _kernel_matmul_fused(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    blocks: tuple[int, int, int] | None = None,
    allow_tf32: bool | None = None,
    neighbours: NeighbourCache | NeighbourList | None = None,
) -> Tensor:
    """:func:`kernel_matmul_fused` itself (validation, then the autograd function)."""
    tensors = {
        "x": x,
        "target_pos": target_pos,
        "source_pos": source_pos,
        "charge": charge,
        "modulation": modulation,
    }
    kid = _check_fused_inputs(tensors, kernel)
    check_inputs(kernel, target_pos, source_pos, charge, modulation, x, mixed_precision=True)
    if blocks is not None:
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 3 or any(b < 16 or b & (b - 1) for b in blocks):
            raise ValueError(f"blocks must be three powers of two ≥ 16, got {blocks}")
    if not fused_available(*(t for t in tensors.values() if t is not None)):
        raise RuntimeError(
            "the fused path needs Triton and CUDA tensors (or TRITON_INTERPRET=1 set before "
            "Triton is imported, for CPU tensors); use backend='chunked' instead"
        )
    if allow_tf32 is None:
        allow_tf32 = torch.get_float32_matmul_precision() != "highest"
    autotuned = "tuned" in _build()  # on the GPU; the interpreter runs fixed tiles
    cutoff = kernel.cutoff
    config = _Config(
        kernel_id=kid,
        channels=kernel.channels,
        blocks=blocks if blocks is not None or autotuned else DEFAULT_BLOCKS,
        tf32=bool(allow_tf32),
        cutoff=None if cutoff is None else (cutoff * cutoff, kernel.switch_on**2),
    )
    if cutoff is None:
        return _KernelMatmulFused.apply(
            x, target_pos, source_pos, charge, modulation, kernel.log_width, config, None
        )
    default_tiles = SPARSE_TILES if autotuned else DEFAULT_BLOCKS[1:]
    tiles = blocks[1:] if blocks is not None else default_tiles
    nl = neighbour_list_for(neighbours, target_pos, source_pos, cutoff, tiles)
    sorted_inputs = to_neighbour_order(nl, x, target_pos, source_pos, charge, modulation)
    y = _KernelMatmulFused.apply(*sorted_inputs, kernel.log_width, config, nl)
    return y.index_select(1, nl.target_rank)
