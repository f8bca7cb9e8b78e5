"""Position maps: a mesh of fixed topology and UVs rasterized in UV space, frame after frame."""

from __future__ import annotations

import numpy as np
import torch

from npva.geometry.mesh import Mesh
from npva.geometry.raster import Fragments, interpolate, rasterize_uv


class PositionMapSampler:
    """Rasterizes the UV layout once; each frame's position map is then a gather and a weighted sum.

    The topology and UVs of tracked meshes are fixed, so the per-texel triangle and barycentrics are too.
    """

    def __init__(self, mesh: Mesh, size: int):
        self.size = size
        self.faces = torch.as_tensor(mesh.faces, dtype=torch.int64)
        self.fragments: Fragments = rasterize_uv(
            torch.as_tensor(mesh.uvs, dtype=torch.float32),
            torch.as_tensor(mesh.face_uvs, dtype=torch.int64),
            size,
        )

    @property
    def coverage(self) -> np.ndarray:
        """(S, S) bool: texels inside a UV island."""
        return (self.fragments.face_id >= 0).numpy()

    def position_map(self, verts: np.ndarray) -> np.ndarray:
        """verts (V, 3) -> (S, S, 3) float32 position map, 0 outside the islands."""
        attrs = torch.as_tensor(verts, dtype=torch.float32)
        return interpolate(attrs, self.faces, self.fragments).numpy().astype(np.float32)
