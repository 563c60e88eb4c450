"""Simulation: system + integrator + data + observables + writers, and the run loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from particlesim.core.integrators import Integrator
from particlesim.core.losses import CrossEntropy, Loss
from particlesim.core.observables import Observable, builtin_observables, to_python
from particlesim.core.system import System
from particlesim.core.triggers import bind_epoch
from particlesim.core.writers import Writer
from particlesim.errors import DivergenceError, OptionError

if TYPE_CHECKING:
    from particlesim.data.datasets import DataSplits

Status = Literal["completed", "interrupted", "failed"]


@dataclass
class RunResult:
    """What :meth:`Simulation.run` returns."""

    status: Status
    step: int
    epoch: float
    wall_time: float
    last: dict[str, Any] = field(default_factory=dict)


class Simulation:
    """Train a :class:`System` on a classification data set with an :class:`Integrator`.

    The run loop, one step at a time (HOOMD-style; writers see the state
    *after* the update, so ``Periodic(100)`` in a 500-step run writes at
    100, …, 500)::

        if record_initial and step == 0: due writers report frame 0
        while step < total_steps:
            x, y  = next batch (the epoch's permutation is drawn from (seed, epoch);
                    an online data set draws a fresh batch from its sampler instead)
            U     = loss(system(x), y) + Σ_p c_p E_p(system)
            U.backward();  integrator.step(step);  step += 1
            due writers: compute the union of their observables once, report
            plugin hook particlesim_step_end(simulation, step)

    Ctrl-C ends the loop cleanly: writers are flushed and closed and the
    result's status is ``"interrupted"``. A NaN/Inf loss raises
    :class:`~particlesim.errors.DivergenceError` naming the step.

    Args:
        system: the network.
        integrator: the update rule (attached here).
        data: training/validation/test tensors.
        epochs, steps: run length (exactly one of them, or ``epochs`` by default 1).
        batch_size: training batch size.
        batch_schedule: ``[(step, size), …]``: from ``step`` on, batches have ``size``
            rows (e.g. a quench that raises the batch size at a given time). Online data
            sets only, since a fixed set's epochs are counted in batches of ``batch_size``.
        loss: the data loss (default: softmax cross-entropy on class indices).
        eval_batch_size: batch size of evaluation passes (no gradients).
        seed: seeds the batch order (and the integrator's noise).
        device: where to run (a resolved :class:`torch.device`).
        observables: extra observables beside the built-ins.
        writers: reporters of observables.
        hooks: a plugin manager (``.hook`` and ``.has_impls``) for lifecycle hooks.
        record_initial: write frame 0 before the first step.
    """

    def __init__(
        self,
        system: System,
        integrator: Integrator,
        data: DataSplits,
        *,
        epochs: float | None = None,
        steps: int | None = None,
        batch_size: int = 128,
        batch_schedule: Sequence[tuple[int, int]] = (),
        loss: Loss | None = None,
        eval_batch_size: int = 2000,
        seed: int = 0,
        device: torch.device | str = "cpu",
        observables: Sequence[Observable] = (),
        writers: Sequence[Writer] = (),
        hooks: Any = None,
        record_initial: bool = False,
    ) -> None:
        if batch_size < 1:
            raise OptionError("batch_size", f"must be a positive integer, got {batch_size}")
        if epochs is not None and steps is not None:
            raise OptionError("run", "give either epochs or steps, not both")
        self.device = torch.device(device)
        self.system = system.to(self.device)
        self.dtype = system.dtype
        self.data = data
        self.train_x = data.train_x.to(self.device, self.dtype)
        self.train_y = data.train_y.to(self.device)
        self.batch_size = batch_size
        self.batch_schedule = sorted((int(step), int(size)) for step, size in batch_schedule)
        for step, size in self.batch_schedule:
            if step < 0 or size < 1:
                raise OptionError(
                    "batch_schedule", f"entries are [step >= 0, size >= 1], got [{step}, {size}]"
                )
        if self.batch_schedule and data.sampler is None:
            raise OptionError(
                "batch_schedule",
                "needs an online data set (one that draws fresh batches each step); "
                f"{data.source!r} is a fixed training set",
            )
        self.loss = loss if loss is not None else CrossEntropy()
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        n_train = self.train_x.shape[0]
        if n_train == 0:
            raise OptionError("data", "the training set is empty")
        self.steps_per_epoch = math.ceil(n_train / batch_size)
        if steps is not None:
            if steps < 1:
                raise OptionError("steps", f"must be a positive integer, got {steps}")
            self.total_steps = int(steps)
        else:
            epochs = 1 if epochs is None else epochs
            if epochs <= 0:
                raise OptionError("epochs", f"must be > 0, got {epochs}")
            self.total_steps = max(1, round(epochs * self.steps_per_epoch))
        self.integrator = integrator
        self.noise_generator = torch.Generator().manual_seed(seed + 1)
        #: Draws the batches of an online data set (its state is part of a checkpoint).
        self.data_generator = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
        integrator.attach(
            system.parameters(), total_steps=self.total_steps, generator=self.noise_generator
        )
        self.observables: dict[str, Observable] = {}
        for observable in [*builtin_observables(), *observables]:
            self.observables[observable.name] = observable
        self.writers = list(writers)
        for writer in self.writers:
            writer.trigger = bind_epoch(writer.trigger, self.steps_per_epoch)
            for name in writer.observables:
                if name not in self.observables:
                    known = ", ".join(sorted(self.observables))
                    raise OptionError(
                        "observables",
                        f"writer {writer.name!r} asks for unknown observable "
                        f"{name!r}; known: {known}",
                    )
        self.hooks = hooks
        self.record_initial = record_initial
        #: Facts about the run that writers record (scenario text, seed, versions, data source).
        self.metadata: dict[str, Any] = {"seed": seed, "data_source": data.source}
        self.step = 0
        #: Integrated step size Σ_s η_s: the "physical" time of gradient flow (dt = η),
        #: recorded as H5MD ``time`` beside ``step``.
        self.time = 0.0
        self.last_loss = float("nan")
        self._running: dict[str, Tensor] = {}
        self._running_count = 0
        self._eval_cache: dict[tuple[int, str], tuple[float, float]] = {}
        self._order_epoch = -1  # the epoch whose batch order is in self._order
        self._wall_start: float | None = None
        self._wall_before = 0.0

    # -- measurements -------------------------------------------------------------------

    def running_mean(self, key: str) -> float:
        """Mean of ``key`` (``loss`` or ``correct``) over this epoch's batches so far."""
        if self._running_count == 0:
            return float("nan")
        return float(self._running[key]) / self._running_count

    def wall_time(self) -> float:
        """Seconds spent inside :meth:`run` (all calls together)."""
        if self._wall_start is None:
            return self._wall_before
        return self._wall_before + time.perf_counter() - self._wall_start

    @torch.no_grad()
    def evaluate(self, split: Literal["train", "val", "test"]) -> tuple[float, float]:
        """``(mean loss, accuracy)`` of the current system on a split (cached per step)."""
        key = (self.step, split)
        if key in self._eval_cache:
            return self._eval_cache[key]
        x = getattr(self.data, f"{split}_x")
        y = getattr(self.data, f"{split}_y")
        if x.shape[0] == 0:
            result = (float("nan"), float("nan"))
        else:
            was_training = self.system.training
            self.system.eval()
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            correct: Tensor | None = torch.zeros((), dtype=torch.float64, device=self.device)
            for start in range(0, x.shape[0], self.eval_batch_size):
                xb = x[start : start + self.eval_batch_size].to(self.device, self.dtype)
                yb = y[start : start + self.eval_batch_size].to(self.device)
                logits = self.system(xb)
                loss += self.loss(logits, yb, reduction="sum").double()
                hits = self.loss.correct(logits, yb)
                correct = None if hits is None or correct is None else correct + hits.double()
            self.system.train(was_training)
            accuracy = float("nan") if correct is None else float(correct) / x.shape[0]
            result = (float(loss) / x.shape[0], accuracy)
        self._eval_cache = {k: v for k, v in self._eval_cache.items() if k[0] == self.step}
        self._eval_cache[key] = result
        return result

    def measure(self, names: Sequence[str]) -> dict[str, Any]:
        """Compute each named observable once and return JSON-friendly values."""
        return {name: to_python(self.observables[name].compute(self)) for name in names}

    # -- the loop -----------------------------------------------------------------------

    def batch_size_at(self, step: int) -> int:
        """The batch size of the update that starts at ``step`` (``batch_schedule`` applied)."""
        size = self.batch_size
        for start, scheduled in self.batch_schedule:
            if step >= start:
                size = scheduled
        return size

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """The training batch of the current step: fresh samples, or the next rows in order."""
        if self.data.sampler is not None:
            x, y = self.data.sampler(self.batch_size_at(self.step), self.data_generator)
            return x.to(self.device, self.dtype), y.to(self.device)
        epoch, index = divmod(self.step, self.steps_per_epoch)
        if index == 0 or self._order_epoch != epoch:
            self._order = self._batch_order(epoch)
            self._order_epoch = epoch
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.train_x[rows], self.train_y[rows]

    def _batch_order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.train_x.shape[0], generator=generator).to(self.device)

    def _report(self, step: int) -> None:
        due = [(w, wanted) for w in self.writers if (wanted := w.wants(step)) is not None]
        if not due:
            return
        values = self.measure(sorted({name for _, wanted in due for name in wanted}))
        for writer, wanted in due:
            writer.report(self, step, {name: values[name] for name in wanted})

    def _call_hook(self, name: str, **kwargs: Any) -> None:
        if self.hooks is not None and self.hooks.has_impls(name):
            getattr(self.hooks.hook, name)(**kwargs)

    def run(
        self, *, progress: Callable[[Simulation], None] | None = None, out_dir: Any = None
    ) -> RunResult:
        """Run until ``total_steps``; see the class docstring for the loop."""
        for writer in self.writers:
            writer.open(self, out_dir)
        self._call_hook("particlesim_simulation_start", simulation=self)
        step_end = self.hooks is not None and self.hooks.has_impls("particlesim_step_end")
        status: Status = "completed"
        self._wall_start = time.perf_counter()
        try:
            if self.record_initial and self.step == 0:
                self._report(0)
            self.system.train()
            while self.step < self.total_steps:
                if self.step % self.steps_per_epoch == 0:
                    self._running = {}
                    self._running_count = 0
                self._train_step(*self._next_batch())
                self.time += self.integrator.step_size(self.step)
                self.step += 1
                self._report(self.step)
                if step_end:
                    self.hooks.hook.particlesim_step_end(simulation=self, step=self.step)
                if progress is not None:
                    progress(self)
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException:
            status = "failed"
            raise
        finally:
            self._wall_before = self.wall_time()
            self._wall_start = None
            for writer in self.writers:
                writer.close(status)
            self._call_hook("particlesim_simulation_finish", simulation=self, status=status)
        return RunResult(
            status,
            self.step,
            self.step / self.steps_per_epoch,
            self._wall_before,
            {
                "train_loss": self.running_mean("loss"),
                "train_accuracy": self.running_mean("correct"),
            },
        )

    def _train_step(self, x: Tensor, y: Tensor) -> None:
        self.integrator.zero_grad()
        logits = self.system(x)
        loss = self.loss(logits, y)
        total = loss + self.system.potential_energy() if len(self.system.potentials) else loss
        total.backward()
        loss_value = loss.detach()
        if not torch.isfinite(loss_value):
            raise DivergenceError(
                f"step {self.step + 1}: the loss became {float(loss_value)}; lower the step size "
                "(integrator.lr) or check the initial spreads"
            )
        self.integrator.step(self.step)
        hits = self.loss.correct(logits.detach(), y)
        fraction = (
            torch.full((), float("nan"), dtype=torch.float64, device=loss_value.device)
            if hits is None
            else hits.double() / y.shape[0]
        )
        if self._running:
            self._running["loss"] += loss_value.double()
            self._running["correct"] += fraction
        else:
            self._running = {"loss": loss_value.double(), "correct": fraction}
        self._running_count += 1
        self.last_loss = loss_value
