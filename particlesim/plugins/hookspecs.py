"""The particlesim hook specifications: the whole contract between the engine and plugins.

A plugin is a module (or any object) whose functions are decorated with
:data:`hookimpl` and named after one of the hooks below. Built-ins, installed
packages (entry-point group ``"particlesim"``) and local ``.py`` files named in
a scenario or with ``-p`` are all registered the same way, by
:class:`particlesim.plugins.PluginManager`.

Two families of hooks:

* **Registration hooks** ``particlesim_register_<kind>s()`` return a list of
  *factories* (classes or callables) that carry a snake_case ``name``
  attribute. The manager calls each implementation on its own, once, after
  every plugin is registered, and files the factories in one registry per kind
  (``manager.registry("kernel")``), remembering which plugin supplied each
  name. A name used twice, by any two plugins, is a
  :class:`~particlesim.errors.RegistryError` naming both.
* **Lifecycle hooks** are called by the engine with keyword arguments only
  (``hook.particlesim_step_end(simulation=sim, step=step)``); an implementation
  may accept any subset of the documented arguments. The engine checks
  :meth:`~particlesim.plugins.PluginManager.has_impls` before the loop, so an
  unimplemented hook costs nothing.

Every hookspec docstring holds a complete plugin module after
``.. code-block:: python`` and, for the hooks a scenario reaches, the scenario
lines that select it after ``.. code-block:: toml`` (``plugins = ["my_plugin.py"]``
and the table), then says where what it registers shows up.
``tests/test_plugin_contract.py`` writes each example to a file, runs it through
its scenario lines with ``particlesim run`` and looks for it there, so the
examples stay true. A plugin need not use the engine's base classes: plain
classes and functions are adapted (:mod:`particlesim.plugins.adapters`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

PROJECT_NAME = "particlesim"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a function in this module as a hook specification."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin function as a hook implementation (``from particlesim import hookimpl``)."""

EXAMPLE_MARKER = ".. code-block:: python"
"""Every hookspec docstring has this marker followed by its indented example plugin."""


def example_blocks(hook_name: str) -> dict[str, str]:
    """The code blocks of a hookspec's docstring by language, dedented.

    ``"python"`` is the example plugin module; ``"toml"`` (registration and
    run-lifecycle hooks) the scenario lines that select it; ``"console"`` a shell
    session. The project's tests run each plugin through its scenario lines, so the
    documentation cannot drift from the code.
    """
    import inspect
    import re
    import textwrap

    doc = inspect.getdoc(globals()[hook_name]) or ""
    blocks: dict[str, str] = {}
    pattern = r"^\.\. code-block:: (\w+)\n\n((?:(?: {4}.*)?\n)+)"
    for match in re.finditer(pattern, doc + "\n", flags=re.MULTILINE):
        blocks[match.group(1)] = textwrap.dedent(match.group(2)).strip() + "\n"
    return blocks


