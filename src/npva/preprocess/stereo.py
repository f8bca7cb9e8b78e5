"""Multi-view stereo around the tracked mesh: depth per view from a frame's calibrated photos.

The tracked mesh is a strong prior. Per pixel, depth hypotheses are swept in a band around the mesh's
depth (camera z; in front of it for hair, behind it for the mouth interior the mesh closes over), and
each is scored by the normalized cross-correlation (NCC) of the reference photo's window with each
source photo warped through it. Every pixel of a window moves by the same offset from the prior, so
windows follow the mesh's slant instead of standing fronto-parallel. Per pixel the costs (1 - NCC) of
the best few sources are averaged, which leaves out a source that cannot see the point; the best
hypothesis is refined by a parabola through its neighbours' costs. A depth is kept only where the match
is confident and agrees with the depths of the neighbouring views (geometric consistency): elsewhere
the depth is a hole (0), as an MVS tool's output has.

The same code runs on CPU and CUDA tensors; the sweep is chunked over hypotheses to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from npva.geometry.camera import Camera, pixel_centres

# Cost of a hypothesis that a source cannot score (outside its image or behind it): worse than any NCC.
NO_COST = 2.0


@dataclass(frozen=True)
class StereoSettings:
    """How depth is searched, scored and filtered (the defaults are the measured choice, see
    docs/depth.md)."""

    band_mm: tuple[float, float] = (-30.0, 60.0)  # offsets of the hypotheses from the prior, camera z
    step_mm: float = 2.0  # between hypotheses of the sweep (refined by a parabola)
    window: int = 3  # side of the NCC window, pixels (odd); the cost filter widens the support
    sources: int = 4  # neighbouring cameras matched per view
    best_sources: int = 2  # per pixel, the costs of this many best sources are averaged
    min_angle_deg: float = 4.0  # a source seen from the scene closer than this gives too little baseline
    max_angle_deg: float = 50.0  # ... and one farther than this sees too different a surface
    filter_window: int = 9  # side of the guided filter smoothing each hypothesis's cost (odd; 0: off)
    filter_eps: float = 1e-4  # its regularization (grey variance): lower keeps costs apart across edges
    min_ncc: float = 0.5  # a pixel whose best filtered NCC is lower is a hole
    contrast_window: int = 5  # side of the window whose grey std measures a reference pixel's contrast
    min_contrast: float = 0.002  # a reference pixel of lower contrast is a hole and is not filled
    margin_mm: float = 30.0  # pixels this far outside the mesh's silhouette are matched too (hair)
    consistent_px: float = 1.0  # a depth agrees with a neighbour's when it reprojects within this ...
    consistent_mm: float = 2.0  # ... and this depth
    min_consistent: int = 2  # neighbours a kept depth must agree with
    fill_window: int = 9  # side of the neighbourhood a hole is filled from (odd; 0: no filling)
    fill_sigma: float = 0.02  # grey difference at which a neighbour's weight falls to exp(-1/2)
    fill_min_weight: float = 10.0  # a hole is filled only from at least this much neighbour weight ...
    fill_spread_mm: float = 1.0  # ... whose offsets from the prior agree within this (weighted std)
    fill_passes: int = 4  # filling passes: each grows the filled area by up to fill_window // 2
    chunk_elements: int = 1 << 23  # warped samples per chunk of hypotheses and sources

    def __post_init__(self) -> None:
        low, high = self.band_mm
        if not (low < high and self.step_mm > 0 and self.window % 2 == 1 and self.window >= 3):
            raise ValueError(f"stereo: need band low < high, step > 0 and an odd window >= 3: {self}")
        if any(w % 2 == 0 for w in (self.filter_window, self.contrast_window, self.fill_window) if w):
            raise ValueError(f"stereo: the filter, contrast and fill windows must be odd: {self}")
        if not 1 <= self.best_sources <= self.sources:
            raise ValueError(f"stereo: need 1 <= best_sources <= sources: {self}")

    def offsets(self) -> torch.Tensor:
        """(K,) hypothesis offsets from the prior in mm, the band's ends included."""
        low, high = self.band_mm
        count = int(math.floor((high - low) / self.step_mm + 1e-6)) + 1
        return low + self.step_mm * torch.arange(count, dtype=torch.float32)


