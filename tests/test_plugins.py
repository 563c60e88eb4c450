"""Plugin system: loading order and sources, failure policy, registries, and every hook.

``test_hook_<hook name>`` exists for every hookspec (checked by
``test_every_hook_has_a_test``) and executes the example in that hook's
docstring, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
from conftest import BUILTIN_PLUGINS

from particlesim.errors import PluginError, RegistryError
from particlesim.plugins import (
    REGISTRY_KINDS,
    PluginManager,
    PluginWarning,
    describe,
    hookimpl,
    hookspecs,
    load_plugins,
)
from particlesim.plugins.manager import registration_hook

HOOK_NAMES = sorted(
    name
    for name, value in vars(hookspecs).items()
    if name.startswith("particlesim_") and hasattr(value, "particlesim_spec")
)


@pytest.fixture(autouse=True)
def clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not see the developer's plugin environment variables."""
    for var in ("PARTICLESIM_STRICT_PLUGINS", "PARTICLESIM_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PARTICLESIM_PLUGINS", BUILTIN_PLUGINS)  # only what the tests name


@pytest.fixture
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the examples' imports work even before the engine's package ``__init__`` exists.

    The examples say ``from particlesim import hookimpl`` and
    ``from particlesim.kernels import RadialKernel`` (what users write); while
    those modules are not yet written, provide the names from where they live.
    """
    import particlesim

    if not hasattr(particlesim, "hookimpl"):
        monkeypatch.setattr(particlesim, "hookimpl", hookimpl, raising=False)
    try:
        from particlesim.kernels import RadialKernel  # noqa: F401
    except ImportError:
        # The engine's kernels package is missing or half-written: stand in a bare
        # package that exposes RadialKernel from ``kernels/base.py``.
        spec = importlib.util.find_spec("particlesim.kernels")
        assert spec is not None and spec.submodule_search_locations is not None
        package = types.ModuleType("particlesim.kernels")
        package.__path__ = list(spec.submodule_search_locations)
        base_path = Path(package.__path__[0]) / "base.py"
        base_spec = importlib.util.spec_from_file_location("particlesim.kernels.base", base_path)
        assert base_spec is not None and base_spec.loader is not None
        base = importlib.util.module_from_spec(base_spec)
        monkeypatch.setitem(sys.modules, "particlesim.kernels", package)
        monkeypatch.setitem(sys.modules, "particlesim.kernels.base", base)
        base_spec.loader.exec_module(base)
        package.RadialKernel = base.RadialKernel


def example_source(hook_name: str) -> str:
    """The code after ``.. code-block:: python`` in the hookspec's docstring, dedented."""
    doc = getattr(hookspecs, hook_name).__doc__
    assert doc is not None and hookspecs.EXAMPLE_MARKER in doc, f"{hook_name} has no example"
    return hookspecs.example_blocks(hook_name)["python"]


def load_example(hook_name: str) -> tuple[types.ModuleType, PluginManager]:
    """Execute a hook's example as a fresh module and load it as the only plugin."""
    module = types.ModuleType(f"example_{hook_name}")
    exec(compile(example_source(hook_name), f"<example {hook_name}>", "exec"), vars(module))
    manager = PluginManager().load(builtins=[("example", module)], entry_points=False)
    assert manager.plugin("example").hooks == [hook_name]
    return module, manager


