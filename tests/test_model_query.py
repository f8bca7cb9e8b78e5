"""Neighbour query: the grid index equals the brute-force reference, exactly; so does the CPU k-d tree
index, up to the choice among equally distant neighbours."""

from __future__ import annotations

import math

import pytest
import torch

from npva.model.query import KDTreeIndex, NeighbourIndex, build_neighbour_index, knn_radius_bruteforce

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cloud(seed: int, num_points: int, num_queries: int, lattice: bool):
    """Random points in a 20 mm cube and queries around it; on a 0.5 mm lattice when `lattice`
    (many equal distances), with a block of duplicated points."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 3, generator=g) * 20
    queries = torch.rand(num_queries, 3, generator=g) * 28 - 4  # some beyond every point
    if lattice:
        points, queries = torch.round(points * 2) / 2, torch.round(queries * 2) / 2
    points[: num_points // 10] = points[num_points // 10 : 2 * (num_points // 10)]
    return points, queries


@pytest.mark.parametrize("lattice", [False, True])
@pytest.mark.parametrize("cell_fraction, budget", [(1.0, 3000), (0.5, 3000), (0.34, 20000)])
def test_grid_query_equals_bruteforce(lattice, cell_fraction, budget):
    points, queries = _cloud(1 + int(lattice), 2000, 600, lattice)
    # A small candidate budget forces many query chunks and row blocks.
    index = NeighbourIndex(points, 4.0, 8, cell_fraction=cell_fraction, max_candidates=budget)
    idx, dist = index.query(queries)
    ref_idx, ref_dist = knn_radius_bruteforce(points, queries, 8, 4.0)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)
    assert (idx == -1).any() and (idx[:, 0] == -1).any()  # partly filled rows and empty rows occur


def test_neighbours_sorted_by_distance_then_index():
    points = torch.tensor(
        [[1.0, 0, 0], [0, 1, 0], [0, 0, 0.5], [-1, 0, 0], [0, 0, 0.5], [3, 0, 0], [0, 0, -1]]
    )
    index = NeighbourIndex(points, 4.0, 5)
    idx, dist = index.query(torch.zeros(1, 3))
    assert idx.tolist() == [[2, 4, 0, 1, 3]]  # duplicates 2 and 4 first; then ties by index
    assert dist.tolist() == [[0.5, 0.5, 1.0, 1.0, 1.0]]


def test_radius_is_inclusive():
    # Integer coordinates: the squared distances 16 and 17 are exact in float32.
    points = torch.tensor([[4.0, 0, 0], [0, -4, 0], [4, 1, 0], [0, 0, 4.0001]])
    for cell_fraction in (1.0, 0.5):
        idx, dist = NeighbourIndex(points, 4.0, 4, cell_fraction).query(torch.zeros(1, 3))
        assert idx.tolist() == [[0, 1, -1, -1]]
        assert dist[0, :2].tolist() == [4.0, 4.0] and math.isinf(dist[0, 2])


def test_queries_without_neighbours_and_edge_cases():
    points = torch.rand(50, 3) * 10
    index = NeighbourIndex(points, 2.0, 3)
    far = torch.tensor([[1e6, 0, 0], [-500, -500, -500], [5, 5, 30]])
    idx, dist = index.query(far)
    assert (idx == -1).all() and torch.isinf(dist).all()
    # More neighbours asked than points exist.
    idx, _ = NeighbourIndex(points[:2], 100.0, 4).query(torch.zeros(1, 3))
    assert sorted(idx[0, :2].tolist()) == [0, 1] and idx[0, 2:].tolist() == [-1, -1]
    # No points, no queries.
    idx, dist = NeighbourIndex(torch.zeros(0, 3), 2.0, 3).query(far)
    assert idx.shape == (3, 3) and (idx == -1).all()
    assert index.query(torch.zeros(0, 3))[0].shape == (0, 3)


def test_index_is_reused_and_deterministic():
    points, queries = _cloud(5, 1500, 300, lattice=True)
    index = NeighbourIndex(points, 3.0, 6, max_candidates=2000)
    first = index.query(queries)
    second = index.query(queries.flip(0))
    assert torch.equal(first[0], second[0].flip(0)) and torch.equal(first[1], second[1].flip(0))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        NeighbourIndex(torch.zeros(4, 2), 1.0, 2)
    with pytest.raises(ValueError):
        NeighbourIndex(torch.zeros(4, 3), 1.0, 2).query(torch.zeros(4))


def test_kdtree_query_equals_bruteforce():
    g = torch.Generator().manual_seed(3)
    points, queries = torch.rand(2000, 3, generator=g) * 20, torch.rand(600, 3, generator=g) * 28 - 4
    idx, dist = KDTreeIndex(points, 4.0, 8).query(queries)
    ref_idx, ref_dist = knn_radius_bruteforce(points, queries, 8, 4.0)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)
    assert (idx == -1).any() and (idx[:, 0] == -1).any()


@pytest.mark.parametrize("lattice", [False, True])
def test_kdtree_query_with_ties_keeps_the_nearest_distances(lattice):
    points, queries = _cloud(4, 2000, 600, lattice)  # duplicated points, and many ties on the lattice
    idx, dist = KDTreeIndex(points, 4.0, 8).query(queries)
    ref_idx, ref_dist = knn_radius_bruteforce(points, queries, 8, 4.0)
    assert torch.equal(dist, ref_dist)  # the K nearest distances are unique even where points tie
    hit = idx >= 0
    assert torch.equal(hit, ref_idx >= 0)
    recomputed = (points[idx[hit]] - queries.expand(8, -1, -1).transpose(0, 1)[hit]).norm(dim=1)
    assert torch.allclose(recomputed, dist[hit], atol=1e-5)
    # Rows whose last neighbour is not tied with a farther candidate hold the same neighbours.
    assert (idx == ref_idx).all(1).float().mean() > 0.5


def test_kdtree_edge_cases_and_radius_inclusive():
    points = torch.tensor([[4.0, 0, 0], [0, -4, 0], [4, 1, 0], [0, 0, 4.0001]])
    idx, dist = KDTreeIndex(points, 4.0, 4).query(torch.zeros(1, 3))
    assert idx.tolist() == [[0, 1, -1, -1]] and dist[0, :2].tolist() == [4.0, 4.0]
    idx, _ = KDTreeIndex(points[:2], 100.0, 4).query(torch.zeros(1, 3))
    assert idx[0].tolist() == [0, 1, -1, -1]
    idx, dist = KDTreeIndex(torch.zeros(0, 3), 2.0, 3).query(torch.ones(2, 3))
    assert (idx == -1).all() and torch.isinf(dist).all()


def test_backend_choice():
    points = torch.rand(20, 3)
    assert isinstance(build_neighbour_index(points, 1.0, 4), KDTreeIndex)  # auto on CPU
    assert isinstance(build_neighbour_index(points, 1.0, 4, "grid"), NeighbourIndex)
    with pytest.raises(ValueError, match="backend"):
        build_neighbour_index(points, 1.0, 4, "octree")


@pytest.mark.gpu
@needs_cuda
def test_grid_query_on_cuda_equals_bruteforce():
    points, queries = _cloud(7, 20000, 5000, lattice=True)
    points, queries = points.cuda(), queries.cuda()
    index = NeighbourIndex(points, 4.0, 8, max_candidates=1 << 20)
    idx, dist = index.query(queries)
    ref_idx, ref_dist = knn_radius_bruteforce(points, queries, 8, 4.0)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)
