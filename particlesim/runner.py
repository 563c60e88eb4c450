"""The runner: a scenario made into a run with a directory, checkpoints, resume and a summary.

:class:`particlesim.core.Simulation` owns the training loop (batch → forward + potentials →
integrator → step + 1 → observables → writers → hooks) and knows no files. A
:class:`Runner` composes it with :mod:`particlesim.io` one floor above core, as HOOMD-blue's
and OpenMM's ``Simulation`` objects own their loop and reporters:

1. the scenario is read (a TOML file or a dict), ``set`` assignments applied, its plugins
   loaded and the whole of it validated (:func:`load_plan`);
2. the output directory is locked *before* anything in it is removed or written, and stays
   locked for the runner's life (a second process gets one error line naming the holder);
3. the system and simulation are built, with a metrics writer (unless the scenario has one)
   and a checkpoint writer; a resumed run restores its checkpoint;
4. :meth:`Runner.run` runs the loop with the divergence guard (the last good state is saved
   beside the checkpoint), writes ``scenario.toml`` and ``summary.json``, and returns a
   :class:`RunResult` (status, paths, final metrics, the system).

The command line (``particlesim run``), sweeps (each point is one ``particlesim run``), the
distributed path and the plugins' experiments all drive this class; so can a notebook::

    from particlesim import Runner, open_trajectory

    runner = Runner.from_scenario("scenarios/mnist_particle.toml", out="runs/notebook",
                                  set=["run.steps=100"], overwrite=True)
    result = runner.run()
    print(result.summary["test_accuracy"])
    positions = open_trajectory(result.trajectory)["position/hidden1"]
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from particlesim.errors import DivergenceError, ParticlesimError
from particlesim.threads import run_sharing

__all__ = ["RunResult", "Runner", "load_plan"]

Status = Literal["completed", "interrupted", "failed", "diverged"]


def _quiet(message: str) -> None:
    """The default ``log``: say nothing."""


def load_plan(
    scenario: str | Path | Mapping[str, Any],
    *,
    set: Sequence[str] = (),
    plugins: Sequence[str | Path] = (),
    base_dir: str | Path | None = None,
    log: Callable[[str], None] = _quiet,
) -> tuple[Any, Any]:
    """Read, override, load plugins and validate: ``(plan, plugin manager)``.

    Args:
        scenario: a TOML file, or the parsed scenario as a dict (not modified).
        set: assignments ``"integrator.lr=0.01"`` applied in order (TOML values).
        plugins: plugin files to load besides the scenario's ``plugins``; ``"no:NAME"``
            disables an installed plugin.
        base_dir: where the scenario's relative paths start (default: the file's folder,
            or the working directory for a dict).
        log: receives one line per plugin file loaded.

    Raises:
        ParticlesimError: any problem, as one line naming the file and key path.
    """
    import copy

    from particlesim.plugins.manager import PluginManager
    from particlesim.scenario.builder import validate
    from particlesim.scenario.loader import apply_override, read_scenario
    from particlesim.scenario.options import check_type

    if isinstance(scenario, Mapping):
        raw = copy.deepcopy(dict(scenario))
        source = "<scenario dict>"
        folder = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(scenario)
        raw = read_scenario(path)
        source = str(path)
        folder = Path(base_dir) if base_dir is not None else path.resolve().parent
    for assignment in set:
        apply_override(raw, assignment)
    files = [str(p) for p in plugins if not str(p).startswith("no:")]
    disabled = [str(p).removeprefix("no:") for p in plugins if str(p).startswith("no:")]
    # Checked before validation because the plugin files must load first.
    scenario_plugins = check_type(raw.get("plugins", []), list[str], "plugins", source=source)
    manager = PluginManager()
    manager.load(
        files=[*(folder / p for p in scenario_plugins), *map(Path, files)],
        base_dir=folder,
        disable=disabled,
    )
    for info in manager.plugins:
        if info.source.startswith("file"):
            log(f"plugin: loaded {info.name} from {info.source.removeprefix('file ')}")
    plan = validate(raw, manager.registries, source=source, base_dir=folder)
    return plan, manager


@dataclass
class RunResult:
    """What a run left: its status, directory, summary and the trained simulation."""

    status: Status
    #: The run directory (``None`` on a distributed run's other ranks).
    out_dir: Path | None
    #: The run's summary (``summary.json``; empty on a distributed run's other ranks).
    summary: dict[str, Any]
    #: The one-line error of a failed or diverged run.
    error: str | None
    simulation: Any = field(repr=False)

    @property
    def system(self) -> Any:
        """The trained :class:`~particlesim.core.System`."""
        return self.simulation.system

    @property
    def trajectory(self) -> Path | None:
        """The H5MD trajectory file, if a trajectory writer wrote one."""
        for writer in self.simulation.writers:
            path = getattr(writer, "path", None)
            if path is not None and Path(path).suffix == ".h5" and Path(path).is_file():
                return Path(path)
        return None

    @property
    def metrics(self) -> Path | None:
        """The metrics file (``metrics.jsonl`` or ``.csv``), if written."""
        for writer in self.simulation.writers:
            path = getattr(writer, "path", None)
            if path is not None and Path(path).name.startswith("metrics"):
                return Path(path)
        return None


class Runner:
    """A built simulation, its output directory (locked) and what it needs to run and resume.

    Make one with :meth:`from_scenario` (a scenario file or dict) or :meth:`resume` (a run
    directory holding a checkpoint); :meth:`run` trains and returns a :class:`RunResult`.
    The output directory stays locked until :meth:`close` (or the end of a ``with`` block);
    a ``Runner`` that was never run leaves an empty directory it made.
    """

    def __init__(
        self,
        plan: Any,
        manager: Any,
        built: Any,
        out_dir: Path | None,
        *,
        fingerprint: str,
        resumed: bool,
        log: Callable[[str], None],
        lock: contextlib.ExitStack,
        main: bool = True,
    ) -> None:
        self.plan = plan
        self.manager = manager
        self.built = built
        self.out_dir = out_dir
        self.fingerprint = fingerprint
        self.resumed = resumed
        self.log = log
        self._lock = lock
        #: Whether this process reports (not another rank of a distributed run).
        self.main = main
        #: Raise instead of returning a run that did not complete: ``KeyboardInterrupt`` for
        #: an interrupted one, :class:`ParticlesimError` for a failed or diverged one (an
        #: experiment grid's point; :func:`particlesim.experiments.build_point` sets it).
        self.strict = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_scenario(
        cls,
        scenario: str | Path | Mapping[str, Any],
        *,
        set: Sequence[str] = (),
        plugins: Sequence[str | Path] = (),
        out: str | Path | None = None,
        overwrite: bool = False,
        device: str | None = None,
        extra_writers: Sequence[Any] = (),
        log: Callable[[str], None] = _quiet,
        context: Any = None,
        base_dir: str | Path | None = None,
    ) -> Runner:
        """Validate and build a scenario, and lock its output directory.

        Args:
            scenario: a TOML file or a scenario dict.
            set, plugins, base_dir: as in :func:`load_plan`.
            out: the run directory (default ``runs/<scenario name>``).
            overwrite: replace a non-empty directory (after locking it); without it a
                non-empty directory is refused, with a hint to ``resume`` it.
            device: overrides ``scenario.device``.
            extra_writers: writers added to the scenario's (e.g. an in-memory recorder).
            log: receives the run's progress lines (data source, plugins, start).
            context: a :class:`~particlesim.core.distributed.DistributedContext` when this
                process is one rank of several (rank 0 alone writes).

        Raises:
            ParticlesimError: one line naming what was wrong.
        """
        plan, manager = load_plan(scenario, set=set, plugins=plugins, base_dir=base_dir, log=log)
        if plan.sweep is not None:
            log(
                f"note: running the base point of {scenario} only; "
                f"`particlesim sweep {scenario}` runs its {plan.sweep.size} sweep points"
            )
        name = plan.resolved["scenario"]["name"] or (
            Path(scenario).stem if not isinstance(scenario, Mapping) else "scenario"
        )
        out_dir = Path(out) if out is not None else Path("runs") / name
        return cls._set_up(
            plan, manager, out_dir, None, overwrite, device, extra_writers, log, context
        )

    @classmethod
    def in_memory(
        cls,
        scenario: str | Path | Mapping[str, Any],
        *,
        set: Sequence[str] = (),
        plugins: Sequence[str | Path] = (),
        device: str | None = None,
        extra_writers: Sequence[Any] = (),
        log: Callable[[str], None] = _quiet,
        base_dir: str | Path | None = None,
    ) -> Runner:
        """A run with no directory: nothing is written, no checkpoint is kept.

        For many short runs recorded in memory (a
        :class:`~particlesim.core.writers.MemoryWriter` in ``extra_writers``), as the
        plugins' experiments do; writers that need a directory write nothing.
        """
        plan, manager = load_plan(scenario, set=set, plugins=plugins, base_dir=base_dir, log=log)
        return cls._set_up(plan, manager, None, None, False, device, extra_writers, log, None)

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        scenario: str | Path | None = None,
        set: Sequence[str] = (),
        plugins: Sequence[str | Path] = (),
        device: str | None = None,
        extra_writers: Sequence[Any] = (),
        log: Callable[[str], None] = _quiet,
        context: Any = None,
    ) -> Runner:
        """Continue the run in ``run_dir`` from its checkpoint (its own ``scenario.toml``).

        ``set`` may lengthen it (``run.epochs=…``); anything that changes the run's
        physics is refused by the checkpoint's fingerprint check.
        """
        from particlesim.io.checkpoint import CHECKPOINT_FILE

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ParticlesimError(f"--resume {run_dir}: no such run directory")
        checkpoint = run_dir / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise ParticlesimError(
                f"--resume {run_dir}: holds no {CHECKPOINT_FILE} (the run stopped before "
                "its first checkpoint); start it again with --overwrite"
            )
        plan, manager = load_plan(
            scenario or run_dir / "scenario.toml", set=set, plugins=plugins, log=log
        )
        return cls._set_up(
            plan, manager, run_dir, checkpoint, False, device, extra_writers, log, context
        )

    @classmethod
    def _set_up(
        cls,
        plan: Any,
        manager: Any,
        out_dir: Path | None,
        checkpoint: Path | None,
        overwrite: bool,
        device: str | None,
        extra_writers: Sequence[Any],
        log: Callable[[str], None],
        context: Any,
    ) -> Runner:
        from particlesim.io.checkpoint import (
            CHECKPOINT_FILE,
            LOCK_FILE,
            CheckpointWriter,
            load_checkpoint,
            scenario_fingerprint,
        )
        from particlesim.io.metrics import MetricsWriter
        from particlesim.scenario.builder import build

        main = context is None or context.is_main
        files = out_dir is not None  # False: an in-memory run
        lock = contextlib.ExitStack()
        created = main and files and not out_dir.exists()
        try:
            if main and files:
                # Rank 0 alone writes, so it alone looks at and locks the directory. The lock
                # comes first, before anything in the directory is read, removed or written:
                # a second process into the same directory stops here, touching nothing.
                out_dir.mkdir(parents=True, exist_ok=True)
                lock.enter_context(_run_lock(out_dir))
                existed = any(entry.name != LOCK_FILE for entry in out_dir.iterdir())
                if existed and checkpoint is None and not overwrite:
                    hint = (
                        f"; it holds a checkpoint: continue that run with --resume {out_dir}"
                        if (out_dir / CHECKPOINT_FILE).is_file()
                        else ""
                    )
                    raise ParticlesimError(
                        f"output directory {out_dir} exists and is not empty; "
                        f"use --overwrite to replace it or --out to choose another{hint}"
                    )
            fingerprint = scenario_fingerprint(plan.resolved)
            writers: list[Any] = list(extra_writers)
            if main and files:
                if not any(isinstance(w, MetricsWriter) for w in plan.writers):
                    plan.writers.append(MetricsWriter())
                every = plan.resolved["run"]["checkpoint_every"]
                writers.append(
                    CheckpointWriter(
                        trigger=None if every is False or every == 0 else every,
                        extra={"scenario_toml": plan.to_toml(), "fingerprint": fingerprint},
                    )
                )
            elif not main:
                plan.writers.clear()  # rank 0 alone writes
            run_device = context.device if context is not None else device
            built = build(
                plan,
                device=run_device,
                hooks=manager,
                log=log,
                extra_writers=writers,
                preflight=True,
            )
            if context is not None:
                built.simulation.distribute(context.rank, context.world_size)
            if checkpoint is not None:
                load_checkpoint(
                    checkpoint, built.simulation, fingerprint=fingerprint, resolved=plan.resolved
                )
            if main and files and overwrite and checkpoint is None:
                _empty_but_lock(out_dir)
        except BaseException:
            lock.close()
            if created:  # a run that never started leaves no directory behind
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        return cls(
            plan,
            manager,
            built,
            out_dir if main and files else None,
            fingerprint=fingerprint,
            resumed=checkpoint is not None,
            log=log,
            lock=lock,
            main=main,
        )

    # ---------------------------------------------------------------- the run

    @property
    def simulation(self) -> Any:
        """The :class:`particlesim.core.Simulation` this runner drives."""
        return self.built.simulation

    @property
    def system(self) -> Any:
        return self.built.system

    @property
    def finished(self) -> bool:
        """Whether the simulation has already run all its steps (a completed run resumed)."""
        return self.simulation.step >= self.simulation.total_steps

    def run(self, *, progress: Callable[[Any], None] | None = None) -> RunResult:
        """Train to the last step; write ``scenario.toml`` and ``summary.json``.

        Errors during the run do not raise: a failed run's :class:`RunResult` has status
        ``"failed"`` (or ``"diverged"``, with the last good state saved as
        ``diverged.pt``) and a one-line ``error``; Ctrl-C gives ``"interrupted"`` after
        a checkpoint at the step boundary.
        """
        from particlesim.io.checkpoint import DIVERGED_FILE, save_checkpoint

        sim, out_dir = self.simulation, self.out_dir
        if out_dir is not None:
            (out_dir / "scenario.toml").write_text(self.plan.to_toml(), encoding="utf-8")
        status: Status = "failed"
        error: str | None = None
        threads = self.plan.resolved["run"].get("threads")
        try:
            status = run_sharing(
                sim, self.system, threads, progress=progress, out_dir=out_dir
            ).status
        except DivergenceError as exc:
            status, error = "diverged", str(exc)
            if out_dir is not None and sim.last_good_state is not None:
                try:
                    saved = save_checkpoint(
                        out_dir / DIVERGED_FILE,
                        sim,
                        state=sim.last_good_state,
                        extra={"fingerprint": self.fingerprint, "status": "diverged"},
                    )
                    error += (
                        f"; the last good state (step {sim.last_good_state['step']}) is in {saved}"
                    )
                except ParticlesimError as save_error:
                    error += f"; the last good state could not be saved: {save_error}"
        except ParticlesimError as exc:
            error = str(exc)
        except (MemoryError, RuntimeError) as exc:  # e.g. out of memory on the device
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            error = f"step {sim.step + 1}: {type(exc).__name__}: {first}"
        if self.strict and status == "interrupted":
            raise KeyboardInterrupt  # a grid point stopped part-way is not a result
        if self.strict and status != "completed":
            raise ParticlesimError(f"the run {status}: {error}")
        summary: dict[str, Any] = {}
        if self.main:
            summary = self.summary("failed" if status == "diverged" else status, error)
        if out_dir is not None:
            # Written whole, then renamed: a sweep reading it never sees half a file.
            partial = out_dir / ".summary.json.partial"
            partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            partial.replace(out_dir / "summary.json")
        return RunResult(status, out_dir, summary, error, sim)

    def summary(self, status: str, error: str | None) -> dict[str, Any]:
        """The run's ``summary.json``: final measures, sizes, times, provenance."""
        sim = self.simulation
        nan = float("nan")
        try:
            test_loss, test_accuracy = sim.evaluate("test")
            _, val_accuracy = sim.evaluate("val")
        except (ParticlesimError, RuntimeError, ValueError):
            if error is None:
                raise
            # the failure that ended the run (e.g. in the forward pass) would strike again
            test_loss, test_accuracy, val_accuracy = nan, nan, nan
        meta = sim.metadata

        def number(value: float) -> float | None:  # JSON has no NaN: "not measured" is null
            return value if math.isfinite(value) else None

        return {
            "scenario": meta["scenario_name"],
            "status": status,
            "error": error,
            "test_accuracy": number(test_accuracy),
            "test_loss": number(test_loss),
            "val_accuracy": number(val_accuracy),
            "train_loss": number(sim.running_mean("loss")),
            "train_accuracy": number(sim.running_mean("correct")),
            "parameters": self.system.count_parameters(),
            "steps": sim.step,
            "epochs": sim.step / sim.steps_per_epoch,
            "wall_time_s": sim.wall_time(),
            "seconds_per_epoch": sim.wall_time() / max(sim.step / sim.steps_per_epoch, 1e-12),
            "device": str(self.built.device),
            "data_source": meta["data_source"],
            "seed": meta["seed"],
            "versions": meta["versions"],
            "plugins": meta["plugins"],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ---------------------------------------------------------------- the lock

    def close(self) -> None:
        """Release the output directory's lock (the run's files stay)."""
        self._lock.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_lock(directory: Path) -> Any:
    from particlesim.io.checkpoint import run_lock

    return run_lock(directory)


def _empty_but_lock(directory: Path) -> None:
    """Remove everything in a locked run directory except its lock file (``--overwrite``)."""
    from particlesim.io.checkpoint import LOCK_FILE

    for entry in directory.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
