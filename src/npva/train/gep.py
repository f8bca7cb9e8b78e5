"""Grid-Error-Patch ray sampling (method.md section 8): which pixels of an image one training step renders.

Three phases, by epoch:
- grid ([0, error_start)): every grid_stride_x-th column and grid_stride_y-th row from a random offset;
- error ([error_start, patch_start)): error_rays rays shared among the cells of the image's error map in
  proportion to their error, drawn uniformly inside each cell;
- patch ([patch_start, ...)): one patch_size square centred on a random mask pixel, moved to lie wholly
  inside the image (and clipped to the image when the image is smaller), for the perceptual loss.

Error maps. Each image (a dataset index) has an error_cells x error_cells map over the image; cell
(r, c) covers rows [floor(r H / C), floor((r + 1) H / C)) and columns likewise. Every step adds the
per-pixel colour errors of its rays (in every phase). With error_momentum None a cell holds the true
running mean of every error ever seen in it (the sum and count are kept); with a momentum m it holds an
exponential running mean of the per-step cell means, cell = m cell + (1 - m) step mean, which forgets
the errors of early training. A cell never seen counts as the mean of the seen cells of its map.

Allocation. Rays are shared in proportion to the map, but no cell gets more rays than it has pixels:
the excess of a full cell is shared among the others (so a pixel is never drawn twice in a step), and
integer counts come from the largest remainders. Pixels are drawn without replacement inside a cell.

The maps live in this object, held by the training process (not in data-loader workers), so an update
changes the next sample at once; state_dict()/load_state_dict() carry them through checkpoints. For
several processes, `cell_statistics` gives the tiny per-step summary (sum and count per cell) that they
can exchange and `accumulate` on every rank, so every rank holds the same maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from npva.config import GEPConfig

PHASES = ("grid", "error", "patch")


def _cell_edges(length: int, cells: int) -> torch.Tensor:
    """(cells + 1,) long: cell i covers [edges[i], edges[i + 1])."""
    return torch.div(torch.arange(cells + 1) * length, cells, rounding_mode="floor")


def _validate(config: GEPConfig, height: int, width: int) -> None:
    if not 0 <= config.error_start <= config.patch_start:
        raise ValueError(
            f"GEP phases need 0 <= error_start <= patch_start, got {config.error_start}, {config.patch_start}"
        )
    if config.grid_stride_x < 1 or config.grid_stride_y < 1:
        raise ValueError(f"grid strides must be >= 1, got {config.grid_stride_x}, {config.grid_stride_y}")
    if not 1 <= config.error_cells <= min(height, width):
        raise ValueError(f"error_cells must be in 1..{min(height, width)} for {height}x{width} images")
    if config.error_rays < 1 or config.patch_size < 1:
        raise ValueError(
            f"error_rays and patch_size must be >= 1, got {config.error_rays}, {config.patch_size}"
        )
    if config.error_momentum is not None and not 0 <= config.error_momentum < 1:
        raise ValueError(f"error_momentum must be None or in [0, 1), got {config.error_momentum}")


class GEPSampler:
    """Pixels to render per step for `num_images` images of height x width, and their error maps."""

    def __init__(self, num_images: int, height: int, width: int, config: GEPConfig):
        if num_images < 1 or height < 1 or width < 1:
            raise ValueError(f"need images and a size, got {num_images} images of {height}x{width}")
        _validate(config, height, width)
        self.num_images, self.height, self.width = num_images, height, width
        self.config = config
        cells = config.error_cells
        self.row_edges = _cell_edges(height, cells)
        self.col_edges = _cell_edges(width, cells)
        # cell index of every row / column, (H,) and (W,)
        self.cell_of_row = torch.repeat_interleave(torch.arange(cells), self.row_edges.diff())
        self.cell_of_col = torch.repeat_interleave(torch.arange(cells), self.col_edges.diff())
        self._cell_tables_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cell_pixels = torch.outer(self.row_edges.diff(), self.col_edges.diff())  # (C, C) long
        self.error_map = torch.zeros(num_images, cells, cells)
        self.error_count = torch.zeros(num_images, cells, cells)  # pixel errors seen per cell

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(h, w) of the patch-phase square, clipped to the image."""
        size = self.config.patch_size
        return min(size, self.height), min(size, self.width)

    def phase_at(self, epoch: float) -> str:
        """The phase ("grid", "error" or "patch") of a possibly fractional epoch, counted from 0."""
        if epoch < self.config.error_start:
            return "grid"
        return "error" if epoch < self.config.patch_start else "patch"

    def sample(
        self,
        index: int,
        phase: str,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pixels (R, 2) long (x, y) on the CPU for image `index` in `phase`.

        mask: (H, W) bool, needed by the patch phase (a random mask pixel is the patch centre). Patch
        pixels come row by row, so colours of them reshape to patch_shape.
        """
        if phase == "grid":
            return self.grid_pixels(generator)
        if phase == "error":
            return self.error_pixels(index, generator)
        if phase == "patch":
            if mask is None:
                raise ValueError("the patch phase needs the image's mask")
            return self.patch_pixels(mask, generator)
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

    # ---- the three phases ----------------------------------------------------------------------

    def grid_pixels(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The strided lattice from a random offset in [0, stride) per axis: (R, 2) long (x, y)."""
        sx, sy = self.config.grid_stride_x, self.config.grid_stride_y
        offset_x = int(torch.randint(sx, (), generator=generator))
        offset_y = int(torch.randint(sy, (), generator=generator))
        xs = torch.arange(offset_x, self.width, sx)
        ys = torch.arange(offset_y, self.height, sy)
        return _grid(xs, ys)

    def error_pixels(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """error_rays distinct pixels (fewer if the image is smaller), cell by cell as allocated."""
        counts = self.error_allocation(index)
        cells = self.config.error_cells
        parts = []
        for r in range(cells):
            for c in range(cells):
                count = int(counts[r, c])
                if count == 0:
                    continue
                top, left = int(self.row_edges[r]), int(self.col_edges[c])
                cell_width = int(self.col_edges[c + 1]) - left
                chosen = torch.randperm(int(self.cell_pixels[r, c]), generator=generator)[:count]
                parts.append(torch.stack((left + chosen % cell_width, top + chosen // cell_width), 1))
        return torch.cat(parts)

    def patch_pixels(self, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A patch_shape square of pixels, row by row: (h * w, 2) long (x, y).

        Centred on a random pixel of `mask` (H, W) bool (any pixel if the mask is empty), then moved
        the least needed to lie inside the image.
        """
        mask = torch.as_tensor(mask, device="cpu")
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask must be {self.height}x{self.width}, got {tuple(mask.shape)}")
        candidates = mask.reshape(-1).nonzero().squeeze(1)
        pick = int(torch.randint(candidates.numel() or mask.numel(), (), generator=generator))
        centre = int(candidates[pick]) if candidates.numel() else pick
        centre_y, centre_x = divmod(centre, self.width)
        h, w = self.patch_shape
        top = min(max(centre_y - h // 2, 0), self.height - h)
        left = min(max(centre_x - w // 2, 0), self.width - w)
        return _grid(torch.arange(left, left + w), torch.arange(top, top + h))

    # ---- error maps ----------------------------------------------------------------------------

    def error_allocation(self, index: int) -> torch.Tensor:
        """Rays per cell (C, C) long for image `index`: proportional to its error map, capped at each
        cell's pixel count, summing to min(error_rays, H * W)."""
        capacity = self.cell_pixels.reshape(-1).double()
        weights = self._cell_weights(index).reshape(-1)
        total = min(self.config.error_rays, self.height * self.width)
        return _allocate(weights, capacity, total).reshape(self.cell_pixels.shape)

    def _cell_weights(self, index: int) -> torch.Tensor:
        """(C, C) float64 sampling weights: the error map, unseen cells at the mean of the seen ones;
        the pixel counts (uniform sampling) when nothing has been seen."""
        values = self.error_map[index].double()
        seen = self.error_count[index] > 0
        if not seen.any() or values[seen].sum() <= 0:
            return self.cell_pixels.double()
        return torch.where(seen, values, values[seen].mean())

    def cell_statistics(
        self, pixels: torch.Tensor, errors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and count (C, C) float32, on the inputs' device, of the finite errors (R,) of pixels
        (R, 2) long (x, y), per cell."""
        pixels, errors = pixels.detach(), errors.detach().float().reshape(-1)
        if pixels.shape != (errors.shape[0], 2):
            raise ValueError(
                f"expected pixels (R, 2) and errors (R,), got {tuple(pixels.shape)}, {tuple(errors.shape)}"
            )
        device, cells = pixels.device, self.config.error_cells
        # Non-finite errors count as 0 with weight 0 rather than being dropped, so that no size depends
        # on the values (on a GPU a dropped row count would make the host wait for the step).
        finite = torch.isfinite(errors)
        pixels = pixels.long()
        cell_of_row, cell_of_col = self._cell_tables(device)
        cell = cell_of_row[pixels[:, 1]] * cells + cell_of_col[pixels[:, 0]]
        sums = torch.zeros(cells * cells, device=device).index_add_(0, cell, torch.where(finite, errors, 0.0))
        counts = torch.zeros(cells * cells, device=device).index_add_(0, cell, finite.float())
        return sums.reshape(cells, cells), counts.reshape(cells, cells)

    def _cell_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cell_of_row (H,) and cell_of_col (W,) on `device`, copied there once (a copy per step would
        make the host wait for the GPU)."""
        if device not in self._cell_tables_on:
            self._cell_tables_on[device] = (self.cell_of_row.to(device), self.cell_of_col.to(device))
        return self._cell_tables_on[device]

    def accumulate(self, index: int, error_sum: torch.Tensor, error_count: torch.Tensor) -> None:
        """Fold one step's per-cell error sums and counts (C, C) into image `index`'s map."""
        error_sum, error_count = torch.stack((error_sum, error_count)).detach().cpu().float()  # one copy
        seen = error_count > 0
        step_mean = error_sum / error_count.clamp_min(1)
        old_map, old_count = self.error_map[index], self.error_count[index]
        momentum = self.config.error_momentum
        if momentum is None:
            updated = (old_map * old_count + error_sum) / (old_count + error_count).clamp_min(1)
        else:
            blended = momentum * old_map + (1 - momentum) * step_mean
            updated = torch.where(old_count > 0, blended, step_mean)
        self.error_map[index] = torch.where(seen, updated, old_map)
        self.error_count[index] = old_count + error_count

    def update(self, index: int, pixels: torch.Tensor, errors: torch.Tensor) -> None:
        """Add the per-pixel colour errors (R,) of pixels (R, 2) long (x, y) to image `index`'s map."""
        self.accumulate(index, *self.cell_statistics(pixels, errors))

    def state_dict(self) -> dict[str, Any]:
        return {
            "error_map": self.error_map.clone(),
            "error_count": self.error_count.clone(),
            "height": self.height,
            "width": self.width,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = tuple(self.error_map.shape)
        for name in ("error_map", "error_count"):
            if tuple(state[name].shape) != expected:
                raise ValueError(
                    f"GEP {name} of shape {tuple(state[name].shape)} does not fit {expected} "
                    f"(images x cells x cells): was the checkpoint made with other data?"
                )
        if (state["height"], state["width"]) != (self.height, self.width):
            raise ValueError(
                f"GEP state is for {state['height']}x{state['width']} images, not {self.height}x{self.width}"
            )
        self.error_map = state["error_map"].detach().cpu().float().clone()
        self.error_count = state["error_count"].detach().cpu().float().clone()


def _grid(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Every (x, y) of columns xs and rows ys, row by row: (len(ys) * len(xs), 2) long."""
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)), 1)


def _allocate(weights: torch.Tensor, capacity: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts (N,) summing to `total` (<= capacity.sum()), proportional to weights (N,) >= 0,
    each at most its capacity (N,); the excess of full bins goes to the others by their weights (by
    their room when those weigh nothing)."""
    weights = weights.numpy().astype(np.float64)
    room = capacity.numpy().astype(np.float64)
    counts = np.zeros_like(room)
    remaining = float(total)
    open_bins = room > 0
    while remaining > 0:
        share_weights = np.where(open_bins, weights, 0.0)
        if share_weights.sum() <= 0:
            share_weights = np.where(open_bins, room, 0.0)
        share = remaining * share_weights / share_weights.sum()
        full = open_bins & (share >= room)
        if not full.any():
            whole = np.floor(share)
            leftover = int(round(remaining - whole.sum()))
            fractions = np.where(open_bins, share - whole, -1.0)
            whole[np.argsort(-fractions, kind="stable")[:leftover]] += 1
            counts += whole
            break
        counts[full] += room[full]
        remaining -= room[full].sum()
        room[full] = 0
        open_bins &= ~full
    return torch.from_numpy(counts.astype(np.int64))
