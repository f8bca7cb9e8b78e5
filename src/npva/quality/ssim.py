"""SSIM with a Gaussian window (Wang et al. 2004), as the metrics report it and the patch loss uses it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size,) normalized 1-D Gaussian taps centred on the middle tap."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def _gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, H, W) -> (N, H, W): reflection padding, then the separable Gaussian window."""
    taps = gaussian_window(size, sigma, maps.dtype, maps.device)
    half = size // 2
    x = F.pad(maps[:, None], (half, half, half, half), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, size))
    return F.conv2d(x, taps.view(1, 1, size, 1))[:, 0]


def ssim(
    image: torch.Tensor,
    reference: torch.Tensor,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """SSIM map (H, W) of image, reference (H, W, C): the mean over channels of the per-channel maps.

    Local statistics come from a Gaussian window (reflection padding, so the map has the image's size;
    H and W must exceed window // 2). Average it over any set of pixels, e.g. a mask.
    """
    if image.shape != reference.shape or image.ndim != 3:
        raise ValueError(
            f"expected two (H, W, C) images of one shape, got {tuple(image.shape)} and "
            f"{tuple(reference.shape)}"
        )
    if min(image.shape[:2]) <= window // 2:
        raise ValueError(
            f"SSIM needs images larger than {window // 2} px a side, got {tuple(image.shape[:2])}"
        )
    x, y = image.permute(2, 0, 1), reference.permute(2, 0, 1)
    channels = x.shape[0]
    blurred = _gaussian_blur(torch.cat((x, y, x * x, y * y, x * y)), window, sigma)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = blurred.split(channels)
    var_x = (mean_xx - mean_x**2).clamp_min(0)
    var_y = (mean_yy - mean_y**2).clamp_min(0)
    covariance = mean_xy - mean_x * mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(0)