@dataclass
class StereoView:
    """One camera of a frame: its photo (H, W, 3) uint8 or float in [0, 1] and the prior depth (H, W)
    in mm (the tracked mesh rendered; 0 where it does not cover), both at the camera's image size."""

    camera: Camera
    image: np.ndarray
    prior: np.ndarray


def grey(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) luma in [0, 1] of an RGB image (H, W, 3), uint8 or float in [0, 1]."""
    array = np.asarray(image)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    rgb = torch.as_tensor(array, device=device).float() / scale
    return rgb @ torch.tensor([0.299, 0.587, 0.114], device=device)


def choose_sources(cameras: list[Camera], centre: np.ndarray, settings: StereoSettings) -> list[list[int]]:
    """For each camera, the indices of up to `settings.sources` others whose directions from the scene
    point `centre` (3,) differ by an angle within [min_angle_deg, max_angle_deg], nearest first."""
    directions = np.stack([c.centre - centre for c in cameras])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip(directions @ directions.T, -1.0, 1.0)))
    chosen = []
    for i in range(len(cameras)):
        order = np.argsort(angles[i], kind="stable")
        fit = [int(j) for j in order if settings.min_angle_deg <= angles[i, j] <= settings.max_angle_deg]
        chosen.append(fit[: settings.sources])
    return chosen


def spread_prior(prior: torch.Tensor, margin_px: int) -> torch.Tensor:
    """(H, W) prior depth with uncovered pixels within `margin_px` of the covered ones given the
    largest depth of their 3x3 neighbourhood, grown ring by ring (hair beyond the silhouette)."""
    spread = prior.clone()
    for _ in range(margin_px):
        grown = F.max_pool2d(spread[None, None], 3, stride=1, padding=1)[0, 0]
        spread = torch.where(spread > 0, spread, grown)
    return spread


def margin_pixels(camera: Camera, prior: torch.Tensor, margin_mm: float) -> int:
    """`margin_mm` in pixels at the prior's median depth."""
    covered = prior[prior > 0]
    if covered.numel() == 0:
        return 0
    return int(math.ceil(margin_mm * float(camera.K[0, 0]) / float(covered.median())))


