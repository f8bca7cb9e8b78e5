"""What one frame gives the avatar, and what one view gives the losses.

`FrameDrive` is everything the avatar needs to render a frame from any camera: the frame's average
texture, its tracked position map (and, when the avatar asks for it, the tracked mesh) and its head
pose. `ViewTargets` is what one camera's photo of that frame gives the losses: the photo, the tracked
mesh's coverage mask, the MVS depth. `FrameInputs` is what an avatar declares it needs of each frame
(`Avatar.inputs`), so that readers load just that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch

_T = TypeVar("_T")


class _Tensors:
    """Moving a dataclass of tensors: every tensor field at once, the other fields kept."""

    def _map_tensors(self: _T, fn: Callable[[torch.Tensor], torch.Tensor]) -> _T:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: fn(v) for k, v in values.items() if isinstance(v, torch.Tensor)}
        moved |= {k: v._map_tensors(fn) for k, v in values.items() if isinstance(v, _Tensors)}
        return replace(self, **moved)

    def to(self: _T, device: torch.device | str, non_blocking: bool = False) -> _T:
        return self._map_tensors(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self: _T) -> _T:
        """In page-locked memory (DataLoader(pin_memory=True) calls it)."""
        return self._map_tensors(lambda v: v.pin_memory())


@dataclass(frozen=True)
class FrameInputs:
    """What an avatar reads of each frame.

    texture_size: side T of the average texture the encoder takes; posmap_size: side S of the
    position maps; full_texture: also the average texture at its own size (the shading points look
    their colour up in it); point_map_size: > 0 to load the tracked mesh's position map at the point
    map's size as a target (the mouth-points loss), 0 not to; tracked_mesh: drive the avatar with the
    tracked mesh itself too (the texture mode "ray").
    """

    texture_size: int
    posmap_size: int
    full_texture: bool = False
    point_map_size: int = 0
    tracked_mesh: bool = False

    def for_rendering(self) -> FrameInputs:
        """The inputs without what only the losses need (the tracked point map)."""
        return replace(self, point_map_size=0)


@dataclass
class TrackedMesh(_Tensors):
    """A frame's tracked mesh with its texture coordinates.

    verts (V, 3) float32: vertices in the face frame, mm. faces (F, 3) long: vertex indices of each
    triangle. uvs (U, 2) float32: texture coordinates (OBJ convention: v up). face_uvs (F, 3) long: the
    texture coordinate of each triangle corner. Only verts changes from frame to frame.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    face_uvs: torch.Tensor


@dataclass
class FrameDrive(_Tensors):
    """The driving inputs of one frame.

    texture (3, T, T) float32 in [0, 1]: the average texture at the encoder's size. posmap (3, S, S)
    float32: the tracked mesh's position map in the face frame, mm. R (3, 3), t (3,) float32: head pose,
    x_world = R x_face + t. full_texture (3, T', T'): the average texture at its own size, or None when
    the avatar does not look colours up in it. tracked_mesh: the frame's tracked mesh (the texture mode
    "ray"), or None.
    """

    texture: torch.Tensor
    posmap: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    full_texture: torch.Tensor | None = None
    tracked_mesh: TrackedMesh | None = None


@dataclass
class ViewTargets(_Tensors):
    """What one camera's view of a frame gives the losses, at the training size (H, W).

    image (3, H, W) float32 in [0, 1]: the photo. mask (H, W) bool: coverage of the tracked mesh.
    depth (H, W) float32: camera z in mm, 0 where unknown (all 0 without depth). posmap (3, S, S): the
    tracked position map (the mesh loss's target; the same tensor as the drive's). point_posmap
    (3, P, P): the tracked mesh's position map at the point map's size, face frame, mm, NaN where the
    mesh has no surface; None unless asked for (FrameInputs.point_map_size).
    """

    image: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    posmap: torch.Tensor
    point_posmap: torch.Tensor | None = None
