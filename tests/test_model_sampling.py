"""Depth-guided sampling: windows, placement along the ray, occupancy and the first-SR rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npva.config import SamplingConfig
from npva.geometry.camera import Camera, pixel_rays, world_to_camera
from npva.model.sampling import (
    OccupancyGrid,
    candidate_positions,
    depth_guided_candidates,
    optical_axis,
    select_shading_points,
)

CFG = SamplingConfig(probe_offset_px=2)


def _candidates(guide, pixels, cfg=CFG, **kwargs):
    return depth_guided_candidates(guide, torch.tensor(pixels), cfg, **kwargs)


def _step_guide(left: float, right: float) -> torch.Tensor:
    """(10, 16) guide depth: `left` for x < 8, `right` for x >= 8."""
    guide = torch.full((10, 16), left)
    guide[:, 8:] = right
    return guide


def test_single_window_of_equal_bins():
    z, valid = _candidates(torch.full((10, 16), 500.0), [[3, 4]])
    assert valid.all()
    assert z[0].tolist() == [481.0 + 2 * i for i in range(20)]


def test_two_windows_across_a_discontinuity():
    z, valid = _candidates(_step_guide(500.0, 560.0), [[8, 5], [2, 5]])
    assert valid.all()
    near = [482.0 + 4 * i for i in range(10)]
    far = [542.0 + 4 * i for i in range(10)]
    assert z[0].tolist() == near + far
    assert z[1].tolist() == [481.0 + 2 * i for i in range(20)]  # no discontinuity in its probes


def test_discontinuity_threshold_is_strict_and_overlapping_windows_sort():
    z, _ = _candidates(_step_guide(500.0, 530.0), [[8, 5]])  # 30 mm: one window around 515
    assert z[0].tolist() == [496.0 + 2 * i for i in range(20)]
    z, _ = _candidates(_step_guide(500.0, 535.0), [[8, 5]])  # windows [480, 520] and [515, 555]
    expected = sorted([482.0 + 4 * i for i in range(10)] + [517.0 + 4 * i for i in range(10)])
    assert z[0].tolist() == expected


def test_background_probes_are_ignored_for_the_near_depth():
    guide = torch.full((10, 16), 500.0)
    guide[:, :8] = 0.0
    guide[:3] = 5.0  # below 10 mm: background as well
    z, valid = _candidates(guide, [[8, 3], [3, 7], [3, 1]])
    assert z[0].tolist() == [481.0 + 2 * i for i in range(20)]  # max 500, min ignores 0 and 5
    assert not valid[1].any() and not valid[2].any()  # only background in the probes
    assert (z[1] == 0).all()


def test_centre_guide_starts_only_the_rays_of_surface_pixels():
    guide = torch.zeros(10, 16)
    guide[:, 8:] = 500.0  # surface for x >= 8
    # x 6: background, its probe at x 8 on the surface; x 8 and 12: on it; x 3: no probe on it
    pixels = [[6, 5], [8, 5], [12, 5], [3, 5]]
    z, valid = _candidates(guide, pixels, SamplingConfig(probe_offset_px=2))
    centre_z, centre_valid = _candidates(guide, pixels, SamplingConfig(probe_offset_px=2, centre_guide=True))
    window = [481.0 + 2 * i for i in range(20)]
    assert valid[0].all() and z[0].tolist() == window
    assert not centre_valid[0].any() and (centre_z[0] == 0).all()
    assert valid[1:3].all() and z[1:3].tolist() == [window, window]
    assert torch.equal(centre_z[1:], z[1:]) and torch.equal(centre_valid[1:], valid[1:])
    assert not valid[3].any()


def test_probes_are_clipped_to_the_image():
    guide = torch.zeros(40, 40)
    guide[0, 0] = 500.0
    guide[39, 39] = 600.0
    cfg = SamplingConfig(probe_offset_px=16)
    z, valid = _candidates(guide, [[10, 10], [20, 20], [39, 30], [30, 20]], cfg)
    assert valid[0].all() and z[0].tolist() == [481.0 + 2 * i for i in range(20)]
    assert not valid[1].any()  # probes at 4, 20, 36: none hits
    assert valid[2].all() and z[2, 0].item() == 581.0  # probe (55, 46) clipped to (39, 39)
    assert not valid[3].any()


def test_candidates_behind_the_camera_are_invalid():
    z, valid = _candidates(torch.full((10, 16), 15.0), [[3, 3]])  # window [-5, 35]
    assert valid[0].tolist() == [False] * 3 + [True] * 17
    assert z[0, :3].tolist() == [0.0] * 3 and z[0, 3].item() == 2.0


def test_jitter_only_in_training_and_bins_stay_ordered():
    guide = torch.full((10, 16), 500.0)
    pixels = [[3, 4]] * 50
    eval_z, _ = _candidates(guide, pixels, generator=torch.Generator().manual_seed(0))
    assert (eval_z == eval_z[0]).all()
    train_z, _ = _candidates(guide, pixels, training=True, generator=torch.Generator().manual_seed(0))
    again, _ = _candidates(guide, pixels, training=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(train_z, again)
    assert not torch.equal(train_z, eval_z)
    # Recover the bin edges from the midpoints: the bins tile [480, 520] and their widths differ by
    # at most the jitter factor (1 + 0.15) / (1 - 0.15).
    edges = [torch.full((50,), 480.0, dtype=torch.float64)]
    for i in range(20):
        edges.append(2 * train_z[:, i].double() - edges[-1])
    widths = torch.diff(torch.stack(edges, 1), dim=1)
    assert torch.allclose(edges[-1], torch.full((50,), 520.0, dtype=torch.float64), atol=1e-3)
    assert (widths > 0).all()
    ratio = widths.max(1).values / widths.min(1).values
    assert (ratio <= 1.15 / 0.85 + 1e-3).all() and (ratio > 1.01).all()


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def test_candidate_lies_at_its_camera_depth_on_an_off_axis_ray():
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    camera = Camera("c", K, _rotation_y(0.4), np.array([10.0, -20.0, 300.0]), height=80, width=100)
    pixels = torch.tensor([[0.5, 0.5], [99.5, 10.5]])  # corners: theta about 35 degrees
    origin, dirs = pixel_rays(camera, pixels)
    cand_z = torch.tensor([[500.0, 520.0], [500.0, 520.0]])
    pos = candidate_positions(origin, dirs, cand_z, optical_axis(camera))
    cam = world_to_camera(pos.double(), camera)
    assert torch.allclose(cam[..., 2], cand_z.double(), atol=1e-3)
    along = pos - origin
    distance = along.norm(dim=-1)
    assert torch.allclose(along / distance[..., None], dirs[:, None, :].expand_as(along), atol=1e-5)
    cos_theta = 500.0 / distance[0, 0].item()
    assert cos_theta < 0.85
    # The projection of the candidate is the pixel it was sampled for.
    uv = cam[..., :2] / cam[..., 2:3] @ torch.as_tensor(K[:2, :2]).T + torch.as_tensor(K[:2, 2])
    assert torch.allclose(uv[:, 0], pixels.double(), atol=1e-3)


DENSE_AND_SPARSE = pytest.mark.parametrize("dense_limit", [1 << 27, 0], ids=["dense", "sparse"])


@DENSE_AND_SPARSE
def test_occupancy_keep_rule_by_hand(dense_limit):
    grid = OccupancyGrid(torch.tensor([[0.5, 0.5, 0.5]]), voxel=1.0, reach=3, dense_limit=dense_limit)
    assert (grid.volume is not None) == (dense_limit > 0)
    near = torch.tensor([[3.5, 0, 0], [3.999, 3.999, -2.999], [-2.5, -2.5, 3.5], [0.5, 0.5, 0.5]])
    far = torch.tensor([[4.0, 0, 0], [-3.001, 0, 0], [0, 0, 4.2], [100, 100, 100]])
    assert grid.contains(near).all()
    assert not grid.contains(far).any()
    assert grid.num_voxels == 7**3


@DENSE_AND_SPARSE
@pytest.mark.parametrize(("seed", "reach"), [(3, 2), (4, 2), (5, 0), (6, 1), (7, 3), (8, 5), (9, 7)])
def test_occupancy_equals_its_definition_on_random_points(dense_limit, seed, reach):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(60 if reach > 2 else 300, 3, generator=g) * 30 - seed
    queries = torch.rand(2000, 3, generator=g) * 40 - 5
    grid = OccupancyGrid(points, voxel=1.5, reach=reach, dense_limit=dense_limit)
    vp = torch.floor(points / 1.5).long()
    vq = torch.floor(queries / 1.5).long()
    expected = ((vq[:, None, :] - vp[None]).abs().max(-1).values <= reach).any(1)
    assert torch.equal(grid.contains(queries), expected)
    assert 0 < expected.float().mean() < 1
    assert grid.num_voxels == OccupancyGrid(points, 1.5, reach, dense_limit=0).num_voxels
    assert not OccupancyGrid(torch.zeros(0, 3), 1.0, 3, dense_limit=dense_limit).contains(queries).any()


def test_select_keeps_the_first_near_candidates_in_ray_order():
    # Candidate k of a ray sits at x = 10 k; occupied voxels at x = 0, 20, 30, 40 (reach 0).
    occupancy = OccupancyGrid(
        torch.tensor([[0.5, 0.5, 0.5], [20.5, 0.5, 0.5], [30.5, 0.5, 0.5], [40.5, 0.5, 0.5]]),
        voxel=1.0,
        reach=0,
    )
    xs = torch.arange(5.0) * 10 + 0.5
    cand_pos = torch.stack((xs, torch.full_like(xs, 0.5), torch.full_like(xs, 0.5)), -1)
    cand_pos = cand_pos.expand(3, 5, 3)
    cand_z = (torch.arange(5.0) + 1).expand(3, 5)
    cand_valid = torch.tensor([[True] * 5, [False, True, True, False, True], [False] * 5])
    shading = select_shading_points(cand_z, cand_pos, cand_valid, occupancy, max_samples=3)
    assert shading.valid.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert shading.z.tolist() == [[1.0, 3.0, 4.0], [3.0, 5.0, 5.0], [0.0, 0.0, 0.0]]
    assert shading.positions[0, :, 0].tolist() == [0.5, 20.5, 30.5]
    assert shading.positions[1, 2].tolist() == [0.0, 0.0, 0.0]
    assert shading.counts.tolist() == [3, 2, 0]


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        _candidates(torch.ones(4, 4), [[0, 0]], SamplingConfig(jitter=2.5))
