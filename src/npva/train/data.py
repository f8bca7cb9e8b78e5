"""Training samples: one (frame, camera) image with everything a training step needs.

A sample joins the subject's files (photo, average texture, head pose) with preprocessing's (position map,
mask, depth) for one frame seen by one camera. Photos are loaded at the training resolution, which is the
size preprocessing made the masks at: round(H * image_scale) x round(W * image_scale) with image_scale
from the gendir manifest. The camera's intrinsics are scaled to that size.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from npva.config import DataConfig
from npva.errors import FormatError, MissingFileError, NpvaError
from npva.fileio import atomic_open
from npva.geometry.camera import Camera
from npva.io.multiface import (
    read_frame_list,
    read_image,
    read_image_size,
    read_krt,
    read_obj,
    read_transform,
    resize_image,
    write_image,
)
from npva.io.splits import split_cameras, split_frames
from npva.io.subject import SubjectLayout
from npva.preprocess.gendir import GenDir, read_depth_npz, read_manifest, read_mask, read_posmap
from npva.preprocess.run import load_world_verts
from npva.preprocess.uvlayout import PositionMapSampler

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
    camera: intrinsics scaled to (H, W). image (3, H, W) float32 in [0, 1]; mask (H, W) bool coverage of
    the tracked mesh; depth (H, W) float32 camera z in mm, 0 where unknown (all 0 without depth).
    texture (3, T, T) float32 in [0, 1]: the average texture. posmap (3, S, S) float32: position map in
    the face frame, mm. R (3, 3), t (3,) float32: head pose, x_world = R x_face + t.
    Loaded only when asked for (else None): full_texture (3, T', T') the average texture at its own size;
    point_posmap (3, P, P) the tracked mesh's position map at the point map's size, face frame, mm, NaN
    where the mesh has no surface.
    """

    index: int
    seq: str
    frame: str
    cam: str
    camera: Camera
    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    texture: torch.Tensor
    posmap: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    full_texture: torch.Tensor | None = None
    point_posmap: torch.Tensor | None = None

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainSample:
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: fn(v) for k, v in tensors.items() if isinstance(v, torch.Tensor)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainSample:
        """The sample with every tensor moved to `device`."""
        return self._map_tensors(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainSample:
        """The sample in page-locked memory (called by DataLoader(pin_memory=True))."""
        return self._map_tensors(lambda v: v.pin_memory())


def training_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) of an image of (height, width) at the training scale, as preprocessing sizes its masks."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_frames(subject: Path, frames: str) -> list[tuple[str, str]]:
    """The (seq, frame) pairs that `frames` names: "all" (frame_list.txt), a "<seq> <frame>" list file
    (an existing file, or a name with a folder or ending in .txt) or a split name ("train", "test":
    the subject's splits/, else its default split protocol, see npva.io.splits)."""
    path = Path(frames)
    if frames == "all":
        return read_frame_list(SubjectLayout(subject).frame_list)
    if path.is_file() or "/" in frames or os.sep in frames or path.suffix == ".txt":
        return read_frame_list(path)
    return split_frames(subject, frames)


def select_cameras(subject: Path, cameras: Sequence[str], camera_split: bool = False) -> list[str]:
    """`cameras` (every KRT camera in file order when empty), checked against the KRT; with
    `camera_split` only those among the training cameras of the subject's split."""
    layout = SubjectLayout(subject)
    known = list(read_krt(layout.krt))
    chosen = list(cameras) or known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise NpvaError(f"{layout.krt}: no camera named {', '.join(unknown)} (known: {', '.join(known)})")
    if camera_split:
        train = set(split_cameras(subject, "train"))
        chosen = [name for name in chosen if name in train]
        if not chosen:
            raise NpvaError(f"{layout.camera_split}: none of the chosen cameras is a training camera")
    return chosen


