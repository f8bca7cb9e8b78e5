"""The exact neighbour query as one Triton kernel (reference: `npva.model.query.NeighbourIndex`).

`TritonNeighbourIndex` is a `NeighbourIndex` (the same grid, cells and sorted points) that also keeps a
dense table of each grid cell's first sorted point and point count. A query is one kernel launch: each
program takes BLOCK_Q queries (ordered by grid cell, so that neighbouring programs read the same cells)
and walks the (2 reach + 1)^3 cells around each query's cell, nearest cells first, skipping cells whose
box lies beyond the radius or, once a query holds K neighbours, beyond its K-th nearest (on a dense
point set, most of the searched cells: their points could not enter its list). Candidates come in tiles
of KP (K rounded up to a power of two) per query; each query's running K best (distance, index) keys,
packed into int64 exactly as the reference packs them, are merged with a tile by one bitonic merge (the
K smallest of two sorted lists are the elementwise minimum of one ascending and the other descending, a
bitonic sequence), and only when some candidate of the tile beats its query's K-th best. Squared
distances are computed with the reference's operations in its order and floating-point contraction off,
so that the keys, and hence the neighbours and their order, equal the reference's bit for bit.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from npva.model.fast import interpreted
from npva.model.query import _EMPTY_KEY, NeighbourIndex

# Above this many grid cells the dense table is not built and queries take the reference path.
MAX_TABLE_CELLS = 1 << 26
# A cell is skipped when its box is farther from the query than the radius (or the K-th neighbour)
# widened by this fraction plus this fraction of a cell: margins far above the rounding of positions
# within metres of the grid origin.
_BOX_MARGIN = 1e-3


# Sizes change every frame: compiled once, not once per divisibility of each size.
@triton.jit(do_not_specialize=["num_queries", "dim0", "dim1", "dim2"])
def _knn_kernel(
    queries_ptr,  # (Q, 3) float32
    query_order_ptr,  # (Q,) int64: the queries in grid-cell order
    num_queries,
    points_ptr,  # (P, 3) float32, sorted by cell
    point_ids_ptr,  # (P,) int64 original index of each sorted point
    cell_start_ptr,  # (D0 * D1 * D2,) int32 first sorted point of each cell
    cell_count_ptr,  # (D0 * D1 * D2,) int32 points in each cell
    offsets_ptr,  # (NUM_OFFSETS, 3) int32 searched cell offsets, nearest first
    origin_x,
    origin_y,
    origin_z,
    cell,
    radius_sq,
    box_radius_sq,
    box_scale,
    box_slack,
    dim0,
    dim1,
    dim2,
    keys_ptr,  # (Q, KP) int64 output, ascending per row
    REACH: tl.constexpr,
    NUM_OFFSETS: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    empty: tl.constexpr = 0x7FFFFFFFFFFFFFFF
    slot = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    live = slot < num_queries
    q = tl.load(query_order_ptr + slot, mask=live, other=0)
    qx = tl.load(queries_ptr + 3 * q, mask=live, other=0.0)
    qy = tl.load(queries_ptr + 3 * q + 1, mask=live, other=0.0)
    qz = tl.load(queries_ptr + 3 * q + 2, mask=live, other=0.0)
    # Cell coordinates, clamped as floats first so that far (or NaN) queries cannot overflow.
    far = REACH + 1.0
    cx = tl.minimum(tl.maximum(tl.floor((qx - origin_x) / cell), -far), dim0 + far).to(tl.int32)
    cy = tl.minimum(tl.maximum(tl.floor((qy - origin_y) / cell), -far), dim1 + far).to(tl.int32)
    cz = tl.minimum(tl.maximum(tl.floor((qz - origin_z) / cell), -far), dim2 + far).to(tl.int32)
    lanes = tl.arange(0, KP)
    best = tl.full((BLOCK_Q, KP), empty, tl.int64)
    worst = tl.full((BLOCK_Q,), empty, tl.int64)  # the largest of each row of best
    for offset in range(NUM_OFFSETS):
        c0 = cx + tl.load(offsets_ptr + 3 * offset)
        c1 = cy + tl.load(offsets_ptr + 3 * offset + 1)
        c2 = cz + tl.load(offsets_ptr + 3 * offset + 2)
        inside = live & (c0 >= 0) & (c0 < dim0) & (c1 >= 0) & (c1 < dim1) & (c2 >= 0) & (c2 < dim2)
        low_x = origin_x + c0.to(tl.float32) * cell
        low_y = origin_y + c1.to(tl.float32) * cell
        low_z = origin_z + c2.to(tl.float32) * cell
        gap_x = tl.maximum(tl.maximum(low_x - qx, qx - (low_x + cell)), 0.0)
        gap_y = tl.maximum(tl.maximum(low_y - qy, qy - (low_y + cell)), 0.0)
        gap_z = tl.maximum(tl.maximum(low_z - qz, qz - (low_z + cell)), 0.0)
        # Beyond the K-th neighbour (worst's distance, when the row is full) no point can enter the row.
        worst_d = tl.sqrt((worst >> 32).to(tl.int32).to(tl.float32, bitcast=True))
        reach = box_scale * worst_d + box_slack
        limit = tl.where(worst == empty, box_radius_sq, tl.minimum(reach * reach, box_radius_sq))
        near = gap_x * gap_x + gap_y * gap_y + gap_z * gap_z <= limit
        key = (c0 * dim1 + c1) * dim2 + c2
        searched = inside & near
        start = tl.load(cell_start_ptr + key, mask=searched, other=0)
        count = tl.load(cell_count_ptr + key, mask=searched, other=0)
        most = tl.max(count, axis=0)
        first = 0
        while first < most:
            j = first + lanes
            real = j[None, :] < count[:, None]  # (BLOCK_Q, KP)
            row = start[:, None] + j[None, :]
            dx = tl.load(points_ptr + 3 * row, mask=real, other=0.0) - qx[:, None]
            dy = tl.load(points_ptr + 3 * row + 1, mask=real, other=0.0) - qy[:, None]
            dz = tl.load(points_ptr + 3 * row + 2, mask=real, other=0.0) - qz[:, None]
            d2 = dx * dx + dy * dy + dz * dz
            ids = tl.load(point_ids_ptr + row, mask=real, other=0)
            packed = (d2.to(tl.int32, bitcast=True).to(tl.int64) << 32) | ids
            packed = tl.where(real & (d2 <= radius_sq), packed, empty)
            # Merge only when some candidate beats its row's worst: cells are visited nearest first,
            # so once the rows are full most tiles are skipped.
            if tl.max((packed < worst[:, None]).to(tl.int32)) > 0:
                descending = tl.sort(packed, dim=1, descending=True)
                best = tl.bitonic_merge(tl.minimum(best, descending), dim=1)
                worst = tl.max(best, axis=1)
            first += KP
    out = keys_ptr + q[:, None] * KP + lanes[None, :]
    tl.store(out, best, mask=live[:, None])


class TritonNeighbourIndex(NeighbourIndex):
    """`NeighbourIndex` whose queries run as one Triton kernel (CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1). Same constructor arguments; max_candidates only matters for the reference
    path, taken when the grid has more than MAX_TABLE_CELLS cells."""

    block_q = 64
    num_warps = 4

    def __init__(self, points, radius, k, cell_fraction=0.5, max_candidates=None):
        super().__init__(points, radius, k, cell_fraction=cell_fraction, max_candidates=max_candidates)
        if self.cell_start is not None:
            self.sorted_points = self.sorted_points.contiguous()
            nearest_first = torch.argsort((self.offsets.float() ** 2).sum(1), stable=True)
            self.offsets_nearest = self.offsets[nearest_first].int().contiguous()

    def _index_cells(self, keys_sorted: torch.Tensor) -> None:
        """Dense tables of every cell's first sorted point and point count (D0 * D1 * D2,) int32, made
        without the reference's unique (which waits for the device); the reference's cell lists when
        the grid has more than MAX_TABLE_CELLS cells."""
        bounds = torch.cat((self.dims.double(), self.origin.double())).tolist()  # the one wait of a build
        self.dims_host = [int(d) for d in bounds[:3]]
        self.origin_host = bounds[3:]
        cells = math.prod(self.dims_host)
        self.cell_start: torch.Tensor | None = None
        self.cell_count: torch.Tensor | None = None
        if not self.num_points or cells > MAX_TABLE_CELLS:
            super()._index_cells(keys_sorted)
            return
        ones = torch.ones_like(keys_sorted, dtype=torch.int32)
        self.cell_count = torch.zeros(cells, dtype=torch.int32, device=self.device)
        self.cell_count.index_add_(0, keys_sorted, ones)
        self.cell_start = torch.cumsum(self.cell_count, 0, dtype=torch.int32) - self.cell_count

    def query(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, 3) -> idx (Q, k) long (-1 empty), dist (Q, k) float32 (+inf empty), as
        NeighbourIndex.query."""
        if self.cell_start is None:
            return super().query(queries)
        if queries.ndim != 2 or queries.shape[1] != 3:
            raise ValueError(f"queries must have shape (Q, 3), got {tuple(queries.shape)}")
        queries = queries.detach().float().to(self.device).contiguous()
        num_q = queries.shape[0]
        kp = 1 << max(0, (self.k - 1).bit_length())
        keys = torch.empty((num_q, kp), dtype=torch.int64, device=self.device)
        if num_q > 0:
            self._launch(queries, keys)
        best = keys[:, : self.k]
        hit = best != _EMPTY_KEY
        idx = torch.where(hit, best & 0xFFFFFFFF, -1)
        dist = torch.where(hit, (best >> 32).int().view(torch.float32).sqrt(), math.inf)
        return idx, dist

    def _launch(self, queries: torch.Tensor, keys: torch.Tensor) -> None:
        """Run the kernel over queries (Q, 3), writing keys (Q, KP)."""
        order = torch.argsort(self._query_cell_keys(queries))
        radius_sq = self.radius * self.radius
        box_radius = self.radius * (1.0 + _BOX_MARGIN)
        options = {} if interpreted() else {"num_warps": self.num_warps, "enable_fp_fusion": False}
        grid = (triton.cdiv(queries.shape[0], self.block_q),)
        _knn_kernel[grid](
            queries,
            order,
            queries.shape[0],
            self.sorted_points,
            self.order,
            self.cell_start,
            self.cell_count,
            self.offsets_nearest,
            *self.origin_host,
            self.cell,
            radius_sq,
            box_radius * box_radius,
            1.0 + _BOX_MARGIN,
            _BOX_MARGIN * self.cell,
            *self.dims_host,
            keys,
            REACH=self.reach,
            NUM_OFFSETS=self.offsets_nearest.shape[0],
            KP=keys.shape[1],
            BLOCK_Q=self.block_q,
            **options,
        )
