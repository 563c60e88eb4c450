"""seRNN, spatially embedded recurrent networks (Achterberg, Akarca, Strouse, Duncan & Astle,
Nature Machine Intelligence 2023): a recurrent layer on a 3-D grid whose weights pay for
their length and for how much they take part in the network's communication.

Sources (github 8erberg/spatially-embedded-RNN, ``seRNN_demo.ipynb``): the task
(``mazeGeneratorI``), the regulariser (``SE1``, ``SE1_sWc``) and the model (a
``GaussianNoise(0.05)`` input, ``SimpleRNN(100, relu, recurrent_initializer="orthogonal")``,
``Dense(4, softmax)``, Adam 1e-3, categorical cross-entropy, batch 128, 10 epochs).

* data set ``maze``: the one-choice inference maze. Eight problems (a goal among four, two
  of the four first steps open, the step towards the goal as the answer), each an episode
  of ``goal_steps`` (20) steps showing the goal (one-hot in inputs 0–3), ``delay_steps``
  (10) of silence and ``choice_steps`` (20) showing the open steps (inputs 4–7: left, up,
  right, down); one answer at the end, among left/up/right/down. 5120 training and 2560
  test episodes, problems drawn uniformly. The open steps alone already give 0.625: of the
  eight problems, three pairs of them share their open steps with different answers, so a
  network that ignores the goal scores (2·1 + 6·½)/8 = 0.625; "learned" means clearly
  above it (the goal must be kept through the delay).
* model ``sernn``: input → hidden (``units`` neurons at the integer points of a ``grid``,
  default 5 × 5 × 4, as the demo's ``np.meshgrid(nx, ny, nz)`` ravelled) → output, the
  hidden group coupled to itself by a dense recurrent interaction (orthogonal initial
  weights); Glorot-uniform input and readout weights, zero biases, ReLU, Gaussian input
  noise 0.05 in training.
* potential ``communicability``: ``E = Σ_ij |W_ij| · C_ij · D_ij`` over the recurrent
  weight ``W`` (``[target, source]``), ``D`` the Euclidean distances between the units'
  positions and ``C = expm(S^{−½}|W|S^{−½})`` with its diagonal set to 0 (Crofts & Higham's
  weighted communicability), raised to ``comms_factor``. Gradients go through the matrix
  exponential (``torch.linalg.matrix_exp``). **Convention**: Keras stores the recurrent
  kernel as ``U[source, target]`` and the demo sums ``|U|`` over ``axis=1``, i.e. each
  unit's *outgoing* strength, and uses it on both sides of the non-symmetric ``|U|``. In
  this engine's ``W = Uᵀ``, that is ``S_jj = Σ_i |W_ij|`` (column sums), and ``C`` here is
  the demo's ``C`` transposed, so ``E`` is the demo's value exactly (``strength =
  "outgoing"``, the default; ``"incoming"`` uses row sums instead). A unit with no outgoing
  weight at all would divide by zero; its strength is floored at 1e-12.
  **Self-connections**: in the demo ``D_ii = 0`` and ``C_ii = 0``, so the diagonal of
  ``W`` costs nothing and the regulariser can park weight there. ``self_distance = 0``
  (default) keeps the demo's choice; ``self_distance = d > 0`` charges each self-connection
  ``|W_ii| · d`` (as an L1 term at distance ``d``, the communicability factor of the
  diagonal taken as 1). :func:`diagonal_share` reports ``Σ|W_ii| / Σ|W|``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from particlesim import hookimpl
from particlesim.core.activations import make_activation
from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import DenseInteraction
from particlesim.core.model import Model, check_sizes
from particlesim.core.potentials import Potential
from particlesim.core.system import System
from particlesim.data.datasets import DataSplits
from particlesim.errors import OptionError

#: The eight first-choice problems of the demo's maze (``mazeGeneratorI.import_maze_dic``):
#: goal (the maze cell), the two open first steps and the step towards the goal.
MAZES: tuple[tuple[int, str, str], ...] = (
    (9, "ul", "u"),
    (9, "rd", "r"),
    (19, "ld", "d"),
    (17, "rd", "d"),
    (17, "ul", "l"),
    (7, "ur", "u"),
    (19, "lr", "r"),
    (7, "lr", "l"),
)
GOALS = (7, 9, 17, 19)  # one-hot in inputs 0–3, in this order
STEPS = "lurd"  # left, up, right, down: inputs 4–7 and the four answers


def maze_problems() -> tuple[Tensor, Tensor, Tensor]:
    """``(goal [8, 8], choices [8, 8], answer [8])``: each problem's two input vectors
    (goal one-hot in 0–3; open steps in 4–7) and its answer's index in left/up/right/down."""
    goal = torch.zeros(len(MAZES), 8)
    choices = torch.zeros(len(MAZES), 8)
    answer = torch.zeros(len(MAZES), dtype=torch.long)
    for i, (cell, open_steps, step) in enumerate(MAZES):
        goal[i, GOALS.index(cell)] = 1.0
        for s in open_steps:
            choices[i, 4 + STEPS.index(s)] = 1.0
        answer[i] = STEPS.index(step)
    return goal, choices, answer


