"""Activation functions as a registry of ``nn.Module`` classes with a ``name``.

A group's ``activation`` names one of them; plugins add more with
``particlesim_register_activations`` (a class may hold learnable parameters,
such as a per-neuron slope, and receives the group size as ``size``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Activation(nn.Module):
    """Base class: ``forward(a [B, N]) -> [B, N]``; constructed as ``cls(size=N)``."""

    name: ClassVar[str] = ""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size


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
