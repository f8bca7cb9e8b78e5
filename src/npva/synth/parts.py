"""Geometry the tracked mesh does not model: eyeballs, teeth, mouth cavity, tongue, hair strands, and
(in the capture variant) a hair volume off the scalp and shoulders in clothing.

Every part is a small triangle mesh in the face frame with per-vertex normals and material coordinates
(`params`, 3 floats per vertex whose meaning depends on the material, see albedo.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from npva.geometry.mesh import uv_sphere, vertex_normals
from npva.synth.grid import SEAM_PHI, ParamGrid, phi_of_s, theta_of_u
from npva.synth.head import EYEBALL_RADIUS, Expression, HeadShape, rotate_about_hinge, rotate_x, smoothstep

# Materials: how a face is coloured and shaded (0 is the background).
SKIN, EYE, TEETH, CAVITY, TONGUE, HAIR, CLOTH = 1, 2, 3, 4, 5, 6, 7


@dataclass
class Part:
    """verts (V, 3), normals (V, 3) unit, params (V, 3) in the face frame; faces (F, 3) int64.

    `occlusion` dims the light that reaches the part (inside the mouth little light arrives)."""

    verts: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    params: np.ndarray
    material: int
    occlusion: float = 1.0


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two triangles per cell of a rows x cols vertex grid (row-major). Parts carry their own normals,
    so the winding does not matter."""
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    a = (r * cols + c).ravel()
    b, d, e = a + cols, a + 1, a + cols + 1
    return np.concatenate((np.stack((a, b, d), 1), np.stack((d, b, e), 1))).astype(np.int64)


