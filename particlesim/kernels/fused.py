"""Fused Triton path of a kernel interaction: ``y = x @ W.T`` with ``W`` never in memory.

The effective weight of a radial kernel interaction is

    W[h, j] = modulation[h, j] · Σ_c charge[h, c] · f(u_c[h, j]),   u_c = |r_h − r_j|² / σ_c²

(``charge=None`` means 1 on every channel, ``modulation=None`` means 1 everywhere). The
chunked path of :mod:`particlesim.kernels.ops` materialises one block of rows of ``W`` at a
time; here every tile of ``W`` lives only in registers:

* forward: one program per ``(B-tile, M-tile)`` loops over ``N`` in blocks, builds the
  ``[BLOCK_M, BLOCK_N]`` tile of ``W`` from the positions (loaded as ``[BLOCK, BLOCK_D]`` with
  ``D`` padded to a power of two by masks) and accumulates ``x_tile @ W_tileᵀ`` with
  ``tl.dot`` in float32;
* backward, ``∂L/∂x = grad_y @ W``: one program per ``(B-tile, N-tile)`` loops over ``M``,
  recomputing the tiles of ``W``;
* backward, positions, charges, modulation and ``log σ``: one program per
  ``(M-tile, N-tile)`` loops over ``B`` to form ``dW = grad_yᵀ x`` for its tile in registers,
  then applies the closed forms of ``ops._backward_radial`` (``S = dW ⊙ modulation``):

  - ``∂L/∂charge[h, c] = Σ_j S[h, j] k_c[h, j]``,
  - ``H_c = S ⊙ charge_c ⊙ f'(u_c)``, ``G = Σ_c H_c / σ_c²``,
  - ``∂L/∂r_h = 2 Σ_j G[h, j] (r_h − r_j)``, ``∂L/∂r_j = −2 Σ_h G[h, j] (r_h − r_j)``,
  - ``∂L/∂log σ_c = −2 Σ H_c u_c``, ``∂L/∂modulation = dW ⊙ Σ_c charge_c k_c``;

  the sums across tiles are reduced with ``tl.atomic_add`` (so they are not bitwise
  deterministic on a GPU).

Only the three built-in radial kernels (gaussian, cauchy, exponential) are fused; their
profile is picked by a ``tl.constexpr`` id. Triton is imported lazily, on the first call, so
``import particlesim.kernels`` never needs it. On CPU tensors the kernels run only under
Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is imported), which is how the
tests exercise them without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from particlesim.kernels.base import CauchyKernel, ExponentialKernel, GaussianKernel, Kernel
from particlesim.kernels.ops import _validate

__all__ = ["DEFAULT_BLOCKS", "fused_available", "kernel_matmul_fused"]

#: Kernel class → the constexpr id that selects its profile inside the Triton kernels.
_KERNEL_IDS: dict[type[Kernel], int] = {GaussianKernel: 0, CauchyKernel: 1, ExponentialKernel: 2}

#: Default tile sizes ``(BLOCK_B, BLOCK_M, BLOCK_N)``; each must be a power of two ≥ 16
#: (``tl.dot``'s minimum). Not tuned yet.
DEFAULT_BLOCKS: tuple[int, int, int] = (32, 32, 32)

# ``tl`` is bound to ``triton.language`` by :func:`_build` (lazy import); the functions below
# are plain Python until :func:`_build` wraps them with ``triton.jit``.
tl: Any = None
_BUILT: dict[str, Any] = {}


def _interpreting() -> bool:
    """True when Triton's interpreter is requested (``TRITON_INTERPRET`` set and not "0")."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_available(*tensors: Tensor) -> bool:
    """Whether the fused path can run on ``tensors`` (or on this machine when none are given).

    True when Triton is importable and either every tensor is on a CUDA device (with no
    tensors: CUDA is available) or ``TRITON_INTERPRET=1`` is set (CPU tensors run through
    Triton's NumPy interpreter).
    """
    if importlib.util.find_spec("triton") is None:
        return False
    if _interpreting():
        return True
    if tensors:
        return all(t.is_cuda for t in tensors)
    return torch.cuda.is_available()


# --------------------------------------------------------------------------- Triton kernels
# Plain functions here; ``_build`` turns them into ``triton.jit`` functions. All tensors are
# contiguous row-major float32: x [B, N], y / grad_y [B, M], r_h [M, D], r_j [N, D],
# charge [M, C], modulation [M, N], inv_s2 [C].


