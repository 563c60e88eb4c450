"""Scenario validation: every error names the key path, the bad value and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from particlesim.errors import ScenarioError
from particlesim.plugins.manager import PluginManager
from particlesim.scenario.builder import build, validate
from particlesim.scenario.loader import apply_override, parse_scenario, read_scenario, split_path

BASE = """
[data]
name = "idx"
data_dir = "/nowhere"

[model]
name = "particle_network"
sizes = [16, 8, 3]
"""


@pytest.fixture(scope="module")
def registries():
    return PluginManager().load().registries


def check(text: str, registries) -> object:
    return validate(parse_scenario(text, source="s.toml"), registries, source="s.toml")


def error_of(text: str, registries) -> str:
    with pytest.raises(ScenarioError) as info:
        check(text, registries)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_scenario_resolves_defaults(registries) -> None:
    plan = check(BASE, registries)
    resolved = plan.resolved
    assert resolved["scenario"]["seed"] == 0 and resolved["scenario"]["device"] == "auto"
    assert resolved["integrator"]["name"] == "adam" and resolved["integrator"]["lr"] == 0.001
    assert resolved["model"]["dim"] == 3 and resolved["model"]["kernel"] == "gaussian"
    assert resolved["run"]["epochs"] == 1.0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[integratr]\nname='adam'",
            "s.toml: integratr: unknown section (did you mean 'integrator'",
        ),
        (
            "[integrator]\nname='adam'\nlearning_rate=0.1",
            "s.toml: integrator.learning_rate: unknown key for integrator 'adam'",
        ),
        (
            "[integrator]\nname='adam'\nlr='fast'",
            "s.toml: integrator.lr: expected a number, got 'fast' (a string)",
        ),
        (
            "[integrator]\nname='adma'",
            "s.toml: integrator.name: unknown integrator 'adma' (did you mean 'adam'",
        ),
        ("[integrator]\nname='adam'\nlr=-1", "s.toml: integrator.lr: must be > 0, got -1"),
        ("[run]\nepochs=0", "s.toml: run.epochs: must be > 0, got 0"),
        ("[run]\nbatch_size=-5", "s.toml: run.batch_size: must be a positive integer, got -5"),
        ("[run]\nepochs=1\nsteps=3", "s.toml: run: give either epochs or steps, not both"),
        (
            "[scenario]\ndtype='float16'",
            "s.toml: scenario.dtype: expected one of 'float32', "
            "'float64', got 'float16' (a string)",
        ),
        ("[scenario]\nseed=true", "s.toml: scenario.seed: expected an integer, got True"),
        (
            "[[writers]]\nname='metrics'\nevery=0",
            's.toml: writers[0].every: expected a positive integer (steps) or "epoch"',
        ),
        ("[[writers]]\nname='metric'", "unknown writer 'metric' (did you mean 'metrics'?)"),
        ("plugins = 'x.py'", "s.toml: plugins: expected an array of strings"),
    ],
)
def test_section_errors(registries, extra: str, expected: str) -> None:
    text = extra + "\n" + BASE if extra.startswith("plugins") else BASE + "\n" + extra
    assert expected in error_of(text, registries)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("sizes = [16, -8, 3]", "model.sizes[1]: must be a positive integer, got -8"),
        ("sizes = [16, 0, 3]", "model.sizes[1]: must be a positive integer, got 0"),
        ("sizes = [16, 8, 3]\nkernel_width = 0.0", "model.kernel_width: must be > 0"),
        ("sizes = [16, 8, 3]\ndim = 0", "model.dim: must be a positive integer, got 0"),
        (
            "sizes = [16, 8, 3]\ncharge_init = 'he'",
            "model.charge_init: expected one of 'normalized', 'normal'",
        ),
        ("sizes = 'big'", "model.sizes: expected an array of integers"),
        ("sizes = [16, 8.5, 3]", "model.sizes[1]: expected an integer, got 8.5"),
        ("dim = 3", "model: missing required key 'sizes' of model 'particle_network'"),
    ],
)
def test_model_errors(registries, model: str, expected: str) -> None:
    text = BASE.replace("sizes = [16, 8, 3]", model)
    assert expected in error_of(text, registries)


def test_unknown_model_lists_known(registries) -> None:
    message = error_of(BASE.replace("particle_network", "particle_netwrk"), registries)
    assert (
        "model.name: unknown model 'particle_netwrk' (did you mean 'particle_network'?)" in message
    )
    known = message.split("known: ", 1)[1].split(", ")
    assert {"mlp", "particle_network"} <= set(known) and known == sorted(known)


GROUPS = """
[data]
name = "idx"
data_dir = "{data_dir}"

[[groups]]
name = "input"
size = 16
dim = 2
layout = "grid"

