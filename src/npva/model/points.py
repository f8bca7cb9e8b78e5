"""Neural points and the rasterized guide depth (method.md section 4).

Maps are channel-first tensors in image layout (row 0 is v = 1), as the decoders produce them:
coarse map (3, S, S) in the face frame, displacement (3, P, P) in mm, features (C, P, P). Every
texel of the P x P maps is a neural point; texel (i, j) has flat index i * P + j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npva.geometry.camera import Camera
from npva.geometry.mesh import to_world
from npva.geometry.raster import rasterize_camera

MAX_DENSIFY_SPLITS = 16  # at most 16 x 16 extra points per cell of the point map


@dataclass
class NeuralPoints:
    """positions (N, 3) world, features (N, C), texel_index (N,) long flat texel of each point, uv (N, 2)
    its texture coordinates (u right, v up)."""

    positions: torch.Tensor
    features: torch.Tensor
    texel_index: torch.Tensor
    uv: torch.Tensor

    def __len__(self) -> int:
        return self.positions.shape[0]


def upsample_coarse_map(coarse_map: torch.Tensor, size: int) -> torch.Tensor:
    """(3, S, S) -> (3, size, size), bilinear with align_corners=False (texel centres aligned)."""
    return F.interpolate(coarse_map[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def point_texel_mask(coverage: torch.Tensor, size: int) -> torch.Tensor:
    """(S, S) bool UV coverage -> (size, size) bool.

    Nearest upsampling: each texel takes the value of the coverage texel holding its centre.
    """
    src = coverage.shape[0]
    centre = (2 * torch.arange(size, device=coverage.device) + 1) * src // (2 * size)
    return coverage[centre[:, None], centre[None, :]]


def point_texels(coverage: torch.Tensor, size: int) -> torch.Tensor:
    """(M,) long flat indices (i * size + j) of the size x size point map's texels that
    point_texel_mask keeps."""
    return torch.nonzero(point_texel_mask(coverage, size).reshape(-1))[:, 0]


def texel_uv(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(size * size, 2) UV of the texel centres of a size x size map, flat index i * size + j."""
    centre = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    return torch.stack(
        (centre[None, :].expand(size, size), (1 - centre)[:, None].expand(size, size)), -1
    ).reshape(-1, 2)


def build_neural_points(
    coarse_map: torch.Tensor,
    displacement: torch.Tensor,
    features: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    texels: torch.Tensor | None = None,
) -> NeuralPoints:
    """Neural points of one frame.

    coarse_map (3, S, S) face frame; displacement (3, P, P); features (C, P, P); rotation (3, 3) and
    translation (3,) the head pose (x_world = R x_face + t); texels (M,) long flat texel indices
    (i * P + j) keeps only those texels, in that order (None keeps all; see point_texels).
    Position = upsampled coarse map + displacement, moved to world.
    Differentiable with respect to the three maps.
    """
    size = displacement.shape[-1]
    if displacement.shape != (3, size, size) or features.shape[1:] != (size, size):
        raise ValueError(
            f"displacement (3, P, P) and features (C, P, P) must share P, got "
            f"{tuple(displacement.shape)} and {tuple(features.shape)}"
        )
    face = upsample_coarse_map(coarse_map, size) + displacement  # (3, P, P)
    positions = to_world(face.reshape(3, -1).T, rotation, translation)  # (P*P, 3)
    feats = features.reshape(features.shape[0], -1).T  # (P*P, C)
    texel_index = torch.arange(size * size, device=positions.device)
    if texels is not None:
        texel_index = texels.to(positions.device)
        positions = positions[texel_index]
        feats = feats[texel_index]
    uv = texel_uv(size, positions.device).to(positions.dtype)[texel_index]
    return NeuralPoints(positions=positions, features=feats, texel_index=texel_index, uv=uv)


