"""The training losses of the method (method.md section 8), each a function of plain tensors.

Exact definitions (weights and constants in LossConfig):
- rgb: mean over rays of the Euclidean norm of the colour error.
- lpips: perceptual distance between the rendered patch and the photo patch (patch phase only).
- ssim: 1 - SSIM of the rendered patch against the photo patch, the SSIM of the metrics (Gaussian
  window 11, sigma 1.5), averaged over the patch (patch phase only; 0 in the method).
- depth / rast_depth: mean of |D - D_mvs| over the rays whose MVS depth is known (> 0) and whose
  |D - D_mvs| is below depth_threshold_mm; D is the composited depth, or the rasterized guide depth.
  (The authors' code divides the sum by all rays; a mean over the rays used does not shrink with them.)
- mesh: mean over covered, non-mouth texels (mouth texels weighted mesh_mouth_weight, 0 in the method)
  of the distance between the coarse map and the tracked position map: the L1 norm over x, y, z ("l1",
  as the method text writes |.|), or the Euclidean norm ("l2", as the authors' code has it).
- mouth_points: mean over the mouth's texels of the point map (those of mouth texels of the coarse map,
  where the tracked mesh has surface) of the same distance between the neural points before posing
  (upsampled coarse map + displacement) and the tracked mesh's position map at the point map's size
  (0 in the method, which supervises the points through the images and depths only).
- smooth: smooth-L1 (beta smooth_beta_mm) of the difference between neighbouring texels of the coarse
  map, averaged over x, y, z and the pairs whose two texels are covered, for horizontal and vertical
  neighbours separately; the two means are added.
- kl: 0.5 mean(exp(2 logstd) + mu^2 - 1 - 2 logstd).
- displacement: "mean of |G_d| where it exceeds 10 mm": |G_d| is the length of a texel's displacement;
  the loss is the mean over all texels of |G_d| where |G_d| > displacement_threshold_mm and 0 elsewhere
  (as the authors' code computes it), so it is 0 while every displacement is short.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from npva.config import LossConfig
from npva.model.networks import kl_divergence
from npva.quality.ssim import ssim

__all__ = [
    "LossTerms",
    "colour_error",
    "compute_losses",
    "depth_loss",
    "displacement_loss",
    "kl_divergence",
    "mesh_loss",
    "patch_image",
    "rgb_loss",
    "smoothness_loss",
]


def colour_error(colour: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-ray Euclidean norm of the colour error: colour, target (R, 3) -> (R,)."""
    return torch.linalg.vector_norm(colour - target, dim=-1)


