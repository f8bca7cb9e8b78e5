"""Patch-wise depth-guided shading-point sampling (method.md section 5).

Three steps per ray:
1. `depth_guided_candidates`: camera depths of the candidates, from the rasterized guide depth read
   at a 3x3 patch of probes around the pixel (one window, or two across a depth discontinuity);
2. `candidate_positions`: world positions, a candidate at camera depth d lying at distance
   d / (ray . optical axis) along the unit ray;
3. `select_shading_points`: the candidates whose voxel is near an occupied voxel
   (`OccupancyGrid`), at most the first `max_samples` per ray, in ray order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from npva.config import SamplingConfig
from npva.geometry.camera import Camera, camera_tensors
from npva.model.rowscan import scan_rows


def probe_depths(guide_depth: torch.Tensor, pixels: torch.Tensor, offset: int) -> torch.Tensor:
    """guide_depth (H, W), pixels (R, 2) long (x, y) -> (R, 9) depths at pixel + {-o, 0, o}^2.

    Probes outside the image are clipped to its border.
    """
    height, width = guide_depth.shape
    steps = torch.arange(-1, 2, device=pixels.device) * offset  # made on the device: no copy to wait for
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    xs = (pixels[:, 0:1] + dx.reshape(1, 9)).clamp(0, width - 1)
    ys = (pixels[:, 1:2] + dy.reshape(1, 9)).clamp(0, height - 1)
    return guide_depth[ys, xs]


def _bin_midpoints(
    count: int,
    num_rays: int,
    jitter: float,
    training: bool,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(R, count) ascending midpoints of `count` bins tiling [0, 1].

    Evaluation: equal bins. Training: bin widths scaled by 1 + jitter (U - 0.5), renormalized to
    tile [0, 1].
    """
    if training and jitter > 0:
        u = torch.rand((num_rays, count), generator=generator, device=device)
        widths = 1.0 + jitter * (u - 0.5)
    else:
        widths = torch.ones((num_rays, count), device=device)
    widths = widths / widths.sum(1, keepdim=True)
    ends = scan_rows(torch.cumsum, widths)
    return ends - 0.5 * widths


