"""Shading of the synthetic scene: images, MVS-like depth maps and the average UV texture.

Light is fixed in the world: directional lights and an ambient term (Lambert), plus a Blinn-Phong
highlight per material; the studio light (two lights) unless a subject draws its own (`Lighting`).
Every pixel is coloured from interpolated material coordinates, so texture detail does not depend on
the triangle size. Images are supersampled and box-filtered.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from npva.geometry.camera import Camera, look_at
from npva.geometry.mesh import to_world, vertex_normals
from npva.geometry.raster import interpolate, rasterize_camera
from npva.geometry.texture import sample_texture
from npva.synth.albedo import Look, part_albedo
from npva.synth.parts import CAVITY, EYE, SKIN, TEETH, TONGUE, Part
from npva.synth.scene import view_direction

BACKGROUND = np.array([0.36, 0.36, 0.37])
AMBIENT = np.array([0.24, 0.24, 0.25])
# (unit direction towards the light, colour), world frame: a key light up-left, a cooler fill right.
LIGHTS = (
    (np.array([-0.45, 0.55, 0.7]) / np.linalg.norm([-0.45, 0.55, 0.7]), np.array([0.78, 0.74, 0.68])),
    (np.array([0.7, 0.05, 0.6]) / np.linalg.norm([0.7, 0.05, 0.6]), np.array([0.3, 0.32, 0.36])),
)
# Blinn-Phong strength and exponent per material index (0 background .. 7 cloth, see parts.py).
_SPECULAR = np.array([0.0, 0.12, 0.9, 0.35, 0.0, 0.3, 0.25, 0.0])
_SHININESS = np.array([1.0, 24.0, 300.0, 60.0, 1.0, 40.0, 18.0, 1.0])


@dataclass(frozen=True)
class Lighting:
    """World-fixed light: ambient (3,), (unit direction towards the light (3,), colour (3,)) per light,
    and the skin's Blinn-Phong strength and exponent."""

    ambient: np.ndarray
    lights: tuple[tuple[np.ndarray, np.ndarray], ...]
    skin_specular: float = float(_SPECULAR[SKIN])
    skin_shininess: float = float(_SHININESS[SKIN])

    @staticmethod
    def sample(rng: np.random.Generator, count: int) -> Lighting:
        """`count` lights in front of and above the head (within 70 degrees of azimuth, 5-55 of
        elevation), warm or cool, about as bright together as the studio light; oily skin."""
        weights = rng.uniform(0.4, 1.0, size=count)
        lights = []
        for weight in weights / weights.sum():
            direction = view_direction(rng.uniform(5.0, 55.0), rng.uniform(-70.0, 70.0))
            tint = np.array([1.0, 0.97, 0.92]) + rng.uniform(-0.08, 0.08) * np.array([1.0, 0.0, -1.0])
            lights.append((direction, 1.1 * weight * tint))
        return Lighting(
            ambient=np.full(3, rng.uniform(0.15, 0.25)),
            lights=tuple(lights),
            skin_specular=rng.uniform(0.2, 0.4),
            skin_shininess=rng.uniform(25.0, 50.0),
        )


STUDIO = Lighting(AMBIENT, LIGHTS)
SEEN_THROUGH = (EYE, TEETH, CAVITY, TONGUE)  # behind the tracked mesh: eyes, and inside the mouth
FACE_VIEW_CENTRE = np.array([0.0, -30.0, 80.0])  # face-frame point the face camera looks at


@dataclass
class Scene:
    """Everything visible in one frame, world frame, as tensors.

    verts (V, 3), faces (F, 3), normals (V, 3); params (P, 3) with param_faces (F, 3) indexing them;
    material (F,) int64 and occlusion (F,) per face. Skin faces (a closed surface but for the neck and
    the mouth) facing away from a camera are left out of its rasterization: the faces in front hide
    them, and through the open mouth the cavity should be seen, not the inside of the cheeks."""

    verts: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    params: torch.Tensor
    param_faces: torch.Tensor
    material: torch.Tensor
    occlusion: torch.Tensor

    def faces_towards(self, camera: Camera) -> torch.Tensor:
        """Indices (F',) of the faces to rasterize for a camera: all but skin faces wound away from it
        and part faces whose normals turn well away (strands and eyes behind the head)."""
        corners = self.verts[self.faces]  # (F, 3, 3)
        to_camera = torch.as_tensor(camera.centre, dtype=corners.dtype) - corners[:, 0]
        winding = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        shading = self.normals[self.faces].sum(1)
        facing = torch.where(
            self.material == SKIN, (winding * to_camera).sum(-1), (shading * to_camera).sum(-1)
        )
        margin = torch.where(self.material == SKIN, 0.0, -0.3 * shading.norm(dim=-1) * to_camera.norm(dim=-1))
        keep = facing > margin
        return torch.nonzero(keep).squeeze(1)