def densify_points(points: NeuralPoints, size: int, spacing: float) -> NeuralPoints:
    """The points plus extra ones where neighbouring points of the P x P map lie too far apart.

    points: of a P x P point map (size = P); texel_index says which texels they hold. A cell of the
    map (texels (i, j), (i, j+1), (i+1, j), (i+1, j+1), all present) whose longer row side is a and
    longer column side b, with max(a, b) > spacing, gets an n_a x n_b lattice of points at the centres
    of its n_a x n_b split, n = ceil(side / spacing) up to MAX_DENSIFY_SPLITS, so that every spot of a
    cell up to 16 spacings long lies about spacing / sqrt(2) or less from a point. The extra points'
    positions, features and UVs are bilinear in the corners' (differentiable) and their texel_index is
    the cell's first corner. They follow the original points, so points[:len(original)] is unchanged.
    """
    if spacing <= 0:
        raise ValueError(f"densify spacing must be positive, got {spacing}")
    device = points.positions.device
    slot = torch.full((size * size,), -1, dtype=torch.long, device=device)
    slot[points.texel_index] = torch.arange(len(points), device=device)
    slot = slot.reshape(size, size)
    corners = torch.stack((slot[:-1, :-1], slot[:-1, 1:], slot[1:, :-1], slot[1:, 1:]), -1)  # (P-1, P-1, 4)
    corners = corners[(corners >= 0).all(-1)]  # (C, 4): top-left, top-right, bottom-left, bottom-right
    pos = points.positions.detach()[corners]  # (C, 4, 3)
    along_row = torch.maximum((pos[:, 1] - pos[:, 0]).norm(dim=-1), (pos[:, 3] - pos[:, 2]).norm(dim=-1))
    along_col = torch.maximum((pos[:, 2] - pos[:, 0]).norm(dim=-1), (pos[:, 3] - pos[:, 1]).norm(dim=-1))
    stretched = torch.maximum(along_row, along_col) > spacing
    corners = corners[stretched]
    # (C',) splits along a row and a column; capped, so that a cell torn open by a stray point does not
    # fill the space between its corners with millions of points.
    cols = torch.ceil(along_row[stretched] / spacing).long().clamp(1, MAX_DENSIFY_SPLITS)
    rows = torch.ceil(along_col[stretched] / spacing).long().clamp(1, MAX_DENSIFY_SPLITS)
    count = rows * cols
    cell = torch.repeat_interleave(torch.arange(count.numel(), device=device), count)  # (M,)
    local = torch.arange(cell.numel(), device=device) - (torch.cumsum(count, 0) - count)[cell]
    dtype = points.positions.dtype
    down = ((local // cols[cell]).to(dtype) + 0.5) / rows[cell].to(dtype)  # (M,) in (0, 1)
    right = ((local % cols[cell]).to(dtype) + 0.5) / cols[cell].to(dtype)
    weights = torch.stack(
        ((1 - down) * (1 - right), (1 - down) * right, down * (1 - right), down * right), -1
    )  # (M, 4)
    cell_corners = corners[cell]  # (M, 4)
    positions = (weights[..., None] * points.positions[cell_corners]).sum(1)
    features = (weights[..., None].to(points.features.dtype) * points.features[cell_corners]).sum(1)
    uv = (weights[..., None] * points.uv[cell_corners]).sum(1)
    return NeuralPoints(
        positions=torch.cat((points.positions, positions)),
        features=torch.cat((points.features, features)),
        texel_index=torch.cat((points.texel_index, points.texel_index[cell_corners[:, 0]])),
        uv=torch.cat((points.uv, uv)),
    )


def coarse_vertices_world(
    coarse_map: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor
) -> torch.Tensor:
    """(3, S, S) face-frame coarse map -> (S*S, 3) world vertices of the UV grid mesh (index i*S + j)."""
    return to_world(coarse_map.reshape(3, -1).T, rotation, translation)


def rasterize_guide(vertices_world: torch.Tensor, grid_faces: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Camera-z map of the UV grid mesh: (V, 3) world vertices, (F, 3) faces -> (H, W), 0 = background.

    The camera must carry its image size. Differentiable with respect to the vertices: the depth of a
    pixel is the camera z of the front triangle interpolated with perspective-correct barycentrics.
    """
    if camera.height is None or camera.width is None:
        raise ValueError(f"camera {camera.name}: image size unknown, cannot rasterize the guide")
    return rasterize_camera(vertices_world, grid_faces, camera).depth
