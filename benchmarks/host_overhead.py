"""Host-side (Python and dispatcher) cost of the fused path, with its kernels stubbed out.

At MNIST widths a GPU finishes each kernel in microseconds, so a training step of a small
network is bound by the time the host takes to issue it. This script measures that time on
any machine: the Triton launches of the fused path are replaced by no-ops (validation,
autograd bookkeeping, argument packing and allocation remain), the tensors are tiny, and the
baseline is ``nn.Linear`` (one call) and the same-width MLP (one Adam step) measured in the
same run. The ratios bound what a GPU epoch can reach without CUDA graphs. An empty
``autograd.Function`` of the same inputs (it allocates its output and gradients, nothing
else) gives the floor that any layer written as a Python autograd function pays.

    python benchmarks/host_overhead.py            # prints µs per call / step and the ratios
    python benchmarks/host_overhead.py --out host.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from particlesim.kernels import GaussianKernel  # noqa: E402
from particlesim.kernels import fused as fused_module  # noqa: E402

#: Widths of the networks of the step comparison (tiny: the host's cost does not depend on them).
SIZES = (16, 16, 16, 10)


def per_call_us(step: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean wall time of ``calls`` calls, in µs."""
    for _ in range(max(10, calls // 10)):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed round")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    fused_module._build()
    saved = fused_module._launch, fused_module._interpreting, torch.get_num_threads()
    fused_module._launch = lambda *a, **k: None  # no kernels: the host's share alone
    fused_module._interpreting = lambda: True  # so CPU tensors are accepted
    torch.set_num_threads(1)
    try:
        results = _measure(args.calls)
    finally:
        fused_module._launch, fused_module._interpreting = saved[:2]
        torch.set_num_threads(saved[2])
    print(f"host cost, fused kernels stubbed out; torch {torch.__version__}, 1 thread")
    print(f"  one layer, forward + backward: nn.Linear {results['linear_call_us']:7.1f} us")
    print(
        f"                                 fused     {results['fused_call_us']:7.1f} us"
        f"   ratio {results['call_ratio']:.2f}"
    )
    print(
        f"      an empty autograd.Function {results['floor_call_us']:7.1f} us"
        f"   ratio {results['floor_ratio']:.2f}"
    )
    print(f"  one Adam step, {SIZES}: MLP      {results['mlp_step_us']:7.1f} us")
    print(
        f"                                   particle {results['particle_step_us']:7.1f} us"
        f"   ratio {results['step_ratio']:.2f}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return results


class _EmptyFunction(torch.autograd.Function):
    """The least a Python ``autograd.Function`` of the same inputs costs: it allocates its
    output and its gradients and computes nothing (the floor under the fused layer's cost)."""

    @staticmethod
    def forward(ctx: Any, *inputs: torch.Tensor) -> torch.Tensor:
        x, target = inputs[0], inputs[1]
        ctx.save_for_backward(*inputs)
        return x.new_empty(x.shape[0], target.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


def _measure(calls: int) -> dict[str, float]:
    """µs per layer call and per training step, and the fused / dense ratios."""
    torch.manual_seed(0)

    B, N, M, D = 4, 16, 16, 3
    x = torch.randn(B, N, requires_grad=True)
    target = nn.Parameter(torch.randn(M, D))
    source = nn.Parameter(torch.randn(N, D))
    charge = nn.Parameter(torch.randn(M))
    kernel = GaussianKernel(width=1.0, learnable_width=True)
    linear = nn.Linear(N, M)
    grad = torch.ones(B, M)
    from particlesim.kernels import kernel_matmul

    results: dict[str, float] = {
        "linear_call_us": per_call_us(lambda: linear(x).backward(grad), calls),
        "fused_call_us": per_call_us(
            lambda: kernel_matmul(x, kernel, target, source, charge, backend="fused").backward(
                grad
            ),
            calls,
        ),
    }
    floor = _EmptyFunction.apply
    results["floor_call_us"] = per_call_us(
        lambda: floor(x, target, source, charge, kernel.log_width).backward(grad), calls
    )
    results["call_ratio"] = results["fused_call_us"] / results["linear_call_us"]
    results["floor_ratio"] = results["floor_call_us"] / results["linear_call_us"]

    from particlesim_lange import ParticleNetwork

    from particlesim.core.model import MLP
    from particlesim.plugins.manager import PluginManager

    registries = PluginManager().load().registries
    sizes = list(SIZES)
    inputs, labels = torch.randn(B, sizes[0]), torch.randint(0, 10, (B,))
    for label, model in (
        ("mlp", MLP(sizes=sizes, activation="tanh")),
        ("particle", ParticleNetwork(sizes=sizes, dim=3, backend="fused")),
    ):
        system = model.build(
            registries=registries,
            input_size=sizes[0],
            num_classes=10,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float32,
        )
        optimizer = torch.optim.Adam(system.parameters(), lr=1e-3, foreach=True)

        def step(system: nn.Module = system, optimizer: torch.optim.Optimizer = optimizer):
            loss = F.cross_entropy(system(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results[f"{label}_step_us"] = per_call_us(step, max(1, calls // 4))
    results["step_ratio"] = results["particle_step_us"] / results["mlp_step_us"]
    return results


if __name__ == "__main__":
    main()
