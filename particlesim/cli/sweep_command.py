"""``particlesim sweep``: run every point of a scenario's ``[sweep]`` table.

Each point runs as its own ``particlesim run`` process with its own output
directory, on local worker threads (``--workers N``) or on Dask
(``--dask-local`` starts a LocalCluster of N workers, ``--scheduler`` joins a
running cluster). Finished points are skipped when the command is repeated, so
a killed sweep continues where it stopped. See :mod:`particlesim.scenario.sweeps`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from particlesim.cli.common import EXIT_INTERRUPTED, fail, prepare
from particlesim.errors import ParticlesimError
from particlesim.threads import available_cores

if TYPE_CHECKING:
    import xarray as xr

    from particlesim.scenario.sweeps import PointResult, SweepPlan

EXIT_FAILED_POINTS = 1
#: At most this many rows in the printed table; the files hold every point.
TABLE_ROWS = 40


def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file with a \\[sweep] table.")],
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Points run at the same time.")
    ] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Sweep directory (default runs/<name>_sweep).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run on a Dask cluster: its scheduler address, e.g. tcp://host:8786."),
    ] = None,
    dask_local: Annotated[
        bool, typer.Option("--dask-local", help="Run on a Dask LocalCluster of --workers workers.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a key of every point: --set run.epochs=2"),
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin", "-p", help="Load a plugin file (PATH.py), or disable one (no:NAME)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the points; run nothing.")
    ] = False,
    retries: Annotated[
        int, typer.Option(help="Runs again a point whose process was killed or crashed.")
    ] = 1,
) -> None:
    """Run every point of a sweep; finished points are skipped on a rerun.

    Exit status: 0 when every point completed, 1 when some did not (see
    DIR/logs), 2 for bad input, 130 when interrupted (run it again to continue).
    """
    from particlesim.scenario import sweeps
    from particlesim.scenario.loader import apply_override, read_scenario

    if workers < 1:
        raise fail(f"--workers must be at least 1, got {workers}")
    if retries < 0:
        raise fail(f"--retries must be >= 0, got {retries}")
    if scheduler and dask_local:
        raise fail("give either --scheduler ADDRESS or --dask-local, not both")
    try:
        base, manager = prepare(scenario, set_, plugin)
        raw = read_scenario(scenario)
        for assignment in set_ or []:
            apply_override(raw, assignment)
        plan = sweeps.plan_sweep(
            raw, manager.registries, source=str(scenario), base_dir=scenario.resolve().parent
        )
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"sweep: {_describe(plan)}; all points are valid", err=True)
    if dry_run:
        for point in plan.points:
            typer.echo(f"{point.index:>4}  {point.point_id}  {point.label()}")
        return

    out_dir = out or Path("runs") / f"{base.resolved['scenario']['name'] or scenario.stem}_sweep"
    if scheduler:
        executor, threads = f"Dask cluster {scheduler}", None
    else:
        kind = "Dask LocalCluster worker" if dask_local else "local worker"
        executor = f"{workers} {kind}{'s' if workers > 1 else ''}"
        threads = max(1, available_cores() // workers)
    try:
        sweeps.prepare_directory(plan, out_dir)
    except (ParticlesimError, OSError) as exc:
        raise fail(str(exc)) from None
    tasks = sweeps.point_tasks(plan, out_dir, retries=retries, threads=threads)
    todo = [task for task in tasks if not sweeps.is_finished(task.out_dir)]
    typer.echo(
        f"sweep: {len(tasks) - len(todo)} finished already, {len(todo)} to run on {executor} "
        f"-> {out_dir}",
        err=True,
    )
    labels = {p.point_id: p.label() for p in plan.points}
    done = 0

    def report(result: PointResult) -> None:
        nonlocal done
        done += 1
        note = f" ({result.attempts} attempts)" if result.attempts > 1 else ""
        error = f": {result.error}" if result.error else ""
        typer.echo(
            f"[{done}/{len(todo)}] {result.point_id} {result.status} in {result.seconds:.1f} s"
            f"{note}: {labels.get(result.point_id, '')}{error}",
            err=True,
        )

    start = time.perf_counter()
    results: list[PointResult] = []
    interrupted = False
    try:
        if scheduler or dask_local:
            results = sweeps.run_dask(todo, scheduler=scheduler, workers=workers, on_result=report)
        else:
            results = sweeps.run_local(todo, workers, on_result=report)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        interrupted = True
    elapsed = time.perf_counter() - start

    dataset = sweeps.summary_dataset(plan, out_dir)
    csv_path, nc_path = sweeps.write_summary(dataset, out_dir)
    _print_table(dataset, plan)
    ran = sum(1 for r in results if r.attempts > 0)
    rate = f" = {ran / elapsed * 60:.1f} points/minute" if ran and elapsed > 0 else ""
    typer.echo(f"throughput: {ran} points run in {elapsed:.1f} s on {executor}{rate}")
    completed = int((dataset["status"] == "completed").sum())
    typer.echo(f"summary: {completed}/{len(plan.points)} points completed; {csv_path}, {nc_path}")
    if interrupted:
        raise fail("sweep interrupted; run the same command again to continue", EXIT_INTERRUPTED)
    if completed < len(plan.points):
        failed = [
            str(p)
            for p, s in zip(dataset["point"].values, dataset["status"].values, strict=True)
            if s != "completed"
        ]
        raise fail(
            f"{len(failed)} of {len(plan.points)} points did not complete "
            f"({', '.join(failed[:5])}{', …' if len(failed) > 5 else ''}); "
            f"their logs are in {out_dir / 'logs'}",
            EXIT_FAILED_POINTS,
        )


def _describe(plan: SweepPlan) -> str:
    """``12 points = grid 2 × 2 × 3 seeds``: how the points come about."""
    spec = plan.spec
    parts = [f"grid {' × '.join(str(len(v)) for v in spec.grid.values())}"] if spec.grid else []
    if spec.samples:
        parts.append(f"{spec.samples} random samples")
    if spec.seeds:
        parts.append(f"{len(spec.seeds)} seeds")
    merged = spec.size - len(plan.points)
    extra = f" ({merged} equal draws merged)" if merged else ""
    return f"{len(plan.points)} points = {' × '.join(parts)}{extra} from {plan.source}"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


def _print_table(dataset: xr.Dataset, plan: SweepPlan) -> None:
    """The summary as a rich table (first rows only when the sweep is large)."""
    from rich.console import Console
    from rich.table import Table

    swept = [*plan.spec.grid, *plan.spec.random]
    table = Table(title=f"sweep of {plan.source}", title_justify="left")
    for name in ("point", *swept, "seed", "status", "test acc", "test loss", "wall s"):
        table.add_column(name, justify="left" if name in ("point", "status") else "right")
    rows = min(len(plan.points), TABLE_ROWS)
    for i in range(rows):
        row = dataset.isel(point=i)
        table.add_row(
            str(row["point"].item()),
            *(_format(row[path].item()) for path in swept),
            str(row["seed"].item()),
            str(row["status"].item()),
            _format(float(row["test_accuracy"])),
            _format(float(row["test_loss"])),
            _format(float(row["wall_time_s"])),
        )
    console = Console(width=max(100, Console().width), soft_wrap=False)
    console.print(table)
    if rows < len(plan.points):
        console.print(f"… {len(plan.points) - rows} more rows in summary.csv")


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to ``app``."""
    app.command("sweep")(sweep)
