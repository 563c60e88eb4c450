"""Trajectory commands: ``inspect``, ``analyze``, ``plot``, ``animate``, ``view``, ``recover``.

``register(app)`` adds them to a typer app (the main one calls it once). Every
command opens the trajectory with :func:`particlesim.io.trajectory.open_trajectory`
and reports any problem as one ``error: …`` line with exit status 2; what the
reader leaves out or cuts short (a dangling link, values that are not numbers,
series of different lengths) is a ``warning: …`` line naming its HDF5 path.
Heavy imports (xarray, matplotlib, networkx) happen inside the commands so
that ``particlesim --help`` stays fast.

Memory does not grow with the trajectory's length beyond its coordinates (16
bytes a frame of each clock) and the results (a few numbers a frame):
``inspect`` reads one frame of each observable; ``analyze``, ``plot`` and
``animate`` read values a slice of frames at a time, at most
``PARTICLESIM_SLICE_BYTES`` (default 64 MiB as float64) and at least one frame
(:mod:`particlesim.analysis.stream`); a GIF is written a frame at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from particlesim.cli.common import EXIT_ERROR, fail
from particlesim.errors import ParticlesimError

if TYPE_CHECKING:
    import xarray as xr

TABLE_SUFFIXES = (".nc", ".csv")
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
PLOT_KINDS = ("all", "both", "observables", "positions", "network")

FileArgument = Annotated[Path, typer.Argument(help="Trajectory file (H5MD, .h5).")]
GroupOption = Annotated[
    list[str] | None,
    typer.Option("--group", "-g", help="Only this particle group (repeatable; default: all)."),
]


def _fail(message: str) -> typer.Exit:
    """One ``error: …`` line on stderr; the exit to raise (the app's own ``fail``)."""
    return fail(message, EXIT_ERROR)


def _reader() -> Callable[[Path], xr.DataTree]:
    """The trajectory reader (a seam that tests can replace)."""
    try:
        from particlesim.io.trajectory import open_trajectory
    except ImportError as exc:
        raise _fail(f"the trajectory reader is not available: {exc}") from None
    return open_trajectory


@contextmanager
def _opened(path: Path) -> Iterator[xr.DataTree]:
    """Open ``path`` as a DataTree, turning every reading problem into one error line."""
    if not path.exists():
        raise _fail(f"{path}: no such file")
    if path.is_dir():
        raise _fail(f"{path} is a directory; expected a trajectory file (.h5)")
    open_trajectory = _reader()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tree = open_trajectory(path)
    except ParticlesimError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{path}: cannot read as a trajectory: {exc}") from None
    for warning in caught:  # e.g. a file from another H5MD writer: one line each
        typer.echo(f"warning: {warning.message}", err=True)
    try:
        yield tree
    except ParticlesimError as exc:
        raise _fail(str(exc)) from None
    except (ValueError, TypeError, MemoryError) as exc:  # values no analysis can use (all NaN…)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _fail(
            f"{path}: cannot use this trajectory's values: {type(exc).__name__}: {first}"
        ) from None
    finally:
        close = getattr(tree, "close", None)
        if callable(close):
            close()


