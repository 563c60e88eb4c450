"""The model ``mean_field``: one hidden layer of ``n`` particles in mean-field form.

``f_n(x) = (1/n) Σ_i c_i φ(x, y_i)`` with ``φ(x, y) = h(a·x + b)`` (Rotskoff &
Vanden-Eijnden 2018). Three groups::

    input [d]      positions e_k (frozen): the data point is its own position
    particles [n]  position a_i ∈ R^d, bias b_i, charge c_i; activation h
    output [K]     one particle per output (frozen)

coupled by the engine's ``mean_field_units`` (``k(x, a_i)``, dot product by default) and
``mean_field`` (``(1/n) Σ c_i φ_i``) interactions.
"""

from __future__ import annotations

import math

import torch

from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.mean_field import MeanFieldInteraction, MeanFieldUnits
from particlesim.core.model import KernelSpec, Model, kernel_factory
from particlesim.core.system import System
from particlesim.errors import OptionError


class MeanField(Model):
    """A mean-field network of ``particles`` units (Rotskoff & Vanden-Eijnden).

    The particles start i.i.d. ("well-prepared initial conditions"): ``a_i ~ N(0, s²/d)``
    per coordinate (so that ``a_i·x ~ N(0, s²)`` on the sphere ``|x| = √d``),
    ``b_i ~ N(0, bias_std²)`` and ``c_i ~ N(0, charge_std²)``. The charges have mean 0, so
    the mean-field limit of the initial network is ``f_0 = 0`` and ``f_n(0)`` is a pure
    ``O(n^{-1/2})`` fluctuation (central limit theorem).

    Args:
        particles: n, the number of units.
        activation: h, a registered activation (paper: ``sigmoid``).
        kernel: the unit's kernel ``k(x, a)``; ``dot_product`` gives ``h(a·x + b)``.
        bias: give each particle a bias ``b_i`` (part of ``y_i = (a_i, b_i)``).
        position_std: s, the spread of ``a_i·x`` at initialisation.
        bias_std: spread of the initial biases.
        charge_std: spread of the initial charges.
    """

    name = "mean_field"

    def __init__(
        self,
        *,
        particles: int = 256,
        activation: str = "sigmoid",
        kernel: KernelSpec = "dot_product",
        bias: bool = True,
        position_std: float = 1.0,
        bias_std: float = 1.0,
        charge_std: float = 1.0,
    ) -> None:
        if isinstance(particles, bool) or particles < 1:
            raise OptionError("particles", f"must be a positive integer, got {particles}")
        for key, value in (
            ("position_std", position_std),
            ("bias_std", bias_std),
            ("charge_std", charge_std),
        ):
            if not 0 <= value < math.inf:
                raise OptionError(key, f"must be >= 0 and finite, got {value}")
        self.particles = int(particles)
        self.activation = activation
        self.kernel = kernel
        self.bias = bias
        self.position_std = float(position_std)
        self.bias_std = float(bias_std)
        self.charge_std = float(charge_std)

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        d, n = input_size, self.particles
        activation = registries["activation"].get(self.activation, where="activation")
        kernel = kernel_factory(registries, self.kernel)()
        inputs = ParticleGroup(
            "input", {"position": torch.eye(d, dtype=dtype)}, frozen=["position"]
        )
        fields = {
            "position": (
                torch.randn(n, d, generator=generator, dtype=torch.float64)
                * (self.position_std / math.sqrt(d))
            ).to(dtype)
        }
        if self.bias:
            fields["bias"] = (
                torch.randn(n, generator=generator, dtype=torch.float64) * self.bias_std
            ).to(dtype)
        shape = (n,) if num_classes == 1 else (n, num_classes)
        fields["charge"] = (
            torch.randn(*shape, generator=generator, dtype=torch.float64) * self.charge_std
        ).to(dtype)
        particles = ParticleGroup("particles", fields, activation=self.activation)
        output = ParticleGroup(
            "output", {"position": torch.zeros(num_classes, d, dtype=dtype)}, frozen=["position"]
        )
        return System(
            [inputs, particles, output],
            [
                MeanFieldUnits(inputs, particles, kernel=kernel),
                MeanFieldInteraction(particles, output),
            ],
            activations={"particles": make_activation(activation, n)},
        )


MODELS = (MeanField,)
