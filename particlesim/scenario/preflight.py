"""Memory preflight: what a scenario's training needs, estimated before anything is allocated.

The network is built and one training step (forward, backward, integrator update) is
traced under PyTorch's fake tensors, which carry shapes and dtypes but no storage, so a
layer of 10^7 neurons costs nothing to trace. The estimate is

    parameters + gradients + optimiser state + the largest transient of the step

where the transient is tracked op by op, from building the network to the end of the
backward pass: every tensor an operation creates counts until it is released (views and
in-place results share their input's memory and do not count). It
covers what the chosen kernel path materialises (a whole ``[M, N]`` weight on the reference
path, one block on the chunked path) and the activations at the batch size; it does not
count the data set (already loaded when the check runs), allocator fragmentation, or
trajectory buffers (a few frames).

Tracing costs under a second the first time in a process (PyTorch's fake-tensor
machinery, ~0.1 s after that) and grows with the number of operations of a step. It runs
in ``particlesim validate --build`` (which prints the estimate) and before a run builds
its network (``particlesim run``, :class:`particlesim.runner.Runner`), so a scenario that
cannot fit is refused before anything is allocated or written. A step of more than
:data:`MAX_OPERATIONS` operations (e.g. the chunked kernel path's loop over millions of
blocks) is not traced to its end: the estimate is then a lower bound, parameters and
gradients, which still refuses a network whose weights alone cannot fit.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Operations traced at most: a step longer than this (e.g. the chunked kernel path's loop
#: over millions of blocks) is not estimated rather than traced for minutes.
MAX_OPERATIONS = 8_000


class TraceTooLongError(Exception):
    """The traced step took more than :data:`MAX_OPERATIONS` operations."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a scenario's training needs, by part, and what the process may use."""

    parameters: int
    gradients: int
    optimizer: int
    step: int
    batch_size: int
    available: int | None
    #: False when building or the step was too long to trace: ``total`` is then a lower
    #: bound (parameters and gradients where known, and what was live at the trace's peak).
    complete: bool = True

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.step

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def describe(self) -> str:
        """``~1.2 GB to train (parameters …, one step … at batch 128); 23 GB available``."""
        room = "" if self.available is None else f"; {_size(self.available)} available"
        if not self.complete:
            known = (
                f"parameters {_size(self.parameters)}, gradients {_size(self.gradients)}, "
                if self.parameters
                else ""
            )
            return (
                f"at least {_size(self.total)} ({known}{_size(self.step)} at the traced peak "
                f"of building and training; the rest was too long to trace){room}"
            )
        parts = (
            f"parameters {_size(self.parameters)}, gradients {_size(self.gradients)}, "
            f"optimiser {_size(self.optimizer)}, one step {_size(self.step)} at batch "
            f"{self.batch_size}"
        )
        return f"~{_size(self.total)} to train ({parts}){room}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def available_memory(device: Any) -> int | None:
    """Bytes this process may still allocate on ``device`` (None where unknown).

    CPU: ``MemAvailable`` of ``/proc/meminfo``, capped by a cgroup memory limit
    (``memory.max`` less ``memory.current``). CUDA: the device's free memory.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def estimate_memory(
    build_system: Any,
    integrator: Any,
    loss: Any,
    *,
    input_size: int | tuple[int, ...],
    batch_size: int,
    target: Any,
    device: Any,
) -> MemoryEstimate:
    """Trace building ``build_system()`` and one training step on fake tensors.

    Args:
        build_system: builds the :class:`~particlesim.core.System` (called under fake
            tensors, so nothing is allocated).
        integrator: the scenario's integrator (attached to the fake parameters).
        loss: the data loss ``loss(outputs, targets)``.
        input_size, batch_size: the batch's shape (``input_size``: the features, or the
            shape of one example, e.g. ``(time, features)`` for sequences).
        target: one row of the training targets (its dtype and trailing shape).
        device: where the run will train (for what is available).
    """
    import copy

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    integrator = copy.deepcopy(integrator)
    tracker = _Tracker()
    sizes = {"parameters": 0, "gradients": 0}

    def lower_bound() -> MemoryEstimate:
        """What a network too long to trace needs at least: parameters and gradients where
        known, and the peak of what was live while tracing (positions being built, …)."""
        known = sizes["parameters"] + sizes["gradients"]
        return MemoryEstimate(
            parameters=sizes["parameters"],
            gradients=sizes["gradients"],
            optimizer=0,
            step=max(0, tracker.peak - known),
            batch_size=batch_size,
            available=available_memory(device),
            complete=False,
        )

    with FakeTensorMode(allow_non_fake_inputs=True):
        try:
            with tracker:  # building may materialise weights too (e.g. to normalise charges)
                system = build_system()
                parameters = [p for p in system.parameters() if p.requires_grad]
                param_bytes = sum(p.numel() * p.element_size() for p in system.parameters())
                grad_bytes = sum(p.numel() * p.element_size() for p in parameters)
                sizes.update(parameters=param_bytes, gradients=grad_bytes)
                example = (input_size,) if isinstance(input_size, int) else tuple(input_size)
                x = torch.zeros(batch_size, *example, dtype=next(system.parameters()).dtype)
                y = torch.zeros((batch_size, *target.shape), dtype=target.dtype)
                value = loss(system(x), y)
                if len(system.potentials):
                    value = value + system.potential_energy()
                value.backward()
        except TraceTooLongError:
            return lower_bound()
        integrator.attach(parameters, total_steps=1)
        integrator.step(1)
        optimizer = getattr(integrator, "optimizer", None)
        state_bytes = 0
        if optimizer is not None:
            for state in optimizer.state.values():
                for item in state.values():
                    if isinstance(item, torch.Tensor) and item.dim() > 0:
                        state_bytes += item.numel() * item.element_size()
    return MemoryEstimate(
        parameters=param_bytes,
        gradients=grad_bytes,
        optimizer=state_bytes,
        step=tracker.peak,
        batch_size=batch_size,
        available=available_memory(device),
    )


class _Tracker:
    """Live bytes of the tensors operations create (under fake tensors), and their peak."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.operations = 0
        self._mode: Any = None

    def __enter__(self) -> _Tracker:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tracker.operations += 1
                if tracker.operations > MAX_OPERATIONS:
                    raise TraceTooLongError
                out = func(*args, **(kwargs or {}))
                if any(r.alias_info is not None for r in func._schema.returns):
                    return out  # a view or an in-place result: no new memory
                for tensor in tree_leaves(out):
                    if isinstance(tensor, torch.Tensor):
                        tracker._add(tensor)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)

    def _add(self, tensor: Any) -> None:
        size = math.prod(tensor.shape) * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._release, size)

    def _release(self, size: int) -> None:
        self.live -= size


def environment_allows_skipping() -> bool:
    """``PARTICLESIM_NO_PREFLIGHT=1`` turns the check off (for a machine that lies about memory)."""
    return os.environ.get("PARTICLESIM_NO_PREFLIGHT", "") not in ("", "0")