def _profile(u, KID: tl.constexpr):
    """``f(u)``: 0 gaussian ``exp(-u)``, 1 cauchy ``1/(1+u)``, 2 exponential ``exp(-√u)``."""
    if KID == 0:
        out = tl.exp(-u)
    elif KID == 1:
        out = 1.0 / (1.0 + u)
    else:
        pos = u > 0
        safe = tl.where(pos, u, 1.0)
        out = tl.where(pos, tl.exp(-tl.sqrt(safe)), 1.0)
    return out


def _profile_derivative(u, KID: tl.constexpr):
    """``f'(u)`` in closed form, 0 at ``u = 0`` for the exponential (masked root)."""
    if KID == 0:
        out = -tl.exp(-u)
    elif KID == 1:
        out = -1.0 / ((1.0 + u) * (1.0 + u))
    else:
        pos = u > 0
        safe = tl.where(pos, u, 1.0)
        root = tl.sqrt(safe)
        out = tl.where(pos, -tl.exp(-root) / (2.0 * root), 0.0)
    return out


def _diff_tile(rh_ptr, rj_ptr, offs_m, offs_n, M, N, D, BLOCK_D: tl.constexpr):
    """``r_h − r_j`` for one tile → ``[BLOCK_M, BLOCK_N, BLOCK_D]`` (zeros where masked)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rh = tl.load(
        rh_ptr + offs_m[:, None] * D + offs_d[None, :],
        mask=(offs_m[:, None] < M) & d_ok[None, :],
        other=0.0,
    )
    rj = tl.load(
        rj_ptr + offs_n[:, None] * D + offs_d[None, :],
        mask=(offs_n[:, None] < N) & d_ok[None, :],
        other=0.0,
    )
    return rh[:, None, :] - rj[None, :, :]


def _weight_tile(
    rh_ptr,
    rj_ptr,
    q_ptr,
    mod_ptr,
    inv_s2_ptr,
    offs_m,
    offs_n,
    M,
    N,
    D,
    C: tl.constexpr,
    KID: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``W = modulation ⊙ Σ_c q_c f(r²/σ_c²)`` for one tile → ``[BLOCK_M, BLOCK_N]``."""
    diff = _diff_tile(rh_ptr, rj_ptr, offs_m, offs_n, M, N, D, BLOCK_D)
    r2 = tl.sum(diff * diff, axis=2)
    m_ok = offs_m < M
    w = tl.zeros_like(r2)
    for c in tl.static_range(C):
        k = _profile(r2 * tl.load(inv_s2_ptr + c), KID)
        if HAS_Q:
            q = tl.load(q_ptr + offs_m * C + c, mask=m_ok, other=0.0)
            w += k * q[:, None]
        else:
            w += k
    if HAS_MOD:
        ok = m_ok[:, None] & (offs_n[None, :] < N)
        w *= tl.load(mod_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0.0)
    return w


def _dot(a, b, acc, TF32: tl.constexpr):
    """``acc + a @ b`` in float32 (TF32 inputs only when ``TF32``)."""
    if TF32:
        out = tl.dot(a, b, acc, input_precision="tf32")
    else:
        out = tl.dot(a, b, acc, input_precision="ieee")
    return out


