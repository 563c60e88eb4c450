"""The engine's side of the plugin contract: plain classes and callables made into components.

A plugin may register the engine's own base classes (``Potential``, ``Observable``,
``Writer``, ``Integrator``, ``Interaction``…), which are used as they are, or plain
Python: a class whose constructor takes only its own keyword options and whose method
(or ``__call__``) names the arguments it wants, or a function. The engine adapts those,
the way pytest gives a test the fixtures its parameters name:

* **arguments by name** — a potential's ``__call__(position)`` is given each selected
  group's ``position`` (any field name works: ``charge``, ``bias``…) and the results are
  summed, or the whole ``system`` if it names ``system``; an observable's
  ``compute(position)`` gets the fields of the group its ``group`` attribute names, or
  ``simulation``, ``system``, ``step``, ``epoch``; a writer's ``write(step, values)``
  gets any of ``step``, ``values``, ``simulation``, ``epoch``; an interaction's
  ``forward(activity)`` gets the source's activity as its first argument and the
  ``source``/``target`` groups by name.
* **the engine's keys** — a scenario table may hold keys the engine reads itself
  (a writer's ``every`` and ``observables``, a potential's ``coefficient`` and
  ``groups``, a function data set's ``test_fraction``); the factory receives one only if
  its constructor takes it.
* **constructor arguments the engine supplies** (a group's ``size`` for an activation,
  ``source``/``target``/``kernel``/``generator`` for an interaction, the parameters for a
  ``torch.optim`` optimiser) are passed only when the constructor names them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from particlesim.core.integrators import Integrator, ScheduleKind
from particlesim.core.interactions import Interaction
from particlesim.core.observables import Observable
from particlesim.core.potentials import Potential
from particlesim.core.signatures import (
    accepts,
    by_name,
    call_by_name,
    construct_with,
    parameter_names,
    signature_of,
)
from particlesim.core.writers import Writer
from particlesim.errors import OptionError

__all__ = [
    "CallableObservable",
    "CallablePotential",
    "CallableWriter",
    "FunctionDataset",
    "ModuleInteraction",
    "OptimizerIntegrator",
    "accepts",
    "construct_with",
    "is_optimizer_factory",
    "parameter_names",
]


def _method(obj: Any, names: Sequence[str]) -> Callable[..., Any]:
    """The first of ``obj``'s methods ``names`` that exists, else ``obj`` itself if callable."""
    for name in names:
        method = getattr(obj, name, None)
        if callable(method):
            return method
    if callable(obj):
        return obj
    wanted = " or ".join(f"{n}()" for n in names)
    raise OptionError("name", f"{type(obj).__name__} has no {wanted} and is not callable")


def _group_fields(group: Any) -> dict[str, Callable[[], Any]]:
    fields: dict[str, Callable[[], Any]] = {
        name: (lambda n=name: group.field(n)) for name in group.field_names()
    }
    fields["group"] = lambda: group
    return fields


# --------------------------------------------------------------------------- potentials


class CallablePotential(Potential):
    """A plain callable made into a :class:`~particlesim.core.potentials.Potential`.

    ``energy(system)`` calls the plugin's ``energy``/``__call__``: with the whole system
    when it names ``system``; otherwise once per selected group with the fields its
    parameters name (``position``, ``charge``…), summing the results. Groups without a
    named field are skipped. A plugin object that is an ``nn.Module`` is kept as a
    submodule, so its parameters train and are saved.
    """

    def __init__(
        self,
        plugin: Any,
        *,
        name: str,
        coefficient: float = 1.0,
        groups: Sequence[str] | None = None,
    ) -> None:
        super().__init__(coefficient=coefficient)
        self.name = name  # type: ignore[misc]
        self.plugin = plugin
        self.groups = None if groups is None else list(groups)
        what = f"potential {name!r}"
        fn = _method(plugin, ("energy",))
        self._names = set(parameter_names(fn))
        self._call = by_name(fn, what)  # the signature is read once, not every step

    def energy(self, system: Any) -> Tensor:
        what = f"potential {self.name!r}"
        if "system" in self._names:
            return torch.as_tensor(self._call({"system": lambda: system}))
        if self.groups is not None:
            unknown = [g for g in self.groups if g not in system.groups]
            if unknown:
                raise OptionError("groups", f"{what}: unknown group {unknown[0]!r}; groups: "
                                  f"{', '.join(system.groups)}")  # fmt: skip
        total: Tensor | None = None
        for group in system.groups.values():
            if self.groups is not None and group.name not in self.groups:
                continue
            fields = _group_fields(group)
            if not self._names <= set(fields):
                continue  # a group without one of the fields it asks for
            value = torch.as_tensor(self._call(fields))
            total = value if total is None else total + value
        if total is None:
            return torch.zeros((), dtype=system.dtype, device=system.device)
        return total


