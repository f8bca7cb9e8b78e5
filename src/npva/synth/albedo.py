"""Procedural colours (linear RGB albedo in [0, 1]) of the synthetic subject.

Skin is a function of the identity surface point, baked into a texture over the grid coordinates
(the layout of the tracked mesh's UVs): tone with blotches and pores, redder lips and cheeks, eyebrows,
lash lines, nostrils, freckles, and darker scalp under the hair. The other materials are coloured from
their part's material coordinates (parts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from npva.synth.grid import phi_of_s, theta_of_u
from npva.synth.head import HeadShape, smoothstep
from npva.synth.noise import ValueNoise
from npva.synth.parts import CAVITY, CLOTH, EYE, HAIR, TEETH, TONGUE

_HAIR_COLOURS = np.array(
    [[0.03, 0.025, 0.02], [0.09, 0.055, 0.03], [0.2, 0.12, 0.06], [0.42, 0.32, 0.18], [0.3, 0.11, 0.05]]
)
_IRIS_COLOURS = np.array([[0.22, 0.11, 0.04], [0.32, 0.24, 0.1], [0.16, 0.26, 0.4], [0.16, 0.26, 0.15]])
_LIGHT_SKIN, _DARK_SKIN = np.array([0.8, 0.58, 0.47]), np.array([0.36, 0.22, 0.15])
# Hairline height (face-frame y, mm) by absolute azimuth: forehead, temples, sideburns, over the ears,
# behind the ears, nape.
_HAIRLINE_AZIMUTH = np.array([0.0, 0.55, 0.95, 1.22, 1.35, 1.8, 2.0, 2.4, np.pi])
_HAIRLINE_Y = np.array([62.0, 56.0, 32.0, -8.0, 34.0, 34.0, 10.0, -50.0, -58.0])


@dataclass(frozen=True)
class Look:
    """Colours of one subject."""

    skin: np.ndarray  # (3,)
    lips: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    freckles: float  # 0 none .. 1 many
    cloth: np.ndarray = field(default_factory=lambda: np.array([0.1, 0.11, 0.14]))  # collar, clothing

    @staticmethod
    def sample(rng: np.random.Generator) -> Look:
        tone = rng.uniform(0.0, 1.0)
        skin = (1.0 - tone) * _LIGHT_SKIN + tone * _DARK_SKIN
        return Look(
            skin=skin,
            lips=skin * np.array([0.95, 0.55, 0.55]),
            hair=_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))],
            iris=_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))],
            freckles=float(rng.uniform(0.3, 1.0) * (1.0 - tone)),
        )

    def with_clothing(self, rng: np.random.Generator) -> Look:
        """This look with clothing of a colour drawn from `rng` (dark to mid tones, any hue)."""
        hue = rng.uniform(0.0, 1.0, size=3)
        return replace(self, cloth=rng.uniform(0.06, 0.45) * (0.4 + 0.6 * hue / hue.max()))


def scalp_weight(points: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: where hair grows on the face-frame points (N, 3)."""
    azimuth = np.abs(np.arctan2(points[:, 0], points[:, 2]))
    return smoothstep(points[:, 1] - np.interp(azimuth, _HAIRLINE_AZIMUTH, _HAIRLINE_Y), -2.0, 5.0)


