"""Models: scenario shorthands that expand into a whole :class:`System`.

A model is a class with a ``name``, typed keyword-only options (validated from
the scenario's ``[model]`` table) and a :meth:`Model.build` method. Plugins add
models with ``particlesim_register_models``; the engine ships ``mlp``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction
from particlesim.core.system import System
from particlesim.errors import OptionError


class Model:
    """Base class of model shorthands.

    ``build`` receives the registries (``registries["kernel"]``, …), the data's
    input size and class count, a seeded generator and the dtype.
    """

    name: ClassVar[str] = ""

    def build(
        self,
        *,
        registries: Mapping[str, Any],
        input_size: int,
        num_classes: int,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> System:
        raise NotImplementedError  # pragma: no cover


#: A model's ``kernel`` option: a registered name, or a table ``{name = …, <options>}``.
KernelSpec = str | dict[str, Any]


def kernel_factory(registries: Mapping[str, Any], spec: KernelSpec, **defaults: Any) -> Any:
    """A function making a model's kernel from its ``kernel`` option.

    ``spec`` is a registered kernel's name or a table whose ``name`` picks it and whose other
    keys are its options; the model's own ``defaults`` (``width`` from ``kernel_width``…)
    apply where the table does not set a key. The returned function takes keyword
    overrides of its own and constructs a fresh kernel each call (one per layer).
    """
    if isinstance(spec, str):
        name, options = spec, {}
    else:
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise OptionError("kernel", 'a kernel table needs name = "<a registered kernel>"')
    kernel_class = registries["kernel"].get(name, where="kernel")

    def make(**overrides: Any) -> Any:
        merged = {**defaults, **overrides, **options}
        try:
            return kernel_class(**merged)
        except (TypeError, ValueError) as exc:
            raise OptionError("kernel", f"kernel {name!r}: {exc}") from None

    make.kernel_class = kernel_class  # type: ignore[attr-defined]
    make.name = name  # type: ignore[attr-defined]
    return make


def check_sizes(sizes: list[int], input_size: int, num_classes: int) -> list[int]:
    """Validate layer sizes; ``0`` at the ends means "take it from the data"."""
    if len(sizes) < 2:
        raise OptionError("sizes", f"needs at least an input and an output size, got {sizes}")
    sizes = list(sizes)
    if sizes[0] == 0:
        sizes[0] = input_size
    if sizes[-1] == 0:
        sizes[-1] = num_classes
    for i, size in enumerate(sizes):
        if size < 1:
            raise OptionError(f"sizes[{i}]", f"must be a positive integer, got {size}")
    if sizes[0] != input_size:
        raise OptionError("sizes[0]", f"is {sizes[0]} but the data has {input_size} inputs")
    if sizes[-1] != num_classes:
        raise OptionError("sizes[-1]", f"is {sizes[-1]} but the data has {num_classes} classes")
    return sizes


def layer_names(count: int) -> list[str]:
    """``input, hidden1, …, output`` for ``count`` layers."""
    return ["input", *[f"hidden{i}" for i in range(1, count - 1)], "output"]


class MLP(Model):
    """A multilayer perceptron: dense interactions between groups (positions unused).

    The baseline a particle network is compared with. Args: ``sizes``
    (``0`` at either end takes the data's size), ``activation``, ``bias``.
    """

    name = "mlp"

    def __init__(
        self, *, sizes: list[int], activation: str = "relu", bias: bool = True, dim: int = 2
    ) -> None:
        self.sizes = sizes
        self.activation = activation
        self.bias = bias
        self.dim = dim

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
                charge_channels=0,
                bias=self.bias and i > 0,
                frozen=["position"],
                dtype=dtype,
            )
            for i, (name, size) in enumerate(zip(names, sizes, strict=True))
        ]
        interactions = [
            DenseInteraction(groups[i], groups[i + 1], generator=generator)
            for i in range(len(groups) - 1)
        ]
        for interaction, group in zip(interactions, groups[1:], strict=True):
            if group.has("bias"):  # nn.Linear-style initial bias
                bound = 1.0 / float(groups[names.index(interaction.source)].size) ** 0.5
                with torch.no_grad():
                    group.bias.uniform_(-bound, bound, generator=generator)
        activations = {
            name: make_activation(activation, size)
            for name, size in zip(names[1:-1], sizes[1:-1], strict=True)
        }
        return System(groups, interactions, activations=activations)


BUILTIN_MODELS: tuple[type[Model], ...] = (MLP,)
