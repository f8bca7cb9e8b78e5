"""Triangle meshes with a UV layout (the tracked meshes of a subject)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
