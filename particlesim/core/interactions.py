"""Interactions: how a source group drives a target group.

An interaction maps the source's outputs ``b [B, N]`` to a contribution to the
target's pre-activations ``a [B, M]``. It reads the particles' fields from the
two groups at call time, so positions and charges live in exactly one place.

Built-in interactions (``name`` in a scenario's ``[[interactions]]``):

* ``kernel`` — Lange (2015) eq. 9: ``a_h = q_h Σ_j k(r_h, r_j) b_j``.
* ``modulated`` — Shader: ``a_h = Σ_j w_hj k(r_h, r_j) b_j`` with a free ``w``.
* ``dense`` — a plain ``a = b Wᵀ``; positions only feel potentials (Wołczyk).

The papers named are where each form comes from; each is a generic coupling between
any two groups, usable by any model or ``[[interactions]]`` table with any registered
kernel, so they are the engine's (DESIGN.md, core abstractions).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from particlesim.core.group import ParticleGroup
from particlesim.errors import OptionError
from particlesim.kernels.base import Kernel
from particlesim.kernels.neighbours import NeighbourCache
from particlesim.kernels.ops import BACKENDS, Backend


class Interaction(nn.Module):
    """Base class: ``forward(b, source, target) -> [B, M]``.

    Constructed with the two groups (for sizes and dtypes); keeps only their
    names, so the groups stay owned by the :class:`~particlesim.core.System`.
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`effective_weight` gives an ``[M, N]`` matrix (trajectories record it).
    has_effective_weight: ClassVar[bool] = True
    #: Parameters indexed ``[target, source]`` (one entry per pair of particles): a move
    #: that relabels particles permutes their rows and columns.
    pair_parameters: ClassVar[tuple[str, ...]] = ()
    #: Whether the weights depend on particle positions (a neuron swap, which keeps the
    #: places and moves everything else, would then change the network's function).
    uses_positions: ClassVar[bool] = True

    def __init__(self, source: ParticleGroup, target: ParticleGroup) -> None:
        super().__init__()
        self.source = source.name
        self.target = target.name

    def forward(self, b: Tensor, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def effective_weight(self, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        """The ``[M, N]`` weight this interaction applies (materialised; for analysis)."""
        raise NotImplementedError  # pragma: no cover

    def extra_repr(self) -> str:
        return f"{self.source} -> {self.target}"


class _KernelCoupling(Interaction):
    """Shared machinery of interactions whose weight carries a kernel of distance.

    Subclasses say what multiplies the kernel through :meth:`weight_factors`
    (target charges, or a free weight matrix); the execution paths
    (``reference`` / ``chunked`` / ``fused``, picked per call by ``backend``) come from
    :func:`particlesim.kernels.kernel_matmul`. With a kernel cutoff, the interaction keeps a
    :class:`~particlesim.kernels.neighbours.NeighbourCache` (``self.neighbours``, a plain
    attribute: not a parameter, not saved) that is rebuilt only after particles have moved
    farther than ``skin / 2``.
    """

    def __init__(
        self,
        source: ParticleGroup,
        target: ParticleGroup,
        *,
        kernel: Kernel,
        backend: Backend,
        chunk_size: int | None,
        skin: float | None,
    ) -> None:
        super().__init__(source, target)
        if source.dim != target.dim:
            raise OptionError(
                "target",
                f"groups {source.name!r} (dim {source.dim}) and {target.name!r} "
                f"(dim {target.dim}) live in different dimensions",
            )
        if backend not in BACKENDS:
            raise OptionError(
                "backend", f"must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise OptionError("chunk_size", f"must be a positive number of rows, got {chunk_size}")
        if skin is not None and not (math.isfinite(skin) and skin >= 0):
            raise OptionError("skin", f"must be a finite distance >= 0, got {skin}")
        self.kernel = kernel
        self.backend = backend
        self.chunk_size = chunk_size
        self.neighbours = NeighbourCache(skin)

    def weight_factors(self, target: ParticleGroup) -> dict[str, Tensor]:
        """``charge=`` and/or ``modulation=`` arguments of the kernel ops."""
        raise NotImplementedError  # pragma: no cover

    def forward(self, b: Tensor, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        from particlesim.kernels.ops import kernel_matmul

        return kernel_matmul(
            b, self.kernel, target.position, source.position, backend=self.backend,
            chunk_size=self.chunk_size, neighbours=self.neighbours,
            where=f"interaction {self.source} -> {self.target}", **self.weight_factors(target),
        )  # fmt: skip

    def effective_weight(self, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        from particlesim.kernels.ops import effective_weight

        return effective_weight(
            self.kernel, target.position, source.position, **self.weight_factors(target)
        )


class KernelInteraction(_KernelCoupling):
    """Lange's particle interaction: ``W_hj = q_h · k(r_h, r_j)`` (eq. 9).

    With ``C`` charge channels (target charge ``[M, C]``) and a kernel of ``C``
    widths, ``W_hj = Σ_c q_hc · k_c(r_h, r_j)``.

    Args:
        kernel: the kernel module (its parameters train with the system; its ``cutoff``, if
            any, enables the neighbour list).
        backend: ``"auto"`` (fused on CUDA, else reference for tiny layers and chunked
            above), ``"reference"`` (materialise ``W``), ``"chunked"`` (memory linear in
            N + M) or ``"fused"`` (Triton; falls back with a warning where it cannot run);
            see :func:`particlesim.kernels.select_backend`.
        chunk_size: target rows per block on the chunked path.
        skin: Verlet margin of the neighbour list (kernels with a cutoff); default
            ``cutoff / 10``.
    """

    name = "kernel"

    def __init__(
        self,
        source: ParticleGroup,
        target: ParticleGroup,
        *,
        kernel: Kernel,
        backend: Backend = "auto",
        chunk_size: int | None = None,
        skin: float | None = None,
    ) -> None:
        super().__init__(
            source, target, kernel=kernel, backend=backend, chunk_size=chunk_size, skin=skin
        )
        if not target.has("charge"):
            raise OptionError("target", f"group {target.name!r} has no charge field")
        channels = 1 if target.charge.ndim == 1 else target.charge.shape[1]
        if channels != kernel.channels:
            raise OptionError(
                "kernel",
                f"group {target.name!r} has {channels} charge channel(s) but the "
                f"kernel has {kernel.channels} width(s)",
            )

    def weight_factors(self, target: ParticleGroup) -> dict[str, Tensor]:
        return {"charge": target.charge}


class ModulatedInteraction(_KernelCoupling):
    """Shader's positional interaction: ``W_hj = w_hj · k(r_h, r_j)`` with a free ``w``.

    ``w`` starts like ``nn.Linear``'s weight (uniform in ``±1/sqrt(N)``). ``backend``,
    ``chunk_size`` and ``skin`` as in :class:`KernelInteraction`.
    """

    name = "modulated"
    pair_parameters = ("weight",)

    def __init__(
        self,
        source: ParticleGroup,
        target: ParticleGroup,
        *,
        kernel: Kernel,
        backend: Backend = "auto",
        chunk_size: int | None = None,
        skin: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            source, target, kernel=kernel, backend=backend, chunk_size=chunk_size, skin=skin
        )
        if kernel.channels != 1:
            raise OptionError("kernel", "a modulated interaction takes a single-width kernel")
        self.weight = nn.Parameter(linear_init(source, target, generator))

    def weight_factors(self, target: ParticleGroup) -> dict[str, Tensor]:
        return {"modulation": self.weight}


def linear_init(
    source: ParticleGroup, target: ParticleGroup, generator: torch.Generator | None
) -> Tensor:
    """An ``[M, N]`` weight uniform in ``±1/sqrt(N)``, like ``nn.Linear``'s."""
    bound = 1.0 / math.sqrt(source.size)
    weight = torch.rand(target.size, source.size, generator=generator, dtype=torch.float64)
    return ((weight * 2 - 1) * bound).to(source.position.dtype)


class DenseInteraction(Interaction):
    """A free weight matrix ``a = b Wᵀ`` (initialised like ``nn.Linear``); positions unused."""

    name = "dense"
    pair_parameters = ("weight",)
    uses_positions = False

    def __init__(
        self,
        source: ParticleGroup,
        target: ParticleGroup,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(source, target)
        self.weight = nn.Parameter(linear_init(source, target, generator))

    def forward(self, b: Tensor, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        return b @ self.weight.T

    def effective_weight(self, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        return self.weight


BUILTIN_INTERACTIONS: tuple[type[Interaction], ...] = (
    KernelInteraction,
    ModulatedInteraction,
    DenseInteraction,
)
