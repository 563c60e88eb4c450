"""What BIMT's results are measured on: a trained network as arrays, its sparsity and modules.

The paper's claims are about pictures (Liu, Gan & Tegmark 2023, figures 3, 4 and 8): after
training with the wiring cost and the swaps, few connections stay and they form modules
one can see. These functions put numbers on the pictures, for BIMT and for a plain L1 run
alike:

* :class:`Network`: a chain of layers as numpy arrays (places, who sits in each slot,
  weights), taken from a trained :class:`~particlesim.core.System` by :func:`network_of`,
  so that measurements and pictures need no torch and tests can build one by hand; saved
  and read back as ``.npz`` (:meth:`Network.save`, :meth:`Network.load`).
* :func:`kept`: the connections that survive thresholding. A weight is kept when
  ``|W| ≥ threshold · max |W|`` of its layer (and is not zero): relative to the layer, as
  the authors' pictures scale each layer's line widths by its largest weight
  (``BioMLP.plot`` in the notebooks). :func:`connection_count` counts them,
  :func:`hidden_used` the hidden neurons they keep in use.
* :func:`modularity`: Newman's ``Q`` of the best Louvain partition of the kept weight graph
  (the engine's :func:`particlesim.analysis.graph.best_partition_modularity`; the graph's
  nodes are ``(group, slot)`` as in :func:`particlesim.analysis.graph.weight_graph`).
* :func:`module_inputs`, :func:`splits` and :func:`split_threshold`: the independence
  task's claim. Each output's connected component of the kept graph holds a set of input
  features; the network *splits* into the task's modules when every output's component
  holds exactly the inputs its formula depends on (``(x1 + x3)³`` only x1 and x3,
  ``x2² + sin(π x4)`` only x2 and x4). Swaps move input and output neurons, so features and
  outputs are named by the ``id`` field (their original index), not by their slots.
  :func:`split_threshold` is the strength, relative to its layer's largest weight, of the
  strongest connection that still joins the modules: the network splits at any threshold
  just above it (0: the modules are disconnected as trained; NaN: no threshold splits them).
* :func:`mean_length`: the ``|W|``-weighted mean in-plane length of the kept connections,
  the locality the wiring cost rewards and plain L1 does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from particlesim.errors import ParticlesimError

if TYPE_CHECKING:
    import networkx as nx

    from particlesim.core.system import System

__all__ = [
    "Network",
    "connection_count",
    "hidden_used",
    "kept",
    "mean_length",
    "modularity",
    "module_inputs",
    "network_of",
    "split_threshold",
    "splits",
    "weight_graph",
]


@dataclass(frozen=True)
class Network:
    """A feed-forward chain of layers as arrays; layer ``l`` drives layer ``l + 1``.

    Attributes:
        names: the groups, input first.
        positions: per layer ``[N_l, D]`` places (BIMT: ``D = 3``, the last axis the layer
            axis).
        ids: per layer ``[N_l]`` the original index of the neuron in each slot (the
            ``id`` field the swaps keep; ``arange`` without swaps).
        weights: per connection ``[N_{l+1}, N_l]`` effective weights, target × source.
    """

    names: tuple[str, ...]
    positions: tuple[np.ndarray, ...]
    ids: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        layers = len(self.names)
        if len(self.positions) != layers or len(self.ids) != layers:
            raise ParticlesimError("Network: one position array and one id array per layer")
        if len(self.weights) != layers - 1:
            raise ParticlesimError(f"Network: {layers} layers need {layers - 1} weight arrays")
        for layer, weight in enumerate(self.weights):
            expected = (len(self.ids[layer + 1]), len(self.ids[layer]))
            if weight.shape != expected:
                raise ParticlesimError(
                    f"Network: weights[{layer}] ({self.names[layer]} -> "
                    f"{self.names[layer + 1]}) has shape {weight.shape}, expected {expected}"
                )

    @classmethod
    def from_weights(
        cls, weights: Sequence[Any], *, ids: Sequence[Any] | None = None, l0: float = 0.2
    ) -> Network:
        """A network on BIMT's line layout from its weight matrices (tests, examples).

        Layer ``l``'s ``N`` neurons sit at ``((i + ½)/N, 0, l·l0)``; ``ids`` default to
        ``arange``. Layers are named ``input``, ``hidden1``, …, ``output``.
        """
        arrays = [np.asarray(w, dtype=np.float64) for w in weights]
        sizes = [arrays[0].shape[1], *(w.shape[0] for w in arrays)]
        names = ["input", *(f"hidden{i}" for i in range(1, len(sizes) - 1)), "output"]
        positions = []
        for layer, size in enumerate(sizes):
            x = (np.arange(size) + 0.5) / size
            positions.append(np.stack([x, np.zeros(size), np.full(size, layer * l0)], 1))
        found = [np.arange(n) for n in sizes] if ids is None else [np.asarray(i) for i in ids]
        return cls(tuple(names), tuple(positions), tuple(found), tuple(arrays))

    def save(self, path: str | Path) -> Path:
        """Write the arrays to a compressed ``.npz`` file (no pickled objects)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"names": np.array(self.names, dtype=str)}
        for layer, (where, ids) in enumerate(zip(self.positions, self.ids, strict=True)):
            arrays[f"position_{layer}"], arrays[f"id_{layer}"] = where, ids
        for layer, weight in enumerate(self.weights):
            arrays[f"weight_{layer}"] = weight
        with path.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Network:
        """Read a file :meth:`save` wrote (``allow_pickle=False``)."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                names = tuple(str(name) for name in data["names"])
                layers = range(len(names))
                return cls(
                    names,
                    tuple(data[f"position_{layer}"] for layer in layers),
                    tuple(data[f"id_{layer}"] for layer in layers),
                    tuple(data[f"weight_{layer}"] for layer in layers[:-1]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ParticlesimError(f"{path}: not a network file ({exc})") from None


def network_of(system: System) -> Network:
    """The :class:`Network` of a system whose interactions chain its groups in order.

    Raises :class:`ParticlesimError` when an interaction does not join a group to the next.
    """
    import torch

    names = list(system.groups)
    weights = []
    with torch.no_grad():
        for i, interaction in enumerate(system.interactions):
            if i + 1 >= len(names) or (interaction.source, interaction.target) != (
                names[i],
                names[i + 1],
            ):
                raise ParticlesimError(
                    f"interactions[{i}]: {interaction.source!r} -> {interaction.target!r} does "
                    "not join a group to the next one; BIMT's measurements need a chain of layers"
                )
            source, target = system.groups[interaction.source], system.groups[interaction.target]
            weight = interaction.effective_weight(source, target)
            weights.append(weight.detach().to(torch.float64).cpu().numpy())
        positions, ids = [], []
        for name in names:
            group = system.groups[name]
            positions.append(group.position.detach().to(torch.float64).cpu().numpy())
            slot_ids = group.id if group.has("id") else torch.arange(group.size)
            ids.append(slot_ids.detach().cpu().numpy().astype(np.int64))
    if len(weights) != len(names) - 1:
        raise ParticlesimError(
            f"{len(names)} groups but {len(weights)} interactions; BIMT's measurements need a "
            "chain of layers"
        )
    return Network(tuple(names), tuple(positions), tuple(ids), tuple(weights))


def kept(network: Network, threshold: float) -> list[np.ndarray]:
    """Per connection, ``[N_{l+1}, N_l]`` booleans: ``|W| ≥ threshold · max|W|`` and ``W ≠ 0``."""
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ParticlesimError(f"threshold must be a finite number >= 0, got {threshold}")
    return [(ratio > 0) & (ratio >= threshold) for ratio in _relative(network)]


def _relative(network: Network) -> list[np.ndarray]:
    """``|W| / max|W|`` per connection (zeros where a layer has no weight)."""
    ratios = []
    for weight in network.weights:
        magnitude = np.abs(weight)
        largest = magnitude.max() if magnitude.size else 0.0
        ratios.append(magnitude / largest if largest > 0 else np.zeros_like(magnitude))
    return ratios


def connection_count(network: Network, threshold: float) -> int:
    """How many connections survive thresholding (see :func:`kept`)."""
    return int(sum(mask.sum() for mask in kept(network, threshold)))


def hidden_used(network: Network, threshold: float) -> int:
    """Hidden neurons with at least one kept connection in and one out (the neurons a
    picture shows in use; the others are cut off from an input or from the outputs)."""
    masks = kept(network, threshold)
    return int(
        sum(
            (masks[layer - 1].any(axis=1) & masks[layer].any(axis=0)).sum()
            for layer in range(1, len(network.names) - 1)
        )
    )


def mean_length(network: Network, threshold: float = 0.0) -> float:
    """``Σ|W|·d / Σ|W|`` over the kept connections, ``d`` the in-plane L1 distance.

    The in-plane coordinates are all but the last (the layer axis), as in the wiring cost.
    NaN when nothing is kept.
    """
    total = length = 0.0
    for layer, mask in enumerate(kept(network, threshold)):
        target, source = network.positions[layer + 1][:, :-1], network.positions[layer][:, :-1]
        distance = np.abs(target[:, None, :] - source[None, :, :]).sum(-1)
        magnitude = np.abs(network.weights[layer]) * mask
        total += float(magnitude.sum())
        length += float((magnitude * distance).sum())
    return length / total if total > 0 else float("nan")


def weight_graph(network: Network, threshold: float = 0.0) -> nx.Graph:
    """The kept connections as an undirected graph: nodes ``(group, slot)``, edges ``|W|``."""
    import networkx as nx

    graph = nx.Graph()
    for name, ids in zip(network.names, network.ids, strict=True):
        graph.add_nodes_from(((name, i), {"group": name, "index": i}) for i in range(len(ids)))
    for layer, mask in enumerate(kept(network, threshold)):
        source, target = network.names[layer], network.names[layer + 1]
        weight = network.weights[layer]
        for h, j in zip(*np.nonzero(mask), strict=True):
            graph.add_edge((target, int(h)), (source, int(j)), weight=abs(float(weight[h, j])))
    return graph


def modularity(network: Network, threshold: float = 0.0, *, seed: int = 0) -> float:
    """Newman's ``Q`` of the best Louvain partition of :func:`weight_graph` (NaN: no edges)."""
    from particlesim.analysis.graph import best_partition_modularity

    q, _ = best_partition_modularity(weight_graph(network, threshold), seed=seed)
    return q


