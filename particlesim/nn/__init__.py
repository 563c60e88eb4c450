"""``torch.nn`` faces of particle interactions, usable in any PyTorch model.

``ParticleLinear`` is a drop-in for ``nn.Linear`` whose weight is implicit:
``W_hj = q_h · k(r_h, r_j)`` (Lange 2015, eq. 9), so its parameters are
``(in + out)·D + out`` numbers instead of ``in·out``. Consecutive layers share
positions (a layer's output particles are the next layer's input particles)
when built with :func:`particle_mlp` or by passing ``source_position``.

Example:
    >>> import torch
    >>> from particlesim.nn import ParticleLinear
    >>> layer = ParticleLinear(784, 128, dim=3)
    >>> layer(torch.rand(2, 784)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from particlesim.kernels.base import GaussianKernel, Kernel
from particlesim.kernels.neighbours import NeighbourCache
from particlesim.kernels.ops import effective_weight, kernel_matmul


class ParticleLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W_hj = q_h k(r_h, r_j)``; memory-linear on the chunked path.

    Takes ``x [*, N]`` like ``nn.Linear``. With a kernel of ``C`` widths the charges are
    ``[M, C]`` and ``W_hj = Σ_c q_hc k_c(r_h, r_j)``.

    Args:
        in_features: N, the number of source particles.
        out_features: M, the number of target particles.
        dim: D, the dimension of positions.
        kernel: a :class:`~particlesim.kernels.Kernel` (default Gaussian, σ = 1).
        bias: add a learnable bias per output.
        source_position: share an existing ``[N, D]`` parameter (e.g. the
            previous layer's ``position``) instead of creating one.
        spread: std of the initial positions ``~ N(0, spread²)``.
        backend: ``auto``, ``reference``, ``chunked``, ``matmul`` or ``fused`` (see
            ``kernel_matmul``).
        generator: seeds the initialisation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dim: int = 3,
        kernel: Kernel | None = None,
        bias: bool = True,
        source_position: nn.Parameter | None = None,
        spread: float = 1.0,
        backend: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dim = in_features, out_features, dim
        self.kernel = kernel if kernel is not None else GaussianKernel()
        if source_position is None:
            source_position = nn.Parameter(
                torch.randn(in_features, dim, generator=generator) * spread
            )
        if tuple(source_position.shape) != (in_features, dim):
            raise ValueError(
                f"source_position has shape {list(source_position.shape)}, "
                f"expected [{in_features}, {dim}]"
            )
        self.source_position = source_position
        self.position = nn.Parameter(torch.randn(out_features, dim, generator=generator) * spread)
        # One charge per kernel channel ([M] or [M, C]), scaled so every target's weight row
        # starts with unit norm (summed over channels).
        channels = self.kernel.channels
        shape = (out_features,) if channels == 1 else (out_features, channels)
        with torch.no_grad():
            k = self.kernel(self.position, self.source_position)
            norms = k.pow(2).sum(-1).reshape(channels, out_features).sum(0).sqrt()
            norms = norms.clamp_min(1e-12) * math.sqrt(channels)
        if channels > 1:
            norms = norms[:, None]
        charge = torch.randn(*shape, generator=generator) / norms
        self.charge = nn.Parameter(charge)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.backend = backend
        #: With a cutoff kernel: the neighbour list, rebuilt only past ``skin / 2`` of motion.
        self.neighbours = NeighbourCache()

    @property
    def weight(self) -> Tensor:
        """The effective ``[M, N]`` weight (materialised on demand)."""
        return effective_weight(
            self.kernel, self.position, self.source_position, charge=self.charge
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[*, in_features] -> [*, out_features]``, like ``nn.Linear``."""
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"ParticleLinear({self.in_features} -> {self.out_features}) expects input of "
                f"shape [*, {self.in_features}], got {list(x.shape)}"
            )
        flat = x.ndim == 2  # [B, N] as it is: no reshape either way (each op costs µs)
        y = kernel_matmul(
            x if flat else x.reshape(-1, self.in_features),
            self.kernel,
            self.position,
            self.source_position,
            charge=self.charge,
            backend=self.backend,
            neighbours=self.neighbours,
            where=f"ParticleLinear({self.in_features} -> {self.out_features})",
        )
        y = y if flat else y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dim={self.dim}, bias={self.bias is not None}, backend={self.backend!r}"
        )


def particle_mlp(
    sizes: Sequence[int],
    *,
    dim: int = 3,
    activation: type[nn.Module] = nn.Tanh,
    spread: float | None = None,
    generator: torch.Generator | None = None,
    **layer_options,
) -> nn.Sequential:
    """A stack of :class:`ParticleLinear` layers sharing positions between neighbours.

    ``spread`` defaults to ``sqrt((5^{3/D} - 1)/4)`` (constant mean kernel value across D).
    A ``kernel=`` given among ``layer_options`` is copied for each layer, so that each layer
    has its own (learnable) widths, as in Lange's network.
    """
    if spread is None:
        spread = math.sqrt((5.0 ** (3.0 / dim) - 1.0) / 4.0)
    kernel = layer_options.pop("kernel", None)
    layers: list[nn.Module] = []
    previous: nn.Parameter | None = None
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layer = ParticleLinear(
            n_in,
            n_out,
            dim=dim,
            kernel=None if kernel is None else copy.deepcopy(kernel),
            source_position=previous,
            spread=spread,
            generator=generator,
            **layer_options,
        )
        previous = layer.position
        layers.append(layer)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


__all__ = ["ParticleLinear", "particle_mlp"]
