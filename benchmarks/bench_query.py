"""Time the neighbour index (build + query) at the density of a full-scale avatar.

The points lie on a sphere whose radius gives about 500 points within 4 mm of a surface point
(1M points: radius 89 mm, head-sized), jittered by +-0.5 mm along the normal. The queries are
shading-point-like: on the sphere with a radial offset in [-4, 4] mm, in random order.

    python benchmarks/bench_query.py --points 1000000 --queries 100000 400000 1800000 --device cuda
    python benchmarks/bench_query.py --points 200000 --queries 20000 --check
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from npva.model.query import NeighbourIndex, knn_radius_bruteforce
from npva.model.sampling import OccupancyGrid


def sphere_radius(num_points: int, radius: float, neighbours: float) -> float:
    """Sphere radius R with `neighbours` points expected within `radius` of a surface point."""
    return math.sqrt(num_points * radius * radius / (4.0 * neighbours))


def on_sphere(count: int, sphere: float, spread: float, generator: torch.Generator) -> torch.Tensor:
    """(count, 3) uniform directions scaled to sphere + U(-spread, spread)."""
    dirs = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=1)
    offset = (torch.rand(count, 1, generator=generator) * 2 - 1) * spread
    return dirs * (sphere + offset)


def timed(fn, device: torch.device):
    """(result, seconds) of fn(), waiting for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def check_against_bruteforce(points, queries, index, count: int) -> None:
    """Compare `count` queries with the brute-force reference (in small batches)."""
    for lo in range(0, count, 16):
        q = queries[lo : min(lo + 16, count)]
        idx, dist = index.query(q)
        ref_idx, ref_dist = knn_radius_bruteforce(points, q, index.k, index.radius)
        if not (torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)):
            raise SystemExit(f"mismatch with the brute-force reference in queries {lo}..{lo + 16}")
    print(f"check: {count} queries equal the brute-force reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, nargs="+", default=[100_000, 400_000, 1_800_000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--neighbours", type=float, default=500.0, help="points within the radius")
    parser.add_argument("--cell-fraction", type=float, default=0.5)
    parser.add_argument("--max-candidates", type=int, default=None, help="default: by device")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs (after one warm-up)")
    parser.add_argument("--check", action="store_true", help="compare 256 queries with brute force")
    args = parser.parse_args()

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    sphere = sphere_radius(args.points, args.radius, args.neighbours)
    points = on_sphere(args.points, sphere, 0.5, g).to(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{args.points} points on a sphere of radius {sphere:.1f} mm, radius {args.radius} mm, "
        f"k {args.k}, cell {args.cell_fraction} r"
    )

    def build():
        return NeighbourIndex(points, args.radius, args.k, args.cell_fraction, args.max_candidates)

    build()  # warm-up
    index, build_s = timed(build, device)
    occupancy, occ_s = timed(lambda: OccupancyGrid(points, 1.0, 3), device)
    print(
        f"build: index {build_s * 1e3:.1f} ms ({index.cell_keys.shape[0]} cells, "
        f"max_candidates {index.max_candidates}), "
        f"occupancy grid {occ_s * 1e3:.1f} ms ({occupancy.num_voxels} voxels)"
    )

    for count in args.queries:
        queries = on_sphere(count, sphere, args.radius, g).to(device)
        index.query(queries[: min(count, 10_000)])  # warm-up
        times = []
        for _ in range(args.repeat):
            (idx, _), seconds = timed(lambda q=queries: index.query(q), device)
            times.append(seconds)
        best = min(times)
        found = (idx >= 0).sum(1).float()
        print(
            f"query {count:>9d}: {best * 1e3:9.1f} ms  {count / best / 1e6:6.2f} M queries/s  "
            f"mean neighbours {found.mean():.2f}, full rows {(found == args.k).float().mean():.3f}"
        )
    if args.check:
        check_against_bruteforce(points, queries, index, min(256, queries.shape[0]))


if __name__ == "__main__":
    main()
