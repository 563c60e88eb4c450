"""Malformed and hostile trajectory files: every reader path ends in one clear line, never a hang.

Each case builds a file (or a path) that is broken or crafted: not HDF5, cut
short, wrong types and shapes, missing pieces, shapes declared in the
terabytes, external links and external raw storage pointing elsewhere, a
link cycle, a FIFO. The Python reader must either read what is sound or raise
:class:`TrajectoryError`; ``particlesim inspect`` and ``plot`` must either
succeed or print exactly one ``error:`` line, exit 2 and show no traceback.

A second corpus holds files that are inconsistent rather than broken: lengths
declared but never written (10^9 frames in a few kB), dangling soft links,
values that are not numbers, series of one clock with different lengths. Every
reader (``open_trajectory``, the xarray engine, ``inspect``, ``analyze``,
``plot``, ``animate``) must end in one error line, or go on with a warning,
naming the file and the HDF5 path; never drop a group silently nor add a stray
``time_1`` axis; and never allocate in proportion to a declared size. Last, on
a long trajectory (held by the file as compressed zeros) the commands stay
within a memory bound set by ``PARTICLESIM_SLICE_BYTES``, not by its length.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.errors import TrajectoryError
from particlesim.io.h5md import (
    LIBVER,
    SERIES_ATTR,
    write_box,
    write_h5md_header,
    write_synthetic,
)
from particlesim.io.trajectory import (
    TrajectoryWarning,
    left_open_for_writing,
    open_group,
    open_trajectory,
)

runner = CliRunner()


# --------------------------------------------------------------------------- file makers


def _sound(path: Path, *, frames: int = 4, particles: int = 5, dim: int = 2) -> Path:
    """A small valid trajectory in the writer's layout (one group, one observable)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", libver=LIBVER, track_order=True) as file:
        write_h5md_header(file, creator_version="test", author="test")
        node = file.create_group("particles").create_group("hidden")
        write_box(node, dim)
        element = node.create_group("position")
        step = element.create_dataset("step", data=np.arange(frames, dtype=np.int64) * 10)
        step.attrs[SERIES_ATTR] = "particles"
        element.create_dataset("time", data=np.arange(frames, dtype=np.float64))
        element.create_dataset("value", data=rng.standard_normal((frames, particles, dim)))
        charge = node.create_group("charge")
        charge["step"] = step
        charge["time"] = element["time"]
        charge.create_dataset("value", data=rng.standard_normal((frames, particles)))
        loss = file.create_group("observables").create_group("loss")
        loss["step"] = step
        loss["time"] = element["time"]
        loss.create_dataset("value", data=rng.random(frames))
        parameters = file.create_group("parameters")
        parameters.create_dataset("scenario_toml", data="[scenario]\nname = 'x'\n")
        parameters.attrs["seed"] = 0
    return path


def zero_chunks(dataset: h5py.Dataset) -> None:
    """Store every chunk of a gzip ``dataset`` as zeros, written directly (fast, tiny on disk)."""
    zeros = zlib.compress(bytes(math.prod(dataset.chunks) * dataset.dtype.itemsize))
    starts = [range(0, n, c) for n, c in zip(dataset.shape, dataset.chunks, strict=True)]
    for offset in itertools.product(*starts):
        dataset.id.write_direct_chunk(offset, zeros)


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path) -> Path:
    _sound(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def superblock_only(path: Path) -> Path:
    _sound(path)
    path.write_bytes(path.read_bytes()[:40])
    return path


def plain_hdf5(path: Path) -> Path:
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=np.arange(3))
    return path


def h5md_is_a_dataset(path: Path) -> Path:
    with h5py.File(path, "w") as file:
        file.create_dataset("h5md", data=np.arange(3))
    return path


def particles_is_a_dataset(path: Path) -> Path:
    with h5py.File(path, "w") as file:
        write_h5md_header(file, creator_version="test")
        file.create_dataset("particles", data=np.arange(3))
    return path


