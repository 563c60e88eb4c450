"""The spatial costs of Wołczyk et al.: transport (wiring length) and density (crowding).

Both act on a set 𝓛 of selected layers (particle groups) and are averaged over
it, so that the paper's total energy (§2)

.. math:: L_{spatial} = L + \\frac{1}{|𝓛|} \\sum_{l ∈ 𝓛} α T(l) + β V(l)

is the data loss plus the potential ``transport`` at coefficient α plus the
potential ``density`` at coefficient β::

    [[potentials]]
    name = "transport"
    coefficient = 1.0            # α
    [[potentials]]
    name = "density"
    coefficient = 3.0            # β

By default 𝓛 holds every layer from the third hidden layer on (the paper's
choice: ``hidden3``, ``hidden4`` and ``output`` of ``n-128-128-128-256-20``);
``layers = [...]`` names other groups. Distances are Euclidean,
``‖p(n_1) - p(n_2)‖``, whose gradient at a coincident pair is 0 (never NaN).
Terms are computed in the system's dtype and summed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from particlesim.core.potentials import Potential
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.system import System

#: How the transport cost of a layer is normalised (see :class:`TransportCost`).
NORMALIZATIONS: tuple[str, ...] = ("neurons", "connections")
#: How a weight enters the transport cost: ``|a|`` (the paper) or ``a²`` (the authors' code).
WEIGHT_NORMS: tuple[str, ...] = ("l1", "l2")
#: Index of the first penalised group by default: ``input, hidden1, hidden2, hidden3, …``.
FIRST_PENALISED = 3


def distance(target: Tensor, source: Tensor) -> Tensor:
    """``‖r_h - r_j‖`` for ``target [M, D]`` and ``source [N, D]`` → ``[M, N]``.

    ``torch.cdist`` from coordinate differences (not the ``a² + b² - 2ab``
    expansion, which loses precision and is not exactly 0 for coincident
    particles); its gradient at a coincident pair is 0, a subgradient of the
    norm, never NaN.
    """
    return torch.cdist(target, source, compute_mode="donot_use_mm_for_euclid_dist")


def penalised_layers(system: System, layers: Sequence[str] | None) -> list[str]:
    """The group names of 𝓛: ``layers`` checked against ``system``, or the default.

    The default is every group from the third hidden layer on (group index
    :data:`FIRST_PENALISED` onwards).
    """
    names = list(system.groups)
    if layers is None:
        chosen = names[FIRST_PENALISED:]
        if not chosen:
            raise OptionError(
                "layers",
                f"the system has no third hidden layer (groups: {', '.join(names)}); "
                "name the penalised layers",
            )
        return chosen
    for name in layers:
        if name not in system.groups:
            raise OptionError(
                "layers", f"no group {name!r} in the system; groups: {', '.join(names)}"
            )
    return list(layers)


class _LayerCost(Potential):
    """Shared options: the layers 𝓛 and the coefficient; ``energy`` averages over 𝓛."""

    def __init__(self, *, coefficient: float = 1.0, layers: list[str] | None = None) -> None:
        super().__init__(coefficient=coefficient)
        if layers is not None:
            if not layers:
                raise OptionError("layers", "must name at least one group (or be left out)")
            if len(set(layers)) != len(layers):
                raise OptionError("layers", f"names a group twice: {layers}")
        self.layers = None if layers is None else list(layers)

    def layer_energy(self, system: System, layer: str) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def energy(self, system: System) -> Tensor:
        chosen = penalised_layers(system, self.layers)
        total = torch.zeros((), dtype=torch.float64, device=system.device)
        for layer in chosen:
            total = total + self.layer_energy(system, layer)
        return (total / len(chosen)).to(system.dtype)

    def extra_repr(self) -> str:
        layers = "from the third hidden layer on" if self.layers is None else self.layers
        return f"coefficient={self.coefficient:g}, layers={layers}"


class TransportCost(_LayerCost):
    """Transport cost (Wołczyk et al. §2): long strong connections are expensive.

    .. math:: T(l) = \\frac{1}{N_l} \\sum_{n_1 → n_2,\\ n_2 ∈ l} |a_{n_1 n_2}| · ‖p(n_1) - p(n_2)‖

    summed over every interaction that drives layer ``l`` (``a`` its effective
    ``[M, N]`` weight: the free weight of a ``dense`` interaction), and the
    energy is ``(1/|𝓛|) Σ_{l∈𝓛} T(l)``. Gradients reach the weights (through
    ``|a|``) and the positions of both ends. A layer without incoming
    interactions (the input) contributes 0.

    ``normalize = "connections"`` divides each layer's sum by its number of
    incoming connections (``N_l·N_{l-1}`` for one dense interaction) instead of
    by ``N_l``: the mean ``|a|·d`` per connection, as the authors' published code
    computes it. It equals the paper's ``T(l)`` with α divided by the fan-in.

    ``weight_norm = "l2"`` prices a connection by ``a²·d`` instead of ``|a|·d``: the
    authors' published code offers both (``--norm``) and uses ``a²`` unless told
    otherwise (its default, ``l2``), while the paper writes ``|a|``. The two differ in
    what they ask of a trained network: ``|a|`` pushes every long weight towards 0 at a
    constant rate (an L1 force, which empties weights exactly), ``a²`` in proportion to the
    weight (an L2 force, which shrinks long weights but rarely empties them, and is weak
    on the small weights of a fresh network).

    Args:
        coefficient: α (paper: 1).
        layers: the groups of 𝓛 (default: from the third hidden layer on).
        normalize: ``"neurons"`` (the paper's ``1/N_l``) or ``"connections"``.
        weight_norm: ``"l1"`` (the paper's ``|a|``) or ``"l2"`` (``a²``, the authors'
            code's default).

    Example:
        >>> import torch
        >>> from particlesim.core.group import ParticleGroup
        >>> from particlesim.core.interactions import DenseInteraction
        >>> from particlesim.core.system import System
        >>> a = ParticleGroup("a", {"position": torch.zeros(1, 2)})
        >>> b = ParticleGroup("b", {"position": torch.tensor([[3.0, 4.0], [0.0, 1.0]])})
        >>> link = DenseInteraction(a, b)
        >>> with torch.no_grad():
        ...     _ = link.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        >>> TransportCost(layers=["b"]).energy(System([a, b], [link])).item()  # (2·5 + 1·1) / 2
        5.5
    """

    name = "transport"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        layers: list[str] | None = None,
        normalize: Literal["neurons", "connections"] = "neurons",
        weight_norm: Literal["l1", "l2"] = "l1",
    ) -> None:
        super().__init__(coefficient=coefficient, layers=layers)
        if normalize not in NORMALIZATIONS:
            raise OptionError(
                "normalize",
                f"must be one of {', '.join(map(repr, NORMALIZATIONS))}, got {normalize!r}",
            )
        if weight_norm not in WEIGHT_NORMS:
            raise OptionError(
                "weight_norm",
                f"must be one of {', '.join(map(repr, WEIGHT_NORMS))}, got {weight_norm!r}",
            )
        self.normalize = normalize
        self.weight_norm = weight_norm

    def layer_energy(self, system: System, layer: str) -> Tensor:
        target = system.groups[layer]
        total = torch.zeros((), dtype=torch.float64, device=system.device)
        connections = 0
        for interaction in system.interactions:
            if interaction.target != layer:
                continue
            source = system.groups[interaction.source]
            weight = interaction.effective_weight(source, target)
            price = weight.abs() if self.weight_norm == "l1" else weight.square()
            length = distance(target.position, source.position)
            total = total + (price * length).sum(dtype=torch.float64)
            connections += length.numel()
        if self.normalize == "connections":
            return total / max(connections, 1)
        return total / target.size

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, normalize={self.normalize!r}, "
            f"weight_norm={self.weight_norm!r}"
        )


class DensityCost(_LayerCost):
    """Density cost (Wołczyk et al. §2): neurons of a layer should not crowd together.

    .. math:: V(l) = \\frac{1}{N_l^2} \\sum_{n_1, n_2 ∈ l} \\exp(-‖p(n_1) - p(n_2)‖)

    over all ordered pairs of layer ``l``, as written: the ``N_l`` diagonal terms
    are ``exp(0) = 1`` and each unordered pair counts twice, so
    ``V = (N_l + 2 Σ_{i<j} exp(-d_ij)) / N_l²``; the diagonal adds a constant
    ``1/N_l`` and no force. The energy is ``(1/|𝓛|) Σ_{l∈𝓛} V(l)``, a repulsion
    that only the positions feel.

    Args:
        coefficient: β (paper: 3).
        layers: the groups of 𝓛 (default: from the third hidden layer on).

    Example:
        >>> import torch
        >>> from particlesim.core.group import ParticleGroup
        >>> from particlesim.core.interactions import DenseInteraction
        >>> from particlesim.core.system import System
        >>> a = ParticleGroup("a", {"position": torch.zeros(1, 2)})
        >>> b = ParticleGroup("b", {"position": torch.tensor([[0.0, 0.0], [0.0, 2.0]])})
        >>> energy = DensityCost(layers=["b"]).energy(System([a, b], [DenseInteraction(a, b)]))
        >>> round(energy.item(), 6) == round((2 + 2 * torch.exp(torch.tensor(-2.0)).item()) / 4, 6)
        True
    """

    name = "density"

    def layer_energy(self, system: System, layer: str) -> Tensor:
        position = system.groups[layer].position
        size = position.shape[0]
        return torch.exp(-distance(position, position)).sum(dtype=torch.float64) / (size * size)


SPATIAL_COSTS: tuple[type[Potential], ...] = (TransportCost, DensityCost)