[[groups]]
name = "hidden"
size = 6
dim = 2
bias = true
activation = "tanh"

[[groups]]
name = "output"
size = 3
dim = 2
layout = "ring"
frozen = ["position"]

[[interactions]]
name = "kernel"
source = "input"
target = "hidden"
kernel = {{ name = "cauchy", width = 1.5 }}

[[interactions]]
name = "modulated"
source = "hidden"
target = "output"
kernel = "gaussian"

[run]
steps = 4
batch_size = 8
"""


def test_explicit_groups_build_and_run(registries, tiny_data: Path) -> None:
    plan = check(GROUPS.format(data_dir=tiny_data), registries)
    built = build(plan, device="cpu", log=lambda m: None)
    system = built.system
    assert list(system.groups) == ["input", "hidden", "output"]
    assert system.groups["output"].is_frozen("position")
    assert float(system.interactions[0].kernel.width[0]) == pytest.approx(1.5)
    before = system.groups["output"].position.clone()
    assert built.simulation.run().status == "completed"
    assert system.groups["output"].position.equal(before)  # frozen stays put


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'name = "modulated"',
            'name = "modulatd"',
            "interactions[1].name: unknown interaction 'modulatd' (did you mean 'modulated'?)",
        ),
        (
            'kernel = "gaussian"',
            'kernel = "gausian"',
            "interactions[1].kernel.name: unknown kernel 'gausian' (did you mean 'gaussian'?); "
            "known: cauchy, dot_product, exponential, gaussian",
        ),
        (
            'target = "output"',
            'target = "outptu"',
            "interactions[1].target: unknown group 'outptu' (did you mean 'output'?)",
        ),
        (
            'activation = "tanh"',
            'activation = "tahn"',
            "groups[1].activation: unknown activation 'tahn' (did you mean 'tanh'?)",
        ),
        ("size = 6", "size = 0", "groups[1].size: must be a positive integer, got 0"),
        ("size = 6", "size = -6", "groups[1].size: must be a positive integer, got -6"),
        (
            "width = 1.5",
            "width = -1.5",
            "interactions[0].kernel: kernel 'cauchy': width must be one positive",
        ),
        (
            'name = "kernel"',
            'name = "kernel"\nbackend = "fast"',
            "s.toml: interactions[0].backend: expected one of 'auto', 'reference', 'chunked'",
        ),
        ("size = 6", 'size = "six"', "s.toml: groups[1].size: expected an integer"),
        ('name = "idx"', "name = 5", "s.toml: data.name: expected a string, got 5"),
    ],
)
def test_group_errors(registries, old: str, new: str, expected: str) -> None:
    text = GROUPS.format(data_dir="/x").replace(old, new, 1)
    assert expected in error_of(text, registries)


@pytest.mark.parametrize("section", ["potentials", "writers", "observables"])
def test_kind_is_now_name_in_every_table(registries, section: str) -> None:
    text = GROUPS.format(data_dir="/x") + f'\n[[{section}]]\nkind = "l2"\n'
    assert f"{section}[0].kind: 'kind' is now 'name': write name = 'l2'" in error_of(
        text, registries
    )


def test_interaction_kind_is_now_name(registries) -> None:
    text = GROUPS.format(data_dir="/x").replace('name = "modulated"', 'kind = "modulated"', 1)
    assert "interactions[1].kind: 'kind' is now 'name': write name = 'modulated'" in error_of(
        text, registries
    )


def test_model_and_groups_together_is_an_error(registries) -> None:
    text = GROUPS.format(data_dir="/x") + '\n[model]\nname = "mlp"\nsizes = [16, 3]\n'
    assert "give either [model] or [[groups]]" in error_of(text, registries)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[run]\nepochs = = 3\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad.toml: invalid TOML: .*\(at line 2, column 10\)"):
        read_scenario(path)
    with pytest.raises(ScenarioError, match=r"scenario file .*missing\.toml not found"):
        read_scenario(tmp_path / "missing.toml")


def test_overrides() -> None:
    raw = parse_scenario(GROUPS.format(data_dir="/x"))
    apply_override(raw, "integrator.lr=0.5")
    apply_override(raw, "groups[1].size=12")
    apply_override(raw, "groups.2.activation=relu")
    apply_override(raw, "model.sizes=[1, 2]")
    assert raw["integrator"] == {"lr": 0.5}
    assert raw["groups"][1]["size"] == 12 and raw["groups"][2]["activation"] == "relu"
    assert raw["model"]["sizes"] == [1, 2]
    assert split_path("a[3].b") == ["a", 3, "b"]
    with pytest.raises(ScenarioError, match="expected KEY=VALUE"):
        apply_override(raw, "integrator.lr")
    with pytest.raises(ScenarioError, match="no element 7"):
        apply_override(raw, "groups[7].size=1")


def test_an_override_replaces_the_key_it_excludes(registries, tiny_data: Path) -> None:
    """``--set run.epochs=N`` on a scenario that gives steps (and back): no conflict."""
    raw = parse_scenario(GROUPS.format(data_dir=tiny_data), source="s.toml")
    assert raw["run"] == {"steps": 4, "batch_size": 8}
    apply_override(raw, "run.epochs=0.5")
    assert raw["run"] == {"batch_size": 8, "epochs": 0.5}
    plan = validate(raw, registries, source="s.toml")
    assert plan.resolved["run"]["epochs"] == 0.5 and plan.resolved["run"]["steps"] is None
    apply_override(raw, "run.steps=5")
    assert raw["run"] == {"batch_size": 8, "steps": 5}
    assert validate(raw, registries, source="s.toml").resolved["run"]["steps"] == 5
    raw["integrator"] = {"name": "langevin", "lr": 0.01, "temperature": 0.1}
    apply_override(raw, "integrator.beta=20")
    assert raw["integrator"] == {"name": "langevin", "lr": 0.01, "beta": 20}
    apply_override(raw, "groups[1].steps=2")  # only the paths named: elsewhere nothing goes
    assert "steps" in raw["groups"][1]


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ('sweep.grid."integrator.lr"', ["sweep", "grid", "integrator.lr"]),
        ("a.'x y'[2].c", ["a", "x y", 2, "c"]),
        ('a."q\\"z"', ["a", 'q"z']),
        ("groups.-1.size", ["groups", -1, "size"]),
    ],
)
def test_set_paths_take_toml_quoted_keys(path: str, parts: list) -> None:
    assert split_path(path) == parts


@pytest.mark.parametrize(
    "path",
    ["a.", ".a", "a..b", "a[²]", "²", '"open', "a.b c", "a\n", "9" * 5000, "a[" + "9" * 5000 + "]"],
)
def test_malformed_set_paths_are_one_line_errors(path: str) -> None:
    with pytest.raises(ScenarioError, match="malformed key path"):
        split_path(path)


def test_absurdly_nested_values_are_not_a_crash() -> None:
    raw: dict = {}
    apply_override(raw, "a=" + "[" * 5000)  # not TOML: kept as the bare string
    assert raw["a"] == "[" * 5000
    with pytest.raises(ScenarioError, match="nested too deeply"):
        parse_scenario("a = " + "[" * 5000 + "]" * 5000)


def test_set_splits_at_the_first_equals_outside_quotes() -> None:
    raw: dict = {"sweep": {"grid": {}}}
    apply_override(raw, 'sweep.grid."integrator.lr"=[0.1, 0.2]')
    apply_override(raw, '"x=y".z=3')
    assert raw["sweep"]["grid"] == {"integrator.lr": [0.1, 0.2]} and raw["x=y"] == {"z": 3}
    with pytest.raises(ScenarioError, match=re.escape("malformed key path 'a.\"b'")):
        apply_override(raw, 'a."b=2')


def test_cuda_on_cpu_machine_is_a_scenario_error(registries, tiny_data: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    plan = check(GROUPS.format(data_dir=tiny_data) + '\n[scenario]\ndevice = "cuda"\n', registries)
    with pytest.raises(
        ScenarioError, match=r"scenario\.device: device 'cuda' requested but CUDA is not available"
    ):
        build(plan, log=lambda m: None)


def test_a_kernel_the_model_cannot_construct_is_one_error_naming_the_model(
    tiny_data: Path,
) -> None:
    """A plugin kernel without the ``width`` keyword Lange's model passes: no bare TypeError."""
    import torch

    from particlesim import hookimpl
    from particlesim.kernels import Kernel

    class FixedKernel(Kernel):
        name = "fixed"

        def __init__(self) -> None:
            super().__init__()

        def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            return torch.exp(-(torch.cdist(target, source) ** 2))

    class Plugin:
        @hookimpl
        def particlesim_register_kernels(self):
            return [FixedKernel]

    manager = PluginManager()
    manager.pm.register(Plugin(), name="fixed_kernels")
    registries = manager.load().registries
    text = (
        f'[data]\nname = "idx"\ndata_dir = "{tiny_data}"\n'
        '[model]\nname = "particle_network"\nsizes = [0, 4, 0]\nkernel = "fixed"\n'
    )
    plan = check(text, registries)
    with pytest.raises(ScenarioError) as caught:
        build(plan, device="cpu", log=lambda m: None)
    message = str(caught.value)
    assert message.startswith("s.toml: model.kernel: kernel 'fixed': ")
    assert "unexpected keyword argument 'width'" in message and "\n" not in message
    assert message.endswith(" (model 'particle_network' of plugin 'lange')")