def _check_suffix(out: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = out.suffix.lower()
    if suffix not in allowed:
        raise _fail(
            f"unsupported {what} format {suffix or '(none)'!r} for {out}; "
            f"use one of: {', '.join(allowed)}"
        )
    return suffix


# --- inspect -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Attribute values as JSON-ready Python (numpy scalars/arrays, bytes, JSON strings)."""
    import numpy as np

    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _steps(obj: Any, dim: str | None) -> list[int] | None:
    from particlesim.analysis.tree import step_coord

    if dim is None or obj.sizes.get(dim, 0) == 0:
        return None
    steps = step_coord(obj, dim)
    return [int(steps[0]), int(steps[-1])]


def describe(tree: xr.DataTree, path: Path | None = None) -> dict[str, Any]:
    """What a trajectory holds, as a JSON-ready dict (the ``inspect --json`` output)."""
    from particlesim.analysis import tree as t

    groups = []
    for name, ds in t.groups(tree).items():
        fields = {}
        for var, da in ds.data_vars.items():
            fields[str(var)] = {
                "dims": [str(d) for d in da.dims],
                "shape": [int(s) for s in da.shape],
                "frozen": "time" not in da.dims,
            }
        frames = int(ds.sizes.get("time", 0))
        groups.append(
            {
                "name": name,
                "particles": int(ds.sizes.get("particle", 0)),
                "dimension": int(ds.sizes.get("spatial", ds.attrs.get("dimension", 0))),
                "fields": fields,
                "frames": frames,
                "steps": _steps(ds, "time" if frames else None),
                "attrs": {str(k): _plain(v) for k, v in ds.attrs.items()},
            }
        )
    observables = []
    obs = t.observables(tree)
    for name, da in obs.data_vars.items():
        dim = t.time_dim(da)
        frames = int(da.sizes[dim]) if dim else 1
        last = da.isel({dim: -1}) if dim and frames else da
        observables.append(
            {
                "name": str(name),
                "frames": frames,
                "steps": _steps(obs, dim),
                "last": _plain(last.values) if frames else None,
                "unit": _plain(da.attrs.get("unit", da.attrs.get("units"))),
            }
        )
    connectivity = []
    for name, ds in t.interactions(tree).items():
        source, target = t.endpoints(ds, name)
        w = ds["weight"]
        frames = int(w.sizes.get("time", 0))
        connectivity.append(
            {
                "name": name,
                "source": source,
                "target": target,
                "shape": [int(s) for s in w.shape],
                "frames": frames,
                "steps": _steps(ds, "time" if frames else None),
            }
        )
    attrs = {str(k): _plain(v) for k, v in tree.attrs.items()}
    scenario_name = None
    toml_text = attrs.get("scenario_toml")
    if isinstance(toml_text, str):
        import tomllib

        try:
            scenario_name = tomllib.loads(toml_text).get("scenario", {}).get("name")
        except tomllib.TOMLDecodeError:
            scenario_name = None
    return {
        "file": None if path is None else str(path),
        "scenario": scenario_name,
        "groups": groups,
        "observables": observables,
        "connectivity": connectivity,
        "parameters": attrs,
    }


def _short(value: Any, width: int = 60) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        text = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _span(steps: list[int] | None) -> str:
    return "-" if steps is None else f"{steps[0]}…{steps[1]}"


def _render(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    class Table(RichTable):
        def add_row(self, *cells: str) -> None:  # file contents are text, not rich markup
            super().add_row(*(escape(c) for c in cells))

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    title = info["file"] or "trajectory"
    if info["scenario"]:
        title += f"  (scenario {info['scenario']!r})"
    console.print(f"[bold]{escape(title)}[/bold]")

    table = Table(title="particle groups", title_justify="left")
    for col in ("group", "particles", "D", "fields", "frames", "steps"):
        table.add_column(col, justify="right" if col in ("particles", "D", "frames") else "left")
    for g in info["groups"]:
        fields = ", ".join(
            f"{name} [{', '.join(f['dims'])}]" + (" frozen" if f["frozen"] else "")
            for name, f in g["fields"].items()
        )
        table.add_row(
            g["name"],
            str(g["particles"]),
            str(g["dimension"]),
            fields,
            str(g["frames"]) if g["frames"] else "-",
            _span(g["steps"]),
        )
    console.print(table)

    if info["observables"]:
        table = Table(title="observables", title_justify="left")
        for col in ("observable", "frames", "steps", "last", "unit"):
            table.add_column(col, justify="right" if col == "frames" else "left")
        for o in info["observables"]:
            table.add_row(
                o["name"], str(o["frames"]), _span(o["steps"]), _short(o["last"]), o["unit"] or ""
            )
        console.print(table)
    else:
        console.print("observables: none recorded")

    if info["connectivity"]:
        table = Table(title="connectivity", title_justify="left")
        for col in ("interaction", "source → target", "weight shape", "frames", "steps"):
            table.add_column(col)
        for c in info["connectivity"]:
            table.add_row(
                c["name"],
                f"{c['source']} → {c['target']}",
                " × ".join(map(str, c["shape"])),
                str(c["frames"]),
                _span(c["steps"]),
            )
        console.print(table)
    else:
        console.print("connectivity: none recorded")

    table = Table(title="parameters", title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    params = dict(info["parameters"])
    toml_text = params.pop("scenario_toml", None)
    first = ("seed", "data_source", "versions", "plugins")
    for key in [*(k for k in first if k in params), *(k for k in params if k not in first)]:
        table.add_row(key, _short(params[key], 100))
    if isinstance(toml_text, str):
        table.add_row("scenario_toml", f"{len(toml_text.splitlines())} lines (use --json)")
    console.print(table)


def inspect_command(
    file: FileArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what a trajectory holds: groups, observables, connectivity, parameters."""
    with _opened(file) as tree:
        info = describe(tree, file)
    interrupted = _interrupted_note(file, info)
    if interrupted:
        info["state"] = interrupted
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _render(info)
        if interrupted:
            typer.echo(interrupted)


def _interrupted_note(file: Path, info: dict[str, Any]) -> str | None:
    """The line that says a killed writer left ``file`` flagged open, and what to do."""
    from particlesim.io.trajectory import left_open_for_writing

    if not left_open_for_writing(file):
        return None
    steps = [
        int(row["steps"][-1])
        for row in [*info.get("groups", []), *info.get("observables", [])]
        if isinstance(row.get("steps"), list) and row["steps"]
    ]
    at = f" at step {max(steps)}" if steps else ""
    return (
        f"state: interrupted{at} (its writer was killed); it opens with "
        f"h5py.File(path, 'r', swmr=True), or run `particlesim recover {file}` to make it "
        "plainly readable"
    )


def recover_command(
    files: Annotated[list[Path], typer.Argument(help="Trajectory files (.h5) of killed runs.")],
) -> None:
    """Make trajectories left by a killed run plainly readable again, keeping every frame.

    A run killed while writing leaves its file flagged "open for writing": plain
    ``h5py.File(path, "r")`` refuses it (only ``swmr=True`` opens it). This clears the flag
    (as ``h5clear -s`` does); every frame that was written stays. A file whose run is still
    alive (its directory locked) is left alone.
    """
    from particlesim.io.checkpoint import LOCK_FILE, CheckpointError, run_lock
    from particlesim.io.h5md import clear_status_flags
    from particlesim.io.trajectory import (
        TrajectoryError,
        check_file,
        left_open_for_writing,
        open_trajectory,
    )

    for file in files:
        try:
            check_file(file)
            if not left_open_for_writing(file):
                typer.echo(f"{file}: closed cleanly; nothing to recover")
                continue
            folder = file.resolve().parent
            lock = run_lock(folder) if (folder / LOCK_FILE).exists() else contextlib.nullcontext()
            with lock:  # a live run holds it: refused, naming its pid
                cleared = clear_status_flags(file)
            if not cleared:
                raise ParticlesimError(
                    f"{file}: its superblock could not be checked; left as it is"
                )
            tree = open_trajectory(file)
            frames = max((len(node.ds["step"]) for node in tree.subtree if "step" in node.ds),
                         default=0)  # fmt: skip
        except (CheckpointError, TrajectoryError, ParticlesimError, OSError) as exc:
            raise _fail(str(exc)) from None
        typer.echo(
            f"{file}: recovered; {frames} frames, readable with a plain h5py.File(path, 'r')"
        )


# --- analyze -------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """``20`` → 20, ``0.5`` → 0.5, ``true`` → True, ``none`` → None, ``0,5`` → [0, 5]."""
    if text.lower() in ("none", "null"):
        return None
    if "," in text and not text.startswith("["):
        return [_parse_value(part.strip()) for part in text.split(",")]
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--option expects KEY=VALUE (e.g. bins=20), got {item!r}")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def netcdf_engine() -> str:
    """The first netCDF engine installed: netcdf4, h5netcdf, else scipy (netCDF3)."""
    import importlib.util

    for engine, module in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ParticlesimError(
        "writing .nc needs netCDF4, h5netcdf or scipy; install one, or write .csv"
    )


def _nc_attrs(attrs: dict[Any, Any]) -> dict[str, Any]:
    """Attributes netCDF (3 included) can store: numbers, strings, 1-D numeric lists."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, dict) or (
            isinstance(value, list | tuple) and not all(isinstance(v, int | float) for v in value)
        ):
            value = json.dumps(_plain(value))
        out[str(key)] = value
    return out


def write_table(ds: xr.Dataset, out: Path) -> None:
    """Write metric results: netCDF (``.nc``) or CSV (``.csv``).

    CSV is wide (``to_dataframe().to_csv``: one column per variable, one row
    per coordinate tuple) when every variable has the same dims; otherwise
    long, one row per value with columns ``variable``, the dims and coords
    that apply (empty where they don't) and ``value``.
    """
    import pandas as pd

    if out.suffix.lower() == ".nc":
        ds = ds.copy()
        ds.attrs = _nc_attrs(ds.attrs)
        for var in ds.variables.values():
            var.attrs = _nc_attrs(var.attrs)
        ds.to_netcdf(out, engine=netcdf_engine())
        return
    dims = {tuple(da.dims) for da in ds.data_vars.values()}
    if len(dims) == 1 and next(iter(dims)):
        ds.to_dataframe().to_csv(out)
        return
    frames = []
    for name, da in ds.data_vars.items():
        if da.ndim:
            df = da.drop_attrs().to_dataframe(name="value").reset_index()
        else:
            df = pd.DataFrame({"value": [da.item()]})
        df.insert(0, "variable", name)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)
    # an integer column (step, spatial…) left empty for some variables would become float
    # ("20.0"); pandas' nullable integers keep "20" and leave the cell empty
    integer = {
        c for df in frames for c in df.columns if c != "value" and df[c].dtype.kind in "iu"
    } - {c for df in frames for c in df.columns if df[c].dtype.kind not in "iu"}
    for column in integer:
        table[column] = table[column].astype("Int64")
    columns = ["variable", *(c for c in table.columns if c not in ("variable", "value")), "value"]
    table[columns].to_csv(out, index=False)


def _metric_help() -> str:
    from particlesim.analysis.catalog import METRIC_INFO

    lines = [
        "Compute metrics of a trajectory and write them to .nc (netCDF) or .csv.",
        "",
        "Metrics (options with -O KEY=VALUE, e.g. -O bins=20 -O range=0,5):",
        "",
    ]
    for name, (text, options) in METRIC_INFO.items():
        # no square brackets: typer renders help as rich markup, which would swallow them
        opts = ", ".join(f"{k}={v}" for k, v in options.items())
        lines.append(f"{name}: {text}" + (f"; options: {opts}" if opts else "") + "\n")
    return "\n".join(lines)


def analyze_command(
    file: FileArgument,
    metrics: Annotated[list[str], typer.Argument(help="Metric names (see above).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output file: .nc (netCDF) or .csv.")
    ],
    group: GroupOption = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Metric option KEY=VALUE (repeatable)."),
    ] = None,
) -> None:
    from particlesim.analysis.metrics import METRICS, compute_metrics
    from particlesim.analysis.tree import unknown

    _check_suffix(output, TABLE_SUFFIXES, "output")
    for name in metrics:
        if name not in METRICS:
            raise _fail(unknown("metric", name, METRICS))
    options = _parse_options(option)
    with _opened(file) as tree:
        ds = compute_metrics(tree, metrics, groups=group, options=options)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            write_table(ds, output)
        except OSError as exc:
            raise _fail(f"{output}: cannot write: {exc}") from None
    typer.echo(f"wrote {len(ds.data_vars)} variables to {output}: {', '.join(ds.data_vars)}")


# --- plot, animate, view ------------------------------------------------------------------

ColorOption = Annotated[
    str,
    typer.Option(
        "--color",
        help="Per-particle field to colour by: charge (default), bias, id, … or none (grey).",
    ),
]
EdgesOption = Annotated[
    int, typer.Option(help="Strongest weights drawn per interaction in the network view.")
]


def _colour(color: str) -> str | None:
    return None if color.lower() == "none" else color


def _write_figure(fig: Any, output: Path, suffix: str, dpi: int) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, format=suffix[1:], dpi=dpi)
    except OSError as exc:
        raise _fail(f"{output}: cannot write: {exc}") from None
    except (ValueError, MemoryError, OverflowError) as exc:  # e.g. an image too large for Agg
        width, height = (round(float(x) * dpi) for x in fig.get_size_inches())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _fail(
            f"{output}: cannot render {width} x {height} pixels at --dpi {dpi}: "
            f"{type(exc).__name__}: {first}"
        ) from None


