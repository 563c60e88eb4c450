"""Malformed scenarios never escape as a traceback: each ends in one ParticlesimError line."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from particlesim.cli.app import app
from particlesim.errors import ParticlesimError
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import validate
from particlesim.scenario.loader import apply_override, parse_scenario

BASE: dict[str, Any] = tomllib.loads("""
[scenario]
name = "fuzz"
seed = 1
[data]
name = "idx"
data_dir = "/nowhere"
[model]
name = "particle_network"
sizes = [16, 8, 3]
dim = 2
kernel = "gaussian"
[integrator]
name = "adam"
lr = 0.01
[run]
epochs = 1
batch_size = 8
[[writers]]
name = "metrics"
every = "epoch"
""")

REGISTRIES = PluginManager().load().registries

scalars = st.one_of(
    st.none().map(lambda _: "null"),  # TOML has no null: becomes a string
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a nested TOML document."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for i, value in enumerate(document):
            found.append((*prefix, i))
            found.extend(paths(value, (*prefix, i)))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        all_paths = paths(document)
        action = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
        elif action == "nest" and isinstance(parent, dict):
            deep: Any = draw(values)
            for _ in range(draw(st.integers(1, 40))):
                deep = {"x": deep}
            parent[last] = deep
    return document


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_scenarios_fail_with_a_particlesim_error(document: dict[str, Any]) -> None:
    try:
        validate(document, REGISTRIES, source="fuzz.toml")
    except ParticlesimError as exc:
        message = str(exc)
        assert message and "\n" not in message


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_invalid_toml_or_a_scenario_error(text: str) -> None:
    try:
        document = parse_scenario(text, source="fuzz.toml")
        validate(document, REGISTRIES, source="fuzz.toml")
    except ParticlesimError as exc:
        assert "\n" not in str(exc).strip()


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(max_size=30))
def test_overrides_never_crash(key: str, value: str) -> None:
    document = copy.deepcopy(BASE)
    try:
        apply_override(document, f"{key}={value}")
        validate(document, REGISTRIES, source="fuzz.toml")
    except ParticlesimError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "document",
    [
        {**BASE, "model": {"name": "particle_network", "sizes": [16, 10**12, 3]}},
        {**BASE, "run": {"epochs": 1e308, "batch_size": 8}},
        {**BASE, "scenario": {"name": "ünïcödé ☃ 名前", "seed": 2**62}},
        {**BASE, "integrator": {"name": "adam", "lr": float("nan")}},
    ],
    ids=["huge-size", "huge-epochs", "unicode", "nan-lr"],
)
def test_cli_extremes_end_in_one_line(tmp_path, document: dict[str, Any]) -> None:
    """Each fails somewhere (validation, data, allocation): always one line, no traceback."""
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr


@pytest.mark.parametrize(
    ("preflight", "expected"),
    [
        ("1", "model: the network needs at least "),  # refused before anything is allocated
        ("0", "model: could not build the network: "),  # the allocator's refusal, caught
    ],
    ids=["preflight", "no-preflight"],
)
def test_unallocatable_network_is_one_line(
    tiny_scenario, tmp_path, monkeypatch, preflight: str, expected: str
) -> None:
    monkeypatch.setenv("PARTICLESIM_NO_PREFLIGHT", "" if preflight == "1" else "1")
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(tiny_scenario),
            "--set",
            "model.sizes=[0, 1000000000000, 0]",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("seed", [0, 2**62, 2**63 - 1])
def test_every_seed_a_toml_file_holds_runs(tiny_scenario, tmp_path, seed: int) -> None:
    """Derived generator seeds are reduced modulo 2^63: the largest TOML integer works."""
    out = tmp_path / "o"
    args = ["--set", f"scenario.seed={seed}", "--set", "run.steps=2"]
    built = CliRunner().invoke(app, ["validate", str(tiny_scenario), "--build", *args])
    assert built.exit_code == 0, built.output
    result = CliRunner().invoke(app, ["run", str(tiny_scenario), *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f'"seed": {seed}' in (out / "summary.json").read_text()


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 1])
def test_a_seed_out_of_range_is_one_line_at_validate(tiny_scenario, seed: int) -> None:
    result = CliRunner().invoke(
        app, ["validate", str(tiny_scenario), "--set", f"scenario.seed={seed}"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        f"scenario.seed: must be in 0 … 2^63 - 1 (a TOML integer), got {seed}"
    )


def test_derived_seeds_keep_the_values_that_fit() -> None:
    from particlesim.core.seeds import derived_seed

    assert derived_seed(12345, 1_000_003, 999_983) == 12345 * 1_000_003 + 999_983
    assert derived_seed(2**63 - 1, 1, 1) == 0
    assert 0 <= derived_seed(2**63 - 1, 1_000_003, 999_983) < 2**63
