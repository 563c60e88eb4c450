"""Execution paths of a kernel interaction: ``y = x @ W.T`` with ``W`` built from a kernel.

A source group (positions ``source_pos [N, D]``, activations ``x [B, N]``)
drives a target group (positions ``target_pos [M, D]``, charges ``charge [M]``
or ``[M, C]``). The effective weight from source ``j`` to target ``h`` is

    W[h, j] = Σ_c charge[h, c] · k_c(r_h, r_j)          (Lange 2015, eq. 9; C = 1:
                                                        ``charge[h] · k(r_h, r_j)``)

optionally multiplied elementwise by a free ``modulation [M, N]`` (Shader's
modulated interaction ``W_hj = w_hj · k(r_h, r_j)``; the target charge is then
usually absent, ``charge=None`` meaning 1 on every channel). The output is
``y = x @ W.T`` → ``[B, M]`` (eq. 9 summed over ``h'`` for every instance).

Two paths compute the same numbers:

* :func:`kernel_matmul_reference` materialises ``W [M, N]`` and lets autograd
  differentiate through it: simple and obviously right, but its memory is
  O(M·N), the cost of an ordinary dense layer.
* :func:`kernel_matmul_chunked` never holds ``W``: it walks the target
  particles in blocks of rows, builds one block of ``W``, uses it and drops it
  (Lange's Algorithms 1 and 2). Backward recomputes the blocks. For a
  :class:`~particlesim.kernels.base.RadialKernel` every gradient is in closed
  form (eqs. 12, 14–16, 18, 20–23, 25 generalised to any profile ``f(u)``, any
  width ``σ`` and ``C`` channels); other kernels get their position and
  parameter gradients from autograd on one block at a time. Peak extra memory
  is O(B·(N + M) + chunk·N): linear in N + M, the particle-network promise.

:func:`kernel_matmul` picks between them (see :data:`AUTO_REFERENCE_MAX_ELEMENTS`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from particlesim.kernels.base import Kernel, RadialKernel, squared_distance

__all__ = [
    "AUTO_REFERENCE_MAX_ELEMENTS",
    "BLOCK_ELEMENTS",
    "default_chunk_size",
    "effective_weight",
    "kernel_matmul",
    "kernel_matmul_chunked",
    "kernel_matmul_reference",
]

#: Target size, in elements, of one block ``[C, chunk, N]`` of the kernel in the chunked path
#: (2^20 elements = 4 MiB in float32): large enough that each block is a decent matmul, small
#: enough that the few transients of a block stay far below an ``[M, N]`` matrix.
BLOCK_ELEMENTS: int = 2**20

#: ``mode="auto"`` materialises ``W`` (reference path) when ``M·N`` is at most this many elements
#: (2^22 = 16 MiB in float32), where memory is no concern and one big matmul is fastest, and uses
#: the chunked path above it, where the O(M·N) weight matrix is what must be avoided.
AUTO_REFERENCE_MAX_ELEMENTS: int = 2**22

Mode = Literal["auto", "reference", "chunked", "fused"]

# A radial block's squared distances are summed one coordinate at a time (no [m, N, D]
# transient) up to this many dimensions; above it the vectorised base helper is used.
_LOOP_MAX_DIMS = 8


# --------------------------------------------------------------------------- helpers


def default_chunk_size(num_source: int, channels: int = 1) -> int:
    """Rows per block so one kernel block ``[C, rows, N]`` has about :data:`BLOCK_ELEMENTS`.

    Always at least 1 row (a single row of a huge layer is still linear memory).
    """
    return max(1, BLOCK_ELEMENTS // max(1, num_source * max(1, channels)))


def _validate(
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    x: Tensor | None = None,
) -> None:
    """Check shapes and dtypes up front so a mistake names the argument, not an inner matmul."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a particlesim Kernel, got {type(kernel).__name__}")
    if target_pos.ndim != 2 or source_pos.ndim != 2:
        raise ValueError(
            "positions must be [M, D] and [N, D], got target_pos "
            f"{tuple(target_pos.shape)} and source_pos {tuple(source_pos.shape)}"
        )
    if target_pos.shape[1] != source_pos.shape[1]:
        raise ValueError(
            f"target_pos and source_pos must share the dimension D, got "
            f"{target_pos.shape[1]} and {source_pos.shape[1]}"
        )
    M, N, C = target_pos.shape[0], source_pos.shape[0], kernel.channels
    tensors = {"target_pos": target_pos, "source_pos": source_pos}
    if charge is not None:
        tensors["charge"] = charge
        ok = (charge.ndim == 1 and C == 1 and charge.shape[0] == M) or (
            charge.ndim == 2 and tuple(charge.shape) == (M, C)
        )
        if not ok:
            want = f"[{M}] or [{M}, 1]" if C == 1 else f"[{M}, {C}]"
            raise ValueError(
                f"charge must be {want} for {M} target particles and a {C}-channel kernel, "
                f"got {tuple(charge.shape)}"
            )
    if modulation is not None:
        tensors["modulation"] = modulation
        if tuple(modulation.shape) != (M, N):
            raise ValueError(
                f"modulation must be [M, N] = [{M}, {N}], got {tuple(modulation.shape)}"
            )
    if x is not None:
        tensors["x"] = x
        if x.ndim != 2 or x.shape[1] != N:
            raise ValueError(
                f"x must be [B, N] with N = {N} source particles, got {tuple(x.shape)}"
            )
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"all tensors must share one dtype, got {dtypes}")
    if not next(iter(dtypes.values())).is_floating_point:
        raise TypeError(f"tensors must be floating point, got {dtypes}")


