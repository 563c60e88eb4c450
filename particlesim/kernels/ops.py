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

A third path, ``fused`` (:mod:`particlesim.kernels.fused`), runs Triton kernels that build
each tile of ``W`` in registers inside the matmul (CUDA).

With a kernel cutoff (``kernel.cutoff``), the chunked and fused paths sort both particle sets
spatially and visit only the (target block, source block) pairs whose bounding boxes lie
within the cutoff (:mod:`particlesim.kernels.neighbours`); skipped pairs contribute exactly 0,
so every path computes the same truncated kernel.

:func:`kernel_matmul` picks a path per call (``backend="auto"``, see :func:`select_backend`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from particlesim.kernels.base import (
    Kernel,
    KernelError,
    RadialKernel,
    check_inputs,
    describe_kernel,
    squared_distance,
)
from particlesim.kernels.neighbours import (
    NeighbourCache,
    NeighbourList,
    neighbour_list_for,
    to_neighbour_order,
)

__all__ = [
    "AUTO_REFERENCE_MAX_ELEMENTS",
    "BACKENDS",
    "BLOCK_ELEMENTS",
    "CHUNKED_CUTOFF_TILES",
    "Backend",
    "default_chunk_size",
    "effective_weight",
    "kernel_matmul",
    "kernel_matmul_chunked",
    "kernel_matmul_reference",
    "select_backend",
]

#: Target size, in elements, of one block ``[C, chunk, N]`` of the kernel in the chunked path
#: (2^20 elements = 4 MiB in float32): large enough that each block is a decent matmul, small
#: enough that the few transients of a block stay far below an ``[M, N]`` matrix.
BLOCK_ELEMENTS: int = 2**20

#: ``backend="auto"`` off CUDA materialises ``W`` (reference path) when ``M·N`` is at most this
#: many elements (2^22 = 16 MiB in float32), where memory is no concern and one big matmul is
#: fastest, and uses the chunked path above it, where the O(M·N) weight matrix must be avoided.
AUTO_REFERENCE_MAX_ELEMENTS: int = 2**22

#: ``(target rows, source columns)`` per block of the chunked path with a cutoff: the tiles of
#: its neighbour list (small enough that a tile's bounding box is tight, large enough that a
#: block is still a worthwhile matmul).
CHUNKED_CUTOFF_TILES: tuple[int, int] = (64, 64)

Backend = Literal["auto", "reference", "chunked", "matmul", "fused"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "chunked", "matmul", "fused")

#: One block of the chunked path: target rows ``[start, stop)`` and the source particles it
#: meets: None (all of them), a ``slice`` (a contiguous run) or an index tensor. Blocks of a
#: neighbour list may share target rows (one per run of source tiles); their results add up.
Block = tuple[int, int, Tensor | slice | None]

# A radial block's squared distances are summed one coordinate at a time (no [m, N, D]
# transient) up to this many dimensions; above it the vectorised base helper is used.
_LOOP_MAX_DIMS = 8


# --------------------------------------------------------------------------- helpers


def default_chunk_size(num_source: int, channels: int = 1) -> int:
    """Rows per block so one kernel block ``[C, rows, N]`` has about :data:`BLOCK_ELEMENTS`.

    Always at least 1 row (a single row of a huge layer is still linear memory).
    """
    return max(1, BLOCK_ELEMENTS // max(1, num_source * max(1, channels)))


def _as_channels(k: object, kernel: Kernel, target: Tensor, source: Tensor) -> Tensor:
    """Kernel output ``[m, n]`` or ``[C, m, n]`` for ``m`` targets, ``n`` sources → ``[C, m, n]``.

    Anything else (a shape that would only broadcast, a reduced or transposed result, not a
    tensor) is a :class:`~particlesim.kernels.base.KernelError` naming the kernel's class and
    file, since it can only come from a kernel's own ``forward``.
    """
    m, n, channels = target.shape[0], source.shape[0], kernel.channels
    if isinstance(k, Tensor) and tuple(k.shape) in ((m, n), (channels, m, n)):
        return k.unsqueeze(0) if k.ndim == 2 else k
    want = f"[{m}, {n}]" if channels == 1 else f"[{channels}, {m}, {n}]"
    got = f"shape {list(k.shape)}" if isinstance(k, Tensor) else type(k).__name__
    raise KernelError(
        f"kernel {describe_kernel(kernel)} returned {got} for {m} target and {n} source "
        f"particles; expected {want} (forward(target [M, D], source [N, D]) -> "
        f"{'[M, N]' if channels == 1 else '[C, M, N]'})"
    )


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


def _radial_u(r_h: Tensor, r_j: Tensor, inv_s2: Tensor, ws: _Workspace) -> tuple[Tensor, Tensor]:
    """``(r², u_c = r²/σ_c²)`` for one block → ``[m, N]``, ``[C, m, N]`` (workspace buffers).

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
    return r2, u


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


def _switch_into(r2: Tensor, kernel: RadialKernel, ws: _Workspace) -> tuple[Tensor, Tensor]:
    """The cutoff's XPLOR switch for one block in workspace buffers: ``(Sw, r²_clamped − r_c²)``.

    Same function as :func:`~particlesim.kernels.base.xplor_switch`, arranged for in-place
    arithmetic (``Sw = (t − a)² (2t + a − 3b) / (a − b)³`` with ``t = clamp(r², b, a)``,
    ``a = r_c²``, ``b = r_on²``) so a block allocates nothing.
    """
    a, b = kernel.cutoff**2, kernel.switch_on**2
    scale = 1.0 / (a - b) ** 3
    t = torch.clamp(r2, min=b, max=a, out=ws.get("sw_t", *r2.shape))
    t_minus_a = torch.sub(t, a, out=ws.get("sw_ta", *r2.shape))
    sw = torch.mul(t, 2.0 * scale, out=ws.get("sw", *r2.shape))
    sw.add_((a - 3.0 * b) * scale).mul_(t_minus_a).mul_(t_minus_a)
    return sw, t_minus_a


def _switch_derivative_into(kernel: RadialKernel, t_minus_a: Tensor, ws: _Workspace) -> Tensor:
    """``dSw/d(r²) = 6 (t − a)(t − b) / (a − b)³`` from :func:`_switch_into`'s ``t − a``."""
    a, b = kernel.cutoff**2, kernel.switch_on**2
    t = ws.get("sw_t", *t_minus_a.shape)  # still holds clamp(r², b, a)
    out = torch.sub(t, b, out=ws.get("dsw", *t_minus_a.shape))
    return out.mul_(t_minus_a).mul_(6.0 / (a - b) ** 3)


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
        cls.profile_derivative is RadialKernel.profile_derivative  # no derivative given
        or cls.forward is not RadialKernel.forward
        or cls.scaled is not RadialKernel.scaled
        or cls.width is not RadialKernel.width
    ):
        return False
    # (a kernel without submodules: its own parameters, read without parameters()'s
    # generator, which costs a microsecond a call on the layer's every step)
    params = kernel.parameters() if kernel._modules else kernel._parameters.values()
    return all(p is None or p is kernel.log_width or not p.requires_grad for p in params)


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
    check_inputs(kernel, target_pos, source_pos, charge, modulation)
    k3 = _as_channels(kernel(target_pos, source_pos), kernel, target_pos, source_pos)
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
    check_inputs(kernel, target_pos, source_pos, charge, modulation, x)
    return x @ effective_weight(kernel, target_pos, source_pos, charge, modulation).T


# --------------------------------------------------------------------------- chunked path


def _block_inputs(
    s: int,
    e: int,
    cols: Tensor | slice | None,
    x: Tensor,
    source_pos: Tensor,
    modulation: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, source positions, modulation)`` restricted to one block's source particles."""
    mod_b = None if modulation is None else modulation[s:e]
    if cols is None:
        return x, source_pos, mod_b
    if isinstance(cols, slice):  # views, no copies
        return x[:, cols], source_pos[cols], None if mod_b is None else mod_b[:, cols]
    return (
        x.index_select(1, cols),
        source_pos.index_select(0, cols),
        None if mod_b is None else mod_b.index_select(1, cols),
    )


def _no_columns(cols: Tensor | slice | None) -> bool:
    """True for a block that meets no source particle."""
    if cols is None:
        return False
    if isinstance(cols, slice):
        return cols.stop <= cols.start
    return cols.numel() == 0


def _add_rows(
    total: Tensor, cols: Tensor | slice | None, block: Tensor, alpha: float = 1.0
) -> None:
    """``total[cols] += alpha · block`` along dimension 0 (``cols`` None: every row)."""
    if cols is None:
        total.add_(block, alpha=alpha)
    elif isinstance(cols, slice):
        total[cols].add_(block, alpha=alpha)
    else:
        total.index_add_(0, cols, block, alpha=alpha)


def _put_columns(rows: Tensor, cols: Tensor | slice | None, block: Tensor) -> None:
    """``rows[:, cols] = block``."""
    if cols is None:
        rows.copy_(block)
    elif isinstance(cols, slice):
        rows[:, cols].copy_(block)
    else:
        rows.index_copy_(1, cols, block)


def _dense_blocks(rows: int, chunk_size: int) -> list[Block]:
    """Blocks of ``chunk_size`` target rows, each meeting every source particle."""
    return [(s, min(s + chunk_size, rows), None) for s in range(0, rows, chunk_size)]


class _KernelMatmulChunked(torch.autograd.Function):
    """Autograd function of the chunked path; see :func:`kernel_matmul_chunked`.

    Inputs (in ``needs_input_grad`` order): ``x, target_pos, source_pos, charge, modulation,
    kernel, blocks, closed_form, *params`` where ``blocks`` lists the target-row blocks and
    the source indices each one meets (None: all), and ``params`` are the kernel's
    parameters, passed explicitly so autograd routes their gradients here.
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
        blocks: list[Block],
        closed_form: bool,
        *params: Tensor,
    ) -> Tensor:
        M, C = target_pos.shape[0], kernel.channels
        charge2 = _charge2(charge, C)
        sparse = _has_sparse(blocks)
        y = x.new_zeros(x.shape[0], M) if sparse else x.new_empty(x.shape[0], M)
        ws = _Workspace(x)
        inv_s2 = kernel.width.to(x.dtype).pow(-2) if closed_form else None
        for s, e, cols in blocks:
            if _no_columns(cols):
                continue  # no source particle within the cutoff: y stays 0
            x_b, r_j, mod_b = _block_inputs(s, e, cols, x, source_pos, modulation)
            q_b = None if charge2 is None else charge2[s:e]
            if closed_form:
                r2, u3 = _radial_u(target_pos[s:e], r_j, inv_s2, ws)
                k3 = kernel.profile(u3)
                if kernel.cutoff is not None:
                    k3.mul_(_switch_into(r2, kernel, ws)[0])
                _, w = _radial_weight(k3, q_b, mod_b, ws)
            else:
                r_h = target_pos[s:e]
                w = _combine(_as_channels(kernel(r_h, r_j), kernel, r_h, r_j), q_b, mod_b)
            # Algorithm 1: the W block is used for every instance, then dropped
            if sparse:
                y[:, s:e].addmm_(x_b, w.T)  # blocks of one target tile add up
            else:
                y[:, s:e] = x_b @ w.T
        ctx.save_for_backward(x, target_pos, source_pos, charge, modulation, *params)
        ctx.kernel = kernel
        ctx.blocks = blocks
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
            ctx.blocks,
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


def _has_sparse(blocks: list[Block]) -> bool:
    return any(cols is not None for _, _, cols in blocks)


def _new_grads(
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    channels: int,
    needs: tuple[bool, ...],
    sparse: bool,
) -> list[Tensor | None]:
    """Zeroed accumulators for ``x, target_pos, source_pos, charge [M, C], modulation``."""
    M = target_pos.shape[0]
    mod_new = torch.zeros_like if sparse else torch.empty_like  # skipped pairs: exactly 0
    return [
        torch.zeros_like(x) if needs[0] else None,
        torch.zeros_like(target_pos) if needs[1] else None,
        torch.zeros_like(source_pos) if needs[2] else None,
        x.new_zeros(M, channels) if needs[3] and charge is not None else None,
        mod_new(modulation) if needs[4] and modulation is not None else None,
    ]


def _addmm_columns(total: Tensor, cols: Tensor | slice | None, a: Tensor, b: Tensor) -> None:
    """``total[:, cols] += a @ b`` (``cols`` None: every column; in place where it can be)."""
    if cols is None:
        total.addmm_(a, b)
    elif isinstance(cols, slice):
        total[:, cols].addmm_(a, b)
    else:
        total.index_add_(1, cols, a @ b)


def _backward_radial(
    kernel: RadialKernel,
    blocks: list[Block],
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

    With ``dW = grad_yᵀ x`` (eq. 8 for the effective weight), ``S = dW ⊙ modulation``,
    ``u_c = r²/σ_c²`` and the cutoff's switch ``Sw(r²)`` (1 without a cutoff):

    * ``∂L/∂x = grad_y @ W`` (eq. 17 before the activation's derivative),
    * ``∂L/∂charge[h, c] = Σ_j S[h, j] Sw k_c(h, j)`` (eqs. 12, 18),
    * ``G = Σ_c S ⊙ Sw ⊙ charge_c ⊙ f'(u_c)/σ_c² + S ⊙ (Σ_c charge_c k_c) ⊙ Sw'``, then
      ``∂L/∂r_h = 2 Σ_j G[h, j](r_h − r_j)`` (eqs. 14, 15, 21) and
      ``∂L/∂r_j = −2 Σ_h G[h, j](r_h − r_j)`` (Newton's third law, eqs. 16, 22, 23, 25),
      both as matmuls, never an ``[m, N, D]`` tensor,
    * ``∂L/∂log σ_c = Σ S ⊙ Sw ⊙ charge_c ⊙ f'(u_c) · (−2 u_c)``,
    * ``∂L/∂modulation = dW ⊙ Sw ⊙ Σ_c charge_c k_c``.
    """
    C = kernel.channels
    cut = kernel.cutoff is not None
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
        _has_sparse(blocks),
    )
    grad_logw = x.new_zeros(C) if need_w else None
    inv_s2 = kernel.width.detach().to(x.dtype).pow(-2)
    charge2 = _charge2(charge, C)
    ws = _Workspace(x)

    for s, e, cols in blocks:
        if _no_columns(cols):
            continue
        x_b, r_j, mod_b = _block_inputs(s, e, cols, x, source_pos, modulation)
        m, n = e - s, r_j.shape[0]
        gy = grad_y[:, s:e]
        r_h = target_pos[s:e]
        q_b = None if charge2 is None else charge2[s:e]
        r2, u3 = _radial_u(r_h, r_j, inv_s2, ws)
        k3 = kernel.profile(u3)  # k_c without the switch, [C, m, n]
        sw, t_minus_a = _switch_into(r2, kernel, ws) if cut else (None, None)
        wk, w = _radial_weight(k3, q_b, mod_b, ws)  # w = modulation ⊙ wk, still unswitched
        if cut:
            w = torch.mul(w, sw, out=ws.get("w_sw", m, n))
        if need_x:
            _addmm_columns(grad_x, cols, gy, w)
        if not need_dw:
            continue
        dW = torch.mm(gy.T, x_b, out=ws.get("dW", m, n))  # [m, n]
        if need_mod:
            g_mod = torch.mul(dW, wk, out=grad_mod[s:e] if cols is None else ws.get("gm", m, n))
            if sw is not None:
                g_mod.mul_(sw)
            if cols is not None:
                _put_columns(grad_mod[s:e], cols, g_mod)
        S = dW if mod_b is None else dW.mul_(mod_b)  # dL/dW_kernel-part
        # the cutoff's own term of G: S ⊙ wk ⊙ Sw' (wk is read now, before buffers are reused)
        G_cut = None
        if cut and need_pos:
            G_cut = torch.mul(S, wk, out=ws.get("G_cut", m, n))
            G_cut.mul_(_switch_derivative_into(kernel, t_minus_a, ws))
        S_sw = S if sw is None else torch.mul(S, sw, out=ws.get("S_sw", m, n))
        if need_q:
            grad_q2[s:e] += torch.einsum("cmn,mn->mc", k3, S_sw)
        if not need_fp:
            continue
        del k3, wk, w
        # H_c = S ⊙ Sw ⊙ charge_c ⊙ f'(u_c), [C, m, n]
        H = torch.mul(kernel.profile_derivative(u3), S_sw, out=ws.get("H", C, m, n))
        if q_b is not None:
            H.mul_(q_b.T.unsqueeze(-1))
        if need_w:  # Σ_mn H_c u_c as a batched dot: no [C, m, n] product
            dots = torch.bmm(H.view(C, 1, m * n), u3.reshape(C, m * n, 1)).view(C)
            grad_logw.add_(dots, alpha=-2.0)
        if need_pos:
            # G = Σ_c H_c / σ_c² (+ the cutoff's term)
            if C == 1:
                G = H[0].mul_(inv_s2[0])
            else:
                G = torch.mul(H[0], inv_s2[0], out=ws.get("G", m, n))
                for c in range(1, C):
                    G.addcmul_(H[c], inv_s2[c])
            if G_cut is not None:
                G.add_(G_cut)
            # Σ_j G (r_h − r_j) = r_h ΣG − G r_j cancels when |r| ≫ |r_h − r_j|: measure
            # positions from the block's centre, which leaves every difference unchanged
            centre = r_h.mean(0)
            rh_c, rj_c = r_h - centre, r_j - centre
            if need_rh:
                grad_rh[s:e].add_(G.sum(1, keepdim=True) * rh_c - G @ rj_c, alpha=2.0)
            if need_rj:
                _add_rows(grad_rj, cols, G.sum(0).unsqueeze(1) * rj_c - G.T @ rh_c, alpha=2.0)

    grad_q = None if grad_q2 is None else grad_q2.reshape(charge.shape)
    grad_params: list[Tensor | None] = [None] * len(params)
    if need_w:
        grad_params[i_w] = grad_logw.to(params[i_w].dtype)
    return [grad_x, grad_rh, grad_rj, grad_q, grad_mod, *grad_params]


