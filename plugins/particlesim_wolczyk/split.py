"""Splitting a multi-task network into one sub-network per task, and scoring the split.

A network with several task heads (the outputs of a ``multi_head_cross_entropy``
loss, head ``i`` owning ``heads[i]`` consecutive outputs) is split greedily,
backwards from the output (Wołczyk et al., "Biologically-Inspired Spatial
Neural Networks", §3):

1. each output neuron belongs to the task of its head;
2. going backwards through the split layers, each neuron ``n`` goes to the task
   it drives most strongly,

   .. math:: g(n) = \\arg\\max_{i} \\sum_{n → m,\\ g(m) = i} |a_{nm}|,

   summing the absolute effective weights of its connections to already
   assigned neurons (ties, such as a neuron with no weight left, go to the
   lowest task index).

Only the chosen layers are split (the paper splits the layers its spatial
costs act on); neurons of earlier layers stay *shared*, assignment ``-1``, and
belong to every sub-network. Sub-network ``i`` is the network with the split
neurons of every other task disabled; it is scored on task ``i``'s examples by
head ``i``. The report gives, per task, the full network's and the
sub-network's accuracy, and the drop between them (per task, and their means
over tasks: each measured on its own, the drop never derived from other rows).

How a neuron is disabled (``disable`` of :func:`evaluate_split`) is a choice the
paper does not state:

* ``"output"`` (default): the neuron outputs exactly 0, as if it were removed
  from the network;
* ``"incoming"``: its incoming weights are zeroed and its bias kept, as the
  authors' published code does (``weight[mask != task, :] *= 0`` in
  ``options/split/backward/greedy.py``). A disabled sigmoid unit then still
  outputs ``sigmoid(b)``, a constant that its outgoing weights carry on to the
  next layer, so the sub-network keeps part of what the other task's neurons
  contributed on average.

The split is Wołczyk et al.'s analysis, so it lives in their plugin; it works on a
live :class:`~particlesim.core.system.System` (any network whose output group holds
the task heads side by side) and reuses the engine's generic whole-neuron silencing
(:func:`particlesim.analysis.pruning.silenced`).

Example:
    >>> import torch
    >>> from particlesim.core.group import ParticleGroup
    >>> from particlesim.core.interactions import DenseInteraction
    >>> from particlesim.core.system import System
    >>> g = [ParticleGroup(n, {"position": torch.zeros(k, 2)}) for n, k in
    ...      (("input", 2), ("hidden", 2), ("output", 4))]
    >>> net = System(g, [DenseInteraction(g[0], g[1]), DenseInteraction(g[1], g[2])])
    >>> with torch.no_grad():  # hidden 0 drives outputs 2, 3 (task 1); hidden 1 drives 0, 1
    ...     _ = net.interactions[1].weight.copy_(torch.tensor([[0., 1], [0, 1], [1, 0], [1, 0]]))
    >>> greedy_split(net, [2, 2], layers=["hidden"]).assignment["hidden"].tolist()
    [1, 0]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from particlesim.core.system import System
from particlesim.errors import AnalysisError

#: Assignment of a neuron that no sub-network owns alone (layers before the split).
SHARED = -1
TASK_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
#: One marker per split layer in :func:`plot_split`.
LAYER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def task_heads(loss: Any) -> list[int]:
    """The head sizes of a multi-head loss; a clear error for a network without task heads."""
    heads = getattr(loss, "heads", None)
    name = getattr(loss, "name", "") or type(loss).__name__
    if not isinstance(heads, Sequence) or len(heads) < 2:
        raise AnalysisError(
            "a greedy split needs a network with task heads (a multi_head_cross_entropy loss "
            f"with at least two heads); this network is scored by {name!r}"
        )
    return [int(h) for h in heads]


@dataclass
class Split:
    """Which task each neuron of the split layers serves.

    Attributes:
        heads: outputs per task head.
        layers: the split groups in feed-forward order (the output group last).
        assignment: ``{group: [N] int64}`` task index per neuron of each split group.
    """

    heads: list[int]
    layers: list[str]
    assignment: dict[str, Tensor]

    @property
    def tasks(self) -> int:
        return len(self.heads)

    def disabled(self, task: int) -> dict[str, Tensor]:
        """``{group: indices}`` of the hidden split neurons that sub-network ``task`` turns off."""
        return {
            name: (self.assignment[name] != task).nonzero().flatten() for name in self.layers[:-1]
        }

    def counts(self) -> dict[str, list[int]]:
        """Neurons per task in each split group."""
        return {
            name: [int((values == t).sum()) for t in range(self.tasks)]
            for name, values in self.assignment.items()
        }


def _check_heads(system: System, heads: Sequence[int]) -> list[int]:
    heads = [int(h) for h in heads]
    if len(heads) < 2:
        raise AnalysisError(
            f"a greedy split needs a network with at least two task heads, got heads {heads}"
        )
    if any(h < 1 for h in heads):
        raise AnalysisError(f"every head needs at least one output, got heads {heads}")
    outputs = system.output_group.size
    if sum(heads) != outputs:
        raise AnalysisError(
            f"heads {heads} need {sum(heads)} outputs but group {system.output_group.name!r} "
            f"has {outputs}"
        )
    return heads


def _check_layers(system: System, layers: Sequence[str] | None) -> list[str]:
    names = list(system.groups)
    output = names[-1]
    if layers is None:
        return names[1:]
    for name in layers:
        if name not in system.groups:
            raise AnalysisError(f"unknown group {name!r}; groups: {', '.join(names)}")
        if name == names[0]:
            raise AnalysisError(f"cannot split the input group {name!r}: it has no neurons to own")
    chosen = sorted(set(layers) | {output}, key=names.index)
    return chosen


@torch.no_grad()
def greedy_split(
    system: System, heads: Sequence[int], layers: Sequence[str] | None = None
) -> Split:
    """Assign every neuron of ``layers`` to a task, backwards from the heads (module docstring).

    Args:
        system: a trained network whose output group holds the heads side by side.
        heads: outputs per task (``task_heads(loss)`` reads them from the loss).
        layers: the groups to split (the output group is always split); default every
            group but the input. Earlier groups stay shared.

    Returns:
        the :class:`Split`, with an assignment for every neuron of every split group.

    Raises:
        AnalysisError: fewer than two heads, heads that do not add up to the output
            size, an unknown group, or a split group with no connection to a later one.
    """
    heads = _check_heads(system, heads)
    chosen = _check_layers(system, layers)
    output = chosen[-1]
    device = system.device
    assignment = {
        output: torch.repeat_interleave(torch.arange(len(heads)), torch.tensor(heads)).to(device)
    }
    for name in reversed(chosen[:-1]):
        group = system.groups[name]
        strength = torch.zeros(group.size, len(heads), dtype=torch.float64, device=device)
        linked = False
        for interaction in system.interactions:
            if interaction.source != name or interaction.target not in assignment:
                continue
            linked = True
            target = system.groups[interaction.target]
            weight = interaction.effective_weight(group, target).detach().abs().double()  # [M, N]
            one_hot = torch.nn.functional.one_hot(
                assignment[interaction.target], len(heads)
            ).double()  # [M, H]
            strength += weight.T @ one_hot
        if not linked:
            raise AnalysisError(
                f"group {name!r} drives none of the later split groups "
                f"({', '.join(assignment)}); split a contiguous run of layers up to the output"
            )
        assignment[name] = strength.argmax(dim=1)
    ordered = {name: assignment[name].cpu() for name in chosen}
    return Split(heads=heads, layers=chosen, assignment=ordered)


@dataclass
class SplitReport:
    """Accuracy of the full network and of each task's sub-network on that task.

    ``full[i]`` and ``split[i]`` are the accuracies of head ``i`` on the examples
    labelled for task ``i``; ``drop[i] = full[i] - split[i]``. The ``mean_*``
    properties average over tasks (the paper's single numbers).
    """

    full: list[float]
    split: list[float]
    examples: list[int]
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def drop(self) -> list[float]:
        return [f - s for f, s in zip(self.full, self.split, strict=True)]

    @property
    def mean_full(self) -> float:
        return sum(self.full) / len(self.full)

    @property
    def mean_split(self) -> float:
        return sum(self.split) / len(self.split)

    @property
    def mean_drop(self) -> float:
        return self.mean_full - self.mean_split


@torch.no_grad()
def _head_accuracy(
    system: System, x: Tensor, labels: Tensor, columns: slice, batch_size: int
) -> float:
    if x.shape[0] == 0:
        return math.nan
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(system.device, system.dtype)
        yb = labels[start : start + batch_size].to(system.device)
        logits = system(xb)[:, columns]
        correct += int((logits.argmax(-1) == yb).sum())
    return correct / x.shape[0]


#: How :func:`evaluate_split` disables the other tasks' neurons (module docstring).
DISABLE_MODES: tuple[str, ...] = ("output", "incoming")


@contextlib.contextmanager
def inputs_cut(system: System, selection: dict[str, Tensor]) -> Iterator[System]:
    """Within the block, the neurons ``{group: indices}`` receive nothing from other groups.

    Every interaction into a selected group has its contribution to those neurons'
    pre-activation zeroed (a forward hook on the interaction, removed on exit), which is
    what zeroing their incoming weights computes, for any kind of interaction; their bias
    stays, so each outputs ``activation(bias)``. The authors' split disables neurons so.
    """
    handles = []
    try:
        for name, indices in selection.items():
            group = system.groups[name]
            mask = torch.ones(group.size, dtype=system.dtype, device=system.device)
            mask[indices.to(system.device)] = 0
            for interaction in system.interactions:
                if interaction.target != name:
                    continue

                def hook(module: Any, args: Any, output: Tensor, mask: Tensor = mask) -> Tensor:
                    return output * mask

                handles.append(interaction.register_forward_hook(hook))
        yield system
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def evaluate_split(
    system: System,
    split: Split,
    x: Tensor,
    targets: Tensor,
    *,
    batch_size: int = 2000,
    disable: str = "output",
) -> SplitReport:
    """Score the full network and every sub-network of ``split`` on its own task.

    Args:
        system: the network that was split.
        split: from :func:`greedy_split`.
        x: inputs ``[n, F]``.
        targets: class indices ``[n, H]``, one column per task; ``-1`` marks an
            example without a label for that task (a sequential multi-task set).
        batch_size: rows per forward pass.
        disable: ``"output"`` (disabled neurons output 0) or ``"incoming"`` (their
            incoming weights are zeroed and their bias kept, as the authors' code does);
            see the module docstring.
    """
    from particlesim.analysis.pruning import silenced

    if disable not in DISABLE_MODES:
        raise AnalysisError(
            f"disable must be one of {', '.join(map(repr, DISABLE_MODES))}, got {disable!r}"
        )
    targets = targets.reshape(targets.shape[0], -1)
    if targets.shape[1] != split.tasks:
        raise AnalysisError(
            f"the split has {split.tasks} tasks but the targets have {targets.shape[1]} columns"
        )
    if x.shape[0] != targets.shape[0]:
        raise AnalysisError(f"{x.shape[0]} inputs but {targets.shape[0]} targets")
    was_training = system.training
    system.eval()
    full, parts, examples = [], [], []
    offsets = [0]
    for h in split.heads:
        offsets.append(offsets[-1] + h)
    try:
        for task in range(split.tasks):
            rows = (targets[:, task] >= 0).nonzero().flatten()
            xt, yt = x[rows], targets[rows, task]
            columns = slice(offsets[task], offsets[task + 1])
            examples.append(int(rows.numel()))
            full.append(_head_accuracy(system, xt, yt, columns, batch_size))
            off = {k: v for k, v in split.disabled(task).items() if v.numel()}
            cut = silenced(system, off, allow_empty=True) if disable == "output" else None
            with cut or inputs_cut(system, off):
                parts.append(_head_accuracy(system, xt, yt, columns, batch_size))
    finally:
        system.train(was_training)
    return SplitReport(full=full, split=parts, examples=examples, counts=split.counts())


def input_strength(system: System, name: str) -> Tensor:
    """``Σ_j |a_nj|`` over every connection into each neuron of group ``name`` → ``[N]``."""
    group = system.groups[name]
    total = torch.zeros(group.size, dtype=torch.float64)
    with torch.no_grad():
        for interaction in system.interactions:
            if interaction.target == name:
                source = system.groups[interaction.source]
                weight = interaction.effective_weight(source, group).detach().abs().double()
                total += weight.sum(1).cpu()
    return total


def plot_split(
    system: System,
    split: Split,
    *,
    task_names: Sequence[str] | None = None,
    min_input_weight: float = 0.0,
    title: str = "",
    fig: Any = None,
) -> Any:
    """Neurons of the split layers at their positions, coloured by task (Wołczyk Figs. 1–2).

    One panel per split group (left to right, output last), then one top-down
    panel with every split group overlaid (a marker per group). Positions beyond
    two dimensions are drawn by their first two coordinates.

    Args:
        task_names: legend labels (default ``task 0``, ``task 1``, …).
        min_input_weight: draw only neurons whose summed absolute input weight
            exceeds this (the paper's figures use 0.1), to hide neurons that
            carry nothing.
        title: the figure's title.
        fig: draw into this Figure (default: a new one).
    """
    from particlesim.analysis.plots import new_figure

    names = list(task_names or [f"task {t}" for t in range(split.tasks)])
    if len(names) != split.tasks:
        raise AnalysisError(f"{len(names)} task names for a split into {split.tasks} tasks")
    panels = len(split.layers) + 1
    if fig is None:
        fig = new_figure(figsize=(3.3 * panels, 3.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    overlay = axes[-1]
    for index, (ax, layer) in enumerate(zip(axes[:-1], split.layers, strict=True)):
        position = system.groups[layer].position.detach().double().cpu()
        if position.shape[1] == 1:
            position = torch.cat([position, torch.zeros_like(position)], 1)
        keep = input_strength(system, layer) > min_input_weight
        tasks = split.assignment[layer]
        marker = LAYER_MARKERS[index % len(LAYER_MARKERS)]
        for task in range(split.tasks):
            chosen = keep & (tasks == task)
            points = position[chosen].numpy()
            color = TASK_COLORS[task % len(TASK_COLORS)]
            ax.scatter(
                points[:, 0],
                points[:, 1],
                s=12,
                color=color,
                marker=marker,
                label=f"{names[task]} ({int(chosen.sum())})",
            )
            overlay.scatter(
                points[:, 0],
                points[:, 1],
                s=10,
                color=color,
                marker=marker,
                alpha=0.7,
                label=f"{layer}: {names[task]}",
            )
        ax.set_title(f"{layer} ({int(keep.sum())} of {len(tasks)} shown)", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, loc="best")
    overlay.set_title("top-down view, all split layers", fontsize=9)
    overlay.set_aspect("equal", adjustable="datalim")
    overlay.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def split_summary(report: SplitReport, task_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A flat, JSON-friendly dict of a report (per-task and mean accuracies, neuron counts)."""
    names = list(task_names or [f"task{t}" for t in range(len(report.full))])
    out: dict[str, Any] = {
        "full_accuracy": report.mean_full,
        "split_accuracy": report.mean_split,
        "accuracy_drop": report.mean_drop,
    }
    for name, full, part in zip(names, report.full, report.split, strict=True):
        out[f"full_accuracy_{name}"] = full
        out[f"split_accuracy_{name}"] = part
    for layer, counts in report.counts.items():
        out[f"neurons_{layer}"] = "/".join(map(str, counts))
    return out
