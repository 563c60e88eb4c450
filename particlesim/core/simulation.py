"""Simulation: system + integrator + data + observables + writers, and the run loop."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from particlesim.core.integrators import Integrator
from particlesim.core.losses import CrossEntropy, Loss
from particlesim.core.moves import Move, move_observables
from particlesim.core.observables import (
    Observable,
    builtin_observables,
    system_observables,
    to_python,
)
from particlesim.core.potentials import apply_coefficient_schedule
from particlesim.core.seeds import derived_seed
from particlesim.core.system import System
from particlesim.core.triggers import bind_epoch
from particlesim.core.writers import Writer
from particlesim.errors import CheckpointError, DivergenceError, OptionError

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


#: Version of :meth:`Simulation.state_dict`'s layout (checked by :meth:`load_state_dict`).
STATE_VERSION = 1


@dataclass(frozen=True)
class Backoff:
    """Step-size back-off on divergence: restore the last good state, scale η, retry.

    When a step produces a non-finite loss, gradient or parameter, the state
    before that step is restored, the integrator's step size is multiplied by
    ``factor`` (for the rest of the run) and the same step is tried again, at
    most ``retries`` times in a row before the run stops with
    :class:`~particlesim.errors.DivergenceError`.
    """

    factor: float = 0.5
    retries: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise OptionError("backoff.factor", f"must be in (0, 1), got {self.factor}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 1:
            raise OptionError("backoff.retries", f"must be a positive integer, got {self.retries}")


class _StepDivergedError(Exception):
    """Internal: a step produced NaN/Inf (``updated``: after the integrator moved parameters)."""

    def __init__(self, message: str, *, updated: bool) -> None:
        super().__init__(message)
        self.updated = updated


class _Snapshot:
    """Parameters and optimiser state before an update, to undo an update that diverged.

    Costs one copy of the learnable parameters and of the optimiser's per-parameter
    state per step (Adam: 3 × the parameters), made into buffers allocated once.
    """

    def __init__(self) -> None:
        self.parameters: list[Tensor] | None = None
        self.optimizer_state: dict[int, dict[str, Any]] = {}
        self._buffers: dict[tuple[int, str], Tensor] = {}

    @torch.no_grad()
    def take(self, parameters: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
        if self.parameters is None:
            self.parameters = [p.detach().clone() for p in parameters]
        elif parameters:
            torch._foreach_copy_(self.parameters, [p.detach() for p in parameters])
        self.optimizer_state = {}
        for i, p in enumerate(parameters):
            state = optimizer.state.get(p)
            if not state:
                continue
            saved: dict[str, Any] = {}
            for key, value in state.items():
                if isinstance(value, Tensor):
                    buffer = self._buffers.get((i, key))
                    if (
                        buffer is None
                        or buffer.shape != value.shape
                        or buffer.dtype != value.dtype
                        or buffer.device != value.device
                    ):
                        buffer = self._buffers[(i, key)] = value.detach().clone()
                    else:
                        buffer.copy_(value)
                    saved[key] = buffer
                else:
                    saved[key] = value
            self.optimizer_state[i] = saved

    @torch.no_grad()
    def restore(self, parameters: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
        assert self.parameters is not None
        if parameters:
            torch._foreach_copy_([p.data for p in parameters], self.parameters)
        for i, p in enumerate(parameters):
            saved = self.optimizer_state.get(i)
            if saved is None:
                optimizer.state.pop(p, None)
                continue
            state = optimizer.state[p]
            for key, value in saved.items():
                if isinstance(value, Tensor):
                    if isinstance(state.get(key), Tensor) and state[key].shape == value.shape:
                        state[key].copy_(value)
                    else:
                        state[key] = value.clone()
                else:
                    state[key] = value


class Simulation:
    """Train a :class:`System` on a classification data set with an :class:`Integrator`.

    The run loop, one step at a time (HOOMD-style; writers see the state
    *after* the update, so ``Periodic(100)`` in a 500-step run writes at
    100, …, 500)::

        writers open (or, after load_state_dict, resume: trim to the checkpoint, append)
        if record_initial and step == 0 and not resumed: due writers report frame 0
        while step < total_steps:
            x, y  = next batch (the epoch's permutation is drawn from (seed, epoch);
                    an online data set draws a fresh batch from its sampler instead);
                    with world_size > 1 each rank takes its slice of the same batch
            U     = loss(system(x), y) + Σ_p c_p E_p(system)
            U.backward()   (world_size > 1: gradients all-reduced, averaged)
            guard: loss and gradients finite, else stop (state intact)
            clip gradients (clip_grad_norm), keep the pre-update state
            integrator.step(step)
            guard: parameters finite, else restore the pre-update state and stop
            step += 1
            due Monte Carlo moves (step % move.every == 0), in order
            due writers (ascending ``order``; a checkpoint writer last): compute the
                union of their observables once, report
            plugin hook particlesim_step_end(simulation, step)

    **Stopping.** Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the end of
    the current step; a second one stops at once. Either way writers are
    flushed and closed and the result's status is ``"interrupted"`` (a
    checkpoint writer saves a checkpoint when the stop came at a step boundary).

    **Divergence guard.** A NaN/Inf loss, gradient, or (after the update)
    parameter raises :class:`~particlesim.errors.DivergenceError` naming the
    step, group and field (``step 17: non-finite gradient in group 'hidden1'
    field 'position'``); :attr:`last_good_state` then holds the
    :meth:`state_dict` before that step. The check is one fused max-abs norm over
    all gradients and one over all parameters per step (one device sync each); to
    undo an update that went non-finite, the parameters and optimiser state are
    copied before each update (one copy of each per step, into buffers allocated
    once). With ``backoff`` the step is retried with a smaller step size instead.

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
        moves: Monte Carlo moves (:mod:`particlesim.core.moves`), each tried every
            ``move.every`` steps right after that step's update, in the order given.
        hooks: a plugin manager (``.hook`` and ``.has_impls``) for lifecycle hooks.
        record_initial: write frame 0 before the first step.
        clip_grad_norm: clip the total gradient norm to this value
            (:func:`torch.nn.utils.clip_grad_norm_`); ``None``: no clipping.
        backoff: retry a diverging step with a smaller step size (:class:`Backoff`).
        rank, world_size: this process's place in a ``torch.distributed`` group
            (initialised by the caller); every rank holds the same state and
            takes its slice of every global batch.
        log: where notices (back-offs) go; ``None``: nowhere.
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
        moves: Sequence[Move] = (),
        hooks: Any = None,
        record_initial: bool = False,
        clip_grad_norm: float | None = None,
        backoff: Backoff | None = None,
        rank: int = 0,
        world_size: int = 1,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise OptionError("batch_size", f"must be a positive integer, got {batch_size}")
        if epochs is not None and steps is not None:
            raise OptionError("run", "give either epochs or steps, not both")
        if clip_grad_norm is not None and not 0 < clip_grad_norm < math.inf:
            raise OptionError(
                "clip_grad_norm", f"must be a positive finite number, got {clip_grad_norm}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise OptionError("world_size", f"rank {rank} of world size {world_size}")
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
                f"the data set ({data.source}) is a fixed training set",
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
        self.noise_generator = torch.Generator().manual_seed(derived_seed(seed, 1, 1))
        #: Draws the batches of an online data set (its state is part of a checkpoint).
        self.data_generator = torch.Generator().manual_seed(derived_seed(seed, 1_000_003, 999_983))
        integrator.attach(
            system.parameters(), total_steps=self.total_steps, generator=self.noise_generator
        )
        self.moves = list(moves)
        for move in self.moves:
            move.setup(self.system)  # e.g. the neuron swap's id fields, before writers open
        self.observables: dict[str, Observable] = {}
        own = [*system_observables(system), *move_observables(self.moves)]
        for observable in [*builtin_observables(), *own, *observables]:
            self.observables[observable.name] = observable
        for writer in writers:
            include = getattr(writer, "include_defaults", None)
            if callable(include):
                include(tuple(o.name for o in own))
        # Stable sort: a checkpoint writer (order 100) reports after the file writers.
        self.writers = sorted(writers, key=lambda w: getattr(w, "order", 0))
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
        self.clip_grad_norm = clip_grad_norm
        self.backoff = backoff
        self.rank = rank
        self.world_size = world_size
        self.log = log
        #: Facts about the run that writers record (scenario text, seed, versions, data source).
        self.metadata: dict[str, Any] = {"seed": seed, "data_source": data.source}
        self.step = 0
        #: Integrated step size Σ_s η_s: the "physical" time of gradient flow (dt = η),
        #: recorded as H5MD ``time`` beside ``step``.
        self.time = 0.0
        self.last_loss: Tensor | float = float("nan")
        #: After a DivergenceError: the :meth:`state_dict` before the step that diverged.
        self.last_good_state: dict[str, Any] | None = None
        self._running: dict[str, Tensor] = {}
        self._running_count = 0
        self._eval_cache: dict[tuple[int, str], tuple[float, float]] = {}
        self._order_epoch = -1  # the epoch whose batch order is in self._order
        self._wall_start: float | None = None
        self._wall_before = 0.0
        self._writer_states: list[dict[str, Any]] | None = None  # set by load_state_dict
        self._parameters = list(integrator.parameters)
        self._parameter_names = _parameter_names(system, self._parameters)
        self._snapshot = _Snapshot()
        self._stop_requested: str | None = None
        self._stop_agreed = False
        self._at_boundary = True

    def distribute(self, rank: int, world_size: int) -> None:
        """Train as rank ``rank`` of ``world_size`` processes (``torch.distributed`` is set up).

        Every rank takes its slice of every global batch; gradients and batch
        statistics are all-reduced once per step, so all ranks hold the same state.
        Only rank 0 should have writers.
        """
        if isinstance(world_size, bool) or world_size < 1 or not 0 <= rank < world_size:
            raise OptionError("world_size", f"rank {rank} of world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

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

    @property
    def at_step_boundary(self) -> bool:
        """True between steps (every writer has reported the last step): a consistent state."""
        return self._at_boundary

    @torch.no_grad()
    def evaluate(
        self, split: Literal["train", "val", "test"], *, fresh: bool = False
    ) -> tuple[float, float]:
        """``(mean loss, accuracy)`` of the current system on a split (cached per step).

        ``fresh``: measure again even if this step's result is cached (the system was
        changed outside a step, e.g. its weights pruned).
        """
        key = (self.step, split)
        if key in self._eval_cache and not fresh:
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

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (plain containers and CPU tensors).

        Holds the system's tensors, the integrator's state (optimiser, step-size
        scale, noise generator), the step, time and epoch running sums, the data
        generators, the data-loader position, the wall time so far and each
        writer's progress. Process-wide RNGs (torch, CUDA, numpy, ``random``)
        are the checkpoint file's business (:mod:`particlesim.io.checkpoint`).
        """
        epoch, index = divmod(self.step, self.steps_per_epoch)
        last_loss = self.last_loss
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "time": self.time,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "last_loss": float(last_loss),
            "running": {k: v.detach().to("cpu", copy=True) for k, v in self._running.items()},
            "running_count": self._running_count,
            "wall_time": self.wall_time(),
            "system": {
                k: v.detach().to("cpu", copy=True) for k, v in self.system.state_dict().items()
            },
            "integrator": _cpu_copy(self.integrator.state_dict()),
            "generators": {
                "noise": self.noise_generator.get_state(),
                "data": self.data_generator.get_state(),
            },
            "data_position": {
                "epoch": epoch,
                "index": index,
                "order_epoch": epoch,
                "batch_size": self.batch_size,
                "train_rows": int(self.train_x.shape[0]),
            },
            "world_size": self.world_size,
            "writers": [{"name": w.name, "state": w.state_dict()} for w in self.writers],
            "moves": [{"name": m.name, "state": m.state_dict()} for m in self.moves],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the next :meth:`run` resumes the writers).

        The run length may differ (to extend a finished run); the data set,
        batch size and network must be the ones the state was saved with. The
        world size may differ: the state is the same on every rank.
        """
        try:
            version = state["version"]
            if version != STATE_VERSION:
                raise CheckpointError(
                    f"simulation state version {version}; this particlesim reads {STATE_VERSION}"
                )
            position = state["data_position"]
            if (position["train_rows"], position["batch_size"]) != (
                int(self.train_x.shape[0]),
                self.batch_size,
            ):
                raise CheckpointError(
                    f"saved with {position['train_rows']} training rows in batches of "
                    f"{position['batch_size']}, this run has {int(self.train_x.shape[0])} rows "
                    f"in batches of {self.batch_size}"
                )
            try:
                self.system.load_state_dict(state["system"])
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise CheckpointError(f"the network does not match: {first}") from None
            self.integrator.load_state_dict(state["integrator"])
            self.noise_generator.set_state(state["generators"]["noise"])
            self.data_generator.set_state(state["generators"]["data"])
            self.step = int(state["step"])
            self.time = float(state["time"])
            self.last_loss = float(state["last_loss"])
            self._running = {k: v.to(self.device) for k, v in state["running"].items()}
            self._running_count = int(state["running_count"])
            self._wall_before = float(state["wall_time"])
            writers = list(state["writers"])
            moves = list(state.get("moves", []))
            if [m["name"] for m in moves] != [m.name for m in self.moves]:
                raise CheckpointError(
                    f"the run's moves [{', '.join(m.name for m in self.moves)}] differ from the "
                    f"checkpoint's [{', '.join(m['name'] for m in moves)}]"
                )
            for move, saved in zip(self.moves, moves, strict=True):
                move.load_state_dict(saved["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"incomplete or damaged simulation state ({exc!r})") from None
        if self.writers:  # ranks other than 0 have no writers and ignore theirs
            saved = [w["name"] for w in writers]
            here = [w.name for w in self.writers]
            if saved != here:
                raise CheckpointError(
                    f"the run's writers [{', '.join(here)}] differ from the checkpoint's "
                    f"[{', '.join(saved)}]"
                )
            self._writer_states = [w["state"] for w in writers]
        else:
            self._writer_states = []
        self._eval_cache = {}
        self._order_epoch = -1

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
        generator = torch.Generator().manual_seed(derived_seed(self.seed, 1_000_003, epoch))
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

    def _open_writers(self, out_dir: Any) -> bool:
        """Open (or, after :meth:`load_state_dict`, resume) every writer; True when resumed."""
        states = self._writer_states
        self._writer_states = None
        opened: list[Writer] = []
        try:
            for i, writer in enumerate(self.writers):
                if states is None:
                    writer.open(self, out_dir)
                else:
                    writer.resume(self, out_dir, states[i])
                opened.append(writer)
        except BaseException:
            for writer in opened:
                writer.close("failed")
            raise
        return states is not None

    def _install_stop_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM ask the loop to stop after the current step (a second one: now)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested is not None:
                raise KeyboardInterrupt
            self._stop_requested = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except (ValueError, OSError):  # not settable here (embedded interpreters)
                continue
        return previous

    def run(
        self, *, progress: Callable[[Simulation], None] | None = None, out_dir: Any = None
    ) -> RunResult:
        """Run until ``total_steps``; see the class docstring for the loop."""
        resumed = self._open_writers(out_dir)
        self._call_hook("particlesim_simulation_start", simulation=self)
        step_end = self.hooks is not None and self.hooks.has_impls("particlesim_step_end")
        status: Status = "completed"
        self._stop_requested = None
        self._stop_agreed = False
        previous_handlers = self._install_stop_handlers()
        self._wall_start = time.perf_counter()
        try:
            if self.world_size > 1:
                self._broadcast_state()
            if self.record_initial and self.step == 0 and not resumed:
                self._report(0)
            self.system.train()
            while self.step < self.total_steps:
                if self.step % self.steps_per_epoch == 0:
                    self._running = {}
                    self._running_count = 0
                self._at_boundary = False
                generators = (self.noise_generator.get_state(), self.data_generator.get_state())
                self._train_step(*self._next_batch(), generators)
                self.time += self.integrator.step_size(self.step)
                self.step += 1
                for move in self.moves:
                    move.apply(self, self.step)
                self._report(self.step)
                self._at_boundary = True
                if step_end:
                    self.hooks.hook.particlesim_step_end(simulation=self, step=self.step)
                if progress is not None:
                    progress(self)
                if self._stop_requested is not None and (self.world_size == 1 or self._stop_agreed):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException:
            status = "failed"
            raise
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
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

    # -- one step -----------------------------------------------------------------------

    def _train_step(self, x: Tensor, y: Tensor, generators: tuple[Tensor, Tensor]) -> None:
        """One update with the divergence guard (and back-off retries) around it."""
        attempt = 0
        while True:
            try:
                self._attempt_step(x, y)
                return
            except _StepDivergedError as diverged:
                if diverged.updated:
                    self._snapshot.restore(self._parameters, self.integrator.optimizer)
                self.noise_generator.set_state(generators[0])
                self.integrator.zero_grad()
                message = str(diverged)
                if self.backoff is not None and attempt < self.backoff.retries:
                    attempt += 1
                    scale = getattr(self.integrator, "step_scale", None)
                    if scale is None:
                        raise DivergenceError(
                            f"{message}; the {type(self.integrator).__name__} integrator "
                            "cannot scale its step size (backoff)"
                        ) from None
                    self.integrator.step_scale = scale * self.backoff.factor
                    if self.log is not None:
                        self.log(
                            f"warning: {message}; step size scaled by {self.backoff.factor:g} "
                            f"(now x{self.integrator.step_scale:g}), retrying "
                            f"({attempt}/{self.backoff.retries})"
                        )
                    continue
                self.last_good_state = self.state_dict()
                self.last_good_state["generators"] = {
                    "noise": generators[0],
                    "data": generators[1],
                }
                if self.backoff is not None:
                    message += f" (after {self.backoff.retries} step-size back-offs)"
                raise DivergenceError(message) from None

    def _attempt_step(self, x: Tensor, y: Tensor) -> None:
        for potential in self.system.potentials:  # a scenario's coefficient_schedule
            apply_coefficient_schedule(potential, self.step)
        self.integrator.zero_grad()
        rows = y.shape[0]
        if self.world_size > 1:
            x, y = (
                _rank_slice(x, self.rank, self.world_size),
                _rank_slice(y, self.rank, self.world_size),
            )
        logits = self.system(x)
        if self.world_size > 1:
            # Each rank's share of the global mean; the all-reduce averages over ranks.
            loss_sum = self.loss(logits, y, reduction="sum")
            data_term = loss_sum * (self.world_size / rows)
        else:
            loss_sum = data_term = self.loss(logits, y)
        total = (
            data_term + self.system.potential_energy() if len(self.system.potentials) else data_term
        )
        total.backward()
        hits = self.loss.correct(logits.detach(), y)
        if self.world_size > 1:
            loss_value, hits = self._all_reduce(loss_sum.detach(), hits, rows)
        else:
            loss_value = loss_sum.detach()
        self._check_gradients(loss_value)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._parameters, self.clip_grad_norm, foreach=True)
        assert self.integrator.optimizer is not None
        self._snapshot.take(self._parameters, self.integrator.optimizer)
        try:
            self.integrator.step(self.step)
        except RuntimeError as exc:  # e.g. a step size that overflows the parameters' dtype
            if "overflow" not in str(exc):
                raise
            raise _StepDivergedError(
                f"step {self.step + 1}: the update overflowed ({str(exc).strip()}); lower the "
                "step size (integrator.lr)",
                updated=True,
            ) from None
        self._check_parameters()
        fraction = (
            torch.full((), float("nan"), dtype=torch.float64, device=loss_value.device)
            if hits is None
            else hits.double() / rows
        )
        if self._running:
            self._running["loss"] += loss_value.double()
            self._running["correct"] += fraction
        else:
            self._running = {"loss": loss_value.double(), "correct": fraction}
        self._running_count += 1
        self.last_loss = loss_value

    def _check_gradients(self, loss_value: Tensor) -> None:
        """One fused finiteness check of the loss and every gradient (one device sync)."""
        grads = [p.grad for p in self._parameters if p.grad is not None]
        # Max-abs norms are NaN/Inf exactly when an entry is, and never overflow.
        norms = torch._foreach_norm(grads, ord=math.inf) if grads else []
        checks = torch.stack([loss_value.to(torch.float64), *(n.to(torch.float64) for n in norms)])
        if bool(torch.isfinite(checks).all()):
            return
        if not torch.isfinite(loss_value) and self.step == 0:
            # No update has happened: the step size cannot be the cause.
            raise _StepDivergedError(
                f"step 1: the loss is {float(loss_value)} before any update: the network's "
                "initial output is not finite (check its kernels, activations, initial spreads "
                "and the data)",
                updated=False,
            )
        if not torch.isfinite(loss_value):
            raise _StepDivergedError(
                f"step {self.step + 1}: the loss became {float(loss_value)}; lower the step size "
                "(integrator.lr) or check the initial spreads",
                updated=False,
            )
        for p in self._parameters:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise _StepDivergedError(
                    f"step {self.step + 1}: non-finite gradient in {self._parameter_names[id(p)]}",
                    updated=False,
                )
        raise _StepDivergedError(f"step {self.step + 1}: non-finite gradient norm", updated=False)

    def _check_parameters(self) -> None:
        """One fused finiteness check of every learnable field after the update."""
        if not self._parameters:
            return
        norms = torch._foreach_norm([p.detach() for p in self._parameters], ord=math.inf)
        if bool(torch.isfinite(torch.stack([n.to(torch.float64) for n in norms])).all()):
            return
        for p in self._parameters:
            if not bool(torch.isfinite(p).all()):
                raise _StepDivergedError(
                    f"step {self.step + 1}: non-finite value in {self._parameter_names[id(p)]} "
                    "after the update",
                    updated=True,
                )
        raise _StepDivergedError(f"step {self.step + 1}: non-finite parameter norm", updated=True)

    # -- several processes --------------------------------------------------------------

    def _all_reduce(
        self, loss_sum: Tensor, hits: Tensor | None, rows: int
    ) -> tuple[Tensor, Tensor | None]:
        """Average gradients over ranks and sum the batch statistics: one collective.

        The buffer holds every gradient, the local loss sum and hit count, and a
        stop flag (so that a signal to one rank stops all of them at the same step).
        """
        import torch.distributed as dist

        grads = [p.grad for p in self._parameters if p.grad is not None]
        dtype = grads[0].dtype if grads else loss_sum.dtype
        nan = torch.full((), float("nan"), device=loss_sum.device)
        stats = torch.stack(
            [
                loss_sum.to(dtype),
                (nan if hits is None else hits).to(device=loss_sum.device, dtype=dtype),
                torch.tensor(float(self._stop_requested is not None), device=loss_sum.device).to(
                    dtype
                ),
            ]
        )
        flat = torch.cat([*(g.reshape(-1) for g in grads), stats])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g)).div_(self.world_size)
            offset += g.numel()
        loss_total, hits_total, stop = flat[offset:]
        if float(stop) > 0:  # every rank sees the same flag: all stop after this step
            self._stop_requested = self._stop_requested or "another rank"
            self._stop_agreed = True
        return loss_total / rows, None if hits is None else hits_total

    def _broadcast_state(self) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in self.system.state_dict().values():
                dist.broadcast(tensor, 0)


def _rank_slice(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous share of a global batch (``torch.tensor_split`` sizes)."""
    return torch.tensor_split(batch, world_size)[rank]


def _cpu_copy(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors with every tensor on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _parameter_names(system: System, parameters: Sequence[Tensor]) -> dict[int, str]:
    """How messages name each learnable tensor: ``group 'hidden1' field 'position'``."""
    names: dict[int, str] = {}
    for group_name, group in system.groups.items():
        for field_name, parameter in group.learnable_fields().items():
            names.setdefault(id(parameter), f"group {group_name!r} field {field_name!r}")
    for interaction in system.interactions:
        label = f"{interaction.source}->{interaction.target}"
        for name, parameter in interaction.named_parameters():
            names.setdefault(id(parameter), f"interaction {label!r} parameter {name!r}")
    for name, parameter in system.named_parameters():
        names.setdefault(id(parameter), f"parameter {name!r}")
    for i, parameter in enumerate(parameters):
        names.setdefault(id(parameter), f"parameter #{i}")
    return names