def _forward_kernel(
    x_ptr,
    rh_ptr,
    rj_ptr,
    q_ptr,
    mod_ptr,
    inv_s2_ptr,
    y_ptr,
    B,
    M,
    N,
    D,
    C: tl.constexpr,
    KID: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``y[b-tile, m-tile] = Σ_n-tiles x[b-tile, n-tile] @ W[m-tile, n-tile]ᵀ``."""
    pid_b = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b_ok = offs_b < B
    acc = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        w = _weight_tile(
            rh_ptr, rj_ptr, q_ptr, mod_ptr, inv_s2_ptr, offs_m, offs_n, M, N, D,
            C, KID, HAS_Q, HAS_MOD, BLOCK_D,
        )  # fmt: skip
        xt = tl.load(
            x_ptr + offs_b[:, None] * N + offs_n[None, :],
            mask=b_ok[:, None] & (offs_n[None, :] < N),
            other=0.0,
        )
        acc = _dot(xt, tl.trans(w), acc, TF32)
    tl.store(
        y_ptr + offs_b[:, None] * M + offs_m[None, :],
        acc,
        mask=b_ok[:, None] & (offs_m[None, :] < M),
    )


def _grad_x_kernel(
    gy_ptr,
    rh_ptr,
    rj_ptr,
    q_ptr,
    mod_ptr,
    inv_s2_ptr,
    gx_ptr,
    B,
    M,
    N,
    D,
    C: tl.constexpr,
    KID: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``grad_x[b-tile, n-tile] = Σ_m-tiles grad_y[b-tile, m-tile] @ W[m-tile, n-tile]``."""
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = offs_b < B
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        w = _weight_tile(
            rh_ptr, rj_ptr, q_ptr, mod_ptr, inv_s2_ptr, offs_m, offs_n, M, N, D,
            C, KID, HAS_Q, HAS_MOD, BLOCK_D,
        )  # fmt: skip
        gy = tl.load(
            gy_ptr + offs_b[:, None] * M + offs_m[None, :],
            mask=b_ok[:, None] & (offs_m[None, :] < M),
            other=0.0,
        )
        acc = _dot(gy, w, acc, TF32)
    tl.store(
        gx_ptr + offs_b[:, None] * N + offs_n[None, :],
        acc,
        mask=b_ok[:, None] & (offs_n[None, :] < N),
    )


def _grad_params_kernel(
    x_ptr,
    gy_ptr,
    rh_ptr,
    rj_ptr,
    q_ptr,
    mod_ptr,
    inv_s2_ptr,
    grh_ptr,
    grj_ptr,
    gq_ptr,
    gmod_ptr,
    glogw_ptr,
    B,
    M,
    N,
    D,
    C: tl.constexpr,
    KID: tl.constexpr,
    HAS_Q: tl.constexpr,
    HAS_MOD: tl.constexpr,
    NEED_Q: tl.constexpr,
    NEED_MOD: tl.constexpr,
    NEED_RH: tl.constexpr,
    NEED_RJ: tl.constexpr,
    NEED_W: tl.constexpr,
    TF32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Position, charge, modulation and ``log σ`` gradients of one ``(m-tile, n-tile)``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    mn_ok = m_ok[:, None] & n_ok[None, :]
    # dW = grad_yᵀ x for this tile, accumulated over B in registers.
    dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        b_ok = offs_b < B
        gy = tl.load(
            gy_ptr + offs_b[:, None] * M + offs_m[None, :],
            mask=b_ok[:, None] & m_ok[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + offs_b[:, None] * N + offs_n[None, :],
            mask=b_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        dw = _dot(tl.trans(gy), xt, dw, TF32)
    if HAS_MOD:
        s = dw * tl.load(mod_ptr + offs_m[:, None] * N + offs_n[None, :], mask=mn_ok, other=0.0)
    else:
        s = dw
    diff = _diff_tile(rh_ptr, rj_ptr, offs_m, offs_n, M, N, D, BLOCK_D)
    r2 = tl.sum(diff * diff, axis=2)
    wk = tl.zeros_like(r2)
    g = tl.zeros_like(r2)
    for c in tl.static_range(C):
        inv = tl.load(inv_s2_ptr + c)
        u = r2 * inv
        k = _profile(u, KID)
        if HAS_Q:
            q = tl.load(q_ptr + offs_m * C + c, mask=m_ok, other=0.0)
            wk += k * q[:, None]
        else:
            wk += k
        if NEED_Q:
            tl.atomic_add(gq_ptr + offs_m * C + c, tl.sum(s * k, axis=1), mask=m_ok)
        if NEED_RH or NEED_RJ or NEED_W:
            h = s * _profile_derivative(u, KID)
            if HAS_Q:
                h = h * q[:, None]
            if NEED_W:
                tl.atomic_add(glogw_ptr + c, -2.0 * tl.sum(tl.sum(h * u, axis=1), axis=0))
            g += h * inv
    if NEED_MOD:
        tl.store(gmod_ptr + offs_m[:, None] * N + offs_n[None, :], dw * wk, mask=mn_ok)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    if NEED_RH:
        grh = 2.0 * tl.sum(g[:, :, None] * diff, axis=1)  # [BLOCK_M, BLOCK_D]
        tl.atomic_add(
            grh_ptr + offs_m[:, None] * D + offs_d[None, :],
            grh,
            mask=m_ok[:, None] & d_ok[None, :],
        )
    if NEED_RJ:
        grj = -2.0 * tl.sum(g[:, :, None] * diff, axis=0)  # [BLOCK_N, BLOCK_D]
        tl.atomic_add(
            grj_ptr + offs_n[:, None] * D + offs_d[None, :],
            grj,
            mask=n_ok[:, None] & d_ok[None, :],
        )


def _build() -> dict[str, Any]:
    """Import Triton and JIT-compile the kernels above (once per process)."""
    if _BUILT:
        return _BUILT
    import triton
    import triton.language

    namespace = globals()
    namespace["tl"] = triton.language
    for name in ("_profile", "_profile_derivative", "_diff_tile", "_weight_tile", "_dot"):
        namespace[name] = triton.jit(namespace[name])
    _BUILT["forward"] = triton.jit(_forward_kernel)
    _BUILT["grad_x"] = triton.jit(_grad_x_kernel)
    _BUILT["grad_params"] = triton.jit(_grad_params_kernel)
    _BUILT["cdiv"] = triton.cdiv
    _BUILT["next_power_of_2"] = triton.next_power_of_2
    return _BUILT


# --------------------------------------------------------------------------- autograd


class _KernelMatmulFused(torch.autograd.Function):
    """Autograd function of the fused path; see :func:`kernel_matmul_fused`.

    Inputs (in ``needs_input_grad`` order): ``x, target_pos, source_pos, charge, modulation,
    log_width, config`` where ``config`` is ``(kernel_id, channels, blocks, allow_tf32)``.
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
        config: tuple[int, int, tuple[int, int, int], bool],
    ) -> Tensor:
        k = _build()
        kid, C, (bb, bm, bn), tf32 = config
        x = x.contiguous()
        r_h, r_j = target_pos.contiguous(), source_pos.contiguous()
        q = None if charge is None else charge.reshape(charge.shape[0], C).contiguous()
        mod = None if modulation is None else modulation.contiguous()
        inv_s2 = torch.exp(-2.0 * log_width.detach().to(x.device, torch.float32)).contiguous()
        B, N = x.shape
        M, D = r_h.shape
        y = x.new_empty(B, M)
        grid = (k["cdiv"](B, bb), k["cdiv"](M, bm))
        k["forward"][grid](
            x, r_h, r_j, q if q is not None else x, mod if mod is not None else x, inv_s2, y,
            B, M, N, D,
            C=C, KID=kid, HAS_Q=q is not None, HAS_MOD=mod is not None, TF32=tf32,
            BLOCK_B=bb, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(2, k["next_power_of_2"](D)),
        )  # fmt: skip
        ctx.save_for_backward(x, r_h, r_j, q, mod, inv_s2)
        ctx.config = config
        ctx.charge_shape = None if charge is None else charge.shape
        ctx.log_width_dtype = log_width.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        k = _build()
        x, r_h, r_j, q, mod, inv_s2 = ctx.saved_tensors
        kid, C, (bb, bm, bn), tf32 = ctx.config
        need_x, need_rh, need_rj, need_q, need_mod, need_w, _ = ctx.needs_input_grad
        need_q = need_q and q is not None
        need_mod = need_mod and mod is not None
        grad_y = grad_y.contiguous().to(torch.float32)
        B, N = x.shape
        M, D = r_h.shape
        block_d = max(2, k["next_power_of_2"](D))
        q_arg = q if q is not None else x
        mod_arg = mod if mod is not None else x
        flags = {"C": C, "KID": kid, "HAS_Q": q is not None, "HAS_MOD": mod is not None}
        blocks = {"BLOCK_B": bb, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": block_d}

        grad_x = None
        if need_x:
            grad_x = torch.empty_like(x)
            grid = (k["cdiv"](B, bb), k["cdiv"](N, bn))
            k["grad_x"][grid](
                grad_y, r_h, r_j, q_arg, mod_arg, inv_s2, grad_x, B, M, N, D,
                TF32=tf32, **flags, **blocks,
            )  # fmt: skip

        grad_rh = torch.zeros_like(r_h) if need_rh else None
        grad_rj = torch.zeros_like(r_j) if need_rj else None
        grad_q = torch.zeros_like(q) if need_q else None
        grad_mod = torch.empty_like(mod) if need_mod else None
        grad_logw = torch.zeros_like(inv_s2) if need_w else None
        if need_rh or need_rj or need_q or need_mod or need_w:
            grid = (k["cdiv"](M, bm), k["cdiv"](N, bn))
            k["grad_params"][grid](
                x, grad_y, r_h, r_j, q_arg, mod_arg, inv_s2,
                grad_rh if need_rh else x, grad_rj if need_rj else x,
                grad_q if need_q else x, grad_mod if need_mod else x,
                grad_logw if need_w else x,
                B, M, N, D,
                NEED_Q=need_q, NEED_MOD=need_mod, NEED_RH=need_rh, NEED_RJ=need_rj,
                NEED_W=need_w, TF32=tf32, **flags, **blocks,
            )  # fmt: skip
        if grad_q is not None:
            grad_q = grad_q.reshape(ctx.charge_shape)
        if grad_logw is not None:
            grad_logw = grad_logw.to(ctx.log_width_dtype)
        return grad_x, grad_rh, grad_rj, grad_q, grad_mod, grad_logw, None


# --------------------------------------------------------------------------- public entry


def _check_fused_inputs(tensors: dict[str, Tensor | None], kernel: Kernel) -> int:
    """Validate what the fused kernels need; return the kernel's constexpr id.

    Raises:
        NotImplementedError: ``kernel`` is not a built-in radial kernel.
        ValueError: a tensor is on another device or is not float32.
    """
    kid = _KERNEL_IDS.get(type(kernel))
    if kid is None:
        raise NotImplementedError(
            f"the fused path supports only the built-in radial kernels "
            f"(gaussian, cauchy, exponential), not {type(kernel).__name__} "
            f"(name {getattr(kernel, 'name', '')!r}); use mode='chunked' for it"
        )
    present = {name: t for name, t in tensors.items() if t is not None}
    device = present["x"].device
    for name, t in present.items():
        if t.device != device:
            raise ValueError(
                f"{name} is on {t.device} but x is on {device}: all tensors of the fused path "
                f"must be on one device"
            )
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 for the fused path, got {t.dtype}")
    if kernel.log_width.device != device:
        raise ValueError(f"kernel width is on {kernel.log_width.device} but x is on {device}")
    return kid  # shapes and D are checked by ops._validate


def kernel_matmul_fused(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    blocks: tuple[int, int, int] | None = None,
    allow_tf32: bool = False,
) -> Tensor:
    """``y = x @ W.T`` (eq. 9) by fused Triton kernels: no tile of ``W`` ever leaves registers.

    Same numbers as :func:`~particlesim.kernels.ops.kernel_matmul_reference` (to float32
    rounding) and the same closed-form gradients as the chunked path, for ``x``, both position
    sets, the charges, the modulation and a learnable ``log σ``. Not twice differentiable.

    Args:
        x: ``[B, N]`` source activations, float32.
        kernel: a :class:`GaussianKernel`, :class:`CauchyKernel` or :class:`ExponentialKernel`
            with ``C ≥ 1`` widths.
        target_pos: ``[M, D]``; source_pos: ``[N, D]``.
        charge: ``[M]`` (``C = 1``) or ``[M, C]``, or None (1 on every channel).
        modulation: ``[M, N]`` or None.
        blocks: tile sizes ``(BLOCK_B, BLOCK_M, BLOCK_N)``, powers of two ≥ 16; default
            :data:`DEFAULT_BLOCKS`.
        allow_tf32: let ``tl.dot`` use TF32 inputs (faster on Ampere+, ~1e-3 relative error).

    Returns:
        ``[B, M]`` float32.

    Raises:
        NotImplementedError: for any other kernel (use ``mode="chunked"``).
        ValueError: mixed devices, a dtype other than float32, mismatched ``D``, bad shapes
            or block sizes.
        RuntimeError: Triton is missing, or CPU tensors without ``TRITON_INTERPRET=1``.
    """
    tensors = {
        "x": x,
        "target_pos": target_pos,
        "source_pos": source_pos,
        "charge": charge,
        "modulation": modulation,
    }
    kid = _check_fused_inputs(tensors, kernel)
    _validate(kernel, target_pos, source_pos, charge, modulation, x)
    blocks = DEFAULT_BLOCKS if blocks is None else tuple(int(b) for b in blocks)
    if len(blocks) != 3 or any(b < 16 or b & (b - 1) for b in blocks):
        raise ValueError(f"blocks must be three powers of two ≥ 16, got {blocks}")
    if not fused_available(*(t for t in tensors.values() if t is not None)):
        raise RuntimeError(
            "the fused path needs Triton and CUDA tensors (or TRITON_INTERPRET=1 set before "
            "Triton is imported, for CPU tensors); use mode='chunked' instead"
        )
    config = (kid, kernel.channels, blocks, bool(allow_tf32))
    return _KernelMatmulFused.apply(
        x, target_pos, source_pos, charge, modulation, kernel.log_width, config
    )
