"""Every value a scenario key's declared type admits works or is refused in one line.

Values are drawn from each key's declared type (the engine's sections and the plugins'
signatures, read through :func:`particlesim.scenario.options.option_hints`), over the whole
range TOML allows: integers in -2^63 … 2^63 - 1, floats with infinities and NaN, any text,
lists of these. Each drawn scenario goes through the user's path, ``validate`` →
``validate --build`` → ``run --set run.steps=2``; every stage ends with exit 0 or exit 2
(3 for a run that diverged) and one ``error:`` line, never a traceback. The slow suite draws
ten times as many.
"""

from __future__ import annotations

import copy
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import tomli_w
from conftest import TINY_SCENARIO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.cli.common import EXIT_DIVERGED, EXIT_ERROR
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import run_section, scenario_section
from particlesim.scenario.options import option_hints

REGISTRIES = PluginManager().load().registries

#: The keys drawn, by table: the engine's own sections and the tiny scenario's plugins
#: (a ``[[writers]]`` and a ``[[potentials]]`` entry included).
SECTIONS: dict[tuple[str, ...] | str, Any] = {
    "scenario": scenario_section,
    "run": run_section,
    "model": REGISTRIES["model"].get("particle_network"),
    "integrator": REGISTRIES["integrator"].get("adam"),
    "data": REGISTRIES["dataset"].get("idx"),
    ("writers", 0): REGISTRIES["writer"].get("trajectory"),
    ("potentials", 0): REGISTRIES["potential"].get("l2"),
}
#: Keys left alone: where the data lives (the test's own files), what the entry is.
FIXED = {("data", "data_dir"), (("writers", 0), "name"), (("potentials", 0), "name")}
EXTRA_TABLES = """
[[writers]]
name = "trajectory"
every = 1

[[potentials]]
name = "l2"
coefficient = 1e-4
"""

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
#: Boundaries a user meets first (0, 1, -1, 2^31, 2^53, 2^63 - 1) beside the whole range.
INTEGERS = st.one_of(st.sampled_from([0, 1, 2, -1, 3, 7, 2**31, 2**53 + 1, 2**63 - 1]), INT64)
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 0.5, -1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXT = st.text(max_size=16)


def strategy(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of ``annotation``'s type, over the whole range TOML can hold."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return INTEGERS
    if annotation is float:
        return st.one_of(FLOATS, INTEGERS)  # TOML integers are accepted as numbers
    if annotation is str:
        return TEXT
    if origin is Literal:
        return st.one_of(st.sampled_from(args), TEXT)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy(a) for a in args if a is not type(None)])
    if origin is list:
        return st.lists(strategy(args[0]) if args else INTEGERS, max_size=5)
    if origin is dict or annotation is dict:
        return st.dictionaries(TEXT, st.one_of(INTEGERS, FLOATS, TEXT), max_size=3)
    return st.one_of(INTEGERS, FLOATS, TEXT)


KEYS = [
    (section, key, hint)
    for section, factory in SECTIONS.items()
    for key, hint in option_hints(factory).items()
    if key != "return" and (section, key) not in FIXED
]


@st.composite
def scenarios(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The tiny scenario with one to three keys set to values of their declared type."""
    document = copy.deepcopy(base)
    changed = []
    for section, key, hint in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)):
        value = draw(strategy(hint))
        if isinstance(section, tuple):
            document[section[0]][section[1]][key] = value
            where = f"{section[0]}[{section[1]}]"
        else:
            document.setdefault(section, {})[key] = value
            where = section
        changed.append(f"{where}.{key}={value!r}")
    return document, changed


def assert_one_line(result: Any, stage: str, changed: list[str]) -> bool:
    """The stage succeeded (True) or failed in exactly one ``error:`` line (False)."""
    where = f"{stage} with {changed}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{where}: {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in result.output, f"{where}: {result.output[-2000:]}"
    if result.exit_code == 0:
        return True
    # 2: refused; 3: a run that diverged (e.g. a kernel width of 1e-300), its state kept
    assert result.exit_code in (EXIT_ERROR, EXIT_DIVERGED), (
        f"{where}: exit {result.exit_code}: {result.output[-2000:]}"
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{where}: {result.stderr[-2000:]}"
    return False


def check_document(document: dict[str, Any], changed: list[str], folder: Path) -> None:
    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):
        return  # a value TOML cannot hold (e.g. a huge integer in a nested table)
    path = folder / "drawn.toml"
    path.write_text(text, encoding="utf-8")
    out = folder / "out"
    runner = CliRunner()
    if not assert_one_line(runner.invoke(app, ["validate", str(path)]), "validate", changed):
        return
    built = runner.invoke(app, ["validate", str(path), "--build"])
    if not assert_one_line(built, "validate --build", changed):
        return
    ran = runner.invoke(
        app, ["run", str(path), "--set", "run.steps=2", "--out", str(out), "--overwrite"]
    )
    assert_one_line(ran, "run --set run.steps=2", changed)


def _property(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, examples: int) -> None:
    base = tomllib.loads(TINY_SCENARIO.format(data_dir=tiny_data) + EXTRA_TABLES)
    folder = tmp_path_factory.mktemp("drawn")

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(scenarios(base))
    def check(drawn: tuple[dict[str, Any], list[str]]) -> None:
        check_document(*drawn, folder)

    check()


def test_drawn_values_validate_build_and_run_or_fail_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path
) -> None:
    _property(tmp_path_factory, tiny_data, examples=60)


@pytest.mark.slow
def test_many_drawn_values_validate_build_and_run_or_fail_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path
) -> None:
    _property(tmp_path_factory, tiny_data, examples=400)


def test_every_section_key_is_drawn() -> None:
    """The strategy covers every declared key of the sections it names."""
    drawn = {(section, key) for section, key, _ in KEYS}
    assert ("scenario", "seed") in drawn and ("run", "threads") in drawn
    assert ("model", "sizes") in drawn and ("integrator", "lr") in drawn
    assert (("writers", 0), "connectivity_every") in drawn
    assert (("potentials", 0), "coefficient") in drawn
    assert len(drawn) >= 30