def _backward_autograd(
    kernel: Kernel,
    blocks: list[Block],
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
    C = kernel.channels
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
        _has_sparse(blocks),
    )
    grad_params: list[Tensor | None] = [
        torch.zeros_like(p) if n else None for p, n in zip(params, need_params, strict=True)
    ]
    charge2 = _charge2(charge, C)

    for s, e, cols in blocks:
        if _no_columns(cols):
            continue
        x_b, r_j, mod_b = _block_inputs(s, e, cols, x, source_pos.detach(), modulation)
        r_j = r_j.detach().requires_grad_(need_rj)  # a fresh leaf per block
        gy = grad_y[:, s:e]
        q_b = None if charge2 is None else charge2[s:e].detach()
        r_h = target_pos[s:e].detach().requires_grad_(need_rh)
        with torch.enable_grad():
            k3 = _as_channels(kernel(r_h, r_j), kernel, r_h, r_j)
        k3d = k3.detach()
        wk = _combine(k3d, q_b, None)
        if need_x:
            _addmm_columns(grad_x, cols, gy, wk if mod_b is None else wk * mod_b)
        if not need_dw:
            continue
        dW = gy.T @ x_b  # [m, n], transient
        if need_mod:
            _put_columns(grad_mod[s:e], cols, dW * wk)
        S = dW if mod_b is None else dW * mod_b
        del dW
        if need_q:
            grad_q2[s:e] += torch.einsum("cmn,mn->mc", k3d, S)
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
                grad_rh[s:e].add_(g)
            elif where == "rj":
                _add_rows(grad_rj, cols, g)
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
    neighbours: NeighbourCache | NeighbourList | None = None,
) -> Tensor:
    """``y = x @ W.T`` (eq. 9) without ever holding ``W``: memory linear in N + M.

    Lange's Algorithms 1–2 vectorised over blocks of ``chunk_size`` target rows: each block
    ``W[block] [m, N]`` is computed, applied to every instance and discarded; backward
    recomputes it. Only ``x``, the positions, charges, modulation and kernel parameters are
    saved. Radial kernels get closed-form gradients (eqs. 12, 14–16, 18, 20–23, 25, see
    ``_backward_radial``); any other :class:`Kernel` gets autograd on one block at a time.
    Peak extra memory is O(B·(N + M) + C·chunk·N). Not twice differentiable.

    With a kernel cutoff both particle sets are visited in spatial (k-d) order in blocks of
    :data:`CHUNKED_CUTOFF_TILES` particles (``chunk_size`` target rows when given), and each
    target block meets only the source blocks listed as within the cutoff by the neighbour
    list; the results are exactly those of the truncated kernel.

    Args:
        x: ``[B, N]`` source activations.
        kernel, target_pos, source_pos, charge, modulation: as in :func:`effective_weight`.
        chunk_size: target rows per block; default :func:`default_chunk_size` (a block of
            about 2^20 kernel elements), or 64 with a cutoff.
        neighbours: with a cutoff, a :class:`~particlesim.kernels.neighbours.NeighbourCache`
            that keeps the list between calls (None: build one for this call).

    Returns:
        ``[B, M]``, equal to :func:`kernel_matmul_reference` to rounding.
    """
    check_inputs(kernel, target_pos, source_pos, charge, modulation, x)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    params = tuple(kernel.parameters())
    closed_form = _uses_closed_form(kernel)
    cutoff = getattr(kernel, "cutoff", None)
    if cutoff is None:
        chunk = chunk_size or default_chunk_size(source_pos.shape[0], kernel.channels)
        blocks = _dense_blocks(target_pos.shape[0], int(chunk))
        return _KernelMatmulChunked.apply(
            x, target_pos, source_pos, charge, modulation, kernel, blocks, closed_form, *params
        )
    tiles = (int(chunk_size or CHUNKED_CUTOFF_TILES[0]), CHUNKED_CUTOFF_TILES[1])
    nl = neighbour_list_for(neighbours, target_pos, source_pos, cutoff, tiles)
    sorted_inputs = to_neighbour_order(nl, x, target_pos, source_pos, charge, modulation)
    y = _KernelMatmulChunked.apply(*sorted_inputs, kernel, nl.row_blocks(), closed_form, *params)
    return y.index_select(1, nl.target_rank)