def write(path: Path, code: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def kernel_plugin(path: Path, kernel_name: str) -> Path:
    """A plugin file that registers a trivial kernel (``k = 1``) called ``kernel_name``."""
    return write(
        path,
        f"""
        import torch

        from particlesim.kernels import Kernel
        from particlesim.plugins import hookimpl

        class Thing(Kernel):
            name = {kernel_name!r}

            def forward(self, target, source):
                return torch.ones(target.shape[0], source.shape[0])

        @hookimpl
        def particlesim_register_kernels():
            return [Thing]
        """,
    )


# ------------------------------------------------------------------- file plugins


def test_file_plugin_registers_kernel_under_its_name(tmp_path: Path) -> None:
    kernel_plugin(tmp_path / "my_kernel.py", "wiggle")
    manager = load_plugins(
        builtins=[], entry_points=False, files=["my_kernel.py"], base_dir=tmp_path
    )
    entry = manager.registry("kernel").entry("wiggle")
    assert entry.plugin == "my_kernel"
    assert entry.factory.__name__ == "Thing"
    info = manager.plugin("my_kernel")
    assert info.source == f"file {(tmp_path / 'my_kernel.py').resolve()}"
    assert info.hooks == ["particlesim_register_kernels"]
    assert info.registered == {"kernel": ["wiggle"]}
    assert info.version is None


def test_same_file_named_twice_loads_once(tmp_path: Path) -> None:
    path = kernel_plugin(tmp_path / "k.py", "wiggle")
    manager = load_plugins(
        builtins=[], entry_points=False, files=[path, "./k.py"], base_dir=tmp_path
    )
    assert [info.name for info in manager.plugins] == ["k"]


def test_duplicate_kernel_name_names_both_plugins(tmp_path: Path) -> None:
    a = kernel_plugin(tmp_path / "alpha.py", "same")
    b = kernel_plugin(tmp_path / "beta.py", "same")
    with pytest.raises(RegistryError) as info:
        load_plugins(builtins=[], entry_points=False, files=[a, b])
    assert str(info.value) == (
        "duplicate kernel name 'same': registered by plugin 'alpha' and by plugin 'beta'; "
        "rename one, or disable one with -p no:beta"
    )


def test_duplicate_plugin_name_is_an_error(tmp_path: Path) -> None:
    a = kernel_plugin(tmp_path / "one" / "plug.py", "a")
    b = kernel_plugin(tmp_path / "two" / "plug.py", "b")
    with pytest.raises(PluginError, match="two plugins are named 'plug'") as info:
        load_plugins(builtins=[], entry_points=False, files=[a, b])
    assert str(a.resolve()) in str(info.value) and str(b.resolve()) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=["./nope.py"], base_dir=tmp_path)
    assert str(info.value) == (
        f"plugin file ./nope.py not found (resolved to {(tmp_path / 'nope.py').resolve()})"
    )


def test_file_that_raises_on_import(tmp_path: Path) -> None:
    write(tmp_path / "bad.py", "x = 1\nraise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=["bad.py"], base_dir=tmp_path)
    message = str(info.value)
    assert "plugin file bad.py" in message
    assert "failed to import at line 2: RuntimeError: boom at import" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not any(name.startswith("particlesim_local_bad_") for name in sys.modules)


def test_file_with_syntax_error(tmp_path: Path) -> None:
    write(tmp_path / "typo.py", "def f(:\n    pass\n")
    with pytest.raises(PluginError, match=r"typo\.py .* failed to import at line 1: SyntaxError"):
        load_plugins(builtins=[], entry_points=False, files=["typo.py"], base_dir=tmp_path)


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("[object()]", r"returned <object object at .*>, which has no 'name'"),
        ("[type('Nameless', (), {'name': ''})]", r"returned <class .*Nameless'>, which has no"),
        ("{'quartic': 1}", r"must return a list of kernel factories, got dict"),
        ("[type('K', (), {'name': 'BadName'})]", r"kernel name 'BadName', which is not snake_case"),
    ],
)
def test_bad_registration_items(tmp_path: Path, returned: str, expected: str) -> None:
    write(
        tmp_path / "sloppy.py",
        f"""
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_register_kernels():
            return {returned}
        """,
    )
    with pytest.raises(PluginError, match=expected) as info:
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "sloppy.py"])
    assert str(info.value).startswith("plugin 'sloppy': particlesim_register_kernels() ")


def test_registration_hook_that_raises(tmp_path: Path) -> None:
    write(
        tmp_path / "raiser.py",
        """
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_register_writers():
            raise ValueError("no writers today")
        """,
    )
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "raiser.py"])
    assert str(info.value) == (
        "plugin 'raiser': particlesim_register_writers() raised ValueError: no writers today"
    )


def test_registration_returning_none_registers_nothing(tmp_path: Path) -> None:
    write(
        tmp_path / "quiet.py",
        """
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_register_kernels():
            return None
        """,
    )
    manager = load_plugins(builtins=[], entry_points=False, files=[tmp_path / "quiet.py"])
    assert len(manager.registry("kernel")) == 0
    assert manager.plugin("quiet").registered == {}


def test_misspelt_hook_is_an_error(tmp_path: Path) -> None:
    write(
        tmp_path / "speller.py",
        """
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_register_kernel():
            return []
        """,
    )
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "speller.py"])
    message = str(info.value)
    assert message.startswith("plugin 'speller' (file ")
    assert (
        "implements unknown hook 'particlesim_register_kernel' "
        "(did you mean 'particlesim_register_kernels'" in message
    )
    assert "-p no:speller" in message


def test_hookimpl_with_unknown_argument(tmp_path: Path) -> None:
    write(
        tmp_path / "args.py",
        """
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_step_end(simulation, stepp):
            pass
        """,
    )
    manager = PluginManager()
    with pytest.raises(PluginError, match=r"plugin 'args' \(file .*\): PluginValidationError: .*"):
        manager.load(builtins=[], entry_points=False, files=[tmp_path / "args.py"])
    assert not manager.has_impls("particlesim_step_end")


