"""Neural points from a known coarse map, displacement and pose; the rasterized guide depth."""

from __future__ import annotations

import math

import numpy as np
import torch

from npva.geometry.camera import Camera
from npva.geometry.mesh import uv_grid_faces
from npva.model.points import (
    MAX_DENSIFY_SPLITS,
    NeuralPoints,
    build_neural_points,
    coarse_vertices_world,
    densify_points,
    point_texel_mask,
    point_texels,
    rasterize_guide,
    texel_uv,
    upsample_coarse_map,
)


def _pose(angle: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rotation, torch.tensor([5.0, -7.0, 100.0])


def test_upsampling_is_bilinear_between_texel_centres():
    # A 2x2 map with a ramp along x: upsampled x4 its texel centres sit at source coordinates
    # -0.375, -0.125, 0.125, ..., 1.375, clamped to the border texels.
    coarse = torch.zeros(3, 2, 2)
    coarse[0, :, 1] = 8.0
    up = upsample_coarse_map(coarse, 8)
    assert up.shape == (3, 8, 8)
    assert up[0, 0].tolist() == [0.0, 0.0, 1.0, 3.0, 5.0, 7.0, 8.0, 8.0]
    assert (up[0] == up[0, :1]).all() and (up[1:] == 0).all()


def test_points_of_a_known_map_displacement_and_pose():
    coarse = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2)
    displacement = torch.randn(3, 4, 4)
    features = torch.randn(5, 4, 4)
    rotation, translation = _pose()
    points = build_neural_points(coarse, displacement, features, rotation, translation)
    assert len(points) == 16 and points.features.shape == (16, 5)
    # Texel (i, j) = point i * 4 + j, at R (up(i, j) + d(i, j)) + t.
    up = upsample_coarse_map(coarse, 4)
    i, j = 2, 1
    face = up[:, i, j] + displacement[:, i, j]
    expected = rotation @ face + translation
    assert torch.allclose(points.positions[i * 4 + j], expected, atol=1e-5)
    assert torch.equal(points.features[i * 4 + j], features[:, i, j])
    assert points.texel_index.tolist() == list(range(16))
    # Its texture coordinates: the texel centre, u = (j + 0.5) / 4, v = 1 - (i + 0.5) / 4 (row 0 is v = 1).
    assert points.uv[i * 4 + j].tolist() == [0.375, 0.375]


