"""The parametric head surface: identity shape and per-frame expression.

Face frame, mm: origin between the ears at eye level, x to the subject's left, y up, z out of the face.
The identity surface is star-shaped around the origin: along each direction of the parameter grid its
radius is a smooth maximum of three primitives (cranium and face ellipsoids, a capped neck cylinder)
plus radial facial features (brows, eye sockets, nose, cheekbones, lips, chin, ears). An expression
then moves points: radial offsets (puffed cheeks, eyelids, lip roll), smile and brow shifts, and the
jaw, a rotation about a hinge axis near the ears weighted per point. The jaw weight jumps across the
lip seam inside the mouth (`side` = -1 upper lip, +1 lower lip), which opens the mouth of fine grids;
points with side 0 on the seam (the coarse mesh) take the mean and join the lips with a membrane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npva.synth.grid import SEAM_PHI, directions

JAW_HINGE = np.array([0.0, -18.0, -5.0])  # the jaw rotates about the x axis through this point
EYEBALL_RADIUS = 12.0


@dataclass(frozen=True)
class Expression:
    """What moves the face in one frame."""

    jaw: float = 0.0  # jaw opening, radians (0.3 is wide open)
    smile: float = 0.0  # 0..1
    puff: float = 0.0  # cheeks puffed, 0..1
    brow: float = 0.0  # brows raised, 0..1
    eyes_open: float = 1.0  # 0 closed .. 1 open
    gaze_yaw: float = 0.0  # radians, towards +x
    gaze_pitch: float = 0.0  # radians, up


@dataclass(frozen=True)
class HeadIdentity:
    """Shape proportions of one synthetic subject (scale factors near 1 and a few lengths in mm)."""

    width: float = 1.0
    height: float = 1.0
    depth: float = 1.0
    nose_length: float = 1.0
    nose_width: float = 1.0
    lip_fullness: float = 1.0
    mouth_half_width: float = 24.0
    eye_half_distance: float = 32.0

    @staticmethod
    def sample(rng: np.random.Generator, spread: float = 1.0) -> HeadIdentity:
        """Proportions drawn uniformly around the mean; `spread` multiplies every range."""
        u = spread * rng.uniform(-1.0, 1.0, size=8)
        return HeadIdentity(
            width=1.0 + 0.04 * u[0],
            height=1.0 + 0.03 * u[1],
            depth=1.0 + 0.03 * u[2],
            nose_length=1.0 + 0.12 * u[3],
            nose_width=1.0 + 0.12 * u[4],
            lip_fullness=1.0 + 0.2 * u[5],
            mouth_half_width=24.0 + 2.0 * u[6],
            eye_half_distance=32.0 + 1.5 * u[7],
        )


def smoothstep(x: np.ndarray, edge0: float, edge1: float) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.exp(-(a * a + b * b))


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.maximum(a, b) + h * h * k / 4.0


def _ellipsoid_exit(d: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Distance from the origin (inside the ellipsoid) along unit directions d (N, 3) to its surface."""
    q0, qd = -centre / radii, d / radii
    a = np.sum(qd * qd, axis=1)
    b = 2.0 * qd @ q0
    c = q0 @ q0 - 1.0
    return (-b + np.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)


def _neck_exit(
    d: np.ndarray, z_centre: float, radii: tuple[float, float], y_top: float, y_bottom: float
) -> np.ndarray:
    """Exit distance along d (N, 3) from a vertical elliptic cylinder between y_bottom and y_top (< 0),
    0 for directions that miss it."""
    dx, dy, dz = d[:, 0] / radii[0], d[:, 1], d[:, 2] / radii[1]
    z0 = -z_centre / radii[1]
    a = np.maximum(dx * dx + dz * dz, 1e-12)
    b = 2.0 * dz * z0
    side = (-b + np.sqrt(b * b - 4.0 * a * (z0 * z0 - 1.0))) / (2.0 * a)
    down = np.minimum(dy, -1e-9)
    enter, leave = y_top / down, y_bottom / down
    exit_ = np.minimum(side, leave)
    return np.where((dy < 0) & (exit_ > enter), exit_, 0.0)


