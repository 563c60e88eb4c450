"""Peak memory and time of a kernel interaction: materialised reference vs chunked path.

For each size ``(B, N, M)`` and each path this measures, in a fresh ``spawn``-ed process
(so one measurement's peak cannot hide another's):

* the peak extra resident memory of one forward + backward: ``ru_maxrss`` after it minus
  ``ru_maxrss`` after the inputs were allocated and a tiny warm-up (library initialisation)
  ran — so only what the interaction itself allocates is counted;
* the median wall time of ``--repeats`` further forward + backward passes.

The reference path materialises ``W [M, N]`` (plus the kernel's ``[M, N, D]`` intermediates
that autograd keeps), so its memory grows like ``N·M``; the chunked path keeps
O(B·(N + M) + chunk·N), so its memory grows like ``N + M`` at most (with the default
chunk of a fixed 2^20 kernel elements the block part does not grow at all). The script
prints the chunked/reference ratios and the growth from one size to the next against the
growth of ``N + M`` and of ``N·M``.

Usage::

    PYTHONPATH=. python benchmarks/kernel_memory.py
    PYTHONPATH=. python benchmarks/kernel_memory.py --sizes 64,2048,1024 64,4096,2048 --repeats 5

CPU only (``ru_maxrss`` is host memory); float32; all inputs require gradients (training).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = ("128,1024,1024", "128,2048,2048", "128,4096,4096")
BACKENDS = ("reference", "chunked")


def _parse_size(text: str) -> tuple[int, int, int]:
    """``"B,N,M"`` → ``(B, N, M)``."""
    try:
        B, N, M = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"size must be B,N,M (three integers), got {text!r}"
        ) from exc
    if min(B, N, M) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return B, N, M


def _measure(
    size: tuple[int, int, int],
    backend: str,
    dim: int,
    repeats: int,
    chunk_size: int | None,
    threads: int | None,
) -> tuple[float, float]:
    """In a fresh process: (peak extra MiB of one forward+backward, median seconds)."""
    import resource
    import time

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    from particlesim.kernels.base import GaussianKernel
    from particlesim.kernels.ops import kernel_matmul

    if threads:  # 0: leave torch's default
        torch.set_num_threads(threads)
    B, N, M = size
    gen = torch.Generator().manual_seed(0)
    kernel = GaussianKernel(1.0, learnable_width=True)

    def inputs(b: int, n: int, m: int) -> list[torch.Tensor]:
        return [
            torch.randn(b, n, generator=gen).requires_grad_(),
            torch.randn(m, dim, generator=gen).requires_grad_(),
            torch.randn(n, dim, generator=gen).requires_grad_(),
            torch.randn(m, generator=gen).requires_grad_(),
        ]

    def step(x: torch.Tensor, rh: torch.Tensor, rj: torch.Tensor, q: torch.Tensor) -> None:
        y = kernel_matmul(x, kernel, rh, rj, q, backend=backend, chunk_size=chunk_size)  # type: ignore[arg-type]
        torch.autograd.grad(y.square().mean(), [x, rh, rj, q, kernel.log_width])

    step(*inputs(4, 16, 16))  # warm-up: thread pools, BLAS, autograd engine
    args = inputs(B, N, M)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(*args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - start)
    return (peak - before) / 1024.0, statistics.median(times)  # ru_maxrss is KiB on Linux


def _run_isolated(*args: object) -> tuple[float, float]:
    """Run :func:`_measure` in a new ``spawn`` process, so its peak RSS is its own."""
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure, args)


def main(argv: list[str] | None = None) -> None:
    """Measure every size with both paths and print the comparison tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size,
        default=None,
        help=f"B,N,M triples (default: {' '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--dim", type=int, default=3, help="spatial dimension D")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="rows per block (default: about 2^20 kernel elements)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable ratios on a shared machine; 0 = torch's)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or [_parse_size(s) for s in DEFAULT_SIZES]

    import torch  # only for the header; the measurements import it in their own processes

    print(
        f"kernel interaction, gaussian, float32, D={args.dim}, forward+backward w.r.t. "
        f"x, positions, charges, width; torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads; chunk="
        f"{args.chunk_size or 'default (~2^20 elements)'}; median of {args.repeats}"
    )
    rows = []
    for size in sizes:
        result = {
            b: _run_isolated(size, b, args.dim, args.repeats, args.chunk_size, args.threads)
            for b in BACKENDS
        }
        rows.append((size, result))

    head = (
        f"{'B':>5} {'N':>6} {'M':>6} | {'ref MiB':>9} {'chunk MiB':>9} {'mem c/r':>8} | "
        f"{'ref ms':>8} {'chunk ms':>8} {'time c/r':>8}"
    )
    print()
    print(head)
    print("-" * len(head))
    for (B, N, M), res in rows:
        (rm, rt), (cm, ct) = res["reference"], res["chunked"]
        print(
            f"{B:>5} {N:>6} {M:>6} | {rm:>9.1f} {cm:>9.1f} {cm / rm:>8.3f} | "
            f"{rt * 1e3:>8.1f} {ct * 1e3:>8.1f} {ct / rt:>8.2f}"
        )

    if len(rows) > 1:
        print()
        head = f"{'growth':>27} | {'N+M x':>6} {'N*M x':>6} | {'ref mem x':>9} {'chunk mem x':>11}"
        print(head)
        print("-" * len(head))
        for (s0, r0), (s1, r1) in itertools.pairwise(rows):
            lin = (s1[1] + s1[2]) / (s0[1] + s0[2])
            quad = (s1[1] * s1[2]) / (s0[1] * s0[2])
            ref = r1["reference"][0] / r0["reference"][0]
            chk = r1["chunked"][0] / r0["chunked"][0]
            label = f"{s0[1]}x{s0[2]} -> {s1[1]}x{s1[2]}"
            print(f"{label:>27} | {lin:>6.2f} {quad:>6.2f} | {ref:>9.2f} {chk:>11.2f}")
        print("\nlinear memory: chunk mem x <= N+M x; quadratic: ref mem x ~ N*M x")


if __name__ == "__main__":
    main()
