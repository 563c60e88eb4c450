"""The ``particlesim`` command line: run, validate, plugins (plus plugin commands)."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from particlesim import __version__
from particlesim.cli import analysis_commands, prune_command, sweep_command
from particlesim.cli.common import (
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    PluginOption,
    SetOption,
    fail,
    prepare,
    split_plugin_options,
)
from particlesim.errors import ParticlesimError, printable

app = typer.Typer(
    name="particlesim",
    help="Neural networks as particle systems: run scenarios, then inspect and plot trajectories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    set_: SetOption = None,
    plugin: PluginOption = None,
    build_network: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Also load the data and build the network and simulation, as `run` does "
            "before its first step (catches errors that only construction meets).",
        ),
    ] = False,
) -> None:
    """Check a scenario file without running it."""
    try:
        plan, manager = prepare(scenario, set_, plugin)
        if build_network:
            from particlesim.scenario.builder import build

            built = build(
                plan,
                hooks=manager,
                log=lambda message: typer.echo(message, err=True),
                preflight=True,
            )
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    r = plan.resolved
    network = f"model {r['model']['name']!r}" if "model" in r else f"{len(r['groups'])} groups"
    length = f"{r['run']['steps']} steps" if r["run"]["steps"] else f"{r['run']['epochs']:g} epochs"
    typer.echo(
        f"ok: {scenario} is valid ({network}, data {r['data']['name']!r}, "
        f"integrator {r['integrator']['name']!r}, {length})"
    )
    if build_network:
        typer.echo(
            f"built: {built.system.count_parameters():,} parameters, "
            f"{built.simulation.total_steps} steps ({built.simulation.steps_per_epoch}/epoch) "
            f"on {built.device}"
        )
        if built.memory is not None:
            typer.echo(f"memory: {built.memory.describe()}")
        else:
            typer.echo("memory: not estimated (a step too long to trace, or not traceable)")
    if plan.sweep is not None:
        typer.echo(
            f"sweep: {plan.sweep.size} points; `particlesim sweep {scenario} --dry-run` "
            "checks every one"
        )


@app.command()
def run(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario TOML file (with --resume: DIR/scenario.toml by default)."),
    ] = None,
    set_: SetOption = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/<name>).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    plugin: PluginOption = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this directory from its checkpoint.pt (a killed or "
            "interrupted run; with --set run.epochs=… a finished one).",
            metavar="DIR",
        ),
    ] = None,
    distributed: Annotated[
        bool,
        typer.Option(
            help="Be one of several processes started by torchrun "
            "(torchrun --nproc_per_node N -m particlesim run FILE --distributed)."
        ),
    ] = False,
) -> None:
    """Run a scenario: train, record metrics, write a summary; --resume continues a run."""
    context = None
    if distributed:
        from particlesim.core.distributed import init_distributed

        try:
            context = init_distributed(device or "auto")
        except ParticlesimError as exc:
            raise fail(str(exc)) from None
    try:
        with contextlib.ExitStack() as stack:
            _run(stack, scenario, set_, device, out, overwrite, plugin, progress, resume, context)
    finally:
        if context is not None:
            from particlesim.core.distributed import shutdown

            shutdown()


def _run(
    stack: contextlib.ExitStack,
    scenario: Path | None,
    overrides: list[str] | None,
    device: str | None,
    out: Path | None,
    overwrite: bool,
    plugin: list[str] | None,
    progress: bool,
    resume: Path | None,
    context: Any,
) -> None:
    """The body of ``run``: set up a :class:`~particlesim.runner.Runner` (every rank agrees it
    worked), run it, show the outcome."""
    from particlesim.runner import Runner

    main = context is None or context.is_main

    def say(message: str) -> None:
        if main:
            typer.echo(message, err=True)

    setup_error: str | None = None
    options = {"set": overrides or (), "plugins": plugin or (), "device": device}
    try:
        if resume is not None:
            if out is not None and out.resolve() != resume.resolve():
                raise ParticlesimError(
                    f"--out {out} and --resume {resume} differ; a resumed run continues in "
                    "the directory it resumes"
                )
            runner = Runner.resume(resume, scenario=scenario, log=say, context=context, **options)
        elif scenario is None:
            raise ParticlesimError("give a scenario FILE to run, or --resume DIR to continue one")
        else:
            runner = Runner.from_scenario(
                scenario, out=out, overwrite=overwrite, log=say, context=context, **options
            )
        stack.enter_context(runner)
    except ParticlesimError as exc:
        setup_error = str(exc)
    except KeyboardInterrupt:
        raise fail(
            "interrupted before the run started; nothing was written", EXIT_INTERRUPTED
        ) from None
    if context is not None and not context.agree(setup_error is None) and setup_error is None:
        setup_error = "another process of the distributed run failed to start (see its error)"
    if setup_error is not None:
        raise fail(setup_error)

    sim = runner.simulation
    if resume is not None and runner.finished:
        if main:
            typer.echo(
                f"{resume}: the run already completed {sim.step} steps; nothing to do "
                "(raise run.epochs or run.steps with --set to continue it)"
            )
        return
    processes = "" if context is None else f" x {context.world_size} processes"
    action = f"resumed at step {sim.step}" if resume is not None else "run"
    say(
        f"{action}: {sim.total_steps} steps ({sim.steps_per_epoch}/epoch) on {runner.built.device}"
        f"{processes}, {runner.system.count_parameters():,} parameters -> {runner.out_dir}"
    )
    with ProgressBar(sim, enabled=progress and main) as update:
        result = runner.run(progress=update)
    if result.error is not None:
        raise fail(result.error, EXIT_DIVERGED if result.status == "diverged" else EXIT_ERROR)
    if main:
        summary = result.summary
        measured = (
            f"test accuracy {summary['test_accuracy']:.4f}"
            if summary["test_accuracy"] is not None
            else f"test loss {summary['test_loss']:.4g}"
            if summary["test_loss"] is not None
            else "no test measure"
        )
        typer.echo(
            f"{result.status}: {measured} after "
            f"{summary['epochs']:g} epoch{'' if summary['epochs'] == 1 else 's'} in "
            f"{summary['wall_time_s']:.1f} s; results in {result.out_dir}"
        )
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


class ProgressBar:
    """A rich progress bar showing loss and running accuracy (no-op when disabled)."""

    def __init__(self, simulation: Any, enabled: bool) -> None:
        self.sim = simulation
        self.enabled = enabled and sys.stderr.isatty()
        self.every = max(1, simulation.steps_per_epoch // 20)

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(
            "run", total=self.sim.total_steps, epoch=1, loss="-", acc="-", completed=self.sim.step
        )
        return self.update

    def update(self, sim: Any) -> None:
        if sim.step % self.every and sim.step != sim.total_steps:
            return
        self.progress.update(
            self.task,
            completed=sim.step,
            epoch=min(
                sim.step // sim.steps_per_epoch + 1, -(-sim.total_steps // sim.steps_per_epoch)
            ),
            loss=f"{sim.running_mean('loss'):.4f}",
            acc=f"{sim.running_mean('correct'):.4f}",
        )

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)


@app.command("plugins")
def plugins_command(
    name: Annotated[
        str | None,
        typer.Argument(help="A registered name: list its options (like --options NAME)."),
    ] = None,
    options: Annotated[
        str | None,
        typer.Option("--options", help="List every option of the registered NAME.", metavar="NAME"),
    ] = None,
    plugin: PluginOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List plugins: where each came from and what it registers (or one name's options)."""
    from particlesim.plugins.manager import PluginManager, describe

    files, disabled = split_plugin_options(plugin)
    try:
        manager = PluginManager().load(files=[Path(f) for f in files], disable=disabled)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    if name is not None or options is not None:
        _show_options(manager, options or name, as_json)
        return
    rows = describe(manager)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        version = f" {row['version']}" if row.get("version") else ""
        typer.echo(f"{row['name']}{version}  [{row['source']}]")
        if row.get("error"):
            typer.echo(f"    FAILED: {row['error']}")
        for kind, names in (row.get("registered") or {}).items():
            if names:
                typer.echo(f"    {kind}: {', '.join(names)}")


