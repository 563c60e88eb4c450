"""Potentials: energy terms on the system beyond the data loss.

The total energy an integrator descends is ``U = L_data + Σ_p c_p · E_p(system)``.
Each potential reports its unscaled energy ``E_p`` as the observable
``potential/<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from particlesim.core.schedules import step_entries, value_at
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.system import System


class Potential(nn.Module):
    """Base class: ``energy(system) -> scalar``; ``forward`` multiplies by ``coefficient``."""

    name: ClassVar[str] = ""

    def __init__(self, *, coefficient: float = 1.0) -> None:
        super().__init__()
        if coefficient < 0:
            raise OptionError("coefficient", f"must be >= 0, got {coefficient}")
        self.coefficient = float(coefficient)

    def energy(self, system: System) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def check(self, system: System) -> None:
        """Raise :class:`~particlesim.errors.OptionError` (naming the key) when ``system``
        lacks what this potential acts on; a scenario calls it once, when it builds, so the
        problem is one line before training instead of an error at the first step."""

    def forward(self, system: System) -> Tensor:
        return self.coefficient * self.energy(system)


def set_coefficient_schedule(potential: Potential, schedule: Sequence[Sequence[float]]) -> None:
    """From each ``[step, value]`` of ``schedule`` on, ``potential.coefficient`` is ``value``
    (before the first step: the coefficient it was built with). The simulation applies it
    at the start of every step (:func:`apply_coefficient_schedule`); being a function of the
    step alone, it needs no state in a checkpoint.
    """
    potential.coefficient_schedule = step_entries(schedule, "coefficient_schedule", "coefficient")
    potential.coefficient_before_schedule = potential.coefficient


def apply_coefficient_schedule(potential: Any, step: int) -> None:
    """Set a scheduled potential's coefficient for ``step`` (no-op without a schedule)."""
    schedule = getattr(potential, "coefficient_schedule", None)
    if schedule:
        potential.coefficient = value_at(schedule, step, potential.coefficient_before_schedule)


class L2Potential(Potential):
    """``E = Σ_groups Σ_fields |field|²`` over learnable fields (weight decay as an energy).

    Args:
        fields: which fields (default: every learnable field, interaction weights included).
        groups: which groups (default all).
    """

    name = "l2"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        fields: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        super().__init__(coefficient=coefficient)
        self.fields = list(fields) if fields is not None else None
        self.groups = list(groups) if groups is not None else None

    def energy(self, system: System) -> Tensor:
        total = torch.zeros((), dtype=torch.float64, device=system.device)
        for group in system.groups.values():
            if self.groups is not None and group.name not in self.groups:
                continue
            for key, value in group.learnable_fields().items():
                if self.fields is None or key in self.fields:
                    total = total + value.double().pow(2).sum()
        if self.groups is None and (self.fields is None or "weight" in self.fields):
            for interaction in system.interactions:
                weight = getattr(interaction, "weight", None)
                if isinstance(weight, nn.Parameter):
                    total = total + weight.double().pow(2).sum()
        return total.to(system.dtype)


BUILTIN_POTENTIALS: tuple[type[Potential], ...] = (L2Potential,)
