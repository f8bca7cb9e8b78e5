"""Exact K-nearest-neighbour search within a radius (method.md section 6).

For every query x: the K nearest points with |p - x| <= radius (inclusive), sorted by distance, ties
broken by the smaller point index; missing slots hold index -1 and distance +inf. The result is exact
and deterministic.

`NeighbourIndex` is built once per frame and answers any number of queries. It is a uniform grid whose
points are sorted by cell key. Queries in the same cell share their candidates: the points of the
(2 reach + 1)^3 cells around it. Each query reads its candidates into a padded (queries, candidates)
block, packs each candidate's squared distance and point index into one int64 key, and keeps the K
smallest keys per row with `torch.topk`. Work is split into chunks and blocks so that no more than a
fixed number of candidate entries is held at once. Everything is vectorized PyTorch and runs
unchanged on CPU and CUDA; the host waits a few times per call, not per block.

`KDTreeIndex` answers the same queries on CPU with SciPy's k-d tree (about ten times faster there than
the grid on two cores); it returns the same neighbours except where two candidates' distances differ
only by rounding. `build_neighbour_index` picks the k-d tree on CPU and the grid elsewhere.

`knn_radius_bruteforce` is the plain reference used by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

# The grid cell is widened by this fraction so that float rounding can never place a neighbour in a
# cell beyond the searched block (rounding errors are below 1e-5 cells for coordinates within
# metres of the grid origin).
_CELL_SLACK = 1e-3
_EMPTY_KEY = torch.iinfo(torch.int64).max
# Candidate entries held at once when not given: cache-sized blocks on CPU, large ones on GPU
# (measured fastest there).
_DEFAULT_CANDIDATES = {"cpu": 1 << 20, "cuda": 1 << 25}
QUERY_BACKENDS = ("auto", "grid", "kdtree")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 over the last axis of two broadcastable (..., 3) tensors.

    Written out per component so that the grid query and the brute-force reference round alike.
    """
    d = a - b
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def knn_radius_bruteforce(
    points: torch.Tensor, queries: torch.Tensor, k: int, radius: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: all pairwise distances, then a stable sort per query.

    points (P, 3), queries (Q, 3) -> idx (Q, k) long (-1 empty), dist (Q, k) (+inf empty).
    Memory is Q x P: only for small inputs.
    """
    d2 = squared_distances(queries[:, None, :], points[None, :, :])  # (Q, P)
    d2 = torch.where(d2 <= radius * radius, d2, torch.full_like(d2, math.inf))
    d2_sorted, order = torch.sort(d2, dim=1, stable=True)
    idx = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=queries.device)
    dist = torch.full((queries.shape[0], k), math.inf, dtype=queries.dtype, device=queries.device)
    kk = min(k, points.shape[0])
    found = torch.isfinite(d2_sorted[:, :kk])
    idx[:, :kk] = torch.where(found, order[:, :kk], -1)
    dist[:, :kk] = torch.where(found, d2_sorted[:, :kk].sqrt(), math.inf)
    return idx, dist


@dataclass
class _GroupPlan:
    """Queries grouped by grid cell. by_group (Q,) query positions ordered by group; group_of_query
    (Q,); widths (G,) candidates per group; group_end, query_end: host cumulative sums of the widths
    and of the queries per group."""

    by_group: torch.Tensor
    group_of_query: torch.Tensor
    widths: torch.Tensor
    group_end: np.ndarray
    query_end: np.ndarray


class NeighbourIndex:
    """Uniform-grid index over a fixed point set for exact K-nearest-within-radius queries.

    points: (P, 3) float; stored as float32 without gradient (the index is geometry only).
    radius: search radius (inclusive), same units as the points.
    k: neighbours per query.
    cell_fraction: grid cell side as a fraction of the radius; a query searches the
        (2 ceil(1 / cell_fraction) + 1)^3 cells around its own.
    max_candidates: bound on the number of candidate entries held at once (peak memory is roughly
        100 bytes per entry); None: 2^20 on CPU, 2^25 on CUDA.

    A query runs in three steps. The queries are grouped by grid cell (queries of one cell share
    their candidates). For each group, the points of the searched cells are listed once. For each
    query, its group's list is read into a padded (queries, width) block of squared distances, and
    the K smallest (distance, index) keys per row are kept with `torch.topk`. The host waits for
    the group sizes only (three times per call); chunks and blocks are planned from them.
    """

    def __init__(
        self,
        points: torch.Tensor,
        radius: float,
        k: int,
        cell_fraction: float = 0.5,
        max_candidates: int | None = None,
    ):
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must have shape (P, 3), got {tuple(points.shape)}")
        if max_candidates is None:
            max_candidates = _DEFAULT_CANDIDATES.get(points.device.type, 1 << 20)
        if radius <= 0 or k <= 0 or not 0 < cell_fraction <= 1 or max_candidates <= 0:
            raise ValueError("radius, k, cell_fraction in (0, 1] and max_candidates must be positive")
        if points.shape[0] >= 1 << 32:
            raise ValueError("at most 2^32 - 1 points (indices are packed into 32 bits)")
        self.radius = float(radius)
        self.k = int(k)
        self.max_candidates = int(max_candidates)
        self.reach = max(1, math.ceil(1.0 / cell_fraction - 1e-6))  # cells per radius
        self.cell = self.radius * (1.0 + _CELL_SLACK) / self.reach
        self.num_points = points.shape[0]
        self.device = points.device

        points = points.detach().float()
        self.origin = points.min(0).values if self.num_points else points.new_zeros(3)
        cells = self._cell_coords(points)  # (P, 3) long, all >= 0
        self.dims = (cells.max(0).values + 1) if self.num_points else cells.new_ones(3)
        keys = _linear_key(cells, self.dims)
        keys_sorted, self.order = torch.sort(keys, stable=True)  # stable: ascending index per cell
        self.sorted_points = points[self.order]
        self._index_cells(keys_sorted)

        steps = torch.arange(-self.reach, self.reach + 1, device=self.device)
        self.offsets = torch.cartesian_prod(steps, steps, steps)  # (O, 3) searched cell offsets
        # Query cells are clamped to the grid padded by reach + 1 cells: a farther query has no
        # neighbour either way. Their keys live in that padded grid.
        self._pad = self.reach + 1
        self._padded_dims = self.dims + 2 * self._pad

    def _index_cells(self, keys_sorted: torch.Tensor) -> None:
        """From the points' sorted cell keys (P,): the occupied cells' keys (C,), their point counts
        (C,) and their first slots in the sorted order (C,)."""
        self.cell_keys, self.cell_counts = torch.unique_consecutive(keys_sorted, return_counts=True)
        self.cell_starts = torch.cumsum(self.cell_counts, 0) - self.cell_counts

    def _cell_coords(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) positions -> (N, 3) long cell coordinates relative to the grid origin."""
        return torch.floor((x - self.origin) / self.cell).long()

    def _query_cell_keys(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, 3) float32 queries -> (Q,) long keys of their cells in the padded grid."""
        padded = self._cell_coords(queries).clamp(-self._pad, None) + self._pad
        return _linear_key(torch.minimum(padded, self._padded_dims - 1), self._padded_dims)

    def query(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, 3) -> idx (Q, k) long (-1 empty), dist (Q, k) float32 (+inf empty).

        Sorted by distance, ties by point index; neighbours are the points with |p - x| <= radius.
        """
        if queries.ndim != 2 or queries.shape[1] != 3:
            raise ValueError(f"queries must have shape (Q, 3), got {tuple(queries.shape)}")
        queries = queries.detach().float().to(self.device)
        num_q = queries.shape[0]
        idx = torch.full((num_q, self.k), -1, dtype=torch.long, device=self.device)
        dist = torch.full((num_q, self.k), math.inf, device=self.device)
        if num_q == 0 or self.num_points == 0:
            return idx, dist

        group_keys, group_of_query = torch.unique(self._query_cell_keys(queries), return_inverse=True)
        group_cells = _unlinear_key(group_keys, self._padded_dims) - self._pad  # (G, 3)
        groups_per_pass = max(1, self.max_candidates // self.offsets.shape[0])
        widths = torch.cat(
            [
                self._cell_runs(group_cells[g : g + groups_per_pass])[1].sum(1)
                for g in range(0, group_cells.shape[0], groups_per_pass)
            ]
        )  # (G,) candidates per group
        # Host copies of the per-group sizes plan the chunks and blocks without further waiting.
        plan = _GroupPlan(
            by_group=torch.argsort(group_of_query, stable=True),
            group_of_query=group_of_query,
            widths=widths,
            group_end=torch.cumsum(widths, 0).cpu().numpy(),
            query_end=torch.cumsum(torch.bincount(group_of_query), 0).cpu().numpy(),
        )
        for g0, g1 in _chunks(plan.group_end, self.max_candidates, groups_per_pass):
            self._answer_chunk(queries, group_cells, plan, g0, g1, idx, dist)
        return idx, dist

    def _answer_chunk(
        self,
        queries: torch.Tensor,
        group_cells: torch.Tensor,
        plan: _GroupPlan,
        g0: int,
        g1: int,
        idx_out: torch.Tensor,
        dist_out: torch.Tensor,
    ) -> None:
        """Answer the queries of groups g0 .. g1 - 1, in blocks of (rows x widest list) entries."""
        lists, list_start = self._candidate_lists(*self._cell_runs(group_cells[g0:g1]))
        q0 = int(plan.query_end[g0 - 1]) if g0 > 0 else 0
        q1 = int(plan.query_end[g1 - 1])
        widths = np.diff(plan.group_end[g0:g1], prepend=plan.group_end[g0 - 1] if g0 else 0)
        rows_per_block = max(1, self.max_candidates // max(int(widths.max()), 1))
        for b0 in range(q0, q1, rows_per_block):
            b1 = min(b0 + rows_per_block, q1)
            first = int(np.searchsorted(plan.query_end, b0, side="right")) - g0
            last = int(np.searchsorted(plan.query_end, b1 - 1, side="right")) - g0
            width = int(widths[first : last + 1].max())
            if width > 0:
                rows = plan.by_group[b0:b1]
                groups = plan.group_of_query[rows] - g0
                self._answer_block(
                    queries, rows, groups, lists, list_start, plan.widths[g0:g1], width, idx_out, dist_out
                )

    def _cell_runs(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cells (G, 3) -> start (G, O) and count (G, O) of the sorted points in each searched cell
        (count 0 for empty cells and cells outside the grid)."""
        searched = cells[:, None, :] + self.offsets[None]  # (G, O, 3)
        inside = ((searched >= 0) & (searched < self.dims)).all(-1)
        keys = _linear_key(searched.clamp_min(0), self.dims)
        slot = torch.searchsorted(self.cell_keys, keys).clamp_max(self.cell_keys.shape[0] - 1)
        found = inside & (self.cell_keys[slot] == keys)
        return self.cell_starts[slot], torch.where(found, self.cell_counts[slot], 0)

    def _candidate_lists(
        self, starts: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sorted-point positions of each group's searched cells, concatenated.

        starts, counts: (G, O). Returns lists (sum of counts,) and list_start (G,) of each group.
        """
        counts = counts.reshape(-1)
        run_of_entry = torch.repeat_interleave(counts)
        run_start = torch.cumsum(counts, 0) - counts
        within = torch.arange(run_of_entry.shape[0], device=self.device) - run_start[run_of_entry]
        lists = starts.reshape(-1)[run_of_entry] + within
        widths = counts.view(starts.shape).sum(1)
        return lists, torch.cumsum(widths, 0) - widths

    def _answer_block(
        self,
        queries: torch.Tensor,
        rows: torch.Tensor,
        group_local: torch.Tensor,
        lists: torch.Tensor,
        list_start: torch.Tensor,
        list_width: torch.Tensor,
        width: int,
        idx_out: torch.Tensor,
        dist_out: torch.Tensor,
    ) -> None:
        """One padded block: the queries `rows` (B,) of groups group_local (B,), whose candidates are
        lists[list_start[g] : list_start[g] + list_width[g]]; width >= the longest of those lists.
        Writes rows of idx_out and dist_out (Q, k)."""
        slots = torch.arange(width, device=self.device)
        real = slots < list_width[group_local][:, None]  # (B, W)
        entry = torch.where(real, list_start[group_local][:, None] + slots, 0)
        sorted_pos = lists[entry]
        d2 = squared_distances(self.sorted_points[sorted_pos], queries[rows][:, None, :])  # (B, W)
        # Non-negative float32 bit patterns sort like the floats: (d2, index) in one int64 key.
        key = (d2.view(torch.int32).long() << 32) | self.order[sorted_pos]
        key = torch.where(real & (d2 <= self.radius * self.radius), key, _EMPTY_KEY)
        kk = min(self.k, width)
        best = torch.topk(key, kk, dim=1, largest=False, sorted=True).values
        hit = best != _EMPTY_KEY
        best_d2 = (best >> 32).int().view(torch.float32)
        idx_out[rows, :kk] = torch.where(hit, best & 0xFFFFFFFF, -1)
        dist_out[rows, :kk] = torch.where(hit, best_d2.sqrt(), math.inf)


class KDTreeIndex:
    """CPU index with the interface of NeighbourIndex, on SciPy's cKDTree.

    points (P, 3) on the CPU. The tree finds each query's K nearest within radius in float64; their
    float32 distances are then recomputed and sorted as the grid sorts them (distance, then index), so
    both indices agree unless a neighbour's distance ties another's or the radius within rounding.
    """

    def __init__(self, points: torch.Tensor, radius: float, k: int):
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must have shape (P, 3), got {tuple(points.shape)}")
        if points.device.type != "cpu":
            raise ValueError(f"the k-d tree index runs on CPU points, got {points.device}")
        if radius <= 0 or k <= 0:
            raise ValueError("radius and k must be positive")
        self.radius, self.k = float(radius), int(k)
        self.points = points.detach().float()
        self.num_points = self.points.shape[0]
        self.device = self.points.device
        self.tree = cKDTree(self.points.numpy().astype(np.float64)) if self.num_points else None

    def query(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, 3) -> idx (Q, k) long (-1 empty), dist (Q, k) float32 (+inf empty)."""
        if queries.ndim != 2 or queries.shape[1] != 3:
            raise ValueError(f"queries must have shape (Q, 3), got {tuple(queries.shape)}")
        queries = queries.detach().float().cpu()
        num_q = queries.shape[0]
        idx = torch.full((num_q, self.k), -1, dtype=torch.long)
        dist = torch.full((num_q, self.k), math.inf)
        if num_q == 0 or self.tree is None:
            return idx, dist
        kk = min(self.k, self.num_points)
        # A slightly wider bound, then the float32 test below decides who is within the radius.
        _, found = self.tree.query(
            queries.numpy().astype(np.float64),
            k=kk,
            distance_upper_bound=self.radius * (1 + 1e-5),
            workers=torch.get_num_threads(),
        )
        found = torch.from_numpy(np.asarray(found, dtype=np.int64).reshape(num_q, kk))
        real = found < self.num_points  # cKDTree marks a missing neighbour with index P
        safe = torch.where(real, found, 0)
        d2 = squared_distances(self.points[safe], queries[:, None, :])
        key = (d2.view(torch.int32).long() << 32) | safe
        key = torch.where(real & (d2 <= self.radius * self.radius), key, _EMPTY_KEY)
        best = torch.sort(key, dim=1).values
        hit = best != _EMPTY_KEY
        idx[:, :kk] = torch.where(hit, best & 0xFFFFFFFF, -1)
        dist[:, :kk] = torch.where(hit, (best >> 32).int().view(torch.float32).sqrt(), math.inf)
        return idx, dist


def build_neighbour_index(
    points: torch.Tensor,
    radius: float,
    k: int,
    backend: str = "auto",
    cell_fraction: float = 0.5,
    max_candidates: int | None = None,
    fast: bool = False,
) -> NeighbourIndex | KDTreeIndex:
    """The index of points (P, 3) for K-nearest-within-radius queries. backend: "grid"
    (NeighbourIndex, any device), "kdtree" (KDTreeIndex, CPU) or "auto" (kdtree on CPU, else grid).
    fast: the grid's queries run as the Triton kernel (npva.model.fast.query), same results."""
    if backend not in QUERY_BACKENDS:
        raise ValueError(f"query backend must be one of {', '.join(QUERY_BACKENDS)}, got {backend!r}")
    if backend == "kdtree" or (backend == "auto" and points.device.type == "cpu" and not fast):
        return KDTreeIndex(points, radius, k)
    if fast:
        from npva.model.fast.query import TritonNeighbourIndex

        return TritonNeighbourIndex(
            points, radius, k, cell_fraction=cell_fraction, max_candidates=max_candidates
        )
    return NeighbourIndex(points, radius, k, cell_fraction=cell_fraction, max_candidates=max_candidates)


def _linear_key(cells: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """(..., 3) cell coordinates within dims (3,) -> (...,) int64 keys, z fastest."""
    return (cells[..., 0] * dims[1] + cells[..., 1]) * dims[2] + cells[..., 2]


def _unlinear_key(keys: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """Inverse of _linear_key: (N,) -> (N, 3)."""
    z = keys % dims[2]
    y = (keys // dims[2]) % dims[1]
    return torch.stack((keys // (dims[1] * dims[2]), y, z), -1)


def _chunks(ends: np.ndarray, budget: int, max_items: int) -> list[tuple[int, int]]:
    """Split items with cumulative sizes `ends` (N,) into consecutive ranges [a, b) of at most
    `max_items` items and total size at most `budget` (a single larger item makes a range alone)."""
    ranges, a = [], 0
    while a < len(ends):
        before = ends[a - 1] if a > 0 else 0
        b = int(np.searchsorted(ends, before + budget, side="right"))
        b = min(max(b, a + 1), a + max_items)
        ranges.append((a, b))
        a = b
    return ranges
