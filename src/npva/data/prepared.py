"""A prepared subject: a subject directory in the Multiface layout with its preprocessing output.

`PreparedSubject` is the one place that knows how the two fit together: the typed settings of the
preprocessing manifest, the rule that puts a camera at the training size, which frames and cameras a
list or split names, and, per frame, the driving inputs the avatar renders from (`drive`) and, per view,
what the losses compare with (`targets`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from npva.data.frames import FrameDrive, FrameInputs, TrackedMesh, ViewTargets
from npva.data.gendir import GenDir, read_depth_npz, read_manifest, read_mask, read_posmap
from npva.errors import FormatError, MissingFileError, NpvaError
from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh
from npva.geometry.posmap import PositionMapSampler
from npva.io.multiface import (
    load_world_verts,
    read_frame_list,
    read_image,
    read_image_size,
    read_krt,
    read_obj,
    read_transform,
    resize_image,
)
from npva.io.splits import split_cameras, split_frames
from npva.io.subject import SubjectLayout


@dataclass(frozen=True)
class PreparedSettings:
    """The settings a gendir was made with (its manifest.json): image_scale (training size = photo
    size x image_scale), uv_size (side of the position maps), depth (the depth source: "import",
    "mesh", "none", ...)."""

    image_scale: float
    uv_size: int
    depth: str

    @property
    def has_depth(self) -> bool:
        return self.depth != "none"


def read_settings(gendir: GenDir) -> PreparedSettings | None:
    """The typed settings of a gendir's manifest; None when there is no manifest, FormatError when it
    lacks one of them."""
    manifest = read_manifest(gendir)
    if manifest is None:
        return None
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    try:
        return PreparedSettings(
            image_scale=float(settings["image_scale"]),
            uv_size=int(settings["uv_size"]),
            depth=str(settings["depth"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(
            gendir.manifest, f"expected settings image_scale, uv_size and depth ({exc})"
        ) from None


def training_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) of an image of (height, width) at the training scale, as preprocessing sizes its masks."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def training_camera(camera: Camera, photo_size: tuple[int, int], scale: float) -> Camera:
    """`camera` (intrinsics of its photos on disk, of photo_size (H, W)) at the training size."""
    height, width = photo_size
    return camera.with_size(height, width).resized(*training_size(height, width, scale))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class PreparedSubject:
    """A subject directory and its preprocessing output (default SUBJECT/gendir).

    Raises MissingFileError when the gendir has no manifest (not preprocessed).
    """

    def __init__(self, subject: Path, gendir: Path | None = None):
        self.root = Path(subject)
        self.layout = SubjectLayout(self.root)
        self.gendir = GenDir(Path(gendir) if gendir is not None else self.root / "gendir")
        settings = read_settings(self.gendir)
        if settings is None:
            raise MissingFileError(self.gendir.manifest, "preprocessing manifest (run npva preprocess)")
        self.settings = settings
        # The tracked meshes share one topology and UV layout: read from the first OBJ asked for.
        self._tracked_layout: Mesh | None = None
        self._point_samplers: dict[int, PositionMapSampler] = {}
        self._photo_sizes: dict[str, tuple[int, int]] = {}

    @functools.cached_property
    def cameras(self) -> dict[str, Camera]:
        """The subject's cameras by name, in KRT order (intrinsics of the photos on disk)."""
        return read_krt(self.layout.krt)

    # ---- which frames and cameras ----------------------------------------------------------------

    def frames(self, which: str) -> list[tuple[str, str]]:
        """The (seq, frame) pairs `which` names: "all" (frame_list.txt), a "<seq> <frame>" list file
        (an existing file, or a name with a folder or ending in .txt) or a split name ("train", "test":
        the subject's splits/, else its default split protocol, see npva.io.splits)."""
        path = Path(which)
        if which == "all":
            return read_frame_list(self.layout.frame_list)
        if path.is_file() or "/" in which or os.sep in which or path.suffix == ".txt":
            return read_frame_list(path)
        return split_frames(self.root, which)

    def camera_names(self, names: Sequence[str] = (), camera_split: bool = False) -> list[str]:
        """`names` (every camera in KRT order when empty), checked against the KRT; with
        `camera_split` only those among the training cameras of the subject's split."""
        known = list(self.cameras)
        chosen = list(names) or known
        unknown = [name for name in chosen if name not in known]
        if unknown:
            raise NpvaError(
                f"{self.layout.krt}: no camera named {', '.join(unknown)} (known: {', '.join(known)})"
            )
        if camera_split:
            train = set(split_cameras(self.root, "train"))
            chosen = [name for name in chosen if name in train]
            if not chosen:
                raise NpvaError(
                    f"{self.layout.camera_split}: none of the chosen cameras is a training camera"
                )
        return chosen

    # ---- cameras at the training size -----------------------------------------------------------

    def camera(self, name: str, photo: Path | None = None) -> Camera:
        """Camera `name` at the training size. KRT intrinsics refer to the photos on disk, so their size
        comes from `photo` (a photo of that camera), else from the first photo of that camera found in
        the subject."""
        if name not in self.cameras:
            raise NpvaError(f"{self.layout.krt}: no camera named {name} (known: {', '.join(self.cameras)})")
        size = read_image_size(photo) if photo is not None else self._any_photo_size(name)
        return training_camera(self.cameras[name], size, self.settings.image_scale)

    def _any_photo_size(self, name: str) -> tuple[int, int]:
        """(H, W) of the first photo of camera `name` found in the subject (looked up once: listing
        the photos of a capture is slow)."""
        if name not in self._photo_sizes:
            photo = next(iter(sorted(self.layout.images_dir.glob(f"*/{name}/*.png"))), None)
            if photo is None:
                raise MissingFileError(
                    self.layout.images_dir / "<seq>" / name,
                    f"photo of camera {name} (its size fixes the intrinsics)",
                )
            self._photo_sizes[name] = read_image_size(photo)
        return self._photo_sizes[name]

    def view_camera(self, name: str, frames: Sequence[tuple[str, str]]) -> Camera:
        """Camera `name` at the training size, sized by its photo of the first of `frames` that has one
        (else any photo of that camera)."""
        photo = next(
            (p for seq, frame in frames if (p := self.layout.image(seq, name, frame)).is_file()), None
        )
        return self.camera(name, photo)

    # ---- per frame and view ---------------------------------------------------------------------

    def drive(self, seq: str, frame: str, inputs: FrameInputs) -> FrameDrive:
        """The driving inputs of (seq, frame) as `inputs` asks for them (CPU tensors)."""
        full_texture = read_image(self.layout.average_texture(seq, frame))
        size = inputs.texture_size
        texture = resize_image(full_texture, (size, size))
        posmap = read_posmap(self.gendir.posmap(seq, frame), inputs.posmap_size)
        R, t = read_transform(self.layout.transform(seq, frame))
        return FrameDrive(
            texture=image_tensor(texture),
            posmap=torch.from_numpy(np.ascontiguousarray(posmap.transpose(2, 0, 1))),
            R=torch.as_tensor(R, dtype=torch.float32),
            t=torch.as_tensor(t, dtype=torch.float32),
            full_texture=image_tensor(full_texture) if inputs.full_texture else None,
            tracked_mesh=self.tracked_mesh(seq, frame, R, t) if inputs.tracked_mesh else None,
        )

    def targets(
        self, seq: str, frame: str, cam: str, photo: np.ndarray, drive: FrameDrive, inputs: FrameInputs
    ) -> ViewTargets:
        """What the losses compare a render of (seq, frame) from `cam` with: `photo` (H, W, 3) uint8 at
        the training size, the mask and depth of that view (depth all 0 when the gendir has none) and
        the drive's position map; with inputs.point_map_size, the tracked mesh at that size."""
        size = photo.shape[:2]
        mask_path = self.gendir.mask(seq, cam, frame)
        mask = _expect_shape(read_mask(mask_path), size, mask_path, "mask")
        if self.settings.has_depth:
            depth_path = self.gendir.depth(seq, cam, frame)
            depth = _expect_shape(read_depth_npz(depth_path), size, depth_path, "depth map")
        else:
            depth = np.zeros(size, np.float32)
        point_posmap = None
        if inputs.point_map_size > 0:
            point_posmap = self._tracked_tensor(seq, frame, inputs.point_map_size)
        return ViewTargets(
            image=image_tensor(photo),
            mask=torch.from_numpy(np.ascontiguousarray(mask)),
            depth=torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)),
            posmap=drive.posmap,
            point_posmap=point_posmap,
        )

    def _tracked_tensor(self, seq: str, frame: str, size: int) -> torch.Tensor:
        """tracked_point_map as a (3, P, P) tensor."""
        return torch.from_numpy(self.tracked_point_map(seq, frame, size).transpose(2, 0, 1).copy())

    def tracked_mesh(self, seq: str, frame: str, R: np.ndarray, t: np.ndarray) -> TrackedMesh:
        """The tracked mesh of (seq, frame) in the face frame of the pose R (3, 3), t (3,)."""
        layout = self._tracked_mesh_layout(seq, frame)
        return TrackedMesh(
            torch.as_tensor(self._face_frame_verts(seq, frame, R, t), dtype=torch.float32),
            torch.as_tensor(layout.faces, dtype=torch.int64),
            torch.as_tensor(layout.uvs, dtype=torch.float32),
            torch.as_tensor(layout.face_uvs, dtype=torch.int64),
        )

    def tracked_point_map(self, seq: str, frame: str, size: int) -> np.ndarray:
        """(P, P, 3) float32 face-frame position map of the frame's tracked mesh at size P, NaN outside
        the UV islands."""
        if size not in self._point_samplers:
            self._point_samplers[size] = PositionMapSampler(self._tracked_mesh_layout(seq, frame), size)
        sampler = self._point_samplers[size]
        R, t = read_transform(self.layout.transform(seq, frame))  # the pose at full precision
        posmap = sampler.position_map(self._face_frame_verts(seq, frame, R, t))
        posmap[~sampler.coverage] = np.nan
        return posmap

    def _tracked_mesh_layout(self, seq: str, frame: str) -> Mesh:
        """The tracked meshes' topology and UVs: the OBJ of (seq, frame) when none was read yet."""
        if self._tracked_layout is None:
            self._tracked_layout = read_obj(self.layout.mesh_obj(seq, frame))
        return self._tracked_layout

    def _face_frame_verts(self, seq: str, frame: str, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(V, 3) vertices of the tracked mesh of (seq, frame), x_face = R^T (x_world - t)."""
        num_verts = len(self._tracked_mesh_layout(seq, frame).verts)
        return (load_world_verts(self.layout, seq, frame, num_verts) - t) @ R


def _expect_shape(array: np.ndarray, size: tuple[int, int], path: Path, what: str) -> np.ndarray:
    if array.shape != tuple(size):
        raise FormatError(
            path,
            f"expected a {what} of the training size {size[0]}x{size[1]}, found "
            f"{array.shape[0]}x{array.shape[1]} (preprocessed with another image_scale?)",
        )
    return array
