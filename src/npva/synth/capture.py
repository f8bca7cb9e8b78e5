"""One synthetic subject under one preset: its geometry, colours and renders, frame by frame.

All randomness comes from the seed through named streams, so a seed fixes every output byte, and a
change of preset does not change the subject (only how much of it is captured, and how finely).
"""

from __future__ import annotations

import numpy as np
import torch

from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh, to_world
from npva.synth.albedo import Look, SkinAlbedo, scalp_weight
from npva.synth.grid import ParamGrid, phi_of_s, theta_of_u
from npva.synth.head import Expression, HeadIdentity, HeadShape
from npva.synth.noise import ValueNoise
from npva.synth.parts import HairStyle, MouthInterior, eyeballs, hair_strands, neck_cap
from npva.synth.render import Scene, View, build_scene, face_camera, mvs_depth, render_view
from npva.synth.scene import (
    SEQUENCES,
    FrameKey,
    Preset,
    Timing,
    dome_camera,
    frontal_directions,
    head_pose,
)
from npva.synth.texture import AverageTexture

_STREAMS = ("identity", "look", "skin_noise", "hair", "timing", "pose")
# The average texture is taken over views from the dome cameras within this angle of head-on (13).
TEXTURE_VIEW_ANGLE_DEG = 30.0


class _GridSurface:
    """Identity points of a parameter grid (cached), deformed per frame."""

    def __init__(self, shape: HeadShape, u: np.ndarray, s: np.ndarray, side: np.ndarray):
        self.shape, self.side = shape, side
        self.theta, self.phi = theta_of_u(u), phi_of_s(s)
        self.identity = shape.identity_points(self.theta, self.phi)

    def at(self, expr: Expression) -> np.ndarray:
        return self.shape.deform(self.identity, self.theta, self.phi, self.side, expr)


class SyntheticCapture:
    """The subject of one seed (shape, colours, hair, performance timing) as one preset captures it:
    cameras, coarse and fine grids, and the per-frame geometry and renders."""

    def __init__(self, preset: Preset, seed: int):
        self.preset, self.seed = preset, seed
        streams = np.random.SeedSequence(seed).spawn(len(_STREAMS))
        rng = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, streams, strict=True)}
        self.shape = HeadShape(HeadIdentity.sample(rng["identity"]))
        self.look = Look.sample(rng["look"])
        self.skin = SkinAlbedo(self.shape, self.look, ValueNoise(rng["skin_noise"]))
        self.skin_texture = torch.from_numpy(self.skin.texture(preset.skin_texture_size))

        self.coarse_grid = ParamGrid.coarse()
        self.coarse_uvs, self.coarse_face_uvs = self.coarse_grid.uv_layout()
        self.coarse_faces = self.coarse_grid.faces()
        u, s = self.coarse_grid.vertex_params()
        self.coarse = _GridSurface(self.shape, u, s, np.zeros_like(u))
        self._build_fine_grid()

        style = HairStyle(strands=preset.hair_strands, length_mm=(20.0, 40.0))
        self.hair = hair_strands(self.shape, scalp_weight, style, rng["hair"])
        self.mouth = MouthInterior(self.shape)
        self.timings = {name: Timing.sample(rng["timing"]) for name in SEQUENCES}
        self.pose_phases = {name: rng["pose"].uniform(0.0, 1.0, size=6) for name in SEQUENCES}
        height, width = preset.image_size
        self.cameras = {name: dome_camera(name, height, width) for name in preset.cameras}
        self.texture = AverageTexture(self.shape, self.skin, self.coarse_grid, preset.texture_size)

    def _build_fine_grid(self) -> None:
        """The true skin: the coarse grid refined, its lip seam cut open across the mouth."""
        grid = self.fine_grid = self.coarse_grid.refined(self.preset.fine_factor)
        u, s = grid.vertex_params()
        seam_cols = np.arange(grid.cols)
        seam_cols = seam_cols[self.shape.mouth_opening(theta_of_u(seam_cols / grid.cols)) > 0]
        side = np.zeros_like(u)
        side[(grid.seam_row - 1) * grid.cols + seam_cols] = -1.0  # upper lip keeps the grid vertex
        u = np.concatenate((u, seam_cols / grid.cols))
        s = np.concatenate((s, np.full(len(seam_cols), grid.seam_row / grid.rows)))
        side = np.concatenate((side, np.ones(len(seam_cols))))
        self.fine = _GridSurface(self.shape, u, s, side)
        self.fine_faces = grid.faces(seam_cols)
        self.fine_uvs, self.fine_face_uvs = grid.uv_layout()

    # -- per frame ------------------------------------------------------------------------------

    def expression(self, key: FrameKey) -> Expression:
        return SEQUENCES[key.sequence].program(key.tau, self.timings[key.sequence])

    def pose(self, key: FrameKey) -> tuple[np.ndarray, np.ndarray]:
        return head_pose(key.tau, self.pose_phases[key.sequence])

    def tracked_mesh(self, expr: Expression, pose: tuple[np.ndarray, np.ndarray]) -> Mesh:
        """The coarse mesh in the world frame (what a face tracker delivers)."""
        verts = to_world(self.coarse.at(expr), *pose).astype(np.float32)
        return Mesh(verts, self.coarse_faces, self.coarse_uvs, self.coarse_face_uvs)

    def scene(self, expr: Expression, pose: tuple[np.ndarray, np.ndarray]) -> Scene:
        """The true geometry of a frame: fine skin with an open mouth, eyes, teeth, cavity, tongue,
        hair and a collar closing the neck."""
        skin = self.fine.at(expr)
        cols = self.fine_grid.cols
        last_row = skin[self.fine_grid.num_grid_verts - 1 - cols : self.fine_grid.num_grid_verts - 1]
        eyes = eyeballs(self.shape, expr, *self.preset.eye_resolution)
        parts = [eyes, *self.mouth.parts(expr), self.hair, neck_cap(last_row)]
        return build_scene(skin, self.fine_faces, self.fine_uvs, self.fine_face_uvs, parts, pose)

    def render(self, scene: Scene, camera: Camera) -> View:
        height, width = self.preset.image_size
        return render_view(
            scene, camera, height, width, self.preset.supersample, self.skin_texture, self.look
        )

    def depth(self, view: View, key: FrameKey, camera_name: str) -> np.ndarray:
        """MVS-like depth (H, W) in metres; its noise is fixed by the seed, frame and camera."""
        rng = np.random.default_rng([self.seed, int(key.frame), int(camera_name)])
        return mvs_depth(view, self.preset.supersample, rng)

    def average_texture(
        self, expr: Expression, pose: tuple[np.ndarray, np.ndarray], scene: Scene, mesh: Mesh
    ) -> np.ndarray:
        """(S, S, 3) view-averaged texture of a frame (see texture.py)."""
        return self.texture.render(expr, pose, torch.from_numpy(mesh.verts), self.face_views(pose, scene))

    def face_views(self, pose: tuple[np.ndarray, np.ndarray], scene: Scene) -> list[tuple[View, Camera]]:
        """Diffuse renders of the scene from the face cameras the average texture is taken over."""
        size = max(128, self.preset.texture_size // 2)
        views = []
        for elevation, azimuth in frontal_directions(TEXTURE_VIEW_ANGLE_DEG):
            camera = face_camera(pose, size, elevation, azimuth)
            view = render_view(scene, camera, size, size, 1, self.skin_texture, self.look, specular=False)
            views.append((view, camera))
        return views
