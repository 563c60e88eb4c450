"""The ``matmul`` path of a radial kernel interaction: the kernel written as matrix products.

For a :class:`~particlesim.kernels.base.RadialKernel` ``k_c = f(r²/σ_c²)`` (times the cutoff's
switch ``Sw(r²)`` where there is one) the squared distances of a whole block come from one
thin matrix product of augmented positions,

    r²[h, j] = |r_h|² + |r_j|² − 2 r_h·r_j = [r_h, |r_h|², 1] · [−2 r_j, 1, |r_j|²]ᵀ,

clamped at 0, after both particle sets are measured from their common centre (a translation
changes nothing and far-away positions lose no precision to cancellation). The kernel's
profile is then one elementwise pass, and the layer's matrix product ``y = x Wᵀ`` the only
O(B·N·M) work, as in ``nn.Linear``. With one channel the charges scale ``y``'s columns
(``y = (x kᵀ) ⊙ q``) instead of ``W``'s rows, so ``W`` is never formed.

The backward pass is written by hand (the closed forms of Lange 2015, eqs. 12, 14–16, 18,
20–23, 25, for any profile, ``C`` channels, modulation and cutoff):

* ``∂L/∂x = (gy ⊙ q) k`` (the matrix product ``nn.Linear`` also does),
* ``D = (gy ⊙ q)ᵀ x``, the gradient of the charge-free weight (``nn.Linear``'s weight
  gradient), then ``P = D ⊙ f'(u)`` in one pass (for the Gaussian ``f' = −f``, so ``P`` comes
  from the saved kernel),
* ``∂L/∂q = Σ_b gy ⊙ (x kᵀ)``: O(B·M) from the forward's product, no pass over ``[M, N]``,
* ``∂L/∂r_h = 2(rowsum(G) r_h − G r_j)``, ``∂L/∂r_j = 2(colsum(G) r_j − Gᵀ r_h)`` with
  ``G = P/σ²``: two thin products ``G [r_j, 1]`` and ``Gᵀ [r_h, 1]``, each one read of ``G``.

Every ``[M, N]`` array is held source-major, as its transpose ``[N, M]`` (``kᵀ``,
``Dᵀ = xᵀ gy``, …), and each thin product puts its small factor on the left
(``[D+2, N]ᵀ``-shaped): this is the layout in which both ``y = x kᵀ`` and the thin products
run at full speed on CPU BLAS (measured 3–4× faster for the thin ones at 256 × 784).

On CPU the common layer (one channel, no cutoff, no modulation, a fixed width) takes
:mod:`~particlesim.kernels.numba_cpu`'s compiled loops instead of the tensor operations
around its products (:class:`_LeanRadialMatmul`, :data:`FUSED_CPU`): one loop makes the
kernel from coordinate differences (with the Gaussian's charges folded in, ``W = q ⊙ k``)
and one makes both position gradients, and the kernel is held ``[M, N]`` as ``nn.Linear``
holds its weight, so the three products are ``nn.Linear``'s own. Under the memory
preflight's fake tensors, or without Numba, the tensor-operation form runs.

Memory: up to :data:`SAVED_MAX_ELEMENTS` kernel entries the forward keeps the kernel (and
``r²``, or for the common one-channel layer the profile's derivative, where the backward
needs it) for the backward, like a dense layer keeps its weight; the common layer makes
both in cache-sized row blocks (:data:`CACHE_BLOCK_ELEMENTS`). Above that the layer is
walked in blocks of target rows of about :data:`BLOCK_ELEMENTS` entries, each recomputed in
the backward, so the extra memory stays O(block · N) at any size: ``W`` is never
materialised whole.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.autograd.function import once_differentiable

from particlesim.kernels import numba_cpu
from particlesim.kernels.base import (
    GaussianKernel,
    KernelError,
    RadialKernel,
    check_inputs,
    describe_kernel,
)

__all__ = [
    "BLOCK_ELEMENTS",
    "CACHE_BLOCK_ELEMENTS",
    "SAVED_MAX_ELEMENTS",
    "kernel_matmul_matmul",
]

#: Kernel entries (``C·M·N``) up to which the forward keeps the kernel for the backward
#: (2^22: 16 MiB in float32); above it, blocks are recomputed and memory stays linear.
SAVED_MAX_ELEMENTS: int = 2**22

#: Kernel entries (``C·rows·N``) per block above :data:`SAVED_MAX_ELEMENTS` (4 MiB float32).
BLOCK_ELEMENTS: int = 2**20

#: Kernel entries per row block of the common layer's elementwise work (1 MiB in float32):
#: the thin product, the profile and its derivative of one block run in the core's cache,
#: instead of each as a pass over the whole ``[N, M]`` array in memory.
CACHE_BLOCK_ELEMENTS: int = 2**18


def _as(tensor: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``tensor`` in ``dtype`` (no call at all when it already is: this path counts calls)."""
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def _is_fake(tensor: Tensor) -> bool:
    """A tensor without data (the memory preflight's fake tensors): no value can be read."""
    return isinstance(tensor, FakeTensor)


def _check_finite(
    centre: Tensor,
    x: Tensor,
    kernel: RadialKernel,
    target_pos: Tensor,
    source_pos: Tensor,
    where: str,
) -> None:
    """Raise :func:`_raise_not_finite`'s error where a position is NaN or infinite, read from
    the positions' ``centre`` (its D numbers read as a list: no tensor operation). Finite
    positions whose sum or squares overflow go on, to a NaN loss: a divergence, as on the
    other paths."""
    if not _is_fake(x) and not math.isfinite(sum(centre.tolist())):
        _raise_not_finite(kernel, target_pos, source_pos, where)