def test_undecorated_hook_function_warns(tmp_path: Path) -> None:
    write(tmp_path / "plain.py", "def particlesim_register_kernels():\n    return []\n")
    with pytest.warns(PluginWarning, match=r"defines particlesim_register_kernels\(\) without"):
        manager = load_plugins(builtins=[], entry_points=False, files=[tmp_path / "plain.py"])
    assert manager.plugin("plain").hooks == []


def test_disable_skips_a_plugin(tmp_path: Path) -> None:
    kernel_plugin(tmp_path / "a.py", "aa")
    kernel_plugin(tmp_path / "b.py", "bb")
    manager = load_plugins(
        builtins=[], entry_points=False, files=["a.py", "b.py"], base_dir=tmp_path, disable=["a"]
    )
    assert manager.registry("kernel").names() == ["bb"]
    assert manager.disabled == ["a"]


def test_load_order_and_builtins(tmp_path: Path) -> None:
    from particlesim.kernels import GaussianKernel

    class Early(GaussianKernel):
        name = "early"

    class BuiltinPlugin:
        @hookimpl
        def particlesim_register_kernels(self) -> list[type]:
            return [Early]

    kernel_plugin(tmp_path / "late.py", "early")
    with pytest.raises(RegistryError, match="by plugin 'core' and by plugin 'late'"):
        load_plugins(
            builtins=[("core", BuiltinPlugin())],
            entry_points=False,
            files=["late.py"],
            base_dir=tmp_path,
        )
    manager = load_plugins(builtins=[("core", BuiltinPlugin())], entry_points=False)
    assert manager.plugin("core").source == "built-in"
    assert manager.registry("kernel").entry("early").plugin == "core"


def test_default_builtins_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``builtins=None`` registers the built-ins module as "particlesim", if it exists."""
    from particlesim.plugins import manager as manager_module

    fake = types.ModuleType("particlesim.plugins.builtins")
    monkeypatch.setitem(sys.modules, "particlesim.plugins.builtins", fake)
    manager = PluginManager().load(entry_points=False)
    assert [(info.name, info.source) for info in manager.plugins] == [("particlesim", "built-in")]
    assert manager.pm.get_plugin("particlesim") is fake

    monkeypatch.setitem(sys.modules, "particlesim.plugins.builtins", None)  # not importable
    assert PluginManager().load(entry_points=False).plugins == []

    # An ImportError from *inside* the built-ins is a bug and propagates.
    write(tmp_path / "fake_builtins_ps.py", "import particlesim_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(manager_module, "BUILTINS_MODULE", "fake_builtins_ps")
    with pytest.raises(ModuleNotFoundError, match="particlesim_no_such_module"):
        PluginManager().load(entry_points=False)


def test_load_twice_is_an_error() -> None:
    manager = load_plugins(builtins=[], entry_points=False)
    with pytest.raises(PluginError, match="already called"):
        manager.load(builtins=[], entry_points=False)


def test_registry_and_has_impls() -> None:
    manager = load_plugins(builtins=[], entry_points=False)
    assert set(manager.registries) == set(REGISTRY_KINDS)
    assert manager.registry("kernel") is manager.registries["kernel"]
    with pytest.raises(RegistryError, match=r"unknown registry kind 'kernal' \(did you mean"):
        manager.registry("kernal")
    assert manager.has_impls("particlesim_step_end") is False
    with pytest.raises(PluginError, match=r"unknown hook 'particlesim_step_ends' \(did you mean"):
        manager.has_impls("particlesim_step_ends")

    class StepPlugin:
        @hookimpl
        def particlesim_step_end(self, step: int) -> None:
            pass

    manager = load_plugins(builtins=[("steps", StepPlugin())], entry_points=False)
    assert manager.has_impls("particlesim_step_end") is True
    assert manager.has_impls("particlesim_simulation_start") is False


def test_registration_hook_names_match_kinds() -> None:
    registration = [name for name in HOOK_NAMES if name.startswith("particlesim_register_")]
    assert sorted(registration_hook(kind) for kind in REGISTRY_KINDS) == registration


def test_trace_prints_hook_calls(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PARTICLESIM_TRACE_PLUGINS", "1")

    class StepPlugin:
        @hookimpl
        def particlesim_step_end(self, step: int) -> None:
            pass

    manager = load_plugins(builtins=[("steps", StepPlugin())], entry_points=False)
    manager.hook.particlesim_step_end(simulation=None, step=7)
    err = capsys.readouterr().err
    assert "registered plugin 'steps' from built-in: particlesim_step_end" in err
    assert "call particlesim_step_end(simulation=None, step=7) -> steps" in err


# ------------------------------------------------------------------- entry points


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An installed distribution ``fakepkg 0.1`` with three ``particlesim`` entry points."""
    monkeypatch.setenv("PARTICLESIM_PLUGINS", f"{BUILTIN_PLUGINS},broken,good,badargs")
    info = tmp_path / "fakepkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[particlesim]\nbroken = broken_mod\ngood = good_mod\nbadargs = badargs_mod\n"
    )
    write(tmp_path / "broken_mod.py", "import particlesim_missing_dependency\n")
    write(
        tmp_path / "good_mod.py",
        """
        from particlesim.plugins import hookimpl

        class Glow:
            name = "glow"

            def __call__(self, x):
                return x

        @hookimpl
        def particlesim_register_activations():
            return [Glow]
        """,
    )
    write(
        tmp_path / "badargs_mod.py",
        """
        from particlesim.plugins import hookimpl

        @hookimpl
        def particlesim_step_end(stepp):
            pass
        """,
    )
    modules = ("broken_mod", "good_mod", "badargs_mod")
    for module in modules:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_broken_entry_point_is_reported_and_others_load(fake_distribution: Path) -> None:
    with pytest.warns(PluginWarning) as record:
        manager = load_plugins(builtins=[])
    failures = {failure.name: failure for failure in manager.failures}
    assert failures["broken"].source == "entry point broken_mod"
    assert failures["broken"].error == (
        "ModuleNotFoundError: No module named 'particlesim_missing_dependency'"
    )
    assert failures["badargs"].error.startswith("PluginValidationError: ")
    assert not manager.has_impls("particlesim_step_end")  # the half-registered impl is removed
    messages = [str(w.message) for w in record]
    assert any(
        "'broken' (entry point broken_mod) failed to load and was skipped" in m for m in messages
    )

    good = manager.plugin("good")
    assert good.source == "entry point good_mod"
    assert good.version == "0.1"
    assert good.registered == {"activation": ["glow"]}
    assert manager.registry("activation").entry("glow").plugin == "good"

    rows = {row["name"]: row for row in describe(manager)}
    assert rows["good"]["status"] == "ok"
    assert rows["good"]["version"] == "0.1"
    assert rows["good"]["hooks"] == ["particlesim_register_activations"]
    assert rows["broken"]["status"] == (
        "FAILED: ModuleNotFoundError: No module named 'particlesim_missing_dependency'"
    )


