"""The per-frame view-averaged texture in the coarse mesh's UV layout.

A capture system unwraps every camera onto the tracked mesh and averages: on skin that gives the
albedo times the (view-independent) diffuse shading of the true surface; where the tracked mesh spans
the open mouth, the cameras see the mouth interior behind it. Here each texel of the coarse UV layout
is the albedo of the true surface at its grid coordinates times its diffuse shading; texels around the
eyes and the mouth whose coarse point is seen in front of an eyeball, teeth, cavity or tongue take
that colour instead, averaged over views of the scene from the directions of the dome cameras that face
the head (within 30 degrees of head-on): as in a capture, the mouth interior, seen with parallax behind
the tracked surface, is blurred by the average.

`unwrap` makes the texture as a capture system does (variant "capture"): every texel's point on the
tracked mesh is looked up in each photo that sees it, and the colours are averaged with weights that
favour head-on views. Lighting and highlights are baked in, texels blur where the tracked mesh is off
the true surface, the mouth smears; texels no photo sees are filled from their neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from npva.geometry.camera import Camera, project
from npva.geometry.mesh import vertex_normals
from npva.geometry.raster import interpolate, rasterize_camera, rasterize_uv
from npva.synth.albedo import SkinAlbedo
from npva.synth.grid import SEAM_S, ParamGrid, phi_of_s, theta_of_u
from npva.synth.head import Expression, HeadShape
from npva.synth.parts import SKIN
from npva.synth.render import SEEN_THROUGH, View, shade

_STEP = 1e-4  # grid-coordinate step of the finite differences that give texel normals
VISIBLE_DEPTH_MM = 4.0  # a texel is seen by a photo when it lies this close to the mesh's depth there
MIN_FACING = 0.2  # cosine between the mesh normal and the view ray under which a photo is not used


class AverageTexture:
    """Texels of the coarse UV layout at one size, with what does not change between frames."""

    def __init__(self, shape: HeadShape, skin: SkinAlbedo, grid: ParamGrid, size: int):
        self.shape, self.grid, self.size = shape, grid, size
        uvs, face_uvs = grid.uv_layout()
        self.frags = rasterize_uv(torch.from_numpy(uvs), torch.from_numpy(face_uvs), size)
        self.faces = torch.from_numpy(grid.faces())
        covered = (self.frags.face_id >= 0).numpy()
        self.rows, self.cols = np.nonzero(covered)
        u, s = (self.cols + 0.5) / size, (self.rows + 0.5) / size
        self.side = np.sign(s - SEAM_S)
        # Texel centre and two nearby points along u and s, on the identity surface.
        self.params = [(u, s), (u + _STEP, s), (u, s + _STEP)]
        self.identity = [shape.identity_points(theta_of_u(a), phi_of_s(b)) for a, b in self.params]
        theta, phi = theta_of_u(u), phi_of_s(s)
        self.albedo = torch.from_numpy(skin.at(self.identity[0], theta, phi)).float()
        across, down = shape.mouth_coords(theta, phi)
        self.near_openings = (np.abs(across) < shape.identity.mouth_half_width + 6.0) & (np.abs(down) < 10.0)
        for eye in shape.eye_centres:
            offset = np.abs(self.identity[0][:, :2] - eye[:2])
            self.near_openings |= (offset[:, 0] < 18.0) & (offset[:, 1] < 12.0) & (self.identity[0][:, 2] > 0)

    def render(
        self,
        expr: Expression,
        pose: tuple[np.ndarray, np.ndarray],
        coarse_world: torch.Tensor,
        face_views: Sequence[tuple[View, Camera]],
    ) -> np.ndarray:
        """(size, size, 3) float texture of one frame; 0 outside the UV layout.

        coarse_world: (V, 3) tracked mesh in the world; face_views: diffuse renders of the scene and
        the face cameras they come from (see render.face_camera). Each view gives a texel near an
        opening the colour it sees through the texel's coarse point where that is an eyeball, teeth,
        cavity or tongue, else the texel's shaded albedo; the texture is the mean over the views."""
        R, _ = pose
        centre, along_u, along_s = (
            self.shape.deform(p, theta_of_u(a), phi_of_s(b), self.side, expr)
            for p, (a, b) in zip(self.identity, self.params, strict=True)
        )
        normal = np.cross(along_s - centre, along_u - centre)  # outward (see grid.ParamGrid.faces)
        normal = torch.from_numpy(normal / np.linalg.norm(normal, axis=1, keepdims=True) @ R.T).float()
        material = torch.full((len(normal),), SKIN)
        colour = shade(self.albedo, normal, material, torch.ones(len(normal))).numpy()

        texel_world = interpolate(coarse_world, self.faces, self.frags)[self.rows, self.cols]
        pick = np.flatnonzero(self.near_openings)
        seen = np.zeros((len(pick), 3), dtype=np.float64)
        for view, camera in face_views:
            pixel, _ = project(texel_world[pick].double(), camera)
            col = np.clip(pixel[:, 0].numpy().astype(int), 0, camera.width - 1)
            row = np.clip(pixel[:, 1].numpy().astype(int), 0, camera.height - 1)
            behind = np.isin(view.material_ss[row, col], SEEN_THROUGH)
            seen += np.where(behind[:, None], view.image[row, col], colour[pick])
        colour[pick] = seen / len(face_views)

        texture = np.zeros((self.size, self.size, 3), dtype=np.float32)
        texture[self.rows, self.cols] = np.clip(colour, 0.0, 1.0)
        return texture

    def unwrap(self, mesh_world: torch.Tensor, photos: Sequence[tuple[np.ndarray, Camera]]) -> np.ndarray:
        """(size, size, 3) float texture unwrapped from photos through the tracked mesh; 0 outside
        the UV layout.

        mesh_world: (V, 3) tracked mesh in the world (mm); photos: images (H, W, 3) in [0, 1] with
        their cameras (intrinsics at that size). A texel's colour is the mean of the photos that see
        its point on the mesh (in front of the mesh's own depth there, facing the camera), weighted by
        the squared cosine of the view angle; texels that no photo sees are inpainted."""
        mesh_world = mesh_world.double()
        texel_world = interpolate(mesh_world, self.faces, self.frags)[self.rows, self.cols]
        normals = interpolate(vertex_normals(mesh_world, self.faces), self.faces, self.frags)
        normals = torch.nn.functional.normalize(normals[self.rows, self.cols], dim=-1)
        total = np.zeros((len(self.rows), 3))
        weights = np.zeros(len(self.rows))
        for image, camera in photos:
            weight, pixel = self._photo_weights(mesh_world, texel_world, normals, camera)
            colour = _bilinear(image, pixel - 0.5)  # remap takes pixel centres at integers
            total += weight[:, None] * colour
            weights += weight
        seen = weights > 0
        texture = np.zeros((self.size, self.size, 3), dtype=np.float32)
        texture[self.rows[seen], self.cols[seen]] = total[seen] / weights[seen, None]
        unseen = np.zeros((self.size, self.size), dtype=np.uint8)
        unseen[self.rows[~seen], self.cols[~seen]] = 255
        filled = cv2.inpaint(np.round(texture * 255).astype(np.uint8), unseen, 3, cv2.INPAINT_TELEA)
        texture[unseen > 0] = filled[unseen > 0] / 255.0
        return texture

    def _photo_weights(
        self, mesh_world: torch.Tensor, texel_world: torch.Tensor, normals: torch.Tensor, camera: Camera
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weights (N,) of one photo for the texels (0 where it does not see them) and their pixel
        coordinates (N, 2) in it."""
        depth_map = rasterize_camera(mesh_world, self.faces, camera).depth.numpy()
        pixel, depth = project(texel_world, camera)
        pixel, depth = pixel.numpy(), depth.numpy()
        col = np.clip(pixel[:, 0].astype(int), 0, camera.width - 1)
        row = np.clip(pixel[:, 1].astype(int), 0, camera.height - 1)
        inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < camera.width) & (pixel[:, 1] >= 0)
        inside &= pixel[:, 1] < camera.height
        front = depth_map[row, col]
        visible = inside & (front > 0) & (depth < front + VISIBLE_DEPTH_MM)
        to_camera = torch.nn.functional.normalize(torch.from_numpy(camera.centre) - texel_world, dim=-1)
        facing = (normals * to_camera).sum(-1).numpy()
        return np.where(visible & (facing > MIN_FACING), facing**2, 0.0), pixel


REMAP_COLUMNS = 1024  # OpenCV's remap takes maps of fewer than 32767 rows and columns


def _bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """image (H, W, 3) read bilinearly at points (N, 2) (x, y; pixel centres at integers), edges
    replicated: (N, 3). The points are laid out in rows of REMAP_COLUMNS for OpenCV's remap."""
    count = len(points)
    rows = max(1, -(-count // REMAP_COLUMNS))
    maps = np.zeros((rows * REMAP_COLUMNS, 2), np.float32)
    maps[:count] = points
    maps = maps.reshape(rows, REMAP_COLUMNS, 2)
    colour = cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return colour.reshape(-1, image.shape[-1])[:count]
