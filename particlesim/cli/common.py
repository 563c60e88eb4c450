"""What the commands share: exit codes, the one-line error, the common options, ``prepare``.

The command modules (``analysis_commands``, ``prune_command``, ``sweep_command``) and the
built-in plugins' commands import these helpers from here; :mod:`particlesim.cli.app` imports
the command modules and registers each on the app. So the imports point one way,
``app`` → command modules → ``common``, and no command module imports ``app``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from particlesim.errors import printable

EXIT_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a scenario key: --set integrator.lr=0.01"),
]
PluginOption = Annotated[
    list[str] | None,
    typer.Option("--plugin", "-p", help="Load a plugin file (PATH.py), or disable one (no:NAME)."),
]
#: An experiment's ``--resume``: keep the grid points already recorded in ``--out``
#: (:func:`particlesim.experiments.run_grid`).
Resume = Annotated[
    bool,
    typer.Option(
        help="Keep the runs already recorded in --out with these settings and run only the "
        "others (a killed reproduction goes on); default: run everything anew."
    ),
]


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    typer.echo(f"error: {printable(message)}", err=True)
    return typer.Exit(code)


def split_plugin_options(plugins: list[str] | None) -> tuple[list[str], list[str]]:
    """``--plugin`` values → ``(files to load, names to disable)`` (``no:NAME`` disables)."""
    files, disabled = [], []
    for item in plugins or []:
        (disabled if item.startswith("no:") else files).append(item.removeprefix("no:"))
    return files, disabled


def prepare(scenario: Path, overrides: list[str] | None, plugins: list[str] | None):
    """Read, override, load plugins and validate: ``(plan, manager)``; raises ParticlesimError.

    :func:`particlesim.runner.load_plan`, saying on stderr which plugin files it loaded.
    """
    from particlesim.runner import load_plan

    return load_plan(
        scenario,
        set=overrides or (),
        plugins=plugins or (),
        log=lambda message: typer.echo(message, err=True),
    )


def command_entry_points(
    name: str, command: Callable[..., Any]
) -> tuple[Callable[[typer.Typer], None], Callable[[], None]]:
    """``(register_command, main)`` of a plugin's command function.

    ``register_command(app)`` adds ``command`` to the ``particlesim`` CLI as ``name`` (call it
    from the plugin's ``particlesim_add_commands`` hook); ``main()`` runs it as a program of
    its own (``python -m <plugin>.experiments``).
    """

    def register_command(app: typer.Typer) -> None:
        app.command(name)(command)

    def main() -> None:
        cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        cli.command()(command)
        cli()

    return register_command, main
