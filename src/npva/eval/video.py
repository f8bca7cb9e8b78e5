"""Replaying a list of frames as an H.264 MP4 ("talking head"), from a fixed camera or an orbit.

Each line "<seq> <frame>" of the list is one video frame, in list order, rendered at the training size
in evaluation mode with every pixel rendered. The avatar is driven by the frame's average texture,
position map and head pose only: a frame needs no photo, mask or depth, so a video can replay frames
that no camera photographed. The camera's image size (hence its intrinsics at the training size) comes
from any photo of that camera in the subject.

Cameras:
- fixed (default): `camera`, else 400029 when the subject has it, else the first camera of the KRT;
- orbit: a swing of +-`orbit_degrees` about the vertical axis through the head centre, at the fixed
  camera's distance and with its intrinsics, one sine period over the video (starting and ending at the
  fixed camera's position). A swing rather than a full turn: the neural points cover the face, and the
  back of a head is not part of the tracked mesh. Orbit cameras are not training cameras, so the learned
  background is the mean of the learned colours.

`prmesh` puts the tracked mesh of each frame beside the render, rasterized in the same camera and
Lambert shaded (two-sided, light at the camera) over the same background.
Frames are padded (bottom and right, background colour) to an even height and width, as H.264 needs.
Audio: when every line belongs to one sequence and the subject has audio/<seq>.wav, it is encoded
(AAC) from its start and cut at the video's end: in sync when the list replays the sequence from its
first frame at the capture rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from npva.errors import FormatError, NpvaError
from npva.eval.loading import EvalContext, read_img_list
from npva.fileio import atomic_path
from npva.geometry.camera import Camera, look_at, pixel_rays
from npva.geometry.mesh import to_world, vertex_normals
from npva.geometry.raster import interpolate, rasterize_camera
from npva.io.multiface import (
    read_obj,
    read_transform,
)

if TYPE_CHECKING:
    import av

DEFAULT_CAMERA = "400029"
PYAV_REQUIREMENT = "av>=12"  # also the `video` extra: pip install 'npva[video]'
MESH_ALBEDO = 0.8  # grey of the shaded tracked mesh
MESH_AMBIENT = 0.15  # share of the light that does not depend on the normal


# ---------------------------------------------------------------------------------------------------
# Cameras


def default_camera(names: Sequence[str]) -> str:
    """400029 when present (the authors' evaluation camera), else the first of `names` (KRT order)."""
    if not names:
        raise NpvaError("the subject has no cameras")
    return DEFAULT_CAMERA if DEFAULT_CAMERA in names else names[0]


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about the unit `axis` (3,), right-handed (Rodrigues)."""
    x, y, z = axis / np.linalg.norm(axis)
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def orbit_cameras(base: Camera, centre: np.ndarray, num_frames: int, degrees: float = 30.0) -> list[Camera]:
    """Cameras swinging +-`degrees` about the vertical axis through `centre` (3,), looking at it.

    The vertical is the base camera's up (-y image axis in the world); the distance to the centre and
    the intrinsics and image size are the base camera's. Camera i is at angle degrees * sin(2 pi i / n):
    one smooth period, starting at the base camera's position.
    """
    if base.height is None or base.width is None:
        raise ValueError(f"camera {base.name}: image size unknown")
    centre = np.asarray(centre, np.float64)
    up = -base.R[1]
    offset = base.centre - centre
    cameras = []
    for i in range(num_frames):
        angle = np.deg2rad(degrees) * np.sin(2 * np.pi * i / num_frames)
        position = centre + rotation_about(up, angle) @ offset
        cameras.append(look_at(f"orbit_{i:04d}", position, centre, up, base.K, base.height, base.width))
    return cameras


def head_centre(mean_map: torch.Tensor, coverage: torch.Tensor, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World (3,) centroid of the covered texels of the mean position map (3, S, S) under the head pose
    R (3, 3), t (3,)."""
    points = mean_map.reshape(3, -1).T[coverage.reshape(-1)].double().cpu().numpy()
    return to_world(points.mean(0), np.asarray(R), np.asarray(t))


# ---------------------------------------------------------------------------------------------------
# Per frame


def shaded_mesh_image(
    verts: torch.Tensor, faces: torch.Tensor, camera: Camera, background: torch.Tensor
) -> torch.Tensor:
    """(H, W, 3) image of the mesh verts (V, 3) world, faces (F, 3) in `camera`: grey, Lambert
    shaded by the interpolated vertex normals with the light at the camera (two-sided), `background`
    (3,) elsewhere."""
    frags = rasterize_camera(verts, faces, camera)
    normals = torch.nn.functional.normalize(interpolate(vertex_normals(verts, faces), faces, frags), dim=-1)
    _, rays = pixel_rays(camera, device=verts.device)  # (H, W, 3) unit, world
    lambert = (normals * rays).sum(-1).abs()
    shade = MESH_ALBEDO * (MESH_AMBIENT + (1 - MESH_AMBIENT) * lambert)
    covered = (frags.face_id >= 0)[..., None]
    return torch.where(covered, shade[..., None].expand(-1, -1, 3), background.to(verts))


def even_frame(image: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Pad uint8 (H, W, 3) at the bottom and right with `fill` (3,) to an even height and width."""
    height, width = image.shape[:2]
    padded = np.empty((height + height % 2, width + width % 2, 3), np.uint8)
    padded[...] = fill
    padded[:height, :width] = image
    return padded


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8 numpy."""
    return (image.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# The video


def pyav():
    """The PyAV module (imported only by the commands that write or read videos)."""
    try:
        import av
    except ImportError:
        raise NpvaError(
            f"videos need PyAV, which is not installed: pip install '{PYAV_REQUIREMENT}' (or npva[video])"
        ) from None
    return av


class AudioTrack:
    """The first audio stream of a file re-encoded as AAC into an output container a little at a time
    (so that audio and video packets interleave), cut at `end` seconds."""

    def __init__(self, container: av.container.OutputContainer, path: Path, end: float):
        av = pyav()
        try:
            self._source = av.open(str(path))
            audio_in = self._source.streams.audio[0]
        except (av.FFmpegError, IndexError):
            raise FormatError(path, "expected an audio file with an audio stream") from None
        if audio_in.channels not in (1, 2):
            self._source.close()
            raise FormatError(path, f"expected mono or stereo audio, found {audio_in.channels} channels")
        self._container = container
        self._stream = container.add_stream(
            "aac", rate=audio_in.rate, layout="mono" if audio_in.channels == 1 else "stereo"
        )
        self._frames = self._source.decode(audio_in)
        self._rate = audio_in.rate
        self._end = round(end * audio_in.rate)  # in samples
        self._encoded = 0  # samples

    def advance(self, until: float) -> None:
        """Encode the audio up to `until` seconds (and no further than the end)."""
        target = min(round(until * self._rate), self._end)
        while self._encoded < target:
            frame = next(self._frames, None)
            if frame is None:  # the audio is shorter than the video
                self._end = self._encoded
                return
            keep = min(frame.samples, self._end - self._encoded)
            if keep < frame.samples:
                samples = frame.to_ndarray()  # (channels, n) planar or (1, n * channels) packed
                samples = samples[:, : keep if frame.format.is_planar else keep * len(frame.layout.channels)]
                cut = pyav().AudioFrame.from_ndarray(
                    samples, format=frame.format.name, layout=frame.layout.name
                )
                cut.sample_rate = frame.sample_rate
                frame = cut
            frame.pts = None
            self._mux(self._stream.encode(frame))
            self._encoded += keep

    def finish(self) -> None:
        """Flush the encoder: the last packets."""
        self._mux(self._stream.encode())

    def close(self) -> None:
        self._source.close()

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)


def make_video(
    ctx: EvalContext,
    img_list: str | Path,
    out_path: Path,
    camera: str | None = None,
    orbit: bool = False,
    prmesh: bool = False,
    fps: int = 30,
    progress: bool = True,
    orbit_degrees: float = 30.0,
) -> Path:
    """Render the frames of `img_list` (a file, or a split name) in order into the MP4 `out_path`
    (written atomically); see the module docstring for cameras, --prmesh and audio. Returns out_path."""
    if fps <= 0:
        raise NpvaError(f"fps must be positive, got {fps}")
    av = pyav()
    frames = read_img_list(ctx, img_list)
    if not frames:
        raise NpvaError(f"{img_list}: no frames to replay")
    name = camera or default_camera(list(ctx.prepared.cameras))
    base = ctx.prepared.view_camera(name, frames)
    if orbit:
        R, t = read_transform(ctx.layout.transform(*frames[0]))
        centre = head_centre(ctx.avatar.mean_map, ctx.avatar.coverage, R, t)
        cameras = orbit_cameras(base, centre, len(frames), orbit_degrees)
    else:
        cameras = [base] * len(frames)
    sequences = {seq for seq, _ in frames}
    audio = ctx.layout.audio(frames[0][0]) if len(sequences) == 1 else None
    audio = audio if audio is not None and audio.is_file() else None

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.pix_fmt = "yuv420p"
        width = base.width * (2 if prmesh else 1)
        video.width, video.height = width + width % 2, base.height + base.height % 2
        track = AudioTrack(container, audio, len(frames) / fps) if audio is not None else None
        try:
            lines = tqdm(frames, desc="npva video", unit="frame", disable=not progress)
            for index, ((seq, frame), cam) in enumerate(zip(lines, cameras, strict=True)):
                image = _video_frame(ctx, seq, frame, cam, prmesh)
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
                if track is not None:
                    track.advance((index + 1) / fps)
            for packet in video.encode():
                container.mux(packet)
            if track is not None:
                track.finish()
        finally:
            if track is not None:
                track.close()
    return out_path


def _video_frame(ctx: EvalContext, seq: str, frame: str, camera: Camera, prmesh: bool) -> np.ndarray:
    """One video frame: uint8 (H', W', 3), the render (and the shaded tracked mesh), padded to even."""
    avatar = ctx.avatar
    drive = ctx.prepared.drive(seq, frame, avatar.inputs).to(ctx.device)
    image, _ = avatar.render_image(drive, camera)
    background = avatar.background_colour(camera.name)
    background = torch.zeros(3, device=ctx.device) if background is None else background.detach()
    panels = [image]
    if prmesh:
        mesh = read_obj(ctx.layout.mesh_obj(seq, frame))
        verts = torch.as_tensor(mesh.verts, dtype=torch.float32, device=ctx.device)
        faces = torch.as_tensor(mesh.faces, device=ctx.device)
        panels.append(shaded_mesh_image(verts, faces, camera, background))
    return even_frame(to_uint8(torch.cat(panels, dim=1)), to_uint8(background))


def describe_video(path: Path) -> str:
    """One line about an MP4: frames, size, rate, duration, audio."""
    with pyav().open(str(path)) as container:
        video = container.streams.video[0]
        rate = float(video.average_rate or 0)
        frames = video.frames or sum(1 for packet in container.demux(video) if packet.size)
        size = f"{video.width}x{video.height}"
        audio = " with audio" if container.streams.audio else ""
    duration = f", {frames / rate:.1f} s" if rate else ""
    return f"{path}: {frames} frames of {size} at {rate:g} fps{duration}{audio}"
