"""What the viewer shows of a subject: its sequences and frames, capture cameras, photos and frame drives.

World coordinates are the subject's (millimetres); the browser's scene is the world shifted to the head
centre and in metres (SCENE_SCALE), so that the browser's default clipping planes and orbit speeds fit.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from npva.data.frames import FrameDrive
from npva.errors import MissingFileError
from npva.eval.loading import EvalContext
from npva.eval.video import default_camera, head_centre
from npva.geometry.camera import Camera
from npva.io.multiface import read_image, read_transform

SCENE_SCALE = 1e-3  # browser scene units (m) per world mm
DRIVES_KEPT = 8  # frames whose drives stay loaded (scrubbing back and forth reloads none)
SNAP_MM = 1.0  # a view this close to a capture camera's centre is that camera (background, colour)
CAPTURE_FPS = 30.0  # Multiface's frame rate: frame numbers count 1/30 s


@dataclass
class ViewSubject:
    """A trained avatar's subject as the viewer uses it.

    sequences: sequence -> its frames in frame_list order; cameras: the capture cameras with a photo,
    at the training size, by name in KRT order; centre (3,) world mm: the head centre of the first frame;
    up (3,) unit world vector: the mean up (-y) of the capture cameras.
    """

    ctx: EvalContext
    sequences: dict[str, list[str]]
    cameras: dict[str, Camera]
    centre: np.ndarray
    up: np.ndarray
    _drives: OrderedDict = dataclasses.field(default_factory=OrderedDict)

    @property
    def default_camera(self) -> str:
        """The camera the viewer opens with: 400029 when present, else the first."""
        return default_camera(list(self.cameras))

    def drive(self, seq: str, frame: str) -> FrameDrive:
        """What drives the avatar at (seq, frame) (texture, position map, head pose), on the avatar's
        device; the last DRIVES_KEPT are cached."""
        key = (seq, frame)
        if key in self._drives:
            self._drives.move_to_end(key)
            return self._drives[key]
        ctx = self.ctx
        drive = ctx.prepared.drive(seq, frame, ctx.avatar.inputs).to(ctx.device)
        self._drives[key] = drive
        if len(self._drives) > DRIVES_KEPT:
            self._drives.popitem(last=False)
        return drive

    def photo(self, seq: str, frame: str, cam: str) -> np.ndarray | None:
        """uint8 (H, W, 3) photo of (seq, frame) by camera `cam` at the training size; None when the
        capture has none."""
        path = self.ctx.layout.image(seq, cam, frame)
        if not path.is_file():
            return None
        camera = self.cameras[cam]
        return read_image(path, (camera.height, camera.width))

    def audio(self, seq: str) -> Path | None:
        """The sequence's sound (SUBJECT/audio/<seq>.wav, which starts with its first frame); None when
        the capture has none."""
        path = self.ctx.layout.audio(seq)
        return path if path.is_file() else None

    def frame_seconds(self, seq: str, frame: str) -> float:
        """Seconds from the sequence's first frame to `frame` at the capture rate (by frame number, so
        that a sequence with frames left out keeps its timing; by position when names are not numbers)."""
        frames = self.sequences[seq]
        if frame.isdigit() and frames[0].isdigit():
            return (int(frame) - int(frames[0])) / CAPTURE_FPS
        return frames.index(frame) / CAPTURE_FPS

    def nearest_camera(self, camera: Camera) -> str:
        """The capture camera that sees the head from the direction nearest to `camera`'s."""
        names = list(self.cameras)
        directions = np.stack([self.cameras[n].centre - self.centre for n in names])
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        view = camera.centre - self.centre
        return names[int(np.argmax(directions @ (view / np.linalg.norm(view))))]

    def capture_name(self, camera: Camera) -> str | None:
        """The capture camera at `camera`'s centre (within SNAP_MM), else None."""
        for name, capture in self.cameras.items():
            if np.linalg.norm(capture.centre - camera.centre) < SNAP_MM:
                return name
        return None


def open_subject(ctx: EvalContext) -> ViewSubject:
    """The ViewSubject of an opened checkpoint: every frame of its frame_list.txt, every camera with
    a photo."""
    frames = ctx.prepared.frames("all")
    sequences: dict[str, list[str]] = {}
    for seq, frame in frames:
        sequences.setdefault(seq, []).append(frame)
    cameras = {}
    for name in ctx.prepared.cameras:
        try:
            cameras[name] = ctx.prepared.view_camera(name, frames)
        except MissingFileError:  # a camera without any photo cannot be sized; it is left out
            continue
    if not cameras:
        raise MissingFileError(ctx.layout.images_dir, "photos (no camera has one)")
    R, t = read_transform(ctx.layout.transform(*frames[0]))
    centre = head_centre(ctx.avatar.mean_map, ctx.avatar.coverage, R, t)
    up = -np.mean([camera.R[1] for camera in cameras.values()], axis=0)
    return ViewSubject(ctx, sequences, cameras, centre, up / np.linalg.norm(up))


def photo_in_view(photo: np.ndarray, capture: Camera, view: Camera) -> np.ndarray:
    """The photo (H, W, 3) of `capture` seen through `view` as if the scene were infinitely far:
    (view.height, view.width, 3), black outside the photo. Exact when both cameras share a centre.

    The homography K_v R_v R_c^T K_c^-1 maps capture pixels to view pixels (OpenCV's pixel centres are
    at integers, npva's at +0.5: hence the half-pixel shifts).
    """
    shift = np.array([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    homography = view.K @ view.R @ capture.R.T @ np.linalg.inv(capture.K)
    homography = np.linalg.inv(shift) @ homography @ shift
    return cv2.warpPerspective(photo, homography, (view.width, view.height), flags=cv2.INTER_LINEAR)


def scene_point(subject: ViewSubject, world: np.ndarray) -> np.ndarray:
    """World mm (..., 3) -> browser scene units (..., 3)."""
    return (np.asarray(world) - subject.centre) * SCENE_SCALE


def view_camera(
    subject: ViewSubject,
    position: np.ndarray,
    R_scene_camera: np.ndarray,
    fov: float,
    height: int,
    width: int,
) -> Camera:
    """The npva camera of a browser camera: its position (3,) in scene units, rotation (3, 3) camera ->
    scene (OpenCV axes: x right, y down, z forward), vertical field of view `fov` radians, and the
    image size to render. Square pixels, principal point at the image centre."""
    focal = 0.5 * height / np.tan(0.5 * fov)
    K = np.array([[focal, 0, 0.5 * width], [0, focal, 0.5 * height], [0, 0, 1]])
    centre = subject.centre + np.asarray(position) / SCENE_SCALE
    R = np.asarray(R_scene_camera).T
    return Camera("view", K, R, -R @ centre, height=height, width=width)