def choices_only_accuracy() -> float:
    """The best accuracy without the goal: for each set of open steps, its most common
    answer (problems drawn uniformly). 0.625 for the demo's eight problems."""
    by_choices: dict[str, list[str]] = {}
    for _, open_steps, step in MAZES:
        by_choices.setdefault(open_steps, []).append(step)
    best = sum(max(steps.count(s) for s in set(steps)) for steps in by_choices.values())
    return best / len(MAZES)


class Maze:
    """The one-choice inference maze as a data set (see the module docstring).

    Args:
        n_train, n_val, n_test: episodes per split (the demo: 5120 / 2560 / 2560).
        goal_steps, delay_steps, choice_steps: the episode's three periods.
        data_seed: draws the problems of every split.
    """

    name = "maze"

    def __init__(
        self,
        *,
        n_train: int = 5120,
        n_val: int = 0,
        n_test: int = 2560,
        goal_steps: int = 20,
        delay_steps: int = 10,
        choice_steps: int = 20,
        data_seed: int = 0,
    ) -> None:
        for key, value, least in (
            ("n_train", n_train, 1),
            ("n_val", n_val, 0),
            ("n_test", n_test, 0),
            ("goal_steps", goal_steps, 1),
            ("delay_steps", delay_steps, 0),
            ("choice_steps", choice_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(key, f"must be an integer >= {least}, got {value!r}")
        self.sizes = (n_train, n_val, n_test)
        self.periods = (goal_steps, delay_steps, choice_steps)
        self.data_seed = data_seed

    def episodes(self, problems: Tensor) -> Tensor:
        """``[n, T, 8]`` episodes of the given problem indices."""
        goal, choices, _ = maze_problems()
        g, d, c = self.periods
        parts = [
            goal[problems].unsqueeze(1).expand(-1, g, -1),
            torch.zeros(len(problems), d, 8),
            choices[problems].unsqueeze(1).expand(-1, c, -1),
        ]
        return torch.cat(parts, 1).contiguous()

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        generator = torch.Generator().manual_seed(self.data_seed)
        _, _, answer = maze_problems()
        splits = []
        for n in self.sizes:
            problems = torch.randint(len(MAZES), (n,), generator=generator)
            splits.append((self.episodes(problems), answer[problems]))
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
        g, d, c = self.periods
        source = (
            f"maze (one-choice inference, {len(MAZES)} problems; goal {g}, delay {d}, "
            f"choices {c} steps; {self.sizes[0]} train / {self.sizes[1]} val / "
            f"{self.sizes[2]} test episodes, data_seed {self.data_seed})"
        )
        log(f"data: {source}")
        return DataSplits(
            train_x=train_x,
            train_y=train_y,
            val_x=val_x,
            val_y=val_y,
            test_x=test_x,
            test_y=test_y,
            num_classes=4,
            input_shape=(g + d + c, 8),
            source=source,
        )


def grid_coordinates(shape: Sequence[int]) -> Tensor:
    """``[prod(shape), 3]`` integer points, in the demo's order (``np.meshgrid(nx, ny, nz)``
    with its default ``"xy"`` indexing, each array ravelled)."""
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    x, y, z = torch.meshgrid(axes[1], axes[0], axes[2], indexing="ij")  # numpy's "xy": y first
    return torch.stack([y.reshape(-1), x.reshape(-1), z.reshape(-1)], 1)


def _glorot_(weight: Tensor, generator: torch.Generator) -> None:
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)


def _orthogonal(size: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A random orthogonal matrix (QR of a Gaussian, signs fixed: Haar-distributed)."""
    a = torch.randn(size, size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


class SeRNNModel(Model):
    """The demo's recurrent network (see the module docstring).

    Args:
        units: the number of hidden units (the demo's ``neuron_num``, 100).
        grid: the integer grid they sit on (the demo's ``network_structure``); its points
            must number ``units`` (the demo raises the same mismatch).
        activation: the hidden activation (the demo: ReLU).
        input_noise: standard deviation of the Gaussian input noise in training.
        recurrent_init: ``"orthogonal"`` (Keras' default for ``SimpleRNN``) or ``"glorot"``.
    """

    name = "sernn"

    def __init__(
        self,
        *,
        units: int = 100,
        grid: list[int] | None = None,
        activation: str = "relu",
        input_noise: float = 0.05,
        recurrent_init: Literal["orthogonal", "glorot"] = "orthogonal",
    ) -> None:
        self.grid = [5, 5, 4] if grid is None else list(grid)
        if len(self.grid) != 3 or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.grid
        ):
            raise OptionError("grid", f"must be three positive integers, got {grid!r}")
        if math.prod(self.grid) != units:
            shape = " × ".join(str(n) for n in self.grid)
            raise OptionError(
                "units",
                f"{units} units do not fill the grid {shape} ({math.prod(self.grid)} points)",
            )
        self.units = units
        if recurrent_init not in ("orthogonal", "glorot"):
            raise OptionError(
                "recurrent_init", f"must be 'orthogonal' or 'glorot', got {recurrent_init!r}"
            )
        if not (math.isfinite(input_noise) and input_noise >= 0):
            raise OptionError("input_noise", f"must be a finite number >= 0, got {input_noise}")
        self.activation, self.input_noise, self.recurrent_init = (
            activation,
            float(input_noise),
            recurrent_init,
        )

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        units = self.units
        sizes = check_sizes([input_size, units, num_classes], input_size, num_classes)
        activation = registries["activation"].get(self.activation, where="activation")
        where = {
            "input": torch.zeros(sizes[0], 3, dtype=dtype),
            "hidden": grid_coordinates(self.grid).to(dtype),
            "output": torch.zeros(sizes[2], 3, dtype=dtype),
        }
        groups = [
            ParticleGroup(
                name,
                {"position": position, **({"bias": torch.zeros(len(position), dtype=dtype)}
                                          if name != "input" else {})},
                frozen=["position"],
            )
            for name, position in where.items()
        ]  # fmt: skip
        inputs, hidden, output = groups
        feed = DenseInteraction(inputs, hidden, generator=generator)
        recurrent = DenseInteraction(hidden, hidden, generator=generator)
        readout = DenseInteraction(hidden, output, generator=generator)
        _glorot_(feed.weight, generator)
        _glorot_(readout.weight, generator)
        if self.recurrent_init == "orthogonal":
            with torch.no_grad():
                recurrent.weight.copy_(_orthogonal(units, generator, dtype))
        else:
            _glorot_(recurrent.weight, generator)
        return System(
            groups,
            [feed, recurrent, readout],
            activations={"hidden": make_activation(activation, units)},
            input_noise=self.input_noise,
        )


def communicability(
    weight: Tensor, strength: Literal["outgoing", "incoming"] = "outgoing"
) -> Tensor:
    """Crofts & Higham's weighted communicability of ``|weight|`` (``[target, source]``), its
    diagonal set to 0: ``expm(S^{−½}|W|S^{−½})`` (see the module docstring for ``S``)."""
    magnitude = weight.abs()
    totals = magnitude.sum(0) if strength == "outgoing" else magnitude.sum(1)
    scale = totals.clamp_min(1e-12).rsqrt()
    comms = torch.linalg.matrix_exp(scale[:, None] * magnitude * scale[None, :])
    return comms * (1.0 - torch.eye(len(comms), dtype=comms.dtype, device=comms.device))


def diagonal_share(weight: Tensor) -> float:
    """``Σ|W_ii| / Σ|W|`` of a recurrent weight: how much of it sits on self-connections."""
    magnitude = weight.detach().abs()
    total = float(magnitude.sum())
    return float(torch.diagonal(magnitude).sum()) / total if total > 0 else float("nan")


class Communicability(Potential):
    """seRNN's regulariser ``Σ|W|∘C∘D`` on recurrent interactions (see the module docstring).

    Args:
        comms_factor: the exponent of ``C`` (the demo's ``comms_factor``, 1).
        self_distance: the cost distance of a self-connection (0: free, as in the demo).
        strength: ``"outgoing"`` (the demo's) or ``"incoming"`` strengths in ``S``.
        groups: only the recurrent interactions of these groups (default all).
    """

    name = "communicability"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        comms_factor: float = 1.0,
        self_distance: float = 0.0,
        strength: Literal["outgoing", "incoming"] = "outgoing",
        groups: Sequence[str] | None = None,
    ) -> None:
        super().__init__(coefficient=coefficient)
        if not (math.isfinite(comms_factor) and comms_factor > 0):
            raise OptionError("comms_factor", f"must be a finite number > 0, got {comms_factor}")
        if not (math.isfinite(self_distance) and self_distance >= 0):
            raise OptionError("self_distance", f"must be a finite number >= 0, got {self_distance}")
        if strength not in ("outgoing", "incoming"):
            raise OptionError("strength", f"must be 'outgoing' or 'incoming', got {strength!r}")
        self.comms_factor, self.self_distance, self.strength = (
            float(comms_factor),
            float(self_distance),
            strength,
        )
        self.groups = None if groups is None else list(groups)

    def check(self, system: System) -> None:
        _recurrent(system, self.groups, self.name)

    def energy(self, system: System) -> Tensor:
        total = torch.zeros((), dtype=system.dtype, device=system.device)
        for interaction in _recurrent(system, self.groups, self.name):
            group = system.groups[interaction.target]
            weight = interaction.effective_weight(group, group)
            distance = torch.cdist(group.position, group.position)
            comms = communicability(weight, self.strength)
            if self.comms_factor != 1.0:
                comms = comms.pow(self.comms_factor)
            total = total + (weight.abs() * comms * distance).sum()
            if self.self_distance:
                total = total + self.self_distance * torch.diagonal(weight).abs().sum()
        return total


def _recurrent(system: System, groups: Sequence[str] | None, potential: str) -> list:
    """The recurrent interactions (a group coupled to itself) of ``groups`` (default all)."""
    found = [
        interaction
        for interaction in system.interactions
        if interaction.source == interaction.target
        and (groups is None or interaction.target in groups)
    ]
    if not found:
        raise OptionError(
            "groups",
            f"potential {potential!r} found no recurrent interaction (a group coupled to "
            "itself) to act on",
        )
    return found


class RecurrentL1(Potential):
    """``E = Σ_ij |W_ij|`` over recurrent weights: the paper's L1 baseline, which regularises
    the recurrent weight alone, with no notion of space.

    Args:
        groups: only the recurrent interactions of these groups (default all).
    """

    name = "recurrent_l1"

    def __init__(self, *, coefficient: float = 1.0, groups: Sequence[str] | None = None) -> None:
        super().__init__(coefficient=coefficient)
        self.groups = None if groups is None else list(groups)

    def check(self, system: System) -> None:
        _recurrent(system, self.groups, self.name)

    def energy(self, system: System) -> Tensor:
        total = torch.zeros((), dtype=system.dtype, device=system.device)
        for interaction in _recurrent(system, self.groups, self.name):
            group = system.groups[interaction.target]
            total = total + interaction.effective_weight(group, group).abs().sum()
        return total


@hookimpl
def particlesim_register_datasets():
    return [Maze]


@hookimpl
def particlesim_register_models():
    return [SeRNNModel]


@hookimpl
def particlesim_register_potentials():
    return [Communicability, RecurrentL1]


@hookimpl
def particlesim_register_reproductions():
    from particlesim_sernn.experiments import SeRNNReproduction

    return [SeRNNReproduction]


__all__ = [
    "Communicability",
    "Maze",
    "RecurrentL1",
    "SeRNNModel",
    "choices_only_accuracy",
    "communicability",
    "diagonal_share",
    "grid_coordinates",
    "maze_problems",
]
