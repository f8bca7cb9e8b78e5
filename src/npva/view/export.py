"""The viewer's turntable: a swing around the head from the browser's camera, written as an MP4."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from npva.eval.video import even_frame, orbit_cameras, pyav
from npva.fileio import atomic_path
from npva.geometry.camera import Camera

TURNTABLE_FRAMES = 60
TURNTABLE_DEGREES = 30.0  # the swing of npva video --orbit: the points cover the face, not the back
TURNTABLE_FPS = 30


def turntable(
    camera: Camera,
    centre: np.ndarray,
    picture: Callable[[Camera], np.ndarray],
    path: Path,
    progress: Callable[[int, int], None] | None = None,
    frames: int = TURNTABLE_FRAMES,
) -> Path:
    """Write to `path` (atomically) an H.264 MP4 of `picture` (camera -> uint8 (H, W, 3)) over `frames`
    cameras swinging +-TURNTABLE_DEGREES about the vertical through `centre` (3,) world mm, starting at
    `camera` (see npva.eval.video.orbit_cameras). progress(done, total) is called after each frame."""
    av = pyav()
    cameras = orbit_cameras(camera, centre, frames, TURNTABLE_DEGREES)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=TURNTABLE_FPS)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = camera.width + camera.width % 2, camera.height + camera.height % 2
        for index, view in enumerate(cameras):
            image = even_frame(picture(view), np.zeros(3, np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            if progress is not None:
                progress(index + 1, len(cameras))
        for packet in stream.encode():
            container.mux(packet)
    return path
