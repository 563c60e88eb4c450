"""The particle layer on CPU against ``nn.Linear``: layer steps, memory, an MNIST epoch.

Every figure is a ratio against a baseline measured in the same run, with the candidates'
repeats interleaved (dense, path 1, path 2, …, dense, …) and the median taken, at each
thread count asked for (default 1 and 2).

``layer``
    Forward + backward of ``y = x·Wᵀ`` with ``W_hj = q_h·k(|r_h − r_j|)`` (D = 3; gradients
    w.r.t. ``x``, both position sets and the charges) by each path (``auto``, ``matmul``,
    ``chunked``, ``reference``) against ``nn.Linear`` of the same shape (gradients w.r.t.
    ``x`` and its weight), for the Gaussian and for a Student-t kernel defined here the way
    a plugin defines one (a :class:`RadialKernel` subclass with a profile and its derivative;
    ``student_t_v`` also gives the optional ``profile_derivative_from_value``, and
    ``student_t_s`` the optional ``scalar_profile`` the fused CPU loops compile in).
``memory``
    Peak memory of the tensors created during one forward + backward beyond the inputs
    (counted op by op, as the memory preflight does), per path, at three sizes: the
    ``matmul`` path keeps its kernel up to 2^22 entries and works in row blocks above.
``ops``
    Why a small layer stays above ``nn.Linear``: the tensor operations each path dispatches
    per forward + backward at (128, 784, 256), and what one small operation (a sum over the
    ``[M + N, 3]`` positions) costs alone and right after a pass over memory (the layer's
    ``x kᵀ`` product, an ``exp`` over ``[N, M]``): the pass evicts the dispatcher's code and
    data from the core's caches, so each operation of the layer costs several times its
    cost in a loop of its own.
``versus`` (with ``--versus FILE``)
    The matmul path against another version of ``particlesim/kernels/matmul.py`` (e.g.
    ``git show REV:particlesim/kernels/matmul.py > /tmp/matmul_rev.py``), both against
    ``nn.Linear``, interleaved in one process: what a change to the path bought.
``epoch``
    One MNIST training epoch of 784-256-256-10 (D = 3, backend ``auto``) against the MLP of
    the same widths in the same plain PyTorch loop (Adam, batch 128), interleaved.
``scenario``
    ``particlesim run scenarios/mnist_particle.toml`` against ``scenarios/mnist_mlp.toml``,
    one epoch each: seconds of the first epoch from each run's ``metrics.jsonl``.

Usage::

    python benchmarks/cpu_layer.py                       # every section, 1 and 2 threads
    python benchmarks/cpu_layer.py --sections layer --threads 2 --profile
    python benchmarks/cpu_layer.py --quick               # a smoke run, seconds
    python benchmarks/cpu_layer.py --sections versus --versus /tmp/matmul_rev.py
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "plugins", ROOT / "benchmarks"):
    if str(extra) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(extra))

from particle_layer import _train_epoch  # noqa: E402  (the same loop as its epoch section)

from particlesim.kernels import GaussianKernel, RadialKernel, kernel_matmul  # noqa: E402

SECTIONS = ("layer", "memory", "ops", "versus", "epoch", "scenario")
PATHS = ("auto", "matmul", "chunked", "reference")


class StudentTKernel(RadialKernel):
    """Student-t ``k = (1 + u/ν)^(−(ν+1)/2)``, ν = 3: a kernel as a plugin writes one."""

    name = "student_t"
    nu = 3.0

    @staticmethod
    def profile(u: torch.Tensor) -> torch.Tensor:
        return (1.0 + u / StudentTKernel.nu).pow(-(StudentTKernel.nu + 1.0) / 2.0)

    @staticmethod
    def profile_derivative(u: torch.Tensor) -> torch.Tensor:
        nu = StudentTKernel.nu
        return -(nu + 1.0) / (2.0 * nu) * (1.0 + u / nu).pow(-(nu + 3.0) / 2.0)


class StudentTFromValueKernel(StudentTKernel):
    """The same Student-t, also giving its derivative from the kernel's value
    (``f' = −(ν+1)/(2ν)·f/(1 + u/ν)``): the backward's second general ``pow`` is saved."""

    name = "student_t_v"

    @staticmethod
    def profile_derivative_from_value(u: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        nu = StudentTKernel.nu
        return value / (u / nu).add_(1.0) * (-(nu + 1.0) / (2.0 * nu))


class StudentTScalarKernel(StudentTFromValueKernel):
    """The same Student-t, also given as functions of one number (``scalar_profile``): the
    CPU matmul path compiles them into its fused loops."""

    name = "student_t_s"

    @staticmethod
    def scalar_profile(u: float) -> float:
        return (1.0 + u / 3.0) ** -2.0  # (ν = 3: −(ν+1)/2 = −2)

    @staticmethod
    def scalar_profile_derivative(u: float, value: float) -> float:
        return -(2.0 / 3.0) * value / (1.0 + u / 3.0)


KERNELS: dict[str, Callable[[], RadialKernel]] = {
    "gaussian": GaussianKernel,
    "student_t": StudentTKernel,
    "student_t_v": StudentTFromValueKernel,
    "student_t_s": StudentTScalarKernel,
}


def interleaved(steps: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Median seconds of each step, the steps' repeats interleaved in a random order."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    order = random.Random(0)
    for _ in range(repeats):
        # a fresh order each repeat: the step run right after another pays for the caches
        # that one left behind (~10 % on whichever path follows nn.Linear), and a rotating
        # order puts the same path after it every time (``auto`` read 0.16 ms slower than
        # ``matmul``, the same code, at (128, 784, 256))
        order.shuffle(names)
        for name in names:
            step = steps[name]
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def layer_inputs(B: int, N: int, M: int) -> tuple[torch.Tensor, ...]:
    """``x, target positions, source positions, charges, gradient of y`` of one layer step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, generator=gen).requires_grad_()
    rh = (torch.randn(M, 3, generator=gen) * 1.5).requires_grad_()
    rj = (torch.randn(N, 3, generator=gen) * 1.5).requires_grad_()
    q = (torch.randn(M, generator=gen) / N**0.5).requires_grad_()
    return x, rh, rj, q, torch.randn(B, M, generator=gen)