def module_inputs(network: Network, threshold: float) -> dict[int, frozenset[int]]:
    """For each output (original index), the input features (original indices) in its
    connected component of the kept graph."""
    parent = list(range(sum(len(ids) for ids in network.ids)))
    offsets = np.cumsum([0, *(len(ids) for ids in network.ids)])

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for layer, mask in enumerate(kept(network, threshold)):
        for h, j in zip(*np.nonzero(mask), strict=True):
            a, b = find(int(offsets[layer + 1] + h)), find(int(offsets[layer] + j))
            if a != b:
                parent[a] = b
    inputs: dict[int, set[int]] = {}
    for slot, feature in enumerate(network.ids[0]):
        inputs.setdefault(find(int(offsets[0] + slot)), set()).add(int(feature))
    last = len(network.ids) - 1
    return {
        int(output): frozenset(inputs.get(find(int(offsets[last] + slot)), ()))
        for slot, output in enumerate(network.ids[last])
    }


def splits(network: Network, modules: Mapping[int, Sequence[int]], threshold: float) -> bool:
    """Whether every output's component holds exactly its own inputs (``modules``: output →
    the inputs it depends on, original indices)."""
    found = module_inputs(network, threshold)
    return all(found.get(output) == frozenset(wanted) for output, wanted in modules.items())


def split_threshold(network: Network, modules: Mapping[int, Sequence[int]]) -> float:
    """The strongest connection that must be cut for the network to :func:`split <splits>`,
    relative to its layer's largest weight: 0 when the modules are apart as trained, NaN
    when no threshold splits the network.

    Components change only where the threshold crosses a weight's relative size, so the
    thresholds tried are 0 and every ``|W| / max|W|``, in increasing order; at the first
    that splits, the answer is the one before it (the network splits at any threshold
    above that one, up to the one that split).
    """
    candidates = {0.0}
    for ratio in _relative(network):
        candidates.update(ratio[ratio > 0].tolist())
    previous = 0.0
    for threshold in sorted(candidates):
        if splits(network, modules, threshold):
            return previous
        previous = float(threshold)
    return float("nan")
