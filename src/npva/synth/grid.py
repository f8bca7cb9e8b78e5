"""The parameter grid of the synthetic head and the triangle meshes built on it.

A head point is addressed by (u, s) in [0, 1]^2: u runs around the head (azimuth theta from the back
through the face, front at u = 0.5), s runs from the crown (s = 0, the pole) down to the neck (s = 1).
Both are warped so that equal steps in (u, s) are shorter on the face, which gives the face more
vertices and more texels. The coarse (tracked) mesh is a `cols x rows` grid plus a pole vertex; its UV
layout is the cylindrical unwrap (u, 1 - s). Fine grids refine it by an integer factor, so every
coarse vertex is also a fine vertex, and fine grids cut the lip seam open across the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHI_END = np.deg2rad(170.0)  # polar angle (from the crown) of the last row: the neck
AZIMUTH_WARP = 1.0  # theta = pi (t + c t^3) / (1 + c): (1 + 3c) : 1 back-to-front spacing ratio
MOUTH_PHI = np.deg2rad(126.5)  # polar angle of the lip seam before snapping it to a grid row

COARSE_COLS = 96
COARSE_ROWS = 63


def theta_of_u(u: np.ndarray) -> np.ndarray:
    """Azimuth (radians, 0 = front, +x to pi/2) of grid coordinate u in [0, 1]."""
    t = 2.0 * np.asarray(u, dtype=np.float64) - 1.0
    return np.pi * (t + AZIMUTH_WARP * t**3) / (1.0 + AZIMUTH_WARP)


def _row_density(phi: np.ndarray) -> np.ndarray:
    """Relative row density along the polar angle: about three times denser across the face."""
    return 1.0 + 2.0 * np.exp(-(((phi - 1.95) / 0.45) ** 2))


_PHI_TABLE = np.linspace(0.0, PHI_END, 4097)
_S_TABLE = np.concatenate(
    ([0.0], np.cumsum(0.5 * (_row_density(_PHI_TABLE[1:]) + _row_density(_PHI_TABLE[:-1]))))
)
_S_TABLE /= _S_TABLE[-1]


def phi_of_s(s: np.ndarray) -> np.ndarray:
    """Polar angle from the crown (radians) of grid coordinate s in [0, 1]."""
    return np.interp(s, _S_TABLE, _PHI_TABLE)


def s_of_phi(phi: np.ndarray) -> np.ndarray:
    """Inverse of `phi_of_s`."""
    return np.interp(phi, _PHI_TABLE, _S_TABLE)


def directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit directions (..., 3) in the face frame (x to the subject's left, y up, z out of the face)."""
    sin_phi = np.sin(phi)
    return np.stack((sin_phi * np.sin(theta), np.cos(phi), sin_phi * np.cos(theta)), axis=-1)


COARSE_SEAM_ROW = int(round(float(s_of_phi(MOUTH_PHI)) * COARSE_ROWS))
SEAM_S = COARSE_SEAM_ROW / COARSE_ROWS
SEAM_PHI = float(phi_of_s(SEAM_S))


@dataclass(frozen=True)
class ParamGrid:
    """Columns at u = j / cols (j < cols), rows at s = k / rows (k = 1..rows), plus the pole at s = 0."""

    cols: int
    rows: int
    seam_row: int  # row k of the lip seam

    @staticmethod
    def coarse() -> ParamGrid:
        return ParamGrid(COARSE_COLS, COARSE_ROWS, COARSE_SEAM_ROW)

    def refined(self, factor: int) -> ParamGrid:
        return ParamGrid(self.cols * factor, self.rows * factor, self.seam_row * factor)

    @property
    def num_grid_verts(self) -> int:
        """Vertices of the grid and its pole, without seam duplicates."""
        return self.cols * self.rows + 1

    def vertex_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, s) of the grid vertices, each (rows * cols + 1,), row-major, the pole last."""
        u = np.arange(self.cols) / self.cols
        s = np.arange(1, self.rows + 1) / self.rows
        uu, ss = np.meshgrid(u, s)
        return np.append(uu.ravel(), 0.5), np.append(ss.ravel(), 0.0)

    def _index(self, k: np.ndarray, j: np.ndarray) -> np.ndarray:
        return (k - 1) * self.cols + j % self.cols

    def faces(self, split_cols: np.ndarray | None = None) -> np.ndarray:
        """(F, 3) int64 triangles, outward winding. `split_cols` (sorted column indices) cuts the seam row
        open there: faces below the seam use duplicates numbered after the grid vertices, in that order."""
        k, j = np.meshgrid(np.arange(1, self.rows), np.arange(self.cols), indexing="ij")
        k, j = k.ravel(), j.ravel()
        top_left, top_right = self._index(k, j), self._index(k, j + 1)
        bottom_left, bottom_right = self._index(k + 1, j), self._index(k + 1, j + 1)
        if split_cols is not None and len(split_cols):
            remap = np.arange(self.num_grid_verts)
            seam = self._index(np.full(len(split_cols), self.seam_row), split_cols)
            remap[seam] = self.num_grid_verts + np.arange(len(split_cols))
            below = k == self.seam_row
            top_left = np.where(below, remap[top_left], top_left)
            top_right = np.where(below, remap[top_right], top_right)
        quads = np.concatenate(
            (
                np.stack((top_left, bottom_left, top_right), 1),
                np.stack((top_right, bottom_left, bottom_right), 1),
            )
        )
        jj = np.arange(self.cols)
        pole = np.full(self.cols, self.num_grid_verts - 1)
        fan = np.stack((pole, self._index(np.ones_like(jj), jj), self._index(np.ones_like(jj), jj + 1)), 1)
        return np.concatenate((fan, quads)).astype(np.int64)

    def uv_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Cylindrical unwrap: uvs (T, 2) float32 at (u, 1 - s) with the seam column repeated at u = 1 and
        one pole texel per column, and face_uvs (F, 3) int64 matching `faces()` (no split)."""
        width = self.cols + 1
        u = np.arange(width) / self.cols
        v = 1.0 - np.arange(1, self.rows + 1) / self.rows
        uu, vv = np.meshgrid(u, v)
        pole_uv = np.stack(((np.arange(self.cols) + 0.5) / self.cols, np.ones(self.cols)), 1)
        uvs = np.concatenate((np.stack((uu.ravel(), vv.ravel()), 1), pole_uv)).astype(np.float32)

        def index(k: np.ndarray, j: np.ndarray) -> np.ndarray:
            return (k - 1) * width + j

        k, j = np.meshgrid(np.arange(1, self.rows), np.arange(self.cols), indexing="ij")
        k, j = k.ravel(), j.ravel()
        tl, tr, bl, br = index(k, j), index(k, j + 1), index(k + 1, j), index(k + 1, j + 1)
        quads = np.concatenate((np.stack((tl, bl, tr), 1), np.stack((tr, bl, br), 1)))
        jj = np.arange(self.cols)
        fan = np.stack(
            (self.rows * width + jj, index(np.ones_like(jj), jj), index(np.ones_like(jj), jj + 1)), 1
        )
        return uvs, np.concatenate((fan, quads)).astype(np.int64)