def _as_channels(k: Tensor, channels: int) -> Tensor:
    """Kernel output ``[m, N]`` or ``[C, m, N]`` → always ``[C, m, N]``."""
    k3 = k.unsqueeze(0) if k.ndim == 2 else k
    if k3.ndim != 3 or k3.shape[0] != channels:
        raise ValueError(
            f"kernel returned shape {tuple(k.shape)}, expected [M, N] or [{channels}, M, N]"
        )
    return k3


def _combine(k3: Tensor, charge2: Tensor | None, modulation: Tensor | None) -> Tensor:
    """``W = modulation ⊙ Σ_c charge[:, c] · k_c`` for one block: ``[C, m, N]`` → ``[m, N]``."""
    if charge2 is None:
        w = k3[0] if k3.shape[0] == 1 else k3.sum(0)
    elif k3.shape[0] == 1:
        w = k3[0] * charge2[:, :1]
    else:
        w = torch.einsum("cmn,mc->mn", k3, charge2)
    return w if modulation is None else w * modulation


def _charge2(charge: Tensor | None, channels: int) -> Tensor | None:
    """Charges as ``[M, C]`` (a view), or None when absent."""
    return None if charge is None else charge.reshape(charge.shape[0], channels)


class _Workspace:
    """Block buffers reused from one block to the next within one forward or backward.

    On CPU a fresh multi-MiB tensor costs page faults on first touch (several times the
    cost of the arithmetic that fills it), so the radial path writes its ``[m, N]``
    intermediates into these buffers (``out=`` / in place) instead of allocating per block.
    Each buffer is sized for a full block and viewed for a ragged last one.
    """

    def __init__(self, like: Tensor) -> None:
        self._like = like
        self._flat: dict[str, Tensor] = {}

    def get(self, name: str, *shape: int) -> Tensor:
        numel = 1
        for n in shape:
            numel *= n
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel:
            flat = self._flat[name] = self._like.new_empty(numel)
        return flat[:numel].view(shape)


def _radial_u(r_h: Tensor, r_j: Tensor, inv_s2: Tensor, ws: _Workspace) -> Tensor:
    """``u_c = |r_h - r_j|² / σ_c²`` for one block → ``[C, m, N]`` (a workspace buffer).

    Same arithmetic as ``RadialKernel.scaled(squared_distance(...))``, but summed one
    coordinate at a time into reused buffers: no ``[m, N, D]`` tensor, no fresh ``[m, N]``.
    """
    m, N, D = r_h.shape[0], r_j.shape[0], r_h.shape[1]
    r2 = ws.get("r2", m, N)
    if D > _LOOP_MAX_DIMS:
        r2.copy_(squared_distance(r_h, r_j))
    else:
        diff = ws.get("diff", m, N)
        for d in range(D):
            torch.sub(r_h[:, d, None], r_j[None, :, d], out=diff)
            if d == 0:
                torch.mul(diff, diff, out=r2)
            else:
                r2.addcmul_(diff, diff)
    C = inv_s2.shape[0]
    u = ws.get("u", C, m, N)
    torch.mul(r2.unsqueeze(0), inv_s2.view(C, 1, 1), out=u)
    return u


