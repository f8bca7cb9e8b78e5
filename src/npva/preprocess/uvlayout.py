"""The UV layout of the tracked mesh: texel coverage, the UV grid mesh and the mouth texels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from npva.geometry.camera import Camera
from npva.geometry.mesh import uv_grid_faces


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
    smallest are candidates. Cells whose largest area stays under SLIVER_FRACTION of the median cell's
    are left out: the ratio of sub-millimetre slivers (at a pole of the mesh) swings with vertex noise.
    The connected regions of candidates, largest first, are the mouth's candidates (eyelids and the
    jaw corners stretch too, but over far fewer cells); `check_mouth` tells which one sits where a mouth
    does.
    """

    SLIVER_FRACTION = 0.05

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

    def candidates(self, ratio: float, dilate: int) -> list[np.ndarray]:
        """(S, S) bool texel masks of the connected regions of stretched cells, largest first: the four
        texels of every cell of a region, dilated by `dilate`, inside the coverage."""
        floor = self.SLIVER_FRACTION * np.median(self.max_area[self.cells]) if self.cells.any() else 0.0
        stretched = (
            self.cells & (self.max_area >= floor) & (self.max_area > ratio * np.maximum(self.min_area, 1e-9))
        )
        return [self._texels(region, dilate) for region in _components_by_size(stretched)]

    def _texels(self, region: np.ndarray, dilate: int) -> np.ndarray:
        size = self.cells.shape[0] + 1
        mouth = np.zeros((size, size), bool)
        for di in (0, 1):
            for dj in (0, 1):
                mouth[di : di + size - 1, dj : dj + size - 1] |= region
        if dilate > 0:
            kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
            mouth = cv2.dilate(mouth.astype(np.uint8), kernel) > 0
        return mouth & self.coverage


@dataclass(frozen=True)
class FaceAxes:
    """Unit directions in the face frame: forward (from the head towards the cameras, i.e. out of the
    face), up, and right (forward x up)."""

    forward: np.ndarray
    up: np.ndarray
    right: np.ndarray


def face_axes(cameras: Iterable[Camera], poses: Iterable[tuple[np.ndarray, np.ndarray]]) -> FaceAxes:
    """The face frame's forward and up directions from the capture itself, whatever convention the
    tracked meshes use: forward is the mean direction from the head (its pose's origin) to the camera
    centres, up the mean of the cameras' up directions (image rows run down), both turned into the face
    frame by each head pose (R, t): x_world = R x_face + t."""
    forward, up = np.zeros(3), np.zeros(3)
    for R, t in poses:
        for camera in cameras:
            to_camera = camera.centre - t
            forward += R.T @ (to_camera / np.linalg.norm(to_camera))
            up -= R.T @ camera.R[1]
    forward /= np.linalg.norm(forward)
    up -= (up @ forward) * forward
    up /= np.linalg.norm(up)
    return FaceAxes(forward, up, np.cross(forward, up))


# Where a mouth sits relative to the nose tip (the most forward texel of the mean map), in mm.
MOUTH_BELOW_NOSE_MM = (5.0, 80.0)
MOUTH_OFF_CENTRE_MM = 25.0
MOUTH_BEHIND_NOSE_MM = 50.0
MOUTH_SPAN_MM = 100.0


def check_mouth(mouth: np.ndarray, mean_map: np.ndarray, coverage: np.ndarray, axes: FaceAxes) -> str | None:
    """Why the texels `mouth` (S, S) are not a mouth, or None when they sit where one does: below the
    nose tip, near the face's centre line, on the front of the face, spanning less than MOUTH_SPAN_MM.
    mean_map (S, S, 3): the mean position map (face frame, mm); coverage (S, S)."""
    if not mouth.any():
        return "no texel stretches like a mouth"
    nose = mean_map[coverage][np.argmax(mean_map[coverage] @ axes.forward)]
    points = mean_map[mouth] - nose  # (M, 3) relative to the nose tip
    centre = points.mean(0)
    below, across = -(centre @ axes.up), centre @ axes.right
    behind = -(centre @ axes.forward)
    span = float(np.max(np.ptp(points @ np.stack((axes.up, axes.right), 1), axis=0)))
    low, high = MOUTH_BELOW_NOSE_MM
    if not low <= below <= high:
        return f"its centre is {below:.0f} mm below the nose tip, not {low:.0f}-{high:.0f} mm"
    if abs(across) > MOUTH_OFF_CENTRE_MM:
        return f"its centre is {abs(across):.0f} mm off the face's centre line"
    if behind > MOUTH_BEHIND_NOSE_MM:
        return f"its centre is {behind:.0f} mm behind the nose tip, not on the front of the face"
    if span > MOUTH_SPAN_MM:
        return f"it spans {span:.0f} mm"
    return None


def _components_by_size(mask: np.ndarray) -> list[np.ndarray]:
    """(H, W) bool -> its 8-connected regions as (H, W) bool masks, largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")
    return [labels == label for label in order]
