"""Runs that share a machine: k copies of the main scenario's epoch at once, against one alone.

For k = 1, 2, 3, 4 this starts k ``particlesim run scenarios/mnist_particle.toml --set
run.epochs=1`` processes together and reads each one's training time (``wall_time_s`` of its
``summary.json``: the loop, not start-up or data loading). It prints each k's median time
per copy, its ratio to one copy alone, and the goal ``1.3 · max(1, k / cores)`` (sharing
predicts ``max(1, k / cores)``).

Two policies are measured, interleaved (k = 1…4 under one, then the other, ``--repeats``
times; medians): ``shared`` (particlesim's default: each run takes its share of the cores,
:mod:`particlesim.threads`) and ``per-process`` (every run takes all cores, as torch does on
its own: ``OMP_NUM_THREADS`` = cores). Run it on an otherwise quiet machine::

    python benchmarks/shared_machine.py                 # k = 1..4, both policies
    python benchmarks/shared_machine.py --copies 1 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from particlesim.threads import available_cores  # noqa: E402

SCENARIO = ROOT / "scenarios" / "mnist_particle.toml"


def run_copies(k: int, policy: str, folder: Path, extra: list[str]) -> list[float]:
    """Start ``k`` runs together; their training times in seconds."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    if policy == "per-process":
        env["OMP_NUM_THREADS"] = str(available_cores())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    processes = []
    for i in range(k):
        out = folder / f"{policy}-{k}-{i}"
        command = [
            sys.executable, "-m", "particlesim", "run", str(SCENARIO), "--set", "run.epochs=1",
            "--out", str(out), "--overwrite", "--no-progress", *extra,
        ]  # fmt: skip
        processes.append((out, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, text=True)))  # fmt: skip
    times = []
    for out, process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a run failed ({policy}, k={k}):\n{stderr}")
        times.append(json.loads((out / "summary.json").read_text())["wall_time_s"])
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=1, help="rounds (medians over them)")
    parser.add_argument("--policies", nargs="+", default=["shared", "per-process"])
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra --set for every run"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    cores = available_cores()
    extra = [item for value in args.overrides for item in ("--set", value)]
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for policy in args.policies:
                for k in args.copies:
                    times.setdefault((policy, k), []).extend(
                        run_copies(k, policy, Path(tmp), extra)
                    )
    print(f"{SCENARIO.name}, one epoch per copy, {cores} cores available")
    print(f"  {'policy':<12} {'k':>2} {'s/copy':>8} {'x alone':>8} {'goal':>6}")
    results = []
    for policy in args.policies:
        alone = statistics.median(times[(policy, 1)]) if (policy, 1) in times else None
        for k in args.copies:
            median = statistics.median(times[(policy, k)])
            ratio = median / alone if alone else float("nan")
            goal = 1.3 * max(1.0, k / cores)
            mark = "ok" if ratio <= goal else "MISSED"
            print(f"  {policy:<12} {k:>2} {median:>8.2f} {ratio:>8.2f} {goal:>6.2f}  {mark}")
            results.append({"policy": policy, "k": k, "seconds": median, "ratio": ratio,
                            "goal": goal, "times": times[(policy, k)]})  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"cores": cores, "results": results}, indent=2))
    return {"cores": cores, "results": results}


if __name__ == "__main__":
    main()
