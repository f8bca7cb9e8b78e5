"""The viewer's pictures: one frame of the avatar from one camera in one mode.

Image modes (an (H, W, 3) picture the browser shows behind its scene):
- colour: the avatar's colour; pixels the decoded coarse mesh does not cover show its background;
- depth: the depth where rays stop, turbo colour map from near (red) to far (blue), black = none;
- normals: camera-frame normals of that depth as (n + 1) / 2;
- opacity: how much of each ray the avatar absorbs, black (none) to white (all);
- mesh: the frame's tracked mesh, grey and shaded (its own geometry, not the avatar's).
`points` shows the neural points as a point cloud in the browser's scene instead of a picture, coloured
by their features (the first three principal components) or by the length of their displacement.

On CUDA the avatar renders with the fast kernels its settings select (render.kernels=auto).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from npva.eval.render import RenderedView, depth_image, normal_image, normal_map, render_view
from npva.eval.video import shaded_mesh_image, to_uint8
from npva.geometry.camera import Camera
from npva.io.multiface import read_obj
from npva.view.scene import ViewSubject

IMAGE_MODES = ("colour", "depth", "normals", "opacity", "mesh")
MODES = (*IMAGE_MODES, "points")
POINT_COLOURS = ("feature", "displacement")


@dataclass
class PointCloud:
    """The neural points of a frame: positions (N, 3) world mm, colours uint8 (N, 3)."""

    positions: np.ndarray
    colours: np.ndarray


def render_avatar(subject: ViewSubject, seq: str, frame: str, camera: Camera) -> RenderedView:
    """The avatar at (seq, frame) seen by `camera`: every pixel the coarse mesh covers is rendered.

    This is the viewer's only call into the avatar. A camera at a capture camera's centre renders as
    that camera (its learned background and colour calibration), any other as a new camera.
    """
    camera = dataclasses.replace(camera, name=subject.capture_name(camera) or camera.name)
    return render_view(subject.ctx.avatar, subject.drive(seq, frame), camera)


def render_image(subject: ViewSubject, seq: str, frame: str, camera: Camera, mode: str) -> np.ndarray:
    """uint8 (camera.height, camera.width, 3) picture of (seq, frame) from `camera` in an image mode
    (IMAGE_MODES)."""
    if mode == "mesh":
        return tracked_mesh_image(subject, seq, frame, camera)
    view = render_avatar(subject, seq, frame, camera)
    if mode == "colour":
        return to_uint8(view.image)
    if mode == "depth":
        return depth_image(view.depth.cpu().numpy())
    if mode == "normals":
        return normal_image(normal_map(view.depth, camera.K).cpu().numpy())
    if mode == "opacity":
        return to_uint8(opacity_map(view)[..., None].expand(-1, -1, 3))
    raise ValueError(f"unknown image mode {mode!r}; choose one of {', '.join(IMAGE_MODES)}")


def opacity_map(view: RenderedView) -> torch.Tensor:
    """(H, W) opacity of the rendered rays, 0 on pixels not rendered."""
    opacity = torch.zeros_like(view.depth)
    opacity[view.output.pixels[:, 1], view.output.pixels[:, 0]] = view.output.rays.opacity.float()
    return opacity


def tracked_mesh_image(subject: ViewSubject, seq: str, frame: str, camera: Camera) -> np.ndarray:
    """uint8 (H, W, 3) the tracked mesh of (seq, frame), shaded grey, over black."""
    layout = subject.ctx.layout
    mesh = read_obj(layout.mesh_obj(seq, frame))
    device = subject.ctx.device
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
    return to_uint8(shaded_mesh_image(verts, faces, camera, torch.zeros(3, device=device)))


def neural_points(subject: ViewSubject, seq: str, frame: str, camera: Camera, colour_by: str) -> PointCloud:
    """The neural points of (seq, frame), coloured by `colour_by` (POINT_COLOURS). `camera` is any
    camera that sees the head (the render that builds the points needs one; a small one is cheapest)."""
    output = render_avatar(subject, seq, frame, camera).output
    points = output.scene.points
    if colour_by == "feature":
        colours = feature_colours(points.features.detach().float())
    elif colour_by == "displacement":
        displacement = output.maps.displacement[0].reshape(3, -1).T[points.texel_index]  # (N, 3) mm
        colours = length_colours(displacement.detach().float().norm(dim=1))
    else:
        raise ValueError(f"unknown point colouring {colour_by!r}; choose one of {', '.join(POINT_COLOURS)}")
    return PointCloud(points.positions.detach().float().cpu().numpy(), colours)


def feature_colours(features: torch.Tensor) -> np.ndarray:
    """(N, C) features -> uint8 (N, 3): their first three principal components, each stretched from
    its 1st to its 99th percentile over the points."""
    centred = features - features.mean(0)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    components = centred @ vt[: min(3, vt.shape[0])].T  # (N, <=3)
    components = torch.nn.functional.pad(components, (0, 3 - components.shape[1]))
    low = torch.quantile(components, 0.01, dim=0)
    high = torch.quantile(components, 0.99, dim=0)
    scaled = (components - low) / (high - low).clamp_min(1e-12)
    return (scaled.clamp(0, 1) * 255).round().byte().cpu().numpy()


def length_colours(lengths: torch.Tensor) -> np.ndarray:
    """(N,) non-negative lengths -> uint8 (N, 3) turbo colours from 0 (blue) to the largest (red)."""
    scaled = lengths / lengths.max().clamp_min(1e-12)
    grey = (scaled * 255).round().byte().cpu().numpy()[:, None]  # (N, 1) as a one-column image
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)[:, 0]
