"""Pinhole cameras in the OpenCV convention, millimetres.

x right, y down, z forward; x_cam = R x_world + t; pixel (x, y) has its centre at (x + 0.5, y + 0.5),
so a point projects to continuous image coordinates u = fx X / Z + cx, v = fy Y / Z + cy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Camera:
    """One calibrated camera. `height`/`width` are the image size K refers to (None if unknown)."""

    name: str
    K: np.ndarray  # (3, 3) intrinsics, pixels
    R: np.ndarray  # (3, 3) world -> camera rotation
    t: np.ndarray  # (3,) world -> camera translation, mm
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))  # k1 k2 p1 p2 k3 (kept, unused)
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        for name, shape in (("K", (3, 3)), ("R", (3, 3)), ("t", (3,)), ("dist", (5,))):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"camera {self.name}: {name} must have shape {shape}, got {value.shape}")
            object.__setattr__(self, name, value)

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in world coordinates, -R^T t, shape (3,)."""
        return -self.R.T @ self.t

    def with_size(self, height: int, width: int) -> Camera:
        """The same camera, recording the image size its intrinsics refer to."""
        return replace(self, height=int(height), width=int(width))

    def resized(self, height: int, width: int) -> Camera:
        """Intrinsics for the image resized to (height, width): row 0 of K scales by W'/W, row 1 by H'/H."""
        if self.height is None or self.width is None:
            raise ValueError(f"camera {self.name}: image size unknown, cannot resize")
        K = self.K.copy()
        K[0] *= width / self.width
        K[1] *= height / self.height
        return replace(self, K=K, height=int(height), width=int(width))


def camera_tensors(
    camera: Camera, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K (3, 3), R (3, 3), t (3,) as tensors, in one copy to the device."""
    packed = np.concatenate([np.ravel(camera.K), np.ravel(camera.R), np.ravel(camera.t)])
    values = host_to_device(packed, device, dtype)
    return values[:9].view(3, 3), values[9:18].view(3, 3), values[18:21]


def host_to_device(
    array: np.ndarray, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A host array as a tensor on `device`. To a GPU it goes through pinned memory without waiting: a
    copy from pageable memory would make the host wait until the GPU has run all the work queued so far."""
    tensor = torch.as_tensor(array, dtype=dtype)
    if device is None or torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def world_to_camera(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(..., 3) world points -> (..., 3) camera-frame points."""
    _, R, t = camera_tensors(camera, points.device, points.dtype)
    return points @ R.T + t


def project(points: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 3) world points -> continuous pixel coordinates (..., 2) and camera depth z (...,).

    Differentiable; points behind the camera get z <= 0 and meaningless pixel coordinates.
    """
    K, _, _ = camera_tensors(camera, points.device, points.dtype)
    p = world_to_camera(points, camera)
    z = p[..., 2]
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    xy = p[..., :2] / safe_z[..., None]
    uv = torch.stack(
        (K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2], K[1, 1] * xy[..., 1] + K[1, 2]), -1
    )
    return uv, z


def pixel_centres(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) continuous coordinates (x + 0.5, y + 0.5) of every pixel centre."""
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), -1)


def pixel_rays(
    camera: Camera, pixels: torch.Tensor | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-frame rays through pixels.

    pixels: (..., 2) continuous pixel coordinates (use pixel centres, x + 0.5); None means every pixel
    centre of the camera's image, shape (H, W, 2).
    Returns origin (3,) (the camera centre) and unit directions (..., 3).
    """
    if pixels is None:
        if camera.height is None or camera.width is None:
            raise ValueError(f"camera {camera.name}: image size unknown, pass pixels explicitly")
        pixels = pixel_centres(camera.height, camera.width, device)
    K, R, t = camera_tensors(camera, pixels.device, torch.float32)
    x = (pixels[..., 0] - K[0, 2] - K[0, 1] * (pixels[..., 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (pixels[..., 1] - K[1, 2]) / K[1, 1]
    d_cam = torch.stack((x, y, torch.ones_like(x)), -1)
    d_world = d_cam @ R  # R^T d for row vectors
    origin = -(R.T @ t)
    return origin, torch.nn.functional.normalize(d_world, dim=-1)


def look_at(
    name: str,
    centre: np.ndarray,
    target: np.ndarray,
    up: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
) -> Camera:
    """A camera at `centre` looking at `target`, image y axis roughly along -`up`."""
    centre = np.asarray(centre, np.float64)
    z = np.asarray(target, np.float64) - centre
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)  # right = down x forward
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack((x, y, z))
    return Camera(name=name, K=np.asarray(K, np.float64), R=R, t=-R @ centre, height=height, width=width)
