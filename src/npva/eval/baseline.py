"""The textured-mesh baseline and the mouth region: what the tracked mesh alone shows in a camera.

Baseline: the frame's tracked mesh (world frame, as in tracked_mesh/<seq>/<frame>.obj) rasterized in
the sample's camera at the sample's size, every covered pixel coloured by bilinear lookup of its
interpolated UV in the frame's average texture; the other pixels show a background colour (the avatar's
colour for that camera, so that both images have the same surroundings). It is the floor that an
avatar's metrics are read against: the avatar is driven by exactly this mesh and texture. Like
preprocessing's masks it ignores lens distortion.

Mouth region: the pixels whose tracked-mesh UV falls in the mouth texels of the UV layout (the
avatar's `mouth` buffer, preprocessing's mouth mask). The tracked mesh spans the open mouth with a
stretched surface, so these pixels are the lips and whatever the mouth shows between them.

UV convention (OBJ): u right, v up; texture and texel row 0 is v = 1.
"""

from __future__ import annotations

import numpy as np
import torch

from npva.data.samples import TrainSample
from npva.geometry.raster import interpolate, rasterize_camera
from npva.geometry.texture import sample_texture, texel_flags
from npva.io.multiface import read_image, read_obj
from npva.io.subject import SubjectLayout


def mesh_uv_image(layout: SubjectLayout, sample: TrainSample) -> tuple[torch.Tensor, torch.Tensor]:
    """The tracked mesh of (sample.seq, sample.frame) rasterized in sample.camera (its size H, W).

    Returns uv (H, W, 2) float32 texture coordinates at the pixel centres (0 on background) and
    coverage (H, W) bool, on the device of sample.image.
    """
    device = sample.targets.image.device
    mesh = read_obj(layout.mesh_obj(sample.seq, sample.frame))
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    frags = rasterize_camera(verts, faces, sample.camera)
    uvs = torch.as_tensor(mesh.uvs, dtype=torch.float32, device=device)
    face_uvs = torch.as_tensor(mesh.face_uvs, dtype=torch.int64, device=device)
    return interpolate(uvs, face_uvs, frags), frags.face_id >= 0


def textured_mesh_image(
    layout: SubjectLayout,
    sample: TrainSample,
    background: torch.Tensor | None = None,
    mesh_uv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline image of a sample: image (H, W, 3) float32 in [0, 1] and coverage (H, W) bool.

    background: (3,) colour of the pixels the mesh does not cover; None for black. mesh_uv: the
    sample's mesh_uv_image, when already made.
    """
    uv, coverage = mesh_uv if mesh_uv is not None else mesh_uv_image(layout, sample)
    device = uv.device
    texture = read_image(layout.average_texture(sample.seq, sample.frame))  # (T, T, 3) uint8
    texture = torch.from_numpy(np.ascontiguousarray(texture.transpose(2, 0, 1))).to(device).float() / 255
    height, width = coverage.shape
    if background is None:
        image = torch.zeros((height, width, 3), device=device)
    else:
        image = background.detach().to(device, torch.float32).expand(height, width, 3).clone()
    image[coverage] = sample_texture(texture, uv[coverage])
    return image, coverage


def mouth_region(
    layout: SubjectLayout,
    sample: TrainSample,
    mouth_uv: torch.Tensor,
    mesh_uv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(H, W) bool: covered pixels whose tracked-mesh UV lies in a mouth texel of mouth_uv (S, S) bool
    (image layout, row 0 is v = 1; the texel is the one containing the UV). mesh_uv: the sample's
    mesh_uv_image, when already made."""
    if mouth_uv.ndim != 2 or mouth_uv.shape[0] != mouth_uv.shape[1]:
        raise ValueError(f"mouth texels must be a square (S, S) mask, got {tuple(mouth_uv.shape)}")
    uv, coverage = mesh_uv if mesh_uv is not None else mesh_uv_image(layout, sample)
    return coverage & texel_flags(mouth_uv, uv)
