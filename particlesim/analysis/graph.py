"""The effective weight graph of a network at one frame, and its community structure.

Nodes are particles ``(group, index)`` of every group that a recorded
interaction touches; an undirected edge joins target particle h and source
particle j with weight ``|W_hj|``. Zero weights are never edges; ``threshold``,
``top_k`` and ``top_fraction`` keep the graph sparse. The algorithms are networkx's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
import numpy as np
import xarray as xr

from particlesim.analysis.tree import AnalysisError, endpoints, interactions

Node = tuple[str, int]
Partition = list[set[Node]]


def weight_graph(
    tree: xr.DataTree,
    frame: int = -1,
    *,
    groups: Iterable[str] | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    top_fraction: float | None = None,
) -> nx.Graph:
    """Graph of effective weights ``|W_hj|`` at one recorded frame.

    Args:
        tree: the trajectory.
        frame: index into each interaction's ``time`` axis (connectivity is
            recorded for all interactions at the same steps); -1 is the last.
        groups: only interactions touching these groups (default: all).
        threshold: drop edges with ``|W_hj| < threshold``.
        top_k: keep, per target particle, only its ``top_k`` strongest
            incoming edges of each interaction.
        top_fraction: keep only the strongest ``top_fraction`` of all non-zero weights,
            over every chosen interaction together (seRNN's "top 10 %": ``0.1``; ties at
            the cut stay).

    Returns:
        An undirected ``networkx.Graph``; node ``(group, i)`` has attrs
        ``group`` and ``index``; edge attr ``weight = |W_hj|`` (summed if two
        interactions join the same pair). Graph attrs ``step`` and ``time``
        of the frame (from the first interaction).
    """
    found = interactions(tree, groups)
    if not found:
        raise AnalysisError(
            "the trajectory has no connectivity to build a weight graph from; record it "
            "with the trajectory writer's connectivity option"
        )
    if top_k is not None and top_k < 1:
        raise AnalysisError(f"top_k must be a positive integer, got {top_k}")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise AnalysisError(f"top_fraction must be in (0, 1], got {top_fraction}")
    graph = nx.Graph()
    frames = {name: _frame_weights(ds, name, frame) for name, ds in found.items()}
    if top_fraction is not None:
        every = np.concatenate([w[w > 0].ravel() for w, _ in frames.values()])
        if every.size:
            kept = max(1, round(top_fraction * every.size))
            cut = float(np.partition(every, every.size - kept)[every.size - kept])
            threshold = cut if threshold is None else max(threshold, cut)
    for name, ds in found.items():
        source, target = endpoints(ds, name)
        values, at = frames[name]
        for key, value in at.items():
            graph.graph.setdefault(key, value)
        keep = values > 0
        if threshold is not None:
            keep &= values >= threshold
        if top_k is not None and top_k < values.shape[1]:
            cut = np.partition(values, -top_k, axis=1)[:, -top_k][:, None]
            keep &= values >= cut
        for group, n in ((source, values.shape[1]), (target, values.shape[0])):
            graph.add_nodes_from(((group, i), {"group": group, "index": i}) for i in range(n))
        for h, j in zip(*np.nonzero(keep), strict=True):
            u, v = (target, int(h)), (source, int(j))
            if graph.has_edge(u, v):
                graph[u][v]["weight"] += float(values[h, j])
            else:
                graph.add_edge(u, v, weight=float(values[h, j]))
    return graph


def modularity(graph: nx.Graph, partition: Iterable[Iterable[Node]]) -> float:
    """Weighted Newman modularity ``Q = Σ_c [L_c/m - γ(d_c/2m)²]`` of ``partition``.

    A thin call to ``networkx.algorithms.community.modularity`` with
    ``weight="weight"``; NaN for a graph without edges (``m = 0``).
    """
    if graph.size(weight="weight") == 0:
        return float("nan")
    return float(nx.community.modularity(graph, [set(c) for c in partition], weight="weight"))


def best_partition_modularity(
    graph: nx.Graph,
    *,
    method: str = "louvain",
    seed: int = 0,
    resolution: float = 1.0,
) -> tuple[float, Partition]:
    """Communities of the weight graph and their modularity.

    Args:
        method: ``"louvain"`` (``networkx.community.louvain_communities``,
            deterministic for a given ``seed``) or ``"greedy"``
            (``greedy_modularity_communities``, Clauset–Newman–Moore).
        resolution: γ of the modularity; > 1 favours smaller communities.

    Returns:
        ``(Q, partition)``, the partition a list of node sets, largest first.
        A graph without edges gives ``(nan, one set per node)``.
    """
    if graph.size(weight="weight") == 0:
        return float("nan"), [{n} for n in graph.nodes]
    if method == "louvain":
        parts = nx.community.louvain_communities(
            graph, weight="weight", resolution=resolution, seed=seed
        )
    elif method == "greedy":
        parts = nx.community.greedy_modularity_communities(
            graph, weight="weight", resolution=resolution
        )
    else:
        raise AnalysisError(f"method must be 'louvain' or 'greedy', got {method!r}")
    partition = sorted((set(p) for p in parts), key=len, reverse=True)
    q = nx.community.modularity(graph, partition, weight="weight", resolution=resolution)
    return float(q), partition


#: Largest graph whose clustering is computed with dense matrices (``n × n`` float64: 512 MiB).
DENSE_CLUSTERING_MAX_NODES = 8192


def _frame_weights(ds: Any, name: str, frame: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``|W| [target, source]`` of one interaction at ``frame``, and the frame's time/step."""
    w = ds["weight"]
    at: dict[str, Any] = {}
    if "time" in w.dims:
        n = w.sizes["time"]
        if not -n <= frame < n:
            raise AnalysisError(f"frame {frame} out of range for {n} frames of {name!r}")
        w = w.isel(time=frame)
        at["time"] = float(w["time"])
        if "step" in w.coords:
            at["step"] = int(w["step"])
    return np.abs(np.asarray(w.transpose("target", "source").values, dtype=np.float64)), at