def window_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W) -> (B, H, W) mean over the window x window neighbourhood (clipped at the borders).
    Separable sums of unfolded rows then columns: several times faster on CPU than average pooling."""
    pad = window // 2
    height, width = x.shape[-2:]
    rows = F.pad(x, (pad, pad)).unfold(-1, window, 1).sum(-1)
    sums = F.pad(rows, (0, 0, pad, pad)).unfold(-2, window, 1).sum(-1)
    ones = lambda n: F.pad(torch.ones(1, n, device=x.device), (pad, pad)).unfold(-1, window, 1).sum(-1)[0]  # noqa: E731
    return sums / (ones(height)[:, None] * ones(width)[None, :])


def _camera_rays(camera: Camera, pixels: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) camera-frame points at depth 1 through continuous pixel coordinates (H, W, 2)."""
    K = torch.as_tensor(camera.K, dtype=torch.float32, device=pixels.device)
    y = (pixels[..., 1] - K[1, 2]) / K[1, 1]
    x = (pixels[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return torch.stack((x, y, torch.ones_like(x)), -1)


def _relative_projection(ref: Camera, src: Camera, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M (3, 3), m (3,)): a point z * r in the reference camera's frame (r a depth-1 ray) projects to
    homogeneous source pixel coordinates z * (M r) + m."""
    rotation = src.R @ ref.R.T
    M = src.K @ rotation
    m = src.K @ (src.t - rotation @ ref.t)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return as_t(M), as_t(m)


def _source_costs(
    ref_grey: torch.Tensor,
    ref_stats: tuple[torch.Tensor, torch.Tensor],
    src_grey: torch.Tensor,
    projected: torch.Tensor,
    settings: StereoSettings,
) -> torch.Tensor:
    """(k, H, W) cost 1 - NCC of the reference windows (H, W) against the source image (Hs, Ws) sampled
    at the homogeneous source coordinates `projected` (k, H, W, 3); NO_COST where any sample of the
    window lies outside the source image or behind it, or the warped window is uniform (no correlation
    is defined: a flat dark cavity, clipped highlights). A source window of little but some contrast
    still scores: on smooth skin the true match is often the flattest window, and leaving it out lets
    a wrong hypothesis that lands on an edge win."""
    k, height, width, _ = projected.shape
    src_h, src_w = src_grey.shape
    depth = projected[..., 2]
    uv = projected[..., :2] / depth.clamp(min=1e-6)[..., None]
    inside = (
        (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= src_w) & (uv[..., 1] >= 0) & (uv[..., 1] <= src_h)
    )
    # Continuous coordinates put pixel centres at i + 0.5: normalized = 2 u / W - 1 (align_corners off).
    grid = torch.stack((2 * uv[..., 0] / src_w - 1, 2 * uv[..., 1] / src_h - 1), -1)
    warped = F.grid_sample(
        src_grey[None, None],
        grid.reshape(1, k * height, width, 2),
        align_corners=False,
        padding_mode="border",
    ).reshape(k, height, width)
    ref_mean, ref_std = ref_stats
    w = settings.window
    mean = window_mean(warped, w)
    variance = (window_mean(warped * warped, w) - mean * mean).clamp(min=0)
    covariance = window_mean(warped * ref_grey, w) - mean * ref_mean
    ncc = covariance / (variance.sqrt() * ref_std + 1e-8)
    valid = (window_mean(inside.float(), w) > 1 - 1e-4) & (variance > 0)
    return torch.where(valid, 1 - ncc, torch.full_like(ncc, NO_COST))


def sweep_costs(
    ref_grey: torch.Tensor,
    pixels: torch.Tensor,
    ref_camera: Camera,
    sources: list[tuple[torch.Tensor, Camera]],
    centre: torch.Tensor,
    offsets: torch.Tensor,
    settings: StereoSettings,
) -> torch.Tensor:
    """(K, H, W) matching cost of the hypotheses z = centre + offsets[k] for the reference pixels at
    continuous coordinates `pixels` (H, W, 2) whose grey values are `ref_grey` (H, W): per pixel the
    mean of the `best_sources` lowest costs over the sources [(grey (Hs, Ws), camera)]."""
    device = ref_grey.device
    rays = _camera_rays(ref_camera, pixels)
    ref_mean = window_mean(ref_grey[None], settings.window)
    ref_std = (window_mean(ref_grey[None] ** 2, settings.window) - ref_mean**2).clamp(min=0).sqrt()
    projections = [_relative_projection(ref_camera, camera, device) for _, camera in sources]
    warped_rays = [rays @ M.T for M, _ in projections]
    best = min(settings.best_sources, len(sources))
    height, width = ref_grey.shape
    per_chunk = max(1, settings.chunk_elements // (height * width * len(sources)))
    costs = torch.empty((len(offsets), height, width), device=device)
    for start in range(0, len(offsets), per_chunk):
        depth = centre[None] + offsets[start : start + per_chunk].to(device)[:, None, None]
        per_source = torch.stack(
            [
                _source_costs(ref_grey, (ref_mean, ref_std), grey_src, depth[..., None] * ray + m, settings)
                for (grey_src, _), ray, (_, m) in zip(sources, warped_rays, projections, strict=True)
            ]
        )
        costs[start : start + len(depth)] = per_source.topk(best, dim=0, largest=False).values.mean(0)
    return costs


def grey_contrast(image: torch.Tensor, window: int) -> torch.Tensor:
    """(H, W) standard deviation of the grey image (H, W) over each window x window neighbourhood."""
    mean = window_mean(image[None], window)
    return (window_mean(image[None] ** 2, window) - mean**2).clamp(min=0).sqrt()[0]


def filter_costs(costs: torch.Tensor, guide: torch.Tensor, window: int, eps: float) -> torch.Tensor:
    """(K, H, W) costs smoothed per hypothesis by the guided filter (He et al.) with the reference's
    grey image (H, W) as guide: a locally linear function of the guide fitted over each window, so
    the cost is averaged over a pixel's neighbourhood (a larger support for faintly textured skin)
    but not across the edges of the guide (an occluding contour, the lips' edge)."""
    mean_guide = window_mean(guide[None], window)
    var_guide = window_mean(guide[None] ** 2, window) - mean_guide**2
    mean_cost = window_mean(costs, window)
    slope = (window_mean(costs * guide, window) - mean_guide * mean_cost) / (var_guide + eps)
    intercept = mean_cost - slope * mean_guide
    return window_mean(slope, window) * guide + window_mean(intercept, window)


def best_depth(costs: torch.Tensor, centre: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From costs (K, H, W) of hypotheses centre (H, W) + offsets (K,) evenly spaced: the depth (H, W)
    refined by the parabola through the best cost and its neighbours' (a fraction of the step), the
    best cost (H, W), and whether the best lies strictly inside the band (H, W) (at an end the surface
    may lie beyond it)."""
    index = costs.argmin(0)
    last = len(offsets) - 1
    lower = costs.gather(0, (index - 1).clamp(min=0)[None])[0]
    best = costs.gather(0, index[None])[0]
    upper = costs.gather(0, (index + 1).clamp(max=last)[None])[0]
    curvature = lower - 2 * best + upper
    shift = torch.where(curvature > 1e-9, 0.5 * (lower - upper) / curvature.clamp(min=1e-9), 0.0)
    step = float(offsets[1] - offsets[0]) if len(offsets) > 1 else 0.0
    depth = centre + offsets.to(centre.device)[index] + shift.clamp(-0.5, 0.5) * step
    return depth, best, (index > 0) & (index < last)


def view_depth(
    ref: tuple[torch.Tensor, Camera, torch.Tensor],
    sources: list[tuple[torch.Tensor, Camera]],
    settings: StereoSettings,
) -> torch.Tensor:
    """(H, W) depth in mm of the reference view (grey (H, W), camera, spread prior (H, W) in mm: the
    mesh's depth spread by margin_mm, see view_prior) from its sources [(grey, camera)], before the
    consistency check: 0 where the spread prior is absent, the match is not confident (filtered NCC below
    min_ncc) or lies at the band's end, or the reference pixel has no contrast (min_contrast: the dark,
    flat mouth cavity, the background)."""
    ref_grey, camera, spread = ref
    depth = torch.zeros_like(spread)
    if not sources or not bool((spread > 0).any()):
        return depth
    rows, cols = torch.nonzero(spread > 0, as_tuple=True)
    pad = settings.window // 2
    top, bottom = max(int(rows.min()) - pad, 0), min(int(rows.max()) + pad + 1, spread.shape[0])
    left, right = max(int(cols.min()) - pad, 0), min(int(cols.max()) + pad + 1, spread.shape[1])
    crop = (slice(top, bottom), slice(left, right))
    pixels = pixel_centres(*spread.shape, device=spread.device)[crop]
    offsets = settings.offsets()
    centre = spread[crop]
    costs = sweep_costs(ref_grey[crop], pixels, camera, sources, centre, offsets, settings)
    if settings.filter_window:
        costs = filter_costs(costs, ref_grey[crop], settings.filter_window, settings.filter_eps)
    found, cost, inside = best_depth(costs, centre, offsets)
    textured = grey_contrast(ref_grey[crop], settings.contrast_window) >= settings.min_contrast
    keep = (centre > 0) & inside & (cost <= 1 - settings.min_ncc) & textured
    depth[crop] = torch.where(keep, found, torch.zeros_like(found))
    return depth


def consistent(
    depths: list[torch.Tensor], cameras: list[Camera], sources: list[list[int]], settings: StereoSettings
) -> list[torch.Tensor]:
    """Per view, the (H, W) mask of depths that agree with at least `min_consistent` of its sources:
    the point, seen by the source, has there a depth whose point projects back within consistent_px
    pixels and consistent_mm of camera depth."""
    masks = []
    for i, (depth, camera) in enumerate(zip(depths, cameras, strict=True)):
        pixels = pixel_centres(*depth.shape, device=depth.device)
        points = depth[..., None] * _camera_rays(camera, pixels)  # reference camera frame
        agree = torch.zeros(depth.shape, dtype=torch.int32, device=depth.device)
        for j in sources[i]:
            other, other_depth = cameras[j], depths[j]
            M, m = _relative_projection(camera, other, depth.device)
            projected = points @ M.T + m
            z = projected[..., 2].clamp(min=1e-6)
            col = (projected[..., 0] / z).floor().long()
            row = (projected[..., 1] / z).floor().long()
            height, width = other_depth.shape
            seen = (projected[..., 2] > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
            found = other_depth[row.clamp(0, height - 1), col.clamp(0, width - 1)]
            centres = torch.stack((col, row), -1).float() + 0.5
            back_points = found[..., None] * _camera_rays(other, centres)
            M_back, m_back = _relative_projection(other, camera, depth.device)
            back = back_points @ M_back.T + m_back
            back_z = back[..., 2]
            back_uv = back[..., :2] / back_z.clamp(min=1e-6)[..., None]
            close = ((back_uv - pixels).norm(dim=-1) <= settings.consistent_px) & (
                (back_z - depth).abs() <= settings.consistent_mm
            )
            agree += (seen & (found > 0) & close).int()
        masks.append((depth > 0) & (agree >= settings.min_consistent))
    return masks


def _neighbours(x: torch.Tensor, window: int) -> torch.Tensor:
    """(H, W) -> (H, W, window**2): each pixel's window x window neighbourhood (zero outside)."""
    pad = window // 2
    padded = F.pad(x[None, None], (pad, pad, pad, pad))
    return padded.unfold(2, window, 1).unfold(3, window, 1).reshape(*x.shape, window * window)


def fill_holes(
    depth: torch.Tensor, guide: torch.Tensor, spread: torch.Tensor, settings: StereoSettings
) -> torch.Tensor:
    """(H, W) depth with holes filled from kept neighbours of similar grey (guide (H, W)) whose
    offsets from the prior (spread (H, W)) agree: the hole takes the prior plus their weighted mean
    offset. The tracked mesh's error and the surface's departure from it vary slowly across a region
    of one colour, while the depth jumps at colour edges (lips and mouth cavity, skin and hair), so a
    hole is filled only where both hold: enough similar neighbours, within fill_spread_mm of each
    other. Holes without contrast (min_contrast) stay holes. Repeated fill_passes times."""
    candidates = (spread > 0) & (grey_contrast(guide, settings.contrast_window) >= settings.min_contrast)
    similar = torch.exp(
        -((_neighbours(guide, settings.fill_window) - guide[..., None]) ** 2) / (2 * settings.fill_sigma**2)
    )  # (H, W, N)
    for _ in range(settings.fill_passes):
        known = depth > 0
        offset = _neighbours(
            torch.where(known, depth - spread, torch.zeros_like(depth)), settings.fill_window
        )
        weight = similar * _neighbours(known.float(), settings.fill_window)
        total = weight.sum(-1)
        mean = (weight * offset).sum(-1) / total.clamp(min=1e-6)
        spread_mm = ((weight * (offset - mean[..., None]) ** 2).sum(-1) / total.clamp(min=1e-6)).sqrt()
        fill = (
            ~known & candidates & (total >= settings.fill_min_weight) & (spread_mm <= settings.fill_spread_mm)
        )
        depth = torch.where(fill, spread + mean, depth)
    return depth


def view_prior(view: StereoView, settings: StereoSettings, device: torch.device | str) -> torch.Tensor:
    """(H, W) float32 mm: the view's prior (the tracked mesh's depth) spread margin_mm beyond the mesh's
    silhouette, where the sweep searches and filling starts from."""
    prior = torch.as_tensor(view.prior, dtype=torch.float32, device=device)
    return spread_prior(prior, margin_pixels(view.camera, prior, settings.margin_mm))


def frame_depths(
    views: dict[str, StereoView],
    centre: np.ndarray,
    settings: StereoSettings | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Depth (H, W) float32 in mm of every view of one frame (0 = hole) from the views' photos and
    priors; `centre` (3,) is a world point of the subject (the sources are chosen by their angle
    seen from it)."""
    settings = settings or StereoSettings()
    names = list(views)
    cameras = [views[name].camera for name in names]
    greys = [grey(views[name].image, device) for name in names]
    spreads = [view_prior(views[name], settings, device) for name in names]
    sources = choose_sources(cameras, np.asarray(centre, np.float64), settings)
    raw = [
        view_depth((greys[i], cameras[i], spreads[i]), [(greys[j], cameras[j]) for j in sources[i]], settings)
        for i in range(len(names))
    ]
    keep = consistent(raw, cameras, sources, settings)
    depths = [
        torch.where(mask, depth, torch.zeros_like(depth)) for depth, mask in zip(raw, keep, strict=True)
    ]
    if settings.fill_window:
        depths = [fill_holes(depth, greys[i], spreads[i], settings) for i, depth in enumerate(depths)]
    return {name: depth.cpu().numpy() for name, depth in zip(names, depths, strict=True)}
