"""Integrators: the update rule that moves positions, charges and weights.

Deterministic integrators wrap ``torch.optim`` (SGD, Adam, AdamW) rather than
re-implementing them; their step size (learning rate) may follow a schedule.
:class:`OverdampedLangevin` adds thermal noise to gradient descent:

.. math:: x_{t+1} = x_t - η ∇U(x_t) + \\sqrt{2 η k_B T}\\, ξ_t,\\quad ξ_t \\sim N(0, I)

(Euler–Maruyama for ``dx = -∇U dt + sqrt(2 kT) dW`` with ``dt = η``). At
``temperature = 0`` it is plain gradient descent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from particlesim.core.schedules import Constant, Cosine, Ramp, Schedule
from particlesim.errors import OptionError

ScheduleKind = Literal["constant", "cosine", "linear"]


def make_schedule(kind: str, start: float, stop: float, total_steps: int) -> Schedule:
    """A :class:`Schedule` named by ``kind`` from ``start`` to ``stop`` over ``total_steps``."""
    if kind == "constant":
        return Constant(start)
    if kind == "cosine":
        return Cosine(start, stop, max(total_steps, 1))
    if kind == "linear":
        return Ramp(start, stop, max(total_steps, 1))
    raise OptionError("schedule", f"unknown schedule {kind!r}; known: constant, cosine, linear")


class Integrator:
    """Base class. ``attach`` binds parameters; ``step(step)`` applies one update.

    The gradient of the total energy must already be in ``.grad`` when
    :meth:`step` is called (the simulation runs ``backward``).

    Args:
        lr: step size η (the learning rate).
        lr_schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay from
            ``lr`` to ``lr_final`` over the whole run.
        lr_final: the step size reached at the end of the run.
    """

    name: ClassVar[str] = ""

    def __init__(
        self, *, lr: float = 0.01, lr_schedule: ScheduleKind = "constant", lr_final: float = 0.0
    ) -> None:
        if not lr > 0:
            raise OptionError("lr", f"must be > 0, got {lr}")
        if lr_final < 0:
            raise OptionError("lr_final", f"must be >= 0, got {lr_final}")
        self.lr = float(lr)
        self.lr_schedule = lr_schedule
        self.lr_final = float(lr_final)
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: Schedule = Constant(self.lr)

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError  # pragma: no cover

    def attach(
        self,
        parameters: Iterable[nn.Parameter],
        *,
        total_steps: int,
        generator: torch.Generator | None = None,
    ) -> None:
        """Create the underlying optimiser for ``parameters`` and the step-size schedule."""
        params = [p for p in parameters if p.requires_grad]
        self.parameters = params
        self.optimizer = self.make_optimizer(params)
        self.schedule = make_schedule(self.lr_schedule, self.lr, self.lr_final, total_steps)
        self.generator = generator

    def step_size(self, step: int) -> float:
        """η at the absolute step ``step``."""
        return self.schedule(step)

    def zero_grad(self) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, step: int) -> None:
        """Apply one update at absolute step ``step`` using the gradients in ``.grad``."""
        assert self.optimizer is not None, "Integrator.attach() was not called"
        lr = self.step_size(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def observables(self, step: int) -> dict[str, float]:
        """Scalars worth recording (step size, temperature…)."""
        return {"lr": self.step_size(step)}

    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self.optimizer.load_state_dict(state["optimizer"])


class SGD(Integrator):
    """Stochastic gradient descent (``torch.optim.SGD``), optional momentum."""

    name = "sgd"

    def __init__(
        self,
        *,
        lr: float = 0.01,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, lr_schedule=lr_schedule, lr_final=lr_final)
        if not 0 <= momentum < 1:
            raise OptionError("momentum", f"must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            parameters,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov and self.momentum > 0,
            weight_decay=self.weight_decay,
        )


class Adam(Integrator):
    """Adam (``torch.optim.Adam``)."""

    name = "adam"
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def __init__(
        self,
        *,
        lr: float = 0.001,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        betas: list[float] | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, lr_schedule=lr_schedule, lr_final=lr_final)
        betas = [0.9, 0.999] if betas is None else list(betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise OptionError("betas", f"must be two numbers in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = (betas[0], betas[1]), eps, weight_decay

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return self.optimizer_class(
            parameters, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay (default 0.01)."""

    name = "adamw"
    optimizer_class = torch.optim.AdamW

    def __init__(
        self,
        *,
        lr: float = 0.001,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        betas: list[float] | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(
            lr=lr,
            lr_schedule=lr_schedule,
            lr_final=lr_final,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
        )


class OverdampedLangevin(Integrator):
    """Overdamped Langevin dynamics / SGLD: gradient descent plus noise ``sqrt(2 η kT) ξ``.

    Args:
        temperature: ``k_B T`` (the paper-specific ``(βn)^{-1}`` is a choice of
            this number); 0 gives plain gradient descent.
        temperature_schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` from
            ``temperature`` to ``temperature_final`` over the run (annealing).
    """

    name = "langevin"

    def __init__(
        self,
        *,
        lr: float = 0.01,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        temperature: float = 0.0,
        temperature_schedule: ScheduleKind = "constant",
        temperature_final: float = 0.0,
    ) -> None:
        super().__init__(lr=lr, lr_schedule=lr_schedule, lr_final=lr_final)
        if temperature < 0:
            raise OptionError("temperature", f"must be >= 0, got {temperature}")
        self.temperature = float(temperature)
        self.temperature_schedule_kind = temperature_schedule
        self.temperature_final = float(temperature_final)
        self.kT: Schedule = Constant(self.temperature)

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=self.lr)

    def attach(self, parameters, *, total_steps, generator=None) -> None:
        super().attach(parameters, total_steps=total_steps, generator=generator)
        self.kT = make_schedule(
            self.temperature_schedule_kind, self.temperature, self.temperature_final, total_steps
        )

    def step(self, step: int) -> None:
        super().step(step)
        kT = self.kT(step)
        if kT <= 0:
            return
        scale = math.sqrt(2.0 * self.step_size(step) * kT)
        with torch.no_grad():
            for p in self.parameters:
                noise = torch.randn(
                    p.shape, generator=self.generator, dtype=p.dtype, device="cpu"
                ).to(p.device)
                p.add_(noise, alpha=scale)

    def observables(self, step: int) -> dict[str, float]:
        return {"lr": self.step_size(step), "temperature": self.kT(step)}


BUILTIN_INTEGRATORS: tuple[type[Integrator], ...] = (SGD, Adam, AdamW, OverdampedLangevin)
