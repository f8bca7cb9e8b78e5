"""The shading chain compiled by torch.compile (Inductor), beside the plain functions it compiles.

Op by op, a radiance decoder's forward pass is some 60 small kernels (the positional encodings' sines
and cosines, their concatenation, each layer's bias and LeakyReLU, the output activations) and its
backward pass as many again; compositing adds some 30 more. Inductor fuses each element-wise chain into
one kernel, forward and backward, leaving the matrix products to cuBLAS (or the CPU's BLAS). The number
of shading points and of rays changes every call, so both are compiled for dynamic sizes once, not once
per size.

The plain functions stay the reference (RenderConfig.compile false, the default); tests compare the two
on random inputs, values and gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from npva.model.compositing import composite


def decode_blended_plain(
    decoder: torch.nn.Module,
    mean_feature: torch.Tensor,
    offsets: torch.Tensor,
    has_valid: torch.Tensor,
    ray_dirs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """decoder.decode_blended(mean_feature (N, C), offsets (N, 6), has_valid (N,), ray_dirs (N, 3))."""
    return decoder.decode_blended(mean_feature, offsets, has_valid, ray_dirs)


def composite_over(
    sigma: torch.Tensor,
    rgb: torch.Tensor,
    z: torch.Tensor,
    valid: torch.Tensor,
    background: torch.Tensor,
    last_delta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """composite(...) with the colour blended over background (R, 3) by the transmittance: colour (R, 3),
    depth (R,), opacity (R,)."""
    colour, depth, opacity = composite(sigma, rgb, z, valid, last_delta)
    return colour + (1.0 - opacity)[:, None] * background, depth, opacity


@functools.cache
def compiled(function: Callable) -> Callable:
    """`function` (decode_blended_plain or composite_over) compiled for sizes that change every call."""
    return torch.compile(function, dynamic=True)


def shading_functions(use_compiled: bool) -> tuple[Callable, Callable]:
    """(decode, composite_over): the compiled forms with `use_compiled`, else the plain ones."""
    if use_compiled:
        return compiled(decode_blended_plain), compiled(composite_over)
    return decode_blended_plain, composite_over