def test_strict_mode_makes_entry_point_failure_fatal(
    fake_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTICLESIM_STRICT_PLUGINS", "1")
    monkeypatch.setenv("PARTICLESIM_PLUGINS", "broken,good")
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[])
    assert str(info.value) == (
        "plugin 'broken' (entry point broken_mod) failed to load: ModuleNotFoundError: "
        "No module named 'particlesim_missing_dependency' "
        "(PARTICLESIM_STRICT_PLUGINS is set, so this is an error)"
    )


def test_plugins_env_var_filters_entry_points(
    fake_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTICLESIM_PLUGINS", " good ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = load_plugins(builtins=[])
    assert [info.name for info in manager.plugins] == ["good"]
    assert manager.failures == []

    monkeypatch.setenv("PARTICLESIM_PLUGINS", "")
    manager = load_plugins(builtins=[])
    assert manager.plugins == [] and manager.failures == []

    monkeypatch.setenv("PARTICLESIM_PLUGINS", "good,absent")
    with pytest.warns(PluginWarning, match="names plugin 'absent', which is not installed"):
        manager = load_plugins(builtins=[])
    assert [failure.name for failure in manager.failures] == ["absent"]


def test_disable_entry_points(fake_distribution: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = load_plugins(builtins=[], disable=["broken", "badargs"])
    assert "good" in [info.name for info in manager.plugins]
    assert not {"broken", "badargs"} & {failure.name for failure in manager.failures}
    assert sorted(manager.disabled) == ["badargs", "broken"]
    manager = load_plugins(builtins=[], entry_points=False)
    assert manager.plugins == [] and manager.failures == []


# ------------------------------------------------------------------- the hookspecs


def test_every_hook_has_a_test() -> None:
    assert len(HOOK_NAMES) == 16
    missing = [name for name in HOOK_NAMES if f"test_hook_{name}" not in globals()]
    assert missing == []


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_hookspec_docstring_is_complete(hook_name: str) -> None:
    function = getattr(hookspecs, hook_name)
    doc = inspect.getdoc(function)
    summary = doc.splitlines()[0]
    assert summary.endswith(".") and len(summary) <= 100
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc
    assert "Return" in doc and "Called" in doc
    example = example_source(hook_name)
    assert "from particlesim import hookimpl" in example
    assert f"@hookimpl\ndef {hook_name}(" in example


def test_hook_particlesim_register_kernels(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_kernels")
    entry = manager.registry("kernel").entry("quartic")
    assert entry.plugin == "example"
    kernel = manager.registry("kernel").create("quartic", width=2.0).double()
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    source = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    expected = torch.tensor([[1 / 4], [1 / 1.5**2]], dtype=torch.float64)  # u = r²/4
    torch.testing.assert_close(kernel(target, source), expected)
    u = torch.linspace(0, 5, 11, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kernel.profile(u).sum(), u)
    torch.testing.assert_close(kernel.profile_derivative(u.detach()), grad)


def test_hook_particlesim_register_interactions(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_interactions")
    assert manager.registry("interaction").entry("scaled_identity").plugin == "example"
    interaction = manager.registry("interaction").create("scaled_identity", gain=2.0)
    torch.testing.assert_close(interaction(torch.ones(3)), torch.full((3,), 2.0))


def test_hook_particlesim_register_potentials(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_potentials")
    potential = manager.registry("potential").create("harmonic_tether", strength=2.0)
    assert potential(torch.tensor([[1.0, 2.0]])).item() == pytest.approx(5.0)


def test_hook_particlesim_register_integrators(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_integrators")
    x = torch.nn.Parameter(torch.tensor([1.0]))
    integrator = manager.registry("integrator").create("nesterov", [x], lr=0.1)
    (x**2).sum().backward()
    integrator.step()
    assert x.item() == pytest.approx(1.0 - 0.1 * 2.0 * 1.9)  # Nesterov: g + μ·(μ·0 + g)


def test_hook_particlesim_register_moves(examples_importable: None) -> None:
    """The example's swap is kept by Metropolis on wiring length and keeps the function."""
    from particlesim.core.model import MLP

    _, manager = load_example("particlesim_register_moves")
    move = manager.registry("move").create("pair_swap", group="hidden1", temperature=0.0)
    system = MLP(sizes=[3, 6, 2], dim=2).build(
        registries=load_plugins(entry_points=False).registries,
        input_size=3,
        num_classes=2,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    x = torch.randn(5, 3, dtype=torch.float64)
    before, wiring = system(x), move.wiring(system)
    generator = torch.Generator().manual_seed(1)
    counts = [move.attempt(system, step=s, generator=generator) for s in range(40)]
    assert {a for a, _ in counts} == {1} and 0 < sum(k for _, k in counts) < 40
    assert move.wiring(system) < wiring  # at T = 0 only shorter wiring is kept
    torch.testing.assert_close(system(x), before)


def test_hook_particlesim_register_reproductions(examples_importable: None, tmp_path) -> None:
    from particlesim.reproduce import Report

    _, manager = load_example("particlesim_register_reproductions")
    paper = manager.registry("reproduction").create("coin")
    report = paper.run(tmp_path / "coin", quick=True, log=lambda message: None)
    assert isinstance(report, Report) and report.paper == "coin"
    (claim,) = report.claims
    assert claim.paper == "0.5" and claim.verdict in ("reproduced", "within spread")
    assert (tmp_path / "coin" / "rates.txt").read_text().count(" ") == 2


def test_hook_particlesim_register_observables(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_observables")
    observable = manager.registry("observable").create("mean_radius", group="hidden")
    assert observable.compute(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).item() == 2.5


def test_hook_particlesim_register_datasets(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_datasets")
    x, y = manager.registry("dataset").create("two_moons", size=16, seed=3)
    assert x.shape == (16, 2) and y.shape == (16,)
    assert set(y.tolist()) <= {0, 1}
    torch.testing.assert_close(
        manager.registry("dataset").create("two_moons", size=16, seed=3)[0], x
    )


def test_hook_particlesim_register_writers(examples_importable: None, capsys) -> None:
    _, manager = load_example("particlesim_register_writers")
    writer = manager.registry("writer").create("print", digits=3)
    writer.write(5, {"loss": 0.123456, "accuracy": 0.5})
    assert capsys.readouterr().out == "step 5: loss=0.123 accuracy=0.5\n"


def test_hook_particlesim_register_activations(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_activations")
    activation = manager.registry("activation").create("softsign")
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(activation(x), torch.nn.functional.softsign(x))


def test_hook_particlesim_register_losses(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_losses")
    loss = manager.registry("loss").create("huber", delta=0.5)
    outputs, targets = torch.tensor([[0.0], [2.0]]), torch.tensor([0.1, 0.0])
    expected = torch.nn.functional.huber_loss(outputs[:, 0], targets, delta=0.5)
    torch.testing.assert_close(loss(outputs, targets), expected)


def test_hook_particlesim_register_models(examples_importable: None) -> None:
    _, manager = load_example("particlesim_register_models")
    import torch

    from particlesim.plugins import builtins

    module, _ = load_example("particlesim_register_models")
    manager = PluginManager().load(
        builtins=[("particlesim", builtins), ("example", module)], entry_points=False
    )
    model = manager.registry("model").create("tiny_network", hidden=8)
    system = model.build(
        registries=manager.registries,
        input_size=4,
        num_classes=3,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert [(g.name, g.size) for g in system.groups.values()] == [
        ("input", 4),
        ("hidden", 8),
        ("output", 3),
    ]
    assert [(i.source, i.target) for i in system.interactions] == [
        ("input", "hidden"),
        ("hidden", "output"),
    ]
    assert system(torch.rand(5, 4, dtype=torch.float64)).shape == (5, 3)


def test_hook_particlesim_simulation_start(examples_importable: None, capsys) -> None:
    module, manager = load_example("particlesim_simulation_start")
    simulation = object()
    assert manager.has_impls("particlesim_simulation_start")
    manager.hook.particlesim_simulation_start(simulation=simulation)
    assert capsys.readouterr().out == "simulation started\n"
    assert id(simulation) in module.STARTED


def test_hook_particlesim_step_end(examples_importable: None, capsys) -> None:
    _, manager = load_example("particlesim_step_end")
    assert manager.has_impls("particlesim_step_end")
    for step in (3, 10, 101):
        manager.hook.particlesim_step_end(simulation=object(), step=step)
    assert capsys.readouterr().out == "finished step 10\n"


def test_hook_particlesim_simulation_finish(examples_importable: None, capsys) -> None:
    _, manager = load_example("particlesim_simulation_finish")
    for status in ("completed", "interrupted", "failed"):
        manager.hook.particlesim_simulation_finish(simulation=object(), status=status)
    assert capsys.readouterr().out == (
        "simulation completed\nsimulation interrupted\nsimulation failed\n"
    )


def test_hook_particlesim_add_commands(examples_importable: None) -> None:
    import typer
    from typer.testing import CliRunner

    _, manager = load_example("particlesim_add_commands")
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """The host application."""

    manager.hook.particlesim_add_commands(app=app)
    result = CliRunner().invoke(app, ["hello", "--name", "plugins"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello plugins\n"


def test_disabling_an_unknown_plugin_warns_but_not_a_filtered_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-p no:NAME`` of an installed entry point that PARTICLESIM_PLUGINS left out is fine."""
    from particlesim.plugins.manager import PluginManager

    monkeypatch.setenv("PARTICLESIM_PLUGINS", "lange")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PluginManager().load(disable=["shader", "lange"])
        PluginManager().load(entry_points=False, disable=["shader"])
    with pytest.warns(PluginWarning, match="-p no:ghost: no plugin named 'ghost' was found"):
        PluginManager().load(disable=["ghost"])


def test_the_console_reads_disabled_plugins_from_its_arguments() -> None:
    from particlesim.cli.app import _disabled_on_command_line

    argv = ["run", "x.toml", "-p", "no:a", "--plugin", "no:b", "--plugin=no:c", "-p", "f.py"]
    assert _disabled_on_command_line(argv) == ["a", "b", "c"]
    assert _disabled_on_command_line(["-p"]) == []


# ------------------------------------------------------------------- kernel contract


RADIAL_TEMPLATE = """
import torch

from particlesim import hookimpl
from particlesim.kernels import RadialKernel


class UserKernel(RadialKernel):
    name = "user_kernel"
{body}

@hookimpl
def particlesim_register_kernels():
    return [UserKernel]
"""


def profile_methods(profile: str, derivative: str | None) -> str:
    """Class body with ``profile(u)`` (and ``profile_derivative(u)``) returning the given code."""
    body = f"\n    @staticmethod\n    def profile(u):\n        return {profile}\n"
    if derivative is not None:
        body += (
            f"\n    @staticmethod\n    def profile_derivative(u):\n        return {derivative}\n"
        )
    return body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            profile_methods("torch.exp(-u)", None),
            "which does not define profile_derivative(u) (a RadialKernel needs profile and its "
            "derivative)",
        ),
        (
            profile_methods("torch.exp(-u).sum(-1)", "-torch.exp(-u)"),
            "which has profile(u) returning shape [3] for u of shape [3, 3] (profile and "
            "profile_derivative must be elementwise)",
        ),
        (
            profile_methods("torch.log(u - 0.5)", "1 / (u - 0.5)"),
            "which has profile(u) = nan, nan, nan, nan at u = 0, 0.001, 0.05, 0.3; it must be "
            "finite for every u >= 0; fix it",
        ),
        (
            profile_methods("torch.exp(-torch.sqrt(u))", "-torch.exp(-u.sqrt()) / (2 * u.sqrt())"),
            "which has profile_derivative(u) = -inf at u = 0; it must be finite for every u >= 0 "
            "(mask the square root at u = 0, as ExponentialKernel does)",
        ),
        (
            profile_methods(
                "(1.0 + torch.sqrt(3.0 * u)) * torch.exp(-torch.sqrt(3.0 * u))",
                "-1.5 * torch.exp(-torch.sqrt(3.0 * u))",
            ),
            "which has a profile(u) whose autograd derivative at u = 0 is nan: the reference "
            "path's gradients would be NaN where two particles coincide (mask the square root "
            "at u = 0, as ExponentialKernel does)",
        ),
        (
            profile_methods("(1.0 + u) ** -2", "2.0 * (1.0 + u) ** -3"),
            "which has profile_derivative(u) = 1.99401 at u = 0.001, but the derivative of "
            "profile(u) there is -1.99401 (the chunked path's gradients use profile_derivative)",
        ),
        (
            profile_methods("(1.0 + u) ** -2", "-2.0 * (1.0 + u) ** -3")
            + "\n    @staticmethod\n    def profile_derivative_from_value(u, value):\n"
            "        return -2.0 * value / (1.0 + u) ** 2\n",
            "which has profile_derivative_from_value(u, f(u)) = -1.99202 at u = 0.001, but "
            "profile_derivative(u) there is -1.99401 (the matmul path's gradients use "
            "profile_derivative_from_value)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    @staticmethod\n    def profile_derivative_from_value(u, value):\n"
            "        return value.square_().neg_()\n",
            "which changes value in place in profile_derivative_from_value(u, value); it must "
            "return a new tensor (the matmul path keeps the kernel it passes as value)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    @staticmethod\n    def scalar_profile(u):\n        return 1.0 / (1.0 + u)\n",
            "which defines scalar_profile without scalar_profile_derivative (give both or neither)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    def scalar_profile(self, u):\n        return 1.0 / (1.0 + u)\n"
            "\n    @staticmethod\n    def scalar_profile_derivative(u, value):\n"
            "        return -value * value\n",
            "which has a scalar_profile that is not a staticmethod (the fused loops compile a "
            "function)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    @staticmethod\n    def scalar_profile(u):\n        return 1.0 / (1.0 + u)\n"
            "\n    @staticmethod\n    def scalar_profile_derivative(u, value):\n"
            "        return value * value\n",
            "which has scalar_profile_derivative = 1 at u = 0, but its tensor form there is -1 "
            "(the CPU matmul path's fused loops use scalar_profile_derivative)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    @staticmethod\n    def scalar_profile(u):\n        return 1.0 / (1.0 - u)\n"
            "\n    @staticmethod\n    def scalar_profile_derivative(u, value):\n"
            "        return -value * value\n",
            "which has scalar_profile = 1.001 at u = 0.001, but its tensor form there is 0.999001 "
            "(the CPU matmul path's fused loops use scalar_profile)",
        ),
        (
            profile_methods("1.0 / (1.0 + u)", "-1.0 / (1.0 + u) ** 2")
            + "\n    @staticmethod\n    def scalar_profile(u):\n        return 1.0 / u\n"
            "\n    @staticmethod\n    def scalar_profile_derivative(u, value):\n"
            "        return -value * value\n",
            "which raised ZeroDivisionError in its scalar profile at u = 0: float division by zero",
        ),
        (
            profile_methods("torch.exp(-u).float()", "-torch.exp(-u)"),
            "which has profile(u) returning torch.float32 for torch.float64 u",
        ),
        (
            profile_methods("1.0", "0.0"),
            "which has profile(u) returning float, not a tensor",
        ),
        (
            profile_methods("torch.exp(-u[5])", "-torch.exp(-u)"),
            "which raised IndexError in profile(u) for u >= 0: index 5 is out of bounds",
        ),
    ],
)
def test_broken_radial_kernel_is_refused_at_registration(
    tmp_path: Path, body: str, expected: str
) -> None:
    """A kernel that would fail or train wrongly mid-run is one error naming its plugin."""
    write(tmp_path / "mine.py", RADIAL_TEMPLATE.format(body=body))
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "mine.py"])
    message = str(info.value)
    assert message.startswith(
        "plugin 'mine': particlesim_register_kernels() returned kernel 'user_kernel', "
    )
    assert expected in message
    assert message.endswith("; fix it, or disable the plugin with -p no:mine")
    assert "\n" not in message


def test_kernel_that_is_no_kernel_class_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path / "loose.py",
        """
        from particlesim import hookimpl

        class Lookalike:
            name = "lookalike"

            def __call__(self, target, source):
                return 1.0

        @hookimpl
        def particlesim_register_kernels():
            return [Lookalike]
        """,
    )
    with pytest.raises(PluginError) as info:
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "loose.py"])
    assert str(info.value) == (
        "plugin 'loose': particlesim_register_kernels() returned kernel 'lookalike', which is "
        "not a subclass of particlesim.kernels.Kernel (derive kernels from Kernel, or from "
        "RadialKernel for a function of distance); fix it, or disable the plugin with -p no:loose"
    )


def test_well_formed_kernels_pass_the_registration_check(tmp_path: Path) -> None:
    """Matérn-3/2 (a root inside, finite derivative at 0), a Mexican hat (changes sign), a
    kernel with its own forward and no profile, and every built-in pass."""
    from particlesim.kernels import RadialKernel, kernel_class_problem

    write(
        tmp_path / "fine.py",
        """
        import torch
        from torch import nn

        from particlesim import hookimpl
        from particlesim.kernels import Kernel, RadialKernel

        class Matern32(RadialKernel):
            name = "matern32"

            @staticmethod
            def profile(u):
                positive = u > 0  # the root masked at 0, as the built-in exponential does
                s = torch.sqrt(3.0 * torch.where(positive, u, torch.ones_like(u)))
                s = torch.where(positive, s, torch.zeros_like(u))
                return (1.0 + s) * torch.exp(-s)

            @staticmethod
            def profile_derivative(u):
                return -1.5 * torch.exp(-torch.sqrt(3.0 * u))

        class MexicanHat(RadialKernel):
            name = "mexican_hat"

            @staticmethod
            def profile(u):
                return (1.0 - u) * torch.exp(-0.5 * u)

            @staticmethod
            def profile_derivative(u):
                return (0.5 * u - 1.5) * torch.exp(-0.5 * u)

        class Scaled(RadialKernel):
            name = "scaled"

            def __init__(self, gain=2.0, **options):
                super().__init__(**options)
                self.gain = nn.Parameter(torch.tensor(gain))

            def forward(self, target, source):
                return self.gain * torch.exp(-torch.cdist(target, source) ** 2)

        class Dot(Kernel):
            name = "dot"

            def forward(self, target, source):
                return target @ source.T

        @hookimpl
        def particlesim_register_kernels():
            return [Matern32, MexicanHat, Scaled, Dot]
        """,
    )
    manager = load_plugins(entry_points=False, files=[tmp_path / "fine.py"])
    kernels = manager.registry("kernel")
    assert {"matern32", "mexican_hat", "scaled", "dot", "gaussian", "exponential"} <= set(
        kernels.names()
    )
    for entry in kernels:
        assert kernel_class_problem(entry.factory) is None, entry.name
    assert kernel_class_problem(RadialKernel) is not None  # no profile at all


def test_failed_entry_point_row_shows_its_error_in_the_cli(
    fake_distribution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``particlesim plugins`` prints a FAILED line under a plugin that did not load."""
    from typer.testing import CliRunner

    from particlesim.cli.app import app

    monkeypatch.setenv("PARTICLESIM_PLUGINS", "broken,good")
    with pytest.warns(PluginWarning):
        rows = {row["name"]: row for row in describe(load_plugins(builtins=[]))}
    assert rows["good"]["error"] is None
    assert rows["broken"]["error"] == (
        "ModuleNotFoundError: No module named 'particlesim_missing_dependency'"
    )
    with pytest.warns(PluginWarning):
        result = CliRunner().invoke(app, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    failed = lines.index("broken  [entry point broken_mod]")
    assert lines[failed + 1] == (
        "    FAILED: ModuleNotFoundError: No module named 'particlesim_missing_dependency'"
    )


def test_plugin_file_without_hooks_warns(tmp_path: Path) -> None:
    write(tmp_path / "empty.py", "VALUE = 1\n")
    with pytest.warns(PluginWarning, match="plugin 'empty' .* implements no particlesim hook"):
        manager = load_plugins(builtins=[], entry_points=False, files=[tmp_path / "empty.py"])
    assert manager.plugin("empty").hooks == []
    write(tmp_path / "unmarked.py", "def particlesim_register_kernels():\n    return []\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        load_plugins(builtins=[], entry_points=False, files=[tmp_path / "unmarked.py"])
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "without @hookimpl" in messages[0]  # one warning, not two
