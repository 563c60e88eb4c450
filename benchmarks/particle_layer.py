"""One kernel interaction layer against a dense layer: time, memory, cutoffs, an MNIST epoch.

Three sections, each printing ratios against a baseline measured in the same run:

``layer``
    For each ``(B, N, M)`` the median forward + backward time and the peak memory beyond the
    inputs of ``y = x·Wᵀ`` with ``W_hj = q_h·exp(−|r_h − r_j|²)`` (D = 3, gradients w.r.t.
    ``x``, both position sets, the charges and the width) by: a dense ``nn.Linear`` (the
    baseline; gradients w.r.t. ``x`` and its weight), the materialised reference path,
    ``torch.compile`` of the reference path, and the fused Triton kernels (on CUDA) or the
    chunked path (on CPU); each with its ratio to dense. Out-of-memory is caught and printed
    as ``OOM``.
``cutoff``
    Particles uniform in the unit cube of D = 2 and D = 3, and a cutoff chosen as the quantile
    of the pairwise distances, so that 1 %, 10 % and 50 % of all pairs lie within it: the
    untruncated kernel against the same kernel with that cutoff (neighbour list built once,
    as during training between rebuilds), their ratio, the fraction of tile pairs the
    neighbour list keeps, and the speed-up that fraction allows at best (``bound``: the
    work skipped is whole tiles, so even a perfect kernel gains at most 1 / kept).
``epoch``
    One MNIST training epoch (Adam, batch 128, data resident on the device) of the Lange
    particle network 784-256-256-10 (D = 3, backend ``auto``: fused on CUDA) against the MLP
    of the same widths (tanh, the same training loop), and their ratio.

On CUDA, TF32 is on for float32 matmuls (``torch.set_float32_matmul_precision("high")``, which
the fused kernels follow) unless ``--no-tf32``. ``--profile`` adds the CUDA time of every
kernel in one fused step per shape (what limits it) and the autotuner's chosen tiles.

Usage::

    python benchmarks/particle_layer.py                      # the full run (a GPU)
    python benchmarks/particle_layer.py --sections layer --profile --out layer.json
    python benchmarks/particle_layer.py --quick              # a CPU smoke run, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from particlesim.kernels import (  # noqa: E402
    GaussianKernel,
    NeighbourCache,
    kernel_matmul,
    kernel_matmul_chunked,
    kernel_matmul_reference,
)

SHAPES = ((256, 784, 1024), (1024, 16384, 16384), (4096, 4096, 4096), (256, 65536, 65536))
QUICK_SHAPES = ((32, 196, 256),)
#: The cutoff section's shapes: the tile geometry bounds the speed-up by 1 / (fraction of tile
#: pairs kept), which falls with N at a fixed fraction of particle pairs (2-D, 10 % of the
#: pairs, 64-particle tiles: bound 4.8x at N = 16384, 6.4x at N = 65536).
CUTOFF_SHAPES = ((1024, 16384, 16384), (256, 65536, 65536))
QUICK_CUTOFF_SHAPES = ((8, 512, 512),)
CUTOFF_FRACTIONS = (0.01, 0.1, 0.5)
SECTIONS = ("layer", "cutoff", "epoch")
DIM = 3


# --------------------------------------------------------------------------- measuring


class PathOutOfMemoryError(Exception):
    """A path did not fit in the device's memory."""


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(
    step: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> tuple[float, float | None]:
    """``(median ms, peak MiB beyond what was allocated before)`` of ``step``; CPU: no memory.

    Raises:
        PathOutOfMemoryError: the step ran out of device memory (the memory is released first).
    """
    cuda = device.type == "cuda"
    try:
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
        for _ in range(warmup):  # compilation, autotuning, caches
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                step()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                begin = time.perf_counter()
                step()
                times.append((time.perf_counter() - begin) * 1e3)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
        return statistics.median(times), peak
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        if not _is_oom(error):
            raise
        raise PathOutOfMemoryError from None
    finally:
        _free()


def _layer_inputs(
    B: int, N: int, M: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    return {
        "x": leaf(B, N),
        "target_pos": leaf(M, DIM),
        "source_pos": leaf(N, DIM),
        "charge": leaf(M),
        "grad_y": torch.randn(B, M, generator=gen).to(device),
    }


def _layer_step(path: str, inputs: dict[str, torch.Tensor], device: torch.device):
    """A zero-argument forward + backward of ``path`` on ``inputs`` (its set-up done here)."""
    x, rh, rj, q, gy = (inputs[k] for k in ("x", "target_pos", "source_pos", "charge", "grad_y"))
    if path == "dense":
        linear = nn.Linear(x.shape[1], rh.shape[0], bias=False, device=device)

        def step() -> object:
            return torch.autograd.grad(linear(x), [x, linear.weight], gy)

        return step
    kernel = GaussianKernel(1.0, learnable_width=True).to(device)
    wrt = [x, rh, rj, q, kernel.log_width]
    if path == "compiled":
        forward = torch.compile(
            lambda x, rh, rj, q: kernel_matmul_reference(x, kernel, rh, rj, q), dynamic=False
        )
    elif path == "reference":
        forward = lambda x, rh, rj, q: kernel_matmul_reference(x, kernel, rh, rj, q)  # noqa: E731
    elif path == "chunked":
        forward = lambda x, rh, rj, q: kernel_matmul_chunked(x, kernel, rh, rj, q)  # noqa: E731
    elif path == "fused":
        from particlesim.kernels.fused import kernel_matmul_fused

        forward = lambda x, rh, rj, q: kernel_matmul_fused(x, kernel, rh, rj, q)  # noqa: E731
    else:  # pragma: no cover - the caller's list
        raise ValueError(path)

    def step() -> object:
        return torch.autograd.grad(forward(x, rh, rj, q), wrt, gy)

    return step


def _fused_profile(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, object]:
    """CUDA time per kernel of one fused step, and the autotuner's chosen tiles."""
    from torch.profiler import ProfilerActivity, profile

    from particlesim.kernels import fused

    step = _layer_step("fused", inputs, device)
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if cuda_us:
            kernels[event.key[:60]] = round(cuda_us / 1e3, 4)
    tuned = fused._BUILT.get("tuned", {})
    chosen = {
        f"{name}{'/sparse' if sparse else ''}": str(tuner.best_config)
        for (name, sparse), tuner in tuned.items()
        if getattr(tuner, "best_config", None) is not None
    }
    return {"kernels_ms": dict(sorted(kernels.items(), key=lambda kv: -kv[1])), "tiles": chosen}


def layer_section(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every path at every shape; prints one table per shape."""
    paths = ["dense", "reference", "compiled", "fused"] if device.type == "cuda" else []
    if device.type != "cuda":
        paths = ["dense", "reference", "chunked"] + (["compiled"] if args.compile else [])
    if args.paths:
        paths = [p for p in paths if p in args.paths]
    rows = args.results.setdefault("layer", [])
    for B, N, M in args.shapes:
        row: dict[str, object] = {"B": B, "N": N, "M": M, "paths": {}}
        rows.append(row)
        print(f"\nlayer (B, N, M) = ({B}, {N}, {M}), D = {DIM}, float32")
        print(f"  {'path':<10} {'ms':>9} {'x dense':>8} {'peak MiB':>10}")
        dense_ms = None
        for path in paths:
            inputs = _layer_inputs(B, N, M, device)
            try:
                ms, peak = measure(
                    _layer_step(path, inputs, device), device, args.warmup, args.repeats
                )
            except PathOutOfMemoryError:
                ms = peak = None
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:  # while setting up
                if not _is_oom(error):
                    raise
                ms = peak = None
            _free()
            if path == "dense":
                dense_ms = ms
            ratio = ms / dense_ms if ms is not None and dense_ms else None
            row["paths"][path] = {"ms": ms, "ratio": ratio, "peak_mib": peak}
            args.save()
            shown = "OOM" if ms is None else f"{ms:9.3f}"
            ratio_text = "" if ratio is None else f"{ratio:8.2f}"
            peak_text = "" if peak is None else f"{peak:10.0f}"
            print(f"  {path:<10} {shown:>9} {ratio_text:>8} {peak_text:>10}", flush=True)
            if path == "fused" and args.profile and ms is not None:
                row["fused_profile"] = _fused_profile(inputs, device)
                for name, kernel_ms in list(row["fused_profile"]["kernels_ms"].items())[:8]:
                    print(f"      {kernel_ms:9.3f} ms  {name}")
                for name, tiles in row["fused_profile"]["tiles"].items():
                    print(f"      tiles {name}: {tiles}")
                args.save()
            del inputs
    return rows


# --------------------------------------------------------------------------- cutoff


def _cutoff_for_fraction(
    target: torch.Tensor, source: torch.Tensor, fraction: float, samples: int = 1_000_000
) -> float:
    """The distance within which ``fraction`` of all (target, source) pairs lie (sampled)."""
    gen = torch.Generator().manual_seed(1)
    i = torch.randint(target.shape[0], (samples,), generator=gen).to(target.device)
    j = torch.randint(source.shape[0], (samples,), generator=gen).to(target.device)
    distances = (target[i] - source[j]).norm(dim=1)
    return float(torch.quantile(distances, fraction))


def _cutoff_step(
    kernel: GaussianKernel,
    cache: NeighbourCache | None,
    backend: str,
    x: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    q: torch.Tensor,
    grad_y: torch.Tensor,
) -> object:
    y = kernel_matmul(x, kernel, target, source, q, backend=backend, neighbours=cache)
    return torch.autograd.grad(y, [x, target, source, q, kernel.log_width], grad_y)


def cutoff_section(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Full kernel vs the same kernel with a cutoff keeping 1 %, 10 %, 50 % of the pairs."""
    rows = args.results.setdefault("cutoff", [])
    for shape in args.cutoff_shape:
        _cutoff_rows(args, device, *shape, rows)
    return rows


def _cutoff_rows(
    args: argparse.Namespace, device: torch.device, B: int, N: int, M: int, rows: list
) -> None:
    """The cutoff table of one ``(B, N, M)``, appended to ``rows`` (saved after each row)."""
    backend = "fused" if device.type == "cuda" else "chunked"
    print(f"\ncutoff, (B, N, M) = ({B}, {N}, {M}), uniform in the unit cube, {backend} backend")
    print(
        f"  {'D':>2} {'pairs':>6} {'cutoff':>7} {'tiles kept':>10} {'bound':>7} "
        f"{'full ms':>9} {'cutoff ms':>9} {'speed-up':>9}"
    )
    for dim in args.cutoff_dims:
        gen = torch.Generator().manual_seed(dim)
        target = torch.rand(M, dim, generator=gen).to(device).requires_grad_()
        source = torch.rand(N, dim, generator=gen).to(device).requires_grad_()
        x = torch.randn(B, N, generator=gen).to(device).requires_grad_()
        q = torch.randn(M, generator=gen).to(device).requires_grad_()
        gy = torch.randn(B, M, generator=gen).to(device)
        for fraction in CUTOFF_FRACTIONS:
            radius = _cutoff_for_fraction(target.detach(), source.detach(), fraction)
            width = 0.25  # one width for every cutoff: only the skipped work differs
            full = GaussianKernel(width, learnable_width=True).to(device)
            cut = GaussianKernel(width, learnable_width=True, cutoff=radius).to(device)
            cache = NeighbourCache(skin=0.1 * radius)
            tensors = (x, target, source, q, gy)
            full_ms, _ = measure(
                partial(_cutoff_step, full, None, backend, *tensors),
                device,
                args.warmup,
                args.repeats,
            )
            cut_ms, _ = measure(
                partial(_cutoff_step, cut, cache, backend, *tensors),
                device,
                args.warmup,
                args.repeats,
            )
            nl = cache.neighbour_list
            kept = nl.pair_fraction if nl is not None else math.nan
            row = {
                "shape": [B, N, M],
                "dim": dim,
                "fraction": fraction,
                "cutoff": radius,
                "tile_fraction": kept,
                "full_ms": full_ms,
                "cutoff_ms": cut_ms,
                "speedup": full_ms / cut_ms,
                "rebuilds": cache.builds,
            }
            rows.append(row)
            args.save()
            print(
                f"  {dim:>2} {fraction:>6.0%} {radius:>7.4f} {kept:>10.1%} {1 / kept:>6.2f}x "
                f"{full_ms:>9.3f} {cut_ms:>9.3f} {full_ms / cut_ms:>8.2f}x",
                flush=True,
            )


# --------------------------------------------------------------------------- epoch


def _mnist(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's 60 000 training images ``[n, 784]`` in [0, 1] and labels, on ``device``.

    ``--quick`` uses 256 random images instead (no files needed).
    """
    if args.quick:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(256, 784, generator=gen)
        y = torch.randint(0, 10, (256,), generator=gen)
    else:
        from particlesim.data.datasets import MNIST

        data_dir = args.mnist_dir or (
            str(ROOT.parent / "shared" / "data" / "mnist")
            if (ROOT.parent / "shared" / "data" / "mnist").is_dir()
            else None
        )
        splits = MNIST(data_dir=data_dir, download=False).load(seed=0, log=lambda m: None)
        x, y = splits.train_x, splits.train_y
    return x.to(device), y.to(device)


def _train_epoch(
    system: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    device: torch.device,
) -> float:
    """Seconds for one shuffled epoch of Adam steps (synchronised at both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    order = torch.randperm(x.shape[0], device=device)
    for i in range(0, x.shape[0], batch):
        idx = order[i : i + batch]
        loss = F.cross_entropy(system(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def epoch_section(args: argparse.Namespace, device: torch.device) -> dict:
    """Particle network vs same-width MLP, seconds per epoch (after one warm-up epoch)."""
    from particlesim_lange import ParticleNetwork

    from particlesim.core.model import MLP
    from particlesim.plugins.manager import PluginManager

    registries = PluginManager().load().registries
    x, y = _mnist(args, device)
    sizes = [784, 256, 256, 10]
    models = {
        "particle": ParticleNetwork(sizes=sizes, dim=3, backend="auto"),
        "mlp": MLP(sizes=sizes, activation="tanh"),
    }
    result: dict[str, object] = {"samples": x.shape[0], "batch": args.batch_size}
    args.results["epoch"] = result
    print(
        f"\nepoch: {'MNIST' if not args.quick else 'random'} {x.shape[0]} samples, batch "
        f"{args.batch_size}, Adam, {sizes}, data on {device.type}"
    )
    for label, model in models.items():
        system = model.build(
            registries=registries,
            input_size=784,
            num_classes=10,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float32,
        ).to(device)
        optimizer = torch.optim.Adam(system.parameters(), lr=1e-3)
        for _ in range(args.warmup_epochs):  # autotuning, allocator, caches
            _train_epoch(system, optimizer, x, y, args.batch_size, device)
        seconds = statistics.median(
            _train_epoch(system, optimizer, x, y, args.batch_size, device)
            for _ in range(args.epochs)
        )
        result[f"{label}_s"] = seconds
        args.save()
        print(f"  {label:<9} {seconds:8.3f} s/epoch", flush=True)
    result["ratio"] = result["particle_s"] / result["mlp_s"]
    print(f"  particle / mlp = {result['ratio']:.2f}")
    return result


# --------------------------------------------------------------------------- main


def _shape(text: str) -> tuple[int, int, int]:
    try:
        B, N, M = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must be B,N,M, got {text!r}") from exc
    if min(B, N, M) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return B, N, M


def main(argv: list[str] | None = None) -> dict:
    """Run the chosen sections, print their tables, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CPU smoke run")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--shapes", nargs="+", type=_shape, default=None, help="B,N,M triples")
    parser.add_argument(
        "--cutoff-shape", type=_shape, nargs="+", default=None, help="B,N,M triples"
    )
    parser.add_argument("--paths", nargs="+", default=None, help="layer paths to time")
    parser.add_argument("--cutoff-dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (median)")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mnist-dir", default=None, help="folder with MNIST's IDX files")
    parser.add_argument("--device", default=None, help="default: cuda if present (cpu: --quick)")
    parser.add_argument("--no-tf32", action="store_true", help="IEEE float32 matmuls on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile on CPU too")
    parser.add_argument("--profile", action="store_true", help="per-kernel CUDA times (fused)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    device = torch.device(
        args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    )
    args.shapes = args.shapes or list(QUICK_SHAPES if args.quick else SHAPES)
    args.cutoff_shape = args.cutoff_shape or (QUICK_CUTOFF_SHAPES if args.quick else CUTOFF_SHAPES)
    args.repeats = args.repeats or (1 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.quick:
        args.warmup_epochs = min(args.warmup_epochs, 1)
        args.cutoff_dims = args.cutoff_dims[:1]
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest" if args.no_tf32 else "high")
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    print(
        f"particle layer benchmark on {name}; torch {torch.__version__}; "
        f"float32 matmul precision {torch.get_float32_matmul_precision()!r}"
    )
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    results: dict[str, object] = {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "tf32": device.type == "cuda" and not args.no_tf32,
    }
    # tiny kernel values must not take the CPU's slow denormal paths; the process-wide
    # switch is turned back off (torch's default) when the run ends
    args.results = results

    def save() -> None:  # after every row, so a run cut short keeps what it measured
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=2))

    args.save = save
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        if "layer" in args.sections:
            layer_section(args, device)
        if "cutoff" in args.sections:
            cutoff_section(args, device)
        if "epoch" in args.sections:
            epoch_section(args, device)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    save()
    if args.out is not None:
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
