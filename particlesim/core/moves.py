"""Monte Carlo moves: discrete changes of the system tried between gradient steps.

A :class:`Move` is tried every ``every`` steps, right after the integrator's update (the
writers then see the state after both), and accepted by the Metropolis rule at a
temperature ``T`` that may follow a schedule: a proposal that changes the potential energy
``U = Σ_p c_p E_p`` by ``ΔU`` is kept with probability ``min(1, exp(−ΔU/T))``. A move that
keeps the network's function (the data loss) unchanged needs only the potentials' change.

:class:`NeuronSwap` (``name = "neuron_swap"``) is BIMT's move (Liu, Gan & Tegmark 2023,
github KindXiaoming/BIMT, ``BioMLP.relocate``/``relocate_ij``/``get_top_id`` in the
notebooks): neurons keep their places (positions) and exchange everything else, so the
connections' lengths change while the function does not.

* ``temperature = 0`` (default) is the authors' greedy rule: for each of the ``top_k``
  slots of a layer ranked by ``Σ|in| + Σ|out|`` weight (ranked once per layer, before its
  swaps, as the code does), every swap with a slot of the same layer (itself included) is
  evaluated and the lowest energy kept (staying put on a tie, so that a swap is counted
  as accepted only when it lowers the energy).
* ``temperature > 0`` is Metropolis: for each of those slots, one partner drawn uniformly
  among the other slots of the layer, the swap accepted with ``min(1, exp(−ΔU/T))``. The
  proposal is symmetric (a swap is its own reverse, and the ``top_k`` ranking travels with
  the neurons), so the chain keeps detailed balance with ``exp(−U/T)`` over arrangements
  (tested on a small layer). As ``T → 0`` it accepts only swaps that do not raise ``U``;
  ``T = 0`` itself is the greedy rule above, which at each slot takes the best of these.

Function is kept exactly: a group's every field except its places (``position``) moves
with the neuron, and so do the rows (target) and columns (source) of the pair parameters
of every interaction touching the group. Swapping input or output neurons relabels
features and classes; the group's ``id`` field (added by the move: ``id[s]`` is the
original index of the neuron now in slot ``s``) records it, is written to trajectories as
a time-dependent field (H5MD's ``id`` element), and :class:`~particlesim.core.System` uses
it to feed feature ``id[s]`` to input slot ``s`` and to return the outputs in class order.

The optimiser's state (Adam's moments, momentum buffers, velocities: every state tensor
shaped like its parameter) is permuted with the parameters. The authors' code leaves
AdamW's moments where they were, so after a swap each neuron is updated with the other
neuron's running averages; permuting them makes a swap commute with training (tested: a run
with swaps and one without give the same function, to float rounding, when no potential
tells the places apart).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from particlesim.core.observables import FunctionObservable, Observable
from particlesim.core.schedules import step_entries, value_at
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation
    from particlesim.core.system import System

__all__ = [
    "BUILTIN_MOVES",
    "Move",
    "NeuronSwap",
    "add_identity",
    "move_observables",
    "permute_neurons",
    "swap_energy_changes",
]


class Move:
    """Base class of Monte Carlo moves; subclasses set ``name`` and implement :meth:`attempt`.

    Args:
        every: try the move every ``every`` steps (after the update of that step).
        temperature: ``T ≥ 0`` of the Metropolis rule (in units of the potential energy).
        temperature_schedule: ``[[step, T], …]``: from ``step`` on, the temperature is ``T``.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        every: int = 200,
        temperature: float = 0.0,
        temperature_schedule: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise OptionError("every", f"must be a positive integer (steps), got {every!r}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise OptionError("temperature", f"must be a finite number >= 0, got {temperature}")
        self.every = every
        self.temperature = float(temperature)
        self.temperature_schedule = step_entries(
            temperature_schedule or [], "temperature_schedule", "temperature"
        )
        self.attempted = 0
        self.accepted = 0
        self.last_attempted = 0
        self.last_accepted = 0

    def temperature_at(self, step: int) -> float:
        """The temperature at ``step`` (the schedule's last entry at or before it)."""
        return value_at(self.temperature_schedule, step, self.temperature)

    def setup(self, system: System) -> None:
        """Check the system and prepare it (called once, before the run's first step)."""

    def attempt(
        self,
        system: System,
        *,
        step: int,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> tuple[int, int]:
        """Propose and accept or reject; return ``(attempted, accepted)`` counts."""
        raise NotImplementedError  # pragma: no cover

    def apply(self, simulation: Simulation, step: int) -> None:
        """Try the move at ``step`` if it is due (the simulation calls this after each update)."""
        if step % self.every:
            return
        attempted, accepted = self.attempt(
            simulation.system,
            step=step,
            generator=simulation.noise_generator,
            optimizer=simulation.integrator.optimizer,
        )
        self.last_attempted, self.last_accepted = attempted, accepted
        self.attempted += attempted
        self.accepted += accepted

    def acceptance(self) -> float:
        """Accepted over attempted proposals since the run began (NaN before any)."""
        return self.accepted / self.attempted if self.attempted else float("nan")

    def state_dict(self) -> dict[str, int]:
        return {
            "attempted": self.attempted,
            "accepted": self.accepted,
            "last_attempted": self.last_attempted,
            "last_accepted": self.last_accepted,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.attempted = int(state["attempted"])
        self.accepted = int(state["accepted"])
        self.last_attempted = int(state["last_attempted"])
        self.last_accepted = int(state["last_accepted"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every}, temperature={self.temperature:g})"


def metropolis(delta: float, temperature: float, generator: torch.Generator) -> bool:
    """Keep a change of energy ``delta`` at ``temperature``: ``min(1, exp(−delta/T))``."""
    if delta <= 0:
        return True
    if temperature <= 0 or not math.isfinite(delta):
        return False
    draw = float(torch.rand((), generator=generator, dtype=torch.float64))
    return draw < math.exp(-delta / temperature)


# -- permutations of a group's neurons -------------------------------------------------------


def add_identity(system: System, group: str) -> Tensor:
    """The group's ``id`` field (``arange(N)`` the first time): who sits in each slot."""
    particles = system.groups[group]
    if not particles.has("id"):
        ids = torch.arange(particles.size, device=particles.position.device)
        particles.add_field("id", ids, frozen=True, evolving=True)
    return particles.id


def _permute_state(optimizer: torch.optim.Optimizer | None, parameter: Tensor, index: Tensor,
                   dim: int) -> None:  # fmt: skip
    """Permute every state tensor of ``parameter`` that has its shape along ``dim``."""
    if optimizer is None:
        return
    state = optimizer.state.get(parameter)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == parameter.shape:
            value.copy_(value.index_select(dim, index))


def _couplings(system: System, group: str) -> list[tuple[Any, str, int]]:
    """``(interaction, parameter name, dim)`` of every pair parameter indexed by ``group``."""
    found = []
    for i, interaction in enumerate(system.interactions):
        ends = [(d, end) for d, end in ((0, interaction.target), (1, interaction.source))]
        for dim, end in ends:
            if end != group:
                continue
            if getattr(interaction, "uses_positions", True):
                raise OptionError(
                    "groups",
                    f"group {group!r} is coupled by interaction {i} "
                    f"({interaction.source!r} -> {interaction.target!r}, kind "
                    f"{getattr(interaction, 'name', '') or type(interaction).__name__!r}), whose "
                    "weights depend on positions: moving neurons between places would change "
                    "the network's function (swaps need position-free interactions, e.g. dense)",
                )
            for name in getattr(interaction, "pair_parameters", ()):
                found.append((interaction, name, dim))
    return found


@torch.no_grad()
def permute_neurons(
    system: System,
    group: str,
    order: Tensor,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    keep: Sequence[str] = ("position",),
) -> None:
    """Put the neuron now in slot ``order[s]`` into slot ``s``, for every slot of ``group``.

    Every field of the group but those in ``keep`` (its places) moves with its neuron, and so
    do the target rows and source columns of the pair parameters of every interaction that
    touches the group, and the optimiser's state of each (see the module docstring).
    Interactions whose weights depend on positions are refused (:class:`OptionError`).
    """
    particles = system.groups[group]
    order = order.to(particles.position.device)
    for field in particles.field_names():
        if field in keep:
            continue
        tensor = particles.field(field)
        tensor.copy_(tensor.index_select(0, order))
        _permute_state(optimizer, tensor, order, 0)
    for interaction, name, dim in _couplings(system, group):
        tensor = getattr(interaction, name)
        tensor.copy_(tensor.index_select(dim, order))
        _permute_state(optimizer, tensor, order, dim)


def _swap_order(size: int, a: int, b: int, device: torch.device) -> Tensor:
    order = torch.arange(size, device=device)
    order[a], order[b] = b, a
    return order


@torch.no_grad()
def swap_energy_changes(system: System, group: str, slot: int) -> Tensor:
    """``ΔU[k]`` (float64 ``[N]``) of swapping the neuron in ``slot`` with the one in slot ``k``.

    A potential may give its own ``swap_energy_changes(system, group, slot)`` (vectorised,
    e.g. BIMT's ``connection_cost``); for the others every swap is made, measured and undone
    (``N`` evaluations of the potential, as the authors' code does).
    """
    particles = system.groups[group]
    size = particles.size
    total = torch.zeros(size, dtype=torch.float64, device=particles.position.device)
    slow = []
    for potential in system.potentials:
        fast = getattr(potential, "swap_energy_changes", None)
        changes = fast(system, group, slot) if callable(fast) else None
        if changes is None:
            slow.append(potential)
        else:
            total += float(potential.coefficient) * changes.to(torch.float64)
    if slow:
        base = sum(float(p(system)) for p in slow)
        for k in range(size):
            if k == slot:
                continue
            order = _swap_order(size, slot, k, particles.position.device)
            permute_neurons(system, group, order)
            total[k] += sum(float(p(system)) for p in slow) - base
            permute_neurons(system, group, order)
    return total


class NeuronSwap(Move):
    """BIMT's neuron swaps (see the module docstring for the rules).

    Args:
        groups: the groups whose neurons swap (default: every group of more than one
            neuron, input and output included, as in the code).
        top_k: slots tried per group and application, ranked by ``Σ|in| + Σ|out|`` weight.
        every, temperature, temperature_schedule: as :class:`Move` (the code: every 200
            steps, greedy).
    """

    name = "neuron_swap"

    def __init__(
        self,
        *,
        groups: Sequence[str] | None = None,
        top_k: int = 20,
        every: int = 200,
        temperature: float = 0.0,
        temperature_schedule: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(
            every=every, temperature=temperature, temperature_schedule=temperature_schedule
        )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise OptionError("top_k", f"must be a positive integer, got {top_k!r}")
        self.groups = None if groups is None else list(groups)
        self.top_k = top_k

    def setup(self, system: System) -> None:
        names = list(system.groups)
        if self.groups is None:  # every group with something to swap
            self.groups = [name for name in names if system.groups[name].size > 1]
        for name in self.groups:
            if name not in names:
                raise OptionError("groups", f"unknown group {name!r}; groups: {', '.join(names)}")
            if system.groups[name].size < 2:
                raise OptionError("groups", f"group {name!r} has one neuron: nothing to swap")
            _couplings(system, name)  # refuses position-dependent interactions
        for name in self.groups:
            add_identity(system, name)

    @torch.no_grad()
    def scores(self, system: System, group: str) -> Tensor:
        """``Σ|in| + Σ|out|`` pair-parameter weight of each slot of ``group``."""
        particles = system.groups[group]
        score = torch.zeros(particles.size, dtype=torch.float64, device=particles.position.device)
        for interaction, name, dim in _couplings(system, group):
            weight = getattr(interaction, name).detach().abs().to(torch.float64)
            score += weight.sum(1 - dim)
        return score

    @torch.no_grad()
    def attempt(
        self,
        system: System,
        *,
        step: int,
        generator: torch.Generator,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> tuple[int, int]:
        temperature = self.temperature_at(step)
        attempted = accepted = 0
        for group in self.groups or list(system.groups):
            size = system.groups[group].size
            device = system.groups[group].position.device
            ranked = torch.argsort(self.scores(system, group), descending=True, stable=True)
            for slot in ranked[: self.top_k].tolist():
                changes = swap_energy_changes(system, group, slot)
                changes[slot] = 0.0  # staying put
                if temperature == 0:
                    partner = int(torch.argmin(changes))
                    keep = bool(changes[partner] < 0)  # a tie with staying put stays
                else:
                    draw = int(torch.randint(size - 1, (), generator=generator))
                    partner = draw + (draw >= slot)
                    keep = metropolis(float(changes[partner]), temperature, generator)
                attempted += 1
                if keep:
                    accepted += 1
                    order = _swap_order(size, slot, partner, device)
                    permute_neurons(system, group, order, optimizer=optimizer)
        return attempted, accepted


def move_observables(moves: Sequence[Move]) -> list[Observable]:
    """``moves/<name>/acceptance`` (accepted over attempted proposals since the run began)
    and ``moves/<name>/accepted`` (how many the last application kept) of each move;
    ``<name>_2``, … where a scenario has the same move twice."""
    found: list[Observable] = []
    seen: dict[str, int] = {}
    for move in moves:
        seen[move.name] = seen.get(move.name, 0) + 1
        label = move.name if seen[move.name] == 1 else f"{move.name}_{seen[move.name]}"
        found.append(
            FunctionObservable(
                f"moves/{label}/acceptance",
                lambda s, m=move: m.acceptance(),
                "",
                f"fraction of {move.name!r} proposals accepted since the run began",
            )
        )
        found.append(
            FunctionObservable(
                f"moves/{label}/accepted",
                lambda s, m=move: float(m.last_accepted),
                "",
                f"{move.name!r} proposals accepted at its last application",
            )
        )
    return found


BUILTIN_MOVES: tuple[type[Move], ...] = (NeuronSwap,)
