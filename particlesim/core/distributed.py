"""Several processes training one system through ``torch.distributed`` (launched by torchrun).

``torchrun --nproc_per_node 2 -m particlesim run FILE --distributed`` starts two
processes; each calls :func:`init_distributed`, which reads the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group: NCCL when the run uses CUDA
(``LOCAL_RANK`` picks the GPU), gloo on the CPU.

Every rank builds the same system from the same seed and draws the same global
batch; :meth:`particlesim.core.simulation.Simulation.distribute` makes each rank
train on its contiguous slice of it and all-reduce the gradients (averaged)
and batch statistics once per step, so every rank holds the same state and the
result does not depend on the number of processes beyond floating-point
summation order. Rank 0 alone writes the trajectory, metrics, checkpoints and
summary; a checkpoint holds no per-rank state, so it resumes on any number of
processes.

Joining the group is plain torch and touches no file, like choosing the device
(:mod:`particlesim.core.device`), so it lives in core beside the ``Simulation``
it prepares; the CLI (``run --distributed``) and a user's own torchrun script
both call it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from particlesim.errors import ParticlesimError

#: Environment variables torchrun sets for every process.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: The command shown when ``--distributed`` is used outside torchrun.
LAUNCH_HINT = "torchrun --nproc_per_node N -m particlesim run FILE --distributed"


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str  # "cpu" or "cuda:<local_rank>"

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def agree(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (an all-reduce; every rank must call it)."""
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group torchrun prepared; raise ParticlesimError outside torchrun.

    ``device`` is the run's device choice (``auto``, ``cpu``, ``cuda``): CUDA
    runs use NCCL and the GPU ``LOCAL_RANK``; CPU runs use gloo.
    """
    import torch.distributed as dist

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ParticlesimError(
            f"--distributed needs the environment torchrun sets ({', '.join(missing)} "
            f"missing); launch with: {LAUNCH_HINT}"
        )
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
    except ValueError as exc:
        raise ParticlesimError(f"--distributed: bad torchrun environment: {exc}") from None
    if not dist.is_available():
        raise ParticlesimError("--distributed: this torch build has no torch.distributed")
    use_cuda = _wants_cuda(device)
    if use_cuda:
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ParticlesimError(
                f"--distributed: rank {rank} wants GPU {local_rank}, but "
                f"{torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
            )
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ParticlesimError(
                f"--distributed: cannot join the {backend} process group: {first}"
            ) from None
    return DistributedContext(
        rank, world_size, local_rank, backend, f"cuda:{local_rank}" if use_cuda else "cpu"
    )


def shutdown() -> None:
    """Leave the process group (no-op when not in one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