def plot_command(
    file: FileArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file: .png, .svg or .pdf.")],
    frame: Annotated[int, typer.Option(help="Frame of the positions (-1: last).")] = -1,
    group: GroupOption = None,
    kind: Annotated[
        str,
        typer.Option(
            help="all (observables, positions, network), observables, positions, network, "
            "or both (observables and positions)."
        ),
    ] = "all",
    projection: Annotated[
        str, typer.Option(help="auto (D > 2 by PCA per group), 2d, 3d or pca.")
    ] = "auto",
    color: ColorOption = "charge",
    edges: EdgesOption = 200,
    observable: Annotated[
        list[str] | None,
        typer.Option("--observable", help="Only this observable (repeatable; default: all)."),
    ] = None,
    dpi: Annotated[int, typer.Option(help="Resolution of raster output.")] = 120,
) -> None:
    """Plot observables, each group's particles (a panel each) and the network at one frame."""
    suffix = _check_suffix(output, FIGURE_SUFFIXES, "image")
    if dpi < 1:
        raise _fail(f"--dpi must be a positive integer, got {dpi}")
    if kind not in PLOT_KINDS:
        raise _fail(f"unknown plot kind {kind!r}; known kinds: {', '.join(PLOT_KINDS)}")
    if edges < 0:
        raise _fail(f"--edges must be >= 0, got {edges}")
    from particlesim.analysis import plots

    colour = _colour(color)
    with _opened(file) as tree:
        if kind == "observables":
            fig = plots.plot_observables(tree, observable)
        elif kind == "positions":
            fig = plots.plot_positions(tree, frame, group, projection, color=colour)
        elif kind == "network":
            fig = plots.plot_network(tree, frame, group, color=colour, edges=edges)
        else:
            parts = plots.PARTS if kind == "all" else ("observables", "positions")
            fig = plots.plot_summary(
                tree,
                frame,
                group,
                projection,
                color=colour,
                edges=edges,
                parts=parts,
                names=observable,
            )
        _write_figure(fig, output, suffix, dpi)
    typer.echo(f"wrote {output}")