def _radial_weight(
    k3: Tensor, charge2: Tensor | None, modulation: Tensor | None, ws: _Workspace
) -> tuple[Tensor, Tensor]:
    """``(Σ_c charge_c k_c, modulation ⊙ that)`` for one block, in workspace buffers."""
    C, m, N = k3.shape
    if charge2 is None and C == 1:
        wk = k3[0]
    else:
        wk = ws.get("wk", m, N)
        if charge2 is None:
            torch.sum(k3, 0, out=wk)
        else:
            torch.mul(k3[0], charge2[:, :1], out=wk)
            for c in range(1, C):
                wk.addcmul_(k3[c], charge2[:, c : c + 1])
    if modulation is None:
        return wk, wk
    return wk, torch.mul(wk, modulation, out=ws.get("w", m, N))


def _uses_closed_form(kernel: Kernel) -> bool:
    """True when the chunked backward may use the radial closed form for ``kernel``.

    That needs ``k = f(r²/σ²)`` exactly as :class:`RadialKernel` defines it (``forward``,
    ``scaled`` and ``width`` not overridden) and no trainable parameter other than ``log_width``;
    anything else (a cutoff in ``forward``, an amplitude parameter…) falls back to autograd.
    """
    if not isinstance(kernel, RadialKernel):
        return False
    cls = type(kernel)
    if (
        cls.forward is not RadialKernel.forward
        or cls.scaled is not RadialKernel.scaled
        or cls.width is not RadialKernel.width
    ):
        return False
    return all(p is kernel.log_width or not p.requires_grad for p in kernel.parameters())


# --------------------------------------------------------------------------- reference path


def effective_weight(
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
) -> Tensor:
    """Materialise the effective weight matrix ``W [M, N]`` of a kernel interaction.

    ``W[h, j] = modulation[h, j] · Σ_c charge[h, c] · k_c(r_h, r_j)`` (Lange eq. 9; with one
    channel ``charge[h] · k(r_h, r_j)``; an absent charge or modulation counts as 1). This is
    O(M·N) memory by design: it is for inspection, trajectories and the reference path.

    Args:
        kernel: the kernel (``C = kernel.channels`` widths).
        target_pos: ``[M, D]`` positions of the driven group.
        source_pos: ``[N, D]`` positions of the driving group.
        charge: ``[M]`` (``C = 1``), or ``[M, C]``; None means 1.
        modulation: optional free weights ``[M, N]`` (Shader's modulated interaction).

    Returns:
        ``[M, N]``, differentiable by autograd w.r.t. every input and kernel parameter.
    """
    _validate(kernel, target_pos, source_pos, charge, modulation)
    k3 = _as_channels(kernel(target_pos, source_pos), kernel.channels)
    return _combine(k3, _charge2(charge, kernel.channels), modulation)


def kernel_matmul_reference(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
) -> Tensor:
    """``y = x @ W.T`` through the materialised ``W`` (eq. 9), plain autograd.

    Memory O(M·N) (``W`` and the kernel's intermediates are kept for backward). The yardstick
    the chunked path is tested against.

    Args:
        x: ``[B, N]`` source activations (``b_{h'}`` of eq. 9, one row per instance).
        kernel, target_pos, source_pos, charge, modulation: as in :func:`effective_weight`.

    Returns:
        ``[B, M]`` target pre-activations ``a_h``.
    """
    _validate(kernel, target_pos, source_pos, charge, modulation, x)
    return x @ effective_weight(kernel, target_pos, source_pos, charge, modulation).T


# --------------------------------------------------------------------------- chunked path


