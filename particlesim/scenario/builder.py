"""Validate a scenario completely, then build the simulation it describes.

Validation constructs every component from its table (which checks names,
keys, types and ranges) but loads no data and allocates no network; building
loads the data set, creates the system on the chosen device and wires the
simulation. Every error is a :class:`ScenarioError` naming the key path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from particlesim.core.activations import make_activation
from particlesim.core.device import resolve_device, resolve_dtype
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import Interaction
from particlesim.core.seeds import SEED_LIMIT
from particlesim.core.signatures import accepts, parameter_names
from particlesim.core.simulation import Backoff, Simulation
from particlesim.core.system import System
from particlesim.core.triggers import PERIOD_WORDS, Trigger, parse_period
from particlesim.errors import (
    OptionError,
    ParticlesimError,
    RegistryError,
    ScenarioError,
    close_matches,
)
from particlesim.plugins.adapters import (
    CallableObservable,
    CallablePotential,
    CallableWriter,
    FunctionDataset,
    ModuleInteraction,
    OptimizerIntegrator,
    is_optimizer_factory,
)
from particlesim.scenario.options import (
    check_options,
    check_type,
    defaults,
    type_name,
    without_none,
)

#: ``[run] threads`` at most: more intra-op threads than this only oversubscribes any machine.
MAX_THREADS = 1024

SECTIONS = (
    "scenario",
    "data",
    "model",
    "system",
    "groups",
    "interactions",
    "potentials",
    "integrator",
    "moves",
    "loss",
    "observables",
    "writers",
    "run",
    "plugins",
    "sweep",
)


# The engine's own sections declare their keys as typed signatures, like any plugin.
def scenario_section(
    *,
    name: str = "",
    seed: int = 0,
    device: str = "auto",
    dtype: Literal["float32", "float64"] = "float32",
    description: str = "",
) -> None:
    """``[scenario]``: name, seed, device (auto/cpu/cuda), dtype."""


def run_section(
    *,
    epochs: float | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    batch_schedule: list[list[int]] | None = None,
    eval_batch_size: int = 2000,
    record_initial: bool = False,
    checkpoint_every: int | str | bool = "epoch",
    clip_grad_norm: float | None = None,
    backoff: dict[str, Any] | None = None,
    threads: int | None = None,
) -> None:
    """``[run]``: length (epochs or steps), batch sizes, checkpoints and the divergence guard.

    ``threads`` fixes torch's CPU threads (default: this process's cores shared with the
    other particlesim runs on the machine; see :mod:`particlesim.threads`).

    ``batch_schedule = [[step, size], …]`` changes the batch size from ``step`` on
    (online data sets only). ``checkpoint_every`` is a step period or ``"epoch"``
    (``0`` or ``false``: no periodic checkpoints; a clean stop always writes one).
    ``clip_grad_norm`` clips the total gradient norm; ``backoff = {factor = 0.5,
    retries = 3}`` retries a diverging step with the step size scaled by ``factor``.
    """


def system_section(*, input_scaling: bool = False) -> None:
    """``[system]``: options of an explicit ``[[groups]]`` system."""


def group_section(
    *,
    name: str,
    size: int,
    dim: int = 3,
    layout: str = "gaussian",
    spread: float = 1.0,
    layout_options: dict[str, Any] | None = None,
    charge_channels: int = 1,
    charge_std: float | None = None,
    bias: bool = False,
    frozen: list[str] | None = None,
    activation: str = "identity",
) -> None:
    """``[[groups]]``: one particle group (see :meth:`ParticleGroup.create`)."""


def interaction_section(
    *,
    name: str,
    source: str,
    target: str,
    kernel: str | dict[str, Any] | None = None,
) -> None:
    """``[[interactions]]``: common keys; the rest go to the interaction class."""


def writer_section(
    *,
    name: str,
    every: int | str = "epoch",
    observables: list[str] | None = None,
) -> None:
    """``[[writers]]``: ``every`` is a step period or ``"epoch"``; the rest go to the writer."""


def named_section(*, name: str) -> None:
    """A section whose ``name`` picks a registered class."""


@dataclass
class Plan:
    """A validated scenario: the resolved tables and the components made from them."""

    resolved: dict[str, Any]
    registries: Mapping[str, Any]
    source: str = ""
    base_dir: Path = field(default_factory=Path.cwd)
    dataset: Any = None
    model: Any = None
    integrator: Any = None
    loss: Any = None
    writers: list[Any] = field(default_factory=list)
    observables: list[Any] = field(default_factory=list)
    #: The parsed ``[sweep]`` table (a :class:`particlesim.scenario.sweep_table.SweepSpec`), if any.
    sweep: Any = None
    #: The ``[run]`` keys the scenario sets itself (the others are defaults).
    run_keys_given: frozenset[str] = frozenset()

    @property
    def seed(self) -> int:
        return self.resolved["scenario"]["seed"]

    def to_toml(self) -> str:
        """The resolved scenario (defaults filled in) as TOML text that runs as it is."""
        import tomli_w

        return tomli_w.dumps(without_none(self.resolved))


def _table(raw: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ScenarioError(
            f"expected a table [{key}], got {type_name(value)}", path=key, source=source
        )
    return dict(value)


def _array_of_tables(raw: Mapping[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ScenarioError(
            f"expected an array of tables [[{key}]], got {type_name(value)}",
            path=key,
            source=source,
        )
    return [dict(v) for v in value]


#: Keys of a scenario table that the engine reads itself when the factory does not take
#: them (``plugins/adapters.py``): ``(type, default)`` per key, for the factories ``when``
#: accepts.
EngineKeys = dict[str, tuple[Any, Any]]


def _engine_keys(kind: str, factory: Callable[..., Any]) -> EngineKeys:
    """The engine's own keys of a ``kind`` table whose factory is ``factory``."""
    from particlesim.core.integrators import ScheduleKind
    from particlesim.core.potentials import Potential
    from particlesim.core.writers import Writer

    is_class = isinstance(factory, type)
    keys: EngineKeys = {}
    if kind == "potential":
        keys = {"coefficient_schedule": (list[list[float]] | None, None)}
    if kind == "potential" and not (is_class and issubclass(factory, Potential)):
        keys = {**keys, "coefficient": (float, 1.0), "groups": (list[str] | None, None)}
    elif kind == "writer" and not (is_class and issubclass(factory, Writer)):
        keys = {"observables": (list[str] | None, None)}
    elif kind == "dataset" and not is_class:
        keys = {"test_fraction": (float, 0.2)}
    elif kind == "integrator" and is_optimizer_factory(factory):
        keys = {"lr_schedule": (ScheduleKind, "constant"), "lr_final": (float, 0.0)}
    return {k: v for k, v in keys.items() if not accepts(factory, k)}