def _mix(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return base + weight[:, None] * (colour - base)


class SkinAlbedo:
    """Skin colour as a function of the identity surface."""

    def __init__(self, shape: HeadShape, look: Look, noise: ValueNoise):
        self.shape, self.look, self.noise = shape, look, noise
        tip_y = 4.0 - 40.0 * shape.identity.nose_length
        self._nostrils = [
            _surface_towards(shape, np.array([sign * 6.5 * shape.identity.nose_width, tip_y - 10.0, 104.0]))
            for sign in (1.0, -1.0)
        ]

    def at(self, points: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """(N, 3) albedo of identity points (N, 3) with grid angles theta, phi (N,)."""
        look, noise = self.look, self.noise
        x, y, z = points.T
        front = smoothstep(z, 20.0, 50.0)
        blotch = noise.fbm(points, 30.0, 3)[:, None] - 0.5
        colour = look.skin * (1.0 + 0.16 * blotch * np.array([1.0, 0.6, 0.5]))
        colour *= (0.94 + 0.12 * noise(points + 101.0, 0.9))[:, None]  # pores
        cheeks = front * np.exp(-(((np.abs(x) - 40.0) / 16.0) ** 2) - ((y + 28.0) / 16.0) ** 2)
        colour = _mix(colour, look.skin * np.array([1.05, 0.62, 0.56]), 0.25 * cheeks)
        colour = _mix(colour, look.lips, front * self._lips(theta, phi))
        spots = smoothstep(noise(points + 57.0, 1.7), 0.72, 0.8)
        region = front * np.clip(
            np.exp(-(((np.abs(x) - 28.0) / 22.0) ** 2) - ((y + 22.0) / 16.0) ** 2)
            + np.exp(-((x / 12.0) ** 2) - ((y + 20.0) / 16.0) ** 2),
            0.0,
            1.0,
        )
        colour *= 1.0 - (0.4 * look.freckles * spots * region)[:, None] * np.array([0.8, 1.0, 1.1])
        colour = _mix(colour, look.hair * 1.2, front * self._brows(points))
        colour = _mix(colour, look.hair * 0.5, front * self._lash_lines(points))
        for centre in self._nostrils:
            dist = (points - centre) / np.array([2.6, 2.0, 3.6])
            colour = _mix(colour, look.skin * 0.2, np.exp(-np.sum(dist * dist, axis=1) * 1.5))
        colour = _mix(colour, look.hair * 0.7, 0.85 * scalp_weight(points))
        return colour * (1.0 - 0.12 * smoothstep(-y, 110.0, 150.0))[:, None]

    def _lips(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        across, down = self.shape.mouth_coords(theta, phi)
        width = self.shape.identity.mouth_half_width + 1.0
        height = np.where(down < 0.0, 8.0, 11.0) * np.sqrt(np.clip(1.0 - (across / width) ** 2, 0.05, 1.0))
        inside = 1.0 - np.sqrt((across / width) ** 2 + (down / height) ** 2)
        line = np.exp(-((down / 0.7) ** 2)) * (np.abs(across) < width)  # where the lips meet
        return np.clip(smoothstep(inside, -0.05, 0.15) + 0.5 * line, 0.0, 1.0)

    def _brows(self, points: np.ndarray) -> np.ndarray:
        """Arched bands over the eyes, thinning outwards, with hair-like strokes."""
        weight = np.zeros(len(points))
        strokes = self.noise(points * np.array([1.0, 5.0, 1.0]) + 211.0, 2.0)
        for centre in self.shape.eye_centres:
            out = (points[:, 0] - centre[0]) * np.sign(centre[0])
            t = np.clip((out + 18.0) / 40.0, 0.0, 1.0)
            mid = centre[1] + 14.0 + 4.0 * np.sin(np.pi * t**0.8)
            half = 3.4 - 1.8 * t
            band = smoothstep(half - np.abs(points[:, 1] - mid), -0.6, 0.8)
            weight += band * smoothstep(out, -20.0, -16.0) * (1.0 - smoothstep(out, 20.0, 24.0))
        return np.clip(weight, 0.0, 1.0) * (0.55 + 0.45 * strokes)

    def _lash_lines(self, points: np.ndarray) -> np.ndarray:
        """Dark margins of the open upper lids and, fainter, the lower lids."""
        weight = np.zeros(len(points))
        for centre in self.shape.eye_centres:
            dx, dy = points[:, 0] - centre[0], points[:, 1] - centre[1]
            along = np.clip(1.0 - (dx / 13.5) ** 2, 0.0, 1.0) ** 0.7
            inside = np.abs(dx) < 14.5
            weight += inside * np.exp(-(((dy - 6.0 * along - 0.3) / 1.0) ** 2))
            weight += 0.4 * inside * np.exp(-(((dy + 4.0 * along + 0.2) / 0.7) ** 2))
        return np.clip(weight, 0.0, 1.0)

    def texture(self, size: int) -> np.ndarray:
        """(size, size, 3) float32 albedo over the grid coordinates in UV image layout: texel (i, j) at
        u = (j + 0.5) / size, s = 1 - v = (i + 0.5) / size."""
        centres = (np.arange(size) + 0.5) / size
        u, s = np.meshgrid(centres, centres)
        theta, phi = theta_of_u(u.ravel()), phi_of_s(s.ravel())
        points = self.shape.identity_points(theta, phi)
        return self.at(points, theta, phi).reshape(size, size, 3).astype(np.float32)


def _surface_towards(shape: HeadShape, target: np.ndarray) -> np.ndarray:
    d = target / np.linalg.norm(target)
    return shape.identity_points(np.array([np.arctan2(d[0], d[2])]), np.array([np.arccos(d[1])]))[0]


def part_albedo(material: np.ndarray, params: np.ndarray, look: Look) -> np.ndarray:
    """(N, 3) albedo of non-skin materials (N,) from their material coordinates params (N, 3); skin
    (coloured from the baked texture) and background rows are left 0."""
    colour = np.zeros((len(material), 3))
    eye = material == EYE
    colour[eye] = _eye_colour(params[eye], look)
    teeth = material == TEETH
    colour[teeth] = _teeth_colour(params[teeth])
    colour[material == CAVITY] = (0.2, 0.05, 0.05)
    colour[material == TONGUE] = (0.55, 0.2, 0.2)
    cloth = material == CLOTH
    colour[cloth] = look.cloth * (1.0 + params[cloth, :1])  # params[:, 0]: shading of folds, 0 flat
    hair = material == HAIR
    shade, along = params[hair, 0], params[hair, 1]
    colour[hair] = look.hair * ((0.6 + 0.8 * shade) * (1.0 + 0.35 * along))[:, None]
    return colour


def _eye_colour(params: np.ndarray, look: Look) -> np.ndarray:
    """Sclera, iris with radial fibres and a dark limbus, pupil; params are unit sphere points whose
    z axis is the gaze."""
    angle = np.arccos(np.clip(params[:, 2], -1.0, 1.0))
    around = np.arctan2(params[:, 1], params[:, 0])
    fibres = 0.8 + 0.2 * np.sin(23.0 * around) * np.sin(7.0 * around + 1.3)
    iris = look.iris * fibres[:, None] * (1.0 - 0.6 * smoothstep(angle, 0.4, 0.5))[:, None]
    sclera = np.array([0.8, 0.77, 0.72]) * (1.0 - 0.15 * smoothstep(angle, 1.0, 1.6))[:, None]
    colour = _mix(sclera, iris, 1.0 - smoothstep(angle, 0.49, 0.52))
    return _mix(colour, np.array([0.015, 0.012, 0.01]), 1.0 - smoothstep(angle, 0.19, 0.22))


def _teeth_colour(params: np.ndarray) -> np.ndarray:
    """Ivory teeth 7.5 mm wide with dark gaps, greyer biting edges and pink gums."""
    arc, height = params[:, 0], params[:, 1]
    phase = arc / 7.5
    gap = np.exp(-(((phase - np.round(phase)) * 7.5 / 0.45) ** 2))
    colour = np.array([0.86, 0.82, 0.72]) * (1.0 - 0.65 * gap)[:, None]
    colour *= (1.0 - 0.2 * (1.0 - smoothstep(height, 0.0, 0.12)))[:, None]
    return _mix(colour, np.array([0.6, 0.28, 0.28]), smoothstep(height, 0.72, 0.8))
