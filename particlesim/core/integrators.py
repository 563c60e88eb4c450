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
from torch import Tensor, nn

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


def _check_finite_nonnegative(**options: float) -> None:
    """Each option a finite number >= 0 (torch.optim refuses the rest only when attached)."""
    for key, value in options.items():
        if not (math.isfinite(value) and value >= 0):
            raise OptionError(key, f"must be a finite number >= 0, got {value}")


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
        #: Multiplies the scheduled step size (a divergence back-off lowers it; 1 otherwise).
        self.step_scale = 1.0

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
        try:
            self.optimizer = self.make_optimizer(params)
        except ValueError as exc:  # torch.optim's own checks: "Invalid epsilon value: -inf"
            if isinstance(exc, OptionError):
                raise
            raise OptionError("integrator", f"the optimiser refused its options: {exc}") from None
        self.schedule = make_schedule(self.lr_schedule, self.lr, self.lr_final, total_steps)
        self.generator = generator

    def step_size(self, step: int) -> float:
        """η at the absolute step ``step`` (the schedule times :attr:`step_scale`)."""
        return self.step_scale * self.schedule(step)

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
        """Optimiser state, step-size scale and noise generator state (schedules are
        pure functions of the step, so the step alone places them)."""
        assert self.optimizer is not None
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "step_scale": self.step_scale,
        }
        if getattr(self, "generator", None) is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_scale = float(state.get("step_scale", 1.0))
        if "generator" in state and getattr(self, "generator", None) is not None:
            self.generator.set_state(state["generator"])


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
        _check_finite_nonnegative(weight_decay=weight_decay)
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
        _check_finite_nonnegative(eps=eps, weight_decay=weight_decay)
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

    One step of size ``η = Δt`` (Euler–Maruyama) of

    .. math:: dz = -n ∇U(z)\\, dt + kT ∇\\log m(z)\\, dt + \\sqrt{2 kT}\\, dW

    where ``U`` is the simulation's energy (data loss plus potentials), ``n`` is
    ``particles`` and ``m`` an optional Gaussian reference measure. Its stationary law is
    ``∝ exp(-n U / kT) · m`` (the Gibbs measure; for ``η → 0``).

    Mean-field networks (Rotskoff & Vanden-Eijnden 2018, "Error scaling — CLT" slide)
    descend ``L = n·ℓ`` at temperature ``(βn)^{-1}``: give ``particles = n`` and ``beta``.
    With ``temperature = 0`` (the default) this is plain gradient descent on ``n·U``; with
    an online data set it is SGD with batch ``P`` whose own noise is ``θ = Δt/P``
    (observable ``effective_noise``). The ``sgd`` integrator does the same descent with
    ``lr = n·Δt``, but then its step size is not the time step ``Δt``.

    Args:
        temperature: ``k_B T`` directly; 0 gives plain gradient descent. Not with ``beta``.
        temperature_schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` from
            ``temperature`` to ``temperature_final`` over the run (annealing).
        temperature_final: the temperature reached at the end of the schedule.
        beta: β of the mean-field temperature ``kT = 1/(β·particles)`` (instead of
            ``temperature``); ``inf`` is zero temperature.
        beta_final: the β reached at the end of ``temperature_schedule`` (instead of
            ``temperature_final``).
        particles: ``n``, the number the energy's gradient is multiplied by (gradient
            descent on ``L = n·U``); 1 leaves the gradient as it is.
        reference_std: ``s`` of a Gaussian reference measure ``m = N(0, s² I)`` on every
            learnable parameter, adding the confining drift ``kT ∇log m = -kT z/s²``
            (the slides' ``(βn)^{-1} ∇ log m``); ``None``: no reference measure (``m = 1``).
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
        beta: float | None = None,
        beta_final: float | None = None,
        particles: int = 1,
        reference_std: float | None = None,
    ) -> None:
        super().__init__(lr=lr, lr_schedule=lr_schedule, lr_final=lr_final)
        if not temperature >= 0:
            raise OptionError("temperature", f"must be >= 0, got {temperature}")
        if not temperature_final >= 0:
            raise OptionError("temperature_final", f"must be >= 0, got {temperature_final}")
        if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
            raise OptionError("particles", f"must be a positive integer, got {particles!r}")
        if reference_std is not None and not (0 < reference_std < math.inf):
            raise OptionError("reference_std", f"must be > 0 and finite, got {reference_std}")
        for key, value in (("beta", beta), ("beta_final", beta_final)):
            if value is not None and not value > 0:
                raise OptionError(
                    key, f"must be > 0 (the temperature is 1/(beta·particles)), got {value}"
                )
        if beta is not None and temperature != 0:
            raise OptionError("beta", "give either temperature or beta, not both")
        if beta_final is not None and temperature_final != 0:
            raise OptionError("beta_final", "give either temperature_final or beta_final, not both")
        self.beta, self.beta_final = beta, beta_final
        self.particles = int(particles)
        self.reference_std = reference_std
        if beta is not None:
            temperature = 1.0 / (beta * particles)
        if beta_final is not None:
            temperature_final = 1.0 / (beta_final * particles)
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
        kT = self.kT(step)
        if self.particles != 1 or (self.reference_std is not None and kT > 0):
            confinement = 0.0 if self.reference_std is None else kT / self.reference_std**2
            with torch.no_grad():
                for p in self.parameters:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    if self.particles != 1:
                        p.grad.mul_(self.particles)
                    if confinement:
                        p.grad.add_(p, alpha=confinement)  # -kT ∇log m = kT z / s²
        super().step(step)
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


def _check_temperature(temperature: float, temperature_final: float) -> None:
    for key, value in (("temperature", temperature), ("temperature_final", temperature_final)):
        if not (value >= 0 and math.isfinite(value)):
            raise OptionError(key, f"must be a finite number >= 0, got {value}")


class _VelocityOptimizer(torch.optim.Optimizer):
    """A torch optimiser whose state is one velocity per parameter (checkpointed with it);
    subclasses give the update of one parameter, ``_update``."""

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float, friction: float) -> None:
        super().__init__(params, {"lr": lr, "friction": friction, "kT": 0.0})
        self.generator: torch.Generator | None = None

    def _noise(self, p: Tensor) -> Tensor:
        noise = torch.randn(p.shape, generator=self.generator, dtype=p.dtype)
        return noise.to(p.device)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                    state["half_step"] = 0.0
                self._update(p, state, group["lr"], group["friction"], group["kT"])

    def _update(self, p: Tensor, state: dict, lr: float, friction: float, kT: float) -> None:
        raise NotImplementedError  # pragma: no cover


class _BAOAB(_VelocityOptimizer):
    """One BAOAB step per call (unit masses), one force evaluation per step.

    The closing half kick ``B`` of a step and the opening one of the next use the same force
    ``F(x_{n+1})``, so they are applied together at the start of the next step (``lr/2`` of
    each); the first step opens with a half kick. ``state["velocity"]`` therefore lags the
    positions by half a kick (the synchronous velocity is ``v + Δt/2 · F(x)``).
    """

    def _update(self, p: Tensor, state: dict, lr: float, friction: float, kT: float) -> None:
        dt, v = lr, state["velocity"]
        c1 = math.exp(-friction * dt)  # O: the exact Ornstein–Uhlenbeck step over Δt
        c2 = math.sqrt(max(0.0, (1.0 - c1 * c1) * kT))
        v.add_(p.grad, alpha=-(state["half_step"] + dt / 2))  # B (with the last step's B)
        p.add_(v, alpha=dt / 2)  # A
        if c1 != 1.0:
            v.mul_(c1)  # O
        if c2 > 0:
            v.add_(self._noise(p), alpha=c2)
        p.add_(v, alpha=dt / 2)  # A
        state["half_step"] = dt / 2


class _SGHMC(_VelocityOptimizer):
    """Stochastic-gradient HMC (Chen, Fox & Guestrin 2014, eq. 15 with β̂ = 0)."""

    def _update(self, p: Tensor, state: dict, lr: float, friction: float, kT: float) -> None:
        v = state["velocity"]
        v.mul_(1.0 - friction).add_(p.grad, alpha=-lr)
        scale = math.sqrt(2.0 * friction * lr * kT)
        if scale > 0:
            v.add_(self._noise(p), alpha=scale)
        p.add_(v)


class _ThermostattedIntegrator(Integrator):
    """An integrator with velocities, a friction and a temperature schedule."""

    optimizer_class: ClassVar[type[torch.optim.Optimizer]]

    def __init__(
        self,
        *,
        lr: float,
        lr_schedule: ScheduleKind,
        lr_final: float,
        friction: float,
        temperature: float,
        temperature_schedule: ScheduleKind,
        temperature_final: float,
    ) -> None:
        super().__init__(lr=lr, lr_schedule=lr_schedule, lr_final=lr_final)
        _check_temperature(temperature, temperature_final)
        self.friction = float(friction)
        self.temperature = float(temperature)
        self.temperature_schedule_kind = temperature_schedule
        self.temperature_final = float(temperature_final)
        self.kT: Schedule = Constant(self.temperature)

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return self.optimizer_class(parameters, lr=self.lr, friction=self.friction)

    def attach(self, parameters, *, total_steps, generator=None) -> None:
        super().attach(parameters, total_steps=total_steps, generator=generator)
        self.optimizer.generator = generator
        self.kT = make_schedule(
            self.temperature_schedule_kind, self.temperature, self.temperature_final, total_steps
        )

    def step(self, step: int) -> None:
        assert self.optimizer is not None, "Integrator.attach() was not called"
        for group in self.optimizer.param_groups:
            group["kT"] = self.kT(step)
        super().step(step)

    def kinetic_energy(self) -> float:
        """``½ Σ v²`` over every parameter's velocity (0 before the first step)."""
        assert self.optimizer is not None
        total = 0.0
        for state in self.optimizer.state.values():
            if "velocity" in state:
                total += 0.5 * float(state["velocity"].pow(2).sum())
        return total

    def observables(self, step: int) -> dict[str, float]:
        return {
            "lr": self.step_size(step),
            "temperature": self.kT(step),
            "kinetic_energy": self.kinetic_energy(),
        }


class UnderdampedLangevin(_ThermostattedIntegrator):
    """Underdamped Langevin dynamics by BAOAB splitting (Leimkuhler & Matthews 2013).

    Parameters are positions ``x`` with unit masses and velocities ``v``; ``U`` is the
    simulation's energy (data loss plus potentials) and one step of size ``Δt`` (``lr``) is

    * B: ``v ← v − Δt/2 ∇U(x)``;  A: ``x ← x + Δt/2 v``;
    * O: ``v ← e^{−γΔt} v + √((1 − e^{−2γΔt}) kT) ξ`` (the exact Ornstein–Uhlenbeck step);
    * A: ``x ← x + Δt/2 v``;  B: ``v ← v − Δt/2 ∇U(x)``.

    Its stationary law is ``∝ exp(−U/kT − |v|²/2kT)`` up to O(Δt²) in the positions (BAOAB's
    configurational accuracy), and at ``friction = 0``, ``temperature = 0`` it is velocity
    Verlet, conserving ``U + ½|v|²`` to O(Δt²). One gradient per step: the closing ``B`` of a
    step is applied with the opening one of the next (the observable ``kinetic_energy`` uses
    these half-kicked velocities). With a mini-batch gradient the dynamics carry the batch
    noise too (use ``sghmc``, which is built for that).

    Args:
        lr: the time step Δt (with the usual ``lr_schedule``).
        friction: γ ≥ 0 (per unit time); 0 is Hamiltonian dynamics.
        temperature: ``k_B T`` ≥ 0; ``temperature_schedule`` / ``temperature_final`` anneal it.
    """

    name = "underdamped_langevin"
    optimizer_class = _BAOAB

    def __init__(
        self,
        *,
        lr: float = 0.01,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        friction: float = 1.0,
        temperature: float = 0.0,
        temperature_schedule: ScheduleKind = "constant",
        temperature_final: float = 0.0,
    ) -> None:
        if not (friction >= 0 and math.isfinite(friction)):
            raise OptionError("friction", f"must be a finite number >= 0, got {friction}")
        super().__init__(
            lr=lr,
            lr_schedule=lr_schedule,
            lr_final=lr_final,
            friction=friction,
            temperature=temperature,
            temperature_schedule=temperature_schedule,
            temperature_final=temperature_final,
        )


class SGHMC(_ThermostattedIntegrator):
    """Stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin 2014, eq. 15).

    ``v ← (1 − α) v − η ∇Ũ(x) + √(2 α η kT) ξ``, then ``x ← x + v``, with ``Ũ`` the
    mini-batch energy, ``η`` the step size (``lr``) and ``α`` the friction (momentum decay).
    The mini-batch noise is not subtracted (β̂ = 0), as the paper's experiments do; at
    ``temperature = 0`` this is SGD with momentum ``1 − α``. At ``kT = 1`` with ``U`` the
    negative log-posterior it samples the posterior.

    Args:
        lr: η, the step size (with the usual ``lr_schedule``).
        friction: α in (0, 1].
        temperature: ``k_B T`` ≥ 0 of the injected noise (schedules as ``langevin``).
    """

    name = "sghmc"
    optimizer_class = _SGHMC

    def __init__(
        self,
        *,
        lr: float = 0.001,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
        friction: float = 0.1,
        temperature: float = 0.0,
        temperature_schedule: ScheduleKind = "constant",
        temperature_final: float = 0.0,
    ) -> None:
        if not 0 < friction <= 1:
            raise OptionError("friction", f"must be in (0, 1] (the momentum decay), got {friction}")
        super().__init__(
            lr=lr,
            lr_schedule=lr_schedule,
            lr_final=lr_final,
            friction=friction,
            temperature=temperature,
            temperature_schedule=temperature_schedule,
            temperature_final=temperature_final,
        )


BUILTIN_INTEGRATORS: tuple[type[Integrator], ...] = (
    SGD,
    Adam,
    AdamW,
    OverdampedLangevin,
    UnderdampedLangevin,
    SGHMC,
)
