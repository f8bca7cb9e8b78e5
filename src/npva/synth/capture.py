"""One synthetic subject under one preset: its geometry, colours and renders, frame by frame.

All randomness comes from the seed through named streams, so a seed fixes every output byte, and a
change of preset does not change the subject (only how much of it is captured, and how finely).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh, to_world, vertex_normals
from npva.synth.albedo import Look, SkinAlbedo, scalp_weight
from npva.synth.grid import ParamGrid, phi_of_s, theta_of_u
from npva.synth.head import Expression, HeadIdentity, HeadShape
from npva.synth.noise import ValueNoise
from npva.synth.parts import (
    HairStyle,
    MouthInterior,
    Part,
    Shoulders,
    eyeballs,
    hair_strands,
    hair_volume,
    neck_cap,
)
from npva.synth.render import (
    STUDIO,
    Lighting,
    Scene,
    View,
    build_scene,
    face_camera,
    mvs_depth,
    render_view,
)
from npva.synth.scene import (
    CAMERA_NAMES,
    FULL_HEIGHT,
    FULL_WIDTH,
    SEQUENCES,
    FrameKey,
    Preset,
    Timing,
    camera_direction,
    dome_camera,
    frontal_directions,
    head_pose,
    rotation_ypr,
)
from npva.synth.texture import AverageTexture
from npva.synth.variant import Variant, get_variant

_STREAMS = ("identity", "look", "skin_noise", "hair", "timing", "pose")
_VARIANT_STREAMS = ("variety", "tracking", "lighting")  # drawn from only by variants that use them
# The average texture is taken over views from the dome cameras within this angle of head-on (13).
TEXTURE_VIEW_ANGLE_DEG = 30.0
# An unwrapped texture (variant "capture") averages the photos of the dome cameras within this
# angle of head-on (18).
UNWRAP_VIEW_ANGLE_DEG = 40.0


class _GridSurface:
    """Identity points of a parameter grid (cached), deformed per frame."""

    def __init__(self, shape: HeadShape, u: np.ndarray, s: np.ndarray, side: np.ndarray):
        self.shape, self.side = shape, side
        self.theta, self.phi = theta_of_u(u), phi_of_s(s)
        self.identity = shape.identity_points(self.theta, self.phi)

    def at(self, expr: Expression) -> np.ndarray:
        return self.shape.deform(self.identity, self.theta, self.phi, self.side, expr)


class SyntheticCapture:
    """The subject of one seed (shape, colours, hair, performance timing) and variant (variant.py) as
    one preset captures it: cameras, coarse and fine grids, and the per-frame geometry, renders,
    photos, tracked meshes and average textures."""

    def __init__(self, preset: Preset, seed: int, variant: Variant | str = "clean"):
        self.preset, self.seed = preset, seed
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        names = _STREAMS + _VARIANT_STREAMS
        streams = np.random.SeedSequence(seed).spawn(len(names))
        rng = {name: np.random.default_rng(s) for name, s in zip(names, streams, strict=True)}
        self.shape = HeadShape(HeadIdentity.sample(rng["identity"], self.variant.shape_spread))
        self.look = Look.sample(rng["look"])
        if self.variant.shoulders:
            self.look = self.look.with_clothing(rng["variety"])
        self.lighting = (
            Lighting.sample(rng["lighting"], self.variant.lights) if self.variant.lights else STUDIO
        )
        self.skin = SkinAlbedo(self.shape, self.look, ValueNoise(rng["skin_noise"]))
        self.skin_texture = torch.from_numpy(self.skin.texture(preset.skin_texture_size))

        self.coarse_grid = ParamGrid.coarse()
        self.coarse_uvs, self.coarse_face_uvs = self.coarse_grid.uv_layout()
        self.coarse_faces = self.coarse_grid.faces()
        u, s = self.coarse_grid.vertex_params()
        self.coarse = _GridSurface(self.shape, u, s, np.zeros_like(u))
        self._build_fine_grid()

        self.hair = self._hair(rng["hair"], rng["variety"])
        shoulders = self.variant.shoulders
        self.clothing = (
            [Shoulders.sample(rng["variety"], self.shape.identity.width).part()] if shoulders else []
        )
        self.tracking_offset = self._tracking_offset(rng["tracking"])
        self.mouth = MouthInterior(self.shape)
        self.timings = {name: Timing.sample(rng["timing"]) for name in SEQUENCES}
        self.pose_phases = {name: rng["pose"].uniform(0.0, 1.0, size=6) for name in SEQUENCES}
        height, width = preset.image_size
        self.cameras = {name: dome_camera(name, height, width) for name in preset.cameras}
        self.texture = AverageTexture(self.shape, self.skin, self.coarse_grid, preset.texture_size)

    def _hair(self, strands_rng: np.random.Generator, variety_rng: np.random.Generator) -> list[Part]:
        """Strands, and with the variant's hair volume, the volume's surface under them."""
        style = HairStyle(
            strands=self.preset.hair_strands, length_mm=(20.0, 40.0), flyaway=self.variant.flyaway
        )
        if self.variant.hair_volume_mm[1] <= 0:
            return [hair_strands(self.shape, scalp_weight, style, strands_rng)]
        volume, streaks = _hair_functions(variety_rng, self.variant.hair_volume_mm)
        strands = hair_strands(self.shape, scalp_weight, style, strands_rng, volume)
        return [hair_volume(self.shape, volume, streaks), strands]

    def _tracking_offset(self, rng: np.random.Generator) -> np.ndarray:
        """(V,) mm along the coarse mesh's normals that the tracked mesh sits off the true surface: a
        smooth field (features of about 40 mm) whose mean magnitude the subject draws from the
        variant's range; zeros without tracking error."""
        low, high = self.variant.tracking_error_mm
        if high <= 0:
            return np.zeros(len(self.coarse.identity))
        field = ValueNoise(rng).fbm(self.coarse.identity, 40.0, 2)
        field -= field.mean()
        return field * rng.uniform(low, high) / np.abs(field).mean()

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
        """The coarse mesh of an expression in the world frame, on the true surface."""
        verts = to_world(self.coarse.at(expr), *pose).astype(np.float32)
        return Mesh(verts, self.coarse_faces, self.coarse_uvs, self.coarse_face_uvs)

    def tracked_expression(self, key: FrameKey) -> Expression:
        """The expression the tracker fits to a frame: the variant's share of the jaw and smile of
        `tracking_lag_frames` capture frames earlier (listed frames are every 3rd capture frame)."""
        variant, expr = self.variant, self.expression(key)
        if variant.mouth_tracking == 1.0 and variant.tracking_lag_frames == 0:
            return expr
        lag = variant.tracking_lag_frames / (3 * max(self.preset.frames - 1, 1))
        late = SEQUENCES[key.sequence].program(key.tau - lag, self.timings[key.sequence])
        return replace(expr, jaw=variant.mouth_tracking * late.jaw, smile=variant.mouth_tracking * late.smile)

    def tracker_output(self, key: FrameKey) -> Mesh:
        """The tracked mesh of a frame as written (world frame): the coarse mesh of the tracked
        expression, moved off the true surface along its normals by the subject's tracking offset and
        by a small rigid jitter of the frame (face frame); exactly `tracked_mesh` without tracking
        error."""
        expr, pose = self.tracked_expression(key), self.pose(key)
        verts = self.coarse.at(expr)
        if self.variant.tracking_error_mm[1] > 0:
            normals = vertex_normals(torch.from_numpy(verts), torch.from_numpy(self.coarse_faces)).numpy()
            verts = verts + normals * self.tracking_offset[:, None]
        if self.variant.tracking_jitter_mm > 0:
            rng = np.random.default_rng([self.seed, int(key.frame), 1])
            sd = self.variant.tracking_jitter_mm
            verts = verts @ rotation_ypr(*rng.normal(0.0, sd / 100.0, size=3)).T + rng.normal(0.0, sd, size=3)
        verts = to_world(verts, *pose).astype(np.float32)
        return Mesh(verts, self.coarse_faces, self.coarse_uvs, self.coarse_face_uvs)

    def scene(self, expr: Expression, pose: tuple[np.ndarray, np.ndarray]) -> Scene:
        """The true geometry of a frame: fine skin with an open mouth, eyes, teeth, cavity, tongue,
        hair and a collar closing the neck."""
        skin = self.fine.at(expr)
        cols = self.fine_grid.cols
        last_row = skin[self.fine_grid.num_grid_verts - 1 - cols : self.fine_grid.num_grid_verts - 1]
        eyes = eyeballs(self.shape, expr, *self.preset.eye_resolution)
        parts = [eyes, *self.mouth.parts(expr), *self.hair, neck_cap(last_row), *self.clothing]
        return build_scene(skin, self.fine_faces, self.fine_uvs, self.fine_face_uvs, parts, pose)

    def render(self, scene: Scene, camera: Camera) -> View:
        height, width = camera.height, camera.width
        return render_view(
            scene,
            camera,
            height,
            width,
            self.preset.supersample,
            self.skin_texture,
            self.look,
            True,
            self.lighting,
        )

    def camera_gain(self, camera_name: str) -> np.ndarray:
        """(3,) colour gain of a camera (ones without camera differences), fixed by the seed and name."""
        rng = np.random.default_rng([self.seed, int(camera_name), 2])
        return np.exp(rng.normal(0.0, self.variant.camera_gain_sd, size=3))

    def photo(self, image: np.ndarray, key: FrameKey, camera_name: str) -> np.ndarray:
        """A render (H, W, 3) as the camera records it: times its colour gain, plus sensor noise (fixed
        by the seed, frame, camera and size), clipped to [0, 1]; the render itself without either."""
        variant = self.variant
        if variant.camera_gain_sd == 0 and variant.noise_sd == 0:
            return image
        rng = np.random.default_rng([self.seed, int(key.frame), int(camera_name), image.shape[0]])
        noisy = image * self.camera_gain(camera_name) + rng.normal(0.0, variant.noise_sd, size=image.shape)
        return np.clip(noisy, 0.0, 1.0).astype(np.float32)

    def depth(self, view: View, key: FrameKey, camera_name: str) -> np.ndarray:
        """MVS-like depth (H, W) in metres; its noise is fixed by the seed, frame and camera."""
        rng = np.random.default_rng([self.seed, int(key.frame), int(camera_name)])
        return mvs_depth(view, self.preset.supersample, rng)

    def average_texture(
        self, expr: Expression, pose: tuple[np.ndarray, np.ndarray], scene: Scene, mesh: Mesh
    ) -> np.ndarray:
        """(S, S, 3) view-averaged texture of a frame (see texture.py)."""
        return self.texture.render(expr, pose, torch.from_numpy(mesh.verts), self.face_views(pose, scene))

    def frame_texture(self, key: FrameKey, scene: Scene, mesh: Mesh) -> np.ndarray:
        """(S, S, 3) average texture of a frame: unwrapped from photos through the tracked mesh `mesh`
        (world frame) with the variant's unwrapped texture, else the analytic `average_texture`."""
        expr, pose = self.expression(key), self.pose(key)
        if not self.variant.unwrapped_texture:
            return self.average_texture(expr, pose, scene, mesh)
        size = self.preset.texture_size
        width = round(size * FULL_WIDTH / FULL_HEIGHT)
        photos = []
        for name in unwrap_cameras():
            camera = dome_camera(name, size, width)
            photos.append((self.photo(self.render(scene, camera).image, key, name), camera))
        return self.texture.unwrap(torch.from_numpy(mesh.verts), photos)

    def face_views(self, pose: tuple[np.ndarray, np.ndarray], scene: Scene) -> list[tuple[View, Camera]]:
        """Diffuse renders of the scene from the face cameras the average texture is taken over."""
        size = max(128, self.preset.texture_size // 2)
        views = []
        for elevation, azimuth in frontal_directions(TEXTURE_VIEW_ANGLE_DEG):
            camera = face_camera(pose, size, elevation, azimuth)
            view = render_view(scene, camera, size, size, 1, self.skin_texture, self.look, specular=False)
            views.append((view, camera))
        return views


def unwrap_cameras() -> list[str]:
    """Names of the dome cameras whose photos an unwrapped average texture is taken from."""
    limit = np.cos(np.deg2rad(UNWRAP_VIEW_ANGLE_DEG))
    return [name for name in CAMERA_NAMES if camera_direction(name)[2] >= limit - 1e-9]


def _hair_functions(
    rng: np.random.Generator, volume_range: tuple[float, float]
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(volume, streaks) of one subject's hair, functions of face-frame points (N, 3) -> (N,): the
    height of the hair surface off the scalp in mm (a height drawn from volume_range, lumpy by
    +-15 %, 0 where no hair grows) and the shade of its streaks in [0, 1] (long along y and z)."""
    height = rng.uniform(*volume_range)
    noise = ValueNoise(rng)

    def volume(points: np.ndarray) -> np.ndarray:
        return height * scalp_weight(points) * (0.85 + 0.3 * noise(points, 40.0))

    def streaks(points: np.ndarray) -> np.ndarray:
        return noise.fbm(points * np.array([1.0, 0.15, 0.15]) + 300.0, 3.0, 2)

    return volume, streaks