def depth_guided_candidates(
    guide_depth: torch.Tensor,
    pixels: torch.Tensor,
    cfg: SamplingConfig,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate camera depths for the rays through `pixels`.

    guide_depth: (H, W) rasterized camera z, 0 (or < cfg.background_depth_mm) for background; read
        without gradient.
    pixels: (R, 2) long pixel indices (x, y).
    Returns cand_z (R, N) camera z ascending along each ray and cand_valid (R, N) bool, with
    N = cfg.num_candidates. Rays without guide depth in their probes (with cfg.centre_guide: at their own
    pixel) have no valid candidate (z 0); candidates at z <= 0 are invalid.
    """
    if not 0 <= cfg.jitter < 2:
        raise ValueError(f"sampling jitter must lie in [0, 2), got {cfg.jitter}")
    if cfg.num_candidates < 2:
        raise ValueError(f"num_candidates must be at least 2, got {cfg.num_candidates}")
    probes = probe_depths(guide_depth.detach(), pixels, cfg.probe_offset_px)  # (R, 9)
    foreground = probes >= cfg.background_depth_mm
    has_guide = foreground[:, 4] if cfg.centre_guide else foreground.any(1)  # probe 4: the pixel itself
    d_max = probes.max(1).values
    d_min = torch.where(foreground, probes, torch.full_like(probes, torch.inf)).min(1).values
    d_min = torch.where(has_guide, d_min, d_max)
    split = (d_max - d_min) > cfg.discontinuity_mm  # (R,)

    num_rays, n = pixels.shape[0], cfg.num_candidates
    near_n = n // 2
    width = 2.0 * cfg.window_half_mm
    device = guide_depth.device
    unit = _bin_midpoints(n, num_rays, cfg.jitter, training, generator, device)  # one window
    near = _bin_midpoints(near_n, num_rays, cfg.jitter, training, generator, device)
    far = _bin_midpoints(n - near_n, num_rays, cfg.jitter, training, generator, device)

    centre = 0.5 * (d_max + d_min)
    single = (centre - cfg.window_half_mm)[:, None] + width * unit
    double = torch.cat(
        (
            (d_min - cfg.window_half_mm)[:, None] + width * near,
            (d_max - cfg.window_half_mm)[:, None] + width * far,
        ),
        1,
    )
    cand_z = torch.where(split[:, None], double, single)
    cand_z = torch.sort(cand_z, dim=1).values  # two windows closer than their width interleave
    cand_valid = has_guide[:, None] & (cand_z > 0)
    cand_z = torch.where(cand_valid, cand_z, torch.zeros_like(cand_z))
    return cand_z, cand_valid


def optical_axis(camera: Camera, device: torch.device | str | None = None) -> torch.Tensor:
    """(3,) unit viewing direction of the camera (its z axis) in world coordinates."""
    _, rotation, _ = camera_tensors(camera, device)
    return rotation[2]


def candidate_positions(
    origin: torch.Tensor, ray_dirs: torch.Tensor, cand_z: torch.Tensor, axis: torch.Tensor
) -> torch.Tensor:
    """World positions of candidates given by camera depth.

    origin (3,) camera centre; ray_dirs (R, 3) unit world directions; cand_z (R, N) camera z;
    axis (3,) unit optical axis. A candidate at depth d lies at distance d / cos(theta) along the ray,
    cos(theta) = ray . axis. Returns (R, N, 3).
    """
    # Written out (not a matrix product) so that a ray's result never depends on the batch size.
    cos_theta = ray_dirs[:, 0] * axis[0] + ray_dirs[:, 1] * axis[1] + ray_dirs[:, 2] * axis[2]
    distance = cand_z / cos_theta[:, None]
    return origin + distance[..., None] * ray_dirs[:, None, :]


class OccupancyGrid:
    """Voxels within +-reach (per axis) of a voxel holding a point.

    points: (P, 3); voxel: voxel side; reach: dilation in voxels. A position x is near the points
    exactly when floor(x / voxel) differs from floor(p / voxel) of some point p by at most `reach` in
    every axis. The voxels live in the points' bounding box padded by `reach`. When that box has at
    most `dense_limit` voxels (a head at 1 mm: about 40M) they are a dense boolean volume, dilated along
    each axis by ORs with shifted copies, and a lookup is one gather. Otherwise they are a sorted array
    of keys, dilated one axis at a time (the build never holds more than (2 reach + 1) times the keys of
    the result), and a lookup is a binary search. Both give the same answers (the tests compare them).
    """

    def __init__(self, points: torch.Tensor, voxel: float, reach: int, dense_limit: int = 1 << 27):
        if voxel <= 0 or reach < 0:
            raise ValueError("occupancy voxel must be positive and reach non-negative")
        self.voxel = float(voxel)
        self.device = points.device
        self.volume: torch.Tensor | None = None  # (D0, D1, D2) bool, dense form
        self.keys: torch.Tensor | None = None  # (V,) sorted long keys, sparse form
        vox = self._voxels(points.detach())
        if vox.shape[0] == 0:
            self.low = vox.new_zeros(3)
            self.dims = vox.new_ones(3)
            self.keys = vox.new_zeros(0)
            return
        self.low = vox.min(0).values - reach  # grid padded so dilation never leaves it
        self.dims = vox.max(0).values + reach + 1 - self.low
        dims = self.dims.tolist()  # the one wait for the device in a build
        if math.prod(dims) <= dense_limit:
            self.volume = self._dense(vox - self.low, reach, dims)
        else:
            self.keys = self._sparse(vox - self.low, reach)

    def _dense(self, cells: torch.Tensor, reach: int, dims: list[int]) -> torch.Tensor:
        """(D0, D1, D2) = dims bool volume of the occupied cells (P, 3), dilated by `reach` along each
        axis in turn by ORs with shifted copies: shifts of 1, 2, 4, ... widen the window by that much on
        each side, so the cost grows with log2(reach)."""
        volume = torch.zeros(dims, dtype=torch.bool, device=self.device)
        occupied = torch.ones((), dtype=torch.bool, device=self.device)  # a Python True would be copied
        volume.index_put_((cells[:, 0], cells[:, 1], cells[:, 2]), occupied)
        for axis in range(3):
            length, covered, shift = volume.shape[axis], 0, 1
            while covered < reach:
                step = min(shift, reach - covered)  # the grid's padding keeps length > reach
                dilated = volume.clone()
                dilated.narrow(axis, step, length - step).logical_or_(volume.narrow(axis, 0, length - step))
                dilated.narrow(axis, 0, length - step).logical_or_(volume.narrow(axis, step, length - step))
                volume, covered, shift = dilated, covered + step, 2 * shift
        return volume

    def _sparse(self, cells: torch.Tensor, reach: int) -> torch.Tensor:
        """(V,) sorted keys of the occupied cells (P, 3) dilated by `reach`."""
        keys = torch.unique(self._key(cells))
        strides = (self.dims[1] * self.dims[2], self.dims[2], 1)
        steps = torch.arange(-reach, reach + 1, device=self.device)
        for stride in strides:
            keys = torch.unique((keys[:, None] + steps[None, :] * stride).reshape(-1))
        return keys

    def _voxels(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x.float() / self.voxel).long()

    def _key(self, cells: torch.Tensor) -> torch.Tensor:
        return (cells[..., 0] * self.dims[1] + cells[..., 1]) * self.dims[2] + cells[..., 2]

    @property
    def num_voxels(self) -> int:
        """Number of voxels near the points."""
        return int(self.volume.sum()) if self.volume is not None else self.keys.shape[0]

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., 3) -> (...,) bool: the voxel of x is near the points."""
        cells = self._voxels(x) - self.low
        inside = ((cells >= 0) & (cells < self.dims)).all(-1)
        if self.volume is not None:
            cells = torch.minimum(cells.clamp_min(0), self.dims - 1)
            return inside & self.volume[cells[..., 0], cells[..., 1], cells[..., 2]]
        if self.keys.shape[0] == 0:
            return torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        keys = self._key(cells.clamp_min(0))
        slot = torch.searchsorted(self.keys, keys).clamp_max(self.keys.shape[0] - 1)
        return inside & (self.keys[slot] == keys)


@dataclass
class ShadingPoints:
    """The kept shading points of R rays, S slots per ray, in ray order.

    z: (R, S) camera z, ascending over the kept slots (unused slots repeat the last kept z, 0 if none).
    positions: (R, S, 3) world positions (unused slots 0).
    valid: (R, S) bool, kept slots first.
    """

    z: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """(R,) long number of shading points per ray."""
        return self.valid.sum(1)


def select_shading_points(
    cand_z: torch.Tensor,
    cand_pos: torch.Tensor,
    cand_valid: torch.Tensor,
    occupancy: OccupancyGrid,
    max_samples: int,
) -> ShadingPoints:
    """Keep valid candidates near occupied voxels, at most the first `max_samples` per ray.

    cand_z (R, N) ascending, cand_pos (R, N, 3), cand_valid (R, N) bool. The result has
    S = min(max_samples, N) slots per ray.
    """
    keep = cand_valid & occupancy.contains(cand_pos)
    slots = min(max_samples, cand_z.shape[1])
    # A stable sort of "not kept" moves the kept candidates to the front, in ray order.
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :slots]
    valid = keep.gather(1, order)
    z = torch.where(valid, cand_z.gather(1, order), 0.0)
    z = scan_rows(torch.cummax, z)  # unused slots repeat the last kept depth
    pos = cand_pos.gather(1, order[..., None].expand(-1, -1, 3))
    pos = torch.where(valid[..., None], pos, 0.0)
    return ShadingPoints(z=z, positions=pos, valid=valid)
