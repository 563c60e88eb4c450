"""Lange's particle networks (Lange 2015, "Particle Networks: A Variation on MLPs").

Each unit is a particle with a charge ``q_h`` and a position ``r_h ∈ R^D``;
layer ``l`` drives layer ``l+1`` through a pairwise kernel (eq. 9)::

    a_h = q_h Σ_{h'} k(r_h, r_{h'}) b_{h'},   k = exp(-|r_h - r_{h'}|² / σ²)   (eq. 10 at σ = 1)

and the input layer scales the data by its own charges, ``b_i = q_i x_i``
(eq. 11). Registered as the model ``particle_network``::

    [model]
    name = "particle_network"
    sizes = [784, 256, 256, 10]

Choices the paper leaves open, made by measurement on MNIST (see README):

* ``activation = "tanh"``: kernels are positive, so one charge fixes the sign
  of all of a unit's incoming weights; a signed activation lets the next layer
  mix signs. Non-negative activations without biases collapse.
* ``position_spread``: positions start ``~ N(0, s²)`` with, by default,
  ``s = σ·sqrt((5^{3/D} - 1)/4)``, which keeps the mean initial kernel value
  ``E[k] = (1 + 4s²/σ²)^{-D/2}`` at its D = 3, s = σ value (0.089) for every
  ``D``; with a fixed spread the kernel vanishes as D grows (2e-6 at D = 16).
* ``charge_init = "normalized"``: each unit's charge is ``ε·gain/sqrt(Σ_j k(r_h, r_j)²)``
  with ``ε ~ N(0, 1)`` — the effective weight row gets unit norm, the
  analogue of LeCun initialisation for the actual initial geometry.
  ``"normal"`` draws ``N(0, gain²/fan_in)`` regardless of geometry.
* ``charge_channels = C > 1``: several charges per particle, one per kernel
  width (``kernel_width·2^c`` centred on ``kernel_width``), so that
  ``W_hj = Σ_c q_hc k_c(r_h, r_j)`` can change sign with distance.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from particlesim import hookimpl
from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import KernelInteraction
from particlesim.core.model import KernelSpec, Model, check_sizes, kernel_factory, layer_names
from particlesim.core.system import System
from particlesim.errors import OptionError
from particlesim.kernels.ops import Backend

__version__ = "0.1.0"


def default_spread(dim: int, width: float = 1.0) -> float:
    """Initial position spread keeping ``E[k]`` at its D = 3 value (see module docstring)."""
    return width * math.sqrt((5.0 ** (3.0 / dim) - 1.0) / 4.0)


#: Charge channels at most: their widths, spaced by factors of 2, then span 2^±32 σ.
MAX_CHARGE_CHANNELS = 64


def channel_widths(width: float, channels: int) -> list[float]:
    """``C`` kernel widths spaced by factors of 2 around ``width``."""
    if channels == 1:
        return [width]
    return [width * 2.0 ** (c - (channels - 1) / 2) for c in range(channels)]


class ParticleNetwork(Model):
    """A stack of particle layers coupled by kernels (Lange 2015, eqs. 9–11).

    Args:
        sizes: units per layer, input first (``0`` at either end: from the data).
        dim: D, the dimension positions live in (paper: 3).
        kernel: a registered kernel name (paper: ``gaussian``).
        kernel_width: σ of the kernel (paper: 1).
        learnable_width: train σ (per layer) with the rest.
        activation: hidden-layer activation (output layer: identity → logits).
        input_scaling: eq. 11, multiply inputs by the input particles' charges.
        bias: a bias per hidden/output unit (not in the paper's eq. 9).
        charge_channels: charges per particle, one per kernel width.
        position_spread: initial position std; ``None`` picks it from ``dim``.
        charge_init: ``"normalized"`` (unit-norm effective rows) or ``"normal"``.
        charge_gain: scale of the initial charges.
        backend: kernel execution path: ``auto`` (fused on CUDA, else matmul), ``reference``,
            ``chunked``, ``matmul`` or ``fused`` (see ``particlesim.kernels.select_backend``).
        cutoff: truncate every kernel at this distance (smooth XPLOR switch over the last
            fifth); the chunked and fused paths then skip far pairs of particle blocks.
    """

    name = "particle_network"

    def __init__(
        self,
        *,
        sizes: list[int],
        dim: int = 3,
        kernel: KernelSpec = "gaussian",
        kernel_width: float = 1.0,
        learnable_width: bool = False,
        activation: str = "tanh",
        input_scaling: bool = True,
        bias: bool = True,
        charge_channels: int = 1,
        position_spread: float | None = None,
        charge_init: Literal["normalized", "normal"] = "normalized",
        charge_gain: float = 1.0,
        backend: Backend = "auto",
        cutoff: float | None = None,
    ) -> None:
        if len(sizes) < 2:
            raise OptionError("sizes", f"needs at least an input and an output size, got {sizes}")
        for i, size in enumerate(sizes):
            if size < 0 or (size == 0 and 0 < i < len(sizes) - 1):
                raise OptionError(f"sizes[{i}]", f"must be a positive integer, got {size}")
        if dim < 1:
            raise OptionError("dim", f"must be a positive integer, got {dim}")
        if not kernel_width > 0:
            raise OptionError("kernel_width", f"must be > 0, got {kernel_width}")
        if not 1 <= charge_channels <= MAX_CHARGE_CHANNELS:
            raise OptionError(
                "charge_channels",
                f"must be in 1 … {MAX_CHARGE_CHANNELS} (the channels' widths are spaced by "
                f"factors of 2), got {charge_channels}",
            )
        if position_spread is not None and not position_spread > 0:
            raise OptionError("position_spread", f"must be > 0, got {position_spread}")
        if cutoff is not None and not (math.isfinite(cutoff) and cutoff > 0):
            raise OptionError("cutoff", f"must be a positive distance, got {cutoff}")
        self.sizes = list(sizes)
        self.dim = dim
        self.kernel = kernel
        self.kernel_width = kernel_width
        self.learnable_width = learnable_width
        self.activation = activation
        self.input_scaling = input_scaling
        self.bias = bias
        self.charge_channels = charge_channels
        self.position_spread = position_spread
        self.charge_init = charge_init
        self.charge_gain = charge_gain
        self.backend = backend
        self.cutoff = cutoff

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        sizes = check_sizes(self.sizes, input_size, num_classes)
        names = layer_names(len(sizes))
        table_width = self.kernel.get("width") if isinstance(self.kernel, dict) else None
        kernel_width = self.kernel_width if table_width is None else table_width
        spread = self.position_spread or default_spread(self.dim, kernel_width)
        make_kernel = kernel_factory(registries, self.kernel)
        activation = registries["activation"].get(self.activation, where="activation")
        widths = channel_widths(kernel_width, self.charge_channels)
        groups = [
            ParticleGroup.create(
                names[0],
                sizes[0],
                self.dim,
                generator=generator,
                spread=spread,
                charge_channels=1 if self.input_scaling else 0,
                dtype=dtype,
            )
        ]
        interactions = []
        for i in range(1, len(sizes)):
            group = ParticleGroup.create(
                names[i],
                sizes[i],
                self.dim,
                generator=generator,
                spread=spread,
                charge_channels=self.charge_channels,
                bias=self.bias,
                dtype=dtype,
                activation=self.activation if i < len(sizes) - 1 else "identity",
            )
            kernel_options = {} if self.cutoff is None else {"cutoff": self.cutoff}
            kernel = make_kernel(
                width=widths if len(widths) > 1 else widths[0],
                learnable_width=self.learnable_width,
                **kernel_options,
            )
            self._init_charges(group, groups[-1], kernel, generator)
            groups.append(group)
            interactions.append(
                KernelInteraction(groups[-2], group, kernel=kernel, backend=self.backend)
            )
        activations = {
            name: make_activation(activation, size)
            for name, size in zip(names[1:-1], sizes[1:-1], strict=True)
        }
        return System(
            groups, interactions, activations=activations, input_scaling=self.input_scaling
        )

    def _init_charges(
        self, target: ParticleGroup, source: ParticleGroup, kernel, generator: torch.Generator
    ) -> None:
        """Draw the target's charges per ``charge_init`` (see the module docstring)."""
        shape = target.charge.shape
        noise = torch.randn(*shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            if self.charge_init == "normal":
                scale = torch.full(shape[:1], 1.0 / math.sqrt(source.size), dtype=torch.float64)
            else:
                norms = _kernel_row_norms(kernel, target.position, source.position)
                scale = 1.0 / norms.clamp_min(1e-12)
            if len(shape) == 2:
                scale = scale[:, None] / math.sqrt(shape[1])
            target.charge.copy_((noise * scale * self.charge_gain).to(target.charge.dtype))


#: Kernel entries evaluated at once when charges are normalised (float64: 128 MiB), so
#: a layer of any size is initialised in memory linear in its width.
_NORM_BLOCK_ENTRIES = 1 << 24


def _kernel_row_norms(kernel, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """‖k(r_i, ·)‖ over the source particles for each target i (all channels), in row blocks."""
    source = source.double()
    rows = max(1, _NORM_BLOCK_ENTRIES // max(1, source.shape[0]))
    parts = []
    for start in range(0, target.shape[0], rows):
        k = kernel(target[start : start + rows].double(), source)  # [m, N] or [C, m, N]
        squares = k.pow(2).sum(-1)
        parts.append(squares.sum(0) if squares.ndim == 2 else squares)
    return torch.cat(parts).sqrt()


@hookimpl
def particlesim_register_models():
    return [ParticleNetwork]


@hookimpl
def particlesim_register_reproductions():
    from particlesim_lange.experiments import LangeReproduction

    return [LangeReproduction]
