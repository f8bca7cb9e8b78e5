"""Candidate reads of the Triton neighbour query, counted on the CPU (no GPU, no Triton needed).

    python benchmarks/count_query_tiles.py [--points 1000000] [--queries 8192] [--spread 3]
        [--cell-fraction 0.5 0.34]

Follows `npva.model.fast.query._knn_kernel` step by step in PyTorch: the queries in grid-cell order, in
programs of BLOCK_Q, each program visiting the searched cells nearest first and reading a cell in tiles
of KP candidates for as long as the fullest cell among its queries needs. It counts the tiles read per
program twice: searching every cell within the radius, and skipping the cells beyond a query's K-th
nearest once it holds K neighbours (what the kernel does), and checks that both find the same
neighbours. The points are those of `bench_query.py` (a head-sized sphere, about 500 points within
4 mm of a surface point); the queries lie within +-spread mm of the surface, as shading points do.
"""

from __future__ import annotations

import argparse
import math

import torch
from bench_query import on_sphere, sphere_radius

from npva.model.query import NeighbourIndex, _linear_key

# The kernel's constants (npva.model.fast.query, which needs Triton): queries per program, the margin
# of its box tests.
BLOCK_Q = 64
BOX_MARGIN = 1e-3


def tiles_per_program(index: NeighbourIndex, queries: torch.Tensor, skip: bool) -> tuple[float, torch.Tensor]:
    """Mean tiles read per program of the kernel over queries (Q, 3), and the (Q, K) squared distances
    of the neighbours found (in grid-cell order)."""
    block, kp = BLOCK_Q, 1 << max(0, (index.k - 1).bit_length())
    cells = torch.floor((queries - index.origin) / index.cell).long()
    order = torch.argsort(_linear_key(cells.clamp_min(0), index.dims))
    queries, cells = queries[order], cells[order]
    offsets = index.offsets[torch.argsort((index.offsets.float() ** 2).sum(1), stable=True)]
    box_radius_sq = (index.radius * (1 + BOX_MARGIN)) ** 2
    best = torch.full((queries.shape[0], kp), math.inf)
    tiles = 0
    for offset in offsets:
        cell = cells + offset
        inside = ((cell >= 0) & (cell < index.dims)).all(1)
        low = index.origin + cell.float() * index.cell
        gap = torch.clamp(torch.maximum(low - queries, queries - (low + index.cell)), min=0.0)
        limit = torch.full((queries.shape[0],), box_radius_sq)
        if skip:
            reach = (1 + BOX_MARGIN) * best[:, -1].sqrt() + BOX_MARGIN * index.cell
            limit = torch.where(torch.isfinite(best[:, -1]), torch.minimum(reach**2, limit), limit)
        key = _linear_key(cell.clamp_min(0), index.dims)
        slot = torch.searchsorted(index.cell_keys, key).clamp_max(len(index.cell_keys) - 1)
        found = inside & ((gap**2).sum(1) <= limit) & (index.cell_keys[slot] == key)
        count = torch.where(found, index.cell_counts[slot], 0)
        fullest = torch.nn.functional.pad(count, (0, -count.shape[0] % block)).view(-1, block).max(1).values
        tiles += int(((fullest + kp - 1) // kp).sum())
        if int(count.max()) > 0:
            slots = torch.arange(int(count.max()))
            real = slots[None] < count[:, None]
            rows = torch.where(real, index.cell_starts[slot][:, None] + slots[None], 0)
            d2 = ((index.sorted_points[rows] - queries[:, None]) ** 2).sum(-1)
            d2 = torch.where(real & (d2 <= index.radius**2), d2, math.inf)
            best = torch.topk(torch.cat((best, d2), 1), kp, largest=False).values
    return tiles / math.ceil(queries.shape[0] / block), best[:, : index.k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=8192)
    parser.add_argument("--spread", type=float, default=3.0, help="queries within +- this of the surface, mm")
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--cell-fraction", type=float, nargs="+", default=[0.5])
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    sphere = sphere_radius(args.points, args.radius, 500.0)
    points = on_sphere(args.points, sphere, 0.5, g)
    queries = on_sphere(args.queries, sphere, args.spread, g)
    print(
        f"{args.points} points, {args.queries} queries within +-{args.spread} mm, "
        f"radius {args.radius} mm, k {args.k}"
    )
    for fraction in args.cell_fraction:
        index = NeighbourIndex(points, args.radius, args.k, cell_fraction=fraction)
        every, found = tiles_per_program(index, queries, skip=False)
        skipping, found_skipping = tiles_per_program(index, queries, skip=True)
        if not torch.equal(found, found_skipping):
            raise SystemExit("skipping cells changed the neighbours found")
        print(
            f"cell {fraction} r: tiles per program, every cell within the radius {every:.0f}, "
            f"skipping beyond the K-th nearest {skipping:.0f} ({every / skipping:.1f}x fewer)"
        )


if __name__ == "__main__":
    main()