def animate_command(
    file: FileArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="Animation: .gif or .mp4.")],
    fps: Annotated[int, typer.Option(help="Frames per second.")] = 10,
    group: GroupOption = None,
    every: Annotated[
        int, typer.Option(help="Use every K-th recorded frame (the last one is always kept).")
    ] = 1,
    projection: Annotated[str, typer.Option(help="auto, 2d, 3d or pca.")] = "auto",
    color: ColorOption = "charge",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Animate the particles moving over training, a panel per group as in ``plot``."""
    from particlesim.analysis import plots
    from particlesim.analysis.tree import AnalysisError

    try:
        plots.check_animation_path(output)
    except AnalysisError as exc:
        raise _fail(str(exc)) from None
    if every < 1:
        raise _fail(f"--every must be a positive integer, got {every}")
    with _opened(file) as tree:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(f"{output}: cannot write: {exc}") from None
        plots.animate(
            tree,
            output,
            groups=group,
            every=every,
            fps=fps,
            progress=progress and sys.stderr.isatty(),
            projection=projection,
            color=_colour(color),
        )
    typer.echo(f"wrote {output}")


def view_command(
    file: FileArgument,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file (default: view.html beside FILE)."),
    ] = None,
    group: GroupOption = None,
    color: ColorOption = "charge",
    max_frames: Annotated[
        int,
        typer.Option(
            help="Most frames the page holds, spread evenly (first and last kept); fewer "
            "when frames x particles would pass 300,000."
        ),
    ] = 100,
    edges: EdgesOption = 200,
) -> None:
    """Write an interactive viewer: one HTML file that opens offline in any browser.

    A frame slider and play button; a panel per group coloured by charge (or --color);
    hover shows group, index, charge and position; the network's strongest weights; the
    loss and accuracy curves with the current step marked.
    """
    from particlesim.analysis.view import write_view

    if output is None:
        output = file.with_name("view.html")
    if output.suffix.lower() not in (".html", ".htm"):
        suffix = output.suffix or "(none)"
        raise _fail(f"unsupported viewer format {suffix!r} for {output}; use .html")
    if max_frames < 1:
        raise _fail(f"--max-frames must be a positive integer, got {max_frames}")
    if edges < 0:
        raise _fail(f"--edges must be >= 0, got {edges}")
    with _opened(file) as tree:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            path = write_view(
                tree,
                output,
                groups=group,
                color=_colour(color),
                max_frames=max_frames,
                edges=edges,
            )
        except OSError as exc:
            raise _fail(f"{output}: cannot write: {exc}") from None
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


COMMANDS: dict[str, Callable[..., None]] = {
    "inspect": inspect_command,
    "analyze": analyze_command,
    "plot": plot_command,
    "animate": animate_command,
    "view": view_command,
    "recover": recover_command,
}


def register(app: typer.Typer) -> None:
    """Add the trajectory commands to ``app`` (idempotent)."""
    existing = {
        info.name or (info.callback.__name__.replace("_", "-") if info.callback else None)
        for info in app.registered_commands
    }
    for name, func in COMMANDS.items():
        if name in existing:
            continue
        if name == "analyze":
            app.command(name, help=_metric_help())(func)
        else:
            app.command(name)(func)
