"""Frequency (positional) encoding of network inputs (method.md section 7)."""

from __future__ import annotations

import torch


def encoded_width(channels: int, num_frequencies: int, include_input: bool) -> int:
    """Number of output channels of `positional_encoding` for `channels` input channels."""
    return channels * (2 * num_frequencies + int(include_input))


def positional_encoding(x: torch.Tensor, num_frequencies: int, include_input: bool) -> torch.Tensor:
    """sin and cos of 2^l x for l = 0 .. L-1, every channel.

    x: (..., C). Returns (..., C * (2L + 1)) with the input first when `include_input`, else
    (..., C * 2L). Layout along the last axis, frequency-major:
        [x_0 .. x_{C-1}]                                           (only with include_input)
        [sin(2^0 x_0) .. sin(2^0 x_{C-1}), .., sin(2^{L-1} x_0) .. sin(2^{L-1} x_{C-1})]
        [cos(2^0 x_0) .. cos(2^0 x_{C-1}), .., cos(2^{L-1} x_0) .. cos(2^{L-1} x_{C-1})]
    No factor of pi: the method encodes 2^l x itself.
    """
    if num_frequencies < 0:
        raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}")
    frequencies = 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)
    scaled = (x.unsqueeze(-2) * frequencies.unsqueeze(-1)).flatten(-2)  # (..., L * C)
    parts = [x] if include_input else []
    parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, dim=-1)


def positional_encoding_into(x: torch.Tensor, num_frequencies: int, out: torch.Tensor) -> torch.Tensor:
    """positional_encoding(x, num_frequencies, include_input=False) written into out (..., C * 2L), a
    view of a larger buffer, possibly of a narrower dtype (each value is computed in x's dtype and
    rounded once on writing). Without gradient only: the inference form that spares the copies of the
    concatenations. Returns out."""
    frequencies = 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)
    scaled = (x.unsqueeze(-2) * frequencies.unsqueeze(-1)).flatten(-2)  # (..., L * C)
    half = scaled.shape[-1]
    torch.sin(scaled, out=out[..., :half])
    torch.cos(scaled, out=out[..., half:])
    return out
