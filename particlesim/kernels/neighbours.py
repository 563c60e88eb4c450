"""Block-sparse neighbour lists for kernels with a distance cutoff.

A kernel truncated at ``cutoff`` is exactly 0 between particles farther apart than the
cutoff, so most of the ``M × N`` products of a wide, spread-out layer need not be computed.
Molecular dynamics engines exploit this with cell lists and Verlet lists; the execution paths
here work on *tiles* (blocks of consecutive particles), so the list is block-sparse:

1. **Spatial sort.** Each position set is sorted by recursive coordinate bisection (the
   leaves of a balanced k-d tree with ``tile`` particles each), so that a tile of ``tile``
   consecutive particles occupies a small, nearly cubic box; a Morton (Z-order) sort is
   the alternative (``order="morton"``). Bisection's boxes are tighter because a tile never
   straddles two cells of the curve: on uniform points it lists about a quarter fewer tile
   pairs in 2-D and a third fewer in 3-D.
2. **Tile boxes.** Each target tile (``tile_m`` particles) and source tile (``tile_n``)
   gets its axis-aligned bounding box.
3. **Pair list.** A (target tile, source tile) pair is listed when the gap between their
   boxes is at most ``cutoff + skin``. The list is stored three ways: CSR of source tiles per
   target tile (forward pass), CSR of target tiles per source tile (``∂L/∂x``), and the flat
   pair list (parameter gradients).
4. **Verlet skin.** :class:`NeighbourCache` keeps the list and the positions it was built
   from and rebuilds only when some particle has moved farther than ``skin / 2`` since (the
   Verlet-list criterion: two particles can then have approached by at most ``skin``, so no
   pair within ``cutoff`` can have left the listed tiles).

The permutations are applied by the callers (the chunked path of :mod:`particlesim.kernels.ops`
and :mod:`particlesim.kernels.fused`, both through :func:`neighbour_list_for` and
:func:`to_neighbour_order`): inputs are gathered into sorted order, the kernels run on
contiguous tiles, and the output is scattered back, so results and gradients come back in
the caller's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "NeighbourCache",
    "NeighbourList",
    "bisection_order",
    "build_neighbour_list",
    "morton_order",
    "neighbour_list_for",
    "tile_boxes",
    "to_neighbour_order",
]

#: Most tile pairs whose box gaps are evaluated at once while building a list (bounds memory).
_PAIR_BATCH = 2**22


def morton_order(points: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Indices that sort ``points [P, D]`` along a Morton (Z-order) curve.

    The box ``[lower, upper]`` (``[D]`` each) is cut into cubic cells, ``2^bits`` along its
    longest side (``bits = min(10, 62 // D)``, at least 1); each point's cell coordinates are
    interleaved
    bit by bit into one 62-bit key. Above 62 dimensions only the first 62 take part in the key.
    Returns ``[P]`` int64 (a stable sort, so ties keep their input order).
    """
    P, D = points.shape
    dims = min(D, 62)
    bits = max(1, min(10, 62 // dims))
    # cubic cells (one span for every axis): on an elongated box, per-axis spans would give the
    # short axes as many key bits as the long one and tear compact runs apart
    span = (upper - lower)[:dims].max().clamp_min(torch.finfo(points.dtype).tiny)
    scaled = (points[:, :dims] - lower[:dims]) / span * (2**bits - 1)
    cells = scaled.round().clamp(0, 2**bits - 1).to(torch.int64)
    key = torch.zeros(P, dtype=torch.int64, device=points.device)
    for b in range(bits):
        for d in range(dims):
            key |= ((cells[:, d] >> b) & 1) << (b * dims + d)
    return torch.sort(key, stable=True).indices


def bisection_order(points: Tensor, tile: int) -> Tensor:
    """Indices that sort ``points [P, D]`` into compact tiles by recursive coordinate bisection.

    The points are split at the median of their widest axis into two halves whose sizes are
    multiples of ``tile`` (the first one the larger when the tile count is odd), and each
    half is split again until every part holds ``tile`` points (the last part may hold
    fewer). Consecutive runs of ``tile`` sorted points are then the leaves of a balanced
    k-d tree: boxes of nearly equal sides, and neighbouring leaves stay adjacent in the
    order. All parts of one level are split at once (two stable sorts per level, about
    ``log2(P / tile)`` levels), so the cost is a few sorts of ``P`` on any device. Ties keep
    their input order, so the result is deterministic.

    Returns ``[P]`` int64.

    Raises:
        ValueError: ``points`` is not ``[P, D ≥ 1]``, or ``tile < 1``.
    """
    if points.ndim != 2 or points.shape[1] < 1:
        raise ValueError(f"points must be [P, D] with D >= 1, got {tuple(points.shape)}")
    if tile < 1:
        raise ValueError(f"tile must be a positive number of points, got {tile}")
    if not points.is_floating_point():
        points = points.double()  # integer coordinates: the ±inf fill needs a float dtype
    P = points.shape[0]
    device = points.device
    order = torch.arange(P, device=device)
    lengths = torch.tensor([P], device=device)
    while True:
        split = lengths > tile
        if not bool(split.any()):
            return order
        parts = lengths.numel()
        sorted_points = points[order]
        part = torch.repeat_interleave(torch.arange(parts, device=device), lengths)
        index = part[:, None].expand_as(sorted_points)
        lower = sorted_points.new_full((parts, points.shape[1]), math.inf)
        upper = sorted_points.new_full((parts, points.shape[1]), -math.inf)
        lower = lower.scatter_reduce(0, index, sorted_points, "amin")
        upper = upper.scatter_reduce(0, index, sorted_points, "amax")
        axis = (upper - lower).argmax(1)
        key = sorted_points.gather(1, axis[part][:, None]).squeeze(1)
        by_key = torch.sort(key, stable=True).indices
        by_part = torch.sort(part[by_key], stable=True).indices
        order = order[by_key[by_part]]
        tiles = (lengths + tile - 1) // tile
        first = torch.where(split, (tiles + 1) // 2 * tile, lengths)
        halves = torch.stack([first, lengths - first], 1).flatten()
        lengths = halves[halves > 0]


def tile_boxes(points: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """Axis-aligned bounding boxes of consecutive tiles of ``points [P, D]``.

    Returns ``(lower, upper)``, each ``[ceil(P / tile), D]``; the last tile may be ragged.
    """
    P, D = points.shape
    tiles = -(-P // tile)
    pad = tiles * tile - P
    lo = torch.cat([points, points.new_full((pad, D), math.inf)]).view(tiles, tile, D)
    hi = torch.cat([points, points.new_full((pad, D), -math.inf)]).view(tiles, tile, D)
    return lo.amin(1), hi.amax(1)


def _inverse(order: Tensor) -> Tensor:
    """Inverse permutation: ``rank[order[i]] = i``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _csr(rows: Tensor, cols: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """``(row_ptr [num_rows + 1], cols)`` int32 for pairs already sorted by row."""
    counts = torch.bincount(rows, minlength=num_rows)
    ptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
    ptr[1:] = counts.cumsum(0)
    return ptr.to(torch.int32), cols.to(torch.int32)


@dataclass(eq=False)
class NeighbourList:
    """Spatial sort orders and the listed (target tile, source tile) pairs of one build.

    Attributes:
        target_order, source_order: ``[M]`` / ``[N]`` int64; sorted slot ``i`` holds particle
            ``target_order[i]``.
        target_rank, source_rank: the inverse permutations.
        tile_m, tile_n: particles per target / source tile.
        cutoff, skin: the kernel's cutoff and the list's margin.
        row_ptr, row_cols: CSR of listed source tiles per target tile (int32).
        col_ptr, col_rows: CSR of listed target tiles per source tile (int32).
        pair_target, pair_source: the listed pairs, sorted by target tile (int32).
    """

    target_order: Tensor
    source_order: Tensor
    target_rank: Tensor
    source_rank: Tensor
    tile_m: int
    tile_n: int
    cutoff: float
    skin: float
    row_ptr: Tensor
    row_cols: Tensor
    col_ptr: Tensor
    col_rows: Tensor
    pair_target: Tensor
    pair_source: Tensor
    _blocks: dict[int, list[tuple[int, int, slice | Tensor]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def num_target_tiles(self) -> int:
        return self.row_ptr.numel() - 1

    @property
    def num_source_tiles(self) -> int:
        return self.col_ptr.numel() - 1

    @property
    def num_pairs(self) -> int:
        """Listed tile pairs."""
        return self.pair_target.numel()

    @property
    def pair_fraction(self) -> float:
        """Listed tile pairs over all ``num_target_tiles · num_source_tiles`` (1 = no skipping)."""
        total = self.num_target_tiles * self.num_source_tiles
        return self.num_pairs / total if total else 1.0

    def row_blocks(self, max_runs: int = 1) -> list[tuple[int, int, slice | Tensor]]:
        """Blocks of the chunked path: ``(start, stop, sources)`` per target tile, sorted order.

        The listed source tiles of a target tile form one or more contiguous runs. Up to
        ``max_runs`` runs give one block each with a ``slice`` of source slots (views, nothing
        copied); more give a single block with the concatenated source indices (int64,
        gathered). The default, 1, measured fastest on a CPU: one large block per target
        tile beats several smaller ones even when it costs a gather. A target tile with no
        listed source tile gets no block.
        """
        if max_runs not in self._blocks:
            M, N = self.target_order.numel(), self.source_order.numel()
            ptr = self.row_ptr.tolist()
            cols = self.row_cols.to(torch.int64)
            offsets = torch.arange(self.tile_n, device=cols.device)
            blocks: list[tuple[int, int, slice | Tensor]] = []
            for t in range(self.num_target_tiles):
                start, stop = t * self.tile_m, min((t + 1) * self.tile_m, M)
                listed = cols[ptr[t] : ptr[t + 1]]
                if listed.numel() == 0:
                    continue
                tiles = listed.tolist()
                breaks = [i for i in range(1, len(tiles)) if tiles[i] != tiles[i - 1] + 1]
                if len(breaks) < max_runs:
                    for a, b in zip([0, *breaks], [*breaks, len(tiles)], strict=True):
                        last = min((tiles[b - 1] + 1) * self.tile_n, N)
                        blocks.append((start, stop, slice(tiles[a] * self.tile_n, last)))
                else:
                    idx = (listed[:, None] * self.tile_n + offsets).flatten()
                    blocks.append((start, stop, idx[idx < N]))
            self._blocks[max_runs] = blocks
        return self._blocks[max_runs]


def build_neighbour_list(
    target_pos: Tensor,
    source_pos: Tensor,
    cutoff: float,
    *,
    skin: float = 0.0,
    tile_m: int = 64,
    tile_n: int = 64,
    order: str = "bisection",
) -> NeighbourList:
    """Sort both position sets spatially and list the tile pairs within ``cutoff + skin``.

    Args:
        target_pos: ``[M, D]``; source_pos: ``[N, D]`` (not differentiated).
        cutoff: the kernel's cutoff distance.
        skin: extra margin so the list stays valid while particles move by up to ``skin / 2``.
        tile_m, tile_n: particles per target / source tile (the execution path's block sizes).
        order: the spatial sort, ``"bisection"`` (:func:`bisection_order`, compact tiles:
            the default) or ``"morton"`` (:func:`morton_order`). On uniform points bisection
            lists about a quarter fewer tile pairs in 2-D and a third fewer in 3-D.

    Returns:
        A :class:`NeighbourList` on the positions' device. Every pair of particles closer than
        ``cutoff + skin`` lies in a listed tile pair.
    """
    if tile_m < 1 or tile_n < 1:
        raise ValueError(f"tile sizes must be positive, got tile_m={tile_m}, tile_n={tile_n}")
    if not (math.isfinite(cutoff) and cutoff > 0) or not (math.isfinite(skin) and skin >= 0):
        raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
    if order not in ("bisection", "morton"):
        raise ValueError(f"order must be 'bisection' or 'morton', got {order!r}")
    with torch.no_grad():
        rh, rj = target_pos.detach(), source_pos.detach()
        if not rh.is_floating_point() or rh.dtype in (torch.float16, torch.bfloat16):
            rh, rj = rh.float(), rj.float()  # sort keys and boxes in (at least) float32
        if order == "morton":
            both = torch.cat([rh, rj])
            lower, upper = both.amin(0), both.amax(0)
            t_order = morton_order(rh, lower, upper)
            s_order = morton_order(rj, lower, upper)
        else:
            t_order = bisection_order(rh, tile_m)
            s_order = bisection_order(rj, tile_n)
        t_lo, t_hi = tile_boxes(rh[t_order], tile_m)
        s_lo, s_hi = tile_boxes(rj[s_order], tile_n)
        T_m, T_n = t_lo.shape[0], s_lo.shape[0]
        reach2 = (cutoff + skin) ** 2
        rows, cols = [], []
        step = max(1, _PAIR_BATCH // max(1, T_n * rh.shape[1]))
        for s in range(0, T_m, step):
            gap = torch.clamp(
                torch.maximum(
                    t_lo[s : s + step, None] - s_hi[None], s_lo[None] - t_hi[s : s + step, None]
                ),
                min=0,
            )
            near = (gap * gap).sum(-1) <= reach2
            r, c = near.nonzero(as_tuple=True)
            rows.append(r + s)
            cols.append(c)
        pair_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        pair_s = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
        row_ptr, row_cols = _csr(pair_t, pair_s, T_m)
        by_source = torch.argsort(pair_s * T_m + pair_t)
        col_ptr, col_rows = _csr(pair_s[by_source], pair_t[by_source], T_n)
    return NeighbourList(
        target_order=t_order,
        source_order=s_order,
        target_rank=_inverse(t_order),
        source_rank=_inverse(s_order),
        tile_m=int(tile_m),
        tile_n=int(tile_n),
        cutoff=float(cutoff),
        skin=float(skin),
        row_ptr=row_ptr,
        row_cols=row_cols,
        col_ptr=col_ptr,
        col_rows=col_rows,
        pair_target=pair_t.to(torch.int32),
        pair_source=pair_s.to(torch.int32),
    )


class NeighbourCache:
    """A neighbour list rebuilt only when particles have moved farther than ``skin / 2``.

    Held by an interaction (a plain attribute, not a parameter or buffer). :meth:`get`
    returns the cached list while it is valid for the current positions and rebuilds it
    when the shapes, device, cutoff or tile sizes changed, or some particle of either set
    moved more than ``skin / 2`` from where it was at the last build.

    Args:
        skin: the Verlet margin, an absolute distance ≥ 0; None (default) means
            ``cutoff / 10`` of the kernel it is used with. A larger skin means fewer
            rebuilds but more listed pairs.
    """

    def __init__(self, skin: float | None = None) -> None:
        if skin is not None and not (math.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a finite distance >= 0, got {skin!r}")
        self.skin = skin
        self.builds = 0
        self._list: NeighbourList | None = None
        self._key: tuple | None = None
        self._target: Tensor | None = None
        self._source: Tensor | None = None

    @property
    def neighbour_list(self) -> NeighbourList | None:
        """The list of the last build (None before the first)."""
        return self._list

    def reset(self) -> None:
        """Forget the list; the next :meth:`get` rebuilds it."""
        self._list = self._key = self._target = self._source = None

    def get(
        self, target_pos: Tensor, source_pos: Tensor, cutoff: float, tile_m: int, tile_n: int
    ) -> NeighbourList:
        """The list for these positions: the cached one if still valid, else a new build."""
        skin = cutoff / 10.0 if self.skin is None else self.skin
        key = (
            tuple(target_pos.shape),
            tuple(source_pos.shape),
            target_pos.device,
            float(cutoff),
            skin,
            int(tile_m),
            int(tile_n),
        )
        if (
            self._list is not None
            and key == self._key
            and self._still_valid(target_pos, source_pos, skin)
        ):
            return self._list
        self._list = build_neighbour_list(
            target_pos, source_pos, cutoff, skin=skin, tile_m=tile_m, tile_n=tile_n
        )
        self._key = key
        self._target = target_pos.detach().clone()
        self._source = source_pos.detach().clone()
        self.builds += 1
        return self._list

    def _still_valid(self, target_pos: Tensor, source_pos: Tensor, skin: float) -> bool:
        """No particle of either set moved more than ``skin / 2`` since the build."""
        limit = (skin / 2.0) ** 2
        with torch.no_grad():
            moved = torch.stack(
                [
                    (target_pos.detach() - self._target).square().sum(1).max(),
                    (source_pos.detach() - self._source).square().sum(1).max(),
                ]
            ).max()
        return bool(moved <= limit)


def neighbour_list_for(
    neighbours: NeighbourCache | NeighbourList | None,
    target_pos: Tensor,
    source_pos: Tensor,
    cutoff: float,
    tiles: tuple[int, int],
) -> NeighbourList:
    """The neighbour list to use: from ``neighbours`` (a cache or a list) or a fresh build.

    A given :class:`NeighbourList` must have been built with these ``tiles`` and ``cutoff``.
    """
    if isinstance(neighbours, NeighbourCache):
        return neighbours.get(target_pos, source_pos, cutoff, *tiles)
    if isinstance(neighbours, NeighbourList):
        M, N = target_pos.shape[0], source_pos.shape[0]
        if (neighbours.tile_m, neighbours.tile_n) != tuple(tiles) or neighbours.cutoff != cutoff:
            raise ValueError(
                f"neighbour list was built for tiles {(neighbours.tile_m, neighbours.tile_n)} and "
                f"cutoff {neighbours.cutoff:g}, this path needs tiles {tuple(tiles)} and cutoff "
                f"{cutoff:g}"
            )
        if (neighbours.target_order.numel(), neighbours.source_order.numel()) != (M, N):
            raise ValueError(
                f"neighbour list was built for {neighbours.target_order.numel()} targets and "
                f"{neighbours.source_order.numel()} sources, got {M} and {N}"
            )
        return neighbours
    if neighbours is not None:
        raise TypeError(
            f"neighbours must be a NeighbourCache, a NeighbourList or None, "
            f"got {type(neighbours).__name__}"
        )
    return build_neighbour_list(target_pos, source_pos, cutoff, tile_m=tiles[0], tile_n=tiles[1])


def to_neighbour_order(
    nl: NeighbourList,
    x: Tensor,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gather the inputs into the list's sorted order (differentiable: autograd scatters back)."""
    t, j = nl.target_order, nl.source_order
    return (
        x.index_select(1, j),
        target_pos.index_select(0, t),
        source_pos.index_select(0, j),
        None if charge is None else charge.index_select(0, t),
        None if modulation is None else modulation.index_select(0, t).index_select(1, j),
    )
