"""Training samples: one (frame, camera) view of a prepared subject with everything a step needs.

A sample is a frame's driving inputs (`FrameDrive`: average texture, position map, head pose) and the
view's targets (`ViewTargets`: photo, mask, depth), both from `PreparedSubject`. Photos are loaded at
the training resolution, which is the size preprocessing made the masks at (see
npva.data.prepared.training_camera).

Decoding a 2048x1334 PNG and shrinking it costs more than a training step should wait for, so the
shrunk photo is kept in an image cache on first use (<gendir>/image_cache/<seq>/<cam>/<frame>.png or
.npy, written atomically; used only if of the right size and not older than the photo) and read from
there afterwards.

Samples whose files are missing are left out when the dataset is built, each with its reason in
`AvatarDataset.skipped`, and reported once in the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from npva.config import DataConfig
from npva.data.frames import FrameDrive, FrameInputs, ViewTargets
from npva.data.prepared import PreparedSubject
from npva.errors import NpvaError
from npva.fileio import atomic_open
from npva.geometry.camera import Camera
from npva.io.multiface import read_image, read_image_size, write_image

log = logging.getLogger(__name__)

IMAGE_CACHE_FORMATS = ("png", "npy", "none")
MAX_REPLACEMENTS = 16  # unreadable samples tried in a row before giving up


class SampleKey(NamedTuple):
    seq: str
    frame: str
    cam: str


@dataclass
class TrainSample:
    """One frame seen by one camera, at the training resolution (H, W).

    index: stable id of the (frame, camera) pair in its dataset, 0..len-1 (keys the GEP error maps).
    camera: intrinsics scaled to (H, W). drive: what the avatar renders the frame from; targets: what
    the losses compare the render with.
    """

    index: int
    seq: str
    frame: str
    cam: str
    camera: Camera
    drive: FrameDrive
    targets: ViewTargets

    def to(self, device, non_blocking: bool = False) -> TrainSample:
        """The sample with every tensor moved to `device`."""
        drive = self.drive.to(device, non_blocking)
        targets = self.targets.to(device, non_blocking)
        return TrainSample(self.index, self.seq, self.frame, self.cam, self.camera, drive, targets)

    def pin_memory(self) -> TrainSample:
        """The sample in page-locked memory (called by DataLoader(pin_memory=True))."""
        drive, targets = self.drive.pin_memory(), self.targets.pin_memory()
        return TrainSample(self.index, self.seq, self.frame, self.cam, self.camera, drive, targets)


def select_samples(prepared: PreparedSubject, config: DataConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """The frames (config.frames, see PreparedSubject.frames) and cameras (config.cameras and
    config.camera_split, see PreparedSubject.camera_names) that `config` names."""
    return prepared.frames(config.frames), prepared.camera_names(config.cameras, config.camera_split)


class _DirectoryListing:
    """Existence of many files by listing each folder once (one stat per file is slow on network disks)."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def exists(self, path: Path) -> bool:
        folder = path.parent
        if folder not in self._names:
            try:
                self._names[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._names[folder] = frozenset()
        return path.name in self._names[folder]


class ImageCache:
    """Photos shrunk to the training size: root/<seq>/<cam>/<frame>.<png|npy>, uint8 (H, W, 3) RGB.

    A cached file is used only when it has the size asked for and is not older than the photo; any
    other file (an older training size, a replaced photo, a damaged file) is rewritten. Writes are
    atomic, so concurrent loader workers are safe.
    """

    def __init__(self, root: Path, fmt: str):
        if fmt not in ("png", "npy"):
            raise ValueError(f"image cache format must be png or npy, got {fmt!r}")
        self.root = Path(root)
        self.fmt = fmt
        self._write_failed = False

    def path(self, key: SampleKey) -> Path:
        return self.root / key.seq / key.cam / f"{key.frame}.{self.fmt}"

    def load(self, key: SampleKey, size: tuple[int, int], photo: Path) -> np.ndarray | None:
        """The cached image of `size` (H, W) made from `photo`; None when absent, of another size,
        older than the photo or unreadable."""
        path = self.path(key)
        try:
            if path.stat().st_mtime < photo.stat().st_mtime:
                return None
            if self.fmt == "png":
                if read_image_size(path) != size:
                    return None
                image = read_image(path)
            else:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if array.dtype != np.uint8 or array.shape != (*size, 3):
                    return None
                image = np.array(array)
        except (NpvaError, OSError, ValueError, EOFError):  # absent or damaged
            return None
        return image if image.shape == (*size, 3) else None

    def store(self, key: SampleKey, image: np.ndarray) -> None:
        """Write `image` (H, W, 3) uint8; a failure (read-only or full disk) is logged once, not raised."""
        if self._write_failed:
            return
        path = self.path(key)
        try:
            if self.fmt == "png":
                write_image(path, image)
            else:
                with atomic_open(path, "wb") as f:
                    np.save(f, np.ascontiguousarray(image))
        except (OSError, ValueError) as exc:
            self._write_failed = True
            log.warning(
                "image cache %s cannot be written (%s); photos are decoded every time", self.root, exc
            )


class AvatarDataset(Dataset):
    """(frame, camera) training samples of a prepared subject.

    frames: (seq, frame) pairs; cameras: camera names (one camera, e.g. ["400029"], is the authors'
    single-view setting; in `cameras`); inputs: what the avatar reads of each frame (Avatar.inputs).
    Pairs missing any file (photo, mask, depth unless preprocessing made none, position map, average
    texture, head pose, tracked mesh when needed) are skipped; `skipped` lists why, and the log says so
    once.
    """

    def __init__(
        self,
        prepared: PreparedSubject,
        frames: Sequence[tuple[str, str]],
        cameras: Sequence[str],
        config: DataConfig,
        inputs: FrameInputs,
    ):
        if config.image_cache not in IMAGE_CACHE_FORMATS:
            raise ValueError(f"image_cache must be one of {IMAGE_CACHE_FORMATS}, got {config.image_cache!r}")
        self.config = config
        self.inputs = inputs
        self.prepared = prepared
        self.layout = prepared.layout
        self.gendir = prepared.gendir
        self.cameras = prepared.camera_names(cameras)  # every name is a KRT camera
        self.keys, left_out, self.skipped = self._available(frames, list(cameras))
        if not self.keys:
            reasons = "; ".join(self.skipped[:3]) or "no frames or no cameras given"
            raise NpvaError(f"no training samples in {prepared.root} with {self.gendir.root}: {reasons}")
        if left_out:
            log.warning(
                "%d of %d (frame, camera) samples skipped for %d missing files, e.g. %s",
                len(left_out),
                len(self.keys) + len(left_out),
                len(self.skipped),
                "; ".join(self.skipped[:3]),
            )
        cache_root = Path(config.cache_dir) if config.cache_dir else self.gendir.root / "image_cache"
        self.cache = None if config.image_cache == "none" else ImageCache(cache_root, config.image_cache)
        self._reported_unreadable: set[int] = set()

    def _available(
        self, frames: Sequence[tuple[str, str]], cameras: list[str]
    ) -> tuple[list[SampleKey], list[SampleKey], list[str]]:
        """Keys whose files all exist, keys left out, and one reason per missing file."""
        listing = _DirectoryListing()
        keys: list[SampleKey] = []
        left_out: list[SampleKey] = []
        reasons: list[str] = []
        for seq, frame in frames:
            frame_files = {
                "position map": self.gendir.posmap(seq, frame),
                "average texture": self.layout.average_texture(seq, frame),
                "head pose": self.layout.transform(seq, frame),
            }
            if self.inputs.point_map_size > 0:
                frame_files["tracked mesh"] = self.layout.mesh_obj(seq, frame)
            missing_frame = [
                f"{seq} {frame}: missing {what} {path}"
                for what, path in frame_files.items()
                if not listing.exists(path)
            ]
            reasons.extend(missing_frame)
            for cam in cameras:
                view_files = {
                    "image": self.layout.image(seq, cam, frame),
                    "mask": self.gendir.mask(seq, cam, frame),
                }
                if self.prepared.settings.has_depth:
                    view_files["depth map"] = self.gendir.depth(seq, cam, frame)
                missing_view = [
                    f"{seq} {frame} camera {cam}: missing {what} {path}"
                    for what, path in view_files.items()
                    if not listing.exists(path)
                ]
                reasons.extend(missing_view)
                key = SampleKey(seq, frame, cam)
                (left_out if missing_frame or missing_view else keys).append(key)
        return keys, left_out, reasons

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> TrainSample:
        """The sample of `index`; with skip_unreadable, the next readable one when its files are damaged
        (its `index` field then names the sample actually returned)."""
        if not 0 <= index < len(self.keys):
            raise IndexError(f"sample {index} out of range 0..{len(self.keys) - 1}")
        if not self.config.skip_unreadable:
            return self.load(index)
        error: Exception | None = None
        for step in range(min(MAX_REPLACEMENTS, len(self.keys))):
            candidate = (index + step) % len(self.keys)
            try:
                return self.load(candidate)
            except (NpvaError, OSError) as exc:
                error = exc
                if candidate not in self._reported_unreadable:
                    self._reported_unreadable.add(candidate)
                    log.warning("skipping unreadable sample %s: %s", " ".join(self.keys[candidate]), exc)
        raise NpvaError(f"{MAX_REPLACEMENTS} samples in a row from {index} cannot be read; last: {error}")

    def load(self, index: int) -> TrainSample:
        """The sample of `index`; damaged files raise FormatError naming the file."""
        key = self.keys[index]
        photo, camera = self._photo(key)
        drive = self.prepared.drive(key.seq, key.frame, self.inputs)
        targets = self.prepared.targets(key.seq, key.frame, key.cam, photo, drive, self.inputs)
        return TrainSample(index, key.seq, key.frame, key.cam, camera, drive, targets)

    def _photo(self, key: SampleKey) -> tuple[np.ndarray, Camera]:
        """The photo (H, W, 3) uint8 at the training size, and its camera with intrinsics scaled."""
        path = self.layout.image(key.seq, key.cam, key.frame)
        camera = self.prepared.camera(key.cam, path)
        size = (camera.height, camera.width)
        image = self.cache.load(key, size, path) if self.cache else None
        if image is None:
            image = read_image(path, size)
            if self.cache:
                self.cache.store(key, image)
        return image, camera
