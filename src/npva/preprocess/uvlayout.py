"""The UV layout of the tracked mesh: texel coverage, a cached position-map sampler, the UV grid mesh
and the mouth texels."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from npva.geometry.mesh import Mesh, uv_grid_faces
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


def grid_faces(coverage: np.ndarray) -> np.ndarray:
    """(F, 3) int64 faces of the UV grid mesh over flattened texel indices (covered cells only)."""
    return uv_grid_faces(torch.as_tensor(coverage)).numpy().astype(np.int64)


def cell_areas(posmap: np.ndarray) -> np.ndarray:
    """(S-1, S-1) surface area (mm^2) of each 2x2 texel cell of a position map, as two triangles."""
    p00, p01 = posmap[:-1, :-1], posmap[:-1, 1:]
    p10, p11 = posmap[1:, :-1], posmap[1:, 1:]
    upper = np.linalg.norm(np.cross(p01 - p00, p10 - p00), axis=-1)
    lower = np.linalg.norm(np.cross(p01 - p11, p10 - p11), axis=-1)
    return 0.5 * (upper + lower)


class MouthStretch:
    """Accumulates, over frames, how much each texel cell's surface area grows.

    The tracked mesh has no mouth interior: its lips are joined by a surface that stretches as the jaw
    opens, by five times or more where they meet. Skin grows less, though a lip stretch widens the band
    around the mouth by up to 2-3 times (on the synthetic subject a 1.8 threshold took in the cheeks,
    a band six times the width of the lips). Cells whose largest area exceeds `ratio` times their
    smallest are candidates; the largest connected region of them is the mouth (eyelids and the jaw
    corners stretch too, but over far fewer cells).
    """

    def __init__(self, coverage: np.ndarray):
        self.coverage = coverage
        cells = coverage[:-1, :-1] & coverage[:-1, 1:] & coverage[1:, :-1] & coverage[1:, 1:]
        self.cells = cells
        self.min_area = np.full(cells.shape, np.inf)
        self.max_area = np.zeros(cells.shape)

    def add(self, posmap: np.ndarray) -> None:
        area = cell_areas(posmap.astype(np.float64))
        np.minimum(self.min_area, area, out=self.min_area)
        np.maximum(self.max_area, area, out=self.max_area)

    def mask(self, ratio: float, dilate: int) -> np.ndarray:
        """(S, S) bool mouth texels: the four texels of every stretched cell, dilated, inside coverage."""
        stretched = self.cells & (self.max_area > ratio * np.maximum(self.min_area, 1e-9))
        stretched = _largest_component(stretched)
        size = self.cells.shape[0] + 1
        mouth = np.zeros((size, size), bool)
        for di in (0, 1):
            for dj in (0, 1):
                mouth[di : di + size - 1, dj : dj + size - 1] |= stretched
        if dilate > 0:
            kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
            mouth = cv2.dilate(mouth.astype(np.uint8), kernel) > 0
        return mouth & self.coverage


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the largest 8-connected region of `mask` (empty if `mask` is)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest
