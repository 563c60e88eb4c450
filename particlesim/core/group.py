"""ParticleGroup: a named population (a layer) of particles with tensor fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from particlesim.core.layouts import LAYOUTS
from particlesim.errors import OptionError

#: Fields every group may carry; others (``beta``, …) are allowed as extras.
STANDARD_FIELDS = ("position", "charge", "bias")


class ParticleGroup(nn.Module):
    """``size`` particles in ``dim`` dimensions, each field a learnable or frozen tensor.

    Fields: ``position [N, D]``, optional ``charge [N]`` or ``[N, C]``, optional
    ``bias [N]`` and any extra per-particle tensor. A learnable field is an
    ``nn.Parameter``; a frozen one is a buffer, so it moves with the module
    (device, dtype, state dict) but no integrator touches it.

    Example:
        >>> import torch
        >>> g = ParticleGroup("hidden", {"position": torch.zeros(4, 3), "charge": torch.ones(4)},
        ...                   frozen=["position"])
        >>> g.size, g.dim, sorted(g.learnable_fields())
        (4, 3, ['charge'])
    """

    def __init__(
        self,
        name: str,
        fields: Mapping[str, Tensor],
        *,
        frozen: Iterable[str] = (),
        activation: str = "identity",
    ) -> None:
        super().__init__()
        if "position" not in fields:
            raise OptionError("position", f"group {name!r} has no position field")
        position = fields["position"]
        if position.ndim != 2 or position.shape[0] < 1 or position.shape[1] < 1:
            raise OptionError(
                "position",
                f"group {name!r}: position must be [N, D] with N, D >= 1, "
                f"got shape {list(position.shape)}",
            )
        self.name = name
        self.activation = activation
        frozen = set(frozen)
        unknown = frozen - set(fields)
        if unknown:
            raise OptionError("frozen", f"group {name!r} has no field(s) {sorted(unknown)}")
        self._field_names: list[str] = []
        self._evolving: set[str] = set()
        for key, value in fields.items():
            if value.shape[0] != position.shape[0]:
                raise OptionError(
                    key,
                    f"group {name!r}: field {key!r} has {value.shape[0]} rows, "
                    f"expected {position.shape[0]}",
                )
            tensor = value.detach().clone()
            if key in frozen:
                self.register_buffer(key, tensor)
            else:
                self.register_parameter(key, nn.Parameter(tensor))
            self._field_names.append(key)

    @classmethod
    def create(
        cls,
        name: str,
        size: int,
        dim: int,
        *,
        generator: torch.Generator,
        layout: str = "gaussian",
        spread: float = 1.0,
        layout_options: Mapping[str, object] | None = None,
        charge_channels: int = 1,
        charge_std: float | None = None,
        bias: bool = False,
        frozen: Iterable[str] = (),
        activation: str = "identity",
        dtype: torch.dtype | None = None,
    ) -> ParticleGroup:
        """Build a group from a layout name and initial charge spread.

        ``charge_channels = 0`` gives no charge field; ``charge_std = None``
        draws charges ``~ N(0, 1)``. Biases start at zero.
        """
        if size < 1:
            raise OptionError("size", f"must be a positive integer, got {size}")
        if dim < 1:
            raise OptionError("dim", f"must be a positive integer, got {dim}")
        try:
            make = LAYOUTS[layout]
        except KeyError:
            raise OptionError(
                "layout", f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}"
            ) from None
        options = dict(layout_options or {})
        if layout != "file":
            options.setdefault("spread", spread)
        dtype = dtype or torch.get_default_dtype()
        fields: dict[str, Tensor] = {"position": make(size, dim, generator, **options).to(dtype)}
        if charge_channels > 0:
            shape = (size,) if charge_channels == 1 else (size, charge_channels)
            std = 1.0 if charge_std is None else charge_std
            fields["charge"] = (
                torch.randn(*shape, generator=generator, dtype=torch.float64) * std
            ).to(dtype)
        if bias:
            fields["bias"] = torch.zeros(size, dtype=dtype)
        return cls(name, fields, frozen=frozen, activation=activation)

    @property
    def size(self) -> int:
        """Number of particles N."""
        return int(self.position.shape[0])

    @property
    def dim(self) -> int:
        """Spatial dimension D."""
        return int(self.position.shape[1])

    def field_names(self) -> list[str]:
        """Names of all fields, in creation order."""
        return list(self._field_names)

    def has(self, field: str) -> bool:
        return field in self._field_names

    def field(self, field: str) -> Tensor:
        return getattr(self, field)

    def learnable_fields(self) -> dict[str, nn.Parameter]:
        """The fields an integrator moves."""
        return {k: v for k, v in self.named_parameters(recurse=False)}

    def is_frozen(self, field: str) -> bool:
        return field in self._field_names and field not in self._parameters

    def attach_field(self, field: str, parameter: nn.Parameter) -> None:
        """Show an existing per-particle parameter ``[N, ...]`` as a learnable field.

        The tensor is shared, not copied: an activation with one parameter per
        neuron (a slope, an inverse temperature β) keeps it, and the group lists it
        so that integrators see it once and trajectories record it with the other
        fields.
        """
        if field in self._field_names:
            raise OptionError(field, f"group {self.name!r} already has a field {field!r}")
        if parameter.ndim < 1 or parameter.shape[0] != self.size:
            raise OptionError(
                field,
                f"group {self.name!r}: field {field!r} has shape {list(parameter.shape)}, "
                f"expected {self.size} rows",
            )
        self.register_parameter(field, parameter)
        self._field_names.append(field)

    def add_field(
        self, field: str, tensor: Tensor, *, frozen: bool = True, evolving: bool = False
    ) -> None:
        """Add a per-particle field ``[N, ...]`` after construction (a copy of ``tensor``).

        ``evolving``: a frozen field that the engine itself changes during a run (no
        integrator moves it, but e.g. a Monte Carlo move does), so trajectories record it
        per frame instead of once. The neuron swap move's ``id`` field is one.
        """
        if field in self._field_names:
            raise OptionError(field, f"group {self.name!r} already has a field {field!r}")
        if tensor.ndim < 1 or tensor.shape[0] != self.size:
            raise OptionError(
                field,
                f"group {self.name!r}: field {field!r} has shape {list(tensor.shape)}, "
                f"expected {self.size} rows",
            )
        value = tensor.detach().clone()
        if frozen:
            self.register_buffer(field, value)
        else:
            self.register_parameter(field, nn.Parameter(value))
        self._field_names.append(field)
        if evolving:
            self._evolving.add(field)

    def is_evolving(self, field: str) -> bool:
        """A field that changes during a run: learnable, or frozen but changed by the engine."""
        return field in self._field_names and (not self.is_frozen(field) or field in self._evolving)

    def extra_repr(self) -> str:
        fields = ", ".join(
            f"{k}{list(self.field(k).shape)}{'*' if self.is_frozen(k) else ''}"
            for k in self._field_names
        )
        return f"name={self.name!r}, size={self.size}, dim={self.dim}, {fields} (* frozen)"
