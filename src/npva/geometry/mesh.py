"""Triangle meshes with a UV layout (the tracked meshes of a subject): vertex normals, the change to and
from the head's face frame, rasterization in UV space (position maps) and the UV grid mesh."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from npva.geometry.raster import interpolate, rasterize_uv

ArrayOrTensor = np.ndarray | torch.Tensor


@dataclass
class Mesh:
    """A triangle mesh whose faces also index a UV layout.

    verts: (V, 3) float32 positions, mm.
    faces: (F, 3) int64 vertex indices (0-based).
    uvs: (T, 2) float32 texture coordinates as in OBJ `vt`: u right, v up, in [0, 1].
    face_uvs: (F, 3) int64 indices into `uvs`, one per face corner.
    """

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    face_uvs: np.ndarray


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Unit vertex normals (..., V, 3) of verts (..., V, 3), faces (F, 3); differentiable.

    Each face adds its cross product (v1 - v0) x (v2 - v0), whose length is twice its area, to its three
    corners: counter-clockwise faces (right-hand rule) give outward normals. Vertices in no face get 0.
    """
    faces = torch.as_tensor(faces, device=verts.device).long()
    tri = verts[..., faces, :]  # (..., F, 3, 3)
    face_normals = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    corner_normals = face_normals[..., None, :].expand(*face_normals.shape[:-1], 3, 3)
    sums = torch.zeros_like(verts).index_add(
        -2, faces.reshape(-1), corner_normals.reshape(*verts.shape[:-2], -1, 3)
    )
    return torch.nn.functional.normalize(sums, dim=-1, eps=1e-20)


def to_face_frame(verts_world: ArrayOrTensor, R: ArrayOrTensor, t: ArrayOrTensor) -> ArrayOrTensor:
    """World points (..., 3) -> face frame R^T (x - t), for the head pose x_world = R x_face + t.

    R (3, 3), t (3,) numpy or tensors; the result has the type (and float dtype) of verts_world.
    """
    R, t = _pose_like(verts_world, R, t)
    return (verts_world - t) @ R  # row vectors: (R^T (x - t))^T = (x - t)^T R


def to_world(verts_face: ArrayOrTensor, R: ArrayOrTensor, t: ArrayOrTensor) -> ArrayOrTensor:
    """Face-frame points (..., 3) -> world R x + t; types as in to_face_frame."""
    R, t = _pose_like(verts_face, R, t)
    return verts_face @ R.T + t


def _pose_like(points: ArrayOrTensor, R: ArrayOrTensor, t: ArrayOrTensor) -> tuple:
    """R, t converted to the array type, device and float dtype of points."""
    if isinstance(points, torch.Tensor):
        dtype = points.dtype if points.is_floating_point() else torch.float32
        return tuple(torch.as_tensor(a, dtype=dtype, device=points.device) for a in (R, t))
    dtype = np.asarray(points).dtype
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    return tuple(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype) for a in (R, t))


def uv_position_map(
    verts: torch.Tensor,
    faces: torch.Tensor | np.ndarray,
    uvs: torch.Tensor | np.ndarray,
    face_uvs: torch.Tensor | np.ndarray,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterize a mesh in UV space: per texel the barycentric blend of the vertex positions.

    verts (V, 3); faces (F, 3) into verts; uvs (T, 2); face_uvs (F, 3) into uvs.
    Returns pos (S, S, 3) (0 outside the mask; differentiable w.r.t. verts) and mask (S, S) bool, the
    texels whose centre lies in a UV triangle. Image layout: row 0 is v = 1; texel (i, j) has its centre
    at u = (j + 0.5) / S, v = 1 - (i + 0.5) / S.
    """
    dtype = verts.dtype if verts.is_floating_point() else torch.float32
    frags = rasterize_uv(torch.as_tensor(uvs, dtype=dtype, device=verts.device), face_uvs, size)
    pos = interpolate(verts.to(dtype), torch.as_tensor(faces, device=verts.device), frags)
    return pos, frags.face_id >= 0


def uv_grid_faces(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Faces (F, 3) int64 of the UV grid mesh: texel (i, j) is vertex i * W + j of mask (H, W).

    Each 2x2 cell whose four texels are all covered gives two triangles, (a, b, d) and (a, d, c) with
    a = (i, j), b = (i + 1, j), c = (i, j + 1), d = (i + 1, j + 1): counter-clockwise in UV (u right,
    v up), the winding of the faces of an unmirrored UV layout. Cells come in row-major order.
    """
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.ndim != 2:
        raise ValueError(f"uv_grid_faces: mask must have shape (H, W), got {tuple(mask.shape)}")
    width = mask.shape[1]
    full = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    i, j = torch.nonzero(full, as_tuple=True)
    a = i * width + j
    b, c, d = a + width, a + 1, a + width + 1
    return torch.stack((a, b, d, a, d, c), dim=1).view(-1, 3)


def uv_sphere(rings: int, segments: int, radius: float = 1.0) -> Mesh:
    """A latitude-longitude sphere about the origin, poles on the z axis, with an equirectangular UV
    layout (u = longitude / 2 pi, v = 1 at the north pole +z).

    rings >= 2 latitude bands, segments >= 3 longitude bands: V = 2 + (rings - 1) segments vertices,
    F = 2 segments (rings - 1) faces, counter-clockwise seen from outside (outward normals).
    """
    if rings < 2 or segments < 3:
        raise ValueError(f"uv_sphere needs rings >= 2 and segments >= 3, got {rings}, {segments}")
    polar = np.pi * np.arange(1, rings) / rings
    azimuth = 2 * np.pi * np.arange(segments) / segments
    sin_p, cos_p = np.sin(polar)[:, None], np.cos(polar)[:, None]
    ring_verts = np.stack(
        np.broadcast_arrays(sin_p * np.cos(azimuth), sin_p * np.sin(azimuth), cos_p), axis=-1
    ).reshape(-1, 3)
    verts = radius * np.concatenate(([[0.0, 0.0, 1.0]], ring_verts, [[0.0, 0.0, -1.0]]))

    # Cell (r, s) spans rings r..r+1 and segments s..s+1; its triangles are `lower` (r, s) (r+1, s)
    # (r+1, s+1) and `upper` (r, s) (r+1, s+1) (r, s+1), given as ring and segment offsets of their
    # corners. At a pole (ring 0 or `rings`) the triangle with two corners there is left out.
    r, s = (g.ravel() for g in np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij"))
    lower = (np.array([0, 1, 1]), np.array([0, 0, 1]), r < rings - 1)
    upper = (np.array([0, 1, 0]), np.array([0, 1, 1]), r > 0)
    ring_of = np.concatenate([r[keep, None] + dr for dr, _, keep in (lower, upper)])  # (F, 3)
    seg_of = np.concatenate([s[keep, None] + ds for _, ds, keep in (lower, upper)])
    inner = 1 + (ring_of - 1) * segments + seg_of % segments
    faces = np.where(ring_of == 0, 0, np.where(ring_of == rings, len(verts) - 1, inner))
    face_uvs = ring_of * (segments + 1) + seg_of
    u, v = np.meshgrid(np.arange(segments + 1) / segments, 1 - np.arange(rings + 1) / rings)
    uvs = np.stack((u.ravel(), v.ravel()), axis=1)
    return Mesh(
        verts=verts.astype(np.float32),
        faces=faces.astype(np.int64),
        uvs=uvs.astype(np.float32),
        face_uvs=face_uvs.astype(np.int64),
    )