class _KernelMatmulChunked(torch.autograd.Function):
    """Autograd function of the chunked path; see :func:`kernel_matmul_chunked`.

    Inputs (in ``needs_input_grad`` order): ``x, target_pos, source_pos, charge, modulation,
    kernel, chunk_size, closed_form, *params`` where ``params`` are the kernel's parameters,
    passed explicitly so autograd routes their gradients here.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target_pos: Tensor,
        source_pos: Tensor,
        charge: Tensor | None,
        modulation: Tensor | None,
        kernel: Kernel,
        chunk_size: int,
        closed_form: bool,
        *params: Tensor,
    ) -> Tensor:
        M, C = target_pos.shape[0], kernel.channels
        charge2 = _charge2(charge, C)
        y = x.new_empty(x.shape[0], M)
        ws = _Workspace(x)
        inv_s2 = kernel.width.to(x.dtype).pow(-2) if closed_form else None
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            q_b = None if charge2 is None else charge2[s:e]
            mod_b = None if modulation is None else modulation[s:e]
            if closed_form:
                k3 = kernel.profile(_radial_u(target_pos[s:e], source_pos, inv_s2, ws))
                _, w = _radial_weight(k3, q_b, mod_b, ws)
            else:
                w = _combine(_as_channels(kernel(target_pos[s:e], source_pos), C), q_b, mod_b)
            y[:, s:e] = x @ w.T  # Algorithm 1: W block used for every instance, then dropped
        ctx.save_for_backward(x, target_pos, source_pos, charge, modulation, *params)
        ctx.kernel = kernel
        ctx.chunk_size = chunk_size
        ctx.closed_form = closed_form
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, target_pos, source_pos, charge, modulation, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad
        run = _backward_radial if ctx.closed_form else _backward_autograd
        grads = run(
            ctx.kernel,
            ctx.chunk_size,
            grad_y,
            x,
            target_pos,
            source_pos,
            charge,
            modulation,
            params,
            needs[:5],
            needs[8:],
        )
        return (*grads[:5], None, None, None, *grads[5:])


def _new_grads(
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    channels: int,
    needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """Zeroed accumulators for ``x, target_pos, source_pos, charge [M, C], modulation``."""
    M = target_pos.shape[0]
    return [
        torch.zeros_like(x) if needs[0] else None,
        torch.zeros_like(target_pos) if needs[1] else None,
        torch.zeros_like(source_pos) if needs[2] else None,
        x.new_zeros(M, channels) if needs[3] and charge is not None else None,
        torch.empty_like(modulation) if needs[4] and modulation is not None else None,
    ]


def _backward_radial(
    kernel: RadialKernel,
    chunk_size: int,
    grad_y: Tensor,
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    params: list[Tensor],
    needs: tuple[bool, ...],
    param_needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """Closed-form backward of a radial kernel, one block of target rows at a time.

    With ``dW = grad_yᵀ x`` (eq. 8 for the effective weight), ``S = dW ⊙ modulation`` and
    ``u_c = r²/σ_c²``:

    * ``∂L/∂x = grad_y @ W`` (eq. 17 before the activation's derivative),
    * ``∂L/∂charge[h, c] = Σ_j S[h, j] k_c(h, j)`` (eqs. 12, 18),
    * ``G = Σ_c S ⊙ charge_c ⊙ f'(u_c)/σ_c²``, then
      ``∂L/∂r_h = 2 Σ_j G[h, j](r_h − r_j)`` (eqs. 14, 15, 21) and
      ``∂L/∂r_j = −2 Σ_h G[h, j](r_h − r_j)`` (Newton's third law, eqs. 16, 22, 23, 25),
      both as matmuls, never an ``[m, N, D]`` tensor,
    * ``∂L/∂log σ_c = Σ S ⊙ charge_c ⊙ f'(u_c) · (−2 u_c)``,
    * ``∂L/∂modulation = dW ⊙ Σ_c charge_c k_c``.
    """
    C, M = kernel.channels, target_pos.shape[0]
    need_x, need_rh, need_rj, need_q, need_mod = needs
    need_q = need_q and charge is not None
    need_mod = need_mod and modulation is not None
    i_w = next((i for i, p in enumerate(params) if p is kernel.log_width), None)
    need_w = i_w is not None and param_needs[i_w]
    need_pos = need_rh or need_rj
    need_fp = need_pos or need_w
    need_dw = need_fp or need_q or need_mod

    grad_x, grad_rh, grad_rj, grad_q2, grad_mod = _new_grads(
        x,
        target_pos,
        source_pos,
        charge,
        modulation,
        C,
        (need_x, need_rh, need_rj, need_q, need_mod),
    )
    grad_logw = x.new_zeros(C) if need_w else None
    inv_s2 = kernel.width.detach().to(x.dtype).pow(-2)
    charge2 = _charge2(charge, C)
    ws = _Workspace(x)

    for s in range(0, M, chunk_size):
        e = min(s + chunk_size, M)
        m, N = e - s, source_pos.shape[0]
        gy = grad_y[:, s:e]
        r_h = target_pos[s:e]
        q_b = None if charge2 is None else charge2[s:e]
        mod_b = None if modulation is None else modulation[s:e]
        u3 = _radial_u(r_h, source_pos, inv_s2, ws)
        k3 = kernel.profile(u3)  # k_c, [C, m, N]
        wk, w = _radial_weight(k3, q_b, mod_b, ws)
        if need_x:
            grad_x.addmm_(gy, w)
        if not need_dw:
            continue
        dW = torch.mm(gy.T, x, out=ws.get("dW", m, N))  # [m, N]
        if need_mod:
            torch.mul(dW, wk, out=grad_mod[s:e])
        S = dW if mod_b is None else dW.mul_(mod_b)  # dL/dW_kernel-part
        if need_q:
            grad_q2[s:e] = torch.einsum("cmn,mn->mc", k3, S)
        if not need_fp:
            continue
        del k3, wk, w
        # H_c = S ⊙ charge_c ⊙ f'(u_c), [C, m, N]
        H = torch.mul(kernel.profile_derivative(u3), S, out=ws.get("H", C, m, N))
        if q_b is not None:
            H.mul_(q_b.T.unsqueeze(-1))
        if need_w:  # Σ_mn H_c u_c as a batched dot: no [C, m, N] product
            dots = torch.bmm(H.view(C, 1, m * N), u3.reshape(C, m * N, 1)).view(C)
            grad_logw.add_(dots, alpha=-2.0)
        if need_pos:
            # G = Σ_c H_c / σ_c²
            if C == 1:
                G = H[0].mul_(inv_s2[0])
            else:
                G = torch.mul(H[0], inv_s2[0], out=ws.get("G", m, N))
                for c in range(1, C):
                    G.addcmul_(H[c], inv_s2[c])
            if need_rh:
                grad_rh[s:e] = 2.0 * (G.sum(1, keepdim=True) * r_h - G @ source_pos)
            if need_rj:
                grad_rj.add_(G.sum(0).unsqueeze(1) * source_pos - G.T @ r_h, alpha=2.0)

    grad_q = None if grad_q2 is None else grad_q2.reshape(charge.shape)
    grad_params: list[Tensor | None] = [None] * len(params)
    if need_w:
        grad_params[i_w] = grad_logw.to(params[i_w].dtype)
    return [grad_x, grad_rh, grad_rj, grad_q, grad_mod, *grad_params]


def _backward_autograd(
    kernel: Kernel,
    chunk_size: int,
    grad_y: Tensor,
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    params: list[Tensor],
    needs: tuple[bool, ...],
    param_needs: tuple[bool, ...],
) -> list[Tensor | None]:
    """Backward for kernels without a closed form: autograd on one recomputed block at a time.

    ``x``, charge and modulation gradients are the same closed forms as the radial path
    (they do not depend on the kernel); position and kernel-parameter gradients come from
    ``torch.autograd.grad(W_block, inputs, grad_outputs=dW_block)``.
    """
    C, M = kernel.channels, target_pos.shape[0]
    need_x, need_rh, need_rj, need_q, need_mod = needs
    need_q = need_q and charge is not None
    need_mod = need_mod and modulation is not None
    need_params = [bool(n) for n in param_needs]
    need_auto = need_rh or need_rj or any(need_params)
    need_dw = need_auto or need_q or need_mod

    grad_x, grad_rh, grad_rj, grad_q2, grad_mod = _new_grads(
        x,
        target_pos,
        source_pos,
        charge,
        modulation,
        C,
        (need_x, need_rh, need_rj, need_q, need_mod),
    )
    grad_params: list[Tensor | None] = [
        torch.zeros_like(p) if n else None for p, n in zip(params, need_params, strict=True)
    ]
    charge2 = _charge2(charge, C)
    r_j = source_pos.detach().requires_grad_(need_rj)

    for s in range(0, M, chunk_size):
        e = min(s + chunk_size, M)
        gy = grad_y[:, s:e]
        q_b = None if charge2 is None else charge2[s:e].detach()
        mod_b = None if modulation is None else modulation[s:e]
        r_h = target_pos[s:e].detach().requires_grad_(need_rh)
        with torch.enable_grad():
            k3 = _as_channels(kernel(r_h, r_j), C)
        k3d = k3.detach()
        wk = _combine(k3d, q_b, None)
        if need_x:
            grad_x.addmm_(gy, wk if mod_b is None else wk * mod_b)
        if not need_dw:
            continue
        dW = gy.T @ x  # [m, N], transient
        if need_mod:
            grad_mod[s:e] = dW * wk
        S = dW if mod_b is None else dW * mod_b
        del dW
        if need_q:
            grad_q2[s:e] = torch.einsum("cmn,mn->mc", k3d, S)
        if not need_auto or not k3.requires_grad:
            continue
        # dL/dk_c = S ⊙ charge_c; autograd maps it onto positions and kernel parameters.
        gk = S.unsqueeze(0) if q_b is None else S.unsqueeze(0) * q_b.T.unsqueeze(-1)
        if C > 1 and q_b is None:
            gk = gk.expand(C, -1, -1)
        wanted = [(t, acc_i) for t, acc_i in ((r_h, "rh"), (r_j, "rj")) if t.requires_grad]
        wanted += [(p, i) for i, (p, n) in enumerate(zip(params, need_params, strict=True)) if n]
        grads = torch.autograd.grad(
            k3, [t for t, _ in wanted], grad_outputs=gk.reshape(k3.shape), allow_unused=True
        )
        for (_, where), g in zip(wanted, grads, strict=True):
            if g is None:
                continue
            if where == "rh":
                grad_rh[s:e] = g
            elif where == "rj":
                grad_rj.add_(g)
            else:
                grad_params[where].add_(g)

    grad_q = None if grad_q2 is None else grad_q2.reshape(charge.shape)
    return [grad_x, grad_rh, grad_rj, grad_q, grad_mod, *grad_params]


def kernel_matmul_chunked(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """``y = x @ W.T`` (eq. 9) without ever holding ``W``: memory linear in N + M.

    Lange's Algorithms 1–2 vectorised over blocks of ``chunk_size`` target rows: each block
    ``W[block] [m, N]`` is computed, applied to every instance and discarded; backward
    recomputes it. Only ``x``, the positions, charges, modulation and kernel parameters are
    saved. Radial kernels get closed-form gradients (eqs. 12, 14–16, 18, 20–23, 25, see
    ``_backward_radial``); any other :class:`Kernel` gets autograd on one block at a time.
    Peak extra memory is O(B·(N + M) + C·chunk·N). Not twice differentiable.

    Args:
        x: ``[B, N]`` source activations.
        kernel, target_pos, source_pos, charge, modulation: as in :func:`effective_weight`.
        chunk_size: target rows per block; default :func:`default_chunk_size` (a block of
            about 2^20 kernel elements).

    Returns:
        ``[B, M]``, equal to :func:`kernel_matmul_reference` to rounding.
    """
    _validate(kernel, target_pos, source_pos, charge, modulation, x)
    if chunk_size is None:
        chunk_size = default_chunk_size(source_pos.shape[0], kernel.channels)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    params = tuple(kernel.parameters())
    return _KernelMatmulChunked.apply(
        x,
        target_pos,
        source_pos,
        charge,
        modulation,
        kernel,
        int(chunk_size),
        _uses_closed_form(kernel),
        *params,
    )


# --------------------------------------------------------------------------- dispatcher


def kernel_matmul(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    mode: Mode = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """``y = x @ W.T`` of a kernel interaction (eq. 9) by the chosen execution path.

    ``mode="auto"`` uses the reference path when ``M·N ≤`` :data:`AUTO_REFERENCE_MAX_ELEMENTS`
    (2^22: a weight matrix of at most 16 MiB in float32, where one big matmul is fastest) and
    the chunked path above it (where the O(M·N) matrix is what must be avoided). ``"reference"``
    and ``"chunked"`` force a path; ``chunk_size`` only affects the chunked path. ``"fused"``
    runs the Triton kernels of :mod:`particlesim.kernels.fused` (built-in radial kernels,
    float32, CUDA tensors or ``TRITON_INTERPRET=1``); ``"auto"`` never picks it.

    Args:
        x: ``[B, N]``; the other arguments as in :func:`effective_weight`.

    Returns:
        ``[B, M]``.
    """
    if mode == "auto":
        small = target_pos.shape[0] * source_pos.shape[0] <= AUTO_REFERENCE_MAX_ELEMENTS
        mode = "reference" if small else "chunked"
    if mode == "reference":
        return kernel_matmul_reference(x, kernel, target_pos, source_pos, charge, modulation)
    if mode == "chunked":
        return kernel_matmul_chunked(
            x, kernel, target_pos, source_pos, charge, modulation, chunk_size=chunk_size
        )
    if mode == "fused":  # Triton is imported lazily by the fused module
        from particlesim.kernels.fused import kernel_matmul_fused

        return kernel_matmul_fused(x, kernel, target_pos, source_pos, charge, modulation)
    raise ValueError(f"mode must be 'auto', 'reference', 'chunked' or 'fused', got {mode!r}")