def _show_options(manager: Any, name: str, as_json: bool) -> None:
    """Print each option of every entry registered as ``name`` (type, default, description)."""
    from particlesim.scenario.builder import describe_options

    try:
        entries = describe_options(manager.registries, name)
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(entries, indent=2, default=repr))
        return
    for entry in entries:
        typer.echo(
            f"{entry['kind']} {entry['name']!r} (plugin {entry['plugin']}): {entry['summary']}"
        )
        rows = [
            (
                option["name"] + (" (engine)" if option["engine"] else ""),
                option["type"],
                "required" if option["required"] else f"= {option['default']!r}",
                option["doc"],
            )
            for option in entry["options"]
        ]
        if not rows:
            typer.echo("    (no options)")
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            typer.echo(f"    {'  '.join(cells)}  {row[3]}".rstrip())


@app.command()
def reproduce(
    papers: Annotated[
        list[str] | None,
        typer.Argument(
            help="Papers to reproduce (default: every registered one).", metavar="PAPER"
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny data and few steps: checks the mechanics.")
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Rerun papers that already have a finished report.")
    ] = False,
    results: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the reports and outputs (default: docs/reproductions, or "
            "reproductions-quick with --quick).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The Markdown page (default: docs/reproductions.md, or README.md in the "
            "results folder with --quick).",
        ),
    ] = None,
    plugin: PluginOption = None,
) -> None:
    """Rebuild the papers' results tables (each plugin's experiments) into one Markdown page."""
    from particlesim.plugins.manager import PluginManager
    from particlesim.reproduce import reproduce as run_reproductions

    files, disabled = split_plugin_options(plugin)
    results = results or Path("reproductions-quick" if quick else "docs/reproductions")
    markdown = out or (results / "README.md" if quick else Path("docs/reproductions.md"))
    if not markdown.parent.is_dir() and markdown.parent != results:
        raise fail(f"--out: folder {str(markdown.parent)!r} does not exist")
    try:
        manager = PluginManager().load(files=[Path(f) for f in files], disable=disabled)
        registry = manager.registry("reproduction")
        found = {name: registry.entry(name).factory for name in registry.names()}
        found = {n: f() if isinstance(f, type) else f for n, f in found.items()}
        run_reproductions(
            found, papers or [], results=results, markdown=markdown, quick=quick, fresh=fresh,
            log=typer.echo,
        )  # fmt: skip
    except ParticlesimError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted: rerun the command to go on from the finished papers") from None
    typer.echo(f"wrote {markdown}")