class HeadShape:
    """Identity surface and expression deformation of one subject."""

    def __init__(self, identity: HeadIdentity):
        self.identity = identity
        scale = np.array([identity.width, identity.height, identity.depth])
        self._cranium = (np.array([0.0, 15.0, -5.0]) * scale, np.array([74.0, 100.0, 97.0]) * scale)
        self._face = (np.array([0.0, -40.0, 35.0]) * scale, np.array([58.0, 85.0, 64.0]) * scale)
        self._neck_scale = identity.width
        # Radius of the primitives at the front of the seam: the mm scale of the mouth coordinates.
        self.mouth_radius = float(self.base_radius(directions(np.zeros(1), np.full(1, SEAM_PHI)))[0])
        self.eye_centres = self._eye_centres()

    # -- identity -------------------------------------------------------------------------------

    def base_radius(self, d: np.ndarray) -> np.ndarray:
        """(N,) radius of the primitives' smooth union along unit directions d (N, 3)."""
        r = _smooth_max(_ellipsoid_exit(d, *self._cranium), _ellipsoid_exit(d, *self._face), 12.0)
        s = self._neck_scale
        return _smooth_max(r, _neck_exit(d, -12.0, (52.0 * s, 50.0 * s), -20.0, -260.0), 14.0)

    def _features(self, p: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """(N,) radial offsets in mm at base points p (N, 3) with grid angles theta, phi."""
        ident = self.identity
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        ax = np.abs(x)
        front = smoothstep(z, 20.0, 50.0)
        brow = 3.5 * np.exp(-(((y - 18.0) / 7.0) ** 2) - (x / 42.0) ** 4)
        sockets = -4.0 * _gauss((ax - ident.eye_half_distance) / 16.0, (y - 1.0) / 11.0)
        cheekbones = 4.0 * _gauss((ax - 44.0) / 14.0, (y + 15.0) / 12.0)
        chin = 6.0 * _gauss(x / 22.0, (y + 112.0 * ident.height) / 13.0)
        ears = (
            13.0
            * np.exp(-((((y + 2.0) / 20.0) ** 2 + ((z + 2.0) / 9.0) ** 2) ** 1.5))
            * smoothstep(ax, 50.0, 66.0)
        )
        return front * (brow + sockets + cheekbones + chin + self._nose(x, y) + self._lips(theta, phi)) + ears

    def _nose(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bridge from the nasion (y = 4) to the tip (y = -36 at unit length), alae beside the tip."""
        ident = self.identity
        tip_y = 4.0 - 40.0 * ident.nose_length
        t = np.clip((4.0 - y) / (4.0 - tip_y), 0.0, 1.0)
        height = 3.0 + 23.0 * ident.nose_length * t**1.5
        width = (5.0 + 7.0 * t) * ident.nose_width
        envelope = np.where(y < tip_y, np.exp(-(((y - tip_y) / 6.0) ** 2)), 1.0)
        envelope = envelope * np.where(y > 4.0, np.exp(-(((y - 4.0) / 8.0) ** 2)), 1.0)
        alae = 7.0 * _gauss((np.abs(x) - 13.0 * ident.nose_width) / 6.0, (y - tip_y + 2.0) / 6.0)
        return height * np.exp(-((x / width) ** 2)) * envelope + alae

    def _lips(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Upper and lower lip bulges and the crease under the lower lip, in seam coordinates."""
        across, down = self.mouth_coords(theta, phi)
        w = self.identity.mouth_half_width
        full = self.identity.lip_fullness
        upper = 5.5 * full * np.exp(-(((down + 5.0) / 4.0) ** 2) - (across / w) ** 4)
        lower = 6.0 * full * np.exp(-(((down - 6.0) / 4.5) ** 2) - (across / (w - 2.0)) ** 4)
        crease = -2.5 * np.exp(-(((down - 15.0) / 4.0) ** 2) - (across / 22.0) ** 2)
        return upper + lower + crease

    def mouth_coords(self, theta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate mm across the mouth (towards +x) and down from the lip seam."""
        return self.mouth_radius * np.sin(theta), self.mouth_radius * (phi - SEAM_PHI)

    def identity_points(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """(N, 3) identity surface at grid angles theta, phi (N,)."""
        d = directions(theta, phi)
        r = self.base_radius(d)
        return d * (r + self._features(d * r[:, None], theta, phi))[:, None]

    def _eye_centres(self) -> np.ndarray:
        """(2, 3) eyeball centres: 12 mm spheres whose front sits 1 mm under the closed-lid surface."""
        centres = []
        for sign in (1.0, -1.0):
            d = np.array([[sign * self.identity.eye_half_distance, 1.0, 80.0]])
            d /= np.linalg.norm(d)
            theta, phi = np.arctan2(d[:, 0], d[:, 2]), np.arccos(d[:, 1])
            surface = self.identity_points(theta, phi)[0]
            centres.append(surface - np.array([0.0, 0.0, EYEBALL_RADIUS + 1.0]))
        return np.array(centres)

    # -- expression -----------------------------------------------------------------------------

    def mouth_opening(self, theta: np.ndarray) -> np.ndarray:
        """(N,) in [0, 1]: 1 in the middle of the mouth, falling to 0 at the corners (an ellipse)."""
        across = self.mouth_radius * np.sin(theta) / self.identity.mouth_half_width
        return np.sqrt(np.clip(1.0 - across * across, 0.0, 1.0)) * (np.cos(theta) > 0)

    def jaw_weight(self, p: np.ndarray, theta: np.ndarray, phi: np.ndarray, side: np.ndarray) -> np.ndarray:
        """(N,) share of the jaw rotation of identity points p (N, 3): 0 above the mouth, 1 on the lower
        lip and chin, fading out on the neck below the jaw line. Inside the mouth it jumps at the
        seam (by side); beyond the corners it blends over about 10 mm."""
        opening = self.mouth_opening(theta)
        dphi = phi - SEAM_PHI
        sign = np.where(dphi != 0.0, np.sign(dphi), side)
        vertical = 0.5 + 0.5 * sign * (opening + (1.0 - opening) * np.tanh(np.abs(dphi) / 0.08))
        around = smoothstep(np.cos(theta), -0.35, 0.15)
        jaw_line = -85.0 - 35.0 * np.clip(np.cos(theta), 0.0, 1.0) ** 2  # y under the chin .. at the ears
        neck = 1.0 - smoothstep(jaw_line - p[:, 1], 0.0, 70.0)
        return vertical * around * neck

    def _eye_carve(self, p: np.ndarray, eyes_open: float) -> np.ndarray:
        """(N,) depth (mm, >= 0) removed between the eyelids, which uncovers the eyeballs."""
        carve = np.zeros(len(p))
        for centre in self.eye_centres:
            dx, dy = p[:, 0] - centre[0], p[:, 1] - centre[1]
            along = np.clip(1.0 - (dx / 13.5) ** 2, 0.0, 1.0) ** 0.7
            top, bottom = 6.0 * along * eyes_open, -4.0 * along * eyes_open
            inside = smoothstep(top - dy, -0.3, 1.2) * smoothstep(dy - bottom, -0.3, 1.2)
            carve += 7.0 * inside * smoothstep(top - bottom, 0.0, 1.5)
        return carve

    def deform(
        self, p: np.ndarray, theta: np.ndarray, phi: np.ndarray, side: np.ndarray, expr: Expression
    ) -> np.ndarray:
        """Move identity points p (N, 3) (grid angles theta, phi, seam side) by the expression."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        ax = np.abs(x)
        front = smoothstep(z, 20.0, 50.0)
        across, down = self.mouth_coords(theta, phi)
        puff = 9.0 * expr.puff * _gauss((ax - 40.0) / 18.0, (y + 52.0) / 20.0)
        raised_cheeks = 3.0 * expr.smile * _gauss((ax - 40.0) / 14.0, (y + 25.0) / 12.0)
        # Parted lips roll inwards at their edges, so that the mouth opening has no knife edge.
        lip_roll = 4.0 * self.mouth_opening(theta) * min(expr.jaw / 0.08, 1.0) * np.exp(-((down / 2.5) ** 2))
        radial = front * (puff + raised_cheeks - lip_roll - self._eye_carve(p, expr.eyes_open))
        moved = p + p / np.linalg.norm(p, axis=1, keepdims=True) * radial[:, None]
        # Smiling pulls the mouth corners out, up and back.
        width = self.identity.mouth_half_width
        corners = expr.smile * front * np.exp(-(((np.abs(across) - width) / 10.0) ** 2) - (down / 10.0) ** 2)
        pull = np.stack((2.5 * np.sign(x), np.full_like(x, 4.5), np.full_like(x, -3.0)), 1)
        moved += corners[:, None] * pull
        moved[:, 1] += 4.0 * expr.brow * front * smoothstep(y, 5.0, 20.0) * (1.0 - smoothstep(y, 60.0, 90.0))
        return rotate_about_hinge(moved, expr.jaw * self.jaw_weight(p, theta, phi, side))


def rotate_x(v: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate vectors v (N, 3) about +x by angle (N,) radians, right-handed (+y turns towards +z): a
    positive angle moves points in front of the hinge down, which opens the jaw."""
    angle = np.broadcast_to(np.asarray(angle, dtype=np.float64), (len(v),))
    c, s = np.cos(angle), np.sin(angle)
    return np.stack((v[:, 0], c * v[:, 1] - s * v[:, 2], s * v[:, 1] + c * v[:, 2]), 1)


def rotate_about_hinge(p: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate points p (N, 3) about the jaw hinge axis (+x) by angle (N,) radians; positive opens."""
    return rotate_x(p - JAW_HINGE, angle) + JAW_HINGE