def _raise_not_finite(
    kernel: RadialKernel, target_pos: Tensor, source_pos: Tensor, where: str
) -> None:
    """One line naming the interaction, the kernel and the first position that is not finite
    (none: nothing raised)."""
    for name, positions in (("target", target_pos), ("source", source_pos)):
        bad = (~torch.isfinite(positions.detach())).any(1).nonzero()
        if len(bad):
            row = int(bad[0])
            value = [round(v, 4) for v in positions[row].tolist()]
            raise KernelError(
                f"{where + ': ' if where else ''}kernel {describe_kernel(kernel)}: {name} "
                f"position {row} is not finite ({value}); {len(bad)} such row(s)"
            )


#: Whether the common layer on CPU runs :mod:`~particlesim.kernels.numba_cpu`'s fused loops
#: (where Numba is installed) instead of its tensor-operation form.
FUSED_CPU: bool = True

#: Position dimensions up to which the fused loops run: above, the tensor form's thin
#: products, which use every thread, are as fast or faster (D = 12 at (128, 784, 256), 2
#: threads: 1.80× ``nn.Linear`` against 1.97× for the loops, which run on one core).
FUSED_MAX_DIMENSIONS: int = 8


_STEEP: dict[type, bool] = {}


def _steep_at_zero(kernel: RadialKernel) -> bool:
    """Whether ``|f'|`` grows without bound as ``u → 0`` (a cusp, e.g. ``exp(−√u)``): then
    ``r²`` is summed from coordinate differences, exact near 0 where ``f'`` amplifies any
    rounding of it. Measured once per kernel class: ``|f'(10⁻⁸)| > 30·|f'(10⁻⁴)|``."""
    cls = type(kernel)
    if cls not in _STEEP:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        # real numbers even when called under the memory preflight's fake tensors (whose
        # values cannot be read: the answer would be a guess, and it is kept per class)
        with unset_fake_temporarily():
            u = torch.tensor([1e-8, 1e-4], dtype=torch.float64)
            try:
                fp = kernel.profile_derivative(u).abs()
                _STEEP[cls] = bool(fp[0] > 30.0 * fp[1])
            except Exception:  # an odd profile: take the safe, exact form
                _STEEP[cls] = True
    return _STEEP[cls]


def _is_gaussian(kernel: RadialKernel) -> bool:
    """``f(u) = exp(−u)`` exactly as the built-in Gaussian: ``f' = −f``, computed in place."""
    cls = type(kernel)
    return (
        cls.profile is GaussianKernel.profile
        and cls.profile_derivative is GaussianKernel.profile_derivative
    )


def _gaussian_(minus_u: Tensor) -> Tensor:
    """``exp(−u)`` in place, in ``[0, 1]``, exactly 0 where it would be subnormal.

    Subnormal floats (below ``finfo.tiny``, ``u ≳ 87`` in float32) slow every later product
    with the kernel down by half on CPU (measured: 20.8 against 13.5 ms for ``x kᵀ`` at
    512 × 2048 × 2048); they are below any sum they enter by 30 orders of magnitude. The
    ceiling keeps a rounding above 0 of ``−u`` (``ε·|r|²/σ²`` from the thin product, large
    for positions hundreds of widths apart) from growing the kernel past 1 or to infinity.
    """
    tiny = torch.finfo(minus_u.dtype).tiny
    floor = math.log(tiny) + 0.5  # exp(floor) ≈ 1.65 tiny: a normal number
    k = minus_u.clamp_(min=floor, max=0.0).exp_()
    return torch.nn.functional.threshold_(k, 2.0 * tiny, 0.0)


class _Geometry:
    """Centred, augmented positions of one call: ``r²`` of any block is one thin product.

    ``target [M, D]``/``source [N, D]`` are measured from the common centre (differences
    unchanged); ``left_t [D+2, M] = [1; r_hᵀ; |r_h|²]`` and ``right [N, D+2] =
    [|r_j|², −2 r_j, 1]``, so that ``right @ left_t[:, s:e]`` is ``r²ᵀ`` of target rows
    ``[s, e)``, ``[N, m]``, and ``left_t[:D+1]`` is the ``[1; r_hᵀ]`` factor of the backward.
    """

    def __init__(self, target_pos: Tensor, source_pos: Tensor, dtype: torch.dtype) -> None:
        target, source = target_pos.detach(), source_pos.detach()
        if target.dtype != dtype:
            target, source = target.to(dtype), source.to(dtype)
        M, N = target.shape[0], source.shape[0]
        self.centre = torch.cat([target, source]).mean(0)  # NaN/inf if any position is
        self.target = target - self.centre
        self.source = source - self.centre
        self.left_t = torch.cat(
            [target.new_ones(1, M), self.target.T, (self.target * self.target).sum(1)[None]]
        )
        self.right = torch.cat(
            [(self.source * self.source).sum(1, keepdim=True), self.source * -2.0,
             source.new_ones(N, 1)],
            1,
        )  # fmt: skip

    def r2t_exact(self, s: int, e: int) -> Tensor:
        """``r²ᵀ`` of target rows ``[s, e)`` summed from coordinate differences (``D`` passes):
        for a profile steep at 0, where the product form's rounding (``ε·|r|²``) shows."""
        target = self.target[s:e]
        r2t = None
        for d in range(self.source.shape[1]):
            diff = self.source[:, d : d + 1] - target[:, d]
            r2t = diff.mul_(diff) if r2t is None else r2t.addcmul_(diff, diff)
        return r2t

    def r2t(self, s: int, e: int, negative_scale: Tensor | None = None) -> Tensor:
        """``r²ᵀ`` of target rows ``[s, e)``, ``[N, m]``, clamped at 0; or, given
        ``negative_scale`` (``−σ⁻²``), ``−u`` unclamped, for :func:`_gaussian_` to clamp."""
        left_t = self.left_t[:, s:e]  # row-major with a leading dimension: BLAS takes it as is
        if negative_scale is not None:
            return torch.mm(self.right, left_t * negative_scale)
        return torch.mm(self.right, left_t).clamp_min_(0.0)


