"""Weighted clustering of a network's weight graph: the matrix form against networkx's loops.

``particlesim analyze FILE clustering`` builds one graph of every recorded effective weight.
For the dense layer-to-layer graphs of a particle network, networkx's
``average_clustering`` loops over the neighbours of every node (minutes at MNIST widths);
:func:`particlesim.analysis.graph.clustering` evaluates the same formula with matrix
products. This script times both on random dense layered graphs, with skip connections so
that there are triangles and the two results can be compared, and prints the ratio.

    python benchmarks/analysis_clustering.py                  # default widths
    python benchmarks/analysis_clustering.py --sizes 784 64 64 10 --out clustering.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import networkx as nx
import numpy as np

from particlesim.analysis.graph import clustering


def layered_graph(sizes: list[int], seed: int = 0) -> nx.Graph:
    """Every pair of layers ``i < j`` fully connected with random positive weights."""
    rng = np.random.default_rng(seed)
    graph = nx.Graph()
    layers = [[(f"layer{i}", k) for k in range(n)] for i, n in enumerate(sizes)]
    for nodes in layers:
        graph.add_nodes_from(nodes)
    for first, second in itertools.combinations(layers, 2):
        weights = rng.uniform(0.01, 1.0, size=(len(first), len(second)))
        graph.add_weighted_edges_from(
            (u, v, float(w))
            for (u, row) in zip(first, weights, strict=True)
            for v, w in zip(second, row, strict=True)
        )
    return graph


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64, 64, 10])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    graph = layered_graph(args.sizes)
    start = time.perf_counter()
    matrix = clustering(graph)
    matrix_s = time.perf_counter() - start
    start = time.perf_counter()
    loops = float(nx.average_clustering(graph, weight="weight"))
    networkx_s = time.perf_counter() - start
    results = {
        "sizes": args.sizes,
        "edges": graph.number_of_edges(),
        "clustering": matrix,
        "networkx_clustering": loops,
        "matrix_s": matrix_s,
        "networkx_s": networkx_s,
        "speedup": networkx_s / matrix_s,
    }
    print(
        f"{'-'.join(map(str, args.sizes))} (all pairs of layers), {results['edges']:,} edges: "
        f"networkx {networkx_s:.2f} s, matrix form {matrix_s:.3f} s, "
        f"speed-up {results['speedup']:.0f}x; clustering {matrix:.6f} vs {loops:.6f}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
