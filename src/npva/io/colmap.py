"""COLMAP's dense depth maps: its binary array format, and which Multiface camera an image is.

COLMAP writes `stereo/depth_maps/<image name>.geometric.bin` (and `.photometric.bin`, before its
geometric filtering) in a dense workspace. Each file holds one float array: an ASCII header
"<width>&<height>&<channels>&", then width * height * channels little-endian float32 values, the first
index running fastest over (width, height, channels): channel by channel, each channel's rows top to
bottom, each row left to right. A depth map has one channel: camera z in the reconstruction's units,
0 (or less) where unknown.

An image name is a path relative to COLMAP's image folder. It names a Multiface camera when its file
name without extension is the camera's name (`400029.png`), or when a folder of it is
(`400029/000102.png`, as images/<seq>/<cam>/<frame>.png are laid out).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np

from npva.errors import FormatError, MissingFileError
from npva.fileio import atomic_open

DEPTH_SUFFIX = ".geometric.bin"
_HEADER = re.compile(rb"(\d+)&(\d+)&(\d+)&")
_HEADER_MAX = 64  # bytes: three numbers and their separators


def read_colmap_array(path: str | Path) -> np.ndarray:
    """(H, W, C) float32 array of a COLMAP binary array file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(path, "COLMAP depth map") from None
    except OSError as exc:
        raise FormatError(path, f"cannot read COLMAP array: {exc.strerror}") from None
    header = _HEADER.match(data[:_HEADER_MAX])
    if header is None:
        raise FormatError(path, "expected a COLMAP array header 'width&height&channels&', found none")
    width, height, channels = (int(group) for group in header.groups())
    count = width * height * channels
    if count == 0:
        raise FormatError(path, f"expected a non-empty COLMAP array, found {width}x{height}x{channels}")
    body = data[header.end() :]
    if len(body) != 4 * count:
        raise FormatError(
            path,
            f"expected {4 * count} bytes of float32 after the header for {width}x{height}x{channels} "
            f"(width x height x channels), found {len(body)}",
        )
    values = np.frombuffer(body, dtype="<f4").reshape(channels, height, width)
    return np.ascontiguousarray(values.transpose(1, 2, 0), dtype=np.float32)


def write_colmap_array(path: str | Path, array: np.ndarray) -> None:
    """Write (H, W) or (H, W, C) float values as a COLMAP binary array file (atomically)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"expected a non-empty array (H, W) or (H, W, C), got {array.shape}")
    height, width, channels = array.shape
    with atomic_open(path, "wb") as f:
        f.write(f"{width}&{height}&{channels}&".encode("ascii"))
        f.write(np.ascontiguousarray(array.transpose(2, 0, 1)).astype("<f4").tobytes())


def read_colmap_depth(path: str | Path, scale: float = 1.0) -> np.ndarray:
    """(H, W) float32 depth of a COLMAP depth map multiplied by `scale`; 0 where unknown (<= 0, not
    finite)."""
    if scale <= 0:
        raise ValueError(f"depth scale must be positive, got {scale}")
    array = read_colmap_array(path)
    if array.shape[2] != 1:
        raise FormatError(path, f"expected a depth map of 1 channel, found {array.shape[2]} channels")
    depth = array[..., 0] * np.float32(scale)
    depth[~np.isfinite(depth) | (depth <= 0)] = 0
    return depth


def image_camera(image_name: str, cameras: set[str] | frozenset[str]) -> str | None:
    """The camera an image name (relative path, `/` separated) names, or None: its file name without
    extension, else its innermost folder that is a camera's name."""
    *folders, file_name = image_name.split("/")
    stem = file_name.split(".", 1)[0]
    if stem in cameras:
        return stem
    return next((folder for folder in reversed(folders) if folder in cameras), None)


def find_colmap_depth(depth_maps: Path, camera: str) -> Path | None:
    """The geometric depth map of `camera` in a COLMAP `stereo/depth_maps` folder (see image_camera),
    or None; FormatError when several images there name the camera."""
    if not depth_maps.is_dir():
        return None
    name = glob.escape(camera)
    found = sorted(
        {
            *depth_maps.glob(f"{name}.*{DEPTH_SUFFIX}"),
            *depth_maps.glob(f"**/{name}.*{DEPTH_SUFFIX}"),
            *depth_maps.glob(f"**/{name}/*{DEPTH_SUFFIX}"),
        }
    )
    found = [
        path
        for path in found
        if image_camera(path.relative_to(depth_maps).as_posix()[: -len(DEPTH_SUFFIX)], {camera}) == camera
    ]
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(depth_maps)) for path in found[:4])
        raise FormatError(depth_maps, f"several depth maps name camera {camera}: {names}")
    return found[0] if found else None