def build_scene(
    skin_verts: np.ndarray,
    skin_faces: np.ndarray,
    skin_uvs: np.ndarray,
    skin_face_uvs: np.ndarray,
    parts: list[Part],
    pose: tuple[np.ndarray, np.ndarray],
) -> Scene:
    """Join the skin (face-frame verts (V, 3) with its UV layout as material coordinates) and the parts,
    and move them to the world with the head pose (R, t)."""
    R, t = pose
    verts = [skin_verts]
    faces = [skin_faces]
    skin_normals = vertex_normals(torch.from_numpy(skin_verts), torch.from_numpy(skin_faces)).numpy()
    normals = [skin_normals]
    params = [np.concatenate((skin_uvs, np.zeros((len(skin_uvs), 1))), 1)]
    param_faces = [skin_face_uvs]
    material = [np.full(len(skin_faces), SKIN)]
    occlusion = [np.ones(len(skin_faces))]
    num_verts, num_params = len(skin_verts), len(skin_uvs)
    for part in parts:
        verts.append(part.verts)
        faces.append(part.faces + num_verts)
        normals.append(part.normals)
        params.append(part.params)
        param_faces.append(part.faces + num_params)
        material.append(np.full(len(part.faces), part.material))
        occlusion.append(np.full(len(part.faces), part.occlusion))
        num_verts += len(part.verts)
        num_params += len(part.params)

    def tensor(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrays)).to(dtype)

    return Scene(
        verts=to_world(tensor(verts, torch.float64), R, t).float(),
        faces=tensor(faces, torch.int64),
        normals=(tensor(normals, torch.float64) @ torch.from_numpy(R).T).float(),
        params=tensor(params, torch.float32),
        param_faces=tensor(param_faces, torch.int64),
        material=tensor(material, torch.int64),
        occlusion=tensor(occlusion, torch.float32),
    )


@dataclass
class View:
    """One rendered camera at `supersample` times the image size (suffix _ss) and the final image.

    image (H, W, 3) float in [0, 1]; depth_ss camera z in mm (0 background); facing_ss |cos| between
    normal and view ray; material_ss (0 background)."""

    image: np.ndarray
    depth_ss: np.ndarray
    facing_ss: np.ndarray
    material_ss: np.ndarray


def shade(
    albedo: torch.Tensor,
    normal: torch.Tensor,
    material: torch.Tensor,
    occlusion: torch.Tensor,
    to_eye: torch.Tensor | None = None,
    lighting: Lighting = STUDIO,
) -> torch.Tensor:
    """Colour (N, 3) of surface points: albedo (N, 3) times ambient plus Lambert for unit normals
    (N, 3), times occlusion (N,); plus the Blinn-Phong highlight of each material (N,) when the unit
    directions to the eye (N, 3) are given."""
    diffuse = torch.as_tensor(lighting.ambient, dtype=albedo.dtype).expand_as(albedo).clone()
    highlight = torch.zeros_like(albedo)
    specular, shininess = _SPECULAR.copy(), _SHININESS.copy()
    specular[SKIN], shininess[SKIN] = lighting.skin_specular, lighting.skin_shininess
    strength = torch.as_tensor(specular, dtype=albedo.dtype)[material]
    shininess = torch.as_tensor(shininess, dtype=albedo.dtype)[material]
    for direction, colour in lighting.lights:
        light = torch.as_tensor(direction, dtype=albedo.dtype)
        tint = torch.as_tensor(colour, dtype=albedo.dtype)
        lambert = (normal @ light).clamp(min=0.0)
        diffuse = diffuse + lambert[:, None] * tint
        if to_eye is not None:
            half = torch.nn.functional.normalize(to_eye + light, dim=-1)
            lobe = (normal * half).sum(-1).clamp(min=0.0) ** shininess * (lambert > 0)
            highlight = highlight + (strength * lobe)[:, None] * tint
    return (albedo * diffuse + highlight) * occlusion[:, None]


