"""The positional MLP of Shader's "Positional Neuron Layers" and its non-positional twin.

Every neuron has a position in R^D (D = 2 by default). A layer's effective
weight is the free weight modulated by a falloff of distance (§IV)::

    W_f[h, j] = b(|r_h - r_j|) · w[h, j],    b(x) = 1 / (1 + x²)

which is the engine's ``modulated`` interaction with the ``cauchy`` kernel at
width 1 (any registered single-width kernel may replace it). Layouts follow
the paper (§V) and its reference code:

* the input layer is frozen on a grid matching the image pixels (28×28 for
  MNIST), spanning ``[-input_extent, input_extent]`` on both axes (default 2),
  with ``x`` the pixel column and ``y`` the row counted upwards, so that a
  plot of the grid shows the image upright;
* the output layer is frozen on a ring of radius ``output_radius`` (default 5),
  class ``c`` at angle ``2πc/10``;
* hidden positions start ``~ N(0, s_l²)`` per coordinate and are learnable,
  with ``s = 1, 1.5, 2, 2, …`` for hidden layers 1, 2, 3, … (``hidden_spread``;
  the last value repeats).

Fixing the input and output layers is what keeps the distance penalty from
pulling every neuron onto one point. Weights start Glorot-uniform divided by
the mean initial falloff of their layer, so that the initial *effective*
weights have Glorot's scale; biases start at zero.

With ``positional = false`` the same layers are coupled by plain ``dense``
interactions and every position is frozen (kept only for plots): the paper's
"vanilla" network, initialised the same way (Glorot, zero biases).

Registered as the model ``positional_mlp``::

    [model]
    name = "positional_mlp"
    sizes = [784, 112, 56, 50, 50, 50, 10]
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import Tensor

from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction, ModulatedInteraction
from particlesim.core.layouts import gaussian, ring
from particlesim.core.model import KernelSpec, Model, check_sizes, kernel_factory, layer_names
from particlesim.core.system import System
from particlesim.errors import OptionError

#: The paper's layer sizes (§V).
PAPER_SIZES = [784, 112, 56, 50, 50, 50, 10]
#: Initial position spreads of hidden layers 1, 2, 3… in the reference code (the last repeats).
PAPER_HIDDEN_SPREAD = [1.0, 1.5, 2.0]


def grid_shape(size: int) -> list[int]:
    """``[rows, cols]`` of the most nearly square grid holding ``size`` points (28×28 for 784)."""
    rows = math.isqrt(size)
    while size % rows:
        rows -= 1
    return [rows, size // rows]


def pixel_grid(shape: list[int], dim: int, extent: float) -> Tensor:
    """``[rows·cols, dim]`` positions of row-major pixels: ``x`` = column, ``y`` = -row.

    Both axes span ``[-extent, extent]`` (an axis of one pixel sits at 0); other
    coordinates are 0. Row-major matches the flattened image, so pixel ``i`` of
    the data drives input particle ``i``.
    """
    rows, cols = shape

    def axis(n: int) -> Tensor:
        if n == 1:
            return torch.zeros(1, dtype=torch.float64)
        return torch.linspace(-extent, extent, n, dtype=torch.float64)

    row, col = torch.meshgrid(axis(rows), axis(cols), indexing="ij")
    out = torch.zeros(rows * cols, dim, dtype=torch.float64)
    out[:, 0] = col.reshape(-1)
    out[:, 1] = -row.reshape(-1)
    return out


def glorot_uniform(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """``[rows, cols]`` uniform in ``±sqrt(6/(rows + cols))`` (Glorot & Bengio 2010), float64."""
    bound = math.sqrt(6.0 / (rows + cols))
    return (torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1) * bound


class PositionalMLP(Model):
    """Shader's positional neuron network, or its vanilla twin (``positional = false``).

    Args:
        sizes: neurons per layer, input first (``0`` at either end: from the data).
            Paper: ``[784, 112, 56, 50, 50, 50, 10]``.
        positional: modulate weights by the falloff of distance and learn hidden
            positions; ``false`` gives plain dense layers (positions frozen, unused).
        dim: D, the dimension positions live in (paper: 2; at least 2 for the ring).
        kernel: a registered single-width kernel, the falloff ``b`` (paper: ``cauchy``,
            ``1/(1 + d²)`` at width 1).
        kernel_width: its width σ (``b = 1/(1 + d²/σ²)`` for ``cauchy``).
        activation: hidden-layer activation (paper: ``swish``); the output gives logits.
        bias: a bias per hidden/output neuron (paper: yes).
        input_grid: ``[rows, cols]`` of the input grid (default: the most nearly
            square grid, 28×28 for MNIST).
        input_extent: the input grid spans ``[-input_extent, input_extent]`` (reference: 2).
        output_radius: radius of the output ring (reference: 5).
        hidden_spread: initial position std of hidden layers 1, 2, …; the last
            value repeats (reference: ``[1, 1.5, 2]``).
        normalize_init: divide the Glorot weights by their layer's mean initial
            falloff, so effective weights start at Glorot's scale (reference: yes).
        backend: kernel execution path of the modulated interactions (``auto``,
            ``reference``, ``chunked``, ``fused``).
    """

    name = "positional_mlp"

    def __init__(
        self,
        *,
        sizes: list[int],
        positional: bool = True,
        dim: int = 2,
        kernel: KernelSpec = "cauchy",
        kernel_width: float = 1.0,
        activation: str = "swish",
        bias: bool = True,
        input_grid: list[int] | None = None,
        input_extent: float = 2.0,
        output_radius: float = 5.0,
        hidden_spread: list[float] | None = None,
        normalize_init: bool = True,
        backend: Literal["auto", "reference", "chunked", "fused"] = "auto",
    ) -> None:
        if len(sizes) < 3:
            raise OptionError(
                "sizes", f"needs an input, at least one hidden and an output size, got {sizes}"
            )
        for i, size in enumerate(sizes):
            if size < 0 or (size == 0 and 0 < i < len(sizes) - 1):
                raise OptionError(f"sizes[{i}]", f"must be a positive integer, got {size}")
        if dim < 2:
            raise OptionError("dim", f"must be >= 2 (the output ring is planar), got {dim}")
        if not kernel_width > 0:
            raise OptionError("kernel_width", f"must be > 0, got {kernel_width}")
        if input_grid is not None and (len(input_grid) != 2 or min(input_grid) < 1):
            raise OptionError(
                "input_grid", f"must be two positive integers [rows, cols], got {input_grid}"
            )
        if not input_extent > 0:
            raise OptionError("input_extent", f"must be > 0, got {input_extent}")
        if not output_radius > 0:
            raise OptionError("output_radius", f"must be > 0, got {output_radius}")
        spread = list(PAPER_HIDDEN_SPREAD if hidden_spread is None else hidden_spread)
        if not spread or not all(s > 0 for s in spread):
            raise OptionError(
                "hidden_spread", f"must be a non-empty list of numbers > 0, got {hidden_spread}"
            )
        self.sizes = list(sizes)
        self.positional = positional
        self.dim = dim
        self.kernel = kernel
        self.kernel_width = kernel_width
        self.activation = activation
        self.bias = bias
        self.input_grid = None if input_grid is None else list(input_grid)
        self.input_extent = input_extent
        self.output_radius = output_radius
        self.hidden_spread = spread
        self.normalize_init = normalize_init
        self.backend = backend

    def spread_of(self, hidden_index: int) -> float:
        """Initial position std of hidden layer ``hidden_index`` (1-based)."""
        return self.hidden_spread[min(hidden_index, len(self.hidden_spread)) - 1]

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        sizes = check_sizes(self.sizes, input_size, num_classes)
        names = layer_names(len(sizes))
        shape = self.input_grid or grid_shape(sizes[0])
        if math.prod(shape) != sizes[0]:
            raise OptionError(
                "input_grid", f"{shape} holds {math.prod(shape)} pixels, not {sizes[0]} inputs"
            )
        activation = registries["activation"].get(self.activation, where="activation")
        make_kernel = kernel_factory(registries, self.kernel) if self.positional else None

        positions = [pixel_grid(shape, self.dim, self.input_extent)]
        for i, size in enumerate(sizes[1:-1], start=1):
            positions.append(gaussian(size, self.dim, generator, spread=self.spread_of(i)))
        positions.append(ring(sizes[-1], self.dim, generator, spread=self.output_radius))

        groups = []
        for i, (name, position) in enumerate(zip(names, positions, strict=True)):
            fields = {"position": position.to(dtype)}
            if self.bias and i > 0:
                fields["bias"] = torch.zeros(position.shape[0], dtype=dtype)
            hidden = 0 < i < len(sizes) - 1
            frozen = [] if (hidden and self.positional) else ["position"]
            groups.append(
                ParticleGroup(
                    name,
                    fields,
                    frozen=frozen,
                    activation=self.activation if i < len(sizes) - 1 else "identity",
                )
            )

        interactions = []
        for source, target in itertools.pairwise(groups):
            weight = glorot_uniform(target.size, source.size, generator)
            if self.positional:
                kernel = make_kernel(width=self.kernel_width)
                interaction = ModulatedInteraction(
                    source, target, kernel=kernel, backend=self.backend
                )
                if self.normalize_init:
                    with torch.no_grad():
                        falloff = kernel(target.position.double(), source.position.double())
                    weight = weight / falloff.mean()
            else:
                interaction = DenseInteraction(source, target)
            with torch.no_grad():
                interaction.weight.copy_(weight.to(dtype))
            interactions.append(interaction)
        activations = {
            name: make_activation(activation, size)
            for name, size in zip(names[1:-1], sizes[1:-1], strict=True)
        }
        return System(groups, interactions, activations=activations)