@app.command()
def version() -> None:
    """Print the particlesim version."""
    typer.echo(__version__)


# The other built-in commands live in modules of their own, each exposing register(app).
analysis_commands.register(app)
sweep_command.register(app)
prune_command.register(app)


_SHOWN_WARNINGS: set[str] = set()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print a Python warning as one ``warning: ...`` line, each text once per command."""
    text = f"warning: {printable(str(message))}"
    if text not in _SHOWN_WARNINGS:
        _SHOWN_WARNINGS.add(text)
        typer.echo(text, err=True)


def _disabled_on_command_line(argv: list[str]) -> list[str]:
    """The ``NAME`` of every ``-p no:NAME`` / ``--plugin no:NAME`` (``=`` form too) in ``argv``."""
    values = [value for flag, value in itertools.pairwise(argv) if flag in ("-p", "--plugin")]
    values += [arg.removeprefix("--plugin=") for arg in argv if arg.startswith("--plugin=")]
    return split_plugin_options(values)[1]


def _leading_plugin_files(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(files, rest)``: plugin files given with ``-p FILE`` before the command, and the rest.

    ``particlesim -p my_plugin.py hello`` loads ``my_plugin.py`` before the command line
    is parsed, so the commands it adds exist; ``-p no:NAME`` there is left to the command.
    """
    files: list[str] = []
    rest = list(argv)
    while rest:
        flag = rest[0]
        if flag in ("-p", "--plugin") and len(rest) > 1 and not rest[1].startswith("no:"):
            files.append(rest[1])
            rest = rest[2:]
        elif flag.startswith("--plugin=") and not flag.startswith("--plugin=no:"):
            files.append(flag.removeprefix("--plugin="))
            rest = rest[1:]
        else:
            break
    return files, rest


def main() -> None:
    """Console-script entry point: add plugin commands, then run the app."""
    import warnings

    warnings.showwarning = _show_warning
    from particlesim.plugins.manager import ENV_STRICT, PluginManager, _env_flag

    files, sys.argv[1:] = _leading_plugin_files(sys.argv[1:])
    try:
        manager = PluginManager().load(
            files=[Path(f) for f in files], disable=_disabled_on_command_line(sys.argv[1:])
        )
    except ParticlesimError as exc:
        if not _env_flag(ENV_STRICT):  # strict: the command's own load reports it as its error
            typer.echo(f"warning: {exc}", err=True)
    else:
        # One plugin at a time, so a broken command hook costs only its own commands.
        for impl in manager.pm.hook.particlesim_add_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                typer.echo(
                    f"warning: plugin {impl.plugin_name!r} could not add its commands: "
                    f"{type(exc).__name__}: {exc}",
                    err=True,
                )
    app()