# --------------------------------------------------------------------------- dispatcher


def select_backend(
    kernel: Kernel,
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    backend: str = "auto",
    where: str = "",
) -> str:
    """The path :func:`kernel_matmul` takes: ``reference``, ``chunked``, ``matmul`` or ``fused``.

    * ``"auto"``: ``fused`` when the tensors are on CUDA and a fused version exists for the
      kernel, dimension and dtype (see :func:`particlesim.kernels.fused.fused_unsupported`);
      otherwise, off CUDA, ``matmul`` (:mod:`particlesim.kernels.matmul`) for a radial kernel
      with the closed form (any profile, channels, modulation; with a cutoff only up to
      ``M·N ≤`` :data:`AUTO_REFERENCE_MAX_ELEMENTS`, above which the chunked path's neighbour
      list skips the pairs beyond it); for any other kernel ``reference`` for tiny layers
      (``M·N ≤`` :data:`AUTO_REFERENCE_MAX_ELEMENTS`) and ``chunked`` above.
    * ``"reference"`` / ``"chunked"``: that path; ``"matmul"``: that path for a radial kernel
      with the closed form, else (one warning) the ``auto`` rule's choice.
    * ``"fused"``: that path where it can run; where it cannot, one ``UserWarning`` naming
      ``where`` (the interaction), the kernel and the reason, and the ``auto`` rule's
      off-CUDA choice instead.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}"
        )
    if backend in ("reference", "chunked"):
        return backend
    small = target_pos.shape[0] * source_pos.shape[0] <= AUTO_REFERENCE_MAX_ELEMENTS
    matmul_fits = _uses_closed_form(kernel) and (getattr(kernel, "cutoff", None) is None or small)
    if matmul_fits and (backend == "matmul" or (backend == "auto" and not x.is_cuda)):
        return "matmul"  # (auto off CUDA never takes the fused path: no need to ask it)
    from particlesim.kernels.fused import fused_unsupported  # never imports Triton itself

    tensors = [t for t in (x, target_pos, source_pos, charge, modulation) if t is not None]
    reason = fused_unsupported(kernel, *tensors)
    if backend != "matmul" and reason is None and (backend == "fused" or x.is_cuda):
        return "fused"
    # on CUDA the choice stays as it was before the matmul path (no GPU measurement of it)
    fallback = (
        "matmul"
        if matmul_fits and (backend == "matmul" or not x.is_cuda)
        else "reference"
        if small
        else "chunked"
    )
    if backend in ("matmul", "fused"):
        who = f"{where}: " if where else ""
        name = getattr(kernel, "name", "") or type(kernel).__name__
        why = (
            "the matmul backend needs a radial kernel with a closed-form profile derivative; "
            f"kernel {name!r} is not one"
            if backend == "matmul"
            else f"the fused backend cannot run kernel {name!r} here ({reason})"
        )
        warnings.warn(
            f"{who}{why}; using the {fallback} backend instead", UserWarning, stacklevel=3
        )
    return fallback


def kernel_matmul(
    x: Tensor,
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None = None,
    modulation: Tensor | None = None,
    *,
    backend: Backend = "auto",
    chunk_size: int | None = None,
    neighbours: NeighbourCache | NeighbourList | None = None,
    where: str = "",
) -> Tensor:
    """``y = x @ W.T`` of a kernel interaction (eq. 9) by the chosen execution path.

    ``backend`` is chosen by :func:`select_backend`: ``"auto"`` takes the fused Triton
    kernels on CUDA (where they cover the kernel, dimension and dtype), else the reference
    path for tiny layers and the chunked path above :data:`AUTO_REFERENCE_MAX_ELEMENTS`;
    ``"reference"``, ``"chunked"`` and ``"fused"`` force a path (``fused`` falls back with a
    warning where it cannot run). ``chunk_size`` only affects the chunked path.

    Args:
        x: ``[B, N]``; the other arguments as in :func:`effective_weight`.
        neighbours: a :class:`~particlesim.kernels.neighbours.NeighbourCache` kept between
            calls (by the interaction) for kernels with a cutoff.
        where: who is calling (an interaction's name), for the fallback warning.

    Returns:
        ``[B, M]``.
    """
    chosen = select_backend(
        kernel, x, target_pos, source_pos, charge, modulation, backend=backend, where=where
    )
    if chosen == "reference":
        return kernel_matmul_reference(x, kernel, target_pos, source_pos, charge, modulation)
    if chosen == "matmul":
        from particlesim.kernels.matmul import kernel_matmul_matmul

        return kernel_matmul_matmul(
            x, kernel, target_pos, source_pos, charge, modulation, where=where
        )
    if chosen == "chunked":
        return kernel_matmul_chunked(
            x,
            kernel,
            target_pos,
            source_pos,
            charge,
            modulation,
            chunk_size=chunk_size,
            neighbours=neighbours,
        )
    from particlesim.kernels.fused import kernel_matmul_fused  # Triton is imported lazily

    return kernel_matmul_fused(
        x, kernel, target_pos, source_pos, charge, modulation, neighbours=neighbours
    )
