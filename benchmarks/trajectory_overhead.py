"""Cost of the H5MD trajectory writer, and speed of reading one particle's history.

(a) Trains the MNIST particle network (scenarios/mnist_particle.toml) for
``--epochs`` twice in one process, without and with a :class:`TrajectoryWriter`
at its default sampling (particles every 10 steps, loss/lr every 10 steps,
epoch observables every epoch), and prints the wall-time ratio (target ≤ 1.10).

(b) Writes a synthetic trajectory of ``--frames`` × ``--particles`` × 3 float32
positions in the writer's layout (chunks of 64 frames × 256 particles) into a
temporary directory, then times ``open_trajectory`` and reading one particle's
full history, ``tree["particles/hidden"].position.isel(particle=123).values``
(target well under 1 s). The default 1e5 × 1000 file is about 1.2 GB.

    python benchmarks/trajectory_overhead.py --epochs 0.5 --frames 100000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from particlesim.io.h5md import TrajectoryWriter, write_synthetic
from particlesim.io.trajectory import open_trajectory
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import apply_override, read_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "mnist_particle.toml"


class TimedTrajectoryWriter(TrajectoryWriter):
    """The default writer, counting the seconds spent in its own methods (noise-free overhead)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def open(self, simulation, out_dir) -> None:
        start = time.perf_counter()
        super().open(simulation, out_dir)
        self.seconds += time.perf_counter() - start

    def report(self, simulation, step, values) -> None:
        start = time.perf_counter()
        super().report(simulation, step, values)
        self.seconds += time.perf_counter() - start

    def close(self, status: str) -> None:
        start = time.perf_counter()
        super().close(status)
        self.seconds += time.perf_counter() - start


def train_seconds(
    epochs: float, manager: PluginManager, out_dir: Path | None, seed: int = 0
) -> tuple[float, int, float]:
    """Seconds of ``simulation.run()`` (data loaded before timing), steps, seconds in the writer."""
    raw = read_scenario(SCENARIO)
    for assignment in (f"run.epochs={epochs}", f"scenario.seed={seed}"):
        apply_override(raw, assignment)
    raw.pop("writers", None)
    plan = validate(raw, manager.registries, source=str(SCENARIO))
    writers = [] if out_dir is None else [TimedTrajectoryWriter()]
    built = build(plan, device="cpu", log=lambda message: None, extra_writers=writers)
    start = time.perf_counter()
    built.simulation.run(out_dir=out_dir)
    inside = sum(w.seconds for w in writers)
    return time.perf_counter() - start, built.simulation.total_steps, inside


def overhead(epochs: float, repeats: int, workdir: Path) -> None:
    manager = PluginManager().load()
    train_seconds(min(epochs, 0.02), manager, None)  # warm-up: data cache, torch kernels
    without, with_writer, inside = [], [], []
    for i in range(repeats):
        seconds, steps, _ = train_seconds(epochs, manager, None)
        without.append(seconds)
        out = workdir / f"run{i}"
        seconds, _, in_writer = train_seconds(epochs, manager, out)
        with_writer.append(seconds)
        inside.append(in_writer)
        size = (out / "trajectory.h5").stat().st_size
        print(
            f"  repeat {i}: {steps} steps, without {without[-1]:.2f} s, with trajectory "
            f"{with_writer[-1]:.2f} s, of which {in_writer:.3f} s inside the writer "
            f"({size / 1e6:.1f} MB file)",
            flush=True,
        )
    ratio = min(with_writer) / min(without)
    print(
        f"(a) MNIST particle network, {epochs:g} epochs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: best of {repeats}: without {min(without):.2f} s, "
        f"with trajectory writer {min(with_writer):.2f} s, ratio {ratio:.3f} (target <= 1.10); "
        f"writer's own time {min(inside):.3f} s = {min(inside) / min(without):.1%} of the run"
    )


def read_speed(frames: int, particles: int, workdir: Path) -> None:
    path = workdir / "synthetic.h5"
    start = time.perf_counter()
    write_synthetic(path, frames=frames, particles=particles, dim=3)
    written = time.perf_counter() - start
    start = time.perf_counter()
    tree = open_trajectory(path)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    history = tree["particles/hidden"].position.isel(particle=min(123, particles - 1)).values
    read = time.perf_counter() - start
    assert history.shape == (frames, 3)
    print(
        f"(b) {frames:,} frames x {particles:,} particles x 3 float32 "
        f"({path.stat().st_size / 1e9:.2f} GB, written in {written:.1f} s): "
        f"open_trajectory {opened:.3f} s, one particle's history {read:.3f} s (target < 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=0.5, help="training length of (a)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant in (a)")
    parser.add_argument("--frames", type=int, default=100_000, help="frames of (b)")
    parser.add_argument("--particles", type=int, default=1000, help="particles of (b)")
    parser.add_argument("--skip-training", action="store_true", help="run (b) only")
    parser.add_argument("--skip-reading", action="store_true", help="run (a) only")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trajectory_bench_", dir=args.dir))
    try:
        if not args.skip_training:
            overhead(args.epochs, args.repeats, workdir)
        if not args.skip_reading:
            read_speed(args.frames, args.particles, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