def select_samples(subject: Path, config: DataConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """The frames (config.frames, see read_frames) and cameras (config.cameras and
    config.camera_split, see select_cameras) that `config` names for a subject."""
    return read_frames(subject, config.frames), select_cameras(subject, config.cameras, config.camera_split)


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
    """(frame, camera) training samples of a preprocessed subject.

    subject: the subject directory; gendir: its preprocessing output; frames: (seq, frame) pairs;
    cameras: camera names (one camera, e.g. ["400029"], is the authors' single-view setting).
    Pairs missing any file (photo, mask, depth unless preprocessing made none, position map, average
    texture, head pose, tracked mesh when needed) are skipped; `skipped` lists why, and the log says so
    once. full_texture: samples carry the average texture at its own size too; point_map_size > 0:
    and the tracked mesh's position map at that size.
    """

    def __init__(
        self,
        subject: Path,
        gendir: Path,
        frames: Sequence[tuple[str, str]],
        cameras: Sequence[str],
        config: DataConfig,
        *,
        full_texture: bool = False,
        point_map_size: int = 0,
    ):
        if config.image_cache not in IMAGE_CACHE_FORMATS:
            raise ValueError(f"image_cache must be one of {IMAGE_CACHE_FORMATS}, got {config.image_cache!r}")
        self.config = config
        self.full_texture = full_texture
        self.point_map_size = point_map_size
        self._point_sampler: PositionMapSampler | None = None  # made from the first tracked mesh read
        self._num_verts = 0
        self.layout = SubjectLayout(subject)
        self.gendir = GenDir(Path(gendir))
        manifest = read_manifest(self.gendir)
        if manifest is None:
            raise MissingFileError(self.gendir.manifest, "preprocessing manifest (run npva preprocess)")
        settings = manifest.get("settings", {})
        try:
            self.image_scale = float(settings["image_scale"])
            self.uv_size = int(settings["uv_size"])
            self.has_depth = settings["depth"] != "none"
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(
                self.gendir.manifest, f"expected settings image_scale, uv_size and depth ({exc})"
            ) from None
        krt = read_krt(self.layout.krt)
        unknown = [name for name in cameras if name not in krt]
        if unknown:
            raise NpvaError(f"{self.layout.krt}: no camera named {', '.join(unknown)}")
        self.krt = {name: krt[name] for name in cameras}
        self.keys, left_out, self.skipped = self._available(frames, list(cameras))
        if not self.keys:
            reasons = "; ".join(self.skipped[:3]) or "no frames or no cameras given"
            raise NpvaError(f"no training samples in {subject} with {gendir}: {reasons}")
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
            if self.point_map_size > 0:
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
                if self.has_depth:
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
        image, camera = self._photo(key)
        size = (camera.height, camera.width)
        mask_path = self.gendir.mask(key.seq, key.cam, key.frame)
        mask = _expect_shape(read_mask(mask_path), size, mask_path, "mask")
        if self.has_depth:
            depth_path = self.gendir.depth(key.seq, key.cam, key.frame)
            depth = _expect_shape(read_depth_npz(depth_path), size, depth_path, "depth map")
        else:
            depth = np.zeros(size, np.float32)
        texture_size = self.config.texture_size
        full_texture = read_image(self.layout.average_texture(key.seq, key.frame))
        texture = resize_image(full_texture, (texture_size, texture_size))
        posmap = read_posmap(self.gendir.posmap(key.seq, key.frame), self.uv_size)
        R, t = read_transform(self.layout.transform(key.seq, key.frame))
        point_posmap = None
        if self.point_map_size > 0:
            point_posmap = torch.from_numpy(self._point_posmap(key, R, t).transpose(2, 0, 1).copy())
        return TrainSample(
            index=index,
            seq=key.seq,
            frame=key.frame,
            cam=key.cam,
            camera=camera,
            image=image_tensor(image),
            mask=torch.from_numpy(np.ascontiguousarray(mask)),
            depth=torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)),
            texture=image_tensor(texture),
            posmap=torch.from_numpy(np.ascontiguousarray(posmap.transpose(2, 0, 1))),
            R=torch.as_tensor(R, dtype=torch.float32),
            t=torch.as_tensor(t, dtype=torch.float32),
            full_texture=image_tensor(full_texture) if self.full_texture else None,
            point_posmap=point_posmap,
        )

    def _point_posmap(self, key: SampleKey, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(P, P, 3) float32 face-frame position map of the frame's tracked mesh, NaN outside the islands."""
        if self._point_sampler is None:  # the topology and UVs of tracked meshes are fixed
            mesh = read_obj(self.layout.mesh_obj(key.seq, key.frame))
            self._point_sampler = PositionMapSampler(mesh, self.point_map_size)
            self._num_verts = len(mesh.verts)
        verts = load_world_verts(self.layout, key.seq, key.frame, self._num_verts)
        face = (verts - t) @ R  # x_face = R^T (x_world - t)
        posmap = self._point_sampler.position_map(face)
        posmap[~self._point_sampler.coverage] = np.nan
        return posmap

    def _photo(self, key: SampleKey) -> tuple[np.ndarray, Camera]:
        """The photo (H, W, 3) uint8 at the training size, and its camera with intrinsics scaled."""
        path = self.layout.image(key.seq, key.cam, key.frame)
        height, width = read_image_size(path)  # K refers to the image on disk
        size = training_size(height, width, self.image_scale)
        camera = self.krt[key.cam].with_size(height, width).resized(*size)
        image = self.cache.load(key, size, path) if self.cache else None
        if image is None:
            image = read_image(path, size)
            if self.cache:
                self.cache.store(key, image)
        return image, camera


def _expect_shape(array: np.ndarray, size: tuple[int, int], path: Path, what: str) -> np.ndarray:
    if array.shape != size:
        raise FormatError(
            path,
            f"expected a {what} of the training size {size[0]}x{size[1]}, found "
            f"{array.shape[0]}x{array.shape[1]} (preprocessed with another image_scale?)",
        )
    return array


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
