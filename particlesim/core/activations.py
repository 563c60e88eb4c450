"""Activation functions as a registry of ``nn.Module`` classes with a ``name``.

A group's ``activation`` names one of them; plugins add more with
``particlesim_register_activations`` (a class may hold learnable parameters,
such as a per-neuron slope, and receives the group size as ``size``).

An activation whose parameters belong to the particles (one value per neuron)
lists them in :meth:`Activation.particle_fields`; the :class:`~particlesim.core.System`
then also shows each as a field of its group (the same ``nn.Parameter``), so that
integrators move it once and trajectories record it beside positions and charges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from particlesim.core.signatures import construct_with


class Activation(nn.Module):
    """Base class: ``forward(a [B, N]) -> [B, N]``; constructed as ``cls(size=N)``."""

    name: ClassVar[str] = ""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size

    def particle_fields(self) -> dict[str, nn.Parameter]:
        """Learnable per-particle tensors ``[N]`` to show as fields of the group (default none)."""
        return {}


def _elementwise(name: str, function, doc: str) -> type[Activation]:
    def forward(self: Activation, a: Tensor) -> Tensor:
        return function(a)

    cls = type(
        "".join(part.capitalize() for part in name.split("_")),
        (Activation,),
        {"name": name, "forward": forward, "__doc__": doc, "__module__": __name__},
    )
    return cls


Identity = _elementwise("identity", lambda a: a, "``θ(a) = a`` (output layers: logits).")
Tanh = _elementwise("tanh", torch.tanh, "``θ(a) = tanh(a)``; signed, works without biases.")
Relu = _elementwise("relu", torch.relu, "``θ(a) = max(a, 0)``.")
Sigmoid = _elementwise("sigmoid", torch.sigmoid, "``θ(a) = 1/(1+e^{-a})``.")
Swish = _elementwise("swish", nn.functional.silu, "``θ(a) = a·σ(a)`` (SiLU), Shader's choice.")
Gelu = _elementwise("gelu", nn.functional.gelu, "Gaussian error linear unit.")
Softplus = _elementwise("softplus", nn.functional.softplus, "``θ(a) = log(1+e^a)``.")


BUILTIN_ACTIVATIONS: tuple[type[Activation], ...] = (
    Identity,
    Tanh,
    Relu,
    Sigmoid,
    Swish,
    Gelu,
    Softplus,
)


class _CallableActivation(nn.Module):
    """A plain callable (``torch.tanh``, a function) as the activation module of a group."""

    def __init__(self, function: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


def make_activation(factory: Callable[..., Any], size: int) -> nn.Module:
    """The activation module of a group of ``size`` neurons made by a registered ``factory``.

    ``size`` is passed only when the factory's constructor takes it (activations with one
    parameter per neuron); a factory that returns a plain callable is wrapped in a module.
    """
    made = construct_with(factory, {"size": size})
    return made if isinstance(made, nn.Module) else _CallableActivation(made)
