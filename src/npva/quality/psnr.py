"""Peak signal-to-noise ratio."""

from __future__ import annotations

import math

import torch

MSE_FLOOR = 1e-10  # relative to peak^2: a perfect match reads 100 dB


def psnr(mse: float | torch.Tensor, peak: float = 1.0) -> float | torch.Tensor:
    """10 log10(peak^2 / mse) in dB, mse floored at MSE_FLOOR * peak^2; a float (NaN stays NaN) or a
    tensor, elementwise."""
    floor = MSE_FLOOR * peak**2
    if isinstance(mse, torch.Tensor):
        return 10.0 * torch.log10(peak**2 / mse.clamp_min(floor))
    if math.isnan(mse):
        return math.nan
    return 10.0 * math.log10(peak**2 / max(mse, floor))