def render_view(
    scene: Scene,
    camera: Camera,
    height: int,
    width: int,
    supersample: int,
    skin_texture: torch.Tensor,
    look: Look,
    specular: bool = True,
    lighting: Lighting = STUDIO,
) -> View:
    """Render the scene into a camera at (height, width), supersampled per axis."""
    hs, ws = height * supersample, width * supersample
    drawn = scene.faces_towards(camera)
    faces = scene.faces[drawn]
    frags = rasterize_camera(scene.verts, faces, camera, hs, ws)
    face_id = frags.face_id.reshape(-1)
    covered = torch.nonzero(face_id >= 0).squeeze(1)
    ids = drawn[face_id[covered]]
    material = scene.material[ids]
    surface = interpolate(torch.cat((scene.verts, scene.normals), 1), faces, frags).reshape(-1, 6)[covered]
    point, normal = surface[:, :3], torch.nn.functional.normalize(surface[:, 3:], dim=-1)
    params = interpolate(scene.params, scene.param_faces[drawn], frags).reshape(-1, 3)[covered]
    to_eye = torch.nn.functional.normalize(torch.as_tensor(camera.centre, dtype=point.dtype) - point, dim=-1)
    # Normals of the mouth's inner surfaces and of strands may face away: light them from the eye's side.
    flip = (material != SKIN) & ((normal * to_eye).sum(-1) < 0)
    normal = torch.where(flip[:, None], -normal, normal)

    albedo = torch.from_numpy(part_albedo(material.numpy(), params.double().numpy(), look)).float()
    skin = material == SKIN
    albedo[skin] = sample_texture(skin_texture.permute(2, 0, 1), params[skin, :2])
    colour = shade(albedo, normal, material, scene.occlusion[ids], to_eye if specular else None, lighting)

    image = torch.as_tensor(BACKGROUND, dtype=torch.float32).repeat(hs * ws, 1)
    image[covered] = colour.clamp(0.0, 1.0)
    image = image.view(height, supersample, width, supersample, 3).mean((1, 3))
    facing = torch.zeros(hs * ws)
    facing[covered] = (normal * to_eye).sum(-1).abs()
    material_ss = torch.zeros(hs * ws, dtype=torch.int64)
    material_ss[covered] = material
    return View(
        image=image.numpy(),
        depth_ss=frags.depth.numpy(),
        facing_ss=facing.view(hs, ws).numpy(),
        material_ss=material_ss.view(hs, ws).numpy(),
    )


def mvs_depth(view: View, supersample: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) depth in metres as a multi-view stereo tool delivers it: Gaussian noise (0.5 mm), holes
    (0) at grazing angles, at depth edges, in random blobs and on the background."""
    s = supersample
    hs, ws = view.depth_ss.shape
    height, width = hs // s, ws // s
    blocks = view.depth_ss.reshape(height, s, width, s)
    depth = blocks.mean((1, 3))
    known = (blocks > 0).all((1, 3)) & (blocks.max((1, 3)) - blocks.min((1, 3)) < 8.0)
    known &= view.facing_ss.reshape(height, s, width, s).mean((1, 3)) > 0.25
    # Blobs: a coarse random field (30 cells over the image height), smoothly enlarged.
    cells = rng.random((30, max(2, round(30 * width / height)))).astype(np.float32)
    known &= cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC) < 0.85
    metres = (depth + rng.normal(0.0, 0.5, size=depth.shape)) / 1000.0
    # Multiples of 2^-16 m (0.015 mm, far under the noise): the files compress about twice as well.
    metres = np.round(metres * 65536.0) / 65536.0
    return np.where(known, metres, 0.0).astype(np.float32)


def face_camera(
    pose: tuple[np.ndarray, np.ndarray], size: int, elevation_deg: float = 0.0, azimuth_deg: float = 0.0
) -> Camera:
    """A narrow camera 600 mm from the face that follows the head pose and sees the face (170 mm
    across), from the face-frame direction (elevation, azimuth): (0, 0) is head-on, positive elevation
    above, positive azimuth towards +x. What a capture camera sees of the eyes and through the mouth."""
    R, t = pose
    target = R @ FACE_VIEW_CENTRE + t
    centre = R @ (FACE_VIEW_CENTRE + 600.0 * view_direction(elevation_deg, azimuth_deg)) + t
    focal = size * 600.0 / 170.0
    K = np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return look_at("face", centre, target, R @ np.array([0.0, 1.0, 0.0]), K, size, size)