class NamedFactory(Protocol):
    """What a registration hook returns items of: a callable (usually a class) with a ``name``."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------------------
# Registration hooks
# --------------------------------------------------------------------------------------


@hookspec
def particlesim_register_kernels() -> Sequence[NamedFactory]:
    """Register kernel classes, ``k(r_h, r_j) -> [M, N]``, by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered; each implementation is called on its own so that each name is
    attributed to its plugin. Takes no arguments.

    Return a list of kernel classes (subclasses of
    :class:`particlesim.kernels.Kernel`, usually
    :class:`particlesim.kernels.RadialKernel`) with a snake_case ``name``; a
    scenario selects one with ``kernel = "<name>"`` and its table's other keys
    (``width``, ``learnable_width``, …) become constructor keywords. A
    :class:`~particlesim.kernels.RadialKernel` gives ``profile(u)`` and the
    closed form ``profile_derivative(u)`` of ``u = |r_h - r_j|²/σ²``, and every
    execution path (materialised, chunked, fused) reuses them. Each class is
    checked as it is filed (:func:`particlesim.kernels.kernel_class_problem`):
    a subclass of ``Kernel``; for a radial kernel, a profile and derivative that
    are elementwise, finite for every ``u ≥ 0`` and consistent with each other.
    A failure is a :class:`~particlesim.errors.PluginError` naming the plugin.
    Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl
        from particlesim.kernels import RadialKernel


        class QuarticKernel(RadialKernel):
            \"\"\"``k = 1 / (1 + |r|²/σ²)²``: a Cauchy kernel with a faster, ``r⁻⁴`` tail.\"\"\"

            name = "quartic"

            @staticmethod
            def profile(u: torch.Tensor) -> torch.Tensor:
                return (1.0 + u) ** -2

            @staticmethod
            def profile_derivative(u: torch.Tensor) -> torch.Tensor:
                return -2.0 * (1.0 + u) ** -3


        @hookimpl
        def particlesim_register_kernels():
            return [QuarticKernel]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [model]
        name = "particle_network"
        kernel = { name = "quartic", width = 0.5 }
        learnable_width = true

    The run's ``scenario.toml`` records the kernel with its options, and each
    layer's learned width is recorded by name in the trajectory
    (``/observables/width/<source>-><target>``) and in the metrics.
    """


@hookspec
def particlesim_register_interactions() -> Sequence[NamedFactory]:
    """Register interaction classes (how one group drives another) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of interaction factories with a snake_case ``name``; a
    scenario's ``[[interactions]]`` table selects one with ``name = "<name>"``
    and passes its other keys as constructor keywords. The full protocol is the
    engine's ``Interaction`` base class (``particlesim.core``); interactions are
    ``torch.nn.Module`` objects so that parameters, devices and state dicts work.
    Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import torch
        from torch import nn

        from particlesim import hookimpl


        class ScaledIdentity(nn.Module):
            \"\"\"Passes the source activity through times a learnable gain (a skip link).\"\"\"

            name = "scaled_identity"

            def __init__(self, *, gain: float = 1.0) -> None:
                super().__init__()
                self.gain = nn.Parameter(torch.tensor(float(gain)))

            def forward(self, activity: torch.Tensor) -> torch.Tensor:
                return self.gain * activity


        @hookimpl
        def particlesim_register_interactions():
            return [ScaledIdentity]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [[groups]]
        name = "input"
        size = 16  # the data set's input features
        dim = 2

        [[groups]]
        name = "hidden"
        size = 16
        dim = 2
        activation = "tanh"

        [[groups]]
        name = "output"
        size = 3  # the data set's classes
        dim = 2

        [[interactions]]
        name = "kernel"
        source = "input"
        target = "hidden"

        [[interactions]]
        name = "scaled_identity"  # a skip link: the input's activity, times a learned gain
        source = "input"
        target = "hidden"
        gain = 0.5

        [[interactions]]
        name = "kernel"
        source = "hidden"
        target = "output"

    Its ``gain`` is trained with the system's other parameters and saved in the
    run's ``checkpoint.pt`` (``interactions.1.module.gain``).
    """


@hookspec
def particlesim_register_potentials() -> Sequence[NamedFactory]:
    """Register potentials (energy terms beyond the data loss) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of potential factories with a snake_case ``name``; a
    scenario's ``[[potentials]]`` table selects one with ``name = "<name>"``
    and passes its other keys (``strength``, ``groups``, …) as constructor
    keywords. The full protocol is the engine's ``Potential`` base class
    (``particlesim.core``); each potential's value is also reported as an
    observable under its name. Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl


        class HarmonicTether:
            \"\"\"``U = k/2 · Σ_i |r_i|²`` over ``position [N, D]``: keeps a group near 0.\"\"\"

            name = "harmonic_tether"

            def __init__(self, *, strength: float = 1.0) -> None:
                self.strength = strength

            def __call__(self, position: torch.Tensor) -> torch.Tensor:
                return 0.5 * self.strength * position.pow(2).sum()


        @hookimpl
        def particlesim_register_potentials():
            return [HarmonicTether]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [[potentials]]
        name = "harmonic_tether"
        strength = 0.1
        groups = ["hidden1"]  # the engine's: the groups whose fields it is given (default all)

    Its value is recorded as the observable ``potential/harmonic_tether``: a
    column of the run's ``metrics.jsonl`` and ``/observables/potential/harmonic_tether``
    in a trajectory.
    """


@hookspec
def particlesim_register_integrators() -> Sequence[NamedFactory]:
    """Register integrators (update rules that move positions and charges) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of integrator factories with a snake_case ``name``; the
    scenario's ``[integrator]`` table selects one with ``name = "<name>"`` and
    passes its other keys (``lr``, ``temperature``, …) as keywords. Wrapping a
    ``torch.optim`` optimiser is the usual way; the full protocol is the
    engine's ``Integrator`` base class (``particlesim.core``). Return ``[]`` to
    register nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl


        class NesterovSGD(torch.optim.SGD):
            \"\"\"SGD with Nesterov momentum; ``lr`` is the time step.\"\"\"

            name = "nesterov"

            def __init__(self, params, *, lr: float = 0.01, momentum: float = 0.9) -> None:
                super().__init__(params, lr=lr, momentum=momentum, nesterov=True)


        @hookimpl
        def particlesim_register_integrators():
            return [NesterovSGD]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [integrator]
        name = "nesterov"
        lr = 0.05
        momentum = 0.8

    The run's ``scenario.toml`` records it with its options, and its step size
    is the observable ``lr`` (a column of ``metrics.jsonl``).
    """


@hookspec
def particlesim_register_moves() -> Sequence[NamedFactory]:
    """Register Monte Carlo moves (discrete changes tried between gradient steps) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of subclasses of the engine's ``Move``
    (``particlesim.core.moves``) with a snake_case ``name``; a scenario's
    ``[[moves]]`` table selects one with ``name = "<name>"`` and passes its
    other keys (``every``, ``temperature``, ``temperature_schedule``, …) as
    keywords. ``attempt(system, step=, generator=, optimizer=)`` proposes,
    accepts or rejects (``metropolis`` gives the rule) and returns the counts
    ``(attempted, accepted)``; the run calls it every ``every`` steps, right
    after that step's update. ``permute_neurons`` relabels a group's neurons
    with their connections and optimiser state. Return ``[]`` to register
    nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl
        from particlesim.core.moves import Move, metropolis, permute_neurons


        class PairSwap(Move):
            \"\"\"Swap two random neurons of a group (all but their places), kept by
            Metropolis on the wiring length ``Σ|W|·d`` of the group's connections.\"\"\"

            name = "pair_swap"

            def __init__(self, *, group: str = "hidden1", every: int = 5,
                         temperature: float = 0.1) -> None:
                super().__init__(every=every, temperature=temperature)
                self.group = group

            def wiring(self, system) -> float:
                total = 0.0
                for link in system.interactions:
                    if self.group in (link.source, link.target):
                        target = system.groups[link.target].position
                        source = system.groups[link.source].position
                        length = link.weight.detach().abs() * torch.cdist(target, source)
                        total += float(length.sum())
                return total

            def attempt(self, system, *, step, generator, optimizer=None):
                size = system.groups[self.group].size
                a, b = torch.randperm(size, generator=generator)[:2].tolist()
                order = torch.arange(size)
                order[a], order[b] = b, a
                before = self.wiring(system)
                permute_neurons(system, self.group, order)  # try it
                delta = self.wiring(system) - before
                permute_neurons(system, self.group, order)  # a swap undoes itself
                if not metropolis(delta, self.temperature_at(step), generator):
                    return 1, 0
                permute_neurons(system, self.group, order, optimizer=optimizer)
                return 1, 1


        @hookimpl
        def particlesim_register_moves():
            return [PairSwap]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [model]
        name = "mlp"  # dense interactions: a swap keeps the network's function
        sizes = [0, 8, 0]

        [[moves]]
        name = "pair_swap"
        every = 5
        temperature = 0.05

    Its acceptance is recorded as the observables ``moves/pair_swap/acceptance``
    (accepted over attempted since the run began) and ``moves/pair_swap/accepted``
    (at its last application): columns of ``metrics.jsonl``, and in a trajectory.
    """


@hookspec
def particlesim_register_reproductions() -> Sequence[NamedFactory]:
    """Register reproductions (a paper's results, rebuilt by ``particlesim reproduce``) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of classes (or objects) with a snake_case ``name`` (the
    paper's short name, used as ``particlesim reproduce NAME``), a ``title`` and
    ``run(out, *, quick, log)``: run the experiments (through
    ``particlesim.experiments`` so that they resume point by point), write
    tables and figures under the folder ``out``, and return a
    ``particlesim.reproduce.Report``: one ``Claim`` per result, the paper's
    value beside ours with a verdict (``particlesim.reproduce.verdict`` gives
    one). ``quick`` asks for tiny settings that run in seconds. Return ``[]``
    to register nothing.

    Example:

    .. code-block:: python

        import statistics

        from particlesim import hookimpl
        from particlesim.reproduce import Claim, Report, verdict


        class CoinPaper:
            \"\"\"A toy paper claiming a fair coin lands heads half the time.\"\"\"

            name = "coin"
            title = "Coin (1654): heads with probability ½"

            def run(self, out, *, quick, log):
                import random

                flips = 200 if quick else 20_000
                rates = []
                for seed in range(3):
                    rng = random.Random(seed)
                    rates.append(sum(rng.random() < 0.5 for _ in range(flips)) / flips)
                mean, spread = statistics.mean(rates), statistics.stdev(rates)
                out.mkdir(parents=True, exist_ok=True)
                (out / "rates.txt").write_text(" ".join(f"{r:.4f}" for r in rates))
                return Report(
                    paper=self.name,
                    title=self.title,
                    command="particlesim reproduce coin",
                    settings=f"{flips} flips, 3 seeds",
                    claims=[
                        Claim(
                            "heads rate",
                            "0.5",
                            f"{mean:.3f} ± {spread:.3f}",
                            verdict(mean, spread, 0.5, tolerance=0.01),
                            "mean over 3 seeds against ½ (tolerance 0.01)",
                        )
                    ],
                )


        @hookimpl
        def particlesim_register_reproductions():
            return [CoinPaper]


    Run it (the plugin file given with ``-p``; an installed plugin needs nothing):

    .. code-block:: console

        $ particlesim reproduce coin --quick -p my_plugin.py

    It is a section of ``docs/reproductions.md`` (with ``--quick``: of the quick
    page in the results folder): the claims table, the command, the time it took.
    """


@hookspec
def particlesim_register_observables() -> Sequence[NamedFactory]:
    """Register observables (named measurements with a shape and unit) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of observable factories with a snake_case ``name``; a
    scenario's ``[[observables]]`` table selects one with ``name = "<name>"``
    and passes its other keys as keywords. The name is also the H5MD path
    (``/observables/<name>``) and the xarray variable. Observables are computed
    once per due step and shared by every writer; the full protocol is the
    engine's ``Observable`` base class (``particlesim.core``). Return ``[]`` to
    register nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl


        class MeanRadius:
            \"\"\"Mean distance of a group's particles from the origin, shape ``[]``.\"\"\"

            name = "mean_radius"
            unit = "length"
            shape = ()

            def __init__(self, *, group: str = "hidden") -> None:
                self.group = group

            def compute(self, position: torch.Tensor) -> torch.Tensor:
                return position.norm(dim=-1).mean()


        @hookimpl
        def particlesim_register_observables():
            return [MeanRadius]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [[observables]]
        name = "mean_radius"
        group = "hidden1"  # particle_network's first hidden layer

        [[writers]]
        name = "metrics"
        every = 5
        observables = ["train_loss", "mean_radius"]

    Each line of the run's ``metrics.jsonl`` then has a ``mean_radius``.
    """


@hookspec
def particlesim_register_datasets() -> Sequence[NamedFactory]:
    """Register data sets (sources of ``(input, target)`` tensors) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of data-set factories with a snake_case ``name``; the
    scenario's ``[data]`` table selects one with ``name = "<name>"`` and passes
    its other keys as keywords. A plain function works as well as a class, as
    long as it carries a ``name`` attribute. Data sets that read files should
    resolve them offline first and say which source they used (see ``DESIGN.md``,
    "Data"). Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import math

        import torch

        from particlesim import hookimpl


        def two_moons(*, size: int = 256, noise: float = 0.1, seed: int = 0):
            \"\"\"Two interleaved half circles: ``x [size, 2]`` float, ``y [size]`` in {0, 1}.\"\"\"
            generator = torch.Generator().manual_seed(seed)
            angle = torch.rand(size, generator=generator) * math.pi
            y = torch.randint(0, 2, (size,), generator=generator)
            upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
            lower = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
            x = torch.where(y[:, None] == 1, lower, upper)
            return x + noise * torch.randn(size, 2, generator=generator), y


        two_moons.name = "two_moons"


        @hookimpl
        def particlesim_register_datasets():
            return [two_moons]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [data]
        name = "two_moons"
        size = 512
        noise = 0.05

    A function's ``(x, y)`` is split by the engine: ``test_fraction`` of the rows
    (an engine key, default 0.2, drawn with the scenario's seed) become the test
    set. Integer targets are classes (cross-entropy, accuracy); real ones are
    regressed (mean squared error). A class may instead give ``load(seed, log)``
    returning :class:`particlesim.data.DataSplits`. The summary's
    ``data_source`` names the data set. A data set that looks other data sets up
    (as ``multitask`` does its tasks) names a ``registries`` parameter: the engine
    then passes the scenario's own registries (never a scenario key), so that
    ``-p no:NAME`` and ``PARTICLESIM_PLUGINS`` hold for what it looks up.
    """


@hookspec
def particlesim_register_writers() -> Sequence[NamedFactory]:
    """Register writers (trajectory and log outputs) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of writer factories with a snake_case ``name``; a scenario's
    ``[[writers]]`` table selects one with ``name = "<name>"`` and passes its
    other keys as keywords. Writers receive observables that were already
    computed (they never compute their own) and state what they need next; the
    full protocol is the engine's writer base class (``particlesim.io``).
    Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        from particlesim import hookimpl


        class PrintWriter:
            \"\"\"Prints scalar observables, one line per written step.\"\"\"

            name = "print"

            def __init__(self, *, digits: int = 4) -> None:
                self.digits = digits

            def write(self, step: int, values: dict[str, float]) -> None:
                text = " ".join(f"{k}={v:.{self.digits}g}" for k, v in values.items())
                print(f"step {step}: {text}")


        @hookimpl
        def particlesim_register_writers():
            return [PrintWriter]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [[writers]]
        name = "print"
        every = 5
        digits = 3
        observables = ["train_loss"]

    ``every`` and ``observables`` are the engine's keys (given to the writer only
    if its constructor takes them); the run prints ``step 5: train_loss=…`` and
    so on every 5 steps.
    """


@hookspec
def particlesim_register_activations() -> Sequence[NamedFactory]:
    """Register activation functions by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of activation factories with a snake_case ``name``, usually
    ``torch.nn.Module`` classes; a group selects one with
    ``activation = "<name>"``. Return ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import torch
        from torch import nn

        from particlesim import hookimpl


        class Softsign(nn.Module):
            \"\"\"``x / (1 + |x|)``: like tanh, both signs, but with polynomial tails.\"\"\"

            name = "softsign"

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x / (1.0 + x.abs())


        @hookimpl
        def particlesim_register_activations():
            return [Softsign]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [model]
        name = "particle_network"
        activation = "softsign"

    A class whose constructor takes ``size`` is given the group's size (for
    per-neuron parameters); others are constructed without arguments. The run's
    ``scenario.toml`` records the activation.
    """


@hookspec
def particlesim_register_losses() -> Sequence[NamedFactory]:
    """Register data losses (how outputs are scored against targets) by name.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of loss classes with a snake_case ``name``, subclasses of
    ``particlesim.core.losses.Loss``: ``__call__(outputs, targets, reduction)``
    returns the mean (or summed) loss and ``correct(outputs, targets)`` the
    number of right rows (``None`` when accuracy means nothing). A data set
    names its default loss; the scenario's ``[loss]`` table selects another
    with ``name = "<name>"`` and passes its other keys as keywords. Return
    ``[]`` to register nothing.

    Example:

    .. code-block:: python

        import torch

        from particlesim import hookimpl
        from particlesim.core.losses import Loss


        class Huber(Loss):
            \"\"\"Huber loss of real targets: quadratic near 0, linear beyond ``delta``.\"\"\"

            name = "huber"

            def __init__(self, *, delta: float = 1.0) -> None:
                self.delta = delta

            def __call__(self, outputs, targets, reduction="mean"):
                return torch.nn.functional.huber_loss(
                    outputs.reshape(targets.shape), targets, reduction=reduction, delta=self.delta
                )


        @hookimpl
        def particlesim_register_losses():
            return [Huber]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [data]
        name = "spherical_3spin"  # real-valued targets (plugin rotskoff)
        dim = 8

        [loss]
        name = "huber"
        delta = 0.5

    The loss is the ``train_loss`` and ``test_loss`` of ``metrics.jsonl`` and of
    the run's ``summary.json``.
    """


@hookspec
def particlesim_register_models() -> Sequence[NamedFactory]:
    """Register models: scenario shorthands that expand into a whole system.

    Called once per :meth:`PluginManager.load`, after every plugin is
    registered, one implementation at a time. Takes no arguments.

    Return a list of :class:`particlesim.core.model.Model` subclasses with a
    snake_case ``name``. A scenario's ``[model]`` table replaces
    ``[[groups]]`` and ``[[interactions]]``: the engine checks the table's
    other keys against the class's *keyword-only, typed* constructor
    arguments (unknown keys and wrong types are errors naming the key path),
    constructs it, and later calls ``build(*, registries, input_size,
    num_classes, generator, dtype)``, which returns a
    :class:`particlesim.core.System`. Raise
    :class:`particlesim.errors.OptionError` with the option's key for a bad
    value: the user sees ``model.<key>: <message>``.

    Example:

    .. code-block:: python

        from particlesim import hookimpl
        from particlesim.core import KernelInteraction, ParticleGroup, System
        from particlesim.core.model import Model


        class TinyNetwork(Model):
            \"\"\"Input particles → one hidden layer → classes, coupled by one kernel.\"\"\"

            name = "tiny_network"

            def __init__(self, *, hidden: int = 32, dim: int = 2, kernel: str = "gaussian"):
                self.hidden, self.dim, self.kernel = hidden, dim, kernel

            def build(self, *, registries, input_size, num_classes, generator, dtype):
                sizes = {"input": input_size, "hidden": self.hidden, "output": num_classes}
                groups = [
                    ParticleGroup.create(name, size, self.dim, generator=generator, dtype=dtype)
                    for name, size in sizes.items()
                ]
                kernel = registries["kernel"].get(self.kernel)
                interactions = [
                    KernelInteraction(a, b, kernel=kernel()) for a, b in zip(groups, groups[1:])
                ]
                tanh = registries["activation"].get("tanh")
                return System(groups, interactions, activations={"hidden": tanh()})


        @hookimpl
        def particlesim_register_models():
            return [TinyNetwork]


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

        [model]
        name = "tiny_network"
        hidden = 16

    The run's ``scenario.toml`` records the model with its options, and its
    groups are the trajectory's particle groups.
    """


# --------------------------------------------------------------------------------------
# Lifecycle hooks
# --------------------------------------------------------------------------------------


@hookspec
def particlesim_simulation_start(simulation: Any) -> None:
    """Called once when a simulation starts (or resumes), before its first step.

    Called by ``Simulation.run()`` after the system, data, observables and
    writers are set up and any checkpoint is restored, so ``simulation`` is
    complete. Implementations may keep a reference to it.

    :param simulation: the running ``particlesim.core.Simulation``.

    Return value is ignored.

    Example:

    .. code-block:: python

        import time

        from particlesim import hookimpl

        STARTED: dict[int, float] = {}


        @hookimpl
        def particlesim_simulation_start(simulation):
            STARTED[id(simulation)] = time.perf_counter()
            print("simulation started")


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

    The run prints ``simulation started`` before its first step.
    """


@hookspec
def particlesim_step_end(simulation: Any, step: int) -> None:
    """Called after every integrator step, once its observables and writers are done.

    This is the hot loop: the engine calls it only when some plugin implements
    it, and implementations should return fast (check ``step`` first, as in the
    example). ``step`` is the absolute step number (it keeps counting across a
    resume), so decisions that depend on it are reproducible.

    :param simulation: the running ``particlesim.core.Simulation``.
    :param step: the absolute number of the step just completed (the first is 1).

    Return value is ignored.

    Example:

    .. code-block:: python

        from particlesim import hookimpl


        @hookimpl
        def particlesim_step_end(step):
            if step % 10 == 0:
                print(f"finished step {step}")


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

    A run of 25 steps prints ``finished step 10`` and ``finished step 20``.
    """


@hookspec
def particlesim_simulation_finish(
    simulation: Any, status: Literal["completed", "interrupted", "failed"]
) -> None:
    """Called once when a simulation ends, however it ends.

    Called by ``Simulation.run()`` after the last step, after writers are
    flushed and closed, also when the run was interrupted (Ctrl-C) or raised;
    the original exception is re-raised afterwards.

    :param simulation: the ``particlesim.core.Simulation`` that ran.
    :param status: ``"completed"`` (every step ran), ``"interrupted"``
        (KeyboardInterrupt or a stop request) or ``"failed"`` (an exception).

    Return value is ignored.

    Example:

    .. code-block:: python

        from particlesim import hookimpl


        @hookimpl
        def particlesim_simulation_finish(status):
            print(f"simulation {status}")


    Select it in a scenario (the plugin file beside the scenario file):

    .. code-block:: toml

        plugins = ["my_plugin.py"]

    A run that ends normally prints ``simulation completed`` after its writers
    are closed; one stopped with Ctrl-C prints ``simulation interrupted``.
    """


@hookspec
def particlesim_add_commands(app: typer.Typer) -> None:
    """Add sub-commands to the ``particlesim`` command line.

    Called once when the CLI starts, after plugins are loaded and before the
    command line is parsed. Import heavy modules inside the command functions,
    not at module level, so that ``particlesim --help`` stays fast.

    :param app: the ``typer.Typer`` application; add commands with
        ``@app.command()`` or groups with ``app.add_typer(...)``.

    Return value is ignored.

    Example:

    .. code-block:: python

        import typer

        from particlesim import hookimpl


        @hookimpl
        def particlesim_add_commands(app):
            @app.command()
            def hello(name: str = "world") -> None:
                \"\"\"Say hello (an example plugin command).\"\"\"
                typer.echo(f"hello {name}")

    Load the plugin file with ``-p`` before the command (an installed plugin
    needs nothing):

    .. code-block:: console

        $ particlesim -p my_plugin.py hello --name you
        hello you
    """
