"""The generated-data directory (`gendir`) that preprocessing writes and training reads.

Format version 1, all arrays in the face frame or camera frame in mm:
  posMap/<seq>/<frame>.npy            float32 (S, S, 3) position map, image layout (row 0 is v = 1)
  posMean.npy                         float32 (S, S, 3) per-texel mean over the statistics frames
  posVar.txt                          one number: variance averaged over covered texels and channels
  uv_layout.npz                       coverage (S, S) bool, grid_faces (F, 3) int64, mouth (S, S) bool
  mouth_mask.png                      the mouth texels as an image, to look at or to edit and pass back
  rast_mask/<seq>/<cam>/<frame>.png   uint8 0/255 coverage of the tracked mesh at training resolution
  depths/<seq>/<cam>/<frame>.npz      "depth": float32 (H, W) camera z in mm, 0 = unknown
  manifest.json                       settings, format version, and what was produced
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from npva.errors import FormatError, MissingFileError
from npva.fileio import atomic_open, inside
from npva.io.multiface import write_image

FORMAT_VERSION = 1


@dataclass(frozen=True)
class GenDir:
    """Paths of the files of a gendir; the per-frame ones are checked to stay inside it (fileio.inside:
    no symbolic link below the root), since sequence, camera and frame names come from the subject."""

    root: Path

    def posmap(self, seq: str, frame: str) -> Path:
        return inside(self.root, self.root / "posMap" / seq / f"{frame}.npy")

    def mask(self, seq: str, cam: str, frame: str) -> Path:
        return inside(self.root, self.root / "rast_mask" / seq / cam / f"{frame}.png")

    def depth(self, seq: str, cam: str, frame: str) -> Path:
        return inside(self.root, self.root / "depths" / seq / cam / f"{frame}.npz")

    @property
    def pos_mean(self) -> Path:
        return self.root / "posMean.npy"

    @property
    def pos_var(self) -> Path:
        return self.root / "posVar.txt"

    @property
    def uv_layout(self) -> Path:
        return self.root / "uv_layout.npz"

    @property
    def mouth_png(self) -> Path:
        return self.root / "mouth_mask.png"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


# ---- writers (atomic) ----------------------------------------------------------------------------


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """mask: (H, W) bool -> 8-bit PNG with 0/255."""
    write_image(path, np.where(mask, 255, 0).astype(np.uint8))


def write_depth_npz(path: Path, depth_mm: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, depth=depth_mm.astype(np.float32))


def write_json(path: Path, data: dict) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def write_uv_layout(gendir: GenDir, coverage: np.ndarray, grid_faces: np.ndarray, mouth: np.ndarray):
    with atomic_open(gendir.uv_layout, "wb") as f:
        np.savez_compressed(f, coverage=coverage, grid_faces=grid_faces, mouth=mouth)
    write_mask(gendir.mouth_png, mouth)


def write_stats(gendir: GenDir, mean: np.ndarray, variance: float) -> None:
    write_npy(gendir.pos_mean, mean.astype(np.float32))
    with atomic_open(gendir.pos_var, "w") as f:
        f.write(f"{variance:.9g}\n")


# ---- readers -------------------------------------------------------------------------------------


def read_posmap(path: Path, size: int | None = None) -> np.ndarray:
    """(S, S, 3) float32 position map."""
    if not path.is_file():
        raise MissingFileError(path, "position map")
    try:
        array = np.load(path)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(path, f"not a readable .npy file ({exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] != array.shape[1]:
        raise FormatError(path, f"expected a (S, S, 3) position map, got shape {array.shape}")
    if size is not None and array.shape[0] != size:
        raise FormatError(path, f"expected a {size}x{size} position map, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise FormatError(path, "expected finite positions, found NaN or infinity")
    return array.astype(np.float32, copy=False)


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool."""
    if not path.is_file():
        raise MissingFileError(path, "mask")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FormatError(path, "not a readable PNG mask")
    return image > 127


def read_depth_npz(path: Path) -> np.ndarray:
    """(H, W) float32 depth in mm, 0 = unknown."""
    if not path.is_file():
        raise MissingFileError(path, "depth map")
    try:
        with np.load(path) as data:
            depth = data["depth"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(path, f"expected an npz file with a 'depth' array ({exc})") from exc
    if depth.ndim != 2:
        raise FormatError(path, f"expected a (H, W) depth map, got shape {depth.shape}")
    return depth.astype(np.float32, copy=False)


def read_stats(gendir: GenDir) -> tuple[np.ndarray, float]:
    """Per-texel mean (S, S, 3) and the one scalar standard deviation."""
    mean = read_posmap(gendir.pos_mean)
    if not gendir.pos_var.is_file():
        raise MissingFileError(gendir.pos_var, "position variance")
    text = gendir.pos_var.read_text().split()
    try:
        (variance,) = (float(v) for v in text)
    except ValueError as exc:
        raise FormatError(gendir.pos_var, "expected one number (the variance)", line=1) from exc
    if not variance > 0:
        raise FormatError(gendir.pos_var, f"variance must be positive, got {variance}", line=1)
    return mean, float(np.sqrt(variance))


def read_uv_layout(gendir: GenDir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """coverage (S, S) bool, grid_faces (F, 3) int64, mouth (S, S) bool."""
    path = gendir.uv_layout
    if not path.is_file():
        raise MissingFileError(path, "UV layout")
    try:
        with np.load(path) as data:
            return data["coverage"], data["grid_faces"].astype(np.int64), data["mouth"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(path, f"expected coverage, grid_faces and mouth arrays ({exc})") from exc


def read_manifest(gendir: GenDir) -> dict | None:
    if not gendir.manifest.is_file():
        return None
    try:
        return json.loads(gendir.manifest.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(gendir.manifest, f"not valid JSON ({exc.msg})", line=exc.lineno) from exc


# ---- verification: is a finished output really there? ------------------------------------------


def posmap_ok(path: Path, size: int) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return False
    return array.shape == (size, size, 3) and array.dtype == np.float32


def mask_ok(path: Path, shape: tuple[int, int]) -> bool:
    if not path.is_file():
        return False
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return image is not None and image.shape == shape


def depth_ok(path: Path, shape: tuple[int, int]) -> bool:
    try:
        return read_depth_npz(path).shape == shape
    except (FormatError, MissingFileError):
        return False
