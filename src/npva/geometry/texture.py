"""UV texture lookups. Textures are in image layout: row 0 is v = 1, column 0 is u = 0; texel (i, j)
of a T x T texture has its centre at u = (j + 0.5) / T, v = 1 - (i + 0.5) / T."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def texel_flags(flags: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """The flag of the texel containing each UV: flags (S, S) bool in image layout (row 0 is v = 1),
    uv (..., 2) -> (...) bool; UVs beyond the layout take the edge texels."""
    size = flags.shape[-1]
    column = (uv[..., 0] * size).floor().long().clamp(0, size - 1)
    row = ((1 - uv[..., 1]) * size).floor().long().clamp(0, size - 1)
    return flags.to(uv.device, torch.bool)[row, column]


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup: texture (C, T, T), uv (N, 2) -> (N, C), in the texture's dtype.

    Lookups beyond the outer texel centres take the edge texels.
    """
    grid = torch.stack((2 * uv[:, 0] - 1, 1 - 2 * uv[:, 1]), dim=-1).to(texture.dtype)
    values = F.grid_sample(
        texture[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return values[0, :, 0].T