def test_texel_mask_keeps_points_inside_the_islands():
    coverage = torch.tensor([[True, False], [False, True]])
    mask = point_texel_mask(coverage, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    features = torch.arange(16.0).reshape(1, 4, 4)
    rotation, translation = _pose()
    texels = point_texels(coverage, 4)
    assert texels.tolist() == [0, 1, 4, 5, 10, 11, 14, 15]
    points = build_neural_points(
        torch.zeros(3, 2, 2), torch.zeros(3, 4, 4), features, rotation, translation, texels
    )
    assert points.texel_index.tolist() == [0, 1, 4, 5, 10, 11, 14, 15]
    assert torch.equal(points.uv, texel_uv(4)[points.texel_index])
    assert points.features[:, 0].tolist() == [0.0, 1.0, 4.0, 5.0, 10.0, 11.0, 14.0, 15.0]
    assert torch.allclose(points.positions, translation.expand(8, 3))


def test_guide_depth_of_a_plane_and_its_gradient():
    # A plane of texels at world z = 400 in front of a camera at the origin looking along +z.
    size = 6
    xs = torch.linspace(-30.0, 30.0, size)
    gy, gx = torch.meshgrid(xs, xs, indexing="ij")
    coarse = torch.stack((gx, gy, torch.zeros_like(gx))).requires_grad_()
    rotation, translation = torch.eye(3), torch.tensor([0.0, 0.0, 400.0])
    vertices = coarse_vertices_world(coarse, rotation, translation)
    assert torch.allclose(vertices[size + 2], torch.tensor([xs[2], xs[1], 400.0]))
    faces = uv_grid_faces(torch.ones(size, size, dtype=torch.bool))
    K = np.array([[200.0, 0, 20], [0, 200, 15], [0, 0, 1]])
    camera = Camera("c", K, np.eye(3), np.zeros(3), height=30, width=40)
    depth = rasterize_guide(vertices, faces, camera)
    assert depth.shape == (30, 40)
    covered = depth > 0
    # The plane spans +-30 mm at 400 mm: +-15 px around the centre (20, 15).
    assert covered[15, 20] and covered[2, 8] and not covered[15, 37] and not covered[0, 0]
    assert torch.allclose(depth[covered], torch.tensor(400.0))
    depth.sum().backward()
    assert coarse.grad[2].abs().sum() > 0  # the depth moves with the coarse map's z


def _stretched_map(size: int = 6) -> torch.Tensor:
    """(3, size, size) a plane whose texels lie 1 mm apart along the rows, and 1 mm apart down the
    columns except between rows 2 and 3, which lie 7 mm apart (a stretch of the UV layout)."""
    steps = torch.ones(size - 1)
    steps[2] = 7.0
    ys = torch.cat((torch.zeros(1), torch.cumsum(steps, 0)))
    gy, gx = torch.meshgrid(ys, torch.arange(size, dtype=torch.float32), indexing="ij")
    return torch.stack((gx, gy, torch.zeros_like(gx)))


def _points_of(face: torch.Tensor, features: torch.Tensor, mask: torch.Tensor | None = None) -> NeuralPoints:
    size = face.shape[-1]
    index = torch.arange(size * size)
    if mask is not None:
        index = index[mask.reshape(-1)]
    positions, feats = face.reshape(3, -1).T, features.reshape(features.shape[0], -1).T
    return NeuralPoints(positions[index], feats[index], index, texel_uv(size)[index])


def test_densify_fills_only_the_stretched_cells_to_the_spacing():
    face = _stretched_map()
    features = torch.randn(4, 6, 6)
    points = _points_of(face, features)
    dense = densify_points(points, 6, spacing=2.0)
    # Only the 5 cells between rows 2 and 3 are longer than 2 mm: each gets 1 x ceil(7 / 2) = 4 points
    # at the centres of its split, bilinear in the corners' features.
    assert len(dense) == 36 + 5 * 4
    assert torch.equal(dense.positions[:36], points.positions)
    assert torch.equal(dense.features[:36], points.features)
    extra = dense.positions[36:]
    assert torch.allclose(extra[:4, 1], 2.0 + 7.0 * (torch.arange(4) + 0.5) / 4)
    assert torch.allclose(extra[:, 0], (torch.arange(5) + 0.5).repeat_interleave(4))
    down = (extra[:4, 1] - 2.0) / 7.0
    left, right = features[:, 2, 0], features[:, 3, 0]  # corners (2, 0) and (3, 0)
    left1, right1 = features[:, 2, 1], features[:, 3, 1]
    expected = 0.5 * ((1 - down)[:, None] * (left + left1) + down[:, None] * (right + right1))
    torch.testing.assert_close(dense.features[36:40], expected)
    # UVs likewise: texel centres of rows 2 and 3 and columns 0 and 1 of the 6 x 6 map.
    u = torch.full((4,), 1 / 6)
    v = 1 - (2.5 + down) / 6
    torch.testing.assert_close(dense.uv[36:40], torch.stack((u, v), -1))
    assert dense.texel_index[36:].tolist() == [2 * 6 + j for j in range(5) for _ in range(4)]
    # Every spot of the stretched band now lies within spacing / sqrt(2) of a point.
    spots = torch.stack((torch.rand(2000) * 5, 2.0 + torch.rand(2000) * 7, torch.zeros(2000)), -1)
    nearest = torch.cdist(spots, dense.positions).min(1).values
    assert nearest.max() <= 2.0 / math.sqrt(2) + 1e-5
    assert torch.cdist(spots, points.positions).min(1).values.max() > 3.0


def test_densify_skips_cells_with_a_missing_texel_and_passes_gradients():
    face = _stretched_map()
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[3, 0] = False  # the first stretched cell loses a corner
    features = torch.randn(2, 6, 6, requires_grad=True)
    positions = face.clone().requires_grad_()
    points = _points_of(positions, features, mask)
    dense = densify_points(points, 6, spacing=2.0)
    assert len(dense) == 35 + 4 * 4
    (dense.positions[35:].sum() + dense.features[35:].pow(2).sum()).backward()
    assert positions.grad[:, 2:4, 1:].abs().sum() > 0 and features.grad[:, 2:4, 1:].abs().sum() > 0
    assert (positions.grad[:, :2] == 0).all()  # only the stretched cells' corners feed the extra points
    unchanged = densify_points(points, 6, spacing=8.0)
    assert len(unchanged) == len(points)


def test_densify_caps_the_points_of_a_torn_cell():
    face = _stretched_map()
    face[2, 3, 3] = 1e5  # one point thrown 100 m away: its four cells are torn open
    points = _points_of(face, torch.randn(2, 6, 6))
    dense = densify_points(points, 6, spacing=2.0)
    torn = 4 * MAX_DENSIFY_SPLITS**2
    assert len(points) + torn <= len(dense) <= len(points) + torn + 5 * 4
