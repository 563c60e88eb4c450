"""Kernels: pairwise functions of two position sets, ``k(r_h, r_j) -> [M, N]``.

A :class:`RadialKernel` is a pure function of the scaled squared distance
``u = |r_h - r_j|² / σ²`` (its *profile* ``f(u)``) together with the closed
form of ``df/du``. Every execution path (materialised, chunked, fused) wraps
the same two functions, and the tests compare each path against them.

Widths: ``width`` may be one number or a sequence of ``C`` numbers. With ``C``
widths the kernel has ``C`` channels and returns ``[C, M, N]``; a group whose
charge is ``[M, C]`` then mixes the channels (``W = Σ_c q_c · k_c``), which lets
one particle's outgoing weights change sign with distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn


def squared_distance(target: Tensor, source: Tensor) -> Tensor:
    """``|r_h - r_j|²`` for ``target [M, D]`` and ``source [N, D]`` → ``[M, N]``.

    Computed from differences (not the ``a² + b² - 2ab`` expansion), so it is
    exact to rounding, never negative, and exactly 0 for coincident particles.
    """
    diff = target[:, None, :] - source[None, :, :]
    return (diff * diff).sum(-1)


class Kernel(nn.Module):
    """Base class of every kernel. Subclasses set ``name`` and implement :meth:`forward`.

    ``forward(target [M, D], source [N, D]) -> [M, N]`` (or ``[C, M, N]`` for
    ``C`` channels). Kernels that are not radial (dot-product, features) derive
    from this class directly; gradients then come from autograd.
    """

    name: ClassVar[str] = ""
    channels: int = 1

    def forward(self, target: Tensor, source: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class RadialKernel(Kernel):
    """``k(r_h, r_j) = f(|r_h - r_j|² / σ²)``; subclasses give ``profile`` and its derivative.

    Args:
        width: σ, one positive finite number or ``C`` of them (channels). Default 1.
        learnable_width: make σ a trained parameter (stored as ``log σ`` so it
            stays positive).
    """

    def __init__(self, width: float | Sequence[float] = 1.0, learnable_width: bool = False) -> None:
        super().__init__()
        try:
            widths = torch.as_tensor(width, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"kernel {self.name!r}: width must be numbers, got {width!r}") from exc
        if widths.ndim == 0:  # a plain, numpy or 0-d tensor scalar
            widths = widths.reshape(1)
        # ``not (w > 0)`` also rejects NaN; infinite widths would make every u = 0.
        if (
            widths.ndim != 1
            or widths.numel() == 0
            or not bool(((widths > 0) & torch.isfinite(widths)).all())
        ):
            raise ValueError(
                f"kernel {self.name!r}: width must be one positive finite number or a non-empty "
                f"flat sequence of them, got {width!r}"
            )
        log_width = widths.log().to(torch.get_default_dtype())
        if learnable_width:
            self.log_width = nn.Parameter(log_width)
        else:
            self.register_buffer("log_width", log_width)
        self.channels = int(widths.numel())

    @property
    def width(self) -> Tensor:
        """σ per channel, shape ``[C]``."""
        return self.log_width.exp()

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        """``f(u)`` for the scaled squared distance ``u = r²/σ² ≥ 0``."""
        raise NotImplementedError

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        """``df/du`` in closed form (used by the chunked and fused paths)."""
        raise NotImplementedError

    def scaled(self, r2: Tensor) -> Tensor:
        """``u = r² / σ²`` with a leading channel axis when ``C > 1``."""
        inv = self.width.to(r2.dtype).pow(-2)
        if self.channels == 1:
            return r2 * inv[0]
        return r2.unsqueeze(0) * inv.view(-1, *([1] * r2.ndim))

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        return self.profile(self.scaled(squared_distance(target, source)))

    def extra_repr(self) -> str:
        return f"width={[round(w, 6) for w in self.width.tolist()]}"


class GaussianKernel(RadialKernel):
    """Gaussian ``k = exp(-|r|²/σ²)``; at σ = 1 this is Lange (2015) eq. 10."""

    name = "gaussian"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return torch.exp(-u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -torch.exp(-u)


class CauchyKernel(RadialKernel):
    """Cauchy (falloff) ``k = 1/(1 + |r|²/σ²)``; Shader's positional falloff at σ = 1."""

    name = "cauchy"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return 1.0 / (1.0 + u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -1.0 / (1.0 + u) ** 2


class ExponentialKernel(RadialKernel):
    """Exponential ``k = exp(-|r|/λ)`` (``width`` is λ).

    ``|r|`` uses a masked square root, so coincident particles give a finite
    value and a zero (sub)gradient instead of NaN.
    """

    name = "exponential"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        positive = u > 0
        safe = torch.where(positive, u, torch.ones_like(u))
        return torch.where(positive, torch.exp(-torch.sqrt(safe)), torch.ones_like(u))

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        positive = u > 0
        safe = torch.where(positive, u, torch.ones_like(u))
        root = torch.sqrt(safe)
        return torch.where(positive, -torch.exp(-root) / (2.0 * root), torch.zeros_like(u))


BUILTIN_KERNELS: tuple[type[Kernel], ...] = (GaussianKernel, CauchyKernel, ExponentialKernel)
