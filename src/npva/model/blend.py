"""Blending a shading point's K nearest neural points (method.md section 7): the reference in PyTorch.

For N shading points x with neighbour indices idx (N, K) (-1 = empty slot), the inverse-distance
weights w_k = (1 / max(|p_k - x|, min_distance)) / sum_j (1 / max(|p_j - x|, min_distance)) over the
valid slots blend the neighbours' values v_k (features, and texture coordinates) and offsets p_k - x:
    mean_values = sum_k w_k v_k        (N, C)
    mean_offset = sum_k w_k (p_k - x)  (N, 3), world frame.
Rows without a valid slot give zeros. This is what the lightweight radiance decoder consumes.

`blend_neighbours` runs the Triton kernel (`npva.model.fast.blend`) when asked for and this PyTorch
reference otherwise. The reference gathers every slot; empty slots read rows spread over the point set
rather than all reading row 0, so that the backward pass of the gather does not pile millions of zero
gradients onto one row (which serialises the sort-based CUDA backward of indexing).
"""

from __future__ import annotations

import torch

from npva.model.decoding import inverse_distance_weights


def safe_rows(idx: torch.Tensor, num_points: int) -> torch.Tensor:
    """idx (N, K) long with -1 for empty slots -> the same with each empty slot replaced by a valid
    row, spread over the point set (slot s reads row s mod num_points). num_points > 0."""
    spread = torch.arange(idx.numel(), device=idx.device).view_as(idx) % num_points
    return torch.where(idx >= 0, idx, spread)


def blend_neighbours_torch(
    positions: torch.Tensor,
    values: torch.Tensor,
    samples: torch.Tensor,
    idx: torch.Tensor,
    min_distance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (P, 3), values (P, C), samples (N, 3), idx (N, K) -> mean_values (N, C) and
    mean_offset (N, 3), differentiable in positions and values."""
    valid = idx >= 0
    if positions.shape[0] == 0:
        return values.new_zeros((idx.shape[0], values.shape[1])), positions.new_zeros((idx.shape[0], 3))
    rows = safe_rows(idx, positions.shape[0])
    offsets = positions[rows] - samples[:, None, :]  # (N, K, 3)
    weights = inverse_distance_weights(offsets, valid, min_distance)  # (N, K), zero on empty slots
    mask = valid.unsqueeze(-1)
    mean_values = torch.einsum("nk,nkc->nc", weights, torch.where(mask, values[rows], 0.0))
    mean_offset = torch.einsum("nk,nkc->nc", weights, torch.where(mask, offsets, 0.0))
    return mean_values, mean_offset


def blend_neighbours(
    positions: torch.Tensor,
    values: torch.Tensor,
    samples: torch.Tensor,
    idx: torch.Tensor,
    min_distance: float,
    fast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_values (N, C), mean_offset (N, 3) as in the module docstring; `fast`: the Triton kernel."""
    if fast:
        from npva.model.fast.blend import blend_neighbours_triton

        return blend_neighbours_triton(positions, values, samples, idx, min_distance)
    return blend_neighbours_torch(positions, values, samples, idx, min_distance)