def string_values(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/charge/value"]
        file["particles/hidden/charge"].create_dataset(
            "value", data=np.array([[b"a"] * 5] * 4), dtype=h5py.string_dtype()
        )
    return path


def compound_values(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss/value"]
        kind = np.dtype([("a", np.float64), ("b", np.int32)])
        file["observables/loss"].create_dataset("value", data=np.zeros(4, dtype=kind))
    return path


def string_steps(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss/step"]
        file["observables/loss"].create_dataset(
            "step", data=np.array([b"x", b"y", b"z", b"w"]), dtype=h5py.string_dtype()
        )
    return path


def missing_step(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/step"]
    return path


def scalar_value(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss/value"]
        file["observables/loss"].create_dataset("value", data=1.0)
    return path


def mismatched_lengths(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/charge/value"]
        file["particles/hidden/charge"].create_dataset("value", data=np.zeros((4, 7)))
    return path


def huge_frame(path: Path) -> Path:
    """A value dataset declaring 10^10 particles (nothing allocated): 120 GB a frame."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/value"]
        del file["particles/hidden/charge"]
        file["particles/hidden/position"].create_dataset(
            "value", shape=(4, 10**10, 3), dtype=np.float32, chunks=(1, 1024, 3)
        )
    return path


def huge_steps(path: Path) -> Path:
    """A ``step`` dataset declaring 10^12 frames (8 TB if read whole)."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss"]
        loss = file["observables"].create_group("loss")
        loss.create_dataset("step", shape=(10**12,), dtype=np.int64, chunks=(1024,))
        loss.create_dataset("value", shape=(10**12,), dtype=np.float64, chunks=(1024,))
    return path


def external_link(path: Path) -> Path:
    other = _sound(path.with_name("other.h5"))
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden"]
        file["particles/hidden"] = h5py.ExternalLink(str(other), "/particles/hidden")
    return path


def dangling_external_link(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["observables/elsewhere"] = h5py.ExternalLink("/nonexistent/file.h5", "/x")
    return path


def external_storage(path: Path) -> Path:
    """Raw data kept in another file (here a text file): a reader must not follow it."""
    secret = path.with_name("secret.txt")
    secret.write_bytes(b"top secret " * 100)
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss/value"]
        file["observables/loss"].create_dataset(
            "value", shape=(4,), dtype=np.float64, external=[(str(secret), 0, 32)]
        )
    return path


def virtual_dataset(path: Path) -> Path:
    other = _sound(path.with_name("source.h5"))
    _sound(path)
    layout = h5py.VirtualLayout(shape=(4,), dtype=np.float64)
    layout[:] = h5py.VirtualSource(str(other), "observables/loss/value", shape=(4,))
    with h5py.File(path, "a") as file:
        del file["observables/loss/value"]
        file["observables/loss"].create_virtual_dataset("value", layout)
    return path


def link_cycle(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["observables/loop"] = file["observables"]  # a hard link to its own parent
    return path


def deep_nesting(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        group = file["parameters"]
        for i in range(300):
            group = group.create_group(f"d{i}")
        group.attrs["bottom"] = 1
    return path


def bad_box(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["particles/hidden/box"].attrs["dimension"] = "three"
    return path


def odd_names(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["particles"].move("hidden", "hid\nden\u202e\x1b[31m")
        file["h5md/creator"].attrs["name"] = np.bytes_(b"\xff\xfe bad")
    return path


def non_finite_values(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["particles/hidden/position/value"][...] = np.nan
        file["observables/loss/value"][...] = np.inf
    return path


def garbage_scenario(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["parameters/scenario_toml"]
        file["parameters"].create_dataset("scenario_toml", data="[[[ not toml \x01")
    return path


def a_directory(path: Path) -> Path:
    path.mkdir()
    return path


def a_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def a_device(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


def a_symlink_loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


Maker = Callable[[Path], Path]

#: (maker, what the reader does: "ok" or a regular expression of the TrajectoryError)
CASES: dict[str, tuple[Maker, str]] = {
    "random_bytes": (random_bytes, "not an HDF5 file"),
    "empty_file": (empty_file, "not an HDF5 file"),
    "truncated": (truncated, "truncated HDF5 file"),
    "superblock_only": (superblock_only, "truncated HDF5 file"),
    "plain_hdf5": (plain_hdf5, "not an H5MD file"),
    "h5md_is_a_dataset": (h5md_is_a_dataset, "not an H5MD file"),
    "particles_is_a_dataset": (particles_is_a_dataset, "ok"),
    "string_values": (string_values, "ok"),
    "compound_values": (compound_values, "ok"),
    "string_steps": (string_steps, "step.*not integers"),
    "missing_step": (missing_step, "ok"),
    "scalar_value": (scalar_value, "ok"),
    "mismatched_lengths": (mismatched_lengths, "fields of different lengths"),
    "huge_frame": (huge_frame, "declares 10000000000 particles"),
    "huge_steps": (huge_steps, "declares 1000000000000 frames"),
    "external_link": (external_link, "external link"),
    "dangling_external_link": (dangling_external_link, "external link"),
    "external_storage": (external_storage, "external raw storage"),
    "virtual_dataset": (virtual_dataset, "virtual dataset"),
    "link_cycle": (link_cycle, "ok"),
    "deep_nesting": (deep_nesting, "ok"),
    "bad_box": (bad_box, "ok"),
    "odd_names": (odd_names, "ok"),
    "non_finite_values": (non_finite_values, "ok"),
    "garbage_scenario": (garbage_scenario, "ok"),
    "a_directory": (a_directory, "is a directory"),
    "a_fifo": (a_fifo, "not a regular file"),
    "a_device": (a_device, "not a regular file"),
    "a_symlink_loop": (a_symlink_loop, "cannot be read|no such file|symbolic links"),
}


@pytest.fixture(params=sorted(CASES))
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str]:
    name = request.param
    maker, expected = CASES[name]
    return name, maker(tmp_path / "trajectory.h5"), expected


def _load_everything(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrajectoryWarning)  # a foreign creator name
        tree = open_trajectory(path)
    for node in tree.subtree:
        ds = node.to_dataset()
        for var in ds.data_vars.values():
            if var.size < 10**7:
                var.load()


def test_reader_reads_what_is_sound_or_raises_one_line(hostile) -> None:
    _, path, expected = hostile
    if expected == "ok":
        _load_everything(path)
        return
    with pytest.raises(TrajectoryError) as caught:
        _load_everything(path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(expected, message), message


def _assert_clean(result, name: str) -> None:
    """Exit 0, or exit 2 with exactly one ``error:`` line; never a traceback."""
    assert "Traceback" not in result.output, f"{name}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{name}: {result.exception!r}"
    )
    if result.exit_code != 0:
        assert result.exit_code == 2, f"{name}: exit {result.exit_code}: {result.output}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"{name}: {result.stderr}"


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # control characters in names
def test_cli_inspect_and_plot_end_cleanly(hostile, tmp_path: Path) -> None:
    name, path, expected = hostile
    inspected = runner.invoke(app, ["inspect", str(path), "--json"])
    _assert_clean(inspected, name)
    assert (inspected.exit_code == 0) == (expected == "ok"), f"{name}: {inspected.output}"
    if expected != "ok":
        return
    figure = tmp_path / "figure.png"
    plotted = runner.invoke(
        app, ["plot", str(path), "-o", str(figure), "--kind", "positions", "--dpi", "20"]
    )
    _assert_clean(plotted, name)
    viewed = runner.invoke(app, ["view", str(path), "-o", str(tmp_path / "view.html")])
    _assert_clean(viewed, name)


def test_a_read_larger_than_allowed_is_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _sound(tmp_path / "trajectory.h5")
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/value"]
        del file["particles/hidden/charge"]
        value = file["particles/hidden/position"].create_dataset(
            "value", shape=(4, 10**6, 3), dtype=np.float32, chunks=(1, 1024, 3), compression="gzip"
        )
        zero_chunks(value)  # held by the file (48 MB of zeros in a few kB)
    monkeypatch.setenv("PARTICLESIM_MAX_READ_BYTES", str(10**7))  # 10 MB; a frame is 12 MB
    ds = open_group(path, "hidden")
    assert ds.position.shape == (4, 10**6, 3)  # declared, not read
    with pytest.raises(TrajectoryError, match=r"position/value \[1000000, 3\].* more than"):
        ds.position.isel(time=-1).values  # noqa: B018
    assert ds.position.isel(time=0, particle=slice(0, 3)).values.shape == (3, 3)


def test_a_group_larger_than_the_read_limit_names_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _sound(tmp_path / "trajectory.h5", particles=9)
    monkeypatch.setenv("PARTICLESIM_MAX_READ_BYTES", "16")  # the 4 steps take 32 bytes
    with pytest.raises(
        TrajectoryError,
        match=r"declares 4 frames, more than the 16 bytes .*MAX_READ_BYTES\); raise",
    ):
        open_group(path, "hidden")
    monkeypatch.setenv("PARTICLESIM_MAX_READ_BYTES", "40")  # steps fit, 9 particles do not
    with pytest.raises(
        TrajectoryError, match=r"declares \d+ particles, more than the 40 bytes .*MAX_READ_BYTES"
    ):
        open_group(path, "hidden")


def test_external_storage_is_never_read(tmp_path: Path) -> None:
    path = external_storage(tmp_path / "trajectory.h5")
    with pytest.raises(TrajectoryError, match="external raw storage") as caught:
        open_trajectory(path)
    assert "top secret" not in str(caught.value)


def test_xarray_engine_reports_hostile_files_as_trajectory_errors(tmp_path: Path) -> None:
    import xarray as xr

    for maker in (random_bytes, truncated, external_link):
        path = maker(tmp_path / f"{maker.__name__}.h5")
        with pytest.raises(TrajectoryError):
            xr.open_dataset(path, engine="particlesim", group="hidden")


def test_no_eval_exec_or_pickle_of_user_files() -> None:
    """The engine never evaluates scenario text nor unpickles user files."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(
        r"(?<![.\w])eval\(|(?<![.\w])exec\(|pickle\.loads?\(|weights_only\s*=\s*False"
        r"|allow_pickle\s*=\s*True"
    )
    offenders = []
    for folder in ("particlesim", "plugins"):
        for source in (root / folder).rglob("*.py"):
            for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{source.relative_to(root)}:{number}: {line.strip()}")
            text = source.read_text(encoding="utf-8")
            for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in call.group(1):
                    offenders.append(f"{source.relative_to(root)}: torch.load({call.group(1)})")
    assert offenders == []


def test_cli_names_every_plugin_file_it_loads(tiny_scenario: Path, tmp_path: Path) -> None:
    """Plugin files run only when a scenario or ``-p`` names them, and the CLI says so."""
    plugin = tmp_path / "announced.py"
    plugin.write_text(
        "from particlesim import hookimpl\n\n@hookimpl\ndef particlesim_register_kernels():\n"
        "    return []\n"
    )
    silent = runner.invoke(app, ["validate", str(tiny_scenario)])
    assert silent.exit_code == 0 and "plugin: loaded" not in silent.stderr
    named = tiny_scenario.read_text().replace(
        "[scenario]", 'plugins = ["announced.py"]\n\n[scenario]'
    )
    (tmp_path / "named.toml").write_text(named)
    loaded = runner.invoke(app, ["validate", str(tmp_path / "named.toml")])
    assert loaded.exit_code == 0, loaded.output
    assert f"plugin: loaded announced from {plugin}" in loaded.stderr


# --------------------------------------------------------------------------- inconsistent files


def declared_frames(path: Path) -> Path:
    """Resizable series resized to 10^9 frames without a write: 7.5 GiB of step declared."""
    with h5py.File(path, "w", libver=LIBVER, track_order=True) as file:
        write_h5md_header(file, creator_version="test", author="test")
        node = file.create_group("particles").create_group("hidden")
        write_box(node, 2)
        element = node.create_group("position")
        step = element.create_dataset(
            "step", data=np.arange(4) * 10, maxshape=(None,), chunks=(1024,)
        )
        step.attrs[SERIES_ATTR] = "particles"
        time = element.create_dataset("time", data=np.arange(4.0), maxshape=(None,), chunks=(1024,))
        value = element.create_dataset(
            "value", data=np.ones((4, 5, 2)), maxshape=(None, 5, 2), chunks=(64, 5, 2)
        )
        loss = file.create_group("observables").create_group("loss")
        loss["step"], loss["time"] = step, time
        observed = loss.create_dataset("value", data=np.ones(4), maxshape=(None,), chunks=(1024,))
        for dataset in (step, time, value, observed):
            dataset.resize(10**9, axis=0)
    return path


def declared_values(path: Path) -> Path:
    """Only a value dataset declares 10^9 frames; its step holds 4."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/value"]
        value = file["particles/hidden/position"].create_dataset(
            "value", data=np.ones((4, 5, 2)), maxshape=(None, 5, 2), chunks=(64, 5, 2)
        )
        value.resize(10**9, axis=0)
    return path


def unwritten_values(path: Path) -> Path:
    """A chunked value dataset of 4 frames that was declared and never written."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/value"]
        file["particles/hidden/position"].create_dataset(
            "value", shape=(4, 5, 2), dtype=np.float64, chunks=(1, 5, 2)
        )
    return path


def unwritten_contiguous(path: Path) -> Path:
    """A contiguous value dataset declared and never written (HDF5 allocates nothing)."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/charge/value"]
        file["particles/hidden/charge"].create_dataset("value", shape=(4, 5), dtype=np.float64)
    return path


def dangling_group(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["particles/ghost"] = h5py.SoftLink("/nowhere/ghost")
    return path


def dangling_field(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["particles/hidden/velocity"] = h5py.SoftLink("/missing/velocity")
    return path


def dangling_observable(path: Path) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        file["observables/accuracy"] = h5py.SoftLink("/observables/nothing")
    return path


def _replace_position(path: Path, data: np.ndarray, dtype: Any = None) -> Path:
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["particles/hidden/position/value"]
        file["particles/hidden/position"].create_dataset("value", data=data, dtype=dtype)
    return path


def string_position(path: Path) -> Path:
    return _replace_position(path, np.full((4, 5, 2), b"x"), h5py.string_dtype())


def compound_position(path: Path) -> Path:
    kind = np.dtype([("x", np.float64), ("y", np.float64)])
    return _replace_position(path, np.zeros((4, 5), dtype=kind))


def object_position(path: Path) -> Path:
    """Variable-length sequences (numpy object arrays) where numbers belong."""
    data = np.empty((4, 5), dtype=object)
    for index in np.ndindex(data.shape):
        data[index] = np.zeros(2)
    return _replace_position(path, data, h5py.vlen_dtype(np.float64))


def step_time_mismatch(path: Path) -> Path:
    """An observable whose step has 4 frames and time 3."""
    _sound(path)
    with h5py.File(path, "a") as file:
        del file["observables/loss"]
        loss = file["observables"].create_group("loss")
        loss.create_dataset("step", data=np.arange(4) * 10)
        loss.create_dataset("time", data=np.arange(3.0))
        loss.create_dataset("value", data=np.arange(4.0))
    return path


def shared_step_short_value(path: Path) -> Path:
    """A second group on the first one's step, with 2 of its 4 frames (was a stray time_1)."""
    _sound(path)
    with h5py.File(path, "a") as file:
        hidden = file["particles/hidden"]
        other = file["particles"].create_group("other")
        write_box(other, 2)
        position = other.create_group("position")
        position["step"], position["time"] = hidden["position/step"], hidden["position/time"]
        position.create_dataset("value", data=np.zeros((2, 3, 2)))
    return path


#: name -> (maker, "error" or "warning", regular expression of the HDF5 path it names,
#: the node to open with xr.open_dataset(group=...) (None: the file's one particle group))
INCONSISTENT: dict[str, tuple[Maker, str, str, str | None]] = {
    "declared_frames": (
        declared_frames,
        "error",
        r"/position/step declares 1000000000 frames",
        None,
    ),
    "declared_values": (
        declared_values,
        "warning",
        r"/particles/hidden/position/value 1000000000",
        "hidden",
    ),
    "unwritten_values": (
        unwritten_values,
        "error",
        r"/particles/hidden/position/value declares 4 frames",
        "hidden",
    ),
    "unwritten_contiguous": (
        unwritten_contiguous,
        "error",
        r"/particles/hidden/charge/value declares 4 frames",
        "hidden",
    ),
    "dangling_group": (
        dangling_group,
        "warning",
        r"/particles/ghost is a soft link to /nowhere/ghost",
        None,
    ),
    "dangling_field": (
        dangling_field,
        "warning",
        r"/particles/hidden/velocity is a soft link",
        "hidden",
    ),
    "dangling_observable": (
        dangling_observable,
        "warning",
        r"/observables/accuracy is a soft link",
        "observables",
    ),
    "string_position": (
        string_position,
        "warning",
        r"/particles/hidden/position/value holds strings",
        "hidden",
    ),
    "compound_position": (
        compound_position,
        "warning",
        r"/particles/hidden/position/value holds compound",
        "hidden",
    ),
    "object_position": (
        object_position,
        "warning",
        r"/particles/hidden/position/value holds variable-length",
        "hidden",
    ),
    "step_time_mismatch": (
        step_time_mismatch,
        "warning",
        r"/observables/loss/time 3",
        "observables",
    ),
    "shared_step_short_value": (
        shared_step_short_value,
        "warning",
        r"/particles/other/position/value 2",
        "hidden",
    ),
}

#: Traced allocations (numpy arrays included) one reader may add; declared sizes are gigabytes.
READ_BOUND = 32 << 20


def _traced(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result (or the exception it raised) and the peak of traced memory it added."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            result = call()
        except Exception as exc:  # returned, to be compared
            result = exc
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return result, peak


def _python_reader(open_it: Callable[[Path], Any]) -> Callable[[Path, Path], list[str]]:
    def read(path: Path, tmp_path: Path) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = open_it(path)
            if not isinstance(result, Exception):  # read every value, as a user may
                nodes = result.subtree if isinstance(result, xr.DataTree) else [result]
                for node in nodes:
                    ds = node.to_dataset() if isinstance(node, xr.DataTree) else node
                    ds.load()
        lines = [f"warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
        if isinstance(result, TrajectoryError):
            lines.append(f"error: {result}")
        elif isinstance(result, Exception):
            raise result
        return lines

    return read


def _cli_reader(*args: str) -> Callable[[Path, Path], list[str]]:
    def read(path: Path, tmp_path: Path) -> list[str]:
        out = [a.format(tmp=tmp_path) for a in args]
        result = runner.invoke(app, [out[0], str(path), *out[1:]])
        _assert_clean(result, out[0])
        lines = [
            line for line in result.stderr.splitlines() if line.startswith(("error:", "warning:"))
        ]
        if result.exit_code == 0 and out[0] == "analyze":
            header = (tmp_path / "metric.csv").read_text().splitlines()[0].split(",")
            assert not [c for c in header if re.search(r"_\d+$", c)], f"stray columns: {header}"
        return lines

    return read


def _open_engine(node: str | None) -> Callable[[Path], Any]:
    def open_it(path: Path) -> Any:
        try:
            return xr.open_dataset(path, engine="particlesim", group=node)
        except TrajectoryError as exc:
            return exc

    return open_it


def _open(path: Path) -> Any:
    try:
        return open_trajectory(path)
    except TrajectoryError as exc:
        return exc


READERS = {
    "open_trajectory": lambda node: _python_reader(_open),
    "xr.open_dataset": lambda node: _python_reader(_open_engine(node)),
    "xr.open_datatree": lambda node: _python_reader(
        lambda p: _catch(lambda: xr.open_datatree(p, engine="particlesim"))
    ),
    "inspect": lambda node: _cli_reader("inspect", "--json"),
    "analyze": lambda node: _cli_reader("analyze", "centroid", "-o", "{tmp}/metric.csv"),
    "plot": lambda node: _cli_reader("plot", "-o", "{tmp}/figure.png", "--dpi", "20"),
    "animate": lambda node: _cli_reader("animate", "-o", "{tmp}/movie.gif", "--no-progress"),
    "view": lambda node: _cli_reader("view", "-o", "{tmp}/view.html"),
}


def _catch(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except TrajectoryError as exc:
        return exc


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_every_reader_names_the_hdf5_path_of_an_inconsistency(
    case: str, reader: str, tmp_path: Path
) -> None:
    maker, kind, where, node = INCONSISTENT[case]
    path = maker(tmp_path / "trajectory.h5")
    read = READERS[reader](node)
    read(_sound(tmp_path / "warm.h5"), tmp_path)  # imports and font caches out of the count
    lines, peak = _traced(lambda: read(path, tmp_path))
    if isinstance(lines, Exception):
        raise lines
    assert peak < READ_BOUND, f"{case}/{reader}: {peak / 2**20:.0f} MiB traced"
    naming = [line for line in lines if path.name in line and re.search(where, line)]
    assert naming, f"{case}/{reader}: nothing names {where!r}: {lines}"
    errors = [line for line in lines if line.startswith("error:")]
    if kind == "error":
        assert len(errors) == 1 and naming == errors, f"{case}/{reader}: {lines}"
        assert "\n" not in errors[0]
    else:
        assert naming[0].startswith("warning:"), f"{case}/{reader}: {lines}"


PEAK_RSS_SCRIPT = """
import resource, sys
from typer.testing import CliRunner
from particlesim.cli.app import app

def peak():
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return high if sys.platform == "darwin" else high * 1024

def run(path, out, code):
    for args in (["inspect", path], ["analyze", path, "centroid", "-o", out + "/m.csv"],
                 ["plot", path, "-o", out + "/p.png"], ["animate", path, "-o", out + "/a.gif"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == code, result.output
        assert code == 0 or "declares 1000000000 frames" in result.stderr, result.output

sound, hostile, out = sys.argv[1:]
run(sound, out, 0)  # imports, font caches, a first figure and animation
before = peak()
run(hostile, out, 2)
print(peak() - before)
"""


def test_a_declared_billion_frames_keeps_the_peak_rss_of_a_small_file(tmp_path: Path) -> None:
    """Resident memory, C allocations included (HDF5's), grows by far less than 7.5 GiB.

    In a child process the four commands run on a small sound file, then on a
    file declaring 10^9 frames; the high-water mark of the second round may not
    rise by more than 256 MiB.
    """
    sound = _sound(tmp_path / "sound.h5")
    path = declared_frames(tmp_path / "trajectory.h5")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(sound), str(path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rise = int(done.stdout.split()[-1])
    assert rise < 256 << 20, f"peak RSS rose by {rise / 2**20:.0f} MiB"


def test_a_file_being_written_shows_no_warning_for_its_frame_in_progress(tmp_path: Path) -> None:
    """Values and time appended, step not yet: the writer's order; read silently, step's length."""
    path = _sound(tmp_path / "trajectory.h5")
    with h5py.File(path, "a") as file:
        for name in ("particles/hidden/position/value", "particles/hidden/charge/value"):
            data = file[name][()]
            del file[name]
            file.create_dataset(name, data=np.concatenate([data, data[-1:]]))
        time = file["particles/hidden/position/time"]
        values = time[()]
        for name in ("particles/hidden/position/time", "particles/hidden/charge/time"):
            del file[name]
        new = file.create_dataset("particles/hidden/position/time", data=[*values, 9.0])
        file["particles/hidden/charge/time"] = new
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_group(path, "hidden")
    assert ds.sizes["time"] == 4 and ds.position.shape == (4, 5, 2)


def _values_ahead_of_step(path: Path, rows: int) -> Path:
    """The writer's layout with every value and time ``rows`` frames ahead of ``step``."""
    _sound(path)
    with h5py.File(path, "a") as file:
        step = file["particles/hidden/position/step"]
        for name in ("position/time", "position/value", "charge/value"):
            data = file[f"particles/hidden/{name}"][()]
            del file[f"particles/hidden/{name}"]
            more = np.concatenate([data, np.repeat(data[-1:], rows, axis=0)])
            file.create_dataset(f"particles/hidden/{name}", data=more)
        file["particles/hidden/charge"].pop("time")
        file["particles/hidden/charge/time"] = file["particles/hidden/position/time"]
        del file["observables/loss"]
        loss = file["observables"].create_group("loss")
        loss["step"], loss["time"] = step, file["particles/hidden/position/time"]
        loss.create_dataset("value", data=np.arange(4.0 + rows))
    return path


def _flag_open_for_writing(path: Path) -> None:
    """Set the superblock's "open for SWMR writing" flags, as a live or killed writer does."""
    from particlesim.io.h5md import _lookup3

    block = bytearray(path.read_bytes()[:48])
    assert block[8] in (2, 3) and block[9] == 8  # superblock v2/v3, 8-byte offsets
    block[11] = 0x05  # write access | SWMR write access
    with path.open("r+b") as handle:
        handle.write(bytes(block[:44]) + _lookup3(bytes(block[:44])).to_bytes(4, "little"))


def test_a_live_file_reads_silently_however_far_values_run_ahead_of_step(
    tmp_path: Path,
) -> None:
    """Read while the writer appends, later-read series are ahead; closed, that is a warning."""
    live = _values_ahead_of_step(tmp_path / "live.h5", rows=3)
    _flag_open_for_writing(live)
    assert left_open_for_writing(live)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = open_trajectory(live)
    assert tree["particles/hidden"].sizes["time"] == tree["observables"].sizes["time"] == 4
    closed = _values_ahead_of_step(tmp_path / "closed.h5", rows=3)
    with pytest.warns(TrajectoryWarning, match=r"position/value 7.*read the first 4 frames"):
        open_trajectory(closed)


def test_open_group_and_open_trajectory_agree_on_a_shared_clock(tmp_path: Path) -> None:
    path = shared_step_short_value(tmp_path / "trajectory.h5")
    with pytest.warns(TrajectoryWarning, match=r"other/position/value 2\); read the first 2"):
        alone = open_group(path, "hidden")
    with pytest.warns(TrajectoryWarning):
        tree = open_trajectory(path)
    assert alone.sizes["time"] == tree["particles/hidden"].sizes["time"] == 2
    assert tree["observables"].sizes["time"] == 2  # the loss shares the clock too
    assert tree.attrs.get("skipped") is None


def test_left_out_elements_are_listed_and_warned(tmp_path: Path) -> None:
    path = string_position(tmp_path / "trajectory.h5")
    with pytest.warns(TrajectoryWarning, match=r"position/value holds strings .*; left out"):
        tree = open_trajectory(path)
    assert tree.attrs["skipped"] == ["/particles/hidden/position"]
    assert "position" not in tree["particles/hidden"].data_vars
    assert "charge" in tree["particles/hidden"].data_vars


def test_a_selection_by_index_reads_only_those_rows(tmp_path: Path) -> None:
    """isel(time=[0, last]) reads two frames, not the span between them."""
    path = write_synthetic(tmp_path / "long.h5", frames=4096, particles=256, dim=3, fill=False)
    position = open_group(path, "hidden").position
    reads: list[Any] = []
    original = h5py.Dataset.__getitem__

    def counting(self: h5py.Dataset, key: Any) -> Any:
        out = original(self, key)
        reads.append(np.shape(out))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(h5py.Dataset, "__getitem__", counting)
        picked = position.isel(time=[0, 4095, 7], particle=[3, 1]).values
    assert picked.shape == (3, 2, 3)
    assert reads and all(shape[0] <= 3 for shape in reads), reads


# --------------------------------------------------------------------------- bounded memory


@pytest.fixture(scope="module")
def long_trajectory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 frames of 500 particles in 3-D (115 MiB as float32) and a [50,000, 40]
    observable (15 MiB), all zeros the file holds as gzip chunks (a few MB on disk)."""
    folder = tmp_path_factory.mktemp("long")
    path = write_synthetic(folder / "long.h5", frames=20_000, particles=500, dim=3, fill=False)
    with h5py.File(path, "a") as file:
        loss = file.create_group("observables").create_group("spectrum")
        steps = np.arange(50_000, dtype=np.int64)
        loss.create_dataset("step", data=steps, chunks=(4096,), compression="gzip")
        loss.create_dataset("time", data=steps * 0.01, chunks=(4096,), compression="gzip")
        value = loss.create_dataset(
            "value", shape=(50_000, 40), dtype=np.float64, chunks=(4096, 40), compression="gzip"
        )
        zero_chunks(value)
    return path


#: (command arguments, traced MiB allowed) with PARTICLESIM_SLICE_BYTES = 1 MiB: the values
#: take 115 MiB (230 MiB as float64); the bound is a few slices plus coordinates and results.
LONG_COMMANDS = {
    "inspect": (("inspect", "--json"), 8),
    "centroid": (("analyze", "centroid", "radius_of_gyration", "-o", "{tmp}/m.nc"), 16),
    "msd": (("analyze", "msd", "-O", "lag=true", "-O", "max_lag=2", "-o", "{tmp}/m.nc"), 16),
    "observables": (("plot", "--kind", "observables", "-o", "{tmp}/o.png", "--dpi", "20"), 24),
    "animate": (("animate", "--every", "4000", "--projection", "pca", "-o", "{tmp}/a.gif"), 16),
}


@pytest.mark.parametrize("command", sorted(LONG_COMMANDS))
def test_memory_is_bounded_by_the_slice_not_the_length(
    command: str, long_trajectory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from particlesim.analysis import plots

    monkeypatch.setenv("PARTICLESIM_SLICE_BYTES", str(1 << 20))
    monkeypatch.setattr(plots, "MAX_PLOT_VALUES", 100_000)  # an envelope of the 2,000,000 values
    args, mebibytes = LONG_COMMANDS[command]
    argv = [args[0], str(long_trajectory), *(a.format(tmp=tmp_path) for a in args[1:])]
    warm = [argv[0], str(_sound(tmp_path / "warm.h5")), *argv[2:]]
    if command == "observables":
        warm = [*warm[:2], "-o", str(tmp_path / "w.png")]
    runner.invoke(app, warm)  # imports, font caches
    result, peak = _traced(lambda: runner.invoke(app, argv))
    assert not isinstance(result, Exception) and result.exit_code == 0, result.output
    assert peak < mebibytes << 20, f"{command}: {peak / 2**20:.1f} MiB traced"


def test_a_gif_is_written_frame_by_frame(tmp_path: Path) -> None:
    """The GIF writer appends each frame to the file (matplotlib's PillowWriter keeps them all)."""
    from PIL import Image

    from particlesim.analysis.plots import GifStreamWriter, new_figure

    fig = new_figure(figsize=(2, 2), dpi=40)
    ax = fig.add_subplot()
    writer = GifStreamWriter(fps=4)
    sizes = []
    with writer.saving(fig, tmp_path / "a.gif", dpi=40):
        for i in range(3):
            ax.plot([0, 1], [0, i])
            writer.grab_frame()
            sizes.append((tmp_path / "a.gif").stat().st_size)
    assert sizes[0] > 0 and sizes[0] < sizes[1] < sizes[2]  # on disk as it goes
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 250 and gif.info["loop"] == 0
