"""The Triton fast paths (npva.model.fast) against their plain PyTorch references, on random inputs.

The kernels run on CUDA (tests marked gpu); the rule that picks them is tested everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from npva.model.blend import blend_neighbours_torch
from npva.model.fast import kernels_enabled, triton_importable
from npva.model.query import NeighbourIndex, knn_radius_bruteforce

needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_importable()), reason="needs CUDA and triton"
)


def test_kernel_choice():
    assert not kernels_enabled("torch", "cuda")
    assert not kernels_enabled("auto", "cpu")
    with pytest.raises(ValueError, match="render.kernels"):
        kernels_enabled("fast", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            kernels_enabled("triton", "cpu")


def _cloud(seed: int, num_points: int, num_queries: int, lattice: bool, device: str):
    """Points in a 20 mm cube and queries around and beyond it; on a 0.5 mm lattice when `lattice`
    (many equal distances), with a tenth of the points duplicated."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 3, generator=g) * 20
    queries = torch.rand(num_queries, 3, generator=g) * 28 - 4
    if lattice:
        points, queries = torch.round(points * 2) / 2, torch.round(queries * 2) / 2
    points[: num_points // 10] = points[num_points // 10 : 2 * (num_points // 10)]
    return points.to(device), queries.to(device)


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("lattice", [False, True])
@pytest.mark.parametrize("k, cell_fraction", [(8, 0.5), (8, 1.0), (5, 0.34), (1, 0.5), (16, 0.5)])
def test_triton_query_equals_the_grid_and_bruteforce(lattice, k, cell_fraction):
    from npva.model.fast.query import TritonNeighbourIndex

    points, queries = _cloud(7 + k, 20000, 6000, lattice, "cuda")
    queries = torch.cat((queries, torch.tensor([[1e9, 0, 0], [-1e9, 5, 5]], device="cuda")))
    fast = TritonNeighbourIndex(points, 4.0, k, cell_fraction=cell_fraction)
    assert fast.cell_start is not None  # the kernel path, not the fallback
    idx, dist = fast.query(queries)
    ref_idx, ref_dist = NeighbourIndex(points, 4.0, k, cell_fraction=cell_fraction).query(queries)
    assert torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)
    brute_idx, brute_dist = knn_radius_bruteforce(points[:4000], queries[:500], k, 4.0)
    small_idx, small_dist = TritonNeighbourIndex(points[:4000], 4.0, k, cell_fraction).query(queries[:500])
    assert torch.equal(small_idx, brute_idx) and torch.equal(small_dist, brute_dist)
    assert (idx == -1).any() and (idx[:, 0] == -1).any() and (idx[:, -1] >= 0).any()


def _blend_inputs(seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    num_points, num_rows, k, channels = 5000, 3000, 8, 35
    positions = torch.rand(num_points, 3, generator=g) * 30
    values = torch.randn(num_points, channels, generator=g)
    samples = torch.rand(num_rows, 3, generator=g) * 30
    idx = torch.randint(0, num_points, (num_rows, k), generator=g)
    idx[torch.rand(num_rows, k, generator=g) < 0.3] = -1
    idx[:50] = -1  # rows without a neighbour
    idx[50:60, 0] = 7
    positions[7] = samples[55]  # a neighbour at distance 0: the clamped distance
    idx = torch.sort(idx, 1, descending=True).values  # valid slots first, as the query returns them
    grads = torch.randn(num_rows, channels, generator=g), torch.randn(num_rows, 3, generator=g)
    moved = [t.to(device) for t in (positions, values, samples, idx, *grads)]
    moved[0].requires_grad_(True)
    moved[1].requires_grad_(True)
    return moved


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triton_blend_equals_the_reference_values_and_gradients(seed):
    from npva.model.fast.blend import blend_neighbours_triton

    positions, values, samples, idx, grad_values, grad_offset = _blend_inputs(seed, "cuda")
    results = []
    for blend in (blend_neighbours_torch, blend_neighbours_triton):
        mean_values, mean_offset = blend(positions, values, samples, idx, 1e-6)
        loss = (mean_values * grad_values).sum() + (mean_offset * grad_offset).sum()
        results.append((mean_values, mean_offset, *torch.autograd.grad(loss, (positions, values))))
    for name, ref, fast in zip(("values", "offset", "d positions", "d values"), *results, strict=True):
        assert torch.isfinite(fast).all(), name
        error = (fast - ref).norm() / ref.norm()
        assert error < 1e-5, f"{name}: relative error {error:.2e}"
    assert (results[1][0][:50] == 0).all()  # rows without a neighbour give zeros


@pytest.mark.gpu
@needs_kernels
def test_triton_render_matches_the_reference_render_and_its_gradients():
    from test_model_render import RENDER, _avatar, _camera, _drive

    results = {}
    for kernels in ("torch", "triton"):
        avatar = _avatar(replace(RENDER, kernels=kernels)).cuda().train()
        generator = torch.Generator("cuda").manual_seed(5)
        out = avatar.render(_drive().to("cuda"), _camera(48, 64, 360.0), generator=generator)
        (out.rays.colour.sum() + 1e-3 * out.rays.depth.sum()).backward()
        grads = torch.cat([p.grad.reshape(-1) for p in avatar.parameters()])
        results[kernels] = (out, grads)
    (ref, ref_grads), (fast, fast_grads) = results["torch"], results["triton"]
    assert torch.equal(ref.rays.num_samples, fast.rays.num_samples)
    assert (ref.rays.num_samples > 0).float().mean() > 0.2
    torch.testing.assert_close(fast.rays.colour, ref.rays.colour, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.rays.depth, ref.rays.depth, atol=1e-3, rtol=1e-5)
    assert (fast_grads - ref_grads).norm() / ref_grads.norm() < 1e-4


INTERPRETED_CHECK = """
import torch
from npva.model.blend import blend_neighbours_torch
from npva.model.fast.blend import blend_neighbours_triton
from npva.model.fast.query import TritonNeighbourIndex
from npva.model.query import knn_radius_bruteforce

g = torch.Generator().manual_seed(0)
points = torch.round(torch.rand(300, 3, generator=g) * 16) / 2  # a lattice: many equal distances
queries = torch.round(torch.rand(40, 3, generator=g) * 20 - 1) / 2
idx, dist = TritonNeighbourIndex(points, 3.0, 8).query(queries)
ref_idx, ref_dist = knn_radius_bruteforce(points, queries, 8, 3.0)
assert torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist), "query"
positions = points.clone().requires_grad_(True)
values = torch.randn(300, 5, generator=g, requires_grad=True)
grads = []
for blend in (blend_neighbours_torch, blend_neighbours_triton):
    mean_values, mean_offset = blend(positions, values, queries, idx, 1e-6)
    loss = (mean_values * torch.arange(5.0)).sum() + (mean_offset ** 2).sum()
    grads.append([mean_values, mean_offset, *torch.autograd.grad(loss, (positions, values))])
for ref, fast in zip(*grads):
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-4), "blend"
"""


@pytest.mark.slow
@pytest.mark.skipif(not triton_importable(), reason="needs the triton package")
def test_kernels_in_the_triton_interpreter_equal_the_references():
    # The same kernels on the CPU through Triton's interpreter: how they are checked without a GPU.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