def small_worldness(graph: nx.Graph, *, nulls: int = 20, seed: int = 0) -> float:
    """``σ = (C / C_null) · (E / E_null)`` of the binarised graph (Humphries & Gurney's
    small-world index with global efficiency ``E`` for the inverse path length, as seRNN
    reports it): ``C`` the average clustering and ``E`` the global efficiency of the graph
    with every edge of weight 1, the nulls ``nulls`` random graphs ``G(n, m)`` with the same
    nodes and number of edges (their means). NaN where a null has no triangle or no edge.

    Global efficiency is a breadth-first search from every node (networkx), so this is for
    graphs of hundreds of nodes (a recurrent layer binarised to its strongest weights), not
    for a whole dense network.
    """
    if nulls < 1:
        raise AnalysisError(f"nulls must be a positive integer, got {nulls}")
    binary = nx.Graph()
    binary.add_nodes_from(graph)
    binary.add_edges_from((u, v) for u, v in graph.edges() if u != v)
    n, m = binary.number_of_nodes(), binary.number_of_edges()
    if n < 3 or m == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    c_null, e_null = [], []
    for _ in range(nulls):
        null = nx.gnm_random_graph(n, m, seed=int(rng.integers(2**31)))
        c_null.append(nx.average_clustering(null))
        e_null.append(nx.global_efficiency(null))
    c0, e0 = float(np.mean(c_null)), float(np.mean(e_null))
    if c0 == 0 or e0 == 0:
        return float("nan")
    return (nx.average_clustering(binary) / c0) * (nx.global_efficiency(binary) / e0)


def clustering(graph: nx.Graph) -> float:
    """Weighted average clustering coefficient (Onnela et al.), as ``networkx.average_clustering``.

    ``c_i = Σ_jk (ŵ_ij ŵ_jk ŵ_ki)^(1/3) / (k_i (k_i - 1))`` with ``ŵ = w / max(w)``
    and ``k_i`` the number of neighbours (self-loops ignored), averaged over all
    nodes. The dense layer-to-layer graphs of a network make networkx's
    per-node loops take minutes, so the same formula is evaluated with matrix
    products, ``c_i = (A³)_ii / (k_i (k_i - 1))`` with ``A = ŵ^(1/3)``, whenever
    that is cheaper (``n³`` against ``Σ k_i²`` set operations) and ``A`` fits
    in :data:`DENSE_CLUSTERING_MAX_NODES`; sparse graphs (``top_k``,
    ``threshold``) still go to networkx. Both give the same number.

    Note that a graph of interactions between successive layers is
    multipartite with no skip connections, so it has no triangles: its
    clustering is 0 unless some interaction joins a group to itself or skips
    a layer.
    """
    n = graph.number_of_nodes()
    if n == 0:
        return float("nan")
    degrees = np.fromiter((d for _, d in graph.degree()), dtype=np.float64, count=n)
    if n <= DENSE_CLUSTERING_MAX_NODES and (n <= 2048 or n**3 <= 64 * float(degrees @ degrees)):
        return _dense_average_clustering(graph)
    return float(nx.average_clustering(graph, weight="weight"))


def _dense_average_clustering(graph: nx.Graph) -> float:
    """:func:`clustering` with dense matrices: ``mean_i (A³)_ii / (k_i (k_i - 1))``."""
    n = graph.number_of_nodes()
    index = {node: i for i, node in enumerate(graph)}
    edges = list(graph.edges(data="weight", default=1.0))
    if not edges:
        return 0.0
    max_weight = max(float(w) for _, _, w in edges)  # networkx's normalisation, self-loops too
    rows = np.fromiter((index[u] for u, _, _ in edges), dtype=np.int64, count=len(edges))
    cols = np.fromiter((index[v] for _, v, _ in edges), dtype=np.int64, count=len(edges))
    weights = np.fromiter((float(w) for _, _, w in edges), dtype=np.float64, count=len(edges))
    keep = rows != cols
    rows, cols, weights = rows[keep], cols[keep], weights[keep]
    root = np.zeros((n, n), dtype=np.float64)
    root[rows, cols] = np.cbrt(weights / max_weight)
    root[cols, rows] = root[rows, cols]
    degree = np.count_nonzero(root, axis=1).astype(np.float64)
    triangles = np.empty(n, dtype=np.float64)
    block = max(1, (1 << 24) // n)  # rows of A² at a time: about 128 MiB
    for start in range(0, n, block):
        part = root[start : start + block]
        triangles[start : start + block] = np.einsum("ij,ij->i", part @ root, part)
    pairs = degree * (degree - 1)
    coefficient = np.divide(triangles, pairs, out=np.zeros(n), where=(triangles != 0) & (pairs > 0))
    return float(coefficient.mean())
