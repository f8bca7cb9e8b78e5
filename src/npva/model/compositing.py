"""Volume rendering along rays (method.md section 7).

Each ray has S sample slots. A slot is valid or not; the valid samples of a ray are in ascending camera
z along the slot axis, and invalid slots may sit anywhere (between valid ones or as padding at the end):
they are skipped as if absent, and their sigma, rgb and z are never read (they may hold anything).

For the valid samples j of a ray, in slot order:
    delta_j = z_{next valid} - z_j, and last_delta for the last valid sample (1e10: a ray that reaches
              points ends opaque),
    alpha_j = 1 - exp(-sigma_j delta_j),
    T_j     = prod over earlier valid samples i of (1 - alpha_i + 1e-10),
    w_j     = T_j alpha_j;
colour = sum_j w_j c_j, depth = sum_j w_j z_j, opacity = sum_j w_j. Rays without a valid sample give 0.
"""

from __future__ import annotations

import torch

from npva.model.rowscan import scan_rows

TRANSMITTANCE_EPS = 1e-10  # added to every transmittance factor, as in the method


def sample_intervals(z: torch.Tensor, valid: torch.Tensor, last_delta: float) -> torch.Tensor:
    """delta_j = z of the next valid slot minus z_j; last_delta for the last valid slot; 0 if invalid.

    z: (R,S); valid: (R,S) bool. Returns (R,S).
    """
    num_slots = z.shape[1]
    slot = torch.arange(num_slots, device=z.device).expand_as(z)
    marked = torch.where(valid, slot, num_slots)  # num_slots stands for "no valid slot"
    # smallest valid slot index at or after each slot: a cumulative minimum from the end
    first_valid_from = torch.flip(scan_rows(torch.cummin, torch.flip(marked, [1])), [1])
    after = torch.full_like(marked[:, :1], num_slots)
    next_slot = torch.cat([first_valid_from[:, 1:], after], dim=1)
    has_next = next_slot < num_slots
    next_z = torch.gather(z, 1, next_slot.clamp_max(num_slots - 1))
    delta = torch.where(has_next, next_z - z, last_delta)
    return torch.where(valid, delta, 0.0)


def sample_weights(
    sigma: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, last_delta: float
) -> torch.Tensor:
    """Compositing weights w_j = T_j alpha_j, (R,S); zero on invalid slots.

    sigma, z: (R,S); valid: (R,S) bool.
    """
    delta = sample_intervals(z, valid, last_delta)
    alpha = 1.0 - torch.exp(-torch.where(valid, sigma, 0.0) * delta)
    factor = torch.where(valid, 1.0 - alpha + TRANSMITTANCE_EPS, 1.0)
    before = torch.cat([torch.ones_like(factor[:, :1]), factor[:, :-1]], dim=1)
    transmittance = scan_rows(torch.cumprod, before)
    return transmittance * alpha


def composite(
    sigma: torch.Tensor,
    rgb: torch.Tensor,
    z: torch.Tensor,
    valid: torch.Tensor,
    last_delta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Colour (R,3), depth (R,) and opacity (R,) of R rays.

    sigma: (R,S) densities; rgb: (R,S,3); z: (R,S) camera z, ascending over the valid slots of a ray;
    valid: (R,S) bool. See the module docstring for the exact definition.
    """
    if sigma.dim() != 2 or z.shape != sigma.shape or valid.shape != sigma.shape:
        raise ValueError(
            f"sigma, z and valid must share one (R,S) shape, got {tuple(sigma.shape)}, "
            f"{tuple(z.shape)}, {tuple(valid.shape)}"
        )
    if rgb.shape != (*sigma.shape, 3):
        raise ValueError(f"rgb must have shape {(*sigma.shape, 3)}, got {tuple(rgb.shape)}")
    weights = sample_weights(sigma, z, valid, last_delta)
    colour = torch.einsum("rs,rsc->rc", weights, torch.where(valid.unsqueeze(-1), rgb, 0.0))
    depth = (weights * torch.where(valid, z, 0.0)).sum(dim=1)
    return colour, depth, weights.sum(dim=1)