def _block(
    kernel: RadialKernel,
    geometry: _Geometry,
    s: int,
    e: int,
    inv_s2: Tensor,
    gaussian: bool,
) -> tuple[Tensor, Tensor | None]:
    """``(kᵀ [C, N, m], r²ᵀ, uᵀ or None)`` of target rows ``[s, e)`` (the kernel without its
    switch).

    ``r²`` is kept where something later needs it: a profile other than the Gaussian (its
    derivative), more than one channel, a cutoff (the switch) or a learnable width. With one
    channel, no cutoff and a profile other than the Gaussian, ``u = r²/σ²`` is kept instead
    (see :func:`_keeps_u`).
    """
    C = inv_s2.shape[0]
    cut = kernel.cutoff is not None
    if gaussian and C == 1 and not cut and not kernel.log_width.requires_grad:
        # −u straight from the thin product, then exp in place
        return _gaussian_(geometry.r2t(s, e, negative_scale=-inv_s2[0])).unsqueeze(0), None
    r2 = geometry.r2t_exact(s, e) if _steep_at_zero(kernel) else geometry.r2t(s, e)
    if C == 1 and not cut and not gaussian:
        u = r2.mul_(inv_s2[0])  # nothing needs r² itself: keep u (one pass fewer each way)
        return kernel.profile(u).unsqueeze(0), u
    if C == 1:
        u = r2 * inv_s2[0]
        return (_gaussian_(u.neg_()) if gaussian else kernel.profile(u)).unsqueeze(0), r2
    u3 = r2.unsqueeze(0) * inv_s2.view(C, 1, 1)
    return (_gaussian_(u3.neg_()) if gaussian else kernel.profile(u3)), r2


def _derivative(kernel: RadialKernel, u: Tensor, value: Tensor) -> Tensor:
    """``f'(u)`` from the kernel's :meth:`~RadialKernel.profile_derivative_from_value`, as a
    tensor of its own (the caller scales it in place; ``value`` is the saved kernel)."""
    fp = kernel.profile_derivative_from_value(u, value)
    shared = fp.untyped_storage().data_ptr()
    if shared in (value.untyped_storage().data_ptr(), u.untyped_storage().data_ptr()):
        fp = fp.clone()
    return fp


def _keeps_u(kernel: RadialKernel, gaussian: bool) -> bool:
    """Whether :func:`_block`'s second result is ``u`` rather than ``r²``."""
    return kernel.channels == 1 and kernel.cutoff is None and not gaussian


def _charge_sum(k3: Tensor, q: Tensor | None) -> Tensor:
    """``Σ_c q_c k_c`` (``Σ_c k_c`` without charges) of a source-major block, ``[N, m]``."""
    if q is None:
        return k3.sum(0)
    return torch.einsum("cnm,mc->nm", k3, q)


def _unswitched(k3: Tensor, q_b: Tensor | None) -> Tensor:
    """The block's weight before switch and modulation: ``k`` with one channel (its charge
    scales ``y`` instead), ``Σ_c q_c k_c`` with several, ``[N, m]``."""
    return k3[0] if k3.shape[0] == 1 else _charge_sum(k3, q_b)


def _weight_t(
    wk: Tensor, switch: Tensor | None, modulation_t: Tensor | None, s: int, e: int
) -> Tensor:
    """``Wᵀ`` of target rows ``[s, e)`` (without a one-channel charge): ``wk ⊙ Sw ⊙ w``."""
    w = wk if switch is None else wk * switch
    return w if modulation_t is None else w * modulation_t[:, s:e]


