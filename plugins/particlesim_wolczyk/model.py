"""The spatial network of Wołczyk et al.: a sigmoid MLP whose neurons have learnable 2-D positions.

Every neuron ``n`` of every layer has a position ``p(n) ∈ R^2`` drawn from a
standard normal and trained with the weights (§2). Layers are coupled by free
weights (the engine's ``dense`` interaction: positions do not enter the forward
pass); the positions feel only the spatial costs, the transport cost (α) and
the density cost (β) on the layers 𝓛 (:mod:`particlesim_wolczyk.costs`).
With ``spatial = false`` the same network, initialised identically, has no
costs and frozen positions: the paper's "Regular" baseline.

Registered as the model ``spatial_mlp``::

    [model]
    name = "spatial_mlp"
    sizes = [0, 128, 128, 128, 256, 0]   # n-128-128-128-256-20, ends from the data
    spatial = true
    alpha = 1.0
    beta = 3.0

Weights and biases start like ``nn.Linear``'s (uniform in ``±1/sqrt(fan_in)``),
the paper does not say otherwise.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch

from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction
from particlesim.core.model import Model, check_sizes, layer_names
from particlesim.core.system import System
from particlesim.errors import OptionError
from particlesim_wolczyk.costs import (
    FIRST_PENALISED,
    NORMALIZATIONS,
    WEIGHT_NORMS,
    DensityCost,
    TransportCost,
)

#: The paper's architecture, ``n-128-128-128-256-20`` (0: input and output sizes from the data).
PAPER_SIZES = [0, 128, 128, 128, 256, 0]


class SpatialMLP(Model):
    """Wołczyk's spatial network (``spatial = true``) or its regular twin (``false``).

    Args:
        sizes: neurons per layer, input first (``0`` at either end: from the data).
            Default: the paper's ``n-128-128-128-256-20``.
        spatial: learn positions under the transport and density costs; ``false``:
            no costs, positions frozen at their initial draw (kept for plots).
        dim: dimension of the positions (paper: 2).
        position_spread: positions start ``~ N(0, s²)`` per coordinate (paper: 1).
        activation: hidden-layer activation (paper: ``sigmoid``; ReLU's rescaling
            invariance lets a network shrink its weights instead of moving).
        bias: a bias per hidden and output neuron.
        alpha: coefficient α of the transport cost (paper: 1).
        beta: coefficient β of the density cost (paper: 3).
        layers: the penalised groups 𝓛 (default: from the third hidden layer on,
            ``hidden3, hidden4, output`` for the paper's sizes).
        transport_normalize: ``"neurons"`` (the paper's ``T(l)``, divided by
            ``N_l``) or ``"connections"`` (the mean over a layer's incoming
            connections, as the authors' published code computes it); see
            :class:`~particlesim_wolczyk.costs.TransportCost`.
        transport_norm: ``"l1"`` (the paper's ``|a|·d``) or ``"l2"`` (``a²·d``, the
            authors' code's default); the transport cost's ``weight_norm``.
    """

    name = "spatial_mlp"

    def __init__(
        self,
        *,
        sizes: list[int] | None = None,
        spatial: bool = True,
        dim: int = 2,
        position_spread: float = 1.0,
        activation: str = "sigmoid",
        bias: bool = True,
        alpha: float = 1.0,
        beta: float = 3.0,
        layers: list[str] | None = None,
        transport_normalize: Literal["neurons", "connections"] = "neurons",
        transport_norm: Literal["l1", "l2"] = "l1",
    ) -> None:
        sizes = list(PAPER_SIZES if sizes is None else sizes)
        if len(sizes) < 2:
            raise OptionError("sizes", f"needs at least an input and an output size, got {sizes}")
        for i, size in enumerate(sizes):
            if size < 0 or (size == 0 and 0 < i < len(sizes) - 1):
                raise OptionError(f"sizes[{i}]", f"must be a positive integer, got {size}")
        if dim < 1:
            raise OptionError("dim", f"must be a positive integer, got {dim}")
        if not position_spread > 0:
            raise OptionError("position_spread", f"must be > 0, got {position_spread}")
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise OptionError(key, f"must be >= 0, got {value}")
        names = layer_names(len(sizes))
        if layers is not None:
            for name in layers:
                if name not in names:
                    raise OptionError(
                        "layers", f"no layer {name!r}; layers of these sizes: {', '.join(names)}"
                    )
        elif spatial and len(sizes) <= FIRST_PENALISED:
            raise OptionError(
                "layers",
                f"{len(sizes)} layers have no third hidden layer to penalise from; "
                "name the penalised layers",
            )
        self.sizes = sizes
        self.spatial = spatial
        self.dim = dim
        self.position_spread = position_spread
        self.activation = activation
        self.bias = bias
        self.alpha = alpha
        self.beta = beta
        self.layers = None if layers is None else list(layers)
        if transport_normalize not in NORMALIZATIONS:
            raise OptionError(
                "transport_normalize",
                f"must be one of {', '.join(map(repr, NORMALIZATIONS))}, "
                f"got {transport_normalize!r}",
            )
        self.transport_normalize = transport_normalize
        if transport_norm not in WEIGHT_NORMS:
            raise OptionError(
                "transport_norm",
                f"must be one of {', '.join(map(repr, WEIGHT_NORMS))}, got {transport_norm!r}",
            )
        self.transport_norm = transport_norm

    def penalised_layers(self) -> list[str]:
        """The group names of 𝓛 (what the costs act on and the greedy split splits)."""
        if self.layers is not None:
            return list(self.layers)
        return layer_names(len(self.sizes))[FIRST_PENALISED:]

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        sizes = check_sizes(self.sizes, input_size, num_classes)
        names = layer_names(len(sizes))
        activation = registries["activation"].get(self.activation, where="activation")
        groups = [
            ParticleGroup.create(
                name,
                size,
                self.dim,
                generator=generator,
                spread=self.position_spread,
                charge_channels=0,
                bias=self.bias and i > 0,
                frozen=() if self.spatial else ["position"],
                activation=self.activation if 0 < i < len(sizes) - 1 else "identity",
                dtype=dtype,
            )
            for i, (name, size) in enumerate(zip(names, sizes, strict=True))
        ]
        interactions = [
            DenseInteraction(source, target, generator=generator)
            for source, target in itertools.pairwise(groups)
        ]
        for source, target in itertools.pairwise(groups):
            if target.has("bias"):  # nn.Linear's initial bias
                bound = 1.0 / source.size**0.5
                with torch.no_grad():
                    target.bias.uniform_(-bound, bound, generator=generator)
        potentials = []
        if self.spatial:
            layers = self.penalised_layers()
            potentials = [
                TransportCost(
                    coefficient=self.alpha,
                    layers=layers,
                    normalize=self.transport_normalize,
                    weight_norm=self.transport_norm,
                ),
                DensityCost(coefficient=self.beta, layers=layers),
            ]
        activations = {
            name: make_activation(activation, size)
            for name, size in zip(names[1:-1], sizes[1:-1], strict=True)
        }
        return System(groups, interactions, potentials, activations=activations)