def rgb_loss(colour: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rays of the colour error norm; colour, target (R, 3)."""
    return colour_error(colour, target).mean()


def depth_loss(depth: torch.Tensor, reference: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean |depth - reference| over rays with reference > 0 and |depth - reference| < threshold (mm).

    depth, reference (R,) camera z in mm; 0 (still part of the graph) when no ray qualifies.
    """
    difference = (depth - reference).abs()
    used = (reference > 0) & (difference.detach() < threshold)
    return torch.where(used, difference, torch.zeros_like(difference)).sum() / used.sum().clamp_min(1)


def _channels_first(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """(3, S, S) or (B, 3, S, S) -> (B, 3, S, S)."""
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"{name} must be (3, S, S) or (B, 3, S, S), got {tuple(tensor.shape)}")
    return tensor


def mesh_loss(
    coarse: torch.Tensor,
    posmap: torch.Tensor,
    coverage: torch.Tensor,
    mouth: torch.Tensor,
    norm: str = "l1",
    mouth_weight: float = 0.0,
) -> torch.Tensor:
    """Weighted mean over covered texels of the distance between coarse map and position map: mouth
    texels count `mouth_weight` (0: left out, as the method has it), the others 1.

    coarse, posmap: (3, S, S) or (B, 3, S, S) face frame, mm; coverage, mouth: (S, S) bool;
    norm: "l1" (sum of |dx|, |dy|, |dz|) or "l2" (Euclidean).
    """
    coarse, posmap = _channels_first(coarse, "coarse map"), _channels_first(posmap, "position map")
    distance = _texel_distance(coarse, posmap, norm)
    coverage, mouth = coverage.to(distance.device), mouth.to(distance.device)
    return _weighted_texel_mean(distance, coverage * torch.where(mouth, mouth_weight, 1.0))


def points_loss(
    point_map: torch.Tensor, point_posmap: torch.Tensor, region: torch.Tensor, norm: str = "l1"
) -> torch.Tensor:
    """Mean over the region's texels of the distance between the points before posing and the tracked
    surface at the same texels.

    point_map: (3, P, P) or (B, 3, P, P) upsampled coarse map + displacement, face frame, mm;
    point_posmap: the tracked mesh's position map of the same shape, NaN where the mesh has no surface
    (those texels are left out); region: (P, P) bool; norm as in mesh_loss.
    """
    point_map = _channels_first(point_map, "point map")
    target = _channels_first(point_posmap, "tracked point position map").to(point_map.dtype)
    surface = torch.isfinite(target).all(1)  # (B, P, P)
    distance = _texel_distance(point_map, torch.nan_to_num(target), norm)  # finite: no NaN gradient
    return _weighted_texel_mean(distance, surface * region.to(distance.device))


def _texel_distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """(B, 3, S, S) twice -> (B, S, S): per-texel L1 norm ("l1") or Euclidean norm ("l2") of a - b."""
    if norm == "l1":
        return (a - b).abs().sum(1)
    if norm == "l2":
        return torch.linalg.vector_norm(a - b, dim=1)
    raise ValueError(f"mesh norm must be l1 or l2, got {norm!r}")


def _weighted_texel_mean(distance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """distance (B, S, S) averaged with weight (S, S) or (B, S, S) over the batch; 0 with no weight.
    No branch on the total weight: on a GPU reading it would make the host wait for the step."""
    weight = weight.expand_as(distance)
    return (distance * weight).sum() / weight.sum().clamp_min(torch.finfo(distance.dtype).tiny)


def smoothness_loss(coarse: torch.Tensor, coverage: torch.Tensor, beta: float) -> torch.Tensor:
    """Smooth-L1 (beta, mm) of neighbouring texel differences over covered pairs, both directions.

    coarse: (3, S, S) or (B, 3, S, S) mm; coverage: (S, S) bool. Sum of the horizontal and vertical
    means, each over x, y, z and the pairs whose two texels are covered.
    """
    coarse = _channels_first(coarse, "coarse map")
    coverage = coverage.to(coarse.device)
    total = coarse.sum() * 0
    for dim in (2, 3):
        length = coarse.shape[dim] - 1
        step = coarse.narrow(dim, 1, length) - coarse.narrow(dim, 0, length)  # (B, 3, ., .)
        pairs = coverage.narrow(dim - 2, 1, length) & coverage.narrow(dim - 2, 0, length)
        per_element = F.smooth_l1_loss(step, torch.zeros_like(step), reduction="none", beta=beta)
        # A masked sum over a count, not a boolean index: no size read from the device on a GPU.
        count = pairs.sum() * step.shape[0] * step.shape[1]
        total = total + torch.where(pairs, per_element, 0.0).sum() / count.clamp_min(1)
    return total


def displacement_loss(displacement: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean over texels of the displacement length where it exceeds `threshold` (mm), 0 elsewhere.

    displacement: (3, P, P) or (B, 3, P, P) mm.
    """
    length = torch.linalg.vector_norm(_channels_first(displacement, "displacement map"), dim=1)
    return torch.where(length > threshold, length, torch.zeros_like(length)).mean()


def patch_image(colour: torch.Tensor, patch_shape: tuple[int, int]) -> torch.Tensor:
    """Per-ray colours (h * w, 3) of a patch sampled row by row -> an image (1, 3, h, w)."""
    h, w = patch_shape
    if colour.shape != (h * w, 3):
        raise ValueError(f"expected {h * w} patch colours (h * w, 3), got {tuple(colour.shape)}")
    return colour.reshape(h, w, 3).permute(2, 0, 1)[None]


@dataclass
class LossTerms:
    """Unweighted loss terms of one step; None for a term not computed (weight 0, or lpips outside the
    patch phase)."""

    rgb: torch.Tensor | None = None
    lpips: torch.Tensor | None = None
    ssim: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    rast_depth: torch.Tensor | None = None
    mesh: torch.Tensor | None = None
    mouth_points: torch.Tensor | None = None
    smooth: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    displacement: torch.Tensor | None = None

    def weighted_total(self, config: LossConfig) -> torch.Tensor:
        """Sum of weight x term over the computed terms (weights are LossConfig.<name>_weight)."""
        terms = [(getattr(config, f"{name}_weight"), value) for name, value in self.items()]
        if not terms:
            raise ValueError("no loss term was computed: every weight is 0")
        return sum(weight * value for weight, value in terms)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """(name, term) of the computed terms."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Detached computed terms by name, for logging."""
        return {name: value.detach() for name, value in self.items()}


def _needed(value: torch.Tensor | None, name: str, term: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"the {term} loss has a non-zero weight but no {name} was given")
    return value


def compute_losses(
    config: LossConfig,
    *,
    colour: torch.Tensor,
    target: torch.Tensor,
    depth: torch.Tensor | None = None,
    mvs_depth: torch.Tensor | None = None,
    guide_depth: torch.Tensor | None = None,
    coarse: torch.Tensor | None = None,
    posmap: torch.Tensor | None = None,
    coverage: torch.Tensor | None = None,
    mouth: torch.Tensor | None = None,
    point_map: torch.Tensor | None = None,
    point_posmap: torch.Tensor | None = None,
    point_mouth: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
    mu: torch.Tensor | None = None,
    logstd: torch.Tensor | None = None,
    patch_shape: tuple[int, int] | None = None,
    perceptual: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total loss and the detached unweighted terms by name.

    Per ray (R rays): colour, target (R, 3); depth, guide_depth, mvs_depth (R,) camera z in mm
    (0 = unknown). Maps: coarse, posmap (3, S, S) face frame mm; coverage, mouth (S, S) bool;
    point_map, point_posmap (3, P, P) as in points_loss, point_mouth (P, P) bool;
    displacement (3, P, P); mu, logstd: the posterior. A term with a non-zero weight needs its inputs.
    patch_shape (h, w): the rays form a patch, row by row (patch phase): adds the perceptual term,
    computed by `perceptual` (a PerceptualLoss) when lpips_weight is non-zero, and 1 - SSIM of the
    patch when ssim_weight is non-zero.
    """
    terms = LossTerms()
    if config.rgb_weight:
        terms.rgb = rgb_loss(colour, target)
    if config.lpips_weight and patch_shape is not None:
        network = _needed(perceptual, "perceptual network", "lpips")
        terms.lpips = network(patch_image(colour, patch_shape), patch_image(target, patch_shape))
    if config.ssim_weight and patch_shape is not None:
        h, w = patch_shape
        terms.ssim = 1 - ssim(colour.reshape(h, w, 3), target.reshape(h, w, 3)).mean()
    if config.depth_weight:
        reference = _needed(mvs_depth, "mvs_depth", "depth")
        terms.depth = depth_loss(_needed(depth, "depth", "depth"), reference, config.depth_threshold_mm)
    if config.rast_depth_weight:
        reference = _needed(mvs_depth, "mvs_depth", "rasterized depth")
        guide = _needed(guide_depth, "guide_depth", "rasterized depth")
        terms.rast_depth = depth_loss(guide, reference, config.depth_threshold_mm)
    if config.mesh_weight or config.smooth_weight:
        coarse = _needed(coarse, "coarse map", "mesh and smoothness")
        coverage = _needed(coverage, "coverage", "mesh and smoothness")
    if config.mesh_weight:
        posmap = _needed(posmap, "posmap", "mesh")
        terms.mesh = mesh_loss(
            coarse,
            posmap,
            coverage,
            _needed(mouth, "mouth", "mesh"),
            config.mesh_norm,
            config.mesh_mouth_weight,
        )
    if config.mouth_points_weight:
        terms.mouth_points = points_loss(
            _needed(point_map, "point map", "mouth points"),
            _needed(point_posmap, "tracked point position map", "mouth points"),
            _needed(point_mouth, "point-map mouth", "mouth points"),
            config.mesh_norm,
        )
    if config.smooth_weight:
        terms.smooth = smoothness_loss(coarse, coverage, config.smooth_beta_mm)
    if config.kl_weight:
        terms.kl = kl_divergence(_needed(mu, "mu", "kl"), _needed(logstd, "logstd", "kl"))
    if config.displacement_weight:
        terms.displacement = displacement_loss(
            _needed(displacement, "displacement", "displacement"), config.displacement_threshold_mm
        )
    return terms.weighted_total(config), terms.as_dict()