def _block_weight_t(
    kernel: RadialKernel,
    geometry: _Geometry,
    s: int,
    e: int,
    inv_s2: Tensor,
    gaussian: bool,
    charge2: Tensor | None,
    modulation_t: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The forward's block: ``(Wᵀ [N, m], kᵀ, r²ᵀ or None)`` of target rows ``[s, e)``."""
    k3, r2 = _block(kernel, geometry, s, e, inv_s2, gaussian)
    wk = _unswitched(k3, None if charge2 is None else charge2[s:e])
    switch = None if kernel.cutoff is None else kernel.switch(r2)
    return _weight_t(wk, switch, modulation_t, s, e), k3, r2


class _RadialMatmul(torch.autograd.Function):
    """Autograd function of the matmul path; see :func:`kernel_matmul_matmul`.

    Inputs: ``x, target_pos, source_pos, charge, modulation, kernel, log_width, where``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target_pos: Tensor,
        source_pos: Tensor,
        charge: Tensor | None,
        modulation: Tensor | None,
        kernel: RadialKernel,
        log_width: Tensor,
        where: str,
    ) -> Tensor:
        M, N, C = target_pos.shape[0], source_pos.shape[0], kernel.channels
        geometry = _Geometry(target_pos, source_pos, x.dtype)
        _check_finite(geometry.centre, x, kernel, target_pos, source_pos, where)
        inv_s2 = _as(log_width.detach(), x.dtype).mul(-2.0).exp_()  # σ⁻² per channel
        gaussian = _is_gaussian(kernel)
        keep = C * M * N <= SAVED_MAX_ELEMENTS
        rows = M if keep else max(1, BLOCK_ELEMENTS // max(1, C * N))
        charge2 = None if charge is None else _as(charge.reshape(M, C), x.dtype)
        modulation_t = None if modulation is None else modulation.T.to(x.dtype).contiguous()
        # one channel: the charges scale y's columns, W is never formed
        scale = charge2[:, 0] if C == 1 and charge2 is not None else None
        saved: tuple[Tensor, ...] = ()
        if rows >= M:
            w_t, k3, r2 = _block_weight_t(
                kernel, geometry, 0, M, inv_s2, gaussian, charge2, modulation_t
            )
            y = torch.mm(x, w_t)
            saved = (k3, r2 if r2 is not None else k3.new_empty(0))
        else:
            y = x.new_empty(x.shape[0], M)
            for s in range(0, M, rows):
                e = min(M, s + rows)
                w_t = _block_weight_t(
                    kernel, geometry, s, e, inv_s2, gaussian, charge2, modulation_t
                )[0]
                y[:, s:e] = x @ w_t
        # ∂L/∂q of a one-channel charge is Σ_b gy ⊙ (x kᵀ): keep x kᵀ (O(B·M))
        ctx.unscaled = y if scale is not None and ctx.needs_input_grad[3] else None
        if scale is not None:
            y = y * scale
        ctx.save_for_backward(x, charge, log_width, *saved)
        ctx.kernel, ctx.geometry, ctx.inv_s2, ctx.rows = kernel, geometry, inv_s2, rows
        ctx.gaussian, ctx.modulation_t = gaussian, modulation_t
        ctx.dtypes = (target_pos.dtype, source_pos.dtype, getattr(modulation, "dtype", None))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, charge, log_width, *saved = ctx.saved_tensors
        kernel, geometry, inv_s2 = ctx.kernel, ctx.geometry, ctx.inv_s2
        modulation_t = ctx.modulation_t
        need_x, need_rh, need_rj, need_q, need_mod, _, need_w, _ = ctx.needs_input_grad
        M, N, C = geometry.target.shape[0], geometry.source.shape[0], kernel.channels
        D = geometry.target.shape[1]
        charge2 = None if charge is None else _as(charge.reshape(M, C), x.dtype)
        one_channel_charge = C == 1 and charge2 is not None
        gy = grad_y * charge2[:, 0] if one_channel_charge else grad_y  # dL/d(x Wᵀ) w/o charge
        need_pos = need_rh or need_rj
        need_D = need_pos or need_w or need_mod or (need_q and not one_channel_charge)
        cut = kernel.cutoff is not None
        one_block = ctx.rows >= M
        keeps_u = _keeps_u(kernel, ctx.gaussian)  # then "r2" below holds u = r²/σ²

        grad_x = None if not need_x or one_block else torch.zeros_like(x)
        grad_rh = x.new_empty(M, D) if need_rh else None
        grad_rj = x.new_zeros(N, D) if need_rj else None
        many_charges = need_q and charge is not None and not one_channel_charge
        grad_q2 = x.new_empty(M, C) if many_charges else None
        grad_mod_t = x.new_empty(N, M) if need_mod and modulation_t is not None else None
        grad_logw = x.new_zeros(C) if need_w else None
        # [1, r_j]ᵀ and [1, r_h]ᵀ: the thin products' small left factors
        ones_source = torch.cat([geometry.source.new_ones(1, N), geometry.source.T])  # [D+1, N]
        ones_target = geometry.left_t[: D + 1]  # [1; r_hᵀ], [D+1, M]

        for s in range(0, M, ctx.rows):
            e = min(M, s + ctx.rows)
            if one_block:
                k3, r2 = saved
                r2 = r2 if r2.numel() else None
            else:
                k3, r2 = _block(kernel, geometry, s, e, inv_s2, ctx.gaussian)
            q_b = None if charge2 is None else charge2[s:e]
            wk = _unswitched(k3, q_b)  # each computed once for the block's every use
            sw = None if not cut else kernel.switch(r2)
            gy_b = gy[:, s:e]
            if need_x:
                w_t = _weight_t(wk, sw, modulation_t, s, e)
                if one_block:
                    grad_x = torch.mm(gy_b, w_t.T)
                else:
                    grad_x.addmm_(gy_b, w_t.T)
            if not need_D:
                continue
            Dt = torch.mm(x.T, gy_b)  # (dL/dW)ᵀ without the one-channel charge, [N, m]
            dsw = kernel.switch_derivative(r2) if cut and need_pos else None
            if grad_mod_t is not None:
                g = torch.mul(Dt, wk, out=grad_mod_t[:, s:e])
                if sw is not None:
                    g.mul_(sw)
            S = Dt if modulation_t is None else Dt.mul_(modulation_t[:, s:e])
            G_cut = S * wk * dsw if cut and need_pos else None
            if sw is not None:
                S.mul_(sw)  # now dL/d(Σ_c q_c k_c)
            if grad_q2 is not None:
                grad_q2[s:e] = torch.einsum("cnm,nm->mc", k3, S)
            if not (need_pos or need_w):
                continue
            # F_c = dL/dk_c ⊙ f'(u_c); G = dL/dr² = Σ_c F_c σ_c⁻² (+ the switch's term)
            if C == 1:
                if ctx.gaussian:
                    F = S.mul_(k3[0])  # −F: f' = −f, the sign is applied below
                    sign = -1.0
                else:
                    u = r2 if keeps_u else r2 * inv_s2[0]
                    F = S.mul_(kernel.profile_derivative_from_value(u, k3[0]))
                    sign = 1.0
                if need_w:  # r² (or u) is kept whenever the width is learnable
                    u_dot = torch.dot(F.reshape(-1), r2.reshape(-1))
                    u_dot = u_dot if keeps_u else u_dot * inv_s2[0]
                    grad_logw[0] += -2.0 * sign * u_dot
                factor = inv_s2[0] * sign
                if G_cut is not None:
                    G = F.mul_(factor).add_(G_cut)
                    factor = 1.0
                else:
                    G = F  # G = factor · F, applied to the thin products' results
            else:
                u3 = r2.unsqueeze(0) * inv_s2.view(C, 1, 1)
                fp = k3.neg() if ctx.gaussian else _derivative(kernel, u3, k3)
                F3 = fp.mul_(S)
                if q_b is not None:
                    F3.mul_(q_b.T.unsqueeze(1))
                if need_w:
                    grad_logw += -2.0 * torch.einsum("cnm,cnm->c", F3, u3)
                G = torch.einsum("cnm,c->nm", F3, inv_s2)
                factor = 1.0
                if G_cut is not None:
                    G.add_(G_cut)
            if not need_pos:
                continue
            two_factor = factor * 2.0
            if need_rh:
                # [D+1, m]: colsum of Gᵀ and r_jᵀ G, scaled; ∂L/∂r_h = 2f(Σ_j G r_h − G r_j)
                R = torch.mm(ones_source, G).mul_(two_factor)
                torch.sub(R[:1].T * geometry.target[s:e], R[1:].T, out=grad_rh[s:e])
            if need_rj:
                # [D+1, N]: rowsum of Gᵀ and r_hᵀ Gᵀ, scaled; ∂L/∂r_j = 2f(Σ_h G r_j − Gᵀ r_h)
                T = torch.mm(ones_target[:, s:e], G.T).mul_(two_factor)
                grad_rj.addcmul_(T[:1].T, geometry.source).sub_(T[1:].T)

        grad_q = None
        if need_q and charge is not None:
            grad_q = ((grad_y * ctx.unscaled).sum(0) if one_channel_charge else grad_q2).reshape(
                charge.shape
            )
        t_dtype, s_dtype, m_dtype = ctx.dtypes
        return (
            grad_x,
            None if grad_rh is None else _as(grad_rh, t_dtype),
            None if grad_rj is None else _as(grad_rj, s_dtype),
            None if grad_q is None else _as(grad_q, charge.dtype),
            None if grad_mod_t is None else _as(grad_mod_t.T, m_dtype),
            None,
            None if grad_logw is None else _as(grad_logw, log_width.dtype),
            None,
        )


def _pair_form(dim: int, a: float, like: Tensor) -> Tensor:
    """``Q [D+2, D+2]`` with ``[r_j, |r_j|², 1] · Q · [r_h, |r_h|², 1]ᵀ = a·|r_h − r_j|²``.

    ``Q = a·[[−2I, 0, 0], [0, 0, 1], [0, 1, 0]]``: the augmented positions of both sets are
    then one array (one ``cat``), and ``Q`` times the targets' part gives the thin product's
    left factor in one call. Kept per ``(D, a)``: a fixed-width layer asks for the same one
    every step (not under the memory preflight's fake tensors, whose arrays hold no values).
    """
    if _is_fake(like):
        return _new_pair_form(dim, a, like.dtype, like.device)
    return _kept_pair_form(dim, a, like.dtype, like.device)


def _new_pair_form(dim: int, a: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`_pair_form`, made."""
    form = torch.zeros(dim + 2, dim + 2, dtype=dtype, device=device)
    form[range(dim), range(dim)] = -2.0 * a
    form[dim, dim + 1] = form[dim + 1, dim] = a
    return form


_kept_pair_form = functools.lru_cache(maxsize=64)(_new_pair_form)


class _LeanRadialMatmul(torch.autograd.Function):
    """The matmul path of the common layer, in the fewest tensor operations and passes.

    One channel, no cutoff, no modulation, a fixed width, a profile not steep at 0 and the
    kernel kept whole (``M·N ≤`` :data:`SAVED_MAX_ELEMENTS`): every default
    ``ParticleLinear`` and kernel interaction. The algebra is :class:`_RadialMatmul`'s;
    what differs is the cost around the three products ``nn.Linear`` also does:

    * the count of operations, which at MNIST sizes (``B·N·M`` of a few million) costs as
      much as the arithmetic (each PyTorch call 3–12 µs of dispatch, the more right after a
      pass over memory): both particle sets are centred and augmented as one array
      ``[r, |r|², 1]ᵀ`` (``[D+2, M+N]``); one product with :func:`_pair_form` scales it
      (σ⁻² folded in), giving the thin product's left factor (which then gives ``u``, or
      ``−u`` for the Gaussian) and the backward's factors, and both position gradients
      come from one set of small operations over all particles;
    * the passes over ``[N, M]``: above :data:`CACHE_BLOCK_ELEMENTS` entries the thin
      product, the profile and (where the positions need gradients) the profile's
      derivative run on row blocks that stay in the core's cache, each written once into
      the kept kernel and derivative; the backward then scales the weight gradient by the
      kept derivative in one pass (the Gaussian's is the kernel itself, ``f' = −f``).

    On CPU with Numba (:func:`_fused_cpu`) both directions run :mod:`numba_cpu`'s loops
    instead (:func:`_fused_forward`, :func:`_fused_backward`); the tensor-operation form
    above is then what runs under fake tensors, on other devices and without Numba.

    Inputs: ``x, target_pos, source_pos, charge, kernel, inv_s2, where``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target_pos: Tensor,
        source_pos: Tensor,
        charge: Tensor | None,
        kernel: RadialKernel,
        inv_s2: float,
        where: str,
    ) -> Tensor:
        ctx.fused = _fused_cpu(x, target_pos.shape[1])
        if ctx.fused:
            return _fused_forward(ctx, (x, target_pos, source_pos, charge, kernel, inv_s2, where))
        M = target_pos.shape[0]
        # (no detach: an autograd function's forward records no graph)
        points = _as(torch.cat([target_pos, source_pos]), x.dtype)
        centre = points.mean(0)  # NaN/inf if any position is
        _check_finite(centre, x, kernel, target_pos, source_pos, where)
        points = points - centre
        ones = points.new_ones(1, points.shape[0])
        # [D+2, M+N]: rows r (D), |r|², 1; row-major with the particles along it, the layout
        # in which CPU BLAS takes thin products at full speed
        points_t = points.T
        aug = torch.cat([points_t, points_t.square().sum(0, keepdim=True), ones])
        gaussian = _is_gaussian(kernel)
        a = -inv_s2 if gaussian else inv_s2  # u (the Gaussian: −u) = source_augᵀ · left
        # Q·aug = [−2a r; a; a|r|²] of every particle: the targets' part is the thin
        # product's left factor, and both parts give the backward's sums already scaled
        scaled = torch.mm(_pair_form(points.shape[1], a, x), aug)
        left = scaled[:, :M]
        source_aug = aug[:, M:].T  # [N, D+2]
        need_fp = not gaussian and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        N = source_aug.shape[0]
        if gaussian and N * M > CACHE_BLOCK_ELEMENTS:  # in place in the kept kernel
            k_t, fp_t = x.new_empty(N, M), None
            rows = max(1, CACHE_BLOCK_ELEMENTS // M)
            for s in range(0, N, rows):
                _gaussian_(torch.mm(source_aug[s : s + rows], left, out=k_t[s : s + rows]))
        else:
            k_t, fp_t = _profile_in_blocks(
                kernel, gaussian, need_fp, N, M, lambda s, e: torch.mm(source_aug[s:e], left)
            )
        y0 = torch.mm(x, k_t)
        keep_y0 = charge is not None and ctx.needs_input_grad[3]
        q = charge if charge is None or charge.ndim == 1 else charge.reshape(-1)  # [M, 1]
        q = None if q is None else _as(q, x.dtype)
        y = y0 if q is None else y0 * q
        ctx.save_for_backward(x, q, k_t, fp_t, y0 if keep_y0 else None, aug, scaled)
        ctx.charges = None if charge is None else (charge.dtype, charge.shape)
        ctx.dtypes = (target_pos.dtype, source_pos.dtype)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.fused:
            return _fused_backward(ctx, grad_y)
        x, q, k_t, fp_t, y0, aug, scaled = ctx.saved_tensors
        need_x, need_rh, need_rj, need_q = ctx.needs_input_grad[:4]
        grad_q = _charge_grad(ctx, grad_y, y0) if need_q else None
        gy = grad_y if q is None else grad_y * _as(q, grad_y.dtype)
        grad_x = torch.mm(gy, k_t.T) if need_x else None
        grad_rh = grad_rj = None
        if need_rh or need_rj:
            G = torch.mm(x.T, gy).mul_(k_t if fp_t is None else fp_t)
            M, D = k_t.shape[1], aug.shape[0] - 2
            # ∂L/∂r_h = 2a·(Σ_j G_jh r_h − Σ_j G_jh r_j), ∂L/∂r_j likewise over h (2·dL/dr²
            # = 2a·G, a = ±σ⁻² as above): with the scaled factors [−2a r; a; a|r|²] both are
            # S[:D] + 2·S[D]·r of the sums S = [scaled_j · G, scaled_h · Gᵀ] ([D+2, M+N]:
            # one product each, then the small operations once for all particles)
            parts = []
            if need_rh:
                parts.append(torch.mm(scaled[:, M:], G))
            if need_rj:
                parts.append(torch.mm(scaled[:, :M], G.T))
            sums = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            own = aug[:D] if need_rh and need_rj else aug[:D, :M] if need_rh else aug[:D, M:]
            grads = _row_major(torch.addcmul, sums[:D], sums[D : D + 1], own, value=2.0)
            if need_rh:
                grad_rh = _as(grads[:M], ctx.dtypes[0])
            if need_rj:
                grad_rj = _as(grads[M:] if need_rh else grads, ctx.dtypes[1])
        return grad_x, grad_rh, grad_rj, grad_q, None, None, None


def _fused_cpu(x: Tensor, dimensions: int) -> bool:
    """Whether this call runs :mod:`~particlesim.kernels.numba_cpu`'s fused loops: on CPU, in
    float32 or float64, with values to read (not the memory preflight's fake tensors), up to
    :data:`FUSED_MAX_DIMENSIONS` position dimensions."""
    return (
        FUSED_CPU
        and dimensions <= FUSED_MAX_DIMENSIONS
        and x.is_cpu
        and x.dtype in (torch.float32, torch.float64)
        and not _is_fake(x)
        and numba_cpu.available()
    )


def _fused_forward(ctx: Any, inputs: tuple[Any, ...]) -> Tensor:
    """:class:`_LeanRadialMatmul`'s forward (its ``inputs``) in
    :mod:`~particlesim.kernels.numba_cpu`'s loops.

    The kernel is held as ``nn.Linear`` holds its weight, ``[M, N]``, so the three products
    are the ones ``nn.Linear`` does, in its layouts (``x kᵀ``, ``gy k``, ``gyᵀ x``: 3.5 ms
    less than the source-major ones at 512 × 2048 × 2048). The Gaussian is one loop over the
    pairs, and so is a kernel that gives ``scalar_profile``. Another profile is applied, as
    its kernel wrote it, to cache-sized row blocks of ``u``, each written once into the kept
    kernel and derivative."""
    x, target_pos, source_pos, charge, kernel, inv_s2, where = inputs
    loops = numba_cpu.loops()
    M, N, D = target_pos.shape[0], source_pos.shape[0], target_pos.shape[1]
    gaussian = _is_gaussian(kernel)
    scalar = None if gaussian else _scalar_profile_loops(kernel, _NUMPY_DTYPE[x.dtype])
    folds = gaussian or scalar is not None  # one loop makes W = q ⊙ k: the charges folded in
    q = charge if charge is None or charge.ndim == 1 else charge.reshape(-1)
    q_np = _NO_CHARGES[x.dtype] if q is None or not folds else _as(q, x.dtype).detach().numpy()
    # one call: the positions' copies (and whether they are finite), whether a charge is 0
    target_copy, source_t, finite, nonzero = loops.prepare(
        _as(target_pos, x.dtype).detach().numpy(), _as(source_pos, x.dtype).detach().numpy(), q_np
    )
    if not finite:
        _raise_not_finite(kernel, target_pos, source_pos, where)
    chunks = numba_cpu.threads(M * N)
    number = target_copy.dtype.type
    # W = q ⊙ k needs no pass over y for the charges either way, unless a charge is 0:
    # then W keeps nothing of k, which ∂L/∂q needs
    folded = folds and q is not None and nonzero
    charges = q_np if folded else _NO_CHARGES[x.dtype]
    # what the backward's loop reads: the Gaussian's f' = −f and a scalar profile's f'(u, f)
    # both come from the kernel itself; a tensor profile's kept derivative (a NumPy view,
    # made here once)
    backward_reads = None
    if folds:  # a tensor (PyTorch's allocator and memory tools see it), written by the loop
        k = x.new_empty(M, N)
        backward_reads = k.numpy()
    if gaussian:
        loops.gaussian(target_copy, source_t, number(-inv_s2), charges, backward_reads, chunks)
    elif scalar is not None:  # the kernel's own profile, compiled into the loops
        scalar.forward(target_copy, source_t, number(inv_s2), charges, backward_reads, chunks)
    else:
        need_fp = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]

        def distances(s: int, e: int) -> Tensor:
            u = x.new_empty(e - s, N)
            loops.distances(target_copy[s:e], source_t, number(inv_s2), u.numpy(), chunks)
            return u

        k, derivative = _profile_in_blocks(kernel, False, need_fp, M, N, distances)
        backward_reads = None if derivative is None else derivative.numpy()
    y0 = torch.mm(x, k.T)  # folded: y = x Wᵀ, nn.Linear's forward
    keep_y0 = charge is not None and ctx.needs_input_grad[3] and not folded
    y = y0 if q is None or folded else y0 * q
    ctx.save_for_backward(x, q, k, y0 if keep_y0 else None)
    ctx.charges = None if charge is None else (charge.dtype, charge.shape)
    ctx.dtypes = (target_pos.dtype, source_pos.dtype)
    c = number((-2.0 if gaussian else 2.0) * inv_s2)
    ctx.fused_state = (target_copy, source_t, number(inv_s2), c, backward_reads, charges, D)
    ctx.scalar_loops = scalar
    return y


#: NumPy's dtype of each torch dtype the fused loops take.
_NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}

#: "No charges" (``[0]``) for the loops, per dtype.
_NO_CHARGES = {dtype: np.empty(0, dtype=np_dtype) for dtype, np_dtype in _NUMPY_DTYPE.items()}


def _scalar_profile_loops(kernel: RadialKernel, dtype: np.dtype) -> Any:
    """The fused loops of a kernel that gives ``scalar_profile`` (None: it does not),
    compiled once a process; a profile Numba cannot compile is one error naming the kernel."""
    cls = type(kernel)
    if cls.scalar_profile is None or cls.scalar_profile_derivative is None:
        return None
    key = (cls.scalar_profile, cls.scalar_profile_derivative, dtype)
    if key in _COMPILED_PROFILES:
        return _COMPILED_PROFILES[key]
    try:
        single = dtype == np.float32
        loops = numba_cpu.loops().profile_loops(
            cls.scalar_profile, cls.scalar_profile_derivative, single
        )
        one = dtype.type(1.0)  # both compile now, for this dtype
        rows, columns_t = np.zeros((1, 3), dtype=dtype), np.zeros((3, 1), dtype=dtype)
        kernel_array, charges = np.ones((1, 1), dtype=dtype), np.ones(1, dtype=dtype)
        loops.forward(rows, columns_t, one, charges[:0], kernel_array)
        loops.backward(rows, columns_t, kernel_array, kernel_array, one, one, charges, 3)
    except Exception as exc:
        # Numba's message: the pipeline's step, then the cause, wrapped in terminal colours
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
        causes = [line for line in lines if line and not line.startswith("Failed in ")]
        first = causes[0] if causes else type(exc).__name__
        raise KernelError(
            f"kernel {describe_kernel(kernel)}: Numba could not compile scalar_profile or "
            f"scalar_profile_derivative ({first}); write them with + − × ÷, comparisons and "
            "particlesim.kernels.scalar_math's functions, or leave both out"
        ) from None
    _COMPILED_PROFILES[key] = loops
    return loops


#: :func:`_scalar_profile_loops`' loops, compiled and tried, per profile and dtype.
_COMPILED_PROFILES: dict[tuple[Any, Any, np.dtype], Any] = {}


def _fused_backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
    """The backward of :func:`_fused_forward`: the products ``nn.Linear`` does, then both
    position gradients from one fused read of the weight gradient ``G = gyᵀ x`` and ``f'``.

    Where the forward folded the charges into ``W = q ⊙ k`` (the Gaussian, and a kernel
    with a scalar profile), ``G`` is the gradient of ``W`` itself: the position gradients
    read ``G ⊙ q·f'`` (the Gaussian's ``q·f' = −W``; a scalar profile's ``f'`` made from
    ``u`` and ``W/q`` as the loop goes), and ``∂L/∂q_h = Σ_j G_hj k_hj`` is the same loop's
    row sum."""
    x, q, k, y0 = ctx.saved_tensors
    need_x, need_rh, need_rj, need_q = ctx.needs_input_grad[:4]
    target, source_t, scale, c, reads, charges, D = ctx.fused_state
    folded = charges.shape[0] > 0
    grad_q = _charge_grad(ctx, grad_y, y0) if need_q and not folded else None
    gy = grad_y if q is None or folded else grad_y * _as(q, grad_y.dtype)
    grad_x = torch.mm(gy, k) if need_x else None
    grad_rh = grad_rj = None
    if need_rh or need_rj or (need_q and folded):
        G = torch.mm(gy.T, x)
        chunks = numba_cpu.threads(G.numel())
        if ctx.scalar_loops is not None:  # f' from u and k as the loop goes
            grad_rh, grad_rj, grad_charges = ctx.scalar_loops.backward(
                target, source_t, reads, G.numpy(), scale, c, charges, D, chunks
            )
        else:
            grad_rh, grad_rj, grad_charges = numba_cpu.loops().backward(
                target,
                source_t,
                reads,
                G.numpy(),
                c,
                charges if need_q else charges[:0],
                D,
                chunks,
            )
        if need_q and folded:
            dtype, shape = ctx.charges
            grad_q = _as(torch.from_numpy(grad_charges), dtype)
            grad_q = grad_q if grad_q.shape == shape else grad_q.reshape(shape)
        grad_rh = _as(torch.from_numpy(grad_rh), ctx.dtypes[0]) if need_rh else None
        grad_rj = _as(torch.from_numpy(grad_rj), ctx.dtypes[1]) if need_rj else None
    return grad_x, grad_rh, grad_rj, grad_q, None, None, None


def _charge_grad(ctx: Any, grad_y: Tensor, y0: Tensor) -> Tensor:
    """``∂L/∂q = Σ_b gy ⊙ (x kᵀ)`` in the charges' dtype and shape."""
    dtype, shape = ctx.charges
    grad_q = _as((grad_y * y0).sum(0), dtype)
    return grad_q if grad_q.shape == shape else grad_q.reshape(shape)


def _row_major(op: Any, *args: Tensor, **kwargs: float) -> Tensor:
    """``op(*args, **kwargs).T`` of ``[D, P]`` factors written into a row-major ``[P, D]``:
    the layout of a position parameter, which autograd then keeps as its gradient as is,
    instead of copying it into that layout (two more operations each step)."""
    D, P = args[0].shape
    out = args[0].new_empty(P, D)
    op(*args, **kwargs, out=out.T)
    return out


def _profile_in_blocks(
    kernel: RadialKernel,
    gaussian: bool,
    need_fp: bool,
    rows: int,
    width: int,
    u_of: Any,
) -> tuple[Tensor, Tensor | None]:
    """``(f(u), f'(u) or None)`` of a ``[rows, width]`` kernel whose ``u`` of rows ``s:e``
    is ``u_of(s, e)``: made whole up to :data:`CACHE_BLOCK_ELEMENTS` entries, above in row
    blocks that stay in the core's cache, each written once into the kept kernel and
    derivative (:func:`_lean_block` on each)."""
    step = max(1, CACHE_BLOCK_ELEMENTS // width)
    if rows <= step:  # one block: kept as made
        return _lean_block(kernel, gaussian, need_fp, u_of(0, rows))
    k = fp = None
    for s in range(0, rows, step):
        e = min(rows, s + step)
        k_block, fp_block = _lean_block(kernel, gaussian, need_fp, u_of(s, e))
        if k is None:
            k = k_block.new_empty(rows, width)
            fp = None if fp_block is None else fp_block.new_empty(rows, width)
        k[s:e] = k_block
        if fp is not None:
            fp[s:e] = fp_block
    return k, fp


def _lean_block(
    kernel: RadialKernel, gaussian: bool, need_fp: bool, u_t: Tensor
) -> tuple[Tensor, Tensor | None]:
    """``(f(u), f'(u) or None)`` of one block of :class:`_LeanRadialMatmul` from its thin
    product ``u_t`` (``−u`` for the Gaussian, whose derivative is the kernel itself)."""
    if gaussian:
        return _gaussian_(u_t), None
    u_t = u_t.clamp_min_(0.0)
    k = kernel.profile(u_t)
    if not need_fp:
        return k, None
    version = k._version
    fp = kernel.profile_derivative_from_value(u_t, k)
    if k._version != version:  # the kernel the layer multiplies by would be wrong
        raise KernelError(
            f"kernel {describe_kernel(kernel)}: profile_derivative_from_value(u, value) "
            "changed value in place; it must return a new tensor"
        )
    return k, fp


def _lean_fits(kernel: RadialKernel, M: int, N: int, modulation: Tensor | None) -> bool:
    """Whether :class:`_LeanRadialMatmul` computes this call (see its docstring)."""
    return (
        modulation is None
        and kernel.channels == 1
        and kernel.cutoff is None
        and not kernel.log_width.requires_grad
        and M * N <= SAVED_MAX_ELEMENTS
        and not _steep_at_zero(kernel)
    )


def kernel_matmul_matmul(
    x: Tensor,
    kernel: RadialKernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    where: str = "",
) -> Tensor:
    """``y = x @ W.T`` of a radial kernel interaction, the kernel written as matrix products.

    Same arguments and result as :func:`~particlesim.kernels.ops.kernel_matmul_reference`
    (to float rounding); see the module docstring for how and for the memory it takes.
    Positions that are not finite are a :class:`~particlesim.kernels.base.KernelError`
    naming ``where`` (the interaction) and the kernel. Not twice differentiable.
    """
    check_inputs(kernel, target_pos, source_pos, charge, modulation, x)
    if target_pos.shape[0] * source_pos.shape[0] == 0:  # an empty group: W has no entry
        return torch.mm(x, x.new_zeros(source_pos.shape[0], target_pos.shape[0]))
    if _lean_fits(kernel, target_pos.shape[0], source_pos.shape[0], modulation):
        inv_s2 = math.exp(-2.0 * kernel.log_width.tolist()[0])  # (read, no operation)
        return _LeanRadialMatmul.apply(x, target_pos, source_pos, charge, kernel, inv_s2, where)
    return _RadialMatmul.apply(
        x, target_pos, source_pos, charge, modulation, kernel, kernel.log_width, where
    )