def _rotation_to(direction: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking +z to the unit `direction` (no roll about it)."""
    z = direction / np.linalg.norm(direction)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack((x, np.cross(z, x), z), 1)


def gaze_direction(expr: Expression) -> np.ndarray:
    yaw, pitch = expr.gaze_yaw, expr.gaze_pitch
    return np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])


def eyeballs(shape: HeadShape, expr: Expression, rings: int = 24, segments: int = 36) -> Part:
    """Two spheres looking along the gaze. params: the unit point of the unrotated sphere, so that
    params.z is the cosine of the angle from the gaze axis (iris and pupil are caps around it)."""
    sphere = uv_sphere(rings, segments, 1.0)
    unit = sphere.verts.astype(np.float64)
    rotation = _rotation_to(gaze_direction(expr))
    turned = unit @ rotation.T
    verts = np.concatenate([centre + EYEBALL_RADIUS * turned for centre in shape.eye_centres])
    faces = np.concatenate((sphere.faces, sphere.faces + len(unit)))
    return Part(verts, faces, np.concatenate((turned, turned)), np.concatenate((unit, unit)), EYE)


class MouthInterior:
    """Teeth, cavity and tongue placed from the lip seam of one head shape."""

    def __init__(self, shape: HeadShape):
        seam = shape.identity_points(np.zeros(1), np.full(1, SEAM_PHI))[0]
        self.seam_y, self.seam_z = seam[1], seam[2]
        self.half_width = shape.identity.mouth_half_width

    def parts(self, expr: Expression) -> list[Part]:
        return [
            self._teeth(expr, upper=True),
            self._teeth(expr, upper=False),
            self._cavity(expr),
            self._tongue(expr),
        ]

    def _teeth(self, expr: Expression, upper: bool, cols: int = 41, rows: int = 6) -> Part:
        """A curved band along the dental arch. Upper: edge 2 mm under the seam, 9 mm behind it, fixed
        to the skull; lower: edge 0.5 mm over the seam, 2.5 mm further back, moving with the jaw.
        params: (arc length from the middle in mm, height from the biting edge in [0, 1], upper)."""
        arch = np.linspace(-1.25, 1.25, cols)
        height = np.linspace(0.0, 1.0, rows)
        a, h = np.meshgrid(arch, height, indexing="ij")
        front = self.seam_z - (9.0 if upper else 11.5)
        half_width, depth = 0.95 * self.half_width, 22.0
        x, z = half_width * np.sin(a), front - depth + depth * np.cos(a)
        y = self.seam_y - 2.0 + 11.0 * h if upper else self.seam_y + 0.5 - 11.5 * h
        verts = np.stack((x, y, z), -1).reshape(-1, 3)
        outward = np.stack((np.sin(a) / half_width, np.zeros_like(a), np.cos(a) / depth), -1).reshape(-1, 3)
        normals = outward / np.linalg.norm(outward, axis=1, keepdims=True)
        # Arc length along the arch, so that teeth keep their width where the arch turns.
        step = np.hypot(np.diff(half_width * np.sin(arch)), np.diff(depth * np.cos(arch)))
        length = np.concatenate(([0.0], np.cumsum(step)))
        length -= length[cols // 2]
        params = np.stack(np.broadcast_arrays(length[:, None], h, float(upper)), -1).reshape(-1, 3)
        part = Part(verts, _grid_faces(cols, rows), normals, params, TEETH, 0.8 if upper else 0.7)
        return part if upper else _with_jaw(part, expr.jaw)

    def _cavity(self, expr: Expression, rings: int = 12, segments: int = 32) -> Part:
        """The back of an ellipsoid behind the lips, seen from inside; its lower half follows the jaw."""
        centre = np.array([0.0, self.seam_y - 6.0, self.seam_z - 26.0])
        radii = np.array([1.25 * self.half_width, 24.0, 26.0])
        polar = np.linspace(0.0, np.deg2rad(100.0), rings)  # from the back (-z) towards the lips
        around = np.linspace(0.0, 2.0 * np.pi, segments)
        p, b = np.meshgrid(polar, around, indexing="ij")
        unit = np.stack((np.sin(p) * np.cos(b), np.sin(p) * np.sin(b), -np.cos(p)), -1).reshape(-1, 3)
        verts = centre + radii * unit
        inward = -unit / radii
        normals = inward / np.linalg.norm(inward, axis=1, keepdims=True)
        weight = 1.0 - smoothstep(verts[:, 1] - centre[1], -6.0, 6.0)
        verts = rotate_about_hinge(verts, expr.jaw * weight)
        normals = rotate_x(normals, expr.jaw * weight)
        return Part(verts, _grid_faces(rings, segments), normals, np.zeros_like(verts), CAVITY, 0.35)

    def _tongue(self, expr: Expression, rings: int = 8, segments: int = 24) -> Part:
        """The upper half of a flat ellipsoid on the floor of the cavity, moving with the jaw."""
        centre = np.array([0.0, self.seam_y - 15.0, self.seam_z - 32.0])
        radii = np.array([0.8 * self.half_width, 6.0, 17.0])
        polar = np.linspace(0.0, 0.5 * np.pi, rings)
        around = np.linspace(0.0, 2.0 * np.pi, segments)
        p, b = np.meshgrid(polar, around, indexing="ij")
        unit = np.stack((np.sin(p) * np.cos(b), np.cos(p), np.sin(p) * np.sin(b)), -1).reshape(-1, 3)
        outward = unit / radii
        part = Part(
            centre + radii * unit,
            _grid_faces(rings, segments),
            outward / np.linalg.norm(outward, axis=1, keepdims=True),
            np.zeros_like(unit),
            TONGUE,
            0.55,
        )
        return _with_jaw(part, expr.jaw)


def _with_jaw(part: Part, jaw: float) -> Part:
    part.verts = rotate_about_hinge(part.verts, jaw)
    part.normals = rotate_x(part.normals, jaw)
    return part


def neck_cap(ring: np.ndarray) -> Part:
    """A dark collar closing the bottom of the neck: a fan from the ring's centre to its points
    ring (N, 3), so that cameras below the head do not look into it."""
    centre = ring.mean(0)
    verts = np.concatenate((ring, centre[None]))
    n = len(ring)
    faces = np.stack((np.full(n, n), np.arange(n), (np.arange(n) + 1) % n), 1).astype(np.int64)
    normals = np.tile([0.0, -1.0, 0.0], (n + 1, 1))
    return Part(verts, faces, normals, np.zeros_like(verts), CLOTH, 0.8)


@dataclass
class HairStyle:
    """Strand count and shape of one subject's hair."""

    strands: int
    length_mm: tuple[float, float]
    width_mm: float = 0.7
    segments: int = 6
    flyaway: float = 0.0  # share of strands that stand out, rising 5-25 mm from the hair by their tips


def hair_strands(
    shape: HeadShape,
    scalp_weight: Callable[[np.ndarray], np.ndarray],
    style: HairStyle,
    rng: np.random.Generator,
    volume_mm: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Part:
    """Ribbons combed back and down, each point a few mm off the scalp (1 mm at the root, up to 4) or
    off the hair volume; flyaway strands rise further and point anywhere.

    scalp_weight: function of face-frame points (N, 3) -> (N,) in [0, 1], where hair grows;
    volume_mm: function of scalp points (N, 3) -> (N,) height of the hair volume there (none: 0).
    params: (shade in [0, 1] per strand, position along the strand in [0, 1], 0)."""
    roots = _sample_roots(shape, scalp_weight, style.strands, rng)
    n, k = len(roots), style.segments + 1
    # Shorter over the ears and at the nape, as a haircut leaves it.
    lengths = rng.uniform(*style.length_mm, size=n) * (0.35 + 0.65 * smoothstep(roots[:, 1], 30.0, 70.0))
    swirl = rng.normal(0.0, 0.35, size=n)
    offsets = 1.0 + rng.uniform(1.0, 3.0, size=n)[:, None] * np.linspace(0.0, 1.0, k)
    if style.flyaway > 0:
        flying = rng.uniform(size=n) < style.flyaway
        offsets += (flying * rng.uniform(5.0, 25.0, size=n))[:, None] * np.linspace(0.0, 1.0, k) ** 1.5
        lengths = np.where(flying, 1.6 * lengths, lengths)
        swirl = np.where(flying, rng.normal(0.0, 1.5, size=n), swirl)
    points = np.empty((n, k, 3))
    d = roots / np.linalg.norm(roots, axis=1, keepdims=True)
    for i in range(k):
        surface = _surface_along(shape, d)
        lift = offsets[:, i] if volume_mm is None else offsets[:, i] + volume_mm(surface)
        points[:, i] = surface + d * lift[:, None]
        comb = np.array([0.0, -0.35, -1.0]) + swirl[:, None] * np.cross(d, [0.0, -0.35, -1.0])
        tangent = comb - np.sum(comb * d, axis=1, keepdims=True) * d
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        d = points[:, i] + tangent * (lengths / style.segments)[:, None]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
    along = np.gradient(points, axis=1)
    radial = points / np.linalg.norm(points, axis=-1, keepdims=True)
    side = np.cross(along, radial)
    side *= 0.5 * style.width_mm / np.linalg.norm(side, axis=-1, keepdims=True)
    verts = np.stack((points - side, points + side), axis=2).reshape(-1, 3)  # (n, k, 2) -> rows
    normals = np.repeat(radial, 2, axis=1).reshape(-1, 3)
    faces = (_grid_faces(k, 2)[None] + 2 * k * np.arange(n)[:, None, None]).reshape(-1, 3)
    shade = np.repeat(rng.uniform(0.0, 1.0, size=n), 2 * k)
    t = np.tile(np.repeat(np.linspace(0.0, 1.0, k), 2), n)
    params = np.stack((shade, t, np.zeros_like(t)), 1)
    return Part(verts, faces, normals, params, HAIR)


def _surface_along(shape: HeadShape, d: np.ndarray) -> np.ndarray:
    """Identity surface points (N, 3) along unit directions d (N, 3) from the origin."""
    theta, phi = np.arctan2(d[:, 0], d[:, 2]), np.arccos(np.clip(d[:, 1], -1.0, 1.0))
    return shape.identity_points(theta, phi)


def _sample_roots(
    shape: HeadShape, scalp_weight: Callable[[np.ndarray], np.ndarray], count: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` scalp points, uniform over directions and accepted with probability scalp_weight."""
    roots = [np.zeros((0, 3))]
    total = 0
    while total < count:
        d = rng.normal(size=(4 * count, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        d = d[d[:, 1] > -0.5]  # hair grows above the ears
        points = _surface_along(shape, d)
        keep = rng.uniform(size=len(points)) < scalp_weight(points)
        roots.append(points[keep])
        total += int(keep.sum())
    return np.concatenate(roots)[:count]


def hair_volume(
    shape: HeadShape,
    volume_mm: Callable[[np.ndarray], np.ndarray],
    streaks: Callable[[np.ndarray], np.ndarray],
) -> Part:
    """The outer surface of the hair: the scalp of the coarse grid lifted along the radius by
    volume_mm (function of face-frame points (N, 3) -> (N,) mm, 0 where no hair grows); faces with
    no lifted corner are left out. streaks: function of scalp points (N, 3) -> (N,) shade in [0, 1].
    params: (shade, 0.3, 0) as for strands."""
    grid = ParamGrid.coarse()
    u, s = grid.vertex_params()
    scalp = shape.identity_points(theta_of_u(u), phi_of_s(s))
    lift, shade = volume_mm(scalp), streaks(scalp)
    verts = scalp * (1.0 + lift / np.linalg.norm(scalp, axis=1))[:, None]
    faces = grid.faces()
    normals = vertex_normals(torch.from_numpy(verts), torch.from_numpy(faces)).numpy()
    faces = faces[lift[faces].max(1) > 0.2]
    params = np.stack((shade, np.full_like(shade, 0.3), np.zeros_like(shade)), 1)
    return Part(verts, faces, normals, params, HAIR)


@dataclass(frozen=True)
class Shoulders:
    """Shoulders and chest below the neck (mm): a tube whose rounded-rectangle section widens from a
    collar round the neck to the shoulders and slopes down outwards."""

    collar_y: float = -135.0  # face-frame y of the collar
    drop: float = 150.0  # height of the tube below the collar
    collar_radii: tuple[float, float] = (56.0, 54.0)  # half width, half depth at the collar
    half_width: float = 185.0  # at the shoulders
    half_depth: float = 110.0  # at the chest
    slope: float = 30.0  # how far the shoulder tips sit below the collar line
    centre_z: float = -15.0

    @staticmethod
    def sample(rng: np.random.Generator, neck_scale: float) -> Shoulders:
        u = rng.uniform(-1.0, 1.0, size=4)
        return Shoulders(
            collar_radii=(56.0 * neck_scale, 54.0 * neck_scale),
            half_width=185.0 + 20.0 * u[0],
            half_depth=110.0 + 12.0 * u[1],
            slope=30.0 + 12.0 * u[2],
            centre_z=-15.0 + 8.0 * u[3],
        )

    def part(self, rows: int = 24, cols: int = 72) -> Part:
        """The tube as a Part (CLOTH); params[:, 0]: shading of folds in [-0.12, 0.12]."""
        h, a = np.meshgrid(np.linspace(0.0, 1.0, rows), np.linspace(0.0, 2.0 * np.pi, cols), indexing="ij")
        grow = smoothstep(h, 0.0, 0.55)
        rx = self.collar_radii[0] + (self.half_width - self.collar_radii[0]) * grow
        rz = self.collar_radii[1] + (self.half_depth - self.collar_radii[1]) * grow
        c, s = np.cos(a), np.sin(a)
        # A superellipse of exponent 3 (|x/rx|^3 + |z/rz|^3 = 1): a rounded rectangle.
        x, z = rx * np.sign(c) * np.abs(c) ** (2 / 3), rz * np.sign(s) * np.abs(s) ** (2 / 3)
        y = self.collar_y - self.drop * h - self.slope * grow * (np.abs(x) / self.half_width) ** 2
        verts = np.stack((x, y, z + self.centre_z), -1).reshape(-1, 3)
        outward = np.stack(
            (
                np.sign(x) * np.abs(x / rx) ** 2 / rx,
                np.full_like(x, 0.3 / self.drop),
                np.sign(z) * np.abs(z / rz) ** 2 / rz,
            ),
            -1,
        ).reshape(-1, 3)
        normals = outward / np.linalg.norm(outward, axis=1, keepdims=True)
        folds = 0.12 * np.sin(5.0 * a + 4.0 * h) * np.sin(3.0 * a - 2.0 * h + 1.0)
        params = np.stack((folds, h, np.zeros_like(h)), -1).reshape(-1, 3)
        return Part(verts, _grid_faces(rows, cols), normals, params, CLOTH, 0.9)
