"""Shader's distance-weighted L2 penalty, registered by this plugin as ``distance_l2``.

Shader ("Positional Neuron Layers", §IV) makes a strong coupling cheap only between
close neurons, so that hidden neurons move towards what they read from and what they
drive. The penalty is this paper's mechanism, so it lives in its plugin; it acts on any
interaction with a free weight (``modulated``, ``dense``), in any scenario that loads
the plugin::

    [[potentials]]
    name = "distance_l2"
    coefficient = 0.0417
    reduction = "mean"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from particlesim.core.potentials import Potential
from particlesim.errors import OptionError
from particlesim.kernels.base import squared_distance

if TYPE_CHECKING:
    from particlesim.core.system import System


class DistanceL2Potential(Potential):
    """Distance-weighted L2: ``E = Σ_i Σ_hj w_hj² · |r_h - r_j|²`` over free-weight interactions.

    Shader ("Positional Neuron Layers", §IV) penalises each free weight by the
    distance between the two neurons it joins, so a large weight is cheap only
    between close neurons and the cheapest way to a strong coupling is to move
    the neurons together. The paper writes the term as ``L2(w, x) = w·x²``;
    read literally, a negative ``w`` would lower the energy without bound, so
    the weight enters squared (as in the paper's reference code, which takes
    the mean of ``w²·d²`` per layer).

    Every interaction holding a free ``weight [M, N]`` (``modulated``, ``dense``)
    contributes, with ``d`` the distance between target particle ``h`` and
    source particle ``j``. Gradients reach both the weights and the positions
    (frozen positions, such as an input grid, simply do not move). Summed in
    float64.

    Args:
        coefficient: ``c`` in ``U = L + c·E``.
        reduction: ``"sum"`` over all pairs, or ``"mean"``: each interaction's
            mean over its ``M·N`` pairs, summed over interactions (the
            reference code's normalisation, independent of layer sizes).
        interactions: only these interactions, named ``"source->target"``
            (default: every interaction with a free weight).

    Example:
        >>> import torch
        >>> from particlesim.core.group import ParticleGroup
        >>> from particlesim.core.interactions import DenseInteraction
        >>> from particlesim.core.system import System
        >>> a = ParticleGroup("a", {"position": torch.zeros(1, 2)})
        >>> b = ParticleGroup("b", {"position": torch.tensor([[3.0, 4.0]])})
        >>> link = DenseInteraction(a, b)
        >>> with torch.no_grad():
        ...     _ = link.weight.fill_(2.0)
        >>> float(DistanceL2Potential().energy(System([a, b], [link])).detach())  # 2² · 5²
        100.0
    """

    name = "distance_l2"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        reduction: Literal["sum", "mean"] = "sum",
        interactions: Sequence[str] | None = None,
    ) -> None:
        super().__init__(coefficient=coefficient)
        if reduction not in ("sum", "mean"):
            raise OptionError("reduction", f"expected 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.interactions = list(interactions) if interactions is not None else None

    def energy(self, system: System) -> Tensor:
        names = [f"{i.source}->{i.target}" for i in system.interactions]
        if self.interactions is not None:
            missing = [name for name in self.interactions if name not in names]
            if missing:
                raise OptionError(
                    "interactions",
                    f"no interaction {missing[0]!r} in the system; "
                    f"interactions: {', '.join(names)}",
                )
        total = torch.zeros((), dtype=torch.float64, device=system.device)
        for name, interaction in zip(names, system.interactions, strict=True):
            weight = getattr(interaction, "weight", None)
            if not isinstance(weight, Tensor):
                continue
            if self.interactions is not None and name not in self.interactions:
                continue
            target = system.groups[interaction.target].position.double()
            source = system.groups[interaction.source].position.double()
            term = weight.double().pow(2) * squared_distance(target, source)
            total = total + (term.mean() if self.reduction == "mean" else term.sum())
        return total.to(system.dtype)


POTENTIALS: tuple[type[Potential], ...] = (DistanceL2Potential,)