# --------------------------------------------------------------------------- observables


class CallableObservable(Observable):
    """A plain object with ``compute(...)`` (or a callable) made into an observable.

    Its ``unit``, ``description`` and ``category`` attributes are kept when it has them.
    ``compute`` names what it needs: ``simulation``, ``system``, ``step``, ``epoch``, or
    fields of the group its ``group`` attribute names (``position``, ``charge``…).
    """

    def __init__(self, plugin: Any, *, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.plugin = plugin
        self.unit = str(getattr(plugin, "unit", ""))  # type: ignore[misc]
        self.description = str(getattr(plugin, "description", ""))  # type: ignore[misc]
        self.category = getattr(plugin, "category", "scalar")  # type: ignore[misc]
        self._call = by_name(_method(plugin, ("compute",)), f"observable {name!r}")

    def compute(self, simulation: Any) -> Tensor | float:
        available: dict[str, Callable[[], Any]] = {
            "simulation": lambda: simulation,
            "system": lambda: simulation.system,
            "step": lambda: simulation.step,
            "epoch": lambda: simulation.step / simulation.steps_per_epoch,
        }
        group_name = getattr(self.plugin, "group", None)
        if isinstance(group_name, str):
            groups = simulation.system.groups
            if group_name not in groups:
                raise OptionError("group", f"observable {self.name!r}: unknown group "
                                  f"{group_name!r}; groups: {', '.join(groups)}")  # fmt: skip
            available = {**_group_fields(groups[group_name]), **available}
        with torch.no_grad():
            return self._call(available)


# --------------------------------------------------------------------------- writers


class CallableWriter(Writer):
    """A plain object with ``write(...)`` (or a callable) made into a writer.

    ``write`` names what it needs of ``step``, ``values`` (the requested observables as
    Python numbers), ``simulation`` and ``epoch``. Optional ``open``, ``flush`` and
    ``close`` are called as the engine's writers' are; ``open`` may name ``simulation``
    and ``out_dir``, ``close`` ``status``.
    """

    default_observables = ("epoch", "train_loss")

    def __init__(
        self, plugin: Any, *, name: str, trigger: Any = None, observables: list[str] | None = None
    ) -> None:
        super().__init__(trigger=trigger, observables=observables)
        self.name = name  # type: ignore[misc]
        self.plugin = plugin
        self._call = by_name(_method(plugin, ("write", "report")), f"writer {name!r}")

    def _forward(self, method: str, available: Mapping[str, Callable[[], Any]]) -> None:
        fn = getattr(self.plugin, method, None)
        if callable(fn):
            call_by_name(fn, available, f"writer {self.name!r}")

    def open(self, simulation: Any, out_dir: Any) -> None:
        self._forward("open", {"simulation": lambda: simulation, "out_dir": lambda: out_dir})

    def report(self, simulation: Any, step: int, values: dict[str, Any]) -> None:
        from particlesim.core.observables import to_python

        plain = {k: to_python(v) for k, v in values.items()}
        available = {
            "step": lambda: step,
            "values": lambda: plain,
            "simulation": lambda: simulation,
            "epoch": lambda: step / simulation.steps_per_epoch,
        }
        self._call(available)

    def flush(self) -> None:
        self._forward("flush", {})

    def close(self, status: str) -> None:
        self._forward("close", {"status": lambda: status})


# --------------------------------------------------------------------------- integrators


def is_optimizer_factory(factory: Callable[..., Any]) -> bool:
    """A ``torch.optim.Optimizer`` subclass, or a callable whose first parameter is ``params``."""
    if inspect.isclass(factory) and issubclass(factory, torch.optim.Optimizer):
        return True
    if inspect.isclass(factory) and issubclass(factory, Integrator):
        return False
    names = parameter_names(factory)
    return bool(names) and names[0] == "params"


class OptimizerIntegrator(Integrator):
    """An optimiser class (``torch.optim`` style: ``cls(params, **options)``) as an integrator.

    ``lr`` is the optimiser's step size and follows ``lr_schedule`` like the built-in
    integrators'; the other options go to the optimiser unchanged.
    """

    def __init__(
        self,
        optimizer_class: Callable[..., torch.optim.Optimizer],
        options: Mapping[str, Any],
        *,
        name: str,
        lr_schedule: ScheduleKind = "constant",
        lr_final: float = 0.0,
    ) -> None:
        lr = options.get("lr", _default(optimizer_class, "lr"))
        if not isinstance(lr, int | float) or isinstance(lr, bool):
            raise OptionError("lr", f"optimizer {name!r} needs a numeric step size 'lr'")
        super().__init__(lr=float(lr), lr_schedule=lr_schedule, lr_final=lr_final)
        self.name = name  # type: ignore[misc]
        self.optimizer_class = optimizer_class
        self.options = dict(options)

    def make_optimizer(self, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
        return self.optimizer_class(parameters, **self.options)


def _default(factory: Callable[..., Any], name: str) -> Any:
    signature = signature_of(factory)
    if signature is None or name not in signature.parameters:
        return None
    default = signature.parameters[name].default
    return None if default is inspect.Parameter.empty else default


# --------------------------------------------------------------------------- interactions


class ModuleInteraction(Interaction):
    """A plain ``nn.Module`` (or callable) from a source's activity to a target's input.

    Its ``forward`` gets the source's activity ``[B, N]`` as its first argument and the
    ``source`` and ``target`` groups when it names them; it returns ``[B, M]``. It has no
    effective weight matrix, so trajectories record no connectivity for it.
    """

    has_effective_weight = False

    def __init__(self, source: Any, target: Any, plugin: Any, *, name: str) -> None:
        super().__init__(source, target)
        self.name = name  # type: ignore[misc]
        self.module = plugin  # a submodule when it is one: its parameters train and are saved
        is_module = isinstance(plugin, nn.Module)
        forward = plugin.forward if is_module else _method(plugin, ("forward",))
        self._call = plugin if is_module else forward  # a module through __call__ (hooks)
        self._names = parameter_names(forward)  # read once, not every batch

    def forward(self, b: Tensor, source: Any, target: Any) -> Tensor:
        groups = {"source": source, "target": target}
        kwargs = {
            name: groups.get(name, b)
            for i, name in enumerate(self._names)
            if name in groups or i == 0  # the first parameter takes the activity
        }
        return self._call(**kwargs)

    def effective_weight(self, source: Any, target: Any) -> Tensor:
        raise NotImplementedError(f"interaction {self.name!r} has no weight matrix")


# --------------------------------------------------------------------------- data sets


class FunctionDataset:
    """A function returning arrays, made into a data set.

    The function is called (with its scenario options) when the data is loaded. It
    returns ``(x, y)``, which is split with the scenario's seed so that ``test_fraction``
    of the rows form the test set, or ``(x_train, y_train, x_test, y_test)``. Arrays may be
    tensors or NumPy arrays; ``x`` is flattened to ``[n, F]`` float32. Integer ``y`` are
    classes (cross-entropy, accuracy), real ``y`` are regressed (mean squared error).
    """

    online = False

    def __init__(
        self, function: Callable[..., Any], options: Mapping[str, Any], *, name: str,
        test_fraction: float = 0.2,
    ) -> None:  # fmt: skip
        if not 0.0 < test_fraction < 1.0:
            raise OptionError("test_fraction", f"must be in (0, 1), got {test_fraction}")
        self.function = function
        self.options = dict(options)
        self.name = name
        self.test_fraction = float(test_fraction)

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> Any:
        from particlesim.data.datasets import DataSplits

        result = self.function(**self.options)
        if not isinstance(result, tuple | list) or len(result) not in (2, 4):
            raise OptionError(
                "name",
                f"data set {self.name!r} returned {type(result).__name__}; expected (x, y) or "
                "(x_train, y_train, x_test, y_test)",
            )
        arrays = [torch.as_tensor(a) for a in result]
        if len(arrays) == 2:
            x, y = arrays
            if x.shape[0] != y.shape[0] or x.shape[0] < 2:
                raise OptionError("name", f"data set {self.name!r}: x has {x.shape[0]} rows, "
                                  f"y has {y.shape[0]}")  # fmt: skip
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
            n_test = min(max(1, math.floor(self.test_fraction * x.shape[0])), x.shape[0] - 1)
            test, train = order[:n_test], order[n_test:]
            arrays = [x[train], y[train], x[test], y[test]]
        train_x, train_y, test_x, test_y = arrays
        input_shape = tuple(train_x.shape[1:])
        train_x, test_x = (t.reshape(t.shape[0], -1).float() for t in (train_x, test_x))
        classes = not train_y.is_floating_point()
        if classes:
            train_y, test_y = train_y.long(), test_y.long()
            num_classes = int(max(train_y.max(), test_y.max())) + 1
        else:
            train_y, test_y = train_y.float(), test_y.float()
            num_classes = 1 if train_y.ndim == 1 else int(train_y.shape[1])
        source = f"{self.name} (function of plugin data set, {len(train_x)} train / "
        source += f"{len(test_x)} test rows)"
        log(f"data: {source}")
        return DataSplits(
            train_x=train_x,
            train_y=train_y,
            val_x=train_x[:0],
            val_y=train_y[:0],
            test_x=test_x,
            test_y=test_y,
            num_classes=num_classes,
            input_shape=input_shape,
            source=source,
            loss="cross_entropy" if classes else "mse",
        )


# --------------------------------------------------------------------------- load-time checks


def _defines(cls: type, *names: str) -> bool:
    """Whether ``cls`` (not ``object`` or ``nn.Module``) defines one of ``names``."""
    for klass in cls.__mro__:
        if klass in (object, nn.Module):
            continue
        if any(name in vars(klass) for name in names):
            return True
    return False


def factory_problem(kind: str, factory: Any) -> str | None:
    """What makes ``factory`` unusable as a registered ``kind``; None when it is usable.

    Read from the factory alone, when plugins load (nothing is constructed): it must be
    callable, take its options as keywords, and give the method the engine calls for its
    kind (or be the engine's base class of that kind). The answer completes the sentence
    "… returned <kind> '<name>', which …".
    """
    from particlesim.core.model import Model

    if not callable(factory):
        return f"is a {type(factory).__name__}, not a class or function"
    signature = signature_of(factory)
    if signature is not None:
        positional = [
            name
            for i, (name, p) in enumerate(signature.parameters.items())
            if p.kind == p.POSITIONAL_ONLY
            and p.default is p.empty
            and name != "self"
            and not (kind == "integrator" and i <= 1 and name == "params")
        ]
        if positional:
            return f"takes {positional[0]!r} only by position (options are given as keywords)"
    if kind == "reproduction":
        if not callable(getattr(factory, "run", None)) or not isinstance(
            getattr(factory, "title", None), str
        ):
            return "has no run(out, quick=, log=) method or no title"
        return None
    if kind == "move":
        from particlesim.core.moves import Move

        if not (isinstance(factory, type) and issubclass(factory, Move)):
            return "is not a particlesim.core.moves.Move subclass"
        if factory.attempt is Move.attempt:
            return "does not implement attempt()"
        return None
    if not isinstance(factory, type):
        return None  # a function: what it returns is checked when the scenario builds it
    needs = {
        "potential": (Potential, ("energy", "__call__", "forward")),
        "observable": (Observable, ("compute", "__call__")),
        "writer": (Writer, ("write", "report", "__call__")),
        "interaction": (Interaction, ("forward", "__call__")),
        "dataset": (None, ("load",)),
        "activation": (None, ("forward", "__call__")),
        "model": (Model, ("build",)),
    }
    if kind == "integrator":
        if issubclass(factory, Integrator) or is_optimizer_factory(factory):
            return None
        return (
            "is neither an Integrator subclass nor an optimiser class taking the parameters "
            "first (torch.optim style: cls(params, **options))"
        )
    if kind not in needs:
        return None
    base, methods = needs[kind]
    if base is not None and issubclass(factory, base):
        if kind == "model" and not _defines(factory, "build"):
            return "does not implement build()"
        return None
    if kind == "model":
        return "is not a particlesim.core.model.Model subclass with build()"
    if not _defines(factory, *methods):
        wanted = " or ".join(f"{m}()" for m in methods)
        return f"has no {wanted}"
    return None
