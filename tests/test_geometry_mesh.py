"""Mesh tests: normals, face-frame transforms, UV position maps, the UV grid mesh, the sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npva.geometry.mesh import (
    to_face_frame,
    to_world,
    uv_grid_faces,
    uv_position_map,
    uv_sphere,
    vertex_normals,
)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` about the unit `axis` (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_sphere_normals_point_outward_radially():
    mesh = uv_sphere(24, 48, 30.0)
    verts = torch.as_tensor(mesh.verts)
    normals = vertex_normals(verts, torch.as_tensor(mesh.faces))
    radial = verts / verts.norm(dim=1, keepdim=True)
    assert torch.allclose(normals.norm(dim=1), torch.ones(len(verts)))
    assert (normals * radial).sum(1).min() > 0.998


def test_normals_are_area_weighted_and_batched():
    # Vertex 0 is shared by a face of area 2 in the xy plane and a face of area 0.5 in the xz plane.
    verts = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, -1], [1, 0, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])
    expected = torch.nn.functional.normalize(torch.tensor([0.0, 2 * 0.5, 2 * 2]), dim=0)
    normals = vertex_normals(verts, faces)
    assert torch.allclose(normals[0], expected)
    assert torch.allclose(normals[2], torch.tensor([0.0, 0.0, 1.0]))
    batch = vertex_normals(torch.stack((verts, 2 * verts)), faces)
    assert torch.allclose(batch, torch.stack((normals, normals)), atol=1e-6)


def test_normals_are_differentiable():
    mesh = uv_sphere(3, 4)
    verts = torch.as_tensor(mesh.verts, dtype=torch.float64)
    verts = verts + 0.1 * torch.rand(verts.shape, generator=torch.Generator().manual_seed(0))
    faces = torch.as_tensor(mesh.faces)
    torch.autograd.gradcheck(lambda v: vertex_normals(v, faces), (verts.requires_grad_(),))


def test_face_frame_round_trip_numpy_and_torch():
    R = rotation(np.array([0.0, 0.6, 0.8]), 0.7)
    t = np.array([10.0, -20.0, 1000.0])
    face = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32) * 100
    world = to_world(face, R, t)
    assert world.dtype == np.float32
    assert np.allclose(world, face @ R.T + t, atol=1e-3)
    assert np.allclose(to_face_frame(world, R, t), face, atol=1e-3)
    world_t = to_world(torch.as_tensor(face, dtype=torch.float64), torch.as_tensor(R), t)
    assert isinstance(world_t, torch.Tensor) and world_t.dtype == torch.float64
    assert torch.allclose(to_face_frame(world_t, R, torch.as_tensor(t)).float(), torch.as_tensor(face))
    # x_world = R x_face + t: the face-frame origin sits at t.
    assert np.allclose(to_world(np.zeros(3), R, t), t)


def test_position_map_of_a_flat_quad_is_the_linear_blend_of_its_corners():
    size = 32
    u0, u1, v0, v1 = 0.13, 0.81, 0.22, 0.94
    uvs = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], np.float32)
    # Positions are an affine function of (u, v), so the blend over either triangle reproduces it.
    affine = torch.tensor([[120.0, -30.0], [15.0, 90.0], [-40.0, 25.0]])
    offset = torch.tensor([5.0, -7.0, 300.0])
    verts = torch.as_tensor(uvs) @ affine.T + offset
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    pos, mask = uv_position_map(verts, faces, uvs, faces, size)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    u, v = (j + 0.5) / size, 1 - (i + 0.5) / size
    expected_mask = (u > u0) & (u < u1) & (v > v0) & (v < v1)
    assert torch.equal(mask, expected_mask)
    expected = torch.stack((u, v), -1) @ affine.T + offset
    assert torch.allclose(pos[mask], expected[mask], atol=1e-3)
    assert (pos[~mask] == 0).all()


def test_position_map_is_differentiable_and_of_the_surface():
    mesh = uv_sphere(16, 32, 50.0)
    verts = torch.as_tensor(mesh.verts).requires_grad_()
    pos, mask = uv_position_map(verts, mesh.faces, mesh.uvs, mesh.face_uvs, 64)
    radius = pos[mask].norm(dim=1)
    assert mask.float().mean() > 0.9
    assert radius.max() < 50.0 + 1e-3 and radius.min() > 50.0 * math.cos(math.pi / 16) - 1e-3
    pos[mask].sum().backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0


def test_grid_faces_skip_uncovered_texels_and_wind_counter_clockwise_in_uv():
    mask = torch.ones(9, 11, dtype=torch.bool)
    mask[3:5, 4:7] = False  # a hole
    mask[0, 0] = mask[8, 10] = False  # missing corners
    faces = uv_grid_faces(mask)
    full_cells = (mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]).sum().item()
    assert faces.shape == (2 * full_cells, 3) and faces.dtype == torch.int64
    assert mask.reshape(-1)[faces].all()
    # Texel (i, j) sits at u = j, v = -i (up to scale): every triangle has positive area in (u, v).
    row, col = faces // 11, faces % 11
    uv = torch.stack((col, -row), -1).double()
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    assert (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0).all()
    # Each triangle spans one cell: its texels are at most one row and one column apart.
    assert (row.amax(1) - row.amin(1) == 1).all() and (col.amax(1) - col.amin(1) == 1).all()


def test_grid_faces_of_a_full_mask_tile_the_square():
    faces = uv_grid_faces(np.ones((6, 6), dtype=bool))
    assert len(faces) == 2 * 5 * 5 and len(torch.unique(faces)) == 36
    edges = torch.cat((faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]))
    assert len(torch.unique(edges, dim=0)) == len(edges)  # each directed edge once: consistent winding


@pytest.mark.parametrize("rings, segments", [(2, 3), (5, 8)])
def test_uv_sphere_is_a_closed_consistently_wound_surface(rings, segments):
    mesh = uv_sphere(rings, segments, 2.0)
    assert mesh.verts.shape == (2 + (rings - 1) * segments, 3)
    assert mesh.faces.shape == mesh.face_uvs.shape == (2 * segments * (rings - 1), 3)
    assert np.allclose(np.linalg.norm(mesh.verts, axis=1), 2.0)
    directed = np.concatenate((mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]))
    reverse = {tuple(e) for e in directed[:, ::-1]}
    assert len({tuple(e) for e in directed}) == len(directed)  # no directed edge twice
    assert {tuple(e) for e in directed} == reverse  # every edge also used the other way: closed
    assert mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1
