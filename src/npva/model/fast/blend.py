"""Neighbour blending as Triton kernels (reference: `npva.model.blend.blend_neighbours_torch`).

Forward, one program per BLOCK_N shading points: for each of the K slots, gather the neighbour's
position and its row of values, and accumulate u_k = 1 / max(|p_k - x|, min_distance), u_k v_k and
u_k (p_k - x); divide by S = sum_k u_k at the end. Nothing of size N x K is written.

Backward, with the weights w_k = u_k / S recomputed and the outputs V, O saved:
    dL/dv_k = w_k gV
    dL/dp_k = w_k gO + (dL/du_k) du_k/dp_k,   du_k/dp_k = -(p_k - x) / |p_k - x|^3 (0 where clamped),
    dL/du_k = (g_k - c) / S,  g_k = gV . v_k + gO . (p_k - x),  c = sum_k w_k g_k = gV . V + gO . O,
added into the point gradients with atomics, for valid slots only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from npva.model.fast import interpreted

BLOCK_N = 32


@triton.jit
def _load_xyz(ptr, rows, mask):
    """x, y, z of `rows` (BLOCK,) of a (M, 3) float32 array; 0 where not `mask`."""
    x = tl.load(ptr + 3 * rows, mask=mask, other=0.0)
    y = tl.load(ptr + 3 * rows + 1, mask=mask, other=0.0)
    z = tl.load(ptr + 3 * rows + 2, mask=mask, other=0.0)
    return x, y, z


@triton.jit
def _neighbour(positions_ptr, idx_ptr, rows, live, x, y, z, k, K: tl.constexpr):
    """Slot k of `rows`: its point j (0 for an empty slot), whether the slot holds one, and the offset
    p_j - (x, y, z) (0 for an empty slot)."""
    j = tl.load(idx_ptr + rows * K + k, mask=live, other=-1)
    valid = j >= 0
    j = tl.where(valid, j, 0)
    px, py, pz = _load_xyz(positions_ptr, j, valid)
    return j, valid, tl.where(valid, px - x, 0.0), tl.where(valid, py - y, 0.0), tl.where(valid, pz - z, 0.0)


# The number of rows changes every call: compiled once, not once per its divisibility.
@triton.jit(do_not_specialize=["num_rows"])
def _blend_forward_kernel(
    positions_ptr,  # (P, 3) float32
    values_ptr,  # (P, C) float32
    samples_ptr,  # (N, 3) float32
    idx_ptr,  # (N, K) int64, -1 empty
    mean_values_ptr,  # (N, C) out
    mean_offset_ptr,  # (N, 3) out
    total_ptr,  # (N,) out: S, 0 for rows without a neighbour
    num_rows,
    channels,
    min_distance_sq,
    K: tl.constexpr,
    C_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < num_rows
    cols = tl.arange(0, C_PAD)
    col_ok = cols < channels
    x, y, z = _load_xyz(samples_ptr, rows, live)
    total = tl.zeros((BLOCK,), tl.float32)
    sum_x = tl.zeros((BLOCK,), tl.float32)
    sum_y = tl.zeros((BLOCK,), tl.float32)
    sum_z = tl.zeros((BLOCK,), tl.float32)
    acc = tl.zeros((BLOCK, C_PAD), tl.float32)
    for k in tl.static_range(K):
        j, valid, ox, oy, oz = _neighbour(positions_ptr, idx_ptr, rows, live, x, y, z, k, K)
        distance = tl.sqrt_rn(tl.maximum(ox * ox + oy * oy + oz * oz, min_distance_sq))
        u = tl.where(valid, 1.0 / distance, 0.0)
        total += u
        sum_x += u * ox
        sum_y += u * oy
        sum_z += u * oz
        v = tl.load(values_ptr + j[:, None] * channels + cols[None, :], mask=valid[:, None] & col_ok[None, :])
        acc += u[:, None] * v
    norm = tl.where(total > 0, total, 1.0)
    out = rows[:, None] * channels + cols[None, :]
    tl.store(mean_values_ptr + out, acc / norm[:, None], mask=live[:, None] & col_ok[None, :])
    tl.store(mean_offset_ptr + 3 * rows, sum_x / norm, mask=live)
    tl.store(mean_offset_ptr + 3 * rows + 1, sum_y / norm, mask=live)
    tl.store(mean_offset_ptr + 3 * rows + 2, sum_z / norm, mask=live)
    tl.store(total_ptr + rows, total, mask=live)


@triton.jit(do_not_specialize=["num_rows"])
def _blend_backward_kernel(
    positions_ptr,
    values_ptr,
    samples_ptr,
    idx_ptr,
    total_ptr,
    mean_values_ptr,
    mean_offset_ptr,
    grad_values_out_ptr,  # (N, C) incoming gradient of mean_values
    grad_offset_out_ptr,  # (N, 3) incoming gradient of mean_offset
    grad_positions_ptr,  # (P, 3) float32, added into
    grad_values_ptr,  # (P, C) float32, added into
    num_rows,
    channels,
    min_distance_sq,
    K: tl.constexpr,
    C_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
    NEED_POSITIONS: tl.constexpr,
    NEED_VALUES: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = tl.load(total_ptr + rows, mask=rows < num_rows, other=0.0)
    live = (rows < num_rows) & (total > 0)
    cols = tl.arange(0, C_PAD)
    col_ok = cols < channels
    cell = live[:, None] & col_ok[None, :]
    out = rows[:, None] * channels + cols[None, :]
    g_values = tl.load(grad_values_out_ptr + out, mask=cell, other=0.0)
    g_x, g_y, g_z = _load_xyz(grad_offset_out_ptr, rows, live)
    mean_values = tl.load(mean_values_ptr + out, mask=cell, other=0.0)
    mean_x, mean_y, mean_z = _load_xyz(mean_offset_ptr, rows, live)
    c = tl.sum(g_values * mean_values, axis=1) + g_x * mean_x + g_y * mean_y + g_z * mean_z
    x, y, z = _load_xyz(samples_ptr, rows, live)
    norm = tl.where(live, total, 1.0)
    for k in tl.static_range(K):
        j, valid, ox, oy, oz = _neighbour(positions_ptr, idx_ptr, rows, live, x, y, z, k, K)
        squared = ox * ox + oy * oy + oz * oz
        distance = tl.sqrt_rn(tl.maximum(squared, min_distance_sq))
        weight = tl.where(valid, 1.0 / distance, 0.0) / norm
        pair = valid[:, None] & col_ok[None, :]
        if NEED_VALUES:
            tl.atomic_add(
                grad_values_ptr + j[:, None] * channels + cols[None, :], weight[:, None] * g_values, mask=pair
            )
        if NEED_POSITIONS:
            v = tl.load(values_ptr + j[:, None] * channels + cols[None, :], mask=pair, other=0.0)
            g_k = tl.sum(g_values * v, axis=1) + g_x * ox + g_y * oy + g_z * oz
            # dL/du_k du_k/dp_k, with du_k/dp_k = -(p_k - x) / distance^3 where not clamped
            cubed = distance * distance * distance
            scale = tl.where(squared >= min_distance_sq, -(g_k - c) / (norm * cubed), 0.0)
            tl.atomic_add(grad_positions_ptr + 3 * j, weight * g_x + scale * ox, mask=valid)
            tl.atomic_add(grad_positions_ptr + 3 * j + 1, weight * g_y + scale * oy, mask=valid)
            tl.atomic_add(grad_positions_ptr + 3 * j + 2, weight * g_z + scale * oz, mask=valid)


def _options() -> dict:
    return {} if interpreted() else {"num_warps": 4}


def _grid(num_rows: int) -> tuple[int]:
    return (triton.cdiv(num_rows, BLOCK_N),)


class _BlendNeighbours(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions, values, samples, idx, min_distance):
        positions = positions.detach().float().contiguous()
        values_in = values.detach().float().contiguous()
        samples = samples.detach().float().contiguous()
        idx = idx.contiguous()
        num_rows, k = idx.shape
        channels = values_in.shape[1]
        mean_values = samples.new_empty((num_rows, channels))
        mean_offset = samples.new_empty((num_rows, 3))
        total = samples.new_empty((num_rows,))
        if num_rows:
            _blend_forward_kernel[_grid(num_rows)](
                positions, values_in, samples, idx, mean_values, mean_offset, total,
                num_rows, channels, min_distance * min_distance,
                K=k, C_PAD=triton.next_power_of_2(max(channels, 1)), BLOCK=BLOCK_N, **_options(),
            )  # fmt: skip
        ctx.save_for_backward(positions, values_in, samples, idx, total, mean_values, mean_offset)
        ctx.min_distance = min_distance
        ctx.value_dtype = values.dtype
        return mean_values.to(values.dtype), mean_offset

    @staticmethod
    def backward(ctx, grad_values_out, grad_offset_out):
        positions, values, samples, idx, total, mean_values, mean_offset = ctx.saved_tensors
        need_positions, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        num_rows, k = idx.shape
        if grad_values_out is None:
            grad_values_out = torch.zeros_like(mean_values)
        if grad_offset_out is None:
            grad_offset_out = torch.zeros_like(mean_offset)
        grad_positions = torch.zeros_like(positions) if need_positions else None
        grad_values = torch.zeros_like(values) if need_values else None
        if num_rows and (need_positions or need_values):
            channels = values.shape[1]
            _blend_backward_kernel[_grid(num_rows)](
                positions, values, samples, idx, total, mean_values, mean_offset,
                grad_values_out.float().contiguous(), grad_offset_out.float().contiguous(),
                grad_positions if need_positions else positions,
                grad_values if need_values else values,
                num_rows, channels, ctx.min_distance * ctx.min_distance,
                K=k, C_PAD=triton.next_power_of_2(max(channels, 1)), BLOCK=BLOCK_N,
                NEED_POSITIONS=need_positions, NEED_VALUES=need_values, **_options(),
            )  # fmt: skip
        if grad_values is not None:
            grad_values = grad_values.to(ctx.value_dtype)
        return grad_positions, grad_values, None, None, None


def blend_neighbours_triton(
    positions: torch.Tensor,
    values: torch.Tensor,
    samples: torch.Tensor,
    idx: torch.Tensor,
    min_distance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (P, 3), values (P, C), samples (N, 3), idx (N, K) long -> mean_values (N, C),
    mean_offset (N, 3), as `npva.model.blend.blend_neighbours_torch` (float32 arithmetic)."""
    if positions.shape[0] == 0:
        return values.new_zeros((idx.shape[0], values.shape[1])), positions.new_zeros((idx.shape[0], 3))
    return _BlendNeighbours.apply(positions, values, samples, idx, float(min_distance))