def dense_step(inputs: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """One forward + backward of ``nn.Linear`` of the layer's shape on ``inputs``."""
    x, _, _, q, gy = inputs
    dense = nn.Linear(x.shape[1], q.shape[0], bias=False)

    def step() -> None:
        x.grad = dense.weight.grad = None
        dense(x).backward(gy)

    return step


def path_step(
    path: Callable, kernel: RadialKernel, inputs: tuple[torch.Tensor, ...]
) -> Callable[[], None]:
    """One forward + backward of ``path`` (``kernel_matmul``'s signature) on ``inputs``."""
    x, rh, rj, q, gy = inputs

    def step() -> None:
        x.grad = rh.grad = rj.grad = q.grad = None
        path(x, kernel, rh, rj, q).backward(gy)

    return step


def layer_steps(B: int, N: int, M: int, kernel: RadialKernel) -> dict[str, Callable[[], object]]:
    """One forward + backward per path, and of ``nn.Linear`` ("dense"), on the same inputs."""
    inputs = layer_inputs(B, N, M)
    steps: dict[str, Callable[[], object]] = {"dense": dense_step(inputs)}
    for path in PATHS:
        steps[path] = path_step(functools.partial(kernel_matmul, backend=path), kernel, inputs)
    return steps


def layer_section(args: argparse.Namespace) -> dict:
    shapes = [(64, 196, 64)] if args.quick else [(128, 784, 256), (512, 2048, 2048)]
    out: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nlayer, {threads} thread(s): fwd + bwd, ms (x nn.Linear)")
        for kernel_name, make in KERNELS.items():
            for B, N, M in shapes:
                kernel = make()
                big = B * N * M > 10**9
                times = interleaved(
                    layer_steps(B, N, M, kernel),
                    repeats=args.repeats or (7 if big else 21),
                    warmup=3,
                )
                dense = times["dense"]
                row = {p: times[p] / dense for p in PATHS}
                out[f"{threads}t/{kernel_name}/{B},{N},{M}"] = {"dense_ms": dense * 1e3, **row}
                cells = "  ".join(f"{p} {times[p] * 1e3:7.2f} ({row[p]:.2f}x)" for p in PATHS)
                print(f"  {kernel_name:<11} ({B}, {N}, {M}) dense {dense * 1e3:7.2f}  {cells}")
                if args.profile and kernel_name == "gaussian":
                    profile_step(layer_steps(B, N, M, kernel)["matmul"])
    return out


def profile_step(step: Callable[[], object]) -> None:
    """Where the matmul path's step spends its time: the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def peak_extra_bytes(step: Callable[[], object]) -> int:
    """Peak bytes of the tensors ``step`` creates and holds at once (views excluded)."""
    from particlesim.scenario import preflight

    preflight.MAX_OPERATIONS = 10**9  # real tensors: count every operation of the step
    with preflight._Tracker() as tracker:
        step()
    return tracker.peak


def memory_section(args: argparse.Namespace) -> dict:
    sizes = (
        [(32, 256, 256)] if args.quick else [(64, 1024, 1024), (64, 4096, 4096), (64, 8192, 8192)]
    )
    out: dict[str, dict] = {}
    print("\nmemory: peak MiB created during one fwd + bwd, beyond the inputs (Gaussian)")
    for B, N, M in sizes:
        steps = layer_steps(B, N, M, GaussianKernel())
        row = {}
        for path in ("dense", "matmul", "chunked", "reference"):
            if path == "reference" and M * N > 2**26:
                row[path] = None  # W and its autograd transients: gigabytes
                continue
            row[path] = peak_extra_bytes(steps[path]) / 2**20
        out[f"{B},{N},{M}"] = row
        cells = "  ".join(f"{p} {'-' if v is None else f'{v:8.1f}'}" for p, v in row.items())
        print(f"  ({B}, {N}, {M})  W would be {M * N * 4 / 2**20:8.1f}  {cells}")
    return out


def count_operations(step: Callable[[], object]) -> int:
    """ATen operations ``step`` dispatches (forward, backward and gradient accumulation)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(
            self, func: Callable, types: object, args: tuple = (), kwargs: dict | None = None
        ) -> object:
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    step()
    with Count():
        step()
    return Count.calls


def ops_section(args: argparse.Namespace) -> dict:
    B, N, M = (64, 196, 64) if args.quick else (128, 784, 256)
    steps = layer_steps(B, N, M, GaussianKernel())
    counts = {path: count_operations(steps[path]) for path in ("dense", "matmul")}
    print(f"\nops, ({B}, {N}, {M}) Gaussian: operations per fwd + bwd: {counts}")
    gen = torch.Generator().manual_seed(0)
    x, k = torch.randn(B, N, generator=gen), torch.randn(N, M, generator=gen)
    positions = torch.randn(M + N, 3, generator=gen)
    sweeps: dict[str, Callable[[], object]] = {
        "alone": lambda: None,
        "after x k": lambda: torch.mm(x, k),
        "after exp over [N, M]": lambda: torch.exp(k),
    }
    out: dict[str, object] = {"operations": counts}
    for threads in args.threads:
        torch.set_num_threads(threads)
        row = {}
        for label, sweep in sweeps.items():
            times = []
            for _ in range(200 if args.quick else 2000):
                sweep()
                start = time.perf_counter()
                positions.sum(0)
                times.append(time.perf_counter() - start)
            row[label] = statistics.median(times) * 1e6
        out[f"{threads}t"] = row
        cells = ", ".join(f"{label} {us:.1f}" for label, us in row.items())
        print(f"  {threads} thread(s): one small sum, µs: {cells}")
    return out


def versus_section(args: argparse.Namespace) -> dict:
    import importlib.util

    from particlesim.kernels.matmul import kernel_matmul_matmul

    if args.versus is None:
        raise SystemExit("cpu_layer.py: the versus section needs --versus FILE")
    spec = importlib.util.spec_from_file_location("matmul_versus", args.versus)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    cases = [("gaussian", (64, 196, 64))] if args.quick else [
        ("gaussian", (128, 784, 256)), ("gaussian", (512, 2048, 2048)),
        ("student_t_s", (128, 784, 256)), ("student_t_s", (512, 2048, 2048)),
        ("student_t", (512, 2048, 2048)), ("student_t_v", (512, 2048, 2048)),
    ]  # fmt: skip
    out: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nversus {args.versus.name}, {threads} thread(s): fwd + bwd (x nn.Linear)")
        for kernel_name, (B, N, M) in cases:
            kernel = KERNELS[kernel_name]()
            inputs = layer_inputs(B, N, M)
            big = B * N * M > 10**9
            times = interleaved(
                {"dense": dense_step(inputs),
                 "this": path_step(kernel_matmul_matmul, kernel, inputs),
                 "versus": path_step(other.kernel_matmul_matmul, kernel, inputs)},
                repeats=args.repeats or (30 if big else 400),
                warmup=3,
            )  # fmt: skip
            row = {k: times[k] / times["dense"] for k in ("this", "versus")}
            out[f"{threads}t/{kernel_name}/{B},{N},{M}"] = {"dense_ms": times["dense"] * 1e3, **row}
            print(
                f"  {kernel_name:<11} ({B}, {N}, {M}) dense {times['dense'] * 1e3:7.2f} ms  "
                f"versus {row['versus']:.2f}x  this {row['this']:.2f}x"
            )
    return out


def _mnist(quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if quick:
        gen = torch.Generator().manual_seed(0)
        return torch.rand(1024, 784, generator=gen), torch.randint(0, 10, (1024,), generator=gen)
    from particlesim.data.datasets import MNIST

    splits = MNIST(download=False).load(seed=0, log=lambda m: None)
    return splits.train_x, splits.train_y


def epoch_section(args: argparse.Namespace) -> dict:
    from particlesim_lange import ParticleNetwork

    from particlesim.core.model import MLP
    from particlesim.plugins.manager import PluginManager

    registries = PluginManager().load().registries
    x, y = _mnist(args.quick)
    sizes = [784, 256, 256, 10]
    out: dict[str, dict] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        systems = {}
        for label, model in (
            ("particle", ParticleNetwork(sizes=sizes, dim=3)),
            ("mlp", MLP(sizes=sizes, activation="tanh")),
        ):
            system = model.build(
                registries=registries,
                input_size=784,
                num_classes=10,
                generator=torch.Generator().manual_seed(0),
                dtype=torch.float32,
            )
            systems[label] = (system, torch.optim.Adam(system.parameters(), lr=1e-3))

        def epoch(label: str, systems: dict = systems) -> Callable[[], object]:
            system, optimizer = systems[label]
            return lambda: _train_epoch(system, optimizer, x, y, 128, torch.device("cpu"))

        times = interleaved(
            {label: epoch(label) for label in systems}, repeats=args.epochs, warmup=1
        )
        ratio = times["particle"] / times["mlp"]
        out[f"{threads}t"] = {**times, "ratio": ratio}
        print(
            f"\nepoch, {threads} thread(s), {sizes}, {x.shape[0]} samples: particle "
            f"{times['particle']:.2f} s, mlp {times['mlp']:.2f} s, ratio {ratio:.2f}"
        )
    return out


def _first_epoch_seconds(scenario: Path, threads: int, quick: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "particlesim", "run", str(scenario), "--out", f"{tmp}/o",
            "--no-progress", "--set", "run.epochs=1", "--set", f"run.threads={threads}",
        ]  # fmt: skip
        if quick:
            command += ["--set", "run.steps=20"]
        subprocess.run(command, check=True, capture_output=True)
        rows = [
            json.loads(line) for line in Path(f"{tmp}/o/metrics.jsonl").read_text().splitlines()
        ]
        return float(rows[0]["wall_time"])


def scenario_section(args: argparse.Namespace) -> dict:
    particle = ROOT / "scenarios" / "mnist_particle.toml"
    mlp = ROOT / "scenarios" / "mnist_mlp.toml"
    out: dict[str, dict] = {}
    for threads in args.threads:
        times: dict[str, list[float]] = {"particle": [], "mlp": []}
        for _ in range(args.scenario_repeats):
            times["particle"].append(_first_epoch_seconds(particle, threads, args.quick))
            times["mlp"].append(_first_epoch_seconds(mlp, threads, args.quick))
        median = {k: statistics.median(v) for k, v in times.items()}
        ratio = median["particle"] / median["mlp"]
        out[f"{threads}t"] = {**median, "ratio": ratio}
        print(
            f"\nscenario epoch, {threads} thread(s): mnist_particle {median['particle']:.2f} s, "
            f"mnist_mlp {median['mlp']:.2f} s, ratio {ratio:.2f}"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=None,
        help="default: every section (versus only with --versus)",
    )
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=None, help="timed layer steps")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (median)")
    parser.add_argument("--scenario-repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile the matmul path")
    parser.add_argument(
        "--versus", type=Path, default=None, help="another matmul.py for the versus section"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.sections is None:
        args.sections = [s for s in SECTIONS if s != "versus" or args.versus is not None]
    if args.quick:
        args.epochs, args.scenario_repeats = 1, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    sections = {
        "layer": layer_section,
        "memory": memory_section,
        "ops": ops_section,
        "versus": versus_section,
        "epoch": epoch_section,
        "scenario": scenario_section,
    }
    results = {name: sections[name](args) for name in args.sections}
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