def _split_engine_keys(
    keys: EngineKeys, table: dict[str, Any], path: str, source: str
) -> dict[str, Any]:
    """Pop and type-check the engine's keys from ``table``; fill their defaults."""
    engine = {}
    for key, (expected, default) in keys.items():
        value = table.pop(key, default)
        engine[key] = check_type(value, expected, f"{path}.{key}", source=source)
    return engine


def _construct(
    registries: Mapping[str, Any],
    kind: str,
    table: dict[str, Any],
    path: str,
    source: str,
    *,
    exclude: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Look up ``table["name"]`` in the ``kind`` registry, check the rest, construct it.

    Plain classes and functions from plugins are adapted to the engine's protocol of
    ``kind`` (:mod:`particlesim.plugins.adapters`); keys the engine reads itself are
    split off first when the factory does not take them. ``extra`` holds keywords the
    engine offers (given to a factory that accepts them, never read from the table); a
    data set whose constructor names ``registries`` is also given these ``registries``
    (a composed data set such as ``multitask`` looks its parts up in the scenario's own
    plugins, so ``-p no:NAME`` and ``PARTICLESIM_PLUGINS`` hold for them too).
    """
    name = table.pop("name", None)
    if name is None and "kind" in table:  # the word before `name` was settled on
        raise ScenarioError(
            f"'kind' is now 'name': write name = {table['kind']!r}",
            path=f"{path}.kind",
            source=source,
        )
    if name is None:
        raise ScenarioError(
            f"missing required key 'name' (a registered {kind})", path=path, source=source
        )
    name = check_type(name, str, f"{path}.name", source=source)
    try:
        entry = registries[kind].entry(name, where=f"{path}.name")
    except RegistryError as exc:
        raise ScenarioError(
            str(exc).split(": ", 1)[1], path=f"{path}.name", source=source
        ) from None
    factory = entry.factory
    offered = dict(extra or {})
    if kind == "dataset" and "registries" in parameter_names(factory):
        offered["registries"] = registries
    exclude = (*exclude, *(k for k in offered if k not in exclude))
    engine = _split_engine_keys(_engine_keys(kind, factory), table, path, source)
    schedule = engine.pop("coefficient_schedule", None) if kind == "potential" else None
    optimizer = kind == "integrator" and is_optimizer_factory(factory)
    exclude = (*exclude, "params") if optimizer else exclude
    try:
        options = check_options(
            factory, table, path, exclude=exclude, what=f"{kind} {name!r}", source=source
        )
    except ScenarioError as exc:
        if not _is_plugin(entry.plugin):
            raise
        raise ScenarioError(
            f"{exc.detail} (plugin {entry.plugin!r})", path=exc.path, source=source
        ) from None
    extra = {k: v for k, v in offered.items() if accepts(factory, k)}
    if optimizer:
        instance = _call(
            lambda **kw: OptimizerIntegrator(factory, kw, name=name, **engine),
            options, path, source, entry.plugin,
        )  # fmt: skip
    elif kind == "dataset" and not isinstance(factory, type):
        instance = _call(
            lambda **kw: FunctionDataset(factory, kw, name=name, **engine),
            {**options, **extra}, path, source, entry.plugin,
        )  # fmt: skip
    else:
        instance = _call(factory, {**options, **extra}, path, source, entry.plugin)
        instance = _adapt(kind, instance, name, engine, offered, path, source)
    if schedule is not None:
        from particlesim.core.potentials import set_coefficient_schedule

        try:
            set_coefficient_schedule(instance, schedule)
        except OptionError as exc:
            raise ScenarioError(exc.detail, path=f"{path}.{exc.key}", source=source) from None
        engine["coefficient_schedule"] = schedule
    resolved = {"name": name, **defaults(factory, exclude), **options, **engine}
    return instance, resolved


def _adapt(
    kind: str,
    instance: Any,
    name: str,
    engine: dict[str, Any],
    offered: dict[str, Any],
    path: str,
    source: str,
) -> Any:
    """A constructed plugin component in the engine's protocol of ``kind`` (itself if it is)."""
    from particlesim.core.observables import Observable
    from particlesim.core.potentials import Potential
    from particlesim.core.writers import Writer

    try:
        if kind == "potential" and not isinstance(instance, Potential):
            return CallablePotential(instance, name=name, **engine)
        if kind == "observable" and not isinstance(instance, Observable):
            return CallableObservable(instance, name=name)
        if kind == "writer" and not isinstance(instance, Writer):
            return CallableWriter(instance, name=name, **engine, trigger=offered.get("trigger"))
    except OptionError as exc:
        raise ScenarioError(exc.detail, path=f"{path}.{exc.key}", source=source) from None
    if kind == "dataset" and not callable(getattr(instance, "load", None)):
        raise ScenarioError(
            f"data set {name!r} made a {type(instance).__name__}, which has no load(seed, log); "
            "register a function returning (x, y) or a class with load()",
            path=path,
            source=source,
        )
    return instance


def _is_plugin(name: str) -> bool:
    """Whether a registry entry came from a plugin, not the engine's built-ins."""
    return name not in ("particlesim", "")


def _call(
    factory: Callable[..., Any], kwargs: dict[str, Any], path: str, source: str, plugin: str = ""
) -> Any:
    """Call a component's constructor, turning its range errors into key-path errors."""
    try:
        return factory(**kwargs)
    except OptionError as exc:
        raise ScenarioError(exc.detail, path=f"{path}.{exc.key}", source=source) from None
    except ScenarioError:
        raise
    except (ValueError, TypeError) as exc:
        who = f" (plugin {plugin!r})" if _is_plugin(plugin) else ""
        raise ScenarioError(f"{exc}{who}", path=path, source=source) from None
    except ParticlesimError:
        raise
    except Exception as exc:  # a plugin's constructor failing in its own way
        who = f" of plugin {plugin!r}" if _is_plugin(plugin) else ""
        name = getattr(factory, "name", None) or getattr(factory, "__name__", "component")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ScenarioError(
            f"{name!r}{who} raised {type(exc).__name__}: {first}", path=path, source=source
        ) from None


def _kernel_table(value: str | dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {"name": "gaussian"}
    if isinstance(value, str):
        return {"name": value}
    return dict(value)


def validate(
    raw: Mapping[str, Any],
    registries: Mapping[str, Any],
    *,
    source: str = "",
    base_dir: Path | None = None,
) -> Plan:
    """Check a parsed scenario against the schema and the registries; build nothing heavy."""
    if not isinstance(raw, Mapping):
        raise ScenarioError("a scenario must be a TOML table", source=source)
    for key in raw:
        if key not in SECTIONS:
            raise ScenarioError(
                f"unknown section{close_matches(key, SECTIONS)}; sections: {', '.join(SECTIONS)}",
                path=key,
                source=source,
            )
    resolved: dict[str, Any] = {}
    plan = Plan(resolved, registries, source=source, base_dir=base_dir or Path.cwd())
    if "sweep" in raw:  # `particlesim sweep` expands it; here only its shape is checked
        from particlesim.scenario.sweep_table import parse_sweep

        plan.sweep = parse_sweep(raw["sweep"], source=source)

    def section(func, key: str) -> dict[str, Any]:
        table = check_options(func, _table(raw, key, source), key, source=source)
        return {**defaults(func), **table}

    resolved["scenario"] = section(scenario_section, "scenario")
    if not 0 <= resolved["scenario"]["seed"] < SEED_LIMIT:
        raise ScenarioError(
            f"must be in 0 … 2^63 - 1 (a TOML integer), got {resolved['scenario']['seed']}",
            path="scenario.seed",
            source=source,
        )
    resolved["run"] = run = section(run_section, "run")
    plan.run_keys_given = frozenset(_table(raw, "run", source))
    for key in ("batch_size", "eval_batch_size", "steps", "threads"):
        if run[key] is not None and run[key] < 1:
            raise ScenarioError(
                f"must be a positive integer, got {run[key]}", path=f"run.{key}", source=source
            )
    if run["epochs"] is not None and not run["epochs"] > 0:
        raise ScenarioError(f"must be > 0, got {run['epochs']}", path="run.epochs", source=source)
    if run["epochs"] is not None and run["steps"] is not None:
        raise ScenarioError("give either epochs or steps, not both", path="run", source=source)
    if run["epochs"] is None and run["steps"] is None:
        run["epochs"] = 1.0
    if run["threads"] is not None and run["threads"] > MAX_THREADS:
        raise ScenarioError(
            f"must be at most {MAX_THREADS}, got {run['threads']}",
            path="run.threads",
            source=source,
        )
    _check_guard_options(run, source)
    for i, entry in enumerate(run["batch_schedule"] or []):
        if len(entry) != 2 or entry[0] < 0 or entry[1] < 1:
            raise ScenarioError(
                f"expected [step >= 0, size >= 1], got {entry}",
                path=f"run.batch_schedule[{i}]",
                source=source,
            )

    plugins = check_type(raw.get("plugins", []), list[str], "plugins", source=source)
    # Absolute, as data_dir below: a run directory's scenario.toml is read from elsewhere.
    resolved["plugins"] = [p if Path(p).is_absolute() else str(plan.base_dir / p) for p in plugins]

    data = _table(raw, "data", source)
    data.setdefault("name", "mnist")
    if isinstance(data.get("data_dir"), str) and not Path(data["data_dir"]).is_absolute():
        data["data_dir"] = str(plan.base_dir / data["data_dir"])  # relative to the scenario file
    plan.dataset, resolved["data"] = _construct(registries, "dataset", data, "data", source)
    if resolved["run"]["batch_schedule"] and getattr(plan.dataset, "online", None) is False:
        raise ScenarioError(
            f"needs an online data set (one that draws fresh batches each step); data set "
            f"{resolved['data'].get('name')!r} is a fixed training set",
            path="run.batch_schedule",
            source=source,
        )

    if "model" in raw and ("groups" in raw or "interactions" in raw):
        raise ScenarioError(
            "give either [model] or [[groups]] with [[interactions]], not both",
            path="model",
            source=source,
        )
    if "model" in raw:
        plan.model, resolved["model"] = _construct(
            registries, "model", _table(raw, "model", source), "model", source
        )
        _check_named_components(resolved["model"], registries, "model", source)
    elif "groups" in raw:
        resolved["system"] = section(system_section, "system")
        resolved["groups"] = _validate_groups(raw, registries, source)
        resolved["interactions"] = _validate_interactions(
            raw, registries, resolved["groups"], source
        )
    else:
        raise ScenarioError(
            "no network: add a [model] table or [[groups]] and [[interactions]]", source=source
        )

    resolved["potentials"] = []
    for i, table in enumerate(_array_of_tables(raw, "potentials", source)):
        _, entry = _construct(registries, "potential", table, f"potentials[{i}]", source)
        resolved["potentials"].append(entry)

    integrator = _table(raw, "integrator", source)
    integrator.setdefault("name", "adam")
    plan.integrator, resolved["integrator"] = _construct(
        registries, "integrator", integrator, "integrator", source
    )

    resolved["moves"] = []
    for i, table in enumerate(_array_of_tables(raw, "moves", source)):
        _, entry = _construct(registries, "move", table, f"moves[{i}]", source)
        resolved["moves"].append(entry)

    if "loss" in raw:
        plan.loss, resolved["loss"] = _construct(
            registries, "loss", _table(raw, "loss", source), "loss", source
        )

    resolved["observables"] = []
    for i, table in enumerate(_array_of_tables(raw, "observables", source)):
        observable, entry = _construct(registries, "observable", table, f"observables[{i}]", source)
        plan.observables.append(observable)
        resolved["observables"].append(entry)

    resolved["writers"] = []
    for i, table in enumerate(_array_of_tables(raw, "writers", source)):
        path = f"writers[{i}]"
        every = table.pop("every", "epoch")
        trigger = _trigger(every, f"{path}.every", source)
        writer, entry = _construct(
            registries,
            "writer",
            table,
            path,
            source,
            exclude=("trigger",),
            extra={"trigger": trigger},
        )
        plan.writers.append(writer)
        resolved["writers"].append({**entry, "every": every})
    return plan


def _check_guard_options(run: dict[str, Any], source: str) -> None:
    """``[run]`` checkpoint_every, clip_grad_norm and backoff (filled with its defaults)."""
    try:
        parse_period(run["checkpoint_every"], "run.checkpoint_every", allow_off=True)
    except OptionError:
        raise ScenarioError(
            f"expected {PERIOD_WORDS}, or 0 / false for never, got "
            f"{type_name(run['checkpoint_every'])}",
            path="run.checkpoint_every",
            source=source,
        ) from None
    clip = run["clip_grad_norm"]
    if clip is not None and not 0 < clip < float("inf"):
        raise ScenarioError(
            f"must be a positive finite number, got {clip}",
            path="run.clip_grad_norm",
            source=source,
        )
    if run["backoff"] is not None:
        options = check_options(Backoff, run["backoff"], "run.backoff", source=source)
        backoff = _call(Backoff, options, "run", source)
        run["backoff"] = {"factor": backoff.factor, "retries": backoff.retries}


def _check_named_components(
    options: Mapping[str, Any], registries: Mapping[str, Any], path: str, source: str
) -> None:
    """Options named after a registry (``kernel = "gaussian"``) must name a registered entry."""
    for kind in ("kernel", "activation", "integrator", "potential"):
        value = options.get(kind)
        if isinstance(value, str):
            try:
                registries[kind].entry(value)
            except RegistryError as exc:
                raise ScenarioError(str(exc), path=f"{path}.{kind}", source=source) from None
        elif kind == "kernel" and isinstance(value, dict):  # kernel = { name = …, <options> }
            table = dict(value)
            if "name" not in table:
                raise ScenarioError(
                    "missing required key 'name' (a registered kernel)",
                    path=f"{path}.kernel",
                    source=source,
                )
            # checks the name and the table's keys against the kernel's options
            _construct(registries, "kernel", table, f"{path}.kernel", source)


def _trigger(every: Any, path: str, source: str) -> Trigger:
    """A writer's ``every`` (:func:`~particlesim.core.triggers.parse_period`)."""
    try:
        trigger = parse_period(every, path)
    except OptionError:
        trigger = None
    if trigger is None:
        raise ScenarioError(
            f"expected {PERIOD_WORDS}, got {type_name(every)}", path=path, source=source
        )
    return trigger


def _validate_groups(raw, registries, source) -> list[dict[str, Any]]:
    groups = []
    names: set[str] = set()
    for i, table in enumerate(_array_of_tables(raw, "groups", source)):
        path = f"groups[{i}]"
        entry = {
            **defaults(group_section),
            **check_options(group_section, table, path, source=source),
        }
        for key in ("size", "dim"):
            if entry[key] < 1:
                raise ScenarioError(
                    f"must be a positive integer, got {entry[key]}",
                    path=f"{path}.{key}",
                    source=source,
                )
        if entry["charge_channels"] < 0:
            raise ScenarioError(
                f"must be >= 0, got {entry['charge_channels']}",
                path=f"{path}.charge_channels",
                source=source,
            )
        if entry["name"] in names:
            raise ScenarioError(
                f"duplicate group name {entry['name']!r}", path=f"{path}.name", source=source
            )
        names.add(entry["name"])
        if entry["activation"] not in registries["activation"]:
            try:
                registries["activation"].entry(entry["activation"])
            except RegistryError as exc:
                raise ScenarioError(str(exc), path=f"{path}.activation", source=source) from None
        groups.append(entry)
    if len(groups) < 2:
        raise ScenarioError(
            f"a system needs at least 2 groups, got {len(groups)}", path="groups", source=source
        )
    return groups


def _validate_interactions(raw, registries, groups, source) -> list[dict[str, Any]]:
    names = [g["name"] for g in groups]
    interactions = []
    for i, table in enumerate(_array_of_tables(raw, "interactions", source)):
        path = f"interactions[{i}]"
        if "kind" in table:  # the word before `name` was settled on
            raise ScenarioError(
                f"'kind' is now 'name': write name = {table['kind']!r}",
                path=f"{path}.kind",
                source=source,
            )
        common = {k: table.pop(k) for k in ("name", "source", "target", "kernel") if k in table}
        common = check_options(interaction_section, common, path, source=source)
        for end in ("source", "target"):
            if common[end] not in names:
                raise ScenarioError(
                    f"unknown group {common[end]!r}{close_matches(common[end], names)}; "
                    f"groups: {', '.join(names)}",
                    path=f"{path}.{end}",
                    source=source,
                )
        try:
            entry = registries["interaction"].entry(common["name"])
        except RegistryError as exc:
            raise ScenarioError(str(exc), path=f"{path}.name", source=source) from None
        options = check_options(
            entry.factory,
            table,
            path,
            exclude=("source", "target", "kernel", "generator"),
            what=f"interaction {common['name']!r}",
            source=source,
        )
        resolved = {**common, **options}
        if "kernel" in _param_names(entry.factory):
            kernel = _kernel_table(common.get("kernel"))
            _, resolved["kernel"] = _construct(
                registries, "kernel", kernel, f"{path}.kernel", source
            )
        interactions.append(resolved)
    return interactions


def _param_names(factory) -> set[str]:
    import inspect

    return set(inspect.signature(factory.__init__).parameters)


@dataclass
class Built:
    """Everything a run needs, made from a :class:`Plan`."""

    plan: Plan
    system: System
    data: Any
    simulation: Simulation
    device: torch.device
    #: The memory preflight's estimate (:mod:`particlesim.scenario.preflight`), if it ran.
    memory: Any = None


def build(
    plan: Plan,
    *,
    device: str | None = None,
    hooks: Any = None,
    log: Callable[[str], None] = print,
    extra_writers: list[Any] | None = None,
    preflight: bool | None = None,
) -> Built:
    """Load the data, create the system and the simulation described by ``plan``.

    ``preflight``: estimate the memory training needs before anything is allocated and
    refuse a scenario that cannot fit (:mod:`particlesim.scenario.preflight`); the estimate
    is ``Built.memory`` (None when not made or not traceable; a lower bound when the step
    was too long to trace).
    """
    resolved, registries, source = plan.resolved, plan.registries, plan.source
    scenario = resolved["scenario"]
    device_name = device or scenario["device"]
    try:
        torch_device = resolve_device(device_name)
    except ParticlesimError as exc:
        raise ScenarioError(str(exc), path="scenario.device", source=source) from None
    dtype = resolve_dtype(scenario["dtype"])
    seed = scenario["seed"]
    data = plan.dataset.load(seed=seed, log=log)
    generator = torch.Generator().manual_seed(seed)
    input_size = int(data.train_x.shape[-1])  # features (per time step for sequences)
    run = resolved["run"]
    loss = _data_loss(plan, data)
    memory = None
    if _should_preflight(plan, preflight):
        memory = _preflight(plan, data, input_size, loss, torch_device, dtype)
    try:
        system = _build_system(plan, registries, input_size, data, generator, dtype, source)
    except ParticlesimError:
        raise
    except (MemoryError, RuntimeError, TypeError, ValueError) as exc:
        # e.g. a plugin's kernel that does not take the model's keywords
        where = "model" if plan.model is not None else "groups"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ScenarioError(
            f"could not build the network: {type(exc).__name__}: {first}"
            f"{_model_plugin(plan, registries)}",
            path=where,
            source=source,
        ) from None
    potentials = []
    for i, table in enumerate(resolved["potentials"]):
        potential, _ = _construct(registries, "potential", dict(table), f"potentials[{i}]", source)
        potentials.append(potential)
    for potential in potentials:
        system.potentials.append(potential)
    _check_group_names(plan, system, potentials, source)
    system = system.to(dtype)
    moves = _build_moves(plan, system)
    _check_batch_size(plan, data, run["batch_size"])
    try:
        simulation = Simulation(
            system,
            plan.integrator,
            data,
            epochs=run["epochs"],
            steps=run["steps"],
            batch_size=run["batch_size"],
            batch_schedule=[tuple(entry) for entry in run["batch_schedule"] or []],
            loss=loss,
            eval_batch_size=run["eval_batch_size"],
            seed=seed,
            device=torch_device,
            observables=plan.observables,
            writers=[*plan.writers, *(extra_writers or [])],
            moves=moves,
            hooks=hooks,
            record_initial=run["record_initial"],
            clip_grad_norm=run.get("clip_grad_norm"),
            backoff=None if not run.get("backoff") else Backoff(**run["backoff"]),
            log=log,
        )
    except OptionError as exc:
        raise ScenarioError(exc.detail, path=exc.key, source=source) from None
    _warn_unrecorded(plan, [*plan.writers, *(extra_writers or [])], log)
    simulation.metadata.update(run_metadata(plan, data, hooks))
    return Built(plan, system, data, simulation, torch_device, memory)


def _build_moves(plan: Plan, system: System) -> list[Any]:
    """The scenario's ``[[moves]]``, each checked against the built system (its groups, its
    interactions) so that a problem names the move's key path."""
    moves = []
    for i, table in enumerate(plan.resolved.get("moves", [])):
        path = f"moves[{i}]"
        move, _ = _construct(plan.registries, "move", dict(table), path, plan.source)
        try:
            move.setup(system)
        except OptionError as exc:
            raise ScenarioError(exc.detail, path=f"{path}.{exc.key}", source=plan.source) from None
        moves.append(move)
    return moves


def _data_loss(plan: Plan, data: Any) -> Any:
    """The scenario's ``[loss]``, else the one the data set names."""
    if plan.loss is not None:
        return plan.loss
    try:
        return plan.registries["loss"].get(data.loss)(**data.loss_options)
    except (RegistryError, OptionError) as exc:
        raise ScenarioError(
            f"the data set asks for loss {data.loss!r}: {exc}", path="data", source=plan.source
        ) from None


def _should_preflight(plan: Plan, preflight: bool | None) -> bool:
    from particlesim.scenario.preflight import environment_allows_skipping

    return bool(preflight) and not environment_allows_skipping()


def _preflight(
    plan: Plan, data: Any, input_size: int, loss: Any, device: torch.device, dtype: torch.dtype
) -> Any:
    """Trace the scenario's training on fake tensors; refuse it if it cannot fit in memory."""
    from particlesim.scenario.preflight import estimate_memory

    resolved, source = plan.resolved, plan.source
    where = "model" if plan.model is not None else "groups"
    rows = int(data.train_x.shape[0])
    batch = resolved["run"]["batch_size"]
    batch = batch if data.sampler is not None else min(batch, max(rows, 1))

    def build_system() -> System:
        system = _build_system(
            plan, plan.registries, input_size, data, torch.Generator().manual_seed(0), dtype, source
        )
        potentials = [
            _construct(plan.registries, "potential", dict(table), f"potentials[{i}]", source)[0]
            for i, table in enumerate(resolved["potentials"])
        ]
        system.potentials.extend(potentials)
        _check_group_names(plan, system, potentials, source)  # before anything is traced
        return system

    try:
        memory = estimate_memory(
            build_system,
            plan.integrator,
            loss,
            input_size=tuple(data.train_x.shape[1:]),
            batch_size=batch,
            target=data.train_y[0],
            device=device,
        )
    except ParticlesimError:
        raise
    except Exception:
        return None
    if not memory.fits:
        raise ScenarioError(
            f"the network needs {memory.describe()}; use smaller sizes or a smaller "
            "run.batch_size (PARTICLESIM_NO_PREFLIGHT=1 skips this check)",
            path=where,
            source=source,
        )
    return memory


def _check_group_names(plan: Plan, system: System, potentials: list[Any], source: str) -> None:
    """Groups that potentials (``groups``) and observables (``group``) name must exist."""
    named: list[tuple[str, Any]] = [
        (f"potentials[{i}].groups", getattr(p, "groups", None)) for i, p in enumerate(potentials)
    ]
    named += [
        (f"observables[{i}].group", getattr(getattr(o, "plugin", o), "group", None))
        for i, o in enumerate(plan.observables)
    ]
    for path, value in named:
        for group in [value] if isinstance(value, str) else list(value or []):
            if group not in system.groups:
                raise ScenarioError(
                    f"unknown group {group!r}{close_matches(str(group), list(system.groups))}; "
                    f"groups: {', '.join(system.groups)}",
                    path=path,
                    source=source,
                )
    for i, potential in enumerate(potentials):
        check = getattr(potential, "check", None)
        if callable(check):
            try:
                check(system)
            except OptionError as exc:
                raise ScenarioError(
                    exc.detail, path=f"potentials[{i}].{exc.key}", source=source
                ) from None


def _warn_unrecorded(plan: Plan, writers: list[Any], log: Callable[[str], None]) -> None:
    """Warn about ``[[observables]]`` that no writer lists: they would never be computed."""
    requested = {name for writer in writers for name in getattr(writer, "observables", ())}
    for i, observable in enumerate(plan.observables):
        if observable.name not in requested:
            log(
                f"warning: observables[{i}] {observable.name!r} is recorded by no writer; "
                f'add it to a writer\'s observables, e.g. [[writers]] name = "metrics" '
                f'observables = ["epoch", "{observable.name}"]'
            )


def _check_batch_size(plan: Plan, data: Any, batch_size: int) -> None:
    """A ``run.batch_size`` the scenario asks for must fit in a fixed training set.

    (The default batch size quietly means the whole set when the set is smaller; online
    data sets draw any number of fresh points.)
    """
    rows = int(data.train_x.shape[0])
    if "batch_size" in plan.run_keys_given and data.sampler is None and batch_size > rows:
        raise ScenarioError(
            f"{batch_size} is larger than the training set ({rows} rows of {data.source!r}); "
            f"use a batch of at most {rows} (all of it: full-batch gradient descent)",
            path="run.batch_size",
            source=plan.source,
        )


def run_metadata(plan: Plan, data: Any, hooks: Any = None) -> dict[str, Any]:
    """What a run records about itself: scenario text, seed, versions, plugins, data source."""
    import platform

    from particlesim import __version__

    plugins = [
        {"name": p.name, "version": p.version, "source": p.source}
        for p in getattr(hooks, "plugins", [])
    ]
    return {
        "scenario_name": plan.resolved["scenario"]["name"] or Path(plan.source).stem,
        "scenario_toml": plan.to_toml(),
        "seed": plan.seed,
        "data_source": data.source,
        "versions": {
            "particlesim": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "plugins": plugins,
    }


def _model_plugin(plan: Plan, registries: Mapping[str, Any]) -> str:
    """`` (model 'name' of plugin 'p')`` for a plugin's model shorthand; "" otherwise."""
    if plan.model is None:
        return ""
    name = plan.resolved["model"]["name"]
    plugin = registries["model"].entry(name).plugin
    return f" (model {name!r} of plugin {plugin!r})" if _is_plugin(plugin) else ""


def _build_system(plan, registries, input_size, data, generator, dtype, source) -> System:
    """The network of a plan: the model shorthand's ``build`` or the explicit groups."""
    if plan.model is None:
        return _build_groups(plan.resolved, registries, generator, dtype, source)
    try:
        return plan.model.build(
            registries=registries,
            input_size=input_size,
            num_classes=data.num_classes,
            generator=generator,
            dtype=dtype,
        )
    except OptionError as exc:
        raise ScenarioError(
            f"{exc.detail}{_model_plugin(plan, registries)}", path=f"model.{exc.key}", source=source
        ) from None


def _build_groups(resolved, registries, generator, dtype, source) -> System:
    groups = []
    for i, table in enumerate(resolved["groups"]):
        options = dict(table)
        name = options.pop("name")
        activation = options.pop("activation")
        try:
            group = ParticleGroup.create(
                name,
                options.pop("size"),
                options.pop("dim"),
                generator=generator,
                layout=options.pop("layout"),
                spread=options.pop("spread"),
                layout_options=options.pop("layout_options"),
                charge_channels=options.pop("charge_channels"),
                charge_std=options.pop("charge_std"),
                bias=options.pop("bias"),
                frozen=options.pop("frozen") or (),
                activation=activation,
                dtype=dtype,
            )
        except OptionError as exc:
            raise ScenarioError(exc.detail, path=f"groups[{i}].{exc.key}", source=source) from None
        groups.append(group)
    by_name = {g.name: g for g in groups}
    interactions = []
    for i, table in enumerate(resolved["interactions"]):
        options = dict(table)
        name = options.pop("name")
        src, dst = by_name[options.pop("source")], by_name[options.pop("target")]
        kernel_table = options.pop("kernel", None)
        factory = registries["interaction"].get(name)
        if isinstance(kernel_table, dict) and "kernel" in _param_names(factory):
            kernel_options = {k: v for k, v in kernel_table.items() if k != "name"}
            options["kernel"] = _call(
                registries["kernel"].get(kernel_table["name"]),
                kernel_options,
                f"interactions[{i}].kernel",
                source,
            )
        if "generator" in _param_names(factory):
            options["generator"] = generator
        if not (isinstance(factory, type) and issubclass(factory, Interaction)):
            # a plain module or callable: the engine gives it the groups only if it asks
            offered = {"source": src, "target": dst}
            options.update({k: v for k, v in offered.items() if accepts(factory, k)})
            plugin = _call(factory, options, f"interactions[{i}]", source)
            if not isinstance(plugin, Interaction):
                plugin = ModuleInteraction(src, dst, plugin, name=name)
            interactions.append(plugin)
            continue
        interactions.append(
            _call(factory, {"source": src, "target": dst, **options}, f"interactions[{i}]", source)
        )
    activations = {
        g.name: make_activation(registries["activation"].get(g.activation), g.size)
        for g in groups[1:]
    }
    try:
        return System(
            groups,
            interactions,
            activations=activations,
            input_scaling=resolved["system"]["input_scaling"],
        )
    except OptionError as exc:
        raise ScenarioError(exc.detail, path=exc.key, source=source) from None


#: Constructor parameters the engine supplies itself, per kind (not scenario options).
_SUPPLIED: dict[str, tuple[str, ...]] = {
    "writer": ("trigger",),
    "interaction": ("source", "target", "generator"),
    "integrator": ("params",),
    "activation": ("size",),
    "dataset": ("registries",),
}


def describe_options(registries: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """Every registered entry called ``name``, with the options a scenario may give it.

    One dict per kind that has the name: ``kind``, ``name``, ``plugin``, ``summary`` (the
    docstring's first line) and ``options``, a list of ``{name, type, default, required,
    doc, engine}`` (``engine``: a key the engine reads itself, e.g. a plain potential's
    ``coefficient``). Raises :class:`ScenarioError` for a name no registry has.
    """
    import inspect

    from particlesim.scenario.options import describe, option_hints, option_parameters

    found = []
    for kind, registry in registries.items():
        if name not in registry:
            continue
        entry = registry.entry(name)
        factory = entry.factory
        docs = _argument_docs(factory)
        hints = option_hints(factory)
        options = []
        for key, parameter in option_parameters(factory, _SUPPLIED.get(kind, ())).items():
            required = parameter.default is inspect.Parameter.empty
            options.append({
                "name": key,
                "type": describe(hints.get(key, Any)),
                "default": None if required else parameter.default,
                "required": required,
                "doc": docs.get(key, ""),
                "engine": False,
            })  # fmt: skip
        for key, (expected, default) in _engine_keys(kind, factory).items():
            options.append({
                "name": key, "type": describe(expected), "default": default, "required": False,
                "doc": _ENGINE_KEY_DOCS.get(key, ""), "engine": True,
            })  # fmt: skip
        doc = inspect.getdoc(factory) or ""
        found.append({
            "kind": kind, "name": name, "plugin": entry.plugin,
            "summary": doc.splitlines()[0] if doc else "", "options": options,
        })  # fmt: skip
    if not found:
        known = sorted({n for registry in registries.values() for n in registry.names()})
        raise ScenarioError(f"no registered entry is called {name!r}{close_matches(name, known)}")
    return found


_ENGINE_KEY_DOCS = {
    "coefficient": "multiplies the energy in the total (the recorded value is before it)",
    "coefficient_schedule": "[[step, coefficient], …]: the coefficient from each step on "
    "(e.g. BIMT's λ raised during training)",
    "groups": "the groups whose fields the potential is given (default: every group)",
    "observables": "the observables to write (default: epoch and train_loss)",
    "test_fraction": "rows held out as the test set when the function returns (x, y)",
    "lr_schedule": "how the step size lr decays over the run",
    "lr_final": "the step size at the end of the run",
}


def _argument_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """``{argument: first line of its description}`` from a Google-style ``Args:`` section."""
    import inspect
    import re

    texts = [inspect.getdoc(factory) or ""]
    if isinstance(factory, type):  # the class, its constructor, then the classes it extends
        texts.append(inspect.getdoc(factory.__init__) or "")
        texts += [klass.__doc__ or "" for klass in factory.__mro__[1:]]
        texts = [inspect.cleandoc(text) for text in texts]
    docs: dict[str, str] = {}
    for text in texts:
        section = re.search(r"^(?:Args|Arguments|Parameters):\n((?:[ \t]+.*\n?|\n)+)", text, re.M)
        if section is None:
            continue
        for match in re.finditer(r"^ {2,8}(\w+)(?: \([^)]*\))?: (.+)$", section.group(1), re.M):
            docs.setdefault(match.group(1), match.group(2).strip())
    return docs
