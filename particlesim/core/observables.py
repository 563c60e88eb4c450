"""Observables: named quantities measured along a run, computed once per due step.

An observable has a ``name`` (one snake_case name across Python, TOML, files),
a ``category`` (``scalar``, ``particle`` or ``pair``), a ``shape`` and a
``unit``. :meth:`Observable.compute` is called at most once per step; every
writer that is due at that step receives the same value (OpenMM's reporter
contract).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation

Category = Literal["scalar", "particle", "pair"]


class Observable:
    """Base class: subclasses set ``name`` (class attribute) and implement :meth:`compute`."""

    name: ClassVar[str] = ""
    category: ClassVar[Category] = "scalar"
    unit: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def compute(self, simulation: Simulation) -> Tensor | float:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionObservable(Observable):
    """An observable made from a name and a function of the simulation (for built-ins)."""

    def __init__(
        self,
        name: str,
        function: Callable[[Simulation], Tensor | float],
        unit: str = "",
        description: str = "",
        category: Category = "scalar",
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.function = function
        self.unit = unit  # type: ignore[misc]
        self.description = description  # type: ignore[misc]
        self.category = category  # type: ignore[misc]

    def compute(self, simulation: Simulation) -> Tensor | float:
        return self.function(simulation)


def _evaluation(split: str, index: int) -> Callable[[Simulation], float]:
    def compute(simulation: Simulation) -> float:
        return simulation.evaluate(split)[index]

    return compute


def builtin_observables() -> list[Observable]:
    """The observables every simulation offers."""
    return [
        FunctionObservable("step", lambda s: float(s.step), "", "absolute step count"),
        FunctionObservable("time", lambda s: s.time, "", "integrated step size Σ η"),
        FunctionObservable("epoch", lambda s: s.step / s.steps_per_epoch, "", "epochs done"),
        FunctionObservable("loss", lambda s: s.last_loss, "nats", "data loss of the last batch"),
        FunctionObservable(
            "train_loss",
            lambda s: s.running_mean("loss"),
            "nats",
            "mean data loss over the batches of the current epoch",
        ),
        FunctionObservable(
            "train_accuracy",
            lambda s: s.running_mean("correct"),
            "",
            "accuracy over the batches of the current epoch (during training)",
        ),
        FunctionObservable("val_loss", _evaluation("val", 0), "nats", "validation loss"),
        FunctionObservable("val_accuracy", _evaluation("val", 1), "", "validation accuracy"),
        FunctionObservable("test_loss", _evaluation("test", 0), "nats", "test loss"),
        FunctionObservable("test_accuracy", _evaluation("test", 1), "", "test accuracy"),
        FunctionObservable(
            "potential_energy",
            lambda s: float(s.system.potential_energy().detach()),
            "",
            "Σ c_p E_p of all potentials",
        ),
        FunctionObservable(
            "lr", lambda s: s.integrator.step_size(s.step), "", "integrator step size"
        ),
        FunctionObservable(
            "temperature",
            lambda s: s.integrator.observables(s.step).get("temperature", 0.0),
            "",
            "integrator temperature kT",
        ),
        FunctionObservable(
            "kinetic_energy",
            lambda s: s.integrator.observables(s.step).get("kinetic_energy", 0.0),
            "",
            "½ Σ v² of an integrator with velocities (underdamped_langevin, sghmc); else 0",
        ),
        FunctionObservable(
            "batch_size",
            lambda s: float(s.batch_size_at(max(s.step - 1, 0))),
            "",
            "rows in the last training batch (batch_schedule applied)",
        ),
        FunctionObservable("wall_time", lambda s: s.wall_time(), "s", "seconds spent in run()"),
    ]


def system_observables(system: Any) -> list[Observable]:
    """The observables a system offers by name: each potential's energy, each learned width.

    ``potential/<name>``: the potential's energy before its coefficient (so potentials of
    different strengths compare). ``width/<source>-><target>``: the kernel width σ of an
    interaction whose width is trained (``[C]`` for a multi-width kernel), in position units.
    Writers that were not given a list of observables record these too.
    """
    found: list[Observable] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        base, suffix = name, 2
        while name in used:
            name, suffix = f"{base}_{suffix}", suffix + 1
        used.add(name)
        return name

    for potential in system.potentials:
        found.append(
            FunctionObservable(
                unique(f"potential/{potential.name}"),
                lambda s, p=potential: _plain(p.energy(s.system)),
                "",
                f"energy of potential {potential.name!r} (before its coefficient)",
            )
        )
    for interaction in system.interactions:
        log_width = getattr(getattr(interaction, "kernel", None), "log_width", None)
        if isinstance(log_width, torch.nn.Parameter) and log_width.requires_grad:
            found.append(
                FunctionObservable(
                    unique(f"width/{interaction.source}->{interaction.target}"),
                    lambda s, w=log_width: _plain(w.exp()),
                    "length",
                    "learned kernel width σ",
                )
            )
    return found


def _plain(value: Tensor) -> Tensor | float:
    """A detached scalar as a float; a larger tensor detached."""
    value = value.detach()
    return float(value) if value.numel() == 1 else value


def to_python(value: Tensor | float) -> float | list:
    """A JSON-friendly copy (scalars to float, tensors to nested lists) of a value."""
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64)
        return value.item() if value.ndim == 0 else value.tolist()
    return float(value)
