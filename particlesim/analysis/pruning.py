"""Whole-neuron pruning: score neurons by their weights, remove the weakest, get a smaller System.

Removing a neuron deletes its particle (position, charge, bias and any other
field), the row of every interaction that drives it and the column of every
interaction it drives, so the weight matrices really shrink (Shader,
"Positional Neuron Layers", §I). The pruned network computes exactly what the
original computes with those neurons' outputs held at zero
(:func:`silenced` gives that reference).

The score is Shader's (§V and the paper's reference code): the mean squared
weight over all of a neuron's connections, incoming and outgoing::

    s_j = (Σ_h W_jh² + Σ_k W_kj²) / (fan_in_j + fan_out_j)

with ``W`` the *effective* weights by default (what the forward pass uses; for
a positional layer ``b(d)·w``), or the free weights (``weights = "raw"``, what
the reference code scored). The reference code divides the same sum by twice
the size of the neuron's group instead of by its number of connections
(``normalize = "group"``): the ranking within a group is the same, the
ranking across groups is not. Neurons are ranked across all pruned groups
together (``scope = "global"``, as in the paper) or within each group.

Whole-neuron removal stays in the engine because it is a generic mechanism: it works
on any :class:`~particlesim.core.system.System` (any groups, fields, interactions and
activations), not only Shader's network. Unlike the rest of :mod:`particlesim.analysis`,
which reads trajectories, this module works on a live System and imports torch.
On the command line, ``particlesim prune RUN_DIR --proportion 0.3`` prunes a
finished run's network (:mod:`particlesim.cli.prune_command`).

Example:
    >>> import torch
    >>> from particlesim.core.group import ParticleGroup
    >>> from particlesim.core.interactions import DenseInteraction
    >>> from particlesim.core.system import System
    >>> g = [ParticleGroup(n, {"position": torch.zeros(k, 2)}) for n, k in
    ...      (("input", 3), ("hidden", 4), ("output", 2))]
    >>> net = System(g, [DenseInteraction(g[0], g[1]), DenseInteraction(g[1], g[2])])
    >>> smaller = prune_neurons(net, proportion=0.5)
    >>> smaller.groups["hidden"].size, tuple(smaller.interactions[0].weight.shape)
    (2, (2, 3))
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from particlesim.core.group import ParticleGroup
from particlesim.core.system import System
from particlesim.errors import AnalysisError

WeightKind = Literal["effective", "raw"]
Normalization = Literal["connections", "group"]
Scope = Literal["global", "group"]


def hidden_groups(system: System) -> list[str]:
    """Names of every group except the input (first) and output (last) ones."""
    return list(system.groups)[1:-1]


def _check_groups(system: System, groups: Sequence[str] | None) -> list[str]:
    names = list(system.groups)
    chosen = hidden_groups(system) if groups is None else list(groups)
    if not chosen:
        raise AnalysisError("nothing to prune: the system has no hidden group")
    for name in chosen:
        if name not in system.groups:
            raise AnalysisError(f"unknown group {name!r}; groups: {', '.join(names)}")
        if name in (names[0], names[-1]):
            role = "input" if name == names[0] else "output"
            raise AnalysisError(
                f"cannot prune the {role} group {name!r}: it would change the network's "
                f"{'inputs' if role == 'input' else 'outputs'}; prune hidden groups only"
            )
    return chosen


def _weight(interaction: nn.Module, system: System, kind: WeightKind) -> Tensor:
    source = system.groups[interaction.source]
    target = system.groups[interaction.target]
    if kind == "raw":
        weight = getattr(interaction, "weight", None)
        if isinstance(weight, Tensor):
            return weight
    return interaction.effective_weight(source, target)


@torch.no_grad()
def neuron_scores(
    system: System,
    group: str,
    *,
    weights: WeightKind = "effective",
    normalize: Normalization = "connections",
) -> Tensor:
    """Mean squared weight of each neuron of ``group`` over its incoming and outgoing connections.

    ``s_j = (Σ_in W_jh² + Σ_out W_kj²) / (fan_in + fan_out)``, float64, shape ``[N]``;
    with ``normalize = "group"`` the divisor is ``2·N`` (``N`` the group's size),
    as in the paper's reference code. ``weights = "raw"`` scores the free
    weights of interactions that have them (``modulated``, ``dense``) and the
    effective weights of the others. Biases do not count (the distance
    penalty does not act on them).
    """
    if weights not in ("effective", "raw"):
        raise AnalysisError(f"weights must be 'effective' or 'raw', got {weights!r}")
    if normalize not in ("connections", "group"):
        raise AnalysisError(f"normalize must be 'connections' or 'group', got {normalize!r}")
    if group not in system.groups:
        raise AnalysisError(f"unknown group {group!r}; groups: {', '.join(system.groups)}")
    size = system.groups[group].size
    total = torch.zeros(size, dtype=torch.float64, device=system.device)
    count = 0
    for interaction in system.interactions:
        if interaction.target == group:
            w = _weight(interaction, system, weights).double()
            total += w.pow(2).sum(1)
            count += w.shape[1]
        if interaction.source == group:
            w = _weight(interaction, system, weights).double()
            total += w.pow(2).sum(0)
            count += w.shape[0]
    if normalize == "group":
        return total / (2 * size)
    return total / max(count, 1)


def select_neurons(
    system: System,
    *,
    proportion: float | None = None,
    count: int | None = None,
    groups: Sequence[str] | None = None,
    weights: WeightKind = "effective",
    normalize: Normalization = "connections",
    scope: Scope = "global",
    allow_empty: bool = False,
) -> dict[str, Tensor]:
    """The neurons :func:`prune_neurons` would remove: ``{group: sorted indices}``.

    Give exactly one of ``proportion`` (in (0, 1): ``round(proportion · N)``
    neurons out of the ``N`` in ``groups``) or ``count``. With ``scope =
    "global"`` the lowest scores across all ``groups`` go (ties: earlier group,
    then lower index, first); with ``"group"`` each group loses its own share.
    Raises :class:`~particlesim.errors.AnalysisError` when the request would
    empty a group, unless ``allow_empty`` (such a selection can be
    :func:`silenced` but not removed).
    """
    chosen = _check_groups(system, groups)
    if (proportion is None) == (count is None):
        raise AnalysisError("give exactly one of proportion or count")
    if proportion is not None and not (
        isinstance(proportion, int | float) and 0.0 < proportion < 1.0
    ):
        raise AnalysisError(f"pruning proportion must be in (0, 1), got {proportion!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise AnalysisError(f"pruning count must be a non-negative integer, got {count!r}")
    if scope not in ("global", "group"):
        raise AnalysisError(f"scope must be 'global' or 'group', got {scope!r}")
    scores = {
        name: neuron_scores(system, name, weights=weights, normalize=normalize).cpu()
        for name in chosen
    }
    sizes = {name: int(score.numel()) for name, score in scores.items()}
    selected: dict[str, list[int]] = {name: [] for name in chosen}
    if scope == "global":
        total = sum(sizes.values())
        k = round(proportion * total) if proportion is not None else count
        if k > total:
            raise AnalysisError(f"cannot prune {k} neurons: the groups {chosen} hold {total}")
        pooled = [(float(s), g, j) for g, name in enumerate(chosen) for j, s in
                  enumerate(scores[name].tolist())]  # fmt: skip
        pooled.sort()
        for _, g, j in pooled[:k]:
            selected[chosen[g]].append(j)
    else:
        for name in chosen:
            k = round(proportion * sizes[name]) if proportion is not None else count
            if k > sizes[name]:
                raise AnalysisError(
                    f"cannot prune {k} neurons from group {name!r}: it has {sizes[name]}"
                )
            order = sorted(range(sizes[name]), key=lambda j, s=scores[name]: (float(s[j]), j))
            selected[name] = order[:k]
    what = f"proportion {proportion:g}" if proportion is not None else f"count {count}"
    for name in chosen:
        if len(selected[name]) == sizes[name] and not allow_empty:
            raise AnalysisError(
                f"pruning {what} would remove all {sizes[name]} neurons of group {name!r}; "
                "choose a smaller proportion"
            )
    return {
        name: torch.tensor(sorted(idx), dtype=torch.long) for name, idx in selected.items() if idx
    }


def _check_selection(
    system: System, selection: Mapping[str, Tensor], allow_empty: bool = False
) -> dict[str, Tensor]:
    if selection:
        _check_groups(system, list(selection))
    checked = {}
    for name, indices in selection.items():
        size = system.groups[name].size
        idx = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise AnalysisError(
                f"group {name!r} has {size} neurons; cannot remove index {idx.tolist()}"
            )
        idx = torch.unique(idx)
        if idx.numel() >= size and not allow_empty:
            raise AnalysisError(f"removing every neuron of group {name!r} would empty it")
        checked[name] = idx
    return checked


def _keep(size: int, removed: Tensor | None, device: torch.device) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    if removed is not None:
        keep[removed] = False
    return keep.nonzero().flatten().to(device)


def _slice_group(group: ParticleGroup, keep: Tensor) -> ParticleGroup:
    fields = {name: group.field(name).detach()[keep] for name in group.field_names()}
    frozen = [name for name in group.field_names() if group.is_frozen(name)]
    return ParticleGroup(group.name, fields, frozen=frozen, activation=group.activation)


def _slice_module(module: nn.Module, size: int, keep: Tensor, what: str) -> nn.Module:
    """A copy of a per-neuron module (an activation), its ``[size, …]`` tensors sliced."""
    new = copy.deepcopy(module)
    for name, tensor in [*new.named_parameters(recurse=False), *new.named_buffers(recurse=False)]:
        if tensor.ndim == 0 or tensor.shape[0] != size:
            raise AnalysisError(
                f"cannot prune {what}: its {name!r} has shape {list(tensor.shape)}, "
                f"not one value per neuron ({size})"
            )
        sliced = tensor.detach()[keep].clone()
        if isinstance(tensor, nn.Parameter):
            setattr(new, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            new.register_buffer(name, sliced)
    if list(new.children()):
        raise AnalysisError(f"cannot prune {what}: it holds sub-modules")
    if hasattr(new, "size"):
        new.size = int(keep.numel())
    return new


def _slice_interaction(interaction: nn.Module, keep_target: Tensor, keep_source: Tensor):
    new = copy.deepcopy(interaction)
    for name, tensor in list(new.named_parameters(recurse=False)) + list(
        new.named_buffers(recurse=False)
    ):
        if name != "weight":
            raise AnalysisError(
                f"cannot prune through interaction {interaction.source}->{interaction.target}: "
                f"it holds per-pair state {name!r} other than 'weight'"
            )
        sliced = tensor.detach()[keep_target][:, keep_source].clone()
        if isinstance(tensor, nn.Parameter):
            setattr(new, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            new.register_buffer(name, sliced)
    return new


def remove_neurons(system: System, selection: Mapping[str, Tensor | Sequence[int]]) -> System:
    """A new, smaller :class:`System` without the neurons ``{group: indices}`` of hidden groups.

    Each removed neuron loses its row in every interaction it drives into,
    its column in every interaction it drives and every per-particle field;
    potentials, kernels and activations are copied. The original system is
    left untouched. Interactions may hold a free ``weight [M, N]`` and no other
    per-pair tensor (kernel, modulated and dense interactions qualify).
    """
    removed = _check_selection(system, selection)
    device = system.device
    keep = {
        name: _keep(group.size, removed.get(name), device) for name, group in system.groups.items()
    }
    groups = [
        _slice_group(group, keep[name]) if name in removed else copy.deepcopy(group)
        for name, group in system.groups.items()
    ]
    interactions = [
        _slice_interaction(i, keep[i.target], keep[i.source])
        if (i.target in removed or i.source in removed)
        else copy.deepcopy(i)
        for i in system.interactions
    ]
    activations = {}
    for name, module in system.activations.items():
        if name in removed:
            size = system.groups[name].size
            module = _slice_module(module, size, keep[name], f"the activation of group {name!r}")
        else:
            module = copy.deepcopy(module)
        activations[name] = module
    pruned = System(
        groups,
        interactions,
        potentials=[copy.deepcopy(p) for p in system.potentials],
        activations=activations,
        input_scaling=system.input_scaling,
    )
    pruned.train(system.training)
    return pruned.to(device)


def prune_neurons(
    system: System,
    *,
    proportion: float | None = None,
    count: int | None = None,
    groups: Sequence[str] | None = None,
    weights: WeightKind = "effective",
    normalize: Normalization = "connections",
    scope: Scope = "global",
) -> System:
    """Remove the neurons with the smallest mean squared weight; return the new, smaller System.

    ``proportion`` (in (0, 1)) or ``count`` says how many, ``groups`` which
    groups (default: every hidden group), ``weights``, ``normalize`` and
    ``scope`` how they are ranked (see :func:`neuron_scores`, :func:`select_neurons`). Same as
    ``remove_neurons(system, select_neurons(system, ...))``.
    """
    selection = select_neurons(
        system,
        proportion=proportion,
        count=count,
        groups=groups,
        weights=weights,
        normalize=normalize,
        scope=scope,
    )
    return remove_neurons(system, selection)


@contextlib.contextmanager
def silenced(
    system: System,
    selection: Mapping[str, Tensor | Sequence[int]],
    *,
    allow_empty: bool = False,
) -> Iterator[System]:
    """Within the block, ``system``'s neurons ``{group: indices}`` output exactly 0.

    Implemented with forward hooks on the groups' activation modules (removed
    on exit), so it works for any activation, including ones with
    ``θ(0) ≠ 0``. What a pruned network must reproduce; with ``allow_empty``
    it also silences whole groups, which no removal can express.
    """
    checked = _check_selection(system, selection, allow_empty)
    handles = []
    try:
        for name, indices in checked.items():
            mask = torch.ones(system.groups[name].size, dtype=system.dtype, device=system.device)
            mask[indices.to(system.device)] = 0

            def hook(module, args, output, mask=mask):
                return output * mask

            handles.append(system.activations[name].register_forward_hook(hook))
        yield system
    finally:
        for handle in handles:
            handle.remove()


def pruned_fraction(before: System, after: System, groups: Sequence[str] | None = None) -> float:
    """Fraction of the neurons of ``groups`` (default hidden) that ``after`` no longer has."""
    chosen = hidden_groups(before) if groups is None else list(groups)
    total = sum(before.groups[g].size for g in chosen)
    left = sum(after.groups[g].size for g in chosen)
    return 1.0 - left / total if total else math.nan
