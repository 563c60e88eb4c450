"""BIMT, brain-inspired modular training (Liu, Gan & Tegmark 2023): layout and wiring cost.

Neurons sit at fixed places and every connection costs its length, so training with
``task + λ · cost`` pulls a network towards few, short connections — modules one can see.
This module gives the two pieces of the authors' code that the rest builds on (the data
sets are in :mod:`particlesim_bimt.datasets`, the measurements of modules and sparsity in
:mod:`particlesim_bimt.analysis`, the pictures in :mod:`particlesim_bimt.pictures`, the
results in :mod:`particlesim_bimt.experiments`, ``particlesim reproduce bimt``):

* model ``bimt_mlp``: a dense MLP whose neurons are laid out as in the code. ``layout =
  "line"``: the ``N`` neurons of each layer on a line at ``x = (i + ½)/N`` in ``[0, 1]``, the
  layers ``l0`` apart along the last axis (``BioMLP`` of the two-moon and symbolic
  notebooks). ``layout = "grid"``: the MNIST variant (``BioMLP2D``): a layer of
  a square number ``N`` of neurons on a ``√N × √N`` grid in the unit square, cell centres
  ``((i + ½)/√N, (j + ½)/√N)``, and the last layer on a ring of radius ¼ around ``(½, ½)``.
  Positions have ``D = 3`` (the plane, then the layer axis) and are frozen.
* potential ``connection_cost``: ``E = Σ_layers Σ_ij |W_ij| · (A · d_ij + l0)`` with ``d_ij``
  the in-plane L1 distance between the two neurons (the last coordinate, the layer axis,
  left out: the code adds the constant ``l0`` instead), plus ``l0 · Σ |b|`` over the biases
  with ``bias = true`` (the code's option); ``reduction = "mean"`` averages each layer's
  term over its weights (and each bias term over its biases) instead, as the MNIST
  notebook's ``get_cc`` does (``torch.mean`` per layer). The code's λ is this potential's
  ``coefficient``, and its λ schedules the engine's ``coefficient_schedule`` of any
  potential (two-moon: ``coefficient = 1e-3``, ``coefficient_schedule = [[5000, 1e-2]]``).

Sources (github KindXiaoming/BIMT): the notebooks, each of which defines its own
``BioLinear``/``BioMLP`` (``BioLinear2D``/``BioMLP2D`` in ``mnist_3.5.ipynb``): the
``in_fold``/``out_fold`` coordinates, ``get_cc`` = Σ |W| (A·dist + l0) with ``dist`` the
absolute coordinate difference (L1 in the plane for the 2-D variant), and the settings
(two moon: sizes [2, 20, 20, 2], SiLU, l0 = 0.2, A = 1; MNIST: [784, 100, 100, 10],
l0 = 0.5, A = 2; symbolic formulas: [4, 20, 20, 2], l0 = 0.1). The swap moves are the
engine's ``neuron_swap`` move (:mod:`particlesim.core.moves`); ``connection_cost`` gives it
each swap's energy change in one vectorised pass
(:meth:`ConnectionCost.swap_energy_changes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from particlesim import hookimpl
from particlesim.core.model import MLP
from particlesim.core.potentials import Potential
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.system import System

Layout = Literal["line", "grid"]


def line_positions(size: int, layer: int, l0: float) -> Tensor:
    """``[size, 3]``: ``((i + ½)/size, 0, layer · l0)``."""
    x = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    z = torch.full((size,), layer * l0, dtype=torch.float64)
    return torch.stack([x, torch.zeros_like(x), z], 1)


def grid_positions(size: int, layer: int, l0: float) -> Tensor:
    """``[size, 3]``: a ``√size × √size`` grid of cell centres in the unit square."""
    side = math.isqrt(size)
    if side * side != size:
        raise ValueError(f"a grid layer needs a square number of neurons, got {size}")
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    x, y = torch.meshgrid(centres, centres, indexing="ij")
    z = torch.full((size,), layer * l0, dtype=torch.float64)
    return torch.stack([x.reshape(-1), y.reshape(-1), z], 1)


def ring_positions(size: int, layer: int, l0: float, radius: float = 0.25) -> Tensor:
    """``[size, 3]``: evenly on a circle of ``radius`` around ``(½, ½)``."""
    angle = 2 * math.pi * torch.arange(size, dtype=torch.float64) / size
    z = torch.full((size,), layer * l0, dtype=torch.float64)
    return torch.stack([0.5 + radius * angle.cos(), 0.5 + radius * angle.sin(), z], 1)


class BIMTNetwork(MLP):
    """A dense MLP laid out as BIMT lays it out (see the module docstring).

    Args:
        sizes: neurons per layer, input first (``0`` at either end: from the data).
        activation: hidden activation (the code: SiLU).
        bias: a bias per hidden and output neuron.
        layout: ``"line"`` (each layer on ``[0, 1]``) or ``"grid"`` (square grids, the last
            layer on a ring of radius ¼).
        l0: the distance between consecutive layers along the layer axis.
    """

    name = "bimt_mlp"

    def __init__(
        self,
        *,
        sizes: list[int],
        activation: str = "swish",
        bias: bool = True,
        layout: Layout = "line",
        l0: float = 0.2,
    ) -> None:
        super().__init__(sizes=sizes, activation=activation, bias=bias, dim=3)
        if layout not in ("line", "grid"):
            raise OptionError("layout", f"must be 'line' or 'grid', got {layout!r}")
        if not (math.isfinite(l0) and l0 > 0):
            raise OptionError("l0", f"must be a finite number > 0, got {l0}")
        self.layout, self.l0 = layout, float(l0)

    def build(self, *, registries, input_size, num_classes, generator, dtype) -> System:
        system = super().build(
            registries=registries,
            input_size=input_size,
            num_classes=num_classes,
            generator=generator,
            dtype=dtype,
        )
        groups = list(system.groups.values())
        for layer, group in enumerate(groups):
            if self.layout == "line":
                where = line_positions(group.size, layer, self.l0)
            elif layer == len(groups) - 1:
                where = ring_positions(group.size, layer, self.l0)
            else:
                try:
                    where = grid_positions(group.size, layer, self.l0)
                except ValueError as exc:
                    raise OptionError(f"sizes[{layer}]", str(exc)) from None
            with torch.no_grad():
                group.position.copy_(where.to(group.position.dtype))
        return system


class ConnectionCost(Potential):
    """``E = Σ_layers Σ_ij |W_ij| (A·d_ij + l0)`` (+ ``l0 Σ|b|``): BIMT's wiring cost.

    Args:
        a: ``A``, the weight of length against the constant ``l0`` per connection.
        l0: the cost of any connection, whatever its length (the code: the layer distance).
        bias: add ``l0 · Σ |b|`` over every bias.
        groups: only interactions whose target is one of these groups (default all).
        reduction: ``"sum"`` over every weight (the line-layout notebooks), or ``"mean"``
            per interaction and per bias vector (the MNIST notebook's ``BioMLP2D.get_cc``).
        weights: include the weights' term; ``false`` leaves only the biases' ``l0 Σ|b|``
            (the symbolic notebook adds the biases to the cost only for the last quarter
            of its run: a second potential with ``weights = false`` and a schedule).

    A plain L1 penalty ``Σ|W|`` is this potential with ``a = 0`` and ``l0 = 1`` (the
    notebooks' "L1" baseline, ``weight_factor = 0``).
    """

    name = "connection_cost"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        a: float = 1.0,
        l0: float = 0.2,
        bias: bool = False,
        groups: Sequence[str] | None = None,
        reduction: Literal["sum", "mean"] = "sum",
        weights: bool = True,
    ) -> None:
        super().__init__(coefficient=coefficient)
        for key, value in (("a", a), ("l0", l0)):
            if not (math.isfinite(value) and value >= 0):
                raise OptionError(key, f"must be a finite number >= 0, got {value}")
        if reduction not in ("sum", "mean"):
            raise OptionError("reduction", f"must be 'sum' or 'mean', got {reduction!r}")
        self.a, self.l0, self.bias = float(a), float(l0), bool(bias)
        self.groups = None if groups is None else list(groups)
        self.reduction = reduction
        self.weights = bool(weights)

    def energy(self, system: System) -> Tensor:
        total = torch.zeros((), dtype=system.dtype, device=system.device)
        for interaction in system.interactions if self.weights else ():
            if self.groups is not None and interaction.target not in self.groups:
                continue
            source = system.groups[interaction.source]
            target = system.groups[interaction.target]
            weight = interaction.effective_weight(source, target)
            # in-plane L1 distances [M, N] (the last coordinate is the layer axis)
            distance = torch.cdist(target.position[:, :-1], source.position[:, :-1], p=1.0)
            term = weight.abs() * (self.a * distance + self.l0)
            total = total + (term.mean() if self.reduction == "mean" else term.sum())
        if self.bias:
            for name, group in system.groups.items():
                if (self.groups is None or name in self.groups) and group.has("bias"):
                    bias = group.bias.abs()
                    total = total + self.l0 * (
                        bias.mean() if self.reduction == "mean" else bias.sum()
                    )
        return total

    @torch.no_grad()
    def mean_length_cost(self, system: System) -> float:
        """The mean of ``A·d + l0`` over the weights this potential covers (for ``reduction
        = "mean"`` the mean of each interaction's mean): the price of a unit of ``|W|`` on
        average over the layout.

        A plain L1 penalty with this price per unit weight (``a = 0``, ``l0`` = this value)
        costs a network with evenly spread weights what the wiring cost does; BIMT's results
        compare the two at that strength. NaN when the potential covers no weight.
        """
        means, sizes = [], []
        for interaction in system.interactions if self.weights else ():
            if self.groups is not None and interaction.target not in self.groups:
                continue
            source = system.groups[interaction.source]
            target = system.groups[interaction.target]
            distance = torch.cdist(
                target.position[:, :-1].to(torch.float64),
                source.position[:, :-1].to(torch.float64),
                p=1.0,
            )
            means.append(float((self.a * distance + self.l0).mean()))
            sizes.append(1 if self.reduction == "mean" else distance.numel())
        if not means:
            return float("nan")
        return sum(m * n for m, n in zip(means, sizes, strict=True)) / sum(sizes)

    @torch.no_grad()
    def swap_energy_changes(self, system: System, group: str, slot: int) -> Tensor | None:
        """``ΔE[k]`` of swapping the neurons in slots ``slot`` and ``k`` of ``group`` (their
        places stay), for every ``k`` at once: the engine's neuron swap move asks for it.

        Only the two neurons' connections change length: with ``|W|`` the group's rows (or
        columns) and ``d`` the in-plane distances from its slots to the other layer,
        ``ΔE_k = A·(|W_j|·d_k + |W_k|·d_j − |W_j|·d_j − |W_k|·d_k)`` summed over the
        interactions it touches (``l0`` and the bias term move with the neuron: no change).
        """
        size = system.groups[group].size
        total = torch.zeros(size, dtype=torch.float64, device=system.device)
        for interaction in system.interactions if self.weights else ():
            if self.groups is not None and interaction.target not in self.groups:
                continue
            if group not in (interaction.source, interaction.target):
                continue
            if interaction.source == interaction.target:
                return None  # a group coupled to itself: let the engine measure each swap
            source = system.groups[interaction.source]
            target = system.groups[interaction.target]
            weight = interaction.effective_weight(source, target).abs().to(torch.float64)
            distance = torch.cdist(
                target.position[:, :-1].to(torch.float64),
                source.position[:, :-1].to(torch.float64),
                p=1.0,
            )
            if interaction.source == group:  # the group's neurons are the columns
                weight, distance = weight.T, distance.T
            # rows now belong to the group's slots: [size, other]
            a = distance @ weight[slot]  # neuron `slot` at each place
            b = weight @ distance[slot]  # each neuron at place `slot`
            own = (weight * distance).sum(1)  # each neuron at its own place
            scale = 1.0 / weight.numel() if self.reduction == "mean" else 1.0
            total += scale * self.a * (a + b - own[slot] - own)
        return total


@hookimpl
def particlesim_register_models():
    return [BIMTNetwork]


@hookimpl
def particlesim_register_potentials():
    return [ConnectionCost]


@hookimpl
def particlesim_register_datasets():
    from particlesim_bimt.datasets import DATASETS

    return list(DATASETS)


@hookimpl
def particlesim_register_reproductions():
    from particlesim_bimt.experiments import BIMTReproduction

    return [BIMTReproduction]
